//! `peerchat bench dht`: N real DHT nodes on loopback in this process, side by side
//! with the same N nodes of the `mainline` crate.
//!
//! The method is the same for both implementations:
//!
//! 1. Read the process's resident memory and CPU time.
//! 2. Start N nodes on `127.0.0.1` (port 0), each bootstrapping only from the first
//!    one, started in quick batches (a join does not wait for the previous ones).
//! 3. Poll every node's count of live contacts every 20 ms until every node has at
//!    least `--min-contacts` (8), or `--form-timeout` passes. "Time to form" runs from
//!    the first join to that moment.
//! 4. Read the resident memory again: (after − before) / N is the memory per node.
//! 5. After `--settle` seconds (0 by default: the network has only just formed), the
//!    workload, one call at a time: `--rounds` times, put one immutable item from
//!    a random node, then get it from `--gets-per-round` random other nodes; then
//!    `--lookups` `find_node` lookups of random targets from random nodes.
//! 6. CPU time used by the process from step 2 to the end of step 5, / N.
//!
//! Besides the figures, the JSON output carries what explains them: the formation
//! curve, per-node counters (RPCs by method, timeouts), datagrams the kernel dropped
//! because a socket's receive buffer was full (from `/proc/net/udp`, at all nodes and
//! at the bootstrap node), and the gets missed round by round.
//!
//! [`run_dht`] is a plain (not `async`) function: it builds its own tokio runtime
//! (multi-threaded, `--workers` threads, 2 by default) for each implementation and
//! drops it before the next one, so that the second measurement starts from a
//! process where nothing of the first is running. Call it from outside any tokio
//! runtime (not inside `block_on`); called from inside one, it runs on a thread of
//! its own and blocks the caller until done.

mod dht;
mod mainline_rival;
pub(crate) mod registrations;

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

/// Arguments of `peerchat bench dht`.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct DhtBenchArgs {
    /// Number of nodes to start on 127.0.0.1.
    #[arg(long, default_value_t = 1000)]
    pub(crate) nodes: usize,
    /// Bucket size and replication of Peerchat's nodes (the `mainline` crate's is fixed at 20).
    #[arg(long, default_value_t = peerchat_kad::DEFAULT_K, value_parser = crate::at_least_one)]
    pub(crate) k: usize,
    /// Lookup parallelism of Peerchat's nodes (the `mainline` crate's is not configurable).
    #[arg(long, default_value_t = peerchat_kad::DEFAULT_ALPHA, value_parser = crate::at_least_one)]
    pub(crate) alpha: usize,
    /// Also run the same benchmark with the nodes of another implementation.
    #[arg(long, value_enum)]
    pub(crate) compare: Option<Rival>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub(crate) json: bool,
    /// `find_node` lookups of random targets from random nodes.
    #[arg(long, default_value_t = 200)]
    pub(crate) lookups: usize,
    /// Rounds of the BEP 44 workload: one immutable put, then the gets.
    #[arg(long, default_value_t = 10)]
    pub(crate) rounds: usize,
    /// Gets of each round's item, each from a random node other than the putter.
    #[arg(long, default_value_t = 20)]
    pub(crate) gets_per_round: usize,
    /// The network is formed when every node has at least this many live contacts.
    #[arg(long, default_value_t = 8)]
    pub(crate) min_contacts: usize,
    /// Give up waiting for the network to form after this many seconds (the
    /// workload then runs on the network as it is, and the report says so).
    #[arg(long, default_value_t = 60)]
    pub(crate) form_timeout: u64,
    /// Seconds to wait after the network formed before the workload starts (0: start
    /// at once, on a network that has only just formed).
    #[arg(long, default_value_t = 0.0)]
    pub(crate) settle: f64,
    /// Nodes started per batch while the network forms.
    #[arg(long, default_value_t = 50)]
    pub(crate) batch: usize,
    /// Pause between two batches of joins, in milliseconds.
    #[arg(long, default_value_t = 5)]
    pub(crate) batch_interval_ms: u64,
    /// Queries per second a Peerchat node serves to one IP address (0: no limit).
    /// Every benchmark node shares 127.0.0.1, so the production limit would throttle
    /// the bootstrap node, which real joiners from distinct addresses never hit; the
    /// `mainline` crate has no such limit.
    #[arg(long, default_value_t = 0)]
    pub(crate) per_ip_limit: u32,
    /// Seed of the workload's random choices (and of Peerchat's node ids); random if absent.
    #[arg(long)]
    pub(crate) seed: Option<u64>,
    /// Worker threads of the tokio runtime.
    #[arg(long, default_value_t = 2)]
    pub(crate) workers: usize,
}

