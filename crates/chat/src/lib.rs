//! Peerchat's chat logic, sans-IO: identities, signed name claims and presence
//! records, sealed and signed envelopes, mailboxes and the relay queue.
//!
//! Nothing here reads a clock, a socket, the disk or OS randomness: the time (`now`,
//! unix milliseconds) and an RNG are parameters, so the node and the simulator run
//! the very same code. Every decoder returns an error, never panics, on any input.
//!
//! - [`identity`]: a user is an ed25519 key pair ([`Identity`], [`UserKey`]); its
//!   X25519 key (for sealing and Noise) is derived from it.
//! - [`content`] and [`envelope`]: [`Content`] sealed to a recipient and signed by
//!   the sender in an [`Envelope`] of at most [`MAX_ENVELOPE`] bytes.
//! - [`names`]: [`Username`] rules and signed [`NameClaim`]s, with the storer's
//!   ([`accept_claim`]) and the reader's ([`resolve_claims`]) policies.
//! - [`presence`]: [`Presence`] as a BEP 44 mutable item signed by the user key.
//! - [`mailbox`]: [`mailbox_target`], the recipient-signed [`DeliveryAck`] and
//!   [`FetchAuth`].
//! - [`relay`]: the bounded [`RelayQueue`] a node keeps for offline users.
//! - [`outbox`]: the [`DeliveryState`] a sender sees.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod content;
pub mod envelope;
pub mod identity;
pub mod mailbox;
pub mod names;
pub mod outbox;
pub mod presence;
pub mod relay;
mod wire;

pub use content::{
    Content, ContentError, MAX_RECEIPT_IDS, MAX_TEXT_BYTES, MessageId, ParseMessageIdError,
};
pub use envelope::{
    ENVELOPE_VERSION, Envelope, EnvelopeError, HEADER_LEN, MAX_ENVELOPE, OpenCache, Sealer,
    SealingKey,
};
pub use identity::{Identity, KeyError, ParseKeyError, UserKey, x25519_secret};
pub use mailbox::{
    AuthError, DeliveryAck, FETCH_AUTH_WINDOW_MS, FetchAuth, MAX_ACK_IDS, mailbox_target,
};
pub use names::{
    Accept, ClaimError, ClaimTally, MAX_NAME_LEN, NameClaim, NameError, Username, accept_claim,
    name_target, resolve_claims, validate_name,
};
pub use outbox::{DeliveryState, ParseStateError};
pub use presence::{
    MAX_PRESENCE_ADDRS, PRESENCE_SALT, Presence, PresenceError, beside_claim, from_beside_claim,
    newest_presence, presence_target,
};
pub use relay::{RelayConfig, RelayEntry, RelayError, RelayQueue, Stored, ip_bucket};
