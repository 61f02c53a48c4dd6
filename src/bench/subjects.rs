//! `bench analyze`'s subjects dimension: the analyzer engine holding 100,
//! 100,000 busy or 1,000,000 sparse subjects, with each mode's checkpoints.
//!
//! Per scenario and mode: throughput on one core (Avro decode, windows,
//! sketches, rules, closing once per 1000-record batch, and encoding each
//! checkpoint's changes at the mode's interval: 2 s at-least-once, 100 ms
//! exactly-once, and exactly-once with a 1 s commit interval), bytes and subjects written per
//! checkpoint, memory per subject (busy: a full window open; then with no
//! window open), and the time to restore the state from the real stores
//! (PostgreSQL rows, the changelog topic) into an engine.
//!
//! Busy subjects get 40 lognormal samples a minute (event time); sparse ones
//! one sample each, in components of 20 endpoints that answer slowly, so
//! each component fires alerts and keeps rule state once its windows close.

use crate::bench::alloc;
use crate::codec::{Codec, OutputFormat};
use crate::config::CommonArgs;
use crate::domain::engine::{Changes, Engine, EngineConfig, Input, SubjectEntry, SubjectKey, TaskMeta};
use crate::domain::events::{LatencySample, Outcome};
use crate::domain::windows::WindowSpec;
use crate::error::{Error, Result};
use crate::sinks::changelog::Changelog;
use crate::sinks::checkpoints::{Checkpoint, CheckpointStore, Checkpoints};
use rand::SeedableRng;
use rand_distr::{Distribution, LogNormal};
use std::time::{Duration, Instant};

const START_MS: i64 = 1_767_225_600_000;
const MIN: i64 = 60_000;

/// One scenario: how many endpoint subjects, and whether busy or sparse.
#[derive(Debug, Clone, Copy)]
pub struct Scenario {
    pub endpoints: usize,
    pub busy: bool,
}

impl Scenario {
    /// "100000" (busy) or "1000000:sparse".
    pub fn parse(s: &str) -> Result<Scenario> {
        let (n, kind) = s.split_once(':').unwrap_or((s, "busy"));
        let endpoints =
            n.trim().parse().map_err(|_| Error::Config(format!("--subjects: {s:?} is not a count like 100000")))?;
        let busy = match kind {
            "busy" => true,
            "sparse" => false,
            other => return Err(Error::Config(format!("--subjects: {other:?} is neither busy nor sparse"))),
        };
        Ok(Scenario { endpoints, busy })
    }

    fn label(&self) -> String {
        format!("{} {}", self.endpoints, if self.busy { "busy" } else { "sparse" })
    }

    /// Endpoints per component.
    fn per_component(&self) -> usize {
        if self.busy { 1000.min(self.endpoints).max(1) } else { 20 }
    }
}

/// The mode's checkpoint interval.
#[derive(Debug, Clone, Copy)]
enum Mode {
    AtLeastOnce,
    ExactlyOnce,
    /// Exactly-once with `commit_interval = "1s"`.
    ExactlyOnce1s,
}

const MODES: [Mode; 3] = [Mode::AtLeastOnce, Mode::ExactlyOnce, Mode::ExactlyOnce1s];

impl Mode {
    fn interval(self) -> Duration {
        match self {
            Mode::AtLeastOnce => Duration::from_secs(2),
            Mode::ExactlyOnce => Duration::from_millis(100),
            Mode::ExactlyOnce1s => Duration::from_secs(1),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Mode::AtLeastOnce => "at-least-once",
            Mode::ExactlyOnce => "exactly-once",
            Mode::ExactlyOnce1s => "exactly-once 1s",
        }
    }
}

struct Figures {
    samples: usize,
    rate: f64,
    bytes_per_checkpoint: f64,
    subjects_per_checkpoint: f64,
    subjects_open: usize,
    bytes_open: f64,
    subjects_closed: usize,
    bytes_closed: f64,
}

/// The samples of a scenario, generated as they are ingested.
struct Load {
    pool: Vec<LatencySample>,
    step: f64,
    busy: bool,
    rng: rand::rngs::StdRng,
    fast: LogNormal<f64>,
    slow: LogNormal<f64>,
}

