//! The rows the database stores and returns.
//!
//! Everything is plain data: envelopes, presence records, DHT items and name
//! claims are opaque blobs encoded by their owners; times are unix milliseconds.

use std::net::IpAddr;

use rusqlite::Row;

/// A message id (also an envelope id).
pub type MessageId = [u8; 16];
/// A user's public key.
pub type UserKey = [u8; 32];
/// A DHT node id or DHT target.
pub type NodeId = [u8; 20];

/// Which way a message went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Received from the peer.
    In,
    /// Sent to the peer.
    Out,
}

impl Direction {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::In => "in",
            Direction::Out => "out",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "in" => Some(Direction::In),
            "out" => Some(Direction::Out),
            _ => None,
        }
    }
}

/// Where a message is. States only move forward: queued < relayed < delivered < read.
///
/// An outgoing message starts `Queued`; a received one starts `Delivered`
/// (unread) and becomes `Read` with [`Db::mark_read`](super::Db::mark_read).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MessageState {
    /// In the outbox, not yet stored anywhere else.
    Queued,
    /// Stored at relays for an offline recipient.
    Relayed,
    /// Acknowledged by the recipient (for a received message: stored, unread).
    Delivered,
    /// Read by the recipient (for a received message: read here).
    Read,
}

impl MessageState {
    /// The stored spelling, also the one shown to people.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageState::Queued => "queued",
            MessageState::Relayed => "relayed",
            MessageState::Delivered => "delivered",
            MessageState::Read => "read",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "queued" => Some(MessageState::Queued),
            "relayed" => Some(MessageState::Relayed),
            "delivered" => Some(MessageState::Delivered),
            "read" => Some(MessageState::Read),
            _ => None,
        }
    }

    pub(crate) fn rank(self) -> i64 {
        self as i64
    }
}

impl std::fmt::Display for MessageState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A message received from a peer, already opened and verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomingMessage {
    /// The envelope's id.
    pub id: MessageId,
    /// The sender's key (the conversation's peer).
    pub from: UserKey,
    /// The text.
    pub text: String,
    /// When the sender sent it (sender's clock).
    pub sent_ms: i64,
    /// When it arrived here.
    pub received_ms: i64,
}

/// A message this user sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingMessage {
    /// The envelope's id.
    pub id: MessageId,
    /// The recipient's key (the conversation's peer).
    pub to: UserKey,
    /// This user's key.
    pub from: UserKey,
    /// The text.
    pub text: String,
    /// When it was sent (queued); also its first delivery attempt time.
    pub sent_ms: i64,
}

/// A message in the history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// The envelope's id.
    pub id: MessageId,
    /// The other party of the conversation.
    pub peer: UserKey,
    /// Which way it went.
    pub direction: Direction,
    /// Who wrote it.
    pub sender: UserKey,
    /// The text.
    pub text: String,
    /// When the sender sent it.
    pub sent_ms: i64,
    /// When it was stored here (received, or queued for an outgoing one).
    pub received_ms: i64,
    /// Its delivery state.
    pub state: MessageState,
}

/// An envelope waiting for its recipient's acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    /// The envelope's id (same as the message's).
    pub id: MessageId,
    /// The recipient's key.
    pub recipient: UserKey,
    /// The sealed envelope, as sent on the wire.
    pub envelope: Vec<u8>,
    /// When it was queued.
    pub created_ms: i64,
    /// How many delivery attempts were rescheduled.
    pub attempts: u32,
    /// When to try next.
    pub next_attempt_ms: i64,
    /// Whether relays hold a copy.
    pub relayed: bool,
}

/// An envelope this node holds for an offline recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayEntry {
    /// The envelope's id.
    pub id: MessageId,
    /// The recipient's key.
    pub recipient: UserKey,
    /// The sender's key (for per-sender quotas).
    pub sender: UserKey,
    /// The sealed envelope.
    pub envelope: Vec<u8>,
    /// Where the store request came from (for per-source quotas).
    pub source_ip: Option<IpAddr>,
    /// When it was stored.
    pub stored_ms: i64,
    /// When to drop it.
    pub expires_ms: i64,
}

/// Quotas checked by [`Db::relay_put_limited`](super::Db::relay_put_limited).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayLimits {
    /// Most envelopes held from one sender key.
    pub per_sender: u64,
    /// Most envelopes held from one source address.
    pub per_source_ip: u64,
    /// Most envelopes held in all.
    pub total: u64,
}

/// What [`Db::relay_put_limited`](super::Db::relay_put_limited) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayPut {
    /// Stored.
    Stored,
    /// Already held (same id): nothing changed.
    Duplicate,
    /// The sender's quota is full.
    SenderQuota,
    /// The source address's quota is full.
    SourceQuota,
    /// The queue is full.
    Full,
}

/// A known user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contact {
    /// Their key (the primary key).
    pub key: UserKey,
    /// Their name.
    pub name: String,
    /// The key fingerprint pinned when the contact was added.
    pub fingerprint: String,
    /// When they were added.
    pub added_ms: i64,
    /// Their last presence record seen (opaque).
    pub presence: Option<Vec<u8>>,
    /// When that presence record was stored.
    pub presence_ms: Option<i64>,
}

