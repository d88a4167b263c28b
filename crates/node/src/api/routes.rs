//! The API's routes, its request guard and its error mapping.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::Stream;
use peerchat_chat::MAX_TEXT_BYTES;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};

use super::MAX_BODY;
use crate::NodeError;
use crate::chat::{ChatClient, ChatError, ChatEvent};
use crate::datadir::token_eq;

/// Default `limit` of the list endpoints.
pub(super) const DEFAULT_LIMIT: usize = 100;
/// Largest `limit` honoured (larger ones are lowered to it).
pub(super) const MAX_LIMIT: usize = 10_000;
/// How often an idle event stream gets a keep-alive comment.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

pub(super) struct AppState {
    pub(super) client: ChatClient,
    /// The API's own fan-out of the node's events (see [`forward_events`]).
    pub(super) events: broadcast::Sender<Fanned>,
    pub(super) token: String,
    pub(super) port: u16,
    pub(super) stopped: watch::Receiver<bool>,
}

pub(super) type Shared = Arc<AppState>;

pub(super) fn router(state: AppState) -> Router {
    let state = Arc::new(state);
    let mut router = Router::new();
    for path in super::web::paths() {
        router = router.route(path, get(super::web::serve_asset));
    }
    router
        .route("/api/status", get(status))
        .route("/api/network", get(super::network::network))
        .route("/api/messages", post(send))
        .route("/api/inbox", get(inbox))
        .route("/api/conversations", get(conversations))
        .route("/api/history/{name}", get(history))
        .route("/api/read/{name}", post(mark_read))
        .route("/api/whois/{name}", get(whois))
        .route("/api/contacts", get(contacts).post(add_contact))
        .route("/api/events", get(events))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        // Outermost: runs before routing, for every request, even unknown paths.
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

// ----- errors ------------------------------------------------------------------

/// An error answer: `{"error": "message"}` with a status.
#[derive(Debug)]
pub(super) struct ApiFailure {
    status: StatusCode,
    message: String,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
}

impl ApiFailure {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiFailure {
        ApiFailure {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiFailure {
    fn into_response(self) -> Response {
        let mut r = (
            self.status,
            Json(ErrorBody {
                error: &self.message,
            }),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        r
    }
}

/// The HTTP status of a chat error.
pub(super) fn status_of(e: &ChatError) -> StatusCode {
    match e {
        ChatError::Name(_) | ChatError::BadMessage(_) => StatusCode::BAD_REQUEST,
        ChatError::NoSuchUser(_) => StatusCode::NOT_FOUND,
        ChatError::KeyChanged { .. } => StatusCode::CONFLICT,
        ChatError::Node(
            NodeError::NoContacts | NodeError::BootstrapFailed { .. } | NodeError::Stopped,
        ) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<ChatError> for ApiFailure {
    fn from(e: ChatError) -> ApiFailure {
        let status = status_of(&e);
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::warn!("local API: {e}");
        }
        ApiFailure::new(status, e.to_string())
    }
}

impl From<JsonRejection> for ApiFailure {
    fn from(r: JsonRejection) -> ApiFailure {
        let status = match r.status() {
            // Well-formed JSON of the wrong shape is bad input too.
            StatusCode::UNPROCESSABLE_ENTITY => StatusCode::BAD_REQUEST,
            s => s,
        };
        let message = match status {
            StatusCode::PAYLOAD_TOO_LARGE => format!("the request body is over {MAX_BODY} bytes"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                "send the body as JSON with `Content-Type: application/json`".to_string()
            }
            _ => r.body_text(),
        };
        ApiFailure::new(status, message)
    }
}

impl From<QueryRejection> for ApiFailure {
    fn from(r: QueryRejection) -> ApiFailure {
        ApiFailure::new(StatusCode::BAD_REQUEST, r.body_text())
    }
}

impl From<PathRejection> for ApiFailure {
    fn from(r: PathRejection) -> ApiFailure {
        ApiFailure::new(StatusCode::BAD_REQUEST, r.body_text())
    }
}

type ApiResult<T> = Result<Json<T>, ApiFailure>;

pub(super) async fn not_found() -> ApiFailure {
    ApiFailure::new(StatusCode::NOT_FOUND, "no such endpoint (see docs/api.md)")
}

async fn method_not_allowed() -> ApiFailure {
    ApiFailure::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this endpoint (see docs/api.md)",
    )
}

// ----- the guard ---------------------------------------------------------------

/// Whether `value` is `127.0.0.1:PORT` or `localhost:PORT`.
fn is_local_authority(value: &str, port: u16) -> bool {
    let Some((host, p)) = value.rsplit_once(':') else {
        return false;
    };
    p.parse::<u16>() == Ok(port)
        && !p.starts_with('+')
        && (host == "127.0.0.1" || host.eq_ignore_ascii_case("localhost"))
}

/// Host (DNS rebinding), Origin (cross-site) and token checks, in that order.
pub(super) async fn guard(State(s): State<Shared>, req: Request, next: Next) -> Response {
    let asset = super::web::is_asset(req.method(), req.uri().path());
    let mut r = match check(&s, req.headers(), req.uri(), asset) {
        Ok(()) => next.run(req).await,
        Err(f) => f.into_response(),
    };
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(super::web::CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

/// `public`: a static file of the web app, served without the token.
fn check(
    s: &AppState,
    headers: &HeaderMap,
    uri: &axum::http::Uri,
    public: bool,
) -> Result<(), ApiFailure> {
    let forbidden = |m: &str| ApiFailure::new(StatusCode::FORBIDDEN, m);
    let host_ok = match headers.get_all(header::HOST).iter().collect::<Vec<_>>()[..] {
        [h] => h.to_str().is_ok_and(|h| is_local_authority(h, s.port)),
        _ => false,
    };
    // An absolute request target names the host too: it must agree.
    let target_ok = uri
        .authority()
        .is_none_or(|a| is_local_authority(a.as_str(), s.port));
    if !host_ok || !target_ok {
        return Err(forbidden(&format!(
            "the Host header must be 127.0.0.1:{port} or localhost:{port}",
            port = s.port
        )));
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let ok = origin.to_str().is_ok_and(|o| {
            o.strip_prefix("http://")
                .is_some_and(|a| is_local_authority(a, s.port))
        });
        if !ok {
            return Err(forbidden("cross-origin requests are not allowed"));
        }
    }
    if public {
        return Ok(());
    }
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim());
    match presented {
        Some(t) if token_eq(t, &s.token) => Ok(()),
        _ => Err(ApiFailure::new(
            StatusCode::UNAUTHORIZED,
            "missing or wrong token: send `Authorization: Bearer TOKEN` with the token from api.json in the node's data dir",
        )),
    }
}

// ----- handlers ----------------------------------------------------------------

/// The `?limit=N` query of the list endpoints.
#[derive(Deserialize)]
pub struct LimitQuery {
    limit: Option<usize>,
}

fn limit_of(q: Result<Query<LimitQuery>, QueryRejection>) -> Result<usize, ApiFailure> {
    let Query(q) = q?;
    match q.limit {
        Some(0) => Err(ApiFailure::new(
            StatusCode::BAD_REQUEST,
            "limit must be at least 1",
        )),
        Some(n) => Ok(n.min(MAX_LIMIT)),
        None => Ok(DEFAULT_LIMIT),
    }
}

/// The body of `POST /api/messages`.
#[derive(Deserialize, Serialize)]
pub struct SendRequest {
    to: String,
    text: String,
}

#[derive(Deserialize, Serialize)]
pub(super) struct SendResponse {
    id: String,
}

/// The body of `POST /api/contacts`.
#[derive(Deserialize, Serialize)]
pub struct AddContactRequest {
    name: String,
}

#[derive(Deserialize, Serialize)]
pub(super) struct ReadResponse {
    marked: u64,
}

async fn status(State(s): State<Shared>) -> ApiResult<crate::chat::StatusView> {
    Ok(Json(s.client.status().await?))
}

async fn send(
    State(s): State<Shared>,
    body: Result<Json<SendRequest>, JsonRejection>,
) -> ApiResult<SendResponse> {
    let Json(req) = body?;
    // Checked here too (the node checks it after resolving the name), so
    // that an over-long text is refused at once, without a network lookup.
    let len = req.text.trim_end_matches(['\n', '\r']).len();
    if len > MAX_TEXT_BYTES {
        return Err(ApiFailure::new(
            StatusCode::BAD_REQUEST,
            format!("message text is {len} bytes, the most is {MAX_TEXT_BYTES}"),
        ));
    }
    let id = s.client.send(&req.to, &req.text).await?;
    Ok(Json(SendResponse { id }))
}

async fn inbox(
    State(s): State<Shared>,
    q: Result<Query<LimitQuery>, QueryRejection>,
) -> ApiResult<Vec<crate::chat::MessageView>> {
    let limit = limit_of(q)?;
    Ok(Json(s.client.inbox(limit).await?))
}

async fn conversations(State(s): State<Shared>) -> ApiResult<Vec<crate::chat::ConversationView>> {
    Ok(Json(s.client.conversations().await?))
}

async fn history(
    State(s): State<Shared>,
    name: Result<Path<String>, PathRejection>,
    q: Result<Query<LimitQuery>, QueryRejection>,
) -> ApiResult<Vec<crate::chat::MessageView>> {
    let Path(name) = name?;
    let limit = limit_of(q)?;
    Ok(Json(s.client.history(&name, limit).await?))
}

async fn mark_read(
    State(s): State<Shared>,
    name: Result<Path<String>, PathRejection>,
) -> ApiResult<ReadResponse> {
    let Path(name) = name?;
    let marked = s.client.mark_read(&name).await?;
    Ok(Json(ReadResponse { marked }))
}

async fn whois(
    State(s): State<Shared>,
    name: Result<Path<String>, PathRejection>,
) -> ApiResult<crate::chat::WhoisView> {
    let Path(name) = name?;
    Ok(Json(s.client.whois(&name).await?))
}

async fn contacts(State(s): State<Shared>) -> ApiResult<Vec<crate::chat::ContactView>> {
    Ok(Json(s.client.contacts().await?))
}

async fn add_contact(
    State(s): State<Shared>,
    body: Result<Json<AddContactRequest>, JsonRejection>,
) -> ApiResult<crate::chat::ContactView> {
    let Json(req) = body?;
    Ok(Json(s.client.add_contact(&req.name).await?))
}

// ----- the event stream ----------------------------------------------------------

/// How many events the API buffers for its slowest event stream.
pub(super) const EVENT_BUFFER: usize = 256;

/// An item of the API's fan-out channel.
#[derive(Clone, Debug)]
pub(super) enum Fanned {
    Event(ChatEvent),
    /// The forwarder itself fell behind the node by this many events.
    Lagged(u64),
}

/// Moves the node's events to the API's fan-out channel as they come, until
/// the server stops. The node's channel is drained at once (nothing kept for
/// a reader that is not there); each event stream subscribes to `to` and gets
/// at most [`EVENT_BUFFER`] events behind before it is told it lagged.
pub(super) async fn forward_events(
    mut from: broadcast::Receiver<ChatEvent>,
    to: broadcast::Sender<Fanned>,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        let got = tokio::select! {
            r = from.recv() => r,
            _ = stopped.wait_for(|s| *s) => return,
        };
        let item = match got {
            Ok(e) => Fanned::Event(e),
            Err(broadcast::error::RecvError::Lagged(n)) => Fanned::Lagged(n),
            Err(broadcast::error::RecvError::Closed) => return,
        };
        // No stream open: the event is dropped, as it should be.
        let _ = to.send(item);
    }
}

enum Feed {
    Start(broadcast::Receiver<Fanned>, watch::Receiver<bool>),
    Running(broadcast::Receiver<Fanned>, watch::Receiver<bool>),
}

fn lagged_event(n: u64) -> Event {
    Event::default()
        .event("lagged")
        .data(format!(r#"{{"type":"lagged","missed":{n}}}"#))
}

/// The next SSE event of a feed, or `None` when the server stops.
async fn next_event(feed: Feed) -> Option<(Event, Feed)> {
    let (mut rx, mut stopped) = match feed {
        Feed::Start(rx, stopped) => {
            let ev = Event::default().event("ready").data(r#"{"type":"ready"}"#);
            return Some((ev, Feed::Running(rx, stopped)));
        }
        Feed::Running(rx, stopped) => (rx, stopped),
    };
    if *stopped.borrow() {
        return None;
    }
    let got = tokio::select! {
        r = rx.recv() => r,
        _ = stopped.wait_for(|s| *s) => return None,
    };
    let ev = match got {
        Ok(Fanned::Lagged(n)) => lagged_event(n),
        Ok(Fanned::Event(e)) => {
            let name = match &e {
                ChatEvent::Message(_) => "message",
                ChatEvent::State { .. } => "state",
            };
            match serde_json::to_string(&e) {
                Ok(json) => Event::default().event(name).data(json),
                Err(err) => {
                    tracing::warn!("local API: encoding an event: {err}");
                    Event::default().comment("unencodable event skipped")
                }
            }
        }
        // A slow reader: the channel dropped events for it rather than grow.
        // The client should re-read what it shows.
        Err(broadcast::error::RecvError::Lagged(n)) => lagged_event(n),
        Err(broadcast::error::RecvError::Closed) => return None,
    };
    Some((ev, Feed::Running(rx, stopped)))
}

async fn events(
    State(s): State<Shared>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>> + Send + 'static> {
    let feed = Feed::Start(s.events.subscribe(), s.stopped.clone());
    let stream = futures_util::stream::unfold(feed, |f| async move {
        next_event(f).await.map(|(ev, f)| (Ok(ev), f))
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE).text("keep-alive"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_authorities() {
        assert!(is_local_authority("127.0.0.1:8080", 8080));
        assert!(is_local_authority("localhost:8080", 8080));
        assert!(is_local_authority("LocalHost:8080", 8080));
        assert!(!is_local_authority("127.0.0.1:8081", 8080));
        assert!(!is_local_authority("127.0.0.1", 8080));
        assert!(!is_local_authority("evil.com:8080", 8080));
        assert!(!is_local_authority("localhost.evil.com:8080", 8080));
        assert!(!is_local_authority("127.0.0.2:8080", 8080));
        assert!(!is_local_authority("[::1]:8080", 8080));
        assert!(!is_local_authority("127.0.0.1:+8080", 8080));
        assert!(!is_local_authority("user@127.0.0.1:8080", 8080));
    }

    #[tokio::test]
    async fn a_slow_reader_gets_lagged_then_the_rest() {
        let (tx, rx) = broadcast::channel(2);
        let (stop, stopped) = watch::channel(false);
        for i in 0..5 {
            let _ = tx.send(Fanned::Event(ChatEvent::State {
                id: format!("{i}"),
                state: "delivered".into(),
            }));
        }
        let Some((ev, feed)) = next_event(Feed::Running(rx, stopped)).await else {
            panic!("a lagged event");
        };
        let text = format!("{ev:?}");
        assert!(
            text.contains("lagged") && text.contains("missed\\\":3"),
            "{text}"
        );
        let Some((ev, feed)) = next_event(feed).await else {
            panic!("the next event");
        };
        assert!(format!("{ev:?}").contains("\\\"id\\\":\\\"3\\\""));
        stop.send_replace(true);
        assert!(next_event(feed).await.is_none());
    }

    #[test]
    fn statuses() {
        assert_eq!(
            status_of(&ChatError::NoSuchUser("x".into())),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            status_of(&ChatError::BadMessage("x".into())),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status_of(&ChatError::KeyChanged {
                name: "a".into(),
                pinned: "p".into(),
                now: "n".into()
            }),
            StatusCode::CONFLICT
        );
        assert_eq!(
            status_of(&ChatError::Node(NodeError::NoContacts)),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            status_of(&ChatError::NotInitialized("d".into())),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
}
