//! The consumer loop every pipeline shares. It owns each record's lifecycle:
//!
//! ```text
//! poll ─▶ decode once ─▶ stage.write(batch) ─▶ DLQ (decode + stage rejects) ─▶ stage.commit ─▶ store offsets
//!            │ (batch.rs)      │ prepare effects       │ acknowledged first          │ durable       │ for the group commit
//!            └───────── any transient error: abort, pause, back off (retry.rs) while polling, retry the same batch
//! ```
//!
//! As in rust-arroyo, the processor owns backpressure and the DLQ, and as in
//! RisingWave's `SinkWriter` a stage prepares a batch and then commits it: a
//! stage sees decoded events grouped by partition and never a librdkafka
//! type. A rejected record goes to the DLQ before the commit that moves its
//! partition past it, so a dead letter gates its offset like any effect.
//!
//! The loop runs on its own thread with a blocking `BaseConsumer`, so the
//! rebalance callback can do what a callback must: load where each newly
//! assigned partition resumes (the offsets a stage keeps with its effects)
//! and pass them to the assign call itself, which avoids librdkafka's
//! seek-after-assign race; and flush what a revoked partition owes before it
//! goes. Stages do their async IO with `Handle::block_on`.
//!
//! While a step is retried the assignment is paused and the consumer is
//! still polled (`waiting.rs`), so a store outage longer than
//! `max.poll.interval.ms` does not cost the group its member; a rebalance
//! during the wait drops the revoked partitions from the batch. An error
//! whose hint is `Stop` (a bug, a refused configuration) ends the pipeline
//! with its message.
//!
//! The delivery guarantee is the `Committer` the runner is given
//! (`pipeline/commit`): the loop is the same for both.

mod rebalance;
mod waiting;

use super::batch::{Batch, Decoder, Reject};
pub use super::batch::{Offsets, Tp};
use super::commit::{Committer, Outcome, Recovery};
use super::retry::{RetryPolicy, Retrying};
use crate::error::{Error, Result};
use crate::shutdown::Shutdown;
use crate::sinks::dlq::Dlq;
use crate::sources::kafka::{Assignor, group_config_with};
use crate::sources::record::Raw;
use crate::telemetry::Readiness;
use crate::telemetry::events::{ErrorCounted, RecordsConsumed};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use rebalance::RunnerContext;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use waiting::Flow;

/// A polled record: borrowed from the consumer, not copied (a drain that
/// copied each message ran ~3 µs per message slower).
type Record<'a> = BorrowedMessage<'a>;

/// One pipeline's processing, driven by the runner.
pub trait Stage: Send + 'static {
    /// Newly assigned partitions (called before fetching starts): where each
    /// partition whose position the stage keeps resumes. Partitions left out
    /// start from the group's committed offset.
    fn assigned(&mut self, parts: &[Tp]) -> Result<Offsets>;
    /// Partitions about to go to another member: flush what they owe, drop
    /// their state, and return their final offsets.
    fn revoked(&mut self, parts: &[Tp]) -> Offsets;
    /// Prepares the effects of a decoded batch (not yet durable) and returns
    /// the records the stage or its store refuses (they go to the DLQ).
    fn write(&mut self, batch: &Batch<'_>) -> Result<Vec<Reject>>;
    /// Makes the prepared effects durable (the rejects are acknowledged by
    /// the DLQ by now) and returns the offsets that may be stored.
    fn commit(&mut self, batch: &Batch<'_>) -> Result<Offsets>;
    /// A `write` or `commit` failed: drop what was prepared. The same batch
    /// comes again (minus revoked partitions), so `write` must be idempotent
    /// per record.
    fn abort(&mut self) {}
    /// Called about every 100 ms: time-driven work (idle advance, checkpoints).
    fn tick(&mut self) -> Result<Offsets> {
        Ok(Vec::new())
    }
    /// Shutdown: finish in-flight work and return the last offsets.
    fn finish(&mut self) -> Offsets {
        Vec::new()
    }
    /// Partitions taken away without a chance to flush (the member was
    /// evicted): drop their state, another member owns them now.
    fn lost(&mut self, parts: &[Tp]) {
        let _ = self.revoked(parts);
    }
    /// The committer discarded the work since the last commit (an aborted
    /// transaction): drop that state and return where each partition
    /// resumes (as `assigned`).
    fn rewind(&mut self, parts: &[Tp]) -> Result<Offsets> {
        self.assigned(parts)
    }
}

#[derive(Clone)]
pub struct RunnerConfig {
    pub pipeline: &'static str,
    pub kafka: crate::config::KafkaConfig,
    pub group: String,
    pub topics: Vec<String>,
    pub assignor: Assignor,
    pub decoder: Decoder,
    /// Where rejects go (`udo.dlq.v1` with any prefix).
    pub dlq_topic: String,
    pub batch_size: usize,
    pub linger: Duration,
    pub retry: RetryPolicy,
}

/// What the rebalance callback and the loop share: the partitions assigned
/// and the position below which their records are already done.
#[derive(Default)]
struct Assigned {
    positions: HashMap<Tp, i64>,
    /// Bumped by every rebalance, so a waiting retry notices.
    generation: u64,
    /// A `Stop` error from the rebalance callback: the pipeline ends.
    fatal: Option<Error>,
    /// The committer discarded the work since the last commit in the
    /// rebalance callback: the loop rewinds the partitions still assigned.
    rewind: bool,
}

fn parts_of(tpl: &TopicPartitionList) -> Vec<Tp> {
    tpl.elements().iter().map(|e| Tp::new(e.topic(), e.partition())).collect()
}

/// The loop's state: the consumer, the stage, the DLQ, and the records
/// polled while a retry waited (they start the next batch).
struct Runner<'c, S: Stage, K: Committer> {
    cfg: &'c RunnerConfig,
    consumer: &'c BaseConsumer<RunnerContext<S, K>>,
    committer: &'c K,
    stage: &'c Arc<Mutex<S>>,
    assigned: &'c Arc<Mutex<Assigned>>,
    dlq: Dlq,
    rt: tokio::runtime::Handle,
    shutdown: &'c Shutdown,
    readiness: &'c Readiness,
    /// Paused assignment and the failing step, while a retry waits.
    paused: Option<(TopicPartitionList, Retrying)>,
}

