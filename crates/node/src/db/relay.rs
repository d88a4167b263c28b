//! The relay queue: envelopes this node holds for offline recipients.

use rusqlite::{Connection, params};

use super::types::{
    MessageId, RELAY_COLS, RelayEntry, RelayLimits, RelayPut, UserKey, blob, count, relay_from_row,
};
use super::{Db, DbError, sql_limit};

fn insert(conn: &Connection, e: &RelayEntry) -> Result<bool, DbError> {
    let n = conn
        .prepare_cached(
            "INSERT INTO relay_queue (id, recipient, sender, envelope, source_ip, stored_ms, expires_ms) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT DO NOTHING",
        )?
        .execute(params![
            &e.id[..],
            &e.recipient[..],
            &e.sender[..],
            e.envelope,
            e.source_ip.map(|ip| ip.to_string()),
            e.stored_ms,
            e.expires_ms
        ])?;
    Ok(n > 0)
}

fn count_where(conn: &Connection, sql: &str, arg: &dyn rusqlite::ToSql) -> Result<u64, DbError> {
    let n: i64 = conn.prepare_cached(sql)?.query_row([arg], |r| r.get(0))?;
    Ok(count(n))
}

impl Db {
    /// Stores an envelope for an offline recipient, durably. Returns `false`,
    /// changing nothing, if an envelope with this id is already held.
    pub async fn relay_put(&self, entry: RelayEntry) -> Result<bool, DbError> {
        self.write(move |conn| insert(conn, &entry)).await
    }

    /// [`Db::relay_put`] with quotas checked in the same transaction (so
    /// concurrent stores cannot overshoot them). Expired entries still count
    /// until [`Db::relay_expire`] removes them.
    pub async fn relay_put_limited(
        &self,
        entry: RelayEntry,
        limits: RelayLimits,
    ) -> Result<RelayPut, DbError> {
        self.write(move |conn| {
            let exists = count_where(
                conn,
                "SELECT count(*) FROM relay_queue WHERE id = ?1",
                &&entry.id[..],
            )?;
            if exists > 0 {
                return Ok(RelayPut::Duplicate);
            }
            let total: i64 = conn
                .prepare_cached("SELECT count(*) FROM relay_queue")?
                .query_row([], |r| r.get(0))?;
            if count(total) >= limits.total {
                return Ok(RelayPut::Full);
            }
            let from_sender = count_where(
                conn,
                "SELECT count(*) FROM relay_queue WHERE sender = ?1",
                &&entry.sender[..],
            )?;
            if from_sender >= limits.per_sender {
                return Ok(RelayPut::SenderQuota);
            }
            if let Some(ip) = entry.source_ip {
                let from_ip = count_where(
                    conn,
                    "SELECT count(*) FROM relay_queue WHERE source_ip = ?1",
                    &ip.to_string(),
                )?;
                if from_ip >= limits.per_source_ip {
                    return Ok(RelayPut::SourceQuota);
                }
            }
            Ok(if insert(conn, &entry)? {
                RelayPut::Stored
            } else {
                RelayPut::Duplicate
            })
        })
        .await
    }

    /// The unexpired envelopes held for `recipient` at `now_ms`, oldest first,
    /// at most `limit`.
    pub async fn relay_for(
        &self,
        recipient: UserKey,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<RelayEntry>, DbError> {
        let n = sql_limit(limit);
        self.read(move |conn| {
            let sql = format!(
                "SELECT {RELAY_COLS} FROM relay_queue WHERE recipient = ?1 AND expires_ms > ?2 \
                 ORDER BY stored_ms, rowid LIMIT ?3"
            );
            let mut st = conn.prepare_cached(&sql)?;
            let rows = st.query_map(params![&recipient[..], now_ms, n], relay_from_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    /// Drops the given envelopes (delivered, or acknowledged elsewhere);
    /// returns how many were held.
    pub async fn relay_remove(&self, ids: Vec<MessageId>) -> Result<u64, DbError> {
        self.write(move |conn| {
            let mut st = conn.prepare_cached("DELETE FROM relay_queue WHERE id = ?1")?;
            let mut n = 0u64;
            for id in &ids {
                n += st.execute([&id[..]])? as u64;
            }
            Ok(n)
        })
        .await
    }

    /// Drops every envelope whose expiry is at or before `now_ms`; returns how many.
    pub async fn relay_expire(&self, now_ms: i64) -> Result<u64, DbError> {
        self.write(move |conn| {
            let n = conn
                .prepare_cached("DELETE FROM relay_queue WHERE expires_ms <= ?1")?
                .execute([now_ms])?;
            Ok(n as u64)
        })
        .await
    }

    /// Every envelope held, oldest first (for retries and hand-over).
    pub async fn relay_all(&self) -> Result<Vec<RelayEntry>, DbError> {
        self.read(move |conn| {
            let sql = format!("SELECT {RELAY_COLS} FROM relay_queue ORDER BY stored_ms, rowid");
            let mut st = conn.prepare_cached(&sql)?;
            let rows = st.query_map([], relay_from_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    /// The recipients with unexpired envelopes held at `now_ms`.
    pub async fn relay_recipients(&self, now_ms: i64) -> Result<Vec<UserKey>, DbError> {
        self.read(move |conn| {
            let mut st = conn.prepare_cached(
                "SELECT DISTINCT recipient FROM relay_queue WHERE expires_ms > ?1",
            )?;
            let rows = st.query_map([now_ms], |r| blob::<32>(r, 0))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    /// How many envelopes are held.
    pub async fn relay_count(&self) -> Result<u64, DbError> {
        self.read(move |conn| {
            let n: i64 = conn
                .prepare_cached("SELECT count(*) FROM relay_queue")?
                .query_row([], |r| r.get(0))?;
            Ok(count(n))
        })
        .await
    }
}
