//! `materialize-redis`: context chunks (from `udo.writes.v1`) and every
//! output topic into the Redis keys of design §5 through `sinks::redis`.
//!
//! Redis has no transaction spanning Kafka, so each partition's share of a
//! runner batch is applied by the sink's Lua script, fenced by the offset
//! Redis itself stores for that partition (a replay or retry is a no-op),
//! and all partitions of a batch go out in ONE pipelined round trip. Dead
//! letters are acknowledged by the broker before the apply, because the
//! apply is what moves the stored offset past them. Promotion events
//! consumed from `udo.promotions.v1` maintain `udo:store:primary`.
//!
//! An event id already stored with another payload is refused before the
//! apply (`RedisSink::claim_ids`) and dead-lettered as `reused_event_id`,
//! as the Postgres materializer does: both keep the first payload.

use super::{Committed, Store};
use crate::error::{Error, Result};
use crate::pipeline::batch::{Part, Reason, Reject};
use crate::sinks::EventBatch;
use crate::sinks::postgres::plan::payload_hash;
use crate::sinks::redis::{RedisSink, holds_id};
use std::collections::HashSet;

pub const PIPELINE: &str = "materialize-redis";

impl Store for RedisSink {
    /// The records refused for a reused event id (topic, partition, offset):
    /// the apply, which is the commit, leaves them out.
    type Prepared = HashSet<(String, i32, i64)>;

    async fn stored_offsets(
        &self,
        group: &str,
        partitions: &[(String, i32)],
    ) -> Result<std::collections::HashMap<(String, i32), i64>> {
        RedisSink::stored_offsets(self, group, partitions).await
    }

    async fn ping(&self) -> Result<()> {
        RedisSink::ping(self).await
    }

    async fn write(&self, _group: &str, parts: &[&Part<'_>]) -> Result<(Self::Prepared, Vec<Reject>)> {
        let mut ids = Vec::new();
        let mut at = Vec::new();
        for p in parts {
            for r in &p.records {
                if let Some(id) = holds_id(&r.event) {
                    ids.push((id, payload_hash(&r.event)));
                    at.push((p, r.offset));
                }
            }
        }
        let refused = self.claim_ids(&ids).await?;
        let mut skip = HashSet::new();
        let mut rejects = Vec::new();
        for i in refused {
            let ((p, offset), (id, _)) = (at[i], ids[i]);
            skip.insert((p.tp.topic.clone(), p.tp.partition, offset));
            let message = format!(
                "event id {id} is already stored in Redis with a different payload; the stored event is kept \
                 (a producer reusing ids, or two deployments writing one store)"
            );
            rejects.push(Reject {
                tp: p.tp.clone(),
                offset,
                reason: Reason { class: "reused_event_id".into(), message },
            });
        }
        Ok((skip, rejects))
    }

    /// Every partition's script call in ONE pipelined round trip.
    async fn commit(&self, group: &str, skip: Self::Prepared, parts: &[&Part<'_>]) -> Result<Committed> {
        let batches: Vec<EventBatch<'_>> = parts
            .iter()
            .map(|p| {
                p.events(|offset| skip.is_empty() || !skip.contains(&(p.tp.topic.clone(), p.tp.partition, offset)))
            })
            .collect();
        let outcomes = self.apply_all(group, &batches).await?;
        if outcomes.len() != batches.len() {
            return Err(Error::Internal(format!("redis answered {} of {} applies", outcomes.len(), batches.len())));
        }
        let applied = outcomes.iter().filter(|o| o.applied).count() as u64;
        Ok(Committed { records: parts.iter().map(|p| p.records.len() as u64).sum(), changed: applied })
    }
}
