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
//! still polled, so a store outage longer than `max.poll.interval.ms` does
//! not cost the group its member; a rebalance during the wait drops the
//! revoked partitions from the batch. An error whose hint is `Stop` (a bug,
//! a refused configuration) ends the pipeline with its message.

use super::batch::{Batch, Decoder, Reject};
pub use super::batch::{Offsets, Tp};
use super::retry::{RetryPolicy, Retrying};
use super::transaction::{Outcome, Txn};
use crate::error::{Error, Result};
use crate::shutdown::Shutdown;
use crate::sinks::dlq::Dlq;
use crate::sinks::kafka::TxnProducer;
use crate::sources::kafka::{Assignor, describe, group_config_with};
use crate::sources::record::Raw;
use crate::telemetry::Readiness;
use crate::telemetry::events::{
    ConsumerLag, ErrorCounted, PartitionsChanged, RecordsConsumed, SinkRecovered, SinkRetry, TransactionCommitted,
};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    /// Exactly-once: the transaction was aborted, so everything since the
    /// last commit is gone; drop that state and return where each partition
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
    /// Exactly-once: the member's transactional producer (the stage's
    /// outputs and the DLQ go through it; offsets commit with it).
    pub txn: Option<TxnProducer>,
}

/// What the rebalance callback and the loop share: the partitions assigned
/// and the position below which their records are already done.
#[derive(Default)]
struct Assigned {
    positions: HashMap<Tp, i64>,
    /// Bumped by every rebalance, so a waiting retry notices.
    generation: u64,
    /// A `Stop` error from loading resume positions: the pipeline ends.
    fatal: Option<Error>,
    /// Exactly-once: offsets the next transaction commits.
    txn_offsets: BTreeMap<Tp, i64>,
    /// At-least-once: the offsets stored per assigned partition (what the
    /// stage said is durable), committed when the partition is revoked.
    stored: HashMap<Tp, i64>,
    /// Exactly-once: a transaction aborted in the rebalance callback; the
    /// loop rewinds the partitions still assigned.
    rewind: bool,
}

struct RunnerContext<S: Stage> {
    /// Partitions that cannot advance (see `stall`), and what was last
    /// reported of them.
    stalls: Mutex<(super::stall::Stalls, String)>,
    cfg: RunnerConfig,
    txn: Option<Arc<Txn>>,
    stage: Arc<Mutex<S>>,
    assigned: Arc<Mutex<Assigned>>,
    shutdown: Shutdown,
    readiness: Readiness,
}

