//! The relay queue: envelopes a node keeps for offline recipients (sans-IO).
//!
//! Every stored envelope has a verified sender signature. Copies are keyed by
//! (recipient, sender, id), so a third party cannot block a message by storing
//! another envelope under its id first. Memory is bounded by quotas per sender key,
//! per source IP (IPv6 counted per /64), per recipient, and a global cap in
//! envelopes and bytes. A copy lives until `timestamp_ms + ttl` (so handing it to
//! another relay does not extend its life) or until the recipient's signed
//! [`DeliveryAck`] removes it; acked ids are remembered (bounded) until every copy
//! anywhere has expired, so a replayed envelope is not stored again.
//!
//! Everything is in `BTreeMap`s: iteration order, and so every result, is
//! deterministic.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv6Addr};

use crate::content::MessageId;
use crate::envelope::{Envelope, EnvelopeError, MAX_ENVELOPE};
use crate::identity::UserKey;
use crate::mailbox::{AuthError, DeliveryAck};

/// One day, in milliseconds.
const DAY_MS: u64 = 24 * 60 * 60 * 1000;

/// Limits of a [`RelayQueue`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayConfig {
    /// How long a copy is kept after the envelope's timestamp (default 14 days).
    pub ttl_ms: u64,
    /// Most envelopes kept from one sender key (default 64).
    pub max_per_sender: usize,
    /// Most envelopes kept from one source IP, IPv6 per /64 (default 256).
    pub max_per_ip: usize,
    /// Most envelopes kept for one recipient (default 1,024).
    pub max_per_recipient: usize,
    /// Most envelopes kept in all (default 10,000).
    pub max_envelopes: usize,
    /// Most encoded bytes kept in all (default 8 MiB).
    pub max_bytes: usize,
    /// How far in the future an envelope's or ack's timestamp may be (default 10 min).
    pub max_clock_skew_ms: u64,
    /// Most acked ids remembered to refuse replays (default 20,000).
    pub max_tombstones: usize,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            ttl_ms: 14 * DAY_MS,
            max_per_sender: 64,
            max_per_ip: 256,
            max_per_recipient: 1024,
            max_envelopes: 10_000,
            max_bytes: 8 << 20,
            max_clock_skew_ms: 10 * 60 * 1000,
            max_tombstones: 20_000,
        }
    }
}

/// What [`RelayQueue::store`] did with an envelope it accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// Stored a new copy.
    New,
    /// A copy was already stored: nothing changed.
    Duplicate,
    /// The recipient already acknowledged this message: not stored.
    AlreadyAcked,
}

/// Why a relay refuses an envelope or an ack. Nothing already stored is touched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelayError {
    /// The envelope is too large or its signature does not verify.
    #[error("envelope refused: {0}")]
    Envelope(#[from] EnvelopeError),
    /// The envelope is older than the TTL.
    #[error("envelope is older than the relay ttl")]
    Expired,
    /// The envelope's timestamp is too far ahead of this node's clock.
    #[error("envelope timestamp is {ahead_ms} ms in the future")]
    FromFuture {
        /// How far ahead.
        ahead_ms: u64,
    },
    /// The sender key has too many envelopes stored here.
    #[error("sender quota of {0} stored envelopes is full")]
    SenderQuota(usize),
    /// The source address has too many envelopes stored here.
    #[error("source address quota of {0} stored envelopes is full")]
    IpQuota(usize),
    /// The recipient's mailbox here is full.
    #[error("recipient mailbox is full ({0} envelopes)")]
    RecipientFull(usize),
    /// The relay is full.
    #[error("relay queue is full ({envelopes} envelopes, {bytes} bytes)")]
    Full {
        /// Envelopes stored.
        envelopes: usize,
        /// Bytes stored.
        bytes: usize,
    },
    /// The ack does not verify.
    #[error("delivery ack refused: {0}")]
    Ack(#[from] AuthError),
    /// The ack's timestamp is too far ahead of this node's clock.
    #[error("delivery ack timestamp is {ahead_ms} ms in the future")]
    AckFromFuture {
        /// How far ahead.
        ahead_ms: u64,
    },
}

/// One stored copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayEntry {
    /// The envelope (signature verified).
    pub envelope: Envelope,
    /// The address it came from (counts against that address's quota).
    pub from: IpAddr,
    /// When this node stored it, unix milliseconds.
    pub stored_at_ms: u64,
    /// When it expires: the envelope's timestamp plus the TTL.
    pub expires_at_ms: u64,
    /// Its encoded length.
    size: usize,
}