impl<'c, S: Stage, K: Committer> Runner<'c, S, K> {
    fn position(&self) -> impl FnMut(&Tp) -> Option<i64> + '_ {
        let a = self.assigned.lock().expect("assigned lock");
        let positions = a.positions.clone();
        move |tp| positions.get(tp).copied()
    }

    fn generation(&self) -> u64 {
        self.assigned.lock().expect("assigned lock").generation
    }

    /// Offsets the stage made durable, to the committer.
    fn store(&self, offsets: &Offsets) {
        if offsets.is_empty() {
            return;
        }
        let a = self.assigned.lock().expect("assigned lock");
        self.committer.store(self.consumer, offsets, &|tp| a.positions.contains_key(tp));
    }

    /// Fills a batch: the records held from a retry's wait first, then
    /// polls up to 100 ms for the first record and up to `linger` in all.
    fn poll_batch(&self, batch: &mut Vec<Record<'c>>, held: &mut Vec<Record<'c>>) {
        batch.append(held);
        let started = Instant::now();
        let mut wait = Duration::from_millis(100);
        while batch.len() < self.cfg.batch_size {
            match self.consumer.poll(wait) {
                // While records are queued, take them without a timeout
                // (no clock read in librdkafka or here); once the queue is
                // empty, wait out what is left of the linger.
                None if wait.is_zero() => {
                    wait = self.cfg.linger.saturating_sub(started.elapsed());
                    if wait.is_zero() {
                        break;
                    }
                    continue;
                }
                None => break,
                Some(Ok(m)) => batch.push(m),
                Some(Err(e)) => self.consume_error(e),
            }
            wait = Duration::ZERO;
            if self.shutdown.requested() {
                break;
            }
        }
    }

    /// Dead-letters `rejects` not already sent for this batch and waits for
    /// the broker's acknowledgement.
    fn dead_letter(&self, polled: &[Record<'c>], rejects: &[Reject], sent: &mut HashSet<(Tp, i64)>) -> Result<()> {
        let fresh: Vec<&Reject> = rejects.iter().filter(|r| !sent.contains(&(r.tp.clone(), r.offset))).collect();
        if fresh.is_empty() {
            return Ok(());
        }
        let mut items = Vec::with_capacity(fresh.len());
        for r in &fresh {
            let raw = polled
                .iter()
                .find(|m| m.offset() == r.offset && m.partition() == r.tp.partition && m.topic() == r.tp.topic)
                .ok_or_else(|| Error::Internal(format!("reject {}@{} is not in the batch", r.tp, r.offset)))?;
            items.push((Raw::from(raw), r.reason.clone()));
        }
        self.rt.block_on(self.dlq.send_all(&items))?;
        sent.extend(fresh.iter().map(|r| (r.tp.clone(), r.offset)));
        Ok(())
    }

    /// One batch through the lifecycle, retried until it is durable.
    /// `positions`: the consumer's, taken when `polled` was (a retry's wait
    /// polls on, into `held`).
    fn process(
        &mut self,
        polled: &[Record<'c>],
        positions: &HashMap<Tp, i64>,
        held: &mut Vec<Record<'c>>,
    ) -> Result<Flow<()>> {
        let full = polled.len() >= self.cfg.batch_size;
        let decode = |r: &mut Self| r.cfg.decoder.batch(polled.iter().map(Raw::from), r.position(), full);
        let mut batch = match self.retried("decode", held, decode)? {
            Flow::Done(b) => b,
            Flow::Shutdown => return Ok(Flow::Shutdown),
        };
        // Every record polled up to `positions` is in this batch, so they
        // are where each partition resumes: past the transaction markers
        // (and aborted records) after its last record, which the consumer
        // skips and never returns. Storing last offset + 1 instead would
        // leave a lag of 1 behind every transaction.
        batch.advance(|tp| positions.get(tp).copied());
        self.complete(batch, polled, held)
    }

    /// The consumer's fetch position of every assigned partition.
    fn consumer_positions(&self) -> HashMap<Tp, i64> {
        let Ok(tpl) = self.consumer.position() else { return HashMap::new() };
        tpl.elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => Some((Tp::new(e.topic(), e.partition()), o)),
                _ => None,
            })
            .collect()
    }

    /// Idle partitions whose position moved past what was processed without
    /// a record (only transaction markers or aborted records came): their
    /// offsets move too, through the same lifecycle (a store keeps its
    /// offsets with its rows).
    fn advance_idle(&mut self, held: &mut Vec<Record<'c>>) -> Result<Flow<()>> {
        if !held.is_empty() {
            return Ok(Flow::Done(()));
        }
        let positions = self.consumer_positions();
        let parts: Vec<(Tp, i64)> = {
            let a = self.assigned.lock().expect("assigned lock");
            a.positions
                .iter()
                .filter(|(_, done)| **done != i64::MIN)
                .filter_map(|(tp, done)| positions.get(tp).filter(|p| **p > *done).map(|p| (tp.clone(), *p)))
                .collect()
        };
        if parts.is_empty() {
            return Ok(Flow::Done(()));
        }
        self.complete(Batch::positions(parts), &[], held)
    }

    /// A decoded batch through write, DLQ and commit, retried until durable.
    fn complete(
        &mut self,
        mut batch: Batch<'_>,
        polled: &[Record<'c>],
        held: &mut Vec<Record<'c>>,
    ) -> Result<Flow<()>> {
        let mut sent = HashSet::new();
        let mut generation = self.generation();
        loop {
            if batch.is_empty() {
                self.recovered();
                return Ok(Flow::Done(()));
            }
            let attempt = (|| {
                let mut stage = self.stage.lock().expect("stage lock");
                let mut rejects = stage.write(&batch).map_err(|e| ("write", e))?;
                rejects.extend(batch.rejects.iter().cloned());
                self.dead_letter(polled, &rejects, &mut sent).map_err(|e| ("dlq", e))?;
                stage.commit(&batch).map_err(|e| ("commit", e))
            })();
            match attempt {
                Ok(offsets) => {
                    {
                        let mut a = self.assigned.lock().expect("assigned lock");
                        for p in &batch.parts {
                            if let Some(pos) = a.positions.get_mut(&p.tp) {
                                *pos = (*pos).max(p.next_offset);
                            }
                        }
                    }
                    self.store(&offsets);
                    self.recovered();
                    return Ok(Flow::Done(()));
                }
                Err((step, e)) => {
                    self.stage.lock().expect("stage lock").abort();
                    if let Flow::Shutdown = self.wait(step, e, held)? {
                        return Ok(Flow::Shutdown);
                    }
                    if self.committer.recovery() == Recovery::AbortAndRewind {
                        return self.abort_and_rewind(held);
                    }
                    let now = self.generation();
                    if now != generation {
                        generation = now;
                        batch.retain(self.position());
                    }
                }
            }
        }
    }

    /// The stage's tick, retried like a batch. A tick that checkpointed
    /// (returned offsets) hands them to the committer.
    fn tick(&mut self, held: &mut Vec<Record<'c>>) -> Result<Flow<()>> {
        loop {
            if self.rewind_requested() {
                // The state the tick would emit from was aborted.
                self.rewind(held)?;
            }
            let ticked = self.stage.lock().expect("stage lock").tick();
            match ticked {
                Ok(offsets) => {
                    self.store(&offsets);
                    let committed = if offsets.is_empty() {
                        Ok(Outcome::Committed)
                    } else {
                        self.committer.checkpoint(self.consumer)
                    };
                    match committed {
                        Ok(Outcome::Committed) => {}
                        Ok(Outcome::Aborted) => self.rewind(held)?,
                        // A commit that failed is a failed step: backoff
                        // while polling, then the committer's recovery.
                        Err(e) => {
                            if let Flow::Shutdown = self.wait("commit", e, held)? {
                                return Ok(Flow::Shutdown);
                            }
                            if self.committer.recovery() == Recovery::AbortAndRewind {
                                return self.abort_and_rewind(held);
                            }
                            continue;
                        }
                    }
                    self.recovered();
                    return Ok(Flow::Done(()));
                }
                Err(e) => {
                    if let Flow::Shutdown = self.wait("tick", e, held)? {
                        return Ok(Flow::Shutdown);
                    }
                    if self.committer.recovery() == Recovery::AbortAndRewind {
                        return self.abort_and_rewind(held);
                    }
                }
            }
        }
    }
}

