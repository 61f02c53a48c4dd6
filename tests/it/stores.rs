//! The store layer against the real PostgreSQL (pgvector) and Redis of the
//! local stack: every event kind lands where design §5 says, replays change
//! nothing (checksums of every table and key), offsets round-trip, a reused
//! event id with another payload is rejected instead of overwriting, and a
//! wrong embedding dimension stops startup with a clear error. Each test owns
//! a fresh database (and a Redis database number), so tests run in parallel
//! and never see each other's rows.

// The stores lease is a std lock held for a whole test, across its awaits:
// each test has its own single-threaded runtime, where nothing else waits on it.
#![allow(clippy::await_holding_lock)]

use crate::support as common;

use sqlx::Row as _;
use std::collections::BTreeMap;
use udo_stream::domain::promotion::{Attempt, PromotionConfig, StorePromotion};
use udo_stream::domain::*;
use udo_stream::error::{Error, ErrorDomain};
use udo_stream::sinks::EventBatch;
use udo_stream::sinks::dlq::Reject;
use udo_stream::sinks::postgres::PgSink;
use udo_stream::sinks::redis::{RedisSink, keys};
use uuid::Uuid;

const DIM: usize = 384;
const T0: i64 = 1_750_000_000_000;
const GROUP: &str = "udo-materialize-postgres";
const RGROUP: &str = "udo-materialize-redis";

fn id(n: u128) -> Uuid {
    Uuid::from_u128(0x5eed_0000_0000_4000_8000_0000_0000_0000 + n)
}

/// A deterministic unit vector per seed; distinct seeds are far apart.
fn embedding(seed: usize) -> Vec<f32> {
    let mut v: Vec<f32> = (0..DIM).map(|i| ((i * 7 + seed * 13) % 17) as f32 / 170.0).collect();
    v[seed % DIM] += 3.0;
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter().map(|x| x / norm).collect()
}

fn latency(n: u128, component: &str, ms: f64) -> Event {
    Event::LatencySample(LatencySample {
        event_id: id(n),
        occurred_at: T0 + n as i64,
        source: "checkout-svc".into(),
        component: component.into(),
        endpoint: "/pay\tnow".into(),
        latency_ms: ms,
        outcome: if n % 10 == 0 { Outcome::Error } else { Outcome::Ok },
        status_code: if n % 2 == 0 { Some(200) } else { None },
    })
}

fn decision(n: u128, project: &str, score: i32) -> Event {
    Event::DecisionLog(DecisionLog {
        event_id: id(n),
        occurred_at: T0 + n as i64,
        source: "planner".into(),
        project_id: project.into(),
        component: "search".into(),
        decision: format!("decision {n}"),
        uncertainty_score: score,
        rationale: (n % 2 == 0).then(|| "because".into()),
    })
}

fn feedback(n: u128, project: &str, rating: i32) -> Event {
    Event::FeedbackRating(FeedbackRating {
        event_id: id(n),
        occurred_at: T0 + n as i64,
        source: "ui".into(),
        project_id: project.into(),
        component: "search".into(),
        decision_id: id(1000 + n),
        rating,
        correction: (rating < 0).then(|| "use the other index".into()),
    })
}

fn chunk(n: u128, project: &str, file: &str, idx: i32, op: ChunkOp, at: i64) -> Event {
    Event::ContextChunk(ContextChunk {
        event_id: id(n),
        occurred_at: at,
        source: "indexer".into(),
        project_id: project.into(),
        file_path: file.into(),
        chunk_index: idx,
        op,
        content: if op == ChunkOp::Upsert {
            format!("chunk {n} of {file} — ünïcode\\ \"quoted\"")
        } else {
            String::new()
        },
        embedding: (op == ChunkOp::Upsert).then(|| embedding(n as usize)),
    })
}

fn latency_window(n: u128, component: &str, endpoint: Option<&str>, end: i64, p95: f64) -> Event {
    Event::WindowStats(WindowStats {
        event_id: id(n),
        occurred_at: end,
        source: "analyze".into(),
        subject: match endpoint {
            Some(e) => format!("{component}|{e}"),
            None => component.into(),
        },
        component: component.into(),
        endpoint: endpoint.map(String::from),
        project_id: None,
        window_start: end - 300_000,
        window_end: end,
        latency: Some(LatencyStats {
            count: 120,
            error_count: 3,
            error_rate: 0.025,
            p50_ms: p95 / 3.0,
            p95_ms: p95,
            p99_ms: p95 * 1.4,
        }),
        uncertainty: None,
    })
}

fn uncertainty_window(n: u128, project: &str, end: i64, u: f64) -> Event {
    Event::WindowStats(WindowStats {
        event_id: id(n),
        occurred_at: end,
        source: "analyze".into(),
        subject: format!("{project}|search"),
        component: "search".into(),
        endpoint: None,
        project_id: Some(project.into()),
        window_start: end - 300_000,
        window_end: end,
        latency: None,
        uncertainty: Some(UncertaintyStats {
            ratings: 12,
            positive: 5,
            approval_rate: 5.0 / 12.0,
            wilson_lower: 1.0 - u,
            uncertainty: u,
            decisions: 4,
            predicted_mean: Some(0.4),
            calibration_gap: None,
        }),
    })
}

