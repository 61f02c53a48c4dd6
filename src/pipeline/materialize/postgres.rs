//! `materialize-postgres`: every input and output topic into PostgreSQL +
//! pgvector through `sinks::postgres` (design §5).
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

use super::{Committed, Store};
use crate::error::Result;
use crate::pipeline::batch::{Part, Reject};
use crate::sinks::postgres::{PgSink, PgTxn};
use crate::telemetry::events::PostgresCheckedWrite;

pub const PIPELINE: &str = "materialize-postgres";

/// A batch's open transaction and what it holds.
pub struct Prepared {
    txn: PgTxn,
    records: u64,
    inserted: u64,
}

impl Store for PgSink {
    type Prepared = Prepared;

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

    /// Every partition's rows and next offset in ONE transaction.
    async fn write(&self, group: &str, parts: &[&Part<'_>]) -> Result<(Prepared, Vec<Reject>)> {
        let mut txn = self.begin().await?;
        let (mut records, mut inserted, mut rejects) = (0u64, 0u64, Vec::new());
        for part in parts {
            let out = txn.write(group, &part.events(|_| true)).await?;
            records += out.events as u64;
            inserted += out.inserted;
            if out.checked {
                PostgresCheckedWrite { pipeline: PIPELINE, topic: &part.tp.topic, partition: part.tp.partition }.emit();
            }
            rejects.extend(out.rejects);
        }
        Ok((Prepared { txn, records, inserted }, rejects))
    }

    async fn commit(&self, _group: &str, prepared: Prepared, _parts: &[&Part<'_>]) -> Result<Committed> {
        prepared.txn.commit().await?;
        Ok(Committed { records: prepared.records, changed: prepared.inserted })
    }
}
