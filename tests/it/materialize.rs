//! The two materializers against the real stack:
//! - N mixed events (with embeddings) plus analyzer-style outputs land as
//!   exactly one row per event with the right content in Postgres (pgvector
//!   distance query included) and as the expected keys in Redis; the stores
//!   promote themselves (SHADOW→PRIMARY) and Redis names the primary;
//! - a replay of the whole range (group reset to earliest and the stores'
//!   own offsets cleared) leaves every table checksum and every Redis key
//!   unchanged;
//! - 1% malformed and invalid records of every design §6 kind: every valid
//!   record is materialized and the DLQ holds exactly the injected records,
//!   raw bytes and provenance headers included.
//!
//! Each test owns a topic prefix (so consumer groups), a fresh database and
//! a Redis database number (14, 15), so they run in parallel.

use crate::support as common;
use crate::support::materialize as support;

use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use support::*;
use udo_stream::codec::{Catalog, Codec, OutputFormat};
use udo_stream::domain::*;
use udo_stream::topics::TopicCatalog;
use uuid::Uuid;

const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z, the produce start
const MIN: i64 = 60_000;

fn codec() -> Codec {
    let limits = Limits { embedding_dim: 8, max_record_bytes: usize::MAX };
    Codec::new(Arc::new(Catalog::builtin()), limits, None, OutputFormat::Avro)
}

/// Encodes `event` as the topic's Avro (single-object), like any producer.
fn avro(contract: &str, event: &Event) -> Vec<u8> {
    let allowed = TopicCatalog::builtin().records(contract).unwrap().to_vec();
    codec().encode(contract, &allowed, event).unwrap()
}

/// Partitions like `udo-stream produce` (Java-compatible murmur2), so a
/// record keyed like an earlier one lands after it in the same partition.
fn producer() -> FutureProducer {
    rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", common::brokers())
        .set("partitioner", "murmur2_random")
        .create()
        .unwrap()
}

fn send(p: &FutureProducer, topic: &str, key: &str, value: &[u8]) {
    block_on(p.send(FutureRecord::to(topic).key(key).payload(value), Duration::from_secs(30))).unwrap();
}

fn window(id: u128, component: &str, endpoint: Option<&str>, end: i64, p95: f64) -> Event {
    Event::WindowStats(WindowStats {
        event_id: Uuid::from_u128(id),
        occurred_at: end,
        source: "udo-analyze".into(),
        subject: endpoint.map_or(component.to_string(), |e| format!("{component}|{e}")),
        component: component.into(),
        endpoint: endpoint.map(String::from),
        project_id: None,
        window_start: end - 5 * MIN,
        window_end: end,
        latency: Some(LatencyStats {
            count: 100,
            error_count: 1,
            error_rate: 0.01,
            p50_ms: p95 / 3.0,
            p95_ms: p95,
            p99_ms: p95 * 1.5,
        }),
        uncertainty: None,
    })
}

fn alert(id: u128, subject: &str, status: AlertStatus, end: i64) -> Event {
    Event::Alert(Alert {
        event_id: Uuid::from_u128(id),
        occurred_at: end,
        source: "udo-analyze".into(),
        rule: "latency_p95".into(),
        subject: subject.into(),
        component: subject.into(),
        project_id: None,
        severity: Severity::Warning,
        status,
        value: 250.0,
        threshold: 200.0,
        window_start: end - 5 * MIN,
        window_end: end,
        message: "latency_p95 250 > 200".into(),
    })
}

fn degradation(id: u128, component: &str, kind: DegradationKind, end: i64) -> Event {
    Event::Degradation(Degradation {
        event_id: Uuid::from_u128(id),
        occurred_at: end,
        source: "udo-analyze".into(),
        component: component.into(),
        kind,
        reason: "test".into(),
        p95_ms: 250.0,
        error_rate: 0.0,
        consecutive_windows: 2,
        window_start: end - 5 * MIN,
        window_end: end,
    })
}