/// Another DHT implementation to compare with.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Rival {
    /// The `mainline` crate (v8), one OS thread per node.
    Mainline,
}

/// Latency figures in milliseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct Latency {
    /// Calls measured.
    pub(crate) count: usize,
    /// Median.
    pub(crate) p50_ms: Option<f64>,
    /// 99th percentile.
    pub(crate) p99_ms: Option<f64>,
    /// Slowest.
    pub(crate) max_ms: Option<f64>,
}

impl Latency {
    pub(crate) fn of(samples: &[Duration]) -> Latency {
        let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        Latency {
            count: ms.len(),
            p50_ms: percentile(&ms, 50.0),
            p99_ms: percentile(&ms, 99.0),
            max_ms: ms.last().copied(),
        }
    }
}

/// Hop counts of finished queries.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct Hops {
    /// Median.
    pub(crate) p50: Option<f64>,
    /// 99th percentile.
    pub(crate) p99: Option<f64>,
}

impl Hops {
    pub(crate) fn of(samples: &[u32]) -> Hops {
        let mut h: Vec<f64> = samples.iter().map(|&h| f64::from(h)).collect();
        h.sort_by(f64::total_cmp);
        Hops {
            p50: percentile(&h, 50.0),
            p99: percentile(&h, 99.0),
        }
    }
}