fn alert(n: u128, component: &str, status: AlertStatus, end: i64) -> Event {
    Event::Alert(Alert {
        event_id: id(n),
        occurred_at: end,
        source: "analyze".into(),
        rule: "latency_p95".into(),
        subject: component.into(),
        component: component.into(),
        project_id: None,
        severity: Severity::Warning,
        status,
        value: 250.0,
        threshold: 200.0,
        window_start: end - 300_000,
        window_end: end,
        message: "latency_p95 250.000 > 200 (WARNING)".into(),
    })
}

fn degradation(n: u128, component: &str, kind: DegradationKind, end: i64) -> Event {
    Event::Degradation(Degradation {
        event_id: id(n),
        occurred_at: end,
        source: "analyze".into(),
        component: component.into(),
        kind,
        reason: format!("{kind:?} for 2 windows"),
        p95_ms: 250.0,
        error_rate: 0.01,
        consecutive_windows: 2,
        window_start: end - 300_000,
        window_end: end,
    })
}

fn promotion(n: u128, store: &str, to: StoreRole, at: i64) -> Event {
    let from = if to == StoreRole::Primary { StoreRole::Shadow } else { StoreRole::Primary };
    Event::Promotion(Promotion {
        event_id: id(n),
        occurred_at: at,
        source: "udo-materialize".into(),
        store: store.into(),
        from_role: from,
        to_role: to,
        success_ratio: 0.97,
        attempts: 100,
        lag: 0,
        reason: "test".into(),
    })
}

/// Every event kind: 200 latency samples, 3 decisions, 3 ratings, 8 chunks
/// in two projects (with 384-dim embeddings), windows, alerts, degradations
/// and a promotion.
fn every_kind() -> Vec<Event> {
    let mut ev: Vec<Event> =
        (0..200).map(|n| latency(n, if n % 2 == 0 { "checkout" } else { "auth" }, n as f64 * 1.5)).collect();
    ev.extend([decision(300, "atlas", 0), decision(301, "atlas", 55), decision(302, "borealis", 100)]);
    ev.extend([feedback(310, "atlas", 1), feedback(311, "atlas", -1), feedback(312, "borealis", 1)]);
    for (k, (project, file, idx)) in [
        ("atlas", "src/main.rs", 0),
        ("atlas", "src/main.rs", 1),
        ("atlas", "src/main.rs", 2),
        ("atlas", "src/lib.rs", 0),
        ("atlas", "README.md", 0),
        ("borealis", "app.py", 0),
        ("borealis", "app.py", 1),
        ("borealis", "tests/test_app.py", 0),
    ]
    .into_iter()
    .enumerate()
    {
        ev.push(chunk(400 + k as u128, project, file, idx, ChunkOp::Upsert, T0 + k as i64));
    }
    ev.extend([
        latency_window(500, "checkout", None, T0 + 300_000, 250.0),
        latency_window(501, "checkout", Some("/pay"), T0 + 300_000, 180.0),
        uncertainty_window(502, "atlas", T0 + 300_000, 0.62),
        alert(510, "checkout", AlertStatus::Firing, T0 + 300_000),
        degradation(520, "checkout", DegradationKind::Degraded, T0 + 360_000),
        degradation(521, "auth", DegradationKind::Degraded, T0 + 300_000),
        degradation(522, "auth", DegradationKind::Recovered, T0 + 600_000),
        promotion(530, "postgres", StoreRole::Primary, T0 + 700_000),
    ]);
    ev
}

fn records(events: &[Event], first_offset: i64) -> Vec<(i64, &Event)> {
    events.iter().enumerate().map(|(i, e)| (first_offset + i as i64, e)).collect()
}

fn pg_batch<'a>(topic: &'a str, events: &'a [Event], first_offset: i64) -> EventBatch<'a> {
    EventBatch {
        topic,
        partition: 0,
        next_offset: first_offset + events.len() as i64,
        records: records(events, first_offset),
    }
}

/// (table, rows, md5 of every row's text in order) for every table.
async fn pg_snapshot(pool: &sqlx::PgPool) -> Vec<(&'static str, i64, String)> {
    let mut out = Vec::new();
    for t in crate::support::materialize::all_tables().chain(["consumer_offsets"]) {
        let row = sqlx::query(&format!(
            "SELECT count(*), coalesce(md5(string_agg(t::text, E'\\n' ORDER BY t::text)), '') FROM {t} t"
        ))
        .fetch_one(pool)
        .await
        .unwrap();
        out.push((t, row.get::<i64, _>(0), row.get::<String, _>(1)));
    }
    out
}

fn count(snap: &[(&str, i64, String)], table: &str) -> i64 {
    snap.iter().find(|s| s.0 == table).unwrap().1
}

async fn write(sink: &PgSink, batch: &EventBatch<'_>) -> udo_stream::sinks::postgres::PgOutcome {
    let mut txn = sink.begin().await.unwrap();
    let out = txn.write(GROUP, batch).await.unwrap();
    txn.commit().await.unwrap();
    out
}

async fn pg(test: &str) -> (String, PgSink) {
    let url = common::fresh_database(test).await;
    let sink = PgSink::connect(&url, DIM as u32).await.unwrap();
    (url, sink)
}

fn parse_vector(text: &str) -> Vec<f32> {
    text.trim_matches(['[', ']']).split(',').map(|x| x.parse().unwrap()).collect()
}

