//! `replay` (design §7): reprocess a time range of topics into the stores,
//! to backfill a new store or repair one, without re-alerting: nothing is
//! analyzed and nothing is produced, only the materializers' writes are
//! made again, which are idempotent and newest-wins in both stores, so a
//! replay never moves a store back in time nor duplicates a row.
//!
//! The range of each partition is found by the broker's time index
//! (ListOffsets by timestamp), read by a consumer that assigns partitions itself and
//! never joins a group or commits, so the live pipelines' groups are left
//! alone. Stores keep offsets per group; the replay writes under a group of
//! its own run (`udo-replay-<id>`, so Redis's offset fence lets every batch
//! through) and removes those offsets when it ends. Records that do not
//! decode, and reused event ids, are counted and skipped: the live
//! pipelines already sent them to the DLQ.

use crate::config::KafkaConfig;
use crate::error::{Error, Result};
use crate::pipeline::batch::{Batch, Decoder, Part, Raw, Tp};
use crate::pipeline::materialize::Store;
use crate::pipeline::retry::RetryPolicy;
use crate::shutdown::Shutdown;
use crate::sinks::postgres::PgSink;
use crate::sinks::redis::RedisSink;
use crate::sources::kafka::EofExpected;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};
use tokio::runtime::Handle;

/// What to replay, and where to.
pub struct ReplayConfig {
    pub kafka: KafkaConfig,
    /// Full topic names to read.
    pub topics: Vec<String>,
    /// Records stamped at or after this time (epoch ms) are replayed...
    pub from_ms: i64,
    /// ...and before this one, if given; else up to each partition's end
    /// when the replay starts.
    pub to_ms: Option<i64>,
    pub batch_size: usize,
    pub postgres: Option<PgSink>,
    pub redis: Option<RedisSink>,
    /// The topics Redis materializes (full names).
    pub redis_topics: HashSet<String>,
    pub decoder: Decoder,
    /// A failed store write is retried under this (bounded: a replay is a
    /// finite job and reports what it could not write).
    pub retry: RetryPolicy,
}

/// What a replay did (printed as JSON at the end).
#[derive(Debug, Default, Clone, Serialize)]
pub struct ReplayReport {
    pub group: String,
    pub partitions: usize,
    /// Records in the range.
    pub records: u64,
    /// Records decoded and handed to the stores.
    pub events: u64,
    /// Records that do not decode (skipped; already in the DLQ).
    pub undecodable: u64,
    /// Rows Postgres did not have yet.
    pub postgres_inserted: u64,
    /// Events Postgres refused (reused event ids, skipped; already in the DLQ).
    pub postgres_rejected: u64,
    /// Partition batches Redis applied.
    pub redis_batches: u64,
    /// Store writes retried after an error.
    pub retries: u64,
    pub elapsed_s: f64,
    /// Stopped by a signal before the end of the range.
    pub interrupted: bool,
}

/// A store write is retried this many times before the replay gives up.
pub const MAX_ATTEMPTS: u32 = 10;
/// How long the broker may take to answer a metadata or offsets lookup.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(30);

fn consumer(kafka: &KafkaConfig) -> Result<BaseConsumer<EofExpected>> {
    crate::sources::kafka::assigned_consumer(kafka, "udo-replay")
}

fn transient(e: &KafkaError) -> bool {
    use RDKafkaErrorCode as C;
    matches!(e, KafkaError::MessageConsumption(C::AllBrokersDown | C::BrokerTransportFailure | C::OperationTimedOut))
}

/// The first offset of each partition stamped at or after `at_ms`, from the
/// broker's time index (ListOffsets by timestamp); a partition with no such
/// record maps to `None` (its end).
fn offsets_at(
    c: &BaseConsumer<EofExpected>,
    topic: &str,
    parts: &[i32],
    at_ms: i64,
) -> Result<BTreeMap<i32, Option<i64>>> {
    let mut tpl = TopicPartitionList::new();
    for p in parts {
        tpl.add_partition_offset(topic, *p, Offset::Offset(at_ms))
            .map_err(Error::kafka(format!("look up {topic}[{p}] at {at_ms}")))?;
    }
    let found =
        c.offsets_for_times(tpl, LOOKUP_TIMEOUT).map_err(Error::kafka(format!("offsets of {topic} by time")))?;
    let mut out = BTreeMap::new();
    for e in found.elements_for_topic(topic) {
        if let Err(err) = e.error() {
            return Err(Error::kafka(format!("offset of {topic}[{}] by time", e.partition()))(err));
        }
        out.insert(
            e.partition(),
            match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            },
        );
    }
    Ok(out)
}

