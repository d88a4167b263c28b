//! The DHT node's state machine: routing, requests in flight, queries, timers.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::bencode::Value;
use crate::bep44::{self, MutableItem};
use crate::config::Config;
use crate::id::NodeId;
use crate::krpc::{Body, KrpcError, Message, NodeInfo, PutArgs, Query, Response};
use crate::lookup::{Lookup, LookupConfig, Next};
use crate::query::{Event, Outcome, QueryId, QueryStats};
use crate::routing_table::{Insert, RoutingTable};
use crate::stats::Stats;
use crate::store::{Item, MemoryStore, RecordStore};
use crate::token::Tokens;

/// Soonest periodic work (refresh, expiry, republish) runs again after it ran;
/// otherwise it runs when the first of its deadlines is due (see
/// `Dht::next_maintenance_after`), not on every tick of a clock.
const MAINTENANCE_EVERY: Duration = Duration::from_secs(1);
/// How often stored records are expired and the per-IP query counts reset.
const EXPIRY_EVERY: Duration = Duration::from_secs(60);
/// Longest wait before an empty table retries its bootstrap nodes (the wait
/// doubles from one second after each failed attempt, with jitter, so a lost
/// datagram costs seconds and a crowd of joiners does not retry in lockstep).
const REBOOTSTRAP_MAX: Duration = Duration::from_secs(15);
/// Most peers a `get_peers` query collects.
const MAX_PEERS_COLLECTED: usize = 256;
/// Most targets a node annotates its `find_node` answers for (see
/// [`Dht::annotate`]); past it, new targets are refused.
const MAX_ANNOTATIONS: usize = 4096;

/// A datagram to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// Destination.
    pub dst: SocketAddr,
    /// Bencoded KRPC message.
    pub payload: Vec<u8>,
}

/// What a request in flight is for.
#[derive(Clone, Debug)]
enum Purpose {
    /// A step of the lookup of this query.
    Lookup(QueryId),
    /// A `find_node` to a bootstrap address whose node id we do not know yet.
    BootstrapSeed(QueryId),
    /// An `announce_peer` or `put` of this query.
    Store(QueryId),
    /// A ping the caller asked for.
    Ping(QueryId),
    /// A ping to the least-recently seen contact of a full bucket.
    EvictionPing,
    /// A direct extension request.
    Direct(QueryId),
}

/// A request in flight.
#[derive(Clone, Debug)]
struct Pending {
    dst: SocketAddr,
    expect: Option<NodeId>,
    purpose: Purpose,
    /// A lookup request is sent a second time, identical (same transaction
    /// id), when it stalls: one lost datagram must not make a lookup miss the
    /// node it was asking. Set once it was.
    resent: bool,
}

/// Timer entries, lazily deleted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    /// A lookup request's slot is freed (the request keeps waiting).
    Stall(u32, u64),
    /// A request is given up.
    Expire(u32),
}

/// What a running query does.
#[derive(Clone, Debug)]
enum Kind {
    Bootstrap,
    FindNode,
    /// `find_node`, keeping the fields each node added to its answer; with a
    /// field name, it ends once most of the `k` closest agree on that field.
    FindAnnotated {
        quorum: Option<Vec<u8>>,
    },
    Refresh,
    GetPeers,
    Announce {
        port: Option<u16>,
    },
    GetImmutable,
    GetMutable {
        salt: Vec<u8>,
        min_seq: Option<i64>,
    },
    PutImmutable {
        value: Value,
    },
    PutMutable {
        item: MutableItem,
        cas: Option<i64>,
    },
}

/// A running query.
#[derive(Debug)]
struct Running {
    kind: Kind,
    lookup: Lookup,
    started: Instant,
    rpcs: u32,
    hops: u32,
    peers: Vec<SocketAddr>,
    immutable: Option<Value>,
    mutable: Option<MutableItem>,
    /// `FindAnnotated`: the extra fields of the answers that had some.
    annotations: Vec<(NodeId, BTreeMap<Vec<u8>, Value>)>,
    /// Storing phase: requests out, accepted, refusals.
    storing: Option<(usize, usize, Vec<KrpcError>)>,
    /// Bootstrap seeds not answered yet.
    seeds_out: usize,
}

impl Running {
    /// The request this query's lookup sends to each node it asks.
    fn lookup_query(&self) -> Query {
        let target = self.lookup.target();
        match &self.kind {
            Kind::Bootstrap | Kind::FindNode | Kind::FindAnnotated { .. } | Kind::Refresh => {
                Query::FindNode { target }
            }
            Kind::GetPeers | Kind::Announce { .. } => Query::GetPeers { info_hash: target },
            Kind::GetImmutable | Kind::PutImmutable { .. } | Kind::PutMutable { .. } => {
                Query::Get { target, seq: None }
            }
            Kind::GetMutable { min_seq, .. } => Query::Get {
                target,
                seq: *min_seq,
            },
        }
    }
}

/// Whether more than half of the `k` closest candidates of `lookup` that did
/// not fail answered with the same value of `field` (see
/// [`Dht::find_node_annotated`]).
fn quorum_reached(
    lookup: &Lookup,
    annotations: &[(NodeId, BTreeMap<Vec<u8>, Value>)],
    field: &[u8],
) -> bool {
    let k = lookup.config().k;
    let mut values: Vec<(&Value, usize)> = Vec::new();
    let closest = lookup
        .candidates()
        .filter(|c| c.state() != crate::lookup::PeerState::Failed)
        .take(k);
    for c in closest {
        let Some(v) = annotations
            .iter()
            .find(|(id, _)| *id == c.node.id)
            .and_then(|(_, f)| f.get(field))
        else {
            continue;
        };
        match values.iter_mut().find(|(w, _)| *w == v) {
            Some((_, n)) => *n += 1,
            None => values.push((v, 1)),
        }
    }
    values.iter().any(|(_, n)| n * 2 > k)
}

