//! The relay queue: verification, dedup, quotas, TTL, acks, fetch, and a random
//! walk that checks its bookkeeping.

use std::collections::BTreeMap;
use std::net::IpAddr;

use peerchat_chat::{
    AuthError, Content, DeliveryAck, Envelope, EnvelopeError, FetchAuth, Identity, MAX_ENVELOPE,
    MessageId, RelayConfig, RelayError, RelayQueue, Stored, UserKey, ip_bucket, mailbox_target,
};
use peerchat_kad::NodeId;
use proptest::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

const NOW: u64 = 1_700_000_000_000;
const DAY: u64 = 24 * 60 * 60 * 1000;

struct World {
    rng: ChaCha20Rng,
    users: Vec<Identity>,
}

impl World {
    fn new(n: usize) -> World {
        let mut rng = ChaCha20Rng::seed_from_u64(99);
        let users = (0..n).map(|_| Identity::generate(&mut rng)).collect();
        World { rng, users }
    }

    fn env(&mut self, from: usize, to: usize, ts: u64) -> Envelope {
        let to = self.users[to].public();
        Envelope::seal(
            &self.users[from],
            &to,
            &Content::text("hi"),
            ts,
            &mut self.rng,
        )
        .unwrap()
    }

    fn key(&self, i: usize) -> UserKey {
        self.users[i].public()
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn stores_once_and_deduplicates() {
    let mut w = World::new(2);
    let mut q = RelayQueue::new(RelayConfig::default());
    let e = w.env(0, 1, NOW);
    assert_eq!(q.store(e.clone(), ip("10.0.0.1"), NOW), Ok(Stored::New));
    assert_eq!(
        q.store(e.clone(), ip("10.0.0.2"), NOW + 5),
        Ok(Stored::Duplicate)
    );
    assert_eq!(q.len(), 1);
    assert_eq!(q.total_bytes(), e.encoded_len());
    assert_eq!(q.count_from_sender(&w.key(0)), 1);
    assert_eq!(q.count_for_recipient(&w.key(1)), 1);
    assert!(q.contains(&e.recipient, &e.sender, &e.id));
    let entry = q.iter().next().unwrap();
    assert_eq!(entry.from, ip("10.0.0.1"));
    assert_eq!(entry.stored_at_ms, NOW);
    assert_eq!(entry.expires_at_ms, NOW + 14 * DAY);
    assert_eq!(entry.size(), e.encoded_len());
}

#[test]
fn unsigned_tampered_or_oversized_envelopes_are_refused() {
    let mut w = World::new(2);
    let mut q = RelayQueue::new(RelayConfig::default());
    let mut e = w.env(0, 1, NOW);
    e.ciphertext[0] ^= 1;
    assert_eq!(
        q.store(e, ip("10.0.0.1"), NOW),
        Err(RelayError::Envelope(EnvelopeError::BadSignature))
    );
    let mut big = w.env(0, 1, NOW);
    big.ciphertext = vec![0; MAX_ENVELOPE];
    assert!(matches!(
        q.store(big, ip("10.0.0.1"), NOW),
        Err(RelayError::Envelope(EnvelopeError::TooLarge(_)))
    ));
    assert!(q.is_empty());
    assert_eq!(q.total_bytes(), 0);
}

#[test]
fn same_id_from_another_sender_does_not_block_the_message() {
    // Mallory, who saw an id go by, cannot pre-empt it with an envelope of her own
    // under that id: ids are bound to their sender, so hers is refused (and copies
    // are keyed by (recipient, sender, id) besides).
    use ed25519_dalek::{Signer, SigningKey};
    let mut w = World::new(3);
    let mut q = RelayQueue::new(RelayConfig::default());
    let real = w.env(0, 1, NOW);
    let mut fake = w.env(2, 1, NOW);
    fake.id = real.id;
    let mut signed = b"peerchat-envelope-v2".to_vec();
    signed.extend_from_slice(&fake.header());
    signed.extend_from_slice(&fake.ciphertext);
    fake.signature = SigningKey::from_bytes(&w.users[2].secret_bytes())
        .sign(&signed)
        .to_bytes();
    assert_eq!(
        q.store(fake.clone(), ip("10.0.0.9"), NOW),
        Err(RelayError::Envelope(EnvelopeError::UnboundId))
    );
    assert_eq!(q.store(real.clone(), ip("10.0.0.1"), NOW), Ok(Stored::New));
    assert!(q.contains(&real.recipient, &real.sender, &real.id));
    assert!(!q.contains(&fake.recipient, &fake.sender, &fake.id));
    assert_eq!(q.fetch(&w.key(1), usize::MAX).len(), 1);
}

#[test]
fn per_sender_quota() {
    let mut w = World::new(3);
    let cfg = RelayConfig {
        max_per_sender: 3,
        ..RelayConfig::default()
    };
    let mut q = RelayQueue::new(cfg);
    for i in 0..3 {
        let e = w.env(0, 1, NOW + i);
        assert_eq!(q.store(e, ip("10.0.0.1"), NOW), Ok(Stored::New));
    }
    let e = w.env(0, 2, NOW);
    assert_eq!(
        q.store(e, ip("10.0.0.2"), NOW),
        Err(RelayError::SenderQuota(3))
    );
    // Other senders are not affected.
    let e = w.env(1, 2, NOW);
    assert_eq!(q.store(e, ip("10.0.0.1"), NOW), Ok(Stored::New));
    assert_eq!(q.len(), 4);
}

#[test]
fn per_ip_quota_counts_ipv6_per_64_and_mapped_ipv4_as_ipv4() {
    let mut w = World::new(6);
    let cfg = RelayConfig {
        max_per_ip: 2,
        ..RelayConfig::default()
    };
    let mut q = RelayQueue::new(cfg);
    assert_eq!(
        q.store(w.env(0, 5, NOW), ip("192.0.2.1"), NOW),
        Ok(Stored::New)
    );
    assert_eq!(
        q.store(w.env(1, 5, NOW), ip("::ffff:192.0.2.1"), NOW),
        Ok(Stored::New)
    );
    assert_eq!(
        q.store(w.env(2, 5, NOW), ip("192.0.2.1"), NOW),
        Err(RelayError::IpQuota(2))
    );
    assert_eq!(
        q.store(w.env(2, 5, NOW), ip("192.0.2.2"), NOW),
        Ok(Stored::New)
    );
    // Two hosts of one IPv6 /64 share a quota; another /64 does not.
    assert_eq!(
        q.store(w.env(3, 5, NOW), ip("2001:db8:0:1::1"), NOW),
        Ok(Stored::New)
    );
    assert_eq!(
        q.store(w.env(3, 5, NOW), ip("2001:db8:0:1::2"), NOW),
        Ok(Stored::New)
    );
    assert_eq!(
        q.store(w.env(4, 5, NOW), ip("2001:db8:0:1:ffff::9"), NOW),
        Err(RelayError::IpQuota(2))
    );
    assert_eq!(
        q.store(w.env(4, 5, NOW), ip("2001:db8:0:2::1"), NOW),
        Ok(Stored::New)
    );
    assert_eq!(ip_bucket(ip("2001:db8:0:1:ffff::9")), ip("2001:db8:0:1::"));
    assert_eq!(ip_bucket(ip("::ffff:1.2.3.4")), ip("1.2.3.4"));
}

#[test]
fn per_recipient_and_global_caps() {
    let mut w = World::new(4);
    let cfg = RelayConfig {
        max_per_recipient: 2,
        max_envelopes: 3,
        ..RelayConfig::default()
    };
    let mut q = RelayQueue::new(cfg);
    assert_eq!(
        q.store(w.env(0, 1, NOW), ip("10.0.0.1"), NOW),
        Ok(Stored::New)
    );
    assert_eq!(
        q.store(w.env(2, 1, NOW), ip("10.0.0.2"), NOW),
        Ok(Stored::New)
    );
    assert_eq!(
        q.store(w.env(3, 1, NOW), ip("10.0.0.3"), NOW),
        Err(RelayError::RecipientFull(2))
    );
    assert_eq!(
        q.store(w.env(0, 2, NOW), ip("10.0.0.1"), NOW),
        Ok(Stored::New)
    );
    assert!(matches!(
        q.store(w.env(0, 3, NOW), ip("10.0.0.1"), NOW),
        Err(RelayError::Full { envelopes: 3, .. })
    ));
    assert_eq!(q.len(), 3);

    // A byte cap.
    let e = w.env(0, 1, NOW);
    let cfg = RelayConfig {
        max_bytes: 2 * e.encoded_len(),
        ..RelayConfig::default()
    };
    let mut q = RelayQueue::new(cfg);
    assert_eq!(q.store(e, ip("10.0.0.1"), NOW), Ok(Stored::New));
    assert_eq!(
        q.store(w.env(0, 2, NOW), ip("10.0.0.1"), NOW),
        Ok(Stored::New)
    );
    assert!(matches!(
        q.store(w.env(0, 3, NOW), ip("10.0.0.1"), NOW),
        Err(RelayError::Full { envelopes: 2, .. })
    ));
}

#[test]
fn ttl_expiry_and_clock_checks() {
    let mut w = World::new(2);
    let cfg = RelayConfig::default();
    let ttl = cfg.ttl_ms;
    let skew = cfg.max_clock_skew_ms;
    let mut q = RelayQueue::new(cfg);
    let e = w.env(0, 1, NOW);
    q.store(e.clone(), ip("10.0.0.1"), NOW + DAY).unwrap();
    // The TTL counts from the envelope's timestamp, not from when it was stored.
    assert_eq!(q.expire(NOW + ttl - 1), 0);
    assert_eq!(q.expire(NOW + ttl), 1);
    assert!(q.is_empty());
    assert_eq!(q.count_from_sender(&w.key(0)), 0);
    assert_eq!(q.recipients().count(), 0);
    // Too old to store, or from the future.
    assert_eq!(
        q.store(e, ip("10.0.0.1"), NOW + ttl),
        Err(RelayError::Expired)
    );
    let future = w.env(0, 1, NOW + skew + 1);
    assert_eq!(
        q.store(future, ip("10.0.0.1"), NOW),
        Err(RelayError::FromFuture { ahead_ms: skew + 1 })
    );
    let slightly_ahead = w.env(0, 1, NOW + skew);
    assert_eq!(
        q.store(slightly_ahead, ip("10.0.0.1"), NOW),
        Ok(Stored::New)
    );
    // Timestamps at the end of time do not overflow.
    let end = w.env(0, 1, u64::MAX);
    assert_eq!(q.store(end, ip("10.0.0.1"), u64::MAX - 1), Ok(Stored::New));
    assert_eq!(q.expire(u64::MAX), 2);
}

#[test]
fn a_full_queue_drops_expired_copies_first() {
    let mut w = World::new(3);
    let cfg = RelayConfig {
        max_envelopes: 1,
        ..RelayConfig::default()
    };
    let ttl = cfg.ttl_ms;
    let mut q = RelayQueue::new(cfg);
    q.store(w.env(0, 1, NOW), ip("10.0.0.1"), NOW).unwrap();
    let later = NOW + ttl;
    assert_eq!(
        q.store(w.env(0, 2, later), ip("10.0.0.1"), later),
        Ok(Stored::New)
    );
    assert_eq!(q.len(), 1);
    assert_eq!(q.recipients().copied().collect::<Vec<_>>(), vec![w.key(2)]);
}

#[test]
fn ack_removes_copies_and_refuses_replays() {
    let mut w = World::new(3);
    let mut q = RelayQueue::new(RelayConfig::default());
    let e1 = w.env(0, 1, NOW);
    let e2 = w.env(2, 1, NOW + 1);
    let keep = w.env(0, 1, NOW + 2);
    let for_carol = w.env(0, 2, NOW);
    for e in [&e1, &e2, &keep, &for_carol] {
        q.store(e.clone(), ip("10.0.0.1"), NOW).unwrap();
    }
    let bob = &w.users[1];
    // Bob acks his two messages and, pointlessly, carol's: only his copies go.
    let ack = DeliveryAck::new(bob, vec![e1.id, e2.id, for_carol.id], NOW + 10).unwrap();
    assert_eq!(q.ack(&ack, NOW + 10), Ok(2));
    assert_eq!(q.len(), 2);
    assert!(q.contains(&keep.recipient, &keep.sender, &keep.id));
    assert!(q.contains(&for_carol.recipient, &for_carol.sender, &for_carol.id));
    assert_eq!(q.count_for_recipient(&w.key(1)), 1);
    assert_eq!(q.count_from_sender(&w.key(2)), 0);
    // The same ack again removes nothing; the acked envelope is not stored again.
    assert_eq!(q.ack(&ack, NOW + 20), Ok(0));
    assert!(q.is_acked(&w.key(1), &e1.id));
    assert_eq!(
        q.store(e1.clone(), ip("10.0.0.1"), NOW + 30),
        Ok(Stored::AlreadyAcked)
    );
    assert_eq!(q.len(), 2);
    // Tombstones outlive every copy (counted from the latest ack), then go.
    let ttl = q.config().ttl_ms;
    q.expire(NOW + 20 + ttl);
    assert!(q.is_acked(&w.key(1), &e1.id));
    q.expire(NOW + 20 + ttl + q.config().max_clock_skew_ms);
    assert!(!q.is_acked(&w.key(1), &e1.id));
}

#[test]
fn forged_acks_are_refused() {
    let mut w = World::new(3);
    let mut q = RelayQueue::new(RelayConfig::default());
    let e = w.env(0, 1, NOW);
    q.store(e.clone(), ip("10.0.0.1"), NOW).unwrap();
    // Carol signs an ack and claims to be bob.
    let mut forged = DeliveryAck::new(&w.users[2], vec![e.id], NOW).unwrap();
    forged.recipient = w.key(1);
    assert_eq!(
        q.ack(&forged, NOW),
        Err(RelayError::Ack(AuthError::BadSignature))
    );
    // Bob's real ack with an id added afterwards.
    let mut stretched = DeliveryAck::new(&w.users[1], vec![MessageId([0; 16])], NOW).unwrap();
    stretched.ids.push(e.id);
    assert_eq!(
        q.ack(&stretched, NOW),
        Err(RelayError::Ack(AuthError::BadSignature))
    );
    // Carol's own valid ack does not touch bob's mailbox.
    let carols = DeliveryAck::new(&w.users[2], vec![e.id], NOW).unwrap();
    assert_eq!(q.ack(&carols, NOW), Ok(0));
    assert!(!q.is_acked(&w.key(1), &e.id));
    // An ack from far in the future is refused.
    let skew = q.config().max_clock_skew_ms;
    let future = DeliveryAck::new(&w.users[1], vec![e.id], NOW + skew + 1).unwrap();
    assert_eq!(
        q.ack(&future, NOW),
        Err(RelayError::AckFromFuture { ahead_ms: skew + 1 })
    );
    assert_eq!(q.len(), 1);
}

#[test]
fn fetch_is_ordered_bounded_and_per_recipient() {
    let mut w = World::new(3);
    let mut q = RelayQueue::new(RelayConfig::default());
    let late = w.env(0, 1, NOW + 3);
    let early = w.env(2, 1, NOW + 1);
    let mid = w.env(0, 1, NOW + 2);
    let other = w.env(0, 2, NOW);
    for e in [&late, &early, &mid, &other] {
        q.store(e.clone(), ip("10.0.0.1"), NOW).unwrap();
    }
    let bob = w.key(1);
    assert_eq!(
        q.fetch(&bob, usize::MAX),
        vec![early.clone(), mid.clone(), late.clone()]
    );
    let two = early.encoded_len() + mid.encoded_len();
    assert_eq!(q.fetch(&bob, two), vec![early.clone(), mid]);
    assert_eq!(q.fetch(&bob, two - 1), vec![early]);
    assert_eq!(q.fetch(&bob, 0), Vec::<Envelope>::new());
    assert_eq!(
        q.fetch(&UserKey([9; 32]), usize::MAX),
        Vec::<Envelope>::new()
    );
    // Fetching removes nothing.
    assert_eq!(q.len(), 4);
    assert_eq!(q.mailbox(&bob).count(), 3);
}

#[test]
fn login_flow_fetch_auth_open_ack() {
    // Alice sends to offline bob through a relay; bob logs in, proves he owns the
    // mailbox, fetches, opens and acks.
    let mut w = World::new(2);
    let relay_id = NodeId([0x42; 20]);
    let mut q = RelayQueue::new(RelayConfig::default());
    let bob_key = w.key(1);
    let _where = mailbox_target(&bob_key);
    let e = w.env(0, 1, NOW);
    q.store(e.clone(), ip("10.0.0.1"), NOW).unwrap();

    let later = NOW + 3 * DAY;
    let bob = &w.users[1];
    let auth = FetchAuth::new(bob, relay_id, later + 1000);
    // The relay decodes and checks the authorization before fetching.
    let auth = FetchAuth::from_bytes(&auth.to_bytes()).unwrap();
    auth.verify(&relay_id, later).unwrap();
    let got = q.fetch(&auth.recipient, 64 * 1024);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].open(bob), Ok(Content::text("hi")));
    // A stale authorization is refused.
    assert!(matches!(
        auth.verify(&relay_id, later + 10 * 60 * 1000),
        Err(AuthError::Stale { .. })
    ));
    let ack = DeliveryAck::new(bob, got.iter().map(|e| e.id).collect(), later).unwrap();
    let ack = DeliveryAck::from_bytes(&ack.to_bytes()).unwrap();
    assert_eq!(q.ack(&ack, later), Ok(1));
    assert!(q.is_empty());
}

