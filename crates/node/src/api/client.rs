//! A small client of the local API, for the CLI and the terminal UI.
//!
//! The API is on loopback, so this speaks just enough HTTP/1.1 itself over a
//! tokio `TcpStream` rather than pulling in an HTTP client crate: one request
//! per connection (`Connection: close`), bodies read by `Content-Length`,
//! chunked transfer coding, or to the end of the connection; the event stream
//! is decoded as it arrives.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::chat::{ChatEvent, ContactView, ConversationView, MessageView, StatusView, WhoisView};
use crate::datadir::{DataDir, DataDirError};

/// How long to wait for the connection to the API.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a request may take by default (sending resolves names on the network).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest response accepted.
const MAX_RESPONSE: usize = 64 << 20;
/// Largest response head, and largest single event.
const MAX_HEAD: usize = 64 << 10;
const MAX_EVENT: usize = 1 << 20;

/// What went wrong talking to the local API.
#[derive(Debug, thiserror::Error)]
pub enum ApiClientError {
    /// No node runs with this data dir (no `api.json`, or nothing listens where it says).
    #[error(
        "no peerchat is running with data dir {dir}: start it with `peerchat --data-dir {dir} run`",
        dir = .dir.display()
    )]
    NotRunning {
        /// The data dir.
        dir: PathBuf,
    },
    /// `api.json` could not be read.
    #[error(transparent)]
    DataDir(DataDirError),
    /// The connection failed.
    #[error("cannot talk to the peerchat API at {addr}: {source}")]
    Io {
        /// The API's address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// No answer in time.
    #[error("the peerchat API at {addr} did not answer within {secs} s")]
    Timeout {
        /// The API's address.
        addr: SocketAddr,
        /// The time allowed.
        secs: u64,
    },
    /// The API answered with an error.
    #[error("{message}")]
    Api {
        /// The HTTP status.
        status: u16,
        /// The API's `error` message.
        message: String,
    },
    /// The answer was not what the API sends.
    #[error("unexpected answer from the peerchat API: {0}")]
    Protocol(String),
}

impl ApiClientError {
    /// The HTTP status, when the API answered with an error.
    pub fn status(&self) -> Option<u16> {
        match self {
            ApiClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// An item of the event stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApiEvent {
    /// The stream is subscribed: every later change is sent.
    Ready,
    /// A message arrived, was queued, or changed delivery state.
    Chat(ChatEvent),
    /// This client read too slowly and `missed` events were dropped for it:
    /// re-read whatever is shown.
    Lagged {
        /// How many.
        missed: u64,
    },
    /// An event this client does not know (a newer node).
    Other {
        /// Its `event:` name.
        name: String,
        /// Its data.
        data: String,
    },
}

/// A client of one running node's local API. Cheap to clone.
#[derive(Clone)]
pub struct ApiClient {
    addr: SocketAddr,
    token: String,
    dir: Option<PathBuf>,
    timeout: Duration,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiClient")
            .field("addr", &self.addr)
            .field("token", &"<redacted>")
            .field("dir", &self.dir)
            .finish()
    }
}

#[derive(Serialize)]
struct SendBody<'a> {
    to: &'a str,
    text: &'a str,
}

#[derive(Serialize)]
struct NameBody<'a> {
    name: &'a str,
}

#[derive(serde::Deserialize)]
struct IdBody {
    id: String,
}

#[derive(serde::Deserialize)]
struct MarkedBody {
    marked: u64,
}

#[derive(serde::Deserialize)]
struct ErrorBody {
    error: String,
}

