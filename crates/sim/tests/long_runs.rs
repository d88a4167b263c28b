//! What runs over simulated days need: idle cores that do not wake every
//! second (but still refresh their stale buckets), figures per simulated day
//! that add up to the totals, and a wall-clock limit that stops a run cleanly.

use std::time::Duration;

use peerchat_sim::{ChatConfig, ChurnModel, Return, SessionDistribution, SimConfig, run};

const MIN: Duration = Duration::from_secs(60);

#[test]
fn idle_nodes_sleep_between_deadlines_and_still_refresh() {
    let cfg = SimConfig {
        nodes: 60,
        seed: 4,
        lookups: 0,
        puts: 0,
        duration: Some(40 * MIN),
        ..SimConfig::default()
    };
    let r = run(&cfg, |_| {});
    assert!(r.formation.formed, "{r}");
    // The old core woke every second for its periodic work: 60 nodes over
    // 40 minutes of idling made at least 144,000 wake-ups.
    let per_node_second = r.network.wakeups as f64 / (60.0 * r.virtual_time_s);
    assert!(
        per_node_second < 0.25,
        "{per_node_second:.3} wake-ups per node and second:\n{r}"
    );
    // Buckets untouched for 15 minutes were refreshed with lookups.
    let find_nodes = r.rpcs_by_method.get("find_node").copied().unwrap_or(0);
    assert!(
        r.rpcs_per_node_lookup_phase >= 5.0 && find_nodes > 0,
        "no refresh while idle:\n{r}"
    );
}

#[test]
fn days_add_up_to_the_totals() {
    let cfg = SimConfig {
        nodes: 30,
        seed: 6,
        loss: 0.01,
        churn_model: ChurnModel::Measured {
            session_median: 30 * MIN,
            downtime_median: 30 * MIN,
            distribution: SessionDistribution::Weibull { shape: 0.5 },
            on_return: Return::Rejoin,
        },
        lookups: 60,
        puts: 0,
        duration: Some(26 * 60 * MIN),
        chat: Some(ChatConfig {
            users: 12,
            messages: 30,
            resolves: 60,
            handover_every: 30 * MIN,
            ..ChatConfig::default()
        }),
        ..SimConfig::default()
    };
    let r = run(&cfg, |_| {});
    let c = r.chat.as_ref().expect("a chat report");
    assert_eq!(r.days.len(), 2, "26 hours begin two days:\n{r}");
    assert_eq!(r.days.iter().map(|d| d.day).collect::<Vec<_>>(), [0, 1]);
    let sum = |f: fn(&peerchat_sim::DayReport) -> usize| r.days.iter().map(f).sum::<usize>();
    assert_eq!(
        sum(|d| d.lookups_judged),
        r.lookups.attempted - r.lookups.abandoned
    );
    assert_eq!(sum(|d| d.lookups_succeeded), r.lookups.succeeded);
    assert_eq!(
        sum(|d| d.resolves_judged),
        r.resolves.attempted - r.resolves.abandoned
    );
    assert_eq!(sum(|d| d.resolves_succeeded), r.resolves.succeeded);
    assert_eq!(sum(|d| d.messages_stored), c.stored);
    assert_eq!(sum(|d| d.eligible), c.eligible);
    assert_eq!(sum(|d| d.eligible_delivered), c.eligible_delivered);
    // Operations are spread over the whole run, so both days have some.
    assert!(r.days.iter().all(|d| d.lookups_judged > 0), "{r}");
    assert!(!r.wall_limit_hit);
}

#[test]
fn a_wall_limit_stops_the_run_and_says_so() {
    let cfg = SimConfig {
        nodes: 40,
        seed: 2,
        lookups: 20,
        puts: 0,
        duration: Some(600 * MIN),
        wall_limit: Some(Duration::ZERO),
        ..SimConfig::default()
    };
    let r = run(&cfg, |_| {});
    assert!(r.wall_limit_hit, "{r}");
    assert!(
        r.virtual_time_s < 600.0 * 60.0,
        "ran to the end: {} s",
        r.virtual_time_s
    );
    assert!(format!("{r}").contains("STOPPED"), "{r}");
}
