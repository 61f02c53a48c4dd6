//! Records a hostile but ordinary producer sends, against every pipeline in
//! one process on the real broker: none may end it, stall it or make it
//! count wrong.
//! - a 3 MB invalid record (gzip-compressed, so within the broker's limits):
//!   dead-lettered with a prefix of its value, its size and SHA-256;
//! - a 60-byte ContextChunk whose embedding claims 536,870,912 floats:
//!   dead-lettered as malformed, naming `embedding`, nothing allocated;
//! - a latency sample from 2099: dead-lettered as `future` by the analyzer,
//!   and the samples after it are not late;
//! - subjects whose names hold the separators ("adv x" + "y z" and
//!   "adv x y" + "z"): distinct window ids and distinct Redis keys;
//! - Avro records with an unknown enum index, a non-UUID id, invalid UTF-8,
//!   and JSON with `1e400`: each rejection names its field;
//! - look-alike names in uncertainty subjects ("p|q" + "r", "p" + "q|r")
//!   and Redis keys ("adv:a" + "b", "adv" + "a:b"): distinct;
//! - one chunk event id sent twice with different content: both stores
//!   keep the first, each materializer dead-letters the second once;
//! - a Java producer (Kafka's console producer) with each of gzip, snappy,
//!   lz4 and zstd: every record stored.
//!
//! Afterwards the valid records are all in PostgreSQL and the process is
//! still running.

use crate::support as common;
use crate::support::materialize as support;

use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};
use sha2::Digest;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

/// Keys partitioned as the Java client does (murmur2): this test is not
/// about routing (see the partitioner test below).
fn producer(compression: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", common::brokers())
        .set("partitioner", "murmur2_random")
        .set("compression.type", compression)
        .set("message.max.bytes", "10000000")
        .set("linger.ms", "0")
        .create()
        .unwrap()
}

fn send(p: &FutureProducer, topic: &str, key: &str, value: &[u8]) {
    block_on(p.send(FutureRecord::to(topic).key(key).payload(value), Duration::from_secs(30))).expect("produce");
}

fn now_ms() -> i64 {
    udo_stream::now_ms()
}

fn sample(component: &str, endpoint: &str, t: i64, ms: f64) -> Value {
    json!({
        "event_id": uuid::Uuid::new_v4().to_string(),
        "occurred_at": t,
        "source": "hostile-test",
        "component": component,
        "endpoint": endpoint,
        "latency_ms": ms,
        "outcome": "OK",
    })
}

fn count(pool: &sqlx::PgPool, sql: &str) -> i64 {
    block_on(sqlx::query_scalar::<_, i64>(sql).fetch_one(pool)).unwrap()
}

