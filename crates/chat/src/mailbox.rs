//! Mailboxes: where offline messages wait, and the signed records that let only the
//! mailbox's owner fetch and clear it.
//!
//! Envelopes for user `R` are stored at the k closest nodes to [`mailbox_target`]`(R)`.
//! `R` fetches them with a [`FetchAuth`] made for one relay and valid for a few
//! minutes, and clears every copy with one [`DeliveryAck`] sent to all the relays.

use peerchat_kad::NodeId;
use serde::{Deserialize, Serialize};
use sha1::{Digest, Sha1};

use crate::content::MessageId;
use crate::identity::{Identity, KeyError, UserKey};
use crate::wire::{self, byte_array};

/// Most message ids in one [`DeliveryAck`] (so an ack fits one datagram).
pub const MAX_ACK_IDS: usize = 64;

/// How far a [`FetchAuth`]'s timestamp may be from the relay's clock: 5 minutes.
pub const FETCH_AUTH_WINDOW_MS: u64 = 5 * 60 * 1000;

/// Largest encoded [`DeliveryAck`].
pub const MAX_ACK_BYTES: usize = 32 + 1 + MAX_ACK_IDS * 16 + 10 + 64;

/// Largest encoded [`FetchAuth`].
pub const MAX_FETCH_AUTH_BYTES: usize = 32 + 20 + 10 + 64;

const ACK_DOMAIN: &[u8] = b"peerchat-ack-v1";
const FETCH_DOMAIN: &[u8] = b"peerchat-fetch-v1";

/// The DHT key of `user`'s mailbox: SHA-1("peerchat:mailbox:" ‖ key bytes).
pub fn mailbox_target(user: &UserKey) -> NodeId {
    let mut h = Sha1::new();
    h.update(b"peerchat:mailbox:");
    h.update(user.0);
    NodeId(h.finalize().into())
}

/// Why an ack or a fetch authorization is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The recipient key is unusable.
    #[error("recipient key is unusable: {0}")]
    BadKey(KeyError),
    /// The signature does not verify.
    #[error("signature does not verify against the recipient key")]
    BadSignature,
    /// An ack lists no ids.
    #[error("delivery ack lists no message ids")]
    NoIds,
    /// An ack lists more than [`MAX_ACK_IDS`] ids.
    #[error("delivery ack lists {0} message ids, the most is {MAX_ACK_IDS}")]
    TooManyIds(usize),
    /// A fetch authorization made for another relay.
    #[error("fetch authorization is for relay {0}, not this node")]
    WrongRelay(String),
    /// A fetch authorization whose timestamp is too far from `now`.
    #[error(
        "fetch authorization time is {skew_ms} ms from this node's clock, the most is {FETCH_AUTH_WINDOW_MS}"
    )]
    Stale {
        /// |now - timestamp|.
        skew_ms: u64,
    },
    /// The bytes are malformed.
    #[error("malformed record: {0}")]
    Malformed(&'static str),
    /// The encoding is too large.
    #[error("record is {len} bytes, the most is {max}")]
    TooLarge {
        /// The input length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// A recipient's signed statement that it has these messages: relays drop their
/// copies of them (only copies addressed to this recipient).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct DeliveryAck {
    /// The mailbox owner, who signs.
    pub recipient: UserKey,
    /// The delivered messages: 1 to [`MAX_ACK_IDS`].
    pub ids: Vec<MessageId>,
    /// When the ack was signed, unix milliseconds.
    pub timestamp_ms: u64,
    /// Ed25519 signature by `recipient`.
    #[serde(with = "byte_array")]
    pub signature: [u8; 64],
}

impl DeliveryAck {
    /// Signs an ack of `ids` by `recipient`.
    pub fn new(
        recipient: &Identity,
        ids: Vec<MessageId>,
        now_ms: u64,
    ) -> Result<DeliveryAck, AuthError> {
        check_ids(&ids)?;
        let mut ack = DeliveryAck {
            recipient: recipient.public(),
            ids,
            timestamp_ms: now_ms,
            signature: [0; 64],
        };
        ack.signature = recipient.sign(&ack.signed_bytes());
        Ok(ack)
    }

    /// `"peerchat-ack-v1" ‖ recipient ‖ timestamp (BE) ‖ count (u32 BE) ‖ ids`.
    fn signed_bytes(&self) -> Vec<u8> {
        let mut m = Vec::with_capacity(ACK_DOMAIN.len() + 44 + 16 * self.ids.len());
        m.extend_from_slice(ACK_DOMAIN);
        m.extend_from_slice(&self.recipient.0);
        m.extend_from_slice(&self.timestamp_ms.to_be_bytes());
        m.extend_from_slice(
            &u32::try_from(self.ids.len())
                .unwrap_or(u32::MAX)
                .to_be_bytes(),
        );
        for id in &self.ids {
            m.extend_from_slice(&id.0);
        }
        m
    }

    /// Checks the id count, the key and the signature.
    pub fn verify(&self) -> Result<(), AuthError> {
        check_ids(&self.ids)?;
        check_signature(&self.recipient, &self.signed_bytes(), &self.signature)
    }

    /// The postcard encoding.
    pub fn to_bytes(&self) -> Vec<u8> {
        wire::encode(self)
    }

    /// Decodes an ack (without verifying it).
    pub fn from_bytes(bytes: &[u8]) -> Result<DeliveryAck, AuthError> {
        decode(bytes, MAX_ACK_BYTES)
    }
}

/// A usable key, and its signature over `signed`.
fn check_signature(key: &UserKey, signed: &[u8], signature: &[u8; 64]) -> Result<(), AuthError> {
    key.verifying_key().map_err(AuthError::BadKey)?;
    if !key.verifies(signed, signature) {
        return Err(AuthError::BadSignature);
    }
    Ok(())
}

fn check_ids(ids: &[MessageId]) -> Result<(), AuthError> {
    match ids.len() {
        0 => Err(AuthError::NoIds),
        n if n > MAX_ACK_IDS => Err(AuthError::TooManyIds(n)),
        _ => Ok(()),
    }
}

/// Proof that the fetcher owns a mailbox, made for one relay and valid for
/// [`FETCH_AUTH_WINDOW_MS`] around its timestamp.
///
/// A fetch only returns ciphertext, so replay within the window (to the same relay)
/// reveals nothing the relay could not already see.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct FetchAuth {
    /// The mailbox owner, who signs.
    pub recipient: UserKey,
    /// The node id of the relay this authorization is for.
    #[serde(with = "wire::node_id")]
    pub relay: NodeId,
    /// When it was signed, unix milliseconds.
    pub timestamp_ms: u64,
    /// Ed25519 signature by `recipient`.
    #[serde(with = "byte_array")]
    pub signature: [u8; 64],
}

