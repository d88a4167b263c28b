//! The worker threads: one writer doing group commit, and a small reader pool.
//!
//! The writer owns the only write connection. It blocks for a request, then
//! drains every request already queued (up to `max_batch`), runs them all in one
//! `BEGIN IMMEDIATE` transaction, each inside its own savepoint (so a failing
//! request is rolled back alone), commits once (one fsync with
//! `synchronous=FULL`), and only then answers every request. A caller is thus
//! never told "stored" before its row is durable, and N concurrent writers cost
//! one fsync, not N.
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
        let r = f(conn);
        let ok = r.is_ok();
        self.result = Some(r);
        ok
    }

    fn finish(self: Box<Self>, batch: Result<(), &DbError>) {
        let out = match (batch, self.result) {
            (Err(e), _) => Err(e.for_batch()),
            (Ok(()), Some(r)) => r,
            (Ok(()), None) => Err(DbError::NotCommitted("the request did not run".into())),
        };
        // The caller may have gone away; its write is stored all the same.
        let _ = self.reply.send(out);
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
    for job in batch.iter_mut() {
        exec(conn, "SAVEPOINT job")?;
        if job.run(conn) {
            exec(conn, "RELEASE job")?;
        } else {
            exec(conn, "ROLLBACK TO job")?;
            exec(conn, "RELEASE job")?;
        }
    }
    exec(conn, "COMMIT")?;
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
