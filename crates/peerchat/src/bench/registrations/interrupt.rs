//! A storm stopped by Ctrl-C, `kill` or a closed terminal cleans up what it
//! started: its worker processes, and its users' data dirs, which by default
//! live in /dev/shm, that is in memory, until the next reboot (hundreds of
//! MiB for a few thousand users).
//!
//! The storm registers what it starts here, and forgets it once it has
//! cleaned up itself; a thread waits for the signals and cleans up what is
//! still registered, then exits as the signal would have.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Once};

/// What is running or on disk now.
struct Started {
    dirs: Vec<PathBuf>,
    children: Vec<Arc<Mutex<Child>>>,
}

static STARTED: Mutex<Started> = Mutex::new(Started {
    dirs: Vec::new(),
    children: Vec::new(),
});

/// Set once a signal came, before the clean-up kills the workers.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Whether the run is being stopped by a signal: whatever then fails (the
/// workers it kills) is not worth reporting, and the process exits soon.
pub(super) fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

fn started() -> MutexGuard<'static, Started> {
    // A panic while holding it leaves lists that are still valid.
    STARTED.lock().unwrap_or_else(|e| e.into_inner())
}

/// Removes `dir` if the run is interrupted while the returned guard lives
/// (drop it before the dir's owner removes the dir).
pub(super) fn watch_dir(dir: &Path) -> WatchedDir {
    started().dirs.push(dir.to_path_buf());
    WatchedDir(dir.to_path_buf())
}

/// See [`watch_dir`].
#[must_use = "the dir is forgotten when this is dropped"]
pub(super) struct WatchedDir(PathBuf);

impl Drop for WatchedDir {
    fn drop(&mut self) {
        started().dirs.retain(|d| *d != self.0);
    }
}

/// Kills `child` if the run is interrupted.
pub(super) fn watch_child(child: &Arc<Mutex<Child>>) {
    started().children.push(child.clone());
}

/// `child` was waited for by its owner.
pub(super) fn forget_child(child: &Arc<Mutex<Child>>) {
    started().children.retain(|c| !Arc::ptr_eq(c, child));
}

/// Kills the registered workers, then removes the registered dirs (in that
/// order: a live worker could still write there). Returns the dirs removed.
fn clean_up() -> usize {
    let (dirs, children) = {
        let mut s = started();
        (std::mem::take(&mut s.dirs), std::mem::take(&mut s.children))
    };
    for c in children {
        let mut c = c.lock().unwrap_or_else(|e| e.into_inner());
        let _ = c.kill();
        let _ = c.wait();
    }
    dirs.iter()
        .filter(|d| std::fs::remove_dir_all(d).is_ok())
        .count()
}

/// Starts the thread that cleans up on SIGINT, SIGTERM or SIGHUP (once per
/// process; a no-op after the first call).
pub(super) fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let spawned = std::thread::Builder::new()
            .name("storm-interrupt".into())
            .spawn(|| {
                let Some(code) = wait_for_signal() else {
                    return;
                };
                INTERRUPTED.store(true, Ordering::SeqCst);
                let removed = clean_up();
                // Over the progress bar, if there is one.
                let clear = if std::io::stderr().is_terminal() {
                    "\r\x1b[K"
                } else {
                    ""
                };
                eprintln!(
                    "{clear}interrupted: workers stopped, {removed} storm data dir(s) removed"
                );
                std::process::exit(code);
            });
        if let Err(e) = spawned {
            tracing::warn!("no clean-up on interrupt: {e}");
        }
    });
}

/// Blocks until a signal that ends the program comes; returns the exit code
/// the shell reports for it (128 + its number). `None` if none can be waited for.
fn wait_for_signal() -> Option<i32> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    rt.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut int = signal(SignalKind::interrupt()).ok()?;
        let mut term = signal(SignalKind::terminate()).ok()?;
        let mut hup = signal(SignalKind::hangup()).ok()?;
        tokio::select! {
            _ = int.recv() => Some(130),
            _ = term.recv() => Some(143),
            _ = hup.recv() => Some(129),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_up_kills_the_workers_and_removes_the_dirs() {
        let dir = tempfile::tempdir().expect("temp dir");
        let storm = dir.path().join("storm");
        std::fs::create_dir_all(storm.join("u0")).expect("mkdir");
        std::fs::write(storm.join("u0/db"), b"x").expect("write");
        let kept = dir.path().join("kept");
        std::fs::create_dir(&kept).expect("mkdir");
        let child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .expect("sleep");
        let child = Arc::new(Mutex::new(child));
        let _storm = watch_dir(&storm);
        drop(watch_dir(&kept));
        watch_child(&child);
        assert_eq!(clean_up(), 1);
        assert!(!storm.exists() && kept.exists());
        let status = child.lock().expect("lock").try_wait().expect("status");
        assert!(status.is_some_and(|s| !s.success()), "{status:?}");
        // Nothing left registered: a second clean-up does nothing.
        assert_eq!(clean_up(), 0);
    }
}