/// The figures of one implementation.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct DhtBenchResult {
    /// Which implementation.
    pub(crate) implementation: String,
    /// Nodes started.
    pub(crate) nodes: usize,
    /// Bucket size.
    pub(crate) k: usize,
    /// Lookup parallelism (`None`: not exposed by the implementation).
    pub(crate) alpha: Option<usize>,
    /// Seconds from the first join until the last node was started.
    pub(crate) start_seconds: f64,
    /// Whether every node reached `min_contacts` live contacts before the timeout.
    pub(crate) formed: bool,
    /// Seconds from the first join until every node had `min_contacts` contacts.
    pub(crate) form_seconds: Option<f64>,
    /// The formation timeout, seconds.
    pub(crate) form_timeout_seconds: f64,
    /// The threshold of live contacts.
    pub(crate) min_contacts: usize,
    /// Nodes below the threshold when formation ended (0 when formed).
    pub(crate) nodes_below_min: usize,
    /// Fewest contacts of a node when formation ended.
    pub(crate) contacts_min: usize,
    /// Median contacts of a node when formation ended.
    pub(crate) contacts_p50: usize,
    /// Seconds until 90% of the nodes had `min_contacts` contacts.
    pub(crate) form90_seconds: Option<f64>,
    /// Nodes whose bootstrap call reported a failure (Peerchat only).
    pub(crate) bootstrap_failures: usize,
    /// `find_node` lookups of random targets.
    pub(crate) lookup: Latency,
    /// Hops of those lookups (`None`: not exposed by the implementation).
    pub(crate) lookup_hops: Option<Hops>,
    /// BEP 44 immutable gets.
    pub(crate) get: Latency,
    /// Hops of the gets (`None`: not exposed).
    pub(crate) get_hops: Option<Hops>,
    /// BEP 44 immutable puts.
    pub(crate) put: Latency,
    /// Puts that stored the item on at least one node.
    pub(crate) puts_ok: usize,
    /// Median number of nodes that stored a put (`None`: not exposed).
    pub(crate) put_stored_p50: Option<f64>,
    /// Gets that returned the right value.
    pub(crate) gets_ok: usize,
    /// Gets that missed the value, round by round (one put per round).
    pub(crate) get_misses_by_round: Vec<usize>,
    /// `gets_ok / get.count`.
    pub(crate) success_rate: f64,
    /// Queries sent per node over the whole run (`None`: not exposed).
    pub(crate) rpcs_per_node: Option<f64>,
    /// Queries sent per node while the network formed (`None`: not exposed).
    pub(crate) rpcs_per_node_forming: Option<f64>,
    /// Queries sent per node over the whole run, by method.
    pub(crate) rpcs_per_node_by_method: Option<BTreeMap<String, f64>>,
    /// Other counters per node over the whole run (timeouts, drops; `None`: not exposed).
    pub(crate) counters_per_node: Option<BTreeMap<String, f64>>,
    /// Nodes below `min_contacts`, sampled about every 250 ms: (seconds, nodes).
    pub(crate) formation_trace: Vec<(f64, usize)>,
    /// Datagrams dropped by full socket receive buffers while the network formed:
    /// at all nodes, and at the bootstrap node (`None`: `/proc/net/udp` unreadable).
    pub(crate) udp_drops_forming: Option<u64>,
    /// Of which at the bootstrap node.
    pub(crate) udp_drops_forming_bootstrap_node: Option<u64>,
    /// Queries the bootstrap node received while the network formed (`None`: not exposed).
    pub(crate) bootstrap_node_queries_forming: Option<u64>,
    /// Datagrams dropped by full receive buffers over the whole run.
    pub(crate) udp_drops: Option<u64>,
    /// Resident memory of the process before the first node started, bytes.
    pub(crate) rss_before_bytes: u64,
    /// Resident memory of the process once formed (or at the timeout), bytes.
    pub(crate) rss_formed_bytes: u64,
    /// `(rss_formed - rss_before) / nodes`, bytes.
    pub(crate) rss_per_node_bytes: f64,
    /// Process CPU seconds from the first join to the end of the workload.
    pub(crate) cpu_seconds: f64,
    /// Process CPU seconds spent while the network formed.
    pub(crate) cpu_seconds_forming: f64,
    /// `cpu_seconds / nodes`.
    pub(crate) cpu_seconds_per_node: f64,
    /// Wall-clock seconds from the first join to the end of the workload.
    pub(crate) wall_seconds: f64,
    /// The machine's 1-minute load average when this run started (other processes
    /// competing for the CPU skew every figure).
    pub(crate) loadavg_before: Option<f64>,
}

/// The whole report.
#[derive(Debug, Serialize)]
struct Report {
    seed: u64,
    nodes: usize,
    workers: usize,
    peerchat: DhtBenchResult,
    /// Resident memory left in the process after Peerchat's nodes were all shut down.
    rss_after_peerchat_shutdown_bytes: u64,
    mainline: Option<DhtBenchResult>,
    /// Peerchat's figure against mainline's, as "N x faster" and the like.
    ratios: Option<Vec<(String, String)>>,
}

