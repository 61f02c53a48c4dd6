//! The `analyze` pipeline (design §2, §4): latency, feedback and decision
//! logs in; window stats, alerts and degradations out, Kafka to Kafka.
//!
//! Tasks: task `p` owns partition `p` of the latency topic, the feedback
//! topic and the internal `udo.analyze.decisions.v1`, which holds decision
//! logs re-keyed by component (they arrive on `udo.writes.v1` keyed by
//! project, but the calibration gap joins them with component-keyed
//! ratings). The `range` assignor gives partition `p` of every input to the
//! same member, so a task's inputs are always together.
//!
//! Delivery: outputs are sent without waiting; every `checkpoint_interval`
//! they are all awaited, then the engine state of each task is written to
//! Postgres together with the input offsets it covers, and only then are
//! those offsets stored for commit. An output the broker refused is kept
//! and resent before any checkpoint. A restart restores the state and
//! resumes at the checkpointed offsets, so it re-emits exactly the outputs
//! since the checkpoint, with identical ids.

use super::batch::{Batch, Decoder, Offsets, Reason, Rec, Reject, Tp};
use super::commit::{GroupCommit, Transactional};
use super::runner::Stage;
use crate::config::{AnalyzeSettings, Processing};
use crate::domain::engine::{Engine, EngineConfig, Input, Refused, Source, Stream, SubjectEntry, SubjectKey, TaskMeta};
use crate::domain::partitioner::partition_of;
use crate::domain::{DegradationKind, Event};
use crate::error::{Error, Result};
use crate::sinks::changelog::Changelog;
use crate::sinks::checkpoints::{Checkpoint, CheckpointStore, Checkpoints, Restored};
use crate::sinks::kafka::{Outgoing, Outputs, TxnProducer};
use crate::telemetry::Readiness;
use crate::telemetry::events::{
    AlertEmitted, AnalyzeProgress, CheckpointWritten, DegradationEmitted, ErrorCounted, LateEvent, RecordsRouted,
    StateMachines, StateRestored, StateSize, SubjectRejected, SubjectsExpired, WindowsClosed,
};
use crate::topics::{TopicCatalog, Topics, names};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

pub const PIPELINE: &str = "analyze";

/// How often the state gauges are refreshed.
const GAUGE_INTERVAL: Duration = Duration::from_secs(5);

/// Builds the analyzer for its processing guarantee and starts it:
/// at-least-once checkpoints to PostgreSQL and commits through the group;
/// exactly-once commits outputs, state (the changelog topic) and input
/// offsets in one Kafka transaction every `commit_interval`, and needs no
/// PostgreSQL.
pub(crate) async fn assemble(
    common: &crate::config::CommonArgs,
    opts: &super::RunOptions,
    group: String,
    shutdown: crate::shutdown::Shutdown,
    readiness: Readiness,
) -> Result<tokio::task::JoinHandle<Result<()>>> {
    let topics = Topics::with_prefix(&common.topic_prefix);
    // The internal topics it writes to (declared in topics/, made by `topics apply`).
    let mut internal = vec![topics.decisions.clone(), topics.routed.clone()];
    if opts.settings.analyze.processing == Processing::ExactlyOnce {
        internal.push(common.topic(names::ANALYZE_CHANGELOG));
    }
    let kafka = common.kafka.clone();
    tokio::task::spawn_blocking(move || crate::sources::kafka::require_topics(&kafka, &internal))
        .await
        .map_err(|e| Error::Internal(format!("topic check: {e}")))??;
    let decoder = crate::wiring::decoder(common, opts.output_format);
    let mut settings = opts.settings.analyze.clone();
    let deployment = common.deployment();
    let retry = super::retry::RetryPolicy::of(&opts.settings);
    let cfg = super::runner_config(
        PIPELINE,
        common,
        &opts.settings,
        &decoder,
        group.clone(),
        topics.analyze_inputs(),
        crate::sources::kafka::Assignor::Range,
    );
    let catalog = crate::topics::TopicCatalog::builtin();
    match settings.processing {
        Processing::AtLeastOnce => {
            let url = super::need(
                &opts.database_url,
                "--database-url / DATABASE_URL (checkpoints)",
                super::Pipeline::Analyze,
            )?;
            let store = CheckpointStore::connect(url, &group).await?;
            let outputs = Outputs::new(&common.kafka, PIPELINE, |_| {})?;
            let stage = AnalyzeStage::new(settings, decoder, &catalog, topics, outputs, store, readiness.clone())?
                .in_deployment(deployment);
            let parts = (cfg, stage, GroupCommit::new(PIPELINE));
            Ok(super::launch(retry, shutdown, readiness, super::once(parts)))
        }
        Processing::ExactlyOnce => {
            let id = settings.transactional_id.clone().unwrap_or_else(|| format!("{group}-{}", host_name()));
            // State and offsets commit together, every commit interval.
            settings.checkpoint_interval = settings.commit_interval;
            let kafka = common.kafka.clone();
            let changelog_topic = common.topic(names::ANALYZE_CHANGELOG);
            let (rd, sd) = (readiness.clone(), shutdown.clone());
            // Built again with a new producer after a fatal producer error.
            let build = move || -> Result<super::Parts<AnalyzeStage<Changelog>, Transactional>> {
                let producer = TxnProducer::new(&kafka, PIPELINE, &id)?;
                let changelog = Changelog::new(&kafka, changelog_topic.clone(), producer.outputs(PIPELINE));
                let outputs = producer.outputs(PIPELINE);
                let stage = AnalyzeStage::new(
                    settings.clone(),
                    decoder.clone(),
                    &catalog,
                    topics.clone(),
                    outputs,
                    changelog,
                    rd.clone(),
                )?
                .in_deployment(deployment);
                Ok((cfg.clone(), stage, Transactional::new(PIPELINE, producer, sd.clone(), retry)))
            };
            Ok(super::launch(retry, shutdown, readiness, build))
        }
    }
}