#[test]
fn remove_iter_and_tombstone_persistence() {
    let mut w = World::new(2);
    let mut q = RelayQueue::new(RelayConfig::default());
    let e = w.env(0, 1, NOW);
    q.store(e.clone(), ip("10.0.0.1"), NOW).unwrap();
    assert_eq!(q.recipients().copied().collect::<Vec<_>>(), vec![w.key(1)]);
    // Reload from a "database".
    let saved: Vec<_> = q.iter().cloned().collect();
    let mut reloaded = RelayQueue::new(RelayConfig::default());
    for entry in saved {
        reloaded.store(entry.envelope, entry.from, NOW + 1).unwrap();
    }
    assert_eq!(reloaded.len(), 1);
    let removed = reloaded.remove(&e.recipient, &e.sender, &e.id).unwrap();
    assert_eq!(removed.envelope, e);
    assert!(reloaded.is_empty());
    assert_eq!(reloaded.total_bytes(), 0);
    assert_eq!(reloaded.remove(&e.recipient, &e.sender, &e.id), None);

    let ack = DeliveryAck::new(&w.users[1], vec![e.id], NOW).unwrap();
    q.ack(&ack, NOW).unwrap();
    let stones: Vec<_> = q.tombstones().collect();
    assert_eq!(stones.len(), 1);
    let mut again = RelayQueue::new(RelayConfig::default());
    for (r, id, at) in stones {
        again.restore_tombstone(r, id, at);
    }
    assert_eq!(
        again.store(e, ip("10.0.0.1"), NOW),
        Ok(Stored::AlreadyAcked)
    );
}

