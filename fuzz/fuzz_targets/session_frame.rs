//! Noise session frames (`crates/node/src/session.rs`): the responder's reading of
//! a first handshake message, the 2-byte length framing, and transport messages.
//!
//! The first byte picks a mode. Mode 0: the rest is a first handshake message from
//! a stranger. Mode 1: the rest is a byte stream on an established session (split
//! into frames and decrypted; nothing forged may decrypt). Mode 2: the rest is the
//! plaintext of a frame, sent by the genuine peer, then decoded as a chat frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use peerchat_node::chat::fuzz::decode_session_frame;
use peerchat_node::session::{SessionKeys, open_frame, read_hello, split_frame, x25519_of};

const PATTERN: &str = "Noise_IK_25519_ChaChaPoly_SHA256";
const PROLOGUE: &[u8] = b"peerchat-session-v1";

fn keys(seed: u8) -> SessionKeys {
    let sk = ed25519_signing(seed);
    SessionKeys {
        x25519_secret: sk.0,
        identity: sk.1,
    }
}

/// An identity from a seed: (X25519 secret, ed25519 public key).
fn ed25519_signing(seed: u8) -> ([u8; 32], [u8; 32]) {
    let id = peerchat_chat::Identity::from_secret_bytes([seed; 32]);
    (id.x25519_secret(), id.public().0)
}

/// An established pair: (initiator, responder) transport states.
fn pair() -> (snow::TransportState, snow::TransportState) {
    let (a, b) = (keys(1), keys(2));
    let remote = x25519_of(&b.identity).expect("fixture key is valid");
    let mut init = snow::Builder::new(PATTERN.parse().expect("pattern"))
        .local_private_key(&a.x25519_secret)
        .and_then(|b| b.prologue(PROLOGUE))
        .and_then(|b| b.remote_public_key(&remote))
        .and_then(|b| b.build_initiator())
        .expect("initiator");
    let mut buf = vec![0u8; 65535];
    let n = init.write_message(&a.identity, &mut buf).expect("hello");
    let (mut resp, peer) = read_hello(&b, &buf[..n]).expect("genuine hello is read");
    assert_eq!(peer, a.identity);
    let n = resp.write_message(&[], &mut buf).expect("answer");
    let mut payload = vec![0u8; 65535];
    init.read_message(&buf[..n], &mut payload)
        .expect("read answer");
    (
        init.into_transport_mode().expect("initiator transport"),
        resp.into_transport_mode().expect("responder transport"),
    )
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => {
            if let Ok((_, peer)) = read_hello(&keys(2), rest) {
                // Only a sender holding the static key of `peer` can get here,
                // and the fuzzer holds none.
                panic!("a forged hello was accepted for {peer:?}");
            }
        }
        1 => {
            FORGED.with_borrow_mut(|pair_cell| {
                let (_, resp) = pair_cell.get_or_insert_with(pair);
                let mut stream = rest;
                while let Some((msg, tail)) = split_frame(stream) {
                    if open_frame(resp, msg).is_ok() {
                        panic!("a forged frame decrypted");
                    }
                    stream = tail;
                }
            });
        }
        _ => {
            // One established pair per process: genuine frames keep both ends'
            // nonces in step, so the handshakes need not be redone each time.
            GENUINE.with_borrow_mut(|pair_cell| {
                let (init, resp) = pair_cell.get_or_insert_with(pair);
                genuine_frame(init, resp, rest);
            });
        }
    }
});

thread_local! {
    /// The session forged frames are thrown at.
    static FORGED: std::cell::RefCell<Option<(snow::TransportState, snow::TransportState)>> =
        const { std::cell::RefCell::new(None) };
    /// The session genuine frames go through.
    static GENUINE: std::cell::RefCell<Option<(snow::TransportState, snow::TransportState)>> =
        const { std::cell::RefCell::new(None) };
}

/// Sends `rest` as a genuine frame from `init` to `resp`, then decodes it as a chat frame.
fn genuine_frame(init: &mut snow::TransportState, resp: &mut snow::TransportState, rest: &[u8]) {
    let mut buf = vec![0u8; 65535];
    let Ok(n) = init.write_message(rest, &mut buf) else {
        return;
    };
    let mut framed = (n as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&buf[..n]);
    let (msg, tail) = split_frame(&framed).expect("one whole frame");
    assert!(tail.is_empty());
    let plain = open_frame(resp, msg).expect("a genuine frame decrypts");
    assert_eq!(plain, rest);
    let _ = decode_session_frame(&plain);
}
