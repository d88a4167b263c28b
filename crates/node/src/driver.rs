//! The node's task: one UDP socket, one core, one timer.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use peerchat_kad::krpc::MAX_DATAGRAM;
use peerchat_kad::{Config, Dht, Event, NodeId, Outcome, QueryId, QueryStats};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::error::NodeError;
use crate::handle::{
    Command, IncomingQuery, NodeHandle, NodeSnapshot, QueryKind, RECENT_LOOKUPS, RecentLookup,
    TableEntry,
};

/// How to start a node.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// UDP address to listen on (port 0: any free port).
    pub listen: SocketAddr,
    /// The node id; `None`: random (the caller derives a BEP 42 id for public addresses).
    pub id: Option<NodeId>,
    /// Seed of the core's RNG; `None`: from the operating system.
    pub seed: Option<u64>,
    /// Parameters of the DHT core.
    pub dht: Config,
    /// Where extension queries (methods in `dht.extension_methods`) go; a full
    /// channel answers 202 (busy) rather than queue without bound.
    pub extensions: Option<mpsc::Sender<IncomingQuery>>,
}

impl NodeConfig {
    /// Defaults on this listen address.
    pub fn new(listen: SocketAddr) -> NodeConfig {
        NodeConfig {
            listen,
            id: None,
            seed: None,
            dht: Config::default(),
            extensions: None,
        }
    }
}

/// Binds the socket and starts the node's task. Call from a tokio runtime.
pub async fn spawn(config: NodeConfig) -> Result<(NodeHandle, JoinHandle<()>), NodeError> {
    let socket = bind(config.listen).map_err(|source| NodeError::Bind {
        addr: config.listen,
        source,
    })?;
    let addr = socket.local_addr().map_err(|source| NodeError::Bind {
        addr: config.listen,
        source,
    })?;
    let seed = config.seed.unwrap_or_else(rand::random);
    let id = config.id.unwrap_or_else(|| {
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed ^ 0x5eed);
        NodeId::random(&mut rng)
    });
    let dht = Dht::new(config.dht, id, seed, Instant::now());
    let (tx, rx) = mpsc::channel(64);
    let live = Arc::new(AtomicUsize::new(0));
    let handle = NodeHandle {
        tx,
        id,
        addr,
        live_contacts: live.clone(),
    };
    // Boxed: the task's future would otherwise hold the core twice (as the
    // argument and as the local it is moved to), some 1.5 kB each.
    let task = tokio::spawn(run(
        Box::new(dht),
        socket,
        addr,
        rx,
        live,
        config.extensions,
    ));
    Ok((handle, task))
}

/// Socket buffers: a node that many others join through (a bootstrap node)
/// receives bursts that the default 208 KiB buffer drops. The kernel caps them
/// at `net.core.rmem_max`/`wmem_max`, and only uses what is queued.
const SOCKET_BUFFER: usize = 2 << 20;

fn bind(addr: SocketAddr) -> io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(false).ok();
    }
    socket.set_recv_buffer_size(SOCKET_BUFFER).ok();
    socket.set_send_buffer_size(SOCKET_BUFFER).ok();
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

/// Runs the core until shutdown or until every handle is dropped.
async fn run(
    mut dht: Box<Dht>,
    socket: UdpSocket,
    addr: SocketAddr,
    mut rx: mpsc::Receiver<Box<Command>>,
    live: Arc<AtomicUsize>,
    extensions: Option<mpsc::Sender<IncomingQuery>>,
) {
    let mut waiting = Waiting::default();
    let mut lookups = Lookups::default();
    let start = tokio::time::Instant::now();
    let start_std = Instant::now();
    let sleep = tokio::time::sleep_until(start);
    tokio::pin!(sleep);
    loop {
        if let Some(t) = dht.poll_timeout() {
            let t = start + t.saturating_duration_since(start_std);
            if sleep.deadline() != t {
                sleep.as_mut().reset(t);
            }
        }
        tokio::select! {
            r = socket.readable() => match r {
                Ok(()) => receive(&mut dht, &socket),
                Err(e) => tracing::trace!(%addr, "socket error: {e}"),
            },
            cmd = rx.recv() => match cmd.map(|c| *c) {
                Some(Command::Query(mut kind, reply)) => {
                    let now = Instant::now();
                    let label = lookup_label(&kind, dht.id());
                    let early = match &mut *kind {
                        QueryKind::FindAnnotated(_, _, early) => early.take(),
                        _ => None,
                    };
                    let q = start_query(&mut dht, *kind, now);
                    waiting.done.insert(q, reply);
                    if let Some(early) = early {
                        waiting.early.insert(q, early);
                    }
                    if let Some(l) = label {
                        lookups.started.insert(q, l);
                    }
                }
                Some(Command::Snapshot(reply)) => {
                    let now = Instant::now();
                    let _ = reply.send(NodeSnapshot {
                        id: dht.id(),
                        addr,
                        contacts: dht.routing_table().nodes().map(|e| e.node).collect(),
                        stats: dht.stats().clone(),
                        items: peerchat_kad::RecordStore::item_count(dht.store()),
                        external: dht.external_address(),
                        table: table_of(&dht, now),
                        lookups: lookups.recent(now),
                    });
                }
                Some(Command::Respond(r)) => match *r {
                    (to, tid, Ok(fields)) => dht.respond(to, tid, fields),
                    (to, tid, Err((code, msg))) => dht.respond_error(to, tid, code, &msg),
                },
                Some(Command::Annotate(a)) => {
                    let (target, update) = *a;
                    let fields = update(dht.annotation(&target));
                    if !dht.annotate(target, fields) {
                        tracing::debug!(%target, "too many annotated targets: not annotating");
                    }
                }
                Some(Command::Annotation(target, reply)) => {
                    let _ = reply.send(dht.annotation(&target));
                }
                Some(Command::AddContacts(nodes)) => {
                    let now = Instant::now();
                    for n in nodes {
                        dht.add_contact(n, now);
                    }
                }
                Some(Command::Shutdown) | None => break,
            },
            () = &mut sleep => {
                dht.handle_timeout(Instant::now());
            }
        }
        flush(
            &mut dht,
            &socket,
            &mut waiting,
            &mut lookups,
            extensions.as_ref(),
        );
        let n = dht
            .routing_table()
            .nodes()
            .filter(|e| e.failures == 0)
            .count();
        live.store(n, Ordering::Relaxed);
    }
}