impl<S: Stage> ClientContext for RunnerContext<S> {
    /// An unreadable batch is also reported here, with librdkafka's detail
    /// (codec, offset); the stall report carries it, the poll counts it.
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        use rdkafka::error::RDKafkaErrorCode as C;
        match error.rdkafka_error_code() {
            Some(C::BadCompression | C::BadMessage | C::InvalidMessage | C::InvalidRecord) => {
                tracing::debug!(pipeline = self.cfg.pipeline, "librdkafka: {error}: {reason}");
                self.stalls.lock().expect("stalls lock").0.detail(reason.to_string());
            }
            _ => tracing::error!("librdkafka: {error}: {reason}"),
        }
    }

    /// librdkafka's statistics carry the lag per partition from its own fetch
    /// responses: the high watermark minus the stored (durable) offset. No
    /// extra broker round trips.
    fn stats(&self, stats: rdkafka::Statistics) {
        let pipeline = self.cfg.pipeline;
        let now = Instant::now();
        let mut guard = self.stalls.lock().expect("stalls lock");
        let (stalls, reported) = &mut *guard;
        let mut fetching = HashSet::new();
        for (topic, t) in &stats.topics {
            for (id, p) in &t.partitions {
                if *id < 0 || p.fetch_state == "none" || p.hi_offset < 0 {
                    continue;
                }
                // From the broker's end offset, also before anything was
                // consumed (a partition whose first batch cannot be read).
                let Some(lag) =
                    super::stall::lag(p.hi_offset, p.stored_offset, p.committed_offset, p.next_offset, p.lo_offset)
                else {
                    continue;
                };
                ConsumerLag { pipeline, topic, partition: *id, lag }.emit();
                stalls.observe(topic, *id, (p.app_offset, p.next_offset), lag, now);
                fetching.insert((topic.as_str(), *id));
            }
        }
        stalls.retain(|t, p| fetching.contains(&(t, p)));
        let stuck = stalls.stuck(now).join("; ");
        if stuck != *reported {
            if stuck.is_empty() {
                tracing::info!(pipeline, "no partition is stuck any more");
            } else {
                tracing::error!(pipeline, "partition stuck: {stuck}");
            }
            *reported = stuck.clone();
        }
        let state = if stuck.is_empty() { Ok(()) } else { Err(format!("stuck: {stuck}")) };
        self.readiness.set(&format!("{pipeline}.partitions"), state);
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

impl<S: Stage> RunnerContext<S> {
    /// The stage's resume positions, retried under the one policy (a
    /// callback cannot poll, so it sleeps). `None` on shutdown or `Stop`.
    fn resume_positions(&self, parts: &[Tp]) -> Option<Offsets> {
        let pipeline = self.cfg.pipeline;
        let mut retrying: Option<Retrying> = None;
        loop {
            let result = self.stage.lock().expect("stage lock").assigned(parts);
            let e = match result {
                Ok(offsets) => return Some(offsets),
                Err(e) => e,
            };
            ErrorCounted { pipeline, step: "assign", error: &e }.emit();
            let delay = retrying.get_or_insert_with(|| self.cfg.retry.start()).next_delay(&e);
            match delay {
                _ if self.shutdown.requested() => return None,
                None => {
                    tracing::error!(pipeline, "cannot load resume positions, stopping: {e}");
                    self.assigned.lock().expect("assigned lock").fatal = Some(e);
                    return None;
                }
                Some(delay) => {
                    tracing::warn!(pipeline, "loading resume positions failed, retrying in {delay:?}: {e}");
                    self.readiness.set(&format!("{pipeline}.sinks"), Err(e.to_string()));
                    std::thread::sleep(delay);
                }
            }
        }
    }
}

impl<S: Stage> ConsumerContext for RunnerContext<S> {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        let pipeline = self.cfg.pipeline;
        let cooperative = matches!(consumer.rebalance_protocol(), RebalanceProtocol::Cooperative);
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let parts = parts_of(tpl);
                let Some(offsets) = self.resume_positions(&parts) else { return };
                let resume: HashMap<Tp, i64> = offsets.into_iter().collect();
                for (tp, off) in &resume {
                    if let Err(e) = tpl.set_partition_offset(&tp.topic, tp.partition, Offset::Offset(*off)) {
                        tracing::error!(pipeline, "cannot resume {tp} at {off}: {e}");
                    }
                }
                {
                    let mut a = self.assigned.lock().expect("assigned lock");
                    for tp in parts {
                        let min = resume.get(&tp).copied().unwrap_or(i64::MIN);
                        a.positions.insert(tp, min);
                    }
                    a.generation += 1;
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
                let lost = consumer.assignment_lost();
                let offsets = if lost {
                    self.stage.lock().expect("stage lock").lost(&parts);
                    Vec::new()
                } else {
                    self.stage.lock().expect("stage lock").revoked(&parts)
                };
                let mut done: BTreeMap<Tp, i64> = BTreeMap::new();
                let pending = {
                    let mut a = self.assigned.lock().expect("assigned lock");
                    for tp in &parts {
                        a.positions.remove(tp);
                        if let Some(off) = a.stored.remove(tp) {
                            done.insert(tp.clone(), off);
                        }
                    }
                    a.generation += 1;
                    a.txn_offsets.extend(offsets.iter().cloned());
                    std::mem::take(&mut a.txn_offsets)
                };
                if let Some(txn) = &self.txn {
                    // Commit what the partitions owe before they go (abort
                    // when they are already someone else's).
                    let pending: Offsets = pending.into_iter().collect();
                    let outcome = if lost {
                        match txn.abort() {
                            // A transient failure leaves it open: the loop's
                            // next abort, after a backoff, resumes it.
                            Err(e) if e.retry() == crate::error::Retry::Backoff => {
                                ErrorCounted { pipeline, step: "abort", error: &e }.emit();
                                Ok(Outcome::Aborted)
                            }
                            r => r.map(|()| Outcome::Aborted),
                        }
                    } else {
                        txn.commit(consumer, &pending, false)
                    };
                    match outcome {
                        Ok(Outcome::Committed) => {}
                        Ok(Outcome::Aborted) => self.assigned.lock().expect("assigned lock").rewind = true,
                        Err(e) => {
                            ErrorCounted { pipeline, step: "commit", error: &e }.emit();
                            self.assigned.lock().expect("assigned lock").fatal = Some(e);
                        }
                    }
                } else if !lost && (!offsets.is_empty() || !done.is_empty()) {
                    // Commit now: the next owner starts from these. What
                    // the runner stored counts too (a stage may return no
                    // offsets here), not left to librdkafka's commit on
                    // unassign. The group may refuse either once it has
                    // moved on: the next owner then replays.
                    for (tp, off) in offsets {
                        let at = done.entry(tp).or_insert(off);
                        *at = (*at).max(off);
                    }
                    let commit = tpl_of(&done.into_iter().collect::<Offsets>());
                    if let Err(e) = consumer.store_offsets(&commit) {
                        tracing::debug!(pipeline, "store on revoke: {e}");
                    }
                    if let Err(e) = consumer.commit(&commit, CommitMode::Sync) {
                        tracing::warn!(pipeline, "commit on revoke failed (the next owner replays): {e}");
                    }
                }
                // librdkafka keeps a partition's pause through unassign and
                // a later assign (the Java client drops it): a partition
                // paused by a retry and given back after it ended would
                // never fetch again. A retry still waiting re-pauses what it
                // gets (the generation changes).
                if let Err(e) = consumer.resume(tpl) {
                    tracing::debug!(pipeline, "resume before unassign: {e}");
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

/// How a retried step ended.
enum Flow<T> {
    Done(T),
    /// Shutdown came during the retries: nothing was stored.
    Shutdown,
}

/// The loop's state: the consumer, the stage, the DLQ, and the records
/// polled while a retry waited (they start the next batch).
struct Runner<'c, S: Stage> {
    cfg: &'c RunnerConfig,
    consumer: &'c BaseConsumer<RunnerContext<S>>,
    stage: &'c Arc<Mutex<S>>,
    assigned: &'c Arc<Mutex<Assigned>>,
    dlq: Dlq,
    rt: tokio::runtime::Handle,
    shutdown: &'c Shutdown,
    readiness: &'c Readiness,
    /// Paused assignment and the failing step, while a retry waits.
    paused: Option<(TopicPartitionList, Retrying)>,
    txn: Option<Arc<Txn>>,
}

impl<'c, S: Stage> Runner<'c, S> {
    fn position(&self) -> impl FnMut(&Tp) -> Option<i64> + '_ {
        let a = self.assigned.lock().expect("assigned lock");
        let positions = a.positions.clone();
        move |tp| positions.get(tp).copied()
    }

    fn generation(&self) -> u64 {
        self.assigned.lock().expect("assigned lock").generation
    }

    fn store(&self, offsets: &Offsets) {
        if offsets.is_empty() {
            return;
        }
        if self.txn.is_some() {
            // Exactly-once: committed with the next transaction.
            self.assigned.lock().expect("assigned lock").txn_offsets.extend(offsets.iter().cloned());
            return;
        }
        if let Err(e) = self.consumer.store_offsets(&tpl_of(offsets)) {
            // A partition revoked meanwhile: its new owner resumes from the stage's own offsets.
            tracing::debug!(pipeline = self.cfg.pipeline, "offset store skipped: {e}");
            return;
        }
        let mut a = self.assigned.lock().expect("assigned lock");
        for (tp, off) in offsets {
            if a.positions.contains_key(tp) {
                let at = a.stored.entry(tp.clone()).or_insert(*off);
                *at = (*at).max(*off);
            }
        }
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

    /// After a failed step: count it; stop on a `Stop` hint; else pause the
    /// assignment (once per outage) and wait out the backoff while polling.
    /// Records that arrive meanwhile are held for the next batch.
    fn wait(&mut self, step: &'static str, e: Error, held: &mut Vec<Record<'c>>) -> Result<Flow<()>> {
        let pipeline = self.cfg.pipeline;
        ErrorCounted { pipeline, step, error: &e }.emit();
        if self.paused.is_none() {
            let tpl = self.consumer.assignment().unwrap_or_default();
            if let Err(pe) = self.consumer.pause(&tpl) {
                tracing::warn!(pipeline, "pause: {pe}");
            }
            self.paused = Some((tpl, self.cfg.retry.start()));
        }
        let retrying = &mut self.paused.as_mut().expect("paused").1;
        let Some(delay) = retrying.next_delay(&e) else {
            // A send that failed because the transactional producer is
            // fenced says only "Fatal": stop with the reason instead.
            let e = self.txn.as_ref().and_then(|t| t.fatal_error()).unwrap_or(e);
            tracing::error!(pipeline, step, "stopping: retrying cannot help: {e}");
            return Err(e);
        };
        let attempt = retrying.attempts();
        self.readiness.set(&format!("{pipeline}.sinks"), Err(format!("{}: {e}", e.class())));
        SinkRetry { pipeline, sink: e.class(), attempt, delay, error: &e.to_string() }.emit();
        let until = Instant::now() + delay;
        let mut generation = self.generation();
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if self.shutdown.requested() {
                return Ok(Flow::Shutdown);
            }
            if left.is_zero() {
                return Ok(Flow::Done(()));
            }
            // Polling keeps the member in the group and serves rebalances.
            match self.consumer.poll(left.min(Duration::from_millis(50))) {
                Some(Ok(m)) => held.push(m),
                Some(Err(err)) => self.consume_error(err),
                None => {}
            }
            let now = self.generation();
            if now != generation {
                // Newly assigned partitions wait with the others.
                generation = now;
                let tpl = self.consumer.assignment().unwrap_or_default();
                if let Err(pe) = self.consumer.pause(&tpl) {
                    tracing::warn!(pipeline, "pause: {pe}");
                }
                if let Some((paused, _)) = &mut self.paused {
                    *paused = tpl;
                }
            }
        }
    }

    /// A consume error: counted, and remembered for telling a stuck partition.
    fn consume_error(&self, e: rdkafka::error::KafkaError) {
        let e = Error::kafka("consume")(e);
        ErrorCounted { pipeline: self.cfg.pipeline, step: "consume", error: &e }.emit();
        self.consumer.context().stalls.lock().expect("stalls lock").0.consume_error(e.to_string());
    }

    /// The step succeeded: resume fetching if it had been paused.
    fn recovered(&mut self) {
        if let Some((paused, retrying)) = &self.paused {
            let pipeline = self.cfg.pipeline;
            // Resume the assignment as it is now (a rebalance may have
            // changed it) and whatever was paused and since revoked.
            let mut tpl = self.consumer.assignment().unwrap_or_default();
            for e in paused.elements() {
                if tpl.find_partition(e.topic(), e.partition()).is_none() {
                    tpl.add_partition(e.topic(), e.partition());
                }
            }
            if let Err(e) = self.consumer.resume(&tpl) {
                tracing::warn!(pipeline, "resume: {e}");
            }
            SinkRecovered { pipeline, sink: "all", attempts: retrying.attempts() + 1, outage: retrying.outage() }
                .emit();
            self.readiness.set(&format!("{pipeline}.sinks"), Ok(()));
            self.paused = None;
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
        let mut batch = loop {
            let decoded = self.cfg.decoder.batch(polled.iter().map(Raw::from), self.position(), full);
            match decoded {
                Ok(b) => break b,
                Err(e) => match self.wait("decode", e, held)? {
                    Flow::Done(()) => continue,
                    Flow::Shutdown => return Ok(Flow::Shutdown),
                },
            }
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
                    if self.txn.is_some() {
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

    /// The stage's tick, retried like a batch. Exactly-once: a tick that
    /// checkpointed (returned offsets) commits the transaction.
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
                    if !offsets.is_empty() {
                        self.commit_transaction(held, false)?;
                    }
                    self.recovered();
                    return Ok(Flow::Done(()));
                }
                Err(e) => {
                    if let Flow::Shutdown = self.wait("tick", e, held)? {
                        return Ok(Flow::Shutdown);
                    }
                    if self.txn.is_some() {
                        return self.abort_and_rewind(held);
                    }
                }
            }
        }
    }
}

impl<'c, S: Stage> Runner<'c, S> {
    /// Exactly-once: commits the open transaction with the offsets gathered
    /// since the last one; on an abort, rewinds.
    fn commit_transaction(&mut self, held: &mut Vec<Record<'c>>, last: bool) -> Result<()> {
        let Some(txn) = self.txn.clone() else { return Ok(()) };
        let offsets: Offsets =
            std::mem::take(&mut self.assigned.lock().expect("assigned lock").txn_offsets).into_iter().collect();
        let started = Instant::now();
        match txn.commit(self.consumer, &offsets, last) {
            Ok(Outcome::Committed) => {
                TransactionCommitted { pipeline: self.cfg.pipeline, elapsed: started.elapsed() }.emit();
                Ok(())
            }
            Ok(Outcome::Aborted) if last => Ok(()),
            Ok(Outcome::Aborted) => self.rewind(held),
            Err(e) => {
                let e = txn.fatal_error().unwrap_or(e);
                ErrorCounted { pipeline: self.cfg.pipeline, step: "commit", error: &e }.emit();
                Err(e)
            }
        }
    }

    /// Exactly-once: the rebalance callback aborted the transaction.
    fn rewind_requested(&self) -> bool {
        self.assigned.lock().expect("assigned lock").rewind
    }

    /// Exactly-once, after a failed step (once its backoff is over): the
    /// open transaction may miss what was refused (librdkafka makes it
    /// abortable) and must never commit, and resending into the next one
    /// would duplicate what the rewind recomputes. So abort it (retried
    /// like any step) and go back to the last commit; the records are read
    /// again from there.
    fn abort_and_rewind(&mut self, held: &mut Vec<Record<'c>>) -> Result<Flow<()>> {
        let Some(txn) = self.txn.clone() else { return Ok(Flow::Done(())) };
        // Also after a revoke's abort: one that failed left the transaction
        // open, and aborting a fresh, empty one costs a round trip only.
        while let Err(e) = txn.abort() {
            if let Flow::Shutdown = self.wait("abort", e, held)? {
                return Ok(Flow::Shutdown);
            }
        }
        self.rewind(held)?;
        self.recovered();
        Ok(Flow::Done(()))
    }

    /// Exactly-once, after an abort: the stage restores its committed state
    /// and every assigned partition goes back to where it resumes.
    fn rewind(&mut self, held: &mut Vec<Record<'c>>) -> Result<()> {
        let pipeline = self.cfg.pipeline;
        held.clear();
        self.assigned.lock().expect("assigned lock").rewind = false;
        let parts = parts_of(&self.consumer.assignment().map_err(Error::kafka("read the assignment"))?);
        let mut retrying = self.cfg.retry.start();
        let resume: HashMap<Tp, i64> = loop {
            let result = self.stage.lock().expect("stage lock").rewind(&parts);
            match result {
                Ok(offsets) => break offsets.into_iter().collect(),
                Err(e) => {
                    ErrorCounted { pipeline, step: "rewind", error: &e }.emit();
                    let Some(delay) = retrying.next_delay(&e) else { return Err(e) };
                    std::thread::sleep(delay);
                }
            }
        };
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
        tracing::info!(pipeline, partitions = parts.len(), "rewound to the last committed transaction");
        Ok(())
    }
}

/// Runs `stage` until shutdown, or until an error retrying cannot fix.
/// Blocking: call from a dedicated thread (e.g. `spawn_blocking`) inside a
/// tokio runtime.
pub fn run<S: Stage>(cfg: RunnerConfig, stage: S, shutdown: Shutdown, readiness: Readiness) -> Result<()> {
    let pipeline = cfg.pipeline;
    readiness.set(&format!("{pipeline}.assigned"), Err("waiting for partitions".into()));
    readiness.set(&format!("{pipeline}.sinks"), Ok(()));
    let stage = Arc::new(Mutex::new(stage));
    let assigned = Arc::new(Mutex::new(Assigned::default()));
    let txn = cfg.txn.clone().map(|p| Arc::new(Txn::new(pipeline, p, shutdown.clone())));
    if let Some(t) = &txn {
        t.init()?;
        tracing::info!(pipeline, transactional_id = t.id(), "exactly-once: transactions initialized");
    }
    let ctx = RunnerContext {
        stalls: Mutex::new((super::stall::Stalls::new(super::stall::STUCK_AFTER), String::new())),
        cfg: cfg.clone(),
        txn: txn.clone(),
        stage: stage.clone(),
        assigned: assigned.clone(),
        shutdown: shutdown.clone(),
        readiness: readiness.clone(),
    };
    let mut client = group_config_with(&cfg.kafka, &cfg.group, cfg.assignor);
    if txn.is_some() {
        // Offsets commit with the transactions, never on their own.
        client.set("enable.auto.commit", "false");
    }
    let consumer: BaseConsumer<RunnerContext<S>> =
        client.create_with_context(ctx).map_err(Error::kafka(format!("create consumer for group {}", cfg.group)))?;
    let topics: Vec<&str> = cfg.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics).map_err(Error::kafka(format!("subscribe to {topics:?}")))?;
    tracing::info!(pipeline, group = %cfg.group, topics = ?cfg.topics, "consuming");
    let mut runner = Runner {
        cfg: &cfg,
        consumer: &consumer,
        stage: &stage,
        assigned: &assigned,
        dlq: match &cfg.txn {
            Some(t) => Dlq::on(t.producer.clone(), cfg.dlq_topic.clone(), pipeline),
            None => Dlq::new(&cfg.kafka, cfg.dlq_topic.clone(), pipeline)?,
        },
        rt: tokio::runtime::Handle::current(),
        shutdown: &shutdown,
        readiness: &readiness,
        paused: None,
        txn,
    };
    let mut result = consume(&mut runner);
    tracing::info!(pipeline, "stopping: finishing in-flight work");
    let offsets = stage.lock().expect("stage lock").finish();
    runner.store(&offsets);
    if runner.txn.is_some() {
        if result.is_ok() {
            result = runner.commit_transaction(&mut Vec::new(), true);
        }
    } else if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
        tracing::debug!(pipeline, "final commit: {e}");
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

fn consume<S: Stage>(runner: &mut Runner<'_, S>) -> Result<()> {
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
            // A revoke during the poll aborted the transaction: the batch
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
