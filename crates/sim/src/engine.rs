//! The engine: many DHT cores, one virtual clock, one event queue.
//!
//! Time is a base [`Instant`] taken once plus a virtual offset. The queue holds
//! datagram deliveries, node wake-ups and the caller's timers, ordered by
//! (time, sequence number), so two events due at the same instant always run in
//! the order they were scheduled. After every input to a core the engine drains
//! its datagrams and events (the sans-IO contract) and schedules its next wake-up
//! from [`Dht::poll_timeout`]; a node has at most one valid wake-up pending
//! (superseded ones stay in the queue and are skipped when they come up).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use peerchat_kad::{Config, Dht, Event, NodeId, Stats};

use crate::network::{self, Network};
use crate::queue::EventQueue;
use crate::trace::TraceHash;

/// Whether a node runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Running: it gets its datagrams and wake-ups.
    Online,
    /// Frozen: its core is kept, but not run; datagrams to it are dropped.
    Offline,
    /// Gone for good: its core was dropped (its counters were kept).
    Gone,
}

/// One simulated node.
#[derive(Debug)]
pub struct SimNode {
    /// Its core (`None` once gone).
    dht: Option<Dht>,
    /// Its node id.
    pub id: NodeId,
    /// Its address.
    pub addr: SocketAddr,
    /// Whether it runs.
    pub status: Status,
    /// Virtual time of its last status change (creation, leaving, coming back).
    pub since: Duration,
    /// Its valid pending wake-up: (time in nanoseconds, sequence number).
    wake: Option<(u64, u64)>,
}

impl SimNode {
    /// Its core, unless it is gone.
    pub fn dht(&self) -> Option<&Dht> {
        self.dht.as_ref()
    }
}

/// What the engine hands back to its caller.
// Core events are rare next to datagrams: moving one by value costs less than
// boxing every one.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Output<T> {
    /// A core emitted an event.
    Event {
        /// The node's index.
        node: usize,
        /// The event.
        event: Event,
    },
    /// A timer set with [`Sim::schedule`] is due.
    Timer(T),
}

/// Datagram counters of the network.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetCounters {
    /// Datagrams handed to a running node.
    pub delivered: u64,
    /// Datagrams lost by the loss model.
    pub lost: u64,
    /// Datagrams dropped because their destination was offline or gone.
    pub to_offline: u64,
    /// Datagrams to an address outside the simulated network.
    pub unroutable: u64,
    /// Bytes delivered.
    pub bytes: u64,
    /// Wake-ups handled (calls to `handle_timeout`).
    pub wakeups: u64,
}

enum What<T> {
    Deliver {
        src: u32,
        dst: u32,
        payload: Vec<u8>,
    },
    Wake {
        node: u32,
    },
    Timer(T),
}

