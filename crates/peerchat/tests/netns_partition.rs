//! Partitions across real hosts: six `peerchat run` processes, each in a
//! network namespace of its own (its own 10.x address, its own loopback for
//! the local API), joined by veth pairs to a bridge that lives in a seventh
//! namespace. The test cuts the network in two halves (nftables drop rules
//! on the bridge, or, without `nft`, by moving one half's ports to a second
//! bridge), users on both sides write to each other, the cut heals, and every
//! message must arrive exactly once. Then one host moves to a new IP and keeps
//! receiving.
//!
//! It needs root and CAP_NET_ADMIN (`ip netns add`); without them it prints
//! why and passes without testing anything. When `PEERCHAT_NETNS_REPORT`
//! names a file, the test writes `ran` or `skipped: <reason>` there (CI
//! prints it). Namespaces are named `pc-<pid>-…` and removed on drop, even
//! when the test panics. `PEERCHAT_NETNS_CUT=bridge` cuts by splitting the
//! bridge even where `nft` works.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::{Node, poll_until, private_bin};
use serde_json::Value;
use tempfile::TempDir;

const PORT: u16 = 7420;
const HOSTS: usize = 6;
const NET_TIMEOUT: Duration = Duration::from_secs(60);
/// After the cut heals: sender outboxes and relays retry with backoff (the
/// outbox up to 2^n s, relays 5 s doubling), so allow for a few rounds.
const HEAL_TIMEOUT: Duration = Duration::from_secs(150);
const POLL: Duration = Duration::from_millis(300);

fn report(outcome: &str) {
    eprintln!("netns_partition: {outcome}");
    if let Ok(path) = std::env::var("PEERCHAT_NETNS_REPORT") {
        let _ = std::fs::write(path, format!("{outcome}\n"));
    }
}

