//! The terminal UI (ratatui + crossterm): what `peerchat` with no subcommand runs.
//!
//! It runs the user's node in this process, the way `peerchat run` does (with
//! its local API and `DIR/api.json`), or attaches to the node already running
//! on the data dir. Either way it talks to the node only through the local API
//! ([`ApiClient`], events by SSE). Every API call runs in a background task
//! whose answer comes back on a channel: the draw loop never waits for the
//! network.
//!
//! - `app`: the state, and what keys and answers do to it (no I/O);
//! - `ui`: drawing the state (no I/O);
//! - this module: the terminal, the node, the background tasks.

mod app;
mod ui;

#[cfg(test)]
mod tests;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use peerchat_node::api::{self, ApiClient, ApiServer};
use peerchat_node::chat::{self, ChatConfig, ChatNode};
use peerchat_node::datadir::{ApiInfo, DataDir, IDENTITY_FILE};
use ratatui::crossterm::event::{self, DisableBracketedPaste, EnableBracketedPaste};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use app::{App, Reply, Request};
use ui::Theme;

/// Options of the terminal UI (`peerchat` with no subcommand).
#[derive(Args, Debug, Clone)]
pub(crate) struct TuiArgs {
    /// Terminal UI: where the node it runs listens (UDP for the DHT, TCP for chat sessions).
    #[arg(long, value_name = "IP:PORT", default_value = "0.0.0.0:7420")]
    listen: SocketAddr,
    /// Terminal UI: address of the local API of the node it runs (127.0.0.1 only; port 0 picks a free one).
    #[arg(long, value_name = "127.0.0.1:PORT", default_value = "127.0.0.1:0")]
    api: SocketAddr,
}

/// How long a status request may take (it only reads the node's state).
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the status bar is refreshed.
const TICK: Duration = Duration::from_secs(2);
/// Wait between attempts to reconnect the event stream.
const EVENTS_RETRY: Duration = Duration::from_secs(2);

/// Logs go to `DIR/tui.log` (the terminal belongs to the UI).
pub(crate) fn init_logging(data_dir: Option<&Path>) {
    let dir = data_dir
        .map(Path::to_path_buf)
        .or_else(|| DataDir::default_path().ok());
    let file = dir.and_then(|d| {
        let mut b = std::fs::DirBuilder::new();
        b.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
        b.create(&d).ok()?;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join("tui.log"))
            .ok()
    });
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false);
    match file {
        Some(f) => builder.with_writer(std::sync::Mutex::new(f)).init(),
        None => builder.with_writer(std::io::sink).init(),
    }
}

/// Runs the terminal UI on the data dir (`None`: the platform's default).
pub(crate) async fn run(data_dir: Option<PathBuf>, args: TuiArgs) -> Result<()> {
    let dir = match data_dir {
        Some(d) => d,
        None => DataDir::default_path()?,
    };
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        bail!(
            "the terminal UI needs a terminal; in scripts use the subcommands (`peerchat --help`), e.g. `peerchat --data-dir {} run`",
            dir.display()
        );
    }
    let theme = Theme::from_env();
    let mut terminal = ratatui::try_init().context("cannot set up the terminal")?;
    let _ = ratatui::crossterm::execute!(std::io::stdout(), EnableBracketedPaste);
    let mut ctl = Controller::new(dir, args);
    let result = ctl.main_loop(&mut terminal, theme).await;
    let _ = ratatui::crossterm::execute!(std::io::stdout(), DisableBracketedPaste);
    let _ = ratatui::try_restore();
    ctl.stop().await;
    result
}

/// What the background tasks that own the node report.
enum NodeMsg {
    /// The look for a running node ended: its client if one answers.
    Probed(Option<ApiClient>),
    /// The node in this process started (or failed to).
    Started {
        result: Result<(ChatNode, ApiServer), String>,
        returning: bool,
        ask: Option<String>,
        hint: Option<String>,
    },
}

