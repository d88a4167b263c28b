//! A sans-IO Kademlia core that speaks the BitTorrent Mainline DHT's KRPC.
//!
//! Nothing here touches a socket, a clock, a disk or the operating system's
//! randomness: every entry point takes `now`, and the RNG is seeded by the caller.
//! Feed it with [`Dht::handle_datagram`] and [`Dht::handle_timeout`], then drain
//! [`Dht::poll_transmit`] and [`Dht::poll_event`] until they return `None`, and
//! wake it again at [`Dht::poll_timeout`]. The tokio driver (`peerchat-node`) and
//! the simulator (`peerchat-sim`) run this very same code.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod bencode;
pub mod bep42;
pub mod bep44;
pub mod config;
mod dht;
pub mod id;
pub mod krpc;
pub mod lookup;
mod query;
pub mod routing_table;
mod server;
pub mod stats;
pub mod store;
pub mod token;

pub use bencode::Value;
pub use config::{Config, DEFAULT_ALPHA, DEFAULT_K};
pub use dht::{Dht, Transmit};
pub use id::{Distance, NodeId};
pub use krpc::{Message, NodeInfo};
pub use query::{Event, Outcome, QueryId, QueryStats};
pub use stats::Stats;
pub use store::{Item, MemoryStore, RecordStore};
