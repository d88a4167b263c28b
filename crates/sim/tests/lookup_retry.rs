//! Lookups under 1% datagram loss (the target of the reliability issue: at
//! least 99%). Before the core resent stalled requests, seed 9 found the
//! closest node in 97.4% of the lookups; with a stalled request sent a second
//! time, 98.4-98.6%: a lookup could still end while the resent answer of one of
//! its closest candidates was on its way. Now a stalled candidate among the k
//! closest is waited for one more request timeout before the lookup ends.

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
