//! The standard scenario behind [`run`]: form a network, store items, then
//! look up and get under loss and churn, and measure.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use peerchat_kad::stats::METHODS;
use peerchat_kad::{Config, Distance, Event, NodeId, NodeInfo, Outcome, QueryStats, Value};
use rand::seq::SliceRandom;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::chat::{self, ChatLayer};
use crate::config::{ChurnModel, Return, SessionDistribution, SimConfig};
use crate::engine::{Output, Sim, Status};
use crate::network::Network;
use crate::report::{
    ChurnCounts, DayReport, Formation, NetReport, OpReport, SimReport, peak_rss, percentile,
};

/// How often (in virtual time) the progress callback is called.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// `ready` value of a node that is not (or no longer) ready.
const NOT_READY: u64 = u64::MAX;

/// Where a run is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Nodes join, one every `join_interval`, until all have bootstrapped.
    Joining,
    /// Quiet time after formation.
    Settling,
    /// Items are put.
    Storing,
    /// Lookups and gets run, under churn.
    Lookups,
    /// Finished.
    Done,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Joining => "joining",
            Phase::Settling => "settling",
            Phase::Storing => "storing",
            Phase::Lookups => "lookups",
            Phase::Done => "done",
        })
    }
}

/// A progress report, handed to [`run`]'s callback at each phase change and
/// every second of virtual time.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    /// The phase.
    pub phase: Phase,
    /// Virtual time since the start.
    pub virtual_time: Duration,
    /// Work done in this phase: nodes joined, or operations finished.
    pub done: usize,
    /// Work of this phase.
    pub total: usize,
}

