//! The relay role: answering other nodes' `pc_*` queries (names, mailboxes),
//! keeping envelopes for offline users, pushing them when their recipient shows
//! up, and handing copies over to closer nodes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use peerchat_chat::{
    Accept, DeliveryAck, Envelope, FetchAuth, NameClaim, Stored, UserKey, Username, accept_claim,
    from_beside_claim, mailbox_target,
};
use peerchat_kad::krpc::code;
use peerchat_kad::{NodeId, Value};
use tokio::sync::mpsc;

use super::{Inner, delivery, directory, now_ms, wire};
use crate::IncomingQuery;
use crate::db::{NameClaim as ClaimRow, RelayEntry};

/// Answers extension queries, one at a time, in arrival order.
pub(crate) async fn serve(inner: Arc<Inner>, mut rx: mpsc::Receiver<IncomingQuery>) {
    while let Some(q) = rx.recv().await {
        let answer = answer(&inner, &q).await;
        let sent = match answer {
            Ok(fields) => inner.dht.respond(&q, fields).await,
            Err((c, msg)) => inner.dht.respond_error(&q, c, &msg).await,
        };
        if sent.is_err() {
            return;
        }
    }
}

type Answer = Result<BTreeMap<Vec<u8>, Value>, (i64, String)>;

fn protocol(msg: impl Into<String>) -> (i64, String) {
    (code::PROTOCOL, msg.into())
}

fn server(msg: impl std::fmt::Display) -> (i64, String) {
    (code::SERVER, msg.to_string())
}

async fn answer(inner: &Arc<Inner>, q: &IncomingQuery) -> Answer {
    let now = now_ms();
    match q.method.as_slice() {
        wire::CLAIM => {
            let bytes = wire::bytes(&q.args, "claim").ok_or_else(|| protocol("claim missing"))?;
            let claim = NameClaim::from_bytes(bytes).map_err(|e| protocol(e.to_string()))?;
            let held = directory::stored_claim(inner, claim.name.as_str())
                .await
                .map_err(server)?;
            let existing = held.and_then(|h| NameClaim::from_bytes(&h).ok());
            let presence = from_beside_claim(&q.args, &claim.key);
            let (kept, accepted) = match accept_claim(existing.as_ref(), &claim) {
                Ok(Accept::New) | Ok(Accept::Update) => {
                    directory::store_claim(
                        inner,
                        ClaimRow {
                            name: claim.name.as_str().to_string(),
                            claim: claim.to_bytes(),
                            stored_ms: now as i64,
                        },
                    )
                    .await
                    .map_err(server)?;
                    (claim, true)
                }
                Ok(Accept::Unchanged) => (claim, true),
                // Refused (another key holds it, or a forgery): answer with what we hold.
                Err(e) => (existing.ok_or_else(|| protocol(e.to_string()))?, false),
            };
            // The presence handed with an accepted claim is kept beside it.
            if accepted {
                directory::annotate_held(inner, &kept.name, presence).await;
            }
            Ok(wire::args("claim", Value::Bytes(kept.to_bytes())))
        }
        wire::RESOLVE => {
            let name = wire::bytes(&q.args, "name").ok_or_else(|| protocol("name missing"))?;
            let name = std::str::from_utf8(name)
                .ok()
                .and_then(|n| Username::new(n).ok())
                .ok_or_else(|| protocol("bad name"))?;
            // The claim held, with the newest presence its key handed us.
            Ok(directory::claim_answer(inner, &name)
                .await
                .unwrap_or_default())
        }
        wire::STORE => {
            let bytes = wire::bytes(&q.args, "env").ok_or_else(|| protocol("env missing"))?;
            let env = Envelope::from_bytes(bytes).map_err(|e| {
                super::refuse(inner, &e);
                protocol(e.to_string())
            })?;
            if env.recipient == inner.me {
                // A message for us, stored at us because we are close to our own mailbox.
                delivery::deliver_incoming(inner, env, true)
                    .await
                    .map_err(server)?;
                return Ok(BTreeMap::new());
            }
            store_for_other(inner, env, q.from.ip(), now).await?;
            Ok(BTreeMap::new())
        }
        wire::FETCH => {
            let bytes = wire::bytes(&q.args, "auth").ok_or_else(|| protocol("auth missing"))?;
            let auth = FetchAuth::from_bytes(bytes).map_err(|e| protocol(e.to_string()))?;
            auth.verify(&inner.dht.id(), now)
                .map_err(|e| (code::INVALID_SIGNATURE, e.to_string()))?;
            let relay = inner.relay.lock().await;
            let envs = relay.fetch(&auth.recipient, wire::FETCH_BUDGET);
            let more = relay.count_for_recipient(&auth.recipient) > envs.len();
            drop(relay);
            let mut m = wire::args(
                "envs",
                Value::List(envs.iter().map(|e| Value::Bytes(e.to_bytes())).collect()),
            );
            m.insert(b"more".to_vec(), Value::Int(more as i64));
            Ok(m)
        }
        wire::ACK => {
            let bytes = wire::bytes(&q.args, "ack").ok_or_else(|| protocol("ack missing"))?;
            let ack = DeliveryAck::from_bytes(bytes).map_err(|e| protocol(e.to_string()))?;
            let removed = remove_acked(inner, &ack, now).await?;
            Ok(wire::args("removed", Value::Int(removed as i64)))
        }
        _ => Err((code::METHOD_UNKNOWN, "Method Unknown".into())),
    }
}

