//! Bencode (BEP 3), written by hand: it is on the hot path of every datagram, and
//! the decoder must be total (an error, never a panic, on any input) and bounded.

use std::collections::BTreeMap;

/// A bencoded value.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Value {
    /// `i<n>e`
    Int(i64),
    /// `<len>:<bytes>`
    Bytes(Vec<u8>),
    /// `l...e`
    List(Vec<Value>),
    /// `d...e`, keys sorted (canonical bencode).
    Dict(BTreeMap<Vec<u8>, Value>),
}

/// Why a bencoded input was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    // HELPER-A: fill in variants (unexpected end, bad integer, nesting too deep, trailing bytes, ...)
    /// The input ended in the middle of a value.
    #[error("unexpected end of input")]
    UnexpectedEnd,
}

impl Value {
    /// Encodes canonically (dict keys sorted).
    pub fn encode(&self) -> Vec<u8> {
        todo!("HELPER-A")
    }

    /// Appends the canonical encoding to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let _ = out;
        todo!("HELPER-A")
    }

    /// Decodes exactly one value that spans all of `input`.
    pub fn decode(input: &[u8]) -> Result<Value, DecodeError> {
        let _ = input;
        todo!("HELPER-A")
    }

    /// The byte string, if this is one.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }

    /// The integer, if this is one.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// The dictionary, if this is one.
    pub fn as_dict(&self) -> Option<&BTreeMap<Vec<u8>, Value>> {
        match self {
            Value::Dict(d) => Some(d),
            _ => None,
        }
    }
}