impl ApiClient {
    /// A client of the API at `addr` with `token`.
    pub fn new(addr: SocketAddr, token: impl Into<String>) -> ApiClient {
        ApiClient {
            addr,
            token: token.into(),
            dir: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// A client of the node running with data dir `dir` (reads its `api.json`).
    pub fn from_data_dir(dir: impl AsRef<Path>) -> Result<ApiClient, ApiClientError> {
        let dir = dir.as_ref();
        let info = DataDir::read_api_info(dir).map_err(|e| match e {
            DataDirError::NotRunning { dir } => ApiClientError::NotRunning { dir },
            e => ApiClientError::DataDir(e),
        })?;
        Ok(ApiClient {
            addr: info.addr,
            token: info.token,
            dir: Some(dir.to_path_buf()),
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// The same client with another per-request time limit.
    pub fn with_timeout(mut self, timeout: Duration) -> ApiClient {
        self.timeout = timeout;
        self
    }

    /// The API's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `GET /api/status`.
    pub async fn status(&self) -> Result<StatusView, ApiClientError> {
        self.call("GET", "/api/status", None).await
    }

    /// `POST /api/messages`: queues a message; returns its id.
    pub async fn send(&self, to: &str, text: &str) -> Result<String, ApiClientError> {
        let body = json(&SendBody { to, text })?;
        let r: IdBody = self.call("POST", "/api/messages", Some(body)).await?;
        Ok(r.id)
    }

    /// `GET /api/inbox`: received messages, newest first.
    pub async fn inbox(&self, limit: Option<usize>) -> Result<Vec<MessageView>, ApiClientError> {
        self.call("GET", &with_limit("/api/inbox".into(), limit), None)
            .await
    }

    /// `GET /api/conversations`: conversations, newest first.
    pub async fn conversations(&self) -> Result<Vec<ConversationView>, ApiClientError> {
        self.call("GET", "/api/conversations", None).await
    }

    /// `GET /api/history/{name}`: the conversation with `name`, oldest first.
    pub async fn history(
        &self,
        name: &str,
        limit: Option<usize>,
    ) -> Result<Vec<MessageView>, ApiClientError> {
        let path = with_limit(format!("/api/history/{}", encode_segment(name)), limit);
        self.call("GET", &path, None).await
    }

    /// `POST /api/read/{name}`: marks the conversation read; returns how many messages were marked.
    pub async fn mark_read(&self, name: &str) -> Result<u64, ApiClientError> {
        let path = format!("/api/read/{}", encode_segment(name));
        let r: MarkedBody = self.call("POST", &path, Some(b"{}".to_vec())).await?;
        Ok(r.marked)
    }

    /// `GET /api/whois/{name}`.
    pub async fn whois(&self, name: &str) -> Result<WhoisView, ApiClientError> {
        let path = format!("/api/whois/{}", encode_segment(name));
        self.call("GET", &path, None).await
    }

    /// `GET /api/contacts`.
    pub async fn contacts(&self) -> Result<Vec<ContactView>, ApiClientError> {
        self.call("GET", "/api/contacts", None).await
    }

    /// `GET /api/network`: the routing table by bucket and the recent lookups.
    pub async fn network(&self) -> Result<super::NetworkView, ApiClientError> {
        self.call("GET", "/api/network", None).await
    }

    /// `POST /api/contacts`: resolves and pins `name`; returns it with its fingerprint.
    pub async fn add_contact(&self, name: &str) -> Result<ContactView, ApiClientError> {
        let body = json(&NameBody { name })?;
        self.call("POST", "/api/contacts", Some(body)).await
    }

    /// `GET /api/events`: the event stream. The first item is [`ApiEvent::Ready`].
    pub async fn events(&self) -> Result<EventStream, ApiClientError> {
        let timeout = self.timeout;
        let addr = self.addr;
        let head = async {
            let stream = self.connect().await?;
            let mut reader = BufReader::new(stream);
            let req = self.request_head("GET", "/api/events", None, "text/event-stream");
            reader
                .get_mut()
                .write_all(req.as_bytes())
                .await
                .map_err(|e| self.io(e))?;
            let head = read_head(&mut reader).await.map_err(|e| self.io(e))?;
            let head = parse_head(&head)?;
            Ok::<_, ApiClientError>((reader, head))
        };
        let (mut reader, head) = tokio::time::timeout(timeout, head)
            .await
            .map_err(|_| self.timeout_err())??;
        if head.status != 200 {
            let mut rest = Vec::new();
            let _ = tokio::time::timeout(
                timeout,
                (&mut reader).take(MAX_HEAD as u64).read_to_end(&mut rest),
            )
            .await;
            let body = decode_body(&head, &rest).unwrap_or(rest);
            return Err(api_error(head.status, &body));
        }
        Ok(EventStream {
            reader,
            addr,
            chunked: head.chunked,
            chunk_left: 0,
            done: false,
            pending: Vec::new(),
        })
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, ApiClientError> {
        let (status, body) = tokio::time::timeout(self.timeout, self.exchange(method, path, body))
            .await
            .map_err(|_| self.timeout_err())??;
        if !(200..300).contains(&status) {
            return Err(api_error(status, &body));
        }
        serde_json::from_slice(&body).map_err(|e| {
            ApiClientError::Protocol(format!("{method} {path}: the JSON does not parse: {e}"))
        })
    }

    /// One request, one connection: returns the status and the decoded body.
    async fn exchange(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(u16, Vec<u8>), ApiClientError> {
        let mut stream = self.connect().await?;
        let mut req = self
            .request_head(method, path, body.as_deref(), "application/json")
            .into_bytes();
        if let Some(b) = &body {
            req.extend_from_slice(b);
        }
        stream.write_all(&req).await.map_err(|e| self.io(e))?;
        let mut raw = Vec::new();
        (&mut stream)
            .take(MAX_RESPONSE as u64 + 1)
            .read_to_end(&mut raw)
            .await
            .map_err(|e| self.io(e))?;
        if raw.len() > MAX_RESPONSE {
            return Err(ApiClientError::Protocol(format!(
                "the answer is over {MAX_RESPONSE} bytes"
            )));
        }
        let end = find(&raw, b"\r\n\r\n").ok_or_else(|| {
            ApiClientError::Protocol("the connection closed before a full answer".into())
        })?;
        let head = parse_head(&raw[..end + 4])?;
        let body = decode_body(&head, &raw[end + 4..])?;
        Ok((head.status, body))
    }

    fn request_head(&self, method: &str, path: &str, body: Option<&[u8]>, accept: &str) -> String {
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nAccept: {accept}\r\nConnection: close\r\n",
            self.addr, self.token
        );
        if let Some(b) = body {
            req.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                b.len()
            ));
        }
        req.push_str("\r\n");
        req
    }

    async fn connect(&self) -> Result<TcpStream, ApiClientError> {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(self.addr)).await {
            Err(_) => Err(ApiClientError::Timeout {
                addr: self.addr,
                secs: CONNECT_TIMEOUT.as_secs(),
            }),
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => match (&self.dir, e.kind()) {
                // api.json left behind by a node that is gone.
                (Some(dir), std::io::ErrorKind::ConnectionRefused) => {
                    Err(ApiClientError::NotRunning { dir: dir.clone() })
                }
                _ => Err(self.io(e)),
            },
        }
    }

    fn io(&self, source: std::io::Error) -> ApiClientError {
        ApiClientError::Io {
            addr: self.addr,
            source,
        }
    }

    fn timeout_err(&self) -> ApiClientError {
        ApiClientError::Timeout {
            addr: self.addr,
            secs: self.timeout.as_secs(),
        }
    }
}

/// The live event stream of `GET /api/events`.
pub struct EventStream {
    reader: BufReader<TcpStream>,
    addr: SocketAddr,
    chunked: bool,
    chunk_left: usize,
    done: bool,
    /// Decoded bytes not yet parsed into an event.
    pending: Vec<u8>,
}

impl std::fmt::Debug for EventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStream")
            .field("addr", &self.addr)
            .finish()
    }
}

impl EventStream {
    /// The next event; `None` when the node closed the stream (it stopped).
    /// Waits as long as it takes: wrap it in a timeout if needed (the node
    /// sends a keep-alive comment every 15 s, which this skips).
    pub async fn next(&mut self) -> Result<Option<ApiEvent>, ApiClientError> {
        loop {
            while let Some((block, used)) = split_event(&self.pending) {
                let ev = parse_event(block);
                self.pending.drain(..used);
                if let Some(ev) = ev {
                    return Ok(Some(ev));
                }
            }
            if self.pending.len() > MAX_EVENT {
                return Err(ApiClientError::Protocol(format!(
                    "an event is over {MAX_EVENT} bytes"
                )));
            }
            if self.done || !self.fill().await? {
                self.done = true;
                return Ok(None);
            }
        }
    }

