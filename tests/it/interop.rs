//! Our Avro single-object records against the reference SDKs, Java Avro
//! (`BinaryMessageDecoder`/`BinaryMessageEncoder`) and fastavro, both
//! installed by `scripts/interop` (no broker needed):
//! - the golden fingerprints in `schemas/fingerprints.tsv` equal what both
//!   libraries compute now;
//! - one record of every type, encoded by us, decodes in Java and in Python
//!   with our values;
//! - what Java and Python encode from what they decoded decodes here to the
//!   same events (their framing and fingerprints are ours);
//! - over Kafka, a Python service (confluent-kafka, fastavro single-object)
//!   and a Java one (Kafka's client, Avro's BinaryMessageEncoder) publish
//!   latency samples the pipelines materialize, and both decode every
//!   output topic of the analyzer.

use crate::support as common;
use crate::support::analyze as incident;
use crate::support::materialize as support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use support::*;
use udo_stream::codec::{Catalog, Codec, OutputFormat};
use udo_stream::domain::Limits;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const DIM: usize = 8;
const T0: i64 = 1_767_225_600_000;

fn codec() -> Codec {
    Codec::new(
        Arc::new(Catalog::builtin()),
        Limits { embedding_dim: DIM, max_record_bytes: 1 << 20 },
        None,
        OutputFormat::Avro,
    )
}

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("udo-interop-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs an SDK's program over `input`; its re-encoded records land in
/// `output`; returns its printout (one line per record).
fn run_sdk(program: &mut Command, input: &Path, output: &Path) -> String {
    let out = program.arg(format!("{ROOT}/schemas")).arg(input).arg(output).output().expect("run the SDK program");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{program:?}: {}{text}", String::from_utf8_lossy(&out.stderr));
    text
}

#[test]
fn the_golden_fingerprints_are_what_java_and_fastavro_compute() {
    let _stores = crate::support::lease::stores();
    common::script("interop", &["fingerprints", "--check"]);
}

#[test]
fn java_and_python_read_our_records_and_we_read_theirs() {
    let _stores = crate::support::lease::stores();
    let env = common::interop_env();
    let var = |k: &str| common::exported(&env, k);
    let codec = codec();
    let events = udo_stream::synth::one_of_each(DIM, T0);
    let ours = dir("ours");
    for (i, e) in events.iter().enumerate() {
        let allowed = vec![e.record_name().to_string()];
        let bytes = codec.encode("interop", &allowed, e).unwrap();
        std::fs::write(ours.join(format!("{}.{i}.avro", e.record_name())), bytes).unwrap();
    }
    let (from_java, from_python) = (dir("java"), dir("python"));
    let java = run_sdk(
        Command::new("java")
            .args(["-Xmx128m", "-XX:TieredStopAtLevel=1", "-cp", &var("AVRO_CLASSPATH")])
            .arg(format!("{ROOT}/interop/SingleObject.java")),
        &ours,
        &from_java,
    );
    let python = run_sdk(
        Command::new("python3").env("PYTHONPATH", var("PYTHONPATH")).arg(format!("{ROOT}/interop/single_object.py")),
        &ours,
        &from_python,
    );
    for (sdk, printout, back) in [("Java", &java, &from_java), ("fastavro", &python, &from_python)] {
        assert_eq!(printout.lines().count(), events.len(), "{sdk} read every record:\n{printout}");
        for (i, e) in events.iter().enumerate() {
            let file = format!("{}.{i}.avro", e.record_name());
            let line = printout.lines().find(|l| l.starts_with(&format!("{file}\t"))).unwrap();
            let id = e.event_id().to_string();
            assert!(line.contains(&id), "{sdk} decoded {file} with our event id {id}: {line}");
            let theirs = std::fs::read(back.join(&file)).unwrap();
            let allowed = vec![e.record_name().to_string()];
            let decoded = codec.decode(&allowed, &theirs).unwrap_or_else(|err| panic!("{sdk}'s {file}: {err}"));
            assert_eq!(&decoded, e, "{sdk} re-encoded {file}");
        }
    }
    for d in [ours, from_java, from_python] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn python_and_java_services_feed_the_pipelines_and_read_every_output_topic() {
    let _stores = crate::support::lease::stores();
    let env = common::interop_env();
    let pythonpath = common::exported(&env, "PYTHONPATH");
    let prefix = common::prefix("py");
    incident::produce(&prefix);
    // At the end of the incident run's event time: on time for the analyzer.
    let start = (incident::START_MS + 35 * incident::MIN).to_string();
    let brokers = common::brokers();
    let schemas = format!("{ROOT}/schemas");
    let latency = format!("{prefix}udo.latency.v1");
    let sent = common::python_client(
        &pythonpath,
        &[
            "produce",
            "--framing",
            "single-object",
            "--brokers",
            &brokers,
            "--topic",
            &latency,
            "--schemas",
            &schemas,
            "--count",
            "300",
            "--start-ms",
            &start,
        ],
    );
    assert!(sent.starts_with("sent 300"), "{sent}");
    // And a Java service with Kafka's client and Avro's BinaryMessageEncoder.
    let var = |k: &str| common::exported(&env, k);
    let classpath = format!("{}:{}", var("KAFKA_CLASSPATH"), var("AVRO_CLASSPATH"));
    let java = |args: &[&str]| {
        let out = Command::new("java")
            .args(["-Xmx256m", "-XX:TieredStopAtLevel=1", "-cp", &classpath])
            .arg(format!("{ROOT}/interop/KafkaClients.java"))
            .args(args)
            .output()
            .expect("run java");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "KafkaClients.java {args:?}: {}{text}", String::from_utf8_lossy(&out.stderr));
        text
    };
    let sent = java(&["produce", &brokers, &latency, &schemas, "200", &start]);
    assert!(sent.starts_with("sent 200"), "{sent}");
    let db = block_on(common::fresh_database("py"));
    let mut m = materializer(
        "analyze,materialize-postgres",
        &prefix,
        &db,
        "redis://unused",
        &[("UDO__ANALYZE__IDLE_TIMEOUT", "3s")],
    );
    let pool = pg_pool(&db);
    let group = format!("{prefix}udo-materialize-postgres");
    let inputs = topics(&prefix, &["udo.writes.v1", "udo.feedback.v1", "udo.latency.v1"]);
    wait_caught_up("postgres", &inputs, Duration::from_secs(240), || pg_offsets(&pool, &group), || m.assert_alive());
    let rows: i64 = block_on(
        sqlx::query_scalar("SELECT count(*) FROM latency_samples WHERE source = 'python-service'").fetch_one(&pool),
    )
    .unwrap();
    assert_eq!(rows, 300, "every sample the Python service sent is in PostgreSQL");
    let rows: i64 = block_on(
        sqlx::query_scalar("SELECT count(*) FROM latency_samples WHERE source = 'java-service'").fetch_one(&pool),
    )
    .unwrap();
    assert_eq!(rows, 200, "every sample the Java service sent is in PostgreSQL");
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while m.metric("udo_alerts_total", &[]) < 1.0 {
        m.assert_alive();
        assert!(std::time::Instant::now() < deadline, "no alert within 120 s");
        std::thread::sleep(Duration::from_millis(500));
    }
    std::thread::sleep(Duration::from_secs(3));
    m.stop();
    let outputs: Vec<String> = ["udo.windows.v1", "udo.alerts.v1", "udo.degradations.v1", "udo.analyze.decisions.v1"]
        .iter()
        .map(|t| format!("{prefix}{t}"))
        .collect();
    let read = common::python_client(
        &pythonpath,
        &[
            "consume",
            "--framing",
            "single-object",
            "--brokers",
            &brokers,
            "--topics",
            &outputs.join(","),
            "--schemas",
            &schemas,
        ],
    );
    let read_java = java(&["consume", &brokers, &outputs.join(","), &schemas]);
    for (who, read) in [("Python", &read), ("Java", &read_java)] {
        for topic in &outputs[..3] {
            let line = read.lines().find(|l| l.contains(&format!("\"{topic}\""))).unwrap_or_default();
            let v: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
            assert!(v["decoded"].as_i64().unwrap_or(0) > 0, "{who} decoded {topic}: {read}");
        }
    }
    block_on(common::drop_database(&db));
}
