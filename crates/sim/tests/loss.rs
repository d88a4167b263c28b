//! Lookups and gets still work when 1% (and 5%) of the datagrams are lost.
//!
//! A lookup does not retry a request that got no answer, so a datagram lost to
//! or from the node closest to the target makes the lookup miss it: the strict
//! lookup success (see `SimReport`) drops by about twice the loss rate, while the
//! `k`-closest recall and the gets (any of `k` storers will do) barely move.
//! `repro_lookup_no_retry.rs` holds the stricter expectation.

use peerchat_sim::{SimConfig, run};

#[test]
fn one_and_five_percent_loss() {
    for (seed, loss, min_lookup) in [(7, 0.01, 0.95), (8, 0.05, 0.85)] {
        let cfg = SimConfig {
            nodes: 200,
            seed,
            loss,
            lookups: 500,
            puts: 10,
            gets: 200,
            ..SimConfig::default()
        };
        let r = run(&cfg, |_| {});
        assert!(
            r.formation.formed,
            "seed {seed}: the network did not form:\n{r}"
        );
        assert!(r.network.lost > 0, "seed {seed}: nothing was lost:\n{r}");
        assert!(
            r.lookups.success_rate >= min_lookup,
            "seed {seed}, loss {loss}: lookup success {:.4} < {min_lookup}:\n{r}",
            r.lookups.success_rate
        );
        assert!(
            r.closest_k_recall >= 0.9,
            "seed {seed}, loss {loss}: k-closest recall {:.4} < 0.9:\n{r}",
            r.closest_k_recall
        );
        assert_eq!(
            r.puts.succeeded, 10,
            "seed {seed}, loss {loss}: a put failed:\n{r}"
        );
        assert!(
            r.gets.success_rate >= 0.99,
            "seed {seed}, loss {loss}: get success {:.4} < 0.99:\n{r}",
            r.gets.success_rate
        );
    }
}
