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

use super::{Common, MaterializeStage, Store, Written};
use crate::error::{Error, Result};
use crate::sinks::redis::{RedisBatch, RedisSink};
use crate::pipeline::runner::Record;

pub const PIPELINE: &str = "materialize-redis";

pub(crate) type RedisStage = MaterializeStage<RedisSink>;

async fn write(c: &mut Common, sink: &RedisSink, batch: &[Record<'_>]) -> Result<Written> {
    let decoded = c.decode(batch)?;
    if decoded.parts.is_empty() {
        return Ok(Written::default());
    }
    c.send_dead(&decoded.dead).await?;
    let batches: Vec<RedisBatch<'_>> = decoded
        .parts
        .iter()
        .map(|p| RedisBatch {
            topic: &p.tp.topic,
            partition: p.tp.partition,
            next_offset: p.next_offset,
            records: p.events.iter().map(|(o, e)| (*o, e)).collect(),
        })
        .collect();
    let outcomes = sink.apply_all(&c.group, &batches).await?;
    if outcomes.len() != batches.len() {
        return Err(Error::Failed(format!("redis answered {} of {} applies", outcomes.len(), batches.len())));
    }
    let records = decoded.parts.iter().map(|p| p.events.len() as u64).sum();
    let offsets = decoded.parts.iter().map(|p| (p.tp.clone(), p.next_offset)).collect();
    Ok(Written { offsets, records, at: decoded.at })
}

impl Store for RedisSink {
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

    async fn write(&self, c: &mut Common, batch: &[Record<'_>]) -> Result<Written> {
        write(c, self, batch).await
    }
}
