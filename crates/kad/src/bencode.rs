//! Bencode (BEP 3), written by hand: it is on the hot path of every datagram, and
//! the decoder must be total (an error, never a panic, on any input) and bounded.
//!
//! The decoder is strict about the form of each token (no leading zeros, no `-0`,
//! no integer overflow, no string longer than what is left of the input, at most
//! [`MAX_DEPTH`] nested containers, no bytes after the value, no duplicate dict keys)
//! but accepts dict keys in any order, as real-world peers do not all sort them.
//! The encoder always produces canonical bencode (dict keys sorted as raw bytes).

use std::collections::BTreeMap;

/// Deepest nesting of lists and dicts the decoder accepts.
pub const MAX_DEPTH: usize = 32;

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
    /// The input ended in the middle of a value.
    #[error("unexpected end of input")]
    UnexpectedEnd,
    /// A byte that cannot start a value (or appear where it is).
    #[error("unexpected byte 0x{byte:02x} at offset {pos}")]
    UnexpectedByte {
        /// The offending byte.
        byte: u8,
        /// Its offset in the input.
        pos: usize,
    },
    /// An integer that is empty, has a leading zero, is `-0`, or has a non-digit.
    #[error("malformed integer at offset {0}")]
    BadInteger(usize),
    /// An integer that does not fit in an `i64`.
    #[error("integer overflow at offset {0}")]
    IntegerOverflow(usize),
    /// A string length that is malformed, has a leading zero, or is longer than the
    /// rest of the input.
    #[error("bad string length at offset {0}")]
    BadLength(usize),
    /// More than [`MAX_DEPTH`] nested lists and dicts.
    #[error("nesting deeper than {MAX_DEPTH}")]
    TooDeep,
    /// A dict key that is not a byte string.
    #[error("dict key at offset {0} is not a string")]
    KeyNotString(usize),
    /// The same key twice in one dict.
    #[error("duplicate dict key at offset {0}")]
    DuplicateKey(usize),
    /// Bytes left after a complete value.
    #[error("{0} trailing bytes after the value")]
    TrailingBytes(usize),
}

impl Value {
    /// Encodes canonically (dict keys sorted).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode_into(&mut out);
        out
    }

    /// Appends the canonical encoding to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            Value::Int(i) => encode_int(out, *i),
            Value::Bytes(b) => encode_bytes(out, b),
            Value::List(l) => {
                out.push(b'l');
                for v in l {
                    v.encode_into(out);
                }
                out.push(b'e');
            }
            Value::Dict(d) => {
                out.push(b'd');
                for (k, v) in d {
                    encode_bytes(out, k);
                    v.encode_into(out);
                }
                out.push(b'e');
            }
        }
    }

    /// The length in bytes of [`Value::encode`]'s output, without encoding.
    pub fn encoded_len(&self) -> usize {
        match self {
            Value::Int(i) => 2 + int_len(*i),
            Value::Bytes(b) => bytes_len(b.len()),
            Value::List(l) => 2 + l.iter().map(Value::encoded_len).sum::<usize>(),
            Value::Dict(d) => {
                2 + d
                    .iter()
                    .map(|(k, v)| bytes_len(k.len()) + v.encoded_len())
                    .sum::<usize>()
            }
        }
    }

    /// Decodes exactly one value that spans all of `input`.
    pub fn decode(input: &[u8]) -> Result<Value, DecodeError> {
        let mut d = Decoder::new(input);
        let v = d.value(0)?;
        d.finish()?;
        Ok(v)
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

/// Appends `i<n>e` to `out`.
pub fn encode_int(out: &mut Vec<u8>, n: i64) {
    out.push(b'i');
    push_decimal(out, n);
    out.push(b'e');
}

/// Appends `<len>:<bytes>` to `out`.
pub fn encode_bytes(out: &mut Vec<u8>, b: &[u8]) {
    encode_len_prefix(out, b.len());
    out.extend_from_slice(b);
}

/// Appends `<len>:`, the header of a byte string whose `len` bytes the caller
/// appends next (to write a string from parts without building it first).
pub fn encode_len_prefix(out: &mut Vec<u8>, len: usize) {
    push_decimal_u64(out, len as u64);
    out.push(b':');
}

/// Appends the decimal digits of `n` (with a `-` when negative), without allocating.
fn push_decimal(out: &mut Vec<u8>, n: i64) {
    if n < 0 {
        out.push(b'-');
    }
    push_decimal_u64(out, n.unsigned_abs());
}

fn push_decimal_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

fn digits(mut n: u64) -> usize {
    let mut d = 1;
    while n >= 10 {
        n /= 10;
        d += 1;
    }
    d
}

/// Length of the decimal form of `n`.
fn int_len(n: i64) -> usize {
    usize::from(n < 0) + digits(n.unsigned_abs())
}

/// Length of `<len>:<bytes>` for a string of `len` bytes.
fn bytes_len(len: usize) -> usize {
    digits(len as u64) + 1 + len
}

/// A cursor over the input. Invariant: `pos <= input.len()`.
pub(crate) struct Decoder<'a> {
    input: &'a [u8],
    pos: usize,
}