/// This machine's name (the default transactional id's suffix).
fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "udo-stream".into())
}

/// A task's inputs, for idleness.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Latency,
    Feedback,
    /// Decision logs from this writes partition.
    Decisions(i32),
    /// Latency samples routed here from this latency partition.
    RoutedLatency(i32),
    /// Ratings routed here from this feedback partition.
    RoutedRating(i32),
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
    /// Stored subjects of a state that could not be continued: the next
    /// checkpoint deletes them.
    stale: Vec<Vec<u8>>,
}

pub struct AnalyzeStage<C: Checkpoints = CheckpointStore> {
    engine_cfg: EngineConfig,
    settings: AnalyzeSettings,
    decoder: Decoder,
    topics: Topics,
    /// Outputs are sent without waiting, so consumption runs on; the next
    /// checkpoint (and the writes offsets, held in `pending_writes`
    /// meanwhile) waits for all of them.
    outputs: Outputs,
    store: C,
    tasks: BTreeMap<i32, Task>,
    /// Writes partitions: next offset whose decisions were forwarded.
    writes_next: HashMap<Tp, i64>,
    last_checkpoint: Instant,
    /// When the last full batch arrived: while batches come full the
    /// consumer is catching up (a backfill), and a silent partition is
    /// merely not fetched yet, not idle.
    last_full_batch: Option<Instant>,
    /// Writes partitions done by the batch being written (moved to
    /// `pending_writes` on commit).
    writes_done: Vec<(Tp, i64)>,
    pending_writes: BTreeMap<Tp, i64>,
    /// Partitions of the latency and feedback topics: the owner of a
    /// component is Kafka's default partitioner's choice among them.
    input_partitions: i32,
    readiness: Readiness,
    /// When the state gauges were last set (they walk every subject).
    last_gauges: Instant,
}

impl<C: Checkpoints> AnalyzeStage<C> {
    /// Output ids in this deployment's namespace.
    pub fn in_deployment(mut self, deployment: crate::domain::rules::Deployment) -> Self {
        self.engine_cfg.deployment = deployment;
        self
    }

    #[allow(clippy::too_many_arguments)]
    pub fn new(
        settings: AnalyzeSettings,
        decoder: Decoder,
        catalog: &TopicCatalog,
        topics: Topics,
        outputs: Outputs,
        store: C,
        readiness: Readiness,
    ) -> Result<AnalyzeStage<C>> {
        let spec = settings.window_spec().map_err(Error::Config)?;
        let engine_cfg = EngineConfig {
            spec,
            min_samples: settings.min_samples,
            min_ratings: settings.min_ratings,
            thresholds: settings.thresholds.clone(),
            source: "udo-analyze".into(),
            decision_channels: catalog.get(names::WRITES).map_or(1, |t| t.partitions),
            state_ttl_ms: settings.state_ttl.as_millis() as i64,
            deployment: Default::default(),
        };
        Ok(AnalyzeStage {
            engine_cfg,
            settings,
            decoder,
            topics,
            outputs,
            store,
            tasks: BTreeMap::new(),
            writes_next: HashMap::new(),
            last_checkpoint: Instant::now(),
            last_full_batch: None,
            writes_done: Vec::new(),
            pending_writes: BTreeMap::new(),
            input_partitions: catalog.get(names::LATENCY).map_or(1, |t| t.partitions),
            readiness,
            last_gauges: Instant::now(),
        })
    }

