//! The caller's side of a running node.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use peerchat_kad::bep44::MutableItem;
use peerchat_kad::krpc::{KrpcError, Response};
use peerchat_kad::{NodeId, NodeInfo, Outcome, QueryStats, Stats, Value};
use tokio::sync::{mpsc, oneshot};

use crate::error::NodeError;

/// Fields added to `find_node` answers for a target (see [`NodeHandle::annotate`]).
pub type Fields = BTreeMap<Vec<u8>, Value>;

/// A change to a target's annotation: given the fields there now, the fields
/// to keep (`None`: none). Run in the node's task, so two changes never race.
pub type AnnotationUpdate = Box<dyn FnOnce(Option<Fields>) -> Option<Fields> + Send>;

/// An answer to an extension query: fields, or a KRPC error code and message.
pub(crate) type Answer = Result<BTreeMap<Vec<u8>, Value>, (i64, String)>;

/// A request to the node's task.
pub(crate) enum Command {
    /// Start a query; the answer comes back on the channel. Boxed so that the
    /// channel's slots stay small: every node has one.
    Query(Box<QueryKind>, oneshot::Sender<(Outcome, QueryStats)>),
    /// Report a snapshot.
    Snapshot(oneshot::Sender<NodeSnapshot>),
    /// Answer an extension query (boxed: the channel's slots stay small).
    Respond(Box<(SocketAddr, Vec<u8>, Answer)>),
    /// Add contacts from a saved routing table.
    AddContacts(Vec<NodeInfo>),
    /// Set (or with `None`, stop) the fields added to our `find_node`
    /// answers for a target (boxed: the channel's slots stay small).
    Annotate(Box<(NodeId, AnnotationUpdate)>),
    /// Report a target's annotation.
    Annotation(NodeId, oneshot::Sender<Option<Fields>>),
    /// Stop the task.
    Shutdown,
}

/// Queries a caller can start.
pub(crate) enum QueryKind {
    Bootstrap(Vec<SocketAddr>),
    FindNode(NodeId),
    /// Target, quorum field, and where each annotated answer also goes as it
    /// arrives.
    FindAnnotated(
        NodeId,
        Option<Vec<u8>>,
        Option<mpsc::UnboundedSender<Fields>>,
    ),
    GetPeers(NodeId),
    Announce(NodeId, Option<u16>),
    GetImmutable(NodeId),
    PutImmutable(Value),
    GetMutable([u8; 32], Vec<u8>, Option<i64>),
    PutMutable(MutableItem, Option<i64>),
    Ping(SocketAddr),
    Request(SocketAddr, Vec<u8>, BTreeMap<Vec<u8>, Value>),
}

/// An extension query (a `pc_*` method) for the layer above, to be answered
/// with [`NodeHandle::respond`].
#[derive(Clone, Debug)]
pub struct IncomingQuery {
    /// Where it came from.
    pub from: SocketAddr,
    /// The querying node's id.
    pub node: NodeId,
    /// Its transaction id.
    pub tid: Vec<u8>,
    /// The method.
    pub method: Vec<u8>,
    /// Its arguments.
    pub args: BTreeMap<Vec<u8>, Value>,
}

/// A view of a node at one moment.
#[derive(Clone, Debug)]
pub struct NodeSnapshot {
    /// Its id.
    pub id: NodeId,
    /// Where its socket listens.
    pub addr: SocketAddr,
    /// Contacts in its routing table.
    pub contacts: Vec<NodeInfo>,
    /// Its counters.
    pub stats: Stats,
    /// Records stored for others.
    pub items: usize,
    /// Our address as other nodes report it (BEP 42), once several agree.
    pub external: Option<SocketAddr>,
    /// The routing table's contacts with their buckets, for views.
    pub table: Vec<TableEntry>,
    /// The lookups callers ran most recently (at most [`RECENT_LOOKUPS`]), newest first.
    pub lookups: Vec<RecentLookup>,
}

/// Most finished lookups a node remembers for [`NodeSnapshot::lookups`].
pub const RECENT_LOOKUPS: usize = 32;

/// One contact of the routing table.
#[derive(Clone, Debug)]
pub struct TableEntry {
    /// Its id and address.
    pub node: NodeInfo,
    /// Its bucket: 159 for the farthest half of the id space, 0 the closest.
    pub bucket: usize,
    /// How long ago it was last heard from.
    pub last_seen: Duration,
    /// Failed requests in a row since it last answered.
    pub failures: u8,
}

/// A lookup that a caller of the node ran (find_node, get_peers, a BEP 44
/// get or put, an announce, the bootstrap).
#[derive(Clone, Debug)]
pub struct RecentLookup {
    /// `bootstrap`, `find_node`, `get_peers`, `announce_peer`, `get` or `put`.
    pub kind: &'static str,
    /// The id looked up.
    pub target: NodeId,
    /// How long ago it finished.
    pub ago: Duration,
    /// Its figures (hops, requests, time).
    pub stats: QueryStats,
    /// What it found: nodes, peers, 1 or 0 items, or how many nodes stored a put.
    pub found: usize,
}