/// Who waits for the queries callers started.
#[derive(Default)]
struct Waiting {
    /// For the outcome.
    done: HashMap<QueryId, oneshot::Sender<(Outcome, QueryStats)>>,
    /// For the answers with fields of an annotated lookup, as they arrive.
    early: HashMap<QueryId, mpsc::UnboundedSender<crate::Fields>>,
}

/// The lookups callers started, and the last [`RECENT_LOOKUPS`] that finished
/// (a bounded ring, for views of the network).
#[derive(Default)]
struct Lookups {
    started: HashMap<QueryId, (&'static str, NodeId)>,
    done: VecDeque<(RecentLookup, Instant)>,
}

impl Lookups {
    fn finish(&mut self, id: QueryId, outcome: &Outcome, stats: QueryStats) {
        let Some((kind, target)) = self.started.remove(&id) else {
            return;
        };
        let found = match outcome {
            Outcome::Nodes(n) => n.len(),
            Outcome::Annotated(n) => n.len(),
            Outcome::Peers(p) => p.len(),
            Outcome::Immutable(v) => usize::from(v.is_some()),
            Outcome::Mutable(v) => usize::from(v.is_some()),
            Outcome::Stored { stored, .. } => *stored,
            Outcome::Pong(_) | Outcome::Reply(_) => 0,
        };
        if self.done.len() == RECENT_LOOKUPS {
            self.done.pop_front();
        }
        let l = RecentLookup {
            kind,
            target,
            ago: std::time::Duration::ZERO,
            stats,
            found,
        };
        self.done.push_back((l, Instant::now()));
    }