impl RelayEntry {
    /// The encoded length of the envelope, in bytes.
    pub fn size(&self) -> usize {
        self.size
    }
}

/// (recipient, sender, id): recipient first, so one mailbox is a contiguous range.
type EntryKey = (UserKey, UserKey, MessageId);

/// The envelopes a relay keeps for others.
#[derive(Clone, Debug, Default)]
pub struct RelayQueue {
    config: RelayConfig,
    entries: BTreeMap<EntryKey, RelayEntry>,
    per_sender: BTreeMap<UserKey, usize>,
    per_ip: BTreeMap<IpAddr, usize>,
    per_recipient: BTreeMap<UserKey, usize>,
    bytes: usize,
    /// Acked (recipient, id) -> when the tombstone may be forgotten.
    acked: BTreeMap<(UserKey, MessageId), u64>,
    /// The same tombstones by expiry, to expire and evict in order.
    acked_by_expiry: BTreeSet<(u64, UserKey, MessageId)>,
}

impl RelayQueue {
    /// An empty queue with these limits.
    pub fn new(config: RelayConfig) -> RelayQueue {
        RelayQueue {
            config,
            ..RelayQueue::default()
        }
    }

    /// The limits.
    pub fn config(&self) -> &RelayConfig {
        &self.config
    }

    /// Stores a copy of `env`, received from `from_ip` at `now_ms`.
    ///
    /// Checks, in order: size, signature, age (TTL) and clock skew, already acked,
    /// duplicate, then the quotas (sender, source address, recipient, global). When a
    /// quota is full, expired copies are dropped first and the check is retried.
    /// Also used to reload a persisted queue (quotas then count the original sources).
    pub fn store(
        &mut self,
        env: Envelope,
        from_ip: IpAddr,
        now_ms: u64,
    ) -> Result<Stored, RelayError> {
        let size = env.encoded_len();
        if size > MAX_ENVELOPE {
            return Err(EnvelopeError::TooLarge(size).into());
        }
        env.verify()?;
        let expires_at_ms = env.timestamp_ms.saturating_add(self.config.ttl_ms);
        if expires_at_ms <= now_ms {
            return Err(RelayError::Expired);
        }
        let ahead_ms = env.timestamp_ms.saturating_sub(now_ms);
        if ahead_ms > self.config.max_clock_skew_ms {
            return Err(RelayError::FromFuture { ahead_ms });
        }
        if self.acked.contains_key(&(env.recipient, env.id)) {
            return Ok(Stored::AlreadyAcked);
        }
        let key = (env.recipient, env.sender, env.id);
        if self.entries.contains_key(&key) {
            return Ok(Stored::Duplicate);
        }
        let bucket = ip_bucket(from_ip);
        if self.check_quotas(&env, bucket, size).is_err() {
            self.expire(now_ms);
        }
        self.check_quotas(&env, bucket, size)?;
        *self.per_sender.entry(env.sender).or_default() += 1;
        *self.per_ip.entry(bucket).or_default() += 1;
        *self.per_recipient.entry(env.recipient).or_default() += 1;
        self.bytes += size;
        self.entries.insert(
            key,
            RelayEntry {
                envelope: env,
                from: from_ip,
                stored_at_ms: now_ms,
                expires_at_ms,
                size,
            },
        );
        Ok(Stored::New)
    }

