//! The web app's routes: its static files (served without the token, with a
//! Content-Security-Policy, behind the Host and Origin checks) and
//! `GET /api/network`, against in-process chat nodes.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use peerchat_node::api::{self, ApiClient, ApiServer};
use peerchat_node::chat::{ChatConfig, ChatNode, init};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn start(dir: &Path, name: &str, boot: Option<SocketAddr>) -> ChatNode {
    init(dir, name).await.expect("init");
    let mut cfg = ChatConfig::new(dir.to_path_buf(), "127.0.0.1:0".parse().expect("addr"));
    cfg.bootstrap = boot.into_iter().collect();
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

/// An answer: status, headers (lower-case names) and body.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One raw HTTP/1.1 request (`extra`: more header lines, each ending in CRLF).
async fn request(addr: SocketAddr, method: &str, path: &str, host: &str, extra: &str) -> Answer {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let req =
        format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut out))
        .await
        .expect("answer in time")
        .expect("read");
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a full answer");
    let head = String::from_utf8_lossy(&out[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .expect("a status");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Answer {
        status,
        headers,
        body: out[split + 4..].to_vec(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_files_headers_and_guards() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("alice");
    let node = start(&dir, "alice", None).await;
    let server = serve(&node).await;
    let addr = server.addr();
    let host = addr.to_string();
    let token = server.token().to_string();

    // The web app's address carries the token in the fragment only.
    let url = server.web_url();
    assert_eq!(url, format!("http://{addr}/#token={token}"));

    // The page and its files, without the token.
    for (path, ctype, needle) in [
        ("/", "text/html", "<script src=\"/app.js\""),
        ("/app.js", "text/javascript", "/api/events"),
        ("/app.css", "text/css", ":focus-visible"),
        ("/icon.svg", "image/svg+xml", "<svg"),
    ] {
        let a = request(addr, "GET", path, &host, "").await;
        assert_eq!(a.status, 200, "{path}");
        assert!(
            a.header("content-type")
                .is_some_and(|v| v.starts_with(ctype)),
            "{path}: {:?}",
            a.header("content-type")
        );
        assert!(a.text().contains(needle), "{path}");
        let csp = a.header("content-security-policy").expect("a CSP");
        assert!(csp.contains("default-src 'self'"), "{csp}");
        assert!(csp.contains("script-src 'self'"), "{csp}");
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        assert_eq!(a.header("x-frame-options"), Some("DENY"));
        assert_eq!(a.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(a.header("cache-control"), Some("no-store"));
        // Nothing of the token in what is served without it.
        assert!(!a.text().contains(&token), "{path}");
        // The same origin's Origin header is fine (module scripts, fetches).
        let same = format!("Origin: http://127.0.0.1:{}\r\n", addr.port());
        assert_eq!(request(addr, "GET", path, &host, &same).await.status, 200);
    }
    let head = request(addr, "HEAD", "/", &host, "").await;
    assert_eq!(head.status, 200);

    // The page has no inline script or style, and loads nothing from elsewhere.
    let page = request(addr, "GET", "/", &host, "").await.text();
    assert!(!page.contains("<script>") && !page.contains("style="));
    assert!(!page.contains("http://") && !page.contains("https://"));

    // A foreign Host (DNS rebinding) or Origin (cross-site) is refused on them too.
    for path in ["/", "/app.js", "/api/network"] {
        for bad_host in [
            format!("evil.example:{}", addr.port()),
            "evil.example".to_string(),
        ] {
            let a = request(addr, "GET", path, &bad_host, "").await;
            assert_eq!(a.status, 403, "{path} with Host {bad_host}");
            assert!(a.text().contains("Host"), "{}", a.text());
        }
        for origin in ["http://evil.example", "null"] {
            let h = format!("Origin: {origin}\r\nAuthorization: Bearer {token}\r\n");
            let a = request(addr, "GET", path, &host, &h).await;
            assert_eq!(a.status, 403, "{path} with Origin {origin}");
            assert!(a.text().contains("cross-origin"), "{}", a.text());
        }
    }

    // Only the static files go without the token: other paths, other methods
    // and every /api/* path still need it.
    for (method, path) in [
        ("GET", "/api/network"),
        ("GET", "/api/status"),
        ("GET", "/index.html"),
        ("GET", "/app.js.map"),
        ("POST", "/"),
    ] {
        let a = request(addr, method, path, &host, "Content-Length: 0\r\n").await;
        assert_eq!(a.status, 401, "{method} {path}");
        assert_eq!(a.header("www-authenticate"), Some("Bearer"));
    }
    let wrong = format!("Authorization: Bearer {}\r\n", "0".repeat(64));
    assert_eq!(
        request(addr, "GET", "/api/network", &host, &wrong)
            .await
            .status,
        401
    );

    // The network view of a node alone: its id, no contacts.
    let auth = format!("Authorization: Bearer {token}\r\n");
    let a = request(addr, "GET", "/api/network", &host, &auth).await;
    assert_eq!(a.status, 200);
    assert!(
        a.header("content-type")
            .is_some_and(|v| v.starts_with("application/json"))
    );
    let v: serde_json::Value = serde_json::from_slice(&a.body).expect("JSON");
    let status = node.client().status().await.expect("status");
    assert_eq!(v["node_id"], status.node_id);
    assert_eq!(v["contacts"], 0);
    assert_eq!(v["buckets"].as_array().map(Vec::len), Some(0));
    assert!(v["lookups"].is_array());

    server.shutdown().await.expect("stop");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_network_view_shows_buckets_and_lookups() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let first = start(&tmp.path().join("first"), "first", None).await;
    let boot = first.listen_addr();
    let mut others = Vec::new();
    for i in 0..4 {
        others.push(
            start(
                &tmp.path().join(format!("n{i}")),
                &format!("n{i}"),
                Some(boot),
            )
            .await,
        );
    }
    let server = serve(&first).await;
    let client = ApiClient::from_data_dir(tmp.path().join("first")).expect("client");

    // Each joiner's bootstrap fills the first node's table.
    let mut view = client.network().await.expect("network");
    for _ in 0..300 {
        if view.contacts >= 4 && !view.lookups.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        view = client.network().await.expect("network");
    }
    assert!(view.contacts >= 4, "{view:?}");
    let status = client.status().await.expect("status");
    assert_eq!(view.node_id, status.node_id);
    // (Another snapshot: the table may have grown in between.)
    assert!(status.routing_table >= 4);
    let own = hex_bytes(&view.node_id);
    let mut seen = 0;
    let mut last_index = usize::MAX;
    for b in &view.buckets {
        assert!(b.index < 160);
        assert!(b.index < last_index, "farthest first, once each");
        last_index = b.index;
        for p in &b.contacts {
            seen += 1;
            // The distance is the XOR of the ids, and lands in its bucket.
            let id = hex_bytes(&p.id);
            let xor: Vec<u8> = own.iter().zip(&id).map(|(a, b)| a ^ b).collect();
            assert_eq!(hex_bytes(&p.distance), xor);
            let lz = xor
                .iter()
                .position(|&x| x != 0)
                .map(|i| i as u32 * 8 + xor[i].leading_zeros())
                .expect("not our own id");
            assert_eq!(159 - lz as usize, b.index, "{p:?}");
            assert!(
                p.log2_distance >= b.index as f64 && p.log2_distance < b.index as f64 + 1.0,
                "{p:?}"
            );
            assert!(p.addr.starts_with("127.0.0.1:"), "{p:?}");
            assert!(p.last_seen_ms < 60_000, "{p:?}");
        }
    }
    assert_eq!(seen, view.contacts);

    // A name lookup from the first node shows among its recent lookups,
    // newest first, with its figures.
    let mut found = false;
    for _ in 0..300 {
        if client.whois("n0").await.is_ok() {
            found = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(found, "n0's name is on the network");
    let view = client.network().await.expect("network");
    assert!(
        view.lookups
            .iter()
            .any(|l| l.rpcs >= 1 && l.hops >= 1 && l.found >= 1 && l.ago_ms < 10_000),
        "{:?}",
        view.lookups
    );
    assert!(view.lookups.len() <= peerchat_node::RECENT_LOOKUPS);
    for w in view.lookups.windows(2) {
        assert!(w[0].ago_ms <= w[1].ago_ms, "newest first: {view:?}");
    }
    for l in &view.lookups {
        assert!(
            [
                "bootstrap",
                "find_node",
                "get_peers",
                "announce_peer",
                "get",
                "put"
            ]
            .contains(&l.kind.as_str()),
            "{l:?}"
        );
        assert_eq!(l.target.len(), 40);
    }

    server.shutdown().await.expect("stop");
    for n in others {
        n.shutdown().await;
    }
    first.shutdown().await;
}

fn hex_bytes(s: &str) -> Vec<u8> {
    assert_eq!(s.len(), 40, "{s}");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}
