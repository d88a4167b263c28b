//! `peerchat bench registrations` end to end: tiny storms of real users (in a
//! worker process of the binary) and of simulated ones, checked through the JSON
//! report.

use std::process::Command;

use serde_json::Value;

/// Runs the benchmark with `args`, drawing its plots as `ext` (svg or png).
fn storm(args: &[&str], ext: &str) -> Value {
    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("storm.json");
    let plot = dir.path().join(format!("storm.{ext}"));
    let out = Command::new(env!("CARGO_BIN_EXE_peerchat"))
        .args(["bench", "registrations"])
        .args(args)
        .arg("--json")
        .arg(&json)
        .arg("--plot")
        .arg(&plot)
        .arg("--dir")
        .arg(dir.path())
        .output()
        .expect("running peerchat");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "peerchat bench registrations {args:?} failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("the JSON report was written"))
            .expect("valid JSON");
    // Both figures are drawn: SVG with its text, PNG as a 960x600 image.
    for figure in [
        plot.clone(),
        dir.path().join(format!("storm-scaling.{ext}")),
    ] {
        let bytes = std::fs::read(&figure).expect("plot written");
        if ext == "svg" {
            let text = String::from_utf8_lossy(&bytes);
            assert!(text.starts_with("<svg"), "{}", figure.display());
            assert!(text.contains("<text"), "{} has no labels", figure.display());
        } else {
            assert!(
                bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
                "{} is not a PNG",
                figure.display()
            );
            // The IHDR chunk: width and height, big-endian, after the signature.
            assert_eq!(&bytes[16..24], &[0, 0, 3, 192, 0, 0, 2, 88]);
            assert!(bytes.len() > 20_000, "{} is nearly empty", figure.display());
        }
    }
    report
}