    fn check_quotas(&self, env: &Envelope, bucket: IpAddr, size: usize) -> Result<(), RelayError> {
        let c = &self.config;
        if count(&self.per_sender, &env.sender) >= c.max_per_sender {
            return Err(RelayError::SenderQuota(c.max_per_sender));
        }
        if count(&self.per_ip, &bucket) >= c.max_per_ip {
            return Err(RelayError::IpQuota(c.max_per_ip));
        }
        if count(&self.per_recipient, &env.recipient) >= c.max_per_recipient {
            return Err(RelayError::RecipientFull(c.max_per_recipient));
        }
        if self.entries.len() >= c.max_envelopes || self.bytes + size > c.max_bytes {
            return Err(RelayError::Full {
                envelopes: self.entries.len(),
                bytes: self.bytes,
            });
        }
        Ok(())
    }

    /// The envelopes stored for `recipient`, oldest first (by timestamp, then sender
    /// and id), as many as fit in `max_bytes` of encoded envelopes. Nothing is
    /// removed: copies stay until acked or expired. The caller checks the fetcher's
    /// [`crate::FetchAuth`] first.
    pub fn fetch(&self, recipient: &UserKey, max_bytes: usize) -> Vec<Envelope> {
        let mut found: Vec<&RelayEntry> = self.mailbox(recipient).collect();
        found.sort_by_key(|e| (e.envelope.timestamp_ms, e.envelope.sender, e.envelope.id));
        let mut used = 0usize;
        let mut out = Vec::new();
        for entry in found {
            used += entry.size;
            if used > max_bytes {
                break;
            }
            out.push(entry.envelope.clone());
        }
        out
    }

    /// The copies stored for `recipient`, in key order.
    pub fn mailbox(&self, recipient: &UserKey) -> impl Iterator<Item = &RelayEntry> {
        let lo = (*recipient, UserKey([0; 32]), MessageId([0; 16]));
        let hi = (*recipient, UserKey([0xff; 32]), MessageId([0xff; 16]));
        self.entries.range(lo..=hi).map(|(_, e)| e)
    }

    /// Applies a recipient's ack at `now_ms`: verifies it, removes this recipient's
    /// copies of the listed ids, and remembers the ids so replays are not stored again.
    /// Returns how many copies were removed.
    pub fn ack(&mut self, ack: &DeliveryAck, now_ms: u64) -> Result<usize, RelayError> {
        ack.verify()?;
        let ahead_ms = ack.timestamp_ms.saturating_sub(now_ms);
        if ahead_ms > self.config.max_clock_skew_ms {
            return Err(RelayError::AckFromFuture { ahead_ms });
        }
        let ids: BTreeSet<MessageId> = ack.ids.iter().copied().collect();
        let doomed: Vec<EntryKey> = self
            .mailbox(&ack.recipient)
            .filter(|e| ids.contains(&e.envelope.id))
            .map(|e| (e.envelope.recipient, e.envelope.sender, e.envelope.id))
            .collect();
        for key in &doomed {
            self.remove_key(key);
        }
        // Outlive every copy that may still be stored elsewhere.
        let forget_at = ack
            .timestamp_ms
            .max(now_ms)
            .saturating_add(self.config.ttl_ms)
            .saturating_add(self.config.max_clock_skew_ms);
        for id in ids {
            self.add_tombstone(ack.recipient, id, forget_at);
        }
        Ok(doomed.len())
    }

    /// Drops copies and tombstones that have expired at `now_ms`; returns how many
    /// copies were dropped.
    pub fn expire(&mut self, now_ms: u64) -> usize {
        let doomed: Vec<EntryKey> = self
            .entries
            .iter()
            .filter(|(_, e)| e.expires_at_ms <= now_ms)
            .map(|(k, _)| *k)
            .collect();
        for key in &doomed {
            self.remove_key(key);
        }
        while let Some(&(at, recipient, id)) = self.acked_by_expiry.first() {
            if at > now_ms {
                break;
            }
            self.acked_by_expiry.pop_first();
            self.acked.remove(&(recipient, id));
        }
        doomed.len()
    }

