//! The local API: its guards (loopback only, Host, Origin, token), its error
//! statuses, its event stream, and `ApiClient`, against in-process chat nodes.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use peerchat_node::api::{self, ApiClient, ApiClientError, ApiError, ApiEvent, ApiServer};
use peerchat_node::chat::{ChatConfig, ChatEvent, ChatNode, init};
use peerchat_node::datadir::DataDir;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn start(dir: &Path, name: &str, boot: Option<SocketAddr>) -> ChatNode {
    init(dir, name).await.expect("init");
    let mut cfg = ChatConfig::new(dir.to_path_buf(), "127.0.0.1:0".parse().expect("addr"));
    cfg.bootstrap = boot.into_iter().collect();
    cfg.relay_retry_every = Duration::from_millis(300);
    ChatNode::start(cfg).await.expect("start")
}

async fn serve(node: &ChatNode) -> ApiServer {
    api::serve(
        node,
        "127.0.0.1:0".parse().expect("addr"),
        std::future::pending(),
    )
    .await
    .expect("serve")
}

/// One raw HTTP/1.1 exchange; returns the status and the JSON body (Null if none).
async fn raw(addr: SocketAddr, head: &str, body: &str) -> (u16, Value) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let req = format!(
        "{head}Connection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut out))
        .await
        .expect("answer in time")
        .expect("read");
    let text = String::from_utf8_lossy(&out);
    let (h, b) = text.split_once("\r\n\r\n").expect("a full answer");
    let status = h
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status");
    let json = if b.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(b).expect("a JSON body")
    };
    (status, json)
}

fn get(path: &str, host: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}")
}

fn post(path: &str, host: &str, token: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\n"
    )
}

fn error_of(v: &Value) -> &str {
    v.get("error").and_then(Value::as_str).unwrap_or("")
}

async fn next_event(events: &mut api::EventStream) -> ApiEvent {
    let e = tokio::time::timeout(Duration::from_secs(30), events.next())
        .await
        .expect("an event in time")
        .expect("the stream works")
        .expect("the stream is open");
    eprintln!("event {e:?}");
    e
}

