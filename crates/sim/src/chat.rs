//! The chat layer of a simulation: Peerchat users on top of the DHT cores.
//!
//! It does what a Peerchat node does with the DHT (`crates/node/src/chat`), with
//! the real sans-IO code of `peerchat-chat` and the kad core's own requests:
//!
//! - **presence**: at login and every `presence_every`, a user puts its
//!   [`Presence`] as a BEP 44 mutable item signed by its key, with a growing
//!   `seq` (the core also republishes it hourly); others resolve it with a
//!   BEP 44 mutable `get` (see [`crate::SimReport::resolves`]);
//! - **offline messages**: a sender seals a real [`Envelope`], looks up the
//!   recipient's mailbox key ([`mailbox_target`]) and stores the envelope with
//!   `pc_store` at the `k` closest nodes; each relay keeps it in a real
//!   [`RelayQueue`] (quotas, TTL of 14 days), and every `handover_every` looks the
//!   mailbox up again and stores its copies at closer nodes that have not had
//!   them (nodes that came back or joined); a sender offline before any relay
//!   took its message keeps it in its outbox and tries again at its next login;
//! - **mailbox fetch**: at login and every `fetch_every`, a user looks its
//!   mailbox up, fetches it from each of the closest nodes with a signed
//!   [`FetchAuth`] (`pc_fetch`, as many envelopes as fit a datagram, again while
//!   the relay says more wait), opens each envelope, and acks what it got with a
//!   signed [`DeliveryAck`] (`pc_ack`) to every node of the lookup, which clears
//!   their copies.
//!
//! What is not modelled: direct delivery (a session between two online users),
//! names, and the relays' push to a recipient they see online (the recipient's
//! periodic fetch stands for it).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use peerchat_chat::{
    Content, DeliveryAck, Envelope, FetchAuth, Identity, MAX_ACK_IDS, MessageId, PRESENCE_SALT,
    Presence, RelayConfig, RelayQueue, Stored, UserKey, mailbox_target,
};
use peerchat_kad::bep44::MutableItem;
use peerchat_kad::krpc::code;
use peerchat_kad::{NodeId, NodeInfo, Outcome, QueryId, Value};
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::config::ChatConfig;
use crate::engine::{Sim, Status};
use crate::report::percentile;
use crate::scenario::Action;

/// Store an envelope at a relay.
const STORE: &[u8] = b"pc_store";
/// Fetch a mailbox.
const FETCH: &[u8] = b"pc_fetch";
/// Acknowledge delivery.
const ACK: &[u8] = b"pc_ack";
/// The relay methods, handed to the simulator by every node's core.
pub(crate) const METHODS: [&[u8]; 3] = [STORE, FETCH, ACK];
/// Bytes of envelopes in one `pc_fetch` answer, as a Peerchat node sends.
const FETCH_BUDGET: usize = 1250;
/// Most `pc_fetch` rounds from one relay in one fetch.
const MAX_FETCH_ROUNDS: u32 = 64;
/// Unix time (ms) of virtual time zero: 2026-01-01T00:00:00Z.
const EPOCH_MS: u64 = 1_767_225_600_000;
/// A sender whose message no relay took tries again after this.
const SEND_RETRY: Duration = Duration::from_secs(60);

/// A timer of the chat layer.
#[derive(Debug)]
pub(crate) enum Timer {
    /// A message of the workload is written.
    Send,
    /// Message `m` is tried again.
    Retry(usize),
    /// A user's periodic work (mailbox fetch, presence); stale unless the generation matches.
    User(usize, u32),
    /// A relay's periodic work (expiry, handover); stale unless the generation matches.
    Relay(usize, u32),
}

