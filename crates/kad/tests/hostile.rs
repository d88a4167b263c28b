//! Hostile DHT peers against sans-IO cores in virtual time: nodes that answer
//! lookups with garbage, or with nodes that are far away or do not exist, and
//! storers offered forged or replayed BEP 44 items. Lookups still find the closest
//! honest nodes; every bad datagram or item is refused with an error or counted.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use peerchat_kad::bep44::MutableItem;
use peerchat_kad::krpc::{Body, Message, PutArgs, Query, Response, code};
use peerchat_kad::{Config, Dht, Event, NodeId, NodeInfo, Outcome, QueryId, Value};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

/// How a hostile node answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hostility {
    /// Random bytes, broken bencode, truncated node lists, someone else's id.
    Garbage,
    /// Well-formed answers listing nodes that do not exist: half of them with ids
    /// right next to the target (a black hole), half far away from it.
    Liar,
}

struct Net {
    now: Instant,
    honest: Vec<Dht>,
    addrs: Vec<SocketAddr>,
    by_addr: HashMap<SocketAddr, usize>,
    hostile: HashMap<SocketAddr, (NodeId, Hostility)>,
    /// Ids of the nodes the liars made up.
    fakes: Vec<NodeId>,
    rng: ChaCha20Rng,
    answered: usize,
    /// The answers with fields that the last [`Net::run`] saw arrive, in order.
    early: Vec<(NodeId, BTreeMap<Vec<u8>, Value>)>,
}

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, 0, (i / 250) as u8, (i % 250) as u8 + 1], 6881))
}

fn near(id: NodeId, last: u8) -> NodeId {
    let mut b = id.0;
    b[19] ^= last;
    NodeId(b)
}

impl Net {
    /// `n` honest nodes that all know each other.
    fn new(n: usize, seed: u64) -> Net {
        let now = Instant::now();
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let mut honest = Vec::new();
        let mut addrs = Vec::new();
        for i in 0..n {
            let mut id = [0u8; 20];
            rng.fill_bytes(&mut id);
            honest.push(Dht::new(Config::default(), NodeId(id), i as u64, now));
            addrs.push(addr(i));
        }
        let infos: Vec<NodeInfo> = honest
            .iter()
            .zip(&addrs)
            .map(|(d, a)| NodeInfo {
                id: d.id(),
                addr: *a,
            })
            .collect();
        for d in &mut honest {
            for info in &infos {
                if info.id != d.id() {
                    d.add_contact(*info, now);
                }
            }
        }
        let by_addr = addrs.iter().enumerate().map(|(i, a)| (*a, i)).collect();
        Net {
            now,
            honest,
            addrs,
            by_addr,
            hostile: HashMap::new(),
            fakes: Vec::new(),
            rng,
            answered: 0,
            early: Vec::new(),
        }
    }

    /// A random target, and the honest nodes by their distance to it.
    fn random_target(&mut self) -> (NodeId, Vec<usize>) {
        let mut t = [0u8; 20];
        self.rng.fill_bytes(&mut t);
        let target = NodeId(t);
        let mut by_distance: Vec<usize> = (0..self.honest.len()).collect();
        by_distance.sort_by_key(|&i| self.honest[i].id().distance(&target));
        (target, by_distance)
    }

    /// Adds a hostile node with this id to every honest node's table.
    fn add_hostile(&mut self, id: NodeId, how: Hostility) {
        let a = SocketAddr::from(([10, 9, 0, self.hostile.len() as u8 + 1], 6881));
        self.hostile.insert(a, (id, how));
        for d in &mut self.honest {
            d.add_contact(NodeInfo { id, addr: a }, self.now);
        }
    }

