//! The two materializers (DESIGN §2, §5, §6): `materialize-postgres` and
//! `materialize-redis`, each its own consumer group on the shared runner
//! (cooperative-sticky: their partitions are independent, so a rebalance
//! only stops the partitions that move).
//!
//! What they share lives here, so the two stages differ only in how a batch
//! reaches their store:
//! - decoding per topic (the records `topics/*.yaml` declares for it) and
//!   grouping a runner batch by partition, skipping records below the
//!   position the store already holds (a retried batch, a rebalance overlap);
//! - dead letters: sent once per record even when the batch is retried (a
//!   DLQ write is not idempotent, and the DLQ count must be exact);
//! - the store's own offsets, loaded on assignment and handed to the assign
//!   call, so a restart or a new owner resumes exactly where the store is (a
//!   partition the store holds nothing of starts at the log's beginning);
//! - store promotion (DESIGN §4): each batch write is one attempt of the
//!   pure state machine in `domain::promotion`; a batch the runner had to
//!   retry counts as a first-attempt failure. Role changes are produced to
//!   `udo.promotions.v1` keyed by store, with the machine's deterministic id.
//!
//! "Caught up" for promotion is judged without extra broker round trips: a
//! batch smaller than `batch_size` means the runner's poll ran dry before the
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

use super::runner::{Offsets, RunnerConfig, Stage, Tp};
use super::{Pipeline, RunOptions, need};
use crate::codec::Codec;
use crate::config::CommonArgs;
use crate::domain::promotion::{Attempt, PromotionConfig, StorePromotion};
use crate::domain::{Event, Promotion, StoreRole};
use crate::error::{Error, Result};
use crate::shutdown::Shutdown;
use crate::sinks::dlq::{Dlq, Reason};
use crate::sinks::kafka::{Outgoing, produce_all};
use crate::sources::kafka::Assignor;
use crate::telemetry::Readiness;
use crate::telemetry::events::{PromotionEmitted, RecordsProduced, SinkSuccessRatio, SinkWrite};
use crate::topics::{TopicCatalog, names};
use crate::pipeline::runner::Record;
use rdkafka::message::Message;
use rdkafka::producer::FutureProducer;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};
use tokio::runtime::Handle;

/// Full topic names (with any prefix) the materializers read and write.
#[derive(Debug, Clone)]
pub struct MaterializeTopics {
    pub writes: String,
    pub feedback: String,
    pub latency: String,
    pub windows: String,
    pub alerts: String,
    pub degradations: String,
    pub promotions: String,
    pub dlq: String,
}

impl MaterializeTopics {
    pub fn with_prefix(prefix: &str) -> MaterializeTopics {
        let t = |n: &str| format!("{prefix}{n}");
        MaterializeTopics {
            writes: t(names::WRITES),
            feedback: t(names::FEEDBACK),
            latency: t(names::LATENCY),
            windows: t(names::WINDOWS),
            alerts: t(names::ALERTS),
            degradations: t(names::DEGRADATIONS),
            promotions: t(names::PROMOTIONS),
            dlq: t(names::DLQ),
        }
    }

    fn outputs(&self) -> [String; 4] {
        [self.windows.clone(), self.alerts.clone(), self.degradations.clone(), self.promotions.clone()]
    }

    /// Postgres holds everything: the three inputs and every output.
    pub fn postgres_inputs(&self) -> Vec<String> {
        let mut t = vec![self.writes.clone(), self.feedback.clone(), self.latency.clone()];
        t.extend(self.outputs());
        t
    }

    /// Redis holds current state: context chunks (writes) and the outputs.
    pub fn redis_inputs(&self) -> Vec<String> {
        let mut t = vec![self.writes.clone()];
        t.extend(self.outputs());
        t
    }

    /// (full name, contract name) of every topic read or written.
    fn all(&self) -> [(&str, &'static str); 7] {
        [
            (&self.writes, names::WRITES),
            (&self.feedback, names::FEEDBACK),
            (&self.latency, names::LATENCY),
            (&self.windows, names::WINDOWS),
            (&self.alerts, names::ALERTS),
            (&self.degradations, names::DEGRADATIONS),
            (&self.promotions, names::PROMOTIONS),
        ]
    }
}

/// One partition's share of a runner batch, decoded.
pub(crate) struct Part<'m> {
    pub tp: Tp,
    /// Offset after the last record of this partition in the batch.
    pub next_offset: i64,
    /// Decoded records in offset order (undecodable ones are dead letters).
    pub events: Vec<(i64, Event)>,
    /// Every record of the partition in the batch, by offset (for rejects).
    pub msgs: HashMap<i64, &'m Record<'m>>,
}

