//! KRPC messages of the BitTorrent Mainline DHT (BEP 5), with BEP 42's `ip`
//! field, BEP 43's `ro` flag, BEP 44's `get`/`put`, and Peerchat's `pc_*`
//! extension methods carried as [`Query::Other`].

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use crate::bencode::{DecodeError, Decoder, Value, encode_bytes, encode_int, encode_len_prefix};
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

impl PutArgs {
    /// The item's target: SHA-1 of the bencoded `v` (immutable), or SHA-1 of
    /// `k` ‖ `salt` (mutable, when `k` is present).
    ///
    /// BEP 44 does not list `target` among the arguments of `put`, but the `mainline`
    /// crate (pkarr's DHT) refuses a `put` without it, so we always send it; a
    /// received `target` is ignored, and the storer computes the target itself.
    pub fn target(&self) -> NodeId {
        match &self.k {
            Some(k) => crate::bep44::mutable_target(k, self.salt.as_deref().unwrap_or_default()),
            None => crate::bep44::immutable_target(&self.v),
        }
    }
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
    /// The datagram is larger than [`MAX_DATAGRAM`].
    #[error("datagram of {0} bytes is too large")]
    TooLarge(usize),
    /// The top-level value (or `a` / `r`) is not a dictionary.
    #[error("not a dictionary")]
    NotADict,
    /// A required key is missing.
    #[error("missing key `{0}`")]
    MissingKey(&'static str),
    /// A key has the wrong type or length (an `id` that is not 20 bytes, ...).
    #[error("invalid value for key `{0}`")]
    InvalidField(&'static str),
    /// `y` is not `q`, `r` or `e`.
    #[error("unknown message type")]
    UnknownType,
}

type Dict = BTreeMap<Vec<u8>, Value>;

/// Keys of `r` decoded into [`Response`]'s own fields; never put in `other`.
const RESPONSE_KEYS: [&[u8]; 9] = [
    b"id", b"k", b"nodes", b"nodes6", b"seq", b"sig", b"token", b"v", b"values",
];

impl Message {
    /// Encodes to bencode.
    ///
    /// The output is canonical (keys sorted). Empty `nodes`, `nodes6` and `values`
    /// are left out, IPv6 entries of [`Response::nodes`] and IPv4 entries of
    /// [`Response::nodes6`] are skipped, keys of [`Response::other`] that name one
    /// of [`Response`]'s own fields are skipped, and for [`Query::Other`] the `id`
    /// of [`Body::Query`] replaces any `id` in `args`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        out.push(b'd');
        match &self.body {
            Body::Query { id, query } => {
                encode_bytes(&mut out, b"a");
                encode_query_args(&mut out, id, query);
            }
            Body::Error(e) => {
                encode_bytes(&mut out, b"e");
                out.push(b'l');
                encode_int(&mut out, e.code);
                encode_bytes(&mut out, e.message.as_bytes());
                out.push(b'e');
            }
            Body::Response(_) => {}
        }
        if let Some(ip) = self.ip {
            encode_bytes(&mut out, b"ip");
            Field::Addr(ip).write(&mut out);
        }
        match &self.body {
            Body::Query { query, .. } => {
                encode_bytes(&mut out, b"q");
                encode_bytes(&mut out, Message::method_name(query));
            }
            Body::Response(r) => {
                encode_bytes(&mut out, b"r");
                encode_response(&mut out, r);
            }
            Body::Error(_) => {}
        }
        if self.read_only {
            encode_bytes(&mut out, b"ro");
            encode_int(&mut out, 1);
        }
        encode_bytes(&mut out, b"t");
        encode_bytes(&mut out, &self.tid);
        if let Some(v) = &self.version {
            encode_bytes(&mut out, b"v");
            encode_bytes(&mut out, v);
        }
        encode_bytes(&mut out, b"y");
        encode_bytes(
            &mut out,
            match self.body {
                Body::Query { .. } => b"q",
                Body::Response(_) => b"r",
                Body::Error(_) => b"e",
            },
        );
        out.push(b'e');
        out
    }

    /// Decodes a datagram. Never panics; errors on anything that is not a valid KRPC message.
    /// When the error happens after a transaction id could be read, callers may answer
    /// with a 203 error; see [`Message::decode_tid`].
    ///
    /// Lenient where real nodes differ: a malformed top-level `v`, `ip` or `ro` is
    /// ignored, a trailing partial entry of `nodes` / `nodes6` is ignored (as
    /// libtorrent does), and `values` entries that are not 6 or 18 byte strings are
    /// skipped. Unknown arguments of known methods are dropped.
    pub fn decode(bytes: &[u8]) -> Result<Message, MessageError> {
        if bytes.len() > MAX_DATAGRAM {
            return Err(MessageError::TooLarge(bytes.len()));
        }
        let Value::Dict(mut top) = Value::decode(bytes)? else {
            return Err(MessageError::NotADict);
        };
        let tid = take_bytes(&mut top, "t")?.ok_or(MessageError::MissingKey("t"))?;
        let version = match top.remove(&b"v"[..]) {
            Some(Value::Bytes(v)) => Some(v),
            _ => None,
        };
        let ip = top
            .get(&b"ip"[..])
            .and_then(Value::as_bytes)
            .and_then(parse_addr);
        let read_only = matches!(top.get(&b"ro"[..]), Some(Value::Int(1)));
        let y = take_bytes(&mut top, "y")?.ok_or(MessageError::MissingKey("y"))?;
        let body = match y.as_slice() {
            b"q" => {
                let method = take_bytes(&mut top, "q")?.ok_or(MessageError::MissingKey("q"))?;
                let args = take_dict(&mut top, "a")?;
                decode_query(method, args)?
            }
            b"r" => Body::Response(decode_response(take_dict(&mut top, "r")?)?),
            b"e" => Body::Error(decode_error(&top)?),
            _ => return Err(MessageError::UnknownType),
        };
        Ok(Message {
            tid,
            version,
            ip,
            read_only,
            body,
        })
    }

    /// Best effort: the transaction id and whether it is a query, of a datagram that
    /// failed to decode, so a 203 error can be returned for malformed queries.
    ///
    /// Reads the top-level dictionary up to the first malformed entry; `None` if
    /// no `t` byte string was found before it, or the datagram is too large.
    pub fn decode_tid(bytes: &[u8]) -> Option<(Vec<u8>, bool)> {
        if bytes.len() > MAX_DATAGRAM {
            return None;
        }
        let mut d = Decoder::new(bytes);
        d.expect(b'd').ok()?;
        let mut tid = None;
        let mut is_query = false;
        while let Ok(false) = d.at_end_of_container() {
            let Ok(key) = d.key() else { break };
            let ok = match key {
                b"t" => d.bytes().map(|t| tid = Some(t)).is_ok(),
                b"y" => d.bytes().map(|y| is_query = y == b"q").is_ok(),
                _ => d.value(1).is_ok(),
            };
            if !ok {
                break;
            }
        }
        tid.map(|t| (t.to_vec(), is_query))
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

// ---------------------------------------------------------------------------
// Encoding

/// A value to write under a dict key.
enum Field<'a> {
    Bytes(&'a [u8]),
    Int(i64),
    Value(&'a Value),
    /// Compact node info: IPv4 entries only (`false`) or IPv6 entries only (`true`).
    Nodes(&'a [NodeInfo], bool),
    /// A list of compact peer addresses.
    Peers(&'a [SocketAddr]),
    /// One compact address.
    Addr(SocketAddr),
}

impl Field<'_> {
    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Field::Bytes(b) => encode_bytes(out, b),
            Field::Int(i) => encode_int(out, *i),
            Field::Value(v) => v.encode_into(out),
            Field::Nodes(nodes, v6) => {
                let entry = if *v6 { 38 } else { 26 };
                let count = nodes.iter().filter(|n| n.addr.is_ipv6() == *v6).count();
                encode_len_prefix(out, count * entry);
                for n in nodes.iter().filter(|n| n.addr.is_ipv6() == *v6) {
                    out.extend_from_slice(n.id.as_bytes());
                    push_compact_addr(out, n.addr);
                }
            }
            Field::Peers(peers) => {
                out.push(b'l');
                for p in peers.iter() {
                    Field::Addr(*p).write(out);
                }
                out.push(b'e');
            }
            Field::Addr(a) => {
                encode_len_prefix(out, if a.is_ipv6() { 18 } else { 6 });
                push_compact_addr(out, *a);
            }
        }
    }
}

fn push_compact_addr(out: &mut Vec<u8>, addr: SocketAddr) {
    match addr.ip() {
        IpAddr::V4(ip) => out.extend_from_slice(&ip.octets()),
        IpAddr::V6(ip) => out.extend_from_slice(&ip.octets()),
    }
    out.extend_from_slice(&addr.port().to_be_bytes());
}

/// Writes a dict of `known` entries (sorted by key; `None` entries are left out)
/// merged with the entries of `extra` whose key is not one of `reserved`.
fn encode_dict(
    out: &mut Vec<u8>,
    known: &[(&'static [u8], Option<Field<'_>>)],
    reserved: &[&[u8]],
    extra: Option<&Dict>,
) {
    debug_assert!(known.windows(2).all(|w| w[0].0 < w[1].0));
    out.push(b'd');
    let mut known = known
        .iter()
        .filter_map(|(k, f)| f.as_ref().map(|f| (*k, f)))
        .peekable();
    for (k, v) in extra.into_iter().flatten() {
        if reserved.contains(&k.as_slice()) {
            continue;
        }
        while let Some((kk, f)) = known.next_if(|(kk, _)| *kk < k.as_slice()) {
            encode_bytes(out, kk);
            f.write(out);
        }
        encode_bytes(out, k);
        v.encode_into(out);
    }
    for (kk, f) in known {
        encode_bytes(out, kk);
        f.write(out);
    }
    out.push(b'e');
}

fn encode_query_args(out: &mut Vec<u8>, id: &NodeId, query: &Query) {
    let id = Some(Field::Bytes(id.as_bytes()));
    match query {
        Query::Ping => encode_dict(out, &[(b"id", id)], &[], None),
        Query::FindNode { target } => encode_dict(
            out,
            &[
                (b"id", id),
                (b"target", Some(Field::Bytes(target.as_bytes()))),
            ],
            &[],
            None,
        ),
        Query::GetPeers { info_hash } => encode_dict(
            out,
            &[
                (b"id", id),
                (b"info_hash", Some(Field::Bytes(info_hash.as_bytes()))),
            ],
            &[],
            None,
        ),
        Query::AnnouncePeer {
            info_hash,
            port,
            implied_port,
            token,
        } => encode_dict(
            out,
            &[
                (b"id", id),
                (b"implied_port", implied_port.then_some(Field::Int(1))),
                (b"info_hash", Some(Field::Bytes(info_hash.as_bytes()))),
                (b"port", Some(Field::Int(i64::from(*port)))),
                (b"token", Some(Field::Bytes(token))),
            ],
            &[],
            None,
        ),
        Query::Get { target, seq } => encode_dict(
            out,
            &[
                (b"id", id),
                (b"seq", seq.map(Field::Int)),
                (b"target", Some(Field::Bytes(target.as_bytes()))),
            ],
            &[],
            None,
        ),
        Query::Put(p) => {
            let target = p.target();
            encode_dict(
                out,
                &[
                    (b"cas", p.cas.map(Field::Int)),
                    (b"id", id),
                    (b"k", p.k.as_ref().map(|k| Field::Bytes(k))),
                    (b"salt", p.salt.as_deref().map(Field::Bytes)),
                    (b"seq", p.seq.map(Field::Int)),
                    (b"sig", p.sig.as_ref().map(|s| Field::Bytes(s))),
                    (b"target", Some(Field::Bytes(target.as_bytes()))),
                    (b"token", Some(Field::Bytes(&p.token))),
                    (b"v", Some(Field::Value(&p.v))),
                ],
                &[],
                None,
            )
        }
        Query::Other { args, .. } => encode_dict(out, &[(b"id", id)], &[b"id"], Some(args)),
    }
}

fn encode_response(out: &mut Vec<u8>, r: &Response) {
    let non_empty = |b: bool| b.then_some(());
    encode_dict(
        out,
        &[
            (b"id", Some(Field::Bytes(r.id.as_bytes()))),
            (b"k", r.k.as_ref().map(|k| Field::Bytes(k))),
            (
                b"nodes",
                non_empty(r.nodes.iter().any(|n| n.addr.is_ipv4()))
                    .map(|()| Field::Nodes(&r.nodes, false)),
            ),
            (
                b"nodes6",
                non_empty(r.nodes6.iter().any(|n| n.addr.is_ipv6()))
                    .map(|()| Field::Nodes(&r.nodes6, true)),
            ),
            (b"seq", r.seq.map(Field::Int)),
            (b"sig", r.sig.as_ref().map(|s| Field::Bytes(s))),
            (b"token", r.token.as_deref().map(Field::Bytes)),
            (b"v", r.v.as_ref().map(Field::Value)),
            (
                b"values",
                non_empty(!r.values.is_empty()).map(|()| Field::Peers(&r.values)),
            ),
        ],
        &RESPONSE_KEYS,
        Some(&r.other),
    );
}

// ---------------------------------------------------------------------------
// Decoding

/// Removes `key` and returns it as a byte string (`None` if absent).
fn take_bytes(d: &mut Dict, key: &'static str) -> Result<Option<Vec<u8>>, MessageError> {
    match d.remove(key.as_bytes()) {
        None => Ok(None),
        Some(Value::Bytes(b)) => Ok(Some(b)),
        Some(_) => Err(MessageError::InvalidField(key)),
    }
}

/// Removes `key` and returns it as a dict (required).
fn take_dict(d: &mut Dict, key: &'static str) -> Result<Dict, MessageError> {
    match d.remove(key.as_bytes()) {
        None => Err(MessageError::MissingKey(key)),
        Some(Value::Dict(a)) => Ok(a),
        Some(_) => Err(MessageError::InvalidField(key)),
    }
}

/// `key` as an integer (`None` if absent).
fn get_int(d: &Dict, key: &'static str) -> Result<Option<i64>, MessageError> {
    match d.get(key.as_bytes()) {
        None => Ok(None),
        Some(Value::Int(i)) => Ok(Some(*i)),
        Some(_) => Err(MessageError::InvalidField(key)),
    }
}

/// `key` as a byte string of exactly `N` bytes (`None` if absent).
fn get_array<const N: usize>(d: &Dict, key: &'static str) -> Result<Option<[u8; N]>, MessageError> {
    match d.get(key.as_bytes()) {
        None => Ok(None),
        Some(Value::Bytes(b)) => <[u8; N]>::try_from(b.as_slice())
            .map(Some)
            .map_err(|_| MessageError::InvalidField(key)),
        Some(_) => Err(MessageError::InvalidField(key)),
    }
}

/// `key` as a 20-byte id (required).
fn get_id(d: &Dict, key: &'static str) -> Result<NodeId, MessageError> {
    get_array::<20>(d, key)?
        .map(NodeId)
        .ok_or(MessageError::MissingKey(key))
}

/// A compact address: 6 bytes (IPv4) or 18 bytes (IPv6), port big-endian.
fn parse_addr(b: &[u8]) -> Option<SocketAddr> {
    if let Ok(a) = <[u8; 6]>::try_from(b) {
        let [a, b, c, d, p0, p1] = a;
        Some(SocketAddr::V4(SocketAddrV4::new(
            Ipv4Addr::new(a, b, c, d),
            u16::from_be_bytes([p0, p1]),
        )))
    } else if let Ok(a) = <[u8; 18]>::try_from(b) {
        let (ip, port) = a.split_at(16);
        let ip = <[u8; 16]>::try_from(ip).ok()?;
        let port = <[u8; 2]>::try_from(port).ok()?;
        Some(SocketAddr::V6(SocketAddrV6::new(
            Ipv6Addr::from(ip),
            u16::from_be_bytes(port),
            0,
            0,
        )))
    } else {
        None
    }
}

/// Compact node info: `entry`-byte chunks of a 20-byte id and an address; a trailing
/// partial chunk is ignored.
fn parse_nodes(b: &[u8], entry: usize) -> Vec<NodeInfo> {
    b.chunks_exact(entry)
        .filter_map(|c| {
            let (id, addr) = c.split_at_checked(20)?;
            Some(NodeInfo {
                id: NodeId::from_slice(id)?,
                addr: parse_addr(addr)?,
            })
        })
        .collect()
}

fn decode_query(method: Vec<u8>, mut a: Dict) -> Result<Body, MessageError> {
    let id = get_id(&a, "id")?;
    let query = match method.as_slice() {
        b"ping" => Query::Ping,
        b"find_node" => Query::FindNode {
            target: get_id(&a, "target")?,
        },
        b"get_peers" => Query::GetPeers {
            info_hash: get_id(&a, "info_hash")?,
        },
        b"announce_peer" => {
            let implied_port = get_int(&a, "implied_port")?.is_some_and(|i| i != 0);
            let port = match get_int(&a, "port")? {
                Some(p) => match u16::try_from(p) {
                    Ok(p) => p,
                    Err(_) if implied_port => 0,
                    Err(_) => return Err(MessageError::InvalidField("port")),
                },
                None if implied_port => 0,
                None => return Err(MessageError::MissingKey("port")),
            };
            Query::AnnouncePeer {
                info_hash: get_id(&a, "info_hash")?,
                port,
                implied_port,
                token: take_bytes(&mut a, "token")?.ok_or(MessageError::MissingKey("token"))?,
            }
        }
        b"get" => Query::Get {
            target: get_id(&a, "target")?,
            seq: get_int(&a, "seq")?,
        },
        b"put" => Query::Put(PutArgs {
            k: get_array(&a, "k")?,
            sig: get_array(&a, "sig")?,
            seq: get_int(&a, "seq")?,
            cas: get_int(&a, "cas")?,
            token: take_bytes(&mut a, "token")?.ok_or(MessageError::MissingKey("token"))?,
            salt: take_bytes(&mut a, "salt")?,
            v: a.remove(&b"v"[..]).ok_or(MessageError::MissingKey("v"))?,
        }),
        _ => Query::Other { method, args: a },
    };
    Ok(Body::Query { id, query })
}

fn decode_response(mut r: Dict) -> Result<Response, MessageError> {
    let id = get_id(&r, "id")?;
    let k = get_array(&r, "k")?;
    let sig = get_array(&r, "sig")?;
    let seq = get_int(&r, "seq")?;
    let nodes = take_bytes(&mut r, "nodes")?
        .map(|b| parse_nodes(&b, 26))
        .unwrap_or_default();
    let nodes6 = take_bytes(&mut r, "nodes6")?
        .map(|b| parse_nodes(&b, 38))
        .unwrap_or_default();
    let values = match r.remove(&b"values"[..]) {
        None => Vec::new(),
        Some(Value::List(l)) => l
            .iter()
            .filter_map(|v| v.as_bytes().and_then(parse_addr))
            .collect(),
        Some(_) => return Err(MessageError::InvalidField("values")),
    };
    let token = take_bytes(&mut r, "token")?;
    let v = r.remove(&b"v"[..]);
    for key in RESPONSE_KEYS {
        r.remove(key);
    }
    Ok(Response {
        id,
        nodes,
        nodes6,
        values,
        token,
        v,
        k,
        sig,
        seq,
        other: r,
    })
}

fn decode_error(top: &Dict) -> Result<KrpcError, MessageError> {
    let Some(Value::List(e)) = top.get(&b"e"[..]) else {
        return Err(match top.get(&b"e"[..]) {
            None => MessageError::MissingKey("e"),
            Some(_) => MessageError::InvalidField("e"),
        });
    };
    let code = e
        .first()
        .and_then(Value::as_int)
        .ok_or(MessageError::InvalidField("e"))?;
    let message = match e.get(1) {
        None => String::new(),
        Some(Value::Bytes(m)) => String::from_utf8_lossy(m).into_owned(),
        Some(_) => return Err(MessageError::InvalidField("e")),
    };
    Ok(KrpcError { code, message })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bencode::tests::arb_value;
    use proptest::prelude::*;

    fn id(b: &[u8]) -> NodeId {
        NodeId::from_slice(b).unwrap()
    }

    fn msg(tid: &[u8], body: Body) -> Message {
        Message {
            tid: tid.to_vec(),
            version: None,
            ip: None,
            read_only: false,
            body,
        }
    }

    /// Decodes `wire`, checks it equals `want`, and that it re-encodes byte-identically.
    fn check_wire(wire: &[u8], want: &Message) {
        let got = Message::decode(wire).unwrap();
        assert_eq!(&got, want, "{}", String::from_utf8_lossy(wire));
        assert_eq!(
            String::from_utf8_lossy(&got.encode()),
            String::from_utf8_lossy(wire)
        );
    }

    #[test]
    fn bep5_ping_pair() {
        check_wire(
            b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe",
            &msg(
                b"aa",
                Body::Query {
                    id: id(b"abcdefghij0123456789"),
                    query: Query::Ping,
                },
            ),
        );
        check_wire(
            b"d1:rd2:id20:mnopqrstuvwxyz123456e1:t2:aa1:y1:re",
            &msg(
                b"aa",
                Body::Response(Response {
                    id: id(b"mnopqrstuvwxyz123456"),
                    ..Response::default()
                }),
            ),
        );
    }

    #[test]
    fn bep5_examples() {
        let a = id(b"abcdefghij0123456789");
        let m = id(b"mnopqrstuvwxyz123456");
        check_wire(
            b"d1:ad2:id20:abcdefghij01234567896:target20:mnopqrstuvwxyz123456e1:q9:find_node1:t2:aa1:y1:qe",
            &msg(b"aa", Body::Query { id: a, query: Query::FindNode { target: m } }),
        );
        check_wire(
            b"d1:ad2:id20:abcdefghij01234567899:info_hash20:mnopqrstuvwxyz123456e1:q9:get_peers1:t2:aa1:y1:qe",
            &msg(b"aa", Body::Query { id: a, query: Query::GetPeers { info_hash: m } }),
        );
        check_wire(
            b"d1:rd2:id20:abcdefghij01234567895:token8:aoeusnth6:valuesl6:axje.u6:idhtnmee1:t2:aa1:y1:re",
            &msg(
                b"aa",
                Body::Response(Response {
                    id: a,
                    token: Some(b"aoeusnth".to_vec()),
                    values: vec![
                        "97.120.106.101:11893".parse().unwrap(),
                        "105.100.104.116:28269".parse().unwrap(),
                    ],
                    ..Response::default()
                }),
            ),
        );
        check_wire(
            b"d1:ad2:id20:abcdefghij012345678912:implied_porti1e9:info_hash20:mnopqrstuvwxyz1234564:porti6881e5:token8:aoeusnthe1:q13:announce_peer1:t2:aa1:y1:qe",
            &msg(
                b"aa",
                Body::Query {
                    id: a,
                    query: Query::AnnouncePeer {
                        info_hash: m,
                        port: 6881,
                        implied_port: true,
                        token: b"aoeusnth".to_vec(),
                    },
                },
            ),
        );
        check_wire(
            b"d1:eli201e23:A Generic Error Ocurrede1:t2:aa1:y1:ee",
            &msg(
                b"aa",
                Body::Error(KrpcError {
                    code: code::GENERIC,
                    message: "A Generic Error Ocurred".into(),
                }),
            ),
        );
    }

    #[test]
    fn compact_nodes_and_top_level_fields() {
        let n4 = NodeInfo {
            id: NodeId([1; 20]),
            addr: "1.2.3.4:6881".parse().unwrap(),
        };
        let n6 = NodeInfo {
            id: NodeId([2; 20]),
            addr: "[2001:db8::1]:443".parse().unwrap(),
        };
        let m = Message {
            tid: vec![0, 1, 2, 3],
            version: Some(b"PC01".to_vec()),
            ip: Some("5.6.7.8:9".parse().unwrap()),
            read_only: true,
            body: Body::Response(Response {
                id: NodeId([3; 20]),
                nodes: vec![n4, n4],
                nodes6: vec![n6],
                ..Response::default()
            }),
        };
        let wire = m.encode();
        let mut want = b"d2:ip6:\x05\x06\x07\x08\x00\x091:rd2:id20:".to_vec();
        want.extend_from_slice(&[3; 20]);
        want.extend_from_slice(b"5:nodes52:");
        for _ in 0..2 {
            want.extend_from_slice(&[1; 20]);
            want.extend_from_slice(&[1, 2, 3, 4, 0x1a, 0xe1]);
        }
        want.extend_from_slice(b"6:nodes638:");
        want.extend_from_slice(&[2; 20]);
        want.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        want.extend_from_slice(&443u16.to_be_bytes());
        want.extend_from_slice(b"e2:roi1e1:t4:\x00\x01\x02\x031:v4:PC011:y1:re");
        assert_eq!(wire, want);
        assert_eq!(Message::decode(&wire), Ok(m));
    }

    #[test]
    fn trailing_partial_node_is_ignored() {
        let mut wire = b"d1:rd2:id20:mnopqrstuvwxyz1234565:nodes30:".to_vec();
        wire.extend_from_slice(&[7; 20]);
        wire.extend_from_slice(&[9, 9, 9, 9, 0, 80]);
        wire.extend_from_slice(&[1, 2, 3, 4]);
        wire.extend_from_slice(b"e1:t1:x1:y1:re");
        let Body::Response(r) = Message::decode(&wire).unwrap().body else {
            panic!("not a response")
        };
        assert_eq!(
            r.nodes,
            vec![NodeInfo {
                id: NodeId([7; 20]),
                addr: "9.9.9.9:80".parse().unwrap()
            }]
        );
    }

    #[test]
    fn lenient_values_and_unknown_response_keys() {
        // A 5-byte peer and an integer are skipped; the 18-byte one is IPv6; `p` and
        // `samples` are unknown keys, kept in `other`.
        let mut wire =
            b"d1:rd2:id20:mnopqrstuvwxyz1234561:pi6881e7:samples3:abc6:valuesl5:abcdei3e18:"
                .to_vec();
        wire.extend_from_slice(&[0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 80]);
        wire.extend_from_slice(b"6:\x01\x02\x03\x04\x00\x50ee1:t0:1:y1:re");
        let m = Message::decode(&wire).unwrap();
        assert_eq!(m.tid, b"");
        let Body::Response(r) = m.body else {
            panic!("not a response")
        };
        assert_eq!(
            r.values,
            vec![
                "[fe80::1]:80".parse::<SocketAddr>().unwrap(),
                "1.2.3.4:80".parse().unwrap()
            ]
        );
        assert_eq!(r.other.len(), 2);
        assert_eq!(r.other.get(&b"p"[..]), Some(&Value::Int(6881)));
        assert_eq!(
            r.other.get(&b"samples"[..]),
            Some(&Value::Bytes(b"abc".to_vec()))
        );
    }

    #[test]
    fn transaction_ids_of_any_length() {
        for len in [0usize, 1, 2, 4, 8, 100] {
            let tid: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let m = msg(
                &tid,
                Body::Query {
                    id: NodeId([5; 20]),
                    query: Query::Ping,
                },
            );
            let wire = m.encode();
            assert_eq!(Message::decode(&wire), Ok(m));
            assert_eq!(Message::decode_tid(&wire), Some((tid, true)));
        }
    }

    #[test]
    fn bep44_get_put_round_trip() {
        let me = NodeId([0x11; 20]);
        let target = NodeId([0x22; 20]);
        let queries = [
            Query::Get { target, seq: None },
            Query::Get {
                target,
                seq: Some(7),
            },
            Query::Put(PutArgs {
                token: b"tok".to_vec(),
                v: Value::Bytes(b"Hello World!".to_vec()),
                k: None,
                sig: None,
                seq: None,
                salt: None,
                cas: None,
            }),
            Query::Put(PutArgs {
                token: b"tok".to_vec(),
                v: Value::List(vec![Value::Int(1)]),
                k: Some([3; 32]),
                sig: Some([4; 64]),
                seq: Some(-1),
                salt: Some(b"foobar".to_vec()),
                cas: Some(5),
            }),
        ];
        for q in queries {
            let m = msg(b"t1", Body::Query { id: me, query: q });
            let wire = m.encode();
            assert_eq!(Value::decode(&wire).unwrap().encode(), wire, "canonical");
            assert_eq!(Message::decode(&wire), Ok(m));
        }
        let r = msg(
            b"t1",
            Body::Response(Response {
                id: me,
                token: Some(b"tok".to_vec()),
                v: Some(Value::Bytes(b"x".to_vec())),
                k: Some([3; 32]),
                sig: Some([4; 64]),
                seq: Some(9),
                nodes: vec![NodeInfo {
                    id: target,
                    addr: "8.8.8.8:53".parse().unwrap(),
                }],
                ..Response::default()
            }),
        );
        let wire = r.encode();
        assert_eq!(Value::decode(&wire).unwrap().encode(), wire, "canonical");
        assert_eq!(Message::decode(&wire), Ok(r));
    }

    /// The `mainline` crate (8.0.1) drops a `put` without `target`: ours carry it.
    /// The bytes are the BEP 44 test vectors, laid out as `mainline` sends them.
    #[test]
    fn put_carries_target_as_the_mainline_crate_needs() {
        let key: [u8; 32] =
            hex::decode("77ff84905a91936367c01360803104f92432fcd904a43511876df5cdf3e7e548")
                .unwrap()
                .try_into()
                .unwrap();
        let sig: [u8; 64] = hex::decode(
            "6834284b6b24c3204eb2fea824d82f88883a3d95e8b4a21b8c0ded553d17d17d\
             df9a8a7104b1258f30bed3787e6cb896fca78c58f8e03b5f18f14951a87d9a08",
        )
        .unwrap()
        .try_into()
        .unwrap();
        let put = |args: PutArgs| Message {
            tid: vec![0, 0, 0, 7],
            version: Some(b"RS\x00\x05".to_vec()),
            ip: None,
            read_only: false,
            body: Body::Query {
                id: NodeId([0x11; 20]),
                query: Query::Put(args),
            },
        };
        let hello = || Value::Bytes(b"Hello World!".to_vec());
        let immutable = put(PutArgs {
            token: b"tok1".to_vec(),
            v: hello(),
            k: None,
            sig: None,
            seq: None,
            salt: None,
            cas: None,
        });
        let mutable = put(PutArgs {
            token: b"tok1".to_vec(),
            v: hello(),
            k: Some(key),
            sig: Some(sig),
            seq: Some(1),
            salt: Some(b"foobar".to_vec()),
            cas: None,
        });
        let wire = |fields: &[&[u8]]| {
            let mut w = b"d1:ad2:id20:".to_vec();
            w.extend_from_slice(&[0x11; 20]);
            for f in fields {
                w.extend_from_slice(f);
            }
            w.extend_from_slice(
                b"5:token4:tok11:v12:Hello World!e1:q3:put1:t4:\0\0\0\x071:v4:RS\0\x051:y1:qe",
            );
            w
        };
        let target = |hex_id: &str| {
            let mut f = b"6:target20:".to_vec();
            f.extend_from_slice(&hex::decode(hex_id).unwrap());
            f
        };
        let immutable_wire = wire(&[&target("e5f96f6f38320f0f33959cb4d3d656452117aadb")]);
        let mut k = b"1:k32:".to_vec();
        k.extend_from_slice(&key);
        let mut sig_field = b"3:sig64:".to_vec();
        sig_field.extend_from_slice(&sig);
        let mutable_wire = wire(&[
            &k,
            b"4:salt6:foobar3:seqi1e",
            &sig_field,
            &target("411eba73b6f087ca51a3795d9c8c938d365e32c1"),
        ]);
        assert_eq!(immutable.encode(), immutable_wire);
        assert_eq!(mutable.encode(), mutable_wire);
        // What `mainline` sends (its `ro`, target included) decodes to the same put;
        // the receiver computes the target itself.
        for (m, w) in [(immutable, immutable_wire), (mutable, mutable_wire)] {
            let mut theirs = w.clone();
            let at = theirs.len() - b"1:t4:\0\0\0\x071:v4:RS\0\x051:y1:qe".len();
            theirs.splice(at..at, b"2:roi0e".iter().copied());
            assert_eq!(Message::decode(&theirs), Ok(m));
        }
    }

    #[test]
    fn other_methods_keep_all_args() {
        let wire = b"d1:ad2:id20:abcdefghij01234567893:box20:mnopqrstuvwxyz1234563:envi42ee1:q8:pc_store1:t2:xy1:y1:qe";
        let m = Message::decode(wire).unwrap();
        let Body::Query { id: qid, query } = &m.body else {
            panic!("not a query")
        };
        assert_eq!(*qid, id(b"abcdefghij0123456789"));
        let Query::Other { method, args } = query else {
            panic!("not other")
        };
        assert_eq!(method, b"pc_store");
        assert_eq!(
            args.keys().map(Vec::as_slice).collect::<Vec<_>>(),
            [&b"box"[..], b"env", b"id"]
        );
        assert_eq!(Message::method_name(query), b"pc_store");
        // Keys in the input were not sorted; the encoding is canonical.
        assert_eq!(
            m.encode(),
            b"d1:ad3:box20:mnopqrstuvwxyz1234563:envi42e2:id20:abcdefghij0123456789e1:q8:pc_store1:t2:xy1:y1:qe"
        );
        // The body's id wins over an `id` in `args` when encoding.
        let mut other = m.clone();
        if let Body::Query { id, .. } = &mut other.body {
            *id = NodeId([9; 20]);
        }
        let back = Message::decode(&other.encode()).unwrap();
        let Body::Query {
            query: Query::Other { args, .. },
            ..
        } = back.body
        else {
            panic!()
        };
        assert_eq!(args.get(&b"id"[..]), Some(&Value::Bytes(vec![9; 20])));
    }

    #[test]
    fn rejects_invalid_messages() {
        use MessageError::*;
        let cases: &[(&[u8], MessageError)] = &[
            (b"", Bencode(DecodeError::UnexpectedEnd)),
            (b"le", NotADict),
            (b"de", MissingKey("t")),
            (b"d1:t1:xe", MissingKey("y")),
            (b"d1:ti1e1:y1:qe", InvalidField("t")),
            (b"d1:t1:x1:y1:ze", UnknownType),
            (b"d1:t1:x1:y1:qe", MissingKey("q")),
            (b"d1:q4:ping1:t1:x1:y1:qe", MissingKey("a")),
            (b"d1:ali1ee1:q4:ping1:t1:x1:y1:qe", InvalidField("a")),
            (b"d1:ade1:q4:ping1:t1:x1:y1:qe", MissingKey("id")),
            (b"d1:ad2:id3:abce1:q4:ping1:t1:x1:y1:qe", InvalidField("id")),
            (
                b"d1:ad2:id20:abcdefghij0123456789e1:q9:find_node1:t1:x1:y1:qe",
                MissingKey("target"),
            ),
            (
                b"d1:ad2:id20:abcdefghij01234567894:porti70000e5:token1:x9:info_hash20:abcdefghij0123456789e1:q13:announce_peer1:t1:x1:y1:qe",
                InvalidField("port"),
            ),
            (
                b"d1:ad2:id20:abcdefghij01234567895:token1:x9:info_hash20:abcdefghij0123456789e1:q13:announce_peer1:t1:x1:y1:qe",
                MissingKey("port"),
            ),
            (
                b"d1:ad2:id20:abcdefghij01234567891:k3:abc5:token1:x1:v1:xe1:q3:put1:t1:x1:y1:qe",
                InvalidField("k"),
            ),
            (
                b"d1:ad2:id20:abcdefghij01234567895:token1:xe1:q3:put1:t1:x1:y1:qe",
                MissingKey("v"),
            ),
            (b"d1:rde1:t1:x1:y1:re", MissingKey("id")),
            (
                b"d1:rd2:id20:abcdefghij01234567893:sig3:abce1:t1:x1:y1:re",
                InvalidField("sig"),
            ),
            (
                b"d1:rd2:id20:abcdefghij01234567896:valuesi1ee1:t1:x1:y1:re",
                InvalidField("values"),
            ),
            (b"d1:t1:x1:y1:ee", MissingKey("e")),
            (b"d1:e3:abc1:t1:x1:y1:ee", InvalidField("e")),
            (b"d1:ele1:t1:x1:y1:ee", InvalidField("e")),
        ];
        for (wire, want) in cases {
            assert_eq!(
                Message::decode(wire).as_ref(),
                Err(want),
                "{}",
                String::from_utf8_lossy(wire)
            );
        }
        let big = [b'x'; MAX_DATAGRAM + 1];
        assert_eq!(Message::decode(&big), Err(TooLarge(MAX_DATAGRAM + 1)));
    }

    #[test]
    fn implied_port_makes_port_optional() {
        let wire = b"d1:ad2:id20:abcdefghij012345678912:implied_porti1e9:info_hash20:mnopqrstuvwxyz1234565:token1:xe1:q13:announce_peer1:t1:x1:y1:qe";
        let Body::Query {
            query: Query::AnnouncePeer {
                port, implied_port, ..
            },
            ..
        } = Message::decode(wire).unwrap().body
        else {
            panic!()
        };
        assert_eq!((port, implied_port), (0, true));
    }

    #[test]
    fn decode_tid_best_effort() {
        // A query with a bad id: decode fails, the tid is still there.
        let wire = b"d1:ad2:id3:abce1:q4:ping1:t2:aa1:y1:qe";
        assert!(Message::decode(wire).is_err());
        assert_eq!(Message::decode_tid(wire), Some((b"aa".to_vec(), true)));
        // Truncated after `t` and `y`.
        assert_eq!(
            Message::decode_tid(b"d1:t2:aa1:y1:q1:ad2:id"),
            Some((b"aa".to_vec(), true))
        );
        assert_eq!(
            Message::decode_tid(b"d1:t2:aa1:y1:re"),
            Some((b"aa".to_vec(), false))
        );
        assert_eq!(Message::decode_tid(b"d1:y1:q1:ti5ee"), None);
        assert_eq!(Message::decode_tid(b"l1:te"), None);
        assert_eq!(Message::decode_tid(b""), None);
    }

    #[test]
    fn lenient_top_level_fields() {
        // Bad `ip` length, `v` as an integer, `ro = 2`: ignored.
        let wire = b"d2:ip3:abc1:rd2:id20:mnopqrstuvwxyz123456e2:roi2e1:t2:aa1:vi1e1:y1:re";
        let m = Message::decode(wire).unwrap();
        assert_eq!((m.ip, m.version, m.read_only), (None, None, false));
        // A v6 `ip` field.
        let mut wire = b"d2:ip18:".to_vec();
        wire.extend_from_slice(&[
            0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0x1a, 0xe1,
        ]);
        wire.extend_from_slice(b"1:rd2:id20:mnopqrstuvwxyz123456e1:t2:aa1:y1:re");
        assert_eq!(
            Message::decode(&wire).unwrap().ip,
            Some("[2001:db8::2]:6881".parse().unwrap())
        );
    }

    // -- property tests ----------------------------------------------------------

    fn arb_id() -> impl Strategy<Value = NodeId> {
        any::<[u8; 20]>().prop_map(NodeId)
    }

    fn arb_v4() -> impl Strategy<Value = SocketAddr> {
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((ip, port)))
    }

    fn arb_v6() -> impl Strategy<Value = SocketAddr> {
        (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((ip, port)))
    }

    fn arb_addr() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![arb_v4(), arb_v6()]
    }

    fn arb_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(any::<u8>(), 0..max)
    }

