//! The `peerchat` command: a node of the Peerchat network and its tools.
#![forbid(unsafe_code)]

mod bench;
mod bench_chat;
mod chat_cmd;
mod dht_cmd;
mod sim_cmd;
mod tui;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// Peerchat: a decentralized, peer-to-peer chat on a Kademlia DHT (compatible
/// with the BitTorrent Mainline DHT). No server, no account provider.
/// With no subcommand: the terminal UI.
#[derive(Parser, Debug)]
#[command(name = "peerchat", version, about, long_about = None)]
struct Cli {
    /// The user's data directory (default: the platform's data directory, e.g. ~/.local/share/peerchat).
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    tui: tui::TuiArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The DHT: run a bare node, or store and fetch BEP 44 items.
    #[command(subcommand)]
    Dht(dht_cmd::DhtCommand),
    #[command(flatten)]
    Chat(chat_cmd::ChatCommand),
    /// The deterministic simulator: many DHT nodes in virtual time, with seeded latency, loss and churn.
    Sim(sim_cmd::SimArgs),
    /// Benchmarks, measured on this machine, in this process.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// Durable direct messages per second between two nodes, and login to offline messages shown.
    Chat(bench_chat::ChatBenchArgs),
    /// N real DHT nodes on loopback in this process: formation, lookups, BEP 44 get/put (optionally against the mainline crate).
    Dht(bench::DhtBenchArgs),
    /// The paper's registration storm (users joining 5 ms apart, then announcing), with plots.
    Registrations(bench::registrations::RegistrationsArgs),
}

/// Parses `--k` and `--alpha`: a whole number of at least 1 (a bucket of 0
/// contacts, or a lookup with no request in flight, would never find anyone).
pub(crate) fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(v) => Ok(v),
        Err(e) => Err(e.to_string()),
    }
}

fn main() {
    let cli = Cli::parse();
    if matches!(cli.command, Some(Command::Sim(_))) {
        reexec_with_huge_pages();
    }
    if cli.command.is_none() {
        // The terminal belongs to the UI: logs go to a file.
        tui::init_logging(cli.data_dir.as_deref());
        if let Err(e) = run(cli) {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
        return;
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// The simulator keeps every node's tables in this one process (2.5 GB at
/// 100,000 nodes, in millions of small allocations), and with 4 KiB pages the
/// TLB misses cost about a fifth of its CPU time. glibc's allocator backs its
/// heap with transparent huge pages when told so at start-up
/// (`glibc.malloc.hugetlb=1`), so `peerchat sim` re-executes itself once with
/// that set. Any `GLIBC_TUNABLES` already in the environment (even empty) is
/// left alone. Other commands keep small pages: their memory per node is a
/// measured target, and huge pages would round it up.
fn reexec_with_huge_pages() {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        if std::env::var_os("GLIBC_TUNABLES").is_some() {
            return;
        }
        let Ok(exe) = std::env::current_exe() else {
            return;
        };
        // `exec` returns only on failure; then run on with small pages.
        let _ = std::process::Command::new(exe)
            .args(std::env::args_os().skip(1))
            .env("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1")
            .exec();
    }
}

fn run(cli: Cli) -> Result<()> {
    // The DHT benchmark builds its own runtime per implementation, so that each
    // is measured alone.
    match cli.command {
        Some(Command::Bench(BenchCommand::Dht(a))) => return bench::run_dht(a),
        Some(Command::Bench(BenchCommand::Registrations(a))) => {
            return bench::registrations::run(a);
        }
        Some(Command::Sim(a)) => return sim_cmd::run(a),
        _ => {}
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    match cli.command {
        Some(Command::Dht(cmd)) => rt.block_on(dht_cmd::run(cmd)),
        Some(Command::Bench(BenchCommand::Chat(a))) => rt.block_on(bench_chat::run(a)),
        Some(Command::Bench(BenchCommand::Dht(a))) => bench::run_dht(a),
        Some(Command::Bench(BenchCommand::Registrations(a))) => bench::registrations::run(a),
        Some(Command::Sim(a)) => sim_cmd::run(a),
        Some(Command::Chat(cmd)) => rt.block_on(chat_cmd::run(cli.data_dir, cmd)),
        None => rt.block_on(tui::run(cli.data_dir, cli.tui)),
    }
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM.
pub(crate) async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