impl FetchAuth {
    /// Signs an authorization for `recipient` to fetch its mailbox from `relay`.
    pub fn new(recipient: &Identity, relay: NodeId, now_ms: u64) -> FetchAuth {
        let mut auth = FetchAuth {
            recipient: recipient.public(),
            relay,
            timestamp_ms: now_ms,
            signature: [0; 64],
        };
        auth.signature = recipient.sign(&auth.signed_bytes());
        auth
    }

    /// `"peerchat-fetch-v1" ‖ recipient ‖ relay ‖ timestamp (BE)`.
    fn signed_bytes(&self) -> Vec<u8> {
        let mut m = Vec::with_capacity(FETCH_DOMAIN.len() + 60);
        m.extend_from_slice(FETCH_DOMAIN);
        m.extend_from_slice(&self.recipient.0);
        m.extend_from_slice(&self.relay.0);
        m.extend_from_slice(&self.timestamp_ms.to_be_bytes());
        m
    }

    /// The relay's check: made for `my_id`, fresh at `now_ms`, signed by `recipient`.
    pub fn verify(&self, my_id: &NodeId, now_ms: u64) -> Result<(), AuthError> {
        if self.relay != *my_id {
            return Err(AuthError::WrongRelay(self.relay.to_hex()));
        }
        let skew_ms = now_ms.abs_diff(self.timestamp_ms);
        if skew_ms > FETCH_AUTH_WINDOW_MS {
            return Err(AuthError::Stale { skew_ms });
        }
        check_signature(&self.recipient, &self.signed_bytes(), &self.signature)
    }

    /// The postcard encoding.
    pub fn to_bytes(&self) -> Vec<u8> {
        wire::encode(self)
    }