    /// Reads more of the body into `pending`; false at its end.
    async fn fill(&mut self) -> Result<bool, ApiClientError> {
        let io = |source| ApiClientError::Io {
            addr: self.addr,
            source,
        };
        if !self.chunked {
            let mut buf = [0u8; 4096];
            let n = self.reader.read(&mut buf).await.map_err(io)?;
            self.pending.extend_from_slice(&buf[..n]);
            return Ok(n > 0);
        }
        if self.chunk_left == 0 {
            let mut line = Vec::new();
            let n = (&mut self.reader)
                .take(1024)
                .read_until(b'\n', &mut line)
                .await
                .map_err(io)?;
            if n == 0 {
                return Ok(false);
            }
            let text = String::from_utf8_lossy(&line);
            let text = text.trim();
            if text.is_empty() {
                // The CRLF that ends the previous chunk.
                return Ok(true);
            }
            let size = text.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size, 16)
                .map_err(|_| ApiClientError::Protocol(format!("bad chunk size {text:?}")))?;
            if size == 0 {
                return Ok(false);
            }
            self.chunk_left = size;
        }
        let mut buf = vec![0u8; self.chunk_left.min(8192)];
        let n = self.reader.read(&mut buf).await.map_err(io)?;
        if n == 0 {
            return Ok(false);
        }
        self.chunk_left -= n;
        self.pending.extend_from_slice(&buf[..n]);
        Ok(true)
    }
}

