//! At-least-once with idempotent effects: the group's own offset commit.
//! Offsets are never stored automatically (`enable.auto.offset.store =
//! false`): an offset is stored only once the stage says its record's
//! effects are durable, and librdkafka commits stored offsets in the
//! background. A revoked partition's offsets are committed synchronously
//! before it goes, so its next owner starts where this member stopped.

use super::{Committer, Outcome, Tp};
use crate::config::KafkaConfig;
use crate::error::Result;
use crate::pipeline::batch::Offsets;
use crate::sinks::dlq::Dlq;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

pub struct GroupCommit {
    pipeline: &'static str,
    /// The offset stored per assigned partition, committed on revoke.
    stored: Mutex<HashMap<Tp, i64>>,
}

impl GroupCommit {
    pub fn new(pipeline: &'static str) -> GroupCommit {
        GroupCommit { pipeline, stored: Mutex::new(HashMap::new()) }
    }
}

fn tpl_of(offsets: &[(Tp, i64)]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for (tp, off) in offsets {
        let _ = tpl.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(*off));
    }
    tpl
}

impl Committer for GroupCommit {
    fn dlq(&self, kafka: &KafkaConfig, topic: String, pipeline: &'static str) -> Result<Dlq> {
        Dlq::new(kafka, topic, pipeline)
    }

    fn store<C: ConsumerContext>(&self, consumer: &BaseConsumer<C>, offsets: &Offsets, assigned: &dyn Fn(&Tp) -> bool) {
        if offsets.is_empty() {
            return;
        }
        if let Err(e) = consumer.store_offsets(&tpl_of(offsets)) {
            // A partition revoked meanwhile: its new owner resumes from the stage's own offsets.
            tracing::debug!(pipeline = self.pipeline, "offset store skipped: {e}");
            return;
        }
        let mut stored = self.stored.lock().expect("stored lock");
        for (tp, off) in offsets.iter().filter(|(tp, _)| assigned(tp)) {
            let at = stored.entry(tp.clone()).or_insert(*off);
            *at = (*at).max(*off);
        }
    }

    /// librdkafka commits what was stored, in the background.
    fn checkpoint<C: ConsumerContext>(&self, _consumer: &BaseConsumer<C>) -> Result<Outcome> {
        Ok(Outcome::Committed)
    }

    fn revoke<C: ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        parts: &[Tp],
        offsets: Offsets,
        lost: bool,
    ) -> Result<Outcome> {
        let mut done: BTreeMap<Tp, i64> = BTreeMap::new();
        {
            let mut stored = self.stored.lock().expect("stored lock");
            for tp in parts {
                if let Some(off) = stored.remove(tp) {
                    done.insert(tp.clone(), off);
                }
            }
        }
        if lost || (offsets.is_empty() && done.is_empty()) {
            return Ok(Outcome::Committed);
        }
        // Commit now: the next owner starts from these. What was stored
        // counts too (a stage may return no offsets here), not left to
        // librdkafka's commit on unassign. The group may refuse either once
        // it has moved on: the next owner then replays.
        for (tp, off) in offsets {
            let at = done.entry(tp).or_insert(off);
            *at = (*at).max(off);
        }
        let commit = tpl_of(&done.into_iter().collect::<Offsets>());
        if let Err(e) = consumer.store_offsets(&commit) {
            tracing::debug!(pipeline = self.pipeline, "store on revoke: {e}");
        }
        if let Err(e) = consumer.commit(&commit, CommitMode::Sync) {
            tracing::warn!(pipeline = self.pipeline, "commit on revoke failed (the next owner replays): {e}");
        }
        Ok(Outcome::Committed)
    }

    fn finish<C: ConsumerContext>(&self, consumer: &BaseConsumer<C>) -> Result<()> {
        if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
            tracing::debug!(pipeline = self.pipeline, "final commit: {e}");
        }
        Ok(())
    }
}
