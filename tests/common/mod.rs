//! Shared helpers for integration tests against the real local stack
//! (`scripts/stack up`). They fail loudly when the stack is unreachable:
//! a skipped integration test would hide a broken pipeline.
#![allow(dead_code)]

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use std::process::{Command, Output};
use std::time::Duration;

pub fn brokers() -> String {
    let b = std::env::var("KAFKA_BROKERS").expect(
        "KAFKA_BROKERS is not set: run integration tests with scripts/test (it starts the stack and exports it)",
    );
    let probe: BaseConsumer = ClientConfig::new().set("bootstrap.servers", &b).create().expect("client");
    if let Err(e) = probe.fetch_metadata(None, Duration::from_secs(10)) {
        panic!("Kafka broker at {b} is unreachable ({e}); start it with scripts/stack up");
    }
    b
}

/// A topic prefix no other test run uses, so tests never see each other's records.
pub fn prefix(test: &str) -> String {
    format!("it-{test}-{}.", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

/// Runs the real binary with the stack's environment.
pub fn udo(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_udo-stream"))
        .args(args)
        .env("KAFKA_BROKERS", brokers())
        .env_remove("SCHEMA_REGISTRY_URL")
        .output()
        .expect("run udo-stream")
}

/// Runs the binary and insists on success, returning stdout.
pub fn udo_ok(args: &[&str]) -> String {
    let out = udo(args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "udo-stream {args:?} failed ({}):\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

pub fn apply_topics(prefix: &str) {
    let out = udo_ok(&["topics", "apply", "--topic-prefix", prefix]);
    assert!(out.contains("8 created"), "{out}");
}
