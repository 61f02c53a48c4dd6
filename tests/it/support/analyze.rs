//! What the analyzer tests share: the incident input, the analyzer process,
//! reading its outputs back and waiting for them to settle.
#![allow(dead_code)]

use super::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// 35 minutes of mixed events at 60 events/s of event time (126k records);
/// checkout is 10× slower from minute 10 to 20.
pub const PRODUCE: &[&str] = &[
    "produce",
    "all",
    "--clock",
    "simulated",
    "--start",
    "2026-01-01T00:00:00Z",
    "--rate",
    "60",
    "--duration",
    "35m",
    "--incident",
    "slow:checkout@10m+10m",
    "--seed",
    "11",
];
pub const START_MS: i64 = 1_767_225_600_000;
pub const MIN: i64 = 60_000;

/// A database of its own for this run (checkpoints are per group anyway,
/// but a fresh schema proves the migrations run from nothing).
pub fn database(tag: &str) -> String {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(super::fresh_database(tag))
}

/// Kills the analyzer when dropped, so a failing assertion leaves no process behind.
pub struct Analyzer(pub Child);

impl Drop for Analyzer {
    fn drop(&mut self) {
        let _ = self.0.kill(); // SIGKILL: no shutdown hook runs
        let _ = self.0.wait();
    }
}

/// The analyzer's log, appended per run (kept for a failing test's reader).
pub fn log_file(prefix: &str) -> std::fs::File {
    let path = std::env::temp_dir().join(format!("{}log", prefix));
    eprintln!("analyzer log: {}", path.display());
    std::fs::OpenOptions::new().create(true).append(true).open(path).expect("open the analyzer log")
}

/// The analyzer on `prefix`; `env` adds settings (e.g. exactly-once).
pub fn analyzer_with(prefix: &str, db: &str, env: &[(&str, &str)]) -> Analyzer {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_udo-stream"));
    cmd.args(["run", "--pipelines", "analyze", "--metrics-addr", "127.0.0.1:0", "--topic-prefix", prefix])
        .env("KAFKA_BROKERS", brokers())
        .env("DATABASE_URL", db)
        .env("UDO_EMBEDDING_DIM", "8")
        .env("UDO__ANALYZE__IDLE_TIMEOUT", "3s")
        .env("UDO__ANALYZE__CHECKPOINT_INTERVAL", "500ms")
        // Runs on different topic prefixes compare their ids: they are one
        // deployment, so the namespace is pinned (not derived from the prefix).
        .env("UDO_NAMESPACE", "it")
        .env("UDO_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log_file(prefix));
    for (k, v) in env {
        cmd.env(k, v);
    }
    Analyzer(cmd.spawn().expect("start the analyzer"))
}

pub fn analyzer(prefix: &str, db: &str) -> Analyzer {
    analyzer_with(prefix, db, &[])
}

/// Starts the analyzer and waits until it holds partitions (after a
/// SIGKILL, once the dead member's session expired).
pub fn assigned_analyzer(prefix: &str, db: &str) -> Analyzer {
    assigned_analyzer_with(prefix, db, &[])
}

pub fn assigned_analyzer_with(prefix: &str, db: &str, env: &[(&str, &str)]) -> Analyzer {
    let path = std::env::temp_dir().join(format!("{}log", prefix));
    let seen = std::fs::metadata(&path).map(|m| m.len() as usize).unwrap_or(0);
    let child = analyzer_with(prefix, db, env);
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        let log = std::fs::read(&path).unwrap_or_default();
        let new = String::from_utf8_lossy(&log[seen.min(log.len())..]).into_owned();
        if new.lines().any(|l| l.contains("assigned:") && !l.contains("total=0")) {
            return child;
        }
    }
    panic!("the analyzer got no partitions within 60 s (log: {})", path.display());
}

/// Every output record (topic contract name, value) on the three output
/// topics. `udo.windows.v1` is compacted: the broker keeps the latest window
/// per subject, which is what a reader of that topic gets.
pub fn outputs(prefix: &str) -> Vec<(String, Value)> {
    let mut all = Vec::new();
    // Degradations before alerts: the engine's order within one window.
    for t in ["udo.windows.v1", "udo.degradations.v1", "udo.alerts.v1"] {
        let text = udo_ok(&["tail", &format!("{prefix}{t}"), "--from-beginning", "--to-end", "--idle-exit", "20s"]);
        for line in text.lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            assert!(v.get("error").is_none(), "undecodable output: {line}");
            all.push((t.to_string(), v["value"].clone()));
        }
    }
    all
}

/// Windows ending by minute 34 close on event time alone (watermark = last
/// event − 30 s); later ones close by the wall-clock idle advance, whose
/// timing differs between runs, so comparisons stop there.
pub const CLOSED_BY_DATA: i64 = START_MS + 34 * MIN;

/// Waits until every window closed by event time is out and the outputs
/// stop growing.
pub fn settle(prefix: &str) -> Vec<(String, Value)> {
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut last = usize::MAX;
    loop {
        std::thread::sleep(Duration::from_secs(6));
        let out = outputs(prefix);
        // Every latency component and (project, component) pair has its
        // windows up to minute 34 out. Uncertainty windows wait for every
        // decision channel to be seen or idle (see domain::engine::Source).
        let complete: BTreeSet<&str> = out
            .iter()
            .filter(|(t, v)| {
                t == "udo.windows.v1" && v["endpoint"].is_null() && v["window_end"].as_i64() >= Some(CLOSED_BY_DATA)
            })
            .filter_map(|(_, v)| v["subject"].as_str())
            .collect();
        let done = complete.len() == 5 + 15;
        if done && out.len() == last {
            return out;
        }
        assert!(Instant::now() < deadline, "analyzer did not settle: {} outputs", out.len());
        last = out.len();
    }
}

pub fn produce(prefix: &str) {
    apply_topics(prefix);
    let mut args = PRODUCE.to_vec();
    args.extend(["--topic-prefix", prefix]);
    let out = Command::new(env!("CARGO_BIN_EXE_udo-stream"))
        .args(&args)
        .env("KAFKA_BROKERS", brokers())
        .env("UDO_EMBEDDING_DIM", "8")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

pub fn label(topic: &str, v: &Value) -> Option<String> {
    let minute = (v["window_end"].as_i64()? - START_MS) / MIN;
    match topic {
        "udo.degradations.v1" => Some(format!("{} {}@{minute}", v["component"].as_str()?, v["kind"].as_str()?)),
        "udo.alerts.v1" => Some(format!(
            "{} {} {} {}@{minute}",
            v["subject"].as_str()?,
            v["rule"].as_str()?,
            v["severity"].as_str()?,
            v["status"].as_str()?
        )),
        _ => None,
    }
}
