//! The `analyze` pipeline (DESIGN §2, §4): latency, feedback and decision
//! logs in; window stats, alerts and degradations out, Kafka to Kafka.
//!
//! Tasks: task `p` owns partition `p` of the latency topic, the feedback
//! topic and the internal `udo.analyze.decisions.v1`, which holds decision
//! logs re-keyed by component (they arrive on `udo.writes.v1` keyed by
//! project, but the calibration gap joins them with component-keyed
//! ratings). The `range` assignor gives partition `p` of every input to the
//! same member, so a task's inputs are always together.
//!
//! Delivery: outputs and DLQ records of a batch are acknowledged by the
//! broker before anything else happens; every `checkpoint_interval` the
//! engine state of each task is written to Postgres together with the input
//! offsets it covers, and only then are those offsets stored for commit. A
//! restart restores the state and resumes at the checkpointed offsets, so it
//! re-emits exactly the outputs since the checkpoint, with identical ids.

use super::runner::{self, Offsets, Stage, Tp};
use crate::codec::Codec;
use crate::config::AnalyzeSettings;
use crate::domain::engine::{Engine, EngineConfig, Input, Source, Stream, TaskState};
use crate::domain::{AlertStatus, DegradationKind, Event, Severity};
use crate::error::{Error, Result};
use crate::shutdown::Shutdown;
use crate::sinks::checkpoints::{Checkpoint, CheckpointStore};
use crate::sinks::dlq::{Dlq, Reason};
use crate::sinks::kafka::{Outgoing, future_record};
use crate::telemetry::Readiness;
use crate::telemetry::events::{
    AlertEmitted, AnalyzeProgress, CheckpointWritten, DegradationEmitted, LateEvent, RecordsProduced, SinkRetry,
    StateMachines, WindowsClosed,
};
use crate::topics::{TopicCatalog, names};
use futures_util::future::join_all;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use crate::pipeline::runner::Record;
use rdkafka::message::Message;
use rdkafka::producer::DeliveryFuture;
use rdkafka::producer::FutureProducer;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::runtime::Handle;

pub const PIPELINE: &str = "analyze";

/// Full topic names (with any prefix).
#[derive(Debug, Clone)]
pub struct AnalyzeTopics {
    pub latency: String,
    pub feedback: String,
    pub writes: String,
    pub decisions: String,
    pub windows: String,
    pub alerts: String,
    pub degradations: String,
    pub dlq: String,
}

impl AnalyzeTopics {
    pub fn with_prefix(prefix: &str) -> AnalyzeTopics {
        let t = |n: &str| format!("{prefix}{n}");
        AnalyzeTopics {
            latency: t(names::LATENCY),
            feedback: t(names::FEEDBACK),
            writes: t(names::WRITES),
            decisions: t(names::DECISIONS_BY_COMPONENT),
            windows: t(names::WINDOWS),
            alerts: t(names::ALERTS),
            degradations: t(names::DEGRADATIONS),
            dlq: t(names::DLQ),
        }
    }

    /// What the pipeline subscribes to.
    pub fn inputs(&self) -> Vec<String> {
        vec![self.latency.clone(), self.feedback.clone(), self.decisions.clone(), self.writes.clone()]
    }

    /// Inputs whose partition `p` belongs to task `p`.
    fn is_task_input(&self, topic: &str) -> bool {
        topic == self.latency || topic == self.feedback || topic == self.decisions
    }
}

/// A task's inputs, for idleness.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Latency,
    Feedback,
    /// Decision logs from this writes partition.
    Decisions(i32),
}

/// Header naming the `udo.writes.v1` partition a re-keyed decision came from
/// (its channel, for the ratings watermark).
pub const CHANNEL_HEADER: &str = "udo.analyze.channel";
/// Header with the decision's offset in that partition (deduplication).
pub const SOURCE_OFFSET_HEADER: &str = "udo.analyze.source-offset";

struct Task {
    engine: Engine,
    /// Next offset to ingest, per input topic of this task.
    next: BTreeMap<String, i64>,
    /// Wall clock of the last input per input kind (or of the assignment).
    last_input: BTreeMap<Kind, Instant>,
    dirty: bool,
}

