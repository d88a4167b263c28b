//! Errors of the node driver.

use std::net::SocketAddr;

/// What went wrong in a node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The UDP port could not be opened.
    #[error(
        "cannot listen on UDP {addr}: {source} (is another node already using this port? choose another with --listen, or port 0 for any)"
    )]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// No bootstrap node answered.
    #[error(
        "no bootstrap node answered ({addrs}); check that the address is right, that a node runs there, and that UDP traffic can reach it"
    )]
    BootstrapFailed {
        /// The addresses tried.
        addrs: String,
    },
    /// The routing table is empty: nothing to ask.
    #[error(
        "the routing table is empty: bootstrap from a running node first (--bootstrap IP:PORT)"
    )]
    NoContacts,
    /// The value is not valid for BEP 44.
    #[error("invalid item: {0}")]
    Item(#[from] peerchat_kad::bep44::ItemError),
    /// The node's task has stopped.
    #[error("the node has stopped")]
    Stopped,
}