/// Analyzer-style outputs: (contract topic, event).
fn outputs() -> Vec<(&'static str, Event)> {
    let uw = Event::WindowStats(WindowStats {
        event_id: Uuid::from_u128(0xA3),
        occurred_at: T0 + 10 * MIN,
        source: "udo-analyze".into(),
        subject: "proj-atlas|search".into(),
        component: "search".into(),
        endpoint: None,
        project_id: Some("proj-atlas".into()),
        window_start: T0 + 5 * MIN,
        window_end: T0 + 10 * MIN,
        latency: None,
        uncertainty: Some(UncertaintyStats {
            ratings: 12,
            positive: 5,
            approval_rate: 5.0 / 12.0,
            wilson_lower: 0.19,
            uncertainty: 0.81,
            decisions: 4,
            predicted_mean: Some(0.3),
            calibration_gap: Some(0.51),
        }),
    });
    vec![
        // The newer window arrives first: the older one must not overwrite it in Redis.
        ("udo.windows.v1", window(0xA1, "checkout", None, T0 + 10 * MIN, 300.0)),
        ("udo.windows.v1", window(0xA0, "checkout", None, T0 + 9 * MIN, 250.0)),
        ("udo.windows.v1", window(0xA2, "checkout", Some("POST /cart/checkout"), T0 + 10 * MIN, 310.0)),
        ("udo.windows.v1", uw),
        ("udo.alerts.v1", alert(0xB1, "checkout", AlertStatus::Firing, T0 + 10 * MIN)),
        ("udo.alerts.v1", alert(0xB2, "search", AlertStatus::Firing, T0 + 10 * MIN)),
        ("udo.alerts.v1", alert(0xB3, "search", AlertStatus::Resolved, T0 + 12 * MIN)),
        ("udo.degradations.v1", degradation(0xC1, "checkout", DegradationKind::Degraded, T0 + 10 * MIN)),
        ("udo.degradations.v1", degradation(0xC2, "checkout", DegradationKind::Recovered, T0 + 20 * MIN)),
        ("udo.degradations.v1", degradation(0xC3, "auth", DegradationKind::Degraded, T0 + 11 * MIN)),
    ]
}

fn s(v: &Value) -> String {
    v.as_str().map(String::from).unwrap_or_else(|| v.to_string())
}

/// Runs both materializers until both stores hold every partition's end.
fn run_until_caught_up(prefix: &str, db: &str, redis: &str, env: &[(&str, &str)]) -> Materializer {
    let mut m = materializer("materialize-postgres,materialize-redis", prefix, db, redis, env);
    let pool = pg_pool(db);
    wait_both_caught_up(prefix, &pool, redis, &mut m, Duration::from_secs(180));
    m
}

