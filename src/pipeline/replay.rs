//! `replay` (DESIGN §7): reprocess a time range of topics into the stores,
//! to backfill a new store or repair one, without re-alerting: nothing is
//! analyzed and nothing is produced, only the materializers' writes are
//! made again, which are idempotent and newest-wins in both stores, so a
//! replay never moves a store back in time nor duplicates a row.
//!
//! The range of each partition is found from record timestamps (see
//! `domain::seek`), read by a consumer that assigns partitions itself and
//! never joins a group or commits, so the live pipelines' groups are left
//! alone. Stores keep offsets per group; the replay writes under a group of
//! its own run (`udo-replay-<id>`, so Redis's offset fence lets every batch
//! through) and removes those offsets when it ends. Records that do not
//! decode, and reused event ids, are counted and skipped: the live
//! pipelines already sent them to the DLQ.

use crate::codec::Codec;
use crate::domain::{Event, seek};
use crate::error::{Error, Result};
use crate::pipeline::runner::{Tp, backoff};
use crate::shutdown::Shutdown;
use crate::sinks::postgres::{PgBatch, PgSink};
use crate::sinks::redis::{RedisBatch, RedisSink};
use rdkafka::config::ClientConfig;
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
    pub brokers: String,
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
    pub codec: Codec,
    /// Records each topic may carry (full name → record names).
    pub allowed: HashMap<String, Vec<String>>,
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

/// How long one probe waits for its record.
const PROBE_TIMEOUT: Duration = Duration::from_secs(15);
/// A store write is retried this many times before the replay gives up.
const MAX_ATTEMPTS: usize = 10;

fn consumer(brokers: &str) -> Result<BaseConsumer> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        // Required by librdkafka, never used: partitions are assigned by
        // hand and nothing is committed.
        .set("group.id", "udo-replay")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
        .set("fetch.wait.max.ms", "20")
        .set("client.id", "udo-replay")
        .create()
        .map_err(Error::kafka("create the replay consumer"))
}

/// One lockstep round of probes over partitions of `topic`: each
/// partition assigned at its offset, and the first record read from each
/// (`None` at the end of its log).
fn probe_round(c: &BaseConsumer, topic: &str, probes: &[(i32, i64)]) -> Result<HashMap<i32, Option<(i64, i64)>>> {
    let mut tpl = TopicPartitionList::new();
    for (p, offset) in probes {
        tpl.add_partition_offset(topic, *p, Offset::Offset(*offset))
            .map_err(Error::kafka(format!("assign {topic}[{p}]")))?;
    }
    c.assign(&tpl).map_err(Error::kafka(format!("assign {topic}")))?;
    let wanted: HashMap<i32, i64> = probes.iter().copied().collect();
    let mut found = HashMap::new();
    let deadline = Instant::now() + PROBE_TIMEOUT;
    while found.len() < wanted.len() {
        if Instant::now() >= deadline {
            let missing: Vec<&i32> = wanted.keys().filter(|p| !found.contains_key(*p)).collect();
            return Err(Error::Failed(format!(
                "kafka: no record of {topic} partitions {missing:?} arrived within {PROBE_TIMEOUT:?}"
            )));
        }
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) if m.topic() == topic && wanted.get(&m.partition()).is_some_and(|o| m.offset() >= *o) => {
                // A record without a timestamp counts as "now".
                let t = m.timestamp().to_millis().unwrap_or(i64::MAX);
                found.entry(m.partition()).or_insert(Some((m.offset(), t)));
            }
            Some(Err(KafkaError::PartitionEOF(p))) if wanted.contains_key(&p) => {
                found.entry(p).or_insert(None);
            }
            Some(Err(e)) if transient(&e) => tracing::warn!("replay: {e}; retrying"),
            Some(Err(e)) => return Err(Error::kafka(format!("read {topic}"))(e)),
            _ => {}
        }
    }
    Ok(found)
}

/// Runs the searches of one topic's partitions in lockstep.
fn search_all(c: &BaseConsumer, topic: &str, searches: &mut BTreeMap<i32, seek::Search>) -> Result<()> {
    loop {
        let probes: Vec<(i32, i64)> = searches.iter().filter_map(|(p, s)| s.next_probe().map(|o| (*p, o))).collect();
        if probes.is_empty() {
            return Ok(());
        }
        let found = probe_round(c, topic, &probes)?;
        for (p, offset) in probes {
            if let Some(s) = searches.get_mut(&p) {
                s.observe(offset, found.get(&p).copied().flatten());
            }
        }
    }
}

fn transient(e: &KafkaError) -> bool {
    use RDKafkaErrorCode as C;
    matches!(e, KafkaError::MessageConsumption(C::AllBrokersDown | C::BrokerTransportFailure | C::OperationTimedOut))
}

