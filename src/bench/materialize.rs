//! `udo-stream bench materialize`: the materializers' store paths against
//! the fastest plain ways to load the same rows, in one run, on the same
//! data and batch size (targets: Postgres ≥ 50% of binary COPY
//! and ≥ 2× multi-row INSERT; Redis ≥ 50% of a raw pipelined write).
//!
//! Kafka and decoding are excluded from every variant: events are generated
//! in memory (the seeded `produce all` mix) and each variant is timed from
//! its first store round trip to its last commit. What each variant does:
//! - materializer: `PgSink` exactly as `materialize-postgres` uses it: per
//!   batch one transaction with the event rows (binary COPY while no event
//!   id is already stored, otherwise checked idempotent inserts), the derived
//!   tables (project_contexts: the newest chunk per key, staged by COPY and
//!   upserted; projects) and the partition offset;
//! - COPY: `COPY … (FORMAT binary)` of each batch's rows into same-schema
//!   staging tables: the four event tables (`LIKE … INCLUDING ALL`: same
//!   columns, constraints, primary keys, indexes) and the current chunks
//!   with their vectors (`LIKE project_contexts` with the same HNSW index,
//!   every UPSERT appended: no primary key), one transaction per batch, no
//!   conflict handling, payload hashes computed before timing; the payloads
//!   are the sink's own (`sinks::postgres::copy`), so only the work around
//!   them differs;
//! - INSERT: the same rows as multi-row `INSERT … VALUES (…), (…)` into
//!   another set of staging tables, one transaction per batch.
//!
//! Redis: context chunks applied by the fenced Lua script (one pipelined
//! round trip per batch, `RedisSink::apply_all`) against a pipelined
//! `HSET project:{p}:context {file} {json}` per chunk, `batch` commands per
//! round trip. The benchmark uses a scratch database (created and dropped)
//! and a Redis database given by the caller (flushed).

use crate::domain::{ChunkOp, ContextChunk, DecisionLog, Event, FeedbackRating, LatencySample};
use crate::error::{Error, Result};
use crate::sinks::EventBatch;
use crate::sinks::postgres::{PgSink, Row, copy, payload_hash};
use crate::sinks::redis::{RedisSink, keys};
use crate::synth::{Generator, Kind, SynthConfig, simulated_time};
use sqlx::{Connection, Executor};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub database_url: String,
    pub redis_url: String,
    pub records: usize,
    pub batch_size: usize,
    pub embedding_dim: u32,
    pub seed: u64,
}