/// Runs `peerchat bench dht` and prints the report on stdout (progress on stderr).
///
/// Builds its own runtimes. Best called outside any runtime; called from inside
/// one, it runs on a thread of its own (and blocks the caller until done).
pub(crate) fn run_dht(args: DhtBenchArgs) -> anyhow::Result<()> {
    if tokio::runtime::Handle::try_current().is_ok() {
        return std::thread::scope(|s| {
            s.spawn(|| run_dht(args))
                .join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("the benchmark thread panicked")))
        });
    }
    anyhow::ensure!(args.nodes >= 2, "--nodes must be at least 2");
    anyhow::ensure!(args.k >= 1, "--k must be at least 1");
    anyhow::ensure!(args.alpha >= 1, "--alpha must be at least 1");
    anyhow::ensure!(args.workers >= 1, "--workers must be at least 1");
    anyhow::ensure!(
        (0.0..=3600.0).contains(&args.settle),
        "--settle must be between 0 and 3600 seconds"
    );
    if let Some(limit) = open_files_limit() {
        // One socket per node, plus the runtime's and the process's own descriptors.
        let needed = args.nodes as u64 + 64;
        anyhow::ensure!(
            needed <= limit,
            "{} nodes need about {needed} open files but the limit is {limit}: \
             raise it with `ulimit -n {needed}` or use fewer --nodes",
            args.nodes
        );
    }
    let seed = args.seed.unwrap_or_else(rand::random);
    let progress = Progress::new(!args.json);
    progress.line(&format!(
        "bench dht: {} nodes on 127.0.0.1, seed {seed} (--seed {seed} repeats the choices)",
        args.nodes
    ));

    let ours = {
        let rt = runtime(args.workers)?;
        let r = rt.block_on(dht::run(&args, seed, &progress));
        // Dropping the runtime ends every task that is left, and joins its workers.
        rt.shutdown_timeout(Duration::from_secs(5));
        r?
    };
    // Let the allocator and the kernel settle before the next measurement.
    std::thread::sleep(Duration::from_millis(500));
    let rss_after = rss_bytes().unwrap_or(0);

    let mainline = match args.compare {
        None => None,
        Some(Rival::Mainline) => {
            let rt = runtime(args.workers)?;
            let r = mainline_rival::run(&rt, &args, seed, &progress);
            rt.shutdown_timeout(Duration::from_secs(5));
            Some(r?)
        }
    };
    progress.clear();

    let ratios = mainline.as_ref().map(|m| ratios(&ours, m));
    let report = Report {
        seed,
        nodes: args.nodes,
        workers: args.workers,
        peerchat: ours,
        rss_after_peerchat_shutdown_bytes: rss_after,
        mainline,
        ratios,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", table(&report));
    }
    Ok(())
}

fn runtime(workers: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")
}

// ----- measurements ----------------------------------------------------------

/// The soft limit of open files of this process (`/proc/self/limits`).
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files")
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The 1-minute load average of the machine (`/proc/loadavg`).
pub(crate) fn loadavg() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Nearest-rank percentile of sorted samples.
pub(crate) fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

/// Resident memory of this process (`VmRSS` of `/proc/self/status`), bytes.
pub(crate) fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// CPU time (user + system) used by every thread of this process so far, seconds,
/// from `/proc/self/stat` (in clock ticks of `USER_HZ`, which Linux fixes at 100).
pub(crate) fn cpu_seconds() -> Option<f64> {
    const USER_HZ: f64 = 100.0;
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces and parentheses: skip past its end.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); utime and stime are fields 14 and 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / USER_HZ)
}

/// Datagrams the kernel dropped because a socket's receive buffer was full, from
/// `/proc/net/udp` (IPv4, this network namespace): (sum over the sockets bound to
/// `ports` on 127.0.0.1, the count of the socket bound to `ports[0]`).
pub(crate) fn udp_drops(ports: &[u16]) -> Option<(u64, u64)> {
    let table = std::fs::read_to_string("/proc/net/udp").ok()?;
    let wanted: std::collections::HashSet<u16> = ports.iter().copied().collect();
    let first = ports.first().copied();
    let (mut total, mut at_first) = (0u64, 0u64);
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(local), Some(drops)) = (f.get(1), f.last()) else {
            continue;
        };
        let Some((ip, port)) = local.split_once(':') else {
            continue;
        };
        // 127.0.0.1 in the kernel's (little-endian here) hex.
        if ip != "0100007F" {
            continue;
        }
        let (Ok(port), Ok(drops)) = (u16::from_str_radix(port, 16), drops.parse::<u64>()) else {
            continue;
        };
        if wanted.contains(&port) {
            total += drops;
            if Some(port) == first {
                at_first += drops;
            }
        }
    }
    Some((total, at_first))
}