struct Controller {
    dir: PathBuf,
    args: TuiArgs,
    node: Option<(ChatNode, ApiServer)>,
    client: Option<ApiClient>,
    replies: mpsc::UnboundedSender<Reply>,
    replies_rx: mpsc::UnboundedReceiver<Reply>,
    nodes: mpsc::UnboundedSender<NodeMsg>,
    nodes_rx: mpsc::UnboundedReceiver<NodeMsg>,
    events: Option<JoinHandle<()>>,
    /// Attached to another process's node: its `api.json`.
    attached: Option<ApiInfo>,
}

enum Wake {
    Term(event::Event),
    Reply(Reply),
    Node(NodeMsg),
    Tick,
    Signal,
}

impl Controller {
    fn new(dir: PathBuf, args: TuiArgs) -> Controller {
        let (replies, replies_rx) = mpsc::unbounded_channel();
        let (nodes, nodes_rx) = mpsc::unbounded_channel();
        Controller {
            dir,
            args,
            node: None,
            client: None,
            replies,
            replies_rx,
            nodes,
            nodes_rx,
            events: None,
            attached: None,
        }
    }

    async fn main_loop(
        &mut self,
        terminal: &mut ratatui::DefaultTerminal,
        theme: Theme,
    ) -> Result<()> {
        // Keys come from a thread that blocks on the terminal.
        let (keys_tx, mut keys) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            while let Ok(ev) = event::read() {
                if keys_tx.send(ev).is_err() {
                    break;
                }
            }
        });
        let mut signal = tokio::spawn(crate::shutdown_signal());
        let mut tick = tokio::time::interval(TICK);
        let mut app = App::new();
        self.probe();
        loop {
            terminal
                .draw(|f| ui::draw(f, &app, &theme))
                .context("drawing the terminal UI")?;
            if app.quit {
                return Ok(());
            }
            let wake = tokio::select! {
                Some(ev) = keys.recv() => Wake::Term(ev),
                Some(r) = self.replies_rx.recv() => Wake::Reply(r),
                Some(m) = self.nodes_rx.recv() => Wake::Node(m),
                _ = tick.tick() => Wake::Tick,
                _ = &mut signal => Wake::Signal,
            };
            let reqs = match wake {
                Wake::Term(ev) => app.on_event(ev),
                Wake::Reply(r) => {
                    if matches!(r, Reply::Status(Err(_))) {
                        self.reattach();
                    }
                    app.on_reply(r)
                }
                Wake::Node(m) => self.on_node(m, &mut app),
                Wake::Tick => app.on_tick(),
                Wake::Signal => return Ok(()),
            };
            for r in reqs {
                self.dispatch(r);
            }
            if let Some(url) = app.print.take()
                && print_url(terminal, &mut keys, &mut signal, &url).await?
            {
                return Ok(());
            }
        }
    }

    /// Looks for a node already running on the data dir (in the background).
    fn probe(&self) {
        let dir = self.dir.clone();
        let tx = self.nodes.clone();
        tokio::spawn(async move {
            let client = match ApiClient::from_data_dir(&dir) {
                Ok(c) => {
                    let c = c.with_timeout(STATUS_TIMEOUT);
                    c.status().await.ok().map(|_| c)
                }
                Err(_) => None,
            };
            let _ = tx.send(NodeMsg::Probed(client));
        });
    }

    fn on_node(&mut self, m: NodeMsg, app: &mut App) -> Vec<Request> {
        match m {
            NodeMsg::Probed(Some(c)) => {
                self.attached = DataDir::read_api_info(&self.dir).ok();
                self.use_client(c.with_timeout(Duration::from_secs(60)));
                app.on_reply(Reply::Attached)
            }
            NodeMsg::Probed(None) => {
                if !self.dir.join(IDENTITY_FILE).exists() {
                    return app.on_reply(Reply::FirstRun);
                }
                app.on_reply(Reply::Waiting(
                    "starting your node and joining the network through saved contacts…".into(),
                ));
                self.start(None, true);
                Vec::new()
            }
            NodeMsg::Started {
                result,
                returning,
                ask,
                hint,
            } => {
                let result = result.map(|(node, server)| {
                    let client = ApiClient::new(server.addr(), server.token());
                    self.node = Some((node, server));
                    self.use_client(client);
                });
                app.on_reply(Reply::Started {
                    result,
                    returning,
                    ask,
                    hint,
                })
            }
        }
    }

    /// Attached to another process's node that stopped answering: if a node
    /// runs on the data dir again (another address or token in `api.json`),
    /// talk to that one.
    fn reattach(&mut self) {
        if self.node.is_some() {
            return;
        }
        let Ok(info) = DataDir::read_api_info(&self.dir) else {
            return;
        };
        if self.attached.as_ref() == Some(&info) {
            return;
        }
        self.attached = Some(info.clone());
        self.use_client(ApiClient::new(info.addr, info.token));
    }

    /// Talks to the node through `client` from now on, and follows its events.
    fn use_client(&mut self, client: ApiClient) {
        if let Some(t) = self.events.take() {
            t.abort();
        }
        let tx = self.replies.clone();
        let events_client = client.clone();
        self.events = Some(tokio::spawn(async move {
            loop {
                let why = match events_client.events().await {
                    Ok(mut stream) => loop {
                        match stream.next().await {
                            Ok(Some(ev)) => {
                                if tx.send(Reply::Event(ev)).is_err() {
                                    return;
                                }
                            }
                            Ok(None) => break "the node closed the event stream".to_string(),
                            Err(e) => break e.to_string(),
                        }
                    },
                    Err(e) => e.to_string(),
                };
                if tx.send(Reply::EventsDown(why)).is_err() {
                    return;
                }
                tokio::time::sleep(EVENTS_RETRY).await;
            }
        }));
        self.client = Some(client);
    }

    /// Starts the node in this process, in the background.
    fn start(&mut self, bootstrap: Option<String>, returning: bool) {
        let old = self.node.take();
        self.client = None;
        if let Some(t) = self.events.take() {
            t.abort();
        }
        let (dir, listen, api_addr) = (self.dir.clone(), self.args.listen, self.args.api);
        let tx = self.nodes.clone();
        tokio::spawn(async move {
            if let Some((node, server)) = old {
                let _ = server.shutdown().await;
                node.shutdown().await;
            }
            let (result, hint, saved) = match start_node(dir, listen, api_addr, bootstrap).await {
                Ok(s) => (Ok((s.node, s.server)), s.hint, s.saved_answered),
                Err(e) => (Err(e), None, None),
            };
            // A returning user is asked for a bootstrap address only if no saved contact answered.
            let ask = match (returning, saved) {
                (false, _) | (true, Some(true)) => None,
                (true, Some(false)) => Some("None of your saved contacts answered.".to_string()),
                (true, None) => Some("No contacts were saved by an earlier run.".to_string()),
            };
            let _ = tx.send(NodeMsg::Started {
                result,
                returning,
                ask,
                hint,
            });
        });
    }

    fn dispatch(&mut self, req: Request) {
        let tx = self.replies.clone();
        match req {
            Request::Quit => {}
            Request::Init { name } => {
                let dir = self.dir.clone();
                tokio::spawn(async move {
                    let r = chat::init(&dir, &name)
                        .await
                        .map(|i| i.name)
                        .map_err(|e| e.to_string());
                    let _ = tx.send(Reply::Inited(r));
                });
            }
            Request::Start { bootstrap } => self.start(bootstrap, false),
            Request::Rejoin { bootstrap } => self.start(Some(bootstrap), false),
            Request::Web => {
                let r = DataDir::read_api_info(&self.dir)
                    .map(|info| format!("http://{}/#token={}", info.addr, info.token))
                    .map_err(|e| e.to_string());
                let _ = tx.send(Reply::Web(r));
            }
            req => {
                let Some(c) = self.client.clone() else {
                    let _ = tx.send(not_connected(req));
                    return;
                };
                tokio::spawn(async move {
                    let _ = tx.send(call(c, req).await);
                });
            }
        }
    }

    /// Stops the node if it runs in this process.
    async fn stop(&mut self) {
        if let Some(t) = self.events.take() {
            t.abort();
        }
        if let Some((node, server)) = self.node.take() {
            eprintln!("stopping the node…");
            if let Err(e) = server.shutdown().await {
                tracing::warn!("{e}");
            }
            node.shutdown().await;
            eprintln!("stopped");
        }
    }
}

