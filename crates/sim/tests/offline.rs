//! The chat layer under churn and 1% loss: presence resolution and offline
//! delivery through relays (issue 6 item 3, issue 3 item 9). Small and quick;
//! the 10,000-node runs over simulated hours and days are in
//! `docs/reliability.md`.

use std::time::Duration;

use peerchat_sim::{
    ChatConfig, ChurnModel, Return, SessionDistribution, SimConfig, SimReport, run,
};

const MIN: Duration = Duration::from_secs(60);

fn config(seed: u64, churn: f64, churn_model: ChurnModel) -> SimConfig {
    SimConfig {
        nodes: 200,
        seed,
        loss: 0.01,
        churn,
        churn_model,
        lookups: 200,
        puts: 0,
        duration: Some(120 * MIN),
        chat: Some(ChatConfig {
            users: 60,
            messages: 60,
            resolves: 150,
            handover_every: 20 * MIN,
            fetch_every: 10 * MIN,
            grace: 10 * MIN,
            ..ChatConfig::default()
        }),
        ..SimConfig::default()
    }
}

fn check(r: &SimReport, seed: u64) {
    println!("{r}");
    let c = r.chat.as_ref().expect("a chat report");
    assert!(
        r.formation.formed,
        "seed {seed}: the network did not form:\n{r}"
    );
    assert!(
        r.churn_events.left >= 100 && r.churn_events.rejoined >= 50,
        "seed {seed}: too little churn:\n{r}"
    );
    assert!(
        r.lookups.success_rate >= 0.99,
        "seed {seed}: lookup success {:.4} < 0.99:\n{r}",
        r.lookups.success_rate
    );
    assert!(
        r.resolves.attempted - r.resolves.abandoned >= 100,
        "seed {seed}: too few presence resolutions:\n{r}"
    );
    assert!(
        r.resolves.success_rate >= 0.99,
        "seed {seed}: presence resolution {:.4} < 0.99:\n{r}",
        r.resolves.success_rate
    );
    assert!(
        c.eligible >= 10,
        "seed {seed}: too few messages whose recipient came back:\n{r}"
    );
    assert!(
        c.copies_mean >= 10.0,
        "seed {seed}: messages reached too few relays:\n{r}"
    );
    assert_eq!(
        c.eligible_delivered, c.eligible,
        "seed {seed}: a message whose recipient came back within the ttl was not delivered:\n{r}"
    );
    assert!(
        c.copies_acked > 0,
        "seed {seed}: no relay copy was cleared by an ack:\n{r}"
    );
}

#[test]
fn heavy_tailed_churn_delivers_every_offline_message() {
    let seed = 21;
    let model = ChurnModel::Measured {
        session_median: 10 * MIN,
        downtime_median: 10 * MIN,
        distribution: SessionDistribution::Weibull { shape: 0.5 },
        on_return: Return::Rejoin,
    };
    let r = run(&config(seed, 0.0, model), |_| {});
    check(&r, seed);
}

#[test]
fn thirty_percent_of_relays_churned() {
    let seed = 22;
    let model = ChurnModel::Sessions {
        mean_session: 20 * MIN,
        distribution: SessionDistribution::Exponential,
        on_return: Return::Rejoin,
    };
    let r = run(&config(seed, 0.3, model), |_| {});
    assert!(
        (r.churn - 0.3).abs() < 1e-9,
        "seed {seed}: churn {} is not 30%:\n{r}",
        r.churn
    );
    check(&r, seed);
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
fn same_seed_same_chat_trace() {
    let seed = 23;
    let model = ChurnModel::Measured {
        session_median: 5 * MIN,
        downtime_median: 5 * MIN,
        distribution: SessionDistribution::LogNormal { sigma: 1.5 },
        on_return: Return::Rejoin,
    };
    let mut cfg = config(seed, 0.0, model);
    cfg.nodes = 80;
    cfg.lookups = 50;
    cfg.duration = Some(30 * MIN);
    if let Some(c) = cfg.chat.as_mut() {
        c.users = 30;
        c.messages = 20;
        c.resolves = 30;
    }
    let a = run(&cfg, |_| {});
    let b = run(&cfg, |_| {});
    let chat = a.chat.as_ref().expect("a chat report");
    assert!(
        chat.messages > 0 && chat.presence_puts > 0 && a.churn_events.rejoined > 0,
        "seed {seed}: the workload did not run:\n{a}"
    );
    assert_eq!(
        a.trace_hash, b.trace_hash,
        "seed {seed}: two runs of the same seed gave different traces"
    );
    assert_eq!(
        deterministic_part(&a),
        deterministic_part(&b),
        "seed {seed}: two runs of the same seed gave different reports"
    );
}
