//! `peerchat bench chat`: durable direct messaging between two nodes, and the
//! time from a recipient's login to its offline messages shown.
//!
//! Everything runs in this process on loopback, with real sockets, real Noise
//! sessions and real SQLite databases (WAL, synchronous=FULL) in a temporary
//! directory: a message counts as delivered only when it is on the recipient's
//! disk and its acknowledgement has cleared the sender's outbox on disk.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use peerchat_node::chat::{ChatConfig, ChatEvent, ChatNode, init};
use serde::Serialize;
use tokio::sync::Semaphore;

/// Options of `peerchat bench chat`.
#[derive(Args, Debug)]
pub(crate) struct ChatBenchArgs {
    /// Small messages sent from one node to the other.
    #[arg(long, default_value_t = 20_000)]
    messages: usize,
    /// Sends in flight at once (a chat client sending as fast as it can).
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Messages sent one at a time (each waits for the previous one's ack) for the latency figure.
    #[arg(long, default_value_t = 500)]
    latency_messages: usize,
    /// Logins measured for the offline-delivery figure.
    #[arg(long, default_value_t = 5)]
    logins: usize,
    /// Messages waiting for each login.
    #[arg(long, default_value_t = 20)]
    offline_messages: usize,
    /// Relay nodes for the offline part.
    #[arg(long, default_value_t = 6)]
    relays: usize,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize, Debug)]
struct Report {
    messages: usize,
    seconds: f64,
    messages_per_sec: f64,
    idle_latency_p50_ms: f64,
    idle_latency_p99_ms: f64,
    loaded_latency_p50_ms: f64,
    loaded_latency_p99_ms: f64,
    delivered: usize,
    logins: usize,
    offline_messages_per_login: usize,
    login_to_shown_p50_ms: f64,
    login_to_shown_max_ms: f64,
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn node(dir: &Path, name: &str, boot: Option<SocketAddr>, fresh: bool) -> Result<ChatNode> {
    if fresh {
        init(dir, name).await?;
    }
    let mut cfg = ChatConfig::new(dir.to_path_buf(), "127.0.0.1:0".parse()?);
    cfg.bootstrap = boot.into_iter().collect();
    cfg.relay_retry_every = Duration::from_millis(250);
    Ok(ChatNode::start(cfg).await?)
}

async fn until(what: &str, limit: Duration, mut f: impl AsyncFnMut() -> bool) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("timed out after {limit:?} waiting for {what}")
}

