//! Message history, seen ids and the outbox.

use rusqlite::{Connection, OptionalExtension, params};

use super::types::{
    Conversation, IncomingMessage, MESSAGE_COLS, MessageId, MessageState, OUTBOX_COLS, OutboxEntry,
    OutgoingMessage, StoredMessage, UserKey, blob, count, message_from_row, outbox_from_row,
};
use super::{Db, DbError, sql_limit};

/// Moves a message's state forward only; returns whether it changed.
fn advance(conn: &Connection, id: &MessageId, state: MessageState) -> Result<bool, DbError> {
    let n = conn
        .prepare_cached(
            "UPDATE messages SET state = ?2 WHERE id = ?1 AND \
             (CASE state WHEN 'queued' THEN 0 WHEN 'relayed' THEN 1 \
              WHEN 'delivered' THEN 2 WHEN 'read' THEN 3 ELSE -1 END) < ?3",
        )?
        .execute(params![&id[..], state.as_str(), state.rank()])?;
    Ok(n > 0)
}

/// Moves our message `id` to `peer` forward to `state` (never backwards).
fn advance_sent_to(
    conn: &Connection,
    id: &MessageId,
    peer: &UserKey,
    state: MessageState,
) -> Result<bool, DbError> {
    let n = conn
        .prepare_cached(
            "UPDATE messages SET state = ?2 WHERE id = ?1 AND peer = ?4 AND direction = 'out' AND \
             (CASE state WHEN 'queued' THEN 0 WHEN 'relayed' THEN 1 \
              WHEN 'delivered' THEN 2 WHEN 'read' THEN 3 ELSE -1 END) < ?3",
        )?
        .execute(params![&id[..], state.as_str(), state.rank(), &peer[..]])?;
    Ok(n > 0)
}

/// Counts a delivery attempt of outbox entry `id` and sets the next one (and,
/// with `relayed`, flags that relays hold a copy). Returns whether it exists.
fn count_attempt(
    conn: &Connection,
    id: &MessageId,
    next_attempt_ms: i64,
    relayed: bool,
) -> Result<bool, DbError> {
    let n = conn
        .prepare_cached(
            "UPDATE outbox SET attempts = attempts + 1, next_attempt_ms = ?2, \
             relayed = MAX(relayed, ?3) WHERE id = ?1",
        )?
        .execute(params![&id[..], next_attempt_ms, relayed as i64])?;
    Ok(n > 0)
}

/// How long a new outbox entry is left to the sender's fast path before the
/// outbox worker takes it.
pub(crate) const FAST_PATH_GRACE_MS: i64 = 3_000;

impl Db {
    /// Stores a received message and remembers its id, atomically and durably.
    ///
    /// Returns `false`, changing nothing, if the id was seen before (a replay or
    /// a second copy from another relay): the caller shows the message only
    /// when this returns `true`, and acknowledges it in both cases.
    pub async fn insert_incoming(&self, msg: IncomingMessage) -> Result<bool, DbError> {
        self.write_rerun(move |conn| {
            let fresh = conn
                .prepare_cached("INSERT INTO seen (id, seen_ms) VALUES (?1, ?2) ON CONFLICT DO NOTHING")?
                .execute(params![&msg.id[..], msg.received_ms])?;
            if fresh == 0 {
                return Ok(false);
            }
            let n = conn
                .prepare_cached(
                    "INSERT INTO messages (id, peer, direction, sender, text, sent_ms, received_ms, state) \
                     VALUES (?1, ?2, 'in', ?2, ?3, ?4, ?5, 'delivered') ON CONFLICT DO NOTHING",
                )?
                .execute(params![&msg.id[..], &msg.from[..], msg.text, msg.sent_ms, msg.received_ms])?;
            Ok(n > 0)
        })
        .await
    }

    /// [`Db::insert_incoming`] for many messages, in one request (atomic as a
    /// whole): whether each was new.
    pub async fn insert_incoming_many(
        &self,
        msgs: Vec<IncomingMessage>,
    ) -> Result<Vec<bool>, DbError> {
        self.write_rerun(move |conn| {
            let mut seen = conn.prepare_cached(
                "INSERT INTO seen (id, seen_ms) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
            )?;
            let mut insert = conn.prepare_cached(
                "INSERT INTO messages (id, peer, direction, sender, text, sent_ms, received_ms, state) \
                 VALUES (?1, ?2, 'in', ?2, ?3, ?4, ?5, 'delivered') ON CONFLICT DO NOTHING",
            )?;
            msgs.iter()
                .map(|msg| {
                    if seen.execute(params![&msg.id[..], msg.received_ms])? == 0 {
                        return Ok(false);
                    }
                    let n = insert.execute(params![
                        &msg.id[..],
                        &msg.from[..],
                        msg.text,
                        msg.sent_ms,
                        msg.received_ms
                    ])?;
                    Ok(n > 0)
                })
                .collect()
        })
        .await
    }

