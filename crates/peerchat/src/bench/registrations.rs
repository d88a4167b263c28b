//! `peerchat bench registrations`: the paper's registration storm (section 5.1),
//! with real chat nodes on loopback.
//!
//! For each `n` of `--nodes`:
//!
//! 1. Setup (not timed): `n` users are created (identity, database, profile), each
//!    in its own data dir under `--dir` (`/dev/shm` by default: the databases are
//!    durable, `synchronous=FULL`, and a disk would measure the disk).
//! 2. The storm: user `i` logs in ([`ChatNode::start`]: joins the DHT, fetches its
//!    mailbox, claims its name, publishes its presence) `i × 5 ms` after the first,
//!    bootstrapping from user `i − 1` (and `i − 2`, `i − 3`: on a loaded machine
//!    the previous user's own join sometimes fails, and a newcomer that joins only
//!    through it starts a second network that every later user joins too; the
//!    original had the same weakness); then every user announces itself again
//!    (name claim and presence, [`ChatClient::announce`]), as in the original.
//!    "Registered" is the moment every user's announce has been acknowledged by
//!    the network (its claim held by the nodes closest to its name).
//! 3. The check: 200 random pairs (every pair when `n <= 20`) resolve each
//!    other's name ([`ChatClient::whois`]: right key, right address) and send
//!    each other a message ([`ChatClient::send`]) that must arrive (the
//!    recipient's inbox).
//!
//! User `i` listens (UDP for the DHT, TCP for sessions) on its own loopback
//! address `127.20.x.y` and one port shared by all users of a run, so that every
//! address is known before its node starts: the joins do not wait for each other.
//!
//! The users of one `n` are spread over worker processes (this binary with the
//! hidden `--worker` flag, driven over stdin/stdout with one JSON object a line),
//! `--users-per-worker` each, so that no process passes the open-file cap (each
//! user holds a UDP socket, a TCP listener, its data dir's lock and one SQLite
//! connection: db + wal + shm). The workers report their counters, memory (VmHWM
//! and RSS from `/proc/self/status`), CPU time (`/proc/self/stat`) and open files
//! (`/proc/self/fd`); RPCs per second per node are sampled every 100 ms on up to
//! 64 users per worker.
//!
//! `--sim` runs the simulator's version of the storm instead (see
//! `peerchat_sim::storm`): the same figures without messaging, for 100,000 nodes
//! and more.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use peerchat_node::chat::{ChatClient, ChatConfig, ChatNode};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;

use super::{cpu_seconds, percentile};

mod interrupt;
mod plot;
mod sim;

/// Arguments of `peerchat bench registrations`.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct RegistrationsArgs {
    /// Numbers of users, one storm each.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "10,20,40,80,160,320,640,1280,2560,5120,10240"
    )]
    pub(crate) nodes: Vec<usize>,
    /// DHT bucket size and replication.
    #[arg(long, default_value_t = 10, value_parser = crate::at_least_one)]
    pub(crate) k: usize,
    /// DHT lookup parallelism.
    #[arg(long, default_value_t = 5, value_parser = crate::at_least_one)]
    pub(crate) alpha: usize,
    /// Write every figure (with the RPC-rate curves) to this JSON file.
    #[arg(long, value_name = "FILE")]
    pub(crate) json: Option<PathBuf>,
    /// Draw RPCs per second per node over time to FILE.svg (or FILE.png), and RPCs
    /// per node and hops against n to FILE-scaling.svg (or FILE-scaling.png).
    #[arg(long, value_name = "FILE.svg|FILE.png")]
    pub(crate) plot: Option<PathBuf>,
    /// Milliseconds between two users' logins.
    #[arg(long, default_value_t = 5)]
    pub(crate) join_interval_ms: u64,
    /// Random pairs checked after the storm (every pair when n <= 20).
    #[arg(long, default_value_t = 200)]
    pub(crate) pairs: usize,
    /// Users per worker process (each costs about 7 open files).
    #[arg(long, default_value_t = 1500)]
    pub(crate) users_per_worker: usize,
    /// Seed of the pairs checked; random if absent.
    #[arg(long)]
    pub(crate) seed: Option<u64>,
    /// Where the users' data dirs go (default: /dev/shm if present, else the temp dir).
    #[arg(long, value_name = "DIR")]
    pub(crate) dir: Option<PathBuf>,
    /// Run the simulator's version of the storm (DHT join, name claim and presence
    /// puts, 200 name resolutions; no messaging) in virtual time instead.
    #[arg(long)]
    pub(crate) sim: bool,
    /// Internal: serve as a worker process of the benchmark over stdin/stdout.
    #[arg(long, hide = true)]
    pub(crate) worker: bool,
    /// Debugging: for up to this many names that did not resolve, print the k
    /// users whose ids are truly closest to the name, which of them hold its
    /// claim, which users hold it at all, and the resolver's view.
    #[arg(long, hide = true, default_value_t = 0)]
    pub(crate) diagnose: usize,
}

// ----- the protocol between the benchmark and its workers ---------------------

#[derive(Serialize, Deserialize, Debug)]
#[serde(tag = "cmd", rename_all = "snake_case")]
enum Cmd {
    Setup {
        users: Vec<u32>,
        k: usize,
        alpha: usize,
        port: u16,
        dir: PathBuf,
    },
    Join {
        start_unix_ms: u64,
        interval_ms: u64,
    },
    Announce,
    Resolve {
        ops: Vec<Op>,
    },
    Send {
        ops: Vec<Op>,
    },
    Await {
        ops: Vec<Op>,
        timeout_ms: u64,
    },
    /// Diagnostics: every user's id, and which of `names` (user indexes) it
    /// holds a claim for; the routing tables of the users in `detail`.
    Probe {
        names: Vec<u32>,
        detail: Vec<u32>,
        #[serde(default)]
        all_tables: bool,
    },
    /// Diagnostics: these users announce themselves again.
    Reannounce {
        users: Vec<u32>,
    },
    Finish,
}

/// One user as [`Cmd::Probe`] saw it.
#[derive(Serialize, Deserialize, Debug, Clone)]
struct Probed {
    user: u32,
    id: String,
    contacts: usize,
    /// The names (user indexes) among those asked whose claim it holds, with
    /// when it stored it (unix ms).
    holds: Vec<(u32, i64)>,
    /// Its routing table's ids, when asked for.
    table: Option<Vec<String>>,
    /// Queries received, responses and errors received, timeouts,
    /// retransmits, malformed and unexpected datagrams, rate-limited queries.
    counters: [u64; 8],
}

/// One direction of a checked pair: `from` resolves / messages `to`.
#[derive(Serialize, Deserialize, Debug, Clone)]
struct Op {
    from: u32,
    to: u32,
    key: String,
    text: String,
}

#[derive(Serialize, Deserialize, Debug)]
#[serde(tag = "reply", rename_all = "snake_case")]
enum Reply {
    Ready {
        keys: Vec<(u32, String)>,
    },
    Joined {
        failures: Vec<String>,
        done_unix_ms: u64,
    },
    Announced {
        failed: Vec<u32>,
        done_unix_ms: u64,
        /// Queries sent so far by this worker's users, by method.
        sent: [u64; 7],
        /// Routing-table sizes of this worker's users.
        contacts: Vec<usize>,
    },
    Resolved {
        ok: Vec<bool>,
        micros: Vec<u64>,
        hops: Vec<u32>,
        errors: Vec<String>,
    },
    Sent {
        errors: Vec<String>,
    },
    Arrived {
        arrived: Vec<bool>,
    },
    Finished(Box<WorkerFigures>),
    Probed {
        users: Vec<Probed>,
    },
    Error {
        message: String,
    },
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy)]
struct Sample {
    t_unix_ms: u64,
    sent: u64,
    nodes: u32,
}

#[derive(Serialize, Deserialize, Debug, Default)]
struct WorkerFigures {
    users: usize,
    sent: [u64; 7],
    queries_received: u64,
    timeouts: u64,
    samples: Vec<Sample>,
    cpu_seconds: f64,
    rss_base_kib: u64,
    rss_end_kib: u64,
    vmhwm_kib: u64,
    fd_peak: usize,
}

/// User `i`'s address: its own loopback IP `127.(20 + hi).mid.lo`, the run's port.
fn user_addr(i: u32, port: u16) -> SocketAddr {
    let j = i + 1;
    let ip = Ipv4Addr::new(127, 20 + (j >> 16) as u8, (j >> 8) as u8, j as u8);
    SocketAddr::V4(SocketAddrV4::new(ip, port))
}

