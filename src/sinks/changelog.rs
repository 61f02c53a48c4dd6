//! The analyzer's state in exactly-once mode: a compacted changelog topic
//! (`udo.analyze.changelog.v1`, like a Kafka Streams `-changelog` topic).
//! Partition `task` holds task `task`'s state as keyed records: one meta
//! record (the task meta, the input offsets it covers, the window shape)
//! and one record per subject, a tombstone when the subject goes. No
//! record's size depends on how many subjects a task holds.
//!
//! `save` produces into the open transaction, so a state is visible exactly
//! when the outputs it implies and the input offsets it covers are; `load`
//! reads a task's partition `read_committed` from the beginning to its end
//! (the latest record per key wins), so an aborted state is never restored.

use super::checkpoints::{Checkpoint, Checkpoints, Restored};
use super::kafka::{Outgoing, Outputs};
use crate::config::KafkaConfig;
use crate::error::{Error, Result};
use crate::sources::kafka::EofExpected;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

/// A restore that reads nothing for this long is an error (retried by the
/// runner); one that makes progress may take as long as it needs.
const RESTORE_STALL: Duration = Duration::from_secs(60);

/// Key of a task's meta record.
const META_KEY: &[u8] = &[0];
/// Prefix of a subject record's key (then the encoded subject key).
const SUBJECT: u8 = 1;

/// The meta record's value.
#[derive(serde::Serialize, serde::Deserialize)]
struct MetaRecord {
    meta: Vec<u8>,
    offsets: BTreeMap<String, i64>,
    config: String,
}

pub struct Changelog {
    kafka: KafkaConfig,
    topic: String,
    outputs: Outputs,
}

impl Changelog {
    /// `outputs` must be on the transactional producer of the pipeline.
    pub fn new(kafka: &KafkaConfig, topic: String, outputs: Outputs) -> Changelog {
        Changelog { kafka: kafka.clone(), topic, outputs }
    }

    fn reader(&self) -> Result<BaseConsumer<EofExpected>> {
        crate::sources::kafka::assigned_consumer(&self.kafka, "udo-analyze-restore")
    }

    fn record(&self, task: i32, key: Vec<u8>, payload: Option<Vec<u8>>) -> Outgoing {
        Outgoing { topic: self.topic.clone(), partition: Some(task), key, payload, headers: Vec::new() }
    }
}

/// What a partition holds, as read so far: the latest value per key.
#[derive(Default)]
struct Partition {
    meta: Option<Vec<u8>>,
    subjects: HashMap<Vec<u8>, Vec<u8>>,
    /// Records of an older layout (one whole state per record), ignored.
    foreign: u64,
}

impl Checkpoints for Changelog {
    fn load(&mut self, tasks: &[i32]) -> Result<Vec<Restored>> {
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        let c = self.reader()?;
        // Only partitions holding records need reading (a fresh group's
        // are empty: one watermark round trip each, no fetch wait).
        let mut open: BTreeSet<i32> = BTreeSet::new();
        let mut tpl = TopicPartitionList::new();
        let mut total = 0;
        for t in tasks {
            let (lo, hi) = c
                .fetch_watermarks(&self.topic, *t, Duration::from_secs(10))
                .map_err(Error::kafka(format!("watermarks of {}[{t}]", self.topic)))?;
            if hi > lo {
                open.insert(*t);
                total += hi - lo;
                tpl.add_partition_offset(&self.topic, *t, Offset::Beginning)
                    .map_err(Error::kafka(format!("assign {}[{t}]", self.topic)))?;
            }
        }
        if open.is_empty() {
            return Ok(Vec::new());
        }
        c.assign(&tpl).map_err(Error::kafka(format!("assign {}", self.topic)))?;
        let started = Instant::now();
        let mut parts: BTreeMap<i32, Partition> = BTreeMap::new();
        let (mut read, mut last_record, mut said) = (0u64, Instant::now(), Instant::now());
        while !open.is_empty() {
            if last_record.elapsed() > RESTORE_STALL {
                return Err(Error::Unavailable(format!(
                    "restoring {} partitions {open:?}: nothing read for {RESTORE_STALL:?} ({read} of ~{total} \
                     records read)",
                    self.topic
                )));
            }
            if said.elapsed() >= Duration::from_secs(2) {
                tracing::info!(topic = %self.topic, records = read, of = total, "restoring analyzer state");
                said = Instant::now();
            }
            match c.poll(Duration::from_millis(200)) {
                None => {}
                // The end of what read_committed may read: this task is restored.
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    open.remove(&p);
                }
                Some(Err(e)) => return Err(Error::kafka(format!("restore from {}", self.topic))(e)),
                Some(Ok(m)) => {
                    read += 1;
                    last_record = Instant::now();
                    let part = parts.entry(m.partition()).or_default();
                    match m.key() {
                        Some(META_KEY) => part.meta = m.payload().map(<[u8]>::to_vec),
                        Some([SUBJECT, key @ ..]) => match m.payload() {
                            Some(v) => {
                                part.subjects.insert(key.to_vec(), v.to_vec());
                            }
                            None => {
                                part.subjects.remove(key);
                            }
                        },
                        _ => part.foreign += 1,
                    }
                }
            }
        }
        let mut out = Vec::new();
        for (task, part) in parts {
            if part.foreign > 0 {
                tracing::warn!(
                    topic = %self.topic,
                    task,
                    records = part.foreign,
                    "records of an older state layout ignored (compaction removes them)"
                );
            }
            let Some(meta) = part.meta else { continue };
            let record: MetaRecord = postcard::from_bytes(&meta).map_err(|e| {
                Error::Internal(format!("{}[{task}]: the meta record is not a checkpoint: {e}", self.topic))
            })?;
            out.push(Restored {
                task,
                meta: record.meta,
                offsets: record.offsets,
                config: record.config,
                entries: part.subjects.into_iter().collect(),
            });
        }
        tracing::info!(topic = %self.topic, records = read, elapsed = ?started.elapsed(), "analyzer state read");
        Ok(out)
    }

    fn save(&mut self, checkpoints: &[Checkpoint]) -> Result<()> {
        let mut records = Vec::new();
        for cp in checkpoints {
            let subject_key = |k: &[u8]| [&[SUBJECT][..], k].concat();
            records.extend(cp.delete.iter().map(|k| self.record(cp.task, subject_key(k), None)));
            records.extend(cp.put.iter().map(|(k, v)| self.record(cp.task, subject_key(k), Some(v.clone()))));
            let meta = MetaRecord { meta: cp.meta.clone(), offsets: cp.offsets.clone(), config: cp.config.clone() };
            let payload = postcard::to_stdvec(&meta)
                .map_err(|e| Error::Internal(format!("cannot encode the checkpoint of task {}: {e}", cp.task)))?;
            records.push(self.record(cp.task, META_KEY.to_vec(), Some(payload)));
        }
        // Acknowledged as part of the open transaction; its commit makes them visible.
        self.outputs.send(records)?;
        self.outputs.flush()
    }

    fn transactional(&self) -> bool {
        true
    }

    fn clear(&mut self) {
        self.outputs.clear();
    }
}