impl Load {
    fn new(sc: Scenario) -> Load {
        let per = sc.per_component();
        let pool = (0..sc.endpoints)
            .map(|i| LatencySample {
                event_id: uuid::Uuid::nil(),
                occurred_at: 0,
                source: "bench".into(),
                component: format!("component-{:06}", i / per),
                endpoint: format!("GET /api/v1/items/{i}"),
                latency_ms: 0.0,
                outcome: Outcome::Ok,
                status_code: Some(200),
            })
            .collect();
        // Busy: 40 samples a minute per subject. Sparse: all subjects within
        // 10 minutes, once each.
        let step =
            if sc.busy { MIN as f64 / (40.0 * sc.endpoints as f64) } else { 10.0 * MIN as f64 / sc.endpoints as f64 };
        Load {
            pool,
            step,
            busy: sc.busy,
            rng: rand::rngs::StdRng::seed_from_u64(17),
            fast: LogNormal::new(45f64.ln(), 0.5).expect("valid lognormal"),
            slow: LogNormal::new(600f64.ln(), 0.3).expect("valid lognormal"),
        }
    }

    fn sample(&mut self, i: usize) -> &LatencySample {
        let n = self.pool.len();
        let t = START_MS + (i as f64 * self.step) as i64;
        let latency = if self.busy { self.fast.sample(&mut self.rng) } else { self.slow.sample(&mut self.rng) };
        let s = &mut self.pool[i % n];
        s.event_id = uuid::Uuid::from_u128(i as u128 + 1);
        s.occurred_at = t;
        s.latency_ms = latency;
        s
    }
}

/// A subject's encoded sample, with where its event id, event time and
/// latency sit, so the producer's side of the bench patches bytes instead
/// of encoding every sample (it is not what is measured, and Avro encoding
/// through apache-avro costs several times the decode).
struct Template {
    bytes: Vec<u8>,
    id: usize,
    at: usize,
    latency: usize,
}

const MARK_ID: uuid::Uuid = uuid::Uuid::from_u128(0x0123_4567_89ab_4def_8123_4567_89ab_cdef);
const MARK_LATENCY: f64 = 1234.5678;

