//! Sealed, signed envelopes: the unit of delivery, sent directly or through relays.
//!
//! Sealing (sender `S`, recipient `R`):
//! 1. an ephemeral X25519 key `e` (from the caller's RNG) and a random 16-byte nonce `n`;
//!    the id is `SHA-256("peerchat-message-id" ‖ S ‖ E ‖ n)[..16]` ([`bound_id`]);
//! 2. `shared = X25519(e, montgomery(R))`;
//! 3. `key = HKDF-SHA256(salt = "peerchat-envelope-v2", ikm = shared, info = E ‖ R ‖ id)`;
//! 4. `ciphertext = ChaCha20-Poly1305(key, nonce = 0, aad = header, content)`. The zero
//!    nonce is safe because the key is unique to the message (its id is);
//! 5. `signature = Ed25519(S, "peerchat-envelope-v2" ‖ header ‖ ciphertext)`,
//!
//! where `header = id ‖ sender ‖ recipient ‖ timestamp (u64 big-endian) ‖ E ‖ n`
//! (136 bytes). Relays check the signature without any secret ([`Envelope::verify`]);
//! only the recipient can [`Envelope::open`] it. Since the header is the AEAD's
//! associated data, an envelope re-signed by someone else under their own sender key
//! no longer decrypts.
//!
//! A sender writing many messages to one person may keep `e` for a short while
//! ([`Sealer`]: at most [`Sealer::MAX_USES`] messages and [`Sealer::MAX_AGE_MS`]), and
//! the recipient may keep `shared` by `E` ([`OpenCache`]): a burst of messages then
//! costs one key exchange on each side instead of one per message. Each message keeps
//! its own key (the id is in the derivation). What is given up is small: while `e` is
//! kept, someone who takes the sender's memory could read the messages sealed with it,
//! which that sender's history holds in clear anyway.

use std::fmt;

use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{ChaCha20Poly1305, KeyInit, Nonce};
use hkdf::Hkdf;
use rand::CryptoRng;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use x25519_dalek::{PublicKey, StaticSecret};

use crate::content::{Content, ContentError, MessageId};
use crate::identity::{Identity, KeyError, UserKey};
use crate::wire::{self, byte_array};

/// Largest encoded envelope, in bytes: with about 200 bytes of KRPC framing a relayed
/// envelope still fits a 1,500-byte UDP datagram. See [`crate::MAX_TEXT_BYTES`].
pub const MAX_ENVELOPE: usize = 1240;

/// The first byte of an encoded envelope.
pub const ENVELOPE_VERSION: u8 = 2;

/// Length of [`Envelope::header`].
pub const HEADER_LEN: usize = 16 + 32 + 32 + 8 + 32 + 16;

/// Domain separation for the key derivation and the signature.
const DOMAIN: &[u8] = b"peerchat-envelope-v2";

/// Length of the AEAD tag appended to the ciphertext.
const TAG_LEN: usize = 16;

/// An end-to-end encrypted message, signed by its sender.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Envelope {
    /// The message id ([`bound_id`]): the key for deduplication.
    pub id: MessageId,
    /// The sender's key; [`Envelope::signature`] is by this key.
    pub sender: UserKey,
    /// The recipient's key; the content is sealed to it.
    pub recipient: UserKey,
    /// When the sender sealed it, unix milliseconds (sender's clock).
    pub timestamp_ms: u64,
    /// The sender's ephemeral X25519 public key.
    #[serde(with = "byte_array")]
    pub ephemeral: [u8; 32],
    /// Random bytes that make the id (and so the key) unique to the message.
    pub nonce: [u8; 16],
    /// The sealed [`Content`], with its 16-byte tag.
    pub ciphertext: Vec<u8>,
    /// The sender's ed25519 signature (see the module docs).
    #[serde(with = "byte_array")]
    pub signature: [u8; 64],
}

