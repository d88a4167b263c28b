//! The chat commands: `init`, `run` (the node, headless, with its local API),
//! and the scriptable clients of a running node (`send`, `inbox`, `history`,
//! `status`, `whois`, `contacts`, `add`, ...), which talk to it only through
//! the local API (see `docs/api.md`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use peerchat_node::api::{self, ApiClient};
use peerchat_node::chat::{self, ChatConfig, ChatNode, MessageView};
use peerchat_node::datadir::DataDir;
use serde::Serialize;

/// Chat commands.
#[derive(Subcommand, Debug)]
pub(crate) enum ChatCommand {
    /// Create a user: an identity (ed25519 key), a database and a profile in the data dir.
    Init {
        /// The username to claim on the network (letters a-z, digits, '_', '-', '.'; at most 32).
        #[arg(long)]
        name: String,
    },
    /// Run this user's node in the foreground until Ctrl-C (SIGINT) or SIGTERM, with its local API.
    Run(RunArgs),
    /// Send a message; prints its id. The message is queued durably and delivered when possible.
    Send {
        /// The recipient's username.
        name: String,
        /// The text (several words are joined with spaces; use `--` before a text starting with '-').
        #[arg(required = true, num_args = 1..)]
        text: Vec<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Received messages, newest first.
    Inbox {
        /// How many at most.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The conversation with a user, oldest first, with delivery states.
    History {
        /// The other user's name.
        name: String,
        /// How many of the latest messages at most.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Conversations, newest first, with unread counts.
    Conversations {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Mark the conversation with a user read (the sender sees "read").
    Read {
        /// The other user's name.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// This node: user, node id, addresses, routing table, outbox and relay queue.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Who holds a username: key fingerprint and current addresses.
    Whois {
        /// The username.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Known users and their key fingerprints.
    Contacts {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Add a contact by name (its key is pinned); prints the fingerprint to compare.
    Add {
        /// The username.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Options of `peerchat run`.
#[derive(Args, Debug)]
pub(crate) struct RunArgs {
    /// Address for the DHT (UDP) and chat sessions (TCP).
    #[arg(long, value_name = "IP:PORT", default_value = "0.0.0.0:7420")]
    listen: SocketAddr,
    /// A node of the network to join (repeat for several). Without any and without
    /// saved contacts, this node starts a new network.
    #[arg(long, value_name = "IP:PORT")]
    bootstrap: Vec<String>,
    /// Address of the local API (127.0.0.1 only; port 0 picks a free one).
    #[arg(long, value_name = "127.0.0.1:PORT", default_value = "127.0.0.1:0")]
    api: SocketAddr,
    /// Print the address of the web app (served by the local API, with the token
    /// in the address's `#` fragment): open it in a browser on this machine.
    #[arg(long)]
    web: bool,
    /// DHT bucket size and replication factor.
    #[arg(long, default_value_t = peerchat_kad::DEFAULT_K, value_parser = crate::at_least_one)]
    k: usize,
    /// DHT lookup parallelism.
    #[arg(long, default_value_t = peerchat_kad::DEFAULT_ALPHA, value_parser = crate::at_least_one)]
    alpha: usize,
}

/// Runs a chat command with `data_dir` (`None`: the platform's default).
pub(crate) async fn run(data_dir: Option<PathBuf>, cmd: ChatCommand) -> Result<()> {
    let dir = match data_dir {
        Some(d) => d,
        None => DataDir::default_path()?,
    };
    match cmd {
        ChatCommand::Init { name } => init(&dir, &name).await,
        ChatCommand::Run(args) => run_node(&dir, args).await,
        ChatCommand::Send { name, text, json } => {
            let id = client(&dir)?.send(&name, &text.join(" ")).await?;
            if json {
                print_json(&serde_json::json!({ "id": id }))
            } else {
                println!("{id}");
                Ok(())
            }
        }
        ChatCommand::Inbox { limit, json } => {
            let msgs = client(&dir)?.inbox(Some(limit.max(1))).await?;
            if json {
                return print_json(&msgs);
            }
            if msgs.is_empty() {
                println!("no messages yet");
                return Ok(());
            }
            print!("{}", render_inbox(&msgs));
            Ok(())
        }
        ChatCommand::History { name, limit, json } => {
            let msgs = client(&dir)?.history(&name, Some(limit.max(1))).await?;
            if json {
                return print_json(&msgs);
            }
            if msgs.is_empty() {
                println!("no messages with {name} yet");
                return Ok(());
            }
            print!("{}", render_history(&msgs));
            Ok(())
        }
        ChatCommand::Conversations { json } => {
            let convs = client(&dir)?.conversations().await?;
            if json {
                return print_json(&convs);
            }
            if convs.is_empty() {
                println!("no conversations yet: write to someone with `peerchat send NAME TEXT`");
                return Ok(());
            }
            let w = width(convs.iter().map(|c| c.peer.as_str()), "WITH");
            println!(
                "{:<w$}  {:>6}  {:<16}  LAST MESSAGE",
                "WITH", "UNREAD", "TIME (UTC)"
            );
            for c in &convs {
                let who = if c.last.direction == "out" {
                    "you: "
                } else {
                    ""
                };
                println!(
                    "{:<w$}  {:>6}  {:<16}  {who}{}",
                    c.peer,
                    c.unread,
                    utc_minutes(c.last.sent_ms),
                    one_line(&c.last.text, 60)
                );
            }
            Ok(())
        }
        ChatCommand::Read { name, json } => {
            let marked = client(&dir)?.mark_read(&name).await?;
            if json {
                print_json(&serde_json::json!({ "marked": marked }))
            } else {
                println!("{marked} message(s) from {name} marked read");
                Ok(())
            }
        }
        ChatCommand::Status { json } => {
            let s = client(&dir)?.status().await?;
            if json {
                return print_json(&s);
            }
            let network = if s.online {
                format!("online, {} peers in the routing table", s.routing_table)
            } else {
                "offline (no peers in the routing table)".to_string()
            };
            let claim = if s.name_claimed {
                "held by this key on the network"
            } else {
                "not confirmed yet (alone on the network, or taken by another key)"
            };
            let rows = [
                ("user", s.name),
                ("fingerprint", s.fingerprint),
                ("key", s.key),
                ("node id", s.node_id),
                ("listen", s.listen),
                (
                    "external",
                    s.external.unwrap_or_else(|| "not known yet".into()),
                ),
                ("network", network),
                ("name", claim.to_string()),
                (
                    "outbox",
                    format!("{} waiting for acknowledgement", s.outbox),
                ),
                (
                    "relay queue",
                    format!("{} held here for offline users", s.relay_queue),
                ),
                ("unread", s.unread.to_string()),
                (
                    "refused",
                    format!(
                        "{} envelopes since start (forged, tampered, malformed or over quota)",
                        s.refused_envelopes
                    ),
                ),
            ];
            print_rows(&rows);
            Ok(())
        }
        ChatCommand::Whois { name, json } => {
            let w = client(&dir)?.whois(&name).await?;
            if json {
                return print_json(&w);
            }
            let mut rows = vec![
                ("name", w.name.clone()),
                ("fingerprint", w.fingerprint),
                ("key", w.key),
            ];
            match w.presence_ms {
                Some(ms) => {
                    rows.push(("chat at", list_or_none(&w.chat_addrs)));
                    rows.push(("dht at", list_or_none(&w.dht_addrs)));
                    rows.push(("seen", format!("{} UTC", utc_seconds(ms))));
                }
                None => rows.push((
                    "addresses",
                    format!("none known (no presence record: {} may be offline)", w.name),
                )),
            }
            print_rows(&rows);
            Ok(())
        }
        ChatCommand::Contacts { json } => {
            let cs = client(&dir)?.contacts().await?;
            if json {
                return print_json(&cs);
            }
            if cs.is_empty() {
                println!("no contacts yet: add one with `peerchat add NAME`");
                return Ok(());
            }
            let w = width(cs.iter().map(|c| c.name.as_str()), "NAME");
            println!("{:<w$}  FINGERPRINT", "NAME");
            for c in &cs {
                println!("{:<w$}  {}", c.name, c.fingerprint);
            }
            Ok(())
        }
        ChatCommand::Add { name, json } => {
            let c = client(&dir)?.add_contact(&name).await?;
            if json {
                return print_json(&c);
            }
            println!("added {}", c.name);
            println!("fingerprint  {}", c.fingerprint);
            println!(
                "Compare it with {} in person or over another channel: the same words on both sides mean nobody is in between.",
                c.name
            );
            Ok(())
        }
    }
}

fn client(dir: &Path) -> Result<ApiClient> {
    Ok(ApiClient::from_data_dir(dir)?)
}

async fn init(dir: &Path, name: &str) -> Result<()> {
    let info = chat::init(dir, name).await?;
    println!("created user {} in {}", info.name, dir.display());
    println!("fingerprint  {}", info.key.fingerprint());
    println!(
        "next: `peerchat --data-dir {} run` (add `--bootstrap IP:PORT` to join someone's network)",
        dir.display()
    );
    Ok(())
}

async fn run_node(dir: &Path, a: RunArgs) -> Result<()> {
    let bootstrap = crate::dht_cmd::resolve(&a.bootstrap).await?;
    let mut cfg = ChatConfig::new(dir.to_path_buf(), a.listen);
    cfg.bootstrap = bootstrap.clone();
    cfg.k = a.k;
    cfg.alpha = a.alpha;
    // Listen for signals first: one that comes while the node starts stops it too.
    let mut signal = tokio::spawn(crate::shutdown_signal());
    let node = tokio::select! {
        node = ChatNode::start(cfg) => node?,
        _ = &mut signal => {
            eprintln!("stopped before the node had started");
            return Ok(());
        }
    };
    let server = match api::serve(&node, a.api, std::future::pending()).await {
        Ok(s) => s,
        Err(e) => {
            node.shutdown().await;
            return Err(e.into());
        }
    };
    let status = node.client().status().await;
    let listen = node.listen_addr();
    match &status {
        Ok(s) => println!("peerchat: {} (fingerprint {})", s.name, s.fingerprint),
        Err(_) => println!("peerchat: key fingerprint {}", node.key().fingerprint()),
    }
    println!("data dir   {}", dir.display());
    println!("listening  {listen} (UDP for the DHT, TCP for chat sessions)");
    println!(
        "local API  {} (token in {})",
        server.url(),
        dir.join(peerchat_node::datadir::API_FILE).display()
    );
    if a.web {
        println!("web app    {}", server.web_url());
    }
    if bootstrap.is_empty() && status.as_ref().is_ok_and(|s| s.routing_table == 0) {
        let port = listen.port();
        let ip = if listen.ip().is_unspecified() {
            "THIS_MACHINE_IP".to_string()
        } else {
            listen.ip().to_string()
        };
        println!("new network: others join with `peerchat run --bootstrap {ip}:{port}`");
    }
    println!("Ctrl-C to stop.");
    let _ = signal.await;
    eprintln!("stopping...");
    if let Err(e) = server.shutdown().await {
        tracing::warn!("{e}");
    }
    node.shutdown().await;
    eprintln!("stopped");
    Ok(())
}

// ----- output ------------------------------------------------------------------

fn print_json<T: Serialize>(v: &T) -> Result<()> {
    println!(
        "{}",
        serde_json::to_string_pretty(v).context("encoding JSON")?
    );
    Ok(())
}

fn print_rows(rows: &[(&str, String)]) {
    let w = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in rows {
        println!("{k:<w$}  {v}");
    }
}

fn list_or_none(v: &[String]) -> String {
    if v.is_empty() {
        "none".to_string()
    } else {
        v.join(", ")
    }
}

fn width<'a>(items: impl Iterator<Item = &'a str>, header: &str) -> usize {
    items
        .map(|s| s.chars().count())
        .chain(std::iter::once(header.len()))
        .max()
        .unwrap_or(0)
}

/// Text as it may safely go to a terminal: control characters (escape
/// sequences from a peer) are shown escaped, not interpreted.
pub(crate) fn safe(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c == '\n' || c == '\t' || !c.is_control() {
            out.push(c);
        } else {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        }
    }
    out
}

/// The first line of a text, at most `max` characters.
fn one_line(text: &str, max: usize) -> String {
    let safe = safe(text).replace('\t', " ");
    let first = safe.lines().next().unwrap_or("");
    let more = safe.lines().nth(1).is_some();
    if first.chars().count() > max {
        let cut: String = first.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    } else if more {
        format!("{first} …")
    } else {
        first.to_string()
    }
}

/// A text under a column that starts at `indent`: later lines are indented.
fn indented(text: &str, indent: usize) -> String {
    let pad = format!("\n{}", " ".repeat(indent));
    safe(text).replace('\n', &pad)
}

fn render_inbox(msgs: &[MessageView]) -> String {
    let mut out = String::new();
    let w = width(msgs.iter().map(|m| m.from.as_str()), "FROM");
    out.push_str(&format!(
        "{:<16}  {:<w$}  {:<8}  MESSAGE\n",
        "TIME (UTC)", "FROM", "ID"
    ));
    let indent = 16 + 2 + w + 2 + 8 + 2;
    for m in msgs {
        out.push_str(&format!(
            "{:<16}  {:<w$}  {:<8}  {}\n",
            utc_minutes(m.sent_ms),
            m.from,
            m.id.get(..8).unwrap_or(&m.id),
            indented(&m.text, indent)
        ));
    }
    out
}

fn render_history(msgs: &[MessageView]) -> String {
    let mut out = String::new();
    let w = width(msgs.iter().map(|m| m.from.as_str()), "FROM");
    out.push_str(&format!(
        "{:<16}  {:<w$}  {:<9}  MESSAGE\n",
        "TIME (UTC)", "FROM", "STATE"
    ));
    let indent = 16 + 2 + w + 2 + 9 + 2;
    for m in msgs {
        out.push_str(&format!(
            "{:<16}  {:<w$}  {:<9}  {}\n",
            utc_minutes(m.sent_ms),
            m.from,
            m.state,
            indented(&m.text, indent)
        ));
    }
    out
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (H. Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

pub(crate) fn utc_parts(ms: i64) -> (i64, u32, u32, i64, i64, i64) {
    let secs = ms.div_euclid(1000);
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    (y, mo, d, sod / 3600, sod % 3600 / 60, sod % 60)
}

/// `YYYY-MM-DD HH:MM` in UTC.
pub(crate) fn utc_minutes(ms: i64) -> String {
    let (y, mo, d, h, mi, _) = utc_parts(ms);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}")
}

/// `YYYY-MM-DD HH:MM:SS` in UTC.
fn utc_seconds(ms: i64) -> String {
    let (y, mo, d, h, mi, s) = utc_parts(ms);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_times() {
        assert_eq!(utc_seconds(0), "1970-01-01 00:00:00");
        // 2000-02-29 12:34:56 UTC
        assert_eq!(utc_seconds(951_827_696_000), "2000-02-29 12:34:56");
        // 2024-12-31 23:59:59.999 UTC
        assert_eq!(utc_minutes(1_735_689_599_999), "2024-12-31 23:59");
        assert_eq!(utc_seconds(-1000), "1969-12-31 23:59:59");
    }

    #[test]
    fn terminal_safety() {
        assert_eq!(safe("hi\x1b[2Jthere"), "hi\\u{1b}[2Jthere");
        assert_eq!(safe("a\nb\tc"), "a\nb\tc");
        assert_eq!(one_line("first\nsecond", 20), "first …");
        assert_eq!(one_line("abcdef", 4), "abc…");
        assert_eq!(indented("a\nb", 3), "a\n   b");
    }

    fn msg(from: &str, text: &str, state: &str) -> MessageView {
        MessageView {
            id: "0123456789abcdef0123456789abcdef".into(),
            peer: "bob".into(),
            peer_key: "00".into(),
            direction: if from == "me" { "out" } else { "in" }.into(),
            from: from.into(),
            text: text.into(),
            sent_ms: 951_827_696_000,
            received_ms: 951_827_696_000,
            state: state.into(),
        }
    }

    #[test]
    fn tables_align() {
        let h = render_history(&[
            msg("me", "hi", "delivered"),
            msg("bob", "yo\nthere", "read"),
        ]);
        let lines: Vec<&str> = h.lines().collect();
        assert_eq!(lines[0], "TIME (UTC)        FROM  STATE      MESSAGE");
        assert_eq!(lines[1], "2000-02-29 12:34  me    delivered  hi");
        assert_eq!(lines[2], "2000-02-29 12:34  bob   read       yo");
        assert_eq!(lines[3], format!("{}there", " ".repeat(35)));
        let i = render_inbox(&[msg("bob", "hello", "delivered")]);
        assert!(
            i.lines()
                .nth(1)
                .is_some_and(|l| l.contains("bob   01234567  hello"))
        );
    }
}
