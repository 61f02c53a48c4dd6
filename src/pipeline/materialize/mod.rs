//! The two materializers (design §2, §5, §6): `materialize-postgres` and
//! `materialize-redis`, each its own consumer group on the shared runner
//! (cooperative-sticky: their partitions are independent, so a rebalance
//! only stops the partitions that move).
//!
//! The runner decodes, dead-letters and stores offsets; what the two share
//! beyond that lives here, so the stages differ only in their `Store`:
//! - the store's own offsets, loaded on assignment and handed to the assign
//!   call, so a restart or a new owner resumes exactly where the store is (a
//!   partition the store holds nothing of starts at the log's beginning);
//! - store promotion (design §4): each batch commit is one attempt of the
//!   pure state machine in `domain::promotion`; a batch the runner had to
//!   retry counts as a first-attempt failure. Role changes are produced to
//!   `udo.promotions.v1` keyed by store, with the machine's deterministic id.
//!
//! "Caught up" for promotion is judged without extra broker round trips: a
//! batch that is not `full` means the runner's poll ran dry before the
//! batch filled, i.e. nothing more was fetched (lag 0); a full batch means at
//! least one more record may be waiting (lag reported as 1, a lower bound:
//! the exact per-partition figure is `udo_consumer_lag_records`). When no
//! batch arrives for a while the store is caught up by definition.
//!
//! A restart restores the role from the store itself (the latest promotion
//! event it holds for itself), with a full window at 100%, so a replay or a
//! restart does not re-emit a promotion that already happened.

pub mod postgres;
pub mod redis;

use super::batch::{Batch, Decoder, Offsets, Part, Reject, Tp};
use super::commit::GroupCommit;
use super::runner::Stage;
use super::{Pipeline, RunOptions, launch, need, once};
use crate::config::CommonArgs;
use crate::domain::promotion::{Attempt, PromotionConfig, StorePromotion};
use crate::domain::{Event, Promotion, StoreRole};
use crate::error::{Error, Result};
use crate::shutdown::Shutdown;
use crate::sinks::kafka::{Outgoing, Outputs};
use crate::sources::kafka::Assignor;
use crate::telemetry::Readiness;
use crate::telemetry::events::{ErrorCounted, PromotionEmitted, SinkSuccessRatio, SinkWrite};
use crate::topics::Topics;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::runtime::Handle;

/// State and plumbing both materializer stages share.
pub(crate) struct Common {
    pub rt: Handle,
    pub pipeline: &'static str,
    /// The store's name: metric label, promotion subject (`postgres`, `redis`).
    pub sink: &'static str,
    pub group: String,
    decoder: Decoder,
    promo_cfg: PromotionConfig,
    promotion: StorePromotion,
    /// Promotion events (sent with the batch; awaited at the next tick).
    outputs: Outputs,
    promotions_topic: String,
    /// The current batch failed an attempt (its commit is a retry).
    retried: bool,
    /// When the current batch's first attempt started.
    started: Option<Instant>,
    /// Whether the last write left records behind, and its position.
    behind: bool,
    last_at: i64,
    last_batch: Instant,
    last_contact: Instant,
    readiness: Readiness,
}

impl Common {
    #[allow(clippy::too_many_arguments)]
    fn new(
        pipeline: &'static str,
        sink: &'static str,
        group: String,
        decoder: Decoder,
        topics: &Topics,
        kafka: &crate::config::KafkaConfig,
        promo_cfg: PromotionConfig,
        deployment: crate::domain::rules::Deployment,
        readiness: Readiness,
    ) -> Result<Common> {
        let outputs = Outputs::new(kafka, pipeline, |c| {
            c.set("linger.ms", "1");
        })?;
        Ok(Common {
            rt: Handle::current(),
            pipeline,
            sink,
            group,
            decoder,
            promotion: StorePromotion::new(sink).in_deployment(deployment),
            promo_cfg,
            outputs,
            promotions_topic: topics.promotions.clone(),
            retried: false,
            started: None,
            behind: false,
            last_at: 0,
            last_batch: Instant::now(),
            last_contact: Instant::now(),
            readiness,
        })
    }

