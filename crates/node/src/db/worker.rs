//! The worker threads: one writer doing group commit, and a small reader pool.
//!
//! The writer owns the only write connection. It blocks for a request, then
//! drains every request already queued (up to `max_batch`), runs them all in one
//! `BEGIN IMMEDIATE` transaction, commits once (one fsync with
//! `synchronous=FULL`), and only then answers every request. A caller is thus
//! never told "stored" before its row is durable, and N concurrent writers cost
//! one fsync, not N.
//!
//! A failing request is rolled back alone: each runs inside its own savepoint.
//! Savepoints cost (every page a request touches is first copied to the
//! savepoint's journal), so requests that can be run twice (`Db::write_rerun`,
//! the per-message ones) run first, without one; should one of them fail, the
//! transaction is rolled back and they all run again, each in its savepoint.
//!
//! Readers each own a read-only connection (WAL lets them run while the writer
//! commits) and take requests from one shared queue.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use super::error::DbError;

/// One write request, type-erased so that one queue carries them all.
pub(crate) trait WriteJob: Send {
    /// Runs the request's statements; returns whether they succeeded.
    fn run(&mut self, conn: &Connection) -> bool;
    /// Answers the caller once the batch's fate is known (`Err` if the
    /// batch was not committed).
    fn finish(self: Box<Self>, batch: Result<(), &DbError>);
    /// Whether [`WriteJob::run`] may be called again after a rollback, to run
    /// the request over (its last run's result is the one answered).
    fn rerunnable(&self) -> bool {
        false
    }
    /// Takes out the error of the last run, if it failed (the batch's error
    /// answers the caller then).
    fn take_error(&mut self) -> Option<DbError>;
}

/// A write request with its reply channel.
pub(crate) struct Job<F, R> {
    f: Option<F>,
    result: Option<Result<R, DbError>>,
    reply: oneshot::Sender<Result<R, DbError>>,
}

impl<F, R> Job<F, R> {
    pub(crate) fn new(f: F, reply: oneshot::Sender<Result<R, DbError>>) -> Self {
        Job {
            f: Some(f),
            result: None,
            reply,
        }
    }
}

impl<F, R> WriteJob for Job<F, R>
where
    F: FnOnce(&Connection) -> Result<R, DbError> + Send,
    R: Send,
{
    fn run(&mut self, conn: &Connection) -> bool {
        let Some(f) = self.f.take() else {
            return false;
        };
        keep(&mut self.result, f(conn))
    }

    fn finish(self: Box<Self>, batch: Result<(), &DbError>) {
        answer(self.reply, self.result, batch);
    }

    fn take_error(&mut self) -> Option<DbError> {
        take_error(&mut self.result)
    }
}

/// Takes the error out of a failed request's result.
fn take_error<R>(slot: &mut Option<Result<R, DbError>>) -> Option<DbError> {
    match slot.take() {
        Some(Err(e)) => Some(e),
        other => {
            *slot = other;
            None
        }
    }
}

/// Keeps a request's result for its answer; returns whether it succeeded.
fn keep<R>(slot: &mut Option<Result<R, DbError>>, r: Result<R, DbError>) -> bool {
    let ok = r.is_ok();
    *slot = Some(r);
    ok
}

/// Answers a caller once its batch's fate is known: its own result if the
/// batch was committed, else the batch's error.
fn answer<R>(
    reply: oneshot::Sender<Result<R, DbError>>,
    result: Option<Result<R, DbError>>,
    batch: Result<(), &DbError>,
) {
    let out = match (batch, result) {
        (Err(e), _) => Err(e.for_batch()),
        (Ok(()), Some(r)) => r,
        (Ok(()), None) => Err(DbError::NotCommitted("the request did not run".into())),
    };
    // The caller may have gone away; its write is stored all the same.
    let _ = reply.send(out);
}

/// A write request that can run again (see `Db::write_rerun`).
pub(crate) struct RerunJob<F, R> {
    f: F,
    result: Option<Result<R, DbError>>,
    reply: oneshot::Sender<Result<R, DbError>>,
}

impl<F, R> WriteJob for RerunJob<F, R>
where
    F: Fn(&Connection) -> Result<R, DbError> + Send,
    R: Send,
{
    fn run(&mut self, conn: &Connection) -> bool {
        keep(&mut self.result, (self.f)(conn))
    }

    fn finish(self: Box<Self>, batch: Result<(), &DbError>) {
        answer(self.reply, self.result, batch);
    }

    fn rerunnable(&self) -> bool {
        true
    }

    fn take_error(&mut self) -> Option<DbError> {
        take_error(&mut self.result)
    }
}

