//! BEP 44: storing arbitrary data (immutable and mutable items) in the DHT.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha1::{Digest, Sha1};

use crate::bencode::{Value, encode_bytes, encode_int};
use crate::id::NodeId;

/// Largest encoded `v` accepted, in bytes.
pub const MAX_VALUE_LEN: usize = 1000;
/// Largest `salt` accepted, in bytes.
pub const MAX_SALT_LEN: usize = 64;

/// A signed mutable item.
#[derive(Clone, PartialEq, Debug)]
pub struct MutableItem {
    /// The ed25519 public key.
    pub key: [u8; 32],
    /// The salt (empty when none).
    pub salt: Vec<u8>,
    /// The sequence number.
    pub seq: i64,
    /// The value.
    pub value: Value,
    /// The signature over [`signable`]`(salt, seq, value)`.
    pub sig: [u8; 64],
}

/// Why an item was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ItemError {
    /// `v` is larger than [`MAX_VALUE_LEN`] (KRPC error 205).
    #[error("value of {0} bytes is larger than 1000")]
    ValueTooBig(usize),
    /// The salt is larger than [`MAX_SALT_LEN`] (KRPC error 207).
    #[error("salt of {0} bytes is larger than 64")]
    SaltTooBig(usize),
    /// The signature does not verify (KRPC error 206).
    #[error("invalid signature")]
    InvalidSignature,
}

/// Target of an immutable item: SHA-1 of the bencoded value.
pub fn immutable_target(value: &Value) -> NodeId {
    NodeId(Sha1::digest(value.encode()).into())
}

/// Target of a mutable item: SHA-1(public key ‖ salt).
pub fn mutable_target(key: &[u8; 32], salt: &[u8]) -> NodeId {
    let mut h = Sha1::new();
    h.update(key);
    h.update(salt);
    NodeId(h.finalize().into())
}

/// The buffer that is signed: `[4:salt<len>:<salt>]3:seqi<seq>e1:v<bencoded v>`.
pub fn signable(salt: &[u8], seq: i64, value: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(salt.len() + value.encoded_len() + 32);
    if !salt.is_empty() {
        encode_bytes(&mut out, b"salt");
        encode_bytes(&mut out, salt);
    }
    encode_bytes(&mut out, b"seq");
    encode_int(&mut out, seq);
    encode_bytes(&mut out, b"v");
    value.encode_into(&mut out);
    out
}

/// Checks the sizes of a mutable item's salt and value.
fn check_sizes(salt: &[u8], value: &Value) -> Result<(), ItemError> {
    if salt.len() > MAX_SALT_LEN {
        return Err(ItemError::SaltTooBig(salt.len()));
    }
    check_immutable(value)
}

impl MutableItem {
    /// Signs a new item with an ed25519 secret key (32-byte seed).
    pub fn sign(
        secret: &[u8; 32],
        salt: Vec<u8>,
        seq: i64,
        value: Value,
    ) -> Result<MutableItem, ItemError> {
        check_sizes(&salt, &value)?;
        let signing = SigningKey::from_bytes(secret);
        let sig = signing.sign(&signable(&salt, seq, &value)).to_bytes();
        Ok(MutableItem {
            key: signing.verifying_key().to_bytes(),
            salt,
            seq,
            value,
            sig,
        })
    }

    /// Checks sizes and the signature.
    ///
    /// The signature is checked with ed25519-dalek's `verify_strict`, which also
    /// refuses weak (small-order) public keys and malleable signatures.
    pub fn verify(&self) -> Result<(), ItemError> {
        check_sizes(&self.salt, &self.value)?;
        let key = VerifyingKey::from_bytes(&self.key).map_err(|_| ItemError::InvalidSignature)?;
        let sig = Signature::from_bytes(&self.sig);
        key.verify_strict(&signable(&self.salt, self.seq, &self.value), &sig)
            .map_err(|_| ItemError::InvalidSignature)
    }

    /// This item's target.
    pub fn target(&self) -> NodeId {
        mutable_target(&self.key, &self.salt)
    }
}

