//! `peerchat bench registrations --sim`: the storm in the simulator.

use std::time::Duration;

use anyhow::Result;
use peerchat_sim::storm::{StormConfig, run_storm};

use super::{Millis, RegistrationsArgs, StormResult, bar, ms_of, status_kib};
use crate::bench::{cpu_seconds, percentile};

/// One simulated storm of `n` nodes, with the figures of a real one (times are
/// virtual; memory and CPU are this process's, per node).
pub(super) fn run(n: usize, args: &RegistrationsArgs) -> Result<StormResult> {
    let cfg = StormConfig {
        nodes: n,
        k: args.k,
        alpha: args.alpha,
        seed: args.seed.unwrap_or(1),
        join_interval: Duration::from_millis(args.join_interval_ms),
        resolutions: args.pairs,
        ..StormConfig::default()
    };
    let rss0 = status_kib("VmRSS:");
    let cpu0 = cpu_seconds().unwrap_or(0.0);
    let label = format!("n={n} (sim)");
    let r = run_storm(&cfg, |p| {
        bar(&label, p.done as f64 / p.total.max(1) as f64, p.phase)
    });
    let nf = n as f64;
    let mut hops: Vec<f64> = r.hops.iter().map(|&h| f64::from(h)).collect();
    hops.sort_by(f64::total_cmp);
    let mut lookup = r.lookup_ms.clone();
    let name_lookup_ms: Millis = ms_of(&mut lookup);
    Ok(StormResult {
        n,
        mode: "sim".into(),
        k: args.k,
        alpha: args.alpha,
        workers: 0,
        setup_seconds: 0.0,
        join_seconds: r.joined_seconds,
        registered_seconds: r.registered_seconds,
        total_seconds: r.total_seconds,
        join_failures: r.join_failures,
        announce_failures: r.announce_failures,
        rpcs_per_node: r.rpcs_per_node,
        rpcs_per_node_by_method: r.rpcs_per_node_by_method.clone(),
        rpcs_per_node_total: r.rpcs_per_node_total,
        timeouts_per_node: 0.0,
        rpc_rate_peak: r.rpc_rate.iter().map(|p| p.1).fold(0.0, f64::max),
        rpc_rate: r.rpc_rate,
        contacts_min: 0,
        contacts_p50: 0,
        hops_p50: percentile(&hops, 50.0),
        hops_p99: percentile(&hops, 99.0),
        hop_samples: hops.len(),
        resolutions: r.resolutions,
        resolved: r.resolved,
        name_lookup_ms,
        messages: 0,
        delivered: 0,
        peak_memory_per_node_kib: status_kib("VmHWM:").saturating_sub(rss0) as f64 / nf,
        rss_delta_per_node_kib: status_kib("VmRSS:").saturating_sub(rss0) as f64 / nf,
        cpu_seconds_per_node: (cpu_seconds().unwrap_or(0.0) - cpu0) / nf,
        fd_peak: 0,
        errors: vec![format!("simulated in {:.1} s of wall time", r.wall_seconds)],
    })
}
