//! Durable message inserts per second through the group-committing writer.
//!
//! ```text
//! cargo run --release -p peerchat-node --example db_throughput -- [--dir DIR] [--messages N] [--tasks T]
//! ```
//!
//! Inserts N (20,000) small incoming messages from T (8) concurrent tasks, each
//! task awaiting one insert at a time (every insert is durable, fsynced, when
//! it returns), then again with 32 inserts in flight per task. The database
//! goes in a fresh temporary directory under DIR (default: the system temp
//! dir); put DIR on the disk you care about, since the figure is mostly fsync.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use peerchat_node::db::{Db, IncomingMessage};
use tokio::task::JoinSet;

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn message(task: u64, n: u64) -> IncomingMessage {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&task.to_be_bytes());
    id[8..].copy_from_slice(&n.to_be_bytes());
    let mut from = [0u8; 32];
    from[0] = task as u8;
    IncomingMessage {
        id,
        from,
        text: format!("message {n} from task {task}: hello there"),
        sent_ms: n as i64,
        received_ms: n as i64,
    }
}

/// The disk's raw fsync latency, for context.
fn fsync_latency(dir: &Path) -> std::io::Result<Duration> {
    let path = dir.join("fsync-probe");
    let mut f = File::create(&path)?;
    let rounds = 50;
    let start = Instant::now();
    for _ in 0..rounds {
        f.write_all(b"x")?;
        f.sync_data()?;
    }
    let per = start.elapsed() / rounds;
    drop(f);
    std::fs::remove_file(&path)?;
    Ok(per)
}

async fn run(
    base: &Path,
    messages: u64,
    tasks: u64,
    window: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let tmp = tempfile::tempdir_in(base)?;
    let db = Db::open(tmp.path().join("peerchat.db"))?;
    let per_task = messages / tasks;
    let start = Instant::now();
    let mut workers = JoinSet::new();
    for t in 0..tasks {
        let db = db.clone();
        workers.spawn(async move {
            let mut latencies = Vec::with_capacity(per_task as usize);
            let mut inflight = JoinSet::new();
            for n in 0..per_task {
                if inflight.len() >= window
                    && let Some(r) = inflight.join_next().await
                {
                    latencies.push(r??);
                }
                let db = db.clone();
                inflight.spawn(async move {
                    let t0 = Instant::now();
                    let fresh = db.insert_incoming(message(t, n)).await?;
                    assert!(fresh);
                    Ok::<_, peerchat_node::db::DbError>(t0.elapsed())
                });
            }
            while let Some(r) = inflight.join_next().await {
                latencies.push(r??);
            }
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(latencies)
        });
    }
    let mut latencies = Vec::new();
    while let Some(r) = workers.join_next().await {
        latencies.extend(r?.map_err(|e| e.to_string())?);
    }
    let elapsed = start.elapsed();
    let total = per_task * tasks;
    let stored = db.counts().await?.messages;
    assert_eq!(stored, total);
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p) as usize];
    println!(
        "{total} durable inserts, {tasks} tasks x {window} in flight: {:.2} s, {:.0} messages/s, latency p50 {:.2} ms, p99 {:.2} ms",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64(),
        pct(0.5).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
    );
    Ok(())
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let base: PathBuf = arg(&args, "--dir", std::env::temp_dir());
    let messages: u64 = arg(&args, "--messages", 20_000);
    let tasks: u64 = arg(&args, "--tasks", 8).max(1);
    std::fs::create_dir_all(&base)?;
    println!(
        "database under {}; raw fsync latency there: {:.3} ms",
        base.display(),
        fsync_latency(&base)?.as_secs_f64() * 1e3
    );
    run(&base, messages, tasks, 1).await?;
    run(&base, messages, tasks, 32).await?;
    Ok(())
}
