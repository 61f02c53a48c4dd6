//! The CLI against the real broker: topics as code, every event kind
//! produced (Avro and JSON) and read back through a consumer group, a
//! rebalance to a second member, and `tail` on good and garbage records.

use crate::support as common;

use common::*;
use rdkafka::Message;
use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use udo_stream::codec::{Catalog, Codec, OutputFormat};
use udo_stream::domain::{Event, Limits};
use udo_stream::sources::kafka::group_config;
use udo_stream::synth::{Generator, Kind, SynthConfig, simulated_time};
use udo_stream::topics::{TopicCatalog, names};

const START: &str = "2026-01-01T00:00:00Z";
const START_MS: i64 = 1_767_225_600_000;
const DIM: usize = 16;

fn codec() -> Codec {
    Codec::new(
        Arc::new(Catalog::builtin()),
        Limits { embedding_dim: DIM, ..Limits::default() },
        None,
        OutputFormat::Avro,
    )
}

fn group_consumer(group: &str, topics: &[&str]) -> BaseConsumer {
    let c: BaseConsumer = group_config(&common::kafka(), group).create().expect("consumer");
    c.subscribe(topics).expect("subscribe");
    c
}

/// Polls `consumer` until `want` records arrived or the deadline passes.
fn drain(consumer: &BaseConsumer, want: usize, deadline: Duration) -> Vec<rdkafka::message::OwnedMessage> {
    let until = Instant::now() + deadline;
    let mut got = Vec::new();
    while got.len() < want && Instant::now() < until {
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            let m = m.expect("consume");
            consumer.store_offset_from_message(&m).expect("store offset");
            got.push(m.detach());
        }
    }
    got
}

#[test]
fn topics_apply_is_idempotent_and_reports_drift_without_touching_data() {
    let p = prefix("topics");
    apply_topics(&p);
    let again = udo_ok(&["topics", "apply", "--topic-prefix", &p]);
    assert!(again.contains("no changes (11 topics as declared)"), "{again}");

    // A topic created by hand with fewer partitions than declared, holding data.
    let q = prefix("drift");
    let latency = format!("{q}{}", names::LATENCY);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let admin = udo_stream::topics::admin::admin_client(&common::kafka()).unwrap();
    let res = rt
        .block_on(admin.create_topics(&[NewTopic::new(&latency, 2, TopicReplication::Fixed(1))], &AdminOptions::new()))
        .unwrap();
    assert!(res[0].is_ok(), "{res:?}");
    let producer: ThreadedProducer<DefaultProducerContext> =
        ClientConfig::new().set("bootstrap.servers", brokers()).create().unwrap();
    producer.send(BaseRecord::to(&latency).key("k").payload("{}")).map_err(|(e, _)| e).unwrap();
    producer.flush(Duration::from_secs(10)).unwrap();

    let out = udo_ok(&["topics", "apply", "--topic-prefix", &q]);
    assert!(out.contains(&format!("DRIFT   {latency}: has 2 partitions, 6 declared")), "{out}");
    assert!(out.contains("10 created, 1 drifted"), "{out}");
    let probe: BaseConsumer = ClientConfig::new().set("bootstrap.servers", brokers()).create().unwrap();
    let total: i64 = (0..2)
        .map(|p| {
            let (lo, hi) = probe.fetch_watermarks(&latency, p, Duration::from_secs(10)).unwrap();
            hi - lo
        })
        .sum();
    assert_eq!(total, 1, "drift report must not destroy data");
    let code = udo(&["topics", "apply", "--topic-prefix", &q, "--fail-on-drift"]).status.code();
    assert_eq!(code, Some(3));
}