fn user_name(i: u32) -> String {
    format!("user-{i}")
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A `kB` field of `/proc/self/status`.
fn status_kib(field: &str) -> u64 {
    proc_kib("/proc/self/status", field).unwrap_or(0)
}

/// A `kB` field of a `/proc` file such as `/proc/self/status` or `/proc/meminfo`.
fn proc_kib(file: &str, field: &str) -> Option<u64> {
    std::fs::read_to_string(file).ok().and_then(|s| {
        s.lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    })
}

/// Memory per user below which no storm has measured (docs/benchmarks.md):
/// 269 KiB per real user (n = 10,240), 37 KiB per simulated one (n = 100,000);
/// the figures below are a little under those.
const REAL_USER_KIB: u64 = 260;
const SIM_USER_KIB: u64 = 36;

/// Refuses a storm that cannot fit in this machine's available memory, before
/// it runs for minutes and is killed by the kernel's out-of-memory killer.
fn check_memory(n: usize, sim: bool, available_kib: Option<u64>) -> Result<()> {
    let Some(available) = available_kib else {
        return Ok(());
    };
    let per_user = if sim { SIM_USER_KIB } else { REAL_USER_KIB };
    let need = per_user.saturating_mul(n as u64);
    if need > available {
        let gib = |kib: u64| kib as f64 / (1024.0 * 1024.0);
        bail!(
            "{n} {} users need at least {:.1} GiB ({per_user} KiB each, the least measured), and {:.1} GiB is available: try fewer",
            if sim { "simulated" } else { "real" },
            gib(need),
            gib(available)
        );
    }
    Ok(())
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

// ----- the worker --------------------------------------------------------------

/// Waits (up to `limit`) until something listens on UDP `addr`: the user a new
/// one bootstraps from may have been scheduled 5 ms earlier but, on a busy
/// machine, not have opened its socket yet; a bootstrap datagram sent then is
/// lost, the newcomer starts alone, and everyone after it joins through it: a
/// second network. An empty datagram to a closed port on loopback comes back at
/// once as "connection refused"; to an open one it is dropped as malformed.
async fn wait_listening(addr: SocketAddr, limit: Duration) {
    let deadline = Instant::now() + limit;
    // A plain non-blocking socket: on loopback the "port unreachable" answer
    // is queued on it before `send` returns, so one read right after tells.
    // (Waiting for that answer, as this did, 2 ms per probe, put 2 ms between
    // every two logins and made the logins fall behind a 5 ms schedule; and
    // tokio's `try_recv` would not read before its reactor saw the socket
    // readable.)
    let Ok(sock) = std::net::UdpSocket::bind(SocketAddr::new(addr.ip(), 0)) else {
        return;
    };
    if sock.connect(addr).is_err() || sock.set_nonblocking(true).is_err() {
        return;
    }
    let mut buf = [0u8; 64];
    loop {
        let refused = |r: std::io::Result<usize>| matches!(r, Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused);
        let r = sock.send(&[]);
        let refused = refused(r) || refused(sock.recv(&mut buf));
        if !refused || Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// The file a worker process writes once user `i`, its last, has joined.
fn joined_mark(dir: &Path, i: u32) -> PathBuf {
    dir.join(format!("joined-{i}"))
}

/// Runs a worker process: reads commands from stdin, answers on stdout.
pub(crate) fn run_worker() -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(worker_main())
}

fn write_reply(r: &Reply) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, r)?;
    out.write_all(b"\n")?;
    out.flush()?;
    Ok(())
}

async fn worker_main() -> Result<()> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(l) = line else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
        // The benchmark closed our input without a `Finish` (it failed, or was
        // stopped): its users are of no more use, and a command being handled
        // could take minutes.
        std::process::exit(0);
    });
    let mut w = Worker {
        rss_base_kib: status_kib("VmRSS:"),
        cpu_base: cpu_seconds().unwrap_or(0.0),
        ..Worker::default()
    };
    while let Some(line) = rx.recv().await {
        let reply = match serde_json::from_str::<Cmd>(&line) {
            Ok(Cmd::Finish) => {
                let figures = w.finish().await;
                write_reply(&Reply::Finished(Box::new(figures)))?;
                // Thousands of nodes need no orderly shutdown: their data dirs go.
                std::process::exit(0);
            }
            Ok(cmd) => w.handle(cmd).await.unwrap_or_else(|e| Reply::Error {
                message: format!("{e:#}"),
            }),
            Err(e) => Reply::Error {
                message: format!("bad command: {e}"),
            },
        };
        write_reply(&reply)?;
    }
    Ok(())
}

#[derive(Default)]
struct Worker {
    users: Vec<u32>,
    k: usize,
    alpha: usize,
    port: u16,
    dir: PathBuf,
    clients: Arc<Mutex<HashMap<u32, ChatClient>>>,
    nodes: Arc<Mutex<Vec<ChatNode>>>,
    stop_sampler: Arc<AtomicBool>,
    sampler: Option<tokio::task::JoinHandle<Vec<Sample>>>,
    fd_peak: Arc<AtomicUsize>,
    rss_base_kib: u64,
    cpu_base: f64,
}

impl Worker {
    fn client(&self, i: u32) -> Option<ChatClient> {
        self.clients.lock().ok()?.get(&i).cloned()
    }

