//! Envelopes from peers and relays: `Envelope::from_bytes`, `verify` and `open`.
//!
//! The first byte picks a mode. Mode 0 decodes the rest as an envelope: whatever
//! decodes re-encodes to the same bytes, and neither verifying nor opening panics.
//! Mode 1 tampers with a genuine sealed envelope (the rest is XORed over its
//! encoding, as a hostile relay would): it may only still open if nothing changed.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use peerchat_chat::{Content, Envelope, Identity};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::SeedableRng;

struct Fixture {
    recipient: Identity,
    genuine: Envelope,
    bytes: Vec<u8>,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let sender = Identity::from_secret_bytes([1; 32]);
    let recipient = Identity::from_secret_bytes([2; 32]);
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    let genuine = Envelope::seal(
        &sender,
        &recipient.public(),
        &Content::text("hello from the fuzzer"),
        1_700_000_000_000,
        &mut rng,
    )
    .expect("seal a fixture envelope");
    let bytes = genuine.to_bytes();
    Fixture {
        recipient,
        genuine,
        bytes,
    }
});

fuzz_target!(|data: &[u8]| {
    let f = &*FIXTURE;
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        if let Ok(env) = Envelope::from_bytes(rest) {
            assert_eq!(Envelope::from_bytes(&env.to_bytes()).as_ref(), Ok(&env));
            let _ = env.verify();
            let _ = env.open(&f.recipient);
        }
    } else {
        let mut bytes = f.bytes.clone();
        for (b, x) in bytes.iter_mut().zip(rest) {
            *b ^= x;
        }
        if let Ok(env) = Envelope::from_bytes(&bytes) {
            if env.open(&f.recipient).is_ok() {
                assert_eq!(env, f.genuine, "a tampered envelope opened");
            }
        }
    }
});