/// Measured throughput of every variant.
#[derive(Debug, Clone, Default)]
pub struct BenchReport {
    pub records: usize,
    pub batch_size: usize,
    pub pg_materializer: Duration,
    pub pg_copy: Duration,
    pub pg_insert: Duration,
    pub redis_records: usize,
    pub redis_materializer: Duration,
    pub redis_baseline: Duration,
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

impl BenchReport {
    pub fn lines(&self) -> Vec<String> {
        let (n, rn) = (self.records, self.redis_records);
        let m = rate(n, self.pg_materializer);
        let c = rate(n, self.pg_copy);
        let i = rate(n, self.pg_insert);
        let rm = rate(rn, self.redis_materializer);
        let rb = rate(rn, self.redis_baseline);
        vec![
            format!("records: {n} mixed events, batch size {}", self.batch_size),
            format!("postgres materializer (PgSink, Kafka excluded): {m:>9.0} rows/s"),
            format!("postgres binary COPY into staging tables:       {c:>9.0} rows/s"),
            format!("postgres multi-row INSERT into staging tables:  {i:>9.0} rows/s"),
            format!("=> materializer {m:.0} rows/s = {:.2}x COPY, {:.2}x INSERT", m / c, m / i),
            format!("redis: {rn} context chunks, batch size {}", self.batch_size),
            format!("redis materializer (fenced Lua, pipelined):     {rm:>9.0} ops/s"),
            format!("redis raw pipelined HSET:                       {rb:>9.0} ops/s"),
            format!("=> materializer {rm:.0} ops/s = {:.2}x the raw pipeline", rm / rb),
        ]
    }
}

/// The seeded `produce all` mix, as in-memory events.
pub fn events(records: usize, dim: usize, seed: u64) -> Vec<Event> {
    let start = 1_767_225_600_000;
    let mut g = Generator::new(SynthConfig::new(dim), seed, start);
    (0..records).map(|i| g.next(Kind::All, simulated_time(start, i as u64, 1000.0))).collect()
}

/// Runs every variant and returns the figures.
pub async fn run(cfg: &BenchConfig) -> Result<BenchReport> {
    let evs = events(cfg.records, cfg.embedding_dim as usize, cfg.seed);
    let (db_url, name) = scratch_database(&cfg.database_url).await?;
    let result = async {
        let sink = PgSink::connect_with(&db_url, cfg.embedding_dim, 2).await?;
        let mut report = BenchReport { records: evs.len(), batch_size: cfg.batch_size, ..BenchReport::default() };
        let rows = Rows::of(&evs);
        report.pg_copy = copy_variant(&sink, &rows, cfg.batch_size).await?;
        report.pg_insert = insert_variant(&sink, &rows, cfg.batch_size).await?;
        report.pg_materializer = materializer_variant(&sink, &evs, cfg.batch_size).await?;
        let chunks: Vec<&Event> = evs.iter().filter(|e| matches!(e, Event::ContextChunk(_))).collect();
        let more = events(cfg.records, cfg.embedding_dim as usize, cfg.seed + 1);
        let chunks: Vec<&Event> =
            chunks.into_iter().chain(more.iter().filter(|e| matches!(e, Event::ContextChunk(_)))).collect();
        report.redis_records = chunks.len();
        let (rm, rb) = redis_variants(&cfg.redis_url, &chunks, cfg.batch_size).await?;
        report.redis_materializer = rm;
        report.redis_baseline = rb;
        sink.pool().close().await;
        Ok::<_, Error>(report)
    }
    .await;
    drop_database(&cfg.database_url, &name).await;
    result
}

async fn scratch_database(url: &str) -> Result<(String, String)> {
    let mut conn = sqlx::PgConnection::connect(url).await.map_err(Error::postgres("connect"))?;
    let name = format!("udo_bench_{}", &Uuid::new_v4().simple().to_string()[..8]);
    conn.execute(format!("CREATE DATABASE \"{name}\"").as_str())
        .await
        .map_err(Error::postgres("create the scratch database (the user needs CREATEDB)"))?;
    let _ = conn.close().await;
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let server = base.rsplit_once('/').map(|(s, _)| s).unwrap_or(base);
    Ok((format!("{server}/{name}{query}"), name))
}

async fn drop_database(url: &str, name: &str) {
    if let Ok(mut conn) = sqlx::PgConnection::connect(url).await {
        let _ = conn.execute(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)").as_str()).await;
        let _ = conn.close().await;
    }
}

/// The event rows of a batch split by table, with their payload hashes.
struct Rows<'a> {
    /// Records in the whole run.
    n: usize,
    latency: Vec<Row<'a, LatencySample>>,
    feedback: Vec<Row<'a, FeedbackRating>>,
    decisions: Vec<Row<'a, DecisionLog>>,
    chunks: Vec<Row<'a, ContextChunk>>,
}

impl<'a> Rows<'a> {
    fn of(evs: &'a [Event]) -> Rows<'a> {
        let mut r =
            Rows { n: evs.len(), latency: Vec::new(), feedback: Vec::new(), decisions: Vec::new(), chunks: Vec::new() };
        for (i, e) in evs.iter().enumerate() {
            let (offset, hash) = (i as i64, payload_hash(e));
            match e {
                Event::LatencySample(event) => r.latency.push(Row { offset, hash, event }),
                Event::FeedbackRating(event) => r.feedback.push(Row { offset, hash, event }),
                Event::DecisionLog(event) => r.decisions.push(Row { offset, hash, event }),
                Event::ContextChunk(event) => r.chunks.push(Row { offset, hash, event }),
                _ => {}
            }
        }
        r
    }

    /// Rows of records `lo..hi` (the same batches as the materializer's).
    fn batch(&self, lo: usize, hi: usize) -> Rows<'a> {
        fn pick<'a, T>(v: &[Row<'a, T>], lo: usize, hi: usize) -> Vec<Row<'a, T>> {
            let a = v.partition_point(|x| x.offset < lo as i64);
            let b = v.partition_point(|x| x.offset < hi as i64);
            v[a..b].to_vec()
        }
        Rows {
            n: hi.min(self.n) - lo.min(self.n),
            latency: pick(&self.latency, lo, hi),
            feedback: pick(&self.feedback, lo, hi),
            decisions: pick(&self.decisions, lo, hi),
            chunks: pick(&self.chunks, lo, hi),
        }
    }
}

