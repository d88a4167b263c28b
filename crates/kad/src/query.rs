//! What a caller can ask of the DHT, and what it gets back.

use std::net::SocketAddr;
use std::time::Duration;

use crate::bencode::Value;
use crate::bep44::MutableItem;
use crate::id::NodeId;
use crate::krpc::{KrpcError, NodeInfo, Response};

/// Identifies one query started by the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueryId(pub u64);

/// How a query went.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// `find_node` (and bootstrap): the `k` closest nodes that answered, closest first.
    Nodes(Vec<NodeInfo>),
    /// `find_node` keeping annotations: the `k` closest nodes that answered,
    /// closest first, each with the fields it added to its answer (empty if none).
    Annotated(Vec<(NodeInfo, std::collections::BTreeMap<Vec<u8>, Value>)>),
    /// `get_peers`: the peers found.
    Peers(Vec<SocketAddr>),
    /// BEP 44 immutable `get`: the value, or `None` when no node had it.
    Immutable(Option<Value>),
    /// BEP 44 mutable `get`: the valid item with the highest `seq`, or `None`.
    Mutable(Option<MutableItem>),
    /// `announce_peer` or BEP 44 `put`: how many of the closest nodes accepted it,
    /// and the errors the others answered with.
    Stored {
        /// The record's target (info-hash or item target).
        target: NodeId,
        /// Nodes that accepted it.
        stored: usize,
        /// Errors returned by nodes that refused it.
        errors: Vec<KrpcError>,
    },
    /// `ping`: the node's id, or `None` if it did not answer.
    Pong(Option<NodeId>),
    /// A direct request (extension method): the answer, a KRPC error, or `None` on timeout.
    Reply(Option<Result<Response, KrpcError>>),
}

/// Figures of one finished query.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueryStats {
    /// Hops to the answer: 1 when a node we started from answered.
    pub hops: u32,
    /// Requests sent for this query.
    pub rpcs: u32,
    /// From start to end.
    pub elapsed: Duration,
}

/// Something the caller should know.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A query finished.
    QueryDone {
        /// Which.
        id: QueryId,
        /// Its result.
        outcome: Outcome,
        /// Its figures.
        stats: QueryStats,
    },
    /// The bootstrap lookup ended with this many contacts in the table
    /// (0: no bootstrap node answered).
    Bootstrapped {
        /// Contacts in the routing table.
        contacts: usize,
    },
    /// An extension query (a method listed in [`crate::Config::extension_methods`])
    /// to be answered with [`crate::Dht::respond`] or [`crate::Dht::respond_error`].
    Query {
        /// Where it came from.
        from: SocketAddr,
        /// The querying node.
        node: NodeId,
        /// Its transaction id, to pass back when answering.
        tid: Vec<u8>,
        /// The method.
        method: Vec<u8>,
        /// Its arguments (`a`).
        args: std::collections::BTreeMap<Vec<u8>, Value>,
    },
    /// Several nodes agree that this is our address as they see it (BEP 42 `ip`).
    ExternalAddress(SocketAddr),
    /// An answer with extra fields to a running [`crate::Dht::find_node_annotated`],
    /// as it arrives. The outcome lists the fields of the closest nodes again
    /// at the end; meanwhile a caller can start on these (check a signature
    /// while the lookup goes on). A node that ends up farther than the `k`
    /// closest may be among them.
    Annotation {
        /// The lookup.
        id: QueryId,
        /// The node that answered.
        node: NodeId,
        /// The fields it added.
        fields: std::collections::BTreeMap<Vec<u8>, Value>,
    },
}
