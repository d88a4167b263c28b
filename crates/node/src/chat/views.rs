//! What the chat node shows: the JSON of the local API, the CLI's `--json`.

use serde::{Deserialize, Serialize};

/// One message, as a person sees it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct MessageView {
    /// Message id, 32 hex characters.
    pub id: String,
    /// The other party's name (or key in hex when unknown).
    pub peer: String,
    /// The other party's key, hex.
    pub peer_key: String,
    /// `in` (received) or `out` (sent).
    pub direction: String,
    /// Who wrote it (a name, or `me`).
    pub from: String,
    /// The text.
    pub text: String,
    /// When it was sent, unix milliseconds (sender's clock).
    pub sent_ms: i64,
    /// When it was stored here, unix milliseconds.
    pub received_ms: i64,
    /// `queued`, `relayed`, `delivered` or `read`.
    pub state: String,
}

/// One conversation in the list.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ConversationView {
    /// The other party's name.
    pub peer: String,
    /// Their key, hex.
    pub peer_key: String,
    /// The newest message.
    pub last: MessageView,
    /// Received messages not yet read.
    pub unread: u64,
}

/// A known user.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ContactView {
    /// Their name.
    pub name: String,
    /// Their key, hex.
    pub key: String,
    /// The key's fingerprint, to compare out of band.
    pub fingerprint: String,
}

/// `whois NAME`: who holds a name, and where they are now.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct WhoisView {
    /// The name.
    pub name: String,
    /// The key that holds it, hex.
    pub key: String,
    /// Its fingerprint.
    pub fingerprint: String,
    /// Where its node's DHT socket listens (from its signed presence record).
    pub dht_addrs: Vec<String>,
    /// Where its chat sessions are accepted.
    pub chat_addrs: Vec<String>,
    /// When the presence record was made, unix milliseconds (None: no presence found).
    pub presence_ms: Option<i64>,
}

/// `status`: this node at a glance.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct StatusView {
    /// This user's name.
    pub name: String,
    /// This user's key, hex.
    pub key: String,
    /// Its fingerprint.
    pub fingerprint: String,
    /// The DHT node id, hex.
    pub node_id: String,
    /// Where the node listens (UDP for the DHT, TCP for sessions, same port).
    pub listen: String,
    /// Our address as other nodes see it, when known.
    pub external: Option<String>,
    /// Contacts in the routing table.
    pub routing_table: usize,
    /// Whether any peer is reachable.
    pub online: bool,
    /// Envelopes waiting for their recipient's acknowledgement.
    pub outbox: u64,
    /// Envelopes held here for offline users.
    pub relay_queue: u64,
    /// Received messages not yet read.
    pub unread: u64,
    /// Whether our name claim is held by the network (false: taken by another key, or not yet published).
    pub name_claimed: bool,
    /// Envelopes this node refused since it started (forged, tampered,
    /// malformed, not for us, or over a relay quota).
    #[serde(default)]
    pub refused_envelopes: u64,
}

/// A change the UIs may want to show at once (the event stream).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ChatEvent {
    /// A message arrived.
    Message(MessageView),
    /// A message's delivery state changed.
    State {
        /// The message id, hex.
        id: String,
        /// The new state.
        state: String,
    },
}
