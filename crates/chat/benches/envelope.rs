//! The cost of one message's cryptography, step by step: what a sender pays to
//! seal an envelope, what a relay pays to check one, what a recipient pays to
//! open one. `cargo bench -p peerchat-chat --bench envelope`.

use criterion::{Criterion, criterion_group, criterion_main};
use peerchat_chat::content::Content;
use peerchat_chat::envelope::{Envelope, OpenCache, Sealer, SealingKey, verify_batch};
use peerchat_chat::identity::Identity;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use std::hint::black_box;

fn envelope(c: &mut Criterion) {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let alice = Identity::generate(&mut rng);
    let bob = Identity::generate(&mut rng);
    let content = Content::text("message 12345");
    let env = Envelope::seal(&alice, &bob.public(), &content, 1, &mut rng).expect("seal");

    c.bench_function("seal", |b| {
        b.iter(|| Envelope::seal(&alice, &bob.public(), black_box(&content), 1, &mut rng))
    });
    c.bench_function("verify (relay)", |b| b.iter(|| black_box(&env).verify()));
    c.bench_function("open (recipient)", |b| {
        b.iter(|| black_box(&env).open(&bob))
    });
    // A burst to one person: the key exchange is kept on both sides.
    let mut sealer =
        Sealer::new(SealingKey::new(bob.public()).expect("key"), 1, &mut rng).expect("sealer");
    c.bench_function("seal (kept exchange)", |b| {
        b.iter(|| {
            let mut s = sealer.claim(1).unwrap_or_else(|| sealer.clone());
            s.seal(&alice, black_box(&content), 1, &mut rng)
        })
    });
    let cache = OpenCache::default();
    c.bench_function("open (kept exchange)", |b| {
        b.iter(|| black_box(&env).open_cached(&bob, &cache))
    });
    c.bench_function("x25519_public", |b| {
        b.iter(|| black_box(bob.public()).x25519_public())
    });
    c.bench_function("verifying_key", |b| {
        b.iter(|| black_box(alice.public()).verifying_key())
    });
    // What a recipient pays to check a burst of 64 from one sender, all at
    // once (divide by 64 for one message's share).
    let burst: Vec<Envelope> = (0..64)
        .map(|i| {
            let text = format!("message {i}");
            Envelope::seal(&alice, &bob.public(), &Content::text(&text), 1, &mut rng).expect("seal")
        })
        .collect();
    c.bench_function("verify 64 one by one", |b| {
        b.iter(|| black_box(&burst).iter().map(Envelope::verify).count())
    });
    c.bench_function("verify_batch 64", |b| {
        b.iter(|| verify_batch(black_box(&burst)))
    });
    let bytes = env.to_bytes();
    c.bench_function("decode", |b| {
        b.iter(|| Envelope::from_bytes(black_box(&bytes)))
    });
}

criterion_group!(benches, envelope);
criterion_main!(benches);