    async fn handle(&mut self, cmd: Cmd) -> Result<Reply> {
        match cmd {
            Cmd::Setup {
                users,
                k,
                alpha,
                port,
                dir,
            } => {
                self.users = users;
                self.k = k;
                self.alpha = alpha;
                self.port = port;
                self.dir = dir;
                let mut keys = Vec::with_capacity(self.users.len());
                for chunk in self.users.chunks(8) {
                    let mut set = JoinSet::new();
                    for &i in chunk {
                        let path = self.dir.join(format!("u{i}"));
                        set.spawn(async move {
                            let info = peerchat_node::chat::init(&path, &user_name(i)).await;
                            (i, info)
                        });
                    }
                    while let Some(r) = set.join_next().await {
                        let (i, info) = r?;
                        let info = info.with_context(|| format!("creating user {i}"))?;
                        keys.push((i, info.key.to_hex()));
                    }
                }
                self.fd_peak.fetch_max(open_fds(), Ordering::Relaxed);
                Ok(Reply::Ready { keys })
            }
            Cmd::Join {
                start_unix_ms,
                interval_ms,
            } => self.join(start_unix_ms, interval_ms).await,
            Cmd::Announce => self.announce().await,
            Cmd::Resolve { ops } => self.resolve(ops).await,
            Cmd::Send { ops } => {
                let mut set = JoinSet::new();
                for op in ops {
                    let c = self.client(op.from);
                    set.spawn(async move {
                        let Some(c) = c else {
                            return Some(format!("user {} is not running", op.from));
                        };
                        c.send(&user_name(op.to), &op.text)
                            .await
                            .err()
                            .map(|e| format!("{} -> {}: {e}", op.from, op.to))
                    });
                }
                let mut errors = Vec::new();
                while let Some(r) = set.join_next().await {
                    if let Some(e) = r? {
                        errors.push(e);
                    }
                }
                Ok(Reply::Sent { errors })
            }
            Cmd::Await { ops, timeout_ms } => {
                let deadline = Instant::now() + Duration::from_millis(timeout_ms);
                let mut arrived = vec![false; ops.len()];
                loop {
                    let mut by_user: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
                    for (j, op) in ops.iter().enumerate() {
                        if !arrived[j] {
                            by_user.entry(op.to).or_default().push(j);
                        }
                    }
                    if by_user.is_empty() || Instant::now() >= deadline {
                        break;
                    }
                    for (user, js) in by_user {
                        let Some(c) = self.client(user) else { continue };
                        let Ok(inbox) = c.inbox(1000).await else {
                            continue;
                        };
                        for j in js {
                            if inbox.iter().any(|m| m.text == ops[j].text) {
                                arrived[j] = true;
                            }
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Ok(Reply::Arrived { arrived })
            }
            Cmd::Probe {
                names,
                detail,
                all_tables,
            } => self.probe(names, detail, all_tables).await,
            Cmd::Reannounce { users } => {
                let mut failed = Vec::new();
                for i in users {
                    let ok = match self.client(i) {
                        Some(c) => matches!(c.announce().await, Ok(true)),
                        None => false,
                    };
                    if !ok {
                        failed.push(i);
                    }
                }
                Ok(Reply::Announced {
                    failed,
                    done_unix_ms: unix_ms(),
                    sent: [0; 7],
                    contacts: Vec::new(),
                })
            }
            Cmd::Finish => Err(anyhow!("finish is handled by the loop")),
        }
    }

    /// [`Cmd::Probe`]: reads every user's claims from a second connection to
    /// its database (diagnostics only).
    async fn probe(&self, names: Vec<u32>, detail: Vec<u32>, all_tables: bool) -> Result<Reply> {
        let clients: Vec<(u32, ChatClient)> = match self.clients.lock() {
            Ok(c) => c.iter().map(|(i, c)| (*i, c.clone())).collect(),
            Err(_) => bail!("poisoned"),
        };
        let mut users = Vec::with_capacity(clients.len());
        for (i, c) in clients {
            let Ok(snap) = c.dht_snapshot().await else {
                continue;
            };
            let path = self
                .dir
                .join(format!("u{i}"))
                .join(peerchat_node::db::DB_FILE);
            let db = peerchat_node::db::Db::open_with(
                &path,
                peerchat_node::db::DbOptions {
                    readers: 0,
                    ..Default::default()
                },
            )
            .with_context(|| format!("opening {}", path.display()))?;
            let mut holds = Vec::new();
            for &n in &names {
                if let Ok(Some(c)) = db.name_claim_get(&user_name(n)).await {
                    holds.push((n, c.stored_ms));
                }
            }
            drop(db);
            let table = (all_tables || detail.contains(&i))
                .then(|| snap.contacts.iter().map(|c| c.id.to_hex()).collect());
            users.push(Probed {
                user: i,
                id: snap.id.to_hex(),
                contacts: snap.contacts.len(),
                holds,
                table,
                counters: [
                    snap.stats.queries_received,
                    snap.stats.responses_received,
                    snap.stats.errors_received,
                    snap.stats.timeouts,
                    snap.stats.retransmits,
                    snap.stats.dropped_malformed,
                    snap.stats.dropped_unexpected,
                    snap.stats.rate_limited,
                ],
            });
        }
        Ok(Reply::Probed { users })
    }

    async fn join(&mut self, start_unix_ms: u64, interval_ms: u64) -> Result<Reply> {
        self.start_sampler();
        let mut users = self.users.clone();
        users.sort_unstable();
        let last = users.last().copied();
        let mut set = JoinSet::new();
        // The previous user's login in this process: when it has joined.
        let mut previous: Option<(u32, tokio::sync::oneshot::Receiver<()>)> = None;
        for i in users {
            let at = start_unix_ms + u64::from(i) * interval_ms;
            let now = unix_ms();
            if at > now {
                tokio::time::sleep(Duration::from_millis(at - now)).await;
            }
            // As in the original's test, a user registers once the user it
            // bootstraps from has joined (the original's registrations ran one
            // after another). When the machine cannot keep the pace, starting
            // on the clock regardless had newcomers join through users still
            // joining, whose tables held a few young nodes: their lookups
            // ended among young nodes, and the nodes closest to a name did not
            // know one another (at 2,560 users in two processes 218 of 400
            // names resolved).
            match previous.take() {
                Some((p, joined)) if p + 1 == i => {
                    let _ = tokio::time::timeout(Duration::from_secs(10), joined).await;
                }
                // The first user of a process after another process's last:
                // that process leaves a mark when its last user has joined.
                _ if i > 0 => {
                    let mark = joined_mark(&self.dir, i - 1);
                    let deadline = Instant::now() + Duration::from_secs(120);
                    while !mark.exists() && Instant::now() < deadline {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    wait_listening(user_addr(i - 1, self.port), Duration::from_secs(5)).await;
                }
                _ => {}
            }
            let (joined_tx, joined_rx) = tokio::sync::oneshot::channel();
            previous = Some((i, joined_rx));
            let mark = (Some(i) == last).then(|| joined_mark(&self.dir, i));
            let mut cfg = ChatConfig::new(self.dir.join(format!("u{i}")), user_addr(i, self.port));
            // The previous user, and the two before it in case its own join
            // failed (a user alone would start a second network that every
            // later user joins through).
            cfg.bootstrap = (i.saturating_sub(3)..i)
                .rev()
                .map(|j| user_addr(j, self.port))
                .collect();
            cfg.k = self.k;
            cfg.alpha = self.alpha;
            cfg.db_readers = 0;
            cfg.db_cache_pages = Some(2);
            cfg.event_buffer = 16;
            let clients = self.clients.clone();
            let nodes = self.nodes.clone();
            set.spawn(async move {
                let started = ChatNode::start(cfg).await;
                let _ = joined_tx.send(());
                if let Some(mark) = mark {
                    let _ = std::fs::write(mark, b"");
                }
                match started {
                    Ok(node) => {
                        if let Ok(mut c) = clients.lock() {
                            c.insert(i, node.client());
                        }
                        if let Ok(mut n) = nodes.lock() {
                            n.push(node);
                        }
                        None
                    }
                    Err(e) => Some(format!("user {i}: {e}")),
                }
            });
        }
        let mut failures = Vec::new();
        while let Some(r) = set.join_next().await {
            if let Some(e) = r? {
                failures.push(e);
            }
        }
        self.fd_peak.fetch_max(open_fds(), Ordering::Relaxed);
        Ok(Reply::Joined {
            failures,
            done_unix_ms: unix_ms(),
        })
    }

    fn start_sampler(&mut self) {
        let mut users = self.users.clone();
        users.sort_unstable();
        let step = users.len().div_ceil(64).max(1);
        let sampled: Vec<u32> = users.into_iter().step_by(step).collect();
        let clients = self.clients.clone();
        let stop = self.stop_sampler.clone();
        let fd_peak = self.fd_peak.clone();
        self.sampler = Some(tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut every = tokio::time::interval(Duration::from_millis(100));
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut tick = 0u64;
            while !stop.load(Ordering::Relaxed) {
                every.tick().await;
                tick += 1;
                let running: Vec<ChatClient> = match clients.lock() {
                    Ok(c) => sampled.iter().filter_map(|i| c.get(i).cloned()).collect(),
                    Err(_) => break,
                };
                let mut sent = 0;
                let mut nodes = 0;
                for c in running {
                    if let Ok(s) = c.dht_snapshot().await {
                        sent += s.stats.total_sent();
                        nodes += 1;
                    }
                }
                samples.push(Sample {
                    t_unix_ms: unix_ms(),
                    sent,
                    nodes,
                });
                if tick.is_multiple_of(10) {
                    fd_peak.fetch_max(open_fds(), Ordering::Relaxed);
                }
            }
            samples
        }));
    }

    async fn announce(&mut self) -> Result<Reply> {
        let clients: Vec<(u32, ChatClient)> = match self.clients.lock() {
            Ok(c) => c.iter().map(|(i, c)| (*i, c.clone())).collect(),
            Err(_) => bail!("poisoned"),
        };
        let sem = Arc::new(tokio::sync::Semaphore::new(64));
        let mut set = JoinSet::new();
        for (i, c) in clients {
            let sem = sem.clone();
            set.spawn(async move {
                let _permit = sem.acquire().await;
                // A user whose bootstrap is still being retried (its predecessor
                // was not listening yet) gets a few seconds to join.
                for attempt in 0..20 {
                    if attempt > 0 {
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                    if let Ok(true) = c.announce().await {
                        return None;
                    }
                }
                Some(i)
            });
        }
        let mut failed = Vec::new();
        while let Some(r) = set.join_next().await {
            if let Some(i) = r? {
                failed.push(i);
            }
        }
        let done_unix_ms = unix_ms();
        let (sent, _, _, contacts) = self.counters().await;
        Ok(Reply::Announced {
            failed,
            done_unix_ms,
            sent,
            contacts,
        })
    }

    async fn resolve(&mut self, ops: Vec<Op>) -> Result<Reply> {
        let started = Instant::now();
        let mut ok = vec![false; ops.len()];
        let mut micros = vec![0; ops.len()];
        let mut errors = Vec::new();
        // One at a time (and one worker at a time): the latency of a lookup on
        // a quiet network. Four at once on two cores measured a queue: 3.3 ms
        // at 1,280 users against 1.3 ms for one at a time.
        for (i, op) in ops.iter().enumerate() {
            let Some(c) = self.client(op.from) else {
                errors.push(format!("user {} is not running", op.from));
                continue;
            };
            // Each whois runs as a task on the runtime's workers, where the
            // node's API (and so its terminal UI) runs it, and is timed there.
            // Not from this loop: it runs on the thread that blocks on the
            // runtime, outside its workers, and every answer handed to it
            // would wake that third thread (0.57 against 0.47 ms at 1,280).
            let (name, caller) = (user_name(op.to), c.clone());
            let (r, took) = tokio::spawn(async move {
                let t = Instant::now();
                let r = caller.whois(&name).await;
                (r, t.elapsed())
            })
            .await?;
            micros[i] = took.as_micros() as u64;
            match r {
                Ok(w) => {
                    let addr = user_addr(op.to, self.port).to_string();
                    ok[i] = w.key == op.key && w.chat_addrs.contains(&addr);
                    if !ok[i] {
                        errors.push(format!(
                            "{} resolved {}: key {}, addresses {:?}",
                            op.from,
                            op.to,
                            &w.key[..16.min(w.key.len())],
                            w.chat_addrs
                        ));
                    }
                }
                Err(e) => {
                    let table = c
                        .dht_snapshot()
                        .await
                        .map(|s| s.contacts.len())
                        .unwrap_or(0);
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    let again = c.whois(&user_name(op.to)).await.map(|w| w.key == op.key);
                    errors.push(format!(
                        "{} resolving {}: {e} (table {table}, again: {again:?})",
                        op.from, op.to
                    ));
                }
            }
        }
        // The hops of every lookup the resolvers ran meanwhile.
        let window = started.elapsed();
        let mut hops = Vec::new();
        let froms: BTreeSet<u32> = ops.iter().map(|o| o.from).collect();
        for f in froms {
            let Some(c) = self.client(f) else { continue };
            if let Ok(s) = c.dht_snapshot().await {
                hops.extend(
                    s.lookups
                        .iter()
                        .filter(|l| l.ago <= window && l.kind != "bootstrap")
                        .map(|l| l.stats.hops),
                );
            }
        }
        Ok(Reply::Resolved {
            ok,
            micros,
            hops,
            errors,
        })
    }

    /// Queries sent by method, queries received and timeouts, over this worker's users.
    async fn counters(&self) -> ([u64; 7], u64, u64, Vec<usize>) {
        let clients: Vec<ChatClient> = self
            .clients
            .lock()
            .map(|c| c.values().cloned().collect())
            .unwrap_or_default();
        let (mut sent, mut received, mut timeouts) = ([0u64; 7], 0, 0);
        let mut contacts = Vec::new();
        for c in clients {
            if let Ok(s) = c.dht_snapshot().await {
                for (a, b) in sent.iter_mut().zip(s.stats.sent) {
                    *a += b;
                }
                received += s.stats.queries_received;
                timeouts += s.stats.timeouts;
                contacts.push(s.contacts.len());
            }
        }
        (sent, received, timeouts, contacts)
    }

    async fn finish(&mut self) -> WorkerFigures {
        self.stop_sampler.store(true, Ordering::Relaxed);
        let samples = match self.sampler.take() {
            Some(h) => h.await.unwrap_or_default(),
            None => Vec::new(),
        };
        let (sent, queries_received, timeouts, _) = self.counters().await;
        let mut f = WorkerFigures {
            users: self.clients.lock().map(|c| c.len()).unwrap_or(0),
            samples,
            sent,
            queries_received,
            timeouts,
            ..WorkerFigures::default()
        };
        f.fd_peak = self.fd_peak.load(Ordering::Relaxed).max(open_fds());
        f.cpu_seconds = cpu_seconds().unwrap_or(0.0) - self.cpu_base;
        f.rss_base_kib = self.rss_base_kib;
        f.rss_end_kib = status_kib("VmRSS:");
        f.vmhwm_kib = status_kib("VmHWM:");
        f
    }
}

// ----- the benchmark -------------------------------------------------------------

/// A worker process and its reply lines.
struct WorkerProc {
    /// Shared with the clean-up on interrupt.
    child: Arc<Mutex<Child>>,
    /// `None` once closed (a worker exits at the end of its input).
    stdin: Option<ChildStdin>,
}

struct Workers {
    procs: Vec<WorkerProc>,
    /// Reply lines, and `None` once a worker's output ends (it exited).
    replies: mpsc::Receiver<(usize, Option<String>)>,
}

impl Workers {
    fn spawn(count: usize) -> Result<Workers> {
        let exe = std::env::current_exe().context("finding this program")?;
        let (tx, replies) = mpsc::channel();
        let mut procs = Vec::with_capacity(count);
        for w in 0..count {
            let mut child = Command::new(&exe)
                .args(["bench", "registrations", "--worker"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .with_context(|| format!("starting worker {w} ({})", exe.display()))?;
            let stdin = child.stdin.take().ok_or_else(|| anyhow!("worker stdin"))?;
            let stdout = child
                .stdout
                .take()
                .ok_or_else(|| anyhow!("worker stdout"))?;
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(l) = line else { break };
                    if tx.send((w, Some(l))).is_err() {
                        return;
                    }
                }
                let _ = tx.send((w, None));
            });
            let child = Arc::new(Mutex::new(child));
            interrupt::watch_child(&child);
            procs.push(WorkerProc {
                child,
                stdin: Some(stdin),
            });
        }
        Ok(Workers { procs, replies })
    }

    fn send(&mut self, w: usize, cmd: &Cmd) -> Result<()> {
        let stdin = self.procs[w]
            .stdin
            .as_mut()
            .ok_or_else(|| anyhow!("worker {w}'s input is closed"))?;
        serde_json::to_writer(&mut *stdin, cmd)?;
        stdin.write_all(b"\n")?;
        stdin.flush()?;
        Ok(())
    }

    /// One reply from each worker in `from`, drawing `progress` while waiting.
    fn collect(
        &self,
        from: &[usize],
        timeout: Duration,
        mut progress: impl FnMut(f64),
    ) -> Result<Vec<Reply>> {
        let started = Instant::now();
        let mut out: Vec<Option<Reply>> = (0..self.procs.len()).map(|_| None).collect();
        let mut left = from.len();
        while left > 0 {
            let waited = started.elapsed();
            if waited >= timeout {
                bail!("workers did not answer within {} s", timeout.as_secs());
            }
            progress(waited.as_secs_f64());
            match self.replies.recv_timeout(Duration::from_millis(200)) {
                // A worker that answered `Finish` exits: its end comes after
                // its reply. Any other end means its users' nodes are gone.
                Ok((w, None)) if out[w].is_some() => {}
                Ok((w, None)) => bail!(
                    "worker process {w} exited in the middle of the storm (killed, or out of memory?): its users are gone"
                ),
                Ok((w, Some(line))) => {
                    let r: Reply = serde_json::from_str(&line)
                        .with_context(|| format!("worker {w} said {line:?}"))?;
                    if let Reply::Error { message } = &r {
                        bail!("worker {w}: {message}");
                    }
                    if out[w].replace(r).is_none() {
                        left -= 1;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => bail!("every worker exited"),
            }
        }
        Ok(from.iter().filter_map(|&w| out[w].take()).collect())
    }

    fn all(&self) -> Vec<usize> {
        (0..self.procs.len()).collect()
    }
}

impl Drop for Workers {
    /// Workers that answered `Finish` are gone already; the others (a storm
    /// that failed) get the end of their input, then a kill if they linger.
    fn drop(&mut self) {
        for p in &mut self.procs {
            p.stdin = None;
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        for p in &mut self.procs {
            let mut child = p.child.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    _ => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                }
            }
            drop(child);
            interrupt::forget_child(&p.child);
        }
    }
}

/// Latency figures, milliseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct Millis {
    pub(crate) p50: Option<f64>,
    pub(crate) p99: Option<f64>,
    pub(crate) max: Option<f64>,
}

/// The figures of one storm.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct StormResult {
    /// Users.
    pub(crate) n: usize,
    /// `real` (chat nodes on loopback) or `sim` (the simulator, virtual time).
    pub(crate) mode: String,
    pub(crate) k: usize,
    pub(crate) alpha: usize,
    /// Worker processes.
    pub(crate) workers: usize,
    /// Creating the users (identities, databases), not part of the storm.
    pub(crate) setup_seconds: f64,
    /// From the first login until every login returned.
    pub(crate) join_seconds: f64,
    /// From the first login until every user's announce was acknowledged: the storm.
    pub(crate) registered_seconds: f64,
    /// From the first login until the end of the check.
    pub(crate) total_seconds: f64,
    /// Logins that failed, and announces that never got an acknowledgement.
    pub(crate) join_failures: usize,
    pub(crate) announce_failures: usize,
    /// DHT queries sent per user, from the first login until registered (the storm).
    pub(crate) rpcs_per_node: f64,
    pub(crate) rpcs_per_node_by_method: BTreeMap<String, f64>,
    /// DHT queries sent per user, from the first login to the end of the check.
    pub(crate) rpcs_per_node_total: f64,
    pub(crate) timeouts_per_node: f64,
    /// (seconds since the first login, queries sent per second per running user).
    pub(crate) rpc_rate: Vec<(f64, f64)>,
    pub(crate) rpc_rate_peak: f64,
    /// Routing-table sizes once registered: smallest and median.
    pub(crate) contacts_min: usize,
    pub(crate) contacts_p50: usize,
    /// Hops of the lookups run during the check.
    pub(crate) hops_p50: Option<f64>,
    pub(crate) hops_p99: Option<f64>,
    pub(crate) hop_samples: usize,
    /// Name resolutions (name to key and address).
    pub(crate) resolutions: usize,
    pub(crate) resolved: usize,
    pub(crate) name_lookup_ms: Millis,
    /// Messages sent and arrived.
    pub(crate) messages: usize,
    pub(crate) delivered: usize,
    /// (VmHWM − RSS at start) summed over the workers, / n, KiB.
    pub(crate) peak_memory_per_node_kib: f64,
    /// (RSS at the end − RSS at start) summed over the workers, / n, KiB.
    pub(crate) rss_delta_per_node_kib: f64,
    /// CPU seconds of the workers (setup excluded), / n.
    pub(crate) cpu_seconds_per_node: f64,
    /// Most open files in one process.
    pub(crate) fd_peak: usize,
    /// First errors seen, for the reader.
    pub(crate) errors: Vec<String>,
}

impl StormResult {
    /// Every user registered, every name resolved, every message arrived.
    pub(crate) fn success(&self) -> bool {
        self.join_failures == 0
            && self.announce_failures == 0
            && self.resolved == self.resolutions
            && self.delivered == self.messages
    }
}

/// Least squares `y = a + b·log2(n)`, with R².
#[derive(Clone, Debug, Serialize)]
pub(crate) struct LogFit {
    pub(crate) a: f64,
    pub(crate) b: f64,
    pub(crate) r2: f64,
}

pub(crate) fn fit_log2(points: &[(f64, f64)]) -> Option<LogFit> {
    if points.len() < 2 {
        return None;
    }
    let xs: Vec<f64> = points.iter().map(|p| p.0.log2()).collect();
    let ys: Vec<f64> = points.iter().map(|p| p.1).collect();
    let m = xs.len() as f64;
    let mx = xs.iter().sum::<f64>() / m;
    let my = ys.iter().sum::<f64>() / m;
    let sxy: f64 = xs.iter().zip(&ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    let sxx: f64 = xs.iter().map(|x| (x - mx).powi(2)).sum();
    if sxx == 0.0 {
        return None;
    }
    let b = sxy / sxx;
    let a = my - b * mx;
    let ss_res: f64 = xs
        .iter()
        .zip(&ys)
        .map(|(x, y)| (y - a - b * x).powi(2))
        .sum();
    let ss_tot: f64 = ys.iter().map(|y| (y - my).powi(2)).sum();
    let r2 = if ss_tot == 0.0 {
        1.0
    } else {
        1.0 - ss_res / ss_tot
    };
    Some(LogFit { a, b, r2 })
}

#[derive(Serialize)]
struct Report {
    command: String,
    runs: Vec<StormResult>,
    rpcs_fit: Option<LogFit>,
    hops_fit: Option<LogFit>,
    sweep_seconds: f64,
}

/// Runs `peerchat bench registrations`.
pub(crate) fn run(args: RegistrationsArgs) -> Result<()> {
    if args.worker {
        return run_worker();
    }
    let r = sweep(args);
    if interrupt::interrupted() {
        // Stopped by a signal: its handler reports, cleans up and exits; what
        // failed here failed because of it.
        loop {
            std::thread::park();
        }
    }
    r
}

fn sweep(args: RegistrationsArgs) -> Result<()> {
    if args.nodes.is_empty() || args.nodes.iter().any(|&n| n < 2) {
        bail!(
            "--nodes needs one or more counts of at least 2 users (a lone user has nobody to hold its name), e.g. --nodes 10,20,40"
        );
    }
    // Checked before the sweep rather than when writing after its first n.
    let available = proc_kib("/proc/meminfo", "MemAvailable:");
    for &n in &args.nodes {
        check_memory(n, args.sim, available)?;
    }
    if let Some(path) = &args.plot {
        plot::check_path(path)?;
    }
    if let Some(path) = &args.json {
        // Opened, not truncated: an earlier report stays until this one replaces it.
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .with_context(|| format!("--json {}: cannot write there", path.display()))?;
    }
    let sweep = Instant::now();
    let mut runs = Vec::new();
    for &n in &args.nodes {
        let r = if args.sim {
            sim::run(n, &args)?
        } else {
            storm(n, &args).with_context(|| format!("the storm of {n} users"))?
        };
        eprint!("\r\x1b[K");
        println!("{}", report_lines(&r));
        if !r.errors.is_empty() {
            for e in r.errors.iter().take(5) {
                println!("    {e}");
            }
        }
        runs.push(r);
        // Written after every n: a long sweep stopped halfway keeps what it measured.
        write_outputs(&args, &runs, sweep.elapsed().as_secs_f64(), false)?;
    }
    let report = write_outputs(&args, &runs, sweep.elapsed().as_secs_f64(), true)?;
    let failed: Vec<usize> = report
        .runs
        .iter()
        .filter(|r| !r.success())
        .map(|r| r.n)
        .collect();
    if !failed.is_empty() {
        bail!("the storm did not fully succeed for n = {failed:?} (see above)");
    }
    Ok(())
}

/// The fits, and the JSON report and plots if asked for; prints the fits when `last`.
fn write_outputs(
    args: &RegistrationsArgs,
    runs: &[StormResult],
    sweep_seconds: f64,
    last: bool,
) -> Result<Report> {
    let rpcs: Vec<(f64, f64)> = runs.iter().map(|r| (r.n as f64, r.rpcs_per_node)).collect();
    let hops: Vec<(f64, f64)> = runs
        .iter()
        .filter_map(|r| Some((r.n as f64, r.hops_p50?)))
        .collect();
    let report = Report {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        rpcs_fit: fit_log2(&rpcs),
        hops_fit: fit_log2(&hops),
        sweep_seconds,
        runs: runs.to_vec(),
    };
    if last {
        if let Some(f) = &report.rpcs_fit {
            println!(
                "RPCs per user = {:.1} + {:.2}·log2(n)   R² = {:.3}",
                f.a, f.b, f.r2
            );
        }
        if let Some(f) = &report.hops_fit {
            println!(
                "lookup hops p50 = {:.2} + {:.2}·log2(n)   R² = {:.3}",
                f.a, f.b, f.r2
            );
        }
        println!("whole sweep: {:.1} s", report.sweep_seconds);
    }
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.plot {
        plot::draw(
            path,
            &report.runs,
            report.rpcs_fit.as_ref(),
            report.hops_fit.as_ref(),
        )?;
    }
    Ok(report)
}

/// What one storm measured, for the terminal: a few lines per n.
fn report_lines(r: &StormResult) -> String {
    let opt = |v: Option<f64>, p: usize| v.map_or("-".to_string(), |v| format!("{v:.p$}"));
    let methods = r
        .rpcs_per_node_by_method
        .iter()
        .filter(|(_, v)| **v > 0.0)
        .map(|(m, v)| format!("{m} {v:.1}"))
        .collect::<Vec<_>>()
        .join(", ");
    let (peak_at, peak) = r
        .rpc_rate
        .iter()
        .copied()
        .fold((0.0, 0.0), |best, p| if p.1 > best.1 { p } else { best });
    let sim = r.mode == "sim";
    let place = if sim {
        "the simulator, virtual time".to_string()
    } else if r.workers == 1 {
        "1 worker process".to_string()
    } else {
        format!("{} worker processes", r.workers)
    };
    let mut out = format!(
        "n={} ({}, k={}, alpha={}, {place}): storm {:.2} s (logins {:.2} s), total with the check {:.2} s, unregistered {}",
        r.n,
        r.mode,
        r.k,
        r.alpha,
        r.registered_seconds,
        r.join_seconds,
        r.total_seconds,
        r.join_failures + r.announce_failures,
    );
    out += &format!(
        "\n    RPCs per user: {:.1} in the storm ({methods}), {:.0} with the check; timeouts {:.1} per user",
        r.rpcs_per_node, r.rpcs_per_node_total, r.timeouts_per_node
    );
    out += &format!(
        "\n    RPCs per second per node: {} peak {peak:.0} at {peak_at:.1} s",
        sparkline(&r.rpc_rate, 40)
    );
    out += &format!(
        "\n    lookup hops p50/p99 {}/{}",
        opt(r.hops_p50, 0),
        opt(r.hops_p99, 0)
    );
    if !sim {
        out += &format!(
            "; contacts per user min/p50 {}/{}",
            r.contacts_min, r.contacts_p50
        );
    }
    let (p50, p99) = (opt(r.name_lookup_ms.p50, 2), opt(r.name_lookup_ms.p99, 2));
    if sim {
        out += &format!(
            "\n    resolved {}/{} (a BEP 44 get of the claim; no messaging), get p50 {p50} ms p99 {p99} ms",
            r.resolved, r.resolutions
        );
    } else {
        out += &format!(
            "\n    resolved {}/{}, delivered {}/{}, whois p50 {p50} ms p99 {p99} ms",
            r.resolved, r.resolutions, r.delivered, r.messages
        );
    }
    out += &format!(
        "\n    peak memory {:.0} KiB per user (RSS +{:.0}), CPU {:.1} ms per user",
        r.peak_memory_per_node_kib,
        r.rss_delta_per_node_kib,
        r.cpu_seconds_per_node * 1e3
    );
    if !sim {
        out += &format!(", {} open files at most in a process", r.fd_peak);
    }
    out
}

/// `points` (time, value) as at most `width` bars from ▁ to █, each the
/// largest value of its slice of time; empty if there is nothing to draw.
fn sparkline(points: &[(f64, f64)], width: usize) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let max = points.iter().map(|p| p.1).fold(0.0, f64::max);
    if points.is_empty() || width == 0 || max <= 0.0 {
        return String::new();
    }
    let per = points.len().div_ceil(width);
    points
        .chunks(per)
        .map(|c| {
            let v = c.iter().map(|p| p.1).fold(0.0, f64::max);
            let i = ((v / max) * (BARS.len() - 1) as f64).round() as usize;
            BARS[i.min(BARS.len() - 1)]
        })
        .collect()
}

fn default_dir() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

fn bar(label: &str, frac: f64, extra: &str) {
    let mut err = std::io::stderr();
    if !err.is_terminal() {
        return;
    }
    let width = 30;
    let full = ((frac.clamp(0.0, 1.0)) * width as f64).round() as usize;
    let _ = write!(
        err,
        "\r\x1b[K{label} [{}{}] {:>3.0}% {extra}",
        "#".repeat(full),
        "-".repeat(width - full),
        frac.clamp(0.0, 1.0) * 100.0
    );
    let _ = err.flush();
}

fn ms_of(samples: &mut [f64]) -> Millis {
    samples.sort_by(f64::total_cmp);
    Millis {
        p50: percentile(samples, 50.0),
        p99: percentile(samples, 99.0),
        max: samples.last().copied(),
    }
}

/// One storm of `n` real users.
fn storm(n: usize, args: &RegistrationsArgs) -> Result<StormResult> {
    let n32 = u32::try_from(n).map_err(|_| anyhow!("too many users: {n}"))?;
    if n32 >= 1 << 20 {
        bail!("at most {} users", 1 << 20);
    }
    let base = args.dir.clone().unwrap_or_else(default_dir);
    let dir = tempfile::Builder::new()
        .prefix(&format!("peerchat-storm-{n}-"))
        .tempdir_in(&base)
        .with_context(|| format!("making a directory in {}", base.display()))?;
    // Removed by the clean-up on interrupt while `_watched` lives (declared
    // after `dir`, it drops first: the dir is forgotten, then removed).
    interrupt::install();
    let _watched = interrupt::watch_dir(dir.path());
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed.unwrap_or_else(rand::random));
    let port: u16 = rand::rng().random_range(10_000..30_000);
    let per = args.users_per_worker.max(1);
    let nw = n.div_ceil(per);
    let mut workers = Workers::spawn(nw)?;
    let worker_of = |i: u32| worker_of(i, n, nw);
    let label = format!("n={n}");

