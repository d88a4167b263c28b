//! KRPC messages of the BitTorrent Mainline DHT (BEP 5), with BEP 42's `ip`
//! field, BEP 43's `ro` flag, BEP 44's `get`/`put`, and Peerchat's `pc_*`
//! extension methods carried as [`Query::Other`].

use std::collections::BTreeMap;
use std::net::SocketAddr;

use crate::bencode::{DecodeError, Value};
use crate::id::NodeId;

/// Largest datagram a node reads or answers; anything larger is dropped.
pub const MAX_DATAGRAM: usize = 1500;

/// KRPC error codes (BEP 5 and BEP 44).
pub mod code {
    /// Generic error.
    pub const GENERIC: i64 = 201;
    /// Server error.
    pub const SERVER: i64 = 202;
    /// Protocol error: malformed packet, invalid arguments or bad token.
    pub const PROTOCOL: i64 = 203;
    /// Method unknown.
    pub const METHOD_UNKNOWN: i64 = 204;
    /// BEP 44: message (`v` field) too big.
    pub const VALUE_TOO_BIG: i64 = 205;
    /// BEP 44: invalid signature.
    pub const INVALID_SIGNATURE: i64 = 206;
    /// BEP 44: salt (`salt` field) too big.
    pub const SALT_TOO_BIG: i64 = 207;
    /// BEP 44: the CAS hash mismatched, re-read the value and try again.
    pub const CAS_MISMATCH: i64 = 301;
    /// BEP 44: sequence number less than current.
    pub const SEQ_TOO_LOW: i64 = 302;
}

/// A node's id and UDP address, as in compact node info (26 bytes for IPv4, 38 for IPv6).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct NodeInfo {
    /// The node's id.
    pub id: NodeId,
    /// Where it listens.
    pub addr: SocketAddr,
}

/// One KRPC message.
#[derive(Clone, PartialEq, Debug)]
pub struct Message {
    /// Transaction id (`t`), any length; ours are 4 bytes.
    pub tid: Vec<u8>,
    /// Client version (`v` at top level), if present.
    pub version: Option<Vec<u8>>,
    /// BEP 42: the requester's address as seen by the responder (`ip`), in responses.
    pub ip: Option<SocketAddr>,
    /// BEP 43: the querier is read-only (`ro = 1`) and must not be added to routing tables.
    pub read_only: bool,
    /// Query, response or error.
    pub body: Body,
}

/// The three kinds of KRPC message (`y` = `q`, `r`, `e`).
#[derive(Clone, PartialEq, Debug)]
pub enum Body {
    /// `y = q`.
    Query {
        /// The querying node's id (`a.id`).
        id: NodeId,
        /// The method and its arguments.
        query: Query,
    },
    /// `y = r`.
    Response(Response),
    /// `y = e`.
    Error(KrpcError),
}

/// A query's method and arguments.
#[derive(Clone, PartialEq, Debug)]
pub enum Query {
    /// `ping`.
    Ping,
    /// `find_node` with `target`.
    FindNode {
        /// The id looked for.
        target: NodeId,
    },
    /// `get_peers` with `info_hash`.
    GetPeers {
        /// The torrent's info-hash.
        info_hash: NodeId,
    },
    /// `announce_peer`.
    AnnouncePeer {
        /// The torrent's info-hash.
        info_hash: NodeId,
        /// The announced port (ignored when `implied_port`).
        port: u16,
        /// Use the UDP source port instead of `port`.
        implied_port: bool,
        /// The token from an earlier `get_peers` answer.
        token: Vec<u8>,
    },
    /// BEP 44 `get`.
    Get {
        /// The item's target.
        target: NodeId,
        /// Only answer with the value if its `seq` is greater than this.
        seq: Option<i64>,
    },
    /// BEP 44 `put`.
    Put(PutArgs),
    /// Any other method (Peerchat's `pc_*`, or one we do not know): the full
    /// argument dictionary `a`, `id` included.
    Other {
        /// The method name (`q`).
        method: Vec<u8>,
        /// The arguments (`a`).
        args: BTreeMap<Vec<u8>, Value>,
    },
}

