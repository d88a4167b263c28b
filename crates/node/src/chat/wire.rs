//! Peerchat's KRPC extension methods (`pc_*`), answered by Peerchat nodes only
//! (Mainline nodes answer 204). Arguments are bencoded like any KRPC query;
//! signed records travel as opaque byte strings encoded by `peerchat-chat`. A
//! presence item beside a claim travels as its BEP 44 `seq`, `sig` and `v`
//! (its key is the claim's, its salt the presence salt: `peerchat_chat::beside_claim`).
//!
//! | method | arguments | answer |
//! | --- | --- | --- |
//! | `pc_claim` | `claim`: a signed name claim; `pseq`, `psig`, `pv`: the claimer's presence item (optional) | `claim`: the claim the node holds for that name (the first valid one) |
//! | `pc_resolve` | `name` | `claim` if the node holds one; `pseq`, `psig`, `pv`: the newest presence its key handed with it, if any |
//! | `find_node` (BEP 5) of a name's target | `target` | beside `nodes`, the same fields as `pc_resolve`'s answer, from a node that holds the name's claim (see `directory::resolve_network`) |
//! | `pc_store` | `env`: a sealed envelope | nothing, or error 201 with the reason (quota, too old, ...) |
//! | `pc_fetch` | `auth`: the mailbox owner's signed fetch authorization | `envs`: a list of envelopes (as many as fit a datagram), `more`: 1 if others wait |
//! | `pc_ack` | `ack`: the recipient's signed delivery ack | `removed`: how many copies were dropped |

use std::collections::BTreeMap;

use peerchat_kad::Value;

/// Claim a username.
pub(crate) const CLAIM: &[u8] = b"pc_claim";
/// Resolve a username.
pub(crate) const RESOLVE: &[u8] = b"pc_resolve";
/// Store an envelope in a mailbox.
pub(crate) const STORE: &[u8] = b"pc_store";
/// Fetch a mailbox.
pub(crate) const FETCH: &[u8] = b"pc_fetch";
/// Acknowledge delivery.
pub(crate) const ACK: &[u8] = b"pc_ack";

/// Every extension method, for the DHT core's configuration.
pub(crate) fn methods() -> Vec<Vec<u8>> {
    [CLAIM, RESOLVE, STORE, FETCH, ACK]
        .iter()
        .map(|m| m.to_vec())
        .collect()
}

/// Bytes of envelopes that fit one `pc_fetch` answer (a 1,500-byte datagram).
pub(crate) const FETCH_BUDGET: usize = 1250;

/// One-field argument dictionary.
pub(crate) fn args(key: &str, value: Value) -> BTreeMap<Vec<u8>, Value> {
    let mut m = BTreeMap::new();
    m.insert(key.as_bytes().to_vec(), value);
    m
}

/// A byte-string field.
pub(crate) fn bytes<'a>(m: &'a BTreeMap<Vec<u8>, Value>, key: &str) -> Option<&'a [u8]> {
    m.get(key.as_bytes()).and_then(Value::as_bytes)
}

/// An integer field.
pub(crate) fn int(m: &BTreeMap<Vec<u8>, Value>, key: &str) -> Option<i64> {
    m.get(key.as_bytes()).and_then(Value::as_int)
}

/// A list of byte strings.
pub(crate) fn byte_list<'a>(m: &'a BTreeMap<Vec<u8>, Value>, key: &str) -> Vec<&'a [u8]> {
    match m.get(key.as_bytes()) {
        Some(Value::List(l)) => l.iter().filter_map(Value::as_bytes).collect(),
        _ => Vec::new(),
    }
}