    // 1. Setup.
    let setup = Instant::now();
    for w in 0..nw {
        let users = (0..n32).filter(|&i| worker_of(i) == w).collect();
        workers.send(
            w,
            &Cmd::Setup {
                users,
                k: args.k,
                alpha: args.alpha,
                port,
                dir: dir.path().to_path_buf(),
            },
        )?;
    }
    let mut keys: HashMap<u32, String> = HashMap::new();
    let setup_budget = Duration::from_secs(60 + n as u64 / 20);
    for r in workers.collect(&workers.all(), setup_budget, |t| {
        bar(
            &label,
            t / (n as f64 * 0.002 / nw as f64 + 0.5),
            "creating users",
        )
    })? {
        if let Reply::Ready { keys: k } = r {
            keys.extend(k);
        }
    }
    let setup_seconds = setup.elapsed().as_secs_f64();

    // 2. The storm.
    let start_unix_ms = unix_ms() + 200;
    let expect_join = n as f64 * args.join_interval_ms as f64 / 1e3;
    for w in 0..nw {
        workers.send(
            w,
            &Cmd::Join {
                start_unix_ms,
                interval_ms: args.join_interval_ms,
            },
        )?;
    }
    let budget = Duration::from_secs_f64(120.0 + expect_join * 4.0);
    let mut res = StormResult {
        n,
        mode: "real".into(),
        k: args.k,
        alpha: args.alpha,
        workers: nw,
        setup_seconds,
        ..StormResult::default()
    };
    let mut last = start_unix_ms;
    for r in workers.collect(&workers.all(), budget, |t| {
        bar(&label, t / expect_join.max(0.1), "logins")
    })? {
        if let Reply::Joined {
            failures,
            done_unix_ms,
        } = r
        {
            res.join_failures += failures.len();
            res.errors.extend(failures.into_iter().take(5));
            last = last.max(done_unix_ms);
        }
    }
    res.join_seconds = (last.saturating_sub(start_unix_ms)) as f64 / 1e3;
    for w in 0..nw {
        workers.send(w, &Cmd::Announce)?;
    }
    let expect_announce = expect_join * 0.5 + 1.0;
    let mut storm_sent = [0u64; 7];
    let mut contacts: Vec<usize> = Vec::new();
    for r in workers.collect(&workers.all(), budget, |t| {
        bar(&label, t / expect_announce, "announcing")
    })? {
        if let Reply::Announced {
            failed,
            done_unix_ms,
            sent,
            contacts: c,
        } = r
        {
            contacts.extend(c);
            for (a, b) in storm_sent.iter_mut().zip(sent) {
                *a += b;
            }
            res.announce_failures += failed.len();
            res.errors.extend(
                failed
                    .iter()
                    .take(5)
                    .map(|i| format!("user {i} never registered")),
            );
            last = last.max(done_unix_ms);
        }
    }
    res.registered_seconds = (last.saturating_sub(start_unix_ms)) as f64 / 1e3;
    contacts.sort_unstable();
    res.contacts_min = contacts.first().copied().unwrap_or(0);
    res.contacts_p50 = contacts.get(contacts.len() / 2).copied().unwrap_or(0);