    /// The state layout and window shape a checkpoint is built with.
    fn config_tag(&self) -> String {
        let s = self.engine_cfg.spec;
        format!("{STATE_LAYOUT} size={} slide={} lateness={}", s.size_ms, s.slide_ms, s.allowed_lateness_ms)
    }

    /// Encodes outputs for their topics, keyed by subject.
    fn outgoing(&self, events: &[Event]) -> Result<Vec<Outgoing>> {
        let mut out = Vec::with_capacity(events.len());
        for e in events {
            let topic = match e {
                Event::WindowStats(w) => {
                    crate::telemetry::components::window(w);
                    &self.topics.windows
                }
                Event::Alert(a) => {
                    AlertEmitted {
                        rule: &a.rule,
                        severity: a.severity.label(),
                        status: a.status.label(),
                        subject: &a.subject,
                    }
                    .emit();
                    &self.topics.alerts
                }
                Event::Degradation(d) => {
                    DegradationEmitted { kind: d.kind.label(), component: &d.component }.emit();
                    crate::telemetry::components::health(&d.component, d.kind == DegradationKind::Degraded);
                    &self.topics.degradations
                }
                other => return Err(Error::Internal(format!("analyzer cannot emit a {}", other.record_name()))),
            };
            let payload = self.decoder.encode(topic, e)?;
            out.push(Outgoing {
                partition: None,
                topic: topic.clone(),
                key: e.partition_key().as_bytes().to_vec(),
                payload: Some(payload),
                headers: Vec::new(),
            });
        }
        Ok(out)
    }

