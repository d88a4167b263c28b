//! Core issue (reported, not fixed here): a lookup never retries a request that
//! got no answer. With 1% datagram loss about 2% of the requests fail, and when
//! the failed one is to the node closest to the target, the lookup ends without
//! it although the nodes around the target all know it (seed 9: 96.4% of the
//! lookups find the closest node; 100% without loss). A single retry of a
//! timed-out request to one of the current `k` closest candidates would make a
//! miss need two losses in a row. Run with `cargo test -p peerchat-sim --release
//! -- --ignored`.

use peerchat_sim::{SimConfig, run};

#[test]
#[ignore = "core issue: lookups do not retry lost requests"]
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