/// A sans-IO DHT node.
#[derive(Debug)]
pub struct Dht<S: RecordStore = MemoryStore> {
    pub(crate) config: Config,
    pub(crate) id: NodeId,
    pub(crate) table: RoutingTable,
    pub(crate) store: S,
    pub(crate) tokens: Tokens,
    pub(crate) rng: ChaCha8Rng,
    pub(crate) stats: Stats,
    pub(crate) transmits: VecDeque<Transmit>,
    pub(crate) events: VecDeque<Event>,
    pub(crate) rate: HashMap<IpAddr, (Instant, u32)>,
    next_tid: u32,
    pending: HashMap<u32, Pending>,
    timers: BinaryHeap<Reverse<(Instant, Timer)>>,
    /// Boxed: a running query is large (its kind, lookup and results), and a
    /// map never gives back the slots a burst made it grow to.
    queries: HashMap<QueryId, Box<Running>>,
    next_query: u64,
    next_maintenance: Instant,
    last_rotation: Instant,
    last_expiry: Instant,
    bootstrap_addrs: Vec<SocketAddr>,
    bootstrap_query: Option<QueryId>,
    last_bootstrap: Option<Instant>,
    /// Bucket refreshes running (several right after joining, then one at a time).
    refresh_queries: std::collections::HashSet<QueryId>,
    /// Failed bootstrap attempts in a row, and when to try again.
    bootstrap_failures: u32,
    next_bootstrap: Option<Instant>,
    /// The join's bucket refreshes are running, one after another.
    joining: bool,
    /// Items we put, republished every `republish_interval`.
    originated: BTreeMap<NodeId, (Item, Instant)>,
    /// BEP 42 votes on our external address.
    ip_votes: HashMap<SocketAddr, u32>,
    external: Option<SocketAddr>,
    /// Fields added to our answers to a `find_node` of these targets, as one
    /// bencoded dict each: a decoded dict is a tree of allocations several
    /// times its size, and a node keeps one per name whose claim it stores.
    pub(crate) annotations: HashMap<NodeId, Box<[u8]>>,
}

impl Dht<MemoryStore> {
    /// A node with id `id`, a memory store, and an RNG seeded with `seed`.
    pub fn new(config: Config, id: NodeId, seed: u64, now: Instant) -> Self {
        let store = MemoryStore::new(config.store_limits);
        Dht::with_store(config, id, store, seed, now)
    }
}

impl<S: RecordStore> Dht<S> {
    /// A node with id `id`, this record store, and an RNG seeded with `seed`.
    pub fn with_store(config: Config, id: NodeId, store: S, seed: u64, now: Instant) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut secret = [0u8; 16];
        rng.fill_bytes(&mut secret);
        let next_tid = rng.next_u32();
        Dht {
            table: RoutingTable::new(id, config.k).with_ping_after(config.ping_oldest_after),
            config,
            id,
            store,
            tokens: Tokens::new(secret),
            rng,
            stats: Stats::default(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            rate: HashMap::new(),
            next_tid,
            pending: HashMap::new(),
            timers: BinaryHeap::new(),
            queries: HashMap::new(),
            next_query: 1,
            // A random phase, so that nodes started together do not do their
            // periodic work in lockstep.
            next_maintenance: now + Duration::from_millis(u64::from(next_tid % 1000)),
            last_rotation: now,
            last_expiry: now,
            bootstrap_addrs: Vec::new(),
            bootstrap_query: None,
            last_bootstrap: None,
            refresh_queries: std::collections::HashSet::new(),
            bootstrap_failures: 0,
            next_bootstrap: None,
            joining: false,
            originated: BTreeMap::new(),
            ip_votes: HashMap::new(),
            external: None,
            annotations: HashMap::new(),
        }
    }

    /// Our node id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The routing table.
    pub fn routing_table(&self) -> &RoutingTable {
        &self.table
    }

    /// The record store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Our address as other nodes see it, once several agree (BEP 42 `ip`).
    pub fn external_address(&self) -> Option<SocketAddr> {
        self.external
    }

    /// Requests in flight.
    pub fn pending_requests(&self) -> usize {
        self.pending.len()
    }

    /// Whether a bootstrap is running.
    pub fn is_bootstrapping(&self) -> bool {
        self.bootstrap_query.is_some()
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event for the caller.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Dht::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let t = self.timers.peek().map(|Reverse((t, _))| *t);
        Some(match t {
            Some(t) => t.min(self.next_maintenance),
            None => self.next_maintenance,
        })
    }

    /// Drops timers of requests already answered from the top of the heap, so
    /// that [`Dht::poll_timeout`] does not wake the caller for nothing.
    fn prune_timers(&mut self) {
        while let Some(Reverse((_, timer))) = self.timers.peek() {
            let tid = match timer {
                Timer::Stall(tid, _) | Timer::Expire(tid) => *tid,
            };
            if self.pending.contains_key(&tid) {
                break;
            }
            self.timers.pop();
        }
    }

    /// Adds a contact learned elsewhere (a saved routing table), as if it had
    /// answered: it is checked by the usual pings and failures.
    pub fn add_contact(&mut self, node: NodeInfo, now: Instant) {
        self.insert_contact(node, now);
    }

    // ----- starting queries -------------------------------------------------

    fn new_query(&mut self, kind: Kind, target: NodeId, now: Instant) -> QueryId {
        let id = self.insert_query(kind, target, now);
        self.drive(id, now);
        id
    }

