//! The analyzer's state in exactly-once mode: a compacted changelog topic
//! (`udo.analyze.changelog.v1`, like a Kafka Streams `-changelog` topic),
//! one record per task in partition `task`, holding the engine state and the
//! input offsets it covers. `save` produces into the open transaction, so a
//! state is visible exactly when the outputs it implies and the input
//! offsets it covers are; `load` reads a task's partition `read_committed`
//! from the beginning to its end (the latest record wins), so an aborted
//! state is never restored.

use super::checkpoints::{Checkpoint, Checkpoints};
use super::kafka::{Outgoing, Outputs};
use crate::config::KafkaConfig;
use crate::error::{Error, Result};
use crate::sources::kafka::EofExpected;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// How long a restore may take before it is an error (retried by the runner).
const RESTORE_TIMEOUT: Duration = Duration::from_secs(60);

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
}

impl Checkpoints for Changelog {
    fn load(&mut self, tasks: &[i32]) -> Result<Vec<Checkpoint>> {
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        let c = self.reader()?;
        // Only partitions holding records need reading (a fresh group's
        // are empty: one watermark round trip each, no fetch wait).
        let mut open: BTreeSet<i32> = BTreeSet::new();
        let mut tpl = TopicPartitionList::new();
        for t in tasks {
            let (lo, hi) = c
                .fetch_watermarks(&self.topic, *t, Duration::from_secs(10))
                .map_err(Error::kafka(format!("watermarks of {}[{t}]", self.topic)))?;
            if hi > lo {
                open.insert(*t);
                tpl.add_partition_offset(&self.topic, *t, Offset::Beginning)
                    .map_err(Error::kafka(format!("assign {}[{t}]", self.topic)))?;
            }
        }
        if open.is_empty() {
            return Ok(Vec::new());
        }
        c.assign(&tpl).map_err(Error::kafka(format!("assign {}", self.topic)))?;
        let mut latest: BTreeMap<i32, Checkpoint> = BTreeMap::new();
        let deadline = Instant::now() + RESTORE_TIMEOUT;
        while !open.is_empty() {
            if Instant::now() > deadline {
                return Err(Error::Unavailable(format!(
                    "restoring {} partitions {open:?} took longer than {RESTORE_TIMEOUT:?}",
                    self.topic
                )));
            }
            match c.poll(Duration::from_millis(200)) {
                None => {}
                // The end of what read_committed may read: this task is restored.
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    open.remove(&p);
                }
                Some(Err(e)) => return Err(Error::kafka(format!("restore from {}", self.topic))(e)),
                Some(Ok(m)) => {
                    let Some(bytes) = m.payload() else { continue };
                    let cp: Checkpoint = postcard::from_bytes(bytes).map_err(|e| {
                        Error::Internal(format!(
                            "{}[{}]@{}: not a checkpoint: {e}",
                            m.topic(),
                            m.partition(),
                            m.offset()
                        ))
                    })?;
                    latest.insert(m.partition(), cp);
                }
            }
        }
        Ok(latest.into_values().collect())
    }

    fn save(&mut self, checkpoints: &[Checkpoint]) -> Result<()> {
        let mut records = Vec::with_capacity(checkpoints.len());
        for cp in checkpoints {
            let payload = postcard::to_stdvec(cp)
                .map_err(|e| Error::Internal(format!("cannot encode the checkpoint of task {}: {e}", cp.task)))?;
            records.push(Outgoing {
                topic: self.topic.clone(),
                partition: Some(cp.task),
                key: cp.task.to_string().into_bytes(),
                payload,
                headers: Vec::new(),
            });
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
