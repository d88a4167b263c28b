//! The cost of one DHT message on the hot path of a lookup: decoding and
//! encoding a `find_node` answer, and a node answering a `find_node` (plain,
//! and with the fields a name's storer adds). `cargo bench -p peerchat-kad
//! --bench krpc`.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::net::SocketAddr;
use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use peerchat_kad::krpc::{Body, Message, Query, Response};
use peerchat_kad::{Config, Dht, NodeId, NodeInfo, Value};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

fn id(rng: &mut ChaCha20Rng) -> NodeId {
    let mut b = [0u8; 20];
    rng.fill_bytes(&mut b);
    NodeId(b)
}

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, 1, (i / 250) as u8, (i % 250) as u8 + 1], 6881))
}

/// A node whose table holds contacts from `n` random ones, as after a storm.
fn node(rng: &mut ChaCha20Rng, n: usize) -> Dht {
    let config = Config {
        k: 10,
        alpha: 5,
        per_ip_queries_per_sec: u32::MAX,
        ..Config::default()
    };
    let now = Instant::now();
    let mut dht = Dht::new(config, id(rng), 1, now);
    for i in 0..n {
        dht.add_contact(
            NodeInfo {
                id: id(rng),
                addr: addr(i),
            },
            now,
        );
    }
    dht
}

fn query(tid: u32, target: NodeId) -> Vec<u8> {
    Message {
        tid: tid.to_be_bytes().to_vec(),
        version: None,
        ip: None,
        read_only: false,
        body: Body::Query {
            id: NodeId([0x42; 20]),
            query: Query::FindNode { target },
        },
    }
    .encode()
}

/// A name storer's fields: a claim and the presence kept beside it, sized as
/// Peerchat's (150 and 120 bytes).
fn storer_fields() -> BTreeMap<Vec<u8>, Value> {
    BTreeMap::from([
        (b"claim".to_vec(), Value::Bytes(vec![7; 150])),
        (b"pseq".to_vec(), Value::Int(1_764_000_000_000)),
        (b"psig".to_vec(), Value::Bytes(vec![9; 64])),
        (b"pv".to_vec(), Value::Bytes(vec![3; 120])),
    ])
}

fn krpc(c: &mut Criterion) {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let nodes: Vec<NodeInfo> = (0..10)
        .map(|i| NodeInfo {
            id: id(&mut rng),
            addr: addr(i),
        })
        .collect();
    let answer = |other| Message {
        tid: vec![0, 0, 0, 1],
        version: Some(b"PC01".to_vec()),
        ip: Some(addr(99)),
        read_only: false,
        body: Body::Response(Response {
            id: id(&mut ChaCha20Rng::seed_from_u64(2)),
            nodes: nodes.clone(),
            other,
            ..Response::default()
        }),
    };
    let plain = answer(BTreeMap::new());
    let annotated = answer(storer_fields());
    let (plain_bytes, annotated_bytes) = (plain.encode(), annotated.encode());

    c.bench_function("decode find_node answer (10 nodes)", |b| {
        b.iter(|| Message::decode(black_box(&plain_bytes)))
    });
    c.bench_function(
        "decode find_node answer (10 nodes, a storer's fields)",
        |b| b.iter(|| Message::decode(black_box(&annotated_bytes))),
    );
    c.bench_function("encode find_node answer (10 nodes)", |b| {
        b.iter(|| black_box(&plain).encode())
    });

    // A node answering: decode the query, update the table, find the 10
    // closest, encode, queue the datagram.
    let mut dht = node(&mut rng, 2_000);
    let targets: Vec<NodeId> = (0..64).map(|_| id(&mut rng)).collect();
    let queries: Vec<Vec<u8>> = targets
        .iter()
        .enumerate()
        .map(|(i, t)| query(i as u32, *t))
        .collect();
    let from = addr(3_000);
    let now = Instant::now();
    let mut i = 0;
    c.bench_function("answer find_node", |b| {
        b.iter(|| {
            i = (i + 1) % queries.len();
            dht.handle_datagram(from, &queries[i], now);
            black_box(dht.poll_transmit())
        })
    });
    for t in &targets {
        dht.annotate(*t, Some(storer_fields()));
    }
    c.bench_function("answer find_node (a storer's fields)", |b| {
        b.iter(|| {
            i = (i + 1) % queries.len();
            dht.handle_datagram(from, &queries[i], now);
            black_box(dht.poll_transmit())
        })
    });
}

criterion_group!(benches, krpc);
criterion_main!(benches);