const TABLES: [&str; 4] = ["latency_samples", "uncertainty_feedback", "uncertainty_logs", "project_context_events"];

async fn staging(sink: &PgSink, prefix: &str) -> Result<()> {
    let mut ddl: Vec<String> =
        TABLES.iter().map(|t| format!("CREATE TABLE {prefix}_{t} (LIKE {t} INCLUDING ALL)")).collect();
    // Current chunks with their vectors and the HNSW index; without the
    // primary key, since a plain load appends every UPSERT (the
    // materializer keeps only the newest per chunk).
    ddl.push(format!("CREATE TABLE {prefix}_project_contexts (LIKE project_contexts INCLUDING DEFAULTS)"));
    ddl.push(format!("CREATE INDEX ON {prefix}_project_contexts USING hnsw (embedding vector_cosine_ops)"));
    for q in ddl {
        sqlx::query(&q).execute(sink.pool()).await.map_err(Error::postgres(format!("create staging: {q}")))?;
    }
    Ok(())
}

async fn materializer_variant(sink: &PgSink, evs: &[Event], batch: usize) -> Result<Duration> {
    let started = Instant::now();
    for (n, chunk) in evs.chunks(batch).enumerate() {
        let first = (n * batch) as i64;
        let records: Vec<(i64, &Event)> = chunk.iter().enumerate().map(|(i, e)| (first + i as i64, e)).collect();
        let b = EventBatch { topic: "bench", partition: 0, next_offset: first + chunk.len() as i64, records };
        let out = sink.write_batch("udo-bench", &b, async |_| Ok(())).await?;
        if !out.rejects.is_empty() {
            return Err(Error::Internal(format!("bench data rejected: {:?}", out.rejects[0])));
        }
    }
    Ok(started.elapsed())
}

// ---- binary COPY

async fn copy_variant(sink: &PgSink, rows: &Rows<'_>, batch: usize) -> Result<Duration> {
    staging(sink, "bench_copy").await?;
    let n = rows.n;
    let started = Instant::now();
    let mut lo = 0;
    while lo < n {
        let b = rows.batch(lo, lo + batch);
        let mut tx = sink.pool().begin().await.map_err(Error::postgres("begin"))?;
        // The sink's own COPY payloads (the same bytes the materializer
        // sends), every chunk UPSERT appended to the vector table.
        let mut bufs: Vec<(&str, &str, Vec<u8>)> = Vec::new();
        if !b.latency.is_empty() {
            bufs.push(("latency_samples", copy::LATENCY_COLUMNS, copy::latency_copy(&b.latency)));
        }
        if !b.feedback.is_empty() {
            bufs.push(("uncertainty_feedback", copy::FEEDBACK_COLUMNS, copy::feedback_copy(&b.feedback)));
        }
        if !b.decisions.is_empty() {
            bufs.push(("uncertainty_logs", copy::DECISION_COLUMNS, copy::decisions_copy(&b.decisions)));
        }
        if !b.chunks.is_empty() {
            let events = copy::chunk_events_copy(&b.chunks);
            bufs.push(("project_context_events", copy::CHUNK_EVENT_COLUMNS, events));
            let upserts: Vec<_> = b.chunks.iter().filter(|r| r.event.op == ChunkOp::Upsert).copied().collect();
            bufs.push(("project_contexts", copy::CONTEXT_COLUMNS, copy::contexts_copy(&upserts)));
        }
        for (table, columns, data) in bufs {
            let stmt = copy::copy_into(&format!("bench_copy_{table}"), columns);
            let mut copy = tx.copy_in_raw(&stmt).await.map_err(Error::postgres("copy"))?;
            if let Err(e) = copy.send(data).await {
                let _ = copy.abort("send failed").await;
                return Err(Error::Postgres { op: "copy".into(), source: e });
            }
            copy.finish().await.map_err(Error::postgres("copy"))?;
        }
        tx.commit().await.map_err(Error::postgres("commit"))?;
        lo += batch;
    }
    Ok(started.elapsed())
}