/// Why an envelope cannot be made, decoded, verified or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// The encoding is larger than [`MAX_ENVELOPE`].
    #[error("envelope is {0} bytes, the most is {MAX_ENVELOPE}")]
    TooLarge(usize),
    /// No bytes at all.
    #[error("envelope is empty")]
    Empty,
    /// The first byte is not [`ENVELOPE_VERSION`].
    #[error("unknown envelope version {0}")]
    UnknownVersion(u8),
    /// The bytes after the version are not an envelope.
    #[error("malformed envelope: {0}")]
    Malformed(&'static str),
    /// Bytes left after the envelope.
    #[error("{0} trailing bytes after the envelope")]
    TrailingBytes(usize),
    /// The sender key is unusable.
    #[error("bad sender key: {0}")]
    BadSender(KeyError),
    /// The recipient key is unusable.
    #[error("bad recipient key: {0}")]
    BadRecipient(KeyError),
    /// The signature does not verify against the sender key.
    #[error("envelope signature does not verify")]
    BadSignature,
    /// The message id is not the one bound to the sender and the ephemeral key
    /// (someone reusing another sender's id, to have the real message dropped
    /// as a duplicate).
    #[error("envelope message id is not bound to its sender")]
    UnboundId,
    /// [`Envelope::open`] was called with an identity that is not the recipient.
    #[error("envelope is addressed to another user")]
    WrongRecipient,
    /// The key exchange gave an all-zero secret (a small-order ephemeral key).
    #[error("envelope ephemeral key is a small-order point")]
    WeakEphemeral,
    /// The ciphertext does not decrypt (tampered, or not sealed to this key).
    #[error("envelope ciphertext does not decrypt")]
    Decrypt,
    /// The content is invalid (too large, or malformed after decryption).
    #[error(transparent)]
    Content(#[from] ContentError),
}

/// A recipient's key, checked and converted to X25519 once: senders that write
/// to the same person many times keep one and seal with [`Envelope::seal_for`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SealingKey {
    recipient: UserKey,
    x25519: [u8; 32],
}

impl SealingKey {
    /// Checks `recipient` (a valid, strong ed25519 key) and derives its X25519 key.
    pub fn new(recipient: UserKey) -> Result<SealingKey, KeyError> {
        Ok(SealingKey {
            recipient,
            x25519: recipient.x25519_public()?,
        })
    }

    /// The recipient's identity key.
    pub fn recipient(&self) -> UserKey {
        self.recipient
    }
}

impl Envelope {
    /// Seals `content` from `sender` to `recipient` at `now_ms`, drawing the id and the
    /// ephemeral key from `rng`.
    pub fn seal(
        sender: &Identity,
        recipient: &UserKey,
        content: &Content,
        now_ms: u64,
        rng: &mut impl CryptoRng,
    ) -> Result<Envelope, EnvelopeError> {
        let to = SealingKey::new(*recipient).map_err(EnvelopeError::BadRecipient)?;
        Envelope::seal_for(sender, &to, content, now_ms, rng)
    }

    /// [`Envelope::seal`] with the recipient's key already checked and converted.
    pub fn seal_for(
        sender: &Identity,
        to: &SealingKey,
        content: &Content,
        now_ms: u64,
        rng: &mut impl CryptoRng,
    ) -> Result<Envelope, EnvelopeError> {
        Sealer::new(*to, now_ms, rng)?.seal(sender, content, now_ms, rng)
    }

    /// The fixed-size header:
    /// `id ‖ sender ‖ recipient ‖ timestamp_ms (BE) ‖ ephemeral ‖ nonce`.
    /// It is the AEAD's associated data and part of the signed bytes.
    pub fn header(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[..16].copy_from_slice(&self.id.0);
        h[16..48].copy_from_slice(&self.sender.0);
        h[48..80].copy_from_slice(&self.recipient.0);
        h[80..88].copy_from_slice(&self.timestamp_ms.to_be_bytes());
        h[88..120].copy_from_slice(&self.ephemeral);
        h[120..].copy_from_slice(&self.nonce);
        h
    }

    /// `"peerchat-envelope-v1" ‖ header ‖ ciphertext`.
    fn signed_bytes(&self) -> Vec<u8> {
        let mut m = Vec::with_capacity(DOMAIN.len() + HEADER_LEN + self.ciphertext.len());
        m.extend_from_slice(DOMAIN);
        m.extend_from_slice(&self.header());
        m.extend_from_slice(&self.ciphertext);
        m
    }

    /// Checks the sender's signature (strict ed25519: no weak keys, no malleable
    /// signatures). This is what relays do: it needs no secret.
    pub fn verify(&self) -> Result<(), EnvelopeError> {
        let key = self
            .sender
            .verifying_key()
            .map_err(EnvelopeError::BadSender)?;
        if self.ciphertext.len() < TAG_LEN {
            return Err(EnvelopeError::Malformed(
                "ciphertext is shorter than the aead tag",
            ));
        }
        let signature = ed25519_dalek::Signature::from_bytes(&self.signature);
        if key.verify_strict(&self.signed_bytes(), &signature).is_err() {
            return Err(EnvelopeError::BadSignature);
        }
        if self.id != bound_id(&self.sender, &self.ephemeral, &self.nonce) {
            return Err(EnvelopeError::UnboundId);
        }
        Ok(())
    }

    /// Verifies, checks that `recipient` is the addressee, and decrypts.
    pub fn open(&self, recipient: &Identity) -> Result<Content, EnvelopeError> {
        self.verify()?;
        let shared = self.exchange(recipient)?;
        self.decrypt(&shared)
    }

