//! Feeds arbitrary datagrams to the KRPC and bencode decoders. Neither may panic, and
//! whatever decodes must survive an encode/decode round trip unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use peerchat_kad::{Message, Value};

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = Value::decode(data) {
        let again = Value::decode(&v.encode()).expect("re-encoded value decodes");
        assert_eq!(again, v);
    }
    if let Ok(m) = Message::decode(data) {
        let again = Message::decode(&m.encode()).expect("re-encoded message decodes");
        assert_eq!(again, m);
    }
    let _ = Message::decode_tid(data);
});