/// Waits until `f` holds (or fails after `timeout`, checking the process).
fn wait_for(what: &str, timeout: Duration, m: &mut Materializer, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        m.assert_alive();
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn hostile_records_are_dead_lettered_and_every_pipeline_goes_on() {
    let _stores = crate::support::lease::stores();
    let prefix = common::prefix("hostile");
    common::apply_topics(&prefix);
    let db = block_on(common::fresh_database("hostile"));
    let redis = block_on(common::fresh_redis_db());
    let mut m = materializer(
        "analyze,materialize-postgres,materialize-redis",
        &prefix,
        &db,
        &redis,
        &[("UDO__ANALYZE__IDLE_TIMEOUT", "2s"), ("UDO__ANALYZE__CHECKPOINT_INTERVAL", "500ms")],
    );
    let (latency, writes, dlq) =
        (format!("{prefix}udo.latency.v1"), format!("{prefix}udo.writes.v1"), format!("{prefix}udo.dlq.v1"));
    let gzip = producer("gzip");

    // 1. A 3 MB record of garbage: within the broker's limit once compressed.
    let huge: Vec<u8> = std::iter::once(0x07u8).chain((0..3_000_000u32).map(|i| (i % 7) as u8)).collect();
    send(&gzip, &writes, "proj-huge", &huge);
    // 2. The allocation bomb: a ContextChunk claiming 2^29 floats.
    let catalog = udo_stream::codec::Catalog::builtin();
    let mut bomb = udo_stream::codec::SINGLE_OBJECT_MAGIC.to_vec();
    bomb.extend(catalog.get("ContextChunk").unwrap().fingerprint);
    let id = uuid::Uuid::new_v4().to_string();
    bomb.push(72);
    bomb.extend(id.as_bytes());
    bomb.extend([0x80, 0xb0, 0x9b, 0xc3, 0xd7, 0x66, 2, b's', 2, b'p', 2, b'f', 0, 0, 0, 2]);
    bomb.extend([0x80, 0x80, 0x80, 0x80, 0x04, 0, 0, 0, 0]);
    send(&gzip, &writes, "proj-bomb", &bomb);
    // 3. A sample from 2099, then on-time samples, on one partition (one key).
    let now = now_ms();
    let future = sample("futurist", "GET /", 4_070_908_800_000, 5.0);
    send(&gzip, &latency, "futurist", future.to_string().as_bytes());
    // 4. Subjects whose names hold the separators.
    let mut valid_samples = 0;
    // Spread over six minutes ten minutes ago: the first windows close on
    // event time alone.
    for i in 0..30 {
        let t = now - 600_000 + i * 12_000;
        for (c, e) in [("futurist", "GET /"), ("adv x", "y z"), ("adv x y", "z"), ("adv:a", "b"), ("adv", "a:b")] {
            send(&gzip, &latency, c, sample(c, e, t, 10.0 + i as f64).to_string().as_bytes());
            valid_samples += 1;
        }
    }

    // 6. Avro-level faults and a JSON number beyond f64: the field is named.
    let avro_sample = |source: &str| {
        use udo_stream::domain::{Event, LatencySample, Outcome};
        let e = Event::LatencySample(LatencySample {
            event_id: uuid::Uuid::new_v4(),
            occurred_at: now - 60_000,
            source: source.into(),
            component: "faulty".into(),
            endpoint: "GET /".into(),
            latency_ms: 1.0,
            outcome: Outcome::Ok,
            status_code: None,
        });
        let limits = udo_stream::domain::Limits { embedding_dim: 8, max_record_bytes: 1 << 20 };
        let codec =
            udo_stream::codec::Codec::new(std::sync::Arc::new(catalog.clone()), limits, None, Default::default());
        codec.encode("udo.latency.v1", &["LatencySample".to_string()], &e).unwrap()
    };
    let mut bad_enum = avro_sample("s");
    let n = bad_enum.len();
    bad_enum[n - 2] = 14; // outcome: index 7 of 3 symbols (then the null status code)
    let mut bad_uuid = avro_sample("s");
    bad_uuid[11] = b'z'; // the first character of event_id
    let mut bad_utf8 = avro_sample("sss");
    let at = bad_utf8.windows(3).position(|w| w == b"sss").unwrap();
    bad_utf8[at + 1] = 0xff;
    let json_big =
        sample("faulty", "GET /", now - 60_000, 1.0).to_string().replace("\"latency_ms\":1.0", "\"latency_ms\":1e400");
    assert!(json_big.contains("1e400"));
    let faults = [
        ("fault-enum", bad_enum, "unknown_enum", "outcome"),
        ("fault-uuid", bad_uuid, "malformed", "event_id"),
        ("fault-utf8", bad_utf8, "invalid_utf8", "source"),
        ("fault-json", json_big.into_bytes(), "malformed", "latency_ms"),
    ];
    for (key, value, _, _) in &faults {
        send(&gzip, &latency, key, value);
    }
    // 7. Look-alike names: uncertainty subjects and Redis keys.
    for i in 0..30 {
        for (project, component) in [("p|q", "r"), ("p", "q|r")] {
            let rating = json!({
                "event_id": uuid::Uuid::new_v4().to_string(), "occurred_at": now - 600_000 + i * 12_000,
                "source": "hostile-test", "project_id": project, "component": component,
                "decision_id": uuid::Uuid::new_v4().to_string(), "rating": 1,
            });
            send(&gzip, &format!("{prefix}udo.feedback.v1"), component, rating.to_string().as_bytes());
        }
    }

    // 5. One chunk event id, two contents (the second one newer).
    let chunk_id = uuid::Uuid::new_v4().to_string();
    for (content, t) in [("first", now - 60_000), ("second", now - 30_000)] {
        let chunk = json!({
            "event_id": chunk_id, "occurred_at": t, "source": "hostile-test", "project_id": "proj-reuse",
            "file_path": "src/lib.rs", "chunk_index": 0, "op": "UPSERT", "content": content,
        });
        send(&gzip, &writes, "proj-reuse", chunk.to_string().as_bytes());
    }

    let pool = pg_pool(&db);
    wait_for("the valid samples in PostgreSQL", Duration::from_secs(120), &mut m, || {
        count(&pool, "SELECT count(*) FROM latency_samples WHERE source = 'hostile-test'") >= valid_samples
    });
    // Windows close by the idle advance; both subjects get theirs.
    wait_for("windows of the look-alike subjects", Duration::from_secs(120), &mut m, || {
        count(&pool, "SELECT count(DISTINCT subject) FROM latency_windows WHERE component LIKE 'adv%'") >= 8
    });

    let class_of = |l: &DeadLetter| l.headers.get("udo.dlq.error.class").cloned().unwrap_or_default();
    // Each pipeline dead-letters at its own pace (the Redis materializer may
    // trail PostgreSQL on a loaded machine): read until every expected
    // letter is there, then check them all.
    let keyed =
        |letters: &[DeadLetter], key: &str| letters.iter().filter(|l| l.key.as_deref() == Some(key.as_bytes())).count();
    let deadline = Instant::now() + Duration::from_secs(120);
    let letters = loop {
        let letters = read_dlq(&dlq);
        let complete = keyed(&letters, "proj-huge") >= 3
            && keyed(&letters, "proj-bomb") >= 3
            && keyed(&letters, "proj-reuse") >= 2
            && letters.iter().any(|l| class_of(l) == "future")
            && faults.iter().all(|(key, ..)| keyed(&letters, key) >= 2);
        if complete || Instant::now() > deadline {
            break letters;
        }
        m.assert_alive();
    };
    // The huge record: each consuming pipeline dead-letters it once, cut to fit.
    let huge_letters: Vec<&DeadLetter> = letters.iter().filter(|l| l.key.as_deref() == Some(b"proj-huge")).collect();
    assert_eq!(huge_letters.len(), 3, "analyze, materialize-postgres and -redis each dead-letter it once");
    let sha: String = sha2::Sha256::digest(&huge).iter().map(|b| format!("{b:02x}")).collect();
    for l in &huge_letters {
        assert_eq!(class_of(l), "oversized", "{:?}", l.headers);
        assert_eq!(l.headers.get("udo.dlq.value.truncated").map(String::as_str), Some("true"));
        assert_eq!(l.headers.get("udo.dlq.value.size"), Some(&huge.len().to_string()));
        assert_eq!(l.headers.get("udo.dlq.value.sha256"), Some(&sha));
        let kept = l.value.as_deref().unwrap();
        assert!(kept.len() > 500_000 && huge.starts_with(kept), "a prefix of {} bytes is kept", kept.len());
    }
    // The bomb: malformed, naming the field.
    let bombs: Vec<&DeadLetter> = letters.iter().filter(|l| l.key.as_deref() == Some(b"proj-bomb")).collect();
    assert_eq!(bombs.len(), 3, "{bombs:?}");
    for l in &bombs {
        assert_eq!(class_of(l), "malformed");
        let msg = &l.headers["udo.dlq.error.message"];
        assert!(msg.contains("field `embedding`") && msg.contains("536870912 items"), "{msg}");
        assert_eq!(l.value.as_deref(), Some(&bomb[..]), "a small record is kept whole");
    }
    // The future sample: the analyzer refuses it; nothing after it is late.
    let futures: Vec<&DeadLetter> = letters.iter().filter(|l| class_of(l) == "future").collect();
    assert_eq!(futures.len(), 1, "{:?}", letters.iter().map(class_of).collect::<Vec<_>>());
    let msg = &futures[0].headers["udo.dlq.error.message"];
    assert!(msg.contains("2099-01-01T00:00:00.000Z") && msg.contains("analyze.max_future_skew"), "{msg}");
    let late: Vec<_> =
        letters.iter().filter(|l| class_of(l) == "late").map(|l| (&l.key, &l.headers["udo.dlq.topic"])).collect();
    assert!(late.is_empty(), "no sample after the future one is late: {late:?}");
    let reused_windows =
        letters.iter().filter(|l| class_of(l) == "reused_event_id" && l.key.as_deref() != Some(b"proj-reuse"));
    assert_eq!(reused_windows.count(), 0, "look-alike subjects share no id");
    let futurist = count(&pool, "SELECT count(*) FROM latency_windows WHERE component = 'futurist'");
    assert!(futurist > 0, "the futurist component still gets windows");

    // Every Avro-level and JSON rejection names its field.
    for (key, _, class, field) in &faults {
        let got: Vec<&DeadLetter> = letters.iter().filter(|l| l.key.as_deref() == Some(key.as_bytes())).collect();
        assert_eq!(got.len(), 2, "{key}: analyze and materialize-postgres each dead-letter it once");
        for l in got {
            let msg = &l.headers["udo.dlq.error.message"];
            assert_eq!(class_of(l), *class, "{key}: {msg}");
            assert!(msg.contains(&format!("field `{field}`")), "{key}: {msg}");
        }
    }
    // Look-alike uncertainty subjects stay apart.
    wait_for("both look-alike uncertainty windows", Duration::from_secs(120), &mut m, || {
        count(&pool, "SELECT count(DISTINCT subject) FROM uncertainty_windows WHERE subject IN ('p%7Cq|r', 'p|q|r')")
            == 2
    });

    // The reused chunk id: both stores keep the first content.
    let reused: Vec<&DeadLetter> = letters.iter().filter(|l| l.key.as_deref() == Some(b"proj-reuse")).collect();
    let pipelines: Vec<&str> = reused.iter().map(|l| l.headers["udo.dlq.pipeline"].as_str()).collect();
    assert_eq!(reused.len(), 2, "{pipelines:?}");
    assert!(
        reused.iter().all(|l| class_of(l) == "reused_event_id"),
        "{:?}",
        reused.iter().map(|l| class_of(l)).collect::<Vec<_>>()
    );
    assert!(pipelines.contains(&"materialize-postgres") && pipelines.contains(&"materialize-redis"), "{pipelines:?}");
    let pg_content: String = block_on(
        sqlx::query_scalar("SELECT content FROM project_contexts WHERE project_id = 'proj-reuse'").fetch_one(&pool),
    )
    .unwrap();
    assert_eq!(pg_content, "first");

    // Redis: one key per subject.
    let snapshot = redis_snapshot(&redis);
    let adv_keys: Vec<&String> = snapshot.keys().filter(|k| k.starts_with("udo:latency:adv")).collect();
    assert!(adv_keys.len() >= 4, "{adv_keys:?}");
    for key in ["udo:latency:adv%3Aa:b", "udo:latency:adv:a:b", "udo:latency:adv%3Aa", "udo:latency:adv"] {
        assert!(snapshot.contains_key(key), "{key} in {adv_keys:?}");
    }
    let context = snapshot.iter().find(|(k, _)| k.starts_with("project:proj-reuse:context")).map(|(_, v)| v.clone());
    let context = context.unwrap_or_else(|| panic!("no context key for proj-reuse in {:?}", snapshot.keys()));
    assert!(context.contains("first") && !context.contains("second"), "Redis keeps the first too: {context}");

    // 5. Every codec of the Java client.
    let mut sent = 0;
    for codec in ["gzip", "snappy", "lz4", "zstd"] {
        let lines: String = (0..50)
            .map(|i| {
                let c = format!("java-{codec}");
                format!("{c}\t{}\n", sample(&c, "GET /", now_ms() - 60_000 + i, 3.0))
            })
            .collect();
        java_produce(&latency, codec, &lines);
        sent += 50;
    }
    wait_for("every Java-produced sample in PostgreSQL", Duration::from_secs(120), &mut m, || {
        count(&pool, "SELECT count(*) FROM latency_samples WHERE component LIKE 'java-%'") == sent
    });
    for codec in ["gzip", "snappy", "lz4", "zstd"] {
        let n = count(&pool, &format!("SELECT count(*) FROM latency_samples WHERE component = 'java-{codec}'"));
        println!("java producer, {codec}: {n} of 50 stored");
        assert_eq!(n, 50, "{codec}");
    }
    m.assert_alive();
    m.stop();
    block_on(common::drop_database(&db));
}

/// Kafka's console producer (the Java client) with `codec`, keyed lines.
fn java_produce(topic: &str, codec: &str, lines: &str) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/stack");
    let mut child = Command::new(script)
        .args(["kafka-tool", "console-producer", "--bootstrap-server", &common::brokers(), "--topic", topic])
        .args(["--compression-codec", codec, "--property", "parse.key=true", "--property", "key.separator=\t"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the console producer");
    child.stdin.take().unwrap().write_all(lines.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "console producer ({codec}): {}", String::from_utf8_lossy(&out.stderr));
}

/// A producer with librdkafka's `partitioner`.
fn partitioned(partitioner: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", common::brokers())
        .set("partitioner", partitioner)
        .set("linger.ms", "0")
        .create()
        .unwrap()
}

#[test]
fn one_component_from_three_partitioners_is_windowed_once_with_exact_counts() {
    let _stores = crate::support::lease::stores();
    let prefix = common::prefix("partitioners");
    common::apply_topics(&prefix);
    let db = block_on(common::fresh_database("partitioners"));
    let redis = block_on(common::fresh_redis_db());
    // Two minutes of allowed lateness: the routing hop of a loaded CI
    // machine stays inside it at this test's pace (~80x real time).
    let mut m = materializer(
        "analyze,materialize-postgres",
        &prefix,
        &db,
        &redis,
        &[
            ("UDO__ANALYZE__IDLE_TIMEOUT", "2s"),
            ("UDO__ANALYZE__CHECKPOINT_INTERVAL", "500ms"),
            ("UDO__ANALYZE__ALLOWED_LATENESS", "2m"),
        ],
    );
    let latency = format!("{prefix}udo.latency.v1");
    // Live traffic: the analyzer holds its partitions before the samples come,
    // paced so that the routing hop (milliseconds) stays well inside the
    // allowed lateness (two minutes of event time, ~1.5 s of wall time here).
    let deadline = Instant::now() + Duration::from_secs(60);
    while !m_ready(&m) {
        m.assert_alive();
        assert!(Instant::now() < deadline, "not ready within 60 s");
        std::thread::sleep(Duration::from_millis(300));
    }
    // librdkafka's default (CRC32), Kafka's default (murmur2), and null keys.
    let producers = [partitioned("consistent_random"), partitioned("murmur2"), partitioned("consistent_random")];
    let start = now_ms() - 900_000;
    let mut times = Vec::new();
    for i in 0..180i64 {
        let t = start + i * 2_000; // six minutes
        let v = sample("mixed", "GET /m", t, 20.0 + (i % 17) as f64).to_string();
        let p = &producers[(i % 3) as usize];
        let record = FutureRecord::<str, str>::to(&latency).payload(&v);
        let record = if i % 3 == 2 { record } else { record.key("mixed") };
        block_on(p.send(record, Duration::from_secs(30))).expect("produce");
        times.push(t);
        std::thread::sleep(Duration::from_millis(25));
    }
    std::thread::sleep(Duration::from_secs(1));
    // One later sample (Kafka's partitioner) moves the owner's watermark past
    // every window above, so they close on event time.
    let first_end = (start / 60_000 + 1) * 60_000;
    let last_end = (times.last().unwrap() / 60_000 + 5) * 60_000;
    let clock = sample("mixed", "GET /m", last_end + 180_000, 1.0).to_string();
    block_on(producers[1].send(FutureRecord::to(&latency).key("mixed").payload(&clock), Duration::from_secs(30)))
        .expect("produce");
    let pool = pg_pool(&db);
    let rows = |pool: &sqlx::PgPool| -> Vec<(i64, i64, i64)> {
        block_on(
            sqlx::query_as::<_, (i64, i64, i64)>(
                "SELECT (extract(epoch FROM window_start) * 1000)::bigint, \
                 (extract(epoch FROM window_end) * 1000)::bigint, count FROM latency_windows \
                 WHERE component = 'mixed' AND endpoint IS NULL AND window_end <= to_timestamp($1) ORDER BY window_start",
            )
            .bind(epoch_seconds(last_end))
            .fetch_all(pool),
        )
        .unwrap()
    };
    // Every window that holds a sample.
    let expected = ((last_end - first_end) / 60_000 + 1) as usize;
    wait_for("every window of the mixed component", Duration::from_secs(240), &mut m, || rows(&pool).len() >= expected);
    let got = rows(&pool);
    let letters = read_dlq(&format!("{prefix}udo.dlq.v1"));
    assert!(
        letters.is_empty(),
        "{:?}",
        letters.iter().map(|l| l.headers.get("udo.dlq.error.message")).collect::<Vec<_>>()
    );
    assert_eq!(got.len(), expected, "one row (one id) per window: {got:?}");
    for (s, e, count) in &got {
        let want = times.iter().filter(|t| (*s..*e).contains(*t)).count() as i64;
        assert_eq!(*count, want, "window {s}..{e}");
    }
    let routed = m.metric("udo_analyze_routed_records_total", &[]);
    println!("routed to the owning task: {routed} of 180 samples");
    assert!(routed > 0.0, "some samples were on another task's partition");
    m.stop();
    block_on(common::drop_database(&db));
}

/// Epoch milliseconds as seconds, what PostgreSQL's `to_timestamp` takes.
fn epoch_seconds(ms: i64) -> f64 {
    ms as f64 / 1000.0
}

/// Whether `/readyz` answers 200 (every pipeline holds partitions).
fn m_ready(m: &Materializer) -> bool {
    m.get("/readyz").is_some_and(|(code, _)| code == 200)
}

/// The segment file holding `topic`'s partition `p` on the stack's broker
/// (the topic's name is unique to this run, so any stack directory will do:
/// `UDO_STACK_DIR`, this checkout's, or root's per-checkout ones).
fn segment(topic: &str, p: i32) -> std::path::PathBuf {
    let mut roots: Vec<String> = std::env::var("UDO_STACK_DIR").ok().into_iter().collect();
    roots.push(concat!(env!("CARGO_MANIFEST_DIR"), "/.stack").to_string());
    if let Ok(dirs) = std::fs::read_dir("/var/lib/udo-stream") {
        roots.extend(dirs.flatten().map(|d| d.path().display().to_string()));
    }
    for root in roots {
        let path = std::path::Path::new(&root).join(format!("kafka/kafka/data/{topic}-{p}/00000000000000000000.log"));
        if path.exists() {
            return path;
        }
    }
    panic!("no segment of {topic}-{p} under the stack's Kafka data directory");
}

#[test]
fn a_batch_the_client_cannot_read_is_reported_with_its_partition_and_lag() {
    let _stores = crate::support::lease::stores();
    let prefix = common::prefix("unreadable");
    common::apply_topics(&prefix);
    let db = block_on(common::fresh_database("unreadable"));
    let redis = block_on(common::fresh_redis_db());
    let latency = format!("{prefix}udo.latency.v1");
    // Twenty samples in one gzip batch on partition 0, ten plain ones on 1.
    let gzip: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", common::brokers())
        .set("compression.type", "gzip")
        .set("linger.ms", "500")
        .create()
        .unwrap();
    let now = now_ms();
    let sends: Vec<_> = (0..20)
        .map(|i| {
            let v = sample("corrupt", "GET /", now - 60_000 + i, 1.0).to_string();
            gzip.send_result(FutureRecord::to(&latency).partition(0).key("corrupt").payload(&v))
                .map_err(|_| ())
                .unwrap()
        })
        .collect();
    for s in sends {
        block_on(s).unwrap().expect("produce");
    }
    let plain = producer("none");
    for i in 0..10 {
        let v = sample("fine", "GET /", now - 60_000 + i, 1.0).to_string();
        block_on(plain.send(FutureRecord::to(&latency).partition(1).key("fine").payload(&v), Duration::from_secs(30)))
            .expect("produce");
    }
    // Corrupt the compressed records of partition 0's batch on the broker's
    // disk (the header is 61 bytes; the broker serves the page cache).
    let path = segment(&latency, 0);
    let mut bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes[22] & 0x07, 1, "the first batch is gzip-compressed");
    let end = (61 + 60).min(bytes.len());
    bytes[61 + 12..end].iter_mut().for_each(|b| *b = 0xAA);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|mut f| f.write_all(&bytes[..end]))
        .expect("corrupt the segment");

    let mut m = materializer("materialize-postgres", &prefix, &db, &redis, &[]);
    let pool = pg_pool(&db);
    let deadline = Instant::now() + Duration::from_secs(90);
    let body = loop {
        m.assert_alive();
        if let Some((503, body)) = m.get("/readyz") {
            if body.contains("stuck") {
                break body;
            }
        }
        assert!(Instant::now() < deadline, "/readyz never said which partition is stuck");
        std::thread::sleep(Duration::from_millis(500));
    };
    println!("/readyz: {body}");
    assert!(body.contains(&format!("{latency}[0]")) && body.contains("not moved past offset 0"), "{body}");
    let lag = m.metric("udo_consumer_lag_records", &[&format!("topic=\"{latency}\""), "partition=\"0\""]);
    assert_eq!(lag, 20.0, "the lag counts the unreadable records from the broker's end offset");
    assert!(m.metric("udo_errors_total", &["step=\"consume\""]) > 0.0, "the consume errors are counted");
    assert_eq!(
        count(&pool, "SELECT count(*) FROM latency_samples WHERE component = 'fine'"),
        10,
        "the other partitions go on"
    );
    m.stop();
    block_on(common::drop_database(&db));
}
