//! A lookup whose closest contacts are all dead (heavy churn) must still find
//! live nodes: the core seeds lookups with the 2k closest contacts of its
//! table, not just k, so it has live ones to start from.

use std::time::Duration;

use peerchat_sim::{ChurnModel, Return, SessionDistribution, SimConfig, run};

#[test]
fn no_empty_lookup_under_heavy_churn() {
    let seed = 12;
    let cfg = SimConfig {
        nodes: 200,
        seed,
        churn: 0.2,
        churn_model: ChurnModel::Sessions {
            mean_session: Duration::from_secs(10),
            distribution: SessionDistribution::Pareto { shape: 1.5 },
            on_return: Return::Replace,
        },
        lookups: 500,
        puts: 10,
        gets: 200,
        ..SimConfig::default()
    };
    let r = run(&cfg, |_| {});
    assert_eq!(
        r.lookups_empty, 0,
        "seed {seed}: {} lookups returned no node at all:\n{r}",
        r.lookups_empty
    );
}
