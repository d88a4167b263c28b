//! `peerchat sim`: the deterministic simulator, from the command line.

use std::io::Write;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::Args;
use peerchat_sim::{ChatConfig, ChurnModel, Progress, SessionDistribution, SimConfig};

/// Options of `peerchat sim`.
#[derive(Args, Debug)]
pub(crate) struct SimArgs {
    /// Nodes in the simulated network.
    #[arg(long, default_value_t = 10_000)]
    nodes: usize,
    /// Fraction of nodes churned (offline, or replaced) during the lookup phase,
    /// 0 to 1 (models crash, rejoin and replace; weibull and lognormal take the
    /// fraction from the medians).
    #[arg(long, default_value_t = 0.0)]
    churn: f64,
    /// How nodes churn: crash (fail at once, for good), rejoin or replace
    /// (exponential sessions), weibull or lognormal (heavy-tailed sessions as
    /// measured in deployed DHTs; nodes come back).
    #[arg(long, default_value = "crash")]
    churn_model: String,
    /// Median online session (rejoin, replace, weibull, lognormal), e.g. 30m.
    #[arg(long, value_parser = parse_duration)]
    session_median: Option<Duration>,
    /// Median offline period (weibull, lognormal; default: the session median).
    #[arg(long, value_parser = parse_duration)]
    downtime_median: Option<Duration>,
    /// Weibull shape (below 1: heavy-tailed).
    #[arg(long, default_value_t = 0.5)]
    shape: f64,
    /// Log-normal sigma (standard deviation of the log of a length).
    #[arg(long, default_value_t = 1.5)]
    sigma: f64,
    /// Run the lookup phase (churn, operations, chat) for this long in virtual
    /// time, e.g. 24h or 2d; default: until the operations are done.
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Fraction of datagrams lost, 0 to 1.
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// The seed: the same seed gives the same run, datagram for datagram.
    #[arg(long)]
    seed: u64,
    /// Bucket size and replication.
    #[arg(long, default_value_t = peerchat_kad::DEFAULT_K, value_parser = crate::at_least_one)]
    k: usize,
    /// Lookup parallelism.
    #[arg(long, default_value_t = peerchat_kad::DEFAULT_ALPHA, value_parser = crate::at_least_one)]
    alpha: usize,
    /// find_node lookups from random live nodes.
    #[arg(long, default_value_t = 1000)]
    lookups: usize,
    /// BEP 44 immutable items put before the lookup phase.
    #[arg(long, default_value_t = 10)]
    puts: usize,
    /// BEP 44 immutable gets of those items.
    #[arg(long, default_value_t = 250)]
    gets: usize,
    /// Chat users (on the first nodes; 0: no chat layer). They publish presence,
    /// resolve each other and send messages to offline users through relays.
    #[arg(long, default_value_t = 0)]
    users: usize,
    /// Messages written, each to a user offline at the time.
    #[arg(long, default_value_t = 500)]
    messages: usize,
    /// Presence resolutions of online users.
    #[arg(long, default_value_t = 500)]
    resolves: usize,
    /// How long relays keep a message.
    #[arg(long, value_parser = parse_duration, default_value = "14d")]
    ttl: Duration,
    /// A relay looks each mailbox it holds up this often and hands copies to closer nodes.
    #[arg(long, value_parser = parse_duration, default_value = "10m")]
    handover_every: Duration,
    /// An online user fetches its mailbox this often (and at login).
    #[arg(long, value_parser = parse_duration, default_value = "10m")]
    fetch_every: Duration,
    /// An online user republishes its presence this often (and at login).
    #[arg(long, value_parser = parse_duration, default_value = "15m")]
    presence_every: Duration,
    /// A message counts as one whose recipient came back within the TTL when the
    /// recipient was then online this long in a row.
    #[arg(long, value_parser = parse_duration, default_value = "15m")]
    grace: Duration,
    /// Stop after this much wall-clock time and report on the virtual time
    /// simulated by then, e.g. 70m (the report says so; not reproducible).
    #[arg(long, value_parser = parse_duration)]
    wall_limit: Option<Duration>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

/// `500ms`, `90s`, `30m`, `24h`, `2d` (a bare number is seconds).
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("bad duration {s:?}: use e.g. 500ms, 90s, 30m, 24h or 2d"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86_400.0,
        _ => {
            return Err(format!(
                "bad duration unit {unit:?} in {s:?}: use ms, s, m, h or d"
            ));
        }
    };
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return Err(format!("duration {s:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn churn_model(a: &SimArgs) -> Result<ChurnModel> {
    let model: ChurnModel = a.churn_model.parse().map_err(anyhow::Error::msg)?;
    Ok(match model {
        ChurnModel::Crash => model,
        ChurnModel::Sessions {
            mean_session,
            distribution,
            on_return,
        } => ChurnModel::Sessions {
            mean_session: a
                .session_median
                .map(|m| m.mul_f64(distribution.mean_over_median()))
                .unwrap_or(mean_session),
            distribution,
            on_return,
        },
        ChurnModel::Measured {
            session_median,
            distribution,
            on_return,
            ..
        } => {
            let in_range = |x: f64| x > 0.0 && x <= 10.0;
            if !in_range(a.shape) || !in_range(a.sigma) {
                bail!("--shape and --sigma must be above 0 and at most 10");
            }
            let session = a.session_median.unwrap_or(session_median);
            ChurnModel::Measured {
                session_median: session,
                downtime_median: a.downtime_median.unwrap_or(session),
                distribution: match distribution {
                    SessionDistribution::Weibull { .. } => {
                        SessionDistribution::Weibull { shape: a.shape }
                    }
                    SessionDistribution::LogNormal { .. } => {
                        SessionDistribution::LogNormal { sigma: a.sigma }
                    }
                    d => d,
                },
                on_return,
            }
        }
    })
}

pub(crate) fn run(a: SimArgs) -> Result<()> {
    if !(0.0..=1.0).contains(&a.churn) || !(0.0..=1.0).contains(&a.loss) {
        bail!("--churn and --loss are fractions between 0 and 1");
    }
    if a.nodes < 2 {
        bail!("--nodes must be at least 2");
    }
    if a.session_median.is_some_and(|d| d.is_zero())
        || a.downtime_median.is_some_and(|d| d.is_zero())
    {
        bail!("--session-median and --downtime-median must be above zero");
    }
    let chat = (a.users > 0).then(|| ChatConfig {
        users: a.users,
        messages: a.messages,
        resolves: a.resolves,
        presence_every: a.presence_every.max(Duration::from_secs(1)),
        fetch_every: a.fetch_every.max(Duration::from_secs(1)),
        handover_every: a.handover_every.max(Duration::from_secs(1)),
        ttl: a.ttl,
        grace: a.grace,
    });
    let cfg = SimConfig {
        nodes: a.nodes,
        k: a.k.max(1),
        alpha: a.alpha.max(1),
        seed: a.seed,
        loss: a.loss,
        churn: a.churn,
        churn_model: churn_model(&a)?,
        lookups: a.lookups,
        puts: a.puts,
        gets: a.gets,
        duration: a.duration,
        wall_limit: a.wall_limit,
        chat,
        ..SimConfig::default()
    };
    let started = std::time::Instant::now();
    let mut last = std::time::Instant::now();
    let report = peerchat_sim::run(&cfg, |p: &Progress| {
        if last.elapsed().as_millis() >= 500 {
            last = std::time::Instant::now();
            eprint!(
                "\r{:?}: {} of {} (virtual {:.1} s, wall {:.0} s)   ",
                p.phase,
                p.done,
                p.total,
                p.virtual_time.as_secs_f64(),
                started.elapsed().as_secs_f64()
            );
            let _ = std::io::stderr().flush();
        }
    });
    eprintln!();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{report}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("3 weeks").is_err());
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("-1s").is_err());
    }
}