#[tokio::test]
async fn postgres_materializes_every_event_kind() {
    let _stores = crate::support::lease::stores();
    let (url, sink) = pg("every_kind").await;
    let events = every_kind();
    let out = write(&sink, &pg_batch("udo.writes.v1", &events, 1000)).await;
    assert!(out.rejects.is_empty(), "{:?}", out.rejects);
    assert_eq!(out.events, events.len());
    let pool = sink.pool();
    let snap = pg_snapshot(pool).await;
    let want = [
        ("projects", 2),
        ("project_context_events", 8),
        ("project_contexts", 8),
        ("uncertainty_logs", 3),
        ("uncertainty_feedback", 3),
        ("latency_samples", 200),
        ("latency_windows", 2),
        ("uncertainty_windows", 1),
        ("alerts", 1),
        ("degradations", 3),
        ("promotions", 1),
        ("health_state", 2),
        ("consumer_offsets", 1),
    ];
    for (t, n) in want {
        assert_eq!(count(&snap, t), n, "{t}");
    }
    assert_eq!(out.inserted, 200 + 3 + 3 + 8 + 2 + 1 + 1 + 3 + 1);

    // Values survive exactly: millisecond timestamps, escaped COPY text, floats, NULLs.
    let r = sqlx::query(
        "SELECT (extract(epoch FROM occurred_at) * 1000)::int8, endpoint, latency_ms, outcome, status_code
         FROM latency_samples WHERE event_id = $1",
    )
    .bind(id(31))
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(r.get::<i64, _>(0), T0 + 31);
    assert_eq!(r.get::<String, _>(1), "/pay\tnow");
    assert_eq!(r.get::<f64, _>(2), 46.5);
    assert_eq!(r.get::<String, _>(3), "OK");
    assert_eq!(r.get::<Option<i32>, _>(4), None);
    let r = sqlx::query("SELECT uncertainty_score, rationale FROM uncertainty_logs WHERE event_id = $1")
        .bind(id(302))
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!((r.get::<i16, _>(0), r.get::<Option<String>, _>(1)), (100, Some("because".into())));
    let r = sqlx::query("SELECT rating, correction FROM uncertainty_feedback WHERE event_id = $1")
        .bind(id(311))
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!((r.get::<i16, _>(0), r.get::<Option<String>, _>(1)), (-1, Some("use the other index".into())));

    // Chunks: content and embedding round-trip; the column is vector(384).
    let r = sqlx::query(
        "SELECT content, embedding::text, format_type(atttypid, atttypmod)
         FROM project_contexts, pg_attribute
         WHERE attrelid = 'project_contexts'::regclass AND attname = 'embedding'
           AND project_id = 'atlas' AND file_path = 'src/main.rs' AND chunk_index = 1",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(r.get::<String, _>(0), "chunk 401 of src/main.rs — ünïcode\\ \"quoted\"");
    assert_eq!(parse_vector(&r.get::<String, _>(1)), embedding(401));
    assert_eq!(r.get::<String, _>(2), "vector(384)");

    // pgvector similarity search: the nearest chunk to chunk 405's vector is chunk 405.
    let query = format!("[{}]", embedding(405).iter().map(f32::to_string).collect::<Vec<_>>().join(","));
    let near: Vec<(String, String, i32, f64)> = sqlx::query_as(
        "SELECT project_id, file_path, chunk_index, embedding <=> $1::vector AS d
         FROM project_contexts ORDER BY embedding <=> $1::vector LIMIT 5",
    )
    .bind(&query)
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(near.len(), 5);
    assert_eq!((near[0].0.as_str(), near[0].1.as_str(), near[0].2), ("borealis", "app.py", 0));
    assert!(near[0].3 < 1e-6, "{near:?}");
    assert!(near.windows(2).all(|w| w[0].3 <= w[1].3));
    // ...and the HNSW index serves it.
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SET LOCAL enable_seqscan = off").execute(&mut *tx).await.unwrap();
    let plan: Vec<String> =
        sqlx::query_scalar(&format!("EXPLAIN SELECT 1 FROM project_contexts ORDER BY embedding <=> '{query}' LIMIT 5"))
            .fetch_all(&mut *tx)
            .await
            .unwrap();
    assert!(plan.join("\n").contains("project_contexts_embedding_hnsw"), "{plan:#?}");
    drop(tx);

    // Derived tables.
    let health: Vec<(String, String, Uuid)> =
        sqlx::query_as("SELECT component, status, event_id FROM health_state ORDER BY component")
            .fetch_all(pool)
            .await
            .unwrap();
    assert_eq!(health, [("auth".into(), "HEALTHY".into(), id(522)), ("checkout".into(), "DEGRADED".into(), id(520))]);
    let projects: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT project_id, (extract(epoch FROM first_seen_at) * 1000)::int8, (extract(epoch FROM last_seen_at) * 1000)::int8
         FROM projects ORDER BY project_id",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(projects, [("atlas".into(), T0, T0 + 311), ("borealis".into(), T0 + 5, T0 + 312)]);
    let w: (Option<String>, f64, i64) =
        sqlx::query_as("SELECT endpoint, p95_ms, count FROM latency_windows WHERE event_id = $1")
            .bind(id(501))
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(w, (Some("/pay".into()), 180.0, 120));
    let u: (Option<String>, f64, Option<f64>, Option<f64>) = sqlx::query_as(
        "SELECT project_id, uncertainty, predicted_mean, calibration_gap FROM uncertainty_windows WHERE event_id = $1",
    )
    .bind(id(502))
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(u, (Some("atlas".into()), 0.62, Some(0.4), None));
    let a: (String, String, String) =
        sqlx::query_as("SELECT rule, severity, status FROM alerts").fetch_one(pool).await.unwrap();
    assert_eq!(a, ("latency_p95".into(), "WARNING".into(), "FIRING".into()));
    let p: (String, String, String) =
        sqlx::query_as("SELECT store, from_role, to_role FROM promotions").fetch_one(pool).await.unwrap();
    assert_eq!(p, ("postgres".into(), "SHADOW".into(), "PRIMARY".into()));
    sink.pool().close().await;
    common::drop_database(&url).await;
}