    fn close_tasks(&mut self, which: impl IntoIterator<Item = i32>, out: &mut Vec<Event>) {
        for p in which {
            if let Some(task) = self.tasks.get_mut(&p) {
                let c = task.engine.close(out);
                if c.expired_subjects > 0 {
                    SubjectsExpired { count: c.expired_subjects }.emit();
                }
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
    /// offsets they cover; first every output sent so far must be
    /// acknowledged.
    fn checkpoint(&mut self, which: &[i32]) -> Result<Offsets> {
        self.outputs.flush()?;
        // Everything sent so far is acknowledged: the forwarded decisions'
        // writes offsets may be stored.
        let mut offsets: Offsets = self.pending_writes.iter().map(|(tp, o)| (tp.clone(), *o)).collect();
        let mut cps = Vec::new();
        let tag = self.config_tag();
        for p in which {
            let Some(task) = self.tasks.get(p) else { continue };
            let changes = task.engine.changes();
            if !task.dirty && changes.put.is_empty() && changes.delete.is_empty() && task.stale.is_empty() {
                continue;
            }
            // Only the subjects changed or removed since the last checkpoint.
            let mut cp = Checkpoint {
                task: *p,
                meta: encode(&task.engine.meta(), *p)?,
                offsets: task.next.clone(),
                config: tag.clone(),
                put: Vec::with_capacity(changes.put.len()),
                delete: task.stale.clone(),
            };
            for k in &changes.delete {
                cp.delete.push(encode(k, *p)?);
            }
            for (k, v) in &changes.put {
                cp.put.push((encode(k, *p)?, encode(v, *p)?));
            }
            cps.push(cp);
        }
        if !cps.is_empty() {
            let started = Instant::now();
            let saved = self.store.save(&cps);
            self.readiness.set("analyze.checkpoints", saved.as_ref().map(|_| ()).map_err(|e| e.to_string()));
            saved?;
            let bytes = cps.iter().map(Checkpoint::bytes).sum();
            let subjects = cps.iter().map(|c| c.put.len() + c.delete.len()).sum();
            CheckpointWritten { tasks: cps.len(), subjects, bytes, elapsed: started.elapsed() }.emit();
            for c in cps {
                if let Some(task) = self.tasks.get_mut(&c.task) {
                    task.dirty = false;
                    task.stale.clear();
                    task.engine.mark_clean();
                }
                offsets.extend(c.offsets.into_iter().map(|(topic, off)| (Tp::new(topic, c.task), off)));
            }
        }
        self.pending_writes.clear();
        self.last_checkpoint = Instant::now();
        Ok(offsets)
    }
}

/// Layout of the stored state (in the checkpoint's config tag): keyed,
/// one entry per subject. A checkpoint of another layout is not continued.
const STATE_LAYOUT: &str = "keyed-v2";

fn encode<T: serde::Serialize + ?Sized>(value: &T, task: i32) -> Result<Vec<u8>> {
    postcard::to_stdvec(value).map_err(|e| Error::Internal(format!("cannot encode the state of task {task}: {e}")))
}

/// The engine a checkpoint holds.
fn restore(cfg: EngineConfig, cp: &Restored) -> std::result::Result<Engine, String> {
    let meta: TaskMeta = postcard::from_bytes(&cp.meta).map_err(|e| format!("undecodable task meta ({e})"))?;
    let mut entries = Vec::with_capacity(cp.entries.len());
    for (k, v) in &cp.entries {
        let key: SubjectKey = postcard::from_bytes(k).map_err(|e| format!("undecodable subject key ({e})"))?;
        let entry: SubjectEntry =
            postcard::from_bytes(v).map_err(|e| format!("undecodable entry of subject {key:?} ({e})"))?;
        entries.push((key, entry));
    }
    Engine::restore(cfg, meta, entries)
}

/// Why a record for a new subject is refused past the bound.
fn cardinality_message(max: usize) -> String {
    format!(
        "a new subject would exceed analyze.max_subjects ({max} subjects held by this instance): subjects already \
         held go on, new ones are refused until some expire (analyze.state_ttl); raise analyze.max_subjects if \
         this machine has the memory (about 8 KB per busy subject), or add instances"
    )
}

/// Why an event from the future is refused, with readable times.
fn future_message(t: i64, now_ms: i64, skew: Duration) -> String {
    let at = |ms: i64| {
        let d = std::time::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
        humantime::format_rfc3339_millis(d).to_string()
    };
    let ahead = Duration::from_millis((t - now_ms).max(0) as u64);
    format!(
        "field `occurred_at`: {} is {} ahead of this host's clock ({}), more than analyze.max_future_skew ({}): \
         a producer clock or unit mistake would move the watermark and make every later record late; fix the \
         producer's clock, or raise analyze.max_future_skew",
        at(t),
        humantime::format_duration(Duration::from_secs(ahead.as_secs())),
        at(now_ms),
        humantime::format_duration(skew)
    )
}

/// The writes partition and offset a re-keyed decision came from. Written
/// without the headers (by another producer), it is its own channel -1 with
/// its own offset.
fn channel_of(rec: &Rec<'_>) -> (i32, i64) {
    let header = |name: &str| -> Option<i64> { std::str::from_utf8(rec.header(name)?).ok()?.parse().ok() };
    match (header(CHANNEL_HEADER), header(SOURCE_OFFSET_HEADER)) {
        (Some(c), Some(o)) => (c as i32, o),
        _ => (-1, rec.offset),
    }
}

impl<C: Checkpoints> Stage for AnalyzeStage<C> {
    fn assigned(&mut self, parts: &[Tp]) -> Result<Offsets> {
        let tasks: BTreeSet<i32> =
            parts.iter().filter(|tp| self.topics.is_task_input(&tp.topic)).map(|tp| tp.partition).collect();
        let wanted: Vec<i32> = tasks.iter().copied().filter(|p| !self.tasks.contains_key(p)).collect();
        let started = Instant::now();
        let loaded = self.store.load(&wanted)?;
        self.readiness.set("analyze.checkpoints", Ok(()));
        let read = loaded.iter().map(|r| r.entries.len()).sum::<usize>();
        let bytes = loaded.iter().flat_map(|r| &r.entries).map(|(k, v)| k.len() + v.len()).sum::<usize>();
        let mut by_task: HashMap<i32, Restored> = loaded.into_iter().map(|c| (c.task, c)).collect();
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
                stale: Vec::new(),
            };
            if let Some(cp) = by_task.remove(&p) {
                let restored = if !cp.config.starts_with(STATE_LAYOUT) {
                    Err(format!("checkpoint is of an older state layout ({})", cp.config))
                } else if cp.config != tag {
                    Err(format!("checkpoint was built with {} but {tag} is configured", cp.config))
                } else {
                    restore(self.engine_cfg.clone(), &cp)
                };
                match restored {
                    Ok(mut engine) => {
                        tracing::info!(
                            pipeline = PIPELINE,
                            task = p,
                            subjects = engine.subjects(),
                            offsets = ?cp.offsets,
                            "restored checkpoint"
                        );
                        // A state from before future event times were refused.
                        let limit = crate::now_ms() + self.settings.max_future_skew.as_millis() as i64;
                        let dropped = engine.forget_future(limit);
                        if dropped > 0 {
                            tracing::warn!(
                                pipeline = PIPELINE,
                                task = p,
                                panes = dropped,
                                "the restored state held event times beyond analyze.max_future_skew: dropped them, \
                                 the watermark is back at this host's clock"
                            );
                        }
                        task.engine = engine;
                    }
                    // Windows of another shape cannot be continued; the
                    // offsets still hold, so nothing is re-emitted twice.
                    // The stored subjects go with the next checkpoint.
                    Err(why) => {
                        tracing::warn!(pipeline = PIPELINE, task = p, "starting with empty windows: {why}");
                        task.stale = cp.entries.into_iter().map(|(k, _)| k).collect();
                        task.dirty = true;
                    }
                }
                task.next = cp.offsets;
            }
            self.tasks.insert(p, task);
        }
        if read > 0 {
            StateRestored { tasks: by_task.len().max(1), subjects: read, bytes, elapsed: started.elapsed() }.emit();
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
        let offsets = self.checkpoint(&tasks).unwrap_or_else(|e| {
            // The next owner resumes from the last checkpoint and re-emits
            // the same outputs (same ids).
            ErrorCounted { pipeline: PIPELINE, step: "checkpoint", error: &e }.emit();
            Vec::new()
        });
        for p in &tasks {
            self.tasks.remove(p);
            StateSize::forget(*p);
        }
        for tp in parts {
            self.writes_next.remove(tp);
        }
        offsets
    }

    fn lost(&mut self, parts: &[Tp]) {
        // Another member owns these now: checkpointing them could overwrite
        // its newer state. Drop them; their work since the last checkpoint
        // is redone by the new owner.
        let tasks: BTreeSet<i32> =
            parts.iter().filter(|tp| self.topics.is_task_input(&tp.topic)).map(|tp| tp.partition).collect();
        self.tasks.retain(|p, _| !tasks.contains(p));
        for tp in parts {
            self.writes_next.remove(tp);
            self.pending_writes.remove(tp);
        }
    }

    fn rewind(&mut self, parts: &[Tp]) -> Result<Offsets> {
        // The transaction holding everything since the last commit was
        // aborted: drop that state and restore the committed one.
        self.tasks.clear();
        self.writes_next.clear();
        self.pending_writes.clear();
        self.writes_done.clear();
        self.outputs.clear();
        self.store.clear();
        self.assigned(parts)
    }

    fn write(&mut self, batch: &Batch<'_>) -> Result<Vec<Reject>> {
        let mut rejects = Vec::new();
        let mut forward: Vec<Outgoing> = Vec::new();
        self.writes_done.clear();
        let mut touched = BTreeSet::new();
        let max_subjects = self.settings.max_subjects;
        let mut held: usize = self.tasks.values().map(|t| t.engine.subjects()).sum();
        let now = Instant::now();
        let now_ms = crate::now_ms();
        let future_limit = now_ms.saturating_add(self.settings.max_future_skew.as_millis() as i64);
        if batch.full {
            self.last_full_batch = Some(now);
        }
        for part in &batch.parts {
            let (tp, p) = (&part.tp, part.tp.partition);
            if tp.topic == self.topics.writes {
                let from = self.writes_next.get(tp).copied().unwrap_or(i64::MIN);
                for rec in part.records.iter().filter(|r| r.offset >= from) {
                    if let Event::DecisionLog(d) = &rec.event {
                        forward.push(Outgoing {
                            partition: None,
                            topic: self.topics.decisions.clone(),
                            key: d.component.clone().into_bytes(),
                            payload: Some(rec.payload().to_vec()),
                            headers: vec![
                                (CHANNEL_HEADER.into(), p.to_string().into_bytes()),
                                (SOURCE_OFFSET_HEADER.into(), rec.offset.to_string().into_bytes()),
                            ],
                        });
                    }
                }
                self.writes_done.push((tp.clone(), part.next_offset));
                continue;
            }
            let Some(task) = self.tasks.get_mut(&p) else {
                tracing::warn!(pipeline = PIPELINE, partition = %tp, "records of an unassigned task skipped");
                continue;
            };
            // Records below the task's position are already ingested (a retried batch).
            let from = task.next.get(&tp.topic).copied().unwrap_or(i64::MIN);
            if part.next_offset <= from {
                continue;
            }
            task.next.insert(tp.topic.clone(), part.next_offset);
            task.dirty = true;
            touched.insert(p);
            // The instance's bound, less what the other tasks hold.
            task.engine.set_capacity(max_subjects.saturating_sub(held - task.engine.subjects()));
            let routed = tp.topic == self.topics.routed;
            let routable = !routed && (tp.topic == self.topics.latency || tp.topic == self.topics.feedback);
            let mut rerouted = 0;
            for rec in part.records.iter().filter(|r| r.offset >= from) {
                if routable {
                    // Put here by another partitioner or a null key: to the owner.
                    let component = match &rec.event {
                        Event::LatencySample(s) => Some(&s.component),
                        Event::FeedbackRating(r) => Some(&r.component),
                        _ => None,
                    };
                    if let Some(c) = component {
                        let owner = partition_of(c.as_bytes(), self.input_partitions);
                        if owner != p {
                            forward.push(Outgoing {
                                partition: Some(owner),
                                topic: self.topics.routed.clone(),
                                key: c.clone().into_bytes(),
                                payload: Some(rec.payload().to_vec()),
                                headers: vec![
                                    (CHANNEL_HEADER.into(), p.to_string().into_bytes()),
                                    (SOURCE_OFFSET_HEADER.into(), rec.offset.to_string().into_bytes()),
                                ],
                            });
                            rerouted += 1;
                            continue;
                        }
                    }
                }
                let (input, kind) = match &rec.event {
                    Event::LatencySample(s) if routed => {
                        let (channel, source_offset) = channel_of(rec);
                        (Input::RoutedLatency(s, channel, source_offset), Kind::RoutedLatency(channel))
                    }
                    Event::FeedbackRating(r) if routed => {
                        let (channel, source_offset) = channel_of(rec);
                        (Input::RoutedRating(r, channel, source_offset), Kind::RoutedRating(channel))
                    }
                    Event::LatencySample(s) => (Input::Latency(s), Kind::Latency),
                    Event::FeedbackRating(r) => (Input::Rating(r), Kind::Feedback),
                    Event::DecisionLog(d) => {
                        let (channel, source_offset) = channel_of(rec);
                        (Input::Decision(d, channel, source_offset), Kind::Decisions(channel))
                    }
                    other => {
                        let message = format!("{} is not an analyzer input", other.record_name());
                        let reason = Reason { class: "wrong_schema".into(), message };
                        rejects.push(Reject { tp: tp.clone(), offset: rec.offset, reason });
                        continue;
                    }
                };
                if input.occurred_at() > future_limit {
                    let message = future_message(input.occurred_at(), now_ms, self.settings.max_future_skew);
                    rejects.push(Reject {
                        tp: tp.clone(),
                        offset: rec.offset,
                        reason: Reason { class: "future".into(), message },
                    });
                    continue;
                }
                task.last_input.insert(kind, now);
                let before = task.engine.subjects();
                match task.engine.ingest(input) {
                    Ok(_) => {}
                    Err(Refused::Late(late)) => {
                        LateEvent { topic: &tp.topic }.emit();
                        let reason = Reason { class: "late".into(), message: late.to_string() };
                        rejects.push(Reject { tp: tp.clone(), offset: rec.offset, reason });
                    }
                    Err(Refused::Cardinality { .. }) => {
                        SubjectRejected { topic: &tp.topic }.emit();
                        let reason = Reason { class: "cardinality".into(), message: cardinality_message(max_subjects) };
                        rejects.push(Reject { tp: tp.clone(), offset: rec.offset, reason });
                    }
                }
                held = held + task.engine.subjects() - before;
            }
            if rerouted > 0 {
                RecordsRouted { topic: &tp.topic, count: rerouted }.emit();
            }
        }
        let mut events = Vec::new();
        self.close_tasks(touched, &mut events);
        let mut records = forward;
        records.extend(self.outgoing(&events)?);
        self.outputs.send(records)?;
        Ok(rejects)
    }

    fn commit(&mut self, _batch: &Batch<'_>) -> Result<Offsets> {
        // Input offsets are stored by checkpoints; the writes partitions'
        // ones once the forwarded decisions are acknowledged (at the next).
        for (tp, off) in self.writes_done.drain(..) {
            self.writes_next.insert(tp.clone(), off);
            self.pending_writes.insert(tp, off);
        }
        Ok(Vec::new())
    }

    fn abort(&mut self) {
        self.writes_done.clear();
    }

    fn tick(&mut self) -> Result<Offsets> {
        // Idle streams advance by wall clock so their windows still close;
        // not while catching up, when silence only means "not fetched yet".
        let idle = self.settings.idle_timeout;
        let catching_up = self.last_full_batch.is_some_and(|t| t.elapsed() < idle);
        let mut advanced = Vec::new();
        for (p, task) in self.tasks.iter_mut().filter(|_| !catching_up) {
            let held = [Stream::Latency, Stream::Ratings].map(|s| task.engine.watermark(s));
            let silent = |k: &Kind| task.last_input.get(k).map_or(Duration::ZERO, Instant::elapsed);
            let mut lat = silent(&Kind::Latency);
            // A silent input stops holding the ratings watermark back...
            let mut ratings_quiet = Duration::MAX;
            for kind in task.last_input.keys() {
                let source = match kind {
                    Kind::Latency => continue,
                    Kind::RoutedLatency(c) => {
                        let quiet = silent(kind);
                        lat = lat.min(quiet);
                        task.engine.set_latency_idle(*c, quiet >= idle);
                        continue;
                    }
                    Kind::Feedback => Source::Feedback,
                    Kind::Decisions(c) => Source::Decisions(*c),
                    Kind::RoutedRating(c) => Source::Routed(*c),
                };
                let quiet = silent(kind);
                ratings_quiet = ratings_quiet.min(quiet);
                task.engine.set_idle(source, quiet >= idle);
            }
            // An input going idle may free the watermark it held: close what
            // that frees now, not when the next record or idle advance comes
            // (the last windows of a task whose traffic ended would wait a
            // whole idle timeout more).
            if [Stream::Latency, Stream::Ratings].map(|s| task.engine.watermark(s)) != held {
                advanced.push(*p);
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
                self.outputs.send(records)?;
            }
        }
        let mut watermark: Option<i64> = None;
        for t in self.tasks.values() {
            if let Some(w) = t.engine.watermark(Stream::Latency) {
                watermark = Some(watermark.map_or(w, |m| m.min(w)));
            }
        }
        // These walk every subject: once a few seconds, not per tick.
        if self.last_gauges.elapsed() >= GAUGE_INTERVAL {
            self.last_gauges = Instant::now();
            let (mut degraded, mut firing, mut keys) = (0, 0, 0);
            for (p, t) in &self.tasks {
                let (d, f) = t.engine.states();
                degraded += d;
                firing += f;
                keys += t.engine.active_keys();
                StateSize { task: *p, subjects: t.engine.subjects(), bytes: t.engine.state_bytes() }.emit();
            }
            StateMachines { degraded_components: degraded, firing_alerts: firing, active_keys: keys }.emit();
        }
        AnalyzeProgress {
            checkpoint_age: self.last_checkpoint.elapsed(),
            processing_lag: watermark.map(|w| Duration::from_millis((crate::now_ms() - w).max(0) as u64)),
        }
        .emit();
        if self.last_checkpoint.elapsed() >= self.settings.checkpoint_interval {
            let all: Vec<i32> = self.tasks.keys().copied().collect();
            return self.checkpoint(&all);
        }
        Ok(Vec::new())
    }

    fn finish(&mut self) -> Offsets {
        let all: Vec<i32> = self.tasks.keys().copied().collect();
        self.checkpoint(&all).unwrap_or_else(|e| {
            // Not checkpointed past undelivered outputs: a restart re-emits them.
            ErrorCounted { pipeline: PIPELINE, step: "checkpoint", error: &e }.emit();
            Vec::new()
        })
    }
}

#[cfg(test)]
mod tests;