#[derive(Debug)]
struct User {
    node: usize,
    identity: Identity,
    key: UserKey,
    /// Last `seq` used for the presence.
    seq: i64,
    /// The `seq` of this session's login publish (0: none yet).
    session_seq: i64,
    /// Highest `seq` a put was confirmed for.
    published_seq: i64,
    last_publish: Duration,
    generation: u32,
    /// Online periods since the workload started: (login, logout).
    sessions: Vec<(Duration, Option<Duration>)>,
    seen: BTreeSet<MessageId>,
    /// Messages waiting for the sender to be online again.
    outbox: BTreeSet<usize>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MsgState {
    /// Its lookup or stores are in flight.
    Sending,
    /// At least one relay took it.
    Stored,
    /// No relay took it yet: the sender tries again later.
    Waiting,
}

#[derive(Debug)]
struct Msg {
    from: usize,
    to: usize,
    env: Envelope,
    state: MsgState,
    /// When the first relay took it.
    stored_at: Option<Duration>,
    copies: usize,
    outstanding: usize,
    attempts: u32,
    delivered_at: Option<Duration>,
}

#[derive(Debug, Default)]
struct Relay {
    queue: RelayQueue,
    generation: u32,
    armed: bool,
    /// Nodes each mailbox's copies were handed to.
    handed: BTreeMap<UserKey, BTreeSet<NodeId>>,
}

/// What a chat query in flight is for.
#[derive(Debug)]
enum Pending {
    Publish {
        user: usize,
        seq: i64,
    },
    SendLookup {
        msg: usize,
    },
    Store {
        msg: usize,
    },
    FetchLookup {
        user: usize,
    },
    Fetch {
        user: usize,
        relay: NodeInfo,
        nodes: Rc<Vec<NodeInfo>>,
        round: u32,
    },
    Ack {
        /// Fetch again from this relay once it took the ack.
        refetch: Option<(usize, NodeInfo, Rc<Vec<NodeInfo>>, u32)>,
    },
    HandoverLookup {
        recipient: UserKey,
    },
    HandoverStore {
        recipient: UserKey,
        to: NodeId,
    },
}

/// Figures of the chat layer.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ChatReport {
    /// Users simulated.
    pub users: usize,
    /// Messages written (each to a user offline at the time).
    pub messages: usize,
    /// Messages planned but not written: no user was online, or none offline.
    pub messages_skipped: usize,
    /// Messages at least one relay took.
    pub stored: usize,
    /// Messages no relay had taken by the end (still in their sender's outbox).
    pub never_stored: usize,
    /// Mean relays that took a message on its first successful attempt.
    pub copies_mean: f64,
    /// Messages whose recipient, after the message was stored, was online for
    /// at least `grace` in a row before the TTL and the run ended.
    pub eligible: usize,
    /// Of those, delivered.
    pub eligible_delivered: usize,
    /// `eligible_delivered / eligible` (1.0 when none is eligible).
    pub offline_delivery_rate: f64,
    /// Messages delivered in all (some to recipients back for less than `grace`).
    pub delivered: usize,
    /// Stored messages whose recipient did not come back long enough.
    pub recipient_not_back: usize,
    /// Copies of an already received message fetched again (dropped by the
    /// recipient's seen ids).
    pub duplicate_copies: u64,
    /// Median time from the recipient's login to delivery, in seconds.
    pub delivery_after_login_s_p50: f64,
    /// 99th percentile of the same, in seconds.
    pub delivery_after_login_s_p99: f64,
    /// Relay copies made by senders (`pc_store` accepted).
    pub copies_stored: u64,
    /// Copies handed over by relays to closer nodes.
    pub copies_handed_over: u64,
    /// Copies cleared by acks.
    pub copies_acked: u64,
    /// Copies dropped at the TTL.
    pub copies_expired: u64,
    /// Copies of delivered messages still held at the end (their relays were
    /// offline when the acks went out).
    pub copies_left_delivered: usize,
    /// Copies of undelivered messages held at the end.
    pub copies_left_undelivered: usize,
    /// Presence puts started.
    pub presence_puts: u64,
    /// Presence puts at least one node accepted.
    pub presence_puts_ok: u64,
    /// Relay requests refused (quota, signature, ...).
    pub relay_refusals: u64,
}

/// The chat layer's state.
#[derive(Debug)]
pub(crate) struct ChatLayer {
    cfg: ChatConfig,
    k: usize,
    rng: ChaCha8Rng,
    users: Vec<User>,
    /// User on each node (by node index, `None` past the end).
    user_of: BTreeMap<usize, usize>,
    relays: BTreeMap<usize, Relay>,
    msgs: Vec<Msg>,
    by_id: BTreeMap<MessageId, usize>,
    pending: BTreeMap<(usize, u64), Pending>,
    report: ChatReport,
    /// Login-to-delivery delays, in seconds.
    delays: Vec<f64>,
}

fn now_ms(sim: &Sim<Action>) -> u64 {
    EPOCH_MS + u64::try_from(sim.now().as_millis()).unwrap_or(u64::MAX - EPOCH_MS)
}

fn args(key: &str, value: Value) -> BTreeMap<Vec<u8>, Value> {
    let mut m = BTreeMap::new();
    m.insert(key.as_bytes().to_vec(), value);
    m
}

