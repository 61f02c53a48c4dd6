//! `scripts/demo` twice in a row (with this build's binary, `UDO_DEMO_BIN`):
//! each run tells the incident's story (checkout DEGRADED, then RECOVERED,
//! and its latency alert firing and resolving), and the log holds no wall of
//! dead-letter warnings (a second run used to find only late events).

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
        .output()
        .expect("run scripts/demo");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "scripts/demo failed:\n{text}");
    text
}

fn story(run: usize, text: &str) {
    let lines = |needle: &[&str]| text.lines().filter(|l| needle.iter().all(|n| l.contains(n))).count();
    assert!(
        lines(&["\"component\":\"checkout\"", "\"kind\":\"DEGRADED\""]) >= 1,
        "run {run}: checkout degraded:\n{text}"
    );
    assert!(
        lines(&["\"component\":\"checkout\"", "\"kind\":\"RECOVERED\""]) >= 1,
        "run {run}: checkout recovered:\n{text}"
    );
    assert!(lines(&["\"subject\":\"checkout", "\"status\":\"FIRING\""]) >= 1, "run {run}: an alert fired:\n{text}");
    assert!(
        lines(&["\"subject\":\"checkout", "\"status\":\"RESOLVED\""]) >= 1,
        "run {run}: the alert resolved:\n{text}"
    );
    let dlq = lines(&["sent to the DLQ"]);
    assert!(dlq <= 40, "run {run}: {dlq} dead-letter log lines:\n{text}");
}

#[test]
fn the_demo_runs_twice_and_tells_the_incident_both_times() {
    let first = demo();
    story(1, &first);
    let second = demo();
    story(2, &second);
}
