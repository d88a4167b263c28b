//! Helpers shared by the real-process tests: a user's data dir and its
//! `peerchat run` process (started, waited for, stopped, killed, cleaned up on
//! drop), the CLI clients of its local API, and bounded polling.
//!
//! Each test file compiles this module on its own and uses a part of it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_peerchat");
/// How long a node may take to answer its API after `run`.
pub(crate) const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How often [`wait_for`] polls.
pub(crate) const POLL: Duration = Duration::from_millis(200);
/// How many lines of each run's log a failure message shows.
const LOG_TAIL: usize = 40;

/// A hard link to the binary in `dir` (else the binary itself), so that a
/// rebuild of the shared target dir during the test does not pull it away.
pub(crate) fn private_bin(dir: &Path) -> PathBuf {
    let link = dir.join("peerchat");
    if link.exists() {
        return link;
    }
    match std::fs::hard_link(BIN, &link) {
        Ok(()) => link,
        Err(_) => PathBuf::from(BIN),
    }
}

/// Polls `f` every [`POLL`] until it gives `Some`, at most `timeout`; panics
/// with `what`.
pub(crate) fn wait_for<T>(
    what: impl Fn() -> String,
    timeout: Duration,
    f: impl FnMut() -> Option<T>,
) -> T {
    poll_until(POLL, what, timeout, f)
}

/// Polls `f` every `poll` until it gives `Some`, at most `timeout`; panics
/// with `what`.
pub(crate) fn poll_until<T>(
    poll: Duration,
    what: impl Fn() -> String,
    timeout: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {}", what());
        }
        thread::sleep(poll);
    }
}

/// One user: a data dir and, while it runs, its node process.
pub(crate) struct Node {
    pub(crate) name: String,
    pub(crate) dir: PathBuf,
    /// The binary, for `run` and for the CLI clients.
    bin: PathBuf,
    /// The network namespace the node and its clients run in, if any.
    ns: Option<String>,
    /// Each run logs to `<dir>/<log_prefix>-run<N>.log`.
    log_prefix: &'static str,
    /// How many times `run` was started.
    runs: u32,
    child: Option<Child>,
    /// The user's key, hex (known once the node answered `status`).
    pub(crate) key: String,
}