/// A cloneable handle to a running node.
#[derive(Clone, Debug)]
pub struct NodeHandle {
    /// Commands are boxed: the channel allocates its slots in blocks of 32
    /// up front, and a node is mostly idle, so each slot is a pointer.
    pub(crate) tx: mpsc::Sender<Box<Command>>,
    pub(crate) id: NodeId,
    pub(crate) addr: SocketAddr,
    pub(crate) live_contacts: Arc<AtomicUsize>,
}

impl NodeHandle {
    /// The node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The address its socket is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Contacts in the routing table that answered their last request (cheap: no round trip).
    pub fn live_contacts(&self) -> usize {
        self.live_contacts.load(Ordering::Relaxed)
    }

    async fn query(&self, kind: QueryKind) -> Result<(Outcome, QueryStats), NodeError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Box::new(Command::Query(Box::new(kind), tx)))
            .await
            .map_err(|_| NodeError::Stopped)?;
        rx.await.map_err(|_| NodeError::Stopped)
    }

    /// Joins the network through these addresses; returns the number of contacts.
    pub async fn bootstrap(&self, addrs: &[SocketAddr]) -> Result<usize, NodeError> {
        let (out, _) = self.query(QueryKind::Bootstrap(addrs.to_vec())).await?;
        match out {
            Outcome::Nodes(n) if !n.is_empty() => Ok(n.len()),
            _ => Err(NodeError::BootstrapFailed {
                addrs: addrs
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }

    /// The `k` closest nodes to `target`.
    pub async fn find_node(
        &self,
        target: NodeId,
    ) -> Result<(Vec<NodeInfo>, QueryStats), NodeError> {
        match self.query(QueryKind::FindNode(target)).await? {
            (Outcome::Nodes(n), s) => Ok((n, s)),
            _ => Err(NodeError::Stopped),
        }
    }

    /// The `k` closest nodes to `target`, each with the fields it added to its
    /// answer (see [`NodeHandle::annotate`]; empty when none); with `quorum`,
    /// ending once most of the closest agree on that field (see
    /// [`peerchat_kad::Dht::find_node_annotated`]).
    pub async fn find_node_annotated(
        &self,
        target: NodeId,
        quorum: Option<&str>,
    ) -> Result<(Vec<(NodeInfo, Fields)>, QueryStats), NodeError> {
        self.lookup_annotated(target, quorum, None).await
    }

    /// [`NodeHandle::find_node_annotated`], and each answer with fields also
    /// sent to `early` as it arrives (the lookup's candidates answer once
    /// each, so it holds at most that many): the caller can start on them,
    /// say check their signatures, while the lookup goes on. The outcome
    /// lists the fields of the closest nodes again.
    pub async fn find_node_annotated_early(
        &self,
        target: NodeId,
        quorum: Option<&str>,
        early: mpsc::UnboundedSender<Fields>,
    ) -> Result<(Vec<(NodeInfo, Fields)>, QueryStats), NodeError> {
        self.lookup_annotated(target, quorum, Some(early)).await
    }

    async fn lookup_annotated(
        &self,
        target: NodeId,
        quorum: Option<&str>,
        early: Option<mpsc::UnboundedSender<Fields>>,
    ) -> Result<(Vec<(NodeInfo, Fields)>, QueryStats), NodeError> {
        let quorum = quorum.map(|f| f.as_bytes().to_vec());
        match self
            .query(QueryKind::FindAnnotated(target, quorum, early))
            .await?
        {
            (Outcome::Annotated(n), s) => Ok((n, s)),
            _ => Err(NodeError::Stopped),
        }
    }

    /// Adds `fields` to this node's answers to a `find_node` of `target`
    /// (`None`: stops); see [`peerchat_kad::Dht::annotate`]. Past the core's
    /// bound on annotated targets, a new target is not annotated.
    pub async fn annotate(&self, target: NodeId, fields: Option<Fields>) -> Result<(), NodeError> {
        self.update_annotation(target, Box::new(move |_| fields))
            .await
    }

    /// Changes the annotation of `target` with `update`, given what it is now
    /// (see [`NodeHandle::annotate`]).
    pub async fn update_annotation(
        &self,
        target: NodeId,
        update: AnnotationUpdate,
    ) -> Result<(), NodeError> {
        self.tx
            .send(Box::new(Command::Annotate(Box::new((target, update)))))
            .await
            .map_err(|_| NodeError::Stopped)
    }

    /// The fields this node adds to its answers to a `find_node` of `target`.
    pub async fn annotation(&self, target: NodeId) -> Result<Option<Fields>, NodeError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Box::new(Command::Annotation(target, tx)))
            .await
            .map_err(|_| NodeError::Stopped)?;
        rx.await.map_err(|_| NodeError::Stopped)
    }

    /// Peers of an info-hash.
    pub async fn get_peers(
        &self,
        info_hash: NodeId,
    ) -> Result<(Vec<SocketAddr>, QueryStats), NodeError> {
        match self.query(QueryKind::GetPeers(info_hash)).await? {
            (Outcome::Peers(p), s) => Ok((p, s)),
            _ => Err(NodeError::Stopped),
        }
    }

    /// Announces us as a peer of `info_hash`; returns how many nodes stored it.
    pub async fn announce_peer(
        &self,
        info_hash: NodeId,
        port: Option<u16>,
    ) -> Result<(usize, QueryStats), NodeError> {
        match self.query(QueryKind::Announce(info_hash, port)).await? {
            (Outcome::Stored { stored, .. }, s) => Ok((stored, s)),
            _ => Err(NodeError::Stopped),
        }
    }

    /// The immutable item with this target, if any node has it.
    pub async fn get_immutable(
        &self,
        target: NodeId,
    ) -> Result<(Option<Value>, QueryStats), NodeError> {
        match self.query(QueryKind::GetImmutable(target)).await? {
            (Outcome::Immutable(v), s) => Ok((v, s)),
            _ => Err(NodeError::Stopped),
        }
    }

    /// Stores an immutable item; returns its target and how many nodes stored it.
    pub async fn put_immutable(
        &self,
        value: Value,
    ) -> Result<(NodeId, usize, QueryStats), NodeError> {
        peerchat_kad::bep44::check_immutable(&value)?;
        match self.query(QueryKind::PutImmutable(value)).await? {
            (Outcome::Stored { target, stored, .. }, s) => Ok((target, stored, s)),
            _ => Err(NodeError::Stopped),
        }
    }

    /// The most recent mutable item of `key` and `salt`.
    pub async fn get_mutable(
        &self,
        key: [u8; 32],
        salt: Vec<u8>,
        min_seq: Option<i64>,
    ) -> Result<(Option<MutableItem>, QueryStats), NodeError> {
        match self
            .query(QueryKind::GetMutable(key, salt, min_seq))
            .await?
        {
            (Outcome::Mutable(m), s) => Ok((m, s)),
            _ => Err(NodeError::Stopped),
        }
    }

    /// Stores a signed mutable item; returns its target and how many nodes stored it.
    pub async fn put_mutable(
        &self,
        item: MutableItem,
        cas: Option<i64>,
    ) -> Result<(NodeId, usize, Vec<KrpcError>, QueryStats), NodeError> {
        item.verify()?;
        match self.query(QueryKind::PutMutable(item, cas)).await? {
            (
                Outcome::Stored {
                    target,
                    stored,
                    errors,
                },
                s,
            ) => Ok((target, stored, errors, s)),
            _ => Err(NodeError::Stopped),
        }
    }

    /// Pings an address; returns the node id that answered.
    pub async fn ping(&self, addr: SocketAddr) -> Result<Option<NodeId>, NodeError> {
        match self.query(QueryKind::Ping(addr)).await? {
            (Outcome::Pong(id), _) => Ok(id),
            _ => Err(NodeError::Stopped),
        }
    }

    /// Sends an extension query to one node: its answer, its KRPC error, or
    /// `None` when it did not answer in time.
    pub async fn request(
        &self,
        addr: SocketAddr,
        method: &[u8],
        args: BTreeMap<Vec<u8>, Value>,
    ) -> Result<Option<Result<Response, KrpcError>>, NodeError> {
        match self
            .query(QueryKind::Request(addr, method.to_vec(), args))
            .await?
        {
            (Outcome::Reply(r), _) => Ok(r),
            _ => Err(NodeError::Stopped),
        }
    }

    /// Answers an extension query with these fields.
    pub async fn respond(
        &self,
        q: &IncomingQuery,
        fields: BTreeMap<Vec<u8>, Value>,
    ) -> Result<(), NodeError> {
        self.tx
            .send(Box::new(Command::Respond(Box::new((
                q.from,
                q.tid.clone(),
                Ok(fields),
            )))))
            .await
            .map_err(|_| NodeError::Stopped)
    }

    /// Answers an extension query with a KRPC error.
    pub async fn respond_error(
        &self,
        q: &IncomingQuery,
        code: i64,
        message: &str,
    ) -> Result<(), NodeError> {
        self.tx
            .send(Box::new(Command::Respond(Box::new((
                q.from,
                q.tid.clone(),
                Err((code, message.to_string())),
            )))))
            .await
            .map_err(|_| NodeError::Stopped)
    }

    /// Adds contacts from a saved routing table (they are checked as usual).
    pub async fn add_contacts(&self, nodes: Vec<NodeInfo>) -> Result<(), NodeError> {
        self.tx
            .send(Box::new(Command::AddContacts(nodes)))
            .await
            .map_err(|_| NodeError::Stopped)
    }

    /// A snapshot of the node's state.
    pub async fn snapshot(&self) -> Result<NodeSnapshot, NodeError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Box::new(Command::Snapshot(tx)))
            .await
            .map_err(|_| NodeError::Stopped)?;
        rx.await.map_err(|_| NodeError::Stopped)
    }

    /// Asks the node to stop.
    pub async fn shutdown(&self) {
        let _ = self.tx.send(Box::new(Command::Shutdown)).await;
    }
}