fn roundtrip(format: &str) {
    const N: u64 = 3000;
    const RATE: f64 = 500.0;
    let p = prefix(&format!("roundtrip-{format}"));
    apply_topics(&p);
    let summary = udo_ok(&[
        "produce",
        "all",
        "--count",
        &N.to_string(),
        "--rate",
        &RATE.to_string(),
        "--clock",
        "simulated",
        "--start",
        START,
        "--seed",
        "11",
        "--approval-rate",
        "0.85",
        "--error-rate",
        "0.005",
        "--embedding-dim",
        &DIM.to_string(),
        "--format",
        format,
        "--topic-prefix",
        &p,
    ]);
    let summary: serde_json::Value = serde_json::from_str(summary.trim()).unwrap();
    assert_eq!(summary["delivered"], N, "{summary}");

    // What the CLI must have sent: the same generator, seed and clock.
    let mut cfg = SynthConfig::new(DIM);
    cfg.approval_rate = 0.85;
    cfg.error_rate = 0.005;
    let mut g = Generator::new(cfg, 11, START_MS);
    let expected: HashMap<uuid::Uuid, Event> =
        (0..N).map(|i| g.next(Kind::All, simulated_time(START_MS, i, RATE))).map(|e| (e.event_id(), e)).collect();
    let kinds: HashSet<&str> = expected.values().map(Event::record_name).collect();
    assert_eq!(kinds.len(), 4, "all four input kinds are exercised: {kinds:?}");

    let topics = [names::LATENCY, names::FEEDBACK, names::WRITES].map(|t| format!("{p}{t}"));
    let consumer = group_consumer(&format!("{p}group"), &topics.iter().map(String::as_str).collect::<Vec<_>>());
    let msgs = drain(&consumer, N as usize, Duration::from_secs(90));
    assert_eq!(msgs.len(), N as usize, "consumed {} of {N}", msgs.len());

    let catalog = TopicCatalog::builtin();
    let codec = codec();
    let mut got = HashMap::new();
    for m in &msgs {
        let contract = m.topic().strip_prefix(&p).unwrap();
        let event = codec.decode(catalog.records(contract).unwrap(), m.payload().unwrap()).unwrap();
        if format == "json" {
            assert_eq!(m.payload().unwrap()[0], b'{');
        } else {
            assert_eq!(&m.payload().unwrap()[..2], &[0xC3, 0x01]);
        }
        assert_eq!(m.key(), Some(event.partition_key().as_bytes()), "keyed by its partition key");
        assert!(got.insert(event.event_id(), event).is_none(), "no duplicates");
    }
    assert_eq!(got.len(), expected.len());
    for (id, e) in &expected {
        assert_eq!(got.get(id), Some(e), "content of {id}");
    }
}

#[test]
fn every_event_kind_round_trips_as_avro_through_a_consumer_group() {
    roundtrip("avro");
}

#[test]
fn every_event_kind_round_trips_as_json_through_a_consumer_group() {
    roundtrip("json");
}

#[test]
fn a_second_consumer_joining_the_group_takes_over_partitions() {
    let p = prefix("rebalance");
    apply_topics(&p);
    let topic = format!("{p}{}", names::LATENCY);
    let group = format!("{p}group");
    let a = group_consumer(&group, &[&topic]);
    let assigned = |c: &BaseConsumer| -> HashSet<i32> {
        c.assignment().unwrap().elements().iter().map(|e| e.partition()).collect()
    };
    let until = Instant::now() + Duration::from_secs(60);
    while assigned(&a).len() < 6 && Instant::now() < until {
        a.poll(Duration::from_millis(100));
    }
    assert_eq!(assigned(&a).len(), 6, "first member owns every partition");

    let b = group_consumer(&group, &[&topic]);
    let until = Instant::now() + Duration::from_secs(90);
    while (assigned(&b).is_empty() || assigned(&a).len() + assigned(&b).len() != 6) && Instant::now() < until {
        a.poll(Duration::from_millis(50));
        b.poll(Duration::from_millis(50));
    }
    let (pa, pb) = (assigned(&a), assigned(&b));
    assert!(!pb.is_empty(), "second member got no partitions (a: {pa:?})");
    assert!(pa.is_disjoint(&pb), "a {pa:?} and b {pb:?} overlap");
    assert_eq!(pa.len() + pb.len(), 6, "a {pa:?} b {pb:?}");

    // Records now split between the members, each exactly once.
    udo_ok(&["produce", "latency", "--count", "1200", "--clock", "simulated", "--rate", "1000", "--topic-prefix", &p]);
    let mut ids: Vec<Vec<i32>> = vec![Vec::new(), Vec::new()];
    let mut seen = HashSet::new();
    let until = Instant::now() + Duration::from_secs(60);
    while seen.len() < 1200 && Instant::now() < until {
        for (i, c) in [&a, &b].into_iter().enumerate() {
            if let Some(m) = c.poll(Duration::from_millis(50)) {
                let m = m.unwrap();
                assert!(seen.insert((m.partition(), m.offset())), "record delivered twice");
                ids[i].push(m.partition());
            }
        }
    }
    assert_eq!(seen.len(), 1200);
    assert!(!ids[0].is_empty() && !ids[1].is_empty(), "both members consumed");
    assert!(ids[0].iter().all(|p| pa.contains(p)) && ids[1].iter().all(|p| pb.contains(p)));
}

