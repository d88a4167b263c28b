//! Where a node keeps what others store on it: BEP 44 items and BEP 5 peers.
//!
//! The core calls the store synchronously, but every method is fallible so that a
//! database can stand behind it (the node's SQLite store), not only memory. Both
//! kinds of record expire; the core calls [`RecordStore::expire`] periodically.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::bencode::Value;
use crate::bep44::MutableItem;
use crate::id::NodeId;

/// A stored BEP 44 item.
#[derive(Clone, PartialEq, Debug)]
pub enum Item {
    /// An immutable item: its target is SHA-1 of the encoded value.
    Immutable(Value),
    /// A signed mutable item.
    Mutable(MutableItem),
}

/// A store failure (the database behind it failed).
#[derive(Debug, thiserror::Error)]
#[error("record store: {0}")]
pub struct StoreError(pub String);

/// Storage of DHT records, designed for a database as much as for memory.
pub trait RecordStore {
    /// The item stored under `target`.
    fn get(&mut self, target: &NodeId) -> Result<Option<Item>, StoreError>;
    /// Stores (or replaces) the item under `target` at `now`. Returns `false`
    /// when the store is full and refused it.
    fn put(&mut self, target: NodeId, item: Item, now: Instant) -> Result<bool, StoreError>;
    /// Adds a peer for an info-hash at `now`.
    fn add_peer(
        &mut self,
        info_hash: NodeId,
        peer: SocketAddr,
        now: Instant,
    ) -> Result<(), StoreError>;
    /// Up to `max` peers of an info-hash, newest first.
    fn peers(&mut self, info_hash: &NodeId, max: usize) -> Result<Vec<SocketAddr>, StoreError>;
    /// Drops records stored before `now - ttl`; returns how many.
    fn expire(&mut self, now: Instant, ttl: Duration) -> Result<usize, StoreError>;
    /// Number of items stored.
    fn item_count(&self) -> usize;
}

/// Limits of the memory store.
#[derive(Clone, Copy, Debug)]
pub struct StoreLimits {
    /// Most BEP 44 items.
    pub max_items: usize,
    /// Most info-hashes with peers.
    pub max_info_hashes: usize,
    /// Most peers per info-hash.
    pub max_peers_per_hash: usize,
}

impl Default for StoreLimits {
    fn default() -> Self {
        StoreLimits {
            max_items: 4096,
            max_info_hashes: 2048,
            max_peers_per_hash: 64,
        }
    }
}

/// A bounded in-memory store (the simulator's, and the default).
#[derive(Debug, Default)]
pub struct MemoryStore {
    limits: StoreLimits,
    items: HashMap<NodeId, (Item, Instant)>,
    peers: HashMap<NodeId, VecDeque<(SocketAddr, Instant)>>,
}

impl MemoryStore {
    /// An empty store with these limits.
    pub fn new(limits: StoreLimits) -> MemoryStore {
        MemoryStore {
            limits,
            items: HashMap::new(),
            peers: HashMap::new(),
        }
    }
}

impl RecordStore for MemoryStore {
    fn get(&mut self, target: &NodeId) -> Result<Option<Item>, StoreError> {
        Ok(self.items.get(target).map(|(i, _)| i.clone()))
    }

    fn put(&mut self, target: NodeId, item: Item, now: Instant) -> Result<bool, StoreError> {
        if !self.items.contains_key(&target) && self.items.len() >= self.limits.max_items {
            return Ok(false);
        }
        self.items.insert(target, (item, now));
        Ok(true)
    }

    fn add_peer(
        &mut self,
        info_hash: NodeId,
        peer: SocketAddr,
        now: Instant,
    ) -> Result<(), StoreError> {
        if !self.peers.contains_key(&info_hash) && self.peers.len() >= self.limits.max_info_hashes {
            return Ok(());
        }
        let list = self.peers.entry(info_hash).or_default();
        list.retain(|(p, _)| *p != peer);
        if list.len() >= self.limits.max_peers_per_hash {
            list.pop_front();
        }
        list.push_back((peer, now));
        Ok(())
    }

    fn peers(&mut self, info_hash: &NodeId, max: usize) -> Result<Vec<SocketAddr>, StoreError> {
        Ok(self
            .peers
            .get(info_hash)
            .map(|l| l.iter().rev().take(max).map(|(p, _)| *p).collect())
            .unwrap_or_default())
    }

    fn expire(&mut self, now: Instant, ttl: Duration) -> Result<usize, StoreError> {
        let before = self.items.len();
        self.items
            .retain(|_, (_, t)| now.saturating_duration_since(*t) < ttl);
        let mut n = before - self.items.len();
        for list in self.peers.values_mut() {
            let b = list.len();
            list.retain(|(_, t)| now.saturating_duration_since(*t) < ttl);
            n += b - list.len();
        }
        self.peers.retain(|_, l| !l.is_empty());
        Ok(n)
    }

    fn item_count(&self) -> usize {
        self.items.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_expires() {
        let now = Instant::now();
        let mut s = MemoryStore::new(StoreLimits {
            max_items: 2,
            max_info_hashes: 1,
            max_peers_per_hash: 2,
        });
        assert!(
            s.put(NodeId([1; 20]), Item::Immutable(Value::Int(1)), now)
                .unwrap()
        );
        assert!(
            s.put(NodeId([2; 20]), Item::Immutable(Value::Int(2)), now)
                .unwrap()
        );
        assert!(
            !s.put(NodeId([3; 20]), Item::Immutable(Value::Int(3)), now)
                .unwrap()
        );
        let p = |port| SocketAddr::from(([127, 0, 0, 1], port));
        s.add_peer(NodeId([1; 20]), p(1), now).unwrap();
        s.add_peer(NodeId([1; 20]), p(2), now).unwrap();
        s.add_peer(NodeId([1; 20]), p(3), now).unwrap();
        s.add_peer(NodeId([2; 20]), p(4), now).unwrap();
        assert_eq!(s.peers(&NodeId([1; 20]), 10).unwrap(), vec![p(3), p(2)]);
        assert!(s.peers(&NodeId([2; 20]), 10).unwrap().is_empty());
        let later = now + Duration::from_secs(10);
        assert_eq!(s.expire(later, Duration::from_secs(5)).unwrap(), 4);
        assert_eq!(s.item_count(), 0);
    }
}