    // 3. The check.
    let mut pairs: Vec<(u32, u32)> = Vec::new();
    if n <= 20 {
        for a in 0..n32 {
            for b in a + 1..n32 {
                pairs.push((a, b));
            }
        }
    } else {
        let mut seen = BTreeSet::new();
        while pairs.len() < args.pairs.min(n * (n - 1) / 2) {
            let a = rng.random_range(0..n32);
            let b = rng.random_range(0..n32);
            if a != b && seen.insert((a.min(b), a.max(b))) {
                pairs.push((a, b));
            }
        }
    }
    pairs.shuffle(&mut rng);
    let nonce: u64 = rng.random();
    let ops: Vec<Op> = pairs
        .iter()
        .flat_map(|&(a, b)| [(a, b), (b, a)])
        .map(|(from, to)| Op {
            from,
            to,
            key: keys.get(&to).cloned().unwrap_or_default(),
            text: format!("storm {nonce:x}: {from} to {to}"),
        })
        .collect();
    let by = |f: &dyn Fn(&Op) -> u32| {
        let mut groups: Vec<Vec<Op>> = vec![Vec::new(); nw];
        for op in &ops {
            groups[worker_of(f(op))].push(op.clone());
        }
        groups
    };
    let by_from = by(&|o: &Op| o.from);
    let by_to = by(&|o: &Op| o.to);
    let busy = |g: &[Vec<Op>]| -> Vec<usize> { (0..nw).filter(|&w| !g[w].is_empty()).collect() };
    let check_budget = Duration::from_secs(120);
    let mut lookup_ms = Vec::new();
    let mut hops = Vec::new();
    let mut unresolved: Vec<(u32, u32)> = Vec::new();
    // One worker after another, so that one lookup runs at a time.
    for w in busy(&by_from) {
        workers.send(
            w,
            &Cmd::Resolve {
                ops: by_from[w].clone(),
            },
        )?;
        let replies = workers.collect(&[w], check_budget, |t| {
            bar(&label, t / 5.0, "resolving names")
        })?;
        let Some(r) = replies.into_iter().next() else {
            continue;
        };
        if let Reply::Resolved {
            ok,
            micros,
            hops: h,
            errors,
        } = r
        {
            for (op, good) in by_from[w].iter().zip(&ok) {
                if !good {
                    unresolved.push((op.from, op.to));
                }
            }
            res.resolutions += ok.len();
            res.resolved += ok.iter().filter(|&&g| g).count();
            lookup_ms.extend(micros.iter().map(|&us| us as f64 / 1e3));
            hops.extend(h.into_iter().map(f64::from));
            res.errors.extend(errors.into_iter().take(5));
        }
    }
    if args.diagnose > 0 {
        diagnose(
            &mut workers,
            &unresolved,
            args.k,
            args.diagnose,
            start_unix_ms,
            n,
        )?;
    }
    res.name_lookup_ms = ms_of(&mut lookup_ms);
    hops.sort_by(f64::total_cmp);
    res.hops_p50 = percentile(&hops, 50.0);
    res.hops_p99 = percentile(&hops, 99.0);
    res.hop_samples = hops.len();
    for &w in &busy(&by_from) {
        workers.send(
            w,
            &Cmd::Send {
                ops: by_from[w].clone(),
            },
        )?;
    }
    for r in workers.collect(&busy(&by_from), check_budget, |t| {
        bar(&label, t / 5.0, "sending")
    })? {
        if let Reply::Sent { errors } = r {
            res.errors.extend(errors.into_iter().take(5));
        }
    }
    for &w in &busy(&by_to) {
        workers.send(
            w,
            &Cmd::Await {
                ops: by_to[w].clone(),
                timeout_ms: 30_000,
            },
        )?;
    }
    for r in workers.collect(&busy(&by_to), check_budget, |t| {
        bar(&label, t / 5.0, "awaiting messages")
    })? {
        if let Reply::Arrived { arrived } = r {
            res.messages += arrived.len();
            res.delivered += arrived.iter().filter(|&&a| a).count();
        }
    }
    res.total_seconds = (unix_ms().saturating_sub(start_unix_ms)) as f64 / 1e3;

