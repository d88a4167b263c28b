//! The registration storm of the paper (section 5.1) in virtual time.
//!
//! Node `i` joins at `i × join_interval`, bootstrapping from node `i − 1`; once
//! joined it registers: it stores a name-claim-sized record and a presence-sized
//! record (two BEP 44 immutable puts, at the nodes closest to their targets).
//! When every node has joined, every node announces itself again (the two puts
//! once more, `announce_interval` apart), as in the original. Then `resolutions`
//! random nodes each fetch a random other node's claim record (a BEP 44 get):
//! the simulator's version of resolving a name. No messaging.
//!
//! The figures are those of `peerchat bench registrations`: virtual seconds until
//! everyone joined and registered, queries sent per node (by method) and per
//! second per node over time, lookup hops, resolution success and latency.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use peerchat_kad::{Config, Event, NodeId, Outcome, Value};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::config::LatencyModel;
use crate::engine::{Output, Sim};
use crate::network::Network;

/// One simulated storm.
#[derive(Clone, Debug, Serialize)]
pub struct StormConfig {
    /// Nodes (users).
    pub nodes: usize,
    /// Bucket size and replication.
    pub k: usize,
    /// Lookup parallelism.
    pub alpha: usize,
    /// Seed of every random choice.
    pub seed: u64,
    /// Node `i` joins at `i × join_interval`.
    pub join_interval: Duration,
    /// Node `i` announces again at `i × announce_interval` after the last join.
    pub announce_interval: Duration,
    /// Per-datagram latency.
    pub latency: LatencyModel,
    /// Names resolved after the storm.
    pub resolutions: usize,
    /// Size of the name-claim record, bytes.
    pub claim_bytes: usize,
    /// Size of the presence record, bytes.
    pub presence_bytes: usize,
    /// Queries per second are sampled this often (virtual time); 0: chosen from `nodes`.
    pub sample_every: Duration,
    /// Give up (the report says so) this long after the last announce.
    pub deadline: Duration,
}

impl Default for StormConfig {
    fn default() -> Self {
        StormConfig {
            nodes: 1000,
            k: 10,
            alpha: 5,
            seed: 1,
            join_interval: Duration::from_millis(5),
            announce_interval: Duration::from_millis(1),
            // Loopback-like: the original ran on one machine.
            latency: LatencyModel {
                min: Duration::from_micros(50),
                max: Duration::from_micros(200),
                jitter: Duration::from_micros(50),
            },
            resolutions: 200,
            claim_bytes: 150,
            presence_bytes: 120,
            sample_every: Duration::ZERO,
            deadline: Duration::from_secs(120),
        }
    }
}

/// What a storm measured (times are virtual).
#[derive(Clone, Debug, Default, Serialize)]
pub struct StormReport {
    /// Nodes.
    pub nodes: usize,
    /// Nodes whose bootstrap found no contact.
    pub join_failures: usize,
    /// Nodes whose last announce stored nothing.
    pub announce_failures: usize,
    /// Seconds until every node had joined (bootstrap done).
    pub joined_seconds: f64,
    /// Seconds until every node's announce was stored.
    pub registered_seconds: f64,
    /// Seconds until the last resolution ended.
    pub total_seconds: f64,
    /// Queries sent per node until everyone registered, all methods.
    pub rpcs_per_node: f64,
    /// The same, by method (`peerchat_kad::stats::METHODS`).
    pub rpcs_per_node_by_method: BTreeMap<String, f64>,
    /// Queries sent per node until the end (the resolutions included).
    pub rpcs_per_node_total: f64,
    /// (seconds, queries sent per second per joined node).
    pub rpc_rate: Vec<(f64, f64)>,
    /// Hops of the resolutions.
    pub hops: Vec<u32>,
    /// Resolutions run and succeeded (the right record came back).
    pub resolutions: usize,
    /// Resolutions that returned the right record.
    pub resolved: usize,
    /// Virtual latency of each resolution, milliseconds.
    pub lookup_ms: Vec<f64>,
    /// Wall-clock seconds the simulation took.
    pub wall_seconds: f64,
}