// ---- multi-row INSERT

fn vector_text(v: &[f32]) -> String {
    let items: Vec<String> = v.iter().map(f32::to_string).collect();
    format!("[{}]", items.join(","))
}

/// A bind value of the INSERT variant.
enum V<'a> {
    Uuid(Uuid),
    Ts(i64),
    Text(Option<&'a str>),
    F64(f64),
    I32(Option<i32>),
    I16(i16),
    Vector(Option<String>),
}

async fn insert_rows(tx: &mut sqlx::PgConnection, table: &str, cols: &str, rows: Vec<Vec<V<'_>>>) -> Result<()> {
    let Some(width) = rows.first().map(Vec::len) else { return Ok(()) };
    // PostgreSQL takes at most 65535 bind parameters per statement.
    for chunk in rows.chunks(65_535 / width) {
        let mut sql = format!("INSERT INTO bench_insert_{table} ({cols}) VALUES ");
        let mut p = 0;
        for (i, row) in chunk.iter().enumerate() {
            sql.push_str(if i == 0 { "(" } else { ",(" });
            for (j, v) in row.iter().enumerate() {
                p += 1;
                if j > 0 {
                    sql.push(',');
                }
                match v {
                    V::Ts(_) => sql.push_str(&format!("to_timestamp(${p}::float8 / 1000)")),
                    V::Vector(_) => sql.push_str(&format!("${p}::vector")),
                    _ => sql.push_str(&format!("${p}")),
                }
            }
            sql.push(')');
        }
        let mut q = sqlx::query(&sql);
        for row in chunk {
            for v in row {
                q = match v {
                    V::Uuid(u) => q.bind(*u),
                    V::Ts(ms) => q.bind(*ms),
                    V::Text(s) => q.bind(*s),
                    V::F64(f) => q.bind(*f),
                    V::I32(i) => q.bind(*i),
                    V::I16(i) => q.bind(*i),
                    V::Vector(t) => q.bind(t.as_deref()),
                };
            }
        }
        q.execute(&mut *tx).await.map_err(Error::postgres(format!("insert into bench_insert_{table}")))?;
    }
    Ok(())
}