#[tokio::test]
async fn postgres_replay_changes_nothing() {
    let _stores = crate::support::lease::stores();
    let (url, sink) = pg("replay").await;
    let events = every_kind();
    let first = write(&sink, &pg_batch("udo.writes.v1", &events, 0)).await;
    assert!(first.inserted > 0 && !first.checked);
    let before = pg_snapshot(sink.pool()).await;
    // The same batch again, then in different batch boundaries (a restart
    // from an older offset), then with every record twice in one batch.
    let again = write(&sink, &pg_batch("udo.writes.v1", &events, 0)).await;
    assert_eq!((again.inserted, again.rejects.len(), again.events), (0, 0, events.len()));
    assert!(again.checked, "a replay takes the checked path");
    for (i, part) in events.chunks(37).enumerate() {
        let out = write(&sink, &pg_batch("udo.writes.v1", part, (i * 37) as i64)).await;
        assert_eq!((out.inserted, out.rejects.len()), (0, 0));
    }
    let doubled: Vec<Event> = events.iter().flat_map(|e| [e.clone(), e.clone()]).collect();
    let recs: Vec<(i64, &Event)> = doubled.iter().enumerate().map(|(i, e)| ((i / 2) as i64, e)).collect();
    let batch = EventBatch { topic: "udo.writes.v1", partition: 0, next_offset: events.len() as i64, records: recs };
    let out = write(&sink, &batch).await;
    assert_eq!(
        (out.inserted, out.rejects.len(), out.events),
        (0, 0, events.len()),
        "in-batch duplicates are not an error"
    );
    assert_eq!(pg_snapshot(sink.pool()).await, before, "every table unchanged, row for row");
    sink.pool().close().await;
    common::drop_database(&url).await;
}

/// A batch of new events goes straight into the tables by COPY; a batch
/// that meets a stored event id takes the checked path instead. Both must
/// store the same rows, to the microsecond.
#[tokio::test]
async fn postgres_bulk_and_checked_paths_store_identical_rows() {
    let _stores = crate::support::lease::stores();
    let (url_bulk, bulk) = pg("paths_bulk").await;
    let (url_checked, checked) = pg("paths_checked").await;
    // Odd milliseconds, far from the epochs, so a rounding difference shows.
    let mut events = every_kind();
    for (i, e) in events.iter_mut().enumerate() {
        let at = T0 + 987_654_321 + (i as i64) * 1_001;
        match e {
            Event::LatencySample(x) => x.occurred_at = at,
            Event::FeedbackRating(x) => x.occurred_at = at,
            Event::DecisionLog(x) => x.occurred_at = at,
            Event::ContextChunk(x) => x.occurred_at = at,
            _ => {}
        }
    }
    let first = [events[0].clone()];
    // Bulk: the first event alone, then the others, all new.
    write(&bulk, &pg_batch("udo.writes.v1", &first, 0)).await;
    let a = write(&bulk, &pg_batch("udo.writes.v1", &events[1..], 1)).await;
    // Checked: the first event, then all of them (the first is stored).
    write(&checked, &pg_batch("udo.writes.v1", &first, 0)).await;
    let b = write(&checked, &pg_batch("udo.writes.v1", &events, 0)).await;
    assert!(!a.checked && b.checked, "the bulk path, then the checked path");
    assert_eq!((a.inserted, a.rejects.len()), (b.inserted, 0));
    assert_eq!(a.inserted as usize, events.len() - 1);
    // consumer_offsets.updated_at is the write's wall-clock time.
    let rows = async |sink: &PgSink| -> Vec<_> {
        pg_snapshot(sink.pool()).await.into_iter().filter(|t| t.0 != "consumer_offsets").collect()
    };
    assert_eq!(rows(&bulk).await, rows(&checked).await);
    let us: i64 = sqlx::query_scalar(
        "SELECT (extract(epoch FROM occurred_at) * 1000000)::int8 FROM latency_samples WHERE event_id = $1",
    )
    .bind(id(0))
    .fetch_one(bulk.pool())
    .await
    .unwrap();
    assert_eq!(us, (T0 + 987_654_321) * 1000, "exact to the microsecond");
    for (sink, url) in [(bulk, url_bulk), (checked, url_checked)] {
        sink.pool().close().await;
        common::drop_database(&url).await;
    }
}

