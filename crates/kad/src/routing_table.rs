//! The routing table: 160 k-buckets indexed by the XOR distance's leading zeros.
//!
//! A flat array of buckets is the same table as BEP 5's "split the bucket that
//! holds our own id" tree: the far half of the id space goes to bucket 159, the
//! next quarter to 158, and so on. Each bucket keeps at most `k` contacts, ordered
//! least-recently seen first, and a replacement cache of at most `k` more. A full
//! bucket never drops a live contact for a new one: the least-recently seen
//! contact is pinged, and only when it fails is it replaced from the cache.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::id::{Distance, NodeId};
use crate::krpc::NodeInfo;

/// Most candidates a bucket's replacement cache keeps: enough to refill it after
/// a few failures, small enough that full buckets stay cheap.
pub const MAX_REPLACEMENTS: usize = 8;

/// Failed requests in a row after which a contact is dropped even when the
/// replacement cache is empty (a dead contact only slows lookups down).
pub const MAX_FAILURES: u8 = 3;

/// One contact in a bucket.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Its id and address.
    pub node: NodeInfo,
    /// When we last heard from it.
    pub last_seen: Instant,
    /// Failed requests in a row since it last answered.
    pub failures: u8,
    /// An eviction ping to it is under way.
    pub pinging: bool,
}

/// One k-bucket.
#[derive(Clone, Debug, Default)]
pub struct Bucket {
    /// Contacts, least-recently seen first.
    pub entries: Vec<Entry>,
    /// Candidates waiting for a slot, most recent last.
    pub replacements: VecDeque<NodeInfo>,
    /// When a contact was last added to or refreshed in this bucket.
    pub last_changed: Option<Instant>,
}

/// What [`RoutingTable::insert`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Insert {
    /// The contact is new in the table.
    Added,
    /// The contact was known; its last-seen time was refreshed.
    Updated,
    /// The bucket is full; the contact went to the replacement cache and the
    /// least-recently seen contact should be pinged. Evict it if the ping fails.
    PingOldest(NodeInfo),
    /// The bucket is full and an eviction ping is already under way; the
    /// contact waits in the replacement cache.
    Pending,
    /// The bucket is full of contacts heard from recently (none silent for
    /// the table's ping-after time); the contact waits in the replacement cache.
    Cached,
    /// Not inserted (our own id, the same id at another address, or a new id
    /// at the address of a contact).
    Ignored,
}

/// A filter of the addresses in the table (contacts and replacement
/// candidates): one bit per hashed address, never a false negative.
///
/// Every message from a node we do not know yet asks whether its address is
/// already taken by another id, and scanning the whole table for that was the
/// routing table's main cost. With ~150 addresses in 1,024 bits, most such
/// questions end here. Removed addresses leave their bits set (false positives
/// only cost a scan) until enough have gone that the filter is rebuilt.
#[derive(Clone, Debug, Default)]
struct AddrFilter {
    bits: [u64; 16],
    /// Addresses removed since the last rebuild.
    stale: u16,
}

impl AddrFilter {
    /// Removals after which the filter is rebuilt from the table.
    const MAX_STALE: u16 = 64;

    fn slot(addr: &SocketAddr) -> usize {
        let ip = match addr.ip() {
            std::net::IpAddr::V4(ip) => u64::from(u32::from(ip)),
            std::net::IpAddr::V6(ip) => {
                let x = u128::from(ip);
                (x as u64) ^ ((x >> 64) as u64)
            }
        };
        let h = (ip.rotate_left(16) ^ u64::from(addr.port())).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        (h >> 54) as usize
    }

    fn insert(&mut self, addr: &SocketAddr) {
        let s = Self::slot(addr);
        self.bits[s / 64] |= 1 << (s % 64);
    }

    fn may_contain(&self, addr: &SocketAddr) -> bool {
        let s = Self::slot(addr);
        self.bits[s / 64] & (1 << (s % 64)) != 0
    }

    fn removed(&mut self) {
        self.stale = self.stale.saturating_add(1);
    }
}

/// The routing table.
///
/// Buckets are stored from the farthest (index 159) inwards and allocated only
/// as deep as contacts exist, so a table in a network of `n` nodes holds about
/// `log2(n / k)` buckets, not 160.
#[derive(Clone, Debug)]
pub struct RoutingTable {
    own: NodeId,
    k: usize,
    /// `buckets[p]` is bucket index `159 - p`.
    buckets: Vec<Bucket>,
    len: usize,
    addrs: AddrFilter,
    /// A full bucket's oldest contact is pinged only after this much silence.
    ping_after: Duration,
}