#[test]
fn mixed_events_materialize_exactly_once_and_a_replay_changes_nothing() {
    let _stores = crate::support::lease::stores();
    let prefix = common::prefix("mat");
    common::apply_topics(&prefix);
    let db = block_on(common::fresh_database("mat"));
    let redis = block_on(common::fresh_redis_db());
    let produced = produce_mixed(&prefix, 4000, 21);
    let p = producer();
    for (topic, e) in outputs() {
        send(&p, &format!("{prefix}{topic}"), e.partition_key(), &avro(topic, &e));
    }

    // Small batches and a 20-write promotion window, so both stores earn
    // their promotion within the run.
    let env = [("UDO__MATERIALIZE__BATCH_SIZE", "10"), ("UDO__PROMOTION__WINDOW", "20")];
    let m = run_until_caught_up(&prefix, &db, &redis, &env);
    let (code, body) = m.get("/readyz").expect("/readyz answers");
    assert_eq!(code, 200, "ready while assigned and the stores answer: {body}");
    // The stores promote themselves; those events are materialized too.
    let pool = pg_pool(&db);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let stores: Vec<(String,)> =
            block_on(sqlx::query_as("SELECT DISTINCT store FROM promotions ORDER BY 1").fetch_all(&pool)).unwrap();
        if stores.len() == 2 {
            assert_eq!(stores, [("postgres".to_string(),), ("redis".to_string(),)]);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "both stores promote themselves: {stores:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
    wait_caught_up(
        "redis (promotions)",
        &topics(&prefix, &REDIS_TOPICS),
        Duration::from_secs(60),
        || redis_offsets(&redis, &format!("{prefix}udo-materialize-redis")),
        || {},
    );
    assert!(m.metric("udo_sink_success_ratio", &["materialize-postgres"]) > 0.9);
    m.stop();

    // Exactly one row per event, per kind.
    let counts = pg_counts(&pool);
    let expect = |table: &str, n: i64| {
        assert_eq!(counts[table], (n, n), "{table}: (rows, distinct event ids) = produced");
    };
    expect("latency_samples", produced["LatencySample"]);
    expect("uncertainty_feedback", produced["FeedbackRating"]);
    expect("uncertainty_logs", produced["DecisionLog"]);
    expect("project_context_events", produced["ContextChunk"]);
    expect("latency_windows", 3);
    expect("uncertainty_windows", 1);
    expect("alerts", 3);
    expect("degradations", 3);
    expect("promotions", 2);

    // Content: every input event, field by field.
    let inputs: Vec<Value> = ["udo.latency.v1", "udo.feedback.v1", "udo.writes.v1"]
        .iter()
        .flat_map(|t| tail(&format!("{prefix}{t}")))
        .collect();
    assert_eq!(inputs.len() as i64, produced.values().sum::<i64>());
    let by_id: BTreeMap<String, &Value> = inputs.iter().map(|r| (s(&r["value"]["event_id"]), &r["value"])).collect();
    let rows: Vec<(String, String, String, f64, String, i64)> = block_on(
        sqlx::query_as(
            "SELECT event_id::text, component, endpoint, latency_ms, outcome,
                    (extract(epoch FROM occurred_at) * 1000)::int8 FROM latency_samples",
        )
        .fetch_all(&pool),
    )
    .unwrap();
    for (id, component, endpoint, ms, outcome, at) in rows {
        let v = by_id[&id];
        assert_eq!(
            (component, endpoint, ms, outcome, at),
            (
                s(&v["component"]),
                s(&v["endpoint"]),
                v["latency_ms"].as_f64().unwrap(),
                s(&v["outcome"]),
                v["occurred_at"].as_i64().unwrap()
            ),
            "latency sample {id}"
        );
    }
    let rows: Vec<(String, i16, String, Option<String>)> = block_on(
        sqlx::query_as("SELECT event_id::text, rating, decision_id::text, correction FROM uncertainty_feedback")
            .fetch_all(&pool),
    )
    .unwrap();
    for (id, rating, decision, correction) in rows {
        let v = by_id[&id];
        assert_eq!(
            (rating as i64, decision, correction),
            (v["rating"].as_i64().unwrap(), s(&v["decision_id"]), v["correction"].as_str().map(String::from)),
            "rating {id}"
        );
    }
    let rows: Vec<(String, i16, String, String)> = block_on(
        sqlx::query_as("SELECT event_id::text, uncertainty_score, decision, project_id FROM uncertainty_logs")
            .fetch_all(&pool),
    )
    .unwrap();
    for (id, score, decision, project) in rows {
        let v = by_id[&id];
        assert_eq!(
            (score as i64, decision, project),
            (v["uncertainty_score"].as_i64().unwrap(), s(&v["decision"]), s(&v["project_id"])),
            "decision {id}"
        );
    }

    // Current chunks: the newest event per (project, file, chunk), gone when it is a DELETE.
    let mut newest: BTreeMap<(String, String, i64), &Value> = BTreeMap::new();
    for v in inputs.iter().map(|r| &r["value"]).filter(|v| v.get("chunk_index").is_some()) {
        let key = (s(&v["project_id"]), s(&v["file_path"]), v["chunk_index"].as_i64().unwrap());
        let order = |v: &Value| (v["occurred_at"].as_i64().unwrap(), s(&v["event_id"]));
        if newest.get(&key).is_none_or(|cur| order(cur) < order(v)) {
            newest.insert(key, v);
        }
    }
    let live: BTreeMap<_, _> = newest.into_iter().filter(|(_, v)| v["op"] == "UPSERT").collect();
    assert!(live.len() >= 10, "enough chunks to check: {}", live.len());
    let rows: Vec<(String, String, i32, String, String, String)> = block_on(
        sqlx::query_as(
            "SELECT project_id, file_path, chunk_index, event_id::text, content, embedding::text FROM project_contexts",
        )
        .fetch_all(&pool),
    )
    .unwrap();
    assert_eq!(rows.len(), live.len(), "one row per live chunk");
    for (project, file, idx, id, content, embedding) in &rows {
        let v = live[&(project.clone(), file.clone(), *idx as i64)];
        assert_eq!((id, content), (&s(&v["event_id"]), &s(&v["content"])), "chunk {project}/{file}#{idx}");
        let got: Vec<f32> = embedding.trim_matches(['[', ']']).split(',').map(|x| x.parse().unwrap()).collect();
        let want: Vec<f32> = v["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
        assert_eq!(got, want, "embedding of {project}/{file}#{idx}");
    }
    // pgvector: a chunk's nearest neighbour is itself, then its own file's chunks.
    let (project, file, idx, ..) = rows
        .iter()
        .find(|r| rows.iter().filter(|o| o.0 == r.0 && o.1 == r.1).count() >= 2)
        .expect("a file with 2 chunks");
    let near: Vec<(String, String, i32, f64)> = block_on(
        sqlx::query_as(
            "WITH q AS (SELECT embedding FROM project_contexts WHERE project_id = $1 AND file_path = $2 AND chunk_index = $3)
             SELECT project_id, file_path, chunk_index, (c.embedding <=> q.embedding)::float8
             FROM project_contexts c, q ORDER BY c.embedding <=> q.embedding LIMIT 2",
        )
        .bind(project)
        .bind(file)
        .bind(idx)
        .fetch_all(&pool),
    )
    .unwrap();
    assert_eq!((&near[0].0, &near[0].1, near[0].2), (project, file, *idx), "{near:?}");
    assert!(near[0].3 < 1e-6 && near[1].3 < 0.5, "{near:?}");
    assert_eq!((&near[1].0, &near[1].1), (project, file), "the nearest other chunk is from the same file: {near:?}");

    // Redis: the same live chunks, the newest window stats, health, active alerts, primary store.
    let snap = redis_snapshot(&redis);
    let mut redis_chunks = BTreeSet::new();
    for (key, value) in &snap {
        let Some(project) = key.strip_prefix("project:").and_then(|k| k.strip_suffix(":context")) else { continue };
        let mut con = redis_con(&redis);
        let h: BTreeMap<String, String> = block_on(redis::cmd("HGETALL").arg(key).query_async(&mut con)).unwrap();
        assert!(!value.is_empty());
        for (file, json) in h {
            for c in serde_json::from_str::<Vec<Value>>(&json).unwrap() {
                redis_chunks.insert((
                    project.to_string(),
                    file.clone(),
                    c["chunk_index"].as_i64().unwrap(),
                    s(&c["event_id"]),
                    s(&c["content"]),
                ));
            }
        }
    }
    let want_chunks: BTreeSet<_> =
        live.iter().map(|((p, f, i), v)| (p.clone(), f.clone(), *i, s(&v["event_id"]), s(&v["content"]))).collect();
    assert_eq!(redis_chunks, want_chunks, "Redis context hashes hold exactly the live chunks");
    let hget = |key: &str, field: &str| -> Option<String> {
        let mut con = redis_con(&redis);
        block_on(redis::cmd("HGET").arg(key).arg(field).query_async(&mut con)).unwrap()
    };
    assert_eq!(hget("udo:latency:checkout", "p95_ms").as_deref(), Some("300"), "the newer window wins");
    assert_eq!(hget("udo:latency:checkout:POST /cart/checkout", "p95_ms").as_deref(), Some("310"));
    assert_eq!(hget("udo:uncertainty:proj-atlas:search", "uncertainty").as_deref(), Some("0.81"));
    assert_eq!(hget("udo:health:checkout", "status").as_deref(), Some("HEALTHY"));
    assert_eq!(hget("udo:health:auth", "status").as_deref(), Some("DEGRADED"));
    let mut con = redis_con(&redis);
    let active: Vec<String> = block_on(redis::cmd("HKEYS").arg("udo:alerts:active").query_async(&mut con)).unwrap();
    assert_eq!(active, ["latency_p95|checkout|WARNING"], "the resolved alert is gone");
    let (primary,): (String,) = block_on(
        sqlx::query_as(
            "SELECT store FROM promotions WHERE to_role = 'PRIMARY' ORDER BY occurred_at DESC, event_id DESC LIMIT 1",
        )
        .fetch_one(&pool),
    )
    .unwrap();
    assert_eq!(snap.get("udo:store:primary"), Some(&primary), "Redis names the primary store");
    // One id claim per event Redis holds (the events PostgreSQL stores in these tables).
    let claims = snap.keys().filter(|k| k.starts_with("udo:id:")).count() as i64;
    let held: i64 =
        ["latency_windows", "uncertainty_windows", "alerts", "degradations", "promotions", "project_context_events"]
            .iter()
            .map(|t| {
                block_on(sqlx::query_scalar::<_, i64>(&format!("SELECT count(*) FROM {t}")).fetch_one(&pool)).unwrap()
            })
            .sum();
    assert_eq!(claims, held, "udo:id claims");
    assert_eq!(
        snap.keys()
            .filter(|k| !k.starts_with("project:") && !k.starts_with("udo:id:"))
            .cloned()
            .collect::<BTreeSet<_>>(),
        BTreeSet::from([
            format!("udo:offsets:{prefix}udo-materialize-redis"),
            "udo:alerts:active".into(),
            "udo:health:auth".into(),
            "udo:health:checkout".into(),
            "udo:latency:checkout".into(),
            "udo:latency:checkout:POST /cart/checkout".into(),
            "udo:store:primary".into(),
            "udo:store:roles".into(),
            "udo:uncertainty:proj-atlas:search".into(),
        ]),
        "no other keys"
    );

    // Replay the whole range: group reset to earliest and the stores' own
    // offsets cleared, so every record is written again.
    let before = (pg_checksums(&pool), redis_snapshot(&redis));
    for (group, names) in [("postgres", &PG_TOPICS[..]), ("redis", &REDIS_TOPICS[..])] {
        reset_group(&format!("{prefix}udo-materialize-{group}"), &topics(&prefix, names), 0);
    }
    block_on(sqlx::query("DELETE FROM consumer_offsets").execute(&pool)).unwrap();
    let mut con = redis_con(&redis);
    let _: () =
        block_on(redis::cmd("DEL").arg(format!("udo:offsets:{prefix}udo-materialize-redis")).query_async(&mut con))
            .unwrap();
    let m = run_until_caught_up(&prefix, &db, &redis, &env);
    std::thread::sleep(Duration::from_secs(3)); // nothing else arrives (no new promotion)
    let rewritten = m.metric("udo_sink_records_total", &["materialize-postgres"]);
    m.stop();
    let after = (pg_checksums(&pool), redis_snapshot(&redis));
    assert!(rewritten >= inputs.len() as f64, "the replay wrote every record again ({rewritten})");
    assert_eq!(before.0, after.0, "every table's checksum is unchanged by the replay");
    assert_eq!(before.1, after.1, "every Redis key is unchanged by the replay");
    block_on(common::drop_database(&db));
}

/// One injected bad record: topic, key, raw value, which pipelines must
/// dead-letter it, and the expected error class.
struct Bad {
    topic: &'static str,
    key: String,
    value: Vec<u8>,
    redis_too: bool,
    class: &'static str,
}

fn latency_event(ms: f64) -> Event {
    Event::LatencySample(LatencySample {
        event_id: Uuid::new_v4(),
        occurred_at: T0 + MIN,
        source: "bad-producer".into(),
        component: "checkout".into(),
        endpoint: "GET /order/status".into(),
        latency_ms: ms,
        outcome: Outcome::Ok,
        status_code: Some(200),
    })
}

fn chunk_event(embedding: Vec<f32>) -> Event {
    Event::ContextChunk(ContextChunk {
        event_id: Uuid::new_v4(),
        occurred_at: T0 + MIN,
        source: "bad-producer".into(),
        project_id: "proj-atlas".into(),
        file_path: "src/bad.rs".into(),
        chunk_index: 0,
        op: ChunkOp::Upsert,
        content: "fn bad() {}".into(),
        embedding: Some(embedding),
    })
}

fn decision_event(score: i32) -> Event {
    Event::DecisionLog(DecisionLog {
        event_id: Uuid::new_v4(),
        occurred_at: T0 + MIN,
        source: "bad-producer".into(),
        project_id: "proj-atlas".into(),
        component: "search".into(),
        decision: "ship".into(),
        uncertainty_score: score,
        rationale: None,
    })
}

fn json_of(e: &Event) -> Value {
    serde_json::to_value(e).unwrap()
}

/// Every design §6 case, 33 records (1.1% of 3000).
fn bad_records(originals: &[Value]) -> Vec<Bad> {
    let mut bad = Vec::new();
    let mut add = |topic, key: &str, value: Vec<u8>, redis_too, class| {
        bad.push(Bad { topic, key: key.into(), value, redis_too, class })
    };
    let (lat, fb, wr) = ("udo.latency.v1", "udo.feedback.v1", "udo.writes.v1");
    for _ in 0..2 {
        let mut v = json_of(&latency_event(12.0));
        v["outcome"] = json!("MAYBE");
        add(lat, "checkout", serde_json::to_vec(&v).unwrap(), false, "unknown_enum");
        add(lat, "checkout", avro(lat, &latency_event(f64::NAN)), false, "invalid");
        add(lat, "checkout", avro(lat, &latency_event(-3.5)), false, "invalid");
        add(lat, "checkout", b"\xde\xad\xbe\xef not an event".to_vec(), false, "unknown_framing");
    }
    add(lat, "checkout", avro(lat, &latency_event(f64::INFINITY)), false, "invalid");
    add(lat, "checkout", avro(lat, &latency_event(f64::NEG_INFINITY)), false, "invalid");
    for rating in [0, 2, -5] {
        let e = Event::FeedbackRating(FeedbackRating {
            event_id: Uuid::new_v4(),
            occurred_at: T0 + MIN,
            source: "bad-producer".into(),
            project_id: "proj-atlas".into(),
            component: "search".into(),
            decision_id: Uuid::new_v4(),
            rating,
            correction: None,
        });
        add(fb, "search", avro(fb, &e), false, "invalid");
    }
    for _ in 0..2 {
        add(wr, "proj-atlas", avro(wr, &decision_event(101)), true, "invalid");
        add(wr, "proj-atlas", avro(wr, &chunk_event(vec![0.5; 5])), true, "invalid");
        add(
            wr,
            "proj-atlas",
            avro(wr, &chunk_event(vec![0.1, 0.2, f32::NAN, 0.4, 0.5, 0.6, 0.7, 0.8])),
            true,
            "invalid",
        );
        let mut utf8 = serde_json::to_vec(&json_of(&decision_event(10))).unwrap();
        let at = utf8.windows(4).position(|w| w == b"ship").unwrap();
        utf8[at] = 0xff;
        add(wr, "proj-atlas", utf8, true, "invalid_utf8");
        let mut big = json_of(&decision_event(10));
        big["rationale"] = json!("x".repeat(70_000));
        add(wr, "proj-atlas", serde_json::to_vec(&big).unwrap(), true, "oversized");
        let mut op = json_of(&chunk_event(vec![0.5; 8]));
        op["op"] = json!("MOVE");
        add(wr, "proj-atlas", serde_json::to_vec(&op).unwrap(), true, "unknown_enum");
        let good = avro(wr, &chunk_event(vec![0.5; 8]));
        add(wr, "proj-atlas", good[..good.len() - 12].to_vec(), true, "malformed");
    }
    add(wr, "proj-atlas", avro(wr, &decision_event(-1)), true, "invalid");
    let mut unknown = vec![0xC3, 0x01, 1, 2, 3, 4, 5, 6, 7, 8];
    unknown.extend_from_slice(b"payload");
    add(wr, "proj-atlas", unknown, true, "unknown_schema");
    add(wr, "proj-atlas", b"\x07garbage".to_vec(), true, "unknown_framing");
    // A reused event id with another payload: only Postgres, which keeps
    // every event's payload hash, can tell.
    for o in originals {
        let mut v = o.clone();
        v["uncertainty_score"] = json!((v["uncertainty_score"].as_i64().unwrap() + 1) % 100);
        add(wr, &s(&v["project_id"]), serde_json::to_vec(&v).unwrap(), false, "reused_event_id");
    }
    bad
}

#[test]
fn malformed_and_invalid_records_go_to_the_dlq_exactly_once_each() {
    let _stores = crate::support::lease::stores();
    let prefix = common::prefix("matdlq");
    common::apply_topics(&prefix);
    let db = block_on(common::fresh_database("matdlq"));
    let redis = block_on(common::fresh_redis_db());
    let produced = produce_mixed(&prefix, 3000, 33);
    let originals: Vec<Value> = tail(&format!("{prefix}udo.writes.v1"))
        .into_iter()
        .map(|r| r["value"].clone())
        .filter(|v| v.get("uncertainty_score").is_some())
        .take(3)
        .collect();
    let bad = bad_records(&originals);
    let p = producer();
    for b in &bad {
        send(&p, &format!("{prefix}{}", b.topic), &b.key, &b.value);
    }
    // Valid records keep flowing after the bad ones.
    let more = produce_mixed(&prefix, 300, 34);

    let env = [("UDO_MAX_RECORD_BYTES", "65536"), ("UDO__MATERIALIZE__BATCH_SIZE", "500")];
    let m = run_until_caught_up(&prefix, &db, &redis, &env);
    let metric_pg = m.metric("udo_dlq_records_total", &["materialize-postgres"]);
    let metric_redis = m.metric("udo_dlq_records_total", &["materialize-redis"]);
    m.stop();

    let pool = pg_pool(&db);
    let counts = pg_counts(&pool);
    let n = |k: &str| produced[k] + more[k];
    assert_eq!(counts["latency_samples"], (n("LatencySample"), n("LatencySample")));
    assert_eq!(counts["uncertainty_feedback"], (n("FeedbackRating"), n("FeedbackRating")));
    assert_eq!(counts["uncertainty_logs"], (n("DecisionLog"), n("DecisionLog")));
    assert_eq!(counts["project_context_events"], (n("ContextChunk"), n("ContextChunk")));
    for o in &originals {
        let (score,): (i16,) = block_on(
            sqlx::query_as("SELECT uncertainty_score FROM uncertainty_logs WHERE event_id = $1::uuid")
                .bind(s(&o["event_id"]))
                .fetch_one(&pool),
        )
        .unwrap();
        assert_eq!(score as i64, o["uncertainty_score"].as_i64().unwrap(), "the stored event is kept");
    }

    let dlq = read_dlq(&format!("{prefix}udo.dlq.v1"));
    let of = |pipeline: &str| -> Vec<&DeadLetter> {
        dlq.iter().filter(|d| d.headers.get("udo.dlq.pipeline").map(String::as_str) == Some(pipeline)).collect()
    };
    let (pg_dead, redis_dead) = (of("materialize-postgres"), of("materialize-redis"));
    let want_redis = bad.iter().filter(|b| b.redis_too).count();
    eprintln!(
        "injected {} bad records; DLQ: {} from postgres, {} from redis",
        bad.len(),
        pg_dead.len(),
        redis_dead.len()
    );
    assert_eq!(pg_dead.len(), bad.len(), "the Postgres materializer dead-letters every injected record once");
    assert_eq!(redis_dead.len(), want_redis, "the Redis materializer dead-letters those on its topics once");
    assert_eq!((metric_pg as usize, metric_redis as usize), (bad.len(), want_redis), "udo_dlq_records_total");
    for (dead, redis_only) in [(&pg_dead, false), (&redis_dead, true)] {
        let mut want: Vec<(String, Vec<u8>, &str)> = bad
            .iter()
            .filter(|b| !redis_only || b.redis_too)
            .map(|b| (format!("{prefix}{}", b.topic), b.value.clone(), b.class))
            .collect();
        let mut got: Vec<(String, Vec<u8>, &str)> = dead
            .iter()
            .map(|d| {
                for h in ["udo.dlq.partition", "udo.dlq.offset", "udo.dlq.timestamp", "udo.dlq.error.message"] {
                    assert!(d.headers.get(h).is_some_and(|v| !v.is_empty()), "header {h} on {:?}", d.headers);
                }
                let class = bad
                    .iter()
                    .map(|b| b.class)
                    .find(|c| Some(*c) == d.headers.get("udo.dlq.error.class").map(String::as_str));
                (d.headers["udo.dlq.topic"].clone(), d.value.clone().unwrap_or_default(), class.unwrap_or("?"))
            })
            .collect();
        want.sort();
        got.sort();
        assert_eq!(got, want, "raw bytes, source topic and error class of every dead letter (redis: {redis_only})");
    }
    block_on(common::drop_database(&db));
}