/// What the formation poll saw last.
#[derive(Clone, Debug, Default)]
pub(crate) struct Formation {
    pub(crate) trace: Vec<(f64, usize)>,
    pub(crate) formed_after: Option<Duration>,
    pub(crate) ninety_after: Option<Duration>,
    pub(crate) below: usize,
    pub(crate) min: usize,
    pub(crate) p50: usize,
}

impl Formation {
    /// Records one poll of every node's contact count, `elapsed` after the first join.
    /// Returns whether every node has `min_contacts`.
    pub(crate) fn observe(
        &mut self,
        counts: &mut [usize],
        min_contacts: usize,
        elapsed: Duration,
    ) -> bool {
        counts.sort_unstable();
        let below = counts.iter().take_while(|&&c| c < min_contacts).count();
        self.below = below;
        self.min = counts.first().copied().unwrap_or(0);
        self.p50 = counts.get(counts.len() / 2).copied().unwrap_or(0);
        let secs = elapsed.as_secs_f64();
        if below == 0 || self.trace.last().is_none_or(|(t, _)| secs - t >= 0.25) {
            self.trace.push(((secs * 1000.0).round() / 1000.0, below));
        }
        if self.ninety_after.is_none() && below * 10 <= counts.len() {
            self.ninety_after = Some(elapsed);
        }
        if below == 0 {
            self.formed_after = Some(elapsed);
            true
        } else {
            false
        }
    }
}

// ----- progress on stderr ----------------------------------------------------

/// A one-line progress display on stderr (rewritten in place on a terminal).
pub(crate) struct Progress {
    enabled: bool,
    tty: bool,
    last: std::sync::Mutex<Option<Instant>>,
}

impl Progress {
    pub(crate) fn new(enabled: bool) -> Progress {
        Progress {
            enabled,
            tty: std::io::stderr().is_terminal(),
            last: std::sync::Mutex::new(None),
        }
    }