impl<'a> Decoder<'a> {
    pub(crate) fn new(input: &'a [u8]) -> Self {
        Decoder { input, pos: 0 }
    }

    pub(crate) fn peek(&self) -> Option<u8> {
        self.input.get(self.pos).copied()
    }

    /// Consumes one byte that is known to be there (after a successful `peek`).
    fn bump(&mut self) {
        if self.pos < self.input.len() {
            self.pos += 1;
        }
    }

    /// Consumes `b` or fails.
    pub(crate) fn expect(&mut self, b: u8) -> Result<(), DecodeError> {
        match self.peek() {
            None => Err(DecodeError::UnexpectedEnd),
            Some(c) if c == b => {
                self.bump();
                Ok(())
            }
            Some(c) => Err(DecodeError::UnexpectedByte {
                byte: c,
                pos: self.pos,
            }),
        }
    }

    /// Consumes a dict's end (`e`) if it is next.
    pub(crate) fn at_end_of_container(&mut self) -> Result<bool, DecodeError> {
        match self.peek() {
            None => Err(DecodeError::UnexpectedEnd),
            Some(b'e') => {
                self.bump();
                Ok(true)
            }
            Some(_) => Ok(false),
        }
    }

    /// Fails unless the whole input was consumed.
    pub(crate) fn finish(&self) -> Result<(), DecodeError> {
        match self.input.len().checked_sub(self.pos) {
            Some(0) | None => Ok(()),
            Some(n) => Err(DecodeError::TrailingBytes(n)),
        }
    }

    /// Decodes one value; `depth` is the number of containers it sits in.
    pub(crate) fn value(&mut self, depth: usize) -> Result<Value, DecodeError> {
        match self.peek() {
            None => Err(DecodeError::UnexpectedEnd),
            Some(b'i') => {
                self.bump();
                self.int().map(Value::Int)
            }
            Some(b'0'..=b'9') => self.bytes().map(|b| Value::Bytes(b.to_vec())),
            Some(b'l') => {
                if depth >= MAX_DEPTH {
                    return Err(DecodeError::TooDeep);
                }
                self.bump();
                let mut list = Vec::new();
                while !self.at_end_of_container()? {
                    list.push(self.value(depth + 1)?);
                }
                Ok(Value::List(list))
            }
            Some(b'd') => {
                if depth >= MAX_DEPTH {
                    return Err(DecodeError::TooDeep);
                }
                self.bump();
                let mut dict = BTreeMap::new();
                while !self.at_end_of_container()? {
                    let key_pos = self.pos;
                    let key = self.key()?;
                    let v = self.value(depth + 1)?;
                    if dict.insert(key.to_vec(), v).is_some() {
                        return Err(DecodeError::DuplicateKey(key_pos));
                    }
                }
                Ok(Value::Dict(dict))
            }
            Some(byte) => Err(DecodeError::UnexpectedByte {
                byte,
                pos: self.pos,
            }),
        }
    }