#[tokio::test]
async fn postgres_offsets_are_stored_with_the_rows_and_never_go_back() {
    let _stores = crate::support::lease::stores();
    let (url, sink) = pg("offsets").await;
    let events = every_kind();
    let parts =
        [("udo.latency.v1".to_string(), 0), ("udo.latency.v1".to_string(), 1), ("udo.writes.v1".to_string(), 2)];
    assert!(sink.stored_offsets(GROUP, &parts).await.unwrap().is_empty());
    let b = |topic, partition, next_offset, evs: &'static [Event]| EventBatch {
        topic,
        partition,
        next_offset,
        records: records(evs, next_offset - evs.len() as i64),
    };
    let events: &'static [Event] = Box::leak(events.into_boxed_slice());
    // Two partitions in one transaction.
    let mut txn = sink.begin().await.unwrap();
    txn.write(GROUP, &b("udo.latency.v1", 0, 1200, &events[..100])).await.unwrap();
    txn.write(GROUP, &b("udo.latency.v1", 1, 700, &events[100..200])).await.unwrap();
    txn.commit().await.unwrap();
    write(&sink, &b("udo.writes.v1", 2, 42, &events[200..])).await;
    // An older batch (a replay) does not move an offset back.
    write(&sink, &b("udo.latency.v1", 0, 1100, &events[..100])).await;
    let got = sink.stored_offsets(GROUP, &parts).await.unwrap();
    let want: std::collections::HashMap<_, _> = parts.iter().cloned().zip([1200, 700, 42]).collect();
    assert_eq!(got, want);
    assert!(sink.stored_offsets("another-group", &parts).await.unwrap().is_empty(), "offsets are per group");
    // Rolled back: neither rows nor offset.
    let before = pg_snapshot(sink.pool()).await;
    let mut txn = sink.begin().await.unwrap();
    let more = [latency(9999, "checkout", 1.0)];
    txn.write(GROUP, &pg_batch("udo.latency.v1", &more, 5000)).await.unwrap();
    drop(txn);
    assert_eq!(pg_snapshot(sink.pool()).await, before);
    sink.pool().close().await;
    common::drop_database(&url).await;
}

#[tokio::test]
async fn postgres_rejects_a_reused_event_id_with_another_payload() {
    let _stores = crate::support::lease::stores();
    let (url, sink) = pg("reuse").await;
    let original = [
        decision(1, "atlas", 40),
        latency(2, "checkout", 10.0),
        chunk(3, "atlas", "a.rs", 0, ChunkOp::Upsert, T0),
        latency_window(4, "checkout", None, T0 + 300_000, 100.0),
        alert(5, "checkout", AlertStatus::Firing, T0 + 300_000),
    ];
    write(&sink, &pg_batch("udo.writes.v1", &original, 0)).await;
    let before = pg_snapshot(sink.pool()).await;

    // Same ids, other payloads, mixed with new events; plus an invalid record.
    let mut tampered_chunk = chunk(3, "atlas", "a.rs", 0, ChunkOp::Upsert, T0 + 50);
    if let Event::ContextChunk(c) = &mut tampered_chunk {
        c.content = "overwritten?".into();
    }
    let mut bad = decision(7, "atlas", 0);
    if let Event::DecisionLog(d) = &mut bad {
        d.uncertainty_score = 140;
    }
    let second = [
        decision(1, "atlas", 99),
        decision(6, "atlas", 10),
        latency(2, "checkout", 999.0),
        tampered_chunk,
        // Reused id, and now also carrying uncertainty stats: the
        // uncertainty_windows row must not appear either.
        {
            let mut w = latency_window(4, "checkout", None, T0 + 300_000, 101.0);
            let Event::WindowStats(ws) = uncertainty_window(4, "atlas", T0 + 300_000, 0.5) else { unreachable!() };
            if let Event::WindowStats(x) = &mut w {
                x.uncertainty = ws.uncertainty;
            }
            w
        },
        alert(5, "checkout", AlertStatus::Resolved, T0 + 300_000),
        bad,
    ];
    let batch = pg_batch("udo.writes.v1", &second, 100);

    // If the DLQ write fails, nothing is committed: not the new row, not the offset.
    let failed = sink.write_batch(GROUP, &batch, async |_: &[Reject]| Err(Error::Unavailable("dlq down".into()))).await;
    assert!(failed.is_err());
    assert_eq!(pg_snapshot(sink.pool()).await, before);

    let mut dlq: Vec<Reject> = Vec::new();
    let out = sink
        .write_batch(GROUP, &batch, async |r: &[Reject]| {
            dlq.extend_from_slice(r);
            Ok(())
        })
        .await
        .unwrap();
    let mut rejected: Vec<(i64, Uuid, &str)> = out
        .rejects
        .iter()
        .map(|r| {
            let id =
                r.reason.message.strip_prefix("event ").and_then(|m| m.get(..36)).expect("the message names the event");
            (r.offset, id.parse().expect("an event id"), r.reason.class.as_str())
        })
        .collect();
    rejected.sort();
    assert_eq!(
        rejected,
        [
            (100, id(1), "reused_event_id"),
            (102, id(2), "reused_event_id"),
            (103, id(3), "reused_event_id"),
            (104, id(4), "reused_event_id"),
            (105, id(5), "reused_event_id"),
            (106, id(7), "invalid"),
        ]
    );
    assert_eq!(dlq, out.rejects, "the DLQ callback saw exactly the rejects");
    let chunk_reject = out.rejects.iter().find(|r| r.offset == 103).unwrap();
    assert!(
        chunk_reject.reason.message.contains("already stored in project_context_events with a different payload"),
        "{chunk_reject:?}"
    );
    assert_eq!(out.events, 1);
    assert_eq!(out.inserted, 1);

    // Stored rows are the originals; only decision 6 is new.
    let score: i16 = sqlx::query_scalar("SELECT uncertainty_score FROM uncertainty_logs WHERE event_id = $1")
        .bind(id(1))
        .fetch_one(sink.pool())
        .await
        .unwrap();
    assert_eq!(score, 40);
    let ms: f64 = sqlx::query_scalar("SELECT latency_ms FROM latency_samples WHERE event_id = $1")
        .bind(id(2))
        .fetch_one(sink.pool())
        .await
        .unwrap();
    assert_eq!(ms, 10.0);
    let content: String =
        sqlx::query_scalar("SELECT content FROM project_contexts").fetch_one(sink.pool()).await.unwrap();
    assert!(content.starts_with("chunk 3 of a.rs"), "{content}");
    let p95: f64 = sqlx::query_scalar("SELECT p95_ms FROM latency_windows").fetch_one(sink.pool()).await.unwrap();
    assert_eq!(p95, 100.0);
    let status: String = sqlx::query_scalar("SELECT status FROM alerts").fetch_one(sink.pool()).await.unwrap();
    assert_eq!(status, "FIRING");
    let after = pg_snapshot(sink.pool()).await;
    assert_eq!(count(&after, "uncertainty_logs"), 2);
    for (a, b) in before.iter().zip(&after) {
        if !["uncertainty_logs", "consumer_offsets", "projects"].contains(&a.0) {
            assert_eq!(a, b, "only the new decision, its project and the offset changed");
        }
    }
    assert_eq!(
        sink.stored_offsets(GROUP, &[("udo.writes.v1".into(), 0)]).await.unwrap().get(&("udo.writes.v1".into(), 0)),
        Some(&107)
    );
    sink.pool().close().await;
    common::drop_database(&url).await;
}

