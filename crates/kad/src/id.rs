//! 160-bit identifiers and the XOR metric.

use std::fmt;

use rand::RngCore;

/// Length of a node id, an info-hash or a BEP 44 target, in bytes.
pub const ID_LEN: usize = 20;

/// A 160-bit identifier: a node id, an info-hash or a BEP 44 target.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct NodeId(pub [u8; ID_LEN]);

/// The XOR distance between two ids, ordered as a big-endian 160-bit integer.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct Distance(pub [u8; ID_LEN]);

// Distances are compared on every step of every lookup (they key its
// candidates): two register compares instead of a 20-byte `memcmp` call.
impl Ord for Distance {
    fn cmp(&self, other: &Distance) -> std::cmp::Ordering {
        let (a_hi, a_lo) = self.halves();
        let (b_hi, b_lo) = other.halves();
        a_hi.cmp(&b_hi).then(a_lo.cmp(&b_lo))
    }
}

impl PartialOrd for Distance {
    fn partial_cmp(&self, other: &Distance) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl NodeId {
    /// The all-zero id.
    pub const ZERO: NodeId = NodeId([0; ID_LEN]);

    /// A uniformly random id drawn from `rng`.
    pub fn random(rng: &mut impl RngCore) -> NodeId {
        let mut b = [0u8; ID_LEN];
        rng.fill_bytes(&mut b);
        NodeId(b)
    }

    /// Reads an id from exactly 20 bytes; `None` for any other length.
    pub fn from_slice(b: &[u8]) -> Option<NodeId> {
        <[u8; ID_LEN]>::try_from(b).ok().map(NodeId)
    }

    /// The XOR distance to `other`.
    pub fn distance(&self, other: &NodeId) -> Distance {
        let mut d = [0u8; ID_LEN];
        for (i, byte) in d.iter_mut().enumerate() {
            *byte = self.0[i] ^ other.0[i];
        }
        Distance(d)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; ID_LEN] {
        &self.0
    }

    /// Lower-case hex, 40 characters.
    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(40);
        for b in self.0 {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }

    /// Parses 40 hex characters.
    pub fn from_hex(s: &str) -> Option<NodeId> {
        let s = s.trim();
        if s.len() != 40 || !s.is_ascii() {
            return None;
        }
        let mut b = [0u8; ID_LEN];
        for (i, byte) in b.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(NodeId(b))
    }

    /// A random id at exactly bucket index `bucket` from `self` (its distance has
    /// `159 - bucket` leading zero bits), used to refresh that bucket.
    pub fn random_in_bucket(&self, bucket: usize, rng: &mut impl RngCore) -> NodeId {
        let mut d = [0u8; ID_LEN];
        rng.fill_bytes(&mut d);
        let lz = 159 - bucket.min(159);
        // Clear the leading `lz` bits, set bit `lz`.
        for bit in 0..lz {
            d[bit / 8] &= !(0x80 >> (bit % 8));
        }
        d[lz / 8] |= 0x80 >> (lz % 8);
        let mut out = [0u8; ID_LEN];
        for i in 0..ID_LEN {
            out[i] = self.0[i] ^ d[i];
        }
        NodeId(out)
    }
}

impl Distance {
    /// The first 16 bytes and the last 4, big-endian: the same order as the bytes.
    fn halves(&self) -> (u128, u32) {
        let mut hi = [0u8; 16];
        hi.copy_from_slice(&self.0[..16]);
        let mut lo = [0u8; 4];
        lo.copy_from_slice(&self.0[16..]);
        (u128::from_be_bytes(hi), u32::from_be_bytes(lo))
    }

    /// Number of leading zero bits (160 for the zero distance).
    pub fn leading_zeros(&self) -> u32 {
        let mut n = 0;
        for b in self.0 {
            if b == 0 {
                n += 8;
            } else {
                return n + b.leading_zeros();
            }
        }
        n
    }

    /// The k-bucket index of this distance: 159 for the farthest half of the
    /// space, 0 for the closest non-zero distance; `None` for distance zero.
    pub fn bucket_index(&self) -> Option<usize> {
        let lz = self.leading_zeros();
        if lz >= 160 {
            None
        } else {
            Some(159 - lz as usize)
        }
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.to_hex())
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn distance_is_symmetric_and_zero_on_self() {
        let a = NodeId([1; 20]);
        let b = NodeId([7; 20]);
        assert_eq!(a.distance(&b), b.distance(&a));
        assert_eq!(a.distance(&a), Distance([0; 20]));
        assert_eq!(a.distance(&a).bucket_index(), None);
    }

    #[test]
    fn bucket_index_of_top_bit() {
        let a = NodeId::ZERO;
        let mut b = [0u8; 20];
        b[0] = 0x80;
        assert_eq!(a.distance(&NodeId(b)).bucket_index(), Some(159));
        let mut c = [0u8; 20];
        c[19] = 1;
        assert_eq!(a.distance(&NodeId(c)).bucket_index(), Some(0));
    }

    #[test]
    fn random_in_bucket_lands_in_bucket() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let me = NodeId::random(&mut rng);
        for bucket in [0usize, 1, 7, 8, 100, 158, 159] {
            let id = me.random_in_bucket(bucket, &mut rng);
            assert_eq!(me.distance(&id).bucket_index(), Some(bucket));
        }
    }

    proptest::proptest! {
        #[test]
        fn distance_order_is_the_byte_order(a: [u8; 20], b: [u8; 20], same_prefix in 0usize..20) {
            // Share a prefix often, so that ties in the high half are exercised.
            let mut b = b;
            b[..same_prefix].copy_from_slice(&a[..same_prefix]);
            proptest::prop_assert_eq!(Distance(a).cmp(&Distance(b)), a.cmp(&b));
        }
    }

    #[test]
    fn hex_round_trip() {
        let a = NodeId([0xab; 20]);
        assert_eq!(NodeId::from_hex(&a.to_hex()), Some(a));
        assert_eq!(NodeId::from_hex("zz"), None);
    }
}