    fn arb_small_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            any::<i64>().prop_map(Value::Int),
            arb_bytes(16).prop_map(Value::Bytes),
        ];
        leaf.prop_recursive(3, 12, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::List),
                prop::collection::btree_map(arb_bytes(6), inner, 0..4).prop_map(Value::Dict),
            ]
        })
    }

    fn arb_sig() -> impl Strategy<Value = [u8; 64]> {
        (any::<[u8; 32]>(), any::<[u8; 32]>()).prop_map(|(a, b)| {
            let mut s = [0u8; 64];
            s[..32].copy_from_slice(&a);
            s[32..].copy_from_slice(&b);
            s
        })
    }

    fn arb_query(body_id: NodeId) -> impl Strategy<Value = Query> {
        prop_oneof![
            Just(Query::Ping),
            arb_id().prop_map(|target| Query::FindNode { target }),
            arb_id().prop_map(|info_hash| Query::GetPeers { info_hash }),
            (arb_id(), any::<u16>(), any::<bool>(), arb_bytes(20)).prop_map(
                |(info_hash, port, implied_port, token)| Query::AnnouncePeer {
                    info_hash,
                    port,
                    implied_port,
                    token
                }
            ),
            (arb_id(), any::<Option<i64>>()).prop_map(|(target, seq)| Query::Get { target, seq }),
            (
                arb_bytes(20),
                arb_small_value(),
                any::<Option<[u8; 32]>>(),
                prop::option::of(arb_sig()),
                any::<Option<i64>>(),
                prop::option::of(arb_bytes(64)),
                any::<Option<i64>>(),
            )
                .prop_map(|(token, v, k, sig, seq, salt, cas)| Query::Put(PutArgs {
                    token,
                    v,
                    k,
                    sig,
                    seq,
                    salt,
                    cas
                })),
            (
                "pc_[a-z_]{1,12}",
                prop::collection::btree_map(arb_bytes(8), arb_small_value(), 0..4)
            )
                .prop_map(move |(method, mut args)| {
                    args.insert(b"id".to_vec(), Value::Bytes(body_id.0.to_vec()));
                    Query::Other {
                        method: method.into_bytes(),
                        args,
                    }
                }),
        ]
    }

    fn arb_response() -> impl Strategy<Value = Response> {
        (
            (
                arb_id(),
                prop::collection::vec(
                    (arb_id(), arb_v4()).prop_map(|(id, addr)| NodeInfo { id, addr }),
                    0..8,
                ),
                prop::collection::vec(
                    (arb_id(), arb_v6()).prop_map(|(id, addr)| NodeInfo { id, addr }),
                    0..4,
                ),
                prop::collection::vec(arb_addr(), 0..6),
                prop::option::of(arb_bytes(20)),
            ),
            (
                prop::option::of(arb_small_value()),
                any::<Option<[u8; 32]>>(),
                prop::option::of(arb_sig()),
                any::<Option<i64>>(),
                prop::collection::btree_map(
                    arb_bytes(8).prop_filter("not a field key", |k| {
                        !RESPONSE_KEYS.contains(&k.as_slice())
                    }),
                    arb_small_value(),
                    0..4,
                ),
            ),
        )
            .prop_map(
                |((id, nodes, nodes6, values, token), (v, k, sig, seq, other))| Response {
                    id,
                    nodes,
                    nodes6,
                    values,
                    token,
                    v,
                    k,
                    sig,
                    seq,
                    other,
                },
            )
    }

    fn arb_body() -> impl Strategy<Value = Body> {
        prop_oneof![
            arb_id()
                .prop_flat_map(|id| arb_query(id).prop_map(move |query| Body::Query { id, query })),
            arb_response().prop_map(Body::Response),
            (any::<i64>(), ".{0,40}")
                .prop_map(|(code, message)| Body::Error(KrpcError { code, message })),
        ]
    }

    fn arb_message() -> impl Strategy<Value = Message> {
        (
            arb_bytes(10),
            prop::option::of(arb_bytes(6)),
            prop::option::of(arb_addr()),
            any::<bool>(),
            arb_body(),
        )
            .prop_map(|(tid, version, ip, read_only, body)| Message {
                tid,
                version,
                ip,
                read_only,
                body,
            })
    }

    proptest! {
        #[test]
        fn message_round_trip(m in arb_message()) {
            let wire = m.encode();
            // Always canonical bencode.
            prop_assert_eq!(Value::decode(&wire).map(|v| v.encode()), Ok(wire.clone()));
            if wire.len() > MAX_DATAGRAM {
                prop_assert_eq!(Message::decode(&wire), Err(MessageError::TooLarge(wire.len())));
            } else {
                prop_assert_eq!(Message::decode(&wire), Ok(m.clone()));
                let is_query = matches!(m.body, Body::Query { .. });
                prop_assert_eq!(Message::decode_tid(&wire), Some((m.tid.clone(), is_query)));
            }
        }

        #[test]
        fn decode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..1600)) {
            if let Ok(m) = Message::decode(&bytes) {
                prop_assert_eq!(Message::decode(&m.encode()), Ok(m));
            }
            let _ = Message::decode_tid(&bytes);
        }

        #[test]
        fn decode_never_panics_on_mutations(
            m in arb_message(),
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..4), 1..5),
        ) {
            let mut wire = m.encode();
            for (idx, byte, op) in edits {
                if wire.is_empty() {
                    wire.push(byte);
                    continue;
                }
                let i = idx.index(wire.len());
                match op {
                    0 => wire[i] = byte,
                    1 => { wire.remove(i); }
                    2 => wire.insert(i, byte),
                    _ => wire.truncate(i),
                }
            }
            let _ = Value::decode(&wire);
            let _ = Message::decode_tid(&wire);
            if let Ok(m2) = Message::decode(&wire) {
                // Whatever decodes is stable under encode/decode.
                let again = Message::decode(&m2.encode());
                prop_assert_eq!(again, Ok(m2));
            }
        }

        #[test]
        fn arbitrary_values_as_messages(v in arb_value()) {
            let wire = v.encode();
            if let Ok(m) = Message::decode(&wire) {
                prop_assert_eq!(Message::decode(&m.encode()), Ok(m));
            }
        }
    }
}
