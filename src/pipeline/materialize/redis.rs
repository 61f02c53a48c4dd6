//! `materialize-redis`: context chunks (from `udo.writes.v1`) and every
//! output topic into the Redis keys of DESIGN §5 through `sinks::redis`.
//!
//! Redis has no transaction spanning Kafka, so each partition's share of a
//! runner batch is applied by the sink's Lua script, fenced by the offset
//! Redis itself stores for that partition (a replay or retry is a no-op),
//! and all partitions of a batch go out in ONE pipelined round trip. Dead
//! letters are acknowledged by the broker before the apply, because the
//! apply is what moves the stored offset past them. Promotion events
//! consumed from `udo.promotions.v1` maintain `udo:store:primary`.
//!
//! Reused event ids with another payload are detected by the Postgres
//! materializer, which keeps every event's payload hash; Redis keeps only
//! current state (newest wins per key), so it dead-letters what does not
//! decode or validate.

use super::{Committed, MaterializeStage, Store};
use crate::error::{Error, Result};
use crate::pipeline::batch::{Part, Reject};
use crate::sinks::redis::{RedisBatch, RedisSink};

pub const PIPELINE: &str = "materialize-redis";

pub(crate) type RedisStage = MaterializeStage<RedisSink>;

impl Store for RedisSink {
    /// Nothing to prepare: the apply is the commit.
    type Prepared = ();

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

    async fn write(&self, _group: &str, _parts: &[&Part<'_>]) -> Result<((), Vec<Reject>)> {
        Ok(((), Vec::new()))
    }

    /// Every partition's script call in ONE pipelined round trip.
    async fn commit(&self, group: &str, _: (), parts: &[&Part<'_>]) -> Result<Committed> {
        let batches: Vec<RedisBatch<'_>> = parts
            .iter()
            .map(|p| RedisBatch {
                topic: &p.tp.topic,
                partition: p.tp.partition,
                next_offset: p.next_offset,
                records: p.records.iter().map(|r| (r.offset, &r.event)).collect(),
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