/// A batch, decoded: per-partition parts, dead letters, and the newest
/// event time (the deterministic position of the write attempt).
pub(crate) struct Decoded<'m> {
    pub parts: Vec<Part<'m>>,
    pub dead: Vec<(&'m Record<'m>, Reason)>,
    pub at: i64,
}

/// What a successful batch write did.
#[derive(Debug, Default)]
pub(crate) struct Written {
    pub offsets: Offsets,
    /// Events handed to the store (not counting dead letters).
    pub records: u64,
    pub at: i64,
}

/// Identity of a runner batch, to tell a retry from a new batch.
type BatchId = (Tp, i64, Tp, i64, usize);

fn batch_id(batch: &[Record<'_>]) -> Option<BatchId> {
    let (first, last) = (batch.first()?, batch.last()?);
    Some((Tp::of(first), first.offset(), Tp::of(last), last.offset(), batch.len()))
}

/// State and plumbing both materializer stages share.
pub(crate) struct Common {
    pub rt: Handle,
    pub pipeline: &'static str,
    /// The store's name: metric label, promotion subject (`postgres`, `redis`).
    pub sink: &'static str,
    pub group: String,
    codec: Codec,
    allowed: HashMap<String, Vec<String>>,
    dlq: Dlq,
    /// Records already dead-lettered whose partition position has not yet
    /// moved past them (a retried batch must not send them again).
    dlq_sent: HashSet<(Tp, i64)>,
    /// Next offset to write per assigned partition (what the store holds).
    next: HashMap<Tp, i64>,
    batch_size: usize,
    promo_cfg: PromotionConfig,
    promotion: StorePromotion,
    producer: FutureProducer,
    promotions_topic: String,
    /// Promotion events not yet acknowledged by the broker.
    pending: Vec<Outgoing>,
    /// The batch whose last attempt failed (its next attempt is a retry).
    failed: Option<BatchId>,
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
        rt: Handle,
        pipeline: &'static str,
        sink: &'static str,
        group: String,
        codec: Codec,
        catalog: &TopicCatalog,
        topics: &MaterializeTopics,
        kafka: &crate::config::KafkaConfig,
        batch_size: usize,
        promo_cfg: PromotionConfig,
        readiness: Readiness,
    ) -> Result<Common> {
        let mut allowed = HashMap::new();
        for (full, contract) in topics.all() {
            allowed.insert(full.to_string(), catalog.records(contract).map_err(Error::Config)?.to_vec());
        }
        let producer: FutureProducer = crate::sinks::kafka::producer_config_with(kafka, |c| {
            c.set("client.id", format!("udo-{pipeline}")).set("linger.ms", "1");
        })
        .create()
            .map_err(Error::kafka("create promotion producer"))?;
        let dlq = Dlq::new(kafka, topics.dlq.clone(), pipeline)?;
        Ok(Common {
            rt,
            pipeline,
            sink,
            group,
            codec,
            allowed,
            dlq,
            dlq_sent: HashSet::new(),
            next: HashMap::new(),
            batch_size,
            promotion: StorePromotion::new(sink),
            promo_cfg,
            producer,
            promotions_topic: topics.promotions.clone(),
            pending: Vec::new(),
            failed: None,
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
            "store": self.sink, "role": "PRIMARY", "recent": vec![true; window], "successes": window,
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
        let mut offsets = Vec::new();
        for tp in parts {
            let off = stored.get(&(tp.topic.clone(), tp.partition)).copied().unwrap_or(0);
            self.next.insert(tp.clone(), off);
            offsets.push((tp.clone(), off));
        }
        offsets
    }

    fn revoke(&mut self, parts: &[Tp]) -> Offsets {
        // Every batch is durable before the next poll: nothing is in flight.
        let offsets = parts.iter().filter_map(|tp| self.next.remove(tp).map(|off| (tp.clone(), off))).collect();
        self.dlq_sent.retain(|(tp, _)| !parts.contains(tp));
        offsets
    }

    fn finish(&mut self) -> Offsets {
        self.flush_promotions();
        self.next.iter().map(|(tp, off)| (tp.clone(), *off)).collect()
    }

    /// Decodes a batch by partition, skipping what the store already holds.
    /// `Err` only when decoding cannot be judged now (schema registry down).
    pub fn decode<'m>(&self, batch: &'m [Record<'m>]) -> Result<Decoded<'m>> {
        let mut parts: BTreeMap<Tp, Part<'m>> = BTreeMap::new();
        let mut dead = Vec::new();
        let mut at = i64::MIN;
        for msg in batch {
            let tp = Tp::of(msg);
            let offset = msg.offset();
            if offset < self.next.get(&tp).copied().unwrap_or(0) {
                continue;
            }
            let part = parts.entry(tp.clone()).or_insert_with(|| Part {
                tp,
                next_offset: offset + 1,
                events: Vec::new(),
                msgs: HashMap::new(),
            });
            part.next_offset = part.next_offset.max(offset + 1);
            part.msgs.insert(offset, msg);
            let allowed = self.allowed.get(msg.topic()).map(Vec::as_slice).unwrap_or(&[]);
            match self.codec.decode(allowed, msg.payload().unwrap_or(&[])) {
                Ok(event) => {
                    at = at.max(event.occurred_at());
                    part.events.push((offset, event));
                }
                Err(e) if e.class.is_retryable() => {
                    return Err(Error::Failed(format!("decode {}[{}]@{offset}: {e}", msg.topic(), msg.partition())));
                }
                Err(e) => {
                    if let Some(ts) = msg.timestamp().to_millis() {
                        at = at.max(ts);
                    }
                    dead.push((msg, Reason { class: e.class.as_str().into(), message: e.to_string() }));
                }
            }
        }
        Ok(Decoded { parts: parts.into_values().collect(), dead, at })
    }

    /// Dead-letters the records not already sent, and waits for the broker.
    pub async fn send_dead(&mut self, dead: &[(&Record<'_>, Reason)]) -> Result<()> {
        let fresh: Vec<(&Record<'_>, Reason)> = dead
            .iter()
            .filter(|(m, _)| !self.dlq_sent.contains(&(Tp::of(m), m.offset())))
            .map(|(m, r)| (*m, r.clone()))
            .collect();
        if fresh.is_empty() {
            return Ok(());
        }
        self.dlq.send_all(&fresh).await?;
        self.dlq_sent.extend(fresh.iter().map(|(m, _)| (Tp::of(m), m.offset())));
        Ok(())
    }

    /// Runs one attempt of `write` over `batch` and does the bookkeeping:
    /// positions, metrics, readiness, promotion.
    fn attempt(
        &mut self,
        batch: &[Record<'_>],
        write: impl FnOnce(&mut Common) -> Result<Written>,
    ) -> Result<Offsets> {
        let id = batch_id(batch);
        let retry = id.is_some() && self.failed == id;
        let started = Instant::now();
        let result = write(self);
        self.last_batch = Instant::now();
        match result {
            Ok(w) => {
                self.failed = None;
                for (tp, off) in &w.offsets {
                    self.next.insert(tp.clone(), *off);
                    self.dlq_sent.retain(|(t, o)| t != tp || *o >= *off);
                }
                if !w.offsets.is_empty() {
                    SinkWrite {
                        pipeline: self.pipeline,
                        sink: self.sink,
                        records: w.records,
                        elapsed: started.elapsed(),
                    }
                    .emit();
                    self.set_ready(Ok(()));
                    let caught_up = batch.len() < self.batch_size;
                    self.record(!retry, caught_up, w.at);
                }
                self.flush_promotions();
                Ok(w.offsets)
            }
            Err(e) => {
                self.failed = id;
                if super::runner::sink_of(&e) == self.sink {
                    self.set_ready(Err(e.to_string()));
                }
                Err(e)
            }
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
        let to_role = match p.to_role {
            StoreRole::Primary => "PRIMARY",
            StoreRole::Shadow => "SHADOW",
        };
        PromotionEmitted { pipeline: self.pipeline, store: &p.store, to_role, reason: &p.reason }.emit();
        let topic = &self.promotions_topic;
        let allowed = self.allowed.get(topic).map(Vec::as_slice).unwrap_or(&[]);
        let event = Event::Promotion(p);
        match self.codec.encode(topic, allowed, &event) {
            Ok(payload) => self.pending.push(Outgoing {
                topic: topic.clone(),
                key: self.sink.as_bytes().to_vec(),
                payload,
                headers: Vec::new(),
            }),
            Err(e) => tracing::error!(pipeline = self.pipeline, "cannot encode a promotion event: {e}"),
        }
    }

    /// Produces queued promotion events; on failure they stay queued for the
    /// next batch or tick (the store writes they describe are already durable).
    fn flush_promotions(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        match self.rt.block_on(produce_all(&self.producer, &self.pending)) {
            Ok(()) => {
                let count = self.pending.len() as u64;
                RecordsProduced { pipeline: self.pipeline, topic: &self.promotions_topic, count }.emit();
                self.pending.clear();
            }
            Err(e) => tracing::warn!(pipeline = self.pipeline, "promotion event not delivered yet, will retry: {e}"),
        }
    }

    /// Time-driven work: deliver queued promotions, notice being caught up
    /// when no batch comes, and whether `ping` says the store is reachable.
    fn tick(&mut self, ping: impl FnOnce(&Common) -> Result<()>) {
        self.flush_promotions();
        let quiet = self.last_batch.elapsed();
        if self.behind && quiet >= Duration::from_secs(1) {
            self.behind = false;
            let source = format!("udo-{}", self.pipeline);
            if let Some(p) = self.promotion.observe_lag(&self.promo_cfg, &source, 0, self.last_at) {
                self.queue_promotion(p);
                self.flush_promotions();
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
    }
}

/// A materializer ready to run on the runner thread.
pub(crate) enum Job {
    Postgres(RunnerConfig, postgres::PostgresStage),
    Redis(RunnerConfig, redis::RedisStage),
}

impl Job {
    pub fn run(self, shutdown: Shutdown, readiness: Readiness) -> Result<()> {
        match self {
            Job::Postgres(cfg, stage) => super::runner::run(cfg, stage, shutdown, readiness),
            Job::Redis(cfg, stage) => super::runner::run(cfg, stage, shutdown, readiness),
        }
    }
}

/// Connects the store (migrations, dimension check, script load), restores
/// the store's role, and builds the stage and its runner configuration.
pub(crate) async fn prepare(
    pipeline: Pipeline,
    common: &CommonArgs,
    opts: &RunOptions,
    group: String,
    readiness: Readiness,
) -> Result<Job> {
    let topics = MaterializeTopics::with_prefix(&common.topic_prefix);
    let s = &opts.settings.materialize;
    let cfg = |name: &'static str, inputs: Vec<String>| RunnerConfig {
        pipeline: name,
        kafka: common.kafka.clone(),
        group: group.clone(),
        topics: inputs,
        assignor: Assignor::CooperativeSticky,
        batch_size: s.batch_size,
        linger: s.linger,
        retry_min_delay: s.retry_min_delay,
        retry_max_delay: s.retry_max_delay,
    };
    let shared = |name: &'static str, sink: &'static str| {
        Common::new(
            Handle::current(),
            name,
            sink,
            group.clone(),
            common.codec(opts.output_format),
            &common.topics(),
            &topics,
            &common.kafka,
            s.batch_size,
            opts.settings.promotion.clone(),
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
            c.restore_role(postgres::latest_promotion(&sink, "postgres").await?);
            c.set_ready(Ok(()));
            Ok(Job::Postgres(cfg(postgres::PIPELINE, topics.postgres_inputs()), postgres::PostgresStage::new(c, sink)))
        }
        Pipeline::MaterializeRedis => {
            let url = need(&opts.redis_url, "--redis-url / REDIS_URL", pipeline)?;
            let sink = crate::sinks::redis::RedisSink::connect(url).await?;
            let mut c = shared(redis::PIPELINE, "redis")?;
            c.restore_role(sink.store_role("redis").await?);
            c.set_ready(Ok(()));
            Ok(Job::Redis(cfg(redis::PIPELINE, topics.redis_inputs()), redis::RedisStage::new(c, sink)))
        }
        Pipeline::Analyze => Err(Error::Failed("the analyzer is not a materializer".into())),
    }
}

/// What differs between the two materializers: the store behind the
/// shared stage (its write of a batch, its stored offsets, its ping).
pub(crate) trait Store: Send + 'static {
    /// Stored next offsets of `group` for `partitions` (absent when none).
    async fn stored_offsets(&self, group: &str, partitions: &[(String, i32)]) -> Result<HashMap<(String, i32), i64>>;
    async fn ping(&self) -> Result<()>;
    /// Writes one runner batch (see each store's module docs).
    async fn write(&self, c: &mut Common, batch: &[Record<'_>]) -> Result<Written>;
}

/// A materializer: the shared plumbing around one store.
pub(crate) struct MaterializeStage<S> {
    c: Common,
    store: S,
}

impl<S: Store> MaterializeStage<S> {
    pub(crate) fn new(c: Common, store: S) -> MaterializeStage<S> {
        MaterializeStage { c, store }
    }
}

impl<S: Store> Stage for MaterializeStage<S> {
    fn assigned(&mut self, parts: &[Tp]) -> Result<Offsets> {
        let keys: Vec<(String, i32)> = parts.iter().map(|tp| (tp.topic.clone(), tp.partition)).collect();
        let stored = self.c.rt.block_on(self.store.stored_offsets(&self.c.group, &keys))?;
        Ok(self.c.assign(parts, stored))
    }

    fn revoked(&mut self, parts: &[Tp]) -> Offsets {
        self.c.revoke(parts)
    }

    fn process(&mut self, batch: &[Record<'_>]) -> Result<Offsets> {
        let store = &self.store;
        self.c.attempt(batch, |c| c.rt.clone().block_on(store.write(c, batch)))
    }

    fn tick(&mut self) -> Result<Offsets> {
        let store = &self.store;
        self.c.tick(|c| {
            c.rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(2), store.ping())
                    .await
                    .map_err(|_| Error::Failed(format!("{}: ping timed out", c.sink)))?
            })
        });
        Ok(Vec::new())
    }

    fn finish(&mut self) -> Offsets {
        self.c.finish()
    }
}