    /// Removes one copy (e.g. after handing it over to a closer node when this one is
    /// no longer among the k closest).
    pub fn remove(
        &mut self,
        recipient: &UserKey,
        sender: &UserKey,
        id: &MessageId,
    ) -> Option<RelayEntry> {
        self.remove_key(&(*recipient, *sender, *id))
    }

    fn remove_key(&mut self, key: &EntryKey) -> Option<RelayEntry> {
        let entry = self.entries.remove(key)?;
        decrement(&mut self.per_sender, &entry.envelope.sender);
        decrement(&mut self.per_ip, &ip_bucket(entry.from));
        decrement(&mut self.per_recipient, &entry.envelope.recipient);
        self.bytes = self.bytes.saturating_sub(entry.size);
        Some(entry)
    }

    fn add_tombstone(&mut self, recipient: UserKey, id: MessageId, forget_at: u64) {
        if let Some(old) = self.acked.insert((recipient, id), forget_at) {
            self.acked_by_expiry.remove(&(old, recipient, id));
        }
        self.acked_by_expiry.insert((forget_at, recipient, id));
        while self.acked.len() > self.config.max_tombstones {
            let Some((_, r, i)) = self.acked_by_expiry.pop_first() else {
                break;
            };
            self.acked.remove(&(r, i));
        }
    }

    /// Remembers an acked id (to reload persisted tombstones).
    pub fn restore_tombstone(&mut self, recipient: UserKey, id: MessageId, forget_at_ms: u64) {
        self.add_tombstone(recipient, id, forget_at_ms);
    }

    /// The acked ids remembered: (recipient, id, when to forget), for persistence.
    pub fn tombstones(&self) -> impl Iterator<Item = (UserKey, MessageId, u64)> + '_ {
        self.acked.iter().map(|(&(r, id), &at)| (r, id, at))
    }

    /// Whether the recipient has acked `id`.
    pub fn is_acked(&self, recipient: &UserKey, id: &MessageId) -> bool {
        self.acked.contains_key(&(*recipient, *id))
    }

    /// Whether a copy is stored.
    pub fn contains(&self, recipient: &UserKey, sender: &UserKey, id: &MessageId) -> bool {
        self.entries.contains_key(&(*recipient, *sender, *id))
    }

    /// The recipients with at least one copy stored (to retry delivery when they show
    /// up, and to hand copies over), in key order.
    pub fn recipients(&self) -> impl Iterator<Item = &UserKey> {
        self.per_recipient.keys()
    }

    /// Every stored copy, by recipient (for persistence and handover).
    pub fn iter(&self) -> impl Iterator<Item = &RelayEntry> {
        self.entries.values()
    }

    /// Number of copies stored.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Total encoded bytes stored.
    pub fn total_bytes(&self) -> usize {
        self.bytes
    }

    /// Copies stored from `sender`.
    pub fn count_from_sender(&self, sender: &UserKey) -> usize {
        count(&self.per_sender, sender)
    }

    /// Copies stored for `recipient`.
    pub fn count_for_recipient(&self, recipient: &UserKey) -> usize {
        count(&self.per_recipient, recipient)
    }
}

/// The address a source-IP quota is counted against: the IPv4 address (also when
/// written as an IPv4-mapped IPv6 address), or the /64 of an IPv6 address (one
/// host usually holds a whole /64).
pub fn ip_bucket(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(bits))
            }
        },
    }
}

fn count<K: Ord>(map: &BTreeMap<K, usize>, key: &K) -> usize {
    map.get(key).copied().unwrap_or(0)
}

fn decrement<K: Ord>(map: &mut BTreeMap<K, usize>, key: &K) {
    if let Some(n) = map.get_mut(key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            map.remove(key);
        }
    }
}