impl RoutingTable {
    /// An empty table for a node with id `own` and bucket size `k`.
    pub fn new(own: NodeId, k: usize) -> RoutingTable {
        RoutingTable {
            own,
            k: k.max(1),
            buckets: Vec::new(),
            len: 0,
            addrs: AddrFilter::default(),
            ping_after: Duration::ZERO,
        }
    }

    /// Pings a full bucket's oldest contact (to evict it if it fails) only
    /// when it has been silent for `d` (default: always).
    pub fn with_ping_after(mut self, d: Duration) -> RoutingTable {
        self.ping_after = d;
        self
    }

    /// Our own id.
    pub fn own_id(&self) -> NodeId {
        self.own
    }

    /// Bucket size.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Number of contacts.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there is no contact.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The allocated buckets with their indexes (159 the farthest), farthest first.
    pub fn buckets(&self) -> impl Iterator<Item = (usize, &Bucket)> {
        self.buckets.iter().enumerate().map(|(p, b)| (159 - p, b))
    }

    /// Bucket `index` (0..160), if allocated.
    pub fn bucket(&self, index: usize) -> Option<&Bucket> {
        self.buckets.get(159usize.checked_sub(index)?)
    }

    fn bucket_mut(&mut self, index: usize) -> Option<&mut Bucket> {
        self.buckets.get_mut(159usize.checked_sub(index)?)
    }

    /// The position of the bucket for `id`, allocating buckets down to it.
    fn bucket_for_insert(&mut self, id: &NodeId) -> Option<usize> {
        let p = 159 - self.own.distance(id).bucket_index()?;
        if self.buckets.len() <= p {
            // Exactly as deep as needed: the table deepens a bucket at a time
            // and then stays, so doubling would leave slots empty for good.
            self.buckets.reserve_exact(p + 1 - self.buckets.len());
            self.buckets.resize_with(p + 1, Bucket::default);
        }
        Some(p)
    }

    /// The position of the bucket for `id`, if allocated.
    fn position(&self, id: &NodeId) -> Option<usize> {
        let p = 159 - self.own.distance(id).bucket_index()?;
        (p < self.buckets.len()).then_some(p)
    }

    /// The contact with this id.
    pub fn get(&self, id: &NodeId) -> Option<&Entry> {
        let p = self.position(id)?;
        self.buckets[p].entries.iter().find(|e| e.node.id == *id)
    }

    /// Records that `node` sent us a message at `now` (a response, or a query
    /// from a node that is not read-only).
    ///
    /// A new id at the address of a contact (or of a candidate waiting in a
    /// replacement cache) is ignored: the contact keeps its address until it
    /// fails or answers with another id. Ids in queries are
    /// only claims, and some are throwaway: the `mainline` crate follows each
    /// lookup request with a ping from a random id, and puts from random ids.
    pub fn insert(&mut self, node: NodeInfo, now: Instant) -> Insert {
        let Some(b) = self.bucket_for_insert(&node.id) else {
            return Insert::Ignored;
        };
        if self.addrs.stale >= AddrFilter::MAX_STALE {
            self.rebuild_addr_filter();
        }
        let taken = |n: &NodeInfo| n.addr == node.addr && n.id != node.id;
        if self.addrs.may_contain(&node.addr)
            && !self.buckets[b].entries.iter().any(|e| e.node.id == node.id)
            && self.buckets.iter().any(|bucket| {
                bucket.entries.iter().any(|e| taken(&e.node))
                    || bucket.replacements.iter().any(taken)
            })
        {
            return Insert::Ignored;
        }
        let k = self.k;
        self.addrs.insert(&node.addr);
        let bucket = &mut self.buckets[b];
        if let Some(pos) = bucket.entries.iter().position(|e| e.node.id == node.id) {
            if bucket.entries[pos].node.addr != node.addr {
                // Same id at another address: keep the contact we know answers,
                // unless it has stopped answering.
                if bucket.entries[pos].failures == 0 {
                    return Insert::Ignored;
                }
                bucket.entries[pos].node.addr = node.addr;
                self.addrs.removed();
            }
            let mut e = bucket.entries.remove(pos);
            e.last_seen = now;
            e.failures = 0;
            e.pinging = false;
            bucket.entries.push(e);
            bucket.last_changed = Some(now);
            return Insert::Updated;
        }
        if bucket.entries.len() < k {
            // Grow 4, 8, 16, ... but never past k: doubling would leave a third
            // of a full bucket empty, and reserving k at once would waste most of
            // the sparse buckets near our own id.
            if bucket.entries.len() == bucket.entries.capacity() {
                let want = (bucket.entries.capacity() * 2).max(4).min(k);
                bucket.entries.reserve_exact(want - bucket.entries.len());
            }
            bucket.entries.push(Entry {
                node,
                last_seen: now,
                failures: 0,
                pinging: false,
            });
            bucket.replacements.retain(|r| r.id != node.id);
            bucket.last_changed = Some(now);
            self.len += 1;
            return Insert::Added;
        }
        // Full: a contact that already failed makes room at once.
        if let Some(pos) = bucket.entries.iter().position(|e| e.failures > 0) {
            bucket.entries.remove(pos);
            self.addrs.removed();
            bucket.entries.push(Entry {
                node,
                last_seen: now,
                failures: 0,
                pinging: false,
            });
            bucket.replacements.retain(|r| r.id != node.id);
            bucket.last_changed = Some(now);
            return Insert::Added;
        }
        bucket.replacements.retain(|r| r.id != node.id);
        if bucket.replacements.len() >= k.min(MAX_REPLACEMENTS) {
            bucket.replacements.pop_front();
            self.addrs.removed();
        }
        bucket.replacements.push_back(node);
        let oldest = &mut bucket.entries[0];
        if oldest.pinging {
            Insert::Pending
        } else if now.saturating_duration_since(oldest.last_seen) < self.ping_after {
            Insert::Cached
        } else {
            oldest.pinging = true;
            Insert::PingOldest(oldest.node)
        }
    }

