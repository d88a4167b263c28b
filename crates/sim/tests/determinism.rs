//! The same seed gives the same run, datagram for datagram; another seed does not.

use std::time::Duration;

use peerchat_sim::{ChurnModel, Return, SimConfig, SimReport, run};

fn config(seed: u64) -> SimConfig {
    SimConfig {
        nodes: 150,
        seed,
        loss: 0.01,
        churn: 0.1,
        churn_model: ChurnModel::Sessions {
            mean_session: Duration::from_secs(5),
            distribution: peerchat_sim::SessionDistribution::Exponential,
            on_return: Return::Rejoin,
        },
        lookups: 200,
        puts: 5,
        gets: 50,
        ..SimConfig::default()
    }
}

/// Every field but the wall-clock and memory figures.
fn deterministic_part(r: &SimReport) -> String {
    let mut v = serde_json::to_value(r).expect("a report serializes");
    let obj = v.as_object_mut().expect("an object");
    for key in ["wall_time_s", "peak_rss_bytes", "bytes_per_node"] {
        obj.remove(key);
    }
    v.to_string()
}

#[test]
fn same_seed_same_trace_other_seed_other_trace() {
    let seed = 0x5eed_0001;
    let a = run(&config(seed), |_| {});
    let b = run(&config(seed), |_| {});
    assert_eq!(
        a.trace_hash, b.trace_hash,
        "seed {seed}: two runs of the same seed gave different traces"
    );
    assert_eq!(
        deterministic_part(&a),
        deterministic_part(&b),
        "seed {seed}: two runs of the same seed gave different reports"
    );
    assert!(
        a.network.delivered > 10_000,
        "seed {seed}: too little traffic to mean anything: {a}"
    );
    assert!(
        a.churn_events.left > 0 && a.churn_events.rejoined > 0,
        "seed {seed}: no churn happened: {a}"
    );
    assert!(a.network.lost > 0, "seed {seed}: no datagram was lost: {a}");

    let c = run(&config(seed + 1), |_| {});
    assert_ne!(
        a.trace_hash,
        c.trace_hash,
        "seeds {seed} and {}: different seeds gave the same trace",
        seed + 1
    );
}
