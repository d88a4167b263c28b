//! Hostile peers against the sans-IO chat logic: a relay flooded from one address,
//! forged name claims and presence records, replayed and tampered envelopes. Every
//! case ends in a named error or a counted drop, and what was stored stays stored.

use std::net::IpAddr;

use peerchat_chat::{
    ClaimError, Content, DeliveryAck, Envelope, EnvelopeError, Identity, NameClaim, Presence,
    PresenceError, RelayConfig, RelayError, RelayQueue, Stored, UserKey, Username, accept_claim,
    resolve_claims,
};
use peerchat_kad::NodeId;
use peerchat_kad::bep44::MutableItem;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

const NOW: u64 = 1_700_000_000_000;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn seal(rng: &mut ChaCha20Rng, from: &Identity, to: &UserKey, text: &str) -> Envelope {
    Envelope::seal(from, to, &Content::text(text), NOW, rng).unwrap()
}

#[test]
fn a_flood_from_one_address_hits_its_quota_and_honest_senders_still_get_through() {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let config = RelayConfig::default();
    let mut relay = RelayQueue::new(config.clone());
    let victim = Identity::generate(&mut rng);
    let attacker_ip = ip("203.0.113.66");

    // The attacker makes a fresh key for every 10 envelopes, so the per-sender quota
    // never stops it: the per-address quota must.
    let mut stored = 0;
    let mut refused = 0;
    let mut sender = Identity::generate(&mut rng);
    for i in 0..(config.max_per_ip + 200) {
        if i % 10 == 0 {
            sender = Identity::generate(&mut rng);
        }
        let env = seal(&mut rng, &sender, &victim.public(), "spam");
        match relay.store(env, attacker_ip, NOW) {
            Ok(Stored::New) => stored += 1,
            Err(RelayError::IpQuota(n)) => {
                assert_eq!(n, config.max_per_ip);
                refused += 1;
            }
            other => panic!("unexpected answer to the flood: {other:?}"),
        }
    }
    assert_eq!(stored, config.max_per_ip);
    assert_eq!(refused, 200);
    assert_eq!(relay.len(), config.max_per_ip);

    // An honest sender from elsewhere is stored, and its recipient fetches it.
    let honest = Identity::generate(&mut rng);
    let bob = Identity::generate(&mut rng);
    let env = seal(&mut rng, &honest, &bob.public(), "hello bob");
    assert_eq!(
        relay.store(env.clone(), ip("198.51.100.7"), NOW),
        Ok(Stored::New)
    );
    let fetched = relay.fetch(&bob.public(), usize::MAX);
    assert_eq!(fetched, vec![env.clone()]);
    assert_eq!(
        fetched[0].open(&bob).unwrap(),
        Content::text("hello bob"),
        "the honest message survives the flood intact"
    );
    // The victim's own mailbox is capped too, never above the attacker's share.
    assert_eq!(
        relay.count_for_recipient(&victim.public()),
        config.max_per_ip
    );
}

#[test]
fn a_flood_from_one_key_over_many_addresses_hits_the_sender_quota() {
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    let config = RelayConfig::default();
    let mut relay = RelayQueue::new(config.clone());
    let spammer = Identity::generate(&mut rng);
    let victim = Identity::generate(&mut rng);
    let mut refused = 0;
    for i in 0..(config.max_per_sender + 50) {
        let env = seal(&mut rng, &spammer, &victim.public(), "spam");
        let from = IpAddr::from([10, 0, (i / 256) as u8, (i % 256) as u8]);
        match relay.store(env, from, NOW) {
            Ok(Stored::New) => {}
            Err(RelayError::SenderQuota(n)) => {
                assert_eq!(n, config.max_per_sender);
                refused += 1;
            }
            other => panic!("unexpected answer to the flood: {other:?}"),
        }
    }
    assert_eq!(refused, 50);
    assert_eq!(relay.len(), config.max_per_sender);
}

