//! The consumer loop every pipeline shares, in the shape of rust-arroyo: a
//! `Stage` receives batches (`process`), periodic ticks (`tick`) and the
//! group's assignment changes (`assigned` / `revoked`), and returns the
//! offsets whose effects are durable; only those are stored for commit.
//!
//! The loop runs on its own thread with a blocking `BaseConsumer`, so the
//! rebalance callback can do what a callback must: load where each newly
//! assigned partition resumes (the offsets a stage keeps with its effects)
//! and pass them to the assign call itself, which avoids librdkafka's
//! seek-after-assign race; and flush what a revoked partition owes before it
//! goes. Stages do their async IO with `Handle::block_on`.
//!
//! A failed batch (a store or broker outage) is retried with `backon`
//! exponential backoff and jitter while the assignment is paused, so nothing
//! is skipped and fetching resumes by itself when the sink answers.

use crate::error::{Error, ErrorDomain, Result};
use crate::shutdown::Shutdown;
use crate::sources::kafka::{Assignor, describe, group_config_with};
use crate::telemetry::Readiness;
use crate::telemetry::events::{ConsumerLag, PartitionsChanged, RecordsConsumed, SinkRecovered, SinkRetry};
use backon::{BackoffBuilder, ExponentialBuilder};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A record as the runner hands it to a stage: borrowed from the consumer,
/// not copied (a drain that copied each message ran ~3 µs per message
/// slower). A batch lives until its effects are durable.
pub type Record<'a> = BorrowedMessage<'a>;

/// A topic partition.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tp {
    pub topic: String,
    pub partition: i32,
}

impl Tp {
    pub fn new(topic: impl Into<String>, partition: i32) -> Tp {
        Tp { topic: topic.into(), partition }
    }

    pub fn of(msg: &Record<'_>) -> Tp {
        Tp::new(msg.topic(), msg.partition())
    }
}

impl std::fmt::Display for Tp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}[{}]", self.topic, self.partition)
    }
}

/// Next offsets to store (the offset after the last record whose effects are durable).
pub type Offsets = Vec<(Tp, i64)>;

/// One pipeline's processing, driven by the runner.
pub trait Stage: Send + 'static {
    /// Newly assigned partitions (called before fetching starts): where each
    /// partition whose position the stage keeps resumes. Partitions left out
    /// start from the group's committed offset. An error is retried.
    fn assigned(&mut self, parts: &[Tp]) -> Result<Offsets>;
    /// Partitions about to go to another member: flush what they owe, drop
    /// their state, and return their final offsets.
    fn revoked(&mut self, parts: &[Tp]) -> Offsets;
    /// A batch of records in fetch order. External errors are retried with
    /// the same batch, so processing must be idempotent per record.
    fn process(&mut self, batch: &[Record<'_>]) -> Result<Offsets>;
    /// Called about every 100 ms: time-driven work (idle advance, checkpoints).
    fn tick(&mut self) -> Result<Offsets> {
        Ok(Vec::new())
    }
    /// Shutdown: finish in-flight work and return the last offsets.
    fn finish(&mut self) -> Offsets {
        Vec::new()
    }
}

#[derive(Debug, Clone)]
pub struct RunnerConfig {
    pub pipeline: &'static str,
    pub kafka: crate::config::KafkaConfig,
    pub group: String,
    pub topics: Vec<String>,
    pub assignor: Assignor,
    pub batch_size: usize,
    pub linger: Duration,
    pub retry_min_delay: Duration,
    pub retry_max_delay: Duration,
}

impl RunnerConfig {
    fn backoff(&self) -> impl Iterator<Item = Duration> + use<> {
        backoff(self.retry_min_delay, self.retry_max_delay)
    }
}

/// Retry delays of every pipeline: exponential from `min` to `max`, with
/// jitter, never giving up (a record is never skipped).
pub fn backoff(min: Duration, max: Duration) -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default().with_min_delay(min).with_max_delay(max).with_jitter().without_max_times().build()
}

struct RunnerContext<S: Stage> {
    cfg: RunnerConfig,
    stage: Arc<Mutex<S>>,
    shutdown: Shutdown,
    readiness: Readiness,
}

impl<S: Stage> ClientContext for RunnerContext<S> {
    /// librdkafka's statistics carry the lag per partition from its own fetch
    /// responses: the high watermark minus the stored (durable) offset. No
    /// extra broker round trips.
    fn stats(&self, stats: rdkafka::Statistics) {
        for (topic, t) in &stats.topics {
            for (id, p) in &t.partitions {
                if *id < 0 || p.fetch_state == "none" || p.hi_offset < 0 {
                    continue;
                }
                let lag = if p.consumer_lag_stored >= 0 { p.consumer_lag_stored } else { p.consumer_lag };
                if lag >= 0 {
                    ConsumerLag { pipeline: self.cfg.pipeline, topic, partition: *id, lag }.emit();
                }
            }
        }
    }
}

