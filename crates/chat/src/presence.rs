//! Presence: where to reach a user now, as a BEP 44 mutable item signed by the
//! user's key (the BEP 44 ed25519 key is the user key), so any Mainline node can
//! store it.
//!
//! The value is a compact bencoded dict:
//! `{"c": [chat addrs], "d": [dht addrs], "n": node id (20 bytes), "t": unix ms}`,
//! each address in compact form (4-byte IPv4 or 16-byte IPv6, then a big-endian
//! port). Unknown keys are ignored, so later versions can add fields.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use peerchat_kad::bep44::{self, ItemError, MutableItem};
use peerchat_kad::{NodeId, Value};

use crate::identity::{Identity, UserKey};

/// The BEP 44 salt of presence items.
pub const PRESENCE_SALT: &[u8] = b"peerchat:presence";

/// Most addresses in each of [`Presence::dht`] and [`Presence::chat`].
pub const MAX_PRESENCE_ADDRS: usize = 8;

/// Where a user's node can be reached.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Presence {
    /// UDP addresses of the user's DHT node.
    pub dht: Vec<SocketAddr>,
    /// TCP addresses of the user's chat (Noise) endpoint.
    pub chat: Vec<SocketAddr>,
    /// The DHT node id.
    pub node_id: NodeId,
    /// When this record was made, unix milliseconds.
    pub timestamp_ms: u64,
}

