//! `materialize-postgres`: every input and output topic into PostgreSQL +
//! pgvector through `sinks::postgres` (DESIGN §5).
//!
//! One runner batch is ONE transaction: each partition's rows and its next
//! offset are written with `PgTxn::write`, the records the database refuses
//! (a reused event id with another payload, a value a table cannot hold) go
//! to the DLQ together with the undecodable ones, and only when the broker
//! has acknowledged them does the transaction commit. So a crash anywhere
//! leaves either the whole batch with its offsets or none of it, and the
//! restart resumes at the offsets stored with the rows (loaded on
//! assignment). A failed attempt rolls back and is retried by the runner
//! with the partitions paused; dead letters already acknowledged are not
//! sent twice.

use super::{Common, MaterializeStage, Store, Written};
use crate::domain::Promotion;
use crate::error::{Error, Result};
use crate::sinks::dlq::Reason;
use crate::sinks::postgres::{PgBatch, PgSink};
use crate::telemetry::events::PostgresCheckedWrite;
use crate::pipeline::runner::Record;

pub const PIPELINE: &str = "materialize-postgres";

pub(crate) type PostgresStage = MaterializeStage<PgSink>;

/// The newest promotion event Postgres holds for `store`.
pub async fn latest_promotion(sink: &PgSink, store: &str) -> Result<Option<Promotion>> {
    let row: Option<(serde_json::Value,)> = sqlx::query_as(
        "SELECT json_build_object(
             'event_id', event_id, 'occurred_at', (extract(epoch FROM occurred_at) * 1000)::int8,
             'source', source, 'store', store, 'from_role', from_role, 'to_role', to_role,
             'success_ratio', success_ratio, 'attempts', attempts, 'lag', lag, 'reason', reason)
         FROM promotions WHERE store = $1 ORDER BY occurred_at DESC, event_id DESC LIMIT 1",
    )
    .bind(store)
    .fetch_optional(sink.pool())
    .await
    .map_err(Error::postgres("read the latest promotion"))?;
    match row {
        None => Ok(None),
        Some((json,)) => serde_json::from_value(json)
            .map(Some)
            .map_err(|e| Error::Failed(format!("postgres: promotions row is not a promotion: {e}"))),
    }
}

/// Writes one decoded batch in one transaction (see the module docs).
async fn write(c: &mut Common, sink: &PgSink, batch: &[Record<'_>]) -> Result<Written> {
    let decoded = c.decode(batch)?;
    if decoded.parts.is_empty() {
        return Ok(Written::default());
    }
    let mut dead = decoded.dead;
    let mut txn = sink.begin().await?;
    let mut records = 0u64;
    for part in &decoded.parts {
        let b = PgBatch {
            topic: &part.tp.topic,
            partition: part.tp.partition,
            next_offset: part.next_offset,
            records: part.events.iter().map(|(o, e)| (*o, e)).collect(),
        };
        let out = txn.write(&c.group, &b).await?;
        records += out.events as u64;
        if out.checked {
            PostgresCheckedWrite { pipeline: c.pipeline, topic: &part.tp.topic, partition: part.tp.partition }.emit();
        }
        for r in out.rejects {
            match part.msgs.get(&r.offset) {
                Some(m) => dead.push((*m, Reason { class: r.reason.class().into(), message: r.to_string() })),
                None => return Err(Error::Failed(format!("postgres rejected {r}, which is not in the batch"))),
            }
        }
    }
    c.send_dead(&dead).await?;
    txn.commit().await?;
    let offsets = decoded.parts.iter().map(|p| (p.tp.clone(), p.next_offset)).collect();
    Ok(Written { offsets, records, at: decoded.at })
}

impl Store for PgSink {
    async fn stored_offsets(
        &self,
        group: &str,
        partitions: &[(String, i32)],
    ) -> Result<std::collections::HashMap<(String, i32), i64>> {
        PgSink::stored_offsets(self, group, partitions).await
    }

    async fn ping(&self) -> Result<()> {
        PgSink::ping(self).await
    }

    async fn write(&self, c: &mut Common, batch: &[Record<'_>]) -> Result<Written> {
        write(c, self, batch).await
    }
}