    // 4. Counters.
    for w in 0..nw {
        workers.send(w, &Cmd::Finish)?;
    }
    let mut sent = [0u64; 7];
    let mut timeouts = 0;
    let (mut peak, mut delta, mut cpu) = (0.0, 0.0, 0.0);
    // Per 100 ms bucket: (queries sent, node-seconds).
    let mut buckets: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
    for r in workers.collect(&workers.all(), check_budget, |_| {
        bar(&label, 1.0, "counting")
    })? {
        if let Reply::Finished(f) = r {
            for (a, b) in sent.iter_mut().zip(f.sent) {
                *a += b;
            }
            timeouts += f.timeouts;
            peak += f.vmhwm_kib.saturating_sub(f.rss_base_kib) as f64;
            delta += f.rss_end_kib.saturating_sub(f.rss_base_kib) as f64;
            cpu += f.cpu_seconds;
            res.fd_peak = res.fd_peak.max(f.fd_peak);
            for pair in f.samples.windows(2) {
                let (s0, s1) = (pair[0], pair[1]);
                let dt = s1.t_unix_ms.saturating_sub(s0.t_unix_ms) as f64 / 1e3;
                if dt <= 0.0 || s1.nodes == 0 {
                    continue;
                }
                let b = (s1.t_unix_ms.saturating_sub(start_unix_ms) + 50) / 100;
                let e = buckets.entry(b).or_default();
                e.0 += s1.sent.saturating_sub(s0.sent) as f64;
                e.1 += f64::from(s1.nodes) * dt;
            }
        }
    }
    drop(workers);
    let nf = n as f64;
    res.rpcs_per_node_total = sent.iter().sum::<u64>() as f64 / nf;
    res.rpcs_per_node = storm_sent.iter().sum::<u64>() as f64 / nf;
    res.rpcs_per_node_by_method = peerchat_kad::stats::METHODS
        .iter()
        .zip(storm_sent)
        .filter(|(_, c)| *c > 0)
        .map(|(m, c)| (m.to_string(), c as f64 / nf))
        .collect();
    res.timeouts_per_node = timeouts as f64 / nf;
    res.peak_memory_per_node_kib = peak / nf;
    res.rss_delta_per_node_kib = delta / nf;
    res.cpu_seconds_per_node = cpu / nf;
    res.rpc_rate = buckets
        .into_iter()
        .filter(|(_, (_, ns))| *ns > 0.0)
        .map(|(b, (q, ns))| (b as f64 / 10.0, q / ns))
        .collect();
    res.rpc_rate_peak = res.rpc_rate.iter().map(|p| p.1).fold(0.0, f64::max);
    res.errors.truncate(20);
    Ok(res)
}