    /// Resumes the role the store last recorded for itself (see module docs).
    fn restore_role(&mut self, latest: Option<Promotion>) {
        let Some(p) = latest.filter(|p| p.to_role == StoreRole::Primary) else { return };
        let window = self.promo_cfg.window.max(1);
        let state = serde_json::json!({
            "store": self.sink, "role": StoreRole::Primary, "recent": vec![true; window], "successes": window,
        });
        match serde_json::from_value::<StorePromotion>(state) {
            Ok(s) => {
                tracing::info!(
                    pipeline = self.pipeline,
                    store = self.sink,
                    since = p.occurred_at,
                    "resuming as PRIMARY"
                );
                self.promotion = s;
            }
            Err(e) => tracing::warn!(pipeline = self.pipeline, "cannot restore the store role: {e}"),
        }
        self.emit_ratio();
    }

    fn emit_ratio(&self) {
        SinkSuccessRatio {
            pipeline: self.pipeline,
            sink: self.sink,
            ratio: self.promotion.success_ratio(),
            primary: self.promotion.role() == StoreRole::Primary,
        }
        .emit();
    }

    pub fn set_ready(&mut self, state: std::result::Result<(), String>) {
        if state.is_ok() {
            self.last_contact = Instant::now();
        }
        self.readiness.set(&format!("{}.{}", self.pipeline, self.sink), state);
    }

    /// Positions the store holds for newly assigned partitions; they become
    /// the resume offsets of the assign call. The store is the source of
    /// truth: a partition it holds nothing of starts at the beginning of the
    /// log (offset 0, or the earliest retained one), whatever the group
    /// committed, so a new or wiped store is rebuilt from Kafka.
    fn assign(&mut self, parts: &[Tp], stored: HashMap<(String, i32), i64>) -> Offsets {
        self.set_ready(Ok(()));
        parts
            .iter()
            .map(|tp| (tp.clone(), stored.get(&(tp.topic.clone(), tp.partition)).copied().unwrap_or(0)))
            .collect()
    }

    /// A batch became durable: metrics, readiness, promotion.
    fn committed(&mut self, batch: &Batch<'_>, records: u64) {
        if batch.parts.iter().all(|p| p.records.is_empty()) && batch.rejects.is_empty() {
            // Offsets moved past transaction markers: not a write attempt.
            self.started = None;
            return;
        }
        let elapsed = self.started.take().map_or(Duration::ZERO, |s| s.elapsed());
        let first_attempt_ok = !std::mem::take(&mut self.retried);
        self.last_batch = Instant::now();
        SinkWrite { pipeline: self.pipeline, sink: self.sink, records, elapsed }.emit();
        self.set_ready(Ok(()));
        if first_attempt_ok {
            self.record(true, !batch.full, batch.at);
        }
    }

    /// An attempt failed: the first failure of a batch is the promotion
    /// machine's failed attempt (its retries are the same attempt).
    fn failed(&mut self, at: i64, e: &Error) {
        self.last_batch = Instant::now();
        if matches!((e, self.sink), (Error::Postgres { .. }, "postgres") | (Error::Redis { .. }, "redis")) {
            self.set_ready(Err(e.to_string()));
        }
        if !self.retried {
            self.retried = true;
            self.record(false, false, at);
        }
    }

    /// One write attempt for the promotion state machine.
    fn record(&mut self, first_attempt_ok: bool, caught_up: bool, at: i64) {
        let at = if at == i64::MIN { self.last_at } else { at };
        self.behind = !caught_up;
        self.last_at = at;
        let lag = if caught_up { 0 } else { 1 };
        let source = format!("udo-{}", self.pipeline);
        let event = self.promotion.record(&self.promo_cfg, &source, Attempt { first_attempt_ok, lag, at });
        self.emit_ratio();
        if let Some(p) = event {
            self.queue_promotion(p);
        }
    }

    fn queue_promotion(&mut self, p: Promotion) {
        PromotionEmitted { pipeline: self.pipeline, store: &p.store, to_role: p.to_role.as_str(), reason: &p.reason }
            .emit();
        let event = Event::Promotion(p);
        let sent = self.decoder.encode(&self.promotions_topic, &event).and_then(|payload| {
            self.outputs.send(vec![Outgoing {
                partition: None,
                topic: self.promotions_topic.clone(),
                key: self.sink.as_bytes().to_vec(),
                payload: Some(payload),
                headers: Vec::new(),
            }])
        });
        if let Err(e) = sent {
            // Kept by `outputs` (a send error) or a bug (an encode error): counted either way.
            ErrorCounted { pipeline: self.pipeline, step: "produce", error: &e }.emit();
        }
    }