/// Avro's zigzag varint of a long.
fn varint(v: i64) -> Vec<u8> {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    let mut out = Vec::with_capacity(10);
    loop {
        if z < 0x80 {
            out.push(z as u8);
            return out;
        }
        out.push((z as u8 & 0x7f) | 0x80);
        z >>= 7;
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

impl Template {
    fn new(codec: &Codec, allowed: &[String], sample: &LatencySample) -> Result<Template> {
        let mut s = sample.clone();
        (s.event_id, s.occurred_at, s.latency_ms) = (MARK_ID, START_MS, MARK_LATENCY);
        let bytes = codec.encode(crate::topics::names::LATENCY, allowed, &crate::domain::Event::LatencySample(s))?;
        let missing = || Error::Internal("bench template: a marker is not in the encoded sample".into());
        let id = find(&bytes, MARK_ID.hyphenated().to_string().as_bytes()).ok_or_else(missing)?;
        let at = find(&bytes, &varint(START_MS)).ok_or_else(missing)?;
        let latency = find(&bytes, &MARK_LATENCY.to_le_bytes()).ok_or_else(missing)?;
        Ok(Template { bytes, id, at, latency })
    }

    /// The encoded sample with these values, if the event time encodes in
    /// as many bytes as the template's (else `None`: encode it whole).
    fn patch(&self, s: &LatencySample) -> Option<Vec<u8>> {
        let t = varint(s.occurred_at);
        if t.len() != varint(START_MS).len() {
            return None;
        }
        let mut b = self.bytes.clone();
        b[self.id..self.id + 36].copy_from_slice(s.event_id.hyphenated().to_string().as_bytes());
        b[self.at..self.at + t.len()].copy_from_slice(&t);
        b[self.latency..self.latency + 8].copy_from_slice(&s.latency_ms.to_le_bytes());
        Some(b)
    }
}

/// Encoded size of a checkpoint of `changes` (what the stores write).
fn encoded(meta: &TaskMeta, changes: &Changes<'_>) -> Result<(usize, usize)> {
    let enc = |e: postcard::Error| Error::Internal(format!("encode: {e}"));
    let mut bytes = postcard::to_stdvec(meta).map_err(enc)?.len();
    for (k, v) in &changes.put {
        bytes += postcard::to_stdvec(k).map_err(enc)?.len() + postcard::to_stdvec(v).map_err(enc)?.len();
    }
    for k in &changes.delete {
        bytes += postcard::to_stdvec(k).map_err(enc)?.len();
    }
    Ok((bytes, changes.put.len() + changes.delete.len()))
}

fn engine_config(spec: WindowSpec) -> EngineConfig {
    let mut cfg = EngineConfig::new(spec);
    cfg.state_ttl_ms = 3_600_000;
    cfg
}

/// Ingests the scenario, closing every 1000 samples (the pipeline closes
/// once per batch) and encoding the changes every checkpoint interval.
fn run_mode(codec: &Codec, spec: WindowSpec, sc: Scenario, mode: Mode, samples: usize) -> Result<(Figures, Engine)> {
    let mut load = Load::new(sc);
    let allowed = vec!["LatencySample".to_string()];
    let mut batch: Vec<Vec<u8>> = Vec::with_capacity(1000);
    let mut templates: Vec<Option<Template>> = (0..load.pool.len()).map(|_| None).collect();
    let mut engine = Engine::new(engine_config(spec));
    let before = alloc::allocated();
    let mut out = Vec::new();
    let (mut checkpoints, mut bytes, mut written) = (0usize, 0usize, 0usize);
    let mut busy = Duration::ZERO;
    let mut since_checkpoint = Duration::ZERO;
    let mut i = 0;
    while i < samples {
        // Encoding the batch is the producer's work: not timed.
        batch.clear();
        for _ in 0..1000.min(samples - i) {
            let n = load.pool.len();
            let s = load.sample(i).clone();
            let slot = &mut templates[i % n];
            if slot.is_none() && sc.busy {
                *slot = Some(Template::new(codec, &allowed, &s)?);
            }
            let bytes = match slot.as_ref().and_then(|t| t.patch(&s)) {
                Some(b) => b,
                None => {
                    codec.encode(crate::topics::names::LATENCY, &allowed, &crate::domain::Event::LatencySample(s))?
                }
            };
            batch.push(bytes);
            i += 1;
        }
        let started = Instant::now();
        for bytes in &batch {
            match codec.decode(&allowed, bytes) {
                Ok(crate::domain::Event::LatencySample(s)) => {
                    let _ = engine.ingest(Input::Latency(&s));
                }
                other => return Err(Error::Internal(format!("bench sample did not decode: {other:?}"))),
            }
        }
        engine.close(&mut out);
        out.clear();
        since_checkpoint += started.elapsed();
        if since_checkpoint >= mode.interval() {
            let (b, n) = encoded(&engine.meta(), &engine.changes())?;
            engine.mark_clean();
            (checkpoints, bytes, written) = (checkpoints + 1, bytes + b, written + n);
            since_checkpoint = Duration::ZERO;
        }
        busy += started.elapsed();
    }
    let rate = samples as f64 / busy.as_secs_f64();
    // Memory with the windows of the last minutes open.
    let held = alloc::allocated().saturating_sub(before);
    let subjects_open = engine.subjects();
    let bytes_open = if cfg!(feature = "bench-alloc") { held } else { engine.state_bytes() };
    let figures = Figures {
        samples,
        rate,
        bytes_per_checkpoint: bytes as f64 / checkpoints.max(1) as f64,
        subjects_per_checkpoint: written as f64 / checkpoints.max(1) as f64,
        subjects_open,
        bytes_open: bytes_open as f64 / subjects_open.max(1) as f64,
        subjects_closed: 0,
        bytes_closed: 0.0,
    };
    Ok((figures, engine))
}

/// Every window closed: what subjects keep (rule state only).
fn after_close(engine: &mut Engine, figures: &mut Figures) {
    engine.advance_idle(crate::domain::engine::Stream::Latency, 20 * MIN);
    engine.close(&mut Vec::new());
    figures.subjects_closed = engine.subjects();
    figures.bytes_closed = engine.state_bytes() as f64 / figures.subjects_closed.max(1) as f64;
}

/// Writes the whole state to `store` as task 0, then times reading it back
/// into an engine.
fn restore_from(store: &mut dyn Checkpoints, engine: &Engine, spec: WindowSpec) -> Result<(Duration, usize)> {
    let all = engine.everything();
    let enc = |e: postcard::Error| Error::Internal(format!("encode: {e}"));
    let mut cp = Checkpoint {
        task: 0,
        meta: postcard::to_stdvec(&engine.meta()).map_err(enc)?,
        offsets: Default::default(),
        config: "bench".into(),
        put: Vec::with_capacity(all.put.len()),
        delete: Vec::new(),
    };
    for (k, v) in &all.put {
        cp.put.push((postcard::to_stdvec(k).map_err(enc)?, postcard::to_stdvec(v).map_err(enc)?));
    }
    let size = cp.bytes();
    store.save(&[cp])?;
    let started = Instant::now();
    let loaded = store.load(&[0])?;
    let r = loaded.into_iter().next().ok_or_else(|| Error::Internal("nothing restored".into()))?;
    let meta: TaskMeta = postcard::from_bytes(&r.meta).map_err(|e| Error::Internal(format!("decode: {e}")))?;
    let mut entries = Vec::with_capacity(r.entries.len());
    for (k, v) in &r.entries {
        let key: SubjectKey = postcard::from_bytes(k).map_err(|e| Error::Internal(format!("decode: {e}")))?;
        let entry: SubjectEntry = postcard::from_bytes(v).map_err(|e| Error::Internal(format!("decode: {e}")))?;
        entries.push((key, entry));
    }
    let restored = Engine::restore(engine_config(spec), meta, entries).map_err(Error::Internal)?;
    if restored.subjects() != engine.subjects() {
        return Err(Error::Internal(format!("restored {} of {} subjects", restored.subjects(), engine.subjects())));
    }
    Ok((started.elapsed(), size))
}

pub async fn run(
    common: &CommonArgs,
    spec: WindowSpec,
    scenarios: &[Scenario],
    busy_minutes: i64,
    database_url: Option<&str>,
) -> Result<()> {
    println!(
        "subjects: Avro decode + engine on one core, checkpoint changes encoded every 2 s (at-least-once) / 100 ms \
         (exactly-once) / 1 s (exactly-once, commit_interval 1s); busy = 40 samples a minute each, {busy_minutes} \
         minutes; memory {}",
        if cfg!(feature = "bench-alloc") { "from the counting allocator" } else { "estimated (no bench-alloc)" }
    );
    println!(
        "{:<16} {:<14} {:>9} {:>12} {:>8} {:>14} {:>12} {:>15} {:>15}",
        "scenario",
        "mode",
        "samples",
        "samples/s",
        "vs 100",
        "B/checkpoint",
        "subj/ckpt",
        "B/subject open",
        "B/subject idle"
    );
    let codec = crate::wiring::codec(common, OutputFormat::Avro);
    let mut baseline: [Option<f64>; 3] = [None; 3];
    for sc in scenarios {
        let samples = if sc.busy { 40 * busy_minutes as usize * sc.endpoints.max(100_000) } else { sc.endpoints };
        for (m, mode) in MODES.into_iter().enumerate() {
            let (mut f, mut engine) = run_mode(&codec, spec, *sc, mode, samples)?;
            let ratio = match baseline[m] {
                None => {
                    baseline[m] = Some(f.rate);
                    1.0
                }
                Some(b) => f.rate / b,
            };
            // Restore the state as it stands, windows open, from both stores.
            let mut restored = None;
            if let (Mode::AtLeastOnce, true, Some(url)) = (mode, sc.endpoints >= 100_000, database_url) {
                // Topics of its own: the changelog holds this scenario only.
                let prefix = format!("bench-{}.", &uuid::Uuid::new_v4().simple().to_string()[..8]);
                crate::topics::admin::apply(
                    &common.kafka,
                    crate::topics::TopicCatalog::builtin().specs(),
                    &prefix,
                    false,
                )
                .await?;
                let group = format!("{prefix}restore-{}", sc.label().replace(' ', "-"));
                let mut pg = CheckpointStore::connect(url, &group).await?;
                let kafka = common.kafka.clone();
                let topic = format!("{prefix}{}", crate::topics::names::ANALYZE_CHANGELOG);
                let (times, back) =
                    tokio::task::spawn_blocking(move || -> Result<((Duration, usize, Duration), Engine)> {
                        let (pg_time, size) = restore_from(&mut pg, &engine, spec)?;
                        let outputs = crate::sinks::kafka::Outputs::new(&kafka, "analyze", |_| {})?;
                        let mut changelog = Changelog::new(&kafka, topic, outputs);
                        let (cl_time, _) = restore_from(&mut changelog, &engine, spec)?;
                        Ok(((pg_time, size, cl_time), engine))
                    })
                    .await
                    .map_err(|e| Error::Internal(format!("restore thread: {e}")))??;
                engine = back;
                restored = Some(times);
            }
            let open = (f.subjects_open, f.bytes_open);
            after_close(&mut engine, &mut f);
            println!(
                "{:<16} {:<14} {:>9} {:>12.0} {:>7.2}x {:>14.0} {:>12.0} {:>7.0} ({:>7}) {:>6} ({:>6})",
                sc.label(),
                mode.name(),
                f.samples,
                f.rate,
                ratio,
                f.bytes_per_checkpoint,
                f.subjects_per_checkpoint,
                open.1,
                open.0,
                if f.subjects_closed > 0 { format!("{:.0}", f.bytes_closed) } else { "-".into() },
                f.subjects_closed,
            );
            if let Some((pg_time, size, cl_time)) = restored {
                println!(
                    "  restore {} subjects ({:.1} MB): PostgreSQL (at-least-once) {:.2} s, changelog (exactly-once) \
                     {:.2} s (target <= 30 s)",
                    open.0,
                    size as f64 / 1e6,
                    pg_time.as_secs_f64(),
                    cl_time.as_secs_f64()
                );
            }
        }
    }
    if database_url.is_none() {
        println!("restore: not measured (needs --database-url / DATABASE_URL and the broker)");
    }
    Ok(())
}
