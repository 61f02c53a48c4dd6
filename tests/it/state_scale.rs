//! The analyzer holding 20,000 subjects, on the real broker, fed by a
//! third-party producer (Python confluent-kafka publishing JSON latency
//! samples for 4 components x 5,000 endpoints, `interop/many_subjects.py`):
//! - exactly-once, killed with SIGKILL three times: a `read_committed`
//!   reader sees every output exactly once and the same set as an
//!   uninterrupted run, a window for every subject and minute; the stored
//!   state (the changelog's live records) equals the uninterrupted run's;
//! - at-least-once, the same: the same set of ids (a duplicate only ever
//!   repeats an id with the same content), and PostgreSQL's stored subjects
//!   equal the uninterrupted run's;
//! - the bound: past `analyze.max_subjects` records for new subjects go to
//!   the DLQ (class `cardinality`), known subjects go on, the process stays up;
//! - a quiet subject expires after `analyze.state_ttl` of event time: its
//!   firing alerts resolve and its DEGRADED state ends with an explicit
//!   event saying no data arrived.
//!
//! Sizes are for CI; `UDO_SCALE_ENDPOINTS=25000` (100,000 subjects) runs the
//! same checks bigger.

use crate::support as common;
use crate::support::analyze as support;
use crate::support::materialize as msupport;

use common::*;
use rdkafka::Message;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};
use support::{Analyzer, START_MS, analyzer_with, assigned_analyzer_with, database, log_file};

const COMPONENTS: usize = 4;
const MINUTES: i64 = 3;
const MIN: i64 = 60_000;

fn endpoints() -> usize {
    std::env::var("UDO_SCALE_ENDPOINTS").ok().and_then(|v| v.parse().ok()).unwrap_or(5_000)
}

/// Tumbling one-minute windows that close on event time only (no idle
/// advance within the test): every run computes the same state.
const WINDOWS: [(&str, &str); 4] = [
    ("UDO__ANALYZE__WINDOW_SIZE", "1m"),
    ("UDO__ANALYZE__WINDOW_SLIDE", "1m"),
    ("UDO__ANALYZE__ALLOWED_LATENESS", "5s"),
    ("UDO__ANALYZE__IDLE_TIMEOUT", "1h"),
];