    /// The hostile node's answer to `query`, if any.
    fn hostile_answer(&mut self, a: SocketAddr, query: &[u8]) -> Option<Vec<u8>> {
        let (id, how) = self.hostile[&a];
        let msg = Message::decode(query).ok()?;
        let Body::Query { query, .. } = msg.body else {
            return None;
        };
        let target = match query {
            Query::FindNode { target } => target,
            Query::GetPeers { info_hash } => info_hash,
            Query::Get { target, .. } => target,
            _ => id,
        };
        self.answered += 1;
        let answer = match how {
            Hostility::Garbage => match self.answered % 5 {
                0 => {
                    let mut junk = vec![0u8; self.rng.random_range(1..1400)];
                    self.rng.fill_bytes(&mut junk);
                    junk
                }
                1 => b"d1:rd2:id20:".to_vec(),
                2 => {
                    // A node list of 25 bytes: not a multiple of 26.
                    let mut w = b"d1:rd2:id20:".to_vec();
                    w.extend_from_slice(&id.0);
                    w.extend_from_slice(b"5:nodes25:");
                    w.extend_from_slice(&[0x41; 25]);
                    w.extend_from_slice(b"e1:t");
                    w.extend_from_slice(format!("{}:", msg.tid.len()).as_bytes());
                    w.extend_from_slice(&msg.tid);
                    w.extend_from_slice(b"1:y1:re");
                    w
                }
                3 => Message {
                    tid: msg.tid,
                    version: None,
                    ip: None,
                    read_only: false,
                    // Another node's id from this address.
                    body: Body::Response(Response {
                        id: near(id, 0x80),
                        ..Response::default()
                    }),
                }
                .encode(),
                _ => Message {
                    tid: msg.tid,
                    version: None,
                    ip: None,
                    read_only: false,
                    body: Body::Error(peerchat_kad::krpc::KrpcError {
                        code: 201,
                        message: "\u{0}".repeat(300),
                    }),
                }
                .encode(),
            },
            Hostility::Liar => {
                let mut nodes = Vec::new();
                for i in 0..8u8 {
                    let fake = if i < 4 {
                        near(target, 0x10 + i)
                    } else {
                        let mut b = target.0;
                        b[0] ^= 0x80 | i;
                        NodeId(b)
                    };
                    self.fakes.push(fake);
                    nodes.push(NodeInfo {
                        id: fake,
                        addr: SocketAddr::from(([10, 66, 0, i + 1], 6881)),
                    });
                }
                Message {
                    tid: msg.tid,
                    version: None,
                    ip: None,
                    read_only: false,
                    body: Body::Response(Response {
                        id,
                        nodes,
                        token: Some(b"tok".to_vec()),
                        ..Response::default()
                    }),
                }
                .encode()
            }
        };
        Some(answer)
    }

    /// Moves datagrams and time until `from`'s query `q` is done.
    fn run(&mut self, from: usize, q: QueryId) -> Outcome {
        self.early.clear();
        let deadline = self.now + Duration::from_secs(120);
        loop {
            let mut moved = true;
            while moved {
                moved = false;
                for i in 0..self.honest.len() {
                    while let Some(t) = self.honest[i].poll_transmit() {
                        moved = true;
                        let src = self.addrs[i];
                        if let Some(&j) = self.by_addr.get(&t.dst) {
                            self.honest[j].handle_datagram(src, &t.payload, self.now);
                        } else if self.hostile.contains_key(&t.dst)
                            && let Some(answer) = self.hostile_answer(t.dst, &t.payload)
                        {
                            self.honest[i].handle_datagram(t.dst, &answer, self.now);
                        }
                        // Anything else is a node that does not exist: dropped.
                    }
                }
                while let Some(ev) = self.honest[from].poll_event() {
                    match ev {
                        Event::QueryDone { id, outcome, .. } if id == q => return outcome,
                        Event::Annotation { id, node, fields } if id == q => {
                            self.early.push((node, fields));
                        }
                        _ => {}
                    }
                }
            }
            let next = self
                .honest
                .iter()
                .filter_map(|d| d.poll_timeout())
                .min()
                .unwrap_or(self.now + Duration::from_millis(100))
                .max(self.now + Duration::from_millis(1));
            assert!(next < deadline, "the lookup never finished");
            self.now = next;
            for d in &mut self.honest {
                d.handle_timeout(self.now);
            }
        }
    }
}

