//! Delivery: the outbox worker (direct over a Noise session, else to relays),
//! the session acceptor, incoming envelopes, receipts and the mailbox at login.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use peerchat_chat::{
    Content, DeliveryAck, Envelope, FetchAuth, MAX_ACK_IDS, MessageId, Sealer, SealingKey, UserKey,
    mailbox_target,
};
use peerchat_kad::Value;
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio::task::JoinSet;

use super::{ChatError, ChatEvent, Inner, directory, emit_state, lock, now_ms, view_of, wire};
use crate::db::{IncomingMessage, MessageState, OutboxEntry, OutgoingMessage};
use crate::session::{self, Session};

/// How long a peer has to acknowledge what we sent.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a TCP connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Most outbox entries handled per round.
const OUTBOX_BATCH: usize = 256;

/// What travels in a session.
#[derive(Serialize, Deserialize, Debug)]
pub(crate) enum Frame {
    /// A sealed envelope.
    Envelope(Vec<u8>),
    /// The envelope with this id is durable at the receiver.
    Ack([u8; 16]),
    /// The envelope with this id was refused, and why.
    Nack([u8; 16], String),
}

// ----- sending ---------------------------------------------------------------

/// Seals a text for `to` and queues it durably; returns its id.
pub(crate) async fn send_text(
    inner: &Arc<Inner>,
    to: &str,
    text: &str,
) -> Result<String, ChatError> {
    let text = text.trim_end_matches(['\n', '\r']);
    if text.trim().is_empty() {
        return Err(ChatError::BadMessage("the message is empty".into()));
    }
    let content = Content::text_from(text, &inner.name);
    content
        .validate()
        .map_err(|e| ChatError::BadMessage(e.to_string()))?;
    let key = directory::known_key(inner, to).await?;
    if key == inner.me {
        return Err(ChatError::BadMessage(
            "that is you: pick someone else to write to".into(),
        ));
    }
    let now = now_ms();
    let env = seal(inner, key, &content, now)?;
    let id = env.id;
    let msg = OutgoingMessage {
        id: id.0,
        to: key.0,
        from: inner.me.0,
        text: text.to_string(),
        sent_ms: now as i64,
    };
    let bytes = env.to_bytes();
    inner.db.insert_outgoing(msg.clone(), bytes.clone()).await?;
    let stored = crate::db::StoredMessage {
        id: id.0,
        peer: key.0,
        direction: crate::db::Direction::Out,
        sender: inner.me.0,
        text: msg.text,
        sent_ms: msg.sent_ms,
        received_ms: msg.sent_ms,
        state: MessageState::Queued,
    };
    let _ = inner
        .events
        .send(ChatEvent::Message(view_of(inner, &stored).await));
    // Durable now: stream it on the peer's link, or leave it to the outbox worker.
    // Opening a link means a presence lookup and a connect, seconds when the
    // peer is away (found by the netns partition test: each send then took
    // ~3 s), so that happens in the background and the answer does not wait.
    let up = inner.links.lock().await.is_up(&key);
    let inner = inner.clone();
    let attempt = async move {
        if !super::link::send(&inner, key, id, bytes).await {
            // Not online (or no link): due now for the worker, which relays it.
            let _ = inner.db.outbox_reschedule(id.0, now as i64).await;
            inner.outbox_wake.notify_one();
        }
    };
    if up {
        attempt.await;
    } else {
        tokio::spawn(attempt);
    }
    Ok(id.to_hex())
}

/// Most recipients whose key exchange is kept; the cache starts over beyond it.
const SEALERS: usize = 4096;

/// Seals `content` for `to`, reusing the key exchange of our last messages to
/// them while it is young (see [`peerchat_chat::Sealer`]).
fn seal(inner: &Inner, to: UserKey, content: &Content, now: u64) -> Result<Envelope, ChatError> {
    let bad = |e: peerchat_chat::EnvelopeError| ChatError::BadMessage(e.to_string());
    let kept = lock(&inner.sealers).get_mut(&to).and_then(|s| s.claim(now));
    if let Some(mut sealer) = kept {
        return sealer
            .seal(&inner.identity, content, now, &mut rand::rng())
            .map_err(bad);
    }
    let key =
        SealingKey::new(to).map_err(|e| bad(peerchat_chat::EnvelopeError::BadRecipient(e)))?;
    let mut sealer = Sealer::new(key, now, &mut rand::rng()).map_err(bad)?;
    let env = sealer
        .seal(&inner.identity, content, now, &mut rand::rng())
        .map_err(bad)?;
    let mut sealers = lock(&inner.sealers);
    if sealers.len() >= SEALERS {
        sealers.clear();
    }
    sealers.insert(to, sealer);
    Ok(env)
}

