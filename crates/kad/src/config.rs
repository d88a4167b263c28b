//! Parameters of a DHT node.

use std::time::Duration;

use crate::store::StoreLimits;

/// K = the default bucket size, and how many nodes store each record.
pub const DEFAULT_K: usize = 20;
/// ALPHA = the default number of requests a lookup keeps in flight.
pub const DEFAULT_ALPHA: usize = 3;

/// Parameters of a DHT node. `Config::default()` is what a public node should run.
#[derive(Clone, Debug)]
pub struct Config {
    /// Bucket size, and the number of closest nodes a lookup seeks and stores at.
    pub k: usize,
    /// Requests a lookup keeps in flight.
    pub alpha: usize,
    /// After this a request stops holding a lookup slot (its late answer still counts).
    pub request_timeout: Duration,
    /// After this a request is given up and its node charged with a failure.
    pub request_expiry: Duration,
    /// A full bucket pings its least-recently-seen contact (to evict it if it
    /// fails) only when that contact has been silent this long; a newcomer to
    /// a full bucket of contacts heard from more recently waits in the
    /// replacement cache. BEP 5's 15 minutes ("questionable" contacts): a dead
    /// contact is found sooner anyway, by the lookups that fail to reach it.
    /// (60 s cost every user of a 10,240-user registration storm, which lasts
    /// minutes, 126 pings; a 2,000-node simulation with 50% churn and 1% loss
    /// over 4 hours finds 100% of its lookups either way.)
    pub ping_oldest_after: Duration,
    /// Buckets not changed for this long are refreshed with a lookup.
    pub refresh_interval: Duration,
    /// Records stored for others are dropped after this (BEP 44 suggests 2 hours).
    pub record_ttl: Duration,
    /// Items this node put are put again after this, so they outlive `record_ttl`.
    pub republish_interval: Duration,
    /// Write-token secrets rotate this often (BEP 5: 5 minutes).
    pub token_rotation: Duration,
    /// A read-only node (BEP 43) answers no query and asks not to be added to tables.
    pub read_only: bool,
    /// Keep nodes whose id does not match their public IP (BEP 42) out of the table.
    pub enforce_bep42: bool,
    /// Bounds of the record store.
    pub store_limits: StoreLimits,
    /// Queries a single IP may send per second before being ignored (0: no limit).
    pub per_ip_queries_per_sec: u32,
    /// Methods handed to the caller as [`crate::Event::Query`] (Peerchat's `pc_*`);
    /// any other unknown method gets error 204.
    pub extension_methods: Vec<Vec<u8>>,
    /// The client version sent in every message (`v`).
    pub version: Vec<u8>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            k: DEFAULT_K,
            alpha: DEFAULT_ALPHA,
            request_timeout: Duration::from_millis(1000),
            request_expiry: Duration::from_millis(4000),
            ping_oldest_after: Duration::from_secs(15 * 60),
            refresh_interval: Duration::from_secs(15 * 60),
            record_ttl: Duration::from_secs(2 * 60 * 60),
            republish_interval: Duration::from_secs(60 * 60),
            token_rotation: Duration::from_secs(5 * 60),
            read_only: false,
            enforce_bep42: true,
            store_limits: StoreLimits::default(),
            per_ip_queries_per_sec: 500,
            extension_methods: Vec::new(),
            version: b"PC\x00\x01".to_vec(),
        }
    }
}