    /// [`Envelope::open`], keeping the key exchange's result in `cache` for the
    /// sender's next envelopes under the same ephemeral key.
    pub fn open_cached(
        &self,
        recipient: &Identity,
        cache: &OpenCache,
    ) -> Result<Content, EnvelopeError> {
        self.verify()?;
        if self.recipient != recipient.public() {
            return Err(EnvelopeError::WrongRecipient);
        }
        let shared = match cache.get(&self.ephemeral) {
            Some(shared) => shared,
            None => {
                let shared = self.exchange(recipient)?;
                cache.insert(self.ephemeral, shared);
                shared
            }
        };
        self.decrypt(&shared)
    }

    /// The recipient's half of the key exchange.
    fn exchange(&self, recipient: &Identity) -> Result<[u8; 32], EnvelopeError> {
        if self.recipient != recipient.public() {
            return Err(EnvelopeError::WrongRecipient);
        }
        let secret = StaticSecret::from(recipient.x25519_secret());
        let shared = secret.diffie_hellman(&PublicKey::from(self.ephemeral));
        if !shared.was_contributory() {
            return Err(EnvelopeError::WeakEphemeral);
        }
        Ok(shared.to_bytes())
    }

    fn decrypt(&self, shared: &[u8; 32]) -> Result<Content, EnvelopeError> {
        let cipher = cipher(shared, &self.ephemeral, &self.recipient, &self.id);
        let header = self.header();
        let plaintext = cipher
            .decrypt(
                &Nonce::default(),
                Payload {
                    msg: &self.ciphertext,
                    aad: &header,
                },
            )
            .map_err(|_| EnvelopeError::Decrypt)?;
        Ok(Content::from_bytes(&plaintext)?)
    }

    /// The wire encoding: [`ENVELOPE_VERSION`], then the postcard encoding.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = vec![ENVELOPE_VERSION];
        out.extend_from_slice(&wire::encode(self));
        out
    }

    /// The length of [`Envelope::to_bytes`].
    pub fn encoded_len(&self) -> usize {
        self.to_bytes().len()
    }

    /// Decodes an envelope (without verifying it). Refuses inputs larger than
    /// [`MAX_ENVELOPE`], unknown versions, malformed bytes and trailing bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Envelope, EnvelopeError> {
        if bytes.len() > MAX_ENVELOPE {
            return Err(EnvelopeError::TooLarge(bytes.len()));
        }
        let (&version, rest) = bytes.split_first().ok_or(EnvelopeError::Empty)?;
        if version != ENVELOPE_VERSION {
            return Err(EnvelopeError::UnknownVersion(version));
        }
        wire::decode_exact(rest).map_err(|e| match e {
            wire::StrictError::Malformed(why) => EnvelopeError::Malformed(why),
            wire::StrictError::Trailing(n) => EnvelopeError::TrailingBytes(n),
        })
    }
}

/// A message id: the first 16 bytes of
/// SHA-256("peerchat-message-id" ‖ sender ‖ ephemeral key ‖ nonce).
///
/// Receivers drop a second envelope with an id they have seen (a replay, or a
/// copy from another relay). Ids travel in clear, so were they free to choose, a
/// relay could deliver an envelope of its own under the id of a message it
/// holds, and the real one would be dropped as a duplicate. Bound to the sender
/// (who signs) and to the sender's ephemeral key and random nonce, an id cannot
/// be reused by anyone else: that would take a second preimage of SHA-256's
/// first 128 bits.
pub fn bound_id(sender: &UserKey, ephemeral: &[u8; 32], nonce: &[u8; 16]) -> MessageId {
    use sha2::Digest;
    let mut h = Sha256::new();
    h.update(b"peerchat-message-id");
    h.update(sender.0);
    h.update(ephemeral);
    h.update(nonce);
    let d = h.finalize();
    let mut id = [0u8; 16];
    id.copy_from_slice(&d[..16]);
    MessageId(id)
}

/// A sender's ephemeral key exchange with one recipient, kept for a burst of
/// messages (see the module docs). Only the public key and the shared secret are
/// kept: the ephemeral secret is dropped once the exchange is done.
#[derive(Clone)]
pub struct Sealer {
    to: SealingKey,
    ephemeral: [u8; 32],
    shared: [u8; 32],
    uses: u32,
    born_ms: u64,
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealer")
            .field("to", &self.to.recipient)
            .field("uses", &self.uses)
            .field("born_ms", &self.born_ms)
            .finish_non_exhaustive()
    }
}

impl Sealer {
    /// Most messages sealed under one ephemeral key.
    pub const MAX_USES: u32 = 1_000;
    /// Longest an ephemeral key is kept, in milliseconds.
    pub const MAX_AGE_MS: u64 = 60_000;