impl Node {
    /// The user `name` in `root/name`, created with `peerchat init` if new;
    /// not running yet. With `ns`, every command runs in that namespace.
    pub(crate) fn init(
        bin: &Path,
        root: &Path,
        name: &str,
        ns: Option<&str>,
        log_prefix: &'static str,
    ) -> Node {
        let dir = root.join(name);
        if !dir.exists() {
            let out = Command::new(bin)
                .arg("--data-dir")
                .arg(&dir)
                .args(["init", "--name", name])
                .output()
                .expect("spawning peerchat init");
            assert!(
                out.status.success(),
                "init {name} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Node {
            name: name.to_string(),
            dir,
            bin: bin.to_path_buf(),
            ns: ns.map(str::to_string),
            log_prefix,
            runs: 0,
            child: None,
            key: String::new(),
        }
    }

    /// `peerchat --data-dir <dir>`, inside the node's namespace if it has one
    /// (`ip netns exec` execs the command: the child is peerchat itself).
    fn command(&self) -> Command {
        let mut cmd = match &self.ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&self.bin);
                c
            }
            None => Command::new(&self.bin),
        };
        cmd.arg("--data-dir").arg(&self.dir);
        cmd
    }

    fn log_path(&self, run: u32) -> PathBuf {
        self.dir.join(format!("{}-run{run}.log", self.log_prefix))
    }

    /// Starts `peerchat run` on `listen` (joining through `bootstrap`, if any),
    /// logging to a file of its own; the pid. Does not wait.
    pub(crate) fn launch(&mut self, listen: &str, bootstrap: Option<&str>) -> u32 {
        assert!(self.child.is_none(), "{} is already running", self.name);
        self.runs += 1;
        let log = File::create(self.log_path(self.runs)).expect("creating the log file");
        let mut cmd = self.command();
        cmd.args(["run", "--listen", listen]);
        if let Some(b) = bootstrap {
            cmd.args(["--bootstrap", b]);
        }
        cmd.env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("cloning the log file"))
            .stderr(log);
        let child = cmd.spawn().expect("spawning peerchat run");
        let pid = child.id();
        self.child = Some(child);
        pid
    }

    /// Polls `ready` every `poll` until it gives `Some`; panics with the logs
    /// if the node exits or `ready` gives nothing within [`START_TIMEOUT`]
    /// (the message says the node did not `what`).
    pub(crate) fn wait_ready<T>(
        &mut self,
        what: &str,
        poll: Duration,
        mut ready: impl FnMut(&Node) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(st) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                panic!(
                    "{}'s node exited at start ({st}):\n{}",
                    self.name,
                    self.logs()
                );
            }
            if let Some(v) = ready(self) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{}'s node did not {what} within {START_TIMEOUT:?}:\n{}",
                self.name,
                self.logs()
            );
            thread::sleep(poll);
        }
    }

    /// Starts the node on `listen` and waits until its `status` answers from
    /// this run (alive, listening on `listen`); notes its key.
    pub(crate) fn start(&mut self, listen: &str, bootstrap: Option<&str>, poll: Duration) {
        self.launch(listen, bootstrap);
        let st = self.wait_ready("answer `status`", poll, |n| {
            n.try_cli(&["status", "--json"])
                .ok()
                .filter(|st| st["listen"] == listen)
        });
        self.key = st["key"].as_str().expect("status.key").to_string();
    }

    /// The logs of every run so far (for failure messages).
    pub(crate) fn logs(&self) -> String {
        let mut s = String::new();
        for r in 1..=self.runs {
            let text = std::fs::read_to_string(self.log_path(r)).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(LOG_TAIL).collect();
            s.push_str(&format!("--- {} run {r} (last lines) ---\n", self.name));
            for l in tail.into_iter().rev() {
                s.push_str(l);
                s.push('\n');
            }
        }
        s
    }

    /// Runs a client command; its stdout, or its error.
    pub(crate) fn try_cli_raw(&self, args: &[&str]) -> Result<String, String> {
        let out = self
            .command()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("spawning peerchat: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "`peerchat {}` for {} failed ({}): {}",
                args.join(" "),
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// Runs a client command that prints JSON; the JSON, or the error.
    pub(crate) fn try_cli(&self, args: &[&str]) -> Result<Value, String> {
        let out = self.try_cli_raw(args)?;
        serde_json::from_str(&out).map_err(|e| format!("bad JSON from {args:?}: {e}: {out}"))
    }

    /// Runs a client command that prints JSON; panics if it fails.
    pub(crate) fn cli(&self, args: &[&str]) -> Value {
        self.try_cli(args).unwrap_or_else(|e| panic!("{e}"))
    }

    pub(crate) fn status(&self) -> Value {
        self.cli(&["status", "--json"])
    }

    /// Sends `text` to `to`; the message id.
    pub(crate) fn send(&self, to: &str, text: &str) -> String {
        let out = self
            .try_cli_raw(&["send", to, "--", text])
            .unwrap_or_else(|e| panic!("{e}"));
        let id = out.trim().to_string();
        assert_eq!(id.len(), 32, "send printed no id: {out:?}");
        id
    }

    /// Received messages (all of them, up to 10,000).
    pub(crate) fn inbox(&self) -> Vec<Value> {
        match self.cli(&["inbox", "--limit", "10000", "--json"]) {
            Value::Array(v) => v,
            other => panic!("inbox of {} is not a list: {other}", self.name),
        }
    }

    /// The conversation with `peer`, oldest first.
    pub(crate) fn history(&self, peer: &str) -> Vec<Value> {
        match self.cli(&["history", peer, "--limit", "10000", "--json"]) {
            Value::Array(v) => v,
            other => panic!("history of {} is not a list: {other}", self.name),
        }
    }

    /// Delivery state of each message sent to `peer`, by id.
    pub(crate) fn states(&self, peer: &str) -> HashMap<String, String> {
        self.history(peer)
            .into_iter()
            .filter(|m| m["direction"] == "out")
            .map(|m| {
                (
                    m["id"].as_str().unwrap_or_default().to_string(),
                    m["state"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }

    /// Waits until the node holds its name on the network.
    pub(crate) fn wait_claimed(&self, timeout: Duration, poll: Duration) {
        poll_until(
            poll,
            || format!("{}'s name claim to be held by the network", self.name),
            timeout,
            || {
                self.status()["name_claimed"]
                    .as_bool()
                    .unwrap_or(false)
                    .then_some(())
            },
        );
    }

    /// Stops the node with SIGTERM and waits for it to exit cleanly.
    pub(crate) fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let st = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("running kill");
        assert!(st.success(), "kill -TERM {} failed", self.name);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = child.try_wait().expect("waiting for the node") {
                assert!(
                    st.success(),
                    "{}'s node exited badly on SIGTERM ({st}):\n{}",
                    self.name,
                    self.logs()
                );
                return;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{}'s node did not stop within 20 s of SIGTERM:\n{}",
                    self.name,
                    self.logs()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the node with SIGKILL.
    pub(crate) fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("SIGKILL");
            let _ = child.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