pub(crate) async fn run(args: ChatBenchArgs) -> Result<()> {
    let tmp = tempfile::tempdir().context("temporary directory")?;
    let root = tmp.path();
    eprintln!(
        "starting {} relays, alice and bob on loopback ...",
        args.relays
    );
    let first = node(&root.join("relay0"), "relay0", None, true).await?;
    let boot = first.listen_addr();
    let mut relays = vec![first];
    for i in 1..args.relays.max(1) {
        relays.push(
            node(
                &root.join(format!("relay{i}")),
                &format!("relay{i}"),
                Some(boot),
                true,
            )
            .await?,
        );
    }
    let alice = node(&root.join("alice"), "alice", Some(boot), true).await?;
    let mut bob = node(&root.join("bob"), "bob", Some(boot), true).await?;
    let (a, b) = (alice.client(), bob.client());
    until("names", Duration::from_secs(60), async || {
        a.status().await.is_ok_and(|s| s.name_claimed)
            && b.status().await.is_ok_and(|s| s.name_claimed)
    })
    .await?;
    a.add_contact("bob").await?;
    // Warm-up: one message through, so the session exists and presence is known.
    let warm = a.send("bob", "warm-up").await?;
    let mut events = alice.subscribe();
    until("warm-up delivered", Duration::from_secs(30), async || {
        a.history("bob", 10)
            .await
            .is_ok_and(|h| h.iter().any(|m| m.id == warm && m.state == "delivered"))
    })
    .await?;

    // ---- one message at a time: latency on an idle link -------------------------
    eprintln!("{} messages one at a time ...", args.latency_messages);
    let mut idle = Vec::with_capacity(args.latency_messages);
    for i in 0..args.latency_messages {
        let t = Instant::now();
        let id = a.send("bob", &format!("ping {i}")).await?;
        loop {
            match tokio::time::timeout(Duration::from_secs(10), events.recv()).await {
                Ok(Ok(ChatEvent::State { id: got, state }))
                    if got == id && state == "delivered" =>
                {
                    break;
                }
                Ok(Ok(_)) => {}
                _ => bail!("message {i} was not delivered within 10 s"),
            }
        }
        idle.push(t.elapsed().as_secs_f64() * 1e3);
    }
    idle.sort_by(|x, y| x.total_cmp(y));

    // ---- many in flight: throughput, durable on both sides -----------------------
    eprintln!("sending {} messages alice -> bob ...", args.messages);
    let sent_at: Arc<std::sync::Mutex<HashMap<String, Instant>>> = Arc::default();
    let slots = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let start = Instant::now();
    let n = args.messages;
    let sender = {
        let (a, sent_at, slots) = (a.clone(), sent_at.clone(), slots.clone());
        tokio::spawn(async move {
            let mut set = tokio::task::JoinSet::new();
            for i in 0..n {
                let Ok(permit) = slots.clone().acquire_owned().await else {
                    break;
                };
                let (a, sent_at) = (a.clone(), sent_at.clone());
                set.spawn(async move {
                    let t = Instant::now();
                    if let Ok(id) = a.send("bob", &format!("message {i}")).await
                        && let Ok(mut m) = sent_at.lock()
                    {
                        m.insert(id, t);
                    }
                    drop(permit);
                });
            }
            while set.join_next().await.is_some() {}
        })
    };
    let mut latencies = Vec::with_capacity(n);
    let mut early: HashMap<String, Instant> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(120 + n as u64 / 200);
    while latencies.len() < n && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(5), events.recv()).await {
            Ok(Ok(ChatEvent::State { id, state })) if state == "delivered" => {
                let now = Instant::now();
                let t = sent_at.lock().ok().and_then(|m| m.get(&id).copied());
                match t {
                    Some(t) => latencies.push(now.duration_since(t).as_secs_f64() * 1e3),
                    // The ack beat the send call's return: match it up later.
                    None => {
                        early.insert(id, now);
                    }
                }
            }
            Ok(Ok(_)) => {}
            Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(k))) => {
                bail!("event stream lagged by {k}")
            }
            Ok(Err(_)) => break,
            Err(_) => {}
        }
        if !early.is_empty()
            && let Ok(m) = sent_at.lock()
        {
            early.retain(|id, at| match m.get(id) {
                Some(t) => {
                    latencies.push(at.duration_since(*t).as_secs_f64() * 1e3);
                    false
                }
                None => true,
            });
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let _ = sender.await;
    let delivered = latencies.len();
    latencies.sort_by(|x, y| x.total_cmp(y));

    // ---- login to offline messages shown -------------------------------------
    eprintln!(
        "measuring {} logins with {} offline messages each ...",
        args.logins, args.offline_messages
    );
    let bob_dir = root.join("bob");
    let mut login_ms = Vec::new();
    for round in 0..args.logins {
        bob.shutdown().await;
        let mut ids = Vec::new();
        for i in 0..args.offline_messages {
            ids.push(a.send("bob", &format!("offline {round}/{i}")).await?);
        }
        until("relayed", Duration::from_secs(60), async || {
            a.history("bob", 1000).await.is_ok_and(|h| {
                ids.iter()
                    .all(|id| h.iter().any(|m| &m.id == id && m.state != "queued"))
            })
        })
        .await?;
        let t = Instant::now();
        bob = node(&bob_dir, "bob", Some(boot), false).await?;
        let b = bob.client();
        // Shown: on the first page of the inbox (newest first), which is what a
        // client displays; asking for the whole history every 20 ms (10,000+
        // messages after the throughput part) would measure the polling.
        let page = args.offline_messages * 2 + 20;
        until(
            "offline messages shown",
            Duration::from_secs(60),
            async || {
                b.inbox(page)
                    .await
                    .is_ok_and(|inbox| ids.iter().all(|id| inbox.iter().any(|m| &m.id == id)))
            },
        )
        .await?;
        login_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    login_ms.sort_by(|x, y| x.total_cmp(y));
    let _ = b;

    let report = Report {
        messages: n,
        seconds,
        messages_per_sec: delivered as f64 / seconds,
        idle_latency_p50_ms: pct(&idle, 0.5),
        idle_latency_p99_ms: pct(&idle, 0.99),
        loaded_latency_p50_ms: pct(&latencies, 0.5),
        loaded_latency_p99_ms: pct(&latencies, 0.99),
        delivered,
        logins: login_ms.len(),
        offline_messages_per_login: args.offline_messages,
        login_to_shown_p50_ms: pct(&login_ms, 0.5),
        login_to_shown_max_ms: login_ms.last().copied().unwrap_or(f64::NAN),
    };
    bob.shutdown().await;
    alice.shutdown().await;
    for r in relays {
        r.shutdown().await;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "direct messages, durable on both sides (send call to the sender's delivered state)"
        );
        println!(
            "  one at a time      p50 {:.2} ms, p99 {:.2} ms ({} messages)",
            report.idle_latency_p50_ms, report.idle_latency_p99_ms, args.latency_messages
        );
        println!(
            "  {} in flight      {:.0} messages/s ({} of {} delivered in {:.2} s)",
            args.concurrency,
            report.messages_per_sec,
            report.delivered,
            report.messages,
            report.seconds
        );
        println!(
            "                     p50 {:.2} ms, p99 {:.2} ms under that load",
            report.loaded_latency_p50_ms, report.loaded_latency_p99_ms
        );
        println!(
            "login to offline messages shown ({} logins, {} messages each, {} relays)",
            report.logins, report.offline_messages_per_login, args.relays
        );
        println!(
            "  p50 / max          {:.0} ms / {:.0} ms",
            report.login_to_shown_p50_ms, report.login_to_shown_max_ms
        );
    }
    if delivered < n {
        bail!("only {delivered} of {n} messages were delivered");
    }
    Ok(())
}
