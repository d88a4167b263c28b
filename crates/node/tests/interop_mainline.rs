//! Interop with an independent implementation of the Mainline DHT: the `mainline` crate.
//!
//! A mixed network on loopback: 20 Peerchat nodes and 20 `mainline` nodes join in
//! turn, each one bootstrapping from the node of the other kind that joined just
//! before it. Then, in both directions: `find_node`, BEP 5 `announce_peer` /
//! `get_peers`, BEP 44 immutable items, and BEP 44 mutable items with and without
//! salt. Raw KRPC probes of single nodes check that what one implementation stores
//! is held by nodes of the other one, and at the end, with every Peerchat node
//! stopped, the `mainline` nodes alone still serve what Peerchat stored.
//!
//! Every `mainline` node runs its own OS thread, binds 127.0.0.1 on a free port and
//! has an explicit loopback bootstrap list: none of them ever reaches the public DHT.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use mainline::{Dht, Id, SigningKey};
use peerchat_kad::bep44::MutableItem;
use peerchat_kad::krpc::{Body, MAX_DATAGRAM, Message, Query, Response};
use peerchat_kad::{NodeId, Value};
use peerchat_node::{NodeConfig, NodeHandle, spawn};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

const PEERCHAT_NODES: usize = 20;
const MAINLINE_NODES: usize = 20;
/// Longest a single network operation may take before the test fails rather than hangs.
const OP_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest a check is retried while the network settles.
const SETTLE: Duration = Duration::from_secs(10);
/// The `mainline` nodes' request timeout (theirs defaults to 2 s).
const MAINLINE_REQUEST_TIMEOUT: Duration = Duration::from_secs(1);

/// The mixed network.
struct Net {
    pc: Vec<NodeHandle>,
    pc_tasks: Vec<JoinHandle<()>>,
    ml: Vec<Dht>,
    ml_addr: Vec<SocketAddr>,
    ml_id: Vec<NodeId>,
}

/// Runs `fut`, failing the test if it takes longer than [`OP_TIMEOUT`].
async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(OP_TIMEOUT, fut).await {
        Ok(t) => t,
        Err(_) => panic!("{what}: no result after {OP_TIMEOUT:?}"),
    }
}