    /// A fresh ephemeral key exchange with `to`.
    pub fn new(
        to: SealingKey,
        now_ms: u64,
        rng: &mut impl CryptoRng,
    ) -> Result<Sealer, EnvelopeError> {
        let mut eph_secret = [0u8; 32];
        rng.fill_bytes(&mut eph_secret);
        let eph_secret = StaticSecret::from(eph_secret);
        let ephemeral = PublicKey::from(&eph_secret).to_bytes();
        let shared = eph_secret.diffie_hellman(&PublicKey::from(to.x25519));
        if !shared.was_contributory() {
            return Err(EnvelopeError::BadRecipient(KeyError::WeakKey));
        }
        Ok(Sealer {
            to,
            ephemeral,
            shared: shared.to_bytes(),
            uses: 0,
            born_ms: now_ms,
        })
    }

    /// The recipient.
    pub fn to(&self) -> &SealingKey {
        &self.to
    }

    /// Whether this key may seal another message at `now_ms`.
    pub fn usable(&self, now_ms: u64) -> bool {
        self.uses < Self::MAX_USES && now_ms.saturating_sub(self.born_ms) < Self::MAX_AGE_MS
    }

    /// When this key may seal another message at `now_ms`: counts that use and
    /// returns a copy to seal it with (so that the sealing can run outside the
    /// lock that guards a shared `Sealer`).
    pub fn claim(&mut self, now_ms: u64) -> Option<Sealer> {
        if !self.usable(now_ms) {
            return None;
        }
        self.uses += 1;
        Some(self.clone())
    }

    /// Seals `content` from `sender` at `now_ms`, with a nonce from `rng`.
    pub fn seal(
        &mut self,
        sender: &Identity,
        content: &Content,
        now_ms: u64,
        rng: &mut impl CryptoRng,
    ) -> Result<Envelope, EnvelopeError> {
        content.validate()?;
        self.uses = self.uses.saturating_add(1);
        let mut nonce = [0u8; 16];
        rng.fill_bytes(&mut nonce);
        let id = bound_id(&sender.public(), &self.ephemeral, &nonce);
        let mut env = Envelope {
            id,
            sender: sender.public(),
            recipient: self.to.recipient,
            timestamp_ms: now_ms,
            ephemeral: self.ephemeral,
            nonce,
            ciphertext: Vec::new(),
            signature: [0; 64],
        };
        let header = env.header();
        let cipher = cipher(&self.shared, &self.ephemeral, &self.to.recipient, &id);
        let plaintext = content.to_bytes();
        env.ciphertext = cipher
            .encrypt(
                &Nonce::default(),
                Payload {
                    msg: &plaintext,
                    aad: &header,
                },
            )
            .map_err(|_| EnvelopeError::Decrypt)?;
        env.signature = sender.sign(&env.signed_bytes());
        let len = env.encoded_len();
        if len > MAX_ENVELOPE {
            return Err(EnvelopeError::TooLarge(len));
        }
        Ok(env)
    }
}

/// A recipient's cache of key exchanges by the sender's ephemeral key (see the
/// module docs), bounded: it starts over when full. Shared by the tasks that
/// open envelopes; the exchange itself runs outside the lock.
#[derive(Default)]
pub struct OpenCache {
    map: std::sync::Mutex<std::collections::HashMap<[u8; 32], [u8; 32]>>,
}

impl fmt::Debug for OpenCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OpenCache({} keys)", self.len())
    }
}

impl OpenCache {
    /// Most exchanges kept.
    pub const CAPACITY: usize = 1024;

    fn map(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<[u8; 32], [u8; 32]>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, ephemeral: &[u8; 32]) -> Option<[u8; 32]> {
        self.map().get(ephemeral).copied()
    }

    fn insert(&self, ephemeral: [u8; 32], shared: [u8; 32]) {
        let mut map = self.map();
        if map.len() >= Self::CAPACITY {
            map.clear();
        }
        map.insert(ephemeral, shared);
    }

    /// Exchanges kept.
    pub fn len(&self) -> usize {
        self.map().len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.map().is_empty()
    }
}

/// The per-message AEAD: HKDF-SHA256(salt = DOMAIN, ikm = shared, info = E ‖ R ‖ id).
fn cipher(
    shared: &[u8; 32],
    ephemeral: &[u8; 32],
    recipient: &UserKey,
    id: &MessageId,
) -> ChaCha20Poly1305 {
    let mut info = [0u8; 80];
    info[..32].copy_from_slice(ephemeral);
    info[32..64].copy_from_slice(&recipient.0);
    info[64..].copy_from_slice(&id.0);
    let mut key = [0u8; 32];
    // 32 bytes is far below HKDF-SHA256's limit of 255 * 32: expand cannot fail.
    let _ = Hkdf::<Sha256>::new(Some(DOMAIN), shared).expand(&info, &mut key);
    ChaCha20Poly1305::new(&key.into())
}