fn run(args: &[&str]) -> Result<Output, String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run `{}`: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(format!(
            "`{}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn must(args: &[&str]) {
    if let Err(e) = run(args) {
        panic!("{e}");
    }
}

/// The namespaces of one run: a bridge namespace and one per host.
struct Lab {
    bridge_ns: String,
    hosts: Vec<String>,
    /// The second octet of this run's 10.x.0.0/16.
    net: u8,
    /// Whether the cut uses nftables (else a second bridge).
    nft: bool,
}

impl Lab {
    /// Creates the namespaces, or says why it cannot.
    fn create() -> Result<Lab, String> {
        let uid = run(&["id", "-u"])?;
        let uid = String::from_utf8_lossy(&uid.stdout).trim().to_string();
        if uid != "0" {
            return Err(format!(
                "not root (uid {uid}); network namespaces need root"
            ));
        }
        let pid = std::process::id();
        let prefix = format!("pc-{pid}");
        let mut lab = Lab {
            bridge_ns: format!("{prefix}-br"),
            hosts: Vec::new(),
            net: 16 + (pid % 200) as u8,
            nft: false,
        };
        // The first namespace tells whether we may create them at all.
        run(&["ip", "netns", "add", &lab.bridge_ns])
            .map_err(|e| format!("cannot create a network namespace (no CAP_NET_ADMIN?): {e}"))?;
        let br = lab.bridge_ns.clone();
        must(&["ip", "-n", &br, "link", "set", "lo", "up"]);
        for b in ["br0", "br1"] {
            must(&["ip", "-n", &br, "link", "add", b, "type", "bridge"]);
            must(&["ip", "-n", &br, "link", "set", b, "up"]);
        }
        for i in 0..HOSTS {
            let ns = format!("{prefix}-h{i}");
            must(&["ip", "netns", "add", &ns]);
            lab.hosts.push(ns.clone());
            must(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
            let port = format!("p{i}");
            must(&[
                "ip", "-n", &br, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                "netns", &ns,
            ]);
            must(&["ip", "-n", &br, "link", "set", &port, "master", "br0"]);
            must(&["ip", "-n", &br, "link", "set", &port, "up"]);
            let cidr = format!("{}/16", lab.ip(i, 0));
            must(&["ip", "-n", &ns, "addr", "add", &cidr, "dev", "eth0"]);
            must(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
        }
        // `PEERCHAT_NETNS_CUT=bridge` forces the other way (to test it).
        lab.nft = std::env::var("PEERCHAT_NETNS_CUT").as_deref() != Ok("bridge")
            && run(&["ip", "netns", "exec", &br, "nft", "list", "ruleset"]).is_ok();
        Ok(lab)
    }

    /// Host `i`'s address; `era` > 0 for the addresses it moves to.
    fn ip(&self, i: usize, era: u8) -> String {
        format!("10.{}.{era}.{}", self.net, 10 + i)
    }

    /// Drops all traffic between hosts `a` and the others.
    fn cut(&self, a: &[usize]) {
        let b: Vec<usize> = (0..HOSTS).filter(|i| !a.contains(i)).collect();
        if self.nft {
            let set = |v: &[usize]| {
                v.iter()
                    .map(|i| format!("\"p{i}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let (sa, sb) = (set(a), set(&b));
            let rules = format!(
                "table bridge pccut {{\n chain cut {{\n  type filter hook forward priority 0; policy accept;\n  \
                 iifname {{ {sa} }} oifname {{ {sb} }} drop\n  iifname {{ {sb} }} oifname {{ {sa} }} drop\n }}\n}}\n"
            );
            let mut child = Command::new("ip")
                .args(["netns", "exec", &self.bridge_ns, "nft", "-f", "-"])
                .stdin(Stdio::piped())
                .spawn()
                .expect("running nft");
            use std::io::Write;
            child
                .stdin
                .take()
                .expect("nft's stdin")
                .write_all(rules.as_bytes())
                .expect("writing nft rules");
            assert!(
                child.wait().expect("nft").success(),
                "nft refused:\n{rules}"
            );
        } else {
            for i in b {
                must(&[
                    "ip",
                    "-n",
                    &self.bridge_ns,
                    "link",
                    "set",
                    &format!("p{i}"),
                    "master",
                    "br1",
                ]);
            }
        }
    }

    fn heal(&self) {
        if self.nft {
            must(&[
                "ip",
                "netns",
                "exec",
                &self.bridge_ns,
                "nft",
                "delete",
                "table",
                "bridge",
                "pccut",
            ]);
        } else {
            for i in 0..HOSTS {
                must(&[
                    "ip",
                    "-n",
                    &self.bridge_ns,
                    "link",
                    "set",
                    &format!("p{i}"),
                    "master",
                    "br0",
                ]);
            }
        }
    }

    /// Moves host `i` from address `old` to `new` (eras of `ip`).
    fn readdress(&self, i: usize, old: u8, new: u8) {
        let ns = &self.hosts[i];
        must(&[
            "ip",
            "-n",
            ns,
            "addr",
            "del",
            &format!("{}/16", self.ip(i, old)),
            "dev",
            "eth0",
        ]);
        must(&[
            "ip",
            "-n",
            ns,
            "addr",
            "add",
            &format!("{}/16", self.ip(i, new)),
            "dev",
            "eth0",
        ]);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in self.hosts.iter().chain([&self.bridge_ns]) {
            // Whatever still runs in our namespaces was started by this test.
            if let Ok(out) = run(&["ip", "netns", "pids", ns]) {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = run(&["kill", "-9", pid]);
                }
            }
            if let Err(e) = run(&["ip", "netns", "del", ns]) {
                eprintln!("cleanup: {e}");
            }
        }
    }
}

/// User `name` on host namespace `ns`: created, running on `listen` (joining
/// through `boot`, if any), its `status` answering.
fn start(bin: &Path, root: &Path, name: &str, ns: &str, listen: &str, boot: Option<&str>) -> Node {
    let mut node = Node::init(bin, root, name, Some(ns), "netns");
    node.start(listen, boot, POLL);
    node
}

/// Polls `f` until it gives `Some`, at most `timeout`; panics with `what`.
fn wait_for<T>(what: impl Fn() -> String, timeout: Duration, f: impl FnMut() -> Option<T>) -> T {
    poll_until(POLL, what, timeout, f)
}

/// A message sent in the test: who to whom, and its text.
struct Sent {
    from: usize,
    to: usize,
    text: String,
}

/// Waits until every message of `sent` addressed to a node is in its inbox,
/// then checks each is there exactly once, with its text and sender key, and
/// that `delivered` shows at its sender.
fn check_delivered(nodes: &[Node], sent: &BTreeMap<String, Sent>, timeout: Duration) {
    wait_for(
        || {
            let mut missing = Vec::new();
            for (i, n) in nodes.iter().enumerate() {
                let have: HashSet<String> = n
                    .inbox()
                    .iter()
                    .filter_map(|m| m["id"].as_str().map(str::to_string))
                    .collect();
                missing.extend(
                    sent.iter()
                        .filter(|(id, s)| s.to == i && !have.contains(*id))
                        .map(|(_, s)| s.text.clone()),
                );
            }
            format!("{} message(s) to arrive: {missing:?}", missing.len())
        },
        timeout,
        || {
            nodes
                .iter()
                .enumerate()
                .all(|(i, n)| {
                    let inbox = n.inbox();
                    sent.iter()
                        .filter(|(_, s)| s.to == i)
                        .all(|(id, _)| inbox.iter().any(|m| m["id"] == id.as_str()))
                })
                .then_some(())
        },
    );
    wait_for(
        || "every sender to see its messages delivered".to_string(),
        timeout,
        || {
            sent.iter()
                .all(|(id, s)| {
                    let st = nodes[s.from].states(&nodes[s.to].name);
                    matches!(st.get(id).map(String::as_str), Some("delivered" | "read"))
                })
                .then_some(())
        },
    );
    for (i, n) in nodes.iter().enumerate() {
        let inbox = n.inbox();
        let mut ids = HashSet::new();
        for m in &inbox {
            let id = m["id"].as_str().unwrap_or_default();
            assert!(ids.insert(id.to_string()), "{} shows {id} twice", n.name);
        }
        for (id, s) in sent.iter().filter(|(_, s)| s.to == i) {
            let copies: Vec<&Value> = inbox.iter().filter(|m| m["id"] == id.as_str()).collect();
            assert_eq!(
                copies.len(),
                1,
                "{} has {} copies of {:?}",
                n.name,
                copies.len(),
                s.text
            );
            assert_eq!(copies[0]["text"], s.text.as_str());
            assert_eq!(
                copies[0]["peer_key"],
                nodes[s.from].key.as_str(),
                "sender of {:?}",
                s.text
            );
        }
    }
}

/// Sends `text` from node `from` to node `to` and records it in `sent`.
fn send(nodes: &[Node], sent: &mut BTreeMap<String, Sent>, from: usize, to: usize, text: String) {
    let id = nodes[from].send(&nodes[to].name, &text);
    sent.insert(id, Sent { from, to, text });
}

#[test]
fn partition_heal_and_new_address() {
    let lab = match Lab::create() {
        Ok(lab) => lab,
        Err(why) => {
            report(&format!("SKIPPED: {why}"));
            return;
        }
    };
    report(&format!(
        "running in namespaces {}-* on 10.{}.0.0/16, cut by {}",
        lab.bridge_ns.trim_end_matches("-br"),
        lab.net,
        if lab.nft {
            "nftables drop rules on the bridge"
        } else {
            "splitting the bridge (no nft)"
        }
    ));
    let tmp = TempDir::new().unwrap();
    let bin = private_bin(tmp.path());
    let boot = format!("{}:{PORT}", lab.ip(0, 0));
    let mut nodes: Vec<Node> = (0..HOSTS)
        .map(|i| {
            let b = (i > 0).then_some(boot.as_str());
            start(
                &bin,
                tmp.path(),
                &format!("host{i}"),
                &lab.hosts[i],
                &format!("{}:{PORT}", lab.ip(i, 0)),
                b,
            )
        })
        .collect();
    for n in &nodes {
        n.wait_claimed(NET_TIMEOUT, POLL);
    }
    // Everyone pins everyone while the network is whole.
    for a in &nodes {
        for b in &nodes {
            if a.name != b.name {
                let w = wait_for(
                    || format!("{} to resolve {}", a.name, b.name),
                    NET_TIMEOUT,
                    || a.try_cli(&["add", &b.name, "--json"]).ok(),
                );
                assert_eq!(
                    w["key"],
                    b.key.as_str(),
                    "{} pinned the wrong key for {}",
                    a.name,
                    b.name
                );
            }
        }
    }

    let half_a = [0usize, 1, 2];
    let half_b = [3usize, 4, 5];
    lab.cut(&half_a);
    let cut_at = Instant::now();
    // Each host writes to the other side (twice to each) and to one host of
    // its own side, all hosts at once.
    let mut sent: BTreeMap<String, Sent> = BTreeMap::new();
    thread::scope(|s| {
        let nodes = &nodes;
        let handles: Vec<_> = (0..HOSTS)
            .map(|from| {
                s.spawn(move || {
                    let a_side = half_a.contains(&from);
                    let others: Vec<usize> = if a_side {
                        half_b.to_vec()
                    } else {
                        half_a.to_vec()
                    };
                    let same = if a_side {
                        half_a[(from + 1) % 3]
                    } else {
                        half_b[(from + 1) % 3]
                    };
                    let mut mine = BTreeMap::new();
                    for round in 0..2 {
                        for &to in others.iter().chain([&same]) {
                            send(
                                nodes,
                                &mut mine,
                                from,
                                to,
                                format!("cut {round}: {} to {}", nodes[from].name, nodes[to].name),
                            );
                        }
                    }
                    mine
                })
            })
            .collect();
        for h in handles {
            sent.extend(h.join().expect("a sender thread panicked"));
        }
    });
    eprintln!(
        "{} messages sent during the cut in {:.1} s",
        sent.len(),
        cut_at.elapsed().as_secs_f64()
    );
    let same_side: BTreeMap<String, Sent> = sent
        .iter()
        .filter(|(_, s)| half_a.contains(&s.from) == half_a.contains(&s.to))
        .map(|(id, s)| {
            (
                id.clone(),
                Sent {
                    from: s.from,
                    to: s.to,
                    text: s.text.clone(),
                },
            )
        })
        .collect();
    check_delivered(&nodes, &same_side, NET_TIMEOUT);
    // Nothing crosses the cut: the cross messages wait (queued, or at relays
    // of the sender's side), and none has arrived.
    thread::sleep(Duration::from_secs(8));
    for (id, s) in sent.iter().filter(|(id, _)| !same_side.contains_key(*id)) {
        let st = nodes[s.from].states(&nodes[s.to].name);
        let state = st.get(id).map(String::as_str);
        assert!(
            matches!(state, Some("queued" | "relayed")),
            "{:?} is {state:?} across the cut",
            s.text
        );
        assert!(
            !nodes[s.to].inbox().iter().any(|m| m["id"] == id.as_str()),
            "{:?} crossed the cut",
            s.text
        );
    }
    let relayed = sent
        .iter()
        .filter(|(id, s)| {
            nodes[s.from]
                .states(&nodes[s.to].name)
                .get(*id)
                .map(String::as_str)
                == Some("relayed")
        })
        .count();
    eprintln!(
        "during the cut: {} cross messages, {relayed} at relays",
        sent.len() - same_side.len()
    );

    let healed = Instant::now();
    lab.heal();
    eprintln!("the cut lasted {:.1} s", cut_at.elapsed().as_secs_f64());
    check_delivered(&nodes, &sent, HEAL_TIMEOUT);
    // The DHT is whole again: during the cut each side dropped the other
    // from its routing table; now every node knows every other again.
    for n in &nodes {
        wait_for(
            || {
                format!(
                    "{}'s routing table to hold both sides again: {}",
                    n.name,
                    n.status()
                )
            },
            HEAL_TIMEOUT,
            || {
                (n.status()["routing_table"].as_u64().unwrap_or(0) >= HOSTS as u64 - 1)
                    .then_some(())
            },
        );
    }
    eprintln!(
        "healed: all {} messages delivered exactly once {:.1} s after the heal",
        sent.len(),
        healed.elapsed().as_secs_f64()
    );

    // Host 4 moves to a new IP: stopped, re-addressed, restarted with the
    // new --listen and no bootstrap (its saved contacts suffice).
    let mover = 4;
    let old_id = nodes[mover].status()["node_id"].clone();
    nodes[mover].stop();
    let text = "while host4 moves".to_string();
    send(&nodes, &mut sent, 1, mover, text);
    lab.readdress(mover, 0, 1);
    nodes[mover].start(&format!("{}:{PORT}", lab.ip(mover, 1)), None, POLL);
    let st = nodes[mover].status();
    assert_ne!(st["node_id"], old_id, "no new node id on a new address");
    for from in [0usize, 3, 5] {
        send(
            &nodes,
            &mut sent,
            from,
            mover,
            format!("to host4 at its new address from {}", nodes[from].name),
        );
    }
    // And host4 still writes from its new address.
    send(
        &nodes,
        &mut sent,
        mover,
        2,
        "host4 from its new address".to_string(),
    );
    let moved = Instant::now();
    check_delivered(&nodes, &sent, HEAL_TIMEOUT);
    eprintln!(
        "host4 moved to {}: all {} messages delivered exactly once, {:.1} s after its restart",
        lab.ip(mover, 1),
        sent.len(),
        moved.elapsed().as_secs_f64()
    );
    // Others see its new address.
    let w = nodes[0].cli(&["whois", &nodes[mover].name, "--json"]);
    let addrs = w["chat_addrs"].to_string();
    assert!(
        addrs.contains(&lab.ip(mover, 1)),
        "host0 sees host4 at {addrs}"
    );
    report(&format!(
        "ran: {HOSTS} hosts, cut by {}, {} messages delivered exactly once, host4 moved",
        if lab.nft { "nftables" } else { "bridge split" },
        sent.len()
    ));
    drop(nodes);
}
