//! `notify-alertmanager` against a real Alertmanager (Debian's, `scripts/stack
//! alertmanager up`), read back through its v2 API:
//! - an incident's latency alert is active while the incident lasts, with
//!   the rule's labels and annotations, and is sent again while it fires;
//! - after the incident it is resolved;
//! - a replay of the alerts topic (the group's offsets back to 0, the
//!   notifier restarted) does not fire it again;
//! - an Alertmanager outage holds the alerts (partitions paused, retried)
//!   and delivers them when it is back.

use crate::support as common;
use crate::support::materialize as support;

use serde_json::Value;
use std::time::{Duration, Instant};
use support::*;

fn alertmanager() -> String {
    common::exported(&common::stack(&["alertmanager", "up"]), "ALERTMANAGER_URL")
}

/// Alertmanager's alerts of `component` (active, silenced, inhibited and
/// unprocessed; resolved ones are not listed).
fn alerts(url: &str, component: &str) -> Vec<Value> {
    let all: Vec<Value> = ureq::get(&format!("{url}/api/v2/alerts")).call().unwrap().body_mut().read_json().unwrap();
    all.into_iter().filter(|a| a["labels"]["component"] == component).collect()
}

fn wait_for(what: &str, secs: u64, m: &mut Materializer, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done() {
        m.assert_alive();
        assert!(Instant::now() < deadline, "timed out after {secs} s waiting for {what}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// `produce all` from `start` for `minutes` of event time (60 events/s).
fn produce(prefix: &str, start: &str, minutes: u32, incident: Option<&str>, seed: &str) {
    let duration = format!("{minutes}m");
    let mut args = vec!["produce", "all", "--clock", "simulated", "--rate", "60", "--start", start];
    args.extend(["--duration", &duration, "--seed", seed, "--topic-prefix", prefix]);
    if let Some(i) = incident {
        args.extend(["--incident", i]);
    }
    udo(&args, &[]);
}

fn notifier(prefix: &str, db: &str, url: &str) -> Materializer {
    let env = [
        ("ALERTMANAGER_URL", url),
        ("UDO__NOTIFY__RESEND_INTERVAL", "2s"),
        // Windows close by event time only: the two phases below must not
        // be pushed apart by a wall-clock idle advance.
        ("UDO__ANALYZE__IDLE_TIMEOUT", "10m"),
    ];
    materializer("analyze,notify-alertmanager", prefix, db, "redis://unused", &env)
}

#[test]
fn an_incident_alert_is_active_in_alertmanager_then_resolved_and_never_fires_again() {
    let _stores = crate::support::lease::stores();
    let url = alertmanager();
    let prefix = common::prefix("am");
    common::apply_topics(&prefix);
    let db = block_on(common::fresh_database("am"));
    // Phase 1: checkout is slow from minute 10 on, past the phase's end.
    produce(&prefix, "2026-01-01T00:00:00Z", 22, Some("slow:checkout@10m+30m"), "21");
    let mut m = notifier(&prefix, &db, &url);
    let mut firing = Vec::new();
    wait_for("checkout's alert active in Alertmanager", 120, &mut m, || {
        firing = alerts(&url, "checkout");
        !firing.is_empty()
    });
    let a = &firing[0];
    assert_eq!(a["status"]["state"], "active", "{a}");
    assert!(a["labels"]["alertname"].as_str().unwrap().starts_with("latency_"), "{a}");
    assert_eq!(a["labels"]["subject"], "checkout", "{a}");
    assert!(a["labels"]["severity"].is_string() && a["annotations"]["message"].is_string(), "{a}");
    assert!(a["annotations"]["value"].as_str().unwrap().parse::<f64>().unwrap() > 0.0, "{a}");
    assert!(a["startsAt"].as_str().unwrap().starts_with("2026-01-01T00:"), "startsAt from the window: {a}");
    // Delivery: from the alert record (the analyzer emitting it as its
    // window closed) to Alertmanager accepting it. Recorded once the POST
    // has returned, so it may follow Alertmanager showing the alert.
    let deadline = Instant::now() + Duration::from_secs(10);
    let n = loop {
        let n = m.metric("udo_alertmanager_delivery_seconds_count", &[]);
        if n >= 1.0 {
            break n;
        }
        assert!(Instant::now() < deadline, "the delivery lag is measured within 10 s of the alert showing");
        std::thread::sleep(Duration::from_millis(200));
    };
    let sum = m.metric("udo_alertmanager_delivery_seconds_sum", &[]);
    eprintln!("delivery from window close to Alertmanager: {n} alerts, mean {:.0} ms", sum / n * 1000.0);
    // Sent again while it fires (every 2 s here): Alertmanager's updatedAt moves.
    let updated = a["updatedAt"].as_str().unwrap().to_string();
    wait_for("the firing alert sent again", 30, &mut m, || {
        alerts(&url, "checkout").iter().any(|x| x["updatedAt"].as_str().is_some_and(|u| u != updated))
    });

    // An Alertmanager outage: the notifier holds what comes and retries.
    common::stack(&["alertmanager", "down"]);
    // Phase 2: checkout is healthy again; its alerts resolve.
    produce(&prefix, "2026-01-01T00:22:00Z", 18, None, "22");
    std::thread::sleep(Duration::from_secs(5));
    let retries = m.metric("udo_sink_retries_total", &["notify-alertmanager", "alertmanager"]);
    assert!(retries >= 1.0, "the outage shows as retries ({retries})");
    alertmanager();
    wait_for("checkout's alerts resolved", 120, &mut m, || alerts(&url, "checkout").is_empty());

    // A replay of the whole alerts topic, one record per batch (so a FIRING
    // and its RESOLVED never meet in one batch), does not fire it again.
    m.stop();
    let topic = format!("{prefix}udo.alerts.v1");
    let records: i64 = watermarks(std::slice::from_ref(&topic)).values().sum();
    reset_group(&format!("{prefix}udo-notify-alertmanager"), &[topic], 0);
    let env = [("ALERTMANAGER_URL", url.as_str()), ("UDO__MATERIALIZE__BATCH_SIZE", "1")];
    let m = materializer("notify-alertmanager", &prefix, &db, "redis://unused", &env);
    let consumed = || m.metric("udo_records_consumed_total", &["notify-alertmanager"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while consumed() < records as f64 {
        assert!(alerts(&url, "checkout").is_empty(), "a replay fired a resolved alert again");
        assert!(Instant::now() < deadline, "the replay read {} of {records} alert records", consumed());
        std::thread::sleep(Duration::from_millis(200));
    }
    let posted = |status: &str| m.metric("udo_alertmanager_alerts_posted_total", &[&format!("status=\"{status}\"")]);
    assert_eq!(posted("firing"), 0.0, "the replay posted no FIRING alert");
    assert!(posted("resolved") >= 1.0, "it posted the resolutions again (idempotent)");
    assert!(alerts(&url, "checkout").is_empty());
    m.stop();
    block_on(common::drop_database(&db));
}
