//! Answering queries from other nodes (the "server" half of a DHT node).

use std::net::SocketAddr;
use std::time::Instant;

use crate::bep44::{self, ItemError, MAX_SALT_LEN, MutableItem};
use crate::dht::Dht;
use crate::id::NodeId;
use crate::krpc::{Body, KrpcError, NodeInfo, PutArgs, Query, Response, code};
use crate::query::Event;
use crate::store::{Item, RecordStore};

/// Most peers returned in one `get_peers` answer (fits a 1,500-byte datagram).
const MAX_VALUES: usize = 50;

impl<S: RecordStore> Dht<S> {
    pub(crate) fn handle_query(
        &mut self,
        from: SocketAddr,
        tid: Vec<u8>,
        node: NodeId,
        read_only: bool,
        query: Query,
        now: Instant,
    ) {
        if self.config.read_only {
            return;
        }
        if !self.allow_query(from.ip(), now) {
            return;
        }
        if !read_only {
            self.insert_contact(
                NodeInfo {
                    id: node,
                    addr: from,
                },
                now,
            );
        }
        let body = match query {
            Query::Ping => Ok(self.response()),
            Query::FindNode { target } => {
                let mut r = self.with_nodes(self.response(), &target, from);
                if let Some(fields) = self.annotation(&target) {
                    r.other = fields;
                }
                Ok(r)
            }
            Query::GetPeers { info_hash } => {
                let mut r = self.with_nodes(self.response(), &info_hash, from);
                r.token = Some(self.tokens.issue(from.ip()));
                match self.store.peers(&info_hash, MAX_VALUES) {
                    Ok(p) => r.values = p,
                    Err(_) => self.stats.store_errors += 1,
                }
                Ok(r)
            }
            Query::AnnouncePeer {
                info_hash,
                port,
                implied_port,
                token,
            } => {
                if !self.tokens.verify(&token, from.ip()) {
                    Err(err(code::PROTOCOL, "bad token"))
                } else {
                    let port = if implied_port { from.port() } else { port };
                    if port == 0 {
                        Err(err(code::PROTOCOL, "bad port"))
                    } else {
                        match self
                            .store
                            .add_peer(info_hash, SocketAddr::new(from.ip(), port), now)
                        {
                            Ok(()) => Ok(self.response()),
                            Err(_) => {
                                self.stats.store_errors += 1;
                                Err(err(code::SERVER, "store failed"))
                            }
                        }
                    }
                }
            }
            Query::Get { target, seq } => self.answer_get(target, seq, from),
            Query::Put(args) => self.answer_put(args, from, now),
            Query::Other { method, args } => {
                if self.config.extension_methods.contains(&method) {
                    self.events.push_back(Event::Query {
                        from,
                        node,
                        tid,
                        method,
                        args,
                    });
                    return;
                }
                Err(err(code::METHOD_UNKNOWN, "Method Unknown"))
            }
        };
        let body = match body {
            Ok(r) => Body::Response(r),
            Err(e) => Body::Error(e),
        };
        let msg = self.reply_message(from, tid, body);
        self.send_message(from, msg);
    }

    fn response(&self) -> Response {
        Response {
            id: self.id,
            ..Response::default()
        }
    }

    fn with_nodes(&self, mut r: Response, target: &NodeId, from: SocketAddr) -> Response {
        for n in self.table.closest(target, self.config.k) {
            if n.addr == from {
                continue;
            }
            if n.addr.is_ipv4() {
                r.nodes.push(n);
            } else {
                r.nodes6.push(n);
            }
        }
        r
    }

    fn answer_get(
        &mut self,
        target: NodeId,
        seq: Option<i64>,
        from: SocketAddr,
    ) -> Result<Response, KrpcError> {
        let mut r = self.with_nodes(self.response(), &target, from);
        r.token = Some(self.tokens.issue(from.ip()));
        match self.store.get(&target) {
            Ok(Some(Item::Immutable(v))) => r.v = Some(v),
            Ok(Some(Item::Mutable(m))) => {
                r.k = Some(m.key);
                r.seq = Some(m.seq);
                if seq.is_none_or(|s| m.seq > s) {
                    r.v = Some(m.value);
                    r.sig = Some(m.sig);
                }
            }
            Ok(None) => {}
            Err(_) => self.stats.store_errors += 1,
        }
        Ok(r)
    }

    fn answer_put(
        &mut self,
        args: PutArgs,
        from: SocketAddr,
        now: Instant,
    ) -> Result<Response, KrpcError> {
        if !self.tokens.verify(&args.token, from.ip()) {
            return Err(err(code::PROTOCOL, "bad token"));
        }
        let (target, item) = match (args.k, args.sig, args.seq) {
            (None, _, _) => {
                bep44::check_immutable(&args.v).map_err(item_err)?;
                (bep44::immutable_target(&args.v), Item::Immutable(args.v))
            }
            (Some(key), Some(sig), Some(seq)) => {
                let salt = args.salt.unwrap_or_default();
                if salt.len() > MAX_SALT_LEN {
                    return Err(item_err(ItemError::SaltTooBig(salt.len())));
                }
                let item = MutableItem {
                    key,
                    salt,
                    seq,
                    value: args.v,
                    sig,
                };
                item.verify().map_err(item_err)?;
                let target = item.target();
                match self.store.get(&target) {
                    Ok(Some(Item::Mutable(old))) => {
                        if let Some(cas) = args.cas
                            && cas != old.seq
                        {
                            return Err(err(
                                code::CAS_MISMATCH,
                                "CAS mismatch, re-read value and try again",
                            ));
                        }
                        if seq < old.seq || (seq == old.seq && item.value != old.value) {
                            return Err(err(
                                code::SEQ_TOO_LOW,
                                "sequence number less than current",
                            ));
                        }
                    }
                    Ok(_) => {}
                    Err(_) => {
                        self.stats.store_errors += 1;
                        return Err(err(code::SERVER, "store failed"));
                    }
                }
                (target, Item::Mutable(item))
            }
            _ => return Err(err(code::PROTOCOL, "mutable put needs k, sig and seq")),
        };
        match self.store.put(target, item, now) {
            Ok(true) => Ok(self.response()),
            Ok(false) => Err(err(code::SERVER, "store full")),
            Err(_) => {
                self.stats.store_errors += 1;
                Err(err(code::SERVER, "store failed"))
            }
        }
    }
}

fn err(code: i64, message: &str) -> KrpcError {
    KrpcError {
        code,
        message: message.to_string(),
    }
}

fn item_err(e: ItemError) -> KrpcError {
    let code = match e {
        ItemError::ValueTooBig(_) => code::VALUE_TOO_BIG,
        ItemError::SaltTooBig(_) => code::SALT_TOO_BIG,
        ItemError::InvalidSignature => code::INVALID_SIGNATURE,
    };
    err(code, &e.to_string())
}