    /// Records that a request to `id` failed. The contact is replaced from the
    /// cache when one waits, and dropped after [`MAX_FAILURES`] in a row.
    /// Returns whether it was removed.
    pub fn on_failure(&mut self, id: &NodeId, now: Instant) -> bool {
        let Some(b) = self.position(id) else {
            return false;
        };
        let bucket = &mut self.buckets[b];
        let Some(pos) = bucket.entries.iter().position(|e| e.node.id == *id) else {
            bucket.replacements.retain(|r| r.id != *id);
            self.addrs.removed();
            return false;
        };
        let e = &mut bucket.entries[pos];
        e.failures = e.failures.saturating_add(1);
        e.pinging = false;
        if let Some(repl) = bucket.replacements.pop_back() {
            bucket.entries.remove(pos);
            self.addrs.removed();
            bucket.entries.push(Entry {
                node: repl,
                // Not heard from directly yet: first in line to be checked.
                last_seen: now,
                failures: 0,
                pinging: false,
            });
            bucket.last_changed = Some(now);
            return true;
        }
        if e.failures >= MAX_FAILURES {
            bucket.entries.remove(pos);
            self.addrs.removed();
            self.len -= 1;
            return true;
        }
        false
    }

    fn rebuild_addr_filter(&mut self) {
        let mut f = AddrFilter::default();
        for b in &self.buckets {
            b.entries.iter().for_each(|e| f.insert(&e.node.addr));
            b.replacements.iter().for_each(|r| f.insert(&r.addr));
        }
        self.addrs = f;
    }

    /// Removes a contact.
    pub fn remove(&mut self, id: &NodeId) -> bool {
        let Some(b) = self.position(id) else {
            return false;
        };
        let bucket = &mut self.buckets[b];
        if let Some(pos) = bucket.entries.iter().position(|e| e.node.id == *id) {
            bucket.entries.remove(pos);
            self.addrs.removed();
            self.len -= 1;
            true
        } else {
            false
        }
    }