/// Each partition's offset range `[start, end)` for the configured times:
/// start at the first record stamped at or after `from`, end before the
/// first stamped at or after `to` (or at the end of the log as it is now).
fn ranges(c: &BaseConsumer<EofExpected>, cfg: &ReplayConfig) -> Result<BTreeMap<Tp, (i64, i64)>> {
    let mut out = BTreeMap::new();
    for topic in &cfg.topics {
        let md = c.fetch_metadata(Some(topic), LOOKUP_TIMEOUT).map_err(Error::kafka(format!("metadata of {topic}")))?;
        let parts: Vec<i32> = md
            .topics()
            .iter()
            .filter(|t| t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if parts.is_empty() {
            return Err(Error::Config(format!(
                "topic {topic} does not exist (create it with `udo-stream topics apply`, or check --topic-prefix)"
            )));
        }
        let starts = offsets_at(c, topic, &parts, cfg.from_ms)?;
        let ends = match cfg.to_ms {
            Some(to) => offsets_at(c, topic, &parts, to)?,
            None => BTreeMap::new(),
        };
        for p in parts {
            let (_, hi) = c
                .fetch_watermarks(topic, p, LOOKUP_TIMEOUT)
                .map_err(Error::kafka(format!("watermarks of {topic}[{p}]")))?;
            let start = starts.get(&p).copied().flatten().unwrap_or(hi).min(hi);
            let end = ends.get(&p).copied().flatten().unwrap_or(hi).min(hi);
            if start < end {
                out.insert(Tp::new(topic.clone(), p), (start, end));
            }
        }
    }
    Ok(out)
}

/// Replays `cfg`'s range into its stores, printing progress to the log.
/// Blocking (store calls run on `rt`): call it from a blocking thread.
pub fn replay(rt: &Handle, cfg: &ReplayConfig, shutdown: &Shutdown) -> Result<ReplayReport> {
    let started = Instant::now();
    let group = format!("udo-replay-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let mut report = ReplayReport { group: group.clone(), ..ReplayReport::default() };
    let c = consumer(&cfg.kafka)?;
    let ranges = ranges(&c, cfg)?;
    let total: i64 = ranges.values().map(|(s, e)| e - s).sum();
    report.partitions = ranges.len();
    tracing::info!(
        partitions = ranges.len(),
        offsets = total,
        "replay: range found in {:.1}s; writing as group {group}",
        started.elapsed().as_secs_f64()
    );
    let mut tpl = TopicPartitionList::new();
    for (tp, (start, _)) in &ranges {
        tpl.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(*start))
            .map_err(Error::kafka("assign the replay range"))?;
    }
    c.assign(&tpl).map_err(Error::kafka("assign the replay range"))?;
    let mut open: HashMap<Tp, i64> = ranges.iter().map(|(tp, (_, end))| (tp.clone(), *end)).collect();
    let mut done: i64 = 0;
    let mut last_report = Instant::now();
    while !open.is_empty() {
        if shutdown.requested() {
            report.interrupted = true;
            break;
        }
        let batch = next_batch(&c, &mut open, cfg.batch_size)?;
        if !batch.is_empty() {
            report.records += batch.len() as u64;
            done += batch.len() as i64;
            write_with_retries(rt, cfg, &group, &batch, &mut report, shutdown)?;
        }
        if last_report.elapsed() >= Duration::from_secs(2) || open.is_empty() {
            last_report = Instant::now();
            let rate = report.records as f64 / started.elapsed().as_secs_f64().max(1e-3);
            let pct = if total > 0 { 100.0 * done as f64 / total as f64 } else { 100.0 };
            tracing::info!(
                "replay: {} of {total} records ({pct:.1}%), {rate:.0} records/s, {} left",
                report.records,
                crate::telemetry::count(open.len() as u64, "partition")
            );
        }
    }
    rt.block_on(async {
        if let Some(pg) = &cfg.postgres {
            pg.forget_group(&group).await?;
        }
        if let Some(redis) = &cfg.redis {
            redis.forget_group(&group).await?;
        }
        Ok::<_, Error>(())
    })?;
    report.elapsed_s = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Up to `max` records of open partitions, in fetch order; a partition
/// closes when its range end (or its end of log) is reached.
fn next_batch(c: &BaseConsumer<EofExpected>, open: &mut HashMap<Tp, i64>, max: usize) -> Result<Vec<OwnedMessage>> {
    let mut batch = Vec::new();
    let deadline = Instant::now() + Duration::from_millis(200);
    while batch.len() < max && !open.is_empty() && Instant::now() < deadline {
        match c.poll(Duration::from_millis(50)) {
            Some(Ok(m)) => take(&m, open, &mut batch),
            Some(Err(KafkaError::PartitionEOF(p))) => {
                // The end of the log; a range never extends past the end it
                // had when the replay started, so this partition is done.
                // (The error names no topic: close it for the topics whose
                // position says so.)
                let ended: Vec<Tp> = open
                    .keys()
                    .filter(|tp| tp.partition == p)
                    .filter(|tp| position(c, tp).is_some_and(|pos| pos >= open[*tp]))
                    .cloned()
                    .collect();
                for tp in ended {
                    open.remove(&tp);
                }
            }
            Some(Err(e)) if transient(&e) => tracing::warn!("replay: {e}; retrying"),
            Some(Err(e)) => return Err(Error::kafka("read the replay range")(e)),
            None => {}
        }
    }
    Ok(batch)
}

fn take(m: &BorrowedMessage<'_>, open: &mut HashMap<Tp, i64>, batch: &mut Vec<OwnedMessage>) {
    let tp = Tp::new(m.topic(), m.partition());
    let Some(&end) = open.get(&tp) else { return };
    if m.offset() < end {
        batch.push(m.detach());
    }
    if m.offset() + 1 >= end {
        open.remove(&tp);
    }
}

fn position(c: &BaseConsumer<EofExpected>, tp: &Tp) -> Option<i64> {
    let pos = c.position().ok()?;
    match pos.find_partition(&tp.topic, tp.partition)?.offset() {
        Offset::Offset(o) => Some(o),
        _ => None,
    }
}

fn write_with_retries(
    rt: &Handle,
    cfg: &ReplayConfig,
    group: &str,
    batch: &[OwnedMessage],
    report: &mut ReplayReport,
    shutdown: &Shutdown,
) -> Result<()> {
    let mut retrying = cfg.retry.start();
    loop {
        let mut r = report.clone();
        let attempt = cfg
            .decoder
            .batch(batch.iter().map(Raw::from), |_| Some(i64::MIN), false)
            .and_then(|decoded| rt.block_on(write(cfg, group, &decoded, &mut r)));
        let e = match attempt {
            Ok(()) => {
                *report = r;
                return Ok(());
            }
            Err(e) => e,
        };
        let Some(delay) = retrying.next_delay(&e) else { return Err(e) };
        let max = cfg.retry.max_attempts.unwrap_or(MAX_ATTEMPTS);
        tracing::warn!("replay: {e}; retrying in {delay:?} (attempt {} of {max})", retrying.attempts());
        report.retries += 1;
        if shutdown.sleep(delay) {
            return Err(e);
        }
    }
}

/// One batch into every store, through the materializers' own `Store`
/// writes: Postgres in one transaction, Redis in one pipelined round trip.
async fn write(cfg: &ReplayConfig, group: &str, batch: &Batch<'_>, report: &mut ReplayReport) -> Result<()> {
    for r in batch.rejects.iter().take(5usize.saturating_sub(report.undecodable as usize)) {
        tracing::warn!(partition = %r.tp, offset = r.offset, "replay: skipped: {}", r.reason.message);
    }
    report.undecodable += batch.rejects.len() as u64;
    report.events += batch.len() as u64;
    if let Some(pg) = &cfg.postgres {
        let parts: Vec<&Part<'_>> = batch.parts.iter().collect();
        let (prepared, rejects) = pg.write(group, &parts).await?;
        for r in rejects.iter().take(5) {
            tracing::warn!(partition = %r.tp, offset = r.offset, "replay: postgres skipped {}", r.reason.message);
        }
        report.postgres_rejected += rejects.len() as u64;
        report.postgres_inserted += pg.commit(group, prepared, &parts).await?.changed;
    }
    if let Some(redis) = &cfg.redis {
        let parts: Vec<&Part<'_>> = batch.parts.iter().filter(|p| cfg.redis_topics.contains(&p.tp.topic)).collect();
        if !parts.is_empty() {
            let (prepared, _) = redis.write(group, &parts).await?;
            redis.commit(group, prepared, &parts).await?;
            report.redis_batches += parts.len() as u64;
        }
    }
    Ok(())
}
