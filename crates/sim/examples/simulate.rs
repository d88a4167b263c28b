//! Runs one simulation from the command line, for profiling the simulator:
//! `cargo run --release -p peerchat-sim --example simulate -- nodes=10000 churn=0.2 seed=7 [json]`
//! (keys: any of nodes, k, alpha, seed, loss, churn, model, lookups, puts, gets, join_ms,
//! and after `model=rejoin|replace`: session_s, pareto (the shape)).

use std::time::Duration;

use peerchat_sim::{ChurnModel, SessionDistribution, SimConfig, run};

fn main() {
    let mut cfg = SimConfig::default();
    let mut json = false;
    for arg in std::env::args().skip(1) {
        if arg == "json" {
            json = true;
            continue;
        }
        let (key, value) = arg.split_once('=').expect("arguments are key=value");
        let num = || value.parse::<f64>().expect("a number");
        match key {
            "nodes" => cfg.nodes = num() as usize,
            "k" => cfg.k = num() as usize,
            "alpha" => cfg.alpha = num() as usize,
            "seed" => cfg.seed = num() as u64,
            "loss" => cfg.loss = num(),
            "churn" => cfg.churn = num(),
            "model" => cfg.churn_model = value.parse().expect("crash, rejoin or replace"),
            "lookups" => cfg.lookups = num() as usize,
            "puts" => cfg.puts = num() as usize,
            "gets" => cfg.gets = num() as usize,
            "join_ms" => cfg.join_interval = Duration::from_secs_f64(num() / 1000.0),
            "session_s" | "pareto" => {
                if let ChurnModel::Sessions {
                    mean_session,
                    distribution,
                    ..
                } = &mut cfg.churn_model
                {
                    if key == "session_s" {
                        *mean_session = Duration::from_secs_f64(num());
                    } else {
                        *distribution = SessionDistribution::Pareto { shape: num() };
                    }
                }
            }
            _ => panic!("unknown key {key}"),
        }
    }
    let report = run(&cfg, |p| {
        if p.virtual_time.as_millis() % 10_000 == 0 || p.done == p.total {
            eprintln!(
                "{:>8.1} s  {:<9} {}/{}",
                p.virtual_time.as_secs_f64(),
                p.phase,
                p.done,
                p.total
            );
        }
    });
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("serializable")
        );
    } else {
        println!("{report}");
    }
}