impl<'c, S: Stage, K: Committer> Runner<'c, S, K> {
    /// The rebalance callback's commit discarded the open work.
    fn rewind_requested(&self) -> bool {
        self.assigned.lock().expect("assigned lock").rewind
    }

    /// After a failed step (once its backoff is over), when the committer
    /// asks for it: abort the open work (retried like any step) and go back
    /// to the last commit; the records are read again from there.
    fn abort_and_rewind(&mut self, held: &mut Vec<Record<'c>>) -> Result<Flow<()>> {
        if let Flow::Shutdown = self.retried("abort", held, |r| r.committer.abort())? {
            return Ok(Flow::Shutdown);
        }
        self.rewind(held)?;
        self.recovered();
        Ok(Flow::Done(()))
    }

    /// After an abort: the stage restores its committed state and every
    /// assigned partition goes back to where it resumes.
    fn rewind(&mut self, held: &mut Vec<Record<'c>>) -> Result<()> {
        let pipeline = self.cfg.pipeline;
        self.assigned.lock().expect("assigned lock").rewind = false;
        let parts = parts_of(&self.consumer.assignment().map_err(Error::kafka("read the assignment"))?);
        let restore = |r: &mut Self| r.stage.lock().expect("stage lock").rewind(&parts);
        let resume: HashMap<Tp, i64> = match self.retried("rewind", held, restore)? {
            Flow::Done(offsets) => offsets.into_iter().collect(),
            Flow::Shutdown => return Ok(()),
        };
        // Polled before the seek: past the last commit, read again after it.
        held.clear();
        let committed =
            self.consumer.committed(Duration::from_secs(30)).map_err(Error::kafka("read the committed offsets"))?;
        let mut a = self.assigned.lock().expect("assigned lock");
        for tp in &parts {
            let at = resume.get(tp).copied().or_else(|| {
                match committed.find_partition(&tp.topic, tp.partition).map(|e| e.offset()) {
                    Some(Offset::Offset(o)) => Some(o),
                    _ => None,
                }
            });
            let offset = at.map_or(Offset::Beginning, Offset::Offset);
            if let Err(e) = self.consumer.seek(&tp.topic, tp.partition, offset, Duration::from_secs(10)) {
                let e = Error::kafka(format!("rewind {tp}"))(e);
                ErrorCounted { pipeline, step: "rewind", error: &e }.emit();
                return Err(e);
            }
            a.positions.insert(tp.clone(), at.unwrap_or(i64::MIN));
        }
        a.generation += 1;
        tracing::info!(pipeline, partitions = parts.len(), "rewound to the last commit");
        Ok(())
    }
}