    /// Registers a query without sending anything yet.
    fn insert_query(&mut self, kind: Kind, target: NodeId, now: Instant) -> QueryId {
        let id = QueryId(self.next_query);
        self.next_query += 1;
        // Twice k seeds: when the closest contacts are gone (churn), the lookup
        // still has live ones to start from.
        let seeds = self.table.closest(&target, self.config.k * 2);
        let lookup = Lookup::new(target, self.lookup_config(), seeds);
        self.queries.insert(
            id,
            Box::new(Running {
                kind,
                lookup,
                started: now,
                rpcs: 0,
                hops: 0,
                peers: Vec::new(),
                immutable: None,
                mutable: None,
                annotations: Vec::new(),
                storing: None,
                seeds_out: 0,
            }),
        );
        id
    }

    fn lookup_config(&self) -> LookupConfig {
        LookupConfig {
            k: self.config.k,
            alpha: self.config.alpha,
            request_timeout: self.config.request_timeout,
        }
    }

    /// Joins the network through these addresses: asks each for the nodes closest
    /// to our own id, then looks our id up (which puts us in others' tables), then
    /// refreshes the buckets. Ends with [`Event::Bootstrapped`].
    pub fn bootstrap(&mut self, addrs: &[SocketAddr], now: Instant) -> QueryId {
        for a in addrs {
            if !self.bootstrap_addrs.contains(a) {
                self.bootstrap_addrs.push(*a);
            }
        }
        if let Some(q) = self.bootstrap_query {
            return q;
        }
        self.last_bootstrap = Some(now);
        let own = self.id;
        let id = self.insert_query(Kind::Bootstrap, own, now);
        self.bootstrap_query = Some(id);
        let targets: Vec<SocketAddr> = self.bootstrap_addrs.clone();
        let mut sent = 0;
        for addr in targets {
            if self.table.nodes().any(|e| e.node.addr == addr) {
                continue;
            }
            self.send_query(
                addr,
                None,
                Query::FindNode { target: own },
                Purpose::BootstrapSeed(id),
                now,
            );
            sent += 1;
        }
        if let Some(q) = self.queries.get_mut(&id) {
            q.seeds_out = sent;
            q.rpcs += sent as u32;
        }
        self.drive(id, now);
        id
    }

    /// Finds the `k` nodes closest to `target`.
    pub fn find_node(&mut self, target: NodeId, now: Instant) -> QueryId {
        self.new_query(Kind::FindNode, target, now)
    }

    /// Finds the `k` nodes closest to `target`, each with the fields it added
    /// to its `find_node` answer (see [`Dht::annotate`]): a record kept by the
    /// closest nodes comes back with the lookup that finds them, with no round
    /// of requests after it.
    ///
    /// With `quorum`, the lookup ends as soon as more than half of the `k`
    /// closest nodes it knows (that did not fail) answered with the same value
    /// of that field: the answers still out could not outvote them. The value is
    /// not checked here; the caller verifies what it gets, and asks again if
    /// the majority's value does not hold up.
    pub fn find_node_annotated(
        &mut self,
        target: NodeId,
        quorum: Option<Vec<u8>>,
        now: Instant,
    ) -> QueryId {
        self.new_query(Kind::FindAnnotated { quorum }, target, now)
    }

    /// Adds `fields` to our answers to a `find_node` of `target` (`None`:
    /// stops). The layer above publishes there what it stores under `target`
    /// (Peerchat: the name claim of the name whose target it is), so that
    /// [`Dht::find_node_annotated`] finds it without asking again. Other
    /// implementations ignore keys they do not know (BEP 5). Keys naming a
    /// field of the answer itself (`id`, `nodes`, ...) are never sent.
    /// Returns false when the table of annotated targets is full.
    pub fn annotate(&mut self, target: NodeId, fields: Option<BTreeMap<Vec<u8>, Value>>) -> bool {
        match fields {
            None => {
                self.annotations.remove(&target);
                true
            }
            Some(f) => {
                if self.annotations.len() >= MAX_ANNOTATIONS
                    && !self.annotations.contains_key(&target)
                {
                    return false;
                }
                self.annotations
                    .insert(target, Value::Dict(f).encode().into_boxed_slice());
                true
            }
        }
    }

    /// The fields added to our answers to a `find_node` of `target`, if any.
    pub fn annotation(&self, target: &NodeId) -> Option<BTreeMap<Vec<u8>, Value>> {
        match Value::decode(self.annotations.get(target)?) {
            Ok(Value::Dict(d)) => Some(d),
            _ => None,
        }
    }

    /// Finds peers of an info-hash (BEP 5 `get_peers`).
    pub fn get_peers(&mut self, info_hash: NodeId, now: Instant) -> QueryId {
        self.new_query(Kind::GetPeers, info_hash, now)
    }

    /// Announces that we are a peer of `info_hash` on `port` (`None`: our UDP port).
    pub fn announce_peer(&mut self, info_hash: NodeId, port: Option<u16>, now: Instant) -> QueryId {
        self.new_query(Kind::Announce { port }, info_hash, now)
    }

    /// Gets the immutable item with this target (BEP 44).
    pub fn get_immutable(&mut self, target: NodeId, now: Instant) -> QueryId {
        self.new_query(Kind::GetImmutable, target, now)
    }

    /// Stores an immutable item (BEP 44); its target is [`bep44::immutable_target`].
    pub fn put_immutable(
        &mut self,
        value: Value,
        now: Instant,
    ) -> Result<(QueryId, NodeId), bep44::ItemError> {
        bep44::check_immutable(&value)?;
        let target = bep44::immutable_target(&value);
        self.originated
            .insert(target, (Item::Immutable(value.clone()), now));
        Ok((
            self.new_query(Kind::PutImmutable { value }, target, now),
            target,
        ))
    }