/// Keeps an envelope for an offline user: checked by the relay policy, durable
/// on disk before the store is acknowledged.
async fn store_for_other(
    inner: &Inner,
    env: Envelope,
    ip: std::net::IpAddr,
    now: u64,
) -> Result<(), (i64, String)> {
    let mut relay = inner.relay.lock().await;
    let entry = RelayEntry {
        id: env.id.0,
        recipient: env.recipient.0,
        sender: env.sender.0,
        envelope: env.to_bytes(),
        source_ip: Some(ip),
        stored_ms: now as i64,
        expires_ms: env.timestamp_ms.saturating_add(relay.config().ttl_ms) as i64,
    };
    let (recipient, sender, id) = (env.recipient, env.sender, env.id);
    match relay.store(env, ip, now) {
        Ok(Stored::New) => {
            if let Err(e) = inner.db.relay_put(entry).await {
                // Not durable: do not keep it in memory either, and say so.
                relay.remove(&recipient, &sender, &id);
                return Err(server(e));
            }
            Ok(())
        }
        Ok(Stored::Duplicate) | Ok(Stored::AlreadyAcked) => Ok(()),
        Err(e) => {
            super::refuse(inner, &e);
            Err((code::GENERIC, e.to_string()))
        }
    }
}

/// Drops the copies a recipient's signed ack names.
async fn remove_acked(inner: &Inner, ack: &DeliveryAck, now: u64) -> Result<usize, (i64, String)> {
    let removed = inner
        .relay
        .lock()
        .await
        .ack(ack, now)
        .map_err(|e| (code::INVALID_SIGNATURE, e.to_string()))?;
    if removed > 0 {
        let ids = ack.ids.iter().map(|i| i.0).collect();
        inner.db.relay_remove(ids).await.map_err(server)?;
    }
    Ok(removed)
}

/// Expires old copies, pushes held envelopes to recipients that are online,
/// and hands copies to nodes that are now closer to a mailbox than we are.
pub(crate) async fn relay_worker(inner: Arc<Inner>) {
    let mut shutdown = inner.shutdown.clone();
    let mut next_try: HashMap<UserKey, (Instant, u32)> = HashMap::new();
    let mut handed: HashMap<UserKey, BTreeSet<NodeId>> = HashMap::new();
    let mut last_handover = Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(inner.config.relay_retry_every) => {}
            _ = shutdown.changed() => return,
        }
        let now = now_ms();
        let expired = inner.relay.lock().await.expire(now);
        if expired > 0 {
            let _ = inner.db.relay_expire(now as i64).await;
        }
        let recipients: Vec<UserKey> = inner.relay.lock().await.recipients().copied().collect();
        next_try.retain(|k, _| recipients.contains(k));
        handed.retain(|k, _| recipients.contains(k));
        for r in &recipients {
            let due = next_try.get(r).is_none_or(|(t, _)| Instant::now() >= *t);
            if !due {
                continue;
            }
            let pushed = push_to(&inner, r).await;
            let attempts = next_try.get(r).map(|(_, a)| *a).unwrap_or(0);
            if pushed {
                next_try.remove(r);
            } else {
                let backoff = inner.config.relay_retry_every * 2u32.saturating_pow(attempts.min(6));
                next_try.insert(
                    *r,
                    (
                        Instant::now() + backoff.min(Duration::from_secs(300)),
                        attempts + 1,
                    ),
                );
            }
        }
        if last_handover.elapsed() >= Duration::from_secs(30) {
            last_handover = Instant::now();
            for r in &recipients {
                handover(&inner, r, handed.entry(*r).or_default()).await;
            }
        }
    }
}

/// Tries to deliver everything held for `recipient` straight to it. Returns
/// whether all of it was acknowledged.
async fn push_to(inner: &Inner, recipient: &UserKey) -> bool {
    let Some(presence) = directory::presence_of(inner, recipient).await else {
        return false;
    };
    let envs: Vec<Envelope> = inner
        .relay
        .lock()
        .await
        .mailbox(recipient)
        .map(|e| e.envelope.clone())
        .collect();
    if envs.is_empty() {
        return true;
    }
    let acked = delivery::push(inner, recipient, &presence.chat, &envs).await;
    if acked.is_empty() {
        return false;
    }
    let mut relay = inner.relay.lock().await;
    for env in &envs {
        if acked.contains(&env.id) {
            relay.remove(&env.recipient, &env.sender, &env.id);
        }
    }
    drop(relay);
    let _ = inner
        .db
        .relay_remove(acked.iter().map(|i| i.0).collect())
        .await;
    acked.len() == envs.len()
}

/// Stores copies at the nodes closest to the mailbox that have not had them yet.
async fn handover(inner: &Inner, recipient: &UserKey, handed: &mut BTreeSet<NodeId>) {
    let target = mailbox_target(recipient);
    let Ok((nodes, _)) = inner.dht.find_node(target).await else {
        return;
    };
    let me = inner.dht.id();
    let my_distance = me.distance(&target);
    let envs: Vec<Envelope> = inner
        .relay
        .lock()
        .await
        .mailbox(recipient)
        .map(|e| e.envelope.clone())
        .collect();
    for n in nodes {
        if n.id == me || handed.contains(&n.id) || n.id.distance(&target) > my_distance {
            continue;
        }
        let mut ok = true;
        for env in &envs {
            let args = wire::args("env", Value::Bytes(env.to_bytes()));
            if !matches!(
                inner.dht.request(n.addr, wire::STORE, args).await,
                Ok(Some(Ok(_)))
            ) {
                ok = false;
                break;
            }
        }
        if ok {
            handed.insert(n.id);
        }
    }
}