#[test]
fn forged_name_claims_are_refused() {
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let alice = Identity::generate(&mut rng);
    let mallory = Identity::generate(&mut rng);
    let name = Username::new("alice").unwrap();
    let genuine = NameClaim::new(&alice, &name, 2, NOW);
    assert_eq!(accept_claim(None, &genuine), Ok(peerchat_chat::Accept::New));

    // Wrong signature: one bit flipped.
    let mut bad_sig = genuine.clone();
    bad_sig.signature[10] ^= 0x01;
    assert_eq!(accept_claim(None, &bad_sig), Err(ClaimError::BadSignature));
    assert_eq!(
        accept_claim(Some(&genuine), &bad_sig),
        Err(ClaimError::BadSignature)
    );

    // Wrong key: alice's signature under mallory's key (a stolen claim).
    let mut wrong_key = genuine.clone();
    wrong_key.key = mallory.public();
    assert_eq!(
        accept_claim(None, &wrong_key),
        Err(ClaimError::BadSignature)
    );

    // A valid claim by another key for a held name.
    let squat = NameClaim::new(&mallory, &name, 99, NOW + 1);
    assert!(matches!(
        accept_claim(Some(&genuine), &squat),
        Err(ClaimError::Taken { .. })
    ));

    // A replayed older claim of alice's own (lower, then equal seq).
    let older = NameClaim::new(&alice, &name, 1, NOW - 1000);
    assert_eq!(
        accept_claim(Some(&genuine), &older),
        Err(ClaimError::StaleSeq {
            stored: 2,
            offered: 1
        })
    );
    let same_seq = NameClaim::new(&alice, &name, 2, NOW + 5);
    assert!(matches!(
        accept_claim(Some(&genuine), &same_seq),
        Err(ClaimError::StaleSeq { .. })
    ));

    // A reader given forgeries and a lone squatter answer still picks alice's
    // newest claim when the majority holds it, and never a forgery.
    let newer = NameClaim::new(&alice, &name, 3, NOW + 10);
    let answers = [
        genuine.clone(),
        newer.clone(),
        bad_sig.clone(),
        wrong_key.clone(),
        bad_sig,
        wrong_key,
        squat,
    ];
    assert_eq!(resolve_claims(&name, &answers), Some(newer));
}

fn presence(node: u8, t: u64) -> Presence {
    Presence {
        dht: vec!["192.0.2.1:6881".parse().unwrap()],
        chat: vec!["192.0.2.1:6881".parse().unwrap()],
        node_id: NodeId([node; 20]),
        timestamp_ms: t,
    }
}

#[test]
fn forged_presence_records_are_refused() {
    let mut rng = ChaCha20Rng::seed_from_u64(4);
    let alice = Identity::generate(&mut rng);
    let mallory = Identity::generate(&mut rng);
    let item = presence(1, NOW).to_item(&alice, 5).unwrap();
    assert_eq!(
        Presence::from_item(&item, &alice.public()).unwrap(),
        presence(1, NOW)
    );

    // Wrong signature: the value changed after signing (a node pointing alice's
    // presence at itself).
    let mut redirected = item.clone();
    redirected.value = presence(9, NOW).to_value().unwrap();
    assert!(matches!(
        Presence::from_item(&redirected, &alice.public()),
        Err(PresenceError::Item(_))
    ));
    let mut flipped = item.clone();
    flipped.sig[0] ^= 0x80;
    assert!(matches!(
        Presence::from_item(&flipped, &alice.public()),
        Err(PresenceError::Item(_))
    ));

    // Wrong key: mallory's validly signed record offered as alice's.
    let mallorys = presence(9, NOW).to_item(&mallory, 6).unwrap();
    assert!(matches!(
        Presence::from_item(&mallorys, &alice.public()),
        Err(PresenceError::WrongKey { .. })
    ));
    // Wrong salt: a record of alice's made for something else.
    let other_salt = MutableItem::sign(
        &alice.secret_bytes(),
        b"not-presence".to_vec(),
        7,
        presence(1, NOW).to_value().unwrap(),
    )
    .unwrap();
    assert!(matches!(
        Presence::from_item(&other_salt, &alice.public()),
        Err(PresenceError::WrongSalt)
    ));
}

