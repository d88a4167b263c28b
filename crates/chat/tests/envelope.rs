//! Envelopes: sealing, opening, tampering, relays' checks, the decoder and the size
//! budget.

use peerchat_chat::{
    Content, ContentError, Envelope, EnvelopeError, HEADER_LEN, Identity, KeyError, MAX_ENVELOPE,
    MAX_RECEIPT_IDS, MAX_TEXT_BYTES, MessageId, UserKey,
};
use proptest::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

fn rng(seed: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(seed)
}

fn alice_bob_carol() -> (Identity, Identity, Identity) {
    let mut r = rng(42);
    (
        Identity::generate(&mut r),
        Identity::generate(&mut r),
        Identity::generate(&mut r),
    )
}

fn sealed(text: &str) -> (Envelope, Identity, Identity, Identity) {
    let (a, b, c) = alice_bob_carol();
    let env = Envelope::seal(&a, &b.public(), &Content::text(text), 1_000, &mut rng(1)).unwrap();
    (env, a, b, c)
}

#[test]
fn seal_open_round_trip() {
    let (a, b, _) = alice_bob_carol();
    let mut r = rng(9);
    let contents = [
        Content::text("hello bob"),
        Content::text(""),
        Content::Text {
            text: "re: ✓".into(),
            reply_to: Some(MessageId([5; 16])),
            sender_name: Some("alice".into()),
        },
        Content::Delivered {
            ids: vec![MessageId([1; 16])],
        },
        Content::Read {
            ids: vec![MessageId([2; 16]); MAX_RECEIPT_IDS],
        },
    ];
    for content in contents {
        let env = Envelope::seal(&a, &b.public(), &content, 77, &mut r).unwrap();
        assert_eq!(env.sender, a.public());
        assert_eq!(env.recipient, b.public());
        assert_eq!(env.timestamp_ms, 77);
        env.verify().unwrap();
        assert_eq!(env.open(&b), Ok(content.clone()));
        let decoded = Envelope::from_bytes(&env.to_bytes()).unwrap();
        assert_eq!(decoded, env);
        assert_eq!(decoded.open(&b), Ok(content));
    }
}

#[test]
fn seal_is_deterministic_given_the_rng_and_fresh_per_message() {
    let (a, b, _) = alice_bob_carol();
    let c = Content::text("same");
    let e1 = Envelope::seal(&a, &b.public(), &c, 5, &mut rng(3)).unwrap();
    let e2 = Envelope::seal(&a, &b.public(), &c, 5, &mut rng(3)).unwrap();
    assert_eq!(e1, e2);
    let mut r = rng(3);
    let x = Envelope::seal(&a, &b.public(), &c, 5, &mut r).unwrap();
    let y = Envelope::seal(&a, &b.public(), &c, 5, &mut r).unwrap();
    assert_ne!(x.id, y.id);
    assert_ne!(x.ephemeral, y.ephemeral);
    assert_ne!(x.ciphertext, y.ciphertext);
}

#[test]
fn ciphertext_hides_the_text() {
    let (env, ..) = sealed("attack at dawn");
    let bytes = env.to_bytes();
    assert!(!bytes.windows(6).any(|w| w == b"attack"));
}

#[test]
fn wrong_recipient_cannot_open() {
    let (env, a, _b, c) = sealed("for bob only");
    assert_eq!(env.open(&c), Err(EnvelopeError::WrongRecipient));
    assert_eq!(env.open(&a), Err(EnvelopeError::WrongRecipient));
    // Readdressing to carol breaks the signature; carol cannot decrypt either.
    let mut readdressed = env.clone();
    readdressed.recipient = c.public();
    assert_eq!(readdressed.verify(), Err(EnvelopeError::BadSignature));
}

#[test]
fn resigned_by_another_sender_does_not_decrypt() {
    // Mallory (carol) takes alice's envelope, puts her own key as the sender and signs
    // it properly. Its id is bound to alice, so relays refuse it; and bob could not
    // decrypt it anyway: the header (with the sender) is the AEAD's associated data.
    use ed25519_dalek::{Signer, SigningKey};
    let (env, _a, b, c) = sealed("from alice");
    let mut stolen = Envelope {
        sender: c.public(),
        ..env
    };
    let mut signed = b"peerchat-envelope-v2".to_vec();
    signed.extend_from_slice(&stolen.header());
    signed.extend_from_slice(&stolen.ciphertext);
    stolen.signature = SigningKey::from_bytes(&c.secret_bytes())
        .sign(&signed)
        .to_bytes();
    assert_eq!(stolen.verify(), Err(EnvelopeError::UnboundId));
    assert_eq!(stolen.open(&b), Err(EnvelopeError::UnboundId));
}