/// `--diagnose`: for up to `limit` names that did not resolve, prints the `k`
/// users whose ids are truly closest to the name, which of them hold its
/// claim, every user holding it (with its rank by distance and when it stored
/// it, seconds after `t0`), and how close the resolver's routing table comes to
/// the name; then has the name's owner announce itself again and shows the
/// holders once more.
fn diagnose(
    workers: &mut Workers,
    unresolved: &[(u32, u32)],
    k: usize,
    limit: usize,
    t0: u64,
    n: usize,
) -> Result<()> {
    let mut pairs: Vec<(u32, u32)> = Vec::new();
    for &(from, to) in unresolved {
        if pairs.len() < limit && !pairs.iter().any(|p| p.1 == to) {
            pairs.push((from, to));
        }
    }
    let names: Vec<u32> = pairs.iter().map(|p| p.1).collect();
    let probe = |workers: &mut Workers, detail: Vec<u32>| -> Result<Vec<Probed>> {
        for w in workers.all() {
            workers.send(
                w,
                &Cmd::Probe {
                    names: names.clone(),
                    detail: detail.clone(),
                    all_tables: detail.is_empty(),
                },
            )?;
        }
        let mut users = Vec::new();
        for r in workers.collect(&workers.all(), Duration::from_secs(300), |_| {})? {
            if let Reply::Probed { users: u } = r {
                users.extend(u);
            }
        }
        users.sort_by_key(|p| p.user);
        Ok(users)
    };
    let users = probe(workers, Vec::new())?;
    let id_of = |p: &Probed| peerchat_kad::NodeId::from_hex(&p.id).unwrap_or_default();
    // How many of its own k closest users (by id) each user's table holds.
    {
        let ids: Vec<peerchat_kad::NodeId> = users.iter().map(id_of).collect();
        let mut totals = [0u64; 8];
        for p in &users {
            for (t, c) in totals.iter_mut().zip(p.counters) {
                *t += c;
            }
        }
        println!(
            "    diagnose: queries received {}, responses {}, errors {}, timeouts {}, retransmits {}, malformed {}, unexpected {}, rate-limited {}",
            totals[0], totals[1], totals[2], totals[3], totals[4], totals[5], totals[6], totals[7]
        );
        let mut hist = vec![0usize; k + 1];
        let mut by_decile = [(0usize, 0usize, 0usize, 0usize); 10];
        let user_of: HashMap<&str, u32> = users.iter().map(|p| (p.id.as_str(), p.user)).collect();
        for (a, p) in users.iter().enumerate() {
            let mut near: Vec<usize> = (0..ids.len()).filter(|&b| b != a).collect();
            near.sort_by_key(|&b| ids[a].distance(&ids[b]).0);
            let table: BTreeSet<&str> = p.table.iter().flatten().map(|s| s.as_str()).collect();
            let known = near
                .iter()
                .take(k)
                .filter(|&&b| table.contains(users[b].id.as_str()))
                .count();
            hist[known] += 1;
            let decile = (p.user as usize * 10 / users.len().max(1)).min(9);
            by_decile[decile].0 += known;
            by_decile[decile].1 += 1;
            let older = p
                .table
                .iter()
                .flatten()
                .filter_map(|h| user_of.get(h.as_str()))
                .filter(|&&u| u < p.user)
                .count();
            by_decile[decile].2 += older;
            by_decile[decile].3 += p.contacts;
        }
        println!(
            "    diagnose: users by how many of their own {k} closest their table holds: {hist:?}"
        );
        for (d, (known, count, older, contacts)) in by_decile.iter().enumerate() {
            println!(
                "      joined in decile {d}: mean {:.1} of own {k} closest known, {:.0}% of contacts joined earlier",
                *known as f64 / (*count).max(1) as f64,
                100.0 * *older as f64 / (*contacts).max(1) as f64
            );
        }
    }
    // Per name: every user ranked by distance to the name's target.
    let mut ranked: Vec<Vec<u32>> = Vec::new();
    let mut detail = BTreeSet::new();
    for &(from, to) in &pairs {
        let target = name_target(to)?;
        let mut r: Vec<&Probed> = users.iter().collect();
        r.sort_by_key(|p| id_of(p).distance(&target).0);
        detail.insert(from);
        detail.insert(to);
        detail.extend(r.iter().take(k).map(|p| p.user));
        ranked.push(r.iter().map(|p| p.user).collect());
    }
    let tables = probe(workers, detail.into_iter().collect())?;
    let get = |u: u32| {
        tables
            .binary_search_by_key(&u, |p| p.user)
            .ok()
            .map(|i| &tables[i])
    };
    let user_of_id: HashMap<String, u32> = tables.iter().map(|p| (p.id.clone(), p.user)).collect();
    let ranks_in = |r: &[u32], u: u32| -> Vec<usize> {
        let mut v: Vec<usize> = get(u)
            .and_then(|p| p.table.as_ref())
            .map(|t| {
                t.iter()
                    .filter_map(|h| user_of_id.get(h))
                    .filter_map(|x| r.iter().position(|y| y == x))
                    .collect()
            })
            .unwrap_or_default();
        v.sort_unstable();
        v
    };
    let secs = |ms: i64| (ms - t0 as i64) as f64 / 1e3;
    let holders = |probed: &[Probed], r: &[u32], to: u32| -> Vec<String> {
        r.iter()
            .enumerate()
            .filter_map(|(rank, &u)| {
                let p = probed.iter().find(|p| p.user == u)?;
                let at = p.holds.iter().find(|h| h.0 == to)?.1;
                Some(format!("#{rank} u{u} @{:.1}s", secs(at)))
            })
            .collect()
    };
    for ((from, to), r) in pairs.iter().zip(&ranked) {
        println!(
            "    diagnose: user {from} could not resolve user-{to} (owner rank {:?} of {})",
            r.iter().position(|&u| u == *to),
            r.len()
        );
        for (rank, &u) in r.iter().take(k).enumerate() {
            let Some(p) = get(u) else { continue };
            let near: Vec<usize> = ranks_in(r, u).into_iter().filter(|&x| x < k).collect();
            println!(
                "      rank {rank:>2}: user {u:>5} holds={} contacts={:>3} knows ranks {near:?}",
                p.holds.iter().any(|h| h.0 == *to),
                p.contacts
            );
        }
        println!("      holders: {:?}", holders(&tables, r, *to));
        let mut seen = ranks_in(r, *from);
        seen.truncate(k);
        println!("      resolver's closest contacts (ranks): {seen:?}");
        let mut seen = ranks_in(r, *to);
        seen.truncate(k);
        println!("      owner's closest contacts (ranks): {seen:?}");
    }
    // The owners announce again, on the quiet network.
    let nw = workers.procs.len();
    for w in 0..nw {
        let users: Vec<u32> = names
            .iter()
            .copied()
            .filter(|&u| worker_of(u, n, nw) == w)
            .collect();
        workers.send(w, &Cmd::Reannounce { users })?;
    }
    workers.collect(&workers.all(), Duration::from_secs(300), |_| {})?;
    let again = probe(workers, Vec::new())?;
    for ((_, to), r) in pairs.iter().zip(&ranked) {
        println!(
            "    after announcing again, user-{to} held by: {:?}",
            holders(&again, r, *to)
        );
    }
    Ok(())
}