/// Why a presence record cannot be made or is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PresenceError {
    /// The item is signed by a key other than the expected user's.
    #[error("presence is signed by key {got}, expected {expected}")]
    WrongKey {
        /// The user whose presence was looked up.
        expected: UserKey,
        /// The key that signed the item.
        got: UserKey,
    },
    /// The item's salt is not [`PRESENCE_SALT`].
    #[error("item salt is not the presence salt")]
    WrongSalt,
    /// The BEP 44 checks failed (size or signature).
    #[error("presence item refused: {0}")]
    Item(#[from] ItemError),
    /// The value is not a dict.
    #[error("presence value is not a dict")]
    NotADict,
    /// A required field is missing.
    #[error("presence field {0:?} is missing")]
    Missing(&'static str),
    /// A field has the wrong type or length.
    #[error("presence field {0:?} is malformed")]
    BadField(&'static str),
    /// An address list is longer than [`MAX_PRESENCE_ADDRS`].
    #[error("presence lists {count} {field} addresses, the most is {MAX_PRESENCE_ADDRS}")]
    TooManyAddrs {
        /// `"dht"` or `"chat"`.
        field: &'static str,
        /// How many were given.
        count: usize,
    },
    /// The timestamp does not fit a bencode integer.
    #[error("presence timestamp {0} is out of range")]
    TimestampRange(u64),
}

impl Presence {
    /// The bencoded value (checks the address counts and the timestamp range).
    pub fn to_value(&self) -> Result<Value, PresenceError> {
        let t = i64::try_from(self.timestamp_ms)
            .map_err(|_| PresenceError::TimestampRange(self.timestamp_ms))?;
        let mut d = BTreeMap::new();
        d.insert(b"c".to_vec(), addr_list("chat", &self.chat)?);
        d.insert(b"d".to_vec(), addr_list("dht", &self.dht)?);
        d.insert(b"n".to_vec(), Value::Bytes(self.node_id.0.to_vec()));
        d.insert(b"t".to_vec(), Value::Int(t));
        Ok(Value::Dict(d))
    }

    /// Reads a presence from its bencoded value.
    pub fn from_value(value: &Value) -> Result<Presence, PresenceError> {
        let d = value.as_dict().ok_or(PresenceError::NotADict)?;
        let field = |k: &'static str| d.get(k.as_bytes()).ok_or(PresenceError::Missing(k));
        let node_id = field("n")?
            .as_bytes()
            .and_then(NodeId::from_slice)
            .ok_or(PresenceError::BadField("n"))?;
        let timestamp_ms = field("t")?
            .as_int()
            .and_then(|t| u64::try_from(t).ok())
            .ok_or(PresenceError::BadField("t"))?;
        Ok(Presence {
            dht: parse_addr_list("dht", "d", field("d")?)?,
            chat: parse_addr_list("chat", "c", field("c")?)?,
            node_id,
            timestamp_ms,
        })
    }

    /// Signs this presence as a BEP 44 mutable item under `identity`'s key with salt
    /// [`PRESENCE_SALT`]. `seq` must grow with each update (the timestamp is a
    /// natural choice).
    pub fn to_item(&self, identity: &Identity, seq: i64) -> Result<MutableItem, PresenceError> {
        Ok(MutableItem::sign(
            &identity.secret_bytes(),
            PRESENCE_SALT.to_vec(),
            seq,
            self.to_value()?,
        )?)
    }

    /// Reads the presence of `expected` from an item fetched from the DHT: checks the
    /// key, the salt, the size (at most 1,000 bytes) and the signature, then decodes.
    pub fn from_item(item: &MutableItem, expected: &UserKey) -> Result<Presence, PresenceError> {
        if item.key != expected.0 {
            return Err(PresenceError::WrongKey {
                expected: *expected,
                got: UserKey(item.key),
            });
        }
        if item.salt != PRESENCE_SALT {
            return Err(PresenceError::WrongSalt);
        }
        item.verify()?;
        Presence::from_value(&item.value)
    }
}

/// A presence item as it travels beside its owner's name claim (`pc_claim`
/// hands it to the claim's storers, `pc_resolve` returns it with the claim):
/// the key is the claim's and the salt is [`PRESENCE_SALT`], so only `pseq`,
/// `psig` and `pv` go on the wire. A reader then learns who holds a name and
/// where they are in one lookup; the BEP 44 item stays the record of where a
/// user is, and the lookup of it the fallback.
pub fn beside_claim(item: &MutableItem) -> [(Vec<u8>, Value); 3] {
    [
        (b"pseq".to_vec(), Value::Int(item.seq)),
        (b"psig".to_vec(), Value::Bytes(item.sig.to_vec())),
        (b"pv".to_vec(), item.value.clone()),
    ]
}

/// The presence item carried beside a claim of `key` (see [`beside_claim`]),
/// not verified yet; `None` if the fields are absent or malformed.
pub fn from_beside_claim(fields: &BTreeMap<Vec<u8>, Value>, key: &UserKey) -> Option<MutableItem> {
    let seq = fields.get(b"pseq".as_slice())?.as_int()?;
    let sig = <[u8; 64]>::try_from(fields.get(b"psig".as_slice())?.as_bytes()?).ok()?;
    let value = fields.get(b"pv".as_slice())?.clone();
    Some(MutableItem {
        key: key.0,
        salt: PRESENCE_SALT.to_vec(),
        seq,
        value,
        sig,
    })
}

/// Of presence items said to be `key`'s, the newest that is valid: the
/// highest `seq` whose key, salt, size and signature check out. Only the
/// items tried are verified, newest first.
pub fn newest_presence<'a>(
    key: &UserKey,
    items: impl IntoIterator<Item = &'a MutableItem>,
) -> Option<Presence> {
    let mut items: Vec<&MutableItem> = items.into_iter().collect();
    items.sort_by_key(|i| std::cmp::Reverse(i.seq));
    items.dedup_by(|a, b| a == b);
    items
        .into_iter()
        .find_map(|i| Presence::from_item(i, key).ok())
}

/// The BEP 44 target of `user`'s presence: SHA-1(key ‖ [`PRESENCE_SALT`]).
pub fn presence_target(user: &UserKey) -> NodeId {
    bep44::mutable_target(&user.0, PRESENCE_SALT)
}

fn addr_list(field: &'static str, addrs: &[SocketAddr]) -> Result<Value, PresenceError> {
    if addrs.len() > MAX_PRESENCE_ADDRS {
        return Err(PresenceError::TooManyAddrs {
            field,
            count: addrs.len(),
        });
    }
    Ok(Value::List(
        addrs.iter().map(|a| Value::Bytes(compact(a))).collect(),
    ))
}

fn parse_addr_list(
    field: &'static str,
    key: &'static str,
    value: &Value,
) -> Result<Vec<SocketAddr>, PresenceError> {
    let Value::List(items) = value else {
        return Err(PresenceError::BadField(key));
    };
    if items.len() > MAX_PRESENCE_ADDRS {
        return Err(PresenceError::TooManyAddrs {
            field,
            count: items.len(),
        });
    }
    items
        .iter()
        .map(|v| {
            v.as_bytes()
                .and_then(parse_compact)
                .ok_or(PresenceError::BadField(key))
        })
        .collect()
}

/// Compact address: IP bytes then the big-endian port.
fn compact(addr: &SocketAddr) -> Vec<u8> {
    let mut out = match addr.ip() {
        IpAddr::V4(ip) => ip.octets().to_vec(),
        IpAddr::V6(ip) => ip.octets().to_vec(),
    };
    out.extend_from_slice(&addr.port().to_be_bytes());
    out
}

fn parse_compact(b: &[u8]) -> Option<SocketAddr> {
    let (ip, port) = match b.len() {
        6 => (
            IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(&b[..4]).ok()?)),
            &b[4..],
        ),
        18 => (
            IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&b[..16]).ok()?)),
            &b[16..],
        ),
        _ => return None,
    };
    Some(SocketAddr::new(ip, u16::from_be_bytes([port[0], port[1]])))
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    use super::*;

    fn sample() -> Presence {
        Presence {
            dht: vec![
                "1.2.3.4:6881".parse().unwrap(),
                "[::1]:6881".parse().unwrap(),
            ],
            chat: vec!["1.2.3.4:7000".parse().unwrap()],
            node_id: NodeId([9; 20]),
            timestamp_ms: 1_700_000_000_000,
        }
    }

    fn ids() -> (Identity, Identity) {
        let mut r = ChaCha20Rng::seed_from_u64(3);
        (Identity::generate(&mut r), Identity::generate(&mut r))
    }

    #[test]
    fn round_trip_through_a_bep44_item() {
        let (a, _) = ids();
        let p = sample();
        let item = p.to_item(&a, 5).unwrap();
        assert_eq!(item.key, a.public().0);
        assert_eq!(item.salt, PRESENCE_SALT);
        assert_eq!(item.target(), presence_target(&a.public()));
        assert_eq!(Presence::from_item(&item, &a.public()), Ok(p));
        // Also survives the value's bencode round trip.
        let value = Value::decode(&item.value.encode()).unwrap();
        assert_eq!(Presence::from_value(&value), Ok(sample()));
    }

    #[test]
    fn full_presence_fits_bep44() {
        let (a, _) = ids();
        let v6: SocketAddr = "[2001:db8::1]:65535".parse().unwrap();
        let p = Presence {
            dht: vec![v6; MAX_PRESENCE_ADDRS],
            chat: vec![v6; MAX_PRESENCE_ADDRS],
            node_id: NodeId([0xff; 20]),
            timestamp_ms: i64::MAX as u64,
        };
        let item = p.to_item(&a, i64::MAX).unwrap();
        assert!(item.value.encoded_len() <= bep44::MAX_VALUE_LEN);
        assert_eq!(Presence::from_item(&item, &a.public()), Ok(p));
    }

    #[test]
    fn other_key_or_tampering_is_refused() {
        let (a, b) = ids();
        let item = sample().to_item(&b, 1).unwrap();
        assert!(matches!(
            Presence::from_item(&item, &a.public()),
            Err(PresenceError::WrongKey { .. })
        ));
        // b's item relabelled with a's key: the signature fails.
        let mut relabelled = item.clone();
        relabelled.key = a.public().0;
        assert_eq!(
            Presence::from_item(&relabelled, &a.public()),
            Err(PresenceError::Item(ItemError::InvalidSignature))
        );
        let good = sample().to_item(&a, 1).unwrap();
        let mut tampered = good.clone();
        tampered.value = Presence {
            chat: vec!["6.6.6.6:1".parse().unwrap()],
            ..sample()
        }
        .to_value()
        .unwrap();
        assert_eq!(
            Presence::from_item(&tampered, &a.public()),
            Err(PresenceError::Item(ItemError::InvalidSignature))
        );
        let mut seq = good.clone();
        seq.seq += 1;
        assert!(Presence::from_item(&seq, &a.public()).is_err());
        let mut salt = good;
        salt.salt = b"other".to_vec();
        assert_eq!(
            Presence::from_item(&salt, &a.public()),
            Err(PresenceError::WrongSalt)
        );
    }

    #[test]
    fn beside_a_claim_the_newest_valid_item_wins() {
        let (a, b) = ids();
        let old = sample().to_item(&a, 1).unwrap();
        let newer = Presence {
            chat: vec!["5.6.7.8:7000".parse().unwrap()],
            ..sample()
        };
        let new = newer.to_item(&a, 2).unwrap();
        // The fields round-trip to the same item, under the claim's key.
        let fields: BTreeMap<Vec<u8>, Value> = beside_claim(&new).into_iter().collect();
        assert_eq!(from_beside_claim(&fields, &a.public()), Some(new.clone()));
        // Under another key the signature fails.
        let relabelled = from_beside_claim(&fields, &b.public()).unwrap();
        assert_eq!(newest_presence(&b.public(), [&relabelled]), None);
        // A forged item with a higher seq is passed over for the newest valid one.
        let mut forged = new.clone();
        forged.seq = 9;
        assert_eq!(
            newest_presence(&a.public(), [&old, &forged, &new, &old]),
            Some(newer)
        );
        assert_eq!(newest_presence(&a.public(), [&old]), Some(sample()));
        assert_eq!(newest_presence(&a.public(), []), None);
        // Missing or malformed fields: nothing.
        let mut short = fields.clone();
        short.insert(b"psig".to_vec(), Value::Bytes(vec![0; 63]));
        assert_eq!(from_beside_claim(&short, &a.public()), None);
        let mut missing = fields;
        missing.remove(b"pv".as_slice());
        assert_eq!(from_beside_claim(&missing, &a.public()), None);
    }

    #[test]
    fn limits_and_malformed_values() {
        let many = Presence {
            dht: vec!["1.1.1.1:1".parse().unwrap(); MAX_PRESENCE_ADDRS + 1],
            ..sample()
        };
        assert!(matches!(
            many.to_value(),
            Err(PresenceError::TooManyAddrs { field: "dht", .. })
        ));
        let future = Presence {
            timestamp_ms: u64::MAX,
            ..sample()
        };
        assert_eq!(
            future.to_value(),
            Err(PresenceError::TimestampRange(u64::MAX))
        );
        assert_eq!(
            Presence::from_value(&Value::Int(1)),
            Err(PresenceError::NotADict)
        );
        let Value::Dict(good) = sample().to_value().unwrap() else {
            unreachable!()
        };
        for (key, bad) in [
            ("n", Value::Bytes(vec![1; 19])),
            ("t", Value::Int(-1)),
            ("t", Value::Bytes(vec![])),
            ("d", Value::Bytes(vec![])),
            ("c", Value::List(vec![Value::Bytes(vec![1; 5])])),
            ("c", Value::List(vec![Value::Int(3)])),
        ] {
            let mut d = good.clone();
            d.insert(key.as_bytes().to_vec(), bad);
            assert_eq!(
                Presence::from_value(&Value::Dict(d)),
                Err(PresenceError::BadField(key))
            );
        }
        let mut d = good.clone();
        d.remove(b"n".as_slice());
        assert_eq!(
            Presence::from_value(&Value::Dict(d)),
            Err(PresenceError::Missing("n"))
        );
        let mut d = good;
        d.insert(b"zz".to_vec(), Value::Int(1));
        assert_eq!(Presence::from_value(&Value::Dict(d)), Ok(sample()));
    }
}