/// Leaves the alternate screen to print the web app's address on the main
/// screen (a long line wraps softly there and copies whole; it stays in the
/// scrollback after the UI ends), then comes back on Enter. True if a signal
/// came meanwhile (quit).
async fn print_url(
    terminal: &mut ratatui::DefaultTerminal,
    keys: &mut mpsc::UnboundedReceiver<event::Event>,
    signal: &mut JoinHandle<()>,
    url: &str,
) -> Result<bool> {
    use ratatui::crossterm::event::{Event, KeyCode, KeyEventKind};
    use ratatui::crossterm::terminal::{
        EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode, enable_raw_mode,
    };
    let mut out = std::io::stdout();
    ratatui::crossterm::execute!(out, LeaveAlternateScreen, DisableBracketedPaste)?;
    disable_raw_mode()?;
    println!();
    println!(
        "The Peerchat web app: open this address in a browser on this machine (it holds the API token: do not share it)."
    );
    println!();
    println!("{url}");
    println!();
    println!("Press Enter to go back to the chat.");
    let quit = loop {
        tokio::select! {
            k = keys.recv() => match k {
                Some(Event::Key(k)) if k.kind != KeyEventKind::Release
                    && matches!(k.code, KeyCode::Enter | KeyCode::Esc) => break false,
                Some(_) => {}
                None => break true,
            },
            _ = &mut *signal => break true,
        }
    };
    enable_raw_mode()?;
    ratatui::crossterm::execute!(out, EnterAlternateScreen, EnableBracketedPaste)?;
    // A full redraw. (Not `Terminal::clear`: it reads the cursor position from
    // the terminal, which the thread that reads keys holds.)
    let size = terminal.size()?;
    terminal.resize(ratatui::layout::Rect::new(0, 0, size.width, size.height))?;
    Ok(quit)
}