/// Arguments of a BEP 44 `put`.
#[derive(Clone, PartialEq, Debug)]
pub struct PutArgs {
    /// The write token from an earlier `get`.
    pub token: Vec<u8>,
    /// The value, any bencoded value (at most 1000 bytes encoded).
    pub v: Value,
    /// Mutable items: the ed25519 public key.
    pub k: Option<[u8; 32]>,
    /// Mutable items: the signature.
    pub sig: Option<[u8; 64]>,
    /// Mutable items: the sequence number.
    pub seq: Option<i64>,
    /// Mutable items: the salt (at most 64 bytes).
    pub salt: Option<Vec<u8>>,
    /// Mutable items: compare-and-swap, the expected current `seq`.
    pub cas: Option<i64>,
}

/// A response's fields (`r`); which are present depends on the query answered.
#[derive(Clone, PartialEq, Debug, Default)]
pub struct Response {
    /// The responding node's id.
    pub id: NodeId,
    /// IPv4 compact node info (`nodes`).
    pub nodes: Vec<NodeInfo>,
    /// IPv6 compact node info (`nodes6`, BEP 32).
    pub nodes6: Vec<NodeInfo>,
    /// `get_peers`: compact peer addresses (`values`).
    pub values: Vec<SocketAddr>,
    /// Write token for `announce_peer` / `put`.
    pub token: Option<Vec<u8>>,
    /// BEP 44 value.
    pub v: Option<Value>,
    /// BEP 44 public key.
    pub k: Option<[u8; 32]>,
    /// BEP 44 signature.
    pub sig: Option<[u8; 64]>,
    /// BEP 44 sequence number.
    pub seq: Option<i64>,
    /// Any other keys (Peerchat extension answers).
    pub other: BTreeMap<Vec<u8>, Value>,
}

/// A KRPC error (`e = [code, message]`).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct KrpcError {
    /// The error code (201-204, 205-207, 301, 302, ...).
    pub code: i64,
    /// Human-readable text.
    pub message: String,
}

/// Why a datagram could not be read as a KRPC message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// Not valid bencode.
    #[error("bad bencode: {0}")]
    Bencode(#[from] DecodeError),
    // HELPER-A: more variants (not a dict, missing key, bad id length, bad compact info, ...)
    /// The datagram is larger than [`MAX_DATAGRAM`].
    #[error("datagram of {0} bytes is too large")]
    TooLarge(usize),
}

impl Message {
    /// Encodes to bencode.
    pub fn encode(&self) -> Vec<u8> {
        todo!("HELPER-A")
    }

    /// Decodes a datagram. Never panics; errors on anything that is not a valid KRPC message.
    /// When the error happens after a transaction id could be read, callers may answer
    /// with a 203 error; see [`Message::decode_tid`].
    pub fn decode(bytes: &[u8]) -> Result<Message, MessageError> {
        let _ = bytes;
        todo!("HELPER-A")
    }

    /// Best effort: the transaction id and whether it is a query, of a datagram that
    /// failed to decode, so a 203 error can be returned for malformed queries.
    pub fn decode_tid(bytes: &[u8]) -> Option<(Vec<u8>, bool)> {
        let _ = bytes;
        todo!("HELPER-A")
    }

    /// The method name of a query, for counting (`ping`, `find_node`, ...).
    pub fn method_name(query: &Query) -> &[u8] {
        match query {
            Query::Ping => b"ping",
            Query::FindNode { .. } => b"find_node",
            Query::GetPeers { .. } => b"get_peers",
            Query::AnnouncePeer { .. } => b"announce_peer",
            Query::Get { .. } => b"get",
            Query::Put(_) => b"put",
            Query::Other { method, .. } => method,
        }
    }
}
