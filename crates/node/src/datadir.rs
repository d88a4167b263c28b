//! The data directory: one per user, locked by the process that uses it.
//!
//! ```text
//! DIR/              mode 0700
//!   lock            held (exclusive, advisory) by the running peerchat
//!   identity.key    the user's secret key, 64 hex digits, mode 0600
//!   peerchat.db     the SQLite database (see crate::db), with -wal and -shm
//!   api.json        where the running node's local API listens, and its token (0600)
//! ```
//!
//! [`DataDir::open`] takes the lock and keeps it until the `DataDir` is
//! dropped, so two nodes never share a database. CLI clients that talk to a
//! running node do not open the `DataDir`: they read `api.json` with
//! [`DataDir::read_api_info`].

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};

/// The lock file's name.
pub const LOCK_FILE: &str = "lock";
/// The secret key file's name.
pub const IDENTITY_FILE: &str = "identity.key";
/// The local API file's name.
pub const API_FILE: &str = "api.json";

/// What went wrong with the data directory.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    /// Another process holds the lock.
    #[error(
        "another peerchat is already running with data dir {}; stop it or use another --data-dir",
        .dir.display()
    )]
    Locked {
        /// The data dir.
        dir: PathBuf,
    },
    /// A file or directory could not be used.
    #[error("cannot use {}: {source}", .path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// There is no identity yet.
    #[error(
        "no identity in {dir}: run `peerchat --data-dir {dir} init --name NAME` first",
        dir = .dir.display()
    )]
    NoIdentity {
        /// The data dir.
        dir: PathBuf,
    },
    /// The identity file does not hold a key.
    #[error(
        "the identity file {} is malformed ({reason}); restore it from a backup, or move it away and run init again",
        .path.display()
    )]
    BadIdentity {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// `init` on a data dir that already has an identity.
    #[error(
        "{} already holds an identity; refusing to overwrite it (use another --data-dir for a new user)",
        .path.display()
    )]
    IdentityExists {
        /// The file.
        path: PathBuf,
    },
    /// No node is running for this data dir (no `api.json`).
    #[error(
        "no running peerchat node for data dir {dir}: start one with `peerchat --data-dir {dir} run`",
        dir = .dir.display()
    )]
    NotRunning {
        /// The data dir.
        dir: PathBuf,
    },
    /// `api.json` does not parse.
    #[error(
        "the API file {} is malformed ({reason}); if no node is running, delete it",
        .path.display()
    )]
    BadApiInfo {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Neither `--data-dir`, `XDG_DATA_HOME` nor `HOME` says where to keep data.
    #[error("cannot find a data directory: set HOME or XDG_DATA_HOME, or pass --data-dir")]
    NoDefault,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> DataDirError + '_ {
    move |source| DataDirError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Where the running node's local API listens, written to `api.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiInfo {
    /// The API's address (on 127.0.0.1).
    pub addr: SocketAddr,
    /// The bearer token clients must present.
    pub token: String,
    /// The node's process id.
    pub pid: u32,
}

/// An open, locked data directory.
#[derive(Debug)]
pub struct DataDir {
    dir: PathBuf,
    _lock: File,
    wrote_api: AtomicBool,
}

