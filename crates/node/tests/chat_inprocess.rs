//! Chat nodes in one process on loopback: names, direct delivery, offline
//! delivery through relays, exactly once.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use peerchat_chat::{UserKey, presence_target};
use peerchat_node::chat::{ChatClient, ChatConfig, ChatNode, init};

fn unhex(s: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex key");
    }
    out
}

async fn start(dir: &Path, name: &str, boot: Option<SocketAddr>, fresh: bool) -> ChatNode {
    if fresh {
        init(dir, name).await.unwrap();
    }
    let mut cfg = ChatConfig::new(dir.to_path_buf(), "127.0.0.1:0".parse().unwrap());
    cfg.bootstrap = boot.into_iter().collect();
    cfg.relay_retry_every = Duration::from_millis(300);
    ChatNode::start(cfg).await.unwrap()
}

async fn wait_for<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    for _ in 0..300 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

async fn state_of(c: &ChatClient, peer: &str, id: &str) -> String {
    c.history(peer, 100)
        .await
        .unwrap()
        .into_iter()
        .find(|m| m.id == id)
        .map(|m| m.state)
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_and_offline_delivery() {
    let tmp = tempfile::tempdir().unwrap();
    let first = start(&tmp.path().join("relay0"), "relay0", None, true).await;
    let boot = first.listen_addr();
    let mut relays = vec![first];
    for i in 1..6 {
        relays.push(
            start(
                &tmp.path().join(format!("relay{i}")),
                &format!("relay{i}"),
                Some(boot),
                true,
            )
            .await,
        );
    }
    let alice = start(&tmp.path().join("alice"), "alice", Some(boot), true).await;
    let bob = start(&tmp.path().join("bob"), "bob", Some(boot), true).await;
    let (a, b) = (alice.client(), bob.client());
    wait_for("names claimed", || async {
        a.status().await.unwrap().name_claimed && b.status().await.unwrap().name_claimed
    })
    .await;

    // whois resolves to the right key, in one lookup: the storers of bob's
    // claim answer the lookup's find_node with it, so no pc_resolve follows.
    let extension_sent = || async { a.dht_snapshot().await.unwrap().stats.sent[6] };
    let before = extension_sent().await;
    let w = a.whois("bob").await.unwrap();
    assert_eq!(
        extension_sent().await,
        before,
        "whois asked with pc_resolve after its lookup"
    );
    assert_eq!(w.key, b.status().await.unwrap().key);
    assert!(a.whois("nobody").await.is_err());
    // Bob's presence came with his claim, from the name's storers: one lookup,
    // none of his BEP 44 item.
    assert_eq!(w.chat_addrs, vec![bob.listen_addr().to_string()]);
    let bob_presence = presence_target(&UserKey(unhex(&w.key)));
    let lookups = a.dht_snapshot().await.unwrap().lookups;
    assert!(
        !lookups.iter().any(|l| l.target == bob_presence),
        "whois looked bob's presence item up: {lookups:?}"
    );

    // Direct: bob is online.
    let id = a.send("bob", "hello bob").await.unwrap();
    wait_for("bob gets it", || async {
        b.inbox(10)
            .await
            .unwrap()
            .iter()
            .any(|m| m.id == id && m.text == "hello bob")
    })
    .await;
    wait_for("delivered", || async {
        state_of(&a, "bob", &id).await == "delivered"
    })
    .await;

    // Bob never added alice: her message names her anyway, and bob's node
    // checked that name against the network before pinning it to her key.
    wait_for("bob knows the sender by name", || async {
        b.inbox(10)
            .await
            .unwrap()
            .iter()
            .any(|m| m.id == id && m.from == "alice" && m.peer == "alice")
    })
    .await;
    let alice_key = a.status().await.unwrap().key;
    let pinned = b.contacts().await.unwrap();
    assert!(
        pinned
            .iter()
            .any(|c| c.name == "alice" && c.key == alice_key),
        "alice pinned under her own key: {pinned:?}"
    );
    assert!(
        b.history("alice", 10)
            .await
            .unwrap()
            .iter()
            .any(|m| m.id == id)
    );

    // Offline: bob leaves; alice writes; bob comes back and gets it exactly once.
    let bob_dir = tmp.path().join("bob");
    bob.shutdown().await;
    let id2 = a.send("bob", "while you were away").await.unwrap();
    wait_for("relayed", || async {
        state_of(&a, "bob", &id2).await == "relayed"
    })
    .await;
    let bob = start(&bob_dir, "bob", Some(boot), false).await;
    let b = bob.client();
    wait_for("bob gets the offline message", || async {
        b.inbox(10).await.unwrap().iter().any(|m| m.id == id2)
    })
    .await;
    wait_for("delivered after relay", || async {
        state_of(&a, "bob", &id2).await == "delivered"
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let inbox = b.inbox(100).await.unwrap();
    assert_eq!(inbox.iter().filter(|m| m.id == id2).count(), 1);
    assert_eq!(inbox.iter().filter(|m| m.id == id).count(), 1);
    // Relays dropped their copies once bob acknowledged.
    wait_for("relays emptied", || async {
        let mut total = 0;
        for r in &relays {
            total += r.client().status().await.unwrap().relay_queue;
        }
        total == 0
    })
    .await;
}