#[test]
fn lookups_succeed_past_garbage_and_lying_nodes() {
    let mut net = Net::new(60, 1);
    let mut found_first = 0;
    let lookups = 20;
    for round in 0..lookups {
        let t = 5 + round * 2;
        let target = net.honest[t].id();
        // Two hostile nodes right next to each target: every lookup meets them first.
        net.add_hostile(near(target, 1), Hostility::Garbage);
        net.add_hostile(near(target, 2), Hostility::Liar);
        let from = (t + 17) % net.honest.len();
        let q = net.honest[from].find_node(target, net.now);
        let Outcome::Nodes(nodes) = net.run(from, q) else {
            panic!("find_node gave another outcome");
        };
        assert!(!nodes.is_empty(), "lookup {round} found nothing");
        if nodes[0].id == target {
            found_first += 1;
        }
        for n in &nodes {
            assert!(
                !net.fakes.contains(&n.id),
                "lookup {round} returned a node that does not exist: {}",
                n.id
            );
        }
        // The closest honest nodes are all there (the liar itself may be listed: it
        // answers); the node looking is not in its own answer.
        let me = net.honest[from].id();
        let mut honest_ids: Vec<NodeId> = net
            .honest
            .iter()
            .map(|d| d.id())
            .filter(|id| *id != me)
            .collect();
        honest_ids.sort_by_key(|id| id.distance(&target));
        let got: Vec<NodeId> = nodes.iter().map(|n| n.id).collect();
        for id in &honest_ids[..4] {
            assert!(
                got.contains(id),
                "lookup {round} missed a close honest node {id}"
            );
        }
    }
    assert_eq!(found_first, lookups, "every lookup finds its target first");
    assert!(net.answered > 0, "the hostile nodes were asked");
    // The garbage was counted as such by the nodes that received it.
    let dropped: u64 = net.honest.iter().map(|d| d.stats().dropped_malformed).sum();
    assert!(dropped > 0, "garbage answers were not counted");
}

fn storer() -> (Dht, SocketAddr) {
    (
        Dht::new(Config::default(), NodeId([0x01; 20]), 7, Instant::now()),
        "10.1.1.1:6881".parse().unwrap(),
    )
}

fn ask(dht: &mut Dht, from: SocketAddr, tid: u8, query: Query) -> Message {
    let msg = Message {
        tid: vec![tid],
        version: None,
        ip: None,
        read_only: false,
        body: Body::Query {
            id: NodeId([0x42; 20]),
            query,
        },
    };
    dht.handle_datagram(from, &msg.encode(), Instant::now());
    let t = dht.poll_transmit().expect("no answer");
    Message::decode(&t.payload).unwrap()
}

fn put(token: &[u8], item: &MutableItem) -> Query {
    Query::Put(PutArgs {
        token: token.to_vec(),
        v: item.value.clone(),
        k: Some(item.key),
        sig: Some(item.sig),
        seq: Some(item.seq),
        salt: Some(item.salt.clone()),
        cas: None,
    })
}

fn error_code(m: &Message) -> Option<i64> {
    match &m.body {
        Body::Error(e) => Some(e.code),
        _ => None,
    }
}

