//! End to end: the real `peerchat` binary, one process per user, each with its
//! own data dir and its own 127.0.0.x address, driven only through the CLI
//! clients of its local API (`send`, `inbox`, `history`, `status`, `whois`).
//!
//! Every test uses its own range of 127.0.0.x addresses so that tests may run
//! in parallel. Every wait is bounded and panics with what it waited for.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::thread;
use std::time::Duration;

use common::{BIN, Node, POLL, wait_for};
use serde_json::Value;
use tempfile::TempDir;

/// The port every node listens on (each node has its own IP).
const PORT: u16 = 27420;
/// How long anything on the network may take.
const NET_TIMEOUT: Duration = Duration::from_secs(60);

fn addr(ip: u8) -> String {
    format!("127.0.0.{ip}:{PORT}")
}

/// Creates the user in `root/name` if new, runs its node on 127.0.0.`ip`
/// (joining through `bootstrap`, if any) and waits until its API answers.
fn start(root: &Path, name: &str, ip: u8, bootstrap: Option<u8>) -> Node {
    let mut node = Node::init(Path::new(BIN), root, name, None, "e2e");
    restart(&mut node, ip, bootstrap);
    node
}

/// Restarts the stopped node, on 127.0.0.`ip`.
fn restart(node: &mut Node, ip: u8, bootstrap: Option<u8>) {
    node.start(&addr(ip), bootstrap.map(addr).as_deref(), POLL);
}

/// Waits until every node holds its name on the network.
fn wait_claimed(nodes: &[&Node]) {
    for n in nodes {
        n.wait_claimed(NET_TIMEOUT, POLL);
    }
}

/// Waits until `node`'s inbox holds every id of `want` (id -> text); then
/// checks that each is there exactly once, with its text and sender.
fn wait_inbox(node: &Node, from: &Node, want: &BTreeMap<String, String>) {
    wait_for(
        || {
            let have: HashSet<String> = node
                .inbox()
                .iter()
                .filter_map(|m| m["id"].as_str().map(str::to_string))
                .collect();
            let missing: Vec<&String> = want.keys().filter(|id| !have.contains(*id)).collect();
            format!(
                "{} to receive {} message(s) from {}; missing {}: {:?}",
                node.name,
                want.len(),
                from.name,
                missing.len(),
                missing
                    .iter()
                    .take(5)
                    .map(|id| &want[*id])
                    .collect::<Vec<_>>()
            )
        },
        NET_TIMEOUT,
        || {
            let inbox = node.inbox();
            want.keys()
                .all(|id| inbox.iter().any(|m| m["id"] == id.as_str()))
                .then_some(())
        },
    );
    assert_exactly_once(node, from, want);
}

/// Each message of `want` is in `node`'s inbox once, from `from`, with its text.
fn assert_exactly_once(node: &Node, from: &Node, want: &BTreeMap<String, String>) {
    let inbox = node.inbox();
    let from_key = from.key.clone();
    let from = from.name.as_str();
    for (id, text) in want {
        let copies: Vec<&Value> = inbox.iter().filter(|m| m["id"] == id.as_str()).collect();
        assert_eq!(
            copies.len(),
            1,
            "{} has {} copies of {from}'s message {text:?} ({id})",
            node.name,
            copies.len()
        );
        assert_eq!(
            copies[0]["text"],
            text.as_str(),
            "text of {id} at {}",
            node.name
        );
        // `from` is the sender's name once known, else its key's first 16 hex digits.
        let shown = copies[0]["from"].as_str().unwrap_or_default();
        assert!(
            shown == from || from_key.starts_with(shown) && shown.len() == 16,
            "{id} at {} shows sender {shown:?}, not {from}",
            node.name
        );
        assert_eq!(
            copies[0]["peer_key"],
            from_key.as_str(),
            "sender key of {id} at {}",
            node.name
        );
        let same_text = inbox.iter().filter(|m| m["text"] == text.as_str()).count();
        assert_eq!(
            same_text, 1,
            "{} has the text {text:?} {same_text} times",
            node.name
        );
    }
}