/// Runs `stage` until shutdown, or until an error retrying cannot fix,
/// with `committer`'s delivery guarantee. Blocking: call from a dedicated
/// thread (e.g. `spawn_blocking`) inside a tokio runtime.
pub fn run<S: Stage, K: Committer>(
    cfg: RunnerConfig,
    stage: S,
    committer: K,
    shutdown: Shutdown,
    readiness: Readiness,
) -> Result<()> {
    let pipeline = cfg.pipeline;
    readiness.set(&format!("{pipeline}.assigned"), Err("waiting for partitions".into()));
    readiness.set(&format!("{pipeline}.sinks"), Ok(()));
    let stage = Arc::new(Mutex::new(stage));
    let assigned = Arc::new(Mutex::new(Assigned::default()));
    let committer = Arc::new(committer);
    committer.init()?;
    let dlq = committer.dlq(&cfg.kafka, cfg.dlq_topic.clone(), pipeline)?;
    let ctx = RunnerContext {
        stalls: Mutex::new((super::stall::Stalls::new(super::stall::STUCK_AFTER), String::new())),
        cfg: cfg.clone(),
        committer: committer.clone(),
        stage: stage.clone(),
        assigned: assigned.clone(),
        shutdown: shutdown.clone(),
        readiness: readiness.clone(),
    };
    let mut client = group_config_with(&cfg.kafka, &cfg.group, cfg.assignor);
    committer.configure(&mut client);
    let consumer: BaseConsumer<RunnerContext<S, K>> =
        client.create_with_context(ctx).map_err(Error::kafka(format!("create consumer for group {}", cfg.group)))?;
    let topics: Vec<&str> = cfg.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics).map_err(Error::kafka(format!("subscribe to {topics:?}")))?;
    tracing::info!(pipeline, group = %cfg.group, topics = ?cfg.topics, "consuming");
    let mut runner = Runner {
        cfg: &cfg,
        consumer: &consumer,
        committer: &committer,
        stage: &stage,
        assigned: &assigned,
        dlq,
        rt: tokio::runtime::Handle::current(),
        shutdown: &shutdown,
        readiness: &readiness,
        paused: None,
    };
    let mut result = consume(&mut runner);
    tracing::info!(pipeline, "stopping: finishing in-flight work");
    let offsets = stage.lock().expect("stage lock").finish();
    runner.store(&offsets);
    if result.is_ok() {
        result = committer.finish(&consumer);
    }
    consumer.unsubscribe();
    // Serve the revoke before closing: librdkafka can hang for good in an
    // unassign called from a rebalance that close itself serves (seen when
    // a member stops during a rebalance; librdkafka issue 4884).
    let deadline = Instant::now() + Duration::from_secs(10);
    while consumer.assignment().is_ok_and(|a| a.count() > 0) && Instant::now() < deadline {
        // Records polled now are not processed: their offsets are not stored.
        let _ = consumer.poll(Duration::from_millis(100));
    }
    drop(runner);
    drop(consumer);
    match &result {
        Ok(()) => tracing::info!(pipeline, "stopped"),
        Err(e) => tracing::error!(pipeline, "stopped: {e}"),
    }
    result
}

