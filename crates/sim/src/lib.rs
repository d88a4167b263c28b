//! A deterministic simulator of Peerchat's DHT: many `peerchat-kad` cores in one
//! thread, in virtual time, over a seeded network model (latency, loss, churn).
//!
//! No socket is opened and no clock is read, besides one base `Instant` that
//! virtual time counts from (and which also times the run for the report). Every
//! random choice (node ids, core seeds, bootstrap choices, latencies, losses,
//! churn, workload) comes from the seed, and nothing that shapes the run iterates
//! a `HashMap`: the same seed gives the same run, datagram for datagram, and the
//! same [`SimReport::trace_hash`].
//!
//! [`run`] runs the standard scenario (form a network, store items, look up
//! under loss and churn, report); [`Sim`] is the engine underneath, for other
//! scenarios.
//!
//! ```
//! use peerchat_sim::{SimConfig, run};
//!
//! let cfg = SimConfig { nodes: 50, lookups: 20, puts: 2, gets: 5, seed: 7, ..SimConfig::default() };
//! let report = run(&cfg, |_progress| {});
//! assert!(report.formation.formed, "seed {}: {report}", cfg.seed);
//! assert_eq!(report.trace_hash, run(&cfg, |_| {}).trace_hash);
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod chat;
pub mod config;
pub mod engine;
pub mod network;
mod queue;
pub mod report;
pub mod scenario;
pub mod storm;
pub mod trace;

pub use chat::ChatReport;
pub use config::{ChatConfig, ChurnModel, LatencyModel, Return, SessionDistribution, SimConfig};
pub use engine::{NetCounters, Output, Sim, SimNode, Status};
pub use network::Network;
pub use report::{ChurnCounts, DayReport, Formation, NetReport, OpReport, SimReport};
pub use scenario::{Phase, Progress, run};
pub use trace::TraceHash;
