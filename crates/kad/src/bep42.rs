//! BEP 42: node ids derived from the node's public IP, so that an attacker
//! cannot choose where in the id space it sits.

use std::net::IpAddr;

use rand::RngCore;

use crate::id::NodeId;

/// Whether `ip` is exempt from BEP 42 (private, loopback, link-local): any id is valid.
pub fn is_exempt(ip: IpAddr) -> bool {
    let _ = ip;
    todo!("HELPER-A")
}

/// A fresh node id valid for `ip` under BEP 42 (random for exempt addresses).
pub fn id_for_ip(ip: IpAddr, rng: &mut impl RngCore) -> NodeId {
    let _ = (ip, rng);
    todo!("HELPER-A")
}

/// The id with its checked bits fixed for `ip` and `rand` (the id's last byte), the rest
/// taken from `rest`. Used by [`id_for_ip`] and by the official test vectors.
pub fn id_from_parts(ip: IpAddr, rand: u8, rest: &[u8; 20]) -> NodeId {
    let _ = (ip, rand, rest);
    todo!("HELPER-A")
}

/// Whether `id` is valid for a node at `ip` (true for exempt addresses).
pub fn is_valid(id: &NodeId, ip: IpAddr) -> bool {
    let _ = (id, ip);
    todo!("HELPER-A")
}
