//! `GET /api/network`: the routing table by bucket and the recent lookups, for
//! the web app's picture of the network.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use peerchat_kad::{Distance, NodeId};
use serde::{Deserialize, Serialize};

use super::routes::{ApiFailure, Shared};
use crate::chat::ChatError;
use crate::handle::NodeSnapshot;

/// The answer of `GET /api/network`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct NetworkView {
    /// This node's DHT id (40 hex).
    pub node_id: String,
    /// Contacts in the routing table.
    pub contacts: usize,
    /// Non-empty buckets, farthest (159) first.
    pub buckets: Vec<BucketView>,
    /// Lookups this node ran recently, newest first (at most 32).
    pub lookups: Vec<LookupView>,
}

/// One k-bucket.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct BucketView {
    /// 159 holds the farthest half of the id space, 0 the closest id.
    pub index: usize,
    /// Its contacts.
    pub contacts: Vec<PeerView>,
}

/// One contact.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PeerView {
    /// Its DHT id (40 hex).
    pub id: String,
    /// Its UDP address.
    pub addr: String,
    /// XOR distance to this node (40 hex).
    pub distance: String,
    /// log2 of the XOR distance (bucket index plus a fraction from the next
    /// bits), in [0, 160): where to draw it.
    pub log2_distance: f64,
    /// Milliseconds since it was last heard from.
    pub last_seen_ms: u64,
    /// Failed requests in a row since it last answered.
    pub failures: u8,
}

/// One finished lookup.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LookupView {
    /// `bootstrap`, `find_node`, `get_peers`, `announce_peer`, `get` or `put`.
    pub kind: String,
    /// The id looked up (40 hex).
    pub target: String,
    /// log2 of the target's XOR distance to this node (`null` for our own id).
    pub log2_distance: Option<f64>,
    /// Milliseconds since it finished.
    pub ago_ms: u64,
    /// Hops to the answer.
    pub hops: u32,
    /// Requests sent.
    pub rpcs: u32,
    /// How long it took, in milliseconds.
    pub elapsed_ms: u64,
    /// Nodes, peers or items found (for a put: nodes that stored it).
    pub found: usize,
}

/// log2 of a distance with 16 bits of fraction; `None` for zero.
pub(super) fn log2_distance(d: &Distance) -> Option<f64> {
    let lz = d.leading_zeros() as usize;
    if lz >= 160 {
        return None;
    }
    // The 16 bits after the leading one, as a fraction of the bucket.
    let mut next = 0u32;
    for i in 1..=16 {
        let bit = lz + i;
        let b =
            d.0.get(bit / 8)
                .map_or(0, |byte| (byte >> (7 - bit % 8)) & 1);
        next = (next << 1) | u32::from(b);
    }
    let bucket = (159 - lz) as f64;
    Some(bucket + (1.0 + f64::from(next) / 65536.0).log2())
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn hex(d: &Distance) -> String {
    NodeId(d.0).to_hex()
}

/// The view of a snapshot.
pub(super) fn view_of(snap: &NodeSnapshot) -> NetworkView {
    let own = snap.id;
    let mut buckets: BTreeMap<usize, Vec<PeerView>> = BTreeMap::new();
    for e in &snap.table {
        let d = own.distance(&e.node.id);
        buckets.entry(e.bucket).or_default().push(PeerView {
            id: e.node.id.to_hex(),
            addr: e.node.addr.to_string(),
            distance: hex(&d),
            log2_distance: log2_distance(&d).unwrap_or(0.0),
            last_seen_ms: millis(e.last_seen),
            failures: e.failures,
        });
    }
    NetworkView {
        node_id: own.to_hex(),
        contacts: snap.table.len(),
        buckets: buckets
            .into_iter()
            .rev()
            .map(|(index, contacts)| BucketView { index, contacts })
            .collect(),
        lookups: snap
            .lookups
            .iter()
            .map(|l| LookupView {
                kind: l.kind.to_string(),
                target: l.target.to_hex(),
                log2_distance: log2_distance(&own.distance(&l.target)),
                ago_ms: millis(l.ago),
                hops: l.stats.hops,
                rpcs: l.stats.rpcs,
                elapsed_ms: millis(l.stats.elapsed),
                found: l.found,
            })
            .collect(),
    }
}

pub(super) async fn network(State(s): State<Shared>) -> Result<Json<NetworkView>, ApiFailure> {
    let snap = s.client.dht().snapshot().await.map_err(ChatError::Node)?;
    Ok(Json(view_of(&snap)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dist(first: u8, second: u8) -> Distance {
        let mut d = [0u8; 20];
        d[0] = first;
        d[1] = second;
        Distance(d)
    }

    #[test]
    fn log2_of_distances() {
        assert_eq!(log2_distance(&Distance([0; 20])), None);
        assert_eq!(log2_distance(&dist(0x80, 0)), Some(159.0));
        // 0xC0...: 1.5 * 2^159.
        let v = log2_distance(&dist(0xC0, 0)).expect("non-zero");
        assert!((v - (159.0 + 1.5f64.log2())).abs() < 1e-9, "{v}");
        let v = log2_distance(&dist(0x01, 0)).expect("non-zero");
        assert!((v - 152.0).abs() < 1e-9, "{v}");
        let mut last = [0u8; 20];
        last[19] = 1;
        assert_eq!(log2_distance(&Distance(last)), Some(0.0));
        let mut last = [0u8; 20];
        last[19] = 3;
        let v = log2_distance(&Distance(last)).expect("non-zero");
        assert!((v - 1.5f64.log2() - 1.0).abs() < 1e-9, "{v}");
    }
}