/// The answer to a request made before any node answers.
fn not_connected(req: Request) -> Reply {
    let e = "not connected to a node yet".to_string();
    match req {
        Request::Status => Reply::Status(Err(e)),
        Request::Conversations | Request::MarkRead(_) => Reply::Conversations(Err(e)),
        Request::History(n) | Request::FromKey { name: n, .. } => Reply::History(n, Err(e)),
        Request::Send { to, text } => Reply::Sent {
            to,
            text,
            result: Err(e),
        },
        Request::Add { typed, .. } => Reply::Added {
            typed,
            result: Err(e),
        },
        Request::Whois { typed, open, .. } => Reply::Whois {
            typed,
            open,
            result: Err(e),
        },
        _ => Reply::Status(Err(e)),
    }
}

/// One API call (in a background task).
async fn call(c: ApiClient, req: Request) -> Reply {
    let s = |e: api::ApiClientError| e.to_string();
    match req {
        Request::Status => Reply::Status(c.with_timeout(STATUS_TIMEOUT).status().await.map_err(s)),
        Request::Conversations => Reply::Conversations(c.conversations().await.map_err(s)),
        Request::History(name) => {
            let r = c.history(&name, Some(app::HISTORY_LIMIT)).await.map_err(s);
            Reply::History(name, r)
        }
        Request::FromKey { name, key } => {
            let r = c
                .inbox(Some(app::HISTORY_LIMIT))
                .await
                .map_err(s)
                .map(|msgs| {
                    let mut mine: Vec<_> = msgs.into_iter().filter(|m| m.peer_key == key).collect();
                    mine.reverse();
                    mine
                });
            Reply::History(name, r)
        }
        Request::MarkRead(name) => match c.mark_read(&name).await {
            Ok(_) => Reply::Conversations(c.conversations().await.map_err(s)),
            Err(e) => Reply::Conversations(Err(e.to_string())),
        },
        Request::Send { to, text } => {
            let result = c.send(&to, &text).await.map_err(s);
            Reply::Sent { to, text, result }
        }
        Request::Add { name, typed } => Reply::Added {
            typed,
            result: c.add_contact(&name).await.map_err(s),
        },
        Request::Whois { name, typed, open } => Reply::Whois {
            typed,
            open,
            result: c.whois(&name).await.map_err(s),
        },
        other => not_connected(other),
    }
}

