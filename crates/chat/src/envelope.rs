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
        self.open_verified(recipient, cache)
    }

    /// [`Envelope::open_cached`] for an envelope already verified, by
    /// [`Envelope::verify`] or [`verify_batch`]: checks the addressee and decrypts.
    pub fn open_verified(
        &self,
        recipient: &Identity,
        cache: &OpenCache,
    ) -> Result<Content, EnvelopeError> {
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
        let mut out = Vec::with_capacity(self.encoded_len());
        out.push(ENVELOPE_VERSION);
        // Serializing our own plain struct into a `Vec` cannot fail.
        postcard::to_extend(self, out).unwrap_or_else(|_| vec![ENVELOPE_VERSION])
    }

    /// The length of [`Envelope::to_bytes`], without encoding: the version byte,
    /// the fixed-size fields, and postcard's varints for the timestamp and the
    /// ciphertext's length.
    pub fn encoded_len(&self) -> usize {
        fn varint_len(v: u64) -> usize {
            (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
        }
        1 + 16
            + 32
            + 32
            + varint_len(self.timestamp_ms)
            + 32
            + 16
            + varint_len(self.ciphertext.len() as u64)
            + self.ciphertext.len()
            + 64
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

/// [`Envelope::verify`] for many envelopes at once, with the same answer for
/// each: one random linear combination of their signature equations is checked
/// in one multi-scalar multiplication (the sender keys of a batch are mostly
/// one, so their terms merge), instead of one double-base multiplication per
/// signature. The strict checks stay per envelope: canonical `s` and `R`, no
/// small-order `R` or sender key, the id bound to the sender. When the
/// combination does not hold, each envelope is verified alone, so a bad one is
/// refused with its own error and cannot make a good one fail.
///
/// The weights come from a hash of the whole batch, so no RNG is needed: an
/// envelope cannot be made to fit weights that depend on itself. One
/// difference from the single check remains, as with every batch verification
/// of ed25519: a signer who builds a signature whose equation is off by a
/// small-order point may see it pass here; only that key's owner can build one,
/// and it proves nothing they could not sign anyway.
pub fn verify_batch(envs: &[Envelope]) -> Vec<Result<(), EnvelopeError>> {
    verify_batch_inner(envs).0
}

/// [`verify_batch`], and whether the combined equation was checked and held.
fn verify_batch_inner(envs: &[Envelope]) -> (Vec<Result<(), EnvelopeError>>, bool) {
    use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
    use curve25519_dalek::scalar::Scalar;
    use curve25519_dalek::traits::{IsIdentity, VartimeMultiscalarMul};
    use sha2::{Digest, Sha512};

    if envs.len() < 2 {
        return (envs.iter().map(Envelope::verify).collect(), false);
    }
    let mut held = false;
    let mut out: Vec<Option<Result<(), EnvelopeError>>> = vec![None; envs.len()];
    // Sender keys of the batch, decompressed once each, with their summed weight.
    let mut senders: Vec<(UserKey, EdwardsPoint, Scalar)> = Vec::new();
    // (index, R, s, k, sender slot) of the envelopes that passed the per-envelope checks.
    let mut cands: Vec<(usize, EdwardsPoint, Scalar, Scalar, usize)> =
        Vec::with_capacity(envs.len());
    let mut seed = Sha512::new();
    seed.update(b"peerchat-batch-verify");
    for (i, env) in envs.iter().enumerate() {
        let slot = match senders.iter().position(|(k, _, _)| *k == env.sender) {
            Some(slot) => Some(slot),
            None => env.sender.verifying_key().ok().map(|vk| {
                senders.push((env.sender, vk.to_edwards(), Scalar::ZERO));
                senders.len() - 1
            }),
        };
        let r_bytes: [u8; 32] = env.signature[..32].try_into().unwrap_or([0xff; 32]);
        let s_bytes: [u8; 32] = env.signature[32..].try_into().unwrap_or([0xff; 32]);
        let s = Option::<Scalar>::from(Scalar::from_canonical_bytes(s_bytes));
        let r = canonical_y(&r_bytes)
            .then(|| CompressedEdwardsY(r_bytes).decompress())
            .flatten()
            .filter(|r| !r.is_small_order());
        let (Some(slot), Some(s), Some(r)) = (slot, s, r) else {
            out[i] = Some(env.verify());
            continue;
        };
        if env.ciphertext.len() < TAG_LEN
            || env.id != bound_id(&env.sender, &env.ephemeral, &env.nonce)
        {
            out[i] = Some(env.verify());
            continue;
        }
        let mut h = Sha512::new();
        h.update(r_bytes);
        h.update(env.sender.0);
        h.update(DOMAIN);
        h.update(env.header());
        h.update(&env.ciphertext);
        let k = Scalar::from_bytes_mod_order_wide(&h.finalize().into());
        seed.update(env.signature);
        seed.update(k.as_bytes());
        cands.push((i, r, s, k, slot));
    }
    if cands.len() >= 2 {
        let seed: [u8; 64] = seed.finalize().into();
        let mut weights = Vec::with_capacity(cands.len());
        let mut b_coef = Scalar::ZERO;
        for (n, (_, _, s, k, slot)) in cands.iter().enumerate() {
            let mut h = Sha512::new();
            h.update(seed);
            h.update((n as u64).to_le_bytes());
            let d: [u8; 64] = h.finalize().into();
            let mut z = [0u8; 32];
            z[..16].copy_from_slice(&d[..16]);
            z[0] |= 1;
            let z = Scalar::from_bytes_mod_order(z);
            b_coef += z * s;
            senders[*slot].2 += z * k;
            weights.push(z);
        }
        // sum z_i R_i + sum_j (sum_i z_i k_i) A_j - (sum z_i s_i) B == 0
        let sum = EdwardsPoint::vartime_multiscalar_mul(
            weights
                .iter()
                .copied()
                .chain(senders.iter().map(|(_, _, w)| *w)),
            cands
                .iter()
                .map(|c| c.1)
                .chain(senders.iter().map(|(_, a, _)| *a)),
        );
        held = (sum - EdwardsPoint::mul_base(&b_coef)).is_identity();
        if held {
            for c in &cands {
                out[c.0] = Some(Ok(()));
            }
        }
    }
    let out = out
        .into_iter()
        .zip(envs)
        .map(|(r, env)| r.unwrap_or_else(|| env.verify()))
        .collect();
    (out, held)
}

/// Whether `bytes` encode a y coordinate below p = 2^255 - 19 (the sign bit aside):
/// the strict check refuses any other encoding of `R`.
fn canonical_y(bytes: &[u8; 32]) -> bool {
    let top = bytes[31] & 0x7f;
    !(top == 0x7f && bytes[1..31].iter().all(|&b| b == 0xff) && bytes[0] >= 0xed)
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    /// `n` envelopes to one recipient, from `senders` senders in turn.
    fn batch(n: usize, senders: usize, seed: u64) -> (Vec<Envelope>, Identity) {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let ids: Vec<Identity> = (0..senders).map(|_| Identity::generate(&mut rng)).collect();
        let bob = Identity::generate(&mut rng);
        let envs = (0..n)
            .map(|i| {
                let text = format!("message {i}");
                Envelope::seal(
                    &ids[i % senders],
                    &bob.public(),
                    &Content::text(&text),
                    5,
                    &mut rng,
                )
                .expect("seal")
            })
            .collect();
        (envs, bob)
    }

    fn one_by_one(envs: &[Envelope]) -> Vec<Result<(), EnvelopeError>> {
        envs.iter().map(Envelope::verify).collect()
    }

    #[test]
    fn encoded_len_is_the_encoding_s_length() {
        let (mut envs, _) = batch(1, 1, 3);
        let env = &mut envs[0];
        for ts in [0, 1, 127, 128, 16_383, 16_384, 1 << 40, u64::MAX] {
            for ct in [0, 1, 127, 128, 300, 1_100, 20_000] {
                env.timestamp_ms = ts;
                env.ciphertext = vec![7; ct];
                let bytes = env.to_bytes();
                assert_eq!(env.encoded_len(), bytes.len(), "ts {ts}, ciphertext {ct}");
                assert_eq!(bytes[0], ENVELOPE_VERSION);
                if ct >= TAG_LEN && bytes.len() <= MAX_ENVELOPE {
                    assert_eq!(Envelope::from_bytes(&bytes).as_ref(), Ok(&*env));
                }
            }
        }
    }

    #[test]
    fn a_good_batch_verifies() {
        for (n, senders) in [(0, 1), (1, 1), (2, 1), (64, 1), (40, 3)] {
            let (envs, bob) = batch(n, senders, n as u64);
            let (got, held) = verify_batch_inner(&envs);
            assert_eq!(held, n >= 2, "{n} from {senders}");
            assert_eq!(got.len(), n);
            assert!(got.iter().all(Result::is_ok), "{n} from {senders}: {got:?}");
            let cache = OpenCache::default();
            for env in &envs {
                assert!(env.open_verified(&bob, &cache).is_ok());
            }
        }
    }

    /// The group order l, little-endian.
    const L: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde,
        0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];

    fn add_le(a: &[u8], b: &[u8; 32]) -> [u8; 32] {
        let mut out = [0u8; 32];
        let mut carry = 0u16;
        for i in 0..32 {
            let v = u16::from(a[i]) + u16::from(b[i]) + carry;
            out[i] = v as u8;
            carry = v >> 8;
        }
        out
    }

    /// Ways to spoil one envelope's signature or binding.
    fn spoil(env: &mut Envelope, how: u8, other: &Identity) {
        match how % 8 {
            // A flipped ciphertext bit.
            0 => env.ciphertext[0] ^= 1,
            // s + l: the same signature with a non-canonical s.
            1 => {
                let s = add_le(&env.signature[32..], &L);
                env.signature[32..].copy_from_slice(&s);
            }
            // R replaced by a small-order point (the identity).
            2 => {
                let mut id = [0u8; 32];
                id[0] = 1;
                env.signature[..32].copy_from_slice(&id);
            }
            // R encoded as y + p (non-canonical), when that still fits 255 bits.
            3 => {
                let p: [u8; 32] = {
                    let mut p = [0xffu8; 32];
                    p[0] = 0xed;
                    p[31] = 0x7f;
                    p
                };
                let sign = env.signature[31] & 0x80;
                let mut y = [0u8; 32];
                y.copy_from_slice(&env.signature[..32]);
                y[31] &= 0x7f;
                let mut bumped = add_le(&y, &p);
                bumped[31] |= sign;
                env.signature[..32].copy_from_slice(&bumped);
            }
            // Signed by someone else under the same sender key.
            4 => {
                let mut forged = env.clone();
                forged.sender = other.public();
                let sig = other.sign(&forged.signed_bytes());
                env.signature = sig;
            }
            // Another sender's key (the id is then not bound to it).
            5 => env.sender = other.public(),
            // An id not bound to the sender.
            6 => env.id.0[0] ^= 1,
            // A timestamp changed after signing.
            _ => env.timestamp_ms ^= 1,
        }
    }

    #[test]
    fn each_spoiled_envelope_gets_its_own_error() {
        let other = Identity::generate(&mut ChaCha20Rng::seed_from_u64(99));
        for how in 0..8u8 {
            let (mut envs, _) = batch(12, 2, u64::from(how));
            spoil(&mut envs[5], how, &other);
            let want = one_by_one(&envs);
            assert!(want[5].is_err(), "spoil {how} went unnoticed");
            let (got, held) = verify_batch_inner(&envs);
            assert_eq!(got, want, "spoil {how}");
            // Those that pass the per-envelope checks spoil the combined equation.
            if matches!(how, 0 | 4 | 7) {
                assert!(!held, "spoil {how} held");
            }
        }
    }

    #[test]
    fn a_signature_off_by_a_torsion_point_is_refused() {
        // R + T for a point T of order 2 (y = -1): the equation is off by T.
        let (mut envs, _) = batch(8, 1, 7);
        let r = curve25519_dalek::edwards::CompressedEdwardsY(
            envs[3].signature[..32].try_into().unwrap(),
        )
        .decompress()
        .unwrap();
        let mut minus_one = [0xffu8; 32];
        minus_one[0] = 0xec;
        minus_one[31] = 0x7f;
        let t = curve25519_dalek::edwards::CompressedEdwardsY(minus_one)
            .decompress()
            .unwrap();
        assert!(t.is_small_order());
        envs[3].signature[..32].copy_from_slice(&(r + t).compress().0);
        assert!(envs[3].verify().is_err());
        assert_eq!(verify_batch(&envs), one_by_one(&envs));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn batch_answers_as_one_by_one(
            n in 2usize..24,
            senders in 1usize..4,
            seed in any::<u64>(),
            spoiled in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
        ) {
            let (mut envs, _) = batch(n, senders, seed);
            let other = Identity::generate(&mut ChaCha20Rng::seed_from_u64(seed ^ 1));
            for (at, how) in spoiled {
                let at = at % n;
                spoil(&mut envs[at], how, &other);
            }
            prop_assert_eq!(verify_batch(&envs), one_by_one(&envs));
        }
    }
}