#[test]
fn tombstones_are_bounded() {
    let w = World::new(2);
    let cfg = RelayConfig {
        max_tombstones: 3,
        ..RelayConfig::default()
    };
    let mut q = RelayQueue::new(cfg);
    for i in 0..10u8 {
        let ack =
            DeliveryAck::new(&w.users[1], vec![MessageId([i; 16])], NOW + u64::from(i)).unwrap();
        q.ack(&ack, NOW + u64::from(i)).unwrap();
    }
    assert_eq!(q.tombstones().count(), 3);
    // The newest are kept.
    assert!(q.is_acked(&w.key(1), &MessageId([9; 16])));
    assert!(!q.is_acked(&w.key(1), &MessageId([0; 16])));
}

#[test]
fn relay_error_messages_are_lowercase() {
    let errors = [
        RelayError::Expired,
        RelayError::SenderQuota(64),
        RelayError::IpQuota(256),
        RelayError::RecipientFull(1),
        RelayError::Full {
            envelopes: 1,
            bytes: 2,
        },
        RelayError::FromFuture { ahead_ms: 1 },
        RelayError::Ack(AuthError::BadSignature),
        RelayError::Envelope(EnvelopeError::BadSignature),
    ];
    for e in errors {
        let s = e.to_string();
        assert!(s.starts_with(|c: char| c.is_lowercase()), "{s}");
    }
}