    /// Time-driven work: notice being caught up when no batch comes,
    /// whether `ping` says the store is reachable, and wait for the
    /// promotion events sent (`Err` when the broker refused one: the runner
    /// retries the tick; the store writes they describe are durable).
    fn tick(&mut self, ping: impl FnOnce(&Common) -> Result<()>) -> Result<()> {
        let quiet = self.last_batch.elapsed();
        if self.behind && quiet >= Duration::from_secs(1) {
            self.behind = false;
            let source = format!("udo-{}", self.pipeline);
            if let Some(p) = self.promotion.observe_lag(&self.promo_cfg, &source, 0, self.last_at) {
                self.queue_promotion(p);
            }
        }
        if quiet >= Duration::from_secs(5) && self.last_contact.elapsed() >= Duration::from_secs(5) {
            let state = ping(self).map_err(|e| e.to_string());
            if state.is_err() {
                // Probe again in 5 s, not at every tick.
                self.last_contact = Instant::now();
            }
            self.set_ready(state);
        }
        self.outputs.flush()
    }
}

/// Connects the store (migrations, dimension check, script load), restores
/// the store's role, and starts the materializer (group commit: the store
/// keeps its offsets with its rows, design §6).
pub(crate) async fn assemble(
    pipeline: Pipeline,
    common: &CommonArgs,
    opts: &RunOptions,
    group: String,
    shutdown: Shutdown,
    readiness: Readiness,
) -> Result<tokio::task::JoinHandle<Result<()>>> {
    let retry = super::retry::RetryPolicy::of(&opts.settings);
    let topics = Topics::with_prefix(&common.topic_prefix);
    let decoder = crate::wiring::decoder(common, opts.output_format);
    let cfg = |name: &'static str, inputs: Vec<String>| {
        super::runner_config(name, common, &opts.settings, &decoder, group.clone(), inputs, Assignor::CooperativeSticky)
    };
    let shared = |name: &'static str, sink: &'static str| {
        Common::new(
            name,
            sink,
            group.clone(),
            decoder.clone(),
            &topics,
            &common.kafka,
            opts.settings.promotion.clone(),
            common.deployment(),
            readiness.clone(),
        )
    };
    match pipeline {
        Pipeline::MaterializePostgres => {
            let url = need(&opts.database_url, "--database-url / DATABASE_URL", pipeline)?;
            let dim = u32::try_from(common.embedding_dim)
                .map_err(|_| Error::Config(format!("UDO_EMBEDDING_DIM {} is too large", common.embedding_dim)))?;
            let sink = crate::sinks::postgres::PgSink::connect(url, dim).await?;
            let mut c = shared(postgres::PIPELINE, "postgres")?;
            c.restore_role(sink.latest_promotion("postgres").await?);
            c.set_ready(Ok(()));
            let parts = (
                cfg(postgres::PIPELINE, topics.postgres_inputs()),
                MaterializeStage::new(c, sink),
                GroupCommit::new(postgres::PIPELINE),
            );
            Ok(launch(retry, shutdown, readiness, once(parts)))
        }
        Pipeline::MaterializeRedis => {
            let url = need(&opts.redis_url, "--redis-url / REDIS_URL", pipeline)?;
            let sink = crate::sinks::redis::RedisSink::connect(url).await?;
            let mut c = shared(redis::PIPELINE, "redis")?;
            c.restore_role(sink.store_role("redis").await?);
            c.set_ready(Ok(()));
            let parts = (
                cfg(redis::PIPELINE, topics.redis_inputs()),
                MaterializeStage::new(c, sink),
                GroupCommit::new(redis::PIPELINE),
            );
            Ok(launch(retry, shutdown, readiness, once(parts)))
        }
        Pipeline::Analyze | Pipeline::NotifyAlertmanager => {
            Err(Error::Internal(format!("{} is not a materializer", pipeline.name())))
        }
    }
}

/// What a store committed.
#[derive(Debug, Default, Clone, Copy)]
pub struct Committed {
    /// Events handed to the store.
    pub records: u64,
    /// Rows the store did not have yet (Postgres); partition batches
    /// applied (Redis).
    pub changed: u64,
}

