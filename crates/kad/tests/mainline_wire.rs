//! Datagrams laid out byte for byte as the `mainline` crate (8.0.1) sends them,
//! fed to a sans-IO core: what it stores, and which ids make it into the table.

use std::net::SocketAddr;
use std::time::Instant;

use peerchat_kad::krpc::{Body, Message, Query, Response};
use peerchat_kad::{Config, Dht, NodeId, NodeInfo, Value};

/// Where the `mainline` node sends from.
const FROM: &str = "127.0.0.1:40001";
/// Its real id.
const REAL: [u8; 20] = [0x75; 20];

fn node() -> Dht {
    Dht::new(Config::default(), NodeId([0x01; 20]), 7, Instant::now())
}

fn from() -> SocketAddr {
    FROM.parse().unwrap()
}

/// A `mainline` query: its key order, its `ro` and `v`, a 4-byte transaction id.
fn query(id: &[u8; 20], tid: u8, method: &str, args: &[&[u8]]) -> Vec<u8> {
    let mut w = b"d1:ad2:id20:".to_vec();
    w.extend_from_slice(id);
    for a in args {
        w.extend_from_slice(a);
    }
    w.extend_from_slice(format!("e1:q{}:{method}2:roi0e1:t4:", method.len()).as_bytes());
    w.extend_from_slice(&[0, 0, 0, tid]);
    w.extend_from_slice(b"1:v4:RS\x00\x051:y1:qe");
    w
}

fn field(key: &str, value: &[u8]) -> Vec<u8> {
    let mut f = format!("{}:{key}{}:", key.len(), value.len()).into_bytes();
    f.extend_from_slice(value);
    f
}

/// Feeds one datagram and returns the answer to it.
fn ask(dht: &mut Dht, wire: &[u8]) -> Message {
    dht.handle_datagram(from(), wire, Instant::now());
    let t = dht.poll_transmit().expect("no answer");
    assert_eq!(t.dst, from());
    assert!(dht.poll_transmit().is_none());
    Message::decode(&t.payload).unwrap()
}

fn response(m: Message) -> Response {
    match m.body {
        Body::Response(r) => r,
        other => panic!("not a response: {other:?}"),
    }
}

#[test]
fn mainline_put_is_stored() {
    let mut dht = node();
    let immutable = hex::decode("e5f96f6f38320f0f33959cb4d3d656452117aadb").unwrap();
    let get = |tid| query(&REAL, tid, "get", &[&field("target", &immutable)]);
    let r = response(ask(&mut dht, &get(2)));
    assert_eq!(r.v, None);
    let token = r.token.expect("no token");
    // `mainline` puts from a random id, with `target`.
    let put = query(
        &[0xd0; 20],
        4,
        "put",
        &[
            &field("target", &immutable),
            &field("token", &token),
            &field("v", b"Hello World!"),
        ],
    );
    let answer = ask(&mut dht, &put);
    assert_eq!(answer.tid, [0, 0, 0, 4]);
    response(answer);
    let r = response(ask(&mut dht, &get(5)));
    assert_eq!(r.v, Some(Value::Bytes(b"Hello World!".to_vec())));

    // BEP 44 vector 2: mutable, salt "foobar".
    let key =
        hex::decode("77ff84905a91936367c01360803104f92432fcd904a43511876df5cdf3e7e548").unwrap();
    let sig = hex::decode(
        "6834284b6b24c3204eb2fea824d82f88883a3d95e8b4a21b8c0ded553d17d17d\
         df9a8a7104b1258f30bed3787e6cb896fca78c58f8e03b5f18f14951a87d9a08",
    )
    .unwrap();
    let target = hex::decode("411eba73b6f087ca51a3795d9c8c938d365e32c1").unwrap();
    let put = query(
        &[0x5d; 20],
        7,
        "put",
        &[
            &field("k", &key),
            &field("salt", b"foobar"),
            b"3:seqi1e",
            &field("sig", &sig),
            &field("target", &target),
            &field("token", &token),
            &field("v", b"Hello World!"),
        ],
    );
    response(ask(&mut dht, &put));
    let r = response(ask(
        &mut dht,
        &query(&REAL, 8, "get", &[&field("target", &target)]),
    ));
    assert_eq!(r.seq, Some(1));
    assert_eq!(r.k.map(|k| k.to_vec()), Some(key));
    assert_eq!(r.sig.map(|s| s.to_vec()), Some(sig));
}

/// `mainline` follows each lookup request with a ping from a random id. The
/// ping is answered, but only the real id becomes a contact.
#[test]
fn random_id_ping_is_not_a_contact() {
    let mut dht = node();
    let find = query(&REAL, 0, "find_node", &[&field("target", &REAL)]);
    response(ask(&mut dht, &find));
    let ping = query(&[0x83; 20], 1, "ping", &[]);
    assert_eq!(response(ask(&mut dht, &ping)).id, NodeId([0x01; 20]));
    let ids: Vec<NodeId> = dht.routing_table().nodes().map(|e| e.node.id).collect();
    assert_eq!(ids, [NodeId(REAL)]);
}

/// A contact whose address answers with another id is not there any more: it
/// leaves the table instead of staying there as alive.
#[test]
fn contact_answering_with_another_id_is_dropped() {
    let mut dht = node();
    let now = Instant::now();
    let gone = NodeId([0x99; 20]);
    dht.add_contact(
        NodeInfo {
            id: gone,
            addr: from(),
        },
        now,
    );
    dht.find_node(NodeId([0x42; 20]), now);
    let t = dht.poll_transmit().expect("no request");
    assert_eq!(t.dst, from());
    let Message { tid, body, .. } = Message::decode(&t.payload).unwrap();
    assert!(matches!(
        body,
        Body::Query {
            query: Query::FindNode { .. },
            ..
        }
    ));
    let answer = Message {
        tid,
        version: None,
        ip: None,
        read_only: false,
        body: Body::Response(Response {
            id: NodeId(REAL),
            ..Response::default()
        }),
    };
    dht.handle_datagram(from(), &answer.encode(), now);
    assert!(dht.routing_table().get(&gone).is_none());
}
