//! The benchmark with Peerchat's own nodes (`peerchat-node` driving `peerchat-kad`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use peerchat_kad::stats::METHODS;
use peerchat_kad::{NodeId, Stats, Value};
use peerchat_node::{NodeConfig, NodeHandle, spawn};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::task::JoinHandle;

use super::{DhtBenchArgs, DhtBenchResult, Formation, Hops, Latency, Progress};

/// How often the formation poll reads every node's count of live contacts.
const POLL_EVERY: Duration = Duration::from_millis(20);

/// Runs the benchmark with `args.nodes` Peerchat nodes; shuts them all down before returning.
pub(super) async fn run(
    args: &DhtBenchArgs,
    seed: u64,
    progress: &Progress,
) -> anyhow::Result<DhtBenchResult> {
    let n = args.nodes;
    let local: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 0));
    let config = |i: usize| {
        let mut cfg = NodeConfig::new(local);
        // Distinct, reproducible node ids and RNG streams.
        cfg.seed = Some(
            seed.wrapping_mul(0x9e37_79b9_7f4a_7c15)
                .wrapping_add(i as u64),
        );
        cfg.dht.k = args.k;
        cfg.dht.alpha = args.alpha;
        cfg.dht.per_ip_queries_per_sec = args.per_ip_limit;
        cfg
    };

    let loadavg_before = super::loadavg();
    let rss_before = super::rss_bytes().context("cannot read /proc/self/status")?;
    let cpu_before = super::cpu_seconds().context("cannot read /proc/self/stat")?;
    progress.line(&format!("[peerchat] starting {n} nodes"));

    // ----- formation ---------------------------------------------------------
    let t0 = Instant::now();
    let mut handles: Vec<NodeHandle> = Vec::with_capacity(n);
    let mut tasks: Vec<JoinHandle<()>> = Vec::with_capacity(n);
    // Joins run detached (a finished task frees its memory at once, so the bench's
    // own bookkeeping is not counted as node memory); failures are counted here.
    let failures = Arc::new(AtomicUsize::new(0));
    let (first, task) = spawn(config(0)).await.context(SPAWN_HINT)?;
    let bootstrap = [first.local_addr()];
    handles.push(first);
    tasks.push(task);
    for i in 1..n {
        let (h, task) = spawn(config(i))
            .await
            .with_context(|| format!("node {i}: {SPAWN_HINT}"))?;
        let joiner = h.clone();
        let failures = failures.clone();
        tokio::spawn(async move {
            if joiner.bootstrap(&bootstrap).await.is_err() {
                failures.fetch_add(1, Ordering::Relaxed);
            }
        });
        handles.push(h);
        tasks.push(task);
        if i % args.batch.max(1) == 0 {
            progress.update(&format!("[peerchat] started {i}/{n} nodes"));
            tokio::time::sleep(Duration::from_millis(args.batch_interval_ms)).await;
        }
    }
    let start_seconds = t0.elapsed().as_secs_f64();

    let timeout = Duration::from_secs(args.form_timeout);
    let mut formation = Formation::default();
    let mut counts = vec![0usize; n];
    loop {
        for (c, h) in counts.iter_mut().zip(&handles) {
            *c = h.live_contacts();
        }
        let elapsed = t0.elapsed();
        if formation.observe(&mut counts, args.min_contacts, elapsed) || elapsed >= timeout {
            break;
        }
        progress.update(&format!(
            "[peerchat] forming: {} of {n} nodes have < {} contacts, {:.1} s",
            formation.below,
            args.min_contacts,
            elapsed.as_secs_f64()
        ));
        tokio::time::sleep(POLL_EVERY).await;
    }
    let rss_formed = super::rss_bytes().unwrap_or(rss_before);
    let cpu_formed = super::cpu_seconds().unwrap_or(cpu_before);
    progress.line(&match formation.formed_after {
        Some(t) => format!("[peerchat] formed in {:.2} s", t.as_secs_f64()),
        None => format!(
            "[peerchat] not formed: {} of {n} nodes have < {} contacts after {} s",
            formation.below, args.min_contacts, args.form_timeout
        ),
    });
    // A bootstrap still running is not a failure (yet).
    let bootstrap_failures = failures.load(Ordering::Relaxed);
    let ports: Vec<u16> = handles.iter().map(|h| h.local_addr().port()).collect();
    let drops_forming = super::udp_drops(&ports);
    let sent_forming = sent_total(&handles).await;
    let node0_queries = match handles[0].snapshot().await {
        Ok(s) => Some(s.stats.queries_received),
        Err(_) => None,
    };

    // ----- workload ----------------------------------------------------------
    if args.settle > 0.0 {
        tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let mut put_times = Vec::new();
    let mut put_stored = Vec::new();
    let mut puts_ok = 0;
    let mut get_times = Vec::new();
    let mut get_hops = Vec::new();
    let mut gets_ok = 0;
    let mut misses = vec![0; args.rounds];
    let total_gets = args.rounds * args.gets_per_round;
    for (round, missed) in misses.iter_mut().enumerate() {
        let putter = rng.random_range(0..n);
        let value = Value::Bytes(format!("peerchat bench {seed} round {round}").into_bytes());
        let target = peerchat_kad::bep44::immutable_target(&value);
        let t = Instant::now();
        let put = handles[putter].put_immutable(value.clone()).await;
        put_times.push(t.elapsed());
        if let Ok((_, stored, _)) = put {
            put_stored.push(stored as u32);
            if stored > 0 {
                puts_ok += 1;
            }
        }
        for _ in 0..args.gets_per_round {
            let getter = other_than(&mut rng, n, putter);
            let t = Instant::now();
            let got = handles[getter].get_immutable(target).await;
            get_times.push(t.elapsed());
            match got {
                Ok((v, stats)) if v.as_ref() == Some(&value) => {
                    get_hops.push(stats.hops);
                    gets_ok += 1;
                }
                Ok((_, stats)) => {
                    get_hops.push(stats.hops);
                    *missed += 1;
                }
                Err(_) => *missed += 1,
            }
            progress.update(&format!(
                "[peerchat] gets: {}/{total_gets}",
                get_times.len()
            ));
        }
    }
    let mut lookup_times = Vec::new();
    let mut lookup_hops = Vec::new();
    for i in 0..args.lookups {
        let from = rng.random_range(0..n);
        let target = NodeId::random(&mut rng);
        let t = Instant::now();
        let r = handles[from].find_node(target).await;
        lookup_times.push(t.elapsed());
        if let Ok((_, stats)) = r {
            lookup_hops.push(stats.hops);
        }
        progress.update(&format!("[peerchat] lookups: {}/{}", i + 1, args.lookups));
    }
    let wall_seconds = t0.elapsed().as_secs_f64();
    let cpu_end = super::cpu_seconds().unwrap_or(cpu_formed);
    let sent_all = sent_total(&handles).await;
    let drops_all = super::udp_drops(&ports);

    // ----- shutdown ----------------------------------------------------------
    progress.line(&format!("[peerchat] shutting {n} nodes down"));
    for h in &handles {
        h.shutdown().await;
    }
    drop(handles);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }

    let per_node = |x: u64| x as f64 / n as f64;
    let by_method: BTreeMap<String, f64> = METHODS
        .iter()
        .zip(sent_all.sent)
        .filter(|(_, c)| *c > 0)
        .map(|(m, c)| (m.to_string(), per_node(c)))
        .collect();
    let cpu_seconds = cpu_end - cpu_before;
    Ok(DhtBenchResult {
        implementation: "peerchat".into(),
        nodes: n,
        k: args.k,
        alpha: Some(args.alpha),
        start_seconds,
        formed: formation.formed_after.is_some(),
        form_seconds: formation.formed_after.map(|d| d.as_secs_f64()),
        form_timeout_seconds: timeout.as_secs_f64(),
        min_contacts: args.min_contacts,
        nodes_below_min: formation.below,
        contacts_min: formation.min,
        contacts_p50: formation.p50,
        form90_seconds: formation.ninety_after.map(|d| d.as_secs_f64()),
        bootstrap_failures,
        lookup: Latency::of(&lookup_times),
        lookup_hops: Some(Hops::of(&lookup_hops)),
        get: Latency::of(&get_times),
        get_hops: Some(Hops::of(&get_hops)),
        put: Latency::of(&put_times),
        puts_ok,
        put_stored_p50: Hops::of(&put_stored).p50,
        gets_ok,
        get_misses_by_round: misses,
        success_rate: if total_gets == 0 {
            0.0
        } else {
            gets_ok as f64 / total_gets as f64
        },
        rpcs_per_node: Some(per_node(sent_all.total_sent())),
        rpcs_per_node_forming: Some(per_node(sent_forming.total_sent())),
        rpcs_per_node_by_method: Some(by_method),
        counters_per_node: Some(counters(&sent_all, n)),
        udp_drops_forming: drops_forming.map(|d| d.0),
        udp_drops_forming_bootstrap_node: drops_forming.map(|d| d.1),
        bootstrap_node_queries_forming: node0_queries,
        udp_drops: drops_all.map(|d| d.0),
        formation_trace: formation.trace.clone(),
        rss_before_bytes: rss_before,
        rss_formed_bytes: rss_formed,
        rss_per_node_bytes: rss_formed.saturating_sub(rss_before) as f64 / n as f64,
        cpu_seconds,
        cpu_seconds_forming: cpu_formed - cpu_before,
        cpu_seconds_per_node: cpu_seconds / n as f64,
        wall_seconds,
        loadavg_before,
    })
}