    /// The `count` contacts closest to `target`, closest first.
    pub fn closest(&self, target: &NodeId, count: usize) -> Vec<NodeInfo> {
        // Let `tb` be the bucket the target falls in. Contacts in bucket `tb` are
        // closer to the target than 2^tb; contacts in any bucket below `tb` are all
        // between 2^tb and 2^(tb+1); contacts in bucket `b > tb` are between 2^b
        // and 2^(b+1). So visit `tb`, then every bucket below it, then upwards,
        // and stop as soon as a whole distance band has filled `count`.
        let mut all: Vec<(Distance, NodeInfo)> = Vec::with_capacity(count * 2);
        let visit = |b: usize, all: &mut Vec<(Distance, NodeInfo)>| {
            if let Some(bucket) = self.bucket(b) {
                for e in &bucket.entries {
                    all.push((e.node.id.distance(target), e.node));
                }
            }
        };
        let upwards_from = match self.own.distance(target).bucket_index() {
            Some(tb) => {
                visit(tb, &mut all);
                if all.len() < count {
                    // Only allocated buckets: indexes above 159 - len are empty.
                    for b in (160 - self.buckets.len()).min(tb)..tb {
                        visit(b, &mut all);
                    }
                }
                tb + 1
            }
            None => 0,
        };
        for b in upwards_from.max(160 - self.buckets.len())..160 {
            if all.len() >= count {
                break;
            }
            visit(b, &mut all);
        }
        all.sort_unstable_by_key(|a| a.0);
        all.truncate(count);
        all.into_iter().map(|(_, n)| n).collect()
    }

    /// Every contact.
    pub fn nodes(&self) -> impl Iterator<Item = &Entry> {
        self.buckets.iter().flat_map(|b| b.entries.iter())
    }

    /// Indexes of the buckets worth refreshing at `now`: not changed for
    /// `interval`, from the lowest non-empty bucket upwards (buckets closer
    /// than any known contact are covered by the lookup of our own id).
    pub fn stale_buckets(&self, now: Instant, interval: Duration) -> Vec<usize> {
        // Allocated buckets, farthest first, down to the deepest one that has a
        // contact: a node's own neighbourhood is covered by its own-id lookup.
        let Some(deepest) = self.buckets.iter().rposition(|b| !b.entries.is_empty()) else {
            return Vec::new();
        };
        (0..=deepest)
            .filter(|&p| match self.buckets[p].last_changed {
                Some(t) => now.saturating_duration_since(t) >= interval,
                None => true,
            })
            .map(|p| 159 - p)
            .collect()
    }

    /// Marks bucket `index` as refreshed at `now` (a lookup into it started).
    pub fn touch_bucket(&mut self, index: usize, now: Instant) {
        if let Some(b) = self.bucket_mut(index) {
            b.last_changed = Some(now);
        }
    }

    /// The address of a contact, if known.
    pub fn addr_of(&self, id: &NodeId) -> Option<SocketAddr> {
        self.get(id).map(|e| e.node.addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use std::net::{Ipv4Addr, SocketAddrV4};

    fn info(id: NodeId, port: u16) -> NodeInfo {
        NodeInfo {
            id,
            addr: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)),
        }
    }

    #[test]
    fn full_bucket_pings_only_a_contact_silent_long_enough() {
        let t0 = Instant::now();
        let after = Duration::from_secs(60);
        let mut t = RoutingTable::new(NodeId::ZERO, 1).with_ping_after(after);
        let old = info(NodeId([0x81; 20]), 1);
        assert_eq!(t.insert(old, t0), Insert::Added);
        // Heard from 59 s ago: the newcomer waits, no ping.
        let new = info(NodeId([0x82; 20]), 2);
        assert_eq!(
            t.insert(new, t0 + after - Duration::from_secs(1)),
            Insert::Cached
        );
        assert_eq!(t.bucket(159).map(|b| b.replacements.len()), Some(1));
        // Silent for a minute: now it is pinged.
        let newer = info(NodeId([0x83; 20]), 3);
        assert_eq!(t.insert(newer, t0 + after), Insert::PingOldest(old));
        // It fails: the most recent newcomer takes its place.
        assert!(t.on_failure(&old.id, t0 + after));
        assert_eq!(t.get(&newer.id).map(|e| e.node), Some(newer));
        assert!(t.get(&old.id).is_none());
    }

    #[test]
    fn address_filter_never_forgets_a_present_address() {
        // Churn a small table through many removals (so that the address
        // filter is rebuilt several times); every address still in it, as a
        // contact or a replacement candidate, must still block a new id.
        let now = Instant::now();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(42);
        let mut t = RoutingTable::new(NodeId::random(&mut rng), 4);
        for round in 0..2_000u32 {
            let port = (round % 700) as u16 + 1;
            let n = info(NodeId::random(&mut rng), port);
            t.insert(n, now);
            if round % 3 == 0 {
                let victim = t
                    .nodes()
                    .nth(round as usize % t.len().max(1))
                    .map(|e| e.node.id);
                if let Some(id) = victim {
                    t.on_failure(&id, now);
                }
            }
        }
        let present: Vec<SocketAddr> = t
            .buckets()
            .flat_map(|(_, b)| {
                b.entries
                    .iter()
                    .map(|e| e.node.addr)
                    .chain(b.replacements.iter().map(|r| r.addr))
            })
            .collect();
        assert!(
            present.len() > 10,
            "the table kept {} addresses",
            present.len()
        );
        for addr in present {
            let intruder = NodeInfo {
                id: NodeId::random(&mut rng),
                addr,
            };
            assert_eq!(
                t.insert(intruder, now),
                Insert::Ignored,
                "{addr} was forgotten"
            );
        }
    }