    /// Stores an outgoing message (history, state `queued`) and its envelope in
    /// the outbox, atomically and durably. Fails if the id exists. The outbox
    /// entry is due [`FAST_PATH_GRACE_MS`] later: the sender streams it at once
    /// and calls [`Db::outbox_reschedule`] only if that fails.
    pub async fn insert_outgoing(
        &self,
        msg: OutgoingMessage,
        envelope: Vec<u8>,
    ) -> Result<(), DbError> {
        self.write_rerun(move |conn| {
            conn.prepare_cached(
                "INSERT INTO messages (id, peer, direction, sender, text, sent_ms, received_ms, state) \
                 VALUES (?1, ?2, 'out', ?3, ?4, ?5, ?5, 'queued')",
            )?
            .execute(params![&msg.id[..], &msg.to[..], &msg.from[..], msg.text, msg.sent_ms])?;
            conn.prepare_cached(
                "INSERT INTO outbox (id, recipient, envelope, created_ms, attempts, next_attempt_ms, relayed) \
                 VALUES (?1, ?2, ?3, ?4, 0, ?5, 0)",
            )?
            .execute(params![
                &msg.id[..],
                &msg.to[..],
                envelope,
                msg.sent_ms,
                msg.sent_ms.saturating_add(FAST_PATH_GRACE_MS)
            ])?;
            Ok(())
        })
        .await
    }

    /// Moves a message's state forward (queued < relayed < delivered < read).
    /// Returns whether it changed: `false` for an unknown id or a state that
    /// is not ahead of the current one.
    pub async fn set_state(&self, id: MessageId, state: MessageState) -> Result<bool, DbError> {
        self.write(move |conn| advance(conn, &id, state)).await
    }

    /// `peer` acknowledged `id`: drops its outbox entry and marks it delivered,
    /// atomically. Returns whether anything changed. Only the message's own
    /// recipient can acknowledge it: an ack from anyone else (who saw the id go
    /// by) changes nothing, so it cannot stop the outbox from delivering.
    pub async fn ack_delivered(&self, id: MessageId, peer: UserKey) -> Result<bool, DbError> {
        self.write_rerun(move |conn| {
            let removed = conn
                .prepare_cached("DELETE FROM outbox WHERE id = ?1 AND recipient = ?2")?
                .execute([&id[..], &peer[..]])?;
            let moved = advance_sent_to(conn, &id, &peer, MessageState::Delivered)?;
            Ok(removed > 0 || moved)
        })
        .await
    }

    /// [`Db::ack_delivered`] for many ids from one `peer` (the acks that came
    /// in together), in one request: whether each changed anything.
    pub async fn ack_delivered_many(
        &self,
        ids: Vec<MessageId>,
        peer: UserKey,
    ) -> Result<Vec<bool>, DbError> {
        self.write_rerun(move |conn| {
            let mut delete =
                conn.prepare_cached("DELETE FROM outbox WHERE id = ?1 AND recipient = ?2")?;
            ids.iter()
                .map(|id| {
                    let removed = delete.execute([&id[..], &peer[..]])?;
                    let moved = advance_sent_to(conn, id, &peer, MessageState::Delivered)?;
                    Ok(removed > 0 || moved)
                })
                .collect()
        })
        .await
    }

    /// `peer` read `id` (a message we sent them); returns whether it changed.
    pub async fn ack_read(&self, id: MessageId, peer: UserKey) -> Result<bool, DbError> {
        self.write(move |conn| {
            conn.prepare_cached("DELETE FROM outbox WHERE id = ?1 AND recipient = ?2")?
                .execute([&id[..], &peer[..]])?;
            advance_sent_to(conn, &id, &peer, MessageState::Read)
        })
        .await
    }

    /// Marks every received message from `peer` read; returns how many changed.
    pub async fn mark_read(&self, peer: UserKey) -> Result<u64, DbError> {
        self.write(move |conn| {
            let n = conn
                .prepare_cached(
                    "UPDATE messages SET state = 'read' \
                     WHERE peer = ?1 AND direction = 'in' AND state <> 'read'",
                )?
                .execute([&peer[..]])?;
            Ok(n as u64)
        })
        .await
    }

    /// One message by id.
    pub async fn message(&self, id: MessageId) -> Result<Option<StoredMessage>, DbError> {
        self.read(move |conn| {
            let sql = format!("SELECT {MESSAGE_COLS} FROM messages WHERE id = ?1");
            Ok(conn
                .prepare_cached(&sql)?
                .query_row([&id[..]], |r| message_from_row(r, 0))
                .optional()?)
        })
        .await
    }

