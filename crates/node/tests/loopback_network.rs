//! A small network of real nodes on loopback: bootstrap, lookups, BEP 44 and BEP 5.

use std::net::SocketAddr;
use std::time::Duration;

use peerchat_kad::bep44::MutableItem;
use peerchat_kad::{NodeId, Value};
use peerchat_node::{NodeConfig, NodeHandle, spawn};

async fn network(n: usize) -> Vec<NodeHandle> {
    let local: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut nodes = Vec::new();
    for i in 0..n {
        let mut cfg = NodeConfig::new(local);
        cfg.seed = Some(i as u64 + 1);
        let (h, _task) = spawn(cfg).await.unwrap();
        if i > 0 {
            let first = nodes.first().map(|h: &NodeHandle| h.local_addr()).unwrap();
            h.bootstrap(&[first]).await.unwrap();
        }
        nodes.push(h);
    }
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_nodes_store_and_find() {
    let nodes = network(30).await;
    for h in &nodes[1..] {
        assert!(h.live_contacts() >= 1, "node {} has no contact", h.id());
    }
    // find_node of an existing node's id returns that node first.
    let target = nodes[17].id();
    let (found, stats) = nodes[3].find_node(target).await.unwrap();
    assert_eq!(found.first().map(|n| n.id), Some(target));
    assert!(stats.hops >= 1);

    // BEP 44 immutable.
    let value = Value::Bytes(b"Hello World!".to_vec());
    let (target, stored, _) = nodes[5].put_immutable(value.clone()).await.unwrap();
    assert!(stored >= 1);
    assert_eq!(target.to_hex(), "e5f96f6f38320f0f33959cb4d3d656452117aadb");
    for h in &nodes[20..25] {
        let (got, _) = h.get_immutable(target).await.unwrap();
        assert_eq!(got.as_ref(), Some(&value));
    }
    // A target nobody stored.
    let (none, _) = nodes[9].get_immutable(NodeId([7; 20])).await.unwrap();
    assert_eq!(none, None);

    // BEP 44 mutable, with salt, then a newer seq.
    let secret = [42u8; 32];
    let item =
        MutableItem::sign(&secret, b"salt".to_vec(), 1, Value::Bytes(b"one".to_vec())).unwrap();
    let (_, stored, errors, _) = nodes[2].put_mutable(item.clone(), None).await.unwrap();
    assert!(stored >= 1, "errors: {errors:?}");
    let (got, _) = nodes[28]
        .get_mutable(item.key, b"salt".to_vec(), None)
        .await
        .unwrap();
    assert_eq!(got.as_ref().map(|m| m.seq), Some(1));
    let newer =
        MutableItem::sign(&secret, b"salt".to_vec(), 2, Value::Bytes(b"two".to_vec())).unwrap();
    nodes[11].put_mutable(newer.clone(), Some(1)).await.unwrap();
    let (got, _) = nodes[14]
        .get_mutable(item.key, b"salt".to_vec(), None)
        .await
        .unwrap();
    assert_eq!(got.map(|m| m.value), Some(Value::Bytes(b"two".to_vec())));
    // An older seq is refused (302) by the nodes that hold the newer one
    // (a node that never got seq 2 may take it), and readers still get seq 2.
    let (_, stored, errors, _) = nodes[12].put_mutable(item.clone(), None).await.unwrap();
    assert!(errors.len() > stored, "stored {stored}, errors {errors:?}");
    assert!(errors.iter().all(|e| e.code == 302), "{errors:?}");
    let (got, _) = nodes[15]
        .get_mutable(item.key, b"salt".to_vec(), None)
        .await
        .unwrap();
    assert_eq!(got.map(|m| m.seq), Some(2));

    // BEP 5 announce and get_peers.
    let info_hash = NodeId([3; 20]);
    let (stored, _) = nodes[7].announce_peer(info_hash, Some(4242)).await.unwrap();
    assert!(stored >= 1);
    let (peers, _) = nodes[21].get_peers(info_hash).await.unwrap();
    assert!(peers.iter().any(|p| p.port() == 4242), "{peers:?}");
}

#[tokio::test]
async fn bootstrap_to_nowhere_fails_clearly() {
    let mut cfg = NodeConfig::new("127.0.0.1:0".parse().unwrap());
    cfg.dht.request_expiry = Duration::from_millis(300);
    cfg.dht.request_timeout = Duration::from_millis(100);
    let (h, _task) = spawn(cfg).await.unwrap();
    // A bound socket that never answers.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let err = h
        .bootstrap(&[silent.local_addr().unwrap()])
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("no bootstrap node answered"),
        "{err}"
    );
}

#[tokio::test]
async fn port_in_use_is_a_clear_error() {
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let err = spawn(NodeConfig::new(taken.local_addr().unwrap()))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("cannot listen on UDP"), "{err}");
}
