//! The analyzer against the real stack: an injected incident yields exactly
//! the expected degradation and alert sequence, and an analyzer killed with
//! SIGKILL mid-run and restarted emits the same set of output ids as an
//! uninterrupted run (duplicates only with identical ids).

mod common;

use common::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// 40 minutes of mixed events at 60 events/s of event time (144k records);
/// checkout is 10× slower from minute 10 to 20.
const PRODUCE: &[&str] = &[
    "produce",
    "all",
    "--clock",
    "simulated",
    "--start",
    "2026-01-01T00:00:00Z",
    "--rate",
    "60",
    "--duration",
    "40m",
    "--incident",
    "slow:checkout@10m+10m",
    "--seed",
    "11",
];
const START_MS: i64 = 1_767_225_600_000;
const MIN: i64 = 60_000;

/// A database of its own for this run (checkpoints are per group anyway,
/// but a fresh schema proves the migrations run from nothing).
fn fresh_database(tag: &str) -> String {
    let base = std::env::var("DATABASE_URL").expect("DATABASE_URL is not set: run tests with scripts/test");
    let name = format!("it_{tag}_{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        use sqlx::Connection;
        let mut c = sqlx::PgConnection::connect(&base)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL at {base} is unreachable ({e}); start it with scripts/stack up"));
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut c).await.unwrap();
    });
    let (head, _) = base.rsplit_once('/').unwrap();
    format!("{head}/{name}")
}

fn analyzer(prefix: &str, db: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_udo-stream"))
        .args(["run", "--pipelines", "analyze", "--metrics-addr", "127.0.0.1:0", "--topic-prefix", prefix])
        .env("KAFKA_BROKERS", brokers())
        .env("DATABASE_URL", db)
        .env("UDO_EMBEDDING_DIM", "8")
        .env("UDO__ANALYZE__IDLE_TIMEOUT", "3s")
        .env("UDO__ANALYZE__CHECKPOINT_INTERVAL", "500ms")
        .env("UDO_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the analyzer")
}

/// Every output record (topic contract name, value) on the three output topics.
fn outputs(prefix: &str) -> Vec<(String, Value)> {
    let mut all = Vec::new();
    for t in ["udo.windows.v1", "udo.alerts.v1", "udo.degradations.v1"] {
        let text = udo_ok(&["tail", &format!("{prefix}{t}"), "--from-beginning", "--idle-exit", "2s"]);
        for line in text.lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            assert!(v.get("error").is_none(), "undecodable output: {line}");
            all.push((t.to_string(), v["value"].clone()));
        }
    }
    all
}

/// Waits until the output topics stop growing (all input consumed and the
/// idle advance closed the last windows).
fn settle(prefix: &str) -> Vec<(String, Value)> {
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut last = usize::MAX;
    loop {
        std::thread::sleep(Duration::from_secs(6));
        let out = outputs(prefix);
        // The last window holding data ends 5 minutes after the last event.
        let done = out.iter().any(|(_, v)| v["window_end"].as_i64() == Some(START_MS + 45 * MIN - MIN));
        if done && out.len() == last {
            return out;
        }
        assert!(Instant::now() < deadline, "analyzer did not settle: {} outputs", out.len());
        last = out.len();
    }
}

fn produce(prefix: &str) {
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

fn label(topic: &str, v: &Value) -> Option<String> {
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

#[test]
fn incident_sequence_and_kill_restart_give_the_same_outputs() {
    let (a, b) = (prefix("analyze-a"), prefix("analyze-b"));
    produce(&a);
    produce(&b);

    // Uninterrupted run.
    let mut child = analyzer(&a, &fresh_database("analyze_a"));
    let clean = settle(&a);
    child.kill().unwrap();
    child.wait().unwrap();

    // The incident, in order per subject; latency rules only (uncertainty
    // alerts depend on how few ratings a window holds, checked below).
    let mut per_subject: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (t, v) in &clean {
        if let Some(l) = label(t, v) {
            if !l.contains(" uncertainty ") {
                per_subject.entry(l.split(' ').next().unwrap().to_string()).or_default().push(l);
            }
        }
    }
    let checkout = per_subject.remove("checkout").unwrap_or_default();
    let shape: Vec<String> = checkout.iter().map(|l| l.split('@').next().unwrap().to_string()).collect();
    assert_eq!(
        shape,
        [
            "checkout latency_p95 WARNING FIRING",
            "checkout latency_p95 CRITICAL FIRING",
            "checkout DEGRADED",
            "checkout RECOVERED",
            "checkout latency_p95 WARNING RESOLVED",
            "checkout latency_p95 CRITICAL RESOLVED",
        ],
        "{checkout:#?}"
    );
    let at = |i: usize| checkout[i].rsplit('@').next().unwrap().parse::<i64>().unwrap();
    // Slow from minute 10: the first window holding it ends at 11; DEGRADED
    // needs 2 windows. Healthy from 20: the first clean window ends at 25,
    // RECOVERED after 3 of them.
    assert_eq!((at(0), at(2), at(3), at(4)), (11, 12, 27, 27), "{checkout:#?}");
    assert!(per_subject.is_empty(), "no other component misbehaved: {per_subject:#?}");

    // The uncertainty join: decisions re-keyed by component meet ratings.
    let joined = clean.iter().filter(|(t, v)| t == "udo.windows.v1" && v["uncertainty"]["decisions"].as_i64() > Some(0));
    assert!(joined.count() > 50, "uncertainty windows carry decision logs (calibration)");

    // Same input, analyzer killed twice mid-run and restarted.
    let db = fresh_database("analyze_b");
    for kill_after in [Duration::from_secs(4), Duration::from_secs(7)] {
        let mut child = analyzer(&b, &db);
        std::thread::sleep(kill_after);
        child.kill().unwrap(); // SIGKILL: no shutdown hook runs
        child.wait().unwrap();
    }
    let mut child = analyzer(&b, &db);
    let restarted = settle(&b);
    child.kill().unwrap();
    child.wait().unwrap();

    let ids = |v: &[(String, Value)]| -> BTreeSet<String> {
        v.iter().map(|(_, v)| v["event_id"].as_str().unwrap().to_string()).collect()
    };
    let (clean_ids, restarted_ids) = (ids(&clean), ids(&restarted));
    assert_eq!(clean_ids.len(), clean.len(), "an uninterrupted run emits each id once");
    assert_eq!(
        clean_ids.symmetric_difference(&restarted_ids).count(),
        0,
        "same ids after kill -9 and restart ({} vs {})",
        clean_ids.len(),
        restarted_ids.len()
    );
    // Duplicates carry identical content.
    let mut seen: BTreeMap<String, &Value> = BTreeMap::new();
    for (_, v) in &restarted {
        let id = v["event_id"].as_str().unwrap().to_string();
        if let Some(prev) = seen.insert(id, v) {
            assert_eq!(prev, v, "a re-emitted id carries the same event");
        }
    }
    eprintln!(
        "analyze: {} outputs uninterrupted; {} records ({} duplicates) across 2 kills",
        clean.len(),
        restarted.len(),
        restarted.len() - restarted_ids.len()
    );
}