#[test]
fn another_sender_cannot_take_a_message_id() {
    // A relay holding alice's envelope sees its id, and seals a message of its own
    // to bob under that id, properly signed, hoping bob keeps it and then drops
    // alice's real message as a duplicate. The id is bound to the sender and the
    // ephemeral key: the forgery is refused before it is stored.
    use ed25519_dalek::{Signer, SigningKey};
    let (real, _a, b, c) = sealed("from alice");
    let mut forged = Envelope::seal(
        &c,
        &b.public(),
        &Content::text("gotcha"),
        1_000,
        &mut rng(7),
    )
    .unwrap();
    assert_eq!(forged.verify(), Ok(()));
    forged.id = real.id;
    let mut signed = b"peerchat-envelope-v2".to_vec();
    signed.extend_from_slice(&forged.header());
    signed.extend_from_slice(&forged.ciphertext);
    forged.signature = SigningKey::from_bytes(&c.secret_bytes())
        .sign(&signed)
        .to_bytes();
    assert_eq!(forged.verify(), Err(EnvelopeError::UnboundId));
    assert_eq!(forged.open(&b), Err(EnvelopeError::UnboundId));
    // Each genuine envelope carries its own bound id.
    assert_eq!(
        real.id,
        peerchat_chat::envelope::bound_id(&real.sender, &real.ephemeral, &real.nonce)
    );
    assert_eq!(real.open(&b), Ok(Content::text("from alice")));
}

#[test]
fn relay_verifies_without_any_secret() {
    // A relay only has the bytes.
    let (env, ..) = sealed("relayed");
    let on_relay = Envelope::from_bytes(&env.to_bytes()).unwrap();
    assert_eq!(on_relay.verify(), Ok(()));
    let mut bad = on_relay;
    bad.timestamp_ms += 1;
    assert_eq!(bad.verify(), Err(EnvelopeError::BadSignature));
}

#[test]
fn invalid_keys_are_refused() {
    let (a, b, _) = alice_bob_carol();
    let mut not_a_point = [0u8; 32];
    not_a_point[0] = 2;
    assert_eq!(
        Envelope::seal(
            &a,
            &UserKey(not_a_point),
            &Content::text("x"),
            1,
            &mut rng(1)
        ),
        Err(EnvelopeError::BadRecipient(KeyError::InvalidKey))
    );
    let mut small_order = [0u8; 32];
    small_order[0] = 1;
    assert_eq!(
        Envelope::seal(
            &a,
            &UserKey(small_order),
            &Content::text("x"),
            1,
            &mut rng(1)
        ),
        Err(EnvelopeError::BadRecipient(KeyError::WeakKey))
    );
    let (mut env, ..) = sealed("x");
    env.sender = UserKey(not_a_point);
    assert_eq!(
        env.verify(),
        Err(EnvelopeError::BadSender(KeyError::InvalidKey))
    );
    let _ = b;
}

#[test]
fn content_limits_are_enforced_when_sealing() {
    let (a, b, _) = alice_bob_carol();
    let long = Content::text("x".repeat(MAX_TEXT_BYTES + 1));
    assert_eq!(
        Envelope::seal(&a, &b.public(), &long, 1, &mut rng(1)),
        Err(EnvelopeError::Content(ContentError::TextTooLong(
            MAX_TEXT_BYTES + 1
        )))
    );
    let none = Content::Read { ids: vec![] };
    assert_eq!(
        Envelope::seal(&a, &b.public(), &none, 1, &mut rng(1)),
        Err(EnvelopeError::Content(ContentError::NoIds))
    );
}