#[tokio::test]
async fn postgres_chunk_delete_wins_over_older_upserts() {
    let _stores = crate::support::lease::stores();
    let (url, sink) = pg("chunk_delete").await;
    let key_rows = async |sink: &PgSink| -> Vec<(i32, Uuid)> {
        sqlx::query_as(
            "SELECT chunk_index, event_id FROM project_contexts WHERE file_path = 'a.rs' ORDER BY chunk_index",
        )
        .fetch_all(sink.pool())
        .await
        .unwrap()
    };
    let up = [chunk(1, "atlas", "a.rs", 0, ChunkOp::Upsert, T0), chunk(2, "atlas", "a.rs", 1, ChunkOp::Upsert, T0)];
    write(&sink, &pg_batch("udo.writes.v1", &up, 0)).await;
    assert_eq!(key_rows(&sink).await, [(0, id(1)), (1, id(2))]);
    let del = [chunk(3, "atlas", "a.rs", 0, ChunkOp::Delete, T0 + 10)];
    write(&sink, &pg_batch("udo.writes.v1", &del, 2)).await;
    assert_eq!(key_rows(&sink).await, [(1, id(2))], "DELETE removed chunk 0");
    // Deleting again, and an older UPSERT arriving late, change nothing.
    let late =
        [chunk(3, "atlas", "a.rs", 0, ChunkOp::Delete, T0 + 10), chunk(4, "atlas", "a.rs", 0, ChunkOp::Upsert, T0 + 5)];
    write(&sink, &pg_batch("udo.writes.v1", &late, 3)).await;
    assert_eq!(key_rows(&sink).await, [(1, id(2))], "the tombstone keeps an older upsert out");
    // A newer UPSERT brings it back; within one batch the newest event wins.
    let newer = [
        chunk(5, "atlas", "a.rs", 0, ChunkOp::Upsert, T0 + 20),
        chunk(6, "atlas", "a.rs", 1, ChunkOp::Upsert, T0 + 30),
        chunk(7, "atlas", "a.rs", 1, ChunkOp::Delete, T0 + 25),
    ];
    write(&sink, &pg_batch("udo.writes.v1", &newer, 5)).await;
    assert_eq!(key_rows(&sink).await, [(0, id(5)), (1, id(6))]);
    sink.pool().close().await;
    common::drop_database(&url).await;
}

#[tokio::test]
async fn postgres_startup_refuses_another_embedding_dimension() {
    let _stores = crate::support::lease::stores();
    let url = common::fresh_database("dim").await;
    let sink = PgSink::connect(&url, 384).await.unwrap();
    sink.pool().close().await;
    // Starting again with the same dimension is fine (and fast: nothing to do).
    let t = std::time::Instant::now();
    PgSink::connect(&url, 384).await.unwrap().pool().close().await;
    let warm = t.elapsed();
    let err = PgSink::connect(&url, 768).await.unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("UDO_EMBEDDING_DIM is 768") && msg.contains("vector(384)"), "{msg}");
    assert_eq!(err.domain(), ErrorDomain::User, "a config error, not retried");
    let err = PgSink::connect(&url, 0).await.unwrap_err();
    assert!(err.to_string().contains("UDO_EMBEDDING_DIM"), "{err}");
    eprintln!("warm PgSink::connect: {warm:?}");
    common::drop_database(&url).await;
}

#[tokio::test]
async fn postgres_unreachable_is_a_retryable_error() {
    let _stores = crate::support::lease::stores();
    let err = PgSink::connect("postgres://udo:udo@127.0.0.1:1/udo", 384).await.unwrap_err();
    assert_eq!(err.domain(), ErrorDomain::External, "{err}");
    assert!(!err.to_string().contains("udo:udo"), "no credentials in errors: {err}");
}

