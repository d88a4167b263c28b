//! The same benchmark with nodes of the `mainline` crate (v8), for comparison.
//!
//! Each `mainline::Dht` runs its own OS thread (a blocking socket with a 50 ms read
//! timeout); we start them one after another on 127.0.0.1 with only the first node
//! as bootstrap (never the public bootstrap nodes), in server mode, and drive them
//! through their async API from the tokio runtime. The crate exposes neither hop
//! counts nor RPC counters: those figures are reported as `None` ("n/a").

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::Context;
use mainline::Dht;
use mainline::async_dht::AsyncDht;
use peerchat_kad::Value;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::runtime::Runtime;
use tokio::task::JoinSet;

use super::{DhtBenchArgs, DhtBenchResult, Formation, Latency, Progress};

/// Pause between two polls of the routing tables (a poll itself takes up to the
/// nodes' 50 ms read timeout, as each thread answers between two socket reads).
const POLL_EVERY: Duration = Duration::from_millis(20);

/// Runs the benchmark with `args.nodes` mainline nodes; drops them all before returning.
pub(super) fn run(
    rt: &Runtime,
    args: &DhtBenchArgs,
    seed: u64,
    progress: &Progress,
) -> anyhow::Result<DhtBenchResult> {
    let n = args.nodes;
    let loadavg_before = super::loadavg();
    let rss_before = super::rss_bytes().context("cannot read /proc/self/status")?;
    let cpu_before = super::cpu_seconds().context("cannot read /proc/self/stat")?;
    progress.line(&format!(
        "[mainline {}] starting {n} nodes (one OS thread each)",
        super::MAINLINE_VERSION
    ));

    // ----- formation ---------------------------------------------------------
    // Building a node blocks until its thread has bound the socket; the node then
    // bootstraps on its own thread. Nothing here waits for a bootstrap to finish.
    let t0 = Instant::now();
    let first = Dht::builder()
        .server_mode()
        .no_bootstrap()
        .bind_address(Ipv4Addr::LOCALHOST)
        .port(0)
        .build()
        .context(SPAWN_HINT)?
        .as_async();
    let first_addr = SocketAddr::V4(rt.block_on(first.info()).local_addr());
    let mut nodes: Vec<AsyncDht> = Vec::with_capacity(n);
    nodes.push(first);
    for i in 1..n {
        let node = Dht::builder()
            .server_mode()
            .bootstrap(&[first_addr])
            .bind_address(Ipv4Addr::LOCALHOST)
            .port(0)
            .build()
            .with_context(|| format!("node {i}: {SPAWN_HINT}"))?
            .as_async();
        nodes.push(node);
        if i % args.batch.max(1) == 0 {
            progress.update(&format!("[mainline] started {i}/{n} nodes"));
            std::thread::sleep(Duration::from_millis(args.batch_interval_ms));
        }
    }
    let start_seconds = t0.elapsed().as_secs_f64();

    let timeout = Duration::from_secs(args.form_timeout);
    let formation = rt.block_on(async {
        let mut formation = Formation::default();
        loop {
            let mut counts = contact_counts(&nodes).await;
            let elapsed = t0.elapsed();
            if formation.observe(&mut counts, args.min_contacts, elapsed) || elapsed >= timeout {
                break;
            }
            progress.update(&format!(
                "[mainline] forming: {} of {n} nodes have < {} contacts, {:.1} s",
                formation.below,
                args.min_contacts,
                elapsed.as_secs_f64()
            ));
            tokio::time::sleep(POLL_EVERY).await;
        }
        formation
    });
    let rss_formed = super::rss_bytes().unwrap_or(rss_before);
    let cpu_formed = super::cpu_seconds().unwrap_or(cpu_before);
    progress.line(&match formation.formed_after {
        Some(t) => format!("[mainline] formed in {:.2} s", t.as_secs_f64()),
        None => format!(
            "[mainline] not formed: {} of {n} nodes have < {} contacts after {} s",
            formation.below, args.min_contacts, args.form_timeout
        ),
    });

    // The ports, asked of all nodes at once (a node answers between two socket reads).
    let ports = rt.block_on(ports(&nodes));
    let drops_forming = super::udp_drops(&ports);

    // ----- workload ----------------------------------------------------------
    if args.settle > 0.0 {
        std::thread::sleep(Duration::from_secs_f64(args.settle));
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let total_gets = args.rounds * args.gets_per_round;
    let (put_times, puts_ok, get_times, gets_ok, misses, lookup_times) = rt.block_on(async {
        let mut put_times = Vec::new();
        let mut puts_ok = 0;
        let mut get_times = Vec::new();
        let mut gets_ok = 0;
        let mut misses = vec![0; args.rounds];
        for (round, missed) in misses.iter_mut().enumerate() {
            let putter = rng.random_range(0..n);
            let bytes = format!("peerchat bench {seed} round {round}").into_bytes();
            // The same target as Peerchat's: SHA-1 of the bencoded byte string.
            let target = peerchat_kad::bep44::immutable_target(&Value::Bytes(bytes.clone()));
            let target = mainline::Id::from(*target.as_bytes());
            let t = Instant::now();
            let put = nodes[putter].put_immutable(&bytes).await;
            put_times.push(t.elapsed());
            if put.is_ok() {
                puts_ok += 1;
            }
            for _ in 0..args.gets_per_round {
                let getter = super::dht::other_than(&mut rng, n, putter);
                let t = Instant::now();
                let got = nodes[getter].get_immutable(target).await;
                get_times.push(t.elapsed());
                if got.as_deref() == Some(bytes.as_slice()) {
                    gets_ok += 1;
                } else {
                    *missed += 1;
                }
                progress.update(&format!(
                    "[mainline] gets: {}/{total_gets}",
                    get_times.len()
                ));
            }
        }
        let mut lookup_times = Vec::new();
        for i in 0..args.lookups {
            let from = rng.random_range(0..n);
            let target = mainline::Id::from(rng.random::<[u8; 20]>());
            let t = Instant::now();
            let _ = nodes[from].find_node(target).await;
            lookup_times.push(t.elapsed());
            progress.update(&format!("[mainline] lookups: {}/{}", i + 1, args.lookups));
        }
        (put_times, puts_ok, get_times, gets_ok, misses, lookup_times)
    });
    let wall_seconds = t0.elapsed().as_secs_f64();
    let cpu_end = super::cpu_seconds().unwrap_or(cpu_formed);
    let drops_all = super::udp_drops(&ports);

    // ----- shutdown ----------------------------------------------------------
    // A node's thread ends when the last handle to it is dropped (within its 50 ms
    // read timeout).
    progress.line(&format!("[mainline] shutting {n} nodes down"));
    drop(nodes);
    std::thread::sleep(Duration::from_millis(200));

    let cpu_seconds = cpu_end - cpu_before;
    Ok(DhtBenchResult {
        implementation: format!("mainline {}", super::MAINLINE_VERSION),
        nodes: n,
        k: 20,
        alpha: None,
        start_seconds,
        formed: formation.formed_after.is_some(),
        form_seconds: formation.formed_after.map(|d| d.as_secs_f64()),
        form_timeout_seconds: timeout.as_secs_f64(),
        min_contacts: args.min_contacts,
        nodes_below_min: formation.below,
        contacts_min: formation.min,
        contacts_p50: formation.p50,
        form90_seconds: formation.ninety_after.map(|d| d.as_secs_f64()),
        bootstrap_failures: 0,
        lookup: Latency::of(&lookup_times),
        lookup_hops: None,
        get: Latency::of(&get_times),
        get_hops: None,
        put: Latency::of(&put_times),
        puts_ok,
        put_stored_p50: None,
        gets_ok,
        get_misses_by_round: misses,
        success_rate: if total_gets == 0 {
            0.0
        } else {
            gets_ok as f64 / total_gets as f64
        },
        rpcs_per_node: None,
        rpcs_per_node_forming: None,
        rpcs_per_node_by_method: None,
        counters_per_node: None,
        udp_drops_forming: drops_forming.map(|d| d.0),
        udp_drops_forming_bootstrap_node: drops_forming.map(|d| d.1),
        bootstrap_node_queries_forming: None,
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

const SPAWN_HINT: &str = "cannot start a mainline node on 127.0.0.1 (each needs one UDP socket \
     and one OS thread: raise `ulimit -n` / `ulimit -u` for many nodes)";

/// Every node's UDP port, in order.
async fn ports(nodes: &[AsyncDht]) -> Vec<u16> {
    let mut set = JoinSet::new();
    for (i, node) in nodes.iter().enumerate() {
        let node = node.clone();
        set.spawn(async move { (i, node.info().await.local_addr().port()) });
    }
    let mut ports = vec![0; nodes.len()];
    while let Some(r) = set.join_next().await {
        if let Ok((i, p)) = r {
            ports[i] = p;
        }
    }
    ports
}

/// Every node's count of routing-table contacts that are not stale, asked of all
/// nodes at once.
async fn contact_counts(nodes: &[AsyncDht]) -> Vec<usize> {
    let mut set = JoinSet::new();
    for (i, node) in nodes.iter().enumerate() {
        let node = node.clone();
        set.spawn(async move { (i, node.to_bootstrap().await.len()) });
    }
    let mut counts = vec![0; nodes.len()];
    while let Some(r) = set.join_next().await {
        if let Ok((i, c)) = r {
            counts[i] = c;
        }
    }
    counts
}