#[test]
fn forged_and_replayed_presence_items_are_refused_by_storers() {
    let (mut dht, from) = storer();
    let alice = [7u8; 32];
    let mallory = [8u8; 32];
    let salt = b"peerchat:presence".to_vec();
    let v = |s: &str| Value::Bytes(s.as_bytes().to_vec());
    let newer = MutableItem::sign(&alice, salt.clone(), 10, v("alice at home")).unwrap();
    let target = newer.target();
    let r = ask(&mut dht, from, 1, Query::Get { target, seq: None });
    let Body::Response(r) = r.body else {
        panic!("get was not answered");
    };
    let token = r.token.expect("a write token");
    assert_eq!(
        error_code(&ask(&mut dht, from, 2, put(&token, &newer))),
        None
    );

    // A replayed older record (seq 9): 302, and the newer one stays.
    let older = MutableItem::sign(&alice, salt.clone(), 9, v("alice at old address")).unwrap();
    assert_eq!(
        error_code(&ask(&mut dht, from, 3, put(&token, &older))),
        Some(code::SEQ_TOO_LOW)
    );
    // The same seq with another value: refused too.
    let same = MutableItem::sign(&alice, salt.clone(), 10, v("alice elsewhere")).unwrap();
    assert_eq!(
        error_code(&ask(&mut dht, from, 4, put(&token, &same))),
        Some(code::SEQ_TOO_LOW)
    );
    // A higher seq with a forged signature: 206.
    let mut forged = MutableItem::sign(&alice, salt.clone(), 11, v("mallory's node")).unwrap();
    forged.value = v("mallory's node!");
    assert_eq!(
        error_code(&ask(&mut dht, from, 5, put(&token, &forged))),
        Some(code::INVALID_SIGNATURE)
    );
    // Mallory's own record, with alice's key put in: the signature fails.
    let mut wrong_key = MutableItem::sign(&mallory, salt.clone(), 12, v("mallory")).unwrap();
    wrong_key.key = newer.key;
    assert_eq!(
        error_code(&ask(&mut dht, from, 6, put(&token, &wrong_key))),
        Some(code::INVALID_SIGNATURE)
    );
    let r = ask(&mut dht, from, 7, Query::Get { target, seq: None });
    let Body::Response(r) = r.body else {
        panic!("get was not answered");
    };
    assert_eq!(r.seq, Some(10));
    assert_eq!(r.v, Some(v("alice at home")));
}

#[test]
fn garbage_and_oversized_datagrams_are_counted_and_ignored() {
    let (mut dht, from) = storer();
    let mut rng = ChaCha20Rng::seed_from_u64(9);
    let n = 2000;
    for i in 0..n {
        let len = if i % 2 == 0 {
            rng.random_range(1..=1500)
        } else {
            rng.random_range(1501..4000)
        };
        let mut junk = vec![0u8; len];
        rng.fill_bytes(&mut junk);
        // Never a valid message: KRPC is a dict, `d` first.
        junk[0] = b'x';
        dht.handle_datagram(from, &junk, Instant::now());
    }
    assert_eq!(dht.stats().dropped_malformed, n as u64);
    assert!(dht.poll_transmit().is_none(), "garbage was answered");
    assert_eq!(dht.routing_table().nodes().count(), 0);
    // Still answers an honest ping.
    let m = ask(&mut dht, from, 1, Query::Ping);
    assert!(matches!(m.body, Body::Response(_)));
}

/// An annotation as a claim storer's: `claim` with this text.
fn claim_field(s: &str) -> BTreeMap<Vec<u8>, Value> {
    BTreeMap::from([(b"claim".to_vec(), Value::Bytes(s.into()))])
}