/// Bulk COPY path: figures for the report (debug build unless --release).
#[tokio::test]
async fn postgres_bulk_latency_batch() {
    let _stores = crate::support::lease::stores();
    let (url, sink) = pg("bulk").await;
    let n = 20_000u128;
    let events: Vec<Event> = (0..n).map(|i| latency(i, "checkout", (i % 500) as f64)).collect();
    let t = std::time::Instant::now();
    let out = write(&sink, &pg_batch("udo.latency.v1", &events, 0)).await;
    let first = t.elapsed();
    assert_eq!(out.inserted, n as u64);
    let t = std::time::Instant::now();
    let again = write(&sink, &pg_batch("udo.latency.v1", &events, 0)).await;
    let replay = t.elapsed();
    assert_eq!(again.inserted, 0);
    let t = std::time::Instant::now();
    let hashes: std::collections::HashSet<Uuid> =
        events.iter().map(udo_stream::sinks::postgres::payload_hash).collect();
    let hashing = t.elapsed();
    assert_eq!(hashes.len(), n as usize);
    eprintln!(
        "{n} latency samples in one batch: {first:?} ({:.0}/s; payload hashing alone {hashing:?}); replayed: {replay:?}",
        n as f64 / first.as_secs_f64()
    );
    sink.pool().close().await;
    common::drop_database(&url).await;
}

// ---------------------------------------------------------------- Redis

/// Every key of the database with its type and full content, sorted.
async fn hash(url: &str, key: &str) -> BTreeMap<String, String> {
    let client = redis::Client::open(url).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("HGETALL").arg(key).query_async(&mut con).await.unwrap()
}

async fn get(url: &str, key: &str) -> Option<String> {
    let client = redis::Client::open(url).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("GET").arg(key).query_async(&mut con).await.unwrap()
}

fn redis_batch<'a>(topic: &'a str, events: &'a [Event], first_offset: i64) -> EventBatch<'a> {
    EventBatch {
        topic,
        partition: 0,
        next_offset: first_offset + events.len() as i64,
        records: records(events, first_offset),
    }
}

fn chunks_of(h: &BTreeMap<String, String>, file: &str) -> Vec<serde_json::Value> {
    serde_json::from_str(&h[file]).unwrap()
}

#[tokio::test]
async fn redis_materializes_the_current_state() {
    let _stores = crate::support::lease::stores();
    let url = common::fresh_redis_db().await;
    let sink = RedisSink::connect(&url).await.unwrap();
    sink.ping().await.unwrap();
    let events = every_kind();
    let out = sink.apply(RGROUP, &redis_batch("udo.writes.v1", &events, 10)).await.unwrap();
    assert!(out.applied);
    assert_eq!(out.previous_offset, None);

    let ctx = hash(&url, "project:atlas:context").await;
    assert_eq!(ctx.keys().collect::<Vec<_>>(), ["README.md", "src/lib.rs", "src/main.rs"]);
    let main = chunks_of(&ctx, "src/main.rs");
    assert_eq!(main.iter().map(|c| c["chunk_index"].as_i64().unwrap()).collect::<Vec<_>>(), [0, 1, 2]);
    assert_eq!(main[1]["content"], "chunk 401 of src/main.rs — ünïcode\\ \"quoted\"");
    assert_eq!(main[1]["event_id"], id(401).to_string());
    assert_eq!(main[1]["occurred_at"], T0 + 1);
    assert_eq!(hash(&url, "project:borealis:context").await.len(), 2);

    let lat = hash(&url, &keys::latency("checkout", None)).await;
    assert_eq!((lat["p95_ms"].as_str(), lat["count"].as_str()), ("250", "120"));
    assert_eq!(lat["window_end"], (T0 + 300_000).to_string());
    assert_eq!(hash(&url, &keys::latency("checkout", Some("/pay"))).await["p95_ms"], "180");
    let unc = hash(&url, &keys::uncertainty(Some("atlas"), "search")).await;
    assert_eq!((unc["uncertainty"].as_str(), unc["predicted_mean"].as_str()), ("0.62", "0.4"));
    assert!(!unc.contains_key("calibration_gap"));
    assert_eq!(hash(&url, &keys::health("checkout")).await["status"], "DEGRADED");
    let auth = hash(&url, &keys::health("auth")).await;
    assert_eq!((auth["status"].as_str(), auth["event_id"].as_str()), ("HEALTHY", id(522).to_string().as_str()));
    let alerts = hash(&url, keys::ALERTS).await;
    let a: serde_json::Value = serde_json::from_str(&alerts["latency_p95|checkout|WARNING"]).unwrap();
    assert_eq!(a["status"], "FIRING");
    assert_eq!(get(&url, keys::STORE_PRIMARY).await.as_deref(), Some("postgres"));
    let stored =
        sink.stored_offsets(RGROUP, &[("udo.writes.v1".into(), 0), ("udo.writes.v1".into(), 1)]).await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[&("udo.writes.v1".into(), 0)], 10 + events.len() as i64);

    // Later events: a chunk deleted, a newer window, the alert resolved, recovery.
    let later = [
        chunk(600, "atlas", "src/main.rs", 1, ChunkOp::Delete, T0 + 1000),
        chunk(601, "atlas", "README.md", 0, ChunkOp::Delete, T0 + 1000),
        latency_window(602, "checkout", None, T0 + 360_000, 120.0),
        alert(603, "checkout", AlertStatus::Resolved, T0 + 360_000),
        degradation(604, "checkout", DegradationKind::Recovered, T0 + 900_000),
        // An older window arriving late does not overwrite the newer one.
        latency_window(605, "checkout", None, T0 + 240_000, 999.0),
    ];
    let next = 10 + events.len() as i64;
    let out = sink.apply(RGROUP, &redis_batch("udo.writes.v1", &later, next)).await.unwrap();
    assert_eq!((out.applied, out.previous_offset, out.writes), (true, Some(next), 5));
    let ctx = hash(&url, "project:atlas:context").await;
    assert!(!ctx.contains_key("README.md"), "the file's last chunk went, so did the field");
    let main = chunks_of(&ctx, "src/main.rs");
    assert_eq!(main.iter().map(|c| c["chunk_index"].as_i64().unwrap()).collect::<Vec<_>>(), [0, 2]);
    assert_eq!(hash(&url, &keys::latency("checkout", None)).await["p95_ms"], "120");
    assert!(hash(&url, keys::ALERTS).await.is_empty());
    assert_eq!(hash(&url, &keys::health("checkout")).await["status"], "HEALTHY");
}