fn settings(extra: &[(&'static str, String)]) -> Vec<(&'static str, String)> {
    let mut v: Vec<(&'static str, String)> = WINDOWS.iter().map(|(k, v)| (*k, v.to_string())).collect();
    v.extend(extra.iter().cloned());
    v
}

fn as_env<'a>(v: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    v.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// Publishes the samples with the Python client; returns the count sent.
fn publish(prefix: &str, endpoints: usize, names: Option<&str>, slow: &str, minutes: i64) -> usize {
    apply_topics(prefix);
    let env = interop_env();
    let pythonpath = exported(&env, "PYTHONPATH");
    let topic = format!("{prefix}udo.latency.v1");
    let (endpoints, minutes, start) = (endpoints.to_string(), minutes.to_string(), START_MS.to_string());
    let mut args = vec![
        concat!(env!("CARGO_MANIFEST_DIR"), "/interop/many_subjects.py"),
        "--brokers",
        "",
        "--topic",
        &topic,
        "--components",
        "4",
        "--endpoints",
        &endpoints,
        "--minutes",
        &minutes,
        "--start-ms",
        &start,
        "--slow",
        slow,
    ];
    let brokers = brokers();
    args[2] = &brokers;
    if let Some(n) = names {
        args.extend(["--names", n]);
    }
    let out = std::process::Command::new("python3").args(&args).env("PYTHONPATH", pythonpath).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "many_subjects.py: {}{text}", String::from_utf8_lossy(&out.stderr));
    text.trim().strip_prefix("sent ").and_then(|n| n.parse().ok()).expect("sent N")
}

/// Windows that close on event time: every minute of every endpoint and
/// component (the later clock sample's window stays open).
fn expected_windows(endpoints: usize) -> usize {
    MINUTES as usize * (COMPONENTS + COMPONENTS * endpoints)
}

/// Output records on the three output topics, read `read_committed`.
fn outputs(prefix: &str) -> Vec<(String, Value)> {
    support::outputs(prefix)
}

/// Waits until `want` distinct window ids are out and the outputs stop growing.
fn settle(prefix: &str, want: usize, child: &mut Analyzer) -> Vec<(String, Value)> {
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut last = usize::MAX;
    loop {
        std::thread::sleep(Duration::from_secs(4));
        if let Some(status) = child.0.try_wait().unwrap() {
            panic!("the analyzer exited with {status} (log: {}log)", std::env::temp_dir().join(prefix).display());
        }
        let out = outputs(prefix);
        let windows: BTreeSet<&str> =
            out.iter().filter(|(t, _)| t == "udo.windows.v1").filter_map(|(_, v)| v["event_id"].as_str()).collect();
        if windows.len() >= want && out.len() == last {
            return out;
        }
        assert!(Instant::now() < deadline, "did not settle: {} of {want} windows", windows.len());
        last = out.len();
    }
}

fn counts(out: &[(String, Value)]) -> BTreeMap<String, usize> {
    let mut n = BTreeMap::new();
    for (_, v) in out {
        *n.entry(v["event_id"].as_str().unwrap().to_string()).or_default() += 1;
    }
    n
}

/// Every subject of the input got its windows.
fn check_windows(out: &[(String, Value)], endpoints: usize, what: &str) {
    let mut per_subject: BTreeMap<&str, BTreeSet<i64>> = BTreeMap::new();
    for (t, v) in out {
        if t == "udo.windows.v1" && v["window_end"].as_i64() <= Some(START_MS + MINUTES * MIN) {
            per_subject.entry(v["subject"].as_str().unwrap()).or_default().insert(v["window_end"].as_i64().unwrap());
        }
    }
    assert_eq!(per_subject.len(), COMPONENTS + COMPONENTS * endpoints, "{what}: subjects with windows");
    assert!(per_subject.values().all(|ends| ends.len() == MINUTES as usize), "{what}: one window per minute each");
}

/// A compacted topic's live records (latest per partition and key,
/// tombstones applied), read `read_committed`.
fn live_records(topic: &str) -> BTreeMap<(i32, Vec<u8>), Vec<u8>> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", format!("state-reader-{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    c.subscribe(&[topic]).unwrap();
    let mut live = BTreeMap::new();
    let mut last = Instant::now();
    while last.elapsed() < Duration::from_secs(5) {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            let key = (m.partition(), m.key().unwrap_or_default().to_vec());
            match m.payload() {
                Some(v) => live.insert(key, v.to_vec()),
                None => live.remove(&key),
            };
            last = Instant::now();
        }
    }
    live
}

/// The subjects' part of the changelog (the meta record names the
/// run's own topics in its offsets).
fn subject_records(topic: &str) -> BTreeMap<(i32, Vec<u8>), Vec<u8>> {
    live_records(topic).into_iter().filter(|((_, k), _)| k.first() == Some(&1)).collect()
}

/// PostgreSQL's stored subjects: (task, subject) -> entry.
fn stored_subjects(db: &str) -> BTreeMap<(i32, Vec<u8>), Vec<u8>> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let pool = sqlx::PgPool::connect(db).await.unwrap();
        let rows: Vec<(i32, Vec<u8>, Vec<u8>)> =
            sqlx::query_as("SELECT task, subject, entry FROM analyze_state").fetch_all(&pool).await.unwrap();
        rows.into_iter().map(|(t, s, e)| ((t, s), e)).collect()
    })
}

