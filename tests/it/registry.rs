//! A live Confluent-compatible registry: Apicurio Registry 3.x (its
//! `/apis/ccompat/v7` API, `scripts/stack registry up`), BACKWARD
//! compatibility:
//! - `schemas register` registers every `<topic>-value` subject;
//! - records produced with Confluent framing (the registry's ids) land in
//!   PostgreSQL, and the materializer's own outputs carry that framing;
//! - a registry outage (the registry hung): with a warm cache nothing is
//!   lost; a member with a cold cache waits and retries, and nothing is
//!   skipped or dead-lettered;
//! - a Python service's confluent-kafka AvroSerializer records land, and its
//!   AvroDeserializer (what Kafka UI uses) decodes our outputs;
//! - `schemas check` fails on a breaking edit, naming the subject and the
//!   field.

use crate::support as common;
use crate::support::materialize as support;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use std::process::Command;
use std::time::{Duration, Instant};
use support::*;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The registry process: a hung registry (SIGSTOP) is the outage here, as
/// a restart would lose its in-memory subjects.
fn registry_signal(signal: &str) {
    let out = Command::new(format!("{ROOT}/scripts/stack")).args(["registry", "status"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    let pid = text.split("(pid ").nth(1).and_then(|r| r.split(')').next()).expect("registry pid");
    assert!(Command::new("kill").args([signal, pid]).status().unwrap().success());
}

fn registry() -> String {
    common::exported(&common::stack(&["registry", "up"]), "SCHEMA_REGISTRY_URL")
}

/// `udo-stream` with the registry configured; (success, output).
fn udo_reg(url: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_udo-stream"))
        .args(args)
        .env("KAFKA_BROKERS", common::brokers())
        .env("SCHEMA_REGISTRY_URL", url)
        .env("UDO_EMBEDDING_DIM", DIM)
        .current_dir(ROOT)
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
}

fn produce(url: &str, prefix: &str, count: u64, seed: u64) -> i64 {
    let (n, s) = (count.to_string(), seed.to_string());
    // 5 records/s of event time: 2000 records span 6 minutes, so the
    // analyzer closes windows.
    let args = ["produce", "all", "--clock", "simulated", "--start", "2026-01-01T00:00:00Z", "--rate", "5"];
    let mut args = args.to_vec();
    args.extend(["--count", &n, "--seed", &s, "--topic-prefix", prefix]);
    // A second batch covers the first one's event time again: this test is
    // about the registry's framing, not about windows.
    args.push("--allow-late");
    let (ok, out) = udo_reg(url, &args);
    assert!(ok, "produce with the registry: {out}");
    count as i64
}

/// The first byte of every record of `topic` (0: Confluent framing).
fn magic_bytes(topic: &str) -> Vec<u8> {
    let c: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", common::brokers())
        .set("group.id", format!("magic-{}", uuid::Uuid::new_v4()))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    c.subscribe(&[topic]).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(300)) {
            out.push(m.payload().and_then(|p| p.first().copied()).unwrap_or(0xff));
        }
    }
    out
}