    /// Gets the most recent mutable item of `key` and `salt` (BEP 44), ignoring
    /// items with `seq` not above `min_seq`.
    pub fn get_mutable(
        &mut self,
        key: [u8; 32],
        salt: Vec<u8>,
        min_seq: Option<i64>,
        now: Instant,
    ) -> QueryId {
        let target = bep44::mutable_target(&key, &salt);
        self.new_query(Kind::GetMutable { salt, min_seq }, target, now)
    }

    /// Stores a signed mutable item (BEP 44), with an optional compare-and-swap `seq`.
    pub fn put_mutable(
        &mut self,
        item: MutableItem,
        cas: Option<i64>,
        now: Instant,
    ) -> Result<QueryId, bep44::ItemError> {
        item.verify()?;
        let target = item.target();
        self.originated
            .insert(target, (Item::Mutable(item.clone()), now));
        Ok(self.new_query(Kind::PutMutable { item, cas }, target, now))
    }

    /// Pings an address.
    pub fn ping(&mut self, addr: SocketAddr, now: Instant) -> QueryId {
        let id = QueryId(self.next_query);
        self.next_query += 1;
        self.send_query(addr, None, Query::Ping, Purpose::Ping(id), now);
        id
    }

    /// Sends an extension query (`method` with `args`; `id` is added) to one node.
    pub fn request(
        &mut self,
        addr: SocketAddr,
        method: Vec<u8>,
        args: BTreeMap<Vec<u8>, Value>,
        now: Instant,
    ) -> QueryId {
        let id = QueryId(self.next_query);
        self.next_query += 1;
        self.send_query(
            addr,
            None,
            Query::Other { method, args },
            Purpose::Direct(id),
            now,
        );
        id
    }

    // ----- sending ----------------------------------------------------------

    fn send_query(
        &mut self,
        dst: SocketAddr,
        expect: Option<NodeId>,
        query: Query,
        purpose: Purpose,
        now: Instant,
    ) -> u32 {
        let mut tid = self.next_tid;
        while self.pending.contains_key(&tid) {
            tid = tid.wrapping_add(1);
        }
        self.next_tid = tid.wrapping_add(1);
        self.stats.count_sent(&query);
        self.transmit_query(dst, tid, query);
        // Lookup steps and eviction pings are sent again once if they stall: a
        // single lost datagram must neither make a lookup miss a node nor evict
        // a good contact.
        let stall = match purpose {
            Purpose::Lookup(q) => Some(q.0),
            Purpose::EvictionPing => Some(0),
            _ => None,
        };
        if let Some(q) = stall {
            self.timers.push(Reverse((
                now + self.config.request_timeout,
                Timer::Stall(tid, q),
            )));
        }
        self.timers.push(Reverse((
            now + self.config.request_expiry,
            Timer::Expire(tid),
        )));
        self.pending.insert(
            tid,
            Pending {
                dst,
                expect,
                purpose,
                resent: false,
            },
        );
        tid
    }

    /// Encodes and queues one of our queries with transaction id `tid`.
    fn transmit_query(&mut self, dst: SocketAddr, tid: u32, query: Query) {
        let msg = Message {
            tid: tid.to_be_bytes().to_vec(),
            version: Some(self.config.version.clone()),
            ip: None,
            read_only: self.config.read_only,
            body: Body::Query { id: self.id, query },
        };
        self.send_message(dst, msg);
    }

    pub(crate) fn send_message(&mut self, dst: SocketAddr, msg: Message) {
        let payload = msg.encode();
        self.stats.bytes_sent += payload.len() as u64;
        self.transmits.push_back(Transmit { dst, payload });
    }

    /// Answers an extension query ([`Event::Query`]) with these extra fields
    /// (`id` is added).
    pub fn respond(&mut self, to: SocketAddr, tid: Vec<u8>, fields: BTreeMap<Vec<u8>, Value>) {
        let r = Response {
            id: self.id,
            other: fields,
            ..Response::default()
        };
        let msg = self.reply_message(to, tid, Body::Response(r));
        self.send_message(to, msg);
    }

    /// Answers an extension query with a KRPC error.
    pub fn respond_error(&mut self, to: SocketAddr, tid: Vec<u8>, code: i64, message: &str) {
        let msg = self.reply_message(
            to,
            tid,
            Body::Error(KrpcError {
                code,
                message: message.to_string(),
            }),
        );
        self.send_message(to, msg);
    }

    pub(crate) fn reply_message(&self, to: SocketAddr, tid: Vec<u8>, body: Body) -> Message {
        Message {
            tid,
            version: Some(self.config.version.clone()),
            ip: Some(to),
            read_only: false,
            body,
        }
    }

    // ----- receiving --------------------------------------------------------

    /// Handles one datagram received from `from` at `now`. Bad input is counted
    /// and dropped (or answered with error 203), never a panic.
    pub fn handle_datagram(&mut self, from: SocketAddr, bytes: &[u8], now: Instant) {
        self.on_datagram(from, bytes, now);
        self.prune_timers();
    }

    fn on_datagram(&mut self, from: SocketAddr, bytes: &[u8], now: Instant) {
        self.stats.bytes_received += bytes.len() as u64;
        let msg = match Message::decode(bytes) {
            Ok(m) => m,
            Err(_) => {
                self.stats.dropped_malformed += 1;
                if let Some((tid, true)) = Message::decode_tid(bytes)
                    && !self.config.read_only
                    && self.allow_query(from.ip(), now)
                {
                    self.respond_error(from, tid, crate::krpc::code::PROTOCOL, "Protocol Error");
                }
                return;
            }
        };
        match msg.body {
            Body::Query { id, query } => {
                self.stats.queries_received += 1;
                self.handle_query(from, msg.tid, id, msg.read_only, query, now);
            }
            Body::Response(r) => {
                self.stats.responses_received += 1;
                if let Some(ip) = msg.ip {
                    self.vote_ip(ip);
                }
                self.handle_reply(from, &msg.tid, Ok(r), now);
            }
            Body::Error(e) => {
                self.stats.errors_received += 1;
                self.handle_reply(from, &msg.tid, Err(e), now);
            }
        }
    }

