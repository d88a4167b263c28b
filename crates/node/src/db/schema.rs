//! The schema, versioned with `PRAGMA user_version`, and its migrations.
//!
//! Migration `i` (0-based) takes the database from version `i` to `i + 1`.
//! Never edit a released migration: append a new one.

use rusqlite::Connection;

/// Version 1: every table of the first release.
const V1: &str = r#"
CREATE TABLE profile (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    name        TEXT NOT NULL,
    user_key    BLOB NOT NULL CHECK (length(user_key) = 32),
    created_ms  INTEGER NOT NULL
);

CREATE TABLE meta (
    k TEXT PRIMARY KEY,
    v TEXT NOT NULL
) WITHOUT ROWID;

CREATE TABLE contacts (
    user_key     BLOB PRIMARY KEY CHECK (length(user_key) = 32),
    name         TEXT NOT NULL,
    fingerprint  TEXT NOT NULL,
    added_ms     INTEGER NOT NULL,
    presence     BLOB,
    presence_ms  INTEGER
) WITHOUT ROWID;
CREATE INDEX contacts_name ON contacts(name);

CREATE TABLE messages (
    id           BLOB PRIMARY KEY CHECK (length(id) = 16),
    peer         BLOB NOT NULL CHECK (length(peer) = 32),
    direction    TEXT NOT NULL CHECK (direction IN ('in', 'out')),
    sender       BLOB NOT NULL CHECK (length(sender) = 32),
    text         TEXT NOT NULL,
    sent_ms      INTEGER NOT NULL,
    received_ms  INTEGER NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('queued', 'relayed', 'delivered', 'read'))
);
CREATE INDEX messages_peer_sent ON messages(peer, sent_ms);
CREATE INDEX messages_dir_received ON messages(direction, received_ms);
CREATE INDEX messages_unread ON messages(peer) WHERE direction = 'in' AND state <> 'read';

CREATE TABLE outbox (
    id               BLOB PRIMARY KEY CHECK (length(id) = 16),
    recipient        BLOB NOT NULL CHECK (length(recipient) = 32),
    envelope         BLOB NOT NULL,
    created_ms       INTEGER NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms  INTEGER NOT NULL,
    relayed          INTEGER NOT NULL DEFAULT 0 CHECK (relayed IN (0, 1))
);
CREATE INDEX outbox_next ON outbox(next_attempt_ms);

CREATE TABLE relay_queue (
    id          BLOB PRIMARY KEY CHECK (length(id) = 16),
    recipient   BLOB NOT NULL CHECK (length(recipient) = 32),
    sender      BLOB NOT NULL CHECK (length(sender) = 32),
    envelope    BLOB NOT NULL,
    source_ip   TEXT,
    stored_ms   INTEGER NOT NULL,
    expires_ms  INTEGER NOT NULL
);
CREATE INDEX relay_recipient ON relay_queue(recipient);
CREATE INDEX relay_expires ON relay_queue(expires_ms);
CREATE INDEX relay_sender ON relay_queue(sender);
CREATE INDEX relay_source_ip ON relay_queue(source_ip);

CREATE TABLE seen (
    id       BLOB PRIMARY KEY CHECK (length(id) = 16),
    seen_ms  INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE dht_records (
    target     BLOB PRIMARY KEY CHECK (length(target) = 20),
    item       BLOB NOT NULL,
    stored_ms  INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE name_claims (
    name       TEXT PRIMARY KEY,
    claim      BLOB NOT NULL,
    stored_ms  INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE routing (
    node_id  BLOB PRIMARY KEY CHECK (length(node_id) = 20),
    addr     TEXT NOT NULL
) WITHOUT ROWID;
"#;

/// All migrations, in order.
const MIGRATIONS: &[&str] = &[V1];

/// The schema version this build writes.
pub(crate) const LATEST: i64 = MIGRATIONS.len() as i64;

/// What [`migrate`] found.
pub(crate) enum Migrated {
    /// The database is now at [`LATEST`].
    Ok,
    /// The database was written by a newer build.
    TooNew(i64),
}

/// Brings the database up to [`LATEST`] in one transaction.
pub(crate) fn migrate(conn: &mut Connection) -> rusqlite::Result<Migrated> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let from: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if from > LATEST {
        return Ok(Migrated::TooNew(from));
    }
    let start = usize::try_from(from).unwrap_or(0);
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(start) {
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i as i64 + 1)?;
    }
    tx.commit()?;
    Ok(Migrated::Ok)
}