/// The first complete event block in `buf` (without its blank line) and the bytes it used.
fn split_event(buf: &[u8]) -> Option<(&[u8], usize)> {
    let mut i = 0;
    while i < buf.len() {
        if buf[i] == b'\n' {
            let rest = &buf[i + 1..];
            if rest.first() == Some(&b'\n') {
                return Some((&buf[..i], i + 2));
            }
            if rest.starts_with(b"\r\n") {
                return Some((&buf[..i], i + 3));
            }
        }
        i += 1;
    }
    None
}

/// An SSE event block; `None` for comments only (keep-alives).
fn parse_event(block: &[u8]) -> Option<ApiEvent> {
    let text = String::from_utf8_lossy(block);
    let mut name = String::new();
    let mut data: Option<String> = None;
    for line in text.lines() {
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => name = value.to_string(),
            "data" => match &mut data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => data = Some(value.to_string()),
            },
            _ => {}
        }
    }
    let data = data?;
    let other = |name: String, data: String| ApiEvent::Other { name, data };
    Some(match name.as_str() {
        "ready" => ApiEvent::Ready,
        "lagged" => {
            #[derive(serde::Deserialize)]
            struct Lagged {
                missed: u64,
            }
            match serde_json::from_str::<Lagged>(&data) {
                Ok(l) => ApiEvent::Lagged { missed: l.missed },
                Err(_) => other(name, data),
            }
        }
        "message" | "state" => match serde_json::from_str::<ChatEvent>(&data) {
            Ok(e) => ApiEvent::Chat(e),
            Err(_) => other(name, data),
        },
        _ => other(name, data),
    })
}

struct Head {
    status: u16,
    chunked: bool,
    content_length: Option<usize>,
}

async fn read_head(reader: &mut BufReader<TcpStream>) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::new();
    loop {
        let n = (&mut *reader)
            .take(MAX_HEAD as u64)
            .read_until(b'\n', &mut head)
            .await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the connection closed before a full answer",
            ));
        }
        if head.ends_with(b"\r\n\r\n") || head.ends_with(b"\n\n") {
            return Ok(head);
        }
        if head.len() > MAX_HEAD {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the answer's head is too long",
            ));
        }
    }
}

fn parse_head(raw: &[u8]) -> Result<Head, ApiClientError> {
    let text = std::str::from_utf8(raw)
        .map_err(|_| ApiClientError::Protocol("the answer's head is not text".into()))?;
    let mut lines = text.lines();
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.split_whitespace();
    let status = match (parts.next(), parts.next()) {
        (Some(v), Some(code)) if v.starts_with("HTTP/1.") => code.parse::<u16>().ok(),
        _ => None,
    }
    .ok_or_else(|| ApiClientError::Protocol(format!("not an HTTP answer: {status_line:?}")))?;
    let mut head = Head {
        status,
        chunked: false,
        content_length: None,
    };
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") {
            head.chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("content-length") {
            head.content_length =
                Some(value.parse().map_err(|_| {
                    ApiClientError::Protocol(format!("bad Content-Length {value:?}"))
                })?);
        }
    }
    Ok(head)
}