fn run_to_the_end(prefix: &str, db: &str, env: &[(&'static str, String)], endpoints: usize) -> Vec<(String, Value)> {
    let mut child = analyzer_with(prefix, db, &as_env(env));
    let out = settle(prefix, expected_windows(endpoints), &mut child);
    // Let the last checkpoint land before comparing stored state.
    std::thread::sleep(Duration::from_secs(3));
    drop(child);
    out
}

/// Starts, kills with SIGKILL three times mid-run, then runs to the end.
fn killed_three_times(
    prefix: &str,
    db: &str,
    env: &[(&'static str, String)],
    endpoints: usize,
) -> (Vec<usize>, Vec<(String, Value)>) {
    let mut kills = Vec::new();
    for kill_after in [1_500, 3_000, 4_500] {
        let child = assigned_analyzer_with(prefix, db, &as_env(env));
        std::thread::sleep(Duration::from_millis(kill_after));
        drop(child); // SIGKILL
        kills.push(outputs(prefix).len());
    }
    let mut child = assigned_analyzer_with(prefix, db, &as_env(env));
    let out = settle(prefix, expected_windows(endpoints), &mut child);
    std::thread::sleep(Duration::from_secs(3));
    drop(child);
    (kills, out)
}

#[test]
fn exactly_once_with_20k_subjects_killed_three_times() {
    let _stores = crate::support::lease::stores();
    let n = endpoints();
    let no_db = "postgres://nobody@127.0.0.1:1/none";
    let eos = |id: &str| {
        settings(&[("UDO__ANALYZE__PROCESSING", "exactly_once".into()), ("UDO__ANALYZE__TRANSACTIONAL_ID", id.into())])
    };
    let clean = prefix("scale-eos-clean");
    let sent = publish(&clean, n, None, "c1", MINUTES);
    let started = Instant::now();
    let want = run_to_the_end(&clean, no_db, &eos(&format!("{clean}i")), n);
    eprintln!("exactly-once: {sent} samples, {} outputs, uninterrupted in {:.1?}", want.len(), started.elapsed());
    let killed = prefix("scale-eos-kill");
    publish(&killed, n, None, "c1", MINUTES);
    let (kills, got) = killed_three_times(&killed, no_db, &eos(&format!("{killed}i")), n);
    eprintln!("exactly-once: outputs visible after each of 3 kills {kills:?}; {} in the end", got.len());
    assert!(kills[0] < got.len(), "the first kill landed mid-run: {kills:?}");
    let dups: Vec<(String, usize)> = counts(&got).into_iter().filter(|(_, c)| *c > 1).collect();
    assert!(dups.is_empty(), "{} ids seen more than once: {:?}", dups.len(), &dups[..dups.len().min(5)]);
    check_windows(&got, n, "exactly-once after 3 kills");
    let ids = |o: &[(String, Value)]| counts(o).into_keys().collect::<BTreeSet<_>>();
    assert_eq!(ids(&got), ids(&want), "the same outputs as the uninterrupted run");
    let transitions = got.iter().filter(|(t, _)| t != "udo.windows.v1").count();
    assert!(transitions >= 3, "c1 degraded and its alerts fired: {transitions}");
    // The restored-and-continued state equals the uninterrupted one.
    let (a, b) = (
        subject_records(&format!("{clean}udo.analyze.changelog.v1")),
        subject_records(&format!("{killed}udo.analyze.changelog.v1")),
    );
    assert!(!a.is_empty());
    assert_eq!(a.len(), b.len(), "live subjects in the changelog");
    assert!(a == b, "the changelogs hold the same subject state");
}

#[test]
fn at_least_once_with_20k_subjects_killed_three_times() {
    let _stores = crate::support::lease::stores();
    let n = endpoints();
    let env = settings(&[]);
    let clean = prefix("scale-alo-clean");
    let db_clean = database(&clean);
    publish(&clean, n, None, "c1", MINUTES);
    let want = run_to_the_end(&clean, &db_clean, &env, n);
    let killed = prefix("scale-alo-kill");
    let db_killed = database(&killed);
    publish(&killed, n, None, "c1", MINUTES);
    let (kills, got) = killed_three_times(&killed, &db_killed, &env, n);
    eprintln!(
        "at-least-once: outputs visible after each of 3 kills {kills:?}; {} in the end, {} uninterrupted",
        got.len(),
        want.len()
    );
    assert!(kills[0] < got.len(), "the first kill landed mid-run: {kills:?}");
    check_windows(&got, n, "at-least-once after 3 kills");
    // Duplicates only repeat an id with the same content.
    let mut by_id: BTreeMap<&str, &Value> = BTreeMap::new();
    for (_, v) in &got {
        let id = v["event_id"].as_str().unwrap();
        if let Some(first) = by_id.insert(id, v) {
            assert_eq!(first, v, "a repeated id carries the same event");
        }
    }
    let ids = |o: &[(String, Value)]| counts(o).into_keys().collect::<BTreeSet<_>>();
    assert_eq!(ids(&got), ids(&want), "the same outputs as the uninterrupted run");
    let deadline = Instant::now() + Duration::from_secs(30);
    let (a, b) = loop {
        let (a, b) = (stored_subjects(&db_clean), stored_subjects(&db_killed));
        if a == b || Instant::now() > deadline {
            break (a, b);
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    assert!(!a.is_empty());
    assert_eq!(a.len(), b.len(), "stored subjects");
    assert!(a == b, "PostgreSQL holds the same subject state");
}

/// Component names that Kafka's partitioner puts on one partition (one
/// task: a busy one moves the watermark of a quiet one).
fn same_task_names(count: usize) -> Vec<String> {
    let p = |n: &str| udo_stream::domain::partitioner::partition_of(n.as_bytes(), 6);
    let target = p("quiet");
    let mut names = vec!["quiet".to_string()];
    names.extend((0..).map(|i| format!("busy-{i}")).filter(|n| p(n) == target).take(count - 1));
    names
}

/// The metrics address the analyzer logged.
fn metrics_of(prefix: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = std::fs::read_to_string(std::env::temp_dir().join(format!("{prefix}log"))).unwrap_or_default();
        if let Some(addr) = log.lines().rev().find_map(|l| l.split("metrics on http://").nth(1)) {
            return addr.split('/').next().unwrap().to_string();
        }
        assert!(Instant::now() < deadline, "no metrics address in the log");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn metric(addr: &str, name: &str) -> f64 {
    let body = ureq::get(&format!("http://{addr}/metrics")).call().unwrap().into_body().read_to_string().unwrap();
    body.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn past_max_subjects_new_subjects_go_to_the_dlq_and_known_ones_go_on() {
    let _stores = crate::support::lease::stores();
    let p = prefix("scale-bound");
    let db = database(&p);
    // 4 components x 100 endpoints: 404 subjects (with the clock samples)
    // against a bound of 150.
    let env = settings(&[("UDO__ANALYZE__MAX_SUBJECTS", "150".into())]);
    let sent = publish(&p, 100, None, "", MINUTES);
    let _ = log_file(&p);
    let mut child = analyzer_with(&p, &db, &as_env(&env));
    let dlq = format!("{p}udo.dlq.v1");
    // Every sample of minutes 0-2 is either in a component window or a
    // dead letter: nothing lost, nothing crashed.
    let in_minutes = |t: i64| t < START_MS + MINUTES * MIN;
    let deadline = Instant::now() + Duration::from_secs(120);
    let (letters, out) = loop {
        std::thread::sleep(Duration::from_secs(3));
        assert!(child.0.try_wait().unwrap().is_none(), "the analyzer stays up");
        let letters = msupport::read_dlq(&dlq);
        let out = outputs(&p);
        let counted: i64 = out
            .iter()
            .filter(|(t, v)| t == "udo.windows.v1" && v["endpoint"].is_null())
            .filter(|(_, v)| v["window_end"].as_i64().is_some_and(|e| in_minutes(e - 1)))
            .map(|(_, v)| v["latency"]["count"].as_i64().unwrap())
            .sum();
        let dead = letters
            .iter()
            .filter(|l| {
                let v: Value = serde_json::from_slice(l.value.as_deref().unwrap()).unwrap();
                in_minutes(v["occurred_at"].as_i64().unwrap())
            })
            .count();
        if counted as usize + dead == sent - COMPONENTS {
            break (letters, out);
        }
        assert!(Instant::now() < deadline, "{counted} counted + {dead} dead letters of {} samples", sent - COMPONENTS);
    };
    let classes: BTreeSet<&str> = letters.iter().map(|l| l.headers["udo.dlq.error.class"].as_str()).collect();
    assert_eq!(classes, BTreeSet::from(["cardinality"]));
    let msg = &letters[0].headers["udo.dlq.error.message"];
    assert!(msg.contains("analyze.max_subjects (150"), "{msg}");
    let addr = metrics_of(&p);
    // Gauges refresh every 5 s.
    std::thread::sleep(Duration::from_secs(6));
    let body = ureq::get(&format!("http://{addr}/metrics")).call().unwrap().into_body().read_to_string().unwrap();
    assert!(body.contains("udo_analyze_subjects{task=") && body.contains("udo_analyze_state_bytes{task="));
    // Every window closed: endpoints and healthy components hold nothing.
    let subjects = metric(&addr, "udo_analyze_subjects");
    let rejected = metric(&addr, "udo_analyze_subjects_rejected_total");
    assert!(subjects <= 150.0, "{subjects} subjects held");
    assert_eq!(rejected as usize, letters.len(), "every rejection counted");
    // A component admitted once is held from then on (its samples keep it
    // busy): it got every minute's window. Which ones were admitted depends
    // on which partitions were read first.
    let mut per_subject: BTreeMap<&str, usize> = BTreeMap::new();
    for (t, v) in &out {
        if t == "udo.windows.v1" && v["window_end"].as_i64() <= Some(START_MS + MINUTES * MIN) {
            *per_subject.entry(v["subject"].as_str().unwrap()).or_default() += 1;
        }
    }
    let admitted: Vec<String> =
        (0..COMPONENTS).map(|c| format!("c{c}")).filter(|c| per_subject.contains_key(c.as_str())).collect();
    assert!(!admitted.is_empty(), "{per_subject:?}");
    for c in &admitted {
        assert_eq!(per_subject[c.as_str()], MINUTES as usize, "component {c} goes on");
    }
    eprintln!(
        "bound: {sent} samples, {} subjects had windows, {} dead letters (class cardinality)",
        per_subject.len(),
        letters.len()
    );
}

#[test]
fn a_quiet_subject_expires_resolving_its_alerts_and_ending_its_degradation() {
    let _stores = crate::support::lease::stores();
    let p = prefix("scale-ttl");
    let db = database(&p);
    let env = settings(&[("UDO__ANALYZE__STATE_TTL", "2m".into())]);
    let names = same_task_names(3);
    // "quiet" is slow for 3 minutes and stops; the others (same task) go
    // on for 8 minutes of event time.
    let quiet_name = names[0].as_str();
    publish_with(&p, 30, &names.join(","), quiet_name, 8, &format!("{quiet_name}=3"));
    let cmd_env = env;
    let _ = log_file(&p);
    let mut child = analyzer_with(&p, &db, &as_env(&cmd_env));
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        std::thread::sleep(Duration::from_secs(3));
        assert!(child.0.try_wait().unwrap().is_none(), "the analyzer stays up");
        let out = outputs(&p);
        let ended: Vec<&Value> = out
            .iter()
            .filter(|(t, v)| t == "udo.degradations.v1" && v["component"] == quiet_name)
            .map(|(_, v)| v)
            .collect();
        let resolved: Vec<&Value> = out
            .iter()
            .filter(|(t, v)| t == "udo.alerts.v1" && v["subject"] == quiet_name && v["status"] == "RESOLVED")
            .map(|(_, v)| v)
            .collect();
        if ended.len() >= 2 && !resolved.is_empty() {
            assert_eq!(ended[0]["kind"], "DEGRADED");
            let last = ended.last().unwrap();
            assert_eq!(last["kind"], "RECOVERED");
            let reason = last["reason"].as_str().unwrap();
            assert!(reason.contains("no data for 2m") && reason.contains("analyze.state_ttl"), "{reason}");
            assert!(resolved.iter().all(|a| a["message"].as_str().unwrap().contains("no data for 2m")));
            eprintln!("expiry: {reason}; {} alerts resolved", resolved.len());
            break;
        }
        assert!(Instant::now() < deadline, "no expiry: {ended:?} {resolved:?}");
    }
    drop(child);
}

/// `many_subjects.py` with named components, some stopping early.
fn publish_with(prefix: &str, endpoints: usize, names: &str, slow: &str, minutes: i64, stop: &str) {
    apply_topics(prefix);
    let env = interop_env();
    let pythonpath = exported(&env, "PYTHONPATH");
    let topic = format!("{prefix}udo.latency.v1");
    let out = std::process::Command::new("python3")
        .args([
            concat!(env!("CARGO_MANIFEST_DIR"), "/interop/many_subjects.py"),
            "--brokers",
            &brokers(),
            "--topic",
            &topic,
            "--endpoints",
            &endpoints.to_string(),
            "--minutes",
            &minutes.to_string(),
            "--start-ms",
            &START_MS.to_string(),
            "--names",
            names,
            "--slow",
            slow,
            "--stop",
            stop,
        ])
        .env("PYTHONPATH", pythonpath)
        .output()
        .unwrap();
    assert!(out.status.success(), "many_subjects.py: {}", String::from_utf8_lossy(&out.stderr));
}
