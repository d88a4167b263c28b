//! Crash safety with real processes on loopback: a receiver killed with
//! SIGKILL again and again at random moments while thousands of messages
//! stream to it, and a sender killed with SIGKILL while its outbox drains.
//!
//! The moments are drawn from a seeded RNG; the seed is printed, and
//! `PEERCHAT_CRASH_SEED=N` replays one. The API is driven with
//! `peerchat_node::api::ApiClient` (a process per `peerchat send` would be
//! too slow for thousands of messages). Each test has its own 127.0.9x.0/24.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{Node, private_bin, wait_for};
use peerchat_node::api::ApiClient;
use peerchat_node::chat::MessageView;
use peerchat_node::datadir::DataDir;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tempfile::TempDir;
use tokio::runtime::Runtime;

const PORT: u16 = 27420;
const NET_TIMEOUT: Duration = Duration::from_secs(90);

fn addr(net: u8, ip: u8) -> String {
    format!("127.0.{net}.{ip}:{PORT}")
}

fn seed() -> u64 {
    let seed = match std::env::var("PEERCHAT_CRASH_SEED") {
        Ok(s) => s.parse().expect("PEERCHAT_CRASH_SEED is not a number"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
    };
    eprintln!("crash_safety seed: {seed} (replay with PEERCHAT_CRASH_SEED={seed})");
    seed
}

fn runtime() -> Arc<Runtime> {
    Arc::new(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("building a tokio runtime"),
    )
}

/// The API client of the node running on `dir`, if it wrote its API file.
fn try_api(dir: &Path) -> Option<ApiClient> {
    ApiClient::from_data_dir(dir)
        .ok()
        .map(|c| c.with_timeout(Duration::from_secs(20)))
}

/// One user on 127.0.`net`.`ip`, driven through its API.
struct User {
    node: Node,
    listen: String,
    bootstrap: Option<String>,
    rt: Arc<Runtime>,
}

impl User {
    fn start(
        rt: &Arc<Runtime>,
        root: &Path,
        name: &str,
        net: u8,
        ip: u8,
        boot: Option<u8>,
    ) -> User {
        let bin = private_bin(root);
        let mut user = User {
            node: Node::init(&bin, root, name, None, "crash"),
            listen: addr(net, ip),
            bootstrap: boot.map(|b| addr(net, b)),
            rt: rt.clone(),
        };
        user.spawn();
        user
    }

    /// Starts the node and waits until the API of this very process answers.
    fn spawn(&mut self) {
        let pid = self.node.launch(&self.listen, self.bootstrap.as_deref());
        let rt = &self.rt;
        self.node
            .wait_ready("answer", Duration::from_millis(50), |n| {
                // A killed run leaves its api.json behind: only trust this pid's.
                let fresh = DataDir::read_api_info(&n.dir).is_ok_and(|i| i.pid == pid);
                (fresh && try_api(&n.dir).is_some_and(|c| rt.block_on(c.status()).is_ok()))
                    .then_some(())
            });
    }

    fn api(&self) -> ApiClient {
        try_api(&self.node.dir).unwrap_or_else(|| panic!("{} has no API file", self.node.name))
    }

    fn status(&self) -> peerchat_node::chat::StatusView {
        self.rt
            .block_on(self.api().status())
            .unwrap_or_else(|e| panic!("status of {}: {e}", self.node.name))
    }

    /// Received messages (all of them, up to 10,000).
    fn inbox(&self) -> Vec<MessageView> {
        self.rt
            .block_on(self.api().inbox(Some(10_000)))
            .unwrap_or_else(|e| panic!("inbox of {}: {e}", self.node.name))
    }

    /// Received message ids, with how many times each is listed.
    fn inbox_counts(&self) -> HashMap<String, usize> {
        let inbox = self.inbox();
        let mut counts = HashMap::new();
        for m in inbox {
            *counts.entry(m.id).or_insert(0) += 1;
        }
        counts
    }

    /// Received messages: id -> text (panics on a duplicate id).
    fn inbox_texts(&self) -> BTreeMap<String, String> {
        let inbox = self.inbox();
        let mut out = BTreeMap::new();
        for m in inbox {
            let id = m.id.clone();
            assert!(
                out.insert(m.id, m.text).is_none(),
                "{} lists message {id} twice",
                self.node.name
            );
        }
        out
    }

    /// States of the messages sent to `peer`, by id.
    fn states(&self, peer: &str) -> HashMap<String, String> {
        self.rt
            .block_on(self.api().history(peer, Some(10_000)))
            .unwrap_or_else(|e| panic!("history of {} with {peer}: {e}", self.node.name))
            .into_iter()
            .filter(|m| m.direction == "out")
            .map(|m| (m.id, m.state))
            .collect()
    }

    fn delivered(&self, peer: &str) -> HashSet<String> {
        self.states(peer)
            .into_iter()
            .filter(|(_, s)| s == "delivered" || s == "read")
            .map(|(id, _)| id)
            .collect()
    }
}

/// Three relays, then the sender and the receiver; all names held, the
/// receiver's key pinned by the sender.
fn network(rt: &Arc<Runtime>, root: &Path, net: u8, prefix: &str) -> (Vec<User>, User, User) {
    let relays: Vec<User> = (0..3)
        .map(|i| {
            let boot = (i > 0).then_some(10);
            User::start(rt, root, &format!("{prefix}relay{i}"), net, 10 + i, boot)
        })
        .collect();
    let alice = User::start(rt, root, &format!("{prefix}alice"), net, 20, Some(10));
    let bob = User::start(rt, root, &format!("{prefix}bob"), net, 21, Some(10));
    for n in relays.iter().chain([&alice, &bob]) {
        wait_for(
            || format!("{}'s name claim to be held", n.node.name),
            NET_TIMEOUT,
            || n.status().name_claimed.then_some(()),
        );
    }
    let bob_name = bob.node.name.clone();
    rt.block_on(alice.api().add_contact(&bob_name))
        .unwrap_or_else(|e| panic!("alice cannot resolve {bob_name}: {e}"));
    (relays, alice, bob)
}

/// Sends `texts` from `dir`'s node to `to`, 8 at a time, `batch` at a time
/// with `pause` between batches. A send that fails (the node was killed) is
/// `uncertain` (it may or may not have been queued); the stream then waits
/// for the node to come back. Returns (id -> text, uncertain texts).
fn stream(
    rt: &Runtime,
    dir: &Path,
    to: &str,
    texts: &[String],
    batch: usize,
    pause: Duration,
) -> (BTreeMap<String, String>, Vec<String>) {
    let mut sent = BTreeMap::new();
    let mut uncertain = Vec::new();
    for chunk in texts.chunks(batch) {
        let client = wait_for(
            || format!("the node of {} to come back for the stream", dir.display()),
            NET_TIMEOUT,
            || {
                let c = ApiClient::from_data_dir(dir).ok()?;
                rt.block_on(c.status()).ok().map(|_| c)
            },
        );
        let results = rt.block_on(async {
            let mut set = tokio::task::JoinSet::new();
            let mut out = Vec::new();
            for text in chunk {
                let c = client.clone();
                let to = to.to_string();
                let text = text.clone();
                set.spawn(async move {
                    let r = c.send(&to, &text).await;
                    (text, r)
                });
                if set.len() >= 8
                    && let Some(r) = set.join_next().await
                {
                    out.push(r.expect("a send task panicked"));
                }
            }
            while let Some(r) = set.join_next().await {
                out.push(r.expect("a send task panicked"));
            }
            out
        });
        for (text, r) in results {
            match r {
                Ok(id) => {
                    assert!(
                        sent.insert(id.clone(), text).is_none(),
                        "id {id} given twice"
                    );
                }
                Err(_) => uncertain.push(text),
            }
        }
        thread::sleep(pause);
    }
    (sent, uncertain)
}

/// At the end: `to` holds every message of `sent` exactly once, each
/// `uncertain` text at most once, and nothing else; `from` sees all of
/// `sent` delivered.
fn check_all_delivered(
    from: &User,
    to: &User,
    sent: &BTreeMap<String, String>,
    uncertain: &[String],
) {
    wait_for(
        || {
            let have = to.inbox_counts();
            let missing: Vec<&String> = sent.keys().filter(|id| !have.contains_key(*id)).collect();
            format!(
                "{} to hold all {} messages; {} missing, e.g. {:?}",
                to.node.name,
                sent.len(),
                missing.len(),
                missing
                    .iter()
                    .take(3)
                    .map(|id| &sent[*id])
                    .collect::<Vec<_>>()
            )
        },
        NET_TIMEOUT,
        || {
            let have = to.inbox_counts();
            sent.keys().all(|id| have.contains_key(id)).then_some(())
        },
    );
    wait_for(
        || {
            let d = from.delivered(&to.node.name);
            format!(
                "{} to see all {} messages delivered; {} are",
                from.node.name,
                sent.len(),
                sent.keys().filter(|id| d.contains(*id)).count()
            )
        },
        NET_TIMEOUT,
        || {
            let d = from.delivered(&to.node.name);
            sent.keys().all(|id| d.contains(id)).then_some(())
        },
    );
    // Late copies (relay retries, resent outbox entries) would show now.
    thread::sleep(Duration::from_secs(3));
    let inbox = to.inbox_texts();
    for (id, text) in sent {
        assert_eq!(
            inbox.get(id),
            Some(text),
            "text of {id} at {}",
            to.node.name
        );
    }
    let uncertain: HashSet<&String> = uncertain.iter().collect();
    let mut texts: HashMap<&String, usize> = HashMap::new();
    for (id, text) in &inbox {
        *texts.entry(text).or_insert(0) += 1;
        assert!(
            sent.contains_key(id) || uncertain.contains(text),
            "{} holds a message nobody sent: {text:?} ({id})",
            to.node.name
        );
    }
    for (text, n) in texts {
        assert_eq!(n, 1, "{} shows {text:?} {n} times", to.node.name);
    }
}

/// The receiver is killed with SIGKILL five times at random moments while
/// 3,000 messages stream to it, and restarted each time: after each restart
/// every message the sender saw acknowledged is in its inbox, none twice; in
/// the end all 3,000 arrive exactly once.
#[test]
fn receiver_killed_repeatedly() {
    const NET: u8 = 91;
    const TOTAL: usize = 3000;
    const KILLS: usize = 5;
    let mut rng = StdRng::seed_from_u64(seed());
    let rt = runtime();
    let tmp = TempDir::new().unwrap();
    let (_relays, alice, mut bob) = network(&rt, tmp.path(), NET, "rk");
    let bob_name = bob.node.name.clone();
    let texts: Vec<String> = (0..TOTAL).map(|i| format!("stream {i:04}")).collect();
    let t0 = Instant::now();

    let (sent, uncertain) = thread::scope(|s| {
        let sender = {
            let (rt, dir, texts, to) = (&rt, &alice.node.dir, &texts, &bob_name);
            s.spawn(move || stream(rt, dir, to, texts, 100, Duration::from_millis(150)))
        };
        for k in 1..=KILLS {
            // Up, receiving, for a random while; then SIGKILL.
            let up = Duration::from_millis(rng.random_range(300..2500));
            thread::sleep(up);
            bob.node.kill9();
            // Acks bob sent before he died may still be on their way.
            let down = Duration::from_millis(rng.random_range(300..1500));
            thread::sleep(down);
            let acked = alice.delivered(&bob_name);
            bob.spawn();
            let have = bob.inbox_counts();
            let lost: Vec<&String> = acked.iter().filter(|id| !have.contains_key(*id)).collect();
            eprintln!(
                "kill {k} after {up:?} up ({:.1} s in): {} acknowledged, {} in bob's inbox, down {down:?}",
                t0.elapsed().as_secs_f64(),
                acked.len(),
                have.len()
            );
            assert!(
                lost.is_empty(),
                "kill {k}: bob lost {} acknowledged message(s), e.g. {:?}",
                lost.len(),
                lost.iter().take(3).collect::<Vec<_>>()
            );
            if let Some((id, n)) = have.iter().find(|(_, n)| **n > 1) {
                panic!("kill {k}: bob lists {id} {n} times");
            }
        }
        sender.join().expect("the sender thread panicked")
    });
    eprintln!(
        "stream done in {:.1} s: {} queued, {} uncertain",
        t0.elapsed().as_secs_f64(),
        sent.len(),
        uncertain.len()
    );
    // Alice was never killed: every send was answered.
    assert!(uncertain.is_empty(), "sends failed: {uncertain:?}");
    assert_eq!(sent.len(), TOTAL);
    check_all_delivered(&alice, &bob, &sent, &uncertain);
    eprintln!(
        "all {TOTAL} delivered exactly once after {:.1} s",
        t0.elapsed().as_secs_f64()
    );
}

/// The sender is killed with SIGKILL three times while it queues and delivers
/// 1,500 messages: after each restart its history still holds every message
/// it gave an id for, and its outbox resumes: all arrive exactly once. Bob is
/// away until the second kill, so the first kills always find messages in the
/// outbox (on a fast machine a live bob acknowledges each one at once).
#[test]
fn sender_killed_mid_stream() {
    const NET: u8 = 92;
    const TOTAL: usize = 1500;
    const KILLS: usize = 3;
    let mut rng = StdRng::seed_from_u64(seed() ^ 0x5e4d);
    let rt = runtime();
    let tmp = TempDir::new().unwrap();
    let (_relays, mut alice, mut bob) = network(&rt, tmp.path(), NET, "sk");
    let bob_name = bob.node.name.clone();
    bob.node.stop();
    let texts: Vec<String> = (0..TOTAL).map(|i| format!("outbox {i:04}")).collect();
    let t0 = Instant::now();
    let alice_dir = alice.node.dir.clone();

    let (sent, uncertain) = thread::scope(|s| {
        let sender = {
            let (rt, dir, texts, to) = (&rt, &alice_dir, &texts, &bob_name);
            s.spawn(move || stream(rt, dir, to, texts, 100, Duration::from_millis(100)))
        };
        let mut resumed = 0;
        for k in 1..=KILLS {
            let up = Duration::from_millis(rng.random_range(300..2000));
            thread::sleep(up);
            let before = alice.states(&bob_name);
            alice.node.kill9();
            let down = Duration::from_millis(rng.random_range(200..1000));
            thread::sleep(down);
            alice.spawn();
            if k == 2 {
                bob.spawn();
            }
            let after = alice.states(&bob_name);
            let lost: Vec<&String> = before
                .keys()
                .filter(|id| !after.contains_key(*id))
                .collect();
            // What the restarted outbox has to deliver (some may have been
            // acknowledged by bob just before the kill without alice noting it).
            let pending = after
                .values()
                .filter(|s| *s == "queued" || *s == "relayed")
                .count();
            resumed += pending;
            eprintln!(
                "kill {k} after {up:?} up ({:.1} s in): {} in alice's history, {pending} still to deliver after the restart",
                t0.elapsed().as_secs_f64(),
                after.len()
            );
            assert!(
                lost.is_empty(),
                "kill {k}: alice lost {} queued message(s), e.g. {:?}",
                lost.len(),
                lost.iter().take(3).collect::<Vec<_>>()
            );
        }
        // Otherwise the kills fell where nothing was in flight: the test
        // would not have tested the outbox's resumption.
        assert!(resumed > 0, "no kill left anything in alice's outbox");
        sender.join().expect("the sender thread panicked")
    });
    eprintln!(
        "stream done in {:.1} s: {} queued, {} uncertain (sends cut by a kill)",
        t0.elapsed().as_secs_f64(),
        sent.len(),
        uncertain.len()
    );
    let history = alice.states(&bob_name);
    let lost: Vec<&String> = sent
        .keys()
        .filter(|id| !history.contains_key(*id))
        .collect();
    assert!(lost.is_empty(), "alice lost queued messages: {lost:?}");
    check_all_delivered(&alice, &bob, &sent, &uncertain);
    assert_eq!(alice.status().outbox, 0, "alice's outbox is not empty");
    eprintln!(
        "all {} delivered exactly once after {:.1} s",
        sent.len(),
        t0.elapsed().as_secs_f64()
    );
}
