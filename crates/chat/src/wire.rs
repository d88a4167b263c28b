//! Small encoding helpers shared by the records: hex, fixed-size byte arrays in
//! serde, and strict postcard decoding.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::ser::{SerializeTuple, Serializer};

/// Lower-case hex of `bytes`.
pub(crate) fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

/// Parses exactly `2 * N` hex digits (either case) into `N` bytes.
pub(crate) fn from_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let s = s.as_bytes();
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        let hi = hex_digit(s[2 * i])?;
        let lo = hex_digit(s[2 * i + 1])?;
        *byte = (hi << 4) | lo;
    }
    Some(out)
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// A plain-English reason for a postcard decoding error.
pub(crate) fn describe(e: &postcard::Error) -> &'static str {
    use postcard::Error as E;
    match e {
        E::DeserializeUnexpectedEnd => "input ends early",
        E::DeserializeBadVarint => "bad variable-length integer",
        E::DeserializeBadBool => "bad boolean",
        E::DeserializeBadChar => "bad character",
        E::DeserializeBadUtf8 => "text is not valid utf-8",
        E::DeserializeBadOption => "bad optional field",
        E::DeserializeBadEnum => "unknown variant",
        E::DeserializeBadEncoding => "bad encoding",
        E::SerdeDeCustom => "invalid field value",
        _ => "malformed input",
    }
}

/// Why strict decoding failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StrictError {
    /// postcard refused the input.
    Malformed(&'static str),
    /// Bytes were left over after the value.
    Trailing(usize),
}

/// Decodes one postcard value that must span all of `bytes`.
pub(crate) fn decode_exact<'a, T: serde::Deserialize<'a>>(
    bytes: &'a [u8],
) -> Result<T, StrictError> {
    let (value, rest) =
        postcard::take_from_bytes(bytes).map_err(|e| StrictError::Malformed(describe(&e)))?;
    if !rest.is_empty() {
        return Err(StrictError::Trailing(rest.len()));
    }
    Ok(value)
}

/// Encodes with postcard. Serializing our own plain structs into a `Vec` cannot fail.
pub(crate) fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    postcard::to_stdvec(value).unwrap_or_default()
}

/// serde for `[u8; N]` of any `N`: a hex string in human-readable formats (JSON),
/// `N` raw bytes in binary ones (postcard).
pub(crate) mod byte_array {
    use super::*;

    pub(crate) fn serialize<S: Serializer, const N: usize>(
        bytes: &[u8; N],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            return s.serialize_str(&to_hex(bytes));
        }
        let mut t = s.serialize_tuple(N)?;
        for b in bytes {
            t.serialize_element(b)?;
        }
        t.end()
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        d: D,
    ) -> Result<[u8; N], D::Error> {
        if d.is_human_readable() {
            d.deserialize_str(HexVisitor::<N>)
        } else {
            d.deserialize_tuple(N, ArrayVisitor::<N>(PhantomData))
        }
    }

    struct HexVisitor<const N: usize>;

    impl<const N: usize> Visitor<'_> for HexVisitor<N> {
        type Value = [u8; N];

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "{} hex characters", 2 * N)
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<[u8; N], E> {
            from_hex(v).ok_or_else(|| E::invalid_value(de::Unexpected::Str(v), &self))
        }
    }

    struct ArrayVisitor<const N: usize>(PhantomData<[u8; N]>);

    impl<'de, const N: usize> Visitor<'de> for ArrayVisitor<N> {
        type Value = [u8; N];

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "{N} bytes")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<[u8; N], A::Error> {
            let mut out = [0u8; N];
            for (i, byte) in out.iter_mut().enumerate() {
                *byte = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(i, &self))?;
            }
            Ok(out)
        }
    }
}

/// serde for a [`peerchat_kad::NodeId`] (which has no serde impls): as `[u8; 20]`.
pub(crate) mod node_id {
    use peerchat_kad::NodeId;

    use super::*;

    pub(crate) fn serialize<S: Serializer>(id: &NodeId, s: S) -> Result<S::Ok, S::Error> {
        byte_array::serialize(&id.0, s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<NodeId, D::Error> {
        byte_array::deserialize(d).map(NodeId)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let b = [0x00, 0x7f, 0x80, 0xff, 0x12];
        assert_eq!(to_hex(&b), "007f80ff12");
        assert_eq!(from_hex::<5>("007F80ff12"), Some(b));
        assert_eq!(from_hex::<5>("007f80ff1"), None);
        assert_eq!(from_hex::<2>("zz00"), None);
        assert_eq!(from_hex::<1>("é"), None);
    }
}