/// Scheduled actions of the scenario.
#[derive(Debug)]
pub(crate) enum Action {
    /// Initial node `i` joins.
    Join(usize),
    /// Operation `j` starts.
    Op(usize),
    /// Node `i`'s session ends.
    Leave(usize),
    /// Node `i`'s offline period ends (it rejoins).
    Return(usize),
    /// A fresh node joins in place of a departed one.
    Spawn,
    /// A timer of the chat layer.
    Chat(chat::Timer),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OpKind {
    Find,
    Put,
    Get,
    /// A presence resolution (chat layer).
    Resolve,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OpState {
    Scheduled,
    Running,
    Done,
    Abandoned,
}

#[derive(Clone, Debug)]
struct Op {
    kind: OpKind,
    state: OpState,
    origin: usize,
    start: Duration,
    /// `find_node`: the target; `get`/`put`: unused.
    target: NodeId,
    /// `get`/`put`: the item.
    item: usize,
    success: bool,
    /// A `find_node` that returned no node at all.
    empty: bool,
    stats: QueryStats,
    recall: f64,
    /// `Resolve`: the lowest presence `seq` that counts.
    min_seq: i64,
}

#[derive(Clone, Debug)]
struct StoredItem {
    value: Value,
    putter: usize,
    stored: usize,
}

/// Runs the scenario of `cfg` and reports on it; `progress` is called at each
/// phase change and every second of virtual time.
///
/// 1. *Joining*: node `i` joins at `i * join_interval` and bootstraps from a
///    random earlier node that has finished joining; the network is formed when every node has finished
///    its bootstrap with at least one contact.
/// 2. *Settling*: `settle` of quiet time.
/// 3. *Storing*: `puts` immutable items are put, each from a random node.
/// 4. *Lookups*: churn starts (see [`ChurnModel`]), then `lookups` `find_node`s
///    of random targets and `gets` gets of random stored items run in random
///    order, `op_interval` apart, each from a random live node.
///
/// See [`SimReport`] for what counts as a success.
pub fn run(cfg: &SimConfig, mut progress: impl FnMut(&Progress)) -> SimReport {
    let wall = Instant::now();
    let mut master = ChaCha8Rng::seed_from_u64(cfg.seed);
    let net = Network::new(cfg.latency, cfg.loss, master.next_u64());
    let mut r = Runner {
        cfg,
        dht_config: cfg.dht_config(),
        sim: Sim::new(net, wall),
        topo: ChaCha8Rng::seed_from_u64(master.next_u64()),
        churn_rng: ChaCha8Rng::seed_from_u64(master.next_u64()),
        work: ChaCha8Rng::seed_from_u64(master.next_u64()),
        ids: Vec::new(),
        ready: Vec::new(),
        joined_at: Vec::new(),
        boot_addr: Vec::new(),
        ever_ready: Vec::new(),
        bootstrap_ms: Vec::new(),
        joined: 0,
        joined_list: Vec::new(),
        last_ready: Duration::ZERO,
        ops: Vec::new(),
        running: BTreeMap::new(),
        boot_queries: BTreeSet::new(),
        bootstrap_rpcs: Vec::new(),
        items: Vec::new(),
        churn: ChurnCounts::default(),
        phase: Phase::Joining,
        chat: None,
        wall,
        wall_limit_hit: false,
    };
    if let Some(c) = &cfg.chat {
        r.chat = Some(ChatLayer::new(c, cfg.nodes, cfg.k, master.next_u64()));
    }
    r.run(&mut progress, wall)
}

struct Runner<'a> {
    cfg: &'a SimConfig,
    dht_config: Config,
    sim: Sim<Action>,
    /// Ids, core seeds and bootstrap choices of the initial nodes.
    topo: ChaCha8Rng,
    /// Who churns, when, and the fresh nodes that replace them.
    churn_rng: ChaCha8Rng,
    /// Operation order, origins, targets and values.
    work: ChaCha8Rng,
    /// Node ids by index (a compact copy, scanned for the true closest nodes).
    ids: Vec<NodeId>,
    /// Since when (virtual nanoseconds) each node is online and bootstrapped;
    /// [`NOT_READY`] while it is not.
    ready: Vec<u64>,
    joined_at: Vec<Duration>,
    boot_addr: Vec<Option<SocketAddr>>,
    ever_ready: Vec<bool>,
    bootstrap_ms: Vec<f64>,
    /// Initial nodes that finished their bootstrap.
    joined: usize,
    /// The same, by index, in the order they finished.
    joined_list: Vec<usize>,
    last_ready: Duration,
    ops: Vec<Op>,
    /// Bootstrap queries of joining nodes, by (node, query id).
    boot_queries: BTreeSet<(usize, u64)>,
    /// Requests each finished bootstrap query sent.
    bootstrap_rpcs: Vec<u32>,
    /// Operations in flight by (node, query id).
    running: BTreeMap<(usize, u64), usize>,
    items: Vec<StoredItem>,
    churn: ChurnCounts,
    phase: Phase,
    /// The chat layer, if the config has a chat workload.
    chat: Option<ChatLayer>,
    /// When the run started (wall clock), for `SimConfig::wall_limit`.
    wall: Instant,
    /// The run went past `SimConfig::wall_limit` and stopped.
    wall_limit_hit: bool,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The mean, `None` when empty.
fn mean(values: impl Iterator<Item = f64>) -> Option<f64> {
    let (sum, count) = values.fold((0.0, 0usize), |(s, c), v| (s + v, c + 1));
    (count > 0).then(|| sum / count as f64)
}

fn sample(dist: SessionDistribution, mean: Duration, rng: &mut impl Rng) -> Duration {
    let mean = mean.as_secs_f64();
    // In (0, 1]: never ln(0).
    let u = 1.0 - rng.random::<f64>();
    let x = match dist {
        SessionDistribution::Exponential => -u.ln() * mean,
        SessionDistribution::Pareto { shape } => {
            let a = shape.max(1.01);
            mean * (a - 1.0) / a / u.powf(1.0 / a)
        }
        SessionDistribution::Weibull { .. } | SessionDistribution::LogNormal { .. } => {
            return sample_median(dist, mean / dist.mean_over_median(), u, rng);
        }
    };
    Duration::from_secs_f64(x.clamp(0.0, 1e9))
}

/// A length drawn from `dist` scaled to this median (in seconds); `u` is a
/// uniform draw in (0, 1].
fn sample_median(dist: SessionDistribution, median: f64, u: f64, rng: &mut impl Rng) -> Duration {
    let ln2 = std::f64::consts::LN_2;
    let x = match dist {
        SessionDistribution::Exponential => -u.ln() * median / ln2,
        SessionDistribution::Pareto { shape } => {
            let a = shape.max(1.01);
            median / 2f64.powf(1.0 / a) / u.powf(1.0 / a)
        }
        SessionDistribution::Weibull { shape } => {
            let k = shape.max(0.05);
            median / ln2.powf(1.0 / k) * (-u.ln()).powf(1.0 / k)
        }
        SessionDistribution::LogNormal { sigma } => {
            // Box-Muller: a standard normal from two uniforms.
            let v: f64 = rng.random();
            let z = (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos();
            median * (sigma * z).exp()
        }
    };
    Duration::from_secs_f64(x.clamp(0.0, 1e9))
}

impl Runner<'_> {
    fn run(&mut self, progress: &mut impl FnMut(&Progress), wall: Instant) -> SimReport {
        let cfg = self.cfg;
        let n = cfg.nodes;

        // 1. Joining.
        progress(&self.progress());
        if n > 0 {
            self.sim.schedule(Duration::ZERO, Action::Join(0));
        }
        let last_join = Duration::from_nanos(
            nanos(cfg.join_interval).saturating_mul(n.saturating_sub(1) as u64),
        );
        self.run_until(last_join + cfg.form_deadline, progress, |r| r.joined >= n);
        let rpcs_forming = self.sim.queries_sent();
        let formation = self.formation();

        // 2. Settling.
        self.phase = Phase::Settling;
        progress(&self.progress());
        let until = self.sim.now() + cfg.settle;
        self.run_until(until, progress, |_| false);

        // 3. Storing.
        self.phase = Phase::Storing;
        progress(&self.progress());
        let kinds = vec![OpKind::Put; if n > 0 { cfg.puts } else { 0 }];
        let deadline = self.schedule_ops(&kinds, cfg.op_interval);
        self.run_until(deadline, progress, |r| r.all_ops_over());

        // 4. Lookups under churn.
        self.phase = Phase::Lookups;
        let lookups_start = self.sim.now();
        let rpcs_before_lookups = self.sim.queries_sent();
        self.start_churn();
        progress(&self.progress());
        let gets = if self.items.iter().any(|i| i.stored > 0) {
            cfg.gets
        } else {
            0
        };
        let mut kinds = vec![OpKind::Find; if n > 1 { cfg.lookups } else { 0 }];
        kinds.extend(std::iter::repeat_n(OpKind::Get, gets));
        if let Some(c) = &cfg.chat {
            kinds.extend(std::iter::repeat_n(OpKind::Resolve, c.resolves));
        }
        kinds.shuffle(&mut self.work);
        // Over a fixed duration the operations are spread evenly over it.
        let interval = match cfg.duration {
            Some(d) if !kinds.is_empty() => d.div_f64(kinds.len() as f64),
            _ => cfg.op_interval,
        };
        let phase_end = self.sim.now()
            + cfg
                .duration
                .unwrap_or_else(|| interval.mul_f64(kinds.len() as f64));
        if let Some(chat) = self.chat.as_mut() {
            chat.start(&mut self.sim, phase_end);
        }
        let deadline = self.schedule_ops(&kinds, interval);
        if cfg.duration.is_some() {
            self.run_until(phase_end, progress, |_| false);
        }
        self.run_until(deadline.max(phase_end), progress, |r| r.all_ops_over());
        self.phase = Phase::Done;
        progress(&self.progress());

        // Report.
        let by_method = self.sim.queries_sent_by_method();
        let rpcs_end: u64 = by_method.iter().sum();
        let created = self.sim.len().max(1) as f64;
        let c = self.sim.counters();
        let finds: Vec<&Op> = self.ops.iter().filter(|o| o.kind == OpKind::Find).collect();
        let recall = mean(
            finds
                .iter()
                .filter(|o| o.state == OpState::Done)
                .map(|o| o.recall),
        )
        .unwrap_or(1.0);
        let peak = peak_rss();
        SimReport {
            seed: cfg.seed,
            nodes: n,
            k: cfg.k,
            alpha: cfg.alpha,
            loss: cfg.loss,
            churn: self.offline_fraction(),
            churn_model: cfg.churn_model.to_string(),
            formation,
            lookups: self.op_report(OpKind::Find),
            closest_k_recall: recall,
            lookups_empty: finds.iter().filter(|o| o.empty).count(),
            gets: self.op_report(OpKind::Get),
            resolves: self.op_report(OpKind::Resolve),
            chat: self.chat.as_ref().map(|c| c.report(self.sim.now())),
            days: self.days_report(
                lookups_start,
                if self.wall_limit_hit {
                    phase_end.min(self.sim.now())
                } else {
                    phase_end
                },
            ),
            puts: self.op_report(OpKind::Put),
            stored_per_put: mean(self.items.iter().map(|i| i.stored as f64)).unwrap_or(0.0),
            rpcs_per_node: rpcs_end as f64 / created,
            rpcs_per_node_forming: rpcs_forming as f64 / n.max(1) as f64,
            rpcs_per_node_lookup_phase: (rpcs_end - rpcs_before_lookups) as f64 / created,
            rpcs_by_method: METHODS
                .iter()
                .zip(by_method)
                .filter(|(_, n)| *n > 0)
                .map(|(m, n)| (m.to_string(), n))
                .collect(),
            churn_events: self.churn.clone(),
            network: NetReport {
                delivered: c.delivered,
                lost: c.lost,
                to_offline: c.to_offline,
                bytes: c.bytes,
                wakeups: c.wakeups,
            },
            virtual_time_s: self.sim.now().as_secs_f64(),
            trace_hash: self.sim.trace_hash(),
            wall_time_s: wall.elapsed().as_secs_f64(),
            wall_limit_hit: self.wall_limit_hit,
            peak_rss_bytes: peak,
            bytes_per_node: peak.map(|p| p / created as u64),
        }
    }

    /// Figures of the network just formed.
    fn formation(&self) -> Formation {
        let n = self.cfg.nodes;
        let mut boot = self.bootstrap_ms.clone();
        boot.sort_by(f64::total_cmp);
        Formation {
            formed: self.joined >= n,
            joined: self.joined,
            time_to_form_s: self.last_ready.as_secs_f64(),
            bootstrap_ms_p50: percentile(&boot, 0.5).unwrap_or(0.0),
            bootstrap_ms_p99: percentile(&boot, 0.99).unwrap_or(0.0),
            table_size_mean: mean(
                self.sim
                    .nodes()
                    .iter()
                    .filter_map(|x| x.dht())
                    .map(|d| d.routing_table().len() as f64),
            )
            .unwrap_or(0.0),
            bootstrap_rpcs_mean: mean(self.bootstrap_rpcs.iter().map(|&x| f64::from(x)))
                .unwrap_or(0.0),
        }
    }

    fn progress(&self) -> Progress {
        let (done, total) = match self.phase {
            Phase::Joining => (self.joined, self.cfg.nodes),
            _ => {
                let over = self
                    .ops
                    .iter()
                    .filter(|o| matches!(o.state, OpState::Done | OpState::Abandoned))
                    .count();
                (over, self.ops.len())
            }
        };
        Progress {
            phase: self.phase,
            virtual_time: self.sim.now(),
            done,
            total,
        }
    }

    /// Runs the simulation until `until`, or until `done` holds.
    fn run_until(
        &mut self,
        until: Duration,
        progress: &mut impl FnMut(&Progress),
        done: impl Fn(&Self) -> bool,
    ) {
        let mut next_report = self.sim.now() + PROGRESS_EVERY;
        while !done(self) && !self.wall_limit_hit {
            match self.sim.step(until.min(next_report)) {
                Some(out) => self.handle(out),
                None => {
                    if self.sim.now() >= until {
                        return;
                    }
                    progress(&self.progress());
                    next_report += PROGRESS_EVERY;
                    if self
                        .cfg
                        .wall_limit
                        .is_some_and(|limit| self.wall.elapsed() >= limit)
                    {
                        self.wall_limit_hit = true;
                    }
                }
            }
        }
    }

    fn all_ops_over(&self) -> bool {
        self.running.is_empty()
            && self
                .ops
                .last()
                .is_none_or(|o| o.state != OpState::Scheduled)
    }

    /// Schedules operations of these kinds from now, `interval` apart;
    /// returns the deadline of the last.
    fn schedule_ops(&mut self, kinds: &[OpKind], interval: Duration) -> Duration {
        let start = self.sim.now();
        let mut at = start;
        for &kind in kinds {
            let j = self.ops.len();
            self.ops.push(Op {
                kind,
                state: OpState::Scheduled,
                origin: 0,
                start: at,
                target: NodeId::ZERO,
                item: 0,
                success: false,
                empty: false,
                stats: QueryStats::default(),
                recall: 0.0,
                min_seq: 0,
            });
            self.sim.schedule(at, Action::Op(j));
            at += interval;
        }
        at + self.cfg.op_deadline
    }

    fn handle(&mut self, out: Output<Action>) {
        match out {
            Output::Timer(Action::Join(i)) => self.join(i),
            Output::Timer(Action::Op(j)) => self.start_op(j),
            Output::Timer(Action::Leave(i)) => self.leave(i),
            Output::Timer(Action::Return(i)) => self.come_back(i),
            Output::Timer(Action::Spawn) => self.spawn(),
            Output::Timer(Action::Chat(t)) => {
                if let Some(chat) = self.chat.as_mut() {
                    chat.on_timer(&mut self.sim, t);
                }
            }
            Output::Event {
                node,
                event:
                    Event::Query {
                        from,
                        tid,
                        method,
                        args,
                        ..
                    },
            } => {
                if let Some(chat) = self.chat.as_mut() {
                    chat.on_query(&mut self.sim, node, from, tid, &method, &args);
                }
            }
            Output::Event {
                node,
                event: Event::Bootstrapped { contacts },
            } => {
                if contacts > 0 {
                    self.mark_ready(node);
                }
            }
            Output::Event {
                node,
                event: Event::QueryDone { id, outcome, stats },
            } => {
                if let Some(j) = self.running.remove(&(node, id.0)) {
                    self.finish_op(j, outcome, stats);
                } else if self.boot_queries.remove(&(node, id.0)) {
                    self.bootstrap_rpcs.push(stats.rpcs);
                } else if let Some(chat) = self.chat.as_mut() {
                    chat.on_done(&mut self.sim, node, id, outcome);
                }
            }
            Output::Event { .. } => {}
        }
    }

    /// Creates a node (index `self.ids.len()`) and bootstraps it from `boot`.
    fn new_node(&mut self, id: NodeId, seed: u64, boot: Option<SocketAddr>) -> usize {
        let i = self.sim.add_node(id, self.dht_config.clone(), seed);
        debug_assert_eq!(i, self.ids.len());
        self.ids.push(id);
        self.ready.push(NOT_READY);
        self.joined_at.push(self.sim.now());
        self.boot_addr.push(boot);
        self.ever_ready.push(false);
        if let Some(addr) = boot
            && let Some(q) = self.sim.with_node(i, |d, now| d.bootstrap(&[addr], now))
        {
            self.boot_queries.insert((i, q.0));
        }
        i
    }

    fn join(&mut self, i: usize) {
        let id = NodeId::random(&mut self.topo);
        let seed = self.topo.next_u64();
        // From a random node that finished joining, as a user would bootstrap
        // from a well-known node that has been up for a while.
        let boot = (i > 0 && !self.joined_list.is_empty()).then(|| {
            self.sim
                .node(self.joined_list[self.topo.random_range(0..self.joined_list.len())])
                .addr
        });
        let idx = self.new_node(id, seed, boot);
        if i == 0 {
            // The first node has no one to bootstrap from: it is the network.
            self.mark_ready(idx);
        }
        if i + 1 < self.cfg.nodes {
            let at =
                Duration::from_nanos(nanos(self.cfg.join_interval).saturating_mul(i as u64 + 1));
            self.sim.schedule(at, Action::Join(i + 1));
        }
    }

    fn mark_ready(&mut self, i: usize) {
        if self.sim.node(i).status != Status::Online {
            return;
        }
        if self.ready[i] == NOT_READY {
            self.ready[i] = nanos(self.sim.now());
        }
        if !self.ever_ready[i] {
            self.ever_ready[i] = true;
            let took = self.sim.now().saturating_sub(self.joined_at[i]);
            self.bootstrap_ms.push(took.as_secs_f64() * 1000.0);
            if i < self.cfg.nodes {
                self.joined += 1;
                self.joined_list.push(i);
                self.last_ready = self.sim.now();
            }
        }
    }

    /// A random node that is online and bootstrapped, other than `not`.
    fn random_live(&mut self, not: Option<usize>) -> Option<usize> {
        let len = self.ready.len();
        let ok = |r: &Self, i: usize| r.ready[i] != NOT_READY && Some(i) != not;
        for _ in 0..1000 {
            let i = self.work.random_range(0..len.max(1));
            if i < len && ok(self, i) {
                return Some(i);
            }
        }
        let live: Vec<usize> = (0..len).filter(|&i| ok(self, i)).collect();
        (!live.is_empty()).then(|| live[self.work.random_range(0..live.len())])
    }

    fn start_op(&mut self, j: usize) {
        let kind = self.ops[j].kind;
        let now = self.sim.now();
        let (origin, item) = match kind {
            OpKind::Find | OpKind::Put | OpKind::Resolve => (self.random_live(None), 0),
            OpKind::Get => {
                let stored: Vec<usize> = (0..self.items.len())
                    .filter(|&i| self.items[i].stored > 0)
                    .collect();
                let item = stored[self.work.random_range(0..stored.len())];
                (self.random_live(Some(self.items[item].putter)), item)
            }
        };
        let Some(origin) = origin else {
            self.ops[j].state = OpState::Abandoned;
            return;
        };
        let op = &mut self.ops[j];
        op.origin = origin;
        op.start = now;
        op.state = OpState::Running;
        let query = match kind {
            OpKind::Find => {
                let target = NodeId::random(&mut self.work);
                op.target = target;
                self.sim
                    .with_node(origin, |d, now| d.find_node(target, now))
            }
            OpKind::Get => {
                op.item = item;
                let target = peerchat_kad::bep44::immutable_target(&self.items[item].value);
                self.sim
                    .with_node(origin, |d, now| d.get_immutable(target, now))
            }
            OpKind::Resolve => {
                let target = self
                    .chat
                    .as_ref()
                    .and_then(|c| c.resolvable(&self.sim, origin, &mut self.work));
                let Some((user, key, min_seq)) = target else {
                    // No user online with a confirmed presence: nothing to resolve.
                    op.state = OpState::Abandoned;
                    return;
                };
                op.item = user;
                op.min_seq = min_seq;
                self.sim.with_node(origin, |d, now| {
                    d.get_mutable(key, ChatLayer::presence_salt(), None, now)
                })
            }
            OpKind::Put => {
                let mut bytes = vec![0u8; 64];
                self.work.fill_bytes(&mut bytes);
                let value = Value::Bytes(bytes);
                op.item = self.items.len();
                self.items.push(StoredItem {
                    value: value.clone(),
                    putter: origin,
                    stored: 0,
                });
                self.sim
                    .with_node(origin, |d, now| {
                        d.put_immutable(value, now).ok().map(|(q, _)| q)
                    })
                    .flatten()
            }
        };
        match query {
            Some(q) => {
                self.running.insert((origin, q.0), j);
            }
            None => {
                // Refused at once (cannot happen for a live node and a small value).
                self.ops[j].state = OpState::Done;
            }
        }
    }

    fn finish_op(&mut self, j: usize, outcome: Outcome, stats: QueryStats) {
        let (origin, start, target, item) = {
            let o = &self.ops[j];
            (o.origin, o.start, o.target, o.item)
        };
        let mut empty = false;
        let (success, recall) = match outcome {
            Outcome::Nodes(nodes) => {
                empty = nodes.is_empty();
                self.judge_find(origin, start, target, &nodes)
            }
            Outcome::Immutable(v) => (v.as_ref() == Some(&self.items[item].value), 0.0),
            Outcome::Mutable(v) => {
                let ok = self
                    .chat
                    .as_ref()
                    .is_some_and(|c| c.judge_resolve(item, v.as_ref(), self.ops[j].min_seq));
                (ok, 0.0)
            }
            Outcome::Stored { stored, .. } => {
                self.items[item].stored = stored;
                (stored > 0, 0.0)
            }
            _ => (false, 0.0),
        };
        let op = &mut self.ops[j];
        op.state = OpState::Done;
        op.success = success;
        op.empty = empty;
        op.recall = recall;
        op.stats = stats;
    }

    /// Whether a lookup's result holds the closest eligible node, and the
    /// fraction of the `k` closest eligible nodes it holds.
    fn judge_find(
        &self,
        origin: usize,
        start: Duration,
        target: NodeId,
        got: &[NodeInfo],
    ) -> (bool, f64) {
        let k = self.cfg.k.max(1);
        let start = nanos(start);
        let mut best: Vec<(Distance, NodeId)> = Vec::with_capacity(k + 1);
        for (i, (id, &ready)) in self.ids.iter().zip(&self.ready).enumerate() {
            if ready > start || i == origin {
                continue;
            }
            let d = id.distance(&target);
            if best.len() == k && d >= best[k - 1].0 {
                continue;
            }
            let pos = best.partition_point(|b| b.0 < d);
            best.insert(pos, (d, *id));
            best.truncate(k);
        }
        if best.is_empty() {
            return (true, 1.0);
        }
        let has = |id: &NodeId| got.iter().any(|n| n.id == *id);
        let found = best.iter().filter(|b| has(&b.1)).count();
        (has(&best[0].1), found as f64 / best.len() as f64)
    }

    /// Lookups, resolutions and offline delivery by simulated day of the
    /// lookup phase (`start` to `phase_end`, at least one day; operations and
    /// messages after the last day begun count in it).
    fn days_report(&self, start: Duration, phase_end: Duration) -> Vec<DayReport> {
        let day = Duration::from_secs(86_400);
        let span = phase_end.saturating_sub(start);
        let days = (span.as_nanos().div_ceil(day.as_nanos()) as usize).max(1);
        let index = |t: Duration| {
            ((t.saturating_sub(start).as_nanos() / day.as_nanos()) as usize).min(days - 1)
        };
        let mut out: Vec<DayReport> = (0..days)
            .map(|d| DayReport {
                day: d,
                ..DayReport::default()
            })
            .collect();
        for o in self.ops.iter().filter(|o| o.state != OpState::Abandoned) {
            let d = &mut out[index(o.start)];
            let ok = o.state == OpState::Done && o.success;
            match o.kind {
                OpKind::Find => {
                    d.lookups_judged += 1;
                    d.lookups_succeeded += usize::from(ok);
                }
                OpKind::Resolve => {
                    d.resolves_judged += 1;
                    d.resolves_succeeded += usize::from(ok);
                }
                OpKind::Put | OpKind::Get => {}
            }
        }
        if let Some(chat) = &self.chat {
            let by_day = chat.by_day(start, day, days, self.sim.now());
            for (d, (stored, eligible, delivered)) in out.iter_mut().zip(by_day) {
                d.messages_stored = stored;
                d.eligible = eligible;
                d.eligible_delivered = delivered;
            }
        }
        out
    }

    fn op_report(&self, kind: OpKind) -> OpReport {
        let ops: Vec<&Op> = self.ops.iter().filter(|o| o.kind == kind).collect();
        let abandoned = ops.iter().filter(|o| o.state == OpState::Abandoned).count();
        let timed_out = ops
            .iter()
            .filter(|o| matches!(o.state, OpState::Running | OpState::Scheduled))
            .count();
        let ok: Vec<&&Op> = ops
            .iter()
            .filter(|o| o.state == OpState::Done && o.success)
            .collect();
        let done: Vec<&&Op> = ops.iter().filter(|o| o.state == OpState::Done).collect();
        let mut hops: Vec<u32> = ok.iter().map(|o| o.stats.hops).collect();
        hops.sort_unstable();
        let mut lat: Vec<f64> = ok
            .iter()
            .map(|o| o.stats.elapsed.as_secs_f64() * 1000.0)
            .collect();
        lat.sort_by(f64::total_cmp);
        let judged = ops.len() - abandoned;
        OpReport {
            attempted: ops.len(),
            succeeded: ok.len(),
            abandoned,
            timed_out,
            success_rate: if judged == 0 {
                1.0
            } else {
                ok.len() as f64 / judged as f64
            },
            hops_p50: percentile(&hops, 0.5).unwrap_or(0),
            hops_p99: percentile(&hops, 0.99).unwrap_or(0),
            latency_ms_p50: percentile(&lat, 0.5).unwrap_or(0.0),
            latency_ms_p99: percentile(&lat, 0.99).unwrap_or(0.0),
            rpcs_mean: mean(done.iter().map(|o| f64::from(o.stats.rpcs))).unwrap_or(0.0),
        }
    }

    // ----- churn ------------------------------------------------------------

    /// The fraction of nodes offline at the start of the lookup phase.
    fn offline_fraction(&self) -> f64 {
        match self.cfg.churn_model {
            ChurnModel::Measured {
                session_median,
                downtime_median,
                ..
            } => {
                let (up, down) = (session_median.as_secs_f64(), downtime_median.as_secs_f64());
                if up + down > 0.0 {
                    down / (up + down)
                } else {
                    0.0
                }
            }
            _ => self.cfg.churn.clamp(0.0, 0.99),
        }
    }

    /// The length of a new online session (`None`: sessions do not end).
    fn session_len(&mut self) -> Option<Duration> {
        match self.cfg.churn_model {
            ChurnModel::Crash => None,
            ChurnModel::Sessions {
                mean_session,
                distribution,
                ..
            } => Some(sample(distribution, mean_session, &mut self.churn_rng)),
            ChurnModel::Measured {
                session_median,
                distribution,
                ..
            } => {
                let u = 1.0 - self.churn_rng.random::<f64>();
                Some(sample_median(
                    distribution,
                    session_median.as_secs_f64(),
                    u,
                    &mut self.churn_rng,
                ))
            }
        }
    }

    /// The length of an offline period and what ends it (`None`: a crash, for good).
    fn downtime(&mut self) -> Option<(Duration, Return)> {
        match self.cfg.churn_model {
            ChurnModel::Crash => None,
            ChurnModel::Sessions {
                mean_session,
                distribution,
                on_return,
            } => {
                let f = self.cfg.churn.clamp(0.0, 0.99);
                let mean = mean_session.mul_f64(f / (1.0 - f));
                Some((sample(distribution, mean, &mut self.churn_rng), on_return))
            }
            ChurnModel::Measured {
                downtime_median,
                distribution,
                on_return,
                ..
            } => {
                let u = 1.0 - self.churn_rng.random::<f64>();
                let d = sample_median(
                    distribution,
                    downtime_median.as_secs_f64(),
                    u,
                    &mut self.churn_rng,
                );
                Some((d, on_return))
            }
        }
    }

    /// Starts the churn of the lookup phase.
    fn start_churn(&mut self) {
        let f = self.offline_fraction();
        if f <= 0.0 {
            return;
        }
        let mut live: Vec<usize> = (0..self.sim.len())
            .filter(|&i| self.sim.node(i).status == Status::Online)
            .collect();
        let count = ((live.len() as f64) * f).round() as usize;
        live.shuffle(&mut self.churn_rng);
        let (down, up) = live.split_at(count);
        let (down, up) = (down.to_vec(), up.to_vec());
        for i in down {
            self.leave(i);
        }
        let now = self.sim.now();
        for i in up {
            if let Some(len) = self.session_len() {
                self.sim.schedule(now + len, Action::Leave(i));
            }
        }
    }

    /// Node `i` leaves (abruptly): its operations in flight are abandoned.
    fn leave(&mut self, i: usize) {
        if self.sim.node(i).status != Status::Online {
            return;
        }
        self.churn.left += 1;
        self.ready[i] = NOT_READY;
        let mine: Vec<(usize, u64)> = self
            .running
            .range((i, 0)..=(i, u64::MAX))
            .map(|(k, _)| *k)
            .collect();
        for key in mine {
            if let Some(j) = self.running.remove(&key) {
                self.ops[j].state = OpState::Abandoned;
            }
        }
        if let Some(chat) = self.chat.as_mut() {
            chat.on_leave(&mut self.sim, i);
        }
        match self.downtime() {
            None => self.sim.set_offline(i),
            Some((away, on_return)) => {
                let at = self.sim.now() + away;
                match on_return {
                    Return::Rejoin => {
                        self.sim.set_offline(i);
                        self.sim.schedule(at, Action::Return(i));
                    }
                    Return::Replace => {
                        self.sim.discard(i);
                        self.sim.schedule(at, Action::Spawn);
                    }
                }
            }
        }
    }

    fn next_session(&mut self, i: usize) {
        if let Some(len) = self.session_len() {
            let at = self.sim.now() + len;
            self.sim.schedule(at, Action::Leave(i));
        }
    }

    /// Node `i` comes back with its id, table and records, and looks its own id
    /// up again (from its saved contacts, or its bootstrap node).
    fn come_back(&mut self, i: usize) {
        if self.sim.node(i).status != Status::Offline {
            return;
        }
        self.churn.rejoined += 1;
        self.sim.resume(i);
        let boot: Vec<SocketAddr> = self.boot_addr[i].into_iter().collect();
        self.sim.with_node(i, |d, now| d.bootstrap(&boot, now));
        if let Some(chat) = self.chat.as_mut() {
            chat.login(&mut self.sim, i);
        }
        self.next_session(i);
    }

    /// A fresh node joins in place of a departed one.
    fn spawn(&mut self) {
        let Some(b) = self.random_live_churn() else {
            return;
        };
        self.churn.replaced += 1;
        let id = NodeId::random(&mut self.churn_rng);
        let seed = self.churn_rng.next_u64();
        let boot = self.sim.node(b).addr;
        let i = self.new_node(id, seed, Some(boot));
        self.next_session(i);
    }

    /// A random live, bootstrapped node, drawn from the churn RNG.
    fn random_live_churn(&mut self) -> Option<usize> {
        let len = self.ready.len();
        for _ in 0..1000 {
            let i = self.churn_rng.random_range(0..len.max(1));
            if i < len && self.ready[i] != NOT_READY {
                return Some(i);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The median of many draws, in seconds.
    fn median_of(dist: SessionDistribution, median: f64) -> (f64, f64) {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut v: Vec<f64> = (0..20_001)
            .map(|_| {
                let u = 1.0 - rng.random::<f64>();
                sample_median(dist, median, u, &mut rng).as_secs_f64()
            })
            .collect();
        v.sort_by(f64::total_cmp);
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        (v[v.len() / 2], mean)
    }

    #[test]
    fn session_lengths_have_the_configured_median() {
        for dist in [
            SessionDistribution::Exponential,
            SessionDistribution::Pareto { shape: 1.5 },
            SessionDistribution::Weibull { shape: 0.5 },
            SessionDistribution::LogNormal { sigma: 1.5 },
        ] {
            let (median, mean) = median_of(dist, 1800.0);
            assert!(
                (median - 1800.0).abs() < 1800.0 * 0.05,
                "{dist}: median {median:.0} s, not 1800 s"
            );
            let want = 1800.0 * dist.mean_over_median();
            assert!(
                (mean - want).abs() < want * 0.15,
                "{dist}: mean {mean:.0} s, expected about {want:.0} s"
            );
        }
    }

    #[test]
    fn weibull_half_is_heavy_tailed() {
        // Shape 0.5: mean over 4 times the median, and a tail of long sessions.
        let (median, mean) = median_of(SessionDistribution::Weibull { shape: 0.5 }, 1800.0);
        assert!(
            mean > 3.5 * median,
            "mean {mean:.0} s, median {median:.0} s"
        );
        // Means in sessions: `sample` scales a Weibull to a mean.
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let dist = SessionDistribution::Weibull { shape: 0.5 };
        let n = 20_000;
        let total: f64 = (0..n)
            .map(|_| sample(dist, Duration::from_secs(600), &mut rng).as_secs_f64())
            .sum();
        let mean = total / n as f64;
        assert!((mean - 600.0).abs() < 60.0, "mean {mean:.0} s, not 600 s");
    }
}