#[test]
fn tail_prints_decoded_records_and_errors_for_garbage() {
    let p = prefix("tail");
    apply_topics(&p);
    let topic = format!("{p}{}", names::LATENCY);
    udo_ok(&["produce", "latency", "--count", "20", "--clock", "simulated", "--topic-prefix", &p]);
    let producer: ThreadedProducer<DefaultProducerContext> =
        ClientConfig::new().set("bootstrap.servers", brokers()).create().unwrap();
    for garbage in [&b"\xff\xfe not an event"[..], b"{\"event_id\": 42", &[0xC3, 0x01, 1, 2, 3, 4, 5, 6, 7, 8, 9]] {
        producer.send(BaseRecord::to(&topic).key("junk").payload(garbage)).map_err(|(e, _)| e).unwrap();
    }
    producer.flush(Duration::from_secs(10)).unwrap();

    let out = udo_ok(&["tail", &topic, "--from-beginning", "--max", "23", "--idle-exit", "30s", "--topic-prefix", &p]);
    let lines: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 23, "{out}");
    let decoded: Vec<_> = lines.iter().filter(|l| l["record"] == "LatencySample").collect();
    let errors: Vec<_> = lines.iter().filter(|l| l.get("error").is_some()).collect();
    assert_eq!(decoded.len(), 20);
    assert!(
        decoded.iter().all(|l| l["value"]["latency_ms"].as_f64().unwrap() > 0.0 && l["key"] == l["value"]["component"])
    );
    let mut classes: Vec<&str> = errors.iter().map(|l| l["error"]["class"].as_str().unwrap()).collect();
    classes.sort();
    assert_eq!(classes, ["malformed", "unknown_framing", "unknown_schema"], "{out}");
    assert!(errors.iter().all(|l| l["raw"].is_string() && l["key"] == "junk"));
}

/// The JSON lines of `tail` with `args`, on the topic prefix `p`.
fn tail(p: &str, args: &[&str]) -> Vec<serde_json::Value> {
    let mut all = vec!["tail"];
    all.extend(args);
    all.extend(["--idle-exit", "5s", "--topic-prefix", p]);
    udo_ok(&all).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn tail_takes_short_names_a_partition_an_offset_and_a_time() {
    let p = prefix("tailfrom");
    apply_topics(&p);
    let produce = |start: &str, count: &str| {
        udo_ok(&[
            "produce",
            "latency",
            "--count",
            count,
            "--clock",
            "simulated",
            "--start",
            start,
            "--topic-prefix",
            &p,
        ])
    };
    produce(START, "50");
    std::thread::sleep(Duration::from_millis(1500));
    let between = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    std::thread::sleep(Duration::from_millis(500));
    produce("2026-01-01T01:00:00Z", "30");

    // The short name and the full one read the same topic.
    let short = tail(&p, &["udo.latency.v1", "--from-beginning"]);
    let full = tail(&p, &[&format!("{p}udo.latency.v1"), "--from-beginning"]);
    assert_eq!(short.len(), 80);
    assert_eq!(full.len(), 80);
    assert!(short.iter().all(|l| l["topic"] == format!("{p}udo.latency.v1")));

    // One partition, from an offset.
    let partition = short[0]["partition"].as_i64().unwrap();
    let held = short.iter().filter(|l| l["partition"] == partition).count();
    assert!(held > 2, "partition {partition} holds {held}");
    let part = tail(&p, &["udo.latency.v1", "--partition", &partition.to_string(), "--offset", "2"]);
    assert_eq!(part.len(), held - 2);
    assert!(part.iter().all(|l| l["partition"] == partition && l["offset"].as_i64().unwrap() >= 2));

    // From a time (the records' timestamps: when they were written), or a duration ago.
    let later = tail(&p, &["udo.latency.v1", "--from", &between]);
    assert_eq!(later.len(), 30, "records written after {between}");
    assert!(later.iter().all(|l| l["value"]["occurred_at"].as_i64().unwrap() >= START_MS + 3_600_000));
    assert_eq!(tail(&p, &["udo.latency.v1", "--from", "1h"]).len(), 80);

    let out = udo(&["tail", "udo.latency.v1", "--partition", "99", "--topic-prefix", &p]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("has no partition 99"), "{err}");
}

#[test]
fn produce_refuses_a_run_that_would_be_late_and_warns_of_a_partial_one() {
    let p = prefix("late");
    apply_topics(&p);
    let produce = |start: &str, extra: &[&str]| {
        let mut args =
            vec!["produce", "latency", "--clock", "simulated", "--rate", "1", "--start", start, "--topic-prefix", &p];
        args.extend(extra);
        let out = udo(&args);
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (ok, err) = produce("2026-01-01T01:00:00Z", &["--count", "10"]);
    assert!(ok, "{err}");

    // An hour earlier: every record behind what the topic holds.
    let (ok, err) = produce(START, &["--count", "10"]);
    assert!(!ok, "a run late from start to end is refused");
    for needle in ["every record would be late", "2026-01-01T01:00:09Z", "--topic-prefix", "--start", "--allow-late"] {
        assert!(err.contains(needle), "{needle:?} in: {err}");
    }
    let (ok, err) = produce(START, &["--count", "10", "--allow-late"]);
    assert!(ok && err.contains("would be late"), "--allow-late sends, with the warning: {err}");

    // Partly late: a warning with the times, and the records go.
    let (ok, err) = produce("2026-01-01T00:59:00Z", &["--count", "120"]);
    assert!(ok && err.contains("would be late") && err.contains("2026-01-01T00:59:00Z"), "{err}");
    assert!(!err.contains("every record"), "{err}");
}
