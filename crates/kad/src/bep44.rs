//! BEP 44: storing arbitrary data (immutable and mutable items) in the DHT.

use crate::bencode::Value;
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
    let _ = value;
    todo!("HELPER-A")
}

/// Target of a mutable item: SHA-1(public key ‖ salt).
pub fn mutable_target(key: &[u8; 32], salt: &[u8]) -> NodeId {
    let _ = (key, salt);
    todo!("HELPER-A")
}

/// The buffer that is signed: `[4:salt<len>:<salt>]3:seqi<seq>e1:v<bencoded v>`.
pub fn signable(salt: &[u8], seq: i64, value: &Value) -> Vec<u8> {
    let _ = (salt, seq, value);
    todo!("HELPER-A")
}

impl MutableItem {
    /// Signs a new item with an ed25519 secret key (32-byte seed).
    pub fn sign(secret: &[u8; 32], salt: Vec<u8>, seq: i64, value: Value) -> Result<MutableItem, ItemError> {
        let _ = (secret, salt, seq, value);
        todo!("HELPER-A")
    }

    /// Checks sizes and the signature.
    pub fn verify(&self) -> Result<(), ItemError> {
        todo!("HELPER-A")
    }

    /// This item's target.
    pub fn target(&self) -> NodeId {
        mutable_target(&self.key, &self.salt)
    }
}

/// Checks the size of an immutable value.
pub fn check_immutable(value: &Value) -> Result<(), ItemError> {
    let _ = value;
    todo!("HELPER-A")
}
