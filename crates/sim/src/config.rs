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
    /// How long the lookup phase lasts in virtual time: `None` (the default)
    /// runs the operations `op_interval` apart and stops when they are over;
    /// `Some(d)` spreads them evenly over `d` and runs the churn (and the chat
    /// workload) for all of `d`, e.g. a simulated day.
    pub duration: Option<Duration>,
    /// Stop the run once it has taken this long in wall-clock time, and report
    /// on the virtual time simulated by then (`SimReport::wall_limit_hit`).
    /// The only setting that makes a report depend on the machine: `None` (the
    /// default) for every reproducible run.
    pub wall_limit: Option<Duration>,
    /// The chat layer on top of the DHT (presence, offline messages through
    /// relays); `None` (the default): DHT operations only.
    pub chat: Option<ChatConfig>,
}

/// The chat workload of [`crate::chat`]: users publish presence, resolve each
/// other's, and send messages to offline users through relays.
#[derive(Clone, Debug, Serialize)]
pub struct ChatConfig {
    /// Users, one on each of the first `users` nodes (they churn with their node).
    pub users: usize,
    /// Messages sent over the lookup phase, each from a random online user to a
    /// random offline one (so that it must go through relays).
    pub messages: usize,
    /// Presence resolutions of random online users, from random live nodes,
    /// spread over the lookup phase like the lookups.
    pub resolves: usize,
    /// An online user publishes its presence (a new `seq`) at login and this often.
    pub presence_every: Duration,
    /// An online user fetches its mailbox at login and this often.
    pub fetch_every: Duration,
    /// A relay holding copies looks up each mailbox this often and hands its
    /// copies to closer nodes that have not had them.
    pub handover_every: Duration,
    /// How long a relay keeps a copy (after the envelope's timestamp).
    pub ttl: Duration,
    /// A message counts as one "whose recipient returned within the TTL" when the
    /// recipient is then online for at least this long without a break, after
    /// the message was stored, before the TTL ends and before the run ends.
    pub grace: Duration,
}

impl Default for ChatConfig {
    fn default() -> Self {
        ChatConfig {
            users: 200,
            messages: 500,
            resolves: 500,
            presence_every: Duration::from_secs(15 * 60),
            fetch_every: Duration::from_secs(10 * 60),
            handover_every: Duration::from_secs(10 * 60),
            ttl: Duration::from_secs(14 * 24 * 60 * 60),
            grace: Duration::from_secs(15 * 60),
        }
    }
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
            duration: None,
            wall_limit: None,
            chat: None,
        }
    }
}

