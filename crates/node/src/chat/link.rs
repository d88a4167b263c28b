//! A link: one kept Noise session to a peer that messages stream through.
//!
//! The sender writes envelopes as they come (no waiting for the previous
//! acknowledgement); a reader takes the peer's acknowledgements as they come and
//! clears each message from the durable outbox. Envelopes in flight on a link
//! are remembered so the outbox worker does not send them twice; when a link
//! dies they are simply due again in the outbox, which never lost them.

use std::collections::HashMap;
use std::sync::Arc;

use peerchat_chat::{MessageId, UserKey};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::delivery::{Frame, connect_any};
use super::{Inner, directory, emit_state};
use crate::db::MessageState;

/// Envelopes queued on one link before senders fall back to the outbox worker.
const LINK_QUEUE: usize = 4096;
/// Most bytes of frames written at once.
pub(crate) const BURST: usize = 64 * 1024;

/// A live link to one peer.
pub(crate) struct Link {
    tx: mpsc::Sender<Vec<u8>>,
}

/// Links by peer, and the ids in flight on them.
#[derive(Default)]
pub(crate) struct Links {
    links: HashMap<UserKey, Link>,
    /// Ids handed to a link, and the peer whose link has them.
    in_flight: HashMap<MessageId, UserKey>,
}

impl Links {
    /// Whether `id` is on its way on a live link.
    pub(crate) fn in_flight(&self, id: &MessageId) -> bool {
        self.in_flight.contains_key(id)
    }

    /// Whether a link to `peer` is up (sending on it does not wait for the network).
    pub(crate) fn is_up(&self, peer: &UserKey) -> bool {
        self.links.contains_key(peer)
    }
}

/// Sends an envelope (`id`, encoded as `bytes`) on the link to its recipient
/// `to`, opening one if needed. Returns false when no link could carry it (the
/// outbox worker will).
pub(crate) async fn send(inner: &Arc<Inner>, to: UserKey, id: MessageId, bytes: Vec<u8>) -> bool {
    {
        let mut links = inner.links.lock().await;
        if let Some(link) = links.links.get(&to) {
            match link.tx.try_send(bytes) {
                Ok(()) => {
                    links.in_flight.insert(id, to);
                    return true;
                }
                Err(mpsc::error::TrySendError::Full(_)) => return false,
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    links.links.remove(&to);
                    return false;
                }
            }
        }
    }
    if !open(inner, to).await {
        return false;
    }
    let mut links = inner.links.lock().await;
    let sent = match links.links.get(&to) {
        Some(l) => l.tx.try_send(bytes).is_ok(),
        None => false,
    };
    if sent {
        links.in_flight.insert(id, to);
    }
    sent
}

/// Most acknowledgements cleared from the outbox in one database request.
const ACK_BATCH: usize = 1024;

/// Ids acknowledged together, and whether clearing each changed anything.
type Acked = (Vec<MessageId>, Result<Vec<bool>, crate::db::DbError>);

/// Announces the delivered ones of a batch of acks and forgets them in flight.
async fn settle(inner: &Inner, (ids, changed): Acked) {
    if let Ok(changed) = &changed {
        for (id, _) in ids.iter().zip(changed).filter(|(_, c)| **c) {
            emit_state(inner, id, MessageState::Delivered);
        }
    }
    let mut links = inner.links.lock().await;
    for id in &ids {
        links.in_flight.remove(id);
    }
}

/// Opens a link to `to` (its presence gives the address). Returns whether one is up.
async fn open(inner: &Arc<Inner>, to: UserKey) -> bool {
    let Some(p) = directory::presence_cached(inner, &to).await else {
        return false;
    };
    let Some(sess) = connect_any(inner, &to, &p.chat).await else {
        directory::forget_presence(inner, &to).await;
        return false;
    };
    let mut links = inner.links.lock().await;
    if links.links.contains_key(&to) {
        // Someone else opened one meanwhile: keep theirs.
        return true;
    }
    let (tx, rx) = mpsc::channel(LINK_QUEUE);
    links.links.insert(to, Link { tx });
    drop(links);
    tokio::spawn(run(inner.clone(), to, sess, rx));
    true
}

async fn run(
    inner: Arc<Inner>,
    to: UserKey,
    sess: crate::session::Session,
    mut rx: mpsc::Receiver<Vec<u8>>,
) {
    let crate::session::Session {
        mut writer,
        mut reader,
        ..
    } = sess;
    let mut write = tokio::spawn(async move {
        while let Some(bytes) = rx.recv().await {
            // Whatever else is already waiting goes in the same write.
            let mut next = Some(bytes);
            while let Some(bytes) = next.take() {
                if let Ok(frame) = postcard::to_stdvec(&Frame::Envelope(bytes))
                    && writer.queue(&frame).is_err()
                {
                    return;
                }
                if writer.queued() < BURST {
                    next = rx.try_recv().ok();
                }
            }
            if writer.flush().await.is_err() {
                return;
            }
        }
    });
    // Reading a frame is not cancel-safe (a partial read would be lost), so it
    // runs in its own task and hands whole frames over a channel.
    let (frames_tx, mut frames) = mpsc::channel::<Vec<u8>>(1024);
    let read = tokio::spawn(async move {
        while let Ok(b) = reader.recv().await {
            if frames_tx.send(b).await.is_err() {
                return;
            }
        }
    });
    let mut acks: JoinSet<Acked> = JoinSet::new();
    let mut shutdown = inner.shutdown.clone();
    let mut open = true;
    while open {
        let bytes = tokio::select! {
            r = frames.recv() => match r {
                Some(b) => b,
                None => break,
            },
            Some(Ok(acked)) = acks.join_next(), if !acks.is_empty() => {
                settle(&inner, acked).await;
                continue;
            }
            _ = &mut write => break,
            _ = shutdown.changed() => break,
        };
        // The acks that came with this one clear the outbox in one request.
        let mut ids = Vec::new();
        let mut next = Some(bytes);
        while let Some(bytes) = next.take() {
            match postcard::from_bytes::<Frame>(&bytes) {
                Ok(Frame::Ack(id)) => ids.push(MessageId(id)),
                Ok(Frame::Nack(id, why)) => {
                    tracing::debug!("{} refused {}: {why}", to.to_hex(), MessageId(id).to_hex());
                    inner.links.lock().await.in_flight.remove(&MessageId(id));
                }
                _ => {
                    open = false;
                    break;
                }
            }
            if ids.len() < ACK_BATCH {
                next = frames.try_recv().ok();
            }
        }
        if !ids.is_empty() {
            let db = inner.db.clone();
            acks.spawn(async move {
                let r = db
                    .ack_delivered_many(ids.iter().map(|id| id.0).collect(), to.0)
                    .await;
                (ids, r)
            });
        }
    }
    write.abort();
    read.abort();
    while let Some(Ok(acked)) = acks.join_next().await {
        settle(&inner, acked).await;
    }
    // Whatever was not acknowledged stays in the outbox, due for the worker.
    let mut links = inner.links.lock().await;
    links.links.remove(&to);
    links.in_flight.retain(|_, peer| *peer != to);
    drop(links);
    inner.outbox_wake.notify_one();
}