async fn wait_for<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    for _ in 0..400 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guards_errors_and_client_on_one_node() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("alice");
    let node = start(&dir, "alice", None).await;

    // Only 127.0.0.1.
    for bad in ["0.0.0.0:0", "127.0.0.2:0", "[::1]:0", "192.168.1.1:0"] {
        let r = api::serve(&node, bad.parse().expect("addr"), std::future::pending()).await;
        assert!(matches!(r, Err(ApiError::NotLoopback(_))), "{bad}");
    }

    let server = serve(&node).await;
    let addr = server.addr();
    assert_eq!(addr.ip().to_string(), "127.0.0.1");
    assert!(!format!("{server:?}").contains(server.token()));

    // api.json: address and token, mode 0600.
    let info = DataDir::read_api_info(&dir).expect("api.json");
    assert_eq!(info.addr, addr);
    assert_eq!(info.token, server.token());
    assert_eq!(info.token.len(), 64);
    assert_eq!(info.pid, std::process::id());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("api.json"))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    let token = info.token.clone();
    let host = addr.to_string();
    let auth = format!("Authorization: Bearer {token}\r\n");

    // The token.
    let (st, v) = raw(addr, &get("/api/status", &host, &auth), "").await;
    assert_eq!(st, 200);
    assert_eq!(v["name"], "alice");
    let (st, v) = raw(addr, &get("/api/status", &host, ""), "").await;
    assert_eq!(st, 401);
    assert!(error_of(&v).contains("token"));
    let wrong = format!("Authorization: Bearer {}\r\n", "0".repeat(64));
    assert_eq!(
        raw(addr, &get("/api/status", &host, &wrong), "").await.0,
        401
    );
    let basic = format!("Authorization: Basic {token}\r\n");
    assert_eq!(
        raw(addr, &get("/api/status", &host, &basic), "").await.0,
        401
    );
    // Unknown paths are guarded too.
    assert_eq!(raw(addr, &get("/nope", &host, ""), "").await.0, 401);
    let (st, v) = raw(addr, &get("/nope", &host, &auth), "").await;
    assert_eq!(st, 404);
    assert!(!error_of(&v).is_empty());

    // The Host header (DNS rebinding).
    let localhost = format!("localhost:{}", addr.port());
    assert_eq!(
        raw(addr, &get("/api/status", &localhost, &auth), "")
            .await
            .0,
        200
    );
    for bad_host in [
        "evil.example:80".to_string(),
        format!("evil.example:{}", addr.port()),
        format!("127.0.0.1:{}", addr.port().wrapping_add(1)),
        "127.0.0.1".to_string(),
    ] {
        let (st, v) = raw(addr, &get("/api/status", &bad_host, &auth), "").await;
        assert_eq!(st, 403, "{bad_host}");
        assert!(error_of(&v).contains("Host"));
    }

    // The Origin header (cross-site requests).
    let same = format!("{auth}Origin: http://localhost:{}\r\n", addr.port());
    assert_eq!(
        raw(addr, &get("/api/status", &host, &same), "").await.0,
        200
    );
    for origin in [
        "http://evil.example".to_string(),
        "null".to_string(),
        format!("https://127.0.0.1:{}", addr.port()),
        format!("http://127.0.0.1:{}.evil.example", addr.port()),
    ] {
        let h = format!("{auth}Origin: {origin}\r\n");
        let (st, v) = raw(addr, &get("/api/status", &host, &h), "").await;
        assert_eq!(st, 403, "{origin}");
        assert!(error_of(&v).contains("cross-origin"));
    }

    // Bad input and unknown users.
    let send = post("/api/messages", &host, &token);
    let (st, v) = raw(addr, &send, r#"{"to":"nobody","text":"hi"}"#).await;
    assert_eq!(st, 404);
    assert_eq!(error_of(&v), "no such user: nobody");
    let (st, v) = raw(addr, &send, r#"{"to":"nobody","text":"  "}"#).await;
    assert_eq!(st, 400);
    assert!(error_of(&v).contains("empty"));
    let (st, v) = raw(addr, &send, r#"{"to":"alice","text":"hi me"}"#).await;
    assert_eq!(st, 400, "sending to oneself: {v}");
    let long = format!(r#"{{"to":"nobody","text":"{}"}}"#, "x".repeat(2000));
    let (st, v) = raw(addr, &send, &long).await;
    assert_eq!(st, 400);
    assert!(error_of(&v).contains("bytes"));
    let huge = format!(r#"{{"to":"nobody","text":"{}"}}"#, "x".repeat(20_000));
    assert_eq!(raw(addr, &send, &huge).await.0, 413);
    let (st, v) = raw(addr, &send, r#"{"to":"Not A Name","text":"hi"}"#).await;
    assert_eq!(st, 400);
    assert!(error_of(&v).contains("invalid name"));
    assert_eq!(raw(addr, &send, r#"{"to":"bob"}"#).await.0, 400);
    assert_eq!(raw(addr, &send, "not json").await.0, 400);
    let (st, _) = raw(addr, &get("/api/inbox?limit=x", &host, &auth), "").await;
    assert_eq!(st, 400);
    let (st, _) = raw(addr, &get("/api/whois/nobody", &host, &auth), "").await;
    assert_eq!(st, 404);
    let (st, _) = raw(addr, &get("/api/messages", &host, &auth), "").await;
    assert_eq!(st, 405);

    // The client.
    let client = ApiClient::from_data_dir(&dir).expect("client");
    assert!(!format!("{client:?}").contains(&token));
    let status = client.status().await.expect("status");
    assert_eq!(status.name, "alice");
    assert_eq!(status.routing_table, 0);
    assert!(client.inbox(Some(10)).await.expect("inbox").is_empty());
    assert!(
        client
            .conversations()
            .await
            .expect("conversations")
            .is_empty()
    );
    assert!(client.contacts().await.expect("contacts").is_empty());
    let me = client.whois("alice").await.expect("whois me");
    assert_eq!(me.key, status.key);
    let e = client.whois("nobody").await.expect_err("no such user");
    assert_eq!(e.status(), Some(404));
    assert_eq!(e.to_string(), "no such user: nobody");
    let e = client
        .send("alice", "hi")
        .await
        .expect_err("not to oneself");
    assert_eq!(e.status(), Some(400));
    let e = client
        .add_contact("nobody")
        .await
        .expect_err("no such user");
    assert_eq!(e.status(), Some(404));
    let e = client
        .history("bad name", None)
        .await
        .expect_err("bad name");
    assert_eq!(e.status(), Some(400));
    let bad = ApiClient::new(addr, "0".repeat(64));
    assert_eq!(bad.status().await.expect_err("401").status(), Some(401));

    // The event stream: `ready` first; it ends when the server stops.
    let mut events = client.events().await.expect("events");
    assert_eq!(next_event(&mut events).await, ApiEvent::Ready);
    let (st, _) = raw(addr, &get("/api/events", &host, ""), "").await;
    assert_eq!(st, 401);
    tokio::time::timeout(Duration::from_secs(10), server.shutdown())
        .await
        .expect("the server stops in time")
        .expect("the server stops cleanly");
    let end = tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .expect("the stream ends in time");
    assert!(matches!(end, Ok(None)), "{end:?}");

    // A node that is gone: api.json removed, or left behind with nothing listening.
    node.shutdown().await;
    let e = ApiClient::from_data_dir(&dir).expect_err("not running");
    assert!(matches!(e, ApiClientError::NotRunning { .. }));
    let msg = e.to_string();
    assert!(
        msg.contains("no peerchat is running with data dir"),
        "{msg}"
    );
    assert!(msg.contains("run`"), "{msg}");
    let stale = format!(r#"{{"addr":"{addr}","token":"{token}","pid":1}}"#);
    std::fs::write(dir.join("api.json"), stale).expect("write");
    let client = ApiClient::from_data_dir(&dir).expect("reads api.json");
    let e = client.status().await.expect_err("nothing listens");
    assert!(matches!(e, ApiClientError::NotRunning { .. }), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_and_events_between_two_users() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let relay = start(&tmp.path().join("relay"), "relay", None).await;
    let boot = relay.listen_addr();
    let alice = start(&tmp.path().join("alice"), "alice", Some(boot)).await;
    let bob = start(&tmp.path().join("bob"), "bob", Some(boot)).await;
    let (a, b) = (alice.client(), bob.client());
    wait_for("names claimed", || async {
        a.status().await.is_ok_and(|s| s.name_claimed)
            && b.status().await.is_ok_and(|s| s.name_claimed)
    })
    .await;
    let bob_status = b.status().await.expect("status");

    let server = serve(&alice).await;
    let client = ApiClient::from_data_dir(tmp.path().join("alice")).expect("client");
    let mut events = client.events().await.expect("events");
    assert_eq!(next_event(&mut events).await, ApiEvent::Ready);

    // Adding a contact shows the key's fingerprint.
    let c = client.add_contact("bob").await.expect("add bob");
    assert_eq!(c.name, "bob");
    assert_eq!(c.fingerprint, bob_status.fingerprint);
    assert_eq!(c.key, bob_status.key);
    let contacts = client.contacts().await.expect("contacts");
    assert!(contacts.iter().any(|c| c.name == "bob"));
    let w = client.whois("bob").await.expect("whois bob");
    assert_eq!(w.key, bob_status.key);

    // A message through the API: queued, then delivered, seen on the event stream.
    let id = client
        .send("bob", "hello through the API")
        .await
        .expect("send");
    assert_eq!(id.len(), 32);
    let mut queued = false;
    let mut delivered = false;
    while !(queued && delivered) {
        match next_event(&mut events).await {
            ApiEvent::Chat(ChatEvent::Message(m)) if m.id == id => {
                assert_eq!(m.direction, "out");
                assert_eq!(m.text, "hello through the API");
                queued = true;
            }
            ApiEvent::Chat(ChatEvent::State { id: i, state })
                if i == id && state == "delivered" =>
            {
                delivered = true;
            }
            _ => {}
        }
    }
    wait_for("bob has it", || async {
        b.inbox(10)
            .await
            .is_ok_and(|m| m.iter().any(|m| m.id == id))
    })
    .await;
    let history = client.history("bob", Some(10)).await.expect("history");
    let m = history.iter().find(|m| m.id == id).expect("in the history");
    assert!(m.state == "delivered" || m.state == "read", "{}", m.state);
    let convs = client.conversations().await.expect("conversations");
    assert!(convs.iter().any(|c| c.peer == "bob" && c.last.id == id));

    // Bob answers; alice's stream shows it; marking read clears the unread count.
    let reply = b.send("alice", "hi alice").await.expect("reply");
    loop {
        if let ApiEvent::Chat(ChatEvent::Message(m)) = next_event(&mut events).await
            && m.id == reply
        {
            assert_eq!(m.direction, "in");
            assert_eq!(m.from, "bob");
            break;
        }
    }
    let inbox = client.inbox(None).await.expect("inbox");
    assert!(inbox.iter().any(|m| m.id == reply && m.text == "hi alice"));
    assert!(client.status().await.expect("status").unread >= 1);
    assert!(client.mark_read("bob").await.expect("mark read") >= 1);
    assert_eq!(client.status().await.expect("status").unread, 0);

    server.shutdown().await.expect("stop");
    alice.shutdown().await;
    bob.shutdown().await;
    relay.shutdown().await;
}
