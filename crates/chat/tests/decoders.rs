//! Every decoder returns an error, never panics, on arbitrary bytes, and what it
//! accepts re-encodes to the same value.

use peerchat_chat::{Content, DeliveryAck, FetchAuth, NameClaim, Presence, UserKey};
use peerchat_kad::Value;
use peerchat_kad::bep44::MutableItem;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn records_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1300)) {
        if let Ok(c) = Content::from_bytes(&bytes) {
            prop_assert_eq!(Content::from_bytes(&c.to_bytes()), Ok(c));
        }
        if let Ok(claim) = NameClaim::from_bytes(&bytes) {
            let _ = claim.verify();
            prop_assert_eq!(NameClaim::from_bytes(&claim.to_bytes()), Ok(claim));
        }
        if let Ok(ack) = DeliveryAck::from_bytes(&bytes) {
            let _ = ack.verify();
            prop_assert_eq!(DeliveryAck::from_bytes(&ack.to_bytes()), Ok(ack));
        }
        if let Ok(auth) = FetchAuth::from_bytes(&bytes) {
            let _ = auth.verify(&peerchat_kad::NodeId([0; 20]), 0);
            prop_assert_eq!(FetchAuth::from_bytes(&auth.to_bytes()), Ok(auth));
        }
        if let Ok(p) = Value::decode(&bytes).map_err(|_| ()).and_then(|v| {
            Presence::from_value(&v).map_err(|_| ())
        }) {
            prop_assert_eq!(Presence::from_value(&p.to_value().unwrap()), Ok(p));
        }
    }

    #[test]
    fn presence_items_from_strangers_never_panic(
        key in any::<[u8; 32]>(),
        salt in proptest::collection::vec(any::<u8>(), 0..80),
        seq in any::<i64>(),
        body in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let value = Value::decode(&body).unwrap_or(Value::Bytes(body));
        let item = MutableItem { key, salt, seq, value, sig: [7; 64] };
        prop_assert!(Presence::from_item(&item, &UserKey(key)).is_err());
    }
}
