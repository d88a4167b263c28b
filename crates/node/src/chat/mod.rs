//! The chat node: a user's identity, names and presence in the DHT, sealed
//! messages delivered over Noise sessions or through relays, all of it durable
//! in the user's database. [`ChatNode`] is what `peerchat run` runs; the local
//! API, the CLI and the UIs only call its methods.

mod delivery;
mod directory;
#[doc(hidden)]
pub mod fuzz;
mod link;
mod relay;
pub mod views;
mod wire;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use peerchat_chat::{Identity, MessageId, NameClaim, RelayConfig, RelayQueue, UserKey, Username};
use peerchat_kad::{Config, NodeId, NodeInfo};
use tokio::net::TcpListener;
use tokio::sync::{Mutex, Notify, broadcast, mpsc, watch};
use tokio::task::JoinHandle;

use crate::datadir::{DataDir, DataDirError};
use crate::db::{Db, DbError, Profile, StoredMessage, meta_keys};
use crate::session::SessionKeys;
use crate::{NodeConfig, NodeError, NodeHandle};

pub use views::{ChatEvent, ContactView, ConversationView, MessageView, StatusView, WhoisView};

/// How to run a chat node.
#[derive(Clone, Debug)]
pub struct ChatConfig {
    /// The user's data directory.
    pub data_dir: PathBuf,
    /// UDP (DHT) and TCP (sessions) address; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Nodes to join through; none and no saved contacts: a new network.
    pub bootstrap: Vec<SocketAddr>,
    /// DHT bucket size and replication.
    pub k: usize,
    /// DHT lookup parallelism.
    pub alpha: usize,
    /// What this node keeps for offline users.
    pub relay: RelayConfig,
    /// How often presence is republished.
    pub presence_every: Duration,
    /// How often the mailbox is fetched after login. Relays push what they
    /// hold as soon as they see our presence, so this pull is only the safety
    /// net; each costs a lookup and `k` requests.
    pub fetch_every: Duration,
    /// How often relays retry pushing held messages to their recipients.
    pub relay_retry_every: Duration,
    /// Reader threads of the database (0: the writer's thread reads too; one
    /// thread and one connection per node, for benchmarks running many nodes).
    pub db_readers: usize,
    /// Pages of SQLite cache the database keeps between statements (`None`:
    /// SQLite's default, up to 2 MiB; see [`crate::db::DbOptions::cache_pages`]).
    /// A tiny cache saves memory in processes running many nodes.
    pub db_cache_pages: Option<u32>,
    /// Events buffered for slow subscribers (allocated up front: keep it small
    /// when running many nodes in one process).
    pub event_buffer: usize,
}

impl ChatConfig {
    /// Defaults for a data dir and listen address.
    pub fn new(data_dir: PathBuf, listen: SocketAddr) -> ChatConfig {
        ChatConfig {
            data_dir,
            listen,
            bootstrap: Vec::new(),
            k: peerchat_kad::DEFAULT_K,
            alpha: peerchat_kad::DEFAULT_ALPHA,
            relay: RelayConfig::default(),
            presence_every: Duration::from_secs(300),
            fetch_every: Duration::from_secs(600),
            relay_retry_every: Duration::from_secs(5),
            db_readers: crate::db::DbOptions::default().readers,
            db_cache_pages: None,
            event_buffer: 16_384,
        }
    }
}

