//! A small network without churn or loss: lookups find the closest node, gets find the value.

use peerchat_sim::{SimConfig, run};

#[test]
fn two_hundred_nodes_find_the_closest_node() {
    for seed in [1, 2] {
        let cfg = SimConfig {
            nodes: 200,
            seed,
            lookups: 1000,
            puts: 10,
            gets: 200,
            ..SimConfig::default()
        };
        let r = run(&cfg, |_| {});
        assert!(
            r.formation.formed,
            "seed {seed}: the network did not form:\n{r}"
        );
        assert!(
            r.lookups.success_rate >= 0.999,
            "seed {seed}: lookup success {:.4} < 0.999:\n{r}",
            r.lookups.success_rate
        );
        assert!(
            r.closest_k_recall >= 0.99,
            "seed {seed}: k-closest recall {:.4} < 0.99:\n{r}",
            r.closest_k_recall
        );
        assert_eq!(r.puts.succeeded, 10, "seed {seed}: a put failed:\n{r}");
        assert!(
            r.stored_per_put >= cfg.k as f64 * 0.9,
            "seed {seed}: puts stored at too few nodes:\n{r}"
        );
        assert_eq!(r.gets.success_rate, 1.0, "seed {seed}: a get failed:\n{r}");
        assert!(r.lookups.hops_p99 <= 6, "seed {seed}: too many hops:\n{r}");
    }
}