pub struct AnalyzeStage {
    rt: Handle,
    engine_cfg: EngineConfig,
    settings: AnalyzeSettings,
    codec: Codec,
    topics: AnalyzeTopics,
    /// Records each topic may carry (contract names resolved to full names).
    allowed: HashMap<String, Vec<String>>,
    producer: FutureProducer,
    dlq: Dlq,
    store: CheckpointStore,
    tasks: BTreeMap<i32, Task>,
    /// Writes partitions: next offset whose decisions were forwarded.
    writes_next: HashMap<Tp, i64>,
    last_checkpoint: Instant,
    /// Records per runner batch, and when the last full batch arrived: while
    /// batches come full the consumer is catching up (a backfill), and a
    /// silent partition is merely not fetched yet, not idle.
    batch_size: usize,
    last_full_batch: Option<Instant>,
    /// Outputs sent and not yet acknowledged. Sending does not wait, so
    /// consumption runs on; the next checkpoint (and the writes offsets,
    /// held in `pending_writes` meanwhile) waits for all of them.
    in_flight: Vec<(Outgoing, DeliveryFuture)>,
    pending_writes: BTreeMap<Tp, i64>,
    /// Set when outputs of ingested records could not be delivered before
    /// shutdown: the state must not be checkpointed past them.
    unflushed: bool,
    shutdown: Shutdown,
    readiness: Readiness,
}

