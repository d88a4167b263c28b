//! The tokio driver: runs a sans-IO `peerchat-kad` core on one UDP socket.
//!
//! Each node is one tokio task and one socket, never an OS thread, so a single
//! process can run ten thousand nodes (the per-process open-file cap is the limit).
//! The task owns the core; callers talk to it through a cloneable [`NodeHandle`]
//! over a bounded channel.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod api;
pub mod chat;
pub mod datadir;
pub mod db;
mod driver;
mod error;
mod handle;
pub mod session;

pub use driver::{NodeConfig, spawn};
pub use error::NodeError;
pub use handle::{
    AnnotationUpdate, Fields, IncomingQuery, NodeHandle, NodeSnapshot, RECENT_LOOKUPS,
    RecentLookup, TableEntry,
};
