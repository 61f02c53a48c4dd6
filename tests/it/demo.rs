//! `scripts/demo` twice in a row on one database (with this build's binary,
//! `UDO_DEMO_BIN`): each run tells the whole story (checkout DEGRADED then
//! RECOVERED with its latency alerts firing and resolving; search's
//! uncertainty alerts firing and resolving in every project; both stores
//! PRIMARY; a closing status with nothing open, nothing behind and no dead
//! letter), and the second run's outputs add up in the shared database.

use std::process::Command;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn demo() -> String {
    let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/demo"))
        .env("UDO_DEMO_BIN", env!("CARGO_BIN_EXE_udo-stream"))
        .env("UDO_EMBEDDING_DIM", "8")
        .env("UDO_DEMO_METRICS_PORT", free_port().to_string())
        .env_remove("UDO_TOPIC_PREFIX")
        .env_remove("UDO_NAMESPACE")
        .output()
        .expect("run scripts/demo");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "scripts/demo failed:\n{text}");
    text
}

/// `count` of `table` in the demo's PostgreSQL table of row counts.
fn rows(text: &str, table: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            let (name, n) = l.split_once('|')?;
            (name.trim() == table).then(|| n.trim().parse().ok())?
        })
        .unwrap_or_else(|| panic!("no row count for {table}:\n{text}"))
}

fn story(run: usize, text: &str) {
    let lines = |needle: &[&str]| text.lines().filter(|l| needle.iter().all(|n| l.contains(n))).count();
    // The latency incident.
    assert!(
        lines(&["\"component\":\"checkout\"", "\"kind\":\"DEGRADED\""]) >= 1,
        "run {run}: checkout degraded:\n{text}"
    );
    assert!(
        lines(&["\"component\":\"checkout\"", "\"kind\":\"RECOVERED\""]) >= 1,
        "run {run}: checkout recovered:\n{text}"
    );
    for status in ["FIRING", "RESOLVED"] {
        assert!(
            lines(&["\"subject\":\"checkout\"", "\"rule\":\"latency_p95\"", &format!("\"status\":\"{status}\"")]) >= 2,
            "run {run}: checkout's latency alerts (warning and critical) {status}:\n{text}"
        );
        // The uncertainty incident: search's decisions disputed, in every project.
        assert!(
            lines(&[
                "|search\"",
                "\"rule\":\"uncertainty\"",
                "\"severity\":\"CRITICAL\"",
                &format!("\"status\":\"{status}\"")
            ]) >= 3,
            "run {run}: search's uncertainty alerts {status} in all three projects:\n{text}"
        );
    }
    // The closing status: uncertainty windows closed, no alert left open,
    // nothing behind, no dead letter.
    assert!(lines(&["UNCERTAINTY (1 - Wilson"]) == 1, "run {run}: uncertainty windows in the status:\n{text}");
    assert!(lines(&["OPEN ALERTS (0)"]) == 1, "run {run}: every alert resolved:\n{text}");
    for pipeline in ["analyze", "materialize-postgres", "materialize-redis"] {
        let row = text
            .lines()
            .find(|l| l.split_whitespace().next() == Some(pipeline) && l.trim_end().ends_with("none"))
            .unwrap_or_else(|| panic!("run {run}: {pipeline} with no dead letter in the status:\n{text}"));
        assert_eq!(row.split_whitespace().nth(1), Some("0"), "run {run}: {pipeline} caught up: {row}");
    }
    assert_eq!(lines(&["sent to the DLQ"]), 0, "run {run}: dead letters:\n{text}");
    // The stores earned PRIMARY (the first run by promotion; a later run's
    // materializers resume the role the shared store recorded).
    for sink in ["postgres", "redis"] {
        assert!(
            lines(&["udo_store_primary{", &format!("sink=\"{sink}\"}} 1")]) == 1,
            "run {run}: {sink} is PRIMARY:\n{text}"
        );
    }
    // Quiet logs: no database notice, no librdkafka chatter.
    assert_eq!(lines(&["already exists, skipping"]), 0, "run {run}: database notices at INFO:\n{text}");
    assert_eq!(lines(&["Coordinator load in progress"]), 0, "run {run}: librdkafka chatter:\n{text}");
}

#[test]
fn the_demo_tells_the_whole_story_twice_on_one_database() {
    let _stores = crate::support::lease::stores();
    let first = demo();
    story(1, &first);
    let second = demo();
    story(2, &second);
    // Each run is its own deployment (topic prefix, id namespace): the
    // second run's windows add up in the shared database instead of
    // colliding with the first run's ids.
    // At least: 5 components' windows for 55 minutes; checkout's 4 latency
    // and search's 12 uncertainty alert transitions; DEGRADED and RECOVERED.
    for (table, added) in [("latency_windows", 5 * 55), ("alerts", 16), ("degradations", 2)] {
        let (a, b) = (rows(&first, table), rows(&second, table));
        assert!(b >= a + added, "{table}: {a} rows after the first run, {b} after the second (expected {added} more)");
    }
}