fn relay_with(ttl_ms: u64) -> Relay {
    Relay {
        queue: RelayQueue::new(RelayConfig {
            ttl_ms,
            ..RelayConfig::default()
        }),
        ..Relay::default()
    }
}

fn online(sim: &Sim<Action>, node: usize) -> bool {
    sim.node(node).status == Status::Online
}

impl ChatLayer {
    /// `cfg.users` users on nodes `0..cfg.users` (fewer if there are fewer nodes).
    pub(crate) fn new(cfg: &ChatConfig, nodes: usize, k: usize, seed: u64) -> ChatLayer {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let count = cfg.users.min(nodes);
        let users: Vec<User> = (0..count)
            .map(|node| {
                let identity = Identity::generate(&mut rng);
                User {
                    node,
                    key: identity.public(),
                    identity,
                    seq: 0,
                    session_seq: 0,
                    published_seq: 0,
                    last_publish: Duration::ZERO,
                    generation: 0,
                    sessions: Vec::new(),
                    seen: BTreeSet::new(),
                    outbox: BTreeSet::new(),
                }
            })
            .collect();
        ChatLayer {
            cfg: cfg.clone(),
            k: k.max(1),
            rng,
            user_of: (0..count).map(|n| (n, n)).collect(),
            users,
            relays: BTreeMap::new(),
            msgs: Vec::new(),
            by_id: BTreeMap::new(),
            pending: BTreeMap::new(),
            report: ChatReport::default(),
            delays: Vec::new(),
        }
    }

    /// Starts the workload over `start..end`: online users log in, and the
    /// messages are written evenly over the first three quarters (so that
    /// recipients have time to come back).
    pub(crate) fn start(&mut self, sim: &mut Sim<Action>, end: Duration) {
        let start = sim.now();
        for u in 0..self.users.len() {
            let node = self.users[u].node;
            if online(sim, node) {
                self.login(sim, node);
            }
        }
        let n = self.cfg.messages;
        let span = end.saturating_sub(start).mul_f64(0.75);
        for m in 0..n {
            let at = start + span.mul_f64((m as f64 + 0.5) / n as f64);
            sim.schedule(at, Action::Chat(Timer::Send));
        }
    }

    fn ttl_ms(&self) -> u64 {
        u64::try_from(self.cfg.ttl.as_millis()).unwrap_or(u64::MAX)
    }

    // ----- users ------------------------------------------------------------

    /// Node `node` came online (at the start, or back from an offline period).
    pub(crate) fn login(&mut self, sim: &mut Sim<Action>, node: usize) {
        let now = sim.now();
        if let Some(r) = self.relays.get_mut(&node) {
            r.generation += 1;
            r.armed = false;
            if !r.queue.is_empty() {
                self.arm_relay(sim, node, true);
            }
        }
        let Some(&u) = self.user_of.get(&node) else {
            return;
        };
        let user = &mut self.users[u];
        user.sessions.push((now, None));
        user.generation += 1;
        user.session_seq = 0;
        let generation = user.generation;
        self.publish(sim, u, true);
        self.fetch(sim, u);
        let outbox: Vec<usize> = std::mem::take(&mut self.users[u].outbox)
            .into_iter()
            .collect();
        for m in outbox {
            self.attempt_send(sim, m);
        }
        sim.schedule(
            now + self.cfg.fetch_every,
            Action::Chat(Timer::User(u, generation)),
        );
    }

    /// Node `node` is going offline: its chat queries in flight are dropped.
    pub(crate) fn on_leave(&mut self, sim: &mut Sim<Action>, node: usize) {
        let now = sim.now();
        let mine: Vec<(usize, u64)> = self
            .pending
            .range((node, 0)..=(node, u64::MAX))
            .map(|(k, _)| *k)
            .collect();
        for key in mine {
            if let Some(Pending::SendLookup { msg } | Pending::Store { msg }) =
                self.pending.remove(&key)
            {
                let m = &mut self.msgs[msg];
                m.outstanding = m.outstanding.saturating_sub(1);
                if m.state == MsgState::Sending {
                    m.state = MsgState::Waiting;
                    self.users[m.from].outbox.insert(msg);
                }
            }
        }
        if let Some(r) = self.relays.get_mut(&node) {
            r.generation += 1;
            r.armed = false;
        }
        if let Some(&u) = self.user_of.get(&node) {
            let user = &mut self.users[u];
            user.generation += 1;
            if let Some(last) = user.sessions.last_mut()
                && last.1.is_none()
            {
                last.1 = Some(now);
            }
        }
    }