impl super::Db {
    /// `Db::write` for a request that can be run twice with the same effect
    /// (it reads only what it captured and the database): it then needs no
    /// savepoint of its own unless a request of its batch fails. Resolves once
    /// the transaction is durable.
    pub(crate) async fn write_rerun<R, F>(&self, f: F) -> Result<R, DbError>
    where
        F: Fn(&Connection) -> Result<R, DbError> + Send + 'static,
        R: Send + 'static,
    {
        let sender = self.inner.write_tx.as_ref().ok_or(DbError::Closed)?;
        let (tx, rx) = oneshot::channel();
        let job = RerunJob {
            f,
            result: None,
            reply: tx,
        };
        sender
            .send(Box::new(job))
            .await
            .map_err(|_| DbError::Closed)?;
        match rx.await {
            Ok(r) => r.map_err(|e| e.classify(&self.inner.path)),
            Err(_) => Err(DbError::Closed),
        }
    }
}

/// A boxed write request.
pub(crate) type BoxedWrite = Box<dyn WriteJob>;
/// A boxed read request: it runs on a reader's connection and replies by itself.
pub(crate) type BoxedRead = Box<dyn FnOnce(&Connection) + Send>;

/// The writer thread's loop. Ends when every sender is gone.
pub(crate) fn writer_loop(
    conn: Connection,
    mut rx: mpsc::Receiver<BoxedWrite>,
    max_batch: usize,
    path: &Path,
) {
    let mut batch: Vec<BoxedWrite> = Vec::with_capacity(max_batch.min(4096));
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        run_batch(&conn, &mut batch, path);
    }
    // A clean close checkpoints the WAL; errors here lose nothing.
    let _ = conn.close();
}

fn exec(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([])?;
    Ok(())
}

fn run_batch(conn: &Connection, batch: &mut Vec<BoxedWrite>, path: &Path) {
    let outcome = run_in_transaction(conn, batch).map_err(|e| e.classify(path));
    if outcome.is_err() && !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    if let Err(e) = &outcome {
        tracing::warn!("database batch of {} writes failed: {e}", batch.len());
    }
    for job in batch.drain(..) {
        job.finish(outcome.as_ref().map(|_| ()));
    }
}

fn run_in_transaction(conn: &Connection, batch: &mut [BoxedWrite]) -> Result<(), DbError> {
    if !conn.is_autocommit() {
        // A previous failure left a transaction open.
        let _ = conn.execute_batch("ROLLBACK");
    }
    exec(conn, "BEGIN IMMEDIATE")?;
    // Those that can run again go first, without savepoints; if one fails, its
    // partial writes cannot be told from the others': start over, each in its
    // own savepoint. Requests of one batch were all queued before any was
    // answered, so their order among themselves is free.
    let clean = batch
        .iter_mut()
        .filter(|job| job.rerunnable())
        .all(|job| job.run(conn));
    if !clean {
        if !conn.is_autocommit() {
            exec(conn, "ROLLBACK")?;
        }
        exec(conn, "BEGIN IMMEDIATE")?;
        for job in batch.iter_mut().filter(|job| job.rerunnable()) {
            run_in_savepoint(conn, job)?;
        }
    }
    for job in batch.iter_mut().filter(|job| !job.rerunnable()) {
        run_in_savepoint(conn, job)?;
    }
    exec(conn, "COMMIT")?;
    Ok(())
}

/// Runs one request in its own savepoint: rolled back alone if it fails.
fn run_in_savepoint(conn: &Connection, job: &mut BoxedWrite) -> Result<(), DbError> {
    exec(conn, "SAVEPOINT job")?;
    if job.run(conn) {
        exec(conn, "RELEASE job")?;
    } else if conn.is_autocommit() {
        // SQLite rolled the whole transaction back, as it may on a full disk
        // or an I/O error: the batch is lost, and this request says why.
        return Err(job.take_error().unwrap_or_else(|| {
            DbError::NotCommitted("SQLite rolled the transaction back".into())
        }));
    } else {
        exec(conn, "ROLLBACK TO job")?;
        exec(conn, "RELEASE job")?;
    }
    Ok(())
}