/// Runs the benchmark with `args`, which must fail at once; returns stderr.
fn refused(args: &[&str]) -> String {
    let started = std::time::Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_peerchat"))
        .args(["bench", "registrations"])
        .args(args)
        .output()
        .expect("running peerchat");
    assert!(!out.status.success(), "{args:?} was accepted");
    // Refused before any storm starts, not after the sweep.
    assert!(
        started.elapsed().as_secs() < 5,
        "{args:?} ran before failing"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_options_are_refused_before_the_sweep_with_a_reason() {
    let dir = tempfile::tempdir().expect("temp dir");
    let nowhere = dir.path().join("no-such-folder");
    let jpg = dir.path().join("storm.jpg");
    let in_nowhere = nowhere.join("storm.svg");
    let json_in_nowhere = nowhere.join("storm.json");
    let cases: [(Vec<&str>, &str); 6] = [
        (vec!["--nodes", "1"], "at least 2 users"),
        (vec!["--nodes", "10", "--k", "0"], "must be at least 1"),
        (vec!["--nodes", "10", "--alpha", "0"], "must be at least 1"),
        (
            vec!["--nodes", "10", "--plot", jpg.to_str().expect("utf-8")],
            ".svg or .png",
        ),
        (
            vec![
                "--nodes",
                "10",
                "--plot",
                in_nowhere.to_str().expect("utf-8"),
            ],
            "no folder",
        ),
        (
            vec![
                "--nodes",
                "10",
                "--json",
                json_in_nowhere.to_str().expect("utf-8"),
            ],
            "cannot write there",
        ),
    ];
    for (args, reason) in cases {
        let err = refused(&args);
        assert!(err.contains(reason), "{args:?}: {err}");
    }
    assert!(!jpg.exists(), "nothing drawn for a refused run");
}

fn num(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

#[test]
fn tiny_real_storms_register_resolve_and_deliver_everything() {
    let report = storm(&["--nodes", "10,20", "--seed", "5"], "svg");
    let runs = report["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 2);
    for (run, n) in runs.iter().zip([10.0, 20.0]) {
        assert_eq!(num(run, "n"), n);
        assert_eq!(run["mode"], "real");
        // Every pair, both ways.
        let checks = n * (n - 1.0);
        assert_eq!(num(run, "resolutions"), checks, "{run}");
        assert_eq!(num(run, "resolved"), checks, "{run}");
        assert_eq!(num(run, "messages"), checks, "{run}");
        assert_eq!(num(run, "delivered"), checks, "{run}");
        assert_eq!(num(run, "join_failures"), 0.0, "{run}");
        assert_eq!(num(run, "announce_failures"), 0.0, "{run}");
        assert!(num(run, "rpcs_per_node") > 0.0, "{run}");
        assert!(num(run, "rpcs_per_node_total") >= num(run, "rpcs_per_node"));
        assert!(num(run, "registered_seconds") > 0.0);
        assert!(num(run, "total_seconds") >= num(run, "registered_seconds"));
        assert!(num(run, "fd_peak") > n, "{run}");
        assert!(!run["rpc_rate"].as_array().expect("rate").is_empty());
        assert!(run["name_lookup_ms"]["p50"].as_f64().is_some());
    }
    assert!(report["rpcs_fit"]["r2"].as_f64().is_some());
}

#[test]
fn a_storm_spread_over_worker_processes_chains_them_and_resolves_every_name() {
    // Three processes of 8 users: each process's first user registers once the
    // previous process's last one has joined (its mark file).
    let report = storm(
        &["--nodes", "24", "--users-per-worker", "8", "--seed", "6"],
        "svg",
    );
    let run = &report["runs"][0];
    assert_eq!(num(run, "workers"), 3.0, "{run}");
    let checks = 24.0 * 23.0;
    assert!(num(run, "resolutions") >= 200.0_f64.min(checks), "{run}");
    assert_eq!(num(run, "resolved"), num(run, "resolutions"), "{run}");
    assert_eq!(num(run, "delivered"), num(run, "messages"), "{run}");
    assert_eq!(num(run, "join_failures"), 0.0, "{run}");
    assert_eq!(num(run, "announce_failures"), 0.0, "{run}");
}

#[test]
fn tiny_simulated_storm_resolves_every_name() {
    let report = storm(&["--sim", "--nodes", "30,60", "--pairs", "20"], "png");
    for run in report["runs"].as_array().expect("runs") {
        assert_eq!(run["mode"], "sim");
        assert_eq!(num(run, "resolutions"), 20.0, "{run}");
        assert_eq!(num(run, "resolved"), 20.0, "{run}");
        assert_eq!(num(run, "announce_failures"), 0.0, "{run}");
        assert!(num(run, "rpcs_per_node") > 0.0);
    }
}

/// The worker processes of `pid` (its children), once `count` of them run.
fn children(pid: u32, count: usize) -> Vec<u32> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let list = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .expect("/proc/PID/task/PID/children");
        let pids: Vec<u32> = list
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        if pids.len() >= count {
            return pids;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {count} workers started",
            pids.len()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A storm of three workers of 8 users, logins 300 ms apart, half a second
/// after its workers started: it lasts seconds more, time to stop it or a
/// worker. Returns the dir of its data dirs, the process and its workers.
fn slow_storm() -> (tempfile::TempDir, std::process::Child, Vec<u32>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let child = Command::new(env!("CARGO_BIN_EXE_peerchat"))
        .args(["bench", "registrations", "--nodes", "24"])
        .args(["--users-per-worker", "8", "--join-interval-ms", "300"])
        .args(["--seed", "7", "--dir"])
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running peerchat");
    let workers = children(child.id(), 3);
    std::thread::sleep(std::time::Duration::from_millis(500));
    (dir, child, workers)
}

/// Sends `sig` (`-KILL`, `-TERM`) to process `pid`.
fn signal(pid: u32, sig: &str) {
    let sent = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("kill");
    assert!(sent.success(), "kill {sig} {pid}");
}

#[test]
fn a_worker_killed_mid_storm_fails_the_run_at_once_with_the_reason() {
    let (_dir, child, workers) = slow_storm();
    signal(workers[1], "-KILL");
    let at = std::time::Instant::now();
    let out = child.wait_with_output().expect("waiting for peerchat");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the storm went on without worker 1");
    assert!(
        stderr.contains("worker process 1 exited in the middle of the storm"),
        "{stderr}"
    );
    // Not the phase's budget of minutes: the end of its output is seen.
    assert!(
        at.elapsed() < std::time::Duration::from_secs(10),
        "failed after {:?}",
        at.elapsed()
    );
}

#[test]
fn a_stopped_storm_kills_its_workers_and_removes_its_data_dirs() {
    let (dir, child, workers) = slow_storm();
    let storm_dirs = || std::fs::read_dir(dir.path()).expect("dir").count();
    assert_eq!(storm_dirs(), 1, "the storm's data dirs are there");
    signal(child.id(), "-TERM");
    let out = child.wait_with_output().expect("waiting for peerchat");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(143), "{stderr}");
    assert!(stderr.contains("interrupted: workers stopped"), "{stderr}");
    // The workers it killed are not reported as a failure of the storm.
    assert!(!stderr.contains("exited in the middle"), "{stderr}");
    assert_eq!(storm_dirs(), 0, "data dirs left behind");
    for w in workers {
        assert!(
            !std::path::Path::new(&format!("/proc/{w}")).exists()
                || std::fs::read_to_string(format!("/proc/{w}/stat"))
                    .is_ok_and(|s| s.contains(") Z ")),
            "worker {w} still runs"
        );
    }
}