    fn publish(&mut self, sim: &mut Sim<Action>, u: usize, login: bool) {
        let now = sim.now();
        let ms = now_ms(sim);
        let user = &mut self.users[u];
        let node = sim.node(user.node);
        let presence = Presence {
            dht: vec![node.addr],
            chat: vec![node.addr],
            node_id: node.id,
            timestamp_ms: ms,
        };
        user.seq += 1;
        let seq = user.seq;
        if login {
            user.session_seq = seq;
        }
        user.last_publish = now;
        let Ok(item) = presence.to_item(&user.identity, seq) else {
            return;
        };
        let node = user.node;
        self.report.presence_puts += 1;
        if let Some(Ok(q)) = sim.with_node(node, |d, now| d.put_mutable(item, None, now)) {
            self.pending
                .insert((node, q.0), Pending::Publish { user: u, seq });
        }
    }

    fn fetch(&mut self, sim: &mut Sim<Action>, u: usize) {
        let node = self.users[u].node;
        let target = mailbox_target(&self.users[u].key);
        if let Some(q) = sim.with_node(node, |d, now| d.find_node(target, now)) {
            self.pending
                .insert((node, q.0), Pending::FetchLookup { user: u });
        }
    }

    fn fetch_from(
        &mut self,
        sim: &mut Sim<Action>,
        u: usize,
        relay: NodeInfo,
        nodes: Rc<Vec<NodeInfo>>,
        round: u32,
    ) {
        let node = self.users[u].node;
        let auth = FetchAuth::new(&self.users[u].identity, relay.id, now_ms(sim));
        let a = args("auth", Value::Bytes(auth.to_bytes()));
        if let Some(q) = sim.with_node(node, |d, now| d.request(relay.addr, FETCH.to_vec(), a, now))
        {
            self.pending.insert(
                (node, q.0),
                Pending::Fetch {
                    user: u,
                    relay,
                    nodes,
                    round,
                },
            );
        }
    }

    /// A user got an envelope (from a relay, or stored at its own node).
    fn receive(&mut self, sim: &Sim<Action>, u: usize, env: Envelope) -> Option<MessageId> {
        let user = &mut self.users[u];
        if env.recipient != user.key {
            return None;
        }
        let id = env.id;
        if user.seen.contains(&id) {
            self.report.duplicate_copies += 1;
            return Some(id);
        }
        // Checked and opened as a Peerchat node does before showing it.
        if env.verify().is_err() || env.open(&user.identity).is_err() {
            return None;
        }
        user.seen.insert(id);
        let login = user.sessions.last().map(|s| s.0);
        if let Some(&m) = self.by_id.get(&id) {
            let msg = &mut self.msgs[m];
            if msg.delivered_at.is_none() {
                let now = sim.now();
                msg.delivered_at = Some(now);
                if let Some(login) = login {
                    self.delays.push(
                        now.saturating_sub(login.max(msg.stored_at.unwrap_or(login)))
                            .as_secs_f64(),
                    );
                }
            }
        }
        Some(id)
    }

    // ----- messages ---------------------------------------------------------

    fn write(&mut self, sim: &mut Sim<Action>) {
        let on: Vec<usize> = (0..self.users.len())
            .filter(|&u| online(sim, self.users[u].node))
            .collect();
        let off: Vec<usize> = (0..self.users.len())
            .filter(|&u| sim.node(self.users[u].node).status == Status::Offline)
            .collect();
        let (Some(&from), Some(&to)) = (on.choose(&mut self.rng), off.choose(&mut self.rng)) else {
            self.report.messages_skipped += 1;
            return;
        };
        let content = Content::text(format!("message {} from the simulator", self.msgs.len()));
        let recipient = self.users[to].key;
        let Ok(env) = Envelope::seal(
            &self.users[from].identity,
            &recipient,
            &content,
            now_ms(sim),
            &mut self.rng,
        ) else {
            self.report.messages_skipped += 1;
            return;
        };
        let m = self.msgs.len();
        self.by_id.insert(env.id, m);
        self.msgs.push(Msg {
            from,
            to,
            env,
            state: MsgState::Waiting,
            stored_at: None,
            copies: 0,
            outstanding: 0,
            attempts: 0,
            delivered_at: None,
        });
        self.attempt_send(sim, m);
    }