#[test]
fn annotations_come_back_with_the_lookup_from_the_closest_nodes_only() {
    let mut net = Net::new(60, 4);
    let (target, by_distance) = net.random_target();
    // The five closest hold the record; a far node says something else; a liar
    // sits right next to the target.
    for &i in &by_distance[..5] {
        assert!(net.honest[i].annotate(target, Some(claim_field("held"))));
    }
    let far = by_distance[50];
    assert!(net.honest[far].annotate(target, Some(claim_field("far away"))));
    net.add_hostile(near(target, 1), Hostility::Liar);
    let from = by_distance[30];

    let q = net.honest[from].find_node_annotated(target, None, net.now);
    let Outcome::Annotated(found) = net.run(from, q) else {
        panic!("find_node_annotated gave another outcome");
    };
    assert_eq!(found.len(), Config::default().k);
    let held: Vec<NodeId> = found
        .iter()
        .filter(|(_, f)| *f == claim_field("held"))
        .map(|(n, _)| n.id)
        .collect();
    let closest: Vec<NodeId> = by_distance[..5]
        .iter()
        .map(|&i| net.honest[i].id())
        .collect();
    assert_eq!(held, closest, "the closest nodes' fields, closest first");
    for (n, f) in &found {
        assert!(
            f.is_empty() || *f == claim_field("held"),
            "{n:?} gave {f:?}"
        );
    }
    // Each of them was also handed out as it arrived, before the end.
    for id in &closest {
        assert!(
            net.early
                .iter()
                .any(|(n, f)| n == id && *f == claim_field("held")),
            "{id:?}'s answer was not handed out as it arrived"
        );
    }
    assert!(net.early.iter().all(|(_, f)| !f.is_empty()));

    // On the wire: a plain find_node of the target carries the fields (other
    // implementations ignore them), one of another target does not, and a key
    // naming a field of the answer itself is never sent.
    let holder = &mut net.honest[by_distance[0]];
    let mut f = claim_field("held");
    f.insert(b"id".to_vec(), Value::Bytes(vec![0; 20]));
    holder.annotate(target, Some(f));
    let asker: SocketAddr = "10.2.2.2:6881".parse().unwrap();
    let answer = |dht: &mut Dht, target| match ask(dht, asker, 9, Query::FindNode { target }).body {
        Body::Response(r) => r,
        other => panic!("find_node was not answered: {other:?}"),
    };
    let r = answer(holder, target);
    assert_eq!(
        r.id,
        holder.id(),
        "an annotation cannot change the answer's id"
    );
    assert_eq!(r.other, claim_field("held"));
    assert!(!r.nodes.is_empty());
    assert!(answer(holder, near(target, 0x40)).other.is_empty());
    // And stopping the annotation stops it.
    holder.annotate(target, None);
    assert!(answer(holder, target).other.is_empty());
}

#[test]
fn the_table_of_annotated_targets_is_bounded() {
    let (mut dht, _) = storer();
    let f = BTreeMap::from([(b"x".to_vec(), Value::Int(1))]);
    let mut accepted = 0;
    for i in 0..5000u32 {
        let mut t = [0u8; 20];
        t[..4].copy_from_slice(&i.to_be_bytes());
        if dht.annotate(NodeId(t), Some(f.clone())) {
            accepted += 1;
        }
    }
    assert_eq!(accepted, 4096);
    // A target already there can still be updated.
    assert!(dht.annotate(NodeId([0; 20]), Some(f)));
}

#[test]
fn an_annotated_lookup_with_a_quorum_ends_once_most_of_the_closest_agree() {
    let mut net = Net::new(80, 5);
    let k = Config::default().k;
    let (target, by_distance) = net.random_target();
    // All k closest hold the record, but one says something else.
    for &i in &by_distance[..k] {
        net.honest[i].annotate(target, Some(claim_field("held")));
    }
    net.honest[by_distance[1]].annotate(target, Some(claim_field("forged")));
    let from = by_distance[60];
    let sent = |net: &Net| net.honest[from].stats().sent[1];

    let before = sent(&net);
    let q = net.honest[from].find_node_annotated(target, None, net.now);
    let Outcome::Annotated(all) = net.run(from, q) else {
        panic!("another outcome");
    };
    let without = sent(&net) - before;
    let count = |found: &[(NodeInfo, BTreeMap<Vec<u8>, Value>)], s: &str| {
        found.iter().filter(|(_, f)| *f == claim_field(s)).count()
    };
    assert_eq!(count(&all, "held"), k - 1);
    assert_eq!(count(&all, "forged"), 1);

    let before = sent(&net);
    let q = net.honest[from].find_node_annotated(target, Some(b"claim".to_vec()), net.now);
    let Outcome::Annotated(quorum) = net.run(from, q) else {
        panic!("another outcome");
    };
    let with = sent(&net) - before;
    assert!(
        count(&quorum, "held") * 2 > k,
        "ended before a majority agreed: {quorum:?}"
    );
    assert!(
        with < without,
        "{with} requests with a quorum, {without} without"
    );
}
