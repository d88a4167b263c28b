//! A node asked for port 0 gets one port number for its DHT (UDP) and its
//! sessions (TCP), even when many TCP sockets already hold ephemeral ports.

use std::time::Duration;

use peerchat_node::chat::{ChatConfig, ChatNode, init};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_zero_finds_a_port_free_for_udp_and_tcp() {
    // Hold a third of the ephemeral port range with TCP listeners, as a busy
    // machine's connections do. A UDP port picked by the kernel alone would
    // then be taken for TCP one time in three.
    let mut held = Vec::new();
    while held.len() < 9_000 {
        match std::net::TcpListener::bind("127.0.0.1:0") {
            Ok(l) => held.push(l),
            Err(e) => panic!("holding port {}: {e}", held.len()),
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut nodes = Vec::new();
    for i in 0..16 {
        let dir = tmp.path().join(format!("u{i}"));
        init(&dir, &format!("user{i}")).await.unwrap();
        let cfg = ChatConfig::new(dir, "127.0.0.1:0".parse().unwrap());
        let node = ChatNode::start(cfg)
            .await
            .unwrap_or_else(|e| panic!("node {i} on port 0: {e}"));
        assert_ne!(node.listen_addr().port(), 0);
        nodes.push(node);
    }
    // Each node's TCP side answers on its DHT port.
    for n in &nodes {
        let c = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::net::TcpStream::connect(n.listen_addr()),
        )
        .await
        .expect("connect timed out");
        assert!(c.is_ok(), "no TCP listener on {}", n.listen_addr());
    }
    for n in nodes {
        n.shutdown().await;
    }
    drop(held);
}