/// Checks the size of an immutable value.
pub fn check_immutable(value: &Value) -> Result<(), ItemError> {
    let len = value.encoded_len();
    if len > MAX_VALUE_LEN {
        return Err(ItemError::ValueTooBig(len));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PUBLIC: &str = "77ff84905a91936367c01360803104f92432fcd904a43511876df5cdf3e7e548";
    const SIG1: &str = "305ac8aeb6c9c151fa120f120ea2cfb923564e11552d06a5d856091e5e853cff1260d3f39e4999684aa92eb73ffd136e6f4f3ecbfda0ce53a1608ecd7ae21f01";
    const SIG2: &str = "6834284b6b24c3204eb2fea824d82f88883a3d95e8b4a21b8c0ded553d17d17ddf9a8a7104b1258f30bed3787e6cb896fca78c58f8e03b5f18f14951a87d9a08";

    fn hello() -> Value {
        Value::Bytes(b"Hello World!".to_vec())
    }

    fn arr<const N: usize>(h: &str) -> [u8; N] {
        hex::decode(h).unwrap().try_into().unwrap()
    }

    fn item(salt: &[u8], sig: &str) -> MutableItem {
        MutableItem {
            key: arr(PUBLIC),
            salt: salt.to_vec(),
            seq: 1,
            value: hello(),
            sig: arr(sig),
        }
    }

    #[test]
    fn vector_1_mutable_no_salt() {
        assert_eq!(hello().encode(), b"12:Hello World!");
        assert_eq!(signable(b"", 1, &hello()), b"3:seqi1e1:v12:Hello World!");
        let it = item(b"", SIG1);
        assert_eq!(
            it.target().to_hex(),
            "4a533d47ec9c7d95b1ad75f576cffc641853b750"
        );
        assert_eq!(it.verify(), Ok(()));
    }

    #[test]
    fn vector_2_mutable_with_salt() {
        assert_eq!(
            signable(b"foobar", 1, &hello()),
            b"4:salt6:foobar3:seqi1e1:v12:Hello World!"
        );
        let it = item(b"foobar", SIG2);
        assert_eq!(
            it.target().to_hex(),
            "411eba73b6f087ca51a3795d9c8c938d365e32c1"
        );
        assert_eq!(it.verify(), Ok(()));
    }

    #[test]
    fn vector_3_immutable() {
        assert_eq!(
            immutable_target(&hello()).to_hex(),
            "e5f96f6f38320f0f33959cb4d3d656452117aadb"
        );
        assert_eq!(check_immutable(&hello()), Ok(()));
    }

    #[test]
    fn tampering_breaks_the_signature() {
        let good = item(b"foobar", SIG2);
        let mut bad = good.clone();
        bad.seq = 2;
        assert_eq!(bad.verify(), Err(ItemError::InvalidSignature));
        let mut bad = good.clone();
        bad.salt = b"foobaz".to_vec();
        assert_eq!(bad.verify(), Err(ItemError::InvalidSignature));
        let mut bad = good.clone();
        bad.value = Value::Bytes(b"Hello World?".to_vec());
        assert_eq!(bad.verify(), Err(ItemError::InvalidSignature));
        let mut bad = good.clone();
        bad.sig[0] ^= 1;
        assert_eq!(bad.verify(), Err(ItemError::InvalidSignature));
        // Test 1's signature (no salt) does not verify with a salt.
        assert_eq!(
            item(b"foobar", SIG1).verify(),
            Err(ItemError::InvalidSignature)
        );
        // A key that is not a curve point, or a small-order one.
        let mut bad = good.clone();
        bad.key = [0xff; 32];
        assert_eq!(bad.verify(), Err(ItemError::InvalidSignature));
        let mut bad = good;
        bad.key = [0; 32];
        bad.key[0] = 1; // the identity point
        assert_eq!(bad.verify(), Err(ItemError::InvalidSignature));
    }

    #[test]
    fn sign_then_verify() {
        let secret = [9u8; 32];
        let v = Value::List(vec![Value::Int(-5), Value::Bytes(b"presence".to_vec())]);
        let it = MutableItem::sign(&secret, b"salt".to_vec(), 42, v.clone()).unwrap();
        assert_eq!(it.verify(), Ok(()));
        assert_eq!(it.target(), mutable_target(&it.key, b"salt"));
        let unsalted = MutableItem::sign(&secret, Vec::new(), 42, v).unwrap();
        assert_eq!(unsalted.verify(), Ok(()));
        assert_ne!(unsalted.target(), it.target());
        assert_eq!(unsalted.target(), NodeId(Sha1::digest(unsalted.key).into()));
    }

    #[test]
    fn size_limits() {
        // `1000 - 4` bytes of payload encode to exactly 1000 bytes (`996:...`).
        let max = Value::Bytes(vec![0; 996]);
        assert_eq!(max.encoded_len(), MAX_VALUE_LEN);
        assert_eq!(check_immutable(&max), Ok(()));
        let over = Value::Bytes(vec![0; 997]);
        assert_eq!(check_immutable(&over), Err(ItemError::ValueTooBig(1001)));
        let secret = [1u8; 32];
        assert_eq!(
            MutableItem::sign(&secret, Vec::new(), 1, over),
            Err(ItemError::ValueTooBig(1001))
        );
        assert_eq!(
            MutableItem::sign(&secret, vec![0; 65], 1, hello()),
            Err(ItemError::SaltTooBig(65))
        );
        let ok = MutableItem::sign(&secret, vec![0; 64], 1, max).unwrap();
        assert_eq!(ok.verify(), Ok(()));
        let mut big = ok;
        big.value = Value::Bytes(vec![0; 2000]);
        assert_eq!(big.verify(), Err(ItemError::ValueTooBig(2005)));
    }
}