fn decode_body(head: &Head, rest: &[u8]) -> Result<Vec<u8>, ApiClientError> {
    if head.chunked {
        return dechunk(rest);
    }
    match head.content_length {
        Some(n) if n <= rest.len() => Ok(rest[..n].to_vec()),
        Some(n) => Err(ApiClientError::Protocol(format!(
            "the answer was cut short ({} of {n} bytes)",
            rest.len()
        ))),
        None => Ok(rest.to_vec()),
    }
}

fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, ApiClientError> {
    let bad = || ApiClientError::Protocol("bad chunked answer".into());
    let mut out = Vec::new();
    loop {
        let eol = find(rest, b"\r\n").ok_or_else(bad)?;
        let line = std::str::from_utf8(&rest[..eol]).map_err(|_| bad())?;
        let size = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size, 16).map_err(|_| bad())?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if rest.len() < size + 2 {
            return Err(bad());
        }
        out.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

fn api_error(status: u16, body: &[u8]) -> ApiClientError {
    let message = match serde_json::from_slice::<ErrorBody>(body) {
        Ok(b) => b.error,
        Err(_) => format!("the API answered HTTP {status}"),
    };
    ApiClientError::Api { status, message }
}

fn json<T: Serialize>(v: &T) -> Result<Vec<u8>, ApiClientError> {
    serde_json::to_vec(v).map_err(|e| ApiClientError::Protocol(e.to_string()))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn with_limit(path: String, limit: Option<usize>) -> String {
    match limit {
        Some(n) => format!("{path}?limit={n}"),
        None => path,
    }
}

/// Percent-encodes a path segment (everything but unreserved characters).
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments() {
        assert_eq!(encode_segment("bob"), "bob");
        assert_eq!(encode_segment("a/b c"), "a%2Fb%20c");
        assert_eq!(encode_segment(".."), "..");
    }

    #[test]
    fn chunks() {
        assert_eq!(
            dechunk(b"5\r\nhello\r\n6;x=y\r\n world\r\n0\r\n\r\n").ok(),
            Some(b"hello world".to_vec())
        );
        assert!(dechunk(b"zz\r\n").is_err());
        assert!(dechunk(b"5\r\nhel").is_err());
    }

    #[test]
    fn heads() {
        let h = parse_head(b"HTTP/1.1 404 Not Found\r\ncontent-length: 3\r\n\r\n");
        assert!(h.is_ok_and(|h| h.status == 404 && h.content_length == Some(3) && !h.chunked));
        assert!(parse_head(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
    }

    #[test]
    fn sse_blocks() {
        let buf = b": keep-alive\n\nevent: ready\ndata: {\"type\":\"ready\"}\n\nevent: lag";
        let (b, used) = split_event(buf).unwrap_or((b"", 0));
        assert_eq!(parse_event(b), None);
        let (b2, _) = split_event(&buf[used..]).unwrap_or((b"", 0));
        assert_eq!(parse_event(b2), Some(ApiEvent::Ready));
        let lag = b"event: lagged\ndata: {\"type\":\"lagged\",\"missed\":7}";
        assert_eq!(parse_event(lag), Some(ApiEvent::Lagged { missed: 7 }));
        let st = b"event: state\ndata: {\"type\":\"state\",\"id\":\"ab\",\"state\":\"read\"}";
        assert_eq!(
            parse_event(st),
            Some(ApiEvent::Chat(ChatEvent::State {
                id: "ab".into(),
                state: "read".into()
            }))
        );
    }

    #[test]
    fn error_bodies() {
        let e = api_error(404, br#"{"error":"no such user: zed"}"#);
        assert_eq!(e.to_string(), "no such user: zed");
        assert_eq!(e.status(), Some(404));
        assert_eq!(api_error(502, b"<html>").status(), Some(502));
    }

    #[test]
    fn not_running() {
        let tmp = std::env::temp_dir().join(format!("peerchat-api-none-{}", std::process::id()));
        let e = ApiClient::from_data_dir(&tmp).err().map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("no peerchat is running") && e.contains(" run`")));
    }
}