/// This machine's address on its default route (what others on the network
/// most likely reach it at), found by connecting a UDP socket, which sends
/// nothing. `None` without a route.
fn outbound_ip() -> Option<String> {
    let sock = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    // A documentation address (RFC 5737): only the route to it matters.
    sock.connect("192.0.2.1:9").ok()?;
    let ip = sock.local_addr().ok()?.ip();
    (!ip.is_unspecified() && !ip.is_loopback()).then(|| ip.to_string())
}

/// A node started by [`start_node`].
struct Started {
    node: ChatNode,
    server: ApiServer,
    /// A line to show.
    hint: Option<String>,
    /// Started without a bootstrap address: whether a saved contact answered
    /// the join (`None`: there were none to ask).
    saved_answered: Option<bool>,
}

/// Starts the node and its local API, as `peerchat run` does.
async fn start_node(
    dir: PathBuf,
    listen: SocketAddr,
    api_addr: SocketAddr,
    bootstrap: Option<String>,
) -> Result<Started, String> {
    let addrs = match &bootstrap {
        Some(b) => crate::dht_cmd::resolve(std::slice::from_ref(b))
            .await
            .map_err(|e| format!("{e:#}"))?,
        None => Vec::new(),
    };
    let mut cfg = ChatConfig::new(dir, listen);
    cfg.bootstrap = addrs;
    let node = ChatNode::start(cfg).await.map_err(|e| e.to_string())?;
    let server = match api::serve(&node, api_addr, std::future::pending()).await {
        Ok(s) => s,
        Err(e) => {
            node.shutdown().await;
            return Err(e.to_string());
        }
    };
    let client = ApiClient::new(server.addr(), server.token()).with_timeout(STATUS_TIMEOUT);
    let peers = client.status().await.map(|s| s.routing_table).unwrap_or(0);
    // The join from saved contacts is the node's "bootstrap" lookup, in the
    // network view's recent lookups; none if there were no saved contacts.
    let saved_answered = match (&bootstrap, client.network().await) {
        (Some(_), _) => None,
        (None, Ok(n)) => n
            .lookups
            .iter()
            .filter(|l| l.kind == "bootstrap")
            .map(|l| l.found > 0)
            .reduce(|a, b| a || b),
        (None, Err(_)) => Some(peers > 0),
    };
    let at = node.listen_addr();
    let ip = if at.ip().is_unspecified() {
        outbound_ip().unwrap_or_else(|| "THIS_MACHINE_IP".to_string())
    } else {
        at.ip().to_string()
    };
    let hint = match (&bootstrap, peers) {
        (None, 0) => Some(format!(
            "new network: others join with the bootstrap address {ip}:{}",
            at.port()
        )),
        (Some(b), 0) => Some(format!(
            "nobody answered at {b} yet; retrying in the background"
        )),
        (Some(b), 1) => Some(format!("joined through {b}: 1 peer")),
        (Some(b), n) => Some(format!("joined through {b}: {n} peers")),
        (None, _) => None,
    };
    Ok(Started {
        node,
        server,
        hint,
        saved_answered,
    })
}