#[derive(Debug, Clone)]
enum Op {
    Store {
        from: usize,
        to: usize,
        ip: u8,
        age_days: u64,
    },
    Replay(usize),
    Ack {
        who: usize,
        picks: Vec<usize>,
    },
    Advance(u64),
    Remove(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..5usize, 0..5usize, 0..4u8, 0..16u64)
            .prop_map(|(from, to, ip, age_days)| Op::Store { from, to, ip, age_days }),
        1 => any::<usize>().prop_map(Op::Replay),
        1 => (0..5usize, proptest::collection::vec(any::<usize>(), 1..4))
            .prop_map(|(who, picks)| Op::Ack { who, picks }),
        1 => (0..3 * DAY).prop_map(Op::Advance),
        1 => any::<usize>().prop_map(Op::Remove),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Whatever happens, the counters match the entries and the limits hold.
    #[test]
    fn bookkeeping_holds_under_random_operations(ops in proptest::collection::vec(op(), 1..40)) {
        let mut w = World::new(5);
        let cfg = RelayConfig {
            max_per_sender: 4,
            max_per_ip: 6,
            max_per_recipient: 5,
            max_envelopes: 12,
            max_bytes: 12 * 300,
            max_tombstones: 8,
            ..RelayConfig::default()
        };
        let mut q = RelayQueue::new(cfg.clone());
        let mut now = NOW + 30 * DAY;
        let mut sent: Vec<Envelope> = Vec::new();
        for op in ops {
            match op {
                Op::Store { from, to, ip, age_days } => {
                    let e = w.env(from, to, now - age_days * DAY);
                    sent.push(e.clone());
                    let _ = q.store(e, IpAddr::from([10, 0, 0, ip]), now);
                }
                Op::Replay(i) => {
                    if !sent.is_empty() {
                        let e = sent[i % sent.len()].clone();
                        let _ = q.store(e, IpAddr::from([10, 0, 0, 1]), now);
                    }
                }
                Op::Ack { who, picks } => {
                    if !sent.is_empty() {
                        let ids = picks.iter().map(|i| sent[i % sent.len()].id).collect();
                        let ack = DeliveryAck::new(&w.users[who], ids, now).unwrap();
                        let before = q.len();
                        let removed = q.ack(&ack, now).unwrap();
                        prop_assert_eq!(before - removed, q.len());
                        for e in q.iter() {
                            let acked = e.envelope.recipient == w.key(who)
                                && ack.ids.contains(&e.envelope.id);
                            prop_assert!(!acked);
                        }
                    }
                }
                Op::Advance(ms) => {
                    now += ms;
                    q.expire(now);
                    for e in q.iter() {
                        prop_assert!(e.expires_at_ms > now);
                    }
                }
                Op::Remove(i) => {
                    if !sent.is_empty() {
                        let e = &sent[i % sent.len()];
                        let _ = q.remove(&e.recipient, &e.sender, &e.id);
                    }
                }
            }
            let mut senders: BTreeMap<UserKey, usize> = BTreeMap::new();
            let mut recipients: BTreeMap<UserKey, usize> = BTreeMap::new();
            let mut ips: BTreeMap<IpAddr, usize> = BTreeMap::new();
            let mut bytes = 0;
            for e in q.iter() {
                prop_assert!(e.envelope.verify().is_ok());
                prop_assert!(!q.is_acked(&e.envelope.recipient, &e.envelope.id));
                *senders.entry(e.envelope.sender).or_default() += 1;
                *recipients.entry(e.envelope.recipient).or_default() += 1;
                *ips.entry(ip_bucket(e.from)).or_default() += 1;
                bytes += e.size();
            }
            prop_assert!(q.len() <= cfg.max_envelopes);
            prop_assert_eq!(q.total_bytes(), bytes);
            prop_assert!(bytes <= cfg.max_bytes);
            prop_assert!(q.tombstones().count() <= cfg.max_tombstones);
            for (k, n) in &senders {
                prop_assert_eq!(q.count_from_sender(k), *n);
                prop_assert!(*n <= cfg.max_per_sender);
            }
            for (k, n) in &recipients {
                prop_assert_eq!(q.count_for_recipient(k), *n);
                prop_assert!(*n <= cfg.max_per_recipient);
            }
            for n in ips.values() {
                prop_assert!(*n <= cfg.max_per_ip);
            }
            let listed: Vec<UserKey> = q.recipients().copied().collect();
            prop_assert_eq!(listed, recipients.keys().copied().collect::<Vec<_>>());
        }
    }
}