    /// Decodes an authorization (without verifying it).
    pub fn from_bytes(bytes: &[u8]) -> Result<FetchAuth, AuthError> {
        decode(bytes, MAX_FETCH_AUTH_BYTES)
    }
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8], max: usize) -> Result<T, AuthError> {
    if bytes.len() > max {
        return Err(AuthError::TooLarge {
            len: bytes.len(),
            max,
        });
    }
    wire::decode_exact(bytes).map_err(|e| match e {
        wire::StrictError::Malformed(why) => AuthError::Malformed(why),
        wire::StrictError::Trailing(_) => AuthError::Malformed("trailing bytes"),
    })
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    use super::*;

    fn ids() -> (Identity, Identity) {
        let mut r = ChaCha20Rng::seed_from_u64(5);
        (Identity::generate(&mut r), Identity::generate(&mut r))
    }

    #[test]
    fn mailbox_target_is_sha1_of_prefixed_key() {
        let key = UserKey([4; 32]);
        let mut input = b"peerchat:mailbox:".to_vec();
        input.extend_from_slice(&[4; 32]);
        let want: [u8; 20] = Sha1::digest(&input).into();
        assert_eq!(mailbox_target(&key), NodeId(want));
    }

    #[test]
    fn ack_sign_verify_encode() {
        let (a, b) = ids();
        let ack = DeliveryAck::new(&a, vec![MessageId([1; 16]); MAX_ACK_IDS], 10).unwrap();
        ack.verify().unwrap();
        let bytes = ack.to_bytes();
        assert!(bytes.len() <= MAX_ACK_BYTES, "{}", bytes.len());
        assert_eq!(DeliveryAck::from_bytes(&bytes), Ok(ack.clone()));
        let mut forged = ack.clone();
        forged.recipient = b.public();
        assert_eq!(forged.verify(), Err(AuthError::BadSignature));
        let mut forged = ack.clone();
        forged.ids[3].0[0] ^= 1;
        assert_eq!(forged.verify(), Err(AuthError::BadSignature));
        let mut forged = ack.clone();
        forged.ids.pop();
        assert_eq!(forged.verify(), Err(AuthError::BadSignature));
        let mut forged = ack;
        forged.timestamp_ms += 1;
        assert_eq!(forged.verify(), Err(AuthError::BadSignature));
        assert_eq!(
            DeliveryAck::new(&a, vec![], 1).err(),
            Some(AuthError::NoIds)
        );
        assert_eq!(
            DeliveryAck::new(&a, vec![MessageId::default(); 65], 1).err(),
            Some(AuthError::TooManyIds(65))
        );
        assert!(DeliveryAck::from_bytes(&bytes[..40]).is_err());
    }

    #[test]
    fn fetch_auth_checks_relay_freshness_and_signature() {
        let (a, b) = ids();
        let relay = NodeId([7; 20]);
        let now = 1_000_000_000;
        let auth = FetchAuth::new(&a, relay, now);
        assert_eq!(auth.verify(&relay, now), Ok(()));
        assert_eq!(auth.verify(&relay, now + FETCH_AUTH_WINDOW_MS), Ok(()));
        assert_eq!(auth.verify(&relay, now - FETCH_AUTH_WINDOW_MS), Ok(()));
        assert_eq!(
            auth.verify(&relay, now + FETCH_AUTH_WINDOW_MS + 1),
            Err(AuthError::Stale {
                skew_ms: FETCH_AUTH_WINDOW_MS + 1
            })
        );
        assert!(matches!(
            auth.verify(&relay, now - FETCH_AUTH_WINDOW_MS - 1),
            Err(AuthError::Stale { .. })
        ));
        assert!(matches!(
            auth.verify(&NodeId([8; 20]), now),
            Err(AuthError::WrongRelay(_))
        ));
        let mut forged = auth.clone();
        forged.recipient = b.public();
        assert_eq!(forged.verify(&relay, now), Err(AuthError::BadSignature));
        let mut moved = auth.clone();
        moved.relay = NodeId([8; 20]);
        assert_eq!(
            moved.verify(&NodeId([8; 20]), now),
            Err(AuthError::BadSignature)
        );
        let bytes = auth.to_bytes();
        assert!(bytes.len() <= MAX_FETCH_AUTH_BYTES);
        assert_eq!(FetchAuth::from_bytes(&bytes), Ok(auth));
        assert!(FetchAuth::from_bytes(&bytes[..bytes.len() - 1]).is_err());
        assert!(FetchAuth::from_bytes(&[0; 200]).is_err());
    }
}