fn parts_of(tpl: &TopicPartitionList) -> Vec<Tp> {
    tpl.elements().iter().map(|e| Tp::new(e.topic(), e.partition())).collect()
}

fn tpl_of(offsets: &[(Tp, i64)]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for (tp, off) in offsets {
        let _ = tpl.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(*off));
    }
    tpl
}

impl<S: Stage> ConsumerContext for RunnerContext<S> {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        let pipeline = self.cfg.pipeline;
        let cooperative = matches!(consumer.rebalance_protocol(), RebalanceProtocol::Cooperative);
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let parts = parts_of(tpl);
                let mut backoff = self.cfg.backoff();
                loop {
                    let result = self.stage.lock().expect("stage lock").assigned(&parts);
                    match result {
                        Ok(offsets) => {
                            for (tp, off) in offsets {
                                if let Err(e) = tpl.set_partition_offset(&tp.topic, tp.partition, Offset::Offset(off)) {
                                    tracing::error!(pipeline, "cannot resume {tp} at {off}: {e}");
                                }
                            }
                            break;
                        }
                        Err(e) if self.shutdown.requested() => {
                            tracing::warn!(pipeline, "shutting down before resume positions loaded: {e}");
                            break;
                        }
                        Err(e) => {
                            let delay = backoff.next().unwrap_or(self.cfg.retry_max_delay);
                            tracing::warn!(pipeline, "loading resume positions failed, retrying in {delay:?}: {e}");
                            self.readiness.set(&format!("{pipeline}.sinks"), Err(e.to_string()));
                            std::thread::sleep(delay);
                        }
                    }
                }
                let r = if cooperative { consumer.incremental_assign(tpl) } else { consumer.assign(tpl) };
                if let Err(e) = r {
                    tracing::error!(pipeline, "assign failed: {e}");
                }
                let total = consumer.assignment().map(|a| a.count()).unwrap_or(0);
                PartitionsChanged { pipeline, assigned: true, partitions: &describe(tpl), total }.emit();
                self.readiness.set(&format!("{pipeline}.assigned"), Ok(()));
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let parts = parts_of(tpl);
                let offsets = self.stage.lock().expect("stage lock").revoked(&parts);
                if !offsets.is_empty() {
                    // Commit now: the next owner starts from these.
                    let commit = tpl_of(&offsets);
                    if let Err(e) = consumer.store_offsets(&commit) {
                        tracing::debug!(pipeline, "store on revoke: {e}");
                    }
                    if let Err(e) = consumer.commit(&commit, CommitMode::Sync) {
                        tracing::warn!(pipeline, "commit on revoke failed (the next owner replays): {e}");
                    }
                }
                let r = if cooperative { consumer.incremental_unassign(tpl) } else { consumer.unassign() };
                if let Err(e) = r {
                    tracing::error!(pipeline, "unassign failed: {e}");
                }
                let total = if cooperative { consumer.assignment().map(|a| a.count()).unwrap_or(0) } else { 0 };
                PartitionsChanged { pipeline, assigned: false, partitions: &describe(tpl), total }.emit();
                if total == 0 {
                    self.readiness.set(&format!("{pipeline}.assigned"), Err("no partitions assigned".into()));
                }
            }
            other => {
                tracing::error!(pipeline, "rebalance error: {other:?}");
                if !cooperative {
                    let _ = consumer.unassign();
                }
            }
        }
    }
}