fn consume<S: Stage, K: Committer>(runner: &mut Runner<'_, S, K>) -> Result<()> {
    let pipeline = runner.cfg.pipeline;
    let mut batch: Vec<Record<'_>> = Vec::with_capacity(runner.cfg.batch_size);
    let mut held: Vec<Record<'_>> = Vec::new();
    let mut last_advance = Instant::now();
    while !runner.shutdown.requested() {
        let (fatal, rewind) = {
            let mut a = runner.assigned.lock().expect("assigned lock");
            (a.fatal.take(), a.rewind)
        };
        if let Some(e) = fatal {
            return Err(e);
        }
        if rewind {
            runner.rewind(&mut held)?;
        }
        batch.clear();
        runner.poll_batch(&mut batch, &mut held);
        if runner.rewind_requested() {
            // A revoke during the poll discarded the open work: the batch
            // would build on state that is gone; it is read again.
            batch.clear();
            continue;
        }
        if !batch.is_empty() {
            let mut per_topic: BTreeMap<&str, u64> = BTreeMap::new();
            for m in &batch {
                *per_topic.entry(m.topic()).or_default() += 1;
            }
            for (topic, count) in per_topic {
                RecordsConsumed { pipeline, topic, count }.emit();
            }
            // Before a retry's wait polls past this batch.
            let positions = runner.consumer_positions();
            if let Flow::Shutdown = runner.process(&batch, &positions, &mut held)? {
                break; // nothing stored: the batch replays
            }
        }
        if batch.is_empty() && last_advance.elapsed() >= Duration::from_secs(1) {
            last_advance = Instant::now();
            if let Flow::Shutdown = runner.advance_idle(&mut held)? {
                break;
            }
        }
        if let Flow::Shutdown = runner.tick(&mut held)? {
            break;
        }
        crate::telemetry::dlq_log::flush_due();
    }
    crate::telemetry::dlq_log::flush_all();
    Ok(())
}

#[cfg(test)]
mod tests;