    #[test]
    fn full_bucket_pings_oldest_and_evicts_only_on_failure() {
        let now = Instant::now();
        let own = NodeId::ZERO;
        let mut t = RoutingTable::new(own, 2);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let a = info(own.random_in_bucket(159, &mut rng), 1);
        let b = info(own.random_in_bucket(159, &mut rng), 2);
        let c = info(own.random_in_bucket(159, &mut rng), 3);
        assert_eq!(t.insert(a, now), Insert::Added);
        assert_eq!(t.insert(b, now), Insert::Added);
        assert_eq!(t.insert(c, now), Insert::PingOldest(a));
        assert!(t.get(&c.id).is_none());
        // a answers: it stays, c waits.
        assert_eq!(t.insert(a, now), Insert::Updated);
        assert!(t.get(&a.id).is_some());
        // Next newcomer pings b (now the oldest); b fails, c's successor takes its place.
        let d = info(own.random_in_bucket(159, &mut rng), 4);
        assert_eq!(t.insert(d, now), Insert::PingOldest(b));
        assert!(t.on_failure(&b.id, now));
        assert!(t.get(&b.id).is_none());
        assert!(t.get(&d.id).is_some());
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn closest_matches_brute_force() {
        let now = Instant::now();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let own = NodeId::random(&mut rng);
        let mut t = RoutingTable::new(own, 8);
        for p in 0..2000u16 {
            t.insert(info(NodeId::random(&mut rng), p), now);
        }
        for _ in 0..50 {
            let target = NodeId::random(&mut rng);
            let got = t.closest(&target, 8);
            let mut all: Vec<NodeInfo> = t.nodes().map(|e| e.node).collect();
            all.sort_by_key(|n| n.id.distance(&target));
            all.truncate(8);
            assert_eq!(got, all);
        }
    }

    #[test]
    fn new_id_at_a_known_address_is_ignored() {
        let now = Instant::now();
        let mut t = RoutingTable::new(NodeId::ZERO, 8);
        let a = info(NodeId([1; 20]), 1);
        assert_eq!(t.insert(a, now), Insert::Added);
        // Throwaway ids from the same address (`mainline`'s pings and puts), in
        // another bucket and in the contact's own.
        let mut near = [1; 20];
        near[19] = 2;
        assert_eq!(t.insert(info(NodeId([0x80; 20]), 1), now), Insert::Ignored);
        assert_eq!(t.insert(info(NodeId(near), 1), now), Insert::Ignored);
        assert_eq!(t.len(), 1);
        // The contact itself is still refreshed.
        assert_eq!(t.insert(a, now), Insert::Updated);
        // Once the contact is gone, the address is free.
        assert!(t.remove(&a.id));
        assert_eq!(t.insert(info(NodeId([0x80; 20]), 1), now), Insert::Added);

        // The same when the real id only waits in a full bucket's replacement cache.
        let mut t = RoutingTable::new(NodeId::ZERO, 1);
        assert_eq!(t.insert(info(NodeId([0x81; 20]), 2), now), Insert::Added);
        let real = info(NodeId([0x82; 20]), 3);
        assert!(matches!(t.insert(real, now), Insert::PingOldest(_)));
        assert_eq!(t.insert(info(NodeId([0x01; 20]), 3), now), Insert::Ignored);
        // The waiting one itself is not blocked by its own entry in the cache.
        assert_eq!(t.insert(real, now), Insert::Pending);
    }

    #[test]
    fn dead_contact_dropped_after_max_failures() {
        let now = Instant::now();
        let mut t = RoutingTable::new(NodeId::ZERO, 8);
        let a = info(NodeId([1; 20]), 1);
        t.insert(a, now);
        for _ in 0..MAX_FAILURES - 1 {
            assert!(!t.on_failure(&a.id, now));
        }
        assert!(t.on_failure(&a.id, now));
        assert!(t.is_empty());
    }
}