#[test]
fn largest_envelopes_fit_the_cap() {
    let (a, b, _) = alice_bob_carol();
    let mut r = rng(2);
    // Worst cases: longest text with a reply-to and the largest timestamp; a text of
    // multi-byte characters; a full receipt.
    let cases = [
        Content::Text {
            text: "x".repeat(MAX_TEXT_BYTES),
            reply_to: Some(MessageId([0xff; 16])),
            sender_name: Some("a".repeat(32)),
        },
        Content::Text {
            text: "€".repeat(MAX_TEXT_BYTES / 3),
            reply_to: Some(MessageId([0xff; 16])),
            sender_name: Some("z".repeat(32)),
        },
        Content::Read {
            ids: vec![MessageId([0xff; 16]); MAX_RECEIPT_IDS],
        },
        Content::Delivered {
            ids: vec![MessageId([0xff; 16]); MAX_RECEIPT_IDS],
        },
    ];
    for content in cases {
        let env = Envelope::seal(&a, &b.public(), &content, u64::MAX, &mut r).unwrap();
        let len = env.to_bytes().len();
        assert!(len <= MAX_ENVELOPE, "{len} > {MAX_ENVELOPE}");
        assert_eq!(env.encoded_len(), len);
        assert_eq!(
            Envelope::from_bytes(&env.to_bytes()).unwrap().open(&b),
            Ok(content)
        );
    }
}

#[test]
fn decoder_refuses_bad_framing() {
    let (env, ..) = sealed("x");
    let bytes = env.to_bytes();
    assert_eq!(Envelope::from_bytes(&[]), Err(EnvelopeError::Empty));
    for version in [1, 3] {
        let mut other = bytes.clone();
        other[0] = version;
        assert_eq!(
            Envelope::from_bytes(&other),
            Err(EnvelopeError::UnknownVersion(version))
        );
    }
    let mut trailing = bytes.clone();
    trailing.push(0);
    assert_eq!(
        Envelope::from_bytes(&trailing),
        Err(EnvelopeError::TrailingBytes(1))
    );
    assert!(matches!(
        Envelope::from_bytes(&bytes[..bytes.len() - 1]),
        Err(EnvelopeError::Malformed(_))
    ));
    assert_eq!(
        Envelope::from_bytes(&vec![1u8; MAX_ENVELOPE + 1]),
        Err(EnvelopeError::TooLarge(MAX_ENVELOPE + 1))
    );
}

#[test]
fn error_messages_are_lowercase() {
    let errors = [
        EnvelopeError::Empty.to_string(),
        EnvelopeError::BadSignature.to_string(),
        EnvelopeError::TooLarge(5000).to_string(),
        EnvelopeError::WrongRecipient.to_string(),
    ];
    for e in errors {
        assert!(e.starts_with(|c: char| c.is_lowercase()), "{e}");
    }
}

/// Offsets of the encoded envelope's parts: byte 0 is the version, then postcard:
/// id 16, sender 32, recipient 32, timestamp varint, ephemeral 32, nonce 16,
/// ciphertext length varint and bytes, signature 64.
fn flip_is_detected(env: &Envelope, b: &Identity, pos: usize, bit: u8) -> bool {
    let mut bytes = env.to_bytes();
    bytes[pos] ^= 1 << bit;
    match Envelope::from_bytes(&bytes) {
        Err(_) => true,
        Ok(changed) => changed != *env && changed.verify().is_err() && changed.open(b).is_err(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_bit_flip_in_the_encoding_is_detected(pos in 1usize..10_000, bit in 0u8..8) {
        let (env, _a, b, _c) = sealed("tamper with me");
        let pos = pos % env.to_bytes().len();
        prop_assert!(flip_is_detected(&env, &b, pos, bit));
    }

    #[test]
    fn tampering_any_field_fails(
        field in 0usize..8,
        index in 0usize..1000,
        bit in 0u8..8,
    ) {
        let (env, _a, b, _c) = sealed("tamper with me");
        let mut t = env.clone();
        let flip = |bytes: &mut [u8]| {
            let i = index % bytes.len();
            bytes[i] ^= 1 << bit;
        };
        match field {
            0 => flip(&mut t.id.0),
            1 => flip(&mut t.sender.0),
            2 => flip(&mut t.recipient.0),
            3 => t.timestamp_ms ^= 1 << (index % 64),
            4 => flip(&mut t.ephemeral),
            5 => flip(&mut t.ciphertext),
            6 => flip(&mut t.nonce),
            _ => flip(&mut t.signature),
        }
        prop_assert!(t.verify().is_err());
        prop_assert!(t.open(&b).is_err());
        // Truncating or extending the ciphertext also fails.
        let mut short = env.clone();
        short.ciphertext.truncate(index % env.ciphertext.len());
        prop_assert!(short.open(&b).is_err());
        let mut long = env;
        long.ciphertext.push(bit);
        prop_assert!(long.open(&b).is_err());
    }

    #[test]
    fn decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..1400)) {
        let (_, _, b) = alice_bob_carol();
        if let Ok(env) = Envelope::from_bytes(&bytes) {
            let _ = env.verify();
            let _ = env.open(&b);
            prop_assert_eq!(Envelope::from_bytes(&env.to_bytes()), Ok(env));
        }
    }

    #[test]
    fn decoder_never_panics_on_near_valid_input(
        edits in proptest::collection::vec((any::<u16>(), any::<u8>()), 1..8),
        cut in any::<u16>(),
    ) {
        let (env, _a, b, _c) = sealed("near valid");
        let mut bytes = env.to_bytes();
        for (pos, val) in edits {
            let i = usize::from(pos) % bytes.len();
            bytes[i] = val;
        }
        bytes.truncate(usize::from(cut) % (bytes.len() + 1));
        if let Ok(env) = Envelope::from_bytes(&bytes) {
            let _ = env.open(&b);
        }
    }

    #[test]
    fn round_trip_any_text(text in "\\PC{0,300}", ts in any::<u64>(), seed in any::<u64>()) {
        let (a, b, _) = alice_bob_carol();
        let content = Content::text(text);
        let env = Envelope::seal(&a, &b.public(), &content, ts, &mut rng(seed)).unwrap();
        prop_assert_eq!(Envelope::from_bytes(&env.to_bytes()).unwrap().open(&b), Ok(content));
    }
}