impl AnalyzeStage {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        rt: Handle,
        settings: AnalyzeSettings,
        codec: Codec,
        catalog: &TopicCatalog,
        topics: AnalyzeTopics,
        kafka: &crate::config::KafkaConfig,
        store: CheckpointStore,
        batch_size: usize,
        shutdown: Shutdown,
        readiness: Readiness,
    ) -> Result<AnalyzeStage> {
        let spec = settings.window_spec().map_err(Error::Config)?;
        let engine_cfg = EngineConfig {
            spec,
            min_samples: settings.min_samples,
            min_ratings: settings.min_ratings,
            thresholds: settings.thresholds.clone(),
            source: "udo-analyze".into(),
            decision_channels: catalog.get(names::WRITES).map_or(1, |t| t.partitions),
        };
        let mut allowed = HashMap::new();
        for (full, contract) in [
            (&topics.latency, names::LATENCY),
            (&topics.feedback, names::FEEDBACK),
            (&topics.writes, names::WRITES),
            (&topics.decisions, names::DECISIONS_BY_COMPONENT),
            (&topics.windows, names::WINDOWS),
            (&topics.alerts, names::ALERTS),
            (&topics.degradations, names::DEGRADATIONS),
        ] {
            allowed.insert(full.clone(), catalog.records(contract).map_err(Error::Config)?.to_vec());
        }
        let producer: FutureProducer = crate::sinks::kafka::producer_config_with(kafka, |c| {
            c.set("client.id", "udo-analyze");
        })
        .create()
            .map_err(Error::kafka("create analyzer producer"))?;
        let dlq = Dlq::new(kafka, topics.dlq.clone(), PIPELINE)?;
        Ok(AnalyzeStage {
            rt,
            engine_cfg,
            settings,
            codec,
            topics,
            allowed,
            producer,
            dlq,
            store,
            tasks: BTreeMap::new(),
            writes_next: HashMap::new(),
            last_checkpoint: Instant::now(),
            batch_size,
            last_full_batch: None,
            in_flight: Vec::new(),
            pending_writes: BTreeMap::new(),
            unflushed: false,
            shutdown,
            readiness,
        })
    }

    fn config_tag(&self) -> String {
        let s = self.engine_cfg.spec;
        format!("size={} slide={} lateness={}", s.size_ms, s.slide_ms, s.allowed_lateness_ms)
    }

    fn decode(&self, msg: &Record<'_>) -> std::result::Result<Event, Reason> {
        let allowed = self.allowed.get(msg.topic()).map(Vec::as_slice).unwrap_or(&[]);
        let payload = msg.payload().unwrap_or(&[]);
        self.codec
            .decode(allowed, payload)
            .map_err(|e| Reason { class: e.class.as_str().into(), message: e.to_string() })
    }

    /// Encodes outputs for their topics, keyed by subject.
    fn outgoing(&self, events: &[Event]) -> Result<Vec<Outgoing>> {
        let mut out = Vec::with_capacity(events.len());
        for e in events {
            let topic = match e {
                Event::WindowStats(_) => &self.topics.windows,
                Event::Alert(a) => {
                    AlertEmitted {
                        rule: &a.rule,
                        severity: match a.severity {
                            Severity::Warning => "warning",
                            Severity::Critical => "critical",
                        },
                        status: match a.status {
                            AlertStatus::Firing => "firing",
                            AlertStatus::Resolved => "resolved",
                        },
                        subject: &a.subject,
                    }
                    .emit();
                    &self.topics.alerts
                }
                Event::Degradation(d) => {
                    DegradationEmitted {
                        kind: match d.kind {
                            DegradationKind::Degraded => "degraded",
                            DegradationKind::Recovered => "recovered",
                        },
                        component: &d.component,
                    }
                    .emit();
                    &self.topics.degradations
                }
                other => return Err(Error::Failed(format!("analyzer cannot emit a {}", other.record_name()))),
            };
            let payload = self.codec.encode(topic, &self.allowed[topic], e)?;
            out.push(Outgoing {
                topic: topic.clone(),
                key: e.partition_key().as_bytes().to_vec(),
                payload,
                headers: Vec::new(),
            });
        }
        Ok(out)
    }

    /// Sends outputs without waiting for acknowledgements (see `in_flight`).
    fn send(&mut self, records: Vec<Outgoing>) -> Result<()> {
        for r in records {
            loop {
                match self.producer.send_result(future_record(&r)) {
                    Ok(delivery) => {
                        self.in_flight.push((r, delivery));
                        break;
                    }
                    // The local queue is full: wait for what is in flight.
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => self.flush()?,
                    Err((e, _)) => return Err(Error::Kafka { op: format!("produce to {}", r.topic), source: e }),
                }
            }
        }
        Ok(())
    }

    /// Waits until the broker acknowledged every output in flight, resending
    /// failures with backoff: records already ingested cannot be handed back.
    /// `Err` only on shutdown, which leaves the state unflushed (never
    /// checkpointed past the lost outputs).
    fn flush(&mut self) -> Result<()> {
        let mut backoff = runner::backoff(Duration::from_millis(100), Duration::from_secs(5));
        let mut attempt = 0;
        loop {
            let pending = std::mem::take(&mut self.in_flight);
            if pending.is_empty() {
                return Ok(());
            }
            attempt += 1;
            let results = self.rt.block_on(join_all(pending.into_iter().map(|(r, f)| async move { (r, f.await) })));
            let mut delivered: BTreeMap<String, u64> = BTreeMap::new();
            let mut failed = Vec::new();
            let mut error = String::new();
            for (r, result) in results {
                match result {
                    Ok(Ok(_)) => *delivered.entry(r.topic).or_default() += 1,
                    Ok(Err((e, _))) => {
                        error = format!("deliver to {}: {e}", r.topic);
                        failed.push(r);
                    }
                    Err(_) => {
                        error = format!("delivery to {} was cancelled", r.topic);
                        failed.push(r);
                    }
                }
            }
            for (topic, count) in delivered {
                RecordsProduced { pipeline: PIPELINE, topic: &topic, count }.emit();
            }
            if failed.is_empty() {
                return Ok(());
            }
            if self.shutdown.requested() {
                self.unflushed = true;
                return Err(Error::Failed(format!("{} outputs undelivered at shutdown: {error}", failed.len())));
            }
            let delay = backoff.next().unwrap_or(Duration::from_secs(5));
            SinkRetry { pipeline: PIPELINE, sink: "kafka", attempt, delay, error: &error }.emit();
            std::thread::sleep(delay);
            self.send(failed)?;
        }
    }

    /// Dead letters are few: sent and awaited at once.
    fn dead_letters(&mut self, dead: &[(&Record<'_>, Reason)]) -> Result<()> {
        if dead.is_empty() {
            return Ok(());
        }
        let mut backoff = runner::backoff(Duration::from_millis(100), Duration::from_secs(5));
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.rt.block_on(self.dlq.send_all(dead)) {
                Ok(()) => return Ok(()),
                Err(e) if self.shutdown.requested() => {
                    self.unflushed = true;
                    return Err(e);
                }
                Err(e) => {
                    let delay = backoff.next().unwrap_or(Duration::from_secs(5));
                    SinkRetry { pipeline: PIPELINE, sink: "kafka", attempt, delay, error: &e.to_string() }.emit();
                    std::thread::sleep(delay);
                }
            }
        }
    }

    fn close_tasks(&mut self, which: impl IntoIterator<Item = i32>, out: &mut Vec<Event>) {
        for p in which {
            if let Some(task) = self.tasks.get_mut(&p) {
                let c = task.engine.close(out);
                for (kind, count) in [
                    ("component", c.component_windows),
                    ("endpoint", c.endpoint_windows),
                    ("uncertainty", c.uncertainty_windows),
                ] {
                    if count > 0 {
                        WindowsClosed { kind, count }.emit();
                    }
                }
            }
        }
    }

    /// Writes the checkpoints of `which` tasks (dirty ones) and returns the
    /// offsets they cover.
    fn checkpoint(&mut self, which: &[i32]) -> Offsets {
        if self.unflushed || self.flush().is_err() {
            return Vec::new();
        }
        // Everything sent so far is acknowledged: the forwarded decisions'
        // writes offsets may be stored.
        let mut done: Offsets = std::mem::take(&mut self.pending_writes).into_iter().collect();
        let mut cps = Vec::new();
        for p in which {
            let Some(task) = self.tasks.get(p) else { continue };
            if !task.dirty {
                continue;
            }
            match postcard::to_stdvec(task.engine.state()) {
                Ok(state) => {
                    cps.push(Checkpoint { task: *p, state, offsets: task.next.clone(), config: self.config_tag() })
                }
                Err(e) => tracing::error!(pipeline = PIPELINE, task = p, "cannot encode state: {e}"),
            }
        }
        self.last_checkpoint = Instant::now();
        if cps.is_empty() {
            return done;
        }
        let started = Instant::now();
        match self.rt.block_on(self.store.save(&cps)) {
            Ok(()) => {
                let bytes = cps.iter().map(|c| c.state.len()).sum();
                CheckpointWritten { tasks: cps.len(), bytes, elapsed: started.elapsed() }.emit();
                self.readiness.set("analyze.postgres", Ok(()));
                let mut offsets = std::mem::take(&mut done);
                for c in &cps {
                    if let Some(task) = self.tasks.get_mut(&c.task) {
                        task.dirty = false;
                    }
                    offsets.extend(c.offsets.iter().map(|(topic, off)| (Tp::new(topic, c.task), *off)));
                }
                offsets
            }
            Err(e) => {
                // Nothing is lost: offsets stay where the last checkpoint put them.
                tracing::warn!(pipeline = PIPELINE, "checkpoint failed, retrying at the next interval: {e}");
                self.readiness.set("analyze.postgres", Err(e.to_string()));
                done
            }
        }
    }
}