#[tokio::test]
async fn redis_replay_of_an_older_or_equal_offset_is_a_no_op() {
    let _stores = crate::support::lease::stores();
    let url = common::fresh_redis_db().await;
    let sink = RedisSink::connect(&url).await.unwrap();
    let events = every_kind();
    let n = events.len() as i64;
    sink.apply(RGROUP, &redis_batch("udo.writes.v1", &events, 0)).await.unwrap();
    let before = common::redis_snapshot(&url).await;
    assert!(before.len() >= 10, "{:?}", before.keys());
    // Same batch; an older prefix; a newer-looking version of data at old offsets.
    let out = sink.apply(RGROUP, &redis_batch("udo.writes.v1", &events, 0)).await.unwrap();
    assert_eq!((out.applied, out.previous_offset, out.writes), (false, Some(n), 0));
    sink.apply(RGROUP, &redis_batch("udo.writes.v1", &events[..50], 0)).await.unwrap();
    let rewrite = [chunk(700, "atlas", "src/main.rs", 0, ChunkOp::Delete, T0 + 99_999)];
    let out = sink.apply(RGROUP, &redis_batch("udo.writes.v1", &rewrite, n - 1)).await.unwrap();
    assert!(!out.applied);
    assert_eq!(common::redis_snapshot(&url).await, before, "every key unchanged");
    // A batch straddling the stored offset applies only its records at or past it.
    let straddle = [
        chunk(701, "atlas", "src/lib.rs", 0, ChunkOp::Delete, T0 + 99_999), // offset n-1: already applied range
        chunk(702, "atlas", "src/main.rs", 0, ChunkOp::Delete, T0 + 99_999), // offset n: new
    ];
    let out = sink.apply(RGROUP, &redis_batch("udo.writes.v1", &straddle, n - 1)).await.unwrap();
    assert_eq!((out.applied, out.writes), (true, 1));
    let ctx = hash(&url, "project:atlas:context").await;
    assert!(ctx.contains_key("src/lib.rs"));
    assert_eq!(chunks_of(&ctx, "src/main.rs").len(), 2);
    // Another partition and another group are fenced separately.
    let other = EventBatch { partition: 1, ..redis_batch("udo.writes.v1", &rewrite, 0) };
    assert!(sink.apply(RGROUP, &other).await.unwrap().applied);
}

#[tokio::test]
async fn redis_promotion_names_the_primary_store() {
    let _stores = crate::support::lease::stores();
    let url = common::fresh_redis_db().await;
    let sink = RedisSink::connect(&url).await.unwrap();
    let mut offset = 0;
    let mut step = async |e: Event| {
        let evs = [e];
        sink.apply(RGROUP, &redis_batch("udo.promotions.v1", &evs, offset)).await.unwrap();
        offset += 1;
        get(&url, keys::STORE_PRIMARY).await
    };
    assert_eq!(step(promotion(1, "postgres", StoreRole::Primary, T0)).await.as_deref(), Some("postgres"));
    assert_eq!(step(promotion(2, "redis", StoreRole::Primary, T0 + 10)).await.as_deref(), Some("redis"));
    assert_eq!(step(promotion(3, "redis", StoreRole::Shadow, T0 + 20)).await.as_deref(), Some("postgres"));
    // A stale promotion of redis (older than its demotion) changes nothing.
    assert_eq!(step(promotion(4, "redis", StoreRole::Primary, T0 + 15)).await.as_deref(), Some("postgres"));
    assert_eq!(step(promotion(5, "postgres", StoreRole::Shadow, T0 + 30)).await, None, "no primary store");

    // End to end with the state machine: 100 good writes promote, the event materializes.
    let cfg = PromotionConfig::default();
    let mut sm = StorePromotion::new("redis");
    let events: Vec<Event> = (0..100)
        .filter_map(|i| sm.record(&cfg, RGROUP, Attempt { first_attempt_ok: true, lag: 0, at: T0 + 1000 + i }))
        .map(Event::Promotion)
        .collect();
    assert_eq!(events.len(), 1);
    assert_eq!(step(events[0].clone()).await.as_deref(), Some("redis"));
}

#[tokio::test]
async fn redis_unreachable_is_a_retryable_error() {
    let _stores = crate::support::lease::stores();
    let err = RedisSink::connect("redis://127.0.0.1:1/0").await.unwrap_err();
    assert_eq!(err.domain(), ErrorDomain::External, "{err}");
}
