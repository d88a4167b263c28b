//! What is inside a sealed envelope: a text message or a receipt.

use std::fmt;
use std::str::FromStr;

use rand::RngCore;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::names::Username;
use crate::wire::{self, byte_array, from_hex, to_hex};

/// Largest message text, in UTF-8 bytes.
///
/// Budget: an encoded envelope must fit [`crate::MAX_ENVELOPE`] (1,240) bytes so that a
/// relayed envelope still fits a 1,500-byte UDP datagram with KRPC's overhead. The
/// envelope's fixed fields take at most 189 bytes (version 1, id 16, sender 32,
/// recipient 32, timestamp varint up to 10, ephemeral key 32, ciphertext length
/// varint 2, signature 64), the AEAD tag 16, and a text content's own framing at most
/// 20 (variant 1, length 2, reply-to 17) plus the sender's name at most 34 (option 1,
/// length 1, 32 bytes): 1,240 - 259 = 981. 960 keeps a margin.
pub const MAX_TEXT_BYTES: usize = 960;

/// Most message ids in one receipt (16 bytes each; 60 fit the envelope budget).
pub const MAX_RECEIPT_IDS: usize = 60;

/// A message id: 16 random bytes chosen by the sender. Hex in `Display` and in
/// human-readable serde formats.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MessageId(pub [u8; 16]);

impl MessageId {
    /// A uniformly random id.
    pub fn random(rng: &mut impl RngCore) -> MessageId {
        let mut b = [0u8; 16];
        rng.fill_bytes(&mut b);
        MessageId(b)
    }

    /// Lower-case hex, 32 characters.
    pub fn to_hex(&self) -> String {
        to_hex(&self.0)
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({})", self.to_hex())
    }
}

/// Why a string is not a message id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a message id is 32 hex characters")]
pub struct ParseMessageIdError;

impl FromStr for MessageId {
    type Err = ParseMessageIdError;

    /// Parses 32 hex characters (surrounding whitespace is ignored).
    fn from_str(s: &str) -> Result<MessageId, ParseMessageIdError> {
        from_hex(s.trim()).map(MessageId).ok_or(ParseMessageIdError)
    }
}

impl Serialize for MessageId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        byte_array::serialize(&self.0, s)
    }
}

impl<'de> Deserialize<'de> for MessageId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<MessageId, D::Error> {
        byte_array::deserialize(d).map(MessageId)
    }
}

/// The plaintext of an envelope.
///
/// Receipts are tiny sealed messages from a recipient back to a sender, so the
/// sender can show "delivered" for messages that went through relays (a direct
/// session acknowledges at the transport level) and "read".
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum Content {
    /// A chat message.
    Text {
        /// The text, at most [`MAX_TEXT_BYTES`] bytes of UTF-8.
        text: String,
        /// The message this one answers, if any.
        reply_to: Option<MessageId>,
        /// The name the sender holds, so that a recipient who does not know
        /// them yet can show it. Only a claim: the recipient shows it after
        /// the network's name record confirms it belongs to the sender's key.
        /// Inside the ciphertext, so relays do not learn it.
        sender_name: Option<String>,
    },
    /// The recipient has received (and stored) these messages.
    Delivered {
        /// 1 to [`MAX_RECEIPT_IDS`] ids.
        ids: Vec<MessageId>,
    },
    /// The recipient has read these messages.
    Read {
        /// 1 to [`MAX_RECEIPT_IDS`] ids.
        ids: Vec<MessageId>,
    },
}

/// Why a content is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContentError {
    /// The text is longer than [`MAX_TEXT_BYTES`].
    #[error("message text is {0} bytes, the most is {MAX_TEXT_BYTES}")]
    TextTooLong(usize),
    /// A receipt lists no ids.
    #[error("receipt lists no message ids")]
    NoIds,
    /// A receipt lists more than [`MAX_RECEIPT_IDS`] ids.
    #[error("receipt lists {0} message ids, the most is {MAX_RECEIPT_IDS}")]
    TooManyIds(usize),
    /// The decrypted bytes are not a content.
    #[error("decrypted content is malformed: {0}")]
    Malformed(&'static str),
}