/// Marks a conversation read and tells its other party (best effort).
pub(crate) async fn mark_read(inner: &Arc<Inner>, name: &str) -> Result<u64, ChatError> {
    let key = directory::known_key(inner, name).await?;
    let unread: Vec<MessageId> = inner
        .db
        .history(key.0, 10_000)
        .await?
        .into_iter()
        .filter(|m| m.direction == crate::db::Direction::In && m.state < MessageState::Read)
        .map(|m| MessageId(m.id))
        .collect();
    let n = inner.db.mark_read(key.0).await?;
    if !unread.is_empty() {
        let inner = inner.clone();
        tokio::spawn(async move {
            for ids in unread.chunks(peerchat_chat::MAX_RECEIPT_IDS) {
                send_receipt(&inner, key, Content::Read { ids: ids.to_vec() }).await;
            }
        });
    }
    Ok(n)
}

/// Sends a receipt straight to `to`, or to its mailbox; not kept in the outbox
/// (a lost receipt only delays the state a sender sees: its outbox retries direct
/// delivery, and the recipient's ack of that retry says "delivered").
async fn send_receipt(inner: &Inner, to: UserKey, content: Content) {
    let Ok(env) = seal(inner, to, &content, now_ms()) else {
        return;
    };
    let direct = match directory::presence_of(inner, &to).await {
        Some(p) => !push(inner, &to, &p.chat, std::slice::from_ref(&env))
            .await
            .is_empty(),
        None => false,
    };
    if !direct {
        let _ = store_at_relays(inner, &env).await;
    }
}

