//! Errors of the persistence layer.

use std::path::{Path, PathBuf};

use rusqlite::ErrorCode;

/// What went wrong with the database.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The file is not a SQLite database, or its pages are damaged.
    #[error("the database {} is corrupt: {detail}; move it away to start fresh", .path.display())]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// What SQLite said.
        detail: String,
    },
    /// The database was written by a newer peerchat.
    #[error(
        "the database {} has schema version {found}, newer than this peerchat knows ({supported}); upgrade peerchat",
        .path.display()
    )]
    TooNew {
        /// The database file.
        path: PathBuf,
        /// The version in the file.
        found: i64,
        /// The newest version this build knows.
        supported: i64,
    },
    /// The disk holding the database is full (or SQLite's page limit is reached).
    #[error("the disk holding the database {} is full: free some space; nothing stored is lost", .path.display())]
    DiskFull {
        /// The database file.
        path: PathBuf,
    },
    /// The database could not be opened or set up.
    #[error("cannot open the database {}: {source}", .path.display())]
    Open {
        /// The database file.
        path: PathBuf,
        /// Why.
        source: rusqlite::Error,
    },
    /// A statement failed.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A value read from the database is not what it should be.
    #[error("invalid data in the database: {0}")]
    Invalid(String),
    /// The transaction holding this write could not be committed, so the write is not stored.
    #[error("the write was not stored: {0}")]
    NotCommitted(String),
    /// A worker thread could not be started.
    #[error("cannot start a database thread: {0}")]
    Thread(std::io::Error),
    /// The database's worker threads have stopped.
    #[error("the database is closed")]
    Closed,
}

impl DbError {
    /// Turns SQLite's "corrupt" and "not a database" failures into
    /// [`DbError::Corrupt`], and "full" into [`DbError::DiskFull`].
    pub(crate) fn classify(self, path: &Path) -> DbError {
        match self {
            DbError::Sqlite(e) | DbError::Open { source: e, .. }
                if e.sqlite_error_code() == Some(ErrorCode::DiskFull) =>
            {
                DbError::DiskFull {
                    path: path.to_path_buf(),
                }
            }
            DbError::Sqlite(e) | DbError::Open { source: e, .. } if is_corrupt(&e) => {
                DbError::Corrupt {
                    path: path.to_path_buf(),
                    detail: e.to_string(),
                }
            }
            other => other,
        }
    }

    /// A copy for every write of a failed batch (the original cannot be cloned).
    pub(crate) fn for_batch(&self) -> DbError {
        match self {
            DbError::Corrupt { path, detail } => DbError::Corrupt {
                path: path.clone(),
                detail: detail.clone(),
            },
            DbError::DiskFull { path } => DbError::DiskFull { path: path.clone() },
            DbError::Closed => DbError::Closed,
            other => DbError::NotCommitted(other.to_string()),
        }
    }
}

/// Whether SQLite reports a damaged file.
pub(crate) fn is_corrupt(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase)
    )
}
