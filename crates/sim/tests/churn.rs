//! Lookups and gets under churn: 20% of the nodes fail at once, or come and go.

use std::time::Duration;

use peerchat_sim::{ChurnModel, Return, SessionDistribution, SimConfig, SimReport, run};

fn config(seed: u64, churn_model: ChurnModel) -> SimConfig {
    SimConfig {
        nodes: 200,
        seed,
        churn: 0.2,
        churn_model,
        lookups: 500,
        puts: 10,
        gets: 200,
        ..SimConfig::default()
    }
}

fn check(r: &SimReport, seed: u64, min_success: f64) {
    assert!(
        r.formation.formed,
        "seed {seed}: the network did not form:\n{r}"
    );
    assert!(
        r.churn_events.left >= 40,
        "seed {seed}: too little churn:\n{r}"
    );
    assert!(
        r.lookups.success_rate >= min_success,
        "seed {seed}: lookup success {:.4} < {min_success}:\n{r}",
        r.lookups.success_rate
    );
    assert!(
        r.gets.success_rate >= min_success,
        "seed {seed}: get success {:.4} < {min_success}:\n{r}",
        r.gets.success_rate
    );
}

#[test]
fn twenty_percent_crash() {
    for seed in [3, 4] {
        let r = run(&config(seed, ChurnModel::Crash), |_| {});
        check(&r, seed, 0.99);
    }
}

#[test]
fn twenty_percent_offline_nodes_rejoin() {
    let seed = 5;
    let model = ChurnModel::Sessions {
        mean_session: Duration::from_secs(20),
        distribution: SessionDistribution::Exponential,
        on_return: Return::Rejoin,
    };
    let r = run(&config(seed, model), |_| {});
    assert!(
        r.churn_events.rejoined > 0,
        "seed {seed}: nobody came back:\n{r}"
    );
    check(&r, seed, 0.99);
}

#[test]
fn twenty_percent_replaced_by_fresh_nodes() {
    let seed = 6;
    let model = ChurnModel::Sessions {
        mean_session: Duration::from_secs(30),
        distribution: SessionDistribution::Pareto { shape: 1.5 },
        on_return: Return::Replace,
    };
    let r = run(&config(seed, model), |_| {});
    assert!(
        r.churn_events.replaced > 0,
        "seed {seed}: no fresh node joined:\n{r}"
    );
    check(&r, seed, 0.99);
}
