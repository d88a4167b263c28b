//! `peerchat sim`: the deterministic simulator, from the command line.

use std::io::Write;

use anyhow::{Result, bail};
use clap::Args;
use peerchat_sim::{Progress, SimConfig};

/// Options of `peerchat sim`.
#[derive(Args, Debug)]
pub(crate) struct SimArgs {
    /// Nodes in the simulated network.
    #[arg(long, default_value_t = 10_000)]
    nodes: usize,
    /// Fraction of nodes churned (offline, or replaced) during the lookup phase, 0 to 1.
    #[arg(long, default_value_t = 0.0)]
    churn: f64,
    /// Fraction of datagrams lost, 0 to 1.
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// The seed: the same seed gives the same run, datagram for datagram.
    #[arg(long)]
    seed: u64,
    /// Bucket size and replication.
    #[arg(long, default_value_t = peerchat_kad::DEFAULT_K)]
    k: usize,
    /// Lookup parallelism.
    #[arg(long, default_value_t = peerchat_kad::DEFAULT_ALPHA)]
    alpha: usize,
    /// find_node lookups from random live nodes.
    #[arg(long, default_value_t = 1000)]
    lookups: usize,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(a: SimArgs) -> Result<()> {
    if !(0.0..=1.0).contains(&a.churn) || !(0.0..=1.0).contains(&a.loss) {
        bail!("--churn and --loss are fractions between 0 and 1");
    }
    if a.nodes < 2 {
        bail!("--nodes must be at least 2");
    }
    let cfg = SimConfig {
        nodes: a.nodes,
        k: a.k.max(1),
        alpha: a.alpha.max(1),
        seed: a.seed,
        loss: a.loss,
        churn: a.churn,
        lookups: a.lookups,
        ..SimConfig::default()
    };
    let started = std::time::Instant::now();
    let mut last = std::time::Instant::now();
    let report = peerchat_sim::run(&cfg, |p: &Progress| {
        if last.elapsed().as_millis() >= 500 {
            last = std::time::Instant::now();
            eprint!(
                "\r{:?}: {} of {} (virtual {:.1} s, wall {:.0} s)   ",
                p.phase,
                p.done,
                p.total,
                p.virtual_time.as_secs_f64(),
                started.elapsed().as_secs_f64()
            );
            let _ = std::io::stderr().flush();
        }
    });
    eprintln!();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{report}");
    }
    Ok(())
}
