//! What to simulate: network size, DHT parameters, network model, churn, workload.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use peerchat_kad::{Config, DEFAULT_ALPHA, DEFAULT_K};
use serde::Serialize;

/// One simulation run: [`crate::run`] builds `nodes` nodes, waits until they have
/// all joined, stores `puts` items, then runs `lookups` + `gets` operations under
/// `loss` and `churn`. Same config, same seed: same run, datagram for datagram.
#[derive(Clone, Debug, Serialize)]
pub struct SimConfig {
    /// Nodes in the network at the start of the lookup phase.
    pub nodes: usize,
    /// Bucket size and replication (`k`).
    pub k: usize,
    /// Lookup parallelism (`alpha`).
    pub alpha: usize,
    /// Seed of every random choice: ids, bootstrap choices, latencies, loss, churn, workload.
    pub seed: u64,
    /// Probability that any one datagram is lost (0.0..=1.0).
    pub loss: f64,
    /// Per-datagram latency.
    pub latency: LatencyModel,
    /// Fraction of the nodes churned during the lookup phase (0.0..1.0); see [`ChurnModel`].
    pub churn: f64,
    /// How churned nodes leave and come back.
    pub churn_model: ChurnModel,
    /// `find_node` lookups of random targets, from random live nodes.
    pub lookups: usize,
    /// BEP 44 immutable items stored (each from a random node) before the lookup phase.
    pub puts: usize,
    /// BEP 44 immutable gets of a random stored item, from random live nodes
    /// (never the node that put it), interleaved with the lookups.
    pub gets: usize,
    /// Node `i` joins at `i * join_interval`.
    pub join_interval: Duration,
    /// Quiet time between formation and the first put.
    pub settle: Duration,
    /// Operations of the lookup phase start this far apart.
    pub op_interval: Duration,
    /// An operation not finished this long after the last one started counts as a failure.
    pub op_deadline: Duration,
    /// Formation is given up (reported as not formed) after the last join plus this.
    pub form_deadline: Duration,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            nodes: 1000,
            k: DEFAULT_K,
            alpha: DEFAULT_ALPHA,
            seed: 0,
            loss: 0.0,
            latency: LatencyModel::default(),
            churn: 0.0,
            churn_model: ChurnModel::default(),
            lookups: 1000,
            puts: 10,
            gets: 250,
            join_interval: Duration::from_millis(1),
            settle: Duration::from_secs(2),
            op_interval: Duration::from_millis(10),
            op_deadline: Duration::from_secs(60),
            form_deadline: Duration::from_secs(120),
        }
    }
}

impl SimConfig {
    /// The DHT configuration every simulated node runs: the defaults with this
    /// config's `k` and `alpha`, and no per-IP query budget (every simulated
    /// node has its own IP and none floods, so the budget would never bite; its
    /// table of recent IPs would only cost each node memory).
    pub fn dht_config(&self) -> Config {
        Config {
            k: self.k,
            alpha: self.alpha,
            per_ip_queries_per_sec: 0,
            ..Config::default()
        }
    }
}

/// Latency of a datagram: a fixed base per pair of nodes, drawn uniformly in
/// `min..=max` (the same both ways, from a hash of the seed and the pair, so it
/// costs no memory), plus a jitter drawn uniformly in `0..=jitter` per datagram.
/// Jitter can reorder datagrams, as a real network does.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct LatencyModel {
    /// Smallest one-way base latency.
    pub min: Duration,
    /// Largest one-way base latency.
    pub max: Duration,
    /// Largest extra delay of one datagram.
    pub jitter: Duration,
}

impl Default for LatencyModel {
    fn default() -> Self {
        LatencyModel {
            min: Duration::from_millis(10),
            max: Duration::from_millis(80),
            jitter: Duration::from_millis(5),
        }
    }
}

/// How churned nodes leave and come back. In every model, leaving is abrupt:
/// datagrams to an offline node are dropped and its core is not run.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Default)]
pub enum ChurnModel {
    /// At the start of the lookup phase, `churn * nodes` random nodes fail at once
    /// and never come back: every routing table suddenly holds that fraction of
    /// dead contacts. The worst case for lookups.
    #[default]
    Crash,
    /// Nodes alternate online sessions and offline periods during the lookup
    /// phase, with `churn` the steady-state fraction offline: at the start of the
    /// phase `churn * nodes` random nodes are offline; online sessions last
    /// `mean_session` on average, offline periods `mean_session * churn / (1 - churn)`.
    Sessions {
        /// Mean length of an online session.
        mean_session: Duration,
        /// Distribution of session and offline lengths.
        distribution: SessionDistribution,
        /// What happens when an offline period ends.
        on_return: Return,
    },
}

impl ChurnModel {
    /// Sessions with the default length (60 s) and distribution (exponential).
    pub fn sessions(on_return: Return) -> ChurnModel {
        ChurnModel::Sessions {
            mean_session: Duration::from_secs(60),
            distribution: SessionDistribution::Exponential,
            on_return,
        }
    }
}

/// Distribution of session lengths.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub enum SessionDistribution {
    /// Exponential (memoryless).
    Exponential,
    /// Pareto with this shape (> 1; heavy-tailed, as measured on the Mainline DHT),
    /// scaled to the mean.
    Pareto {
        /// The shape parameter; 1.5 is a common fit.
        shape: f64,
    },
}

/// What an offline node does when its offline period ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Return {
    /// It comes back with the same id, address, routing table and records, as a
    /// restart of a persisted node would: requests it had in flight are given up,
    /// and it looks its own id up again.
    Rejoin,
    /// It never comes back: when it leaves, a fresh node (new id, new address,
    /// empty table) is scheduled to join at the end of the offline period,
    /// bootstrapping from a random live node.
    Replace,
}

impl FromStr for ChurnModel {
    type Err = String;

    /// `crash`, `rejoin` or `replace` (the last two: [`ChurnModel::sessions`]).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "crash" => Ok(ChurnModel::Crash),
            "rejoin" => Ok(ChurnModel::sessions(Return::Rejoin)),
            "replace" => Ok(ChurnModel::sessions(Return::Replace)),
            _ => Err(format!(
                "unknown churn model {s:?}: use crash, rejoin or replace"
            )),
        }
    }
}

impl fmt::Display for ChurnModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChurnModel::Crash => f.write_str("crash"),
            ChurnModel::Sessions {
                mean_session,
                distribution,
                on_return,
            } => {
                let ret = match on_return {
                    Return::Rejoin => "rejoin",
                    Return::Replace => "replace",
                };
                let dist = match distribution {
                    SessionDistribution::Exponential => "exponential".to_string(),
                    SessionDistribution::Pareto { shape } => format!("pareto {shape}"),
                };
                write!(
                    f,
                    "{ret} (sessions {:.0} s, {dist})",
                    mean_session.as_secs_f64()
                )
            }
        }
    }
}
