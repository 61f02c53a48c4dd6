//! The analyzer against the real stack: an injected incident yields exactly
//! the expected degradation and alert sequence, and an analyzer killed with
//! SIGKILL mid-run and restarted emits the same set of output ids as an
//! uninterrupted run (duplicates only with identical ids).

use crate::support as common;
use crate::support::analyze as support;

use common::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use support::*;

#[test]
fn incident_sequence_and_kill_restart_give_the_same_outputs() {
    let _stores = crate::support::lease::stores();
    let (a, b) = (prefix("analyze-a"), prefix("analyze-b"));
    produce(&a);
    produce(&b);

    // Uninterrupted run.
    let child = analyzer(&a, &database("analyze_a"));
    let clean = settle(&a);
    drop(child);

    // The incident, in order per subject; latency rules only (uncertainty
    // alerts depend on how few ratings a window holds, checked below).
    let mut per_subject: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut ordered: Vec<&(String, Value)> = clean.iter().collect();
    ordered.sort_by_key(|(_, v)| v["window_end"].as_i64()); // stable: engine order within a window
    for (t, v) in ordered {
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

    // The uncertainty join: decisions re-keyed by component meet ratings in
    // every (project, component) window.
    let uncertainty: Vec<&Value> =
        clean.iter().filter(|(t, v)| t == "udo.windows.v1" && v["uncertainty"].is_object()).map(|(_, v)| v).collect();
    let subjects: BTreeSet<&str> = uncertainty.iter().filter_map(|v| v["subject"].as_str()).collect();
    assert_eq!(subjects.len(), 15, "3 projects × 5 components: {subjects:?}");
    for v in uncertainty {
        let u = &v["uncertainty"];
        assert!(u["decisions"].as_i64() > Some(0) && u["calibration_gap"].is_f64(), "{v}");
    }

    // Same input, analyzer killed twice mid-run and restarted.
    let db = database("analyze_b");
    for kill_after in [Duration::from_secs(1), Duration::from_secs(3)] {
        let child = assigned_analyzer(&b, &db);
        std::thread::sleep(kill_after); // mid-run: the clean run takes ~8 s
        drop(child);
    }
    let child = assigned_analyzer(&b, &db);
    let restarted = settle(&b);
    drop(child);

    // Transitions (alerts, degradations) of windows closed by event time:
    // the same ids whatever the kills. `udo.windows.v1` is compacted, so its
    // set depends on when the broker compacts; its ids are checked for
    // identical content below.
    let ids = |v: &[(String, Value)]| -> BTreeSet<String> {
        v.iter()
            .filter(|(t, v)| t != "udo.windows.v1" && v["window_end"].as_i64() <= Some(CLOSED_BY_DATA))
            .map(|(_, v)| v["event_id"].as_str().unwrap().to_string())
            .collect()
    };
    let (clean_ids, restarted_ids) = (ids(&clean), ids(&restarted));
    let transitions = clean.iter().filter(|(t, _)| t != "udo.windows.v1").count();
    assert!(clean_ids.len() >= 6 && clean_ids.len() <= transitions, "{clean_ids:?}");
    let differing: Vec<String> = clean
        .iter()
        .chain(&restarted)
        .filter(|(_, v)| clean_ids.symmetric_difference(&restarted_ids).any(|id| v["event_id"] == id.as_str()))
        .filter_map(|(t, v)| label(t, v))
        .collect();
    assert!(
        differing.is_empty(),
        "same ids after kill -9 and restart ({} vs {}); differing: {differing:#?}",
        clean_ids.len(),
        restarted_ids.len()
    );
    // Duplicates carry identical content.
    let mut seen: BTreeMap<String, &Value> = BTreeMap::new();
    for (_, v) in clean.iter().chain(&restarted) {
        let id = v["event_id"].as_str().unwrap().to_string();
        if let Some(prev) = seen.insert(id, v) {
            assert_eq!(prev, v, "a re-emitted id carries the same event");
        }
    }
    eprintln!(
        "analyze: {} transitions compared; {} output records uninterrupted, {} across 2 kills",
        clean_ids.len(),
        clean.len(),
        restarted.len()
    );
}
