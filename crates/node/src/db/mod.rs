//! The node's persistence layer: one SQLite database, `DIR/peerchat.db`.
//!
//! It holds the profile, contacts, message history, outbox, relay queue, seen
//! ids, stored DHT records and name claims, the routing-table snapshot, and small
//! facts (`meta`: last listen address, node id, ...). It knows nothing of the
//! chat protocol: envelopes, presence records, DHT items and claims are opaque
//! blobs; ids are `[u8; 16]`, user keys `[u8; 32]`, node ids `[u8; 20]`, times
//! unix milliseconds.
//!
//! # Durability and group commit
//!
//! The database runs in WAL mode with `synchronous=FULL`: when a write's future
//! resolves `Ok`, the write is on disk and survives `kill -9` or a power cut.
//! Writes go to one writer thread which batches every request queued at that
//! moment into one transaction and one fsync (group commit), so many concurrent
//! writers share the cost of a sync. Each request runs in its own savepoint: a
//! failing request is rolled back alone and reports its own error.
//!
//! # Reads
//!
//! Reads run on a small pool of reader threads (two by default), each with its
//! own read-only connection; with WAL they never wait for the writer, and they
//! see every write whose future has resolved.
//!
//! A write whose future is dropped after it was queued is still carried out.
//! Dropping the last [`Db`] clone stops the threads after they finish their
//! queued work (the drop waits for that), the writer last, so that a closed
//! database is one file with no WAL beside it.

mod error;
mod messages;
mod relay;
mod schema;
mod store;
mod types;
mod worker;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use tokio::sync::{mpsc, oneshot};

pub use error::DbError;
pub use store::meta_keys;
pub use types::{
    Contact, Conversation, Counts, DhtRecord, Direction, IncomingMessage, MessageId, MessageState,
    NameClaim, NodeId, OutboxEntry, OutgoingMessage, Profile, RelayEntry, RelayLimits, RelayPut,
    StoredMessage, UserKey,
};

use worker::{BoxedRead, BoxedWrite, Job};

/// The database file's name inside the data dir.
pub const DB_FILE: &str = "peerchat.db";

/// Tuning knobs; [`Default`] suits a node.
#[derive(Debug, Clone)]
pub struct DbOptions {
    /// Reader threads (each with its own connection). 0: reads run on the
    /// writer's thread and connection (one thread and one connection per
    /// database, for processes that run many nodes, such as benchmarks).
    pub readers: usize,
    /// Most writes committed in one transaction.
    pub max_batch: usize,
    /// Capacity of the write queue (callers wait when it is full).
    pub write_queue: usize,
    /// How long a statement waits for a lock held by another connection.
    pub busy_timeout: Duration,
    /// Pages each connection keeps cached between statements (`PRAGMA
    /// cache_size`); `None`: SQLite's default (up to 2 MiB). Below 3 pages
    /// nothing is kept: every statement reads its pages again from the OS's
    /// file cache (a few microseconds each). The least memory, for processes
    /// running many databases (the registration benchmark: ~30 KiB less per
    /// database).
    pub cache_pages: Option<u32>,
}

impl Default for DbOptions {
    fn default() -> Self {
        DbOptions {
            readers: 2,
            max_batch: 1024,
            write_queue: 8192,
            busy_timeout: Duration::from_secs(5),
            cache_pages: None,
        }
    }
}

/// A handle to the database: cheap to clone, `Send + Sync`, async.
#[derive(Clone)]
pub struct Db {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

struct Inner {
    path: PathBuf,
    write_tx: Option<mpsc::Sender<BoxedWrite>>,
    read_tx: Option<mpsc::Sender<BoxedRead>>,
    writer: Option<JoinHandle<()>>,
    readers: Vec<JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing a queue ends its threads once they have drained it. The
        // readers go first so that the writer's connection is the last one
        // open: only the last connection to close checkpoints the WAL into
        // the database file and removes it (two closing at once may each
        // see the other still open and both leave the WAL behind).
        self.read_tx.take();
        for t in self.readers.drain(..) {
            let _ = t.join();
        }
        self.write_tx.take();
        if let Some(t) = self.writer.take() {
            let _ = t.join();
        }
    }
}

fn open_conn(path: &Path, writer: bool, opts: &DbOptions) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(path, OpenFlags::default())?;
    conn.busy_timeout(opts.busy_timeout)?;
    // Query-planner stability: without it SQLite re-prepares (parses and plans
    // again) a statement each time a new value is bound to a `LIMIT ?` or to a
    // column that a partial index tests, which took 4% of a registration
    // storm's CPU. Our statements are planned once and cached.
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    if let Some(pages) = opts.cache_pages {
        conn.pragma_update(None, "cache_size", i64::from(pages))?;
    }
    conn.set_prepared_statement_cache_capacity(64);
    if writer {
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(
                "the database {} could not use WAL (journal mode {mode}); writes will be slower",
                path.display()
            );
        }
        conn.pragma_update(None, "synchronous", "FULL")?;
    } else {
        conn.pragma_update(None, "query_only", true)?;
    }
    conn.pragma_update(None, "foreign_keys", true)?;
    // Reads the schema: a damaged file fails here rather than later.
    conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
        r.get::<_, i64>(0)
    })?;
    Ok(conn)
}