#[test]
fn header_layout() {
    let (env, ..) = sealed("h");
    let h = env.header();
    assert_eq!(h.len(), HEADER_LEN);
    assert_eq!(&h[..16], &env.id.0);
    assert_eq!(&h[16..48], &env.sender.0);
    assert_eq!(&h[48..80], &env.recipient.0);
    assert_eq!(&h[80..88], &env.timestamp_ms.to_be_bytes());
    assert_eq!(&h[88..120], &env.ephemeral);
    assert_eq!(&h[120..], &env.nonce);
}

#[test]
fn a_kept_key_exchange_seals_each_message_under_its_own_id_and_key() {
    use peerchat_chat::{OpenCache, Sealer, SealingKey};
    let mut r = rng(11);
    let a = Identity::generate(&mut r);
    let b = Identity::generate(&mut r);
    let mut sealer = Sealer::new(SealingKey::new(b.public()).unwrap(), 1_000, &mut r).unwrap();
    let cache = OpenCache::default();
    let mut ids = std::collections::HashSet::new();
    for i in 0..20 {
        let mut s = sealer.claim(1_000 + i).expect("young and little used");
        let env = s
            .seal(&a, &Content::text(format!("m{i}")), 1_000 + i, &mut r)
            .unwrap();
        // One ephemeral key for the burst, a fresh id for each message.
        assert_eq!(
            env.ephemeral,
            sealer
                .claim(1_000)
                .unwrap()
                .seal(&a, &Content::text("x"), 1, &mut r)
                .unwrap()
                .ephemeral
        );
        assert!(ids.insert(env.id));
        let wire = Envelope::from_bytes(&env.to_bytes()).unwrap();
        assert_eq!(wire.verify(), Ok(()));
        assert_eq!(
            wire.open_cached(&b, &cache),
            Ok(Content::text(format!("m{i}")))
        );
        assert_eq!(wire.open(&b), Ok(Content::text(format!("m{i}"))));
    }
    assert_eq!(cache.len(), 1, "one exchange for the whole burst");
    // Swapping two messages' ciphertexts under the same key exchange fails: each
    // message's key depends on its own id.
    let mut s = sealer.claim(2_000).unwrap();
    let x = s.seal(&a, &Content::text("x"), 2_000, &mut r).unwrap();
    let y = s.seal(&a, &Content::text("y"), 2_000, &mut r).unwrap();
    let mut swapped = x.clone();
    swapped.ciphertext = y.ciphertext.clone();
    assert!(swapped.open_cached(&b, &cache).is_err());
    // A cached exchange does not let another identity open it.
    let c = Identity::generate(&mut r);
    assert_eq!(
        x.open_cached(&c, &cache),
        Err(EnvelopeError::WrongRecipient)
    );
    // The key is given up after its age or its uses.
    assert!(sealer.claim(1_000 + Sealer::MAX_AGE_MS).is_none());
    let mut young = Sealer::new(SealingKey::new(b.public()).unwrap(), 0, &mut r).unwrap();
    for _ in 0..Sealer::MAX_USES {
        assert!(young.claim(1).is_some());
    }
    assert!(young.claim(1).is_none());
}