    /// A transient status, shown at most 10 times a second and only on a terminal.
    pub(crate) fn update(&self, msg: &str) {
        if !self.enabled || !self.tty {
            return;
        }
        let Ok(mut last) = self.last.lock() else {
            return;
        };
        if last.is_some_and(|t| t.elapsed() < Duration::from_millis(100)) {
            return;
        }
        *last = Some(Instant::now());
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[K{msg}");
        let _ = err.flush();
    }

    /// A line that stays (a phase starting or ending).
    pub(crate) fn line(&self, msg: &str) {
        if !self.enabled {
            return;
        }
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[K");
        }
        let _ = writeln!(err, "{msg}");
    }

    pub(crate) fn clear(&self) {
        if self.enabled && self.tty {
            let _ = write!(std::io::stderr(), "\r\x1b[K");
        }
    }
}

// ----- the report ------------------------------------------------------------

fn ms(v: Option<f64>) -> String {
    match v {
        None => "n/a".into(),
        Some(v) if v < 10.0 => format!("{v:.3}"),
        Some(v) => format!("{v:.1}"),
    }
}

fn hops(h: &Option<Hops>) -> String {
    match h {
        Some(Hops {
            p50: Some(a),
            p99: Some(b),
        }) => format!("{a} / {b}"),
        _ => "n/a".into(),
    }
}

fn kib(bytes: f64) -> String {
    format!("{:.1} kB", bytes / 1000.0)
}

fn formation(r: &DhtBenchResult) -> String {
    match r.form_seconds {
        Some(s) => format!("{s:.2} s"),
        None => format!(
            "not formed: {} of {} nodes have < {} contacts after {:.0} s",
            r.nodes_below_min, r.nodes, r.min_contacts, r.form_timeout_seconds
        ),
    }
}

fn columns(r: &DhtBenchResult) -> Vec<(&'static str, String)> {
    vec![
        (
            "time to start all nodes",
            format!("{:.2} s", r.start_seconds),
        ),
        ("time to form (all >= min contacts)", formation(r)),
        (
            "time until 90% have min contacts",
            r.form90_seconds
                .map_or("n/a".into(), |s| format!("{s:.2} s")),
        ),
        (
            "contacts per node: min / p50",
            format!("{} / {}", r.contacts_min, r.contacts_p50),
        ),
        (
            "lookup p50 / p99 (ms)",
            format!("{} / {}", ms(r.lookup.p50_ms), ms(r.lookup.p99_ms)),
        ),
        ("lookup hops p50 / p99", hops(&r.lookup_hops)),
        (
            "get p50 / p99 (ms)",
            format!("{} / {}", ms(r.get.p50_ms), ms(r.get.p99_ms)),
        ),
        ("get hops p50 / p99", hops(&r.get_hops)),
        (
            "put p50 (ms), puts stored",
            format!("{}, {} of {}", ms(r.put.p50_ms), r.puts_ok, r.put.count),
        ),
        (
            "success (get: right value)",
            format!(
                "{:.2}% ({} of {})",
                r.success_rate * 100.0,
                r.gets_ok,
                r.get.count
            ),
        ),
        (
            "RPCs sent per node (forming / all)",
            match (r.rpcs_per_node_forming, r.rpcs_per_node) {
                (Some(a), Some(b)) => format!("{a:.1} / {b:.1}"),
                _ => "n/a".into(),
            },
        ),
        (
            "datagrams dropped, rcvbuf full",
            match (
                r.udp_drops_forming,
                r.udp_drops_forming_bootstrap_node,
                r.udp_drops,
            ) {
                (Some(f), Some(b), Some(a)) => {
                    format!("{f} forming ({b} at node 0), {a} in all")
                }
                _ => "n/a".into(),
            },
        ),
        ("resident memory per node", kib(r.rss_per_node_bytes)),
        (
            "CPU seconds per node",
            format!("{:.5}", r.cpu_seconds_per_node),
        ),
        (
            "CPU seconds in all (forming)",
            format!("{:.2} ({:.2})", r.cpu_seconds, r.cpu_seconds_forming),
        ),
    ]
}

fn table(report: &Report) -> String {
    let ours = columns(&report.peerchat);
    let theirs = report.mainline.as_ref().map(columns);
    let mut out = String::new();
    let p = &report.peerchat;
    out.push_str(&format!(
        "bench dht: {} nodes on 127.0.0.1, one process, {} tokio workers, seed {}\n",
        report.nodes, report.workers, report.seed
    ));
    out.push_str(&format!(
        "peerchat: k={} alpha={}; {} rounds of 1 put + gets, {} lookups\n",
        p.k,
        p.alpha.unwrap_or(0),
        p.put.count,
        p.lookup.count
    ));
    if let Some(l) = p.loadavg_before {
        out.push_str(&format!(
            "load average before the run: {l:.2} on {} CPUs\n",
            std::thread::available_parallelism().map_or(0, |n| n.get())
        ));
    }
    out.push('\n');
    let label_w = ours.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
    let ours_w = ours.iter().map(|(_, v)| v.len()).max().unwrap_or(0);
    match &theirs {
        None => {
            out.push_str(&format!("{:label_w$}  peerchat\n", ""));
            for (l, v) in &ours {
                out.push_str(&format!("{l:label_w$}  {v}\n"));
            }
        }
        Some(theirs) => {
            out.push_str(&format!(
                "{:label_w$}  {:ours_w$}  mainline {}\n",
                "", "peerchat", MAINLINE_VERSION
            ));
            for ((l, a), (_, b)) in ours.iter().zip(theirs) {
                out.push_str(&format!("{l:label_w$}  {a:ours_w$}  {b}\n"));
            }
        }
    }
    if let Some(r) = &report.ratios {
        out.push_str("\npeerchat against mainline:\n");
        for (l, v) in r {
            out.push_str(&format!("  {l:28} {v}\n"));
        }
    }
    if let Some(m) = &report.mainline {
        out.push_str(&format!(
            "\nnotes: mainline's memory is measured after peerchat's nodes were shut down \
             ({} resident then, {} before peerchat started); the allocator may reuse \
             what peerchat freed, which can only make mainline look smaller.\n",
            kib(report.rss_after_peerchat_shutdown_bytes as f64),
            kib(report.peerchat.rss_before_bytes as f64),
        ));
        if m.lookup_hops.is_none() {
            out.push_str(
                "       the mainline crate exposes neither hop counts nor RPC counters (n/a).\n",
            );
        }
    }
    out
}

pub(crate) const MAINLINE_VERSION: &str = "8.0.1";

fn faster(ours: Option<f64>, theirs: Option<f64>) -> String {
    match (ours, theirs) {
        (Some(a), Some(b)) if a > 0.0 && b > 0.0 => {
            if a <= b {
                format!("{:.1}x faster", b / a)
            } else {
                format!("{:.1}x slower", a / b)
            }
        }
        _ => "n/a".into(),
    }
}

fn ratio_words(ours: f64, theirs: f64, less: &str, more: &str) -> String {
    if ours <= 0.0 || theirs <= 0.0 {
        return "n/a".into();
    }
    if ours <= theirs {
        format!("{:.1}x {less}", theirs / ours)
    } else {
        format!("{:.1}x {more}", ours / theirs)
    }
}

fn ratios(ours: &DhtBenchResult, theirs: &DhtBenchResult) -> Vec<(String, String)> {
    let form = match (ours.form_seconds, theirs.form_seconds) {
        (Some(a), Some(b)) => faster(Some(a), Some(b)),
        (Some(_), None) => "peerchat formed, mainline did not".into(),
        (None, Some(_)) => "mainline formed, peerchat did not".into(),
        (None, None) => "neither formed".into(),
    };
    let success = format!(
        "{:.2}% vs {:.2}%",
        ours.success_rate * 100.0,
        theirs.success_rate * 100.0
    );
    let memory = ratio_words(
        ours.rss_per_node_bytes,
        theirs.rss_per_node_bytes,
        "smaller",
        "larger",
    );
    let cpu = ratio_words(
        ours.cpu_seconds_per_node,
        theirs.cpu_seconds_per_node,
        "less",
        "more",
    );
    [
        ("time to form", form),
        (
            "lookup p50",
            faster(ours.lookup.p50_ms, theirs.lookup.p50_ms),
        ),
        (
            "lookup p99",
            faster(ours.lookup.p99_ms, theirs.lookup.p99_ms),
        ),
        ("get p50", faster(ours.get.p50_ms, theirs.get.p50_ms)),
        ("get p99", faster(ours.get.p99_ms, theirs.get.p99_ms)),
        ("put p50", faster(ours.put.p50_ms, theirs.put.p50_ms)),
        ("success rate", success),
        ("memory per node", memory),
        ("CPU per node", cpu),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&v, 100.0), Some(100.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn proc_readings_are_plausible() {
        let rss = rss_bytes().unwrap_or(0);
        assert!(rss > 100_000, "rss {rss}");
        assert!(cpu_seconds().is_some());
        assert!(open_files_limit().is_some_and(|l| l > 0));
    }

    #[test]
    fn ratios_say_which_way() {
        assert_eq!(faster(Some(1.0), Some(40.0)), "40.0x faster");
        assert_eq!(faster(Some(2.0), Some(1.0)), "2.0x slower");
        assert_eq!(faster(None, Some(1.0)), "n/a");
        assert_eq!(ratio_words(10.0, 50.0, "smaller", "larger"), "5.0x smaller");
    }

    #[test]
    fn formation_counts_nodes_below() {
        let mut f = Formation::default();
        let mut c = vec![9, 3, 12, 8];
        assert!(!f.observe(&mut c, 8, Duration::from_secs(1)));
        assert_eq!((f.below, f.min), (1, 3));
        let mut c = vec![9, 8, 12, 8];
        assert!(f.observe(&mut c, 8, Duration::from_secs(2)));
        assert_eq!(f.formed_after, Some(Duration::from_secs(2)));
    }
}