    fn vote_ip(&mut self, ip: SocketAddr) {
        if self.ip_votes.len() >= 16 && !self.ip_votes.contains_key(&ip) {
            self.ip_votes.clear();
        }
        let n = self.ip_votes.entry(ip).or_insert(0);
        *n += 1;
        if *n >= 3 && self.external != Some(ip) {
            self.external = Some(ip);
            self.events.push_back(Event::ExternalAddress(ip));
        }
    }

    /// Per-IP query budget: whether to serve one more query from `ip`.
    pub(crate) fn allow_query(&mut self, ip: IpAddr, now: Instant) -> bool {
        let limit = self.config.per_ip_queries_per_sec;
        if limit == 0 {
            return true;
        }
        if self.rate.len() >= 4096 && !self.rate.contains_key(&ip) {
            self.rate
                .retain(|_, (t, _)| now.saturating_duration_since(*t) < Duration::from_secs(1));
            if self.rate.len() >= 4096 {
                self.stats.rate_limited += 1;
                return false;
            }
        }
        let e = self.rate.entry(ip).or_insert((now, 0));
        if now.saturating_duration_since(e.0) >= Duration::from_secs(1) {
            *e = (now, 0);
        }
        e.1 += 1;
        if e.1 > limit {
            self.stats.rate_limited += 1;
            false
        } else {
            true
        }
    }

    pub(crate) fn insert_contact(&mut self, node: NodeInfo, now: Instant) {
        if node.id == self.id {
            return;
        }
        if self.config.enforce_bep42 && !crate::bep42::is_valid(&node.id, node.addr.ip()) {
            return;
        }
        if let Insert::PingOldest(oldest) = self.table.insert(node, now) {
            self.send_query(
                oldest.addr,
                Some(oldest.id),
                Query::Ping,
                Purpose::EvictionPing,
                now,
            );
        }
    }

    fn handle_reply(
        &mut self,
        from: SocketAddr,
        tid: &[u8],
        reply: Result<Response, KrpcError>,
        now: Instant,
    ) {
        let Ok(tid) = <[u8; 4]>::try_from(tid) else {
            self.stats.dropped_unexpected += 1;
            return;
        };
        let tid = u32::from_be_bytes(tid);
        match self.pending.get(&tid) {
            Some(p) if p.dst == from => {}
            _ => {
                self.stats.dropped_unexpected += 1;
                return;
            }
        }
        let Some(p) = self.pending.remove(&tid) else {
            return;
        };
        // The node is alive (even an error answer proves that).
        let responder = match &reply {
            Ok(r) => Some(NodeInfo {
                id: r.id,
                addr: from,
            }),
            Err(_) => p.expect.map(|id| NodeInfo { id, addr: from }),
        };
        if let Some(n) = responder
            && (p.expect.is_none() || p.expect == Some(n.id))
        {
            self.insert_contact(n, now);
        }
        // Another id answered at the contact's address: the contact is not there
        // (a node restarted with a new id, or an id that was never real: the
        // `mainline` crate pings with a random id). Replace or drop it, or it
        // would stay in the table forever, counted as alive.
        if let (Some(expected), Some(n)) = (p.expect, responder)
            && n.id != expected
            && !self.table.on_failure(&expected, now)
        {
            self.table.remove(&expected);
        }
        match p.purpose {
            Purpose::EvictionPing => {}
            Purpose::Ping(q) => {
                let id = reply.ok().map(|r| r.id);
                self.events.push_back(Event::QueryDone {
                    id: q,
                    outcome: Outcome::Pong(id),
                    stats: QueryStats {
                        hops: 1,
                        rpcs: 1,
                        elapsed: Duration::ZERO,
                    },
                });
            }
            Purpose::Direct(q) => {
                self.events.push_back(Event::QueryDone {
                    id: q,
                    outcome: Outcome::Reply(Some(reply)),
                    stats: QueryStats {
                        hops: 1,
                        rpcs: 1,
                        elapsed: Duration::ZERO,
                    },
                });
            }
            Purpose::BootstrapSeed(q) => {
                let Some(run) = self.queries.get_mut(&q) else {
                    return;
                };
                run.seeds_out = run.seeds_out.saturating_sub(1);
                if let Ok(r) = reply {
                    let mut closer = r.nodes;
                    closer.extend(r.nodes6);
                    closer.retain(|n| n.id != self.id);
                    run.lookup.add_succeeded(
                        NodeInfo {
                            id: r.id,
                            addr: from,
                        },
                        &closer,
                        None,
                    );
                }
                self.drive(q, now);
            }
            Purpose::Lookup(q) => {
                let Some(expect) = p.expect else {
                    return;
                };
                self.on_lookup_reply(q, expect, reply, now);
                self.drive(q, now);
            }
            Purpose::Store(q) => {
                if let Some(run) = self.queries.get_mut(&q)
                    && let Some((out, ok, errs)) = run.storing.as_mut()
                {
                    *out = out.saturating_sub(1);
                    match reply {
                        Ok(_) => *ok += 1,
                        Err(e) => {
                            if errs.len() < 32 {
                                errs.push(e);
                            }
                        }
                    }
                }
                self.drive(q, now);
            }
        }
    }