/// Where a storm is, for progress bars.
#[derive(Clone, Copy, Debug)]
pub struct StormProgress {
    /// `joining`, `announcing` or `resolving`.
    pub phase: &'static str,
    /// Done so far in this phase.
    pub done: usize,
    /// To do in this phase.
    pub total: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Timer {
    Join(usize),
    Announce(usize),
    Resolve(usize),
    Sample,
}

#[derive(Clone, Copy, Debug)]
enum Purpose {
    Boot,
    Register { announce: bool },
    Resolve { expect: usize },
}

fn record(i: usize, kind: u8, len: usize) -> Value {
    let mut v = vec![kind; len.max(9)];
    v[1..9].copy_from_slice(&(i as u64).to_be_bytes());
    Value::Bytes(v)
}

/// Runs a storm; `progress` is called now and then.
pub fn run_storm(cfg: &StormConfig, mut progress: impl FnMut(&StormProgress)) -> StormReport {
    let wall = Instant::now();
    let n = cfg.nodes.max(1);
    let mut master = ChaCha8Rng::seed_from_u64(cfg.seed);
    let net = Network::new(cfg.latency, 0.0, master.next_u64());
    let mut sim: Sim<Timer> = Sim::new(net, wall);
    let dht = Config {
        k: cfg.k.max(1),
        alpha: cfg.alpha.max(1),
        ..Config::default()
    };
    let mut rng = ChaCha8Rng::seed_from_u64(master.next_u64());
    let sample_every = if cfg.sample_every.is_zero() {
        Duration::from_millis(100 * (n as u64 / 10_000).max(1))
    } else {
        cfg.sample_every
    };
    let mut pending: BTreeMap<(usize, u64), Purpose> = BTreeMap::new();
    // Puts of each node's current round still running, and whether one stored nothing.
    let mut puts_left = vec![0u8; n];
    let mut put_failed = vec![false; n];
    let mut joined = 0usize;
    let mut announced = 0usize;
    let mut report = StormReport {
        nodes: n,
        ..StormReport::default()
    };
    let mut resolutions_left = 0usize;
    let mut last_sent = 0u64;
    let mut last_sample = Duration::ZERO;
    let mut announce_started = false;
    let mut joins_scheduled = false;
    let mut at_registered: Option<[u64; 7]> = None;

    for i in 0..n {
        sim.schedule(cfg.join_interval * i as u32, Timer::Join(i));
    }
    sim.schedule(sample_every, Timer::Sample);
    let mut deadline = cfg.join_interval * n as u32 + cfg.deadline;
    let register = |sim: &mut Sim<Timer>,
                    pending: &mut BTreeMap<(usize, u64), Purpose>,
                    puts_left: &mut [u8],
                    i: usize,
                    announce: bool| {
        puts_left[i] = 0;
        for (kind, len) in [(b'c', cfg.claim_bytes), (b'p', cfg.presence_bytes)] {
            let v = record(i, kind, len);
            if let Some(Ok((q, _))) = sim.with_node(i, |d, now| d.put_immutable(v, now)) {
                pending.insert((i, q.0), Purpose::Register { announce });
                puts_left[i] += 1;
            }
        }
    };
    while let Some(out) = sim.step(deadline) {
        match out {
            Output::Timer(Timer::Join(i)) => {
                let id = NodeId::random(&mut rng);
                let seed = rng.next_u64();
                let j = sim.add_node(id, dht.clone(), seed);
                if i > 0 {
                    let addr = sim.node(i - 1).addr;
                    if let Some(q) = sim.with_node(j, |d, now| d.bootstrap(&[addr], now)) {
                        pending.insert((j, q.0), Purpose::Boot);
                    }
                } else {
                    joined += 1;
                    register(&mut sim, &mut pending, &mut puts_left, j, false);
                }
                joins_scheduled = i + 1 == n;
            }
            Output::Timer(Timer::Announce(i)) => {
                put_failed[i] = false;
                register(&mut sim, &mut pending, &mut puts_left, i, true);
            }
            Output::Timer(Timer::Resolve(_)) => {
                let from = rng.random_range(0..n);
                let mut to = rng.random_range(0..n);
                if n > 1 {
                    while to == from {
                        to = rng.random_range(0..n);
                    }
                }
                let target =
                    peerchat_kad::bep44::immutable_target(&record(to, b'c', cfg.claim_bytes));
                if let Some(q) = sim.with_node(from, |d, now| d.get_immutable(target, now)) {
                    pending.insert((from, q.0), Purpose::Resolve { expect: to });
                }
            }
            Output::Timer(Timer::Sample) => {
                let sent = sim.queries_sent();
                let dt = (sim.now() - last_sample).as_secs_f64();
                let live = sim.len().max(1);
                if dt > 0.0 {
                    report.rpc_rate.push((
                        sim.now().as_secs_f64(),
                        (sent - last_sent) as f64 / live as f64 / dt,
                    ));
                }
                last_sent = sent;
                last_sample = sim.now();
                if resolutions_left > 0 || report.resolutions == 0 {
                    sim.schedule(sim.now() + sample_every, Timer::Sample);
                }
                progress(&StormProgress {
                    phase: if !announce_started {
                        "joining"
                    } else if report.resolutions == 0 {
                        "announcing"
                    } else {
                        "resolving"
                    },
                    done: if !announce_started { joined } else { announced },
                    total: n,
                });
            }
            Output::Event { node, event } => match event {
                Event::QueryDone { id, outcome, stats } => {
                    let Some(purpose) = pending.remove(&(node, id.0)) else {
                        continue;
                    };
                    match purpose {
                        Purpose::Boot => {
                            joined += 1;
                            if !matches!(&outcome, Outcome::Nodes(v) if !v.is_empty()) {
                                report.join_failures += 1;
                            }
                            register(&mut sim, &mut pending, &mut puts_left, node, false);
                        }
                        Purpose::Register { announce } => {
                            if !matches!(outcome, Outcome::Stored { stored, .. } if stored > 0) {
                                put_failed[node] = true;
                            }
                            puts_left[node] = puts_left[node].saturating_sub(1);
                            if announce && puts_left[node] == 0 {
                                announced += 1;
                                if put_failed[node] {
                                    report.announce_failures += 1;
                                }
                                if announced == n {
                                    report.registered_seconds = sim.now().as_secs_f64();
                                    at_registered = Some(sim.queries_sent_by_method());
                                    resolutions_left = cfg.resolutions;
                                    let t = sim.now();
                                    for r in 0..cfg.resolutions {
                                        sim.schedule(
                                            t + Duration::from_millis(1) * r as u32,
                                            Timer::Resolve(r),
                                        );
                                    }
                                    deadline = t + cfg.deadline;
                                    if cfg.resolutions == 0 {
                                        break;
                                    }
                                }
                            }
                        }
                        Purpose::Resolve { expect } => {
                            report.resolutions += 1;
                            let want = record(expect, b'c', cfg.claim_bytes);
                            if matches!(&outcome, Outcome::Immutable(Some(v)) if *v == want) {
                                report.resolved += 1;
                            }
                            report.hops.push(stats.hops);
                            report.lookup_ms.push(stats.elapsed.as_secs_f64() * 1e3);
                            resolutions_left = resolutions_left.saturating_sub(1);
                            if resolutions_left == 0 {
                                break;
                            }
                        }
                    }
                    if !announce_started && joins_scheduled && joined == n {
                        announce_started = true;
                        report.joined_seconds = sim.now().as_secs_f64();
                        let t = sim.now();
                        for i in 0..n {
                            sim.schedule(t + cfg.announce_interval * i as u32, Timer::Announce(i));
                        }
                        deadline = t + cfg.announce_interval * n as u32 + cfg.deadline;
                    }
                }
                _ => continue,
            },
        }
    }
    if report.registered_seconds == 0.0 {
        report.announce_failures += n - announced;
    }
    report.total_seconds = sim.now().as_secs_f64();
    let total = sim.queries_sent_by_method();
    report.rpcs_per_node_total = total.iter().sum::<u64>() as f64 / n as f64;
    let by_method = at_registered.unwrap_or(total);
    report.rpcs_per_node = by_method.iter().sum::<u64>() as f64 / n as f64;
    report.rpcs_per_node_by_method = peerchat_kad::stats::METHODS
        .iter()
        .zip(by_method)
        .filter(|(_, c)| *c > 0)
        .map(|(m, c)| (m.to_string(), c as f64 / n as f64))
        .collect();
    report.wall_seconds = wall.elapsed().as_secs_f64();
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_storm_registers_and_resolves_everyone() {
        let cfg = StormConfig {
            nodes: 60,
            resolutions: 30,
            seed: 3,
            ..StormConfig::default()
        };
        let r = run_storm(&cfg, |_| {});
        assert_eq!(r.join_failures, 0, "{r:?}");
        assert_eq!(r.announce_failures, 0, "{r:?}");
        assert_eq!(r.resolutions, 30);
        assert_eq!(r.resolved, 30, "{r:?}");
        assert!(r.registered_seconds >= r.joined_seconds && r.joined_seconds > 0.0);
        assert!(r.rpcs_per_node > 0.0 && !r.rpc_rate.is_empty());
        // Same seed, same storm.
        let again = run_storm(&cfg, |_| {});
        assert_eq!(again.rpcs_per_node, r.rpcs_per_node);
        assert_eq!(again.hops, r.hops);
    }
}
