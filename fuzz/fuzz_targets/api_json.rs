//! The local API's JSON: request bodies as the server reads them (`POST
//! /api/messages`, `POST /api/contacts`, the `?limit=` query), and the answers and
//! events as `ApiClient` reads them. Nothing may panic; whatever decodes
//! re-encodes and decodes to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use peerchat_node::api::{AddContactRequest, LimitQuery, SendRequest};
use peerchat_node::chat::{
    ChatEvent, ContactView, ConversationView, MessageView, StatusView, WhoisView,
};
use serde::{Serialize, de::DeserializeOwned};

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(data: &[u8]) {
    if let Ok(v) = serde_json::from_slice::<T>(data) {
        let json = serde_json::to_vec(&v).expect("a decoded value encodes");
        let again: T = serde_json::from_slice(&json).expect("re-encoded json decodes");
        assert_eq!(again, v);
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<SendRequest>(data);
    let _ = serde_json::from_slice::<AddContactRequest>(data);
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = serde_urlencoded::from_str::<LimitQuery>(s);
    }
    round_trip::<ChatEvent>(data);
    round_trip::<StatusView>(data);
    round_trip::<Vec<MessageView>>(data);
    round_trip::<Vec<ContactView>>(data);
    round_trip::<Vec<ConversationView>>(data);
    round_trip::<WhoisView>(data);
});