    fn attempt_send(&mut self, sim: &mut Sim<Action>, m: usize) {
        let msg = &mut self.msgs[m];
        if msg.state != MsgState::Waiting {
            return;
        }
        let node = self.users[msg.from].node;
        if !online(sim, node) {
            self.users[msg.from].outbox.insert(m);
            return;
        }
        msg.attempts += 1;
        msg.state = MsgState::Sending;
        let target = mailbox_target(&msg.env.recipient);
        if let Some(q) = sim.with_node(node, |d, now| d.find_node(target, now)) {
            msg.outstanding += 1;
            self.pending
                .insert((node, q.0), Pending::SendLookup { msg: m });
        }
    }

    fn send_done(&mut self, sim: &mut Sim<Action>, m: usize) {
        let msg = &mut self.msgs[m];
        if msg.outstanding > 0 || msg.state != MsgState::Sending {
            return;
        }
        if msg.copies > 0 {
            msg.state = MsgState::Stored;
        } else {
            msg.state = MsgState::Waiting;
            sim.schedule(sim.now() + SEND_RETRY, Action::Chat(Timer::Retry(m)));
        }
    }

    // ----- relays -----------------------------------------------------------

    fn arm_relay(&mut self, sim: &mut Sim<Action>, node: usize, jitter: bool) {
        let every = self.cfg.handover_every;
        let delay = if jitter {
            every.mul_f64(self.rng.random::<f64>())
        } else {
            every
        };
        let ttl_ms = self.ttl_ms();
        let r = self
            .relays
            .entry(node)
            .or_insert_with(|| relay_with(ttl_ms));
        if r.armed {
            return;
        }
        r.armed = true;
        sim.schedule(
            sim.now() + delay,
            Action::Chat(Timer::Relay(node, r.generation)),
        );
    }

    fn relay_tick(&mut self, sim: &mut Sim<Action>, node: usize) {
        let ms = now_ms(sim);
        let Some(r) = self.relays.get_mut(&node) else {
            return;
        };
        r.armed = false;
        self.report.copies_expired += r.queue.expire(ms) as u64;
        let recipients: Vec<UserKey> = r.queue.recipients().copied().collect();
        r.handed.retain(|k, _| recipients.contains(k));
        if recipients.is_empty() {
            return;
        }
        for recipient in recipients {
            let target = mailbox_target(&recipient);
            if let Some(q) = sim.with_node(node, |d, now| d.find_node(target, now)) {
                self.pending
                    .insert((node, q.0), Pending::HandoverLookup { recipient });
            }
        }
        self.arm_relay(sim, node, false);
    }

    fn handover(
        &mut self,
        sim: &mut Sim<Action>,
        node: usize,
        recipient: UserKey,
        nodes: &[NodeInfo],
    ) {
        let Some(r) = self.relays.get(&node) else {
            return;
        };
        let me = sim.node(node).id;
        let target = mailbox_target(&recipient);
        let mine = me.distance(&target);
        let envs: Vec<Vec<u8>> = r
            .queue
            .mailbox(&recipient)
            .map(|e| e.envelope.to_bytes())
            .collect();
        if envs.is_empty() {
            return;
        }
        let handed = r.handed.get(&recipient);
        let to: Vec<NodeInfo> = nodes
            .iter()
            .filter(|n| n.id != me && n.id.distance(&target) < mine)
            .filter(|n| handed.is_none_or(|h| !h.contains(&n.id)))
            .copied()
            .collect();
        for n in to {
            for env in &envs {
                let a = args("env", Value::Bytes(env.clone()));
                if let Some(q) =
                    sim.with_node(node, |d, now| d.request(n.addr, STORE.to_vec(), a, now))
                {
                    self.pending.insert(
                        (node, q.0),
                        Pending::HandoverStore {
                            recipient,
                            to: n.id,
                        },
                    );
                }
            }
        }
    }