/// A row count for `LIMIT`.
pub(crate) fn sql_limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Db {
    /// Opens (creating if needed) the database at `path` and migrates it to
    /// the current schema.
    ///
    /// Only one process may use a database at a time; the node makes sure of
    /// it by holding the data dir's lock ([`crate::datadir::DataDir`]).
    pub fn open(path: impl AsRef<Path>) -> Result<Db, DbError> {
        Db::open_with(path, DbOptions::default())
    }

    /// [`Db::open`] with explicit options.
    pub fn open_with(path: impl AsRef<Path>, opts: DbOptions) -> Result<Db, DbError> {
        let path = path.as_ref().to_path_buf();
        let open_err = |e: rusqlite::Error| {
            DbError::Open {
                path: path.clone(),
                source: e,
            }
            .classify(&path)
        };
        let mut conn = open_conn(&path, true, &opts).map_err(open_err)?;
        match schema::migrate(&mut conn).map_err(open_err)? {
            schema::Migrated::Ok => {}
            schema::Migrated::TooNew(found) => {
                return Err(DbError::TooNew {
                    path,
                    found,
                    supported: schema::LATEST,
                });
            }
        }
        let readers = (0..opts.readers)
            .map(|_| open_conn(&path, false, &opts))
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(open_err)?;

        let (write_tx, write_rx) = mpsc::channel::<BoxedWrite>(opts.write_queue.max(1));
        let (read_tx, read_rx) = mpsc::channel::<BoxedRead>(opts.write_queue.max(1));
        let read_rx = Arc::new(Mutex::new(read_rx));
        let mut inner = Inner {
            path: path.clone(),
            write_tx: Some(write_tx),
            read_tx: (opts.readers > 0).then_some(read_tx),
            writer: None,
            readers: Vec::new(),
        };
        let max_batch = opts.max_batch.max(1);
        let writer_path = path.clone();
        let t = std::thread::Builder::new()
            .name("peerchat-db-writer".into())
            .spawn(move || worker::writer_loop(conn, write_rx, max_batch, &writer_path))
            .map_err(DbError::Thread)?;
        inner.writer = Some(t);
        for (i, rconn) in readers.into_iter().enumerate() {
            let rx = Arc::clone(&read_rx);
            let t = std::thread::Builder::new()
                .name(format!("peerchat-db-reader-{i}"))
                .spawn(move || worker::reader_loop(rconn, rx))
                .map_err(DbError::Thread)?;
            inner.readers.push(t);
        }
        Ok(Db {
            inner: Arc::new(inner),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `f` on the writer thread inside the next group-committed
    /// transaction; resolves once that transaction is durable.
    async fn write<R, F>(&self, f: F) -> Result<R, DbError>
    where
        F: FnOnce(&Connection) -> Result<R, DbError> + Send + 'static,
        R: Send + 'static,
    {
        let sender = self.inner.write_tx.as_ref().ok_or(DbError::Closed)?;
        let (tx, rx) = oneshot::channel();
        sender
            .send(Box::new(Job::new(f, tx)))
            .await
            .map_err(|_| DbError::Closed)?;
        match rx.await {
            Ok(r) => r.map_err(|e| e.classify(&self.inner.path)),
            Err(_) => Err(DbError::Closed),
        }
    }

    /// Runs `f` on a reader thread.
    async fn read<R, F>(&self, f: F) -> Result<R, DbError>
    where
        F: FnOnce(&Connection) -> Result<R, DbError> + Send + 'static,
        R: Send + 'static,
    {
        let Some(sender) = self.inner.read_tx.as_ref() else {
            // No reader threads: the writer's connection reads too.
            return self.write(f).await;
        };
        let (tx, rx) = oneshot::channel();
        let job: BoxedRead = Box::new(move |conn: &Connection| {
            let _ = tx.send(f(conn));
        });
        sender.send(job).await.map_err(|_| DbError::Closed)?;
        match rx.await {
            Ok(r) => r.map_err(|e| e.classify(&self.inner.path)),
            Err(_) => Err(DbError::Closed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache_size(conn: &Connection) -> i64 {
        conn.pragma_query_value(None, "cache_size", |r| r.get(0))
            .expect("cache_size")
    }

    #[test]
    fn cache_pages_sets_the_page_cache_and_a_tiny_cache_keeps_every_write() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(DB_FILE);
        let default = open_conn(&path, true, &DbOptions::default()).expect("open");
        // SQLite's own default: 2,000 KiB.
        assert_eq!(cache_size(&default), -2000);
        drop(default);
        let opts = DbOptions {
            readers: 0,
            cache_pages: Some(2),
            ..DbOptions::default()
        };
        assert_eq!(cache_size(&open_conn(&path, true, &opts).expect("open")), 2);

        // With two pages cached, a table spanning many pages is still written
        // and read back whole.
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let db = Db::open_with(&path, opts).expect("open db");
            let value = "v".repeat(500);
            for i in 0..200 {
                db.meta_set(&format!("k{i:03}"), &format!("{i}{value}"))
                    .await
                    .expect("meta_set");
            }
            for i in 0..200 {
                let got = db.meta_get(&format!("k{i:03}")).await.expect("meta_get");
                assert_eq!(got, Some(format!("{i}{value}")));
            }
        });
    }

    #[test]
    fn sqlite_is_built_without_per_connection_preallocations() {
        // `.cargo/config.toml` builds the bundled SQLite with these: each
        // connection would otherwise touch ~88 KiB of page-cache block and
        // 48 KiB of lookaside at open (docs/benchmarks.md, registration storm).
        let conn = Connection::open_in_memory().expect("open");
        let mut st = conn.prepare("PRAGMA compile_options").expect("prepare");
        let opts: Vec<String> = st
            .query_map([], |r| r.get(0))
            .expect("query")
            .collect::<rusqlite::Result<_>>()
            .expect("rows");
        for want in ["DEFAULT_PCACHE_INITSZ=0", "DEFAULT_LOOKASIDE=0,0"] {
            assert!(
                opts.iter().any(|o| o == want),
                "SQLite was built without {want} (LIBSQLITE3_FLAGS in .cargo/config.toml): {opts:?}"
            );
        }
    }
}
