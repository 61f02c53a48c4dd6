//! Third-party clients against the stack's Apache Kafka, both ways:
//! - Debian's kcat (librdkafka 2.0.2) produces a hand-written JSON latency
//!   sample that udo-stream decodes, consumes what udo-stream produced
//!   (Avro), and looks up offsets by time;
//! - Kafka's own CLI tools (`scripts/stack kafka-tool`): the topic as
//!   `topics apply` made it, the console consumer reading udo-stream's
//!   records, and the consumer-group tool describing a pipeline's group.

use crate::support as common;

use common::*;
use std::process::Command;

fn kcat(args: &[&str], stdin: Option<&str>) -> String {
    use std::io::Write;
    let mut child = Command::new("kcat")
        .args(["-b", &brokers()])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kcat is installed by scripts/stack deps");
    if let Some(text) = stdin {
        child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "kcat {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn kafka_tool(args: &[&str]) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/stack");
    let out = Command::new(script).arg("kafka-tool").args(args).output().unwrap();
    assert!(out.status.success(), "kafka-tool {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn kcat_and_kafka_cli_tools_interoperate_with_udo_stream() {
    let prefix = prefix("3rdparty");
    apply_topics(&prefix);
    let topic = format!("{prefix}udo.latency.v1");

    // kcat → udo-stream: a hand-written JSON record, keyed by component.
    let json = r#"{"event_id":"6f1c1f7e-2b1a-4c53-9f55-0c9f8f1e2a01","occurred_at":1767225600000,"source":"kcat","component":"checkout","endpoint":"POST /pay","latency_ms":12.5,"outcome":"OK"}"#;
    kcat(&["-P", "-t", &topic, "-K", "\t"], Some(&format!("checkout\t{json}\n")));
    let tailed = udo_ok(&["tail", &topic, "--from-beginning", "--max", "1", "--idle-exit", "10s"]);
    let v: serde_json::Value = serde_json::from_str(tailed.lines().next().expect("tail printed the record")).unwrap();
    assert!(v.get("error").is_none(), "kcat's JSON decodes: {tailed}");
    assert_eq!(v["value"]["source"], "kcat");
    assert_eq!(v["value"]["latency_ms"], 12.5);

    // udo-stream → kcat: 20 Avro records, all consumed (with the JSON one).
    udo_ok(&["produce", "latency", "--count", "20", "--topic-prefix", &prefix]);
    let consumed = kcat(&["-C", "-t", &topic, "-e", "-q", "-f", "%p:%o %k\n"], None);
    assert_eq!(consumed.lines().count(), 21, "{consumed}");
    // Offsets by time (ListOffsets with a timestamp) on a Kafka 4 broker.
    let offsets = kcat(&["-Q", "-t", &format!("{topic}:0:0")], None);
    assert!(offsets.contains("offset 0"), "{offsets}");

    // Kafka's own tools.
    let described = kafka_tool(&["topics", "--bootstrap-server", &brokers(), "--describe", "--topic", &topic]);
    assert!(described.contains("PartitionCount: 6") || described.contains("PartitionCount:6"), "{described}");
    let console = kafka_tool(&[
        "console-consumer",
        "--bootstrap-server",
        &brokers(),
        "--topic",
        &topic,
        "--from-beginning",
        "--max-messages",
        "21",
        "--timeout-ms",
        "20000",
        "--property",
        "print.key=true",
        // Avro values may hold newline bytes: print keys and offsets only.
        "--property",
        "print.value=false",
        "--property",
        "print.offset=true",
    ]);
    assert_eq!(console.lines().count(), 21, "{console}");
    assert!(console.lines().all(|l| l.starts_with("Offset:")), "{console}");

    // A consumer group as udo-stream's pipelines leave it, seen by the group tool.
    let group = format!("{prefix}kcat-group");
    kcat(&["-G", &group, "-X", "auto.offset.reset=earliest", "-e", "-q", &topic], None);
    let groups = kafka_tool(&["consumer-groups", "--bootstrap-server", &brokers(), "--describe", "--group", &group]);
    assert!(groups.contains(&topic), "{groups}");
}