    /// Newest first.
    fn recent(&self, now: Instant) -> Vec<RecentLookup> {
        self.done
            .iter()
            .rev()
            .map(|(l, at)| RecentLookup {
                ago: now.saturating_duration_since(*at),
                ..l.clone()
            })
            .collect()
    }
}

/// What a query looks up, if it is a lookup (pings and direct requests are not).
fn lookup_label(kind: &QueryKind, own: NodeId) -> Option<(&'static str, NodeId)> {
    use peerchat_kad::bep44::{immutable_target, mutable_target};
    Some(match kind {
        QueryKind::Bootstrap(_) => ("bootstrap", own),
        QueryKind::FindNode(t) | QueryKind::FindAnnotated(t, ..) => ("find_node", *t),
        QueryKind::GetPeers(t) => ("get_peers", *t),
        QueryKind::Announce(t, _) => ("announce_peer", *t),
        QueryKind::GetImmutable(t) => ("get", *t),
        QueryKind::PutImmutable(v) => ("put", immutable_target(v)),
        QueryKind::GetMutable(k, salt, _) => ("get", mutable_target(k, salt)),
        QueryKind::PutMutable(item, _) => ("put", item.target()),
        QueryKind::Ping(_) | QueryKind::Request(..) => return None,
    })
}

fn table_of(dht: &Dht, now: Instant) -> Vec<TableEntry> {
    dht.routing_table()
        .buckets()
        .flat_map(|(bucket, b)| {
            b.entries.iter().map(move |e| TableEntry {
                node: e.node,
                bucket,
                last_seen: now.saturating_duration_since(e.last_seen),
                failures: e.failures,
            })
        })
        .collect()
}

fn start_query(dht: &mut Dht, kind: QueryKind, now: Instant) -> QueryId {
    match kind {
        QueryKind::Bootstrap(addrs) => dht.bootstrap(&addrs, now),
        QueryKind::FindNode(t) => dht.find_node(t, now),
        QueryKind::FindAnnotated(t, quorum, _) => dht.find_node_annotated(t, quorum, now),
        QueryKind::GetPeers(t) => dht.get_peers(t, now),
        QueryKind::Announce(t, port) => dht.announce_peer(t, port, now),
        QueryKind::GetImmutable(t) => dht.get_immutable(t, now),
        // The handle checked the value already; a failure here cannot happen, but
        // answer it as a lookup of nothing rather than panic.
        QueryKind::PutImmutable(v) => match dht.put_immutable(v, now) {
            Ok((q, _)) => q,
            Err(_) => dht.find_node(NodeId::ZERO, now),
        },
        QueryKind::GetMutable(k, salt, seq) => dht.get_mutable(k, salt, seq, now),
        QueryKind::PutMutable(item, cas) => match dht.put_mutable(item, cas, now) {
            Ok(q) => q,
            Err(_) => dht.find_node(NodeId::ZERO, now),
        },
        QueryKind::Ping(addr) => dht.ping(addr, now),
        QueryKind::Request(addr, method, args) => dht.request(addr, method, args, now),
    }
}

thread_local! {
    /// The receive buffer, one per worker thread rather than one per node: ten
    /// thousand idle nodes would otherwise hold fifteen megabytes of buffers.
    /// One byte more than the largest datagram we accept, to tell an oversized one.
    static RECV_BUF: std::cell::RefCell<[u8; MAX_DATAGRAM + 1]> =
        const { std::cell::RefCell::new([0u8; MAX_DATAGRAM + 1]) };
}

/// Reads every datagram waiting on the socket (up to a bound, to stay fair to
/// the other nodes on this worker) into the core.
fn receive(dht: &mut Dht, socket: &UdpSocket) {
    RECV_BUF.with_borrow_mut(|buf| {
        for _ in 0..64 {
            match socket.try_recv_from(buf) {
                Ok((n, from)) => {
                    // An oversized datagram arrives cut to MAX_DATAGRAM + 1 bytes:
                    // the core refuses it too, and counts it as malformed.
                    if let Some(d) = buf.get(..n) {
                        dht.handle_datagram(from, d, Instant::now());
                    }
                }
                // WouldBlock: drained. Other errors are ICMP reports (port
                // unreachable) that Linux surfaces here; not fatal for UDP.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {}
            }
        }
    });
}

/// Sends what the core wants sent and hands finished queries to their callers.
/// Never waits: a datagram the kernel cannot take now is dropped, as the
/// network itself may drop it (the core retries what matters).
fn flush(
    dht: &mut Dht,
    socket: &UdpSocket,
    waiting: &mut Waiting,
    lookups: &mut Lookups,
    extensions: Option<&mpsc::Sender<IncomingQuery>>,
) {
    while let Some(ev) = dht.poll_event() {
        match ev {
            Event::QueryDone { id, outcome, stats } => {
                lookups.finish(id, &outcome, stats);
                waiting.early.remove(&id);
                if let Some(tx) = waiting.done.remove(&id) {
                    let _ = tx.send((outcome, stats));
                }
            }
            Event::Annotation { id, fields, .. } => {
                if let Some(tx) = waiting.early.get(&id) {
                    let _ = tx.send(fields);
                }
            }
            Event::Bootstrapped { contacts } => tracing::debug!(contacts, "bootstrapped"),
            Event::ExternalAddress(a) => tracing::info!(%a, "peers see us at this address"),
            Event::Query {
                from,
                node,
                tid,
                method,
                args,
            } => match extensions {
                Some(ext) => {
                    let q = IncomingQuery {
                        from,
                        node,
                        tid,
                        method,
                        args,
                    };
                    if let Err(e) = ext.try_send(q) {
                        let q = match e {
                            mpsc::error::TrySendError::Full(q)
                            | mpsc::error::TrySendError::Closed(q) => q,
                        };
                        dht.respond_error(
                            q.from,
                            q.tid,
                            peerchat_kad::krpc::code::SERVER,
                            "busy, try later",
                        );
                    }
                }
                // No extension handler on a bare DHT node.
                None => dht.respond_error(
                    from,
                    tid,
                    peerchat_kad::krpc::code::METHOD_UNKNOWN,
                    "Method Unknown",
                ),
            },
        }
    }
    // The send syscall straight on the socket: tokio's `try_send_to` answers
    // WouldBlock until its reactor has once reported the socket writable, which
    // would drop a new node's first datagrams.
    let raw = socket2::SockRef::from(socket);
    while let Some(t) = dht.poll_transmit() {
        if let Err(e) = raw.send_to(&t.payload, &t.dst.into()) {
            tracing::trace!(dst = %t.dst, "send error: {e}");
        }
    }
}