    fn on_lookup_reply(
        &mut self,
        q: QueryId,
        expect: NodeId,
        reply: Result<Response, KrpcError>,
        now: Instant,
    ) {
        let own = self.id;
        let Some(run) = self.queries.get_mut(&q) else {
            return;
        };
        let mut r = match reply {
            Ok(r) if r.id == expect => r,
            _ => {
                run.lookup.on_failure(&expect);
                return;
            }
        };
        let target = run.lookup.target();
        let hop = run.lookup.hop_of(&expect).unwrap_or(1);
        match &run.kind {
            Kind::GetPeers | Kind::Announce { .. } => {
                for v in &r.values {
                    if run.peers.len() < MAX_PEERS_COLLECTED && !run.peers.contains(v) {
                        run.peers.push(*v);
                    }
                }
            }
            Kind::GetImmutable => {
                if let Some(v) = &r.v
                    && bep44::immutable_target(v) == target
                    && run.immutable.is_none()
                {
                    run.immutable = Some(v.clone());
                    run.hops = hop;
                    run.lookup.finish();
                }
            }
            Kind::GetMutable { salt, min_seq } => {
                if let (Some(v), Some(k), Some(sig), Some(seq)) = (&r.v, r.k, r.sig, r.seq) {
                    let item = MutableItem {
                        key: k,
                        salt: salt.clone(),
                        seq,
                        value: v.clone(),
                        sig,
                    };
                    let newer = run.mutable.as_ref().is_none_or(|m| seq > m.seq);
                    let wanted = min_seq.is_none_or(|m| seq > m);
                    if newer && wanted && item.target() == target && item.verify().is_ok() {
                        run.mutable = Some(item);
                        run.hops = hop;
                    }
                }
            }
            // One entry per node (a candidate answers once), bounded by the
            // lookup's candidates; only the closest are handed out.
            Kind::FindAnnotated { .. } if !r.other.is_empty() => {
                self.events.push_back(Event::Annotation {
                    id: q,
                    node: expect,
                    fields: r.other.clone(),
                });
                run.annotations.push((expect, std::mem::take(&mut r.other)));
            }
            _ => {}
        }
        let mut closer = r.nodes;
        closer.extend(r.nodes6);
        closer.retain(|n| n.id != own);
        run.lookup.on_success(&expect, &closer, r.token);
        if let Kind::FindAnnotated {
            quorum: Some(field),
        } = &run.kind
            && quorum_reached(&run.lookup, &run.annotations, field)
        {
            run.lookup.finish();
        }
        let _ = now;
    }

    /// Advances query `q`: sends what its lookup wants, and finishes it when done.
    fn drive(&mut self, q: QueryId, now: Instant) {
        loop {
            let Some(run) = self.queries.get_mut(&q) else {
                return;
            };
            if run.storing.is_some() {
                if matches!(run.storing, Some((0, _, _))) {
                    self.finish(q, now);
                }
                return;
            }
            if run.seeds_out > 0 && run.lookup.candidates().next().is_none() {
                // Bootstrap: wait for a seed to answer.
                return;
            }
            match run.lookup.next(now) {
                Next::Query(node) => {
                    run.rpcs += 1;
                    let query = run.lookup_query();
                    self.send_query(node.addr, Some(node.id), query, Purpose::Lookup(q), now);
                }
                Next::Wait => return,
                Next::Done => {
                    if run.seeds_out > 0 {
                        return;
                    }
                    self.lookup_done(q, now);
                    return;
                }
            }
        }
    }

    fn lookup_done(&mut self, q: QueryId, now: Instant) {
        let Some(run) = self.queries.get_mut(&q) else {
            return;
        };
        if run.hops == 0 {
            run.hops = run
                .lookup
                .closest_succeeded()
                .first()
                .map(|c| c.hop())
                .unwrap_or(0);
        }
        let target = run.lookup.target();
        let stores: Vec<(NodeInfo, Vec<u8>)> = run
            .lookup
            .closest_succeeded()
            .into_iter()
            .filter_map(|c| {
                run.lookup
                    .token_of(&c.node.id)
                    .map(|t| (c.node, t.to_vec()))
            })
            .collect();
        let query = match &run.kind {
            Kind::Announce { port } => Some(|token: Vec<u8>| Query::AnnouncePeer {
                info_hash: target,
                port: port.unwrap_or(0),
                implied_port: port.is_none(),
                token,
            })
            .map(|f| {
                stores
                    .iter()
                    .map(|(n, t)| (*n, f(t.clone())))
                    .collect::<Vec<_>>()
            }),
            Kind::PutImmutable { value } => Some(
                stores
                    .iter()
                    .map(|(n, t)| {
                        (
                            *n,
                            Query::Put(PutArgs {
                                token: t.clone(),
                                v: value.clone(),
                                k: None,
                                sig: None,
                                seq: None,
                                salt: None,
                                cas: None,
                            }),
                        )
                    })
                    .collect(),
            ),
            Kind::PutMutable { item, cas } => Some(
                stores
                    .iter()
                    .map(|(n, t)| {
                        (
                            *n,
                            Query::Put(PutArgs {
                                token: t.clone(),
                                v: item.value.clone(),
                                k: Some(item.key),
                                sig: Some(item.sig),
                                seq: Some(item.seq),
                                salt: (!item.salt.is_empty()).then(|| item.salt.clone()),
                                cas: *cas,
                            }),
                        )
                    })
                    .collect(),
            ),
            _ => None,
        };
        match query {
            Some(sends) => {
                run.storing = Some((sends.len(), 0, Vec::new()));
                run.rpcs += sends.len() as u32;
                for (n, query) in sends {
                    self.send_query(n.addr, Some(n.id), query, Purpose::Store(q), now);
                }
                self.drive(q, now);
            }
            None => self.finish(q, now),
        }
    }