impl SimConfig {
    /// The DHT configuration every simulated node runs: the defaults with this
    /// config's `k` and `alpha`, and no per-IP query budget (every simulated
    /// node has its own IP and none floods, so the budget would never bite; its
    /// table of recent IPs would only cost each node memory).
    ///
    /// With a chat workload the nodes also hand the relay methods (`pc_store`,
    /// `pc_fetch`, `pc_ack`) to the simulator, as a Peerchat node does.
    pub fn dht_config(&self) -> Config {
        Config {
            k: self.k,
            alpha: self.alpha,
            per_ip_queries_per_sec: 0,
            extension_methods: if self.chat.is_some() {
                crate::chat::METHODS.iter().map(|m| m.to_vec()).collect()
            } else {
                Vec::new()
            },
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
    /// Heavy-tailed sessions as measured in deployed DHTs: online and offline
    /// lengths drawn from `distribution` scaled to these medians (Stutzbach and
    /// Rejaie, "Understanding churn in peer-to-peer networks", IMC 2006: Weibull
    /// with shape 0.34 to 0.59, or log-normal, session medians of minutes to tens
    /// of minutes). `churn` is not used: the fraction offline at the start is the
    /// steady-state one, `downtime_median / (session_median + downtime_median)`
    /// (the ratio of the means too, both lengths having the same shape).
    Measured {
        /// Median online session.
        session_median: Duration,
        /// Median offline period.
        downtime_median: Duration,
        /// Shape of both.
        distribution: SessionDistribution,
        /// What happens when an offline period ends.
        on_return: Return,
    },
}

impl ChurnModel {
    /// [`ChurnModel::Measured`] with this distribution, medians of 30 minutes
    /// online and 30 minutes offline, nodes coming back ([`Return::Rejoin`]).
    pub fn measured(distribution: SessionDistribution) -> ChurnModel {
        ChurnModel::Measured {
            session_median: Duration::from_secs(30 * 60),
            downtime_median: Duration::from_secs(30 * 60),
            distribution,
            on_return: Return::Rejoin,
        }
    }

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
    /// Weibull with this shape (< 1: heavy-tailed; Stutzbach and Rejaie 2006
    /// fit 0.34 to 0.59 on Kad, Gnutella and BitTorrent).
    Weibull {
        /// The shape parameter `k`.
        shape: f64,
    },
    /// Log-normal with this `sigma` (the standard deviation of the log).
    LogNormal {
        /// The standard deviation of `ln(length)`.
        sigma: f64,
    },
}

impl SessionDistribution {
    /// Mean divided by median.
    pub fn mean_over_median(self) -> f64 {
        let ln2 = std::f64::consts::LN_2;
        match self {
            SessionDistribution::Exponential => 1.0 / ln2,
            SessionDistribution::Pareto { shape } => {
                let a = shape.max(1.01);
                a / (a - 1.0) / 2f64.powf(1.0 / a)
            }
            SessionDistribution::Weibull { shape } => {
                let k = shape.max(0.05);
                gamma(1.0 + 1.0 / k) / ln2.powf(1.0 / k)
            }
            SessionDistribution::LogNormal { sigma } => (sigma * sigma / 2.0).exp(),
        }
    }
}

/// The gamma function for `x > 0` (Lanczos, g = 7; relative error about 1e-15).
pub(crate) fn gamma(x: f64) -> f64 {
    const G: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        return std::f64::consts::PI / ((std::f64::consts::PI * x).sin() * gamma(1.0 - x));
    }
    let x = x - 1.0;
    let t = x + 7.5;
    let mut a = G[0];
    for (i, g) in G.iter().enumerate().skip(1) {
        a += g / (x + i as f64);
    }
    (2.0 * std::f64::consts::PI).sqrt() * t.powf(x + 0.5) * (-t).exp() * a
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

    /// `crash`, `rejoin` or `replace` (the last two: [`ChurnModel::sessions`]),
    /// `weibull` or `lognormal` ([`ChurnModel::measured`]).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "crash" => Ok(ChurnModel::Crash),
            "rejoin" => Ok(ChurnModel::sessions(Return::Rejoin)),
            "replace" => Ok(ChurnModel::sessions(Return::Replace)),
            "weibull" => Ok(ChurnModel::measured(SessionDistribution::Weibull {
                shape: 0.5,
            })),
            "lognormal" | "log-normal" => {
                Ok(ChurnModel::measured(SessionDistribution::LogNormal {
                    sigma: 1.5,
                }))
            }
            _ => Err(format!(
                "unknown churn model {s:?}: use crash, rejoin, replace, weibull or lognormal"
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
                write!(
                    f,
                    "{} (sessions {:.0} s, {distribution})",
                    return_name(*on_return),
                    mean_session.as_secs_f64()
                )
            }
            ChurnModel::Measured {
                session_median,
                downtime_median,
                distribution,
                on_return,
            } => write!(
                f,
                "{distribution} sessions, median {:.0} s online, {:.0} s offline, {}",
                session_median.as_secs_f64(),
                downtime_median.as_secs_f64(),
                return_name(*on_return)
            ),
        }
    }
}

fn return_name(r: Return) -> &'static str {
    match r {
        Return::Rejoin => "rejoin",
        Return::Replace => "replace",
    }
}

impl fmt::Display for SessionDistribution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionDistribution::Exponential => f.write_str("exponential"),
            SessionDistribution::Pareto { shape } => write!(f, "pareto {shape}"),
            SessionDistribution::Weibull { shape } => write!(f, "weibull {shape}"),
            SessionDistribution::LogNormal { sigma } => write!(f, "log-normal {sigma}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gamma_of_known_values() {
        for (x, want) in [
            (1.0, 1.0),
            (2.0, 1.0),
            (3.0, 2.0),
            (5.0, 24.0),
            (0.5, std::f64::consts::PI.sqrt()),
        ] {
            assert!(
                (gamma(x) - want).abs() < 1e-9 * want,
                "gamma({x}) = {}",
                gamma(x)
            );
        }
    }

    #[test]
    fn mean_over_median() {
        let ln2 = std::f64::consts::LN_2;
        // Weibull shape 1 is the exponential.
        let w = SessionDistribution::Weibull { shape: 1.0 }.mean_over_median();
        assert!((w - 1.0 / ln2).abs() < 1e-9);
        // Weibull shape 0.5: mean = 2 scale, median = scale ln(2)^2.
        let w = SessionDistribution::Weibull { shape: 0.5 }.mean_over_median();
        assert!((w - 2.0 / (ln2 * ln2)).abs() < 1e-9);
    }
}