/// Each partition's offset range `[start, end)` for the configured times.
fn ranges(c: &BaseConsumer, cfg: &ReplayConfig) -> Result<BTreeMap<Tp, (i64, i64)>> {
    let mut out = BTreeMap::new();
    for topic in &cfg.topics {
        let md = c
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .map_err(Error::kafka(format!("metadata of {topic}")))?;
        let parts: Vec<i32> = md.topics().iter().flat_map(|t| t.partitions().iter().map(|p| p.id())).collect();
        if parts.is_empty() {
            return Err(Error::Config(format!(
                "topic {topic} does not exist (create it with `udo-stream topics apply`, or check --topic-prefix)"
            )));
        }
        let mut marks = BTreeMap::new();
        for p in parts {
            let (lo, hi) = c
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .map_err(Error::kafka(format!("watermarks of {topic}[{p}]")))?;
            marks.insert(p, (lo, hi));
        }
        let mut starts: BTreeMap<i32, seek::Search> =
            marks.iter().map(|(p, (lo, hi))| (*p, seek::Search::new(*lo, *hi, cfg.from_ms))).collect();
        search_all(c, topic, &mut starts)?;
        let start = |p: &i32| starts[p].result().unwrap_or(marks[p].1);
        let mut ends: BTreeMap<i32, seek::Search> = match cfg.to_ms {
            Some(to) => marks.iter().map(|(p, (_, hi))| (*p, seek::Search::new(start(p), *hi, to))).collect(),
            None => BTreeMap::new(),
        };
        search_all(c, topic, &mut ends)?;
        for (p, (_, hi)) in &marks {
            let end = ends.get(p).and_then(seek::Search::result).unwrap_or(*hi);
            if start(p) < end {
                out.insert(Tp::new(topic.clone(), *p), (start(p), end));
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
    let c = consumer(&cfg.brokers)?;
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
                "replay: {} of {total} records ({pct:.1}%), {rate:.0} records/s, {} partitions left",
                report.records,
                open.len()
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
fn next_batch(c: &BaseConsumer, open: &mut HashMap<Tp, i64>, max: usize) -> Result<Vec<OwnedMessage>> {
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

fn position(c: &BaseConsumer, tp: &Tp) -> Option<i64> {
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
    let mut delays = backoff(Duration::from_millis(200), Duration::from_secs(10));
    let mut attempt = 1;
    loop {
        let mut r = report.clone();
        match rt.block_on(write(cfg, group, batch, &mut r)) {
            Ok(()) => {
                *report = r;
                return Ok(());
            }
            Err(e) if e.domain() == crate::error::ErrorDomain::External && attempt < MAX_ATTEMPTS => {
                let delay = delays.next().unwrap_or(Duration::from_secs(10));
                tracing::warn!("replay: {e}; retrying in {delay:?} (attempt {attempt} of {MAX_ATTEMPTS})");
                report.retries += 1;
                attempt += 1;
                if shutdown.requested() {
                    return Err(e);
                }
                std::thread::sleep(delay);
            }
            Err(e) => return Err(e),
        }
    }
}

/// One batch into every store: Postgres in one transaction, Redis in one
/// pipelined script call per partition batch.
async fn write(cfg: &ReplayConfig, group: &str, batch: &[OwnedMessage], report: &mut ReplayReport) -> Result<()> {
    let mut parts: BTreeMap<Tp, (i64, Vec<(i64, Event)>)> = BTreeMap::new();
    for m in batch {
        let part = parts.entry(Tp::new(m.topic(), m.partition())).or_insert((m.offset() + 1, Vec::new()));
        part.0 = part.0.max(m.offset() + 1);
        let allowed = cfg.allowed.get(m.topic()).map(Vec::as_slice).unwrap_or(&[]);
        match cfg.codec.decode(allowed, m.payload().unwrap_or(&[])) {
            Ok(event) => part.1.push((m.offset(), event)),
            Err(e) if e.class.is_retryable() => {
                return Err(Error::Failed(format!("decode {}[{}]@{}: {e}", m.topic(), m.partition(), m.offset())));
            }
            Err(e) => {
                if report.undecodable < 5 {
                    tracing::warn!(
                        topic = m.topic(),
                        partition = m.partition(),
                        offset = m.offset(),
                        "replay: skipped: {e}"
                    );
                }
                report.undecodable += 1;
            }
        }
    }
    report.events += parts.values().map(|p| p.1.len() as u64).sum::<u64>();
    if let Some(pg) = &cfg.postgres {
        let mut txn = pg.begin().await?;
        for (tp, (next_offset, events)) in &parts {
            let b = PgBatch {
                topic: &tp.topic,
                partition: tp.partition,
                next_offset: *next_offset,
                records: events.iter().map(|(o, e)| (*o, e)).collect(),
            };
            let out = txn.write(group, &b).await?;
            report.postgres_inserted += out.inserted;
            report.postgres_rejected += out.rejects.len() as u64;
            for r in out.rejects.iter().take(5) {
                tracing::warn!(topic = %tp.topic, partition = tp.partition, "replay: postgres skipped {r}");
            }
        }
        txn.commit().await?;
    }
    if let Some(redis) = &cfg.redis {
        let batches: Vec<RedisBatch<'_>> = parts
            .iter()
            .filter(|(tp, _)| cfg.redis_topics.contains(&tp.topic))
            .map(|(tp, (next_offset, events))| RedisBatch {
                topic: &tp.topic,
                partition: tp.partition,
                next_offset: *next_offset,
                records: events.iter().map(|(o, e)| (*o, e)).collect(),
            })
            .collect();
        if !batches.is_empty() {
            redis.apply_all(group, &batches).await?;
            report.redis_batches += batches.len() as u64;
        }
    }
    Ok(())
}