    /// Decodes a dict key (a byte string).
    pub(crate) fn key(&mut self) -> Result<&'a [u8], DecodeError> {
        match self.peek() {
            None => Err(DecodeError::UnexpectedEnd),
            Some(b'0'..=b'9') => self.bytes(),
            Some(_) => Err(DecodeError::KeyNotString(self.pos)),
        }
    }

    /// Decodes the rest of `i<n>e`, after the `i`.
    fn int(&mut self) -> Result<i64, DecodeError> {
        let start = self.pos;
        let rest = self.input.get(start..).unwrap_or_default();
        let Some(end) = rest.iter().position(|&b| b == b'e') else {
            return Err(DecodeError::UnexpectedEnd);
        };
        let text = rest.get(..end).unwrap_or_default();
        let (negative, digits) = match text.split_first() {
            Some((b'-', d)) => (true, d),
            _ => (false, text),
        };
        let bad = DecodeError::BadInteger(start);
        match digits {
            [] => return Err(bad),
            [b'0'] if negative => return Err(bad),
            [b'0', _, ..] => return Err(bad),
            _ => {}
        }
        let mut n: i64 = 0;
        for &c in digits {
            if !c.is_ascii_digit() {
                return Err(bad);
            }
            let d = i64::from(c - b'0');
            n = n
                .checked_mul(10)
                .and_then(|n| {
                    if negative {
                        n.checked_sub(d)
                    } else {
                        n.checked_add(d)
                    }
                })
                .ok_or(DecodeError::IntegerOverflow(start))?;
        }
        // `end < rest.len()`, so this stays within the input.
        self.pos = start + end + 1;
        Ok(n)
    }

    /// Decodes `<len>:<bytes>`, borrowing the bytes.
    pub(crate) fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let start = self.pos;
        let rest = self.input.get(start..).unwrap_or_default();
        let Some(colon) = rest.iter().take(21).position(|&b| b == b':') else {
            return Err(if rest.len() <= 20 && rest.iter().all(u8::is_ascii_digit) {
                DecodeError::UnexpectedEnd
            } else {
                DecodeError::BadLength(start)
            });
        };
        let text = rest.get(..colon).unwrap_or_default();
        let bad = DecodeError::BadLength(start);
        if text.is_empty() || (text.len() > 1 && text.first() == Some(&b'0')) {
            return Err(bad);
        }
        let mut len: usize = 0;
        for &c in text {
            if !c.is_ascii_digit() {
                return Err(bad);
            }
            len = len
                .checked_mul(10)
                .and_then(|n| n.checked_add(usize::from(c - b'0')))
                .ok_or(DecodeError::BadLength(start))?;
        }
        let body_start = colon + 1;
        let Some(body) = body_start
            .checked_add(len)
            .and_then(|end| rest.get(body_start..end))
        else {
            return Err(DecodeError::UnexpectedEnd);
        };
        self.pos = start + body_start + len;
        Ok(body)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    fn d(s: &[u8]) -> Result<Value, DecodeError> {
        Value::decode(s)
    }

    fn dict(entries: &[(&[u8], Value)]) -> Value {
        Value::Dict(
            entries
                .iter()
                .map(|(k, v)| (k.to_vec(), v.clone()))
                .collect(),
        )
    }

    #[test]
    fn decodes_each_kind() {
        assert_eq!(d(b"i42e"), Ok(Value::Int(42)));
        assert_eq!(d(b"i-42e"), Ok(Value::Int(-42)));
        assert_eq!(d(b"i0e"), Ok(Value::Int(0)));
        assert_eq!(d(b"4:spam"), Ok(Value::Bytes(b"spam".to_vec())));
        assert_eq!(d(b"0:"), Ok(Value::Bytes(Vec::new())));
        assert_eq!(
            d(b"l4:spami7ee"),
            Ok(Value::List(vec![
                Value::Bytes(b"spam".to_vec()),
                Value::Int(7)
            ]))
        );
        assert_eq!(
            d(b"d3:cow3:moo4:spam4:eggse"),
            Ok(dict(&[
                (b"cow", Value::Bytes(b"moo".to_vec())),
                (b"spam", Value::Bytes(b"eggs".to_vec()))
            ]))
        );
        assert_eq!(d(b"le"), Ok(Value::List(Vec::new())));
        assert_eq!(d(b"de"), Ok(Value::Dict(BTreeMap::new())));
    }

    #[test]
    fn integer_limits() {
        assert_eq!(d(b"i9223372036854775807e"), Ok(Value::Int(i64::MAX)));
        assert_eq!(d(b"i-9223372036854775808e"), Ok(Value::Int(i64::MIN)));
        assert_eq!(
            d(b"i9223372036854775808e"),
            Err(DecodeError::IntegerOverflow(1))
        );
        assert_eq!(
            d(b"i-9223372036854775809e"),
            Err(DecodeError::IntegerOverflow(1))
        );
        assert_eq!(
            d(b"i99999999999999999999999999e"),
            Err(DecodeError::IntegerOverflow(1))
        );
        for v in [i64::MIN, -1, 0, 1, 10, i64::MAX] {
            assert_eq!(d(&Value::Int(v).encode()), Ok(Value::Int(v)));
        }
    }

    #[test]
    fn rejects_malformed_integers() {
        for bad in [
            &b"ie"[..],
            b"i-e",
            b"i-0e",
            b"i01e",
            b"i-01e",
            b"i00e",
            b"i1-e",
            b"i+1e",
            b"i 1e",
            b"i1.5e",
            b"i--1e",
        ] {
            assert!(
                matches!(d(bad), Err(DecodeError::BadInteger(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(d(b"i12"), Err(DecodeError::UnexpectedEnd));
        assert_eq!(d(b"i"), Err(DecodeError::UnexpectedEnd));
    }

    #[test]
    fn rejects_malformed_strings() {
        assert_eq!(d(b"5:abc"), Err(DecodeError::UnexpectedEnd));
        assert_eq!(d(b"01:a"), Err(DecodeError::BadLength(0)));
        assert_eq!(d(b"3"), Err(DecodeError::UnexpectedEnd));
        assert_eq!(d(b"3x"), Err(DecodeError::BadLength(0)));
        assert_eq!(
            d(b"99999999999999999999999:a"),
            Err(DecodeError::BadLength(0))
        );
        assert_eq!(
            d(b"18446744073709551615:a"),
            Err(DecodeError::UnexpectedEnd)
        );
        assert_eq!(d(b"18446744073709551616:a"), Err(DecodeError::BadLength(0)));
    }

    #[test]
    fn rejects_structural_errors() {
        assert_eq!(d(b""), Err(DecodeError::UnexpectedEnd));
        assert_eq!(d(b"l"), Err(DecodeError::UnexpectedEnd));
        assert_eq!(d(b"d"), Err(DecodeError::UnexpectedEnd));
        assert_eq!(d(b"d3:foo"), Err(DecodeError::UnexpectedEnd));
        assert_eq!(d(b"di1ei2ee"), Err(DecodeError::KeyNotString(1)));
        assert_eq!(d(b"d1:ai1e1:ai2ee"), Err(DecodeError::DuplicateKey(7)));
        assert_eq!(d(b"i1ei2e"), Err(DecodeError::TrailingBytes(3)));
        assert_eq!(d(b"4:spamx"), Err(DecodeError::TrailingBytes(1)));
        assert_eq!(
            d(b"e"),
            Err(DecodeError::UnexpectedByte { byte: b'e', pos: 0 })
        );
        assert_eq!(
            d(b"lxe"),
            Err(DecodeError::UnexpectedByte { byte: b'x', pos: 1 })
        );
    }

    #[test]
    fn accepts_unsorted_keys_and_reencodes_sorted() {
        let v = d(b"d4:spam4:eggs3:cow3:mooe").unwrap();
        assert_eq!(v.encode(), b"d3:cow3:moo4:spam4:eggse");
    }

    #[test]
    fn nesting_limit() {
        let ok = [vec![b'l'; MAX_DEPTH], vec![b'e'; MAX_DEPTH]].concat();
        assert!(d(&ok).is_ok());
        let deep = [vec![b'l'; MAX_DEPTH + 1], vec![b'e'; MAX_DEPTH + 1]].concat();
        assert_eq!(d(&deep), Err(DecodeError::TooDeep));
        // A huge nesting must not blow the stack either.
        let huge = vec![b'l'; 1_000_000];
        assert_eq!(d(&huge), Err(DecodeError::TooDeep));
        let huge_dicts = b"d1:a".repeat(100_000);
        assert_eq!(d(&huge_dicts), Err(DecodeError::TooDeep));
    }

    #[test]
    fn encoded_len_matches() {
        let v = dict(&[
            (b"a", Value::Int(-123)),
            (b"", Value::Bytes(vec![0; 1234])),
            (
                b"l",
                Value::List(vec![
                    Value::Int(0),
                    Value::Int(i64::MIN),
                    Value::List(vec![]),
                ]),
            ),
        ]);
        assert_eq!(v.encode().len(), v.encoded_len());
    }

    pub(crate) fn arb_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            any::<i64>().prop_map(Value::Int),
            prop::collection::vec(any::<u8>(), 0..40).prop_map(Value::Bytes),
        ];
        leaf.prop_recursive(6, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..8).prop_map(Value::List),
                prop::collection::btree_map(prop::collection::vec(any::<u8>(), 0..12), inner, 0..8)
                    .prop_map(Value::Dict),
            ]
        })
    }

    proptest! {
        #[test]
        fn round_trip(v in arb_value()) {
            let enc = v.encode();
            prop_assert_eq!(enc.len(), v.encoded_len());
            let dec = Value::decode(&enc);
            prop_assert_eq!(dec.as_ref(), Ok(&v));
            let mut out = b"prefix".to_vec();
            v.encode_into(&mut out);
            prop_assert_eq!(&out[6..], &enc[..]);
        }

        #[test]
        fn decode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = Value::decode(&bytes);
        }

        #[test]
        fn decode_never_panics_on_bencode_alphabet(
            bytes in prop::collection::vec(
                prop::sample::select(&b"0123456789:ildde-x"[..]), 0..128)
        ) {
            if let Ok(v) = Value::decode(&bytes) {
                // Whatever decodes re-encodes canonically and decodes again to the same.
                prop_assert_eq!(Value::decode(&v.encode()), Ok(v));
            }
        }

        #[test]
        fn decode_never_panics_on_mutations(
            v in arb_value(),
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..6),
        ) {
            let mut enc = v.encode();
            for (idx, byte, op) in edits {
                if enc.is_empty() {
                    enc.push(byte);
                    continue;
                }
                let i = idx.index(enc.len());
                match op {
                    0 => enc[i] = byte,
                    1 => { enc.remove(i); }
                    _ => enc.insert(i, byte),
                }
            }
            if let Ok(v2) = Value::decode(&enc) {
                prop_assert_eq!(Value::decode(&v2.encode()), Ok(v2));
            }
        }
    }
}
