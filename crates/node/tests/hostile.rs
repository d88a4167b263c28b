//! Hostile peers against real nodes on loopback, speaking KRPC by hand from raw
//! UDP sockets: a `pc_store` flood from one address, replayed and tampered
//! envelopes, and a storm of oversized and random datagrams. Every case ends in a
//! KRPC error or a counted drop; honest peers still get through.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use peerchat_chat::{
    Content, Envelope, Identity, NameClaim, Presence, RelayConfig, UserKey, Username, beside_claim,
    from_beside_claim, newest_presence,
};
use peerchat_kad::krpc::{Body, Message, Query};
use peerchat_kad::{NodeId, Value};
use peerchat_node::chat::{ChatClient, ChatConfig, ChatNode, init};
use peerchat_node::{NodeConfig, spawn};
use rand::RngCore;
use tokio::net::UdpSocket;

/// The tests measure memory and count drops: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn start(dir: &Path, name: &str, boot: Option<SocketAddr>, relay: RelayConfig) -> ChatNode {
    init(dir, name).await.unwrap();
    let mut cfg = ChatConfig::new(dir.to_path_buf(), "127.0.0.1:0".parse().unwrap());
    cfg.bootstrap = boot.into_iter().collect();
    cfg.relay_retry_every = Duration::from_millis(300);
    cfg.relay = relay;
    ChatNode::start(cfg).await.unwrap()
}

