//! Entry points for the fuzz targets (`fuzz/`): the chat node's wire decoders, run
//! on arbitrary bytes exactly as the node runs them on what peers send. Not an API.

use peerchat_chat::{
    DeliveryAck, Envelope, FetchAuth, NameClaim, Username, from_beside_claim, newest_presence,
};
use peerchat_kad::Message;
use peerchat_kad::krpc::{Body, Query};

use super::delivery::Frame;
use super::wire;

/// What a decoder made of its input.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// The input was refused, and why.
    Refused(String),
    /// The input decoded into this many records (envelopes, claims, acks, ...).
    Records(usize),
}

/// Decodes a datagram as the chat node reads `pc_*` queries and their answers:
/// a KRPC message, its extension fields, and the signed records they carry.
pub fn decode_datagram(datagram: &[u8]) -> Decoded {
    let msg = match Message::decode(datagram) {
        Ok(m) => m,
        Err(e) => return Decoded::Refused(e.to_string()),
    };
    match msg.body {
        Body::Query {
            query: Query::Other { method, args },
            ..
        } => decode_query(&method, &args),
        Body::Query { .. } => Decoded::Records(0),
        Body::Response(r) => decode_answer(&r.other),
        Body::Error(e) => Decoded::Refused(e.message),
    }
}

fn decode_query(
    method: &[u8],
    args: &std::collections::BTreeMap<Vec<u8>, peerchat_kad::Value>,
) -> Decoded {
    let refused = |s: &str| Decoded::Refused(s.to_string());
    match method {
        wire::CLAIM => match wire::bytes(args, "claim").map(NameClaim::from_bytes) {
            None => refused("claim missing"),
            Some(Err(e)) => Decoded::Refused(e.to_string()),
            Some(Ok(c)) => match c.verify() {
                Ok(()) => Decoded::Records(1 + beside(args, &c)),
                Err(e) => Decoded::Refused(e.to_string()),
            },
        },
        wire::RESOLVE => match wire::bytes(args, "name")
            .and_then(|n| std::str::from_utf8(n).ok())
            .map(Username::new)
        {
            Some(Ok(_)) => Decoded::Records(1),
            Some(Err(e)) => Decoded::Refused(e.to_string()),
            None => refused("bad name"),
        },
        wire::STORE => match wire::bytes(args, "env").map(Envelope::from_bytes) {
            None => refused("env missing"),
            Some(Err(e)) => Decoded::Refused(e.to_string()),
            Some(Ok(env)) => match env.verify() {
                Ok(()) => Decoded::Records(1),
                Err(e) => Decoded::Refused(e.to_string()),
            },
        },
        wire::FETCH => match wire::bytes(args, "auth").map(FetchAuth::from_bytes) {
            None => refused("auth missing"),
            Some(Err(e)) => Decoded::Refused(e.to_string()),
            Some(Ok(auth)) => match auth.verify(&auth.relay, auth.timestamp_ms) {
                Ok(()) => Decoded::Records(1),
                Err(e) => Decoded::Refused(e.to_string()),
            },
        },
        wire::ACK => match wire::bytes(args, "ack").map(DeliveryAck::from_bytes) {
            None => refused("ack missing"),
            Some(Err(e)) => Decoded::Refused(e.to_string()),
            Some(Ok(ack)) => match ack.verify() {
                Ok(()) => Decoded::Records(1),
                Err(e) => Decoded::Refused(e.to_string()),
            },
        },
        _ => refused("Method Unknown"),
    }
}

fn decode_answer(other: &std::collections::BTreeMap<Vec<u8>, peerchat_kad::Value>) -> Decoded {
    let mut n = 0;
    if let Some(c) = wire::bytes(other, "claim")
        && let Ok(c) = NameClaim::from_bytes(c)
        && c.verify().is_ok()
    {
        n += 1 + beside(other, &c);
    }
    for b in wire::byte_list(other, "envs") {
        if Envelope::from_bytes(b).is_ok_and(|e| e.verify().is_ok()) {
            n += 1;
        }
    }
    let _ = wire::int(other, "more");
    let _ = wire::int(other, "removed");
    Decoded::Records(n)
}

/// The valid presence items carried beside claim `c` (0 or 1).
fn beside(
    fields: &std::collections::BTreeMap<Vec<u8>, peerchat_kad::Value>,
    c: &NameClaim,
) -> usize {
    from_beside_claim(fields, &c.key)
        .and_then(|item| newest_presence(&c.key, [&item]))
        .map_or(0, |_| 1)
}

/// Decodes the plaintext of one session frame as the chat node does: the frame,
/// then the envelope it carries.
pub fn decode_session_frame(plaintext: &[u8]) -> Decoded {
    match postcard::from_bytes::<Frame>(plaintext) {
        Err(e) => Decoded::Refused(e.to_string()),
        Ok(Frame::Envelope(b)) => match Envelope::from_bytes(&b) {
            Ok(env) => match env.verify() {
                Ok(()) => Decoded::Records(1),
                Err(e) => Decoded::Refused(e.to_string()),
            },
            Err(e) => Decoded::Refused(e.to_string()),
        },
        Ok(Frame::Ack(_)) | Ok(Frame::Nack(..)) => Decoded::Records(1),
    }
}

#[cfg(test)]
mod tests {
    use peerchat_chat::{Content, Identity};
    use peerchat_kad::krpc::{Body, Query};
    use peerchat_kad::{Message, NodeId, Value};

    use super::*;

    fn store_datagram(env: Vec<u8>) -> Vec<u8> {
        Message {
            tid: vec![1],
            version: None,
            ip: None,
            read_only: false,
            body: Body::Query {
                id: NodeId([3; 20]),
                query: Query::Other {
                    method: wire::STORE.to_vec(),
                    args: wire::args("env", Value::Bytes(env)),
                },
            },
        }
        .encode()
    }

    #[test]
    fn genuine_records_decode_and_garbage_is_refused() {
        let mut rng = rand::rng();
        let (a, b) = (Identity::generate(&mut rng), Identity::generate(&mut rng));
        let env = Envelope::seal(&a, &b.public(), &Content::text("hi"), 1, &mut rng).unwrap();
        assert_eq!(
            decode_datagram(&store_datagram(env.to_bytes())),
            Decoded::Records(1)
        );
        let mut bad = env.clone();
        bad.signature[0] ^= 1;
        assert!(matches!(
            decode_datagram(&store_datagram(bad.to_bytes())),
            Decoded::Refused(_)
        ));
        assert!(matches!(decode_datagram(b"d1:y"), Decoded::Refused(_)));
        let frame = postcard::to_stdvec(&Frame::Envelope(env.to_bytes())).unwrap();
        assert_eq!(decode_session_frame(&frame), Decoded::Records(1));
        assert!(matches!(
            decode_session_frame(&[7, 1, 2]),
            Decoded::Refused(_)
        ));
    }
}