    /// The newest `limit` messages of the conversation with `peer`, oldest first.
    pub async fn history(
        &self,
        peer: UserKey,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, DbError> {
        let n = sql_limit(limit);
        self.read(move |conn| {
            let sql = format!(
                "SELECT * FROM (SELECT {MESSAGE_COLS}, rowid AS r FROM messages WHERE peer = ?1 \
                 ORDER BY sent_ms DESC, rowid DESC LIMIT ?2) ORDER BY sent_ms, r"
            );
            let mut st = conn.prepare_cached(&sql)?;
            let rows = st.query_map(params![&peer[..], n], |r| message_from_row(r, 0))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    /// The newest `limit` received messages, from everyone, oldest first.
    pub async fn inbox(&self, limit: usize) -> Result<Vec<StoredMessage>, DbError> {
        let n = sql_limit(limit);
        self.read(move |conn| {
            let sql = format!(
                "SELECT * FROM (SELECT {MESSAGE_COLS}, rowid AS r FROM messages WHERE direction = 'in' \
                 ORDER BY received_ms DESC, rowid DESC LIMIT ?1) ORDER BY received_ms, r"
            );
            let mut st = conn.prepare_cached(&sql)?;
            let rows = st.query_map([n], |r| message_from_row(r, 0))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    /// Every conversation with its newest message and unread count, newest first.
    pub async fn conversations(&self) -> Result<Vec<Conversation>, DbError> {
        self.read(move |conn| {
            let sql = format!(
                "WITH peers AS (SELECT DISTINCT peer FROM messages) \
                 SELECT {cols}, \
                   (SELECT count(*) FROM messages u \
                    WHERE u.peer = p.peer AND u.direction = 'in' AND u.state <> 'read') \
                 FROM peers p JOIN messages m ON m.rowid = \
                   (SELECT x.rowid FROM messages x WHERE x.peer = p.peer \
                    ORDER BY x.sent_ms DESC, x.rowid DESC LIMIT 1) \
                 ORDER BY m.sent_ms DESC, m.rowid DESC",
                cols = MESSAGE_COLS
                    .split(", ")
                    .map(|c| format!("m.{c}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let mut st = conn.prepare_cached(&sql)?;
            let rows = st.query_map([], |r| {
                let last = message_from_row(r, 0)?;
                let unread: i64 = r.get(8)?;
                Ok(Conversation {
                    peer: last.peer,
                    last,
                    unread: count(unread),
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    /// Remembers a message id without storing a message (for envelopes that
    /// are not shown, such as receipts). Returns `false` if it was seen before.
    pub async fn seen_insert(&self, id: MessageId, now_ms: i64) -> Result<bool, DbError> {
        self.write(move |conn| {
            let n = conn
                .prepare_cached(
                    "INSERT INTO seen (id, seen_ms) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
                )?
                .execute(params![&id[..], now_ms])?;
            Ok(n > 0)
        })
        .await
    }

    /// Whether a message id was seen.
    pub async fn is_seen(&self, id: MessageId) -> Result<bool, DbError> {
        self.read(move |conn| {
            Ok(conn
                .prepare_cached("SELECT 1 FROM seen WHERE id = ?1")?
                .query_row([&id[..]], |_| Ok(()))
                .optional()?
                .is_some())
        })
        .await
    }

    /// Forgets ids seen before `before_ms` (keep them longer than the relay
    /// TTL, or a late copy could be shown twice). Returns how many went.
    pub async fn seen_prune(&self, before_ms: i64) -> Result<u64, DbError> {
        self.write(move |conn| {
            let n = conn
                .prepare_cached("DELETE FROM seen WHERE seen_ms < ?1")?
                .execute([before_ms])?;
            Ok(n as u64)
        })
        .await
    }

    /// Outbox entries due at `now_ms`, soonest first, at most `limit`.
    pub async fn outbox_due(&self, now_ms: i64, limit: usize) -> Result<Vec<OutboxEntry>, DbError> {
        let n = sql_limit(limit);
        self.read(move |conn| {
            let sql = format!(
                "SELECT {OUTBOX_COLS} FROM outbox WHERE next_attempt_ms <= ?1 \
                 ORDER BY next_attempt_ms, rowid LIMIT ?2"
            );
            let mut st = conn.prepare_cached(&sql)?;
            let rows = st.query_map(params![now_ms, n], outbox_from_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    /// When the soonest outbox entry is due (unix ms), if there is any.
    pub async fn outbox_next_due(&self) -> Result<Option<i64>, DbError> {
        self.read(|conn| {
            let mut st = conn.prepare_cached("SELECT min(next_attempt_ms) FROM outbox")?;
            Ok(st.query_row([], |r| r.get::<_, Option<i64>>(0))?)
        })
        .await
    }

    /// Every outbox entry, oldest first.
    pub async fn outbox_all(&self) -> Result<Vec<OutboxEntry>, DbError> {
        self.read(move |conn| {
            let sql = format!("SELECT {OUTBOX_COLS} FROM outbox ORDER BY created_ms, rowid");
            let mut st = conn.prepare_cached(&sql)?;
            let rows = st.query_map([], outbox_from_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    /// One outbox entry.
    pub async fn outbox_get(&self, id: MessageId) -> Result<Option<OutboxEntry>, DbError> {
        self.read(move |conn| {
            let sql = format!("SELECT {OUTBOX_COLS} FROM outbox WHERE id = ?1");
            Ok(conn
                .prepare_cached(&sql)?
                .query_row([&id[..]], outbox_from_row)
                .optional()?)
        })
        .await
    }

    /// A delivery attempt failed: counts it and sets the next one.
    /// Returns whether the entry exists.
    pub async fn outbox_reschedule(
        &self,
        id: MessageId,
        next_attempt_ms: i64,
    ) -> Result<bool, DbError> {
        self.write(move |conn| count_attempt(conn, &id, next_attempt_ms, false))
            .await
    }

    /// Relays now hold a copy: flags the entry, sets its next direct attempt,
    /// and moves the message to `relayed`, atomically. Returns whether the
    /// entry exists.
    pub async fn outbox_set_relayed(
        &self,
        id: MessageId,
        next_attempt_ms: i64,
    ) -> Result<bool, DbError> {
        self.write(move |conn| {
            let exists = count_attempt(conn, &id, next_attempt_ms, true)?;
            if exists {
                advance(conn, &id, MessageState::Relayed)?;
            }
            Ok(exists)
        })
        .await
    }

    /// Drops an outbox entry (the history row stays). Returns whether it existed.
    pub async fn outbox_remove(&self, id: MessageId) -> Result<bool, DbError> {
        self.write(move |conn| {
            let n = conn
                .prepare_cached("DELETE FROM outbox WHERE id = ?1")?
                .execute([&id[..]])?;
            Ok(n > 0)
        })
        .await
    }

    /// The recipients with entries in the outbox.
    pub async fn outbox_recipients(&self) -> Result<Vec<UserKey>, DbError> {
        self.read(move |conn| {
            let mut st = conn.prepare_cached("SELECT DISTINCT recipient FROM outbox")?;
            let rows = st.query_map([], |r| blob::<32>(r, 0))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(id: u8, to: u8) -> OutgoingMessage {
        OutgoingMessage {
            id: [id; 16],
            to: [to; 32],
            from: [1; 32],
            text: format!("message {id}"),
            sent_ms: 1_000,
        }
    }

    #[tokio::test]
    async fn texts_in_one_request_are_each_stored_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::open(dir.path().join("chat.db")).expect("open");
        let msg = |id: u8| IncomingMessage {
            id: [id; 16],
            from: [7; 32],
            text: format!("text {id}"),
            sent_ms: 5,
            received_ms: 6,
        };
        assert!(db.insert_incoming(msg(1)).await.expect("insert"));
        // 1 was seen before; 2 comes twice in the batch.
        let fresh = db
            .insert_incoming_many(vec![msg(1), msg(2), msg(3), msg(2)])
            .await
            .expect("insert");
        assert_eq!(fresh, vec![false, true, true, false]);
        let texts: Vec<String> = db
            .history([7; 32], 10)
            .await
            .expect("history")
            .into_iter()
            .map(|m| m.text)
            .collect();
        assert_eq!(texts, vec!["text 1", "text 2", "text 3"]);
    }

    #[tokio::test]
    async fn acks_in_one_request_clear_only_the_recipient_s_own_messages() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::open(dir.path().join("chat.db")).expect("open");
        for (id, to) in [(1, 7), (2, 7), (3, 8)] {
            db.insert_outgoing(out(id, to), vec![id; 40])
                .await
                .expect("insert");
        }
        // 7 acks its two, someone else's (3) and an unknown id: only its own count.
        let changed = db
            .ack_delivered_many(vec![[1; 16], [3; 16], [2; 16], [9; 16]], [7; 32])
            .await
            .expect("ack");
        assert_eq!(changed, vec![true, false, true, false]);
        for (id, state) in [
            (1, MessageState::Delivered),
            (2, MessageState::Delivered),
            (3, MessageState::Queued),
        ] {
            let m = db.message([id; 16]).await.expect("read").expect("stored");
            assert_eq!(m.state, state, "message {id}");
        }
        let left: Vec<MessageId> = db
            .outbox_due(i64::MAX, 10)
            .await
            .expect("outbox")
            .into_iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(left, vec![[3; 16]]);
        // Acked again: nothing changes.
        let again = db
            .ack_delivered_many(vec![[1; 16], [2; 16]], [7; 32])
            .await
            .expect("ack");
        assert_eq!(again, vec![false, false]);
    }
}