#[test]
fn records_framed_by_a_live_registry_land_through_an_outage_and_a_breaking_edit_fails_the_check() {
    let _registry = crate::support::lease::registry();
    let _stores = crate::support::lease::stores();
    let url = registry();
    let prefix = common::prefix("reg");
    common::apply_topics(&prefix);
    ureq::put(&format!("{url}/config")).send_json(serde_json::json!({"compatibility": "BACKWARD"})).unwrap();
    let (ok, out) = udo_reg(&url, &["schemas", "register", "--topic-prefix", &prefix]);
    assert!(ok && out.contains(&format!("registered {prefix}udo.latency.v1-value id")), "{out}");

    let db = block_on(common::fresh_database("reg"));
    let redis = block_on(common::fresh_redis_db());
    let mut produced = produce(&url, &prefix, 2000, 41);
    let pool = pg_pool(&db);
    let pg_group = format!("{prefix}udo-materialize-postgres");
    let env = [("SCHEMA_REGISTRY_URL", url.as_str())];
    let mut m = materializer("materialize-postgres", &prefix, &db, &redis, &env);
    let timeout = Duration::from_secs(180);
    let inputs = topics(&prefix, &["udo.writes.v1", "udo.feedback.v1", "udo.latency.v1"]);
    wait_caught_up("postgres", &inputs, timeout, || pg_offsets(&pool, &pg_group), || m.assert_alive());

    // Warm cache: the registry goes away, the same schemas keep decoding.
    produced += produce(&url, &prefix, 1000, 42);
    registry_signal("-STOP");
    wait_caught_up("postgres", &inputs, timeout, || pg_offsets(&pool, &pg_group), || m.assert_alive());
    m.stop();

    // Cold cache: a fresh materializer (Redis) cannot resolve the ids yet;
    // it waits and retries, and skips nothing.
    let redis_group = format!("{prefix}udo-materialize-redis");
    let mut r = materializer("materialize-redis", &prefix, &db, &redis, &env);
    // A request to the hung registry times out after 10 s: then the error.
    let deadline = Instant::now() + Duration::from_secs(60);
    while r.metric("udo_errors_total", &["materialize-redis", "step=\"decode\""]) < 1.0 {
        r.assert_alive();
        assert!(Instant::now() < deadline, "the cold cache shows no registry error within 60 s");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(redis_offsets(&redis, &redis_group).values().all(|o| *o == 0), "nothing stored while the ids are unknown");
    registry_signal("-CONT");
    let redis_topics = topics(&prefix, &["udo.writes.v1"]);
    wait_caught_up("redis", &redis_topics, timeout, || redis_offsets(&redis, &redis_group), || r.assert_alive());
    assert_eq!(r.metric("udo_dlq_records_total", &[]), 0.0, "nothing dead-lettered for the outage");
    r.stop();
    let rows: i64 = pg_counts(&pool).values().map(|(n, _)| n).sum();
    assert!(rows >= produced, "postgres holds every record: {rows} rows for {produced} records");

    // A Python service with confluent-kafka's AvroSerializer publishes
    // samples that land like ours.
    let py = common::exported(&common::interop_env(), "PYTHONPATH");
    let (brokers, schemas) = (common::brokers(), format!("{ROOT}/schemas"));
    let latency = format!("{prefix}udo.latency.v1");
    let sent = common::python_client(
        &py,
        &[
            "produce",
            "--framing",
            "confluent",
            "--registry",
            &url,
            "--brokers",
            &brokers,
            "--topic",
            &latency,
            "--schemas",
            &schemas,
            "--count",
            "200",
        ],
    );
    assert!(sent.starts_with("sent 200"), "{sent}");
    let mut m = materializer("materialize-postgres", &prefix, &db, &redis, &env);
    wait_caught_up("postgres", &inputs, timeout, || pg_offsets(&pool, &pg_group), || m.assert_alive());
    m.stop();
    let rows: i64 = block_on(
        sqlx::query_scalar("SELECT count(*) FROM latency_samples WHERE source = 'python-service'").fetch_one(&pool),
    )
    .unwrap();
    assert_eq!(rows, 200, "every record of confluent-kafka's AvroSerializer landed");

    // Outputs carry the registry's framing: the analyzer's windows.
    let mut a = materializer("analyze", &prefix, &db, &redis, &env);
    let deadline = Instant::now() + Duration::from_secs(120);
    while a.metric("udo_records_produced_total", &["udo.windows.v1"]) < 1.0 {
        a.assert_alive();
        assert!(Instant::now() < deadline, "the analyzer closed no window within 120 s");
        std::thread::sleep(Duration::from_millis(500));
    }
    a.stop();
    let magic = magic_bytes(&format!("{prefix}udo.windows.v1"));
    assert!(!magic.is_empty() && magic.iter().all(|b| *b == 0), "Confluent framing on outputs: {magic:?}");
    let (ok, out) = udo_reg(
        &url,
        &["tail", &format!("{prefix}udo.windows.v1"), "--from-beginning", "--max", "3", "--idle-exit", "5s"],
    );
    assert!(ok && out.contains("\"window_end\""), "tail decodes the registry-framed outputs: {out}");
    // ...and a Confluent deserializer (what Kafka UI uses) decodes them.
    let windows = format!("{prefix}udo.windows.v1");
    let read = common::python_client(
        &py,
        &[
            "consume",
            "--framing",
            "confluent",
            "--registry",
            &url,
            "--brokers",
            &brokers,
            "--topics",
            &windows,
            "--schemas",
            &schemas,
        ],
    );
    let v: serde_json::Value = serde_json::from_str(read.lines().next().unwrap_or_default()).unwrap_or_default();
    assert!(v["decoded"].as_i64().unwrap_or(0) > 0, "confluent-kafka's AvroDeserializer decoded the windows: {read}");

    // A breaking edit: a new field without a default, under BACKWARD.
    let dir = std::env::temp_dir().join(format!("udo-reg-schemas-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for e in std::fs::read_dir(format!("{ROOT}/schemas")).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, dir.join(p.file_name().unwrap())).unwrap();
    }
    let path = dir.join("LatencySample.avsc");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    v["fields"].as_array_mut().unwrap().push(serde_json::json!({"name": "region", "type": "string"}));
    std::fs::write(&path, v.to_string()).unwrap();
    let (ok, out) = udo_reg(&url, &["schemas", "check", "--dir", dir.to_str().unwrap(), "--topic-prefix", &prefix]);
    assert!(!ok, "schemas check passed a breaking edit:\n{out}");
    let line = out.lines().find(|l| l.contains(&format!("{prefix}udo.latency.v1-value"))).unwrap_or_default();
    assert!(line.contains("incompatible") && line.contains("region"), "names the subject and the field:\n{out}");
    let _ = std::fs::remove_dir_all(&dir);
    block_on(common::drop_database(&db));
}