/// What differs between the two materializers (and what `replay` writes
/// through): a store's write of decoded partition batches in two steps,
/// prepare then commit; its stored offsets; its ping.
// Only ever awaited on the runner thread (block_on): no Send bound needed.
#[allow(async_fn_in_trait)]
pub trait Store: Send + Sync + 'static {
    /// Prepared writes, not yet durable (a Postgres transaction).
    type Prepared: Send;
    /// Stored next offsets of `group` for `partitions` (absent when none).
    async fn stored_offsets(&self, group: &str, partitions: &[(String, i32)]) -> Result<HashMap<(String, i32), i64>>;
    async fn ping(&self) -> Result<()>;
    /// Prepares the writes of `parts` for `group`, each partition with its
    /// next offset, and returns the records the store refuses (reused ids).
    async fn write(&self, group: &str, parts: &[&Part<'_>]) -> Result<(Self::Prepared, Vec<Reject>)>;
    /// Makes prepared writes durable, offsets included.
    async fn commit(&self, group: &str, prepared: Self::Prepared, parts: &[&Part<'_>]) -> Result<Committed>;
}

/// A materializer: the shared plumbing around one store.
pub(crate) struct MaterializeStage<S: Store> {
    c: Common,
    store: S,
    prepared: Option<S::Prepared>,
}

impl<S: Store> MaterializeStage<S> {
    pub(crate) fn new(c: Common, store: S) -> MaterializeStage<S> {
        MaterializeStage { c, store, prepared: None }
    }
}

impl<S: Store> Stage for MaterializeStage<S> {
    fn assigned(&mut self, parts: &[Tp]) -> Result<Offsets> {
        let keys: Vec<(String, i32)> = parts.iter().map(|tp| (tp.topic.clone(), tp.partition)).collect();
        let stored = self.c.rt.block_on(self.store.stored_offsets(&self.c.group, &keys))?;
        Ok(self.c.assign(parts, stored))
    }

    fn revoked(&mut self, _parts: &[Tp]) -> Offsets {
        // Every batch is durable before the next poll: the offsets the
        // runner stored are final.
        Vec::new()
    }

    fn write(&mut self, batch: &Batch<'_>) -> Result<Vec<Reject>> {
        self.c.started.get_or_insert_with(Instant::now);
        let parts: Vec<&Part<'_>> = batch.parts.iter().collect();
        let result = self.c.rt.block_on(self.store.write(&self.c.group, &parts));
        match result {
            Ok((prepared, rejects)) => {
                self.prepared = Some(prepared);
                Ok(rejects)
            }
            Err(e) => {
                self.c.failed(batch.at, &e);
                Err(e)
            }
        }
    }

    fn commit(&mut self, batch: &Batch<'_>) -> Result<Offsets> {
        let prepared = self.prepared.take().ok_or_else(|| Error::Internal("commit without a write".into()))?;
        let parts: Vec<&Part<'_>> = batch.parts.iter().collect();
        match self.c.rt.block_on(self.store.commit(&self.c.group, prepared, &parts)) {
            Ok(done) => {
                self.c.committed(batch, done.records);
                Ok(batch.next_offsets())
            }
            Err(e) => {
                self.c.failed(batch.at, &e);
                Err(e)
            }
        }
    }

    fn abort(&mut self) {
        // Dropping a Postgres transaction rolls it back.
        self.prepared = None;
        // A DLQ failure between write and commit fails the attempt too.
        if !self.c.retried {
            self.c.retried = true;
            let at = self.c.last_at;
            self.c.record(false, false, at);
        }
    }

    fn tick(&mut self) -> Result<Offsets> {
        let store = &self.store;
        self.c.tick(|c| {
            c.rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(2), store.ping())
                    .await
                    .map_err(|_| Error::Unavailable(format!("{}: ping timed out", c.sink)))?
            })
        })?;
        Ok(Vec::new())
    }

    fn finish(&mut self) -> Offsets {
        if let Err(e) = self.c.outputs.flush() {
            // The role change is recomputed from the store's history on restart.
            ErrorCounted { pipeline: self.c.pipeline, step: "produce", error: &e }.emit();
        }
        Vec::new()
    }
}

#[cfg(test)]
mod tests;