/// The writes partition and offset a re-keyed decision came from. Written
/// without the headers (by another producer), it is its own channel -1 with
/// its own offset.
fn channel_of(msg: &Record<'_>) -> (i32, i64) {
    use rdkafka::message::Headers;
    let header = |name: &str| -> Option<i64> {
        let h = msg.headers()?.iter().find(|h| h.key == name)?;
        std::str::from_utf8(h.value?).ok()?.parse().ok()
    };
    match (header(CHANNEL_HEADER), header(SOURCE_OFFSET_HEADER)) {
        (Some(c), Some(o)) => (c as i32, o),
        _ => (-1, msg.offset()),
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

impl Stage for AnalyzeStage {
    fn assigned(&mut self, parts: &[Tp]) -> Result<Offsets> {
        let tasks: BTreeSet<i32> =
            parts.iter().filter(|tp| self.topics.is_task_input(&tp.topic)).map(|tp| tp.partition).collect();
        let wanted: Vec<i32> = tasks.iter().copied().filter(|p| !self.tasks.contains_key(p)).collect();
        let loaded = self.rt.block_on(self.store.load(&wanted))?;
        self.readiness.set("analyze.postgres", Ok(()));
        let mut by_task: HashMap<i32, Checkpoint> = loaded.into_iter().map(|c| (c.task, c)).collect();
        let tag = self.config_tag();
        for p in wanted {
            let now = Instant::now();
            let mut task = Task {
                engine: Engine::new(self.engine_cfg.clone()),
                next: BTreeMap::new(),
                last_input: [(Kind::Latency, now), (Kind::Feedback, now)]
                    .into_iter()
                    .chain((0..self.engine_cfg.decision_channels).map(|c| (Kind::Decisions(c), now)))
                    .collect(),
                dirty: false,
            };
            if let Some(cp) = by_task.remove(&p) {
                let restored = if cp.config != tag {
                    Err(format!("checkpoint was built with {} but {tag} is configured", cp.config))
                } else {
                    postcard::from_bytes::<TaskState>(&cp.state)
                        .map_err(|e| format!("undecodable state ({e})"))
                        .and_then(|s| Engine::restore(self.engine_cfg.clone(), s))
                };
                match restored {
                    Ok(engine) => {
                        tracing::info!(pipeline = PIPELINE, task = p, offsets = ?cp.offsets, "restored checkpoint");
                        task.engine = engine;
                    }
                    // Windows of another shape cannot be continued; the
                    // offsets still hold, so nothing is re-emitted twice.
                    Err(why) => tracing::warn!(pipeline = PIPELINE, task = p, "starting with empty windows: {why}"),
                }
                task.next = cp.offsets;
            }
            self.tasks.insert(p, task);
        }
        let mut offsets = Vec::new();
        for tp in parts {
            if let Some(off) = self.tasks.get(&tp.partition).and_then(|t| t.next.get(&tp.topic)) {
                if self.topics.is_task_input(&tp.topic) {
                    offsets.push((tp.clone(), *off));
                }
            }
        }
        Ok(offsets)
    }

    fn revoked(&mut self, parts: &[Tp]) -> Offsets {
        let tasks: Vec<i32> = parts
            .iter()
            .filter(|tp| self.topics.is_task_input(&tp.topic))
            .map(|tp| tp.partition)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let offsets = self.checkpoint(&tasks);
        for p in &tasks {
            self.tasks.remove(p);
        }
        for tp in parts {
            self.writes_next.remove(tp);
        }
        offsets
    }

    fn process(&mut self, batch: &[Record<'_>]) -> Result<Offsets> {
        let mut dead: Vec<(&Record<'_>, Reason)> = Vec::new();
        let mut forward: Vec<Outgoing> = Vec::new();
        let mut writes_done: Vec<(Tp, i64)> = Vec::new();
        let mut touched = BTreeSet::new();
        let now = Instant::now();
        if batch.len() >= self.batch_size {
            self.last_full_batch = Some(now);
        }
        for msg in batch {
            let (topic, p, offset) = (msg.topic(), msg.partition(), msg.offset());
            if topic == self.topics.writes {
                let tp = Tp::new(topic, p);
                if offset < self.writes_next.get(&tp).copied().unwrap_or(0) {
                    continue;
                }
                match self.decode(msg) {
                    Ok(Event::DecisionLog(d)) => forward.push(Outgoing {
                        topic: self.topics.decisions.clone(),
                        key: d.component.into_bytes(),
                        payload: msg.payload().unwrap_or(&[]).to_vec(),
                        headers: vec![
                            (CHANNEL_HEADER.into(), p.to_string().into_bytes()),
                            (SOURCE_OFFSET_HEADER.into(), offset.to_string().into_bytes()),
                        ],
                    }),
                    Ok(_) => {}
                    Err(reason) => dead.push((msg, reason)),
                }
                writes_done.push((tp, offset + 1));
                continue;
            }
            let decoded = self.decode(msg);
            let Some(task) = self.tasks.get_mut(&p) else {
                tracing::warn!(pipeline = PIPELINE, topic, partition = p, "record of an unassigned task skipped");
                continue;
            };
            match task.next.get_mut(topic) {
                Some(next) if offset < *next => continue, // already ingested (a retried batch)
                Some(next) => *next = offset + 1,
                None => {
                    task.next.insert(topic.to_string(), offset + 1);
                }
            }
            task.dirty = true;
            touched.insert(p);
            let event = match decoded {
                Ok(e) => e,
                Err(reason) => {
                    dead.push((msg, reason));
                    continue;
                }
            };
            let (input, kind) = match &event {
                Event::LatencySample(s) => (Input::Latency(s), Kind::Latency),
                Event::FeedbackRating(r) => (Input::Rating(r), Kind::Feedback),
                Event::DecisionLog(d) => {
                    let (channel, source_offset) = channel_of(msg);
                    (Input::Decision(d, channel, source_offset), Kind::Decisions(channel))
                }
                other => {
                    let message = format!("{} is not an analyzer input", other.record_name());
                    dead.push((msg, Reason { class: "wrong_schema".into(), message }));
                    continue;
                }
            };
            task.last_input.insert(kind, now);
            if let Err(late) = task.engine.ingest(input) {
                LateEvent { topic }.emit();
                dead.push((msg, Reason { class: "late".into(), message: late.to_string() }));
            }
        }
        let mut events = Vec::new();
        self.close_tasks(touched, &mut events);
        let mut records = forward;
        records.extend(self.outgoing(&events)?);
        self.send(records)?;
        self.dead_letters(&dead)?;
        for (tp, off) in writes_done {
            self.writes_next.insert(tp.clone(), off);
            self.pending_writes.insert(tp, off);
        }
        Ok(Vec::new())
    }

    fn tick(&mut self) -> Result<Offsets> {
        // Idle streams advance by wall clock so their windows still close;
        // not while catching up, when silence only means "not fetched yet".
        let idle = self.settings.idle_timeout;
        let catching_up = self.last_full_batch.is_some_and(|t| t.elapsed() < idle);
        let mut advanced = Vec::new();
        for (p, task) in self.tasks.iter_mut().filter(|_| !catching_up) {
            let silent = |k: &Kind| task.last_input.get(k).map_or(Duration::ZERO, Instant::elapsed);
            let lat = silent(&Kind::Latency);
            // A silent input stops holding the ratings watermark back...
            let mut ratings_quiet = Duration::MAX;
            for kind in task.last_input.keys() {
                let source = match kind {
                    Kind::Latency => continue,
                    Kind::Feedback => Source::Feedback,
                    Kind::Decisions(c) => Source::Decisions(*c),
                };
                let quiet = silent(kind);
                ratings_quiet = ratings_quiet.min(quiet);
                task.engine.set_idle(source, quiet >= idle);
            }
            // ...and a silent stream advances by wall clock.
            for (stream, quiet) in [(Stream::Latency, lat), (Stream::Ratings, ratings_quiet)] {
                if quiet >= idle && task.engine.watermark(stream).is_some() {
                    task.engine.advance_idle(stream, quiet.as_millis() as i64);
                    advanced.push(*p);
                }
            }
        }
        advanced.dedup();
        if !advanced.is_empty() {
            let mut events = Vec::new();
            self.close_tasks(advanced.iter().copied(), &mut events);
            if !events.is_empty() {
                for p in &advanced {
                    if let Some(t) = self.tasks.get_mut(p) {
                        t.dirty = true;
                    }
                }
                let records = self.outgoing(&events)?;
                self.send(records)?;
            }
        }
        let (mut degraded, mut firing, mut keys) = (0, 0, 0);
        let mut watermark: Option<i64> = None;
        for t in self.tasks.values() {
            let (d, f) = t.engine.states();
            degraded += d;
            firing += f;
            keys += t.engine.active_keys();
            if let Some(w) = t.engine.watermark(Stream::Latency) {
                watermark = Some(watermark.map_or(w, |m| m.min(w)));
            }
        }
        StateMachines { degraded_components: degraded, firing_alerts: firing, active_keys: keys }.emit();
        AnalyzeProgress {
            checkpoint_age: self.last_checkpoint.elapsed(),
            processing_lag: watermark.map(|w| Duration::from_millis((now_ms() - w).max(0) as u64)),
        }
        .emit();
        if self.last_checkpoint.elapsed() >= self.settings.checkpoint_interval {
            let all: Vec<i32> = self.tasks.keys().copied().collect();
            return Ok(self.checkpoint(&all));
        }
        Ok(Vec::new())
    }

    fn finish(&mut self) -> Offsets {
        let all: Vec<i32> = self.tasks.keys().copied().collect();
        self.checkpoint(&all)
    }
}