/// A reader thread's loop. Ends when every sender is gone.
pub(crate) fn reader_loop(conn: Connection, rx: Arc<Mutex<mpsc::Receiver<BoxedRead>>>) {
    loop {
        let job = {
            let mut guard = match rx.lock() {
                Ok(g) => g,
                Err(poisoned) => poisoned.into_inner(),
            };
            guard.blocking_recv()
        };
        match job {
            Some(job) => job(&conn),
            None => break,
        }
    }
    let _ = conn.close();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn table() -> Connection {
        let conn = Connection::open_in_memory().expect("open");
        conn.execute_batch("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT NOT NULL)")
            .expect("create");
        conn
    }

    fn rows(conn: &Connection) -> Vec<i64> {
        let mut st = conn.prepare("SELECT k FROM t ORDER BY k").expect("prepare");
        st.query_map([], |r| r.get(0))
            .expect("query")
            .collect::<rusqlite::Result<_>>()
            .expect("rows")
    }

    type Reply = oneshot::Receiver<Result<(), DbError>>;

    /// A request that can run again: inserts `keys` in turn, counting its runs.
    fn rerun(keys: Vec<i64>, runs: Arc<AtomicUsize>) -> (BoxedWrite, Reply) {
        let (tx, rx) = oneshot::channel();
        let f = move |conn: &Connection| {
            runs.fetch_add(1, Ordering::SeqCst);
            for k in &keys {
                conn.execute("INSERT INTO t (k, v) VALUES (?1, 'x')", [k])?;
            }
            Ok(())
        };
        let job = RerunJob {
            f,
            result: None,
            reply: tx,
        };
        (Box::new(job), rx)
    }

    /// A request that runs once: inserts `keys` in turn.
    fn once(keys: Vec<i64>) -> (BoxedWrite, Reply) {
        let (tx, rx) = oneshot::channel();
        let f = move |conn: &Connection| {
            for k in keys {
                conn.execute("INSERT INTO t (k, v) VALUES (?1, 'x')", [k])?;
            }
            Ok(())
        };
        (Box::new(Job::new(f, tx)), rx)
    }

    fn answer(mut rx: Reply) -> Result<(), DbError> {
        rx.try_recv().expect("answered before the batch returned")
    }

    #[test]
    fn a_clean_batch_runs_each_request_once() {
        let conn = table();
        let runs = Arc::new(AtomicUsize::new(0));
        let (a, ra) = rerun(vec![1, 2], runs.clone());
        let (b, rb) = once(vec![3]);
        let (c, rc) = rerun(vec![4], runs.clone());
        let mut batch = vec![a, b, c];
        run_batch(&conn, &mut batch, Path::new("test.db"));
        assert!(batch.is_empty());
        for rx in [ra, rb, rc] {
            assert!(answer(rx).is_ok());
        }
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        assert_eq!(rows(&conn), vec![1, 2, 3, 4]);
        assert!(conn.is_autocommit(), "the transaction is committed");
    }

    #[test]
    fn a_failing_request_is_rolled_back_alone_and_hears_its_error() {
        let conn = table();
        conn.execute("INSERT INTO t (k, v) VALUES (9, 'old')", [])
            .expect("seed");
        let runs = Arc::new(AtomicUsize::new(0));
        let (a, ra) = rerun(vec![1], runs.clone());
        // Inserts 2, then fails on 9 (taken): 2 must not stay.
        let (bad, rbad) = rerun(vec![2, 9], runs.clone());
        let (b, rb) = once(vec![3]);
        let (c, rc) = rerun(vec![4], runs.clone());
        // A request that runs once and fails is rolled back alone as well.
        let (bad_once, rbad_once) = once(vec![5, 9]);
        let mut batch = vec![a, bad, b, c, bad_once];
        run_batch(&conn, &mut batch, Path::new("test.db"));
        assert!(answer(ra).is_ok());
        assert!(answer(rb).is_ok());
        assert!(answer(rc).is_ok());
        let err = answer(rbad).expect_err("the failing request hears it");
        assert!(err.to_string().contains("UNIQUE"), "{err}");
        assert!(answer(rbad_once).is_err());
        assert_eq!(rows(&conn), vec![1, 3, 4, 9]);
        // The first pass stopped at the failure; the second ran all three again.
        assert_eq!(runs.load(Ordering::SeqCst), 2 + 3);
        assert!(conn.is_autocommit(), "the transaction is committed");
    }
    #[test]
    fn a_full_disk_fails_clearly_and_keeps_what_was_stored() {
        let conn = table();
        conn.execute("INSERT INTO t (k, v) VALUES (1, 'kept')", [])
            .expect("seed");
        let pages: i64 = conn
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .expect("page_count");
        // SQLite's page limit fails a write just as a full disk does.
        conn.pragma_update(None, "max_page_count", pages)
            .expect("limit");
        let big = |k: i64| {
            let (tx, rx) = oneshot::channel();
            let f = move |conn: &Connection| {
                conn.execute(
                    "INSERT INTO t (k, v) VALUES (?1, ?2)",
                    (k, "x".repeat(64 << 10)),
                )?;
                Ok(())
            };
            (Box::new(Job::new(f, tx)) as BoxedWrite, rx)
        };
        let runs = Arc::new(AtomicUsize::new(0));
        let (a, ra) = rerun(vec![2], runs.clone());
        let (b, rb) = big(3);
        let mut batch = vec![a, b];
        run_batch(&conn, &mut batch, Path::new("test.db"));
        let err = answer(rb).expect_err("the big write cannot be stored");
        let err = err.classify(Path::new("test.db"));
        assert!(matches!(err, DbError::DiskFull { .. }), "{err:?}");
        assert!(err.to_string().contains("is full"), "{err}");
        let small = answer(ra);
        assert!(conn.is_autocommit(), "no transaction is left open");
        // Whatever SQLite rolled back, what was stored before stays.
        let expect = if small.is_ok() { vec![1, 2] } else { vec![1] };
        assert_eq!(rows(&conn), expect);

        // Space again: writes go on.
        conn.pragma_update(None, "max_page_count", 1_000_000)
            .expect("limit");
        let (c, rc) = big(4);
        let mut batch = vec![c];
        run_batch(&conn, &mut batch, Path::new("test.db"));
        assert!(answer(rc).is_ok());
        assert!(rows(&conn).contains(&4));
    }
}
