//! A lookup must survive lost datagrams: with 1% loss, a request to the node
//! closest to the target that got lost would make the lookup miss it (seed 9:
//! 97.4% of the lookups found the closest node before the fix). The core now
//! sends a stalled lookup request a second time, so a miss needs two losses in
//! a row.

use peerchat_sim::{SimConfig, run};

#[test]
fn lookups_survive_one_percent_loss() {
    let seed = 9;
    let cfg = SimConfig {
        nodes: 200,
        seed,
        loss: 0.01,
        lookups: 500,
        puts: 10,
        gets: 200,
        ..SimConfig::default()
    };
    let r = run(&cfg, |_| {});
    assert!(
        r.lookups.success_rate >= 0.99,
        "seed {seed}: lookup success {:.4} < 0.99 under 1% loss:\n{r}",
        r.lookups.success_rate
    );
}
