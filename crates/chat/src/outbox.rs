//! The delivery state of a sent message, as the sender sees it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// How far a sent message has got. States only move forward:
/// `Queued < Relayed < Delivered < Read`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryState {
    /// In the sender's outbox, not yet stored anywhere else.
    Queued,
    /// Stored by relays at the recipient's mailbox.
    Relayed,
    /// Acknowledged by the recipient's node.
    Delivered,
    /// Read by the recipient.
    Read,
}

/// Why a string is not a delivery state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown delivery state {0:?}: expected queued, relayed, delivered or read")]
pub struct ParseStateError(pub String);

impl DeliveryState {
    /// Every state, in order.
    pub const ALL: [DeliveryState; 4] = [
        DeliveryState::Queued,
        DeliveryState::Relayed,
        DeliveryState::Delivered,
        DeliveryState::Read,
    ];

    /// The lowercase name shown to users and stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Queued => "queued",
            DeliveryState::Relayed => "relayed",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Read => "read",
        }
    }

    /// Moves to `to` if it is further along; returns whether the state changed.
    /// (A late "relayed" after "delivered" changes nothing.)
    pub fn advance(&mut self, to: DeliveryState) -> bool {
        if to > *self {
            *self = to;
            true
        } else {
            false
        }
    }
}

impl fmt::Display for DeliveryState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DeliveryState {
    type Err = ParseStateError;

    fn from_str(s: &str) -> Result<DeliveryState, ParseStateError> {
        DeliveryState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| ParseStateError(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_names_and_advance() {
        for w in DeliveryState::ALL.windows(2) {
            assert!(w[0] < w[1]);
        }
        for st in DeliveryState::ALL {
            assert_eq!(st.as_str().parse::<DeliveryState>(), Ok(st));
            assert_eq!(st.to_string(), st.as_str());
        }
        assert!("sent".parse::<DeliveryState>().is_err());
        let mut s = DeliveryState::Queued;
        assert!(s.advance(DeliveryState::Delivered));
        assert!(!s.advance(DeliveryState::Relayed));
        assert_eq!(s, DeliveryState::Delivered);
        assert!(s.advance(DeliveryState::Read));
        assert!(!s.advance(DeliveryState::Read));
    }
}
