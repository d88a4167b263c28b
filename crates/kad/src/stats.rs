//! Counters of a DHT node, for benchmarks, the status view and tests.

use crate::krpc::Query;

/// Counters of a DHT node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Queries sent, by method: ping, find_node, get_peers, announce_peer, get, put, other.
    pub sent: [u64; 7],
    /// Queries received.
    pub queries_received: u64,
    /// Responses received.
    pub responses_received: u64,
    /// Error messages received.
    pub errors_received: u64,
    /// Requests that got no answer in time.
    pub timeouts: u64,
    /// Lookup requests sent a second time after stalling.
    pub retransmits: u64,
    /// Datagrams that were not valid KRPC.
    pub dropped_malformed: u64,
    /// Responses that matched no request of ours (or came from the wrong address).
    pub dropped_unexpected: u64,
    /// Queries ignored because their IP exceeded its budget.
    pub rate_limited: u64,
    /// Record store failures.
    pub store_errors: u64,
    /// Bytes sent.
    pub bytes_sent: u64,
    /// Bytes received.
    pub bytes_received: u64,
}

/// Names of [`Stats::sent`]'s slots.
pub const METHODS: [&str; 7] = [
    "ping",
    "find_node",
    "get_peers",
    "announce_peer",
    "get",
    "put",
    "other",
];

impl Stats {
    pub(crate) fn count_sent(&mut self, q: &Query) {
        let i = match q {
            Query::Ping => 0,
            Query::FindNode { .. } => 1,
            Query::GetPeers { .. } => 2,
            Query::AnnouncePeer { .. } => 3,
            Query::Get { .. } => 4,
            Query::Put(_) => 5,
            Query::Other { .. } => 6,
        };
        self.sent[i] += 1;
    }

    /// All queries sent.
    pub fn total_sent(&self) -> u64 {
        self.sent.iter().sum()
    }
}