/// Runs `stage` until shutdown. Blocking: call from a dedicated thread
/// (e.g. `spawn_blocking`).
pub fn run<S: Stage>(cfg: RunnerConfig, stage: S, shutdown: Shutdown, readiness: Readiness) -> Result<()> {
    let pipeline = cfg.pipeline;
    readiness.set(&format!("{pipeline}.assigned"), Err("waiting for partitions".into()));
    readiness.set(&format!("{pipeline}.sinks"), Ok(()));
    let stage = Arc::new(Mutex::new(stage));
    let ctx = RunnerContext {
        cfg: cfg.clone(),
        stage: stage.clone(),
        shutdown: shutdown.clone(),
        readiness: readiness.clone(),
    };
    let consumer: BaseConsumer<RunnerContext<S>> = group_config_with(&cfg.kafka, &cfg.group, cfg.assignor)
        .create_with_context(ctx)
        .map_err(Error::kafka(format!("create consumer for group {}", cfg.group)))?;
    let topics: Vec<&str> = cfg.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics).map_err(Error::kafka(format!("subscribe to {topics:?}")))?;
    tracing::info!(pipeline, group = %cfg.group, topics = ?cfg.topics, "consuming");

    let store = |offsets: Offsets| {
        if offsets.is_empty() {
            return;
        }
        if let Err(e) = consumer.store_offsets(&tpl_of(&offsets)) {
            // A partition revoked meanwhile: its new owner resumes from the stage's own offsets.
            tracing::debug!(pipeline, "offset store skipped: {e}");
        }
    };

    let mut batch: Vec<Record<'_>> = Vec::with_capacity(cfg.batch_size);
    while !shutdown.requested() {
        // Fill a batch: wait up to 100 ms for the first record, then up to `linger`.
        batch.clear();
        let started = Instant::now();
        let mut wait = Duration::from_millis(100);
        while batch.len() < cfg.batch_size {
            match consumer.poll(wait) {
                None => break,
                Some(Ok(m)) => batch.push(m),
                Some(Err(e)) => tracing::warn!(pipeline, "consumer error: {e}"),
            }
            wait = cfg.linger.saturating_sub(started.elapsed());
            if shutdown.requested() {
                break;
            }
        }
        if !batch.is_empty() {
            let mut per_topic: BTreeMap<&str, u64> = BTreeMap::new();
            for m in &batch {
                *per_topic.entry(m.topic()).or_default() += 1;
            }
            for (topic, count) in per_topic {
                RecordsConsumed { pipeline, topic, count }.emit();
            }
            match process_with_retry(&cfg, &consumer, &stage, &batch, &shutdown, &readiness) {
                Some(offsets) => store(offsets),
                None => break, // shutdown during an outage: nothing stored, the batch replays
            }
        }
        let ticked = stage.lock().expect("stage lock").tick();
        match ticked {
            Ok(offsets) => store(offsets),
            Err(e) => tracing::warn!(pipeline, "tick: {e}"),
        }
    }
    tracing::info!(pipeline, "stopping: finishing in-flight work");
    let offsets = stage.lock().expect("stage lock").finish();
    store(offsets);
    if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
        tracing::debug!(pipeline, "final commit: {e}");
    }
    consumer.unsubscribe();
    drop(consumer);
    tracing::info!(pipeline, "stopped");
    Ok(())
}

/// Retries a failed batch until it succeeds, pausing the assignment
/// meanwhile. `None` when shutdown interrupted the retries.
fn process_with_retry<S: Stage>(
    cfg: &RunnerConfig,
    consumer: &BaseConsumer<RunnerContext<S>>,
    stage: &Arc<Mutex<S>>,
    batch: &[Record<'_>],
    shutdown: &Shutdown,
    readiness: &Readiness,
) -> Option<Offsets> {
    let pipeline = cfg.pipeline;
    let mut backoff = cfg.backoff();
    let mut paused: Option<(TopicPartitionList, Instant, &'static str)> = None;
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let result = stage.lock().expect("stage lock").process(batch);
        match result {
            Ok(offsets) => {
                if let Some((tpl, since, sink)) = paused.take() {
                    if let Err(e) = consumer.resume(&tpl) {
                        tracing::warn!(pipeline, "resume: {e}");
                    }
                    SinkRecovered { pipeline, sink, attempts: attempt, outage: since.elapsed() }.emit();
                    readiness.set(&format!("{pipeline}.sinks"), Ok(()));
                }
                return Some(offsets);
            }
            Err(e) => {
                let sink = sink_of(&e);
                if e.domain() != ErrorDomain::External {
                    // Not a transient failure: retrying cannot help, but
                    // skipping would lose records. Hold and say why, loudly.
                    tracing::error!(pipeline, "batch failed with a non-retryable error; holding: {e}");
                }
                readiness.set(&format!("{pipeline}.sinks"), Err(format!("{sink}: {e}")));
                if paused.is_none() {
                    let tpl = consumer.assignment().unwrap_or_default();
                    if let Err(pe) = consumer.pause(&tpl) {
                        tracing::warn!(pipeline, "pause: {pe}");
                    }
                    paused = Some((tpl, Instant::now(), sink));
                }
                let delay = backoff.next().unwrap_or(cfg.retry_max_delay);
                SinkRetry { pipeline, sink, attempt, delay, error: &e.to_string() }.emit();
                let until = Instant::now() + delay;
                while Instant::now() < until {
                    if shutdown.requested() {
                        return None;
                    }
                    std::thread::sleep(Duration::from_millis(50).min(until.saturating_duration_since(Instant::now())));
                }
            }
        }
    }
}

/// The sink an error came from (a bounded metric label).
pub fn sink_of(e: &Error) -> &'static str {
    match e {
        Error::Postgres { .. } => "postgres",
        Error::Redis { .. } => "redis",
        Error::Kafka { .. } => "kafka",
        _ => "other",
    }
}
