//! The consumer's context: the rebalance callback (resume positions passed
//! to the assign call; what a revoked partition owes flushed before it
//! goes) and librdkafka's statistics (lag per partition, stuck partitions).

use super::{Assigned, RunnerConfig, Stage, parts_of};
use crate::error::Result;
use crate::pipeline::batch::{Offsets, Tp};
use crate::pipeline::commit::{Committer, Outcome};
use crate::pipeline::retry::Retrying;
use crate::shutdown::Shutdown;
use crate::sources::kafka::describe;
use crate::telemetry::Readiness;
use crate::telemetry::events::{ConsumerLag, ErrorCounted, PartitionsChanged};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

pub(super) struct RunnerContext<S: Stage, K: Committer> {
    /// Partitions that cannot advance (see `stall`), and what was last
    /// reported of them.
    pub(super) stalls: Mutex<(crate::pipeline::stall::Stalls, String)>,
    pub(super) cfg: RunnerConfig,
    pub(super) committer: Arc<K>,
    pub(super) stage: Arc<Mutex<S>>,
    pub(super) assigned: Arc<Mutex<Assigned>>,
    pub(super) shutdown: Shutdown,
    pub(super) readiness: Readiness,
}

impl<S: Stage, K: Committer> ClientContext for RunnerContext<S, K> {
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
                let Some(lag) = crate::pipeline::stall::lag(
                    p.hi_offset,
                    p.stored_offset,
                    p.committed_offset,
                    p.next_offset,
                    p.lo_offset,
                ) else {
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

impl<S: Stage, K: Committer> RunnerContext<S, K> {
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

    fn assign(&self, consumer: &BaseConsumer<Self>, tpl: &mut TopicPartitionList, cooperative: bool) {
        let pipeline = self.cfg.pipeline;
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

    fn revoke(&self, consumer: &BaseConsumer<Self>, tpl: &mut TopicPartitionList, cooperative: bool) {
        let pipeline = self.cfg.pipeline;
        let parts = parts_of(tpl);
        let lost = consumer.assignment_lost();
        let offsets = if lost {
            self.stage.lock().expect("stage lock").lost(&parts);
            Vec::new()
        } else {
            self.stage.lock().expect("stage lock").revoked(&parts)
        };
        {
            let mut a = self.assigned.lock().expect("assigned lock");
            for tp in &parts {
                a.positions.remove(tp);
            }
            a.generation += 1;
        }
        let committed: Result<Outcome> = self.committer.revoke(consumer, &parts, offsets, lost);
        match committed {
            Ok(Outcome::Committed) => {}
            Ok(Outcome::Aborted) => self.assigned.lock().expect("assigned lock").rewind = true,
            // Counted by the committer; the loop ends the pipeline with it.
            Err(e) => self.assigned.lock().expect("assigned lock").fatal = Some(e),
        }
        // librdkafka keeps a partition's pause through unassign and a later
        // assign (the Java client drops it): a partition paused by a retry
        // and given back after it ended would never fetch again. A retry
        // still waiting re-pauses what it gets (the generation changes).
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
}

impl<S: Stage, K: Committer> ConsumerContext for RunnerContext<S, K> {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        let cooperative = matches!(consumer.rebalance_protocol(), RebalanceProtocol::Cooperative);
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => self.assign(consumer, tpl, cooperative),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => self.revoke(consumer, tpl, cooperative),
            other => {
                tracing::error!(pipeline = self.cfg.pipeline, "rebalance error: {other:?}");
                if !cooperative {
                    let _ = consumer.unassign();
                }
            }
        }
    }
}