    fn finish(&mut self, q: QueryId, now: Instant) {
        let Some(run) = self.queries.remove(&q) else {
            return;
        };
        let run = *run;
        let target = run.lookup.target();
        let stats = QueryStats {
            hops: run.hops,
            rpcs: run.rpcs,
            elapsed: now.saturating_duration_since(run.started),
        };
        let outcome = match run.kind {
            Kind::Bootstrap | Kind::FindNode | Kind::Refresh => Outcome::Nodes(
                run.lookup
                    .closest_succeeded()
                    .iter()
                    .map(|c| c.node)
                    .collect(),
            ),
            Kind::FindAnnotated { .. } => {
                let mut annotations = run.annotations;
                Outcome::Annotated(
                    run.lookup
                        .closest_succeeded()
                        .iter()
                        .map(|c| {
                            let fields = annotations
                                .iter_mut()
                                .find(|(id, _)| *id == c.node.id)
                                .map(|(_, f)| std::mem::take(f))
                                .unwrap_or_default();
                            (c.node, fields)
                        })
                        .collect(),
                )
            }
            Kind::GetPeers => Outcome::Peers(run.peers),
            Kind::GetImmutable => Outcome::Immutable(run.immutable),
            Kind::GetMutable { .. } => Outcome::Mutable(run.mutable),
            Kind::Announce { .. } | Kind::PutImmutable { .. } | Kind::PutMutable { .. } => {
                let (_, stored, errors) = run.storing.unwrap_or((0, 0, Vec::new()));
                Outcome::Stored {
                    target,
                    stored,
                    errors,
                }
            }
        };
        if self.bootstrap_query == Some(q) {
            self.bootstrap_query = None;
            self.maintenance_soon(now);
            self.events.push_back(Event::Bootstrapped {
                contacts: self.table.len(),
            });
            if self.table.is_empty() {
                self.bootstrap_failures = self.bootstrap_failures.saturating_add(1);
                let backoff = Duration::from_secs(1u64 << self.bootstrap_failures.min(4))
                    .min(REBOOTSTRAP_MAX);
                let jitter = Duration::from_millis(self.rng.random_range(0..500));
                self.next_bootstrap = Some(now + backoff + jitter);
            } else {
                self.bootstrap_failures = 0;
                self.next_bootstrap = None;
                // Joining ends with a refresh of every bucket farther than our
                // closest neighbour (Kademlia's join): young tables would
                // otherwise send puts and gets to different "closest" nodes.
                // One lookup at a time, each starting when the last ends, so a
                // crowd joining together does not burst.
                self.joining = true;
                self.refresh_next(now);
            }
        }
        if self.refresh_queries.remove(&q) {
            if self.joining && self.refresh_queries.is_empty() {
                self.refresh_next(now);
            }
            self.maintenance_soon(now);
            return;
        }
        self.events.push_back(Event::QueryDone {
            id: q,
            outcome,
            stats,
        });
    }

    // ----- timers -----------------------------------------------------------