/// A deterministic network of DHT cores in virtual time. `T` is the type of
/// the caller's timers.
pub struct Sim<T> {
    base: Instant,
    now: u64,
    queue: EventQueue<What<T>>,
    nodes: Vec<SimNode>,
    net: Network,
    trace: TraceHash,
    counters: NetCounters,
    events: VecDeque<(usize, Event)>,
    /// Counters of the cores that are gone.
    retired: Stats,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl<T> Sim<T> {
    /// An empty network at virtual time zero. `base` is the [`Instant`] that
    /// virtual time zero maps to (take it once: it is the only clock read).
    pub fn new(net: Network, base: Instant) -> Sim<T> {
        Sim {
            base,
            now: 0,
            queue: EventQueue::new(),
            nodes: Vec::new(),
            net,
            trace: TraceHash::new(),
            counters: NetCounters::default(),
            events: VecDeque::new(),
            retired: Stats::default(),
        }
    }

    /// Virtual time elapsed since the start.
    pub fn now(&self) -> Duration {
        Duration::from_nanos(self.now)
    }

    /// The current virtual time as the `Instant` the cores see.
    pub fn instant(&self) -> Instant {
        self.base + Duration::from_nanos(self.now)
    }

    /// The `Instant` of virtual time zero.
    pub fn base(&self) -> Instant {
        self.base
    }

    /// Nodes ever created (indexes are never reused).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether no node was ever created.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Node `i`.
    pub fn node(&self, i: usize) -> &SimNode {
        &self.nodes[i]
    }

    /// Every node ever created, by index.
    pub fn nodes(&self) -> &[SimNode] {
        &self.nodes
    }

    /// The fingerprint of every datagram delivered so far.
    pub fn trace_hash(&self) -> u64 {
        self.trace.finish()
    }

    /// Datagram counters.
    pub fn counters(&self) -> NetCounters {
        self.counters
    }

    /// Queries sent by all cores ever created, gone ones included, by method
    /// (the slots of [`Stats::sent`]: see `peerchat_kad::stats::METHODS`).
    pub fn queries_sent_by_method(&self) -> [u64; 7] {
        let mut total = self.retired.sent;
        for d in self.nodes.iter().filter_map(|n| n.dht.as_ref()) {
            for (t, x) in total.iter_mut().zip(d.stats().sent) {
                *t += x;
            }
        }
        total
    }

    /// Queries sent by all cores ever created, gone ones included.
    pub fn queries_sent(&self) -> u64 {
        self.queries_sent_by_method().iter().sum()
    }

    /// Events in the queue (stale wake-ups included).
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Creates an online node with this id, configuration and core seed, at
    /// address [`network::addr_of`] of its index. Returns the index.
    pub fn add_node(&mut self, id: NodeId, config: Config, seed: u64) -> usize {
        let i = self.nodes.len();
        assert!(
            i < network::MAX_NODES,
            "more than {} nodes",
            network::MAX_NODES
        );
        let dht = Dht::new(config, id, seed, self.instant());
        self.nodes.push(SimNode {
            dht: Some(dht),
            id,
            addr: network::addr_of(i),
            status: Status::Online,
            since: self.now(),
            wake: None,
        });
        self.after_input(i);
        i
    }

    /// Calls `f` on the core of node `i` at the current time, then drains its
    /// output. `None` if the node is not online.
    pub fn with_node<R>(&mut self, i: usize, f: impl FnOnce(&mut Dht, Instant) -> R) -> Option<R> {
        let now = self.instant();
        let node = &mut self.nodes[i];
        if node.status != Status::Online {
            return None;
        }
        let r = f(node.dht.as_mut()?, now);
        self.after_input(i);
        Some(r)
    }

    /// Takes node `i` offline: its core is frozen as it is, and datagrams to it
    /// are dropped until [`Sim::resume`].
    pub fn set_offline(&mut self, i: usize) {
        let now = self.now();
        let node = &mut self.nodes[i];
        if node.status == Status::Online {
            node.status = Status::Offline;
            node.since = now;
            node.wake = None;
        }
    }

    /// Brings an offline node back: it runs again from where it was frozen, and
    /// first handles every timer that fell due while it was away.
    pub fn resume(&mut self, i: usize) {
        let now = self.now();
        let inst = self.instant();
        let node = &mut self.nodes[i];
        if node.status != Status::Offline {
            return;
        }
        node.status = Status::Online;
        node.since = now;
        if let Some(d) = node.dht.as_mut() {
            d.handle_timeout(inst);
        }
        self.after_input(i);
    }

    /// Removes node `i` for good, dropping its core (its counters are kept).
    pub fn discard(&mut self, i: usize) {
        let now = self.now();
        let node = &mut self.nodes[i];
        if let Some(d) = node.dht.take() {
            let s = d.stats();
            for (r, x) in self.retired.sent.iter_mut().zip(s.sent) {
                *r += x;
            }
        }
        node.status = Status::Gone;
        node.since = now;
        node.wake = None;
    }

    /// Sets a timer: [`Sim::step`] returns `Output::Timer(timer)` at virtual time `at`
    /// (at once if `at` has passed).
    pub fn schedule(&mut self, at: Duration, timer: T) {
        let at = nanos(at).max(self.now);
        self.queue.push(at, What::Timer(timer));
    }

    /// Runs the network until something is for the caller (a core event or a
    /// timer) and returns it, or returns `None` once nothing is due before
    /// `until` (the clock then reads `until`).
    pub fn step(&mut self, until: Duration) -> Option<Output<T>> {
        let until = nanos(until);
        loop {
            if let Some((node, event)) = self.events.pop_front() {
                return Some(Output::Event { node, event });
            }
            let Some(s) = self.queue.pop_until(until) else {
                self.now = self.now.max(until);
                return None;
            };
            self.now = s.at;
            match s.item {
                What::Timer(t) => return Some(Output::Timer(t)),
                What::Wake { node } => self.wake(node as usize, s.seq),
                What::Deliver { src, dst, payload } => {
                    self.deliver(src as usize, dst as usize, payload)
                }
            }
        }
    }

    fn wake(&mut self, i: usize, seq: u64) {
        let inst = self.instant();
        let node = &mut self.nodes[i];
        if node.wake.map(|(_, s)| s) != Some(seq) || node.status != Status::Online {
            return;
        }
        node.wake = None;
        let Some(d) = node.dht.as_mut() else {
            return;
        };
        self.counters.wakeups += 1;
        d.handle_timeout(inst);
        self.after_input(i);
    }

    fn deliver(&mut self, src: usize, dst: usize, payload: Vec<u8>) {
        let inst = self.instant();
        let Some(node) = self.nodes.get_mut(dst) else {
            self.counters.unroutable += 1;
            return;
        };
        let Some(d) = node.dht.as_mut().filter(|_| node.status == Status::Online) else {
            self.counters.to_offline += 1;
            return;
        };
        self.counters.delivered += 1;
        self.counters.bytes += payload.len() as u64;
        self.trace.datagram(self.now, src, dst, &payload);
        d.handle_datagram(network::addr_of(src), &payload, inst);
        self.after_input(dst);
    }

    /// Drains node `i`'s datagrams and events and schedules its next wake-up.
    fn after_input(&mut self, i: usize) {
        let now = self.now;
        let count = self.nodes.len();
        let Some(d) = self.nodes[i].dht.as_mut() else {
            return;
        };
        while let Some(t) = d.poll_transmit() {
            match network::index_of(&t.dst) {
                Some(dst) if dst < count => match self.net.transit(i, dst) {
                    Some(latency) => {
                        let what = What::Deliver {
                            src: i as u32,
                            dst: dst as u32,
                            payload: t.payload,
                        };
                        self.queue.push(now + latency, what);
                    }
                    None => self.counters.lost += 1,
                },
                _ => self.counters.unroutable += 1,
            }
        }
        while let Some(e) = d.poll_event() {
            self.events.push_back((i, e));
        }
        let next = d
            .poll_timeout()
            .map(|t| nanos(t.saturating_duration_since(self.base)).max(now));
        if let Some(at) = next {
            let node = &mut self.nodes[i];
            if node.wake.is_none_or(|(w, _)| at < w) {
                let seq = self.queue.push(at, What::Wake { node: i as u32 });
                self.nodes[i].wake = Some((at, seq));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LatencyModel;

    #[test]
    fn two_nodes_find_each_other() {
        let mut sim: Sim<()> = Sim::new(
            Network::new(LatencyModel::default(), 0.0, 1),
            Instant::now(),
        );
        let a = sim.add_node(NodeId([1; 20]), Config::default(), 1);
        let b = sim.add_node(NodeId([2; 20]), Config::default(), 2);
        let addr_a = sim.node(a).addr;
        sim.with_node(b, |d, now| d.bootstrap(&[addr_a], now));
        let mut boot = None;
        while let Some(out) = sim.step(Duration::from_secs(10)) {
            if let Output::Event {
                node,
                event: Event::Bootstrapped { contacts },
            } = out
            {
                boot = Some((node, contacts));
            }
        }
        assert_eq!(boot, Some((b, 1)));
        assert_eq!(sim.node(a).dht().unwrap().routing_table().len(), 1);
        assert!(sim.counters().delivered >= 2);
        assert_eq!(sim.now(), Duration::from_secs(10));
    }
}