/// Retries `attempt` until it gives `Some`, for at most [`SETTLE`].
async fn eventually<T>(what: &str, mut attempt: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + SETTLE;
    let mut tries = 0;
    loop {
        tries += 1;
        if let Some(t) = within(what, attempt()).await {
            if tries > 1 {
                eprintln!("{what}: succeeded at attempt {tries}");
            }
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: still failing after {tries} attempts"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn peerchat(i: usize) -> (NodeHandle, JoinHandle<()>) {
    let mut cfg = NodeConfig::new(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
    cfg.seed = Some(1000 + i as u64);
    spawn(cfg).await.unwrap()
}

fn mainline_node(bootstrap: SocketAddr) -> Dht {
    Dht::builder()
        .bootstrap(&[bootstrap])
        .server_mode()
        .bind_address(Ipv4Addr::LOCALHOST)
        .port(0)
        .request_timeout(MAINLINE_REQUEST_TIMEOUT)
        .build()
        .unwrap()
}

fn to_node_id(id: &Id) -> NodeId {
    NodeId(*id.as_bytes())
}

fn to_ml_id(id: NodeId) -> Id {
    Id::from(id.0)
}

/// Peerchat and `mainline` nodes join alternately, each through the previous node,
/// which is always of the other kind: P0, M0 (via P0), P1 (via M0), M1 (via P1), ...
async fn mixed_network() -> Net {
    let mut net = Net {
        pc: Vec::new(),
        pc_tasks: Vec::new(),
        ml: Vec::new(),
        ml_addr: Vec::new(),
        ml_id: Vec::new(),
    };
    let (h, task) = peerchat(0).await;
    net.pc.push(h);
    net.pc_tasks.push(task);
    for i in 0..MAINLINE_NODES {
        let via = net.pc.last().unwrap().local_addr();
        let dht = mainline_node(via);
        let node = dht.clone().as_async();
        // `bootstrapped` waits for the node's first lookup of its own id.
        eventually(
            &format!("mainline node {i} bootstraps via {via}"),
            async || node.bootstrapped().await.then_some(()),
        )
        .await;
        let info = node.info().await;
        net.ml_addr.push(SocketAddr::V4(info.local_addr()));
        net.ml_id.push(to_node_id(info.id()));
        net.ml.push(dht);
        if net.pc.len() < PEERCHAT_NODES {
            let via = *net.ml_addr.last().unwrap();
            let (h, task) = peerchat(net.pc.len()).await;
            let contacts = within("peerchat bootstrap", h.bootstrap(&[via]))
                .await
                .unwrap_or_else(|e| panic!("peerchat node {} via {via}: {e}", net.pc.len()));
            assert!(contacts >= 1);
            net.pc.push(h);
            net.pc_tasks.push(task);
        }
    }
    assert_eq!(net.pc.len(), PEERCHAT_NODES);
    assert_eq!(net.ml.len(), MAINLINE_NODES);
    net
}

/// `mainline`'s `get_peers` through its blocking API (its async one hands out a
/// `Stream`, and this crate has no stream utilities).
#[allow(deprecated)]
async fn mainline_get_peers(dht: &Dht, info_hash: NodeId) -> Vec<SocketAddrV4> {
    let dht = dht.clone();
    tokio::task::spawn_blocking(move || dht.get_peers(to_ml_id(info_hash)).flatten().collect())
        .await
        .unwrap()
}

/// Sends single KRPC queries to single nodes, as a read-only node (BEP 43) so no
/// node adds it to its routing table.
struct Prober {
    socket: UdpSocket,
    next_tid: u32,
}

impl Prober {
    async fn new() -> Prober {
        Prober {
            socket: UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap(),
            next_tid: 0x7072_0000,
        }
    }

    /// The answer of `to` to `query`, or `None` on an error answer or none within 2 s.
    async fn ask(&mut self, to: SocketAddr, query: Query) -> Option<Response> {
        self.next_tid += 1;
        let tid = self.next_tid.to_be_bytes().to_vec();
        let msg = Message {
            tid: tid.clone(),
            version: None,
            ip: None,
            read_only: true,
            body: Body::Query {
                id: NodeId([0xee; 20]),
                query,
            },
        };
        self.socket.send_to(&msg.encode(), to).await.unwrap();
        let mut buf = [0u8; MAX_DATAGRAM + 1];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        loop {
            let (n, from) = tokio::time::timeout_at(deadline, self.socket.recv_from(&mut buf))
                .await
                .ok()?
                .ok()?;
            let Ok(m) = Message::decode(&buf[..n]) else {
                continue;
            };
            if from != to || m.tid != tid {
                continue;
            }
            return match m.body {
                Body::Response(r) => Some(r),
                _ => None,
            };
        }
    }

    /// How many of `nodes` answer `query` with something `holds` accepts.
    async fn holders(
        &mut self,
        nodes: &[SocketAddr],
        query: Query,
        holds: impl Fn(&Response) -> bool,
    ) -> usize {
        let mut n = 0;
        for &to in nodes {
            if self.ask(to, query.clone()).await.is_some_and(|r| holds(&r)) {
                n += 1;
            }
        }
        n
    }
}

fn holds_mutable(item: &MutableItem) -> impl Fn(&Response) -> bool {
    let item = item.clone();
    move |r: &Response| {
        r.k == Some(item.key)
            && r.seq == Some(item.seq)
            && r.v.as_ref() == Some(&item.value)
            && r.sig == Some(item.sig)
    }
}

fn holds_peer(port: u16) -> impl Fn(&Response) -> bool {
    move |r: &Response| r.values.iter().any(|p| p.port() == port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_network_with_mainline_crate() {
    let start = Instant::now();
    let net = mixed_network().await;
    eprintln!(
        "network of {PEERCHAT_NODES} peerchat + {MAINLINE_NODES} mainline nodes up in {:?}",
        start.elapsed()
    );
    let pc_addrs: Vec<SocketAddr> = net.pc.iter().map(NodeHandle::local_addr).collect();
    let ml = |i: usize| net.ml[i].clone().as_async();
    let mut prober = Prober::new().await;

    // 1. find_node, both ways: the exact id comes back first.
    let target = net.ml_id[11];
    eventually("peerchat find_node of a mainline id", async || {
        let (found, _) = net.pc[3].find_node(target).await.unwrap();
        (found.first().map(|n| (n.id, n.addr)) == Some((target, net.ml_addr[11]))).then_some(())
    })
    .await;
    let target = net.pc[14].id();
    eventually("mainline find_node of a peerchat id", async || {
        let found = ml(5).find_node(to_ml_id(target)).await;
        let first = found.first()?;
        (to_node_id(first.id()) == target
            && SocketAddr::V4(first.address()) == net.pc[14].local_addr())
        .then_some(())
    })
    .await;

    // 1b. Annotated find_node answers (how Peerchat storers hand out a name's
    // claim): the mainline crate's lookups go through them unharmed, and a
    // Peerchat lookup collects them from the Peerchat nodes, nothing from the
    // mainline ones.
    let annotated = NodeId([0x5a; 20]);
    let fields = std::collections::BTreeMap::from([(
        b"claim".to_vec(),
        Value::Bytes(b"held by a peerchat node".to_vec()),
    )]);
    for h in &net.pc {
        h.annotate(annotated, Some(fields.clone())).await.unwrap();
    }
    eventually("mainline find_node through annotated answers", async || {
        let found = ml(6).find_node(to_ml_id(annotated)).await;
        found
            .iter()
            .any(|n| pc_addrs.contains(&SocketAddr::V4(n.address())))
            .then_some(())
    })
    .await;
    eventually(
        "peerchat annotated find_node in a mixed network",
        async || {
            let (found, _) = net.pc[2]
                .find_node_annotated(annotated, None)
                .await
                .unwrap();
            let from_pc =
                |(n, f): &&(peerchat_kad::NodeInfo, _)| pc_addrs.contains(&n.addr) && *f == fields;
            let from_ml = |(n, f): &&(peerchat_kad::NodeInfo, std::collections::BTreeMap<_, _>)| {
                !pc_addrs.contains(&n.addr) && f.is_empty()
            };
            (found.iter().filter(from_pc).count() >= 1
                && found.iter().filter(from_ml).count() >= 1
                && found.iter().all(|x| from_pc(&x) || from_ml(&x)))
            .then_some(())
        },
    )
    .await;

    // 2. BEP 5: Peerchat announces, mainline finds the peer; and the other way.
    let pc_hash = NodeId([0x51; 20]);
    let (stored, _) = net.pc[7].announce_peer(pc_hash, Some(4242)).await.unwrap();
    assert!(stored >= 1);
    eventually("mainline get_peers of a peerchat announce", async || {
        let peers = mainline_get_peers(&net.ml[13], pc_hash).await;
        peers
            .iter()
            .any(|p| *p == SocketAddrV4::new(Ipv4Addr::LOCALHOST, 4242))
            .then_some(())
    })
    .await;
    let ml_hash = NodeId([0x52; 20]);
    within(
        "mainline announce",
        ml(2).announce_peer(to_ml_id(ml_hash), Some(4343)),
    )
    .await
    .unwrap();
    eventually("peerchat get_peers of a mainline announce", async || {
        let (peers, _) = net.pc[18].get_peers(ml_hash).await.unwrap();
        peers
            .contains(&SocketAddr::from((Ipv4Addr::LOCALHOST, 4343)))
            .then_some(())
    })
    .await;

    // 3. BEP 44 immutable, both ways.
    let pc_value = b"stored by peerchat, read by mainline".to_vec();
    let (pc_target, stored, _) = net.pc[5]
        .put_immutable(Value::Bytes(pc_value.clone()))
        .await
        .unwrap();
    assert!(stored >= 1);
    eventually("mainline get_immutable of a peerchat put", async || {
        let got = ml(17).get_immutable(to_ml_id(pc_target)).await?;
        (*got == *pc_value).then_some(())
    })
    .await;
    let ml_value = b"stored by mainline, read by peerchat".to_vec();
    let ml_target = within("mainline put_immutable", ml(9).put_immutable(&ml_value))
        .await
        .unwrap();
    let ml_target = to_node_id(&ml_target);
    assert_eq!(
        ml_target,
        peerchat_kad::bep44::immutable_target(&Value::Bytes(ml_value.clone()))
    );
    eventually("peerchat get_immutable of a mainline put", async || {
        let (got, _) = net.pc[1].get_immutable(ml_target).await.unwrap();
        (got? == Value::Bytes(ml_value.clone())).then_some(())
    })
    .await;

    // 4. BEP 44 mutable, with and without salt, both ways.
    let secret = [0x42; 32];
    let mut pc_items = Vec::new();
    for (salt, seq) in [(&b""[..], 7), (&b"peerchat salt"[..], 3)] {
        let value = Value::Bytes(format!("peerchat item, seq {seq}").into_bytes());
        let item = MutableItem::sign(&secret, salt.to_vec(), seq, value).unwrap();
        let (_, stored, errors, _) = net.pc[9].put_mutable(item.clone(), None).await.unwrap();
        assert!(stored >= 1, "errors: {errors:?}");
        let salt = (!salt.is_empty()).then_some(salt);
        eventually("mainline get_mutable of a peerchat put", async || {
            let got = ml(4).get_mutable_most_recent(&item.key, salt).await?;
            let Value::Bytes(v) = &item.value else {
                unreachable!()
            };
            (got.seq() == item.seq
                && got.value() == v.as_slice()
                && got.signature() == &item.sig
                && got.salt() == salt)
                .then_some(())
        })
        .await;
        pc_items.push(item);
    }
    let signer = SigningKey::from_bytes(&[0x24; 32]);
    let mut ml_items = Vec::new();
    for (salt, seq) in [(None, 11), (Some(&b"mainline salt"[..]), 5)] {
        let value = format!("mainline item, seq {seq}").into_bytes();
        let item = mainline::MutableItem::new(signer.clone(), &value, seq, salt);
        within(
            "mainline put_mutable",
            ml(15).put_mutable(item.clone(), None),
        )
        .await
        .unwrap();
        let got = eventually("peerchat get_mutable of a mainline put", async || {
            let (got, _) = net.pc[12]
                .get_mutable(*item.key(), salt.unwrap_or_default().to_vec(), None)
                .await
                .unwrap();
            got.filter(|m| m.seq == seq)
        })
        .await;
        assert_eq!(got.value, Value::Bytes(value));
        assert_eq!(&got.sig, item.signature());
        assert_eq!(got.verify(), Ok(()));
        ml_items.push(got);
    }

    // Peerchat's tables hold the mainline nodes under their real ids only, not
    // under the throwaway ids `mainline` pings and puts from.
    let (mut contacts, mut of_mainline, mut ghosts) = (0, 0, 0);
    for h in &net.pc {
        for c in h.snapshot().await.unwrap().contacts {
            contacts += 1;
            if let Some(i) = net.ml_addr.iter().position(|a| *a == c.addr) {
                of_mainline += 1;
                if net.ml_id[i] != c.id {
                    ghosts += 1;
                }
            }
        }
    }
    eprintln!("peerchat contacts: {contacts}, {of_mainline} of them mainline nodes");
    assert!(of_mainline >= PEERCHAT_NODES);
    assert_eq!(ghosts, 0, "contacts at a mainline address under another id");

    // 5. What one implementation stored is held by nodes of the other: ask every
    // node of the other kind directly.
    let get = |target| Query::Get { target, seq: None };
    let n = prober
        .holders(&net.ml_addr, get(pc_target), |r| {
            r.v == Some(Value::Bytes(pc_value.clone()))
        })
        .await;
    eprintln!("peerchat's immutable item: held by {n} mainline nodes");
    assert!(n >= 1);
    for item in &pc_items {
        let n = prober
            .holders(&net.ml_addr, get(item.target()), holds_mutable(item))
            .await;
        let salt = String::from_utf8_lossy(&item.salt);
        eprintln!("peerchat's mutable item (salt {salt:?}): held by {n} mainline nodes");
        assert!(n >= 1);
    }
    let n = prober
        .holders(
            &net.ml_addr,
            Query::GetPeers { info_hash: pc_hash },
            holds_peer(4242),
        )
        .await;
    eprintln!("peerchat's announce: held by {n} mainline nodes");
    assert!(n >= 1);
    let n = prober
        .holders(&pc_addrs, get(ml_target), |r| {
            r.v == Some(Value::Bytes(ml_value.clone()))
        })
        .await;
    eprintln!("mainline's immutable item: held by {n} peerchat nodes");
    assert!(n >= 1);
    for item in &ml_items {
        let n = prober
            .holders(&pc_addrs, get(item.target()), holds_mutable(item))
            .await;
        let salt = String::from_utf8_lossy(&item.salt);
        eprintln!("mainline's mutable item (salt {salt:?}): held by {n} peerchat nodes");
        assert!(n >= 1);
    }
    let n = prober
        .holders(
            &pc_addrs,
            Query::GetPeers { info_hash: ml_hash },
            holds_peer(4343),
        )
        .await;
    eprintln!("mainline's announce: held by {n} peerchat nodes");
    assert!(n >= 1);

    // 6. With every Peerchat node stopped, mainline alone serves what Peerchat stored.
    for h in &net.pc {
        h.shutdown().await;
    }
    for t in net.pc_tasks {
        within("peerchat shutdown", t).await.unwrap();
    }
    let reader = ml(MAINLINE_NODES - 1);
    eventually("mainline-only get_immutable", async || {
        let got = reader.get_immutable(to_ml_id(pc_target)).await?;
        (*got == *pc_value).then_some(())
    })
    .await;
    for item in &pc_items {
        let salt = (!item.salt.is_empty()).then_some(item.salt.as_slice());
        eventually("mainline-only get_mutable", async || {
            let got = reader.get_mutable_most_recent(&item.key, salt).await?;
            (got.seq() == item.seq && got.signature() == &item.sig).then_some(())
        })
        .await;
    }
    eventually("mainline-only get_peers", async || {
        let peers = mainline_get_peers(&net.ml[MAINLINE_NODES - 1], pc_hash).await;
        peers
            .contains(&SocketAddrV4::new(Ipv4Addr::LOCALHOST, 4242))
            .then_some(())
    })
    .await;
    eprintln!("interop test done in {:?}", start.elapsed());
}