    /// Answers a relay query at `node` (an extension method of its core).
    pub(crate) fn on_query(
        &mut self,
        sim: &mut Sim<Action>,
        node: usize,
        from: SocketAddr,
        tid: Vec<u8>,
        method: &[u8],
        a: &BTreeMap<Vec<u8>, Value>,
    ) {
        let ms = now_ms(sim);
        let ttl_ms = self.ttl_ms();
        let field = |k: &str| a.get(k.as_bytes()).and_then(Value::as_bytes);
        let answer: Result<BTreeMap<Vec<u8>, Value>, (i64, String)> = match method {
            STORE => match field("env").map(Envelope::from_bytes) {
                Some(Ok(env)) => {
                    if let Some(&u) = self.user_of.get(&node)
                        && env.recipient == self.users[u].key
                    {
                        // A message for the user on this node: delivered.
                        self.receive(sim, u, env);
                        Ok(BTreeMap::new())
                    } else {
                        let r = self
                            .relays
                            .entry(node)
                            .or_insert_with(|| relay_with(ttl_ms));
                        match r.queue.store(env, from.ip(), ms) {
                            Ok(s) => {
                                if s == Stored::New {
                                    self.report.copies_stored += 1;
                                    self.arm_relay(sim, node, true);
                                }
                                Ok(BTreeMap::new())
                            }
                            Err(e) => Err((code::GENERIC, e.to_string())),
                        }
                    }
                }
                Some(Err(e)) => Err((code::PROTOCOL, e.to_string())),
                None => Err((code::PROTOCOL, "env missing".into())),
            },
            FETCH => match field("auth").map(FetchAuth::from_bytes) {
                Some(Ok(auth)) => match auth.verify(&sim.node(node).id, ms) {
                    Ok(()) => {
                        let (envs, more) = match self.relays.get(&node) {
                            Some(r) => {
                                let envs = r.queue.fetch(&auth.recipient, FETCH_BUDGET);
                                let more =
                                    r.queue.count_for_recipient(&auth.recipient) > envs.len();
                                (envs, more)
                            }
                            None => (Vec::new(), false),
                        };
                        let mut m = args(
                            "envs",
                            Value::List(envs.iter().map(|e| Value::Bytes(e.to_bytes())).collect()),
                        );
                        m.insert(b"more".to_vec(), Value::Int(i64::from(more)));
                        Ok(m)
                    }
                    Err(e) => Err((code::INVALID_SIGNATURE, e.to_string())),
                },
                Some(Err(e)) => Err((code::PROTOCOL, e.to_string())),
                None => Err((code::PROTOCOL, "auth missing".into())),
            },
            ACK => match field("ack").map(DeliveryAck::from_bytes) {
                Some(Ok(ack)) => {
                    let r = self
                        .relays
                        .entry(node)
                        .or_insert_with(|| relay_with(ttl_ms));
                    match r.queue.ack(&ack, ms) {
                        Ok(removed) => {
                            self.report.copies_acked += removed as u64;
                            Ok(args("removed", Value::Int(removed as i64)))
                        }
                        Err(e) => Err((code::INVALID_SIGNATURE, e.to_string())),
                    }
                }
                Some(Err(e)) => Err((code::PROTOCOL, e.to_string())),
                None => Err((code::PROTOCOL, "ack missing".into())),
            },
            _ => Err((code::METHOD_UNKNOWN, "Method Unknown".into())),
        };
        match answer {
            Ok(fields) => {
                sim.with_node(node, |d, _| d.respond(from, tid, fields));
            }
            Err((c, msg)) => {
                self.report.relay_refusals += 1;
                sim.with_node(node, |d, _| d.respond_error(from, tid, c, &msg));
            }
        }
    }

    // ----- results ----------------------------------------------------------