impl DataDir {
    /// Opens `path` (creating it, mode 0700, if needed) and locks it for the
    /// lifetime of the returned value.
    ///
    /// Fails with [`DataDirError::Locked`] if another process (or another
    /// `DataDir` in this one) holds it.
    pub fn open(path: impl AsRef<Path>) -> Result<DataDir, DataDirError> {
        let dir = path.as_ref().to_path_buf();
        if !dir.is_dir() {
            let mut b = fs::DirBuilder::new();
            b.recursive(true);
            #[cfg(unix)]
            std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
            b.create(&dir).map_err(io_err(&dir))?;
        }
        let lock_path = dir.join(LOCK_FILE);
        let mut opts = OpenOptions::new();
        opts.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let lock = opts.open(&lock_path).map_err(io_err(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(DataDirError::Locked { dir }),
            Err(TryLockError::Error(e)) => return Err(io_err(&lock_path)(e)),
        }
        Ok(DataDir {
            dir,
            _lock: lock,
            wrote_api: AtomicBool::new(false),
        })
    }

    /// The platform's default data dir: `$XDG_DATA_HOME/peerchat`, else
    /// `$HOME/.local/share/peerchat` (on macOS `$HOME/Library/Application
    /// Support/peerchat`; on Windows `%APPDATA%\peerchat`).
    pub fn default_path() -> Result<PathBuf, DataDirError> {
        #[cfg(windows)]
        if let Some(app) = std::env::var_os("APPDATA").filter(|v| !v.is_empty()) {
            return Ok(PathBuf::from(app).join("peerchat"));
        }
        default_path_from(
            std::env::var_os("XDG_DATA_HOME").as_deref(),
            std::env::var_os("HOME").as_deref(),
        )
        .ok_or(DataDirError::NoDefault)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The database file.
    pub fn db_path(&self) -> PathBuf {
        self.dir.join(crate::db::DB_FILE)
    }

    /// The secret key file.
    pub fn identity_path(&self) -> PathBuf {
        self.dir.join(IDENTITY_FILE)
    }

    /// The local API file.
    pub fn api_path(&self) -> PathBuf {
        self.dir.join(API_FILE)
    }

    /// Whether an identity exists.
    pub fn has_identity(&self) -> bool {
        self.identity_path().exists()
    }

    /// Writes a new secret key (hex, mode 0600, atomically: temp file, fsync,
    /// rename). Refuses to replace an existing identity.
    pub fn write_secret(&self, secret: &[u8; 32]) -> Result<(), DataDirError> {
        let path = self.identity_path();
        if path.exists() {
            return Err(DataDirError::IdentityExists { path });
        }
        let mut text = hex::encode(secret);
        text.push('\n');
        write_private(&path, text.as_bytes())
    }

    /// Reads the secret key. Accepts 64 hex digits (surrounding whitespace
    /// ignored) or 32 raw bytes. A file readable by others is warned about
    /// and narrowed to 0600.
    pub fn read_secret(&self) -> Result<[u8; 32], DataDirError> {
        let path = self.identity_path();
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(DataDirError::NoIdentity {
                    dir: self.dir.clone(),
                });
            }
            Err(e) => return Err(io_err(&path)(e)),
        };
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let meta = fs::metadata(&path).map_err(io_err(&path))?;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                tracing::warn!(
                    "{} was readable by others (mode {mode:o}); setting it to 0600",
                    path.display()
                );
                fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
                    .map_err(io_err(&path))?;
            }
        }
        parse_secret(&bytes).map_err(|reason| DataDirError::BadIdentity { path, reason })
    }

    /// Writes `api.json` (mode 0600, atomically). It is removed by
    /// [`DataDir::remove_api_info`] or when this `DataDir` is dropped.
    pub fn write_api_info(&self, info: &ApiInfo) -> Result<(), DataDirError> {
        let path = self.api_path();
        let json = serde_json::to_vec_pretty(info).map_err(|e| DataDirError::BadApiInfo {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        write_private(&path, &json)?;
        self.wrote_api.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Removes `api.json` (at shutdown). Missing is fine.
    pub fn remove_api_info(&self) -> Result<(), DataDirError> {
        let path = self.api_path();
        self.wrote_api.store(false, Ordering::SeqCst);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// Reads `api.json` of the node running with data dir `dir` (without
    /// taking the lock: this is for the CLI clients of a running node).
    pub fn read_api_info(dir: impl AsRef<Path>) -> Result<ApiInfo, DataDirError> {
        let dir = dir.as_ref();
        let path = dir.join(API_FILE);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(DataDirError::NotRunning {
                    dir: dir.to_path_buf(),
                });
            }
            Err(e) => return Err(io_err(&path)(e)),
        };
        serde_json::from_slice(&bytes).map_err(|e| DataDirError::BadApiInfo {
            path,
            reason: e.to_string(),
        })
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        if self.wrote_api.load(Ordering::SeqCst) {
            let _ = fs::remove_file(self.api_path());
        }
        // The lock goes with the file handle.
    }
}

/// The default data dir from the given `XDG_DATA_HOME` and `HOME` values
/// (an empty or relative `XDG_DATA_HOME` is ignored, as the XDG spec says).
pub fn default_path_from(xdg_data_home: Option<&OsStr>, home: Option<&OsStr>) -> Option<PathBuf> {
    if let Some(x) = xdg_data_home.filter(|v| !v.is_empty()) {
        let p = PathBuf::from(x);
        if p.is_absolute() {
            return Some(p.join("peerchat"));
        }
    }
    let home = PathBuf::from(home.filter(|v| !v.is_empty())?);
    if cfg!(target_os = "macos") {
        Some(home.join("Library/Application Support/peerchat"))
    } else {
        Some(home.join(".local/share/peerchat"))
    }
}

/// The API token for the given random bytes (from the caller's CSPRNG; use at
/// least 16, 32 is good): lowercase hex.
pub fn make_token(random: &[u8]) -> String {
    hex::encode(random)
}

/// Compares a presented token with the expected one in time independent of
/// where they differ.
pub fn token_eq(presented: &str, expected: &str) -> bool {
    let (a, b) = (presented.as_bytes(), expected.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn parse_secret(bytes: &[u8]) -> Result<[u8; 32], String> {
    // Exactly 32 bytes is the raw form (a key in hex is 64 digits).
    if let Ok(k) = <[u8; 32]>::try_from(bytes) {
        return Ok(k);
    }
    let text = std::str::from_utf8(bytes)
        .map_err(|_| {
            format!(
                "expected 64 hex digits or 32 bytes, found {} bytes",
                bytes.len()
            )
        })?
        .trim();
    let v = hex::decode(text).map_err(|e| format!("expected 64 hex digits: {e}"))?;
    <[u8; 32]>::try_from(v.as_slice())
        .map_err(|_| format!("expected a 32-byte key, found {} bytes", v.len()))
}

/// Writes `bytes` to `path` atomically with mode 0600: a temp file in the same
/// directory, fsync, rename, fsync of the directory.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), DataDirError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(".{}.tmp", name.as_deref().unwrap_or("file")));
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(&tmp)(e)),
    }
    let mut opts = OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(&tmp).map_err(io_err(&tmp))?;
    f.write_all(bytes).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    drop(f);
    fs::rename(&tmp, path).map_err(io_err(path))?;
    #[cfg(unix)]
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_path_rules() {
        let p = default_path_from(Some(OsStr::new("/x/data")), Some(OsStr::new("/home/u")));
        assert_eq!(p, Some(PathBuf::from("/x/data/peerchat")));
        let p = default_path_from(Some(OsStr::new("rel")), Some(OsStr::new("/home/u")));
        assert!(p.is_some_and(|p| p.starts_with("/home/u")));
        let p = default_path_from(Some(OsStr::new("")), Some(OsStr::new("/home/u")));
        assert!(p.is_some_and(|p| p.ends_with("peerchat")));
        assert_eq!(default_path_from(None, None), None);
    }

    #[test]
    fn secret_forms() {
        let k = [7u8; 32];
        assert_eq!(parse_secret(&k), Ok(k));
        let hexed = format!("  {}\n", hex::encode(k));
        assert_eq!(parse_secret(hexed.as_bytes()), Ok(k));
        assert!(parse_secret(b"zz").is_err());
        assert!(parse_secret(hex::encode([1u8; 31]).as_bytes()).is_err());
        assert!(parse_secret(&[0xff; 40]).is_err());
    }

    #[test]
    fn tokens() {
        let t = make_token(&[0xab; 16]);
        assert_eq!(t.len(), 32);
        assert!(token_eq(&t, &t.clone()));
        assert!(!token_eq(&t, &make_token(&[0xac; 16])));
        assert!(!token_eq("a", "ab"));
    }
}