/// Waits until every message of `ids` is `delivered` (or `read`) at `sender`.
fn wait_delivered(sender: &Node, to: &str, ids: &BTreeMap<String, String>) {
    wait_states(sender, to, ids, &["delivered", "read"]);
}

/// Waits until every message of `ids` at `sender` is in one of `accept`.
fn wait_states(sender: &Node, to: &str, ids: &BTreeMap<String, String>, accept: &[&str]) {
    let ok = |s: Option<&String>| s.is_some_and(|s| accept.contains(&s.as_str()));
    wait_for(
        || {
            let states = sender.states(to);
            let pending: Vec<String> = ids
                .iter()
                .filter(|(id, _)| !ok(states.get(*id)))
                .take(5)
                .map(|(id, text)| format!("{text:?}: {:?}", states.get(id)))
                .collect();
            format!(
                "{}'s messages to {to} to reach {accept:?}; not yet (first 5): {pending:?}",
                sender.name
            )
        },
        NET_TIMEOUT,
        || {
            let states = sender.states(to);
            ids.keys().all(|id| ok(states.get(id))).then_some(())
        },
    );
}

/// `n` users on 127.0.0.`base`.. : the first starts a network, the others
/// join through it, 8 at a time.
fn start_crowd(root: &Path, prefix: &str, base: u8, n: u8) -> Vec<Node> {
    let mut nodes = vec![start(root, &format!("{prefix}0"), base, None)];
    let rest: Vec<u8> = (1..n).collect();
    for chunk in rest.chunks(8) {
        let started: Vec<Node> = thread::scope(|s| {
            let handles: Vec<_> = chunk
                .iter()
                .map(|&i| {
                    s.spawn(move || start(root, &format!("{prefix}{i}"), base + i, Some(base)))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        nodes.extend(started);
    }
    nodes
}

/// `n` relays on 127.0.0.`base`.. , each joining through the first.
fn start_relays(root: &Path, prefix: &str, base: u8, n: u8) -> Vec<Node> {
    let mut relays: Vec<Node> = Vec::new();
    for i in 0..n {
        let boot = (i > 0).then_some(base);
        relays.push(start(root, &format!("{prefix}{i}"), base + i, boot));
    }
    relays
}

fn one(id: String, text: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(id, text.to_string())])
}

// ----- scenarios -----------------------------------------------------------------

/// 20 users (the paper's registrations) join one after another, each through
/// the previous one; every user resolves every other name to the right key.
#[test]
fn registrations() {
    let tmp = TempDir::new().unwrap();
    const N: u8 = 20;
    const BASE: u8 = 100; // 127.0.0.100 ..= 127.0.0.119
    let mut nodes: Vec<Node> = Vec::new();
    for i in 0..N {
        let boot = (i > 0).then(|| BASE + i - 1);
        nodes.push(start(tmp.path(), &format!("reg{i}"), BASE + i, boot));
    }
    let refs: Vec<&Node> = nodes.iter().collect();
    wait_claimed(&refs);
    let keys: Vec<String> = nodes.iter().map(|n| n.key.clone()).collect();
    let distinct: HashSet<&String> = keys.iter().collect();
    assert_eq!(distinct.len(), nodes.len(), "keys are not distinct");

    thread::scope(|s| {
        for a in &nodes {
            let keys = &keys;
            let nodes = &nodes;
            s.spawn(move || {
                for (j, b) in nodes.iter().enumerate() {
                    if a.name == b.name {
                        continue;
                    }
                    let w = wait_for(
                        || format!("{} to resolve {}", a.name, b.name),
                        NET_TIMEOUT,
                        || a.try_cli(&["whois", &b.name, "--json"]).ok(),
                    );
                    assert_eq!(w["name"], b.name.as_str());
                    assert_eq!(
                        w["key"],
                        keys[j].as_str(),
                        "{} resolves {} to the wrong key",
                        a.name,
                        b.name
                    );
                }
                // An unknown name is a clear error.
                let err = a
                    .try_cli(&["whois", "nobody-here", "--json"])
                    .expect_err("whois of an unknown name succeeded");
                assert!(err.contains("no such user"), "unclear error: {err}");
            });
        }
    });
}

/// 80 users (the paper's sends); 20 senders each write to 20 recipients: every
/// message arrives exactly once and reaches `delivered` at its sender.
#[test]
fn sends() {
    let tmp = TempDir::new().unwrap();
    let nodes = start_crowd(tmp.path(), "snd", 120, 80); // 127.0.0.120 ..= 127.0.0.199
    let refs: Vec<&Node> = nodes.iter().collect();
    wait_claimed(&refs);
    let senders = &nodes[0..20];
    let recipients = &nodes[40..60];

    // (sender, recipient) -> id -> text
    let mut sent: BTreeMap<(usize, usize), BTreeMap<String, String>> = BTreeMap::new();
    thread::scope(|s| {
        let handles: Vec<_> = senders
            .iter()
            .enumerate()
            .map(|(si, a)| {
                s.spawn(move || {
                    let mut mine = Vec::new();
                    for (ri, b) in recipients.iter().enumerate() {
                        let text = format!("hello {} from {} (#{si}{ri})", b.name, a.name);
                        let id = a.send(&b.name, &text);
                        mine.push(((si, ri), id, text));
                    }
                    mine
                })
            })
            .collect();
        for h in handles {
            for (k, id, text) in h.join().unwrap() {
                sent.entry(k).or_default().insert(id, text);
            }
        }
    });

    // Checked one recipient (then one sender) per thread: 800 CLI calls.
    thread::scope(|s| {
        for (ri, b) in recipients.iter().enumerate() {
            let sent = &sent;
            s.spawn(move || {
                for (si, a) in senders.iter().enumerate() {
                    wait_inbox(b, a, &sent[&(si, ri)]);
                }
                assert_eq!(b.inbox().len(), senders.len(), "{}'s inbox size", b.name);
            });
        }
    });
    thread::scope(|s| {
        for (si, a) in senders.iter().enumerate() {
            let sent = &sent;
            s.spawn(move || {
                for (ri, b) in recipients.iter().enumerate() {
                    wait_delivered(a, &b.name, &sent[&(si, ri)]);
                }
            });
        }
    });
}

/// The recipient is offline when the message is sent; it comes back (same
/// data dir, same address) and gets it exactly once; the sender sees
/// `delivered`.
#[test]
fn offline_chat() {
    let tmp = TempDir::new().unwrap();
    let relays = start_relays(tmp.path(), "ofr", 40, 4); // 127.0.0.40..=43
    let alice = start(tmp.path(), "ofalice", 44, Some(40));
    let mut bob = start(tmp.path(), "ofbob", 45, Some(40));
    let mut all: Vec<&Node> = relays.iter().collect();
    all.extend([&alice, &bob]);
    wait_claimed(&all);

    // A first message while both are online, so that each knows the other.
    let text0 = "hi bob, are you there?";
    let id0 = alice.send("ofbob", text0);
    let first = one(id0, text0);
    wait_inbox(&bob, &alice, &first);
    wait_delivered(&alice, "ofbob", &first);

    bob.stop();
    let text = "while you were away";
    let id = alice.send("ofbob", text);
    let second = one(id.clone(), text);
    wait_for(
        || {
            format!(
                "alice's offline message to be relayed: {:?}",
                alice.states("ofbob").get(&id)
            )
        },
        NET_TIMEOUT,
        || (alice.states("ofbob").get(&id).map(String::as_str) == Some("relayed")).then_some(()),
    );

    restart(&mut bob, 45, Some(40));
    wait_inbox(&bob, &alice, &second);
    wait_delivered(&alice, "ofbob", &second);
    // Nothing comes twice, even after the relays' retries.
    thread::sleep(Duration::from_secs(3));
    assert_exactly_once(&bob, &alice, &first);
    assert_exactly_once(&bob, &alice, &second);
    assert_eq!(bob.inbox().len(), 2);
    // The relays dropped their copies once bob acknowledged it.
    wait_for(
        || "the relays to drop the delivered message".to_string(),
        NET_TIMEOUT,
        || {
            let held: u64 = relays
                .iter()
                .chain([&alice])
                .map(|n| n.status()["relay_queue"].as_u64().unwrap_or(u64::MAX))
                .sum();
            (held == 0).then_some(())
        },
    );
    assert_eq!(alice.status()["outbox"], 0, "alice's outbox is not empty");
}

/// Sender and recipient are never online together: the relays carry it.
#[test]
fn dual_offline_chat() {
    let tmp = TempDir::new().unwrap();
    let relays = start_relays(tmp.path(), "dor", 50, 4); // 127.0.0.50..=53
    let mut alice = start(tmp.path(), "doalice", 54, Some(50));
    let mut bob = start(tmp.path(), "dobob", 55, Some(50));
    let mut all: Vec<&Node> = relays.iter().collect();
    all.extend([&alice, &bob]);
    wait_claimed(&all);
    // Each knows the other (names resolved while both were online).
    alice.cli(&["whois", "dobob", "--json"]);
    bob.cli(&["whois", "doalice", "--json"]);

    bob.stop();
    let text = "we are never online together";
    let id = alice.send("dobob", text);
    wait_for(
        || {
            format!(
                "the message to be relayed: {:?}",
                alice.states("dobob").get(&id)
            )
        },
        NET_TIMEOUT,
        || (alice.states("dobob").get(&id).map(String::as_str) == Some("relayed")).then_some(()),
    );
    alice.stop();

    restart(&mut bob, 55, Some(50));
    let want = one(id.clone(), text);
    wait_inbox(&bob, &alice, &want);
    thread::sleep(Duration::from_secs(2));
    assert_exactly_once(&bob, &alice, &want);
    bob.stop();

    // Alice comes back while bob is offline: she learns it was delivered
    // (the signed ack reached the relays) or at least still holds it safely.
    restart(&mut alice, 54, Some(50));
    let st = alice.states("dobob");
    assert!(
        matches!(
            st.get(&id).map(String::as_str),
            Some("relayed" | "delivered" | "read")
        ),
        "alice's message state after both were away: {:?}",
        st.get(&id)
    );
    restart(&mut bob, 55, Some(50));
    wait_delivered(&alice, "dobob", &want);
    thread::sleep(Duration::from_secs(2));
    assert_exactly_once(&bob, &alice, &want);
    assert_eq!(bob.inbox().len(), 1);
}

/// A user stops and logs in again on a new address without --bootstrap: its
/// history is still there and others reach it at its new address.
#[test]
fn persistence_and_new_ip() {
    let tmp = TempDir::new().unwrap();
    let relays = start_relays(tmp.path(), "pnr", 60, 4); // 127.0.0.60..=63
    let alice = start(tmp.path(), "pnalice", 64, Some(60));
    let mut bob = start(tmp.path(), "pnbob", 65, Some(60));
    let mut all: Vec<&Node> = relays.iter().collect();
    all.extend([&alice, &bob]);
    wait_claimed(&all);

    let t1 = "before the move";
    let id1 = alice.send("pnbob", t1);
    let m1 = one(id1.clone(), t1);
    wait_inbox(&bob, &alice, &m1);
    wait_delivered(&alice, "pnbob", &m1);
    let t2 = "reply before the move";
    let id2 = bob.send("pnalice", t2);
    let m2 = one(id2.clone(), t2);
    wait_inbox(&alice, &bob, &m2);
    wait_delivered(&bob, "pnalice", &m2);
    let old_status = bob.status();
    let before = bob.history("pnalice");

    // Restart on the same address first: same node id, same history.
    bob.stop();
    restart(&mut bob, 65, None);
    let st = bob.status();
    assert_eq!(
        st["node_id"], old_status["node_id"],
        "node id changed on the same address"
    );
    assert_eq!(
        bob.history("pnalice"),
        before,
        "history changed across a restart"
    );

    // Now a new address, still without --bootstrap: saved contacts suffice.
    bob.stop();
    restart(&mut bob, 66, None);
    let st = bob.status();
    assert_eq!(st["key"], old_status["key"]);
    assert_eq!(st["listen"], addr(66).as_str());
    assert_ne!(
        st["node_id"], old_status["node_id"],
        "no new node id on a new address"
    );
    let after = bob.history("pnalice");
    assert_eq!(after.len(), 2, "bob's history after the move: {after:?}");
    assert!(
        after
            .iter()
            .any(|m| m["id"] == id1.as_str() && m["text"] == t1)
    );
    assert!(
        after
            .iter()
            .any(|m| m["id"] == id2.as_str() && m["text"] == t2)
    );
    wait_for(
        || {
            format!(
                "bob to rejoin the network from its saved contacts: {}",
                bob.status()
            )
        },
        NET_TIMEOUT,
        || (bob.status()["routing_table"].as_u64().unwrap_or(0) > 0).then_some(()),
    );
    // Others find the new presence.
    wait_for(
        || "alice to see bob's new address".to_string(),
        NET_TIMEOUT,
        || {
            let w = alice.try_cli(&["whois", "pnbob", "--json"]).ok()?;
            let chat = w["chat_addrs"].as_array()?;
            chat.iter().any(|a| a == addr(66).as_str()).then_some(())
        },
    );
    let t3 = "after the move";
    let id3 = alice.send("pnbob", t3);
    let m3 = one(id3, t3);
    wait_inbox(&bob, &alice, &m3);
    wait_delivered(&alice, "pnbob", &m3);
    let t4 = "reply after the move";
    let id4 = bob.send("pnalice", t4);
    let m4 = one(id4, t4);
    wait_inbox(&alice, &bob, &m4);
    wait_delivered(&bob, "pnalice", &m4);
    assert_exactly_once(&bob, &alice, &m1);
    assert_eq!(bob.inbox().len(), 2);
}

/// The receiver is killed with SIGKILL while ~200 messages stream to it:
/// every message its sender saw `delivered` survives, none twice, and all
/// arrive once it is back.
#[test]
fn kill9_while_receiving() {
    let tmp = TempDir::new().unwrap();
    let relays = start_relays(tmp.path(), "k9r", 70, 3); // 127.0.0.70..=72
    let alice = start(tmp.path(), "k9alice", 73, Some(70));
    let mut bob = start(tmp.path(), "k9bob", 74, Some(70));
    let mut all: Vec<&Node> = relays.iter().collect();
    all.extend([&alice, &bob]);
    wait_claimed(&all);
    alice.cli(&["whois", "k9bob", "--json"]);

    const TOTAL: usize = 200;
    const SENDERS: usize = 4;
    const KILL_AFTER: usize = 40;
    // Four threads stream the messages (each `send` is a process of its own);
    // this thread kills bob once some have arrived, while the rest still flow.
    let (sent, delivered_at_kill) = thread::scope(|s| {
        let alice = &alice;
        let streams: Vec<_> = (0..SENDERS)
            .map(|t| {
                s.spawn(move || {
                    (t..TOTAL)
                        .step_by(SENDERS)
                        .map(|i| {
                            let text = format!("stream message {i:03}");
                            (alice.send("k9bob", &text), text)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        wait_for(
            || format!("{KILL_AFTER} messages of the stream to be delivered before the kill"),
            NET_TIMEOUT,
            || {
                let n = alice
                    .states("k9bob")
                    .values()
                    .filter(|s| *s == "delivered")
                    .count();
                (n >= KILL_AFTER).then_some(())
            },
        );
        bob.kill9();
        let sent_by_kill = alice.states("k9bob").len();
        // Bob is dead: whatever alice sees delivered now was acknowledged by
        // bob before the kill (give acks already in flight a moment).
        thread::sleep(Duration::from_millis(500));
        let delivered: HashSet<String> = alice
            .states("k9bob")
            .into_iter()
            .filter(|(_, s)| s == "delivered" || s == "read")
            .map(|(id, _)| id)
            .collect();
        eprintln!(
            "kill -9: {} of {sent_by_kill} messages sent so far were delivered when bob was killed",
            delivered.len()
        );
        let sent: BTreeMap<String, String> = streams
            .into_iter()
            .flat_map(|h| h.join().expect("a sender thread panicked"))
            .collect();
        (sent, delivered)
    });
    assert_eq!(sent.len(), TOTAL);
    assert!(!delivered_at_kill.is_empty());

    restart(&mut bob, 74, Some(70));
    // Right after the restart: every acknowledged message is there.
    let inbox: HashSet<String> = bob
        .inbox()
        .iter()
        .filter_map(|m| m["id"].as_str().map(str::to_string))
        .collect();
    let lost: Vec<&String> = delivered_at_kill
        .iter()
        .filter(|id| !inbox.contains(*id))
        .map(|id| &sent[id])
        .collect();
    assert!(
        lost.is_empty(),
        "bob lost {} message(s) it had acknowledged before SIGKILL: {:?}",
        lost.len(),
        lost.iter().take(5).collect::<Vec<_>>()
    );

    wait_inbox(&bob, &alice, &sent);
    wait_delivered(&alice, "k9bob", &sent);
    thread::sleep(Duration::from_secs(2));
    assert_exactly_once(&bob, &alice, &sent);
    assert_eq!(bob.inbox().len(), TOTAL, "bob's inbox size");
}

/// The paper's churn scenario: 30 users for a while; 80% of them send, 20% log
/// off first, half of those come back (one of them, 30% of the returners, on a
/// new address and with no bootstrap address). Every message reaches an online
/// or returning recipient exactly once and turns `delivered`; messages to
/// users still away are held by relays (`relayed`), none lost.
#[test]
fn churn() {
    let tmp = TempDir::new().unwrap();
    let mut nodes = start_crowd(tmp.path(), "chu", 200, 30); // 127.0.0.200 ..= 127.0.0.229
    let refs: Vec<&Node> = nodes.iter().collect();
    wait_claimed(&refs);
    // 20% log off.
    let (senders, away) = (0..24usize, 24..30usize);
    for i in away.clone() {
        nodes[i].stop();
    }

    // Sender i writes to an online user and to one of those away.
    let mut sent: BTreeMap<(usize, usize), BTreeMap<String, String>> = BTreeMap::new();
    thread::scope(|s| {
        let nodes = &nodes;
        let handles: Vec<_> = senders
            .clone()
            .map(|i| {
                s.spawn(move || {
                    let mut mine = Vec::new();
                    for j in [(i + 1) % 24, 24 + i % 6] {
                        let text = format!("churn hello {} from {}", nodes[j].name, nodes[i].name);
                        mine.push(((i, j), nodes[i].send(&nodes[j].name, &text), text));
                    }
                    mine
                })
            })
            .collect();
        for h in handles {
            for (k, id, text) in h.join().unwrap() {
                sent.entry(k).or_default().insert(id, text);
            }
        }
    });
    // Messages to users away are held by relays.
    for ((i, j), ids) in &sent {
        if *j >= 24 {
            wait_states(&nodes[*i], &nodes[*j].name, ids, &["relayed"]);
        }
    }

    // Half of those away come back; the first on a new address, no bootstrap.
    restart(&mut nodes[24], 230, None);
    restart(&mut nodes[25], 225, Some(200));
    restart(&mut nodes[26], 226, Some(200));
    assert_eq!(nodes[24].status()["listen"], addr(230).as_str());

    for ((i, j), ids) in &sent {
        let (a, b) = (&nodes[*i], &nodes[*j]);
        if *j < 27 {
            wait_inbox(b, a, ids);
            wait_delivered(a, &b.name, ids);
        } else {
            // Still away: still held, never lost.
            assert!(
                a.states(&b.name)
                    .iter()
                    .filter(|(id, _)| ids.contains_key(*id))
                    .all(|(_, st)| st == "relayed"),
                "{}'s messages to {} (away) are not all `relayed`",
                a.name,
                b.name
            );
        }
    }
    // Each online or returning user got exactly what was sent to it, once.
    for (j, b) in nodes.iter().enumerate().take(27) {
        let expected: usize = sent
            .iter()
            .filter(|((_, to), _)| *to == j)
            .map(|(_, ids)| ids.len())
            .sum();
        assert_eq!(b.inbox().len(), expected, "{}'s inbox size", b.name);
    }
}