/// One conversation in the list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversation {
    /// The other party.
    pub peer: UserKey,
    /// The newest message (by send time).
    pub last: StoredMessage,
    /// Received messages not yet read.
    pub unread: u64,
}

/// This user's profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    /// The user's name.
    pub name: String,
    /// The user's public key.
    pub key: UserKey,
    /// When the identity was made.
    pub created_ms: i64,
}

/// A stored DHT item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhtRecord {
    /// Its target.
    pub target: NodeId,
    /// The item, encoded by the DHT layer.
    pub item: Vec<u8>,
    /// When it was stored.
    pub stored_ms: i64,
}

/// A stored name claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameClaim {
    /// The name.
    pub name: String,
    /// The signed claim, encoded by the chat layer.
    pub claim: Vec<u8>,
    /// When it was stored.
    pub stored_ms: i64,
}

/// Row counts, for `status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Contacts.
    pub contacts: u64,
    /// Messages in the history.
    pub messages: u64,
    /// Received messages not yet read.
    pub unread: u64,
    /// Envelopes waiting for acknowledgement.
    pub outbox: u64,
    /// Envelopes held for others.
    pub relay_queue: u64,
    /// Remembered message ids.
    pub seen: u64,
    /// Stored DHT items.
    pub dht_records: u64,
    /// Stored name claims.
    pub name_claims: u64,
    /// Routing-table snapshot entries.
    pub routing: u64,
}

/// Reads a fixed-size blob column, failing cleanly on a wrong length.
pub(crate) fn blob<const N: usize>(row: &Row<'_>, idx: usize) -> rusqlite::Result<[u8; N]> {
    let v: Vec<u8> = row.get(idx)?;
    <[u8; N]>::try_from(v.as_slice()).map_err(|_| {
        rusqlite::Error::FromSqlConversionFailure(
            idx,
            rusqlite::types::Type::Blob,
            format!("expected {N} bytes, found {}", v.len()).into(),
        )
    })
}

fn text_err(idx: usize, msg: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, msg.into())
}

/// The columns [`message_from_row`] reads, in order.
pub(crate) const MESSAGE_COLS: &str =
    "id, peer, direction, sender, text, sent_ms, received_ms, state";

/// Reads a message selected with [`MESSAGE_COLS`] starting at column `o`.
pub(crate) fn message_from_row(row: &Row<'_>, o: usize) -> rusqlite::Result<StoredMessage> {
    let direction: String = row.get(o + 2)?;
    let direction = Direction::parse(&direction)
        .ok_or_else(|| text_err(o + 2, format!("unknown direction {direction:?}")))?;
    let state: String = row.get(o + 7)?;
    let state = MessageState::parse(&state)
        .ok_or_else(|| text_err(o + 7, format!("unknown state {state:?}")))?;
    Ok(StoredMessage {
        id: blob(row, o)?,
        peer: blob(row, o + 1)?,
        direction,
        sender: blob(row, o + 3)?,
        text: row.get(o + 4)?,
        sent_ms: row.get(o + 5)?,
        received_ms: row.get(o + 6)?,
        state,
    })
}

/// The columns [`outbox_from_row`] reads, in order.
pub(crate) const OUTBOX_COLS: &str =
    "id, recipient, envelope, created_ms, attempts, next_attempt_ms, relayed";

pub(crate) fn outbox_from_row(row: &Row<'_>) -> rusqlite::Result<OutboxEntry> {
    let attempts: i64 = row.get(4)?;
    Ok(OutboxEntry {
        id: blob(row, 0)?,
        recipient: blob(row, 1)?,
        envelope: row.get(2)?,
        created_ms: row.get(3)?,
        attempts: u32::try_from(attempts.max(0)).unwrap_or(u32::MAX),
        next_attempt_ms: row.get(5)?,
        relayed: row.get::<_, i64>(6)? != 0,
    })
}

/// The columns [`relay_from_row`] reads, in order.
pub(crate) const RELAY_COLS: &str =
    "id, recipient, sender, envelope, source_ip, stored_ms, expires_ms";

pub(crate) fn relay_from_row(row: &Row<'_>) -> rusqlite::Result<RelayEntry> {
    let ip: Option<String> = row.get(4)?;
    let source_ip = match ip {
        None => None,
        Some(s) => Some(
            s.parse::<IpAddr>()
                .map_err(|e| text_err(4, format!("bad address {s:?}: {e}")))?,
        ),
    };
    Ok(RelayEntry {
        id: blob(row, 0)?,
        recipient: blob(row, 1)?,
        sender: blob(row, 2)?,
        envelope: row.get(3)?,
        source_ip,
        stored_ms: row.get(5)?,
        expires_ms: row.get(6)?,
    })
}

/// The columns [`contact_from_row`] reads, in order.
pub(crate) const CONTACT_COLS: &str =
    "user_key, name, fingerprint, added_ms, presence, presence_ms";

pub(crate) fn contact_from_row(row: &Row<'_>) -> rusqlite::Result<Contact> {
    Ok(Contact {
        key: blob(row, 0)?,
        name: row.get(1)?,
        fingerprint: row.get(2)?,
        added_ms: row.get(3)?,
        presence: row.get(4)?,
        presence_ms: row.get(5)?,
    })
}

/// A count column as `u64`.
pub(crate) fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}
