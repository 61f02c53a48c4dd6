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

use super::{Common, Written, common_stage};
use crate::error::{Error, Result};
use crate::pipeline::runner::{Offsets, Stage, Tp};
use crate::sinks::redis::{RedisBatch, RedisSink};
use rdkafka::message::OwnedMessage;
use std::time::Duration;

pub const PIPELINE: &str = "materialize-redis";

pub struct RedisStage {
    c: Common,
    sink: RedisSink,
}

impl RedisStage {
    pub(crate) fn new(c: Common, sink: RedisSink) -> RedisStage {
        RedisStage { c, sink }
    }
}

async fn write(c: &mut Common, sink: &RedisSink, batch: &[OwnedMessage]) -> Result<Written> {
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

impl Stage for RedisStage {
    fn assigned(&mut self, parts: &[Tp]) -> Result<Offsets> {
        let keys: Vec<(String, i32)> = parts.iter().map(|tp| (tp.topic.clone(), tp.partition)).collect();
        let stored = self.c.rt.block_on(self.sink.stored_offsets(&self.c.group, &keys))?;
        Ok(self.c.assign(parts, stored))
    }

    fn process(&mut self, batch: &[OwnedMessage]) -> Result<Offsets> {
        let sink = &self.sink;
        self.c.attempt(batch, |c| c.rt.clone().block_on(write(c, sink, batch)))
    }

    fn tick(&mut self) -> Result<Offsets> {
        let sink = &self.sink;
        self.c.tick(|c| {
            c.rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(2), sink.ping())
                    .await
                    .map_err(|_| Error::Failed("redis: ping timed out".into()))?
            })
        });
        Ok(Vec::new())
    }

    common_stage!();
}