impl Content {
    /// A text message that answers nothing.
    pub fn text(text: impl Into<String>) -> Content {
        Content::Text {
            text: text.into(),
            reply_to: None,
            sender_name: None,
        }
    }

    /// A text message that answers nothing, signed with the sender's name.
    pub fn text_from(text: impl Into<String>, sender_name: &Username) -> Content {
        Content::Text {
            text: text.into(),
            reply_to: None,
            sender_name: Some(sender_name.as_str().to_string()),
        }
    }

    /// Checks the size limits.
    pub fn validate(&self) -> Result<(), ContentError> {
        match self {
            Content::Text { text, .. } if text.len() > MAX_TEXT_BYTES => {
                Err(ContentError::TextTooLong(text.len()))
            }
            Content::Text {
                sender_name: Some(n),
                ..
            } if Username::new(n).is_err() => Err(ContentError::Malformed("invalid sender name")),
            Content::Text { .. } => Ok(()),
            Content::Delivered { ids } | Content::Read { ids } => match ids.len() {
                0 => Err(ContentError::NoIds),
                n if n > MAX_RECEIPT_IDS => Err(ContentError::TooManyIds(n)),
                _ => Ok(()),
            },
        }
    }

    /// The postcard encoding (what gets encrypted).
    pub fn to_bytes(&self) -> Vec<u8> {
        wire::encode(self)
    }

    /// Decodes and validates a content that spans all of `bytes`.
    pub fn from_bytes(bytes: &[u8]) -> Result<Content, ContentError> {
        let content: Content = wire::decode_exact(bytes).map_err(|e| match e {
            wire::StrictError::Malformed(why) => ContentError::Malformed(why),
            wire::StrictError::Trailing(_) => ContentError::Malformed("trailing bytes"),
        })?;
        content.validate()?;
        Ok(content)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_limits() {
        let c = Content::Text {
            text: "héllo".into(),
            reply_to: Some(MessageId([3; 16])),
            sender_name: Some("alice".into()),
        };
        assert_eq!(Content::from_bytes(&c.to_bytes()), Ok(c));
        // A sender name that no one could hold is refused.
        let bad = Content::Text {
            text: "hi".into(),
            reply_to: None,
            sender_name: Some("Not A Name!".into()),
        };
        assert!(matches!(
            Content::from_bytes(&bad.to_bytes()),
            Err(ContentError::Malformed(_))
        ));
        let r = Content::Read {
            ids: vec![MessageId([1; 16]); MAX_RECEIPT_IDS],
        };
        assert_eq!(Content::from_bytes(&r.to_bytes()), Ok(r));
        assert_eq!(
            Content::Delivered { ids: vec![] }.validate(),
            Err(ContentError::NoIds)
        );
        let many = Content::Read {
            ids: vec![MessageId::default(); MAX_RECEIPT_IDS + 1],
        };
        assert_eq!(many.validate(), Err(ContentError::TooManyIds(61)));
        // An oversized text is refused on decoding too.
        let long = Content::text("x".repeat(MAX_TEXT_BYTES + 1));
        assert_eq!(
            Content::from_bytes(&long.to_bytes()),
            Err(ContentError::TextTooLong(MAX_TEXT_BYTES + 1))
        );
        let mut bytes = Content::text("hi").to_bytes();
        bytes.push(0);
        assert!(matches!(
            Content::from_bytes(&bytes),
            Err(ContentError::Malformed(_))
        ));
        assert!(Content::from_bytes(&[9]).is_err());
        assert!(Content::from_bytes(&[0, 2, 0xff, 0xfe, 0]).is_err());
    }

    #[test]
    fn message_id_text_forms() {
        let id = MessageId([0xab; 16]);
        assert_eq!(id.to_string().parse::<MessageId>(), Ok(id));
        assert_eq!("xyz".parse::<MessageId>(), Err(ParseMessageIdError));
    }
}