    /// A query of `node` finished: handles it if it is one of the chat layer's.
    pub(crate) fn on_done(
        &mut self,
        sim: &mut Sim<Action>,
        node: usize,
        id: QueryId,
        outcome: Outcome,
    ) {
        let Some(p) = self.pending.remove(&(node, id.0)) else {
            return;
        };
        match p {
            Pending::Publish { user, seq } => {
                if let Outcome::Stored { stored, .. } = outcome
                    && stored > 0
                {
                    self.report.presence_puts_ok += 1;
                    let u = &mut self.users[user];
                    u.published_seq = u.published_seq.max(seq);
                }
            }
            Pending::SendLookup { msg } => {
                self.msgs[msg].outstanding -= 1;
                if let Outcome::Nodes(nodes) = outcome {
                    let bytes = self.msgs[msg].env.to_bytes();
                    for n in nodes.iter().take(self.k) {
                        let a = args("env", Value::Bytes(bytes.clone()));
                        if let Some(q) =
                            sim.with_node(node, |d, now| d.request(n.addr, STORE.to_vec(), a, now))
                        {
                            self.msgs[msg].outstanding += 1;
                            self.pending.insert((node, q.0), Pending::Store { msg });
                        }
                    }
                }
                self.send_done(sim, msg);
            }
            Pending::Store { msg } => {
                let m = &mut self.msgs[msg];
                m.outstanding -= 1;
                if let Outcome::Reply(Some(Ok(_))) = outcome
                    && m.state == MsgState::Sending
                {
                    if m.copies == 0 {
                        m.stored_at = Some(sim.now());
                    }
                    m.copies += 1;
                }
                self.send_done(sim, msg);
            }
            Pending::FetchLookup { user } => {
                if let Outcome::Nodes(nodes) = outcome {
                    let nodes = Rc::new(nodes);
                    for n in nodes.iter() {
                        self.fetch_from(sim, user, *n, nodes.clone(), 0);
                    }
                }
            }
            Pending::Fetch {
                user,
                relay,
                nodes,
                round,
            } => {
                let Outcome::Reply(Some(Ok(resp))) = outcome else {
                    return;
                };
                let mut ids = Vec::new();
                if let Some(Value::List(l)) = resp.other.get(b"envs".as_slice()) {
                    for b in l.iter().filter_map(Value::as_bytes) {
                        if let Ok(env) = Envelope::from_bytes(b)
                            && let Some(id) = self.receive(sim, user, env)
                        {
                            ids.push(id);
                        }
                    }
                }
                if ids.is_empty() {
                    return;
                }
                let more = resp.other.get(b"more".as_slice()).and_then(Value::as_int) == Some(1);
                self.ack(sim, user, relay, nodes, ids, more.then_some(round + 1));
            }
            Pending::Ack { refetch } => {
                if let Some((user, relay, nodes, round)) = refetch
                    && round < MAX_FETCH_ROUNDS
                    && matches!(outcome, Outcome::Reply(Some(Ok(_))))
                {
                    self.fetch_from(sim, user, relay, nodes, round);
                }
            }
            Pending::HandoverLookup { recipient } => {
                if let Outcome::Nodes(nodes) = outcome {
                    self.handover(sim, node, recipient, &nodes);
                }
            }
            Pending::HandoverStore { recipient, to } => {
                if let Outcome::Reply(Some(Ok(_))) = outcome
                    && let Some(r) = self.relays.get_mut(&node)
                {
                    self.report.copies_handed_over += 1;
                    r.handed.entry(recipient).or_default().insert(to);
                }
            }
        }
    }

    /// Acks `ids` to every node of the fetch lookup; the ack to `relay` fetches
    /// again from it (round `refetch`) once taken.
    fn ack(
        &mut self,
        sim: &mut Sim<Action>,
        user: usize,
        relay: NodeInfo,
        nodes: Rc<Vec<NodeInfo>>,
        ids: Vec<MessageId>,
        refetch: Option<u32>,
    ) {
        let node = self.users[user].node;
        let ms = now_ms(sim);
        for chunk in ids.chunks(MAX_ACK_IDS) {
            let Ok(ack) = DeliveryAck::new(&self.users[user].identity, chunk.to_vec(), ms) else {
                continue;
            };
            let bytes = ack.to_bytes();
            let mut to: Vec<NodeInfo> =
                nodes.iter().filter(|n| n.id != relay.id).copied().collect();
            to.push(relay);
            for n in to {
                let a = args("ack", Value::Bytes(bytes.clone()));
                let Some(q) = sim.with_node(node, |d, now| d.request(n.addr, ACK.to_vec(), a, now))
                else {
                    continue;
                };
                let refetch = (n.id == relay.id)
                    .then_some(refetch)
                    .flatten()
                    .map(|round| (user, relay, nodes.clone(), round));
                self.pending.insert((node, q.0), Pending::Ack { refetch });
            }
        }
    }

    /// Handles a chat timer.
    pub(crate) fn on_timer(&mut self, sim: &mut Sim<Action>, t: Timer) {
        match t {
            Timer::Send => self.write(sim),
            Timer::Retry(m) => self.attempt_send(sim, m),
            Timer::User(u, generation) => {
                let user = &self.users[u];
                if user.generation != generation || !online(sim, user.node) {
                    return;
                }
                self.fetch(sim, u);
                let since = sim.now().saturating_sub(self.users[u].last_publish);
                if since >= self.cfg.presence_every
                    || self.users[u].published_seq < self.users[u].session_seq
                {
                    self.publish(sim, u, false);
                }
                sim.schedule(
                    sim.now() + self.cfg.fetch_every,
                    Action::Chat(Timer::User(u, generation)),
                );
            }
            Timer::Relay(node, generation) => {
                if self
                    .relays
                    .get(&node)
                    .is_some_and(|r| r.generation == generation)
                    && online(sim, node)
                {
                    self.relay_tick(sim, node);
                }
            }
        }
    }

    // ----- presence resolution ----------------------------------------------