const SPAWN_HINT: &str = "cannot start a node on 127.0.0.1 (each node needs one UDP socket: \
     with many nodes, raise the open-file limit with `ulimit -n`)";

/// A random index in `0..n` other than `not` (`n` >= 2).
pub(super) fn other_than(rng: &mut StdRng, n: usize, not: usize) -> usize {
    let i = rng.random_range(0..n - 1);
    if i >= not { i + 1 } else { i }
}

/// The sum of every node's counters.
async fn sent_total(handles: &[NodeHandle]) -> Stats {
    let mut total = Stats::default();
    for h in handles {
        if let Ok(snap) = h.snapshot().await {
            let s = snap.stats;
            for (t, c) in total.sent.iter_mut().zip(s.sent) {
                *t += c;
            }
            total.queries_received += s.queries_received;
            total.responses_received += s.responses_received;
            total.errors_received += s.errors_received;
            total.timeouts += s.timeouts;
            total.dropped_malformed += s.dropped_malformed;
            total.dropped_unexpected += s.dropped_unexpected;
            total.rate_limited += s.rate_limited;
            total.store_errors += s.store_errors;
            total.bytes_sent += s.bytes_sent;
            total.bytes_received += s.bytes_received;
        }
    }
    total
}

/// The counters other than queries sent, per node.
fn counters(s: &Stats, n: usize) -> BTreeMap<String, f64> {
    [
        ("queries_received", s.queries_received),
        ("responses_received", s.responses_received),
        ("errors_received", s.errors_received),
        ("timeouts", s.timeouts),
        ("dropped_malformed", s.dropped_malformed),
        ("dropped_unexpected", s.dropped_unexpected),
        ("rate_limited", s.rate_limited),
        ("store_errors", s.store_errors),
        ("bytes_sent", s.bytes_sent),
        ("bytes_received", s.bytes_received),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v as f64 / n as f64))
    .collect()
}
