//! The chat node's wire: `pc_*` KRPC queries and answers (`crates/node/src/chat/wire.rs`
//! and the records they carry), and the plaintext frames of chat sessions
//! (`Frame`: envelope, ack, nack). Nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use peerchat_node::chat::fuzz::{decode_datagram, decode_session_frame};

fuzz_target!(|data: &[u8]| {
    let _ = decode_datagram(data);
    let _ = decode_session_frame(data);
});