/// What can go wrong in the chat node.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    /// The data directory.
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    /// The database.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The DHT node.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// The data dir has no profile.
    #[error("no profile in {0}: run `peerchat --data-dir {0} init --name NAME` first")]
    NotInitialized(String),
    /// The data dir already holds an identity.
    #[error("{0} already holds an identity; use another --data-dir for another user")]
    AlreadyInitialized(String),
    /// A name that breaks the rules.
    #[error("invalid name: {0}")]
    Name(#[from] peerchat_chat::NameError),
    /// Nobody holds this name.
    #[error("no such user: {0}")]
    NoSuchUser(String),
    /// A contact's key is not the one pinned.
    #[error(
        "the key of {name} changed (pinned {pinned}, now {now}); someone may be impersonating them"
    )]
    KeyChanged {
        /// The name.
        name: String,
        /// The pinned fingerprint.
        pinned: String,
        /// The fingerprint the network gives now.
        now: String,
    },
    /// A message that cannot be sent.
    #[error("{0}")]
    BadMessage(String),
    /// The TCP port for sessions.
    #[error("cannot listen for sessions on TCP {addr}: {source} (choose another --listen port)")]
    Tcp {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// Starts the DHT node on UDP and binds the sessions' TCP listener on the same
/// port. Asked for port 0, the kernel may pick a UDP port whose number a TCP
/// socket already holds (another connection's ephemeral port), or the other
/// way round: the pair is then tried again on another port, TCP first.
async fn bind_udp_and_tcp(
    mut cfg: NodeConfig,
) -> Result<(NodeHandle, JoinHandle<()>, TcpListener), ChatError> {
    let tcp_error = |addr, source| ChatError::Tcp { addr, source };
    if cfg.listen.port() != 0 {
        let (dht, task) = crate::spawn(cfg).await?;
        let addr = dht.local_addr();
        let tcp = TcpListener::bind(addr)
            .await
            .map_err(|e| tcp_error(addr, e))?;
        return Ok((dht, task, tcp));
    }
    let any = cfg.listen;
    let mut attempts = 0;
    loop {
        let tcp = TcpListener::bind(any)
            .await
            .map_err(|e| tcp_error(any, e))?;
        cfg.listen = tcp.local_addr().map_err(|e| tcp_error(any, e))?;
        match crate::spawn(cfg.clone()).await {
            Ok((dht, task)) => return Ok((dht, task, tcp)),
            Err(NodeError::Bind { source, .. })
                if source.kind() == std::io::ErrorKind::AddrInUse && attempts < 16 =>
            {
                attempts += 1;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Unix time in milliseconds (the node's clock; the chat core takes it as input).
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Locks one of the node's small synchronous caches. A panic while one was held
/// leaves a cache, not a broken invariant: go on with what it holds.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub(crate) struct Inner {
    pub(crate) identity: Identity,
    pub(crate) me: UserKey,
    pub(crate) name: Username,
    pub(crate) db: Db,
    pub(crate) dht: NodeHandle,
    pub(crate) keys: SessionKeys,
    pub(crate) listen: SocketAddr,
    pub(crate) config: ChatConfig,
    pub(crate) relay: Mutex<RelayQueue>,
    /// Sessions to peers, reused between messages.
    pub(crate) sessions: Mutex<HashMap<UserKey, Arc<Mutex<Option<crate::session::Session>>>>>,
    pub(crate) events: broadcast::Sender<ChatEvent>,
    pub(crate) outbox_wake: Notify,
    pub(crate) claimed: AtomicBool,
    pub(crate) shutdown: watch::Receiver<bool>,
    /// Names of keys seen (contacts), cached for views.
    pub(crate) names: Mutex<HashMap<UserKey, String>>,
    /// Keys of pinned contacts by name, cached (a pin never changes).
    pub(crate) pinned: std::sync::Mutex<HashMap<String, UserKey>>,
    /// The name claims this node stores, as held in the database (`None`: no
    /// claim), cached: resolving a name must not wait for the database.
    pub(crate) claims: std::sync::Mutex<HashMap<String, Option<Vec<u8>>>>,
    /// Key exchanges with recipients, kept for bursts of messages.
    pub(crate) sealers: std::sync::Mutex<HashMap<UserKey, peerchat_chat::Sealer>>,
    /// Key exchanges with senders' ephemeral keys, kept likewise.
    pub(crate) opened: peerchat_chat::OpenCache,
    /// Envelopes refused since start (forged, tampered, malformed, not for us,
    /// or over a relay quota): counted, shown by `status`.
    pub(crate) refused: std::sync::atomic::AtomicU64,
    /// Streaming links to peers.
    pub(crate) links: Mutex<link::Links>,
    /// Presence records looked up recently.
    pub(crate) presence: Mutex<HashMap<UserKey, (peerchat_chat::Presence, std::time::Instant)>>,
    /// Messages taken from relays whose relay acks and sender receipts are
    /// still to be sent (in batches, by [`delivery::after_delivery_worker`]).
    pub(crate) after_delivery: delivery::AfterDelivery,
    /// Fingerprints of the contacts the routing snapshot on disk holds, sorted
    /// (`None` until a save succeeded): a save writes only what changed, so
    /// that thousands of nodes in one process do not each rewrite ~100 rows
    /// every 30 s.
    pub(crate) routing_saved: std::sync::Mutex<Option<Vec<u64>>>,
    /// Our name claim, signed once per run: announcing it again offers the
    /// storers the very claim they hold, which they keep without checking its
    /// signature again.
    pub(crate) claim: NameClaim,
}

/// A running chat node.
pub struct ChatNode {
    inner: Arc<Inner>,
    tasks: Vec<JoinHandle<()>>,
    dht_task: JoinHandle<()>,
    stop: watch::Sender<bool>,
    /// Held for the node's lifetime: the data dir's lock.
    datadir: DataDir,
}

/// What `init` made.
#[derive(Clone, Debug)]
pub struct InitInfo {
    /// The user's name.
    pub name: String,
    /// The user's key.
    pub key: UserKey,
}

/// Creates a user's identity, database and profile in `dir`.
pub async fn init(dir: &std::path::Path, name: &str) -> Result<InitInfo, ChatError> {
    let name = Username::new(name)?;
    let datadir = DataDir::open(dir)?;
    if datadir.has_identity() {
        return Err(ChatError::AlreadyInitialized(dir.display().to_string()));
    }
    let identity = Identity::generate(&mut rand::rng());
    let db = Db::open(datadir.db_path())?;
    datadir.write_secret(&identity.secret_bytes())?;
    db.set_profile(Profile {
        name: name.as_str().to_string(),
        key: identity.public().0,
        created_ms: now_ms() as i64,
    })
    .await?;
    Ok(InitInfo {
        name: name.as_str().to_string(),
        key: identity.public(),
    })
}

impl ChatNode {
    /// Logs in: opens the data dir (locking it), joins the network, publishes the
    /// user's name and presence, fetches the mailbox, and starts the workers.
    pub async fn start(config: ChatConfig) -> Result<ChatNode, ChatError> {
        let datadir = DataDir::open(&config.data_dir)?;
        let dir = config.data_dir.display().to_string();
        let secret = datadir.read_secret()?;
        let db = Db::open_with(
            datadir.db_path(),
            crate::db::DbOptions {
                readers: config.db_readers,
                cache_pages: config.db_cache_pages,
                ..Default::default()
            },
        )?;
        let profile = db
            .profile()
            .await?
            .ok_or_else(|| ChatError::NotInitialized(dir.clone()))?;
        let identity = Identity::from_secret_bytes(secret);
        let me = identity.public();
        let name = Username::new(&profile.name)?;

        // Login rule (paper 4.4): same address, same node id and table; a new
        // address gets a new node id, and the old contacts are pinged again.
        let last_listen = db.meta_get(meta_keys::LISTEN_ADDR).await?;
        let last_id = db
            .meta_get(meta_keys::NODE_ID)
            .await?
            .and_then(|h| NodeId::from_hex(&h));
        let same_address = last_listen.as_deref() == Some(config.listen.to_string().as_str())
            && config.listen.port() != 0;
        let id = match (same_address, last_id) {
            (true, Some(id)) => id,
            _ => new_node_id(config.listen.ip()),
        };
        let (ext_tx, ext_rx) = mpsc::channel(256);
        let mut node_cfg = NodeConfig::new(config.listen);
        node_cfg.id = Some(id);
        node_cfg.extensions = Some(ext_tx);
        node_cfg.dht = Config {
            k: config.k.max(1),
            alpha: config.alpha.max(1),
            extension_methods: wire::methods(),
            ..Config::default()
        };
        let (dht, dht_task, tcp) = bind_udp_and_tcp(node_cfg).await?;
        let listen = dht.local_addr();

        let mut relay = RelayQueue::new(config.relay.clone());
        for e in db.relay_all().await? {
            if let Ok(env) = peerchat_chat::Envelope::from_bytes(&e.envelope) {
                let ip = e.source_ip.unwrap_or(IpAddr::from([127, 0, 0, 1]));
                let _ = relay.store(env, ip, now_ms());
            }
        }
        let (stop, shutdown) = watch::channel(false);
        let (events, _) = broadcast::channel(config.event_buffer.max(1));
        let claim = NameClaim::new(&identity, &name, 1, now_ms());
        let inner = Arc::new(Inner {
            keys: SessionKeys {
                x25519_secret: identity.x25519_secret(),
                identity: me.0,
            },
            identity,
            me,
            name,
            db,
            dht,
            listen,
            config: config.clone(),
            relay: Mutex::new(relay),
            sessions: Mutex::new(HashMap::new()),
            events,
            outbox_wake: Notify::new(),
            claimed: AtomicBool::new(false),
            shutdown,
            names: Mutex::new(HashMap::new()),
            pinned: std::sync::Mutex::new(HashMap::new()),
            claims: std::sync::Mutex::new(HashMap::new()),
            sealers: std::sync::Mutex::new(HashMap::new()),
            opened: peerchat_chat::OpenCache::default(),
            refused: std::sync::atomic::AtomicU64::new(0),
            presence: Mutex::new(HashMap::new()),
            links: Mutex::new(link::Links::default()),
            after_delivery: delivery::AfterDelivery::default(),
            routing_saved: std::sync::Mutex::new(None),
            claim,
        });
        let db = &inner.db;
        db.meta_set(meta_keys::LISTEN_ADDR, &config.listen.to_string())
            .await?;
        db.meta_set(meta_keys::NODE_ID, &id.to_hex()).await?;

        // Saved contacts first: with any of them alive, no bootstrap address is needed.
        let saved: Vec<NodeInfo> = db
            .load_routing()
            .await?
            .into_iter()
            .map(|(id, addr)| NodeInfo {
                id: NodeId(id),
                addr,
            })
            .collect();
        let had_saved = !saved.is_empty();
        if had_saved {
            inner.dht.add_contacts(saved).await?;
        }
        if (had_saved || !config.bootstrap.is_empty())
            && let Err(e) = inner.dht.bootstrap(&config.bootstrap).await
        {
            if config.bootstrap.is_empty() {
                tracing::warn!(
                    "no saved contact answered; give a --bootstrap address to rejoin the network"
                );
            } else {
                tracing::warn!("{e}; retrying in the background");
            }
        }

        directory::annotate_stored(&inner).await;
        let tasks = vec![
            tokio::spawn(relay::serve(inner.clone(), ext_rx)),
            tokio::spawn(delivery::accept_loop(inner.clone(), tcp)),
            tokio::spawn(delivery::outbox_worker(inner.clone())),
            tokio::spawn(relay::relay_worker(inner.clone())),
            tokio::spawn(directory::publisher(inner.clone(), last_listen.is_none())),
            tokio::spawn(snapshot_worker(inner.clone())),
            tokio::spawn(delivery::after_delivery_worker(inner.clone())),
        ];
        Ok(ChatNode {
            inner,
            tasks,
            dht_task,
            stop,
            datadir,
        })
    }

    /// The data directory (for the API to write where it listens).
    pub fn data_dir(&self) -> &DataDir {
        &self.datadir
    }

    /// Where the node listens (UDP and TCP).
    pub fn listen_addr(&self) -> SocketAddr {
        self.inner.listen
    }

    /// The user's key.
    pub fn key(&self) -> UserKey {
        self.inner.me
    }

    /// Changes as they happen, for the event stream.
    pub fn subscribe(&self) -> broadcast::Receiver<ChatEvent> {
        self.inner.events.subscribe()
    }

    /// A cheap, cloneable handle for request handlers.
    pub fn client(&self) -> ChatClient {
        ChatClient {
            inner: self.inner.clone(),
        }
    }

    /// Stops the workers, saves the routing table, and stops the DHT node.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        save_routing(&self.inner).await;
        self.inner.sessions.lock().await.clear();
        for t in &self.tasks {
            t.abort();
        }
        self.inner.dht.shutdown().await;
        let _ = self.dht_task.await;
        let _ = self.datadir.remove_api_info();
    }
}

/// A handle on a running chat node: what the local API serves.
#[derive(Clone)]
pub struct ChatClient {
    inner: Arc<Inner>,
}

impl ChatClient {
    /// The DHT node under this chat node (the local API's network view).
    pub(crate) fn dht(&self) -> &NodeHandle {
        &self.inner.dht
    }

    /// Changes as they happen, for the event stream.
    pub fn subscribe(&self) -> broadcast::Receiver<ChatEvent> {
        self.inner.events.subscribe()
    }

    /// Queues a text message to the user called `to`; returns its id. The message
    /// is durable in the outbox before this returns.
    pub async fn send(&self, to: &str, text: &str) -> Result<String, ChatError> {
        delivery::send_text(&self.inner, to, text).await
    }

    /// Received messages, newest first.
    pub async fn inbox(&self, limit: usize) -> Result<Vec<MessageView>, ChatError> {
        let rows = self.inner.db.inbox(limit).await?;
        views_of(&self.inner, rows).await
    }

    /// The conversation with `name`, oldest first.
    pub async fn history(&self, name: &str, limit: usize) -> Result<Vec<MessageView>, ChatError> {
        let key = directory::known_key(&self.inner, name).await?;
        let mut rows = self.inner.db.history(key.0, limit).await?;
        rows.sort_by_key(|m| (m.sent_ms, m.received_ms));
        views_of(&self.inner, rows).await
    }

    /// Marks the conversation with `name` read (and tells the sender).
    pub async fn mark_read(&self, name: &str) -> Result<u64, ChatError> {
        delivery::mark_read(&self.inner, name).await
    }

    /// Conversations, newest first.
    pub async fn conversations(&self) -> Result<Vec<ConversationView>, ChatError> {
        let mut out = Vec::new();
        for c in self.inner.db.conversations().await? {
            let peer = name_of(&self.inner, &UserKey(c.peer)).await;
            let last = views_of(&self.inner, vec![c.last]).await?.pop();
            if let Some(last) = last {
                out.push(ConversationView {
                    peer,
                    peer_key: hex(&c.peer),
                    last,
                    unread: c.unread,
                });
            }
        }
        Ok(out)
    }

    /// Claims our name and publishes our presence now, as login does; true
    /// when the network holds our claim.
    pub async fn announce(&self) -> Result<bool, ChatError> {
        directory::announce(&self.inner).await?;
        Ok(self.inner.claimed.load(Ordering::Relaxed))
    }

    /// The DHT node's state and counters.
    pub async fn dht_snapshot(&self) -> Result<crate::NodeSnapshot, ChatError> {
        Ok(self.inner.dht.snapshot().await?)
    }

    /// Who holds `name`, and where they are.
    pub async fn whois(&self, name: &str) -> Result<WhoisView, ChatError> {
        directory::whois(&self.inner, name).await
    }

    /// Adds (and pins) a contact by name.
    pub async fn add_contact(&self, name: &str) -> Result<ContactView, ChatError> {
        let key = directory::resolve_and_pin(&self.inner, name).await?;
        Ok(ContactView {
            name: name.to_string(),
            key: key.to_hex(),
            fingerprint: key.fingerprint(),
        })
    }

    /// Known users.
    pub async fn contacts(&self) -> Result<Vec<ContactView>, ChatError> {
        Ok(self
            .inner
            .db
            .contacts()
            .await?
            .into_iter()
            .map(|c| ContactView {
                name: c.name,
                key: hex(&c.key),
                fingerprint: UserKey(c.key).fingerprint(),
            })
            .collect())
    }

    /// This node at a glance.
    pub async fn status(&self) -> Result<StatusView, ChatError> {
        let snap = self.inner.dht.snapshot().await?;
        let counts = self.inner.db.counts().await?;
        Ok(StatusView {
            name: self.inner.name.as_str().to_string(),
            key: self.inner.me.to_hex(),
            fingerprint: self.inner.me.fingerprint(),
            node_id: snap.id.to_hex(),
            listen: self.inner.listen.to_string(),
            external: snap.external.map(|a| a.to_string()),
            routing_table: snap.contacts.len(),
            online: !snap.contacts.is_empty(),
            outbox: counts.outbox,
            relay_queue: self.inner.relay.lock().await.len() as u64,
            unread: counts.unread,
            name_claimed: self.inner.claimed.load(Ordering::Relaxed),
            refused_envelopes: self.inner.refused.load(Ordering::Relaxed),
        })
    }
}

/// Counts an envelope refused (see [`Inner::refused`]) and says why in the log.
pub(crate) fn refuse(inner: &Inner, why: &dyn std::fmt::Display) {
    inner.refused.fetch_add(1, Ordering::Relaxed);
    tracing::debug!("envelope refused: {why}");
}

pub(crate) fn hex(b: &[u8]) -> String {
    hex::encode(b)
}

/// The name we know a key by (or its short hex).
pub(crate) async fn name_of(inner: &Inner, key: &UserKey) -> String {
    if *key == inner.me {
        return inner.name.as_str().to_string();
    }
    if let Some(n) = inner.names.lock().await.get(key) {
        return n.clone();
    }
    if let Ok(Some(c)) = inner.db.contact(key.0).await {
        inner.names.lock().await.insert(*key, c.name.clone());
        return c.name;
    }
    key.to_hex()[..16].to_string()
}

pub(crate) async fn views_of(
    inner: &Inner,
    rows: Vec<StoredMessage>,
) -> Result<Vec<MessageView>, ChatError> {
    let mut out = Vec::with_capacity(rows.len());
    for m in rows {
        out.push(view_of(inner, &m).await);
    }
    Ok(out)
}

pub(crate) async fn view_of(inner: &Inner, m: &StoredMessage) -> MessageView {
    let peer = name_of(inner, &UserKey(m.peer)).await;
    let from = if m.sender == inner.me.0 {
        "me".to_string()
    } else {
        peer.clone()
    };
    MessageView {
        id: hex(&m.id),
        peer,
        peer_key: hex(&m.peer),
        direction: m.direction.as_str().to_string(),
        from,
        text: m.text.clone(),
        sent_ms: m.sent_ms,
        received_ms: m.received_ms,
        state: m.state.as_str().to_string(),
    }
}

pub(crate) fn emit_state(inner: &Inner, id: &MessageId, state: crate::db::MessageState) {
    let _ = inner.events.send(ChatEvent::State {
        id: id.to_hex(),
        state: state.as_str().to_string(),
    });
}

fn new_node_id(ip: IpAddr) -> NodeId {
    let mut rng = rand::rng();
    if ip.is_unspecified() || peerchat_kad::bep42::is_exempt(ip) {
        NodeId::random(&mut rng)
    } else {
        peerchat_kad::bep42::id_for_ip(ip, &mut rng)
    }
}

async fn save_routing(inner: &Inner) {
    let Ok(s) = inner.dht.snapshot().await else {
        return;
    };
    let nodes: Vec<_> = s.contacts.iter().map(|n| (n.id.0, n.addr)).collect();
    let mut prints: Vec<u64> = nodes.iter().map(contact_print).collect();
    prints.sort_unstable();
    let saved = lock(&inner.routing_saved).take();
    let written = match saved {
        // What the disk holds is unknown (the first save): rewrite it all.
        None => inner.db.save_routing(nodes).await,
        Some(saved) => match routing_changes(&saved, &nodes, &prints) {
            None => {
                *lock(&inner.routing_saved) = Some(saved);
                return;
            }
            Some((upsert, keep)) => inner.db.update_routing(upsert, keep).await,
        },
    };
    match written {
        Ok(()) => *lock(&inner.routing_saved) = Some(prints),
        // Left at `None`: the next save rewrites the whole snapshot.
        Err(e) => tracing::warn!("saving the routing table: {e}"),
    }
}

/// The contacts to write into a routing snapshot and, when some are gone, the
/// ids to keep.
type RoutingChanges = (Vec<([u8; 20], SocketAddr)>, Option<Vec<[u8; 20]>>);

/// What a routing snapshot holding the contacts fingerprinted `saved` needs to
/// hold `nodes` (fingerprinted `prints`, sorted). `None`: nothing changed.
fn routing_changes(
    saved: &[u64],
    nodes: &[([u8; 20], SocketAddr)],
    prints: &[u64],
) -> Option<RoutingChanges> {
    let upsert: Vec<_> = nodes
        .iter()
        .filter(|n| saved.binary_search(&contact_print(n)).is_err())
        .copied()
        .collect();
    let gone = saved.iter().any(|p| prints.binary_search(p).is_err());
    if upsert.is_empty() && !gone {
        return None;
    }
    Some((upsert, gone.then(|| nodes.iter().map(|n| n.0).collect())))
}

/// A fingerprint of a contact as the routing snapshot stores it (id and address).
fn contact_print(n: &([u8; 20], SocketAddr)) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    n.hash(&mut h);
    h.finish()
}

/// Snapshots the routing table every 30 s (paper 4: periodic backup), and
/// every 60 s pings the known nodes missing from it ([`rejoin`]).
async fn snapshot_worker(inner: Arc<Inner>) {
    let mut every = tokio::time::interval(Duration::from_secs(30));
    every.tick().await;
    let mut ticks = 0u64;
    loop {
        every.tick().await;
        save_routing(&inner).await;
        ticks += 1;
        if ticks.is_multiple_of(2) {
            rejoin(&inner).await;
        }
    }
}

/// Pings our bootstrap addresses and the DHT addresses of the peers whose
/// presence we looked up, when they are not in the routing table. After a
/// network partition heals, each side's table holds only its own side and
/// nothing else would make them meet again: a ping's answer puts the other
/// side back in our table, and the ping puts us in theirs (found by the
/// netns partition test: without it each half's tables still held only that
/// half, and 12 of 36 messages across the cut had not arrived, 150 s after
/// the heal).
async fn rejoin(inner: &Inner) {
    let Ok(s) = inner.dht.snapshot().await else {
        return;
    };
    let known: std::collections::HashSet<SocketAddr> = s.contacts.iter().map(|n| n.addr).collect();
    let mut addrs: Vec<SocketAddr> = inner.config.bootstrap.clone();
    addrs.extend(
        inner
            .presence
            .lock()
            .await
            .values()
            .flat_map(|(p, _)| p.dht.iter().copied()),
    );
    addrs.retain(|a| !known.contains(a) && *a != inner.listen);
    addrs.sort();
    addrs.dedup();
    addrs.truncate(32);
    let mut set = tokio::task::JoinSet::new();
    for a in addrs {
        let dht = inner.dht.clone();
        set.spawn(async move { dht.ping(a).await });
    }
    while set.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prints(nodes: &[([u8; 20], SocketAddr)]) -> Vec<u64> {
        let mut p: Vec<u64> = nodes.iter().map(contact_print).collect();
        p.sort_unstable();
        p
    }

    #[test]
    fn routing_snapshot_writes_only_what_changed() {
        let a: SocketAddr = "127.0.0.1:4000".parse().expect("addr");
        let b: SocketAddr = "127.0.0.2:4000".parse().expect("addr");
        let before = vec![([1; 20], a), ([2; 20], a)];
        let saved = prints(&before);
        // The same contacts, in another order: nothing to write.
        let same = vec![([2; 20], a), ([1; 20], a)];
        assert_eq!(routing_changes(&saved, &same, &prints(&same)), None);
        // A new contact: written, nothing removed.
        let grown = vec![([1; 20], a), ([2; 20], a), ([3; 20], b)];
        assert_eq!(
            routing_changes(&saved, &grown, &prints(&grown)),
            Some((vec![([3; 20], b)], None))
        );
        // A new address: written again; a contact gone: the rest are kept.
        let moved = vec![([1; 20], b)];
        assert_eq!(
            routing_changes(&saved, &moved, &prints(&moved)),
            Some((vec![([1; 20], b)], Some(vec![[1; 20]])))
        );
        // Everything gone.
        assert_eq!(
            routing_changes(&saved, &[], &[]),
            Some((vec![], Some(vec![])))
        );
    }
}