/// A node with the default relay settings, joining through `relay`.
async fn join(root: &Path, name: &str, relay: &ChatNode) -> ChatNode {
    start(
        &root.join(name),
        name,
        Some(relay.listen_addr()),
        RelayConfig::default(),
    )
    .await
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

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A peer speaking KRPC by hand from its own socket.
struct RawPeer {
    sock: UdpSocket,
    id: NodeId,
    tid: u32,
}

impl RawPeer {
    async fn bind(ip: &str) -> RawPeer {
        let mut id = [0u8; 20];
        rand::rng().fill_bytes(&mut id);
        RawPeer {
            sock: UdpSocket::bind(format!("{ip}:0")).await.unwrap(),
            id: NodeId(id),
            tid: 0,
        }
    }

    /// Sends one extension query and waits for its answer: `Ok(fields)` or
    /// `Err((code, message))`.
    async fn ask(
        &mut self,
        to: SocketAddr,
        method: &str,
        args: BTreeMap<Vec<u8>, Value>,
    ) -> Result<BTreeMap<Vec<u8>, Value>, (i64, String)> {
        let query = Query::Other {
            method: method.as_bytes().to_vec(),
            args,
        };
        self.query(to, query).await
    }

    /// Sends one query and waits for its answer: the fields beyond BEP 5's
    /// own, or `Err((code, message))`.
    async fn query(
        &mut self,
        to: SocketAddr,
        query: Query,
    ) -> Result<BTreeMap<Vec<u8>, Value>, (i64, String)> {
        self.tid += 1;
        let tid = self.tid.to_be_bytes().to_vec();
        let msg = Message {
            tid: tid.clone(),
            version: None,
            ip: None,
            read_only: true,
            body: Body::Query { id: self.id, query },
        };
        self.sock.send_to(&msg.encode(), to).await.unwrap();
        let mut buf = vec![0u8; 2048];
        loop {
            let (n, _) =
                tokio::time::timeout(Duration::from_secs(10), self.sock.recv_from(&mut buf))
                    .await
                    .expect("no answer to a query")
                    .unwrap();
            let Ok(m) = Message::decode(&buf[..n]) else {
                continue;
            };
            if m.tid != tid {
                continue;
            }
            return match m.body {
                Body::Response(r) => Ok(r.other),
                Body::Error(e) => Err((e.code, e.message)),
                Body::Query { .. } => panic!("answered with a query"),
            };
        }
    }

    async fn store(
        &mut self,
        to: SocketAddr,
        env_bytes: Vec<u8>,
    ) -> Result<BTreeMap<Vec<u8>, Value>, (i64, String)> {
        let mut args = BTreeMap::new();
        args.insert(b"env".to_vec(), Value::Bytes(env_bytes));
        self.ask(to, "pc_store", args).await
    }
}

fn seal(from: &Identity, to: &UserKey, text: &str) -> Envelope {
    Envelope::seal(from, to, &Content::text(text), now_ms(), &mut rand::rng()).unwrap()
}

async fn count_text(c: &ChatClient, text: &str) -> usize {
    c.inbox(1000)
        .await
        .unwrap()
        .iter()
        .filter(|m| m.text == text)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_flood_from_one_address_is_capped_and_honest_senders_get_through() {
    let _serial = SERIAL.lock().await;
    let tmp = tempfile::tempdir().unwrap();
    let quota = RelayConfig {
        max_per_ip: 16,
        max_per_sender: 4,
        ..RelayConfig::default()
    };
    let relay = start(&tmp.path().join("relay"), "relay", None, quota.clone()).await;
    // A third node, so that records have a storer other than the one looking.
    let witness = join(tmp.path(), "witness", &relay).await;
    let bob = join(tmp.path(), "bob", &relay).await;
    let r = relay.client();
    wait_for("bob's presence at the relay", || async {
        r.whois("bob").await.is_ok_and(|w| w.presence_ms.is_some())
    })
    .await;

    // The flood: 80 valid envelopes from 127.0.0.66, a new sender key every 4
    // (so the sender quota alone would not stop it), for users who are offline.
    let mut attacker = RawPeer::bind("127.0.0.66").await;
    let (mut stored, mut refused) = (0, 0);
    let mut sender = Identity::generate(&mut rand::rng());
    for i in 0..80 {
        if i % 4 == 0 {
            sender = Identity::generate(&mut rand::rng());
        }
        let victim = Identity::generate(&mut rand::rng()).public();
        match attacker
            .store(
                relay.listen_addr(),
                seal(&sender, &victim, "spam").to_bytes(),
            )
            .await
        {
            Ok(_) => stored += 1,
            Err((code, msg)) => {
                assert_eq!(code, 201, "{msg}");
                assert!(msg.contains("source address quota of 16"), "{msg}");
                refused += 1;
            }
        }
    }
    assert_eq!((stored, refused), (16, 64));
    assert_eq!(r.status().await.unwrap().relay_queue, 16);

    // An honest sender elsewhere: stored, pushed to bob, shown once, cleared.
    let mut honest = RawPeer::bind("127.0.0.77").await;
    let carol = Identity::generate(&mut rand::rng());
    let env = seal(&carol, &bob.key(), "hello through the flood");
    honest
        .store(relay.listen_addr(), env.to_bytes())
        .await
        .expect("the honest envelope is stored");
    let b = bob.client();
    wait_for("bob gets the honest message", || async {
        count_text(&b, "hello through the flood").await == 1
    })
    .await;
    // The relay drops its delivered copy and keeps bob's delivery receipt for
    // carol (offline): 16 + 1, settled (18 would mean the copy stayed).
    wait_for("the relay drops the delivered copy", || async {
        r.status().await.unwrap().relay_queue == 17
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(r.status().await.unwrap().relay_queue, 17);
    assert_eq!(count_text(&b, "spam").await, 0);
    bob.shutdown().await;
    witness.shutdown().await;
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_envelopes_are_shown_once_and_tampered_ones_never() {
    let _serial = SERIAL.lock().await;
    let tmp = tempfile::tempdir().unwrap();
    let relay = start(
        &tmp.path().join("relay"),
        "relay",
        None,
        RelayConfig::default(),
    )
    .await;
    let witness = join(tmp.path(), "witness", &relay).await;
    let bob = join(tmp.path(), "bob", &relay).await;
    let (r, b) = (relay.client(), bob.client());
    wait_for("bob's presence at the relay", || async {
        r.whois("bob").await.is_ok_and(|w| w.presence_ms.is_some())
    })
    .await;
    let carol = Identity::generate(&mut rand::rng());
    let env = seal(&carol, &bob.key(), "only once");

    // Replayed straight at bob, from several addresses, and through the relay.
    for ip in ["127.0.0.21", "127.0.0.22", "127.0.0.23"] {
        let mut peer = RawPeer::bind(ip).await;
        for _ in 0..3 {
            peer.store(bob.listen_addr(), env.to_bytes())
                .await
                .expect("a valid envelope is accepted");
        }
        peer.store(relay.listen_addr(), env.to_bytes())
            .await
            .expect("a valid envelope is accepted by the relay");
    }
    // Bob acks the relay's copy away and sends carol (offline) one delivery
    // receipt, which the relay keeps for her: one envelope in all.
    wait_for("the relay drops its copy and keeps one receipt", || async {
        r.status().await.unwrap().relay_queue == 1
    })
    .await;
    assert_eq!(count_text(&b, "only once").await, 1);
    // After delivery, the relay refuses to keep it again (the ack left a tombstone),
    // bob still shows it once, and replays make no new receipts.
    let mut late = RawPeer::bind("127.0.0.24").await;
    for _ in 0..3 {
        late.store(relay.listen_addr(), env.to_bytes())
            .await
            .expect("a replay is answered");
        late.store(bob.listen_addr(), env.to_bytes())
            .await
            .expect("a replay is answered");
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(r.status().await.unwrap().relay_queue, 1);
    assert_eq!(count_text(&b, "only once").await, 1);

    // A relay that tampers: bit flips in the ciphertext, the sender key, the
    // signature; and the envelope re-signed under the relay's own key.
    let mallory = Identity::generate(&mut rand::rng());
    let original = seal(&carol, &bob.key(), "tamper with me");
    let mut tampered = Vec::new();
    for i in [0, 7, original.ciphertext.len() - 1] {
        let mut t = original.clone();
        t.ciphertext[i] ^= 0x04;
        tampered.push(("ciphertext", t));
    }
    for i in [0, 31] {
        let mut t = original.clone();
        t.sender.0[i] ^= 0x01;
        tampered.push(("sender", t));
        let mut t = original.clone();
        t.signature[i * 2] ^= 0x10;
        tampered.push(("signature", t));
    }
    let mut resigned = original.clone();
    resigned.sender = mallory.public();
    let mut signed = b"peerchat-envelope-v2".to_vec();
    signed.extend_from_slice(&resigned.header());
    signed.extend_from_slice(&resigned.ciphertext);
    let key = ed25519_dalek::SigningKey::from_bytes(&mallory.secret_bytes());
    resigned.signature = ed25519_dalek::Signer::sign(&key, &signed).to_bytes();
    tampered.push(("re-signed", resigned));

    let mut evil = RawPeer::bind("127.0.0.99").await;
    let mut refused = 0;
    for (what, t) in &tampered {
        let to_bob = evil.store(bob.listen_addr(), t.to_bytes()).await;
        let (code, msg) = to_bob.expect_err(what);
        assert!(
            msg.contains("signature")
                || msg.contains("decrypt")
                || msg.contains("key")
                || msg.contains("not bound to its sender"),
            "{what}: {code} {msg}"
        );
        refused += 1;
        {
            // A relay refuses it as well (the signature, and the id's binding to
            // the sender, are checked before storing).
            let (_, msg) = evil
                .store(relay.listen_addr(), t.to_bytes())
                .await
                .expect_err(what);
            assert!(msg.contains("envelope"), "{what}: {msg}");
        }
    }
    assert_eq!(refused, tampered.len());
    // Each refusal is counted where it happened.
    assert_eq!(
        b.status().await.unwrap().refused_envelopes,
        tampered.len() as u64
    );
    assert_eq!(
        r.status().await.unwrap().refused_envelopes,
        tampered.len() as u64
    );
    // The untouched envelope still arrives, once; no tampered copy shows.
    evil.store(bob.listen_addr(), original.to_bytes())
        .await
        .expect("the original is accepted");
    assert_eq!(count_text(&b, "tamper with me").await, 1);
    assert_eq!(b.inbox(1000).await.unwrap().len(), 2);
    bob.shutdown().await;
    witness.shutdown().await;
    relay.shutdown().await;
}

/// Resident set size of this process, in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_datagram_storm_is_counted_and_memory_stays_bounded() {
    let _serial = SERIAL.lock().await;
    let local: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let (target, _task) = spawn(NodeConfig::new(local)).await.unwrap();
    let (honest, _task2) = spawn(NodeConfig::new(local)).await.unwrap();
    assert_eq!(
        honest.ping(target.local_addr()).await.unwrap(),
        Some(target.id())
    );
    let before = target.snapshot().await.unwrap();
    let rss_before = rss_kib();

    // 32 source ports, each sending 1,000 datagrams of 1,501 to 9,000 random
    // bytes, as fast as the kernel takes them.
    let to = target.local_addr();
    let mut senders = Vec::new();
    for s in 0..32u64 {
        senders.push(tokio::spawn(async move {
            let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let mut buf = vec![0u8; 9000];
            let mut sent = 0u64;
            for i in 0..1000u64 {
                let len = 1501 + ((i * 7919 + s * 104_729) % 7500) as usize;
                rand::rng().fill_bytes(&mut buf[..len]);
                if sock.send_to(&buf[..len], to).await.is_ok() {
                    sent += 1;
                }
                if i % 100 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            sent
        }));
    }
    let mut sent = 0;
    for s in senders {
        sent += s.await.unwrap();
    }
    assert!(sent > 0);
    // Let the node drain its socket.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = target.snapshot().await.unwrap();
    let rss_after = rss_kib();

    // Every oversized datagram that reached the node was counted as a drop.
    let dropped = after.stats.dropped_malformed - before.stats.dropped_malformed;
    assert!(
        dropped > 0,
        "no oversized datagram was counted ({sent} sent)"
    );
    assert!(dropped <= sent);
    // Its tables did not grow.
    assert_eq!(after.contacts.len(), before.contacts.len());
    assert_eq!(after.items, before.items);
    // Memory stays bounded: the storm is 32,000 datagrams (about 170 MB).
    let grown_kib = rss_after.saturating_sub(rss_before);
    assert!(
        grown_kib < 32 * 1024,
        "RSS grew by {grown_kib} KiB during the storm"
    );
    // And it still answers an honest query.
    assert_eq!(
        honest.ping(target.local_addr()).await.unwrap(),
        Some(target.id())
    );
    eprintln!(
        "storm: {sent} datagrams sent, {dropped} counted as dropped, RSS {rss_before} -> {rss_after} KiB"
    );
    target.shutdown().await;
    honest.shutdown().await;
}

/// A presence item signed by `who`, reaching `port` on loopback.
fn presence(who: &Identity, port: u16, seq: i64) -> peerchat_kad::bep44::MutableItem {
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    Presence {
        dht: vec![addr],
        chat: vec![addr],
        node_id: NodeId([7; 20]),
        timestamp_ms: seq as u64,
    }
    .to_item(who, seq)
    .unwrap()
}

/// `pc_claim` arguments: the claim, and a presence item beside it.
fn claim_args(
    claim: &NameClaim,
    item: &peerchat_kad::bep44::MutableItem,
) -> BTreeMap<Vec<u8>, Value> {
    let mut args = BTreeMap::new();
    args.insert(b"claim".to_vec(), Value::Bytes(claim.to_bytes()));
    args.extend(beside_claim(item));
    args
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_beside_a_claim_is_kept_only_when_signed_by_the_claims_key_and_newer() {
    let _serial = SERIAL.lock().await;
    let tmp = tempfile::tempdir().unwrap();
    let storer = start(
        &tmp.path().join("storer"),
        "storer",
        None,
        RelayConfig::default(),
    )
    .await;
    let to = storer.listen_addr();
    let mut rng = rand::rng();
    let (victim, mallory) = (Identity::generate(&mut rng), Identity::generate(&mut rng));
    let name = Username::new("victim").unwrap();
    let claim = NameClaim::new(&victim, &name, 1, now_ms());
    let mut peer = RawPeer::bind("127.0.0.1").await;
    // The presence the storer returns with the claim, as a reader sees it.
    let resolved_port = async |peer: &mut RawPeer| {
        let answer = peer
            .ask(to, "pc_resolve", wire_args("name", b"victim"))
            .await
            .unwrap();
        let item = from_beside_claim(&answer, &victim.public())?;
        newest_presence(&victim.public(), [&item]).map(|p| p.chat[0].port())
    };

    let hers = NameClaim::new(&mallory, &name, 1, now_ms());
    // (the claim handed, the presence item beside it, the port then resolved)
    let steps = [
        // The victim's claim and presence.
        (&claim, presence(&victim, 1000, 10), 1000),
        // Mallory replays the victim's claim beside an item of her own with a
        // higher seq: it does not verify under the claim's key, and is not kept.
        (&claim, presence(&mallory, 6666, 99), 1000),
        // An older item of the victim's, replayed, does not roll it back.
        (&claim, presence(&victim, 999, 5), 1000),
        // Mallory's own claim to the name is refused, and her valid item with it.
        (&hers, presence(&mallory, 6666, 50), 1000),
        // The victim's newer item replaces the kept one.
        (&claim, presence(&victim, 2000, 20), 2000),
    ];
    for (i, (handed, item, port)) in steps.into_iter().enumerate() {
        let answer = peer
            .ask(to, "pc_claim", claim_args(handed, &item))
            .await
            .unwrap();
        let held = NameClaim::from_bytes(wire_bytes(&answer, "claim")).unwrap();
        assert_eq!(held.key, victim.public(), "step {i}: the first claim holds");
        assert_eq!(resolved_port(&mut peer).await, Some(port), "step {i}");
    }

    // A find_node of the name's target carries the same answer: a resolver's
    // lookup gets it without asking again.
    let find = Query::FindNode {
        target: name.target(),
    };
    let resolved = peer
        .ask(to, "pc_resolve", wire_args("name", b"victim"))
        .await
        .unwrap();
    let found = peer.query(to, find.clone()).await.unwrap();
    assert_eq!(found, resolved);
    // Another target's answer carries nothing.
    let other = Query::FindNode {
        target: NodeId([0x33; 20]),
    };
    assert!(peer.query(to, other).await.unwrap().is_empty());

    // Restarted, the storer answers with the claim again (kept on disk); the
    // presence, kept in memory only, comes back with the owner's next announce.
    storer.shutdown().await;
    let dir = tmp.path().join("storer");
    let storer = ChatNode::start(ChatConfig::new(dir, "127.0.0.1:0".parse().unwrap()))
        .await
        .unwrap();
    let mut found = BTreeMap::new();
    for _ in 0..50 {
        // (the node's task may read a datagram before the start's annotations)
        found = peer
            .query(storer.listen_addr(), find.clone())
            .await
            .unwrap();
        if !found.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(found, wire_args("claim", &claim.to_bytes()));
    storer.shutdown().await;
}

fn wire_args(key: &str, value: &[u8]) -> BTreeMap<Vec<u8>, Value> {
    BTreeMap::from([(key.as_bytes().to_vec(), Value::Bytes(value.to_vec()))])
}

fn wire_bytes<'a>(m: &'a BTreeMap<Vec<u8>, Value>, key: &str) -> &'a [u8] {
    m.get(key.as_bytes())
        .and_then(Value::as_bytes)
        .expect("field missing")
}