/// The worker process of user `i` of `n`, with `nw` workers: consecutive users
/// share a process, so that a user's bootstrap nodes (the users just before
/// it) are in its own process but at the `nw - 1` boundaries.
fn worker_of(i: u32, n: usize, nw: usize) -> usize {
    (i as usize * nw / n.max(1)).min(nw.saturating_sub(1))
}

/// Where the claim of user `i`'s name is stored.
fn name_target(i: u32) -> Result<peerchat_kad::NodeId> {
    let name = peerchat_chat::Username::new(&user_name(i)).map_err(|e| anyhow!("{e}"))?;
    Ok(name.target())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_distinct_loopback() {
        let mut seen = BTreeSet::new();
        for i in 0..70_000u32 {
            let a = user_addr(i, 4000);
            assert!(a.ip().is_loopback(), "{a}");
            assert!(seen.insert(a), "{a} twice");
        }
    }

    #[test]
    fn workers_get_consecutive_users() {
        for (n, nw) in [(10, 1), (2560, 4), (5120, 4), (5121, 4), (10_240, 7)] {
            let of: Vec<usize> = (0..n as u32).map(|i| worker_of(i, n, nw)).collect();
            assert!(of.windows(2).all(|w| w[0] <= w[1] && w[1] - w[0] <= 1));
            assert_eq!((of[0], of[n - 1]), (0, nw - 1));
            for w in 0..nw {
                let count = of.iter().filter(|&&x| x == w).count();
                assert!(
                    count.abs_diff(n / nw) <= 1,
                    "worker {w} of {nw}: {count} users"
                );
            }
        }
    }

    #[test]
    fn a_sparkline_scales_to_the_peak_and_fits_its_width() {
        let pts: Vec<(f64, f64)> = (0..100).map(|i| (i as f64 / 10.0, i as f64)).collect();
        let s = sparkline(&pts, 40);
        assert_eq!(s.chars().count(), 34, "{s}");
        assert_eq!(s.chars().next(), Some('▁'));
        assert_eq!(s.chars().last(), Some('█'));
        // Each bar is its slice's largest value: a lone spike shows.
        let mut spike = vec![(0.0, 0.0); 80];
        spike[41].1 = 5.0;
        spike[0].1 = 1.0;
        let s: Vec<char> = sparkline(&spike, 40).chars().collect();
        assert_eq!((s.len(), s[20], s[0], s[1]), (40, '█', '▂', '▁'));
        assert_eq!(sparkline(&[], 40), "");
        assert_eq!(sparkline(&[(0.0, 0.0)], 40), "");
    }

    #[test]
    fn storms_that_cannot_fit_in_memory_are_refused() {
        let gib = 1024 * 1024;
        // This machine: 24 GiB, about 23 available.
        let avail = Some(23 * gib);
        assert!(check_memory(100_000, true, avail).is_ok());
        let e = check_memory(1_000_000, true, avail).expect_err("1,000,000 simulated nodes");
        assert!(e.to_string().contains("34.3 GiB"), "{e}");
        assert!(check_memory(10_240, false, avail).is_ok());
        assert!(check_memory(100_000, false, avail).is_err());
        // Unknown: let it run.
        assert!(check_memory(1_000_000, true, None).is_ok());
    }

    #[test]
    fn fit_recovers_a_log_line() {
        let pts: Vec<(f64, f64)> = [10.0, 20.0, 40.0, 80.0]
            .iter()
            .map(|&n: &f64| (n, 3.0 + 2.0 * n.log2()))
            .collect();
        let f = fit_log2(&pts).expect("fit");
        assert!(
            (f.a - 3.0).abs() < 1e-9 && (f.b - 2.0).abs() < 1e-9,
            "{f:?}"
        );
        assert!((f.r2 - 1.0).abs() < 1e-9);
        assert!(fit_log2(&pts[..1]).is_none());
    }
}