#[test]
fn a_replayed_envelope_is_kept_once_and_not_after_its_ack() {
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let (alice, bob) = (Identity::generate(&mut rng), Identity::generate(&mut rng));
    let env = seal(&mut rng, &alice, &bob.public(), "once");
    let mut relay = RelayQueue::new(RelayConfig::default());
    assert_eq!(
        relay.store(env.clone(), ip("198.51.100.1"), NOW),
        Ok(Stored::New)
    );
    // Replayed by anyone, from anywhere: one copy.
    for i in 2..20u8 {
        assert_eq!(
            relay.store(env.clone(), IpAddr::from([198, 51, 100, i]), NOW + 1),
            Ok(Stored::Duplicate)
        );
    }
    assert_eq!(relay.fetch(&bob.public(), usize::MAX).len(), 1);
    let ack = DeliveryAck::new(&bob, vec![env.id], NOW + 2).unwrap();
    assert_eq!(relay.ack(&ack, NOW + 2), Ok(1));
    // Replayed after delivery: refused as already acked, nothing stored.
    assert_eq!(
        relay.store(env, ip("198.51.100.99"), NOW + 3),
        Ok(Stored::AlreadyAcked)
    );
    assert_eq!(relay.len(), 0);
}

#[test]
fn a_relay_that_tampers_with_envelopes_is_detected() {
    let mut rng = ChaCha20Rng::seed_from_u64(6);
    let (alice, bob) = (Identity::generate(&mut rng), Identity::generate(&mut rng));
    let mallory = Identity::generate(&mut rng);
    let env = seal(&mut rng, &alice, &bob.public(), "the real text");
    let mut relay = RelayQueue::new(RelayConfig::default());
    let mut refused = 0;

    // Every single bit flip in the ciphertext, the sender key and the signature.
    let mut tampered = Vec::new();
    for i in 0..env.ciphertext.len() * 8 {
        let mut t = env.clone();
        t.ciphertext[i / 8] ^= 1 << (i % 8);
        tampered.push(t);
    }
    for i in 0..256 {
        let mut t = env.clone();
        t.sender.0[i / 8] ^= 1 << (i % 8);
        tampered.push(t);
        let mut t = env.clone();
        t.signature[i / 8] ^= 1 << (i % 8);
        tampered.push(t);
    }
    for i in 256..512 {
        let mut t = env.clone();
        t.signature[i / 8] ^= 1 << (i % 8);
        tampered.push(t);
    }
    for t in &tampered {
        assert!(t.open(&bob).is_err(), "a tampered envelope opened");
        assert!(t.verify().is_err());
        match relay.store(t.clone(), ip("198.51.100.1"), NOW) {
            Err(RelayError::Envelope(_)) => refused += 1,
            other => panic!("a relay accepted a tampered envelope: {other:?}"),
        }
    }
    assert_eq!(refused, tampered.len());
    assert_eq!(relay.len(), 0);

    // Re-signed by the relay under its own key: the signature verifies, but the
    // message id is bound to alice's key, so it is refused (and the content would
    // not decrypt either: the sender key is in the AEAD's associated data).
    let mut resigned = env.clone();
    resigned.sender = mallory.public();
    let mut signed = b"peerchat-envelope-v2".to_vec();
    signed.extend_from_slice(&resigned.header());
    signed.extend_from_slice(&resigned.ciphertext);
    let key = ed25519_dalek::SigningKey::from_bytes(&mallory.secret_bytes());
    resigned.signature = ed25519_dalek::Signer::sign(&key, &signed).to_bytes();
    assert_eq!(resigned.verify(), Err(EnvelopeError::UnboundId));
    assert_eq!(resigned.open(&bob), Err(EnvelopeError::UnboundId));
    // Truncated or padded bytes on the wire never decode.
    let bytes = env.to_bytes();
    for cut in [1, 20, bytes.len() - 1] {
        assert!(Envelope::from_bytes(&bytes[..cut]).is_err());
    }
    let mut padded = bytes.clone();
    padded.push(0);
    assert_eq!(
        Envelope::from_bytes(&padded),
        Err(EnvelopeError::TrailingBytes(1))
    );
    // And the untouched envelope still opens.
    assert_eq!(env.open(&bob).unwrap(), Content::text("the real text"));
}
