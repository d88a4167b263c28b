//! The signed records of `peerchat-chat` (strict postcard through `wire.rs`):
//! message content, name claims, delivery acks, fetch authorizations, presence
//! values, and the hex JSON form of keys. Nothing may panic; whatever decodes
//! survives an encode/decode round trip unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use peerchat_chat::{
    Content, DeliveryAck, FetchAuth, NameClaim, Presence, UserKey, accept_claim, validate_name,
};
use peerchat_kad::Value;

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = Content::from_bytes(data) {
        assert_eq!(Content::from_bytes(&c.to_bytes()).as_ref(), Ok(&c));
    }
    if let Ok(claim) = NameClaim::from_bytes(data) {
        assert_eq!(
            NameClaim::from_bytes(&claim.to_bytes()).as_ref(),
            Ok(&claim)
        );
        let _ = claim.verify();
        let _ = accept_claim(Some(&claim), &claim);
        let _ = accept_claim(None, &claim);
    }
    if let Ok(ack) = DeliveryAck::from_bytes(data) {
        assert_eq!(DeliveryAck::from_bytes(&ack.to_bytes()).as_ref(), Ok(&ack));
        let _ = ack.verify();
    }
    if let Ok(auth) = FetchAuth::from_bytes(data) {
        assert_eq!(FetchAuth::from_bytes(&auth.to_bytes()).as_ref(), Ok(&auth));
        let _ = auth.verify(&auth.relay, auth.timestamp_ms);
    }
    if let Ok(v) = Value::decode(data)
        && let Ok(p) = Presence::from_value(&v)
    {
        let again = p.to_value().expect("a decoded presence encodes");
        assert_eq!(Presence::from_value(&again).as_ref(), Ok(&p));
    }
    if let Ok(k) = serde_json::from_slice::<UserKey>(data) {
        let json = serde_json::to_vec(&k).expect("a key encodes as json");
        assert_eq!(serde_json::from_slice::<UserKey>(&json).ok(), Some(k));
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = validate_name(s);
    }
});
