//! End to end through the terminal UI: the real `peerchat` binary in a tmux
//! pane of 80x24, driven by `send-keys` and read by `capture-pane`, through
//! the first run (username), joining a network (bootstrap address of a second
//! node started with `peerchat run`), and sending a message that the second
//! node receives (checked with `peerchat inbox --json`).
//!
//! Skipped, with a printed reason, only when tmux is not installed. Every wait
//! polls with a generous bound and panics with the screen it last saw.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_peerchat");
/// Addresses of this test's nodes (other tests use other ones).
const BOB: &str = "127.0.0.61:27621";
const ALICE: &str = "127.0.0.62:27621";
/// Bounds for slow CI machines.
const SCREEN_TIMEOUT: Duration = Duration::from_secs(60);
const NET_TIMEOUT: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(200);

/// A private tmux server (its own socket), killed at the end.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.args(["-L", &self.socket]);
        // tmux wants a terminal type even for detached sessions.
        c.env("TERM", "xterm-256color");
        c
    }

    fn run(&self, args: &[&str]) {
        let out = self.cmd().args(args).output().expect("running tmux");
        assert!(
            out.status.success(),
            "tmux {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn screen(&self) -> String {
        let out = self
            .cmd()
            .args(["capture-pane", "-p", "-t", "tui"])
            .output()
            .expect("running tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The screen with soft-wrapped lines joined (`capture-pane -J`).
    fn joined(&self) -> String {
        let out = self
            .cmd()
            .args(["capture-pane", "-p", "-J", "-t", "tui"])
            .output()
            .expect("running tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn keys(&self, text: &str) {
        self.run(&["send-keys", "-t", "tui", "-l", text]);
    }

    fn key(&self, name: &str) {
        self.run(&["send-keys", "-t", "tui", name]);
    }

    /// Waits until the screen shows every one of `needles`; returns it.
    fn wait(&self, needles: &[&str], what: &str) -> String {
        let start = Instant::now();
        loop {
            let s = self.screen();
            if needles.iter().all(|n| s.contains(n)) {
                return s;
            }
            if start.elapsed() > SCREEN_TIMEOUT {
                panic!("timed out waiting for {what} ({needles:?}); the screen:\n{s}");
            }
            std::thread::sleep(POLL);
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").output();
    }
}

/// The second user's node, `peerchat run`, stopped at the end.
struct Bob(Child);

impl Drop for Bob {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(POLL);
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn peerchat(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .output()
        .expect("running peerchat")
}

fn start_bob(dir: &Path) -> Bob {
    let out = peerchat(dir, &["init", "--name", "bob"]);
    assert!(
        out.status.success(),
        "init bob: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut child = Command::new(BIN)
        .arg("--data-dir")
        .arg(dir)
        .args(["run", "--listen", BOB])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawning peerchat run");
    // `run` prints "Ctrl-C to stop." once its node and API are up.
    let stdout = child.stdout.take().expect("bob's stdout");
    let mut bob = Bob(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.contains("Ctrl-C to stop") {
                let _ = tx.send(());
            }
        }
    });
    if rx.recv_timeout(NET_TIMEOUT).is_err() {
        let status = bob.0.try_wait();
        panic!("bob's node did not start within {NET_TIMEOUT:?} (exit: {status:?})");
    }
    bob
}

fn tmux_missing() -> bool {
    !Command::new("tmux")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn first_run_join_and_send_in_tmux() {
    if tmux_missing() {
        println!(
            "SKIPPED first_run_join_and_send_in_tmux: tmux is not installed (apt-get install tmux)"
        );
        return;
    }
    let root = tempfile::tempdir().expect("temp dir");
    let bob_dir = root.path().join("bob");
    let alice_dir = root.path().join("alice");
    let _bob = start_bob(&bob_dir);

    let tmux = Tmux {
        socket: format!("peerchat-test-{}", std::process::id()),
    };
    // The pane keeps the exit status on screen after the UI quits.
    let ui = format!(
        "{BIN} --data-dir '{}' --listen {ALICE}; echo \"peerchat exited with $?\"; sleep 600",
        alice_dir.display()
    );
    tmux.run(&[
        "new-session",
        "-d",
        "-s",
        "tui",
        "-x",
        "80",
        "-y",
        "24",
        &ui,
    ]);

    // First run: a username.
    tmux.wait(&["Choose a username"], "the username question");
    tmux.keys("alice");
    tmux.key("Enter");

    // New network or join: join, with bob's address.
    tmux.wait(
        &["start a new network", "join: bootstrap address"],
        "the network question",
    );
    tmux.key("Down");
    tmux.key("Enter");
    tmux.wait(&["Type the IP:PORT"], "the bootstrap address question");
    tmux.keys(BOB);
    tmux.key("Enter");

    // The chat screen, on line: the status bar shows alice with peers.
    let s = tmux.wait(&[" alice ", "online", "? help"], "the chat screen, online");
    assert!(s.contains("Chats"), "{s}");
    assert!(alice_dir.join("identity.key").exists());

    // Open the conversation with bob and write.
    tmux.keys("/chat bob");
    tmux.key("Enter");
    tmux.wait(&["message to bob"], "the conversation with bob");
    let text = "hello bob, typed in the terminal UI";
    tmux.keys(text);
    tmux.key("Enter");

    // Bob's node has it.
    let start = Instant::now();
    loop {
        let out = peerchat(&bob_dir, &["inbox", "--json"]);
        let inbox = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            let msgs: serde_json::Value = serde_json::from_str(&inbox).expect("inbox JSON");
            let got = msgs
                .as_array()
                .is_some_and(|a| a.iter().any(|m| m["text"] == text));
            if got {
                break;
            }
        }
        if start.elapsed() > NET_TIMEOUT {
            panic!(
                "bob did not receive the message within {NET_TIMEOUT:?}; inbox: {inbox}; alice's screen:\n{}",
                tmux.screen()
            );
        }
        std::thread::sleep(POLL);
    }

    // Alice's screen shows it delivered (or already read).
    let start = Instant::now();
    loop {
        let s = tmux.screen();
        let row = s.lines().find(|l| l.contains(text)).unwrap_or("");
        if row.contains("delivered") || row.contains("read") {
            break;
        }
        if start.elapsed() > NET_TIMEOUT {
            panic!("the message never showed as delivered; the screen:\n{s}");
        }
        std::thread::sleep(POLL);
    }

    // /web prints the web app's address with the token, whole, on one line.
    let api: serde_json::Value = serde_json::from_slice(
        &std::fs::read(alice_dir.join("api.json")).expect("alice's api.json"),
    )
    .expect("api.json");
    let url = format!(
        "http://{}/#token={}",
        api["addr"].as_str().unwrap_or("?"),
        api["token"].as_str().unwrap_or("?")
    );
    tmux.keys("/web");
    tmux.key("Enter");
    tmux.wait(&["Press Enter to go back"], "the web app's address");
    let s = tmux.joined();
    assert!(
        s.lines().any(|l| l.trim() == url),
        "{url} not on one line:\n{s}"
    );
    tmux.key("Enter");
    tmux.wait(&["message to bob", "? help"], "the chat again");

    // /quit leaves cleanly.
    tmux.keys("/quit");
    tmux.key("Enter");
    tmux.wait(&["peerchat exited with 0"], "the UI to quit");
}
