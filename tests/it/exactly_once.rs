//! The analyzer in exactly-once mode (`analyze.processing = exactly_once`),
//! on the real broker, read back by a `read_committed` consumer (`tail`):
//! - killed with SIGKILL five times during the incident run: every output
//!   event id appears exactly once (no duplicate at all), and the set equals
//!   an uninterrupted run's;
//! - a zombie: a second instance with the same transactional id fences the
//!   first, which stops with a message saying so; no duplicate output.
//!
//! No PostgreSQL: state lives in the changelog topic.

use crate::support as common;
use crate::support::analyze as support;

use common::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};
use support::*;

const EOS: (&str, &str) = ("UDO__ANALYZE__PROCESSING", "exactly_once");

/// No checkpoint database in this mode: a URL that cannot connect proves it.
const NO_DATABASE: &str = "postgres://nobody@127.0.0.1:1/none";

fn env(id: &str) -> [(&'static str, String); 2] {
    [(EOS.0, EOS.1.to_string()), ("UDO__ANALYZE__TRANSACTIONAL_ID", id.to_string())]
}

fn with<'a>(env: &'a [(&'static str, String); 2]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// Ids of the outputs closed by event time, per topic, with how often each
/// appears (compacted `udo.windows.v1` included: a duplicate there is one too).
fn counts(out: &[(String, Value)]) -> BTreeMap<String, usize> {
    let mut n = BTreeMap::new();
    for (_, v) in out {
        if v["window_end"].as_i64() <= Some(CLOSED_BY_DATA) {
            *n.entry(v["event_id"].as_str().unwrap().to_string()).or_default() += 1;
        }
    }
    n
}

fn transitions(out: &[(String, Value)]) -> BTreeSet<String> {
    out.iter()
        .filter(|(t, v)| t != "udo.windows.v1" && v["window_end"].as_i64() <= Some(CLOSED_BY_DATA))
        .map(|(_, v)| v["event_id"].as_str().unwrap().to_string())
        .collect()
}

fn no_duplicates(out: &[(String, Value)], what: &str) {
    let dups: Vec<(String, usize)> = counts(out).into_iter().filter(|(_, n)| *n > 1).collect();
    assert!(dups.is_empty(), "{what}: {} output ids seen more than once: {:?}", dups.len(), &dups[..dups.len().min(5)]);
}

/// The uninterrupted run every other run is compared with.
fn clean_run(tag: &str) -> Vec<(String, Value)> {
    let p = prefix(tag);
    produce(&p);
    let e = env(&format!("{p}clean"));
    let child = analyzer_with(&p, NO_DATABASE, &with(&e));
    let out = settle(&p);
    drop(child);
    no_duplicates(&out, "uninterrupted exactly-once run");
    out
}

#[test]
fn kill_9_five_times_gives_every_output_exactly_once() {
    let _stores = crate::support::lease::stores();
    let clean = clean_run("eos-clean");
    let b = prefix("eos-kill");
    produce(&b);
    // One stable identity, as a restarted instance has: its init aborts what
    // the killed one left open.
    let e = env(&format!("{b}instance"));
    let mut kills = Vec::new();
    for kill_after in [800, 1500, 2200, 3000, 3800] {
        let child = assigned_analyzer_with(&b, NO_DATABASE, &with(&e));
        std::thread::sleep(Duration::from_millis(kill_after));
        drop(child); // SIGKILL
        kills.push(outputs(&b).len());
    }
    let child = assigned_analyzer_with(&b, NO_DATABASE, &with(&e));
    let killed = settle(&b);
    drop(child);
    eprintln!(
        "exactly-once: outputs visible after each of 5 kills {kills:?}; {} in the end, {} uninterrupted",
        killed.len(),
        clean.len()
    );
    assert!(kills.iter().any(|n| *n > 0) && kills[0] < killed.len(), "the kills landed mid-run: {kills:?}");
    no_duplicates(&killed, "after 5 kills");
    let (want, got) = (transitions(&clean), transitions(&killed));
    assert!(want.len() >= 6, "{want:?}");
    assert_eq!(got, want, "the same transitions as an uninterrupted run");
    let windows = killed.iter().filter(|(t, _)| t == "udo.windows.v1").count();
    assert!(windows > 0, "window stats came out too");
}

#[test]
fn a_zombie_is_fenced_by_the_instance_with_its_transactional_id() {
    let _stores = crate::support::lease::stores();
    let clean = clean_run("eos-zombie-clean");
    let z = prefix("eos-zombie");
    produce(&z);
    let e = env(&format!("{z}instance"));
    let mut first = assigned_analyzer_with(&z, NO_DATABASE, &with(&e));
    std::thread::sleep(Duration::from_millis(1500));
    // The same identity again (a restarted host while the old process still
    // runs): its init fences the first.
    let second = analyzer_with(&z, NO_DATABASE, &with(&e));
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = first.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the fenced instance kept running");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!status.success(), "the fenced instance stops with an error");
    let log = std::fs::read_to_string(std::env::temp_dir().join(format!("{z}log"))).unwrap();
    assert!(log.contains("fenced"), "the log says the instance was fenced");
    let out = settle(&z);
    drop(second);
    no_duplicates(&out, "zombie and successor");
    assert_eq!(transitions(&out), transitions(&clean), "the same transitions as an uninterrupted run");
}