    /// Handles every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(Reverse((t, timer))) = self.timers.peek().copied() {
            if t > now {
                break;
            }
            self.timers.pop();
            match timer {
                Timer::Stall(tid, q) => {
                    if let Some(p) = self.pending.get_mut(&tid) {
                        let q = QueryId(q);
                        if !p.resent {
                            p.resent = true;
                            let dst = p.dst;
                            let lookup = matches!(p.purpose, Purpose::Lookup(_));
                            // Rebuilt rather than kept: requests in flight stay small.
                            let query = match p.purpose {
                                Purpose::EvictionPing => Some(Query::Ping),
                                _ => self.queries.get(&q).map(|r| r.lookup_query()),
                            };
                            if let Some(query) = query {
                                self.stats.retransmits += 1;
                                self.transmit_query(dst, tid, query);
                            }
                            // Wake the lookup again when it stops waiting for
                            // the resent answer (see `PeerState::Stalled`).
                            if lookup {
                                self.timers.push(Reverse((
                                    now + self.config.request_timeout,
                                    Timer::Stall(tid, q.0),
                                )));
                            }
                        }
                        if let Some(run) = self.queries.get_mut(&q) {
                            run.lookup.on_timeout(now);
                        }
                        self.drive(q, now);
                    }
                }
                Timer::Expire(tid) => {
                    if let Some(p) = self.pending.remove(&tid) {
                        self.stats.timeouts += 1;
                        self.on_expired(p, now);
                    }
                }
            }
        }
        if now >= self.next_maintenance {
            self.maintenance(now);
            self.next_maintenance = self.next_maintenance_after(now);
        }
        if self.table.is_empty() {
            // Failures may have emptied the table: its bootstrap retry is due soon.
            self.maintenance_soon(now);
        }
        self.prune_timers();
    }

    /// Runs the periodic work again at most [`MAINTENANCE_EVERY`] from now (a
    /// refresh or a bootstrap ended: the next one may be due).
    fn maintenance_soon(&mut self, now: Instant) {
        self.next_maintenance = self.next_maintenance.min(now + MAINTENANCE_EVERY);
    }

    /// When the periodic work is next due, as it stands after running at `now`:
    /// the first of the token rotation, the record expiry, a republish and the
    /// moment a bucket goes stale (BEP 5: untouched for `refresh_interval`),
    /// but not sooner than [`MAINTENANCE_EVERY`]. An idle node is thus woken
    /// about once a minute rather than every second.
    fn next_maintenance_after(&self, now: Instant) -> Instant {
        let soon = now + MAINTENANCE_EVERY;
        let after = |t: Instant, d: Duration| t.checked_add(d).unwrap_or(t);
        let mut next = after(self.last_rotation, self.config.token_rotation)
            .min(after(self.last_expiry, EXPIRY_EVERY));
        for (_, t) in self.originated.values() {
            next = next.min(after(*t, self.config.republish_interval));
        }
        if self.bootstrap_query.is_some() {
            // Its end calls `maintenance_soon`.
        } else if self.table.is_empty() {
            if !self.bootstrap_addrs.is_empty() {
                return soon;
            }
        } else if self.refresh_queries.is_empty() {
            // The buckets `RoutingTable::stale_buckets` considers: farthest
            // first, down to the deepest one that has a contact.
            let (mut upto, mut stale) = (None, None::<Instant>);
            for (_, b) in self.table.buckets() {
                let at = b
                    .last_changed
                    .map_or(now, |t| after(t, self.config.refresh_interval));
                stale = Some(stale.map_or(at, |s| s.min(at)));
                if !b.entries.is_empty() {
                    upto = stale;
                }
            }
            if let Some(t) = upto {
                next = next.min(t);
            }
        }
        next.max(soon)
    }

    fn on_expired(&mut self, p: Pending, now: Instant) {
        if let Some(id) = p.expect {
            self.table.on_failure(&id, now);
        }
        match p.purpose {
            Purpose::EvictionPing => {}
            Purpose::Ping(q) => self.events.push_back(Event::QueryDone {
                id: q,
                outcome: Outcome::Pong(None),
                stats: QueryStats {
                    hops: 0,
                    rpcs: 1,
                    elapsed: self.config.request_expiry,
                },
            }),
            Purpose::Direct(q) => self.events.push_back(Event::QueryDone {
                id: q,
                outcome: Outcome::Reply(None),
                stats: QueryStats {
                    hops: 0,
                    rpcs: 1,
                    elapsed: self.config.request_expiry,
                },
            }),
            Purpose::BootstrapSeed(q) => {
                if let Some(run) = self.queries.get_mut(&q) {
                    run.seeds_out = run.seeds_out.saturating_sub(1);
                }
                self.drive(q, now);
            }
            Purpose::Lookup(q) => {
                if let (Some(run), Some(id)) = (self.queries.get_mut(&q), p.expect) {
                    run.lookup.on_failure(&id);
                }
                self.drive(q, now);
            }
            Purpose::Store(q) => {
                if let Some(run) = self.queries.get_mut(&q)
                    && let Some((out, _, _)) = run.storing.as_mut()
                {
                    *out = out.saturating_sub(1);
                }
                self.drive(q, now);
            }
        }
    }

    fn maintenance(&mut self, now: Instant) {
        // Give back what a burst (joining, a storm of lookups) made the request
        // tables grow to: a node spends most of its life idle.
        if self.pending.capacity() > 32 && self.pending.len() * 4 < self.pending.capacity() {
            self.pending.shrink_to(self.pending.len() * 2);
        }
        if self.timers.capacity() > 32 && self.timers.len() * 4 < self.timers.capacity() {
            self.timers.shrink_to(self.timers.len() * 2);
        }
        // The caller drains these after every input, so between ticks they are
        // empty: hold no memory for them while idle.
        if self.transmits.is_empty() {
            self.transmits.shrink_to(0);
        }
        if self.events.is_empty() {
            self.events.shrink_to(0);
        }
        if now.saturating_duration_since(self.last_rotation) >= self.config.token_rotation {
            self.last_rotation = now;
            let mut secret = [0u8; 16];
            self.rng.fill_bytes(&mut secret);
            self.tokens.rotate(secret);
        }
        if now.saturating_duration_since(self.last_expiry) >= EXPIRY_EVERY {
            self.last_expiry = now;
            if self.store.expire(now, self.config.record_ttl).is_err() {
                self.stats.store_errors += 1;
            }
            self.rate.clear();
        }
        // Republish what we put.
        let due: Vec<NodeId> = self
            .originated
            .iter()
            .filter(|(_, (_, t))| {
                now.saturating_duration_since(*t) >= self.config.republish_interval
            })
            .map(|(k, _)| *k)
            .collect();
        for target in due {
            if let Some((item, t)) = self.originated.get_mut(&target) {
                *t = now;
                let kind = match item.clone() {
                    Item::Immutable(value) => Kind::PutImmutable { value },
                    Item::Mutable(item) => Kind::PutMutable { item, cas: None },
                };
                // Background work: its QueryDone event is for no caller.
                self.new_query(kind, target, now);
            }
        }
        if self.bootstrap_query.is_some() {
            return;
        }
        // An empty table retries its bootstrap nodes.
        if self.table.is_empty() && !self.bootstrap_addrs.is_empty() {
            let due = match self.next_bootstrap {
                Some(t) => now >= t,
                None => self
                    .last_bootstrap
                    .is_none_or(|t| now.saturating_duration_since(t) >= REBOOTSTRAP_MAX),
            };
            if due {
                self.bootstrap(&[], now);
            }
            return;
        }
        // Refresh one stale bucket at a time.
        if self.refresh_queries.is_empty() {
            self.refresh_next(now);
        }
    }

    /// Starts a refresh of the next stale bucket; returns whether there was one.
    /// Ends the join when none is left.
    fn refresh_next(&mut self, now: Instant) -> bool {
        let Some(&b) = self
            .table
            .stale_buckets(now, self.config.refresh_interval)
            .first()
        else {
            self.joining = false;
            return false;
        };
        self.table.touch_bucket(b, now);
        let target = self.id.random_in_bucket(b, &mut self.rng);
        let q = self.insert_query(Kind::Refresh, target, now);
        self.refresh_queries.insert(q);
        self.drive(q, now);
        true
    }

    /// A random 32-bit number from the node's RNG (for callers that need one).
    pub fn random_u64(&mut self) -> u64 {
        self.rng.random()
    }
}