/// Works the outbox: each due envelope goes straight to its recipient when it is
/// online, else to the relays of its mailbox; then it waits for the recipient's
/// acknowledgement, retrying with backoff. An entry leaves the outbox only when
/// the recipient acknowledged it.
pub(crate) async fn outbox_worker(inner: Arc<Inner>) {
    let mut shutdown = inner.shutdown.clone();
    loop {
        let mut due = inner
            .db
            .outbox_due(now_ms() as i64, OUTBOX_BATCH)
            .await
            .unwrap_or_default();
        {
            let links = inner.links.lock().await;
            due.retain(|e| !links.in_flight(&MessageId(e.id)));
        }
        let busy = !due.is_empty();
        let mut by_recipient: BTreeMap<UserKey, Vec<OutboxEntry>> = BTreeMap::new();
        for e in due {
            by_recipient
                .entry(UserKey(e.recipient))
                .or_default()
                .push(e);
        }
        let mut set = JoinSet::new();
        for (to, entries) in by_recipient {
            let inner = inner.clone();
            set.spawn(async move { deliver_batch(&inner, to, entries).await });
        }
        while set.join_next().await.is_some() {}
        if busy {
            continue;
        }
        let wait = outbox_wait(&inner).await;
        tokio::select! {
            _ = inner.outbox_wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// How long the outbox worker may sleep when nothing is due: until the soonest
/// entry's retry, since a new message, a failed send and a closed link each
/// wake it. A poll every half second instead cost each idle user two database
/// reads a second, which a process running thousands of users felt.
async fn outbox_wait(inner: &Inner) -> Duration {
    /// Entries due but all on a link: its end wakes us; look again soon anyway.
    const IN_FLIGHT: Duration = Duration::from_millis(500);
    /// A look now and then even with nothing due, as a safety net.
    const IDLE: Duration = Duration::from_secs(60);
    match inner.db.outbox_next_due().await {
        Ok(Some(due)) => {
            let now = now_ms() as i64;
            if due > now {
                Duration::from_millis(u64::try_from(due - now).unwrap_or(0)).min(IDLE)
            } else {
                IN_FLIGHT
            }
        }
        Ok(None) => IDLE,
        Err(_) => IN_FLIGHT,
    }
}

async fn deliver_batch(inner: &Inner, to: UserKey, entries: Vec<OutboxEntry>) {
    let mut envs = Vec::new();
    for e in &entries {
        match Envelope::from_bytes(&e.envelope) {
            Ok(env) => envs.push(env),
            Err(_) => {
                // Our own database gave us a broken envelope: drop it rather than retry forever.
                tracing::warn!("dropping a damaged outbox entry");
                let _ = inner.db.outbox_remove(e.id).await;
            }
        }
    }
    let mut acked = match directory::presence_cached(inner, &to).await {
        Some(p) => push(inner, &to, &p.chat, &envs).await,
        None => HashSet::new(),
    };
    if acked.is_empty() {
        // The cached presence may be stale: look again once.
        directory::forget_presence(inner, &to).await;
        if let Some(p) = directory::presence_cached(inner, &to).await {
            acked = push(inner, &to, &p.chat, &envs).await;
        }
    }
    // Concurrent, so that group commit takes them in few disk syncs.
    let mut set = JoinSet::new();
    for id in &acked {
        let (db, id) = (inner.db.clone(), *id);
        set.spawn(async move { (id, db.ack_delivered(id.0, to.0).await) });
    }
    while let Some(r) = set.join_next().await {
        if let Ok((id, Ok(true))) = r {
            emit_state(inner, &id, MessageState::Delivered);
        }
    }
    for e in &entries {
        let id = MessageId(e.id);
        if acked.contains(&id) {
            continue;
        }
        let Some(env) = envs.iter().find(|v| v.id == id) else {
            continue;
        };
        let backoff = |attempts: u32| -> i64 {
            let secs = 2u64.saturating_pow(attempts.min(8)).min(300);
            (now_ms() + secs * 1000) as i64
        };
        if !e.relayed && store_at_relays(inner, env).await > 0 {
            if let Ok(true) = inner.db.outbox_set_relayed(e.id, backoff(e.attempts)).await {
                emit_state(inner, &id, MessageState::Relayed);
            }
            continue;
        }
        let _ = inner.db.outbox_reschedule(e.id, backoff(e.attempts)).await;
    }
}

/// Stores `env` at the nodes closest to its recipient's mailbox; returns how many took it.
pub(crate) async fn store_at_relays(inner: &Inner, env: &Envelope) -> usize {
    let Ok((nodes, _)) = inner.dht.find_node(mailbox_target(&env.recipient)).await else {
        return 0;
    };
    let mut set = JoinSet::new();
    for n in nodes {
        let dht = inner.dht.clone();
        let args = wire::args("env", Value::Bytes(env.to_bytes()));
        set.spawn(async move { dht.request(n.addr, wire::STORE, args).await });
    }
    let mut stored = 0;
    while let Some(r) = set.join_next().await {
        if matches!(r, Ok(Ok(Some(Ok(_))))) {
            stored += 1;
        }
    }
    stored
}

/// Sends envelopes to `to` over a (reused) session, trying its addresses in
/// turn; returns the ids it acknowledged.
pub(crate) async fn push(
    inner: &Inner,
    to: &UserKey,
    addrs: &[SocketAddr],
    envs: &[Envelope],
) -> HashSet<MessageId> {
    let slot = {
        let mut sessions = inner.sessions.lock().await;
        sessions
            .entry(*to)
            .or_insert_with(|| Arc::new(Mutex::new(None)))
            .clone()
    };
    let mut guard = slot.lock().await;
    for attempt in 0..2 {
        if guard.is_none() {
            *guard = connect_any(inner, to, addrs).await;
        }
        let Some(sess) = guard.as_mut() else {
            return HashSet::new();
        };
        match exchange(sess, envs).await {
            Ok(acked) => return acked,
            Err(e) => {
                // A kept session may have died since: reconnect once.
                tracing::debug!("session to {} failed: {e}", to.to_hex());
                *guard = None;
                if attempt == 1 {
                    break;
                }
            }
        }
    }
    HashSet::new()
}

pub(crate) async fn connect_any(
    inner: &Inner,
    to: &UserKey,
    addrs: &[SocketAddr],
) -> Option<Session> {
    for addr in addrs {
        let Ok(Ok(stream)) = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await
        else {
            continue;
        };
        match session::connect(stream, &inner.keys, to.0).await {
            Ok(s) => return Some(s),
            Err(e) => tracing::debug!("session handshake with {addr}: {e}"),
        }
    }
    None
}

/// Pipelines the envelopes, then reads acknowledgements until all are answered.
async fn exchange(sess: &mut Session, envs: &[Envelope]) -> Result<HashSet<MessageId>, ChatError> {
    let io = |e: session::SessionError| ChatError::BadMessage(e.to_string());
    for env in envs {
        let frame = postcard::to_stdvec(&Frame::Envelope(env.to_bytes()))
            .map_err(|e| ChatError::BadMessage(e.to_string()))?;
        sess.writer.queue(&frame).map_err(io)?;
    }
    sess.writer.flush().await.map_err(io)?;
    let mut acked = HashSet::new();
    let mut answered = 0;
    while answered < envs.len() {
        let bytes = tokio::time::timeout(ACK_TIMEOUT, sess.reader.recv())
            .await
            .map_err(|_| ChatError::BadMessage("no acknowledgement in time".into()))?
            .map_err(io)?;
        match postcard::from_bytes::<Frame>(&bytes) {
            Ok(Frame::Ack(id)) => {
                acked.insert(MessageId(id));
                answered += 1;
            }
            Ok(Frame::Nack(_, why)) => {
                tracing::debug!("envelope refused: {why}");
                answered += 1;
            }
            _ => return Err(ChatError::BadMessage("unexpected frame".into())),
        }
    }
    Ok(acked)
}

// ----- receiving -------------------------------------------------------------

/// Accepts sessions from peers (senders, and relays pushing held messages).
pub(crate) async fn accept_loop(inner: Arc<Inner>, listener: TcpListener) {
    loop {
        let Ok((stream, from)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let inner = inner.clone();
        tokio::spawn(async move {
            match session::accept(stream, &inner.keys).await {
                Ok(sess) => serve_session(inner, sess).await,
                Err(e) => tracing::debug!("session from {from} refused: {e}"),
            }
        });
    }
}

/// Most envelopes of one session being stored at once: enough for group
/// commit to fill its batches, bounded so a fast sender cannot grow memory.
const IN_FLIGHT_PER_SESSION: usize = 512;

/// Reads envelopes from a session and stores them concurrently (so that many
/// share one disk sync); each is acknowledged as soon as it is durable.
async fn serve_session(inner: Arc<Inner>, sess: Session) {
    let Session {
        peer,
        mut writer,
        mut reader,
    } = sess;
    let peer = UserKey(peer);
    let (ack_tx, mut ack_rx) = tokio::sync::mpsc::channel::<Frame>(IN_FLIGHT_PER_SESSION);
    let acks = tokio::spawn(async move {
        while let Some(frame) = ack_rx.recv().await {
            // Acks already waiting go in the same write.
            let mut next = Some(frame);
            while let Some(frame) = next.take() {
                if let Ok(out) = postcard::to_stdvec(&frame)
                    && writer.queue(&out).is_err()
                {
                    return;
                }
                if writer.queued() < super::link::BURST {
                    next = ack_rx.try_recv().ok();
                }
            }
            if writer.flush().await.is_err() {
                break;
            }
        }
    });
    let slots = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT_PER_SESSION));
    let mut shutdown = inner.shutdown.clone();
    let mut open = true;
    while open {
        let bytes = tokio::select! {
            r = reader.recv() => match r {
                Ok(b) => b,
                Err(_) => break,
            },
            // A node shutting down closes its sessions.
            _ = shutdown.changed() => break,
        };
        // The frames that came with this one are taken too, and verified together.
        let mut batch = Vec::new();
        let mut next = Some(bytes);
        while let Some(bytes) = next.take() {
            let Ok(Frame::Envelope(b)) = postcard::from_bytes::<Frame>(&bytes) else {
                open = false;
                break;
            };
            match Envelope::from_bytes(&b) {
                Ok(env) => batch.push(env),
                Err(e) => {
                    super::refuse(&inner, &e);
                    let _ = ack_tx.send(Frame::Nack([0; 16], e.to_string())).await;
                }
            }
            if batch.len() < VERIFY_BATCH && reader.frame_ready() {
                match reader.recv().await {
                    Ok(b) => next = Some(b),
                    Err(_) => open = false,
                }
            }
        }
        if batch.is_empty() {
            continue;
        }
        let Ok(permits) = slots.clone().acquire_many_owned(batch.len() as u32).await else {
            break;
        };
        let (inner, ack_tx) = (inner.clone(), ack_tx.clone());
        tokio::spawn(async move {
            let verdicts = peerchat_chat::envelope::verify_batch(&batch);
            let batch = batch.into_iter().zip(verdicts).collect();
            for frame in deliver_many(&inner, batch, peer).await {
                let _ = ack_tx.send(frame).await;
            }
            drop(permits);
        });
    }
    drop(ack_tx);
    let _ = acks.await;
}

/// Most envelopes of one session verified together (see
/// [`peerchat_chat::envelope::verify_batch`]): those that arrived in one read.
const VERIFY_BATCH: usize = 256;

/// Takes in an envelope addressed to us: verified, opened, durable in the
/// history (exactly once, by id) before this returns Ok, which is when it may
/// be acknowledged; Ok(true) when it was a text new to us. `relayed`: it came through a relay, so (in the background)
/// the relays of our mailbox are told to drop their copies and the sender gets
/// a delivery receipt.
pub(crate) async fn deliver_incoming(
    inner: &Arc<Inner>,
    env: Envelope,
    relayed: bool,
) -> Result<bool, ChatError> {
    let verdict = env.verify();
    deliver_checked(inner, env, verdict, relayed).await
}

/// [`deliver_incoming`] with the signature check already done: `verdict` is
/// what [`Envelope::verify`] (or a batch check) said of `env`.
async fn deliver_checked(
    inner: &Arc<Inner>,
    env: Envelope,
    verdict: Result<(), peerchat_chat::EnvelopeError>,
    relayed: bool,
) -> Result<bool, ChatError> {
    match open_checked(inner, &env, verdict)? {
        Content::Text {
            text, sender_name, ..
        } => {
            let fresh = inner.db.insert_incoming(incoming(&env, text)).await?;
            after_text(inner, &env, sender_name, fresh, relayed).await;
            Ok(fresh)
        }
        receipt => {
            apply_receipt(inner, &env, receipt).await;
            Ok(false)
        }
    }
}

/// [`deliver_checked`] for envelopes that came together on one session: the
/// texts among them are stored in one database request. Returns each one's
/// answer to the session, in order.
async fn deliver_many(
    inner: &Arc<Inner>,
    batch: Vec<(Envelope, Result<(), peerchat_chat::EnvelopeError>)>,
    peer: UserKey,
) -> Vec<Frame> {
    let mut answers: Vec<Option<Frame>> = Vec::with_capacity(batch.len());
    // (index, envelope, sender name) of the texts, and their rows.
    let mut texts = Vec::new();
    let mut rows = Vec::new();
    for (i, (env, verdict)) in batch.into_iter().enumerate() {
        match open_checked(inner, &env, verdict) {
            Ok(Content::Text {
                text, sender_name, ..
            }) => {
                rows.push(incoming(&env, text));
                texts.push((i, env, sender_name));
                answers.push(None);
            }
            Ok(receipt) => {
                apply_receipt(inner, &env, receipt).await;
                answers.push(Some(Frame::Ack(env.id.0)));
            }
            Err(e) => answers.push(Some(Frame::Nack(env.id.0, e.to_string()))),
        }
    }
    if !rows.is_empty() {
        match inner.db.insert_incoming_many(rows).await {
            Ok(fresh) => {
                for ((i, env, sender_name), fresh) in texts.into_iter().zip(fresh) {
                    let relayed = env.sender != peer;
                    after_text(inner, &env, sender_name, fresh, relayed).await;
                    answers[i] = Some(Frame::Ack(env.id.0));
                }
            }
            Err(e) => {
                let e = ChatError::from(e).to_string();
                for (i, env, _) in texts {
                    answers[i] = Some(Frame::Nack(env.id.0, e.clone()));
                }
            }
        }
    }
    answers
        .into_iter()
        .map(|a| a.unwrap_or(Frame::Nack([0; 16], "not handled".into())))
        .collect()
}

/// Checks that `env` is for us and that its signature held (`verdict`), and opens it.
fn open_checked(
    inner: &Inner,
    env: &Envelope,
    verdict: Result<(), peerchat_chat::EnvelopeError>,
) -> Result<Content, ChatError> {
    if env.recipient != inner.me {
        super::refuse(inner, &"not addressed to this user");
        return Err(ChatError::BadMessage("not addressed to this user".into()));
    }
    verdict
        .and_then(|()| env.open_verified(&inner.identity, &inner.opened))
        .map_err(|e| {
            super::refuse(inner, &e);
            ChatError::BadMessage(e.to_string())
        })
}

/// The history row of a received text.
fn incoming(env: &Envelope, text: String) -> IncomingMessage {
    IncomingMessage {
        id: env.id.0,
        from: env.sender.0,
        text,
        sent_ms: env.timestamp_ms as i64,
        received_ms: now_ms() as i64,
    }
}

/// What follows a received text's storing: it is shown if `fresh` (once its
/// sender's name is checked, for someone new), and if it came through a relay,
/// the relays and the sender are told.
async fn after_text(
    inner: &Arc<Inner>,
    env: &Envelope,
    sender_name: Option<String>,
    fresh: bool,
    relayed: bool,
) {
    if fresh {
        match sender_name {
            // Someone new: check the name they give against the
            // network before the message is shown under it.
            Some(name) if !directory::is_known(inner, &env.sender).await => {
                let (inner, id, sender) = (inner.clone(), env.id, env.sender);
                tokio::spawn(async move {
                    directory::learn_name(&inner, sender, &name).await;
                    announce_message(&inner, id).await;
                });
            }
            _ => announce_message(inner, env.id).await,
        }
    }
    if relayed {
        // Every relay's copy is dropped and the sender told, in batches.
        inner.after_delivery.push(env.sender, env.id, fresh);
    }
}

/// A delivery or read receipt from `env`'s sender.
async fn apply_receipt(inner: &Inner, env: &Envelope, receipt: Content) {
    match receipt {
        Content::Delivered { ids } => {
            for id in ids {
                if let Ok(true) = inner.db.ack_delivered(id.0, env.sender.0).await {
                    emit_state(inner, &id, MessageState::Delivered);
                }
            }
        }
        Content::Read { ids } => {
            for id in ids {
                if let Ok(true) = inner.db.ack_read(id.0, env.sender.0).await {
                    emit_state(inner, &id, MessageState::Read);
                }
            }
        }
        Content::Text { .. } => {}
    }
}

/// Tells event subscribers about a received message.
async fn announce_message(inner: &Inner, id: MessageId) {
    if inner.events.receiver_count() > 0
        && let Ok(Some(stored)) = inner.db.message(id.0).await
    {
        let _ = inner
            .events
            .send(ChatEvent::Message(view_of(inner, &stored).await));
    }
}

/// Most messages waiting for their relay acks and receipts; beyond it new ones
/// get none (relays then retry, and a retried copy is acknowledged again).
const AFTER_DELIVERY_MAX: usize = 65_536;

/// Messages taken from relays, waiting for the relay acks and sender receipts
/// that [`after_delivery_worker`] sends in batches: one mailbox lookup and one
/// signed ack per batch instead of one per message (at login, tens of
/// messages arrive at once, each from several relays).
#[derive(Default)]
pub(crate) struct AfterDelivery {
    /// (sender, id, new to us: a receipt is due).
    pending: std::sync::Mutex<Vec<(UserKey, MessageId, bool)>>,
    wake: tokio::sync::Notify,
}

impl AfterDelivery {
    pub(crate) fn push(&self, sender: UserKey, id: MessageId, fresh: bool) {
        let mut pending = lock(&self.pending);
        if pending.len() < AFTER_DELIVERY_MAX {
            pending.push((sender, id, fresh));
        }
        drop(pending);
        self.wake.notify_one();
    }

    fn take(&self) -> Vec<(UserKey, MessageId, bool)> {
        std::mem::take(&mut *lock(&self.pending))
    }
}

/// Sends the relay acks and sender receipts of [`AfterDelivery`], batch by batch.
pub(crate) async fn after_delivery_worker(inner: Arc<Inner>) {
    let mut shutdown = inner.shutdown.clone();
    loop {
        tokio::select! {
            _ = inner.after_delivery.wake.notified() => {}
            _ = shutdown.changed() => return,
        }
        // Let a burst (a relay pushing what it holds) gather into one batch.
        tokio::time::sleep(Duration::from_millis(10)).await;
        let batch = inner.after_delivery.take();
        if batch.is_empty() {
            continue;
        }
        let mut ids: Vec<MessageId> = batch.iter().map(|(_, id, _)| *id).collect();
        ids.sort();
        ids.dedup();
        if let Ok((nodes, _)) = inner.dht.find_node(mailbox_target(&inner.me)).await {
            ack_relays(&inner, &nodes, &ids).await;
        }
        // One receipt per new message: a replayed copy must not make us seal
        // and store another one each time.
        let mut by_sender: BTreeMap<UserKey, Vec<MessageId>> = BTreeMap::new();
        for (sender, id, fresh) in batch {
            if fresh {
                by_sender.entry(sender).or_default().push(id);
            }
        }
        for (sender, mut ids) in by_sender {
            ids.sort();
            ids.dedup();
            for chunk in ids.chunks(peerchat_chat::MAX_RECEIPT_IDS) {
                send_receipt(
                    &inner,
                    sender,
                    Content::Delivered {
                        ids: chunk.to_vec(),
                    },
                )
                .await;
            }
        }
    }
}

/// Tells these relays of our mailbox that these ids arrived (signed acks).
async fn ack_relays(inner: &Inner, nodes: &[peerchat_kad::NodeInfo], ids: &[MessageId]) {
    for chunk in ids.chunks(MAX_ACK_IDS) {
        let Ok(ack) = DeliveryAck::new(&inner.identity, chunk.to_vec(), now_ms()) else {
            continue;
        };
        let bytes = ack.to_bytes();
        let mut set = JoinSet::new();
        for n in nodes {
            let dht = inner.dht.clone();
            let addr = n.addr;
            let args = wire::args("ack", Value::Bytes(bytes.clone()));
            set.spawn(async move { dht.request(addr, wire::ACK, args).await });
        }
        while set.join_next().await.is_some() {}
    }
}

/// Fetches our mailbox from the nodes closest to it, all at once (at login, and
/// now and then): every envelope is stored, then acknowledged to every relay,
/// and its sender gets a receipt (in the background). Returns how many texts
/// were new.
pub(crate) async fn fetch_mailbox(inner: &Arc<Inner>) -> usize {
    let Ok((nodes, _)) = inner.dht.find_node(mailbox_target(&inner.me)).await else {
        return 0;
    };
    // Ids already taken in this fetch: the same message waits at several
    // relays, and only the first copy needs opening and storing.
    let taken: Arc<std::sync::Mutex<HashSet<MessageId>>> = Arc::default();
    let mut set = JoinSet::new();
    for n in nodes {
        let (inner, taken) = (inner.clone(), taken.clone());
        set.spawn(async move {
            let mut new = 0;
            for _round in 0..64 {
                let auth = FetchAuth::new(&inner.identity, n.id, now_ms());
                let args = wire::args("auth", Value::Bytes(auth.to_bytes()));
                let Ok(Some(Ok(resp))) = inner.dht.request(n.addr, wire::FETCH, args).await else {
                    break;
                };
                let mut ids = Vec::new();
                let mut fresh = Vec::new();
                for b in wire::byte_list(&resp.other, "envs") {
                    let env = match Envelope::from_bytes(b) {
                        Ok(env) => env,
                        Err(e) => {
                            super::refuse(&inner, &e);
                            continue;
                        }
                    };
                    ids.push(env.id);
                    if lock(&taken).insert(env.id) {
                        fresh.push(env);
                    }
                }
                if ids.is_empty() {
                    break;
                }
                // Stored together, so that they share the database's commits.
                let stored = futures_util::future::join_all(fresh.into_iter().map(|env| {
                    let inner = inner.clone();
                    async move {
                        let (id, sender) = (env.id, env.sender);
                        (sender, id, deliver_incoming(&inner, env, false).await)
                    }
                }))
                .await;
                for (sender, id, result) in stored {
                    match result {
                        Ok(fresh) => {
                            new += usize::from(fresh);
                            inner.after_delivery.push(sender, id, fresh);
                        }
                        // Not on our disk: not acknowledged, so the relays keep
                        // it and it comes again with the next fetch.
                        Err(ChatError::Db(e)) => {
                            tracing::warn!("storing a message from the mailbox: {e}");
                            lock(&taken).remove(&id);
                            ids.retain(|i| *i != id);
                        }
                        // Refused for good (forged, not for us): acknowledged so
                        // that the relay drops it.
                        Err(e) => tracing::debug!("mailbox envelope refused: {e}"),
                    }
                }
                if ids.is_empty() {
                    break;
                }
                // This relay is acked at once, so that it hands out the next
                // ones; the other relays' copies go in the next batch.
                ack_relays(&inner, std::slice::from_ref(&n), &ids).await;
                if wire::int(&resp.other, "more") != Some(1) {
                    break;
                }
            }
            new
        });
    }
    let mut n = 0;
    while let Some(r) = set.join_next().await {
        n += r.unwrap_or(0);
    }
    n
}