    /// A random online user whose login presence is confirmed, not on `not`:
    /// (user, its key, the `seq` a resolution must find at least).
    pub(crate) fn resolvable(
        &self,
        sim: &Sim<Action>,
        not: usize,
        rng: &mut impl Rng,
    ) -> Option<(usize, [u8; 32], i64)> {
        let ok: Vec<usize> = (0..self.users.len())
            .filter(|&u| {
                let user = &self.users[u];
                user.node != not
                    && online(sim, user.node)
                    && user.session_seq > 0
                    && user.published_seq >= user.session_seq
            })
            .collect();
        let &u = ok.choose(rng)?;
        Some((u, self.users[u].key.0, self.users[u].session_seq))
    }

    /// Whether a resolution of user `u` found its presence with `seq >= min_seq`.
    pub(crate) fn judge_resolve(&self, u: usize, item: Option<&MutableItem>, min_seq: i64) -> bool {
        item.is_some_and(|item| {
            item.seq >= min_seq && Presence::from_item(item, &self.users[u].key).is_ok()
        })
    }

    /// The salt of presence items.
    pub(crate) fn presence_salt() -> Vec<u8> {
        PRESENCE_SALT.to_vec()
    }

    // ----- report -----------------------------------------------------------

    /// Whether message `m`'s recipient, after the message was stored, was
    /// online for at least `grace` in a row before the TTL and the run (at
    /// `end`) ended; `None` if no relay ever took it.
    fn recipient_back(&self, m: &Msg, end: Duration) -> Option<bool> {
        let t0 = m.stored_at?;
        let limit = (t0 + self.cfg.ttl).min(end);
        Some(self.users[m.to].sessions.iter().any(|&(a, b)| {
            let from = a.max(t0);
            let to = b.unwrap_or(end).min(limit);
            to >= from + self.cfg.grace
        }))
    }

    /// For each of `days` periods of `day` from `start`: the messages first
    /// stored in it, how many of those had their recipient back within the
    /// TTL, and how many of these were delivered (the run ends at `end`).
    pub(crate) fn by_day(
        &self,
        start: Duration,
        day: Duration,
        days: usize,
        end: Duration,
    ) -> Vec<(usize, usize, usize)> {
        let mut out = vec![(0, 0, 0); days];
        for m in &self.msgs {
            let (Some(t0), Some(back)) = (m.stored_at, self.recipient_back(m, end)) else {
                continue;
            };
            let d = (t0.saturating_sub(start).as_nanos() / day.as_nanos().max(1)) as usize;
            let Some(slot) = out.get_mut(d.min(days.saturating_sub(1))) else {
                continue;
            };
            slot.0 += 1;
            if back {
                slot.1 += 1;
                if m.delivered_at.is_some() {
                    slot.2 += 1;
                }
            }
        }
        out
    }

    /// The figures at the end of the run (virtual time `end`).
    pub(crate) fn report(&self, end: Duration) -> ChatReport {
        let mut r = self.report.clone();
        r.users = self.users.len();
        r.messages = self.msgs.len();
        let mut copies = Vec::new();
        for m in &self.msgs {
            if m.delivered_at.is_some() {
                r.delivered += 1;
            }
            let Some(back) = self.recipient_back(m, end) else {
                r.never_stored += 1;
                continue;
            };
            r.stored += 1;
            copies.push(m.copies as f64);
            if back {
                r.eligible += 1;
                if m.delivered_at.is_some() {
                    r.eligible_delivered += 1;
                }
            } else {
                r.recipient_not_back += 1;
            }
        }
        r.copies_mean = if copies.is_empty() {
            0.0
        } else {
            copies.iter().sum::<f64>() / copies.len() as f64
        };
        r.offline_delivery_rate = if r.eligible == 0 {
            1.0
        } else {
            r.eligible_delivered as f64 / r.eligible as f64
        };
        let mut d = self.delays.clone();
        d.sort_by(f64::total_cmp);
        r.delivery_after_login_s_p50 = percentile(&d, 0.5).unwrap_or(0.0);
        r.delivery_after_login_s_p99 = percentile(&d, 0.99).unwrap_or(0.0);
        for relay in self.relays.values() {
            for e in relay.queue.iter() {
                let delivered = self
                    .by_id
                    .get(&e.envelope.id)
                    .is_some_and(|&m| self.msgs[m].delivered_at.is_some());
                if delivered {
                    r.copies_left_delivered += 1;
                } else {
                    r.copies_left_undelivered += 1;
                }
            }
        }
        r
    }
}