async fn insert_variant(sink: &PgSink, rows: &Rows<'_>, batch: usize) -> Result<Duration> {
    staging(sink, "bench_insert").await?;
    let n = rows.n;
    let started = Instant::now();
    let mut lo = 0;
    while lo < n {
        let b = rows.batch(lo, lo + batch);
        let mut tx = sink.pool().begin().await.map_err(Error::postgres("begin"))?;
        let lat = b
            .latency
            .iter()
            .map(|&Row { hash: h, event: e, .. }| {
                vec![
                    V::Uuid(e.event_id),
                    V::Uuid(h),
                    V::Ts(e.occurred_at),
                    V::Text(Some(&e.source)),
                    V::Text(Some(&e.component)),
                    V::Text(Some(&e.endpoint)),
                    V::F64(e.latency_ms),
                    V::Text(Some(e.outcome.as_str())),
                    V::I32(e.status_code),
                ]
            })
            .collect();
        insert_rows(&mut tx, "latency_samples", copy::LATENCY_COLUMNS, lat).await?;
        let fb = b
            .feedback
            .iter()
            .map(|&Row { hash: h, event: e, .. }| {
                vec![
                    V::Uuid(e.event_id),
                    V::Uuid(h),
                    V::Ts(e.occurred_at),
                    V::Text(Some(&e.source)),
                    V::Text(Some(&e.project_id)),
                    V::Text(Some(&e.component)),
                    V::Uuid(e.decision_id),
                    V::I16(e.rating as i16),
                    V::Text(e.correction.as_deref()),
                ]
            })
            .collect();
        insert_rows(&mut tx, "uncertainty_feedback", copy::FEEDBACK_COLUMNS, fb).await?;
        let dec = b
            .decisions
            .iter()
            .map(|&Row { hash: h, event: e, .. }| {
                vec![
                    V::Uuid(e.event_id),
                    V::Uuid(h),
                    V::Ts(e.occurred_at),
                    V::Text(Some(&e.source)),
                    V::Text(Some(&e.project_id)),
                    V::Text(Some(&e.component)),
                    V::Text(Some(&e.decision)),
                    V::I16(e.uncertainty_score as i16),
                    V::Text(e.rationale.as_deref()),
                ]
            })
            .collect();
        insert_rows(&mut tx, "uncertainty_logs", copy::DECISION_COLUMNS, dec).await?;
        let ch = b
            .chunks
            .iter()
            .map(|&Row { hash: h, event: e, .. }| {
                vec![
                    V::Uuid(e.event_id),
                    V::Uuid(h),
                    V::Ts(e.occurred_at),
                    V::Text(Some(&e.source)),
                    V::Text(Some(&e.project_id)),
                    V::Text(Some(&e.file_path)),
                    V::I32(Some(e.chunk_index)),
                    V::Text(Some(e.op.as_str())),
                ]
            })
            .collect();
        insert_rows(&mut tx, "project_context_events", copy::CHUNK_EVENT_COLUMNS, ch).await?;
        let ctx = b
            .chunks
            .iter()
            .filter(|x| x.event.op == ChunkOp::Upsert)
            .map(|&Row { event: e, .. }| {
                vec![
                    V::Text(Some(&e.project_id)),
                    V::Text(Some(&e.file_path)),
                    V::I32(Some(e.chunk_index)),
                    V::Uuid(e.event_id),
                    V::Ts(e.occurred_at),
                    V::Text(Some(&e.source)),
                    V::Text(Some(&e.content)),
                    V::Vector(e.embedding.as_deref().map(vector_text)),
                ]
            })
            .collect();
        insert_rows(&mut tx, "project_contexts", copy::CONTEXT_COLUMNS, ctx).await?;
        tx.commit().await.map_err(Error::postgres("commit"))?;
        lo += batch;
    }
    Ok(started.elapsed())
}

// ---- Redis

async fn redis_variants(url: &str, chunks: &[&Event], batch: usize) -> Result<(Duration, Duration)> {
    let client = redis::Client::open(url).map_err(|e| Error::Config(format!("REDIS_URL: {e}")))?;
    let mut con = client.get_multiplexed_async_connection().await.map_err(Error::redis("connect"))?;
    let _: () = redis::cmd("FLUSHDB").query_async(&mut con).await.map_err(Error::redis("flushdb"))?;
    let sink = RedisSink::connect(url).await?;
    let started = Instant::now();
    for (n, part) in chunks.chunks(batch).enumerate() {
        let first = (n * batch) as i64;
        let records: Vec<(i64, &Event)> = part.iter().enumerate().map(|(i, e)| (first + i as i64, *e)).collect();
        let b = EventBatch { topic: "bench", partition: 0, next_offset: first + part.len() as i64, records };
        sink.apply_all("udo-bench", &[b]).await?;
    }
    let materializer = started.elapsed();
    let _: () = redis::cmd("FLUSHDB").query_async(&mut con).await.map_err(Error::redis("flushdb"))?;
    // The baseline writes the same JSON the materializer would, one HSET per chunk.
    let payloads: Vec<(String, String, String)> = chunks
        .iter()
        .filter_map(|e| match e {
            Event::ContextChunk(c) => Some((
                keys::context(&c.project_id),
                c.file_path.clone(),
                serde_json::json!([{
                    "chunk_index": c.chunk_index, "content": c.content, "event_id": c.event_id.to_string(),
                    "occurred_at": c.occurred_at, "source": c.source,
                }])
                .to_string(),
            )),
            _ => None,
        })
        .collect();
    let started = Instant::now();
    for part in payloads.chunks(batch) {
        let mut pipe = redis::pipe();
        for (k, f, v) in part {
            pipe.cmd("HSET").arg(k).arg(f).arg(v).ignore();
        }
        let _: () = pipe.query_async(&mut con).await.map_err(Error::redis("pipelined HSET"))?;
    }
    let baseline = started.elapsed();
    let _: () = redis::cmd("FLUSHDB").query_async(&mut con).await.map_err(Error::redis("flushdb"))?;
    Ok((materializer, baseline))
}
