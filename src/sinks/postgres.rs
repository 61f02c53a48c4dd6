//! PostgreSQL + pgvector materialization (design §5, §6).
//!
//! Shaped around one rule: a partition's offset is stored in the same
//! transaction as the rows it covers, and that transaction commits only after
//! the records the database refused have reached the DLQ. So the API is a
//! transaction handle: [`PgSink::begin`] → [`PgTxn::write`] (rows and offset;
//! returns the rejects) → the caller DLQs the rejects → [`PgTxn::commit`];
//! dropping the handle rolls everything back, so a failed DLQ write leaves no
//! trace. Every table is written set-based, one statement per table and
//! batch, so that a replay changes nothing:
//! - the high-volume event tables (samples, ratings, decisions, the chunk
//!   ledger) take a bulk path first: binary COPY straight into the tables
//!   under a savepoint, as fast as a plain bulk load. Only a batch that meets
//!   an already stored event id (a replay, a producer retry, a reused id)
//!   rolls back to the savepoint and takes the checked path;
//! - the checked path, and every other table, are idempotent inserts
//!   (`UNNEST` of bound arrays, or a COPY into a session temp table, then
//!   `INSERT … ON CONFLICT`) whose conflict clause compares payload hashes,
//!   so reused event ids are found by the insert itself, in one statement and
//!   round trip per table, which is right even against a concurrent writer;
//! - current chunks are staged by binary COPY (embeddings travel as pgvector's
//!   binary form, never as text) and upserted newest-wins.
//!
//! Statement text, bind arrays and COPY payloads are built by pure code in
//! `postgres/` and unit-tested.

mod canonical;
pub mod copy;
pub mod plan;
pub(crate) mod sql;

use crate::sinks::dlq::{Reject, Tp};
pub use plan::{RejectReason, Row, payload_hash};

use super::EventBatch;
use crate::domain::Limits;
use crate::error::{Error, Result};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions, Postgres};
use sqlx::{Connection, Executor, PgPool, Transaction};
use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::time::Duration;
use uuid::Uuid;

/// The largest dimension pgvector's HNSW index accepts for `vector`.
pub const MAX_INDEXED_DIM: u32 = 2000;

/// Advisory lock key serializing the embedding-column setup across instances.
const SETUP_LOCK: i64 = 0x7564_6f5f_7665_6374; // "udo_vect"

/// What a write did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PgOutcome {
    /// Records not written; DLQ them before committing.
    pub rejects: Vec<Reject>,
    /// Rows newly inserted into event tables (0 on a replay).
    pub inserted: u64,
    /// Events accepted (new or already stored with the same payload).
    pub events: usize,
    /// The batch met an already stored event id, so its event rows took the
    /// checked path instead of the bulk COPY (normal for a replay).
    pub checked: bool,
}

impl PgOutcome {
    fn absorb(&mut self, other: PgOutcome) {
        self.rejects.extend(other.rejects);
        self.inserted += other.inserted;
        self.events += other.events;
        self.checked |= other.checked;
    }
}

/// Connection pool and configuration of the Postgres sink. Cheap to clone.
#[derive(Debug, Clone)]
pub struct PgSink {
    pool: PgPool,
    limits: Limits,
}

fn migrate_error(e: sqlx::migrate::MigrateError) -> Error {
    use sqlx::migrate::MigrateError as M;
    match e {
        M::Execute(source) | M::ExecuteMigration(source, _) => Error::Postgres { op: "migrate".into(), source },
        other => Error::Config(format!(
            "postgres: migrations: {other} (the database was migrated by another udo-stream version?)"
        )),
    }
}

impl PgSink {
    /// Connects, runs the migrations, and sets up or checks the embedding
    /// column as `vector(embedding_dim)`.
    pub async fn connect(url: &str, embedding_dim: u32) -> Result<PgSink> {
        Self::connect_with(url, embedding_dim, 4).await
    }

    pub async fn connect_with(url: &str, embedding_dim: u32, max_connections: u32) -> Result<PgSink> {
        if embedding_dim == 0 || embedding_dim > MAX_INDEXED_DIM {
            return Err(Error::Config(format!(
                "UDO_EMBEDDING_DIM is {embedding_dim}; it must be within 1..={MAX_INDEXED_DIM} \
                 (the largest dimension pgvector's HNSW index supports)"
            )));
        }
        let opts = PgConnectOptions::from_str(url)
            .map_err(|e| Error::Config(format!("DATABASE_URL is not a valid PostgreSQL URL: {e}")))?
            .application_name("udo-stream");
        let mut conn = PgConnection::connect_with(&opts).await.map_err(Error::postgres("connect"))?;
        sqlx::migrate!().run(&mut conn).await.map_err(migrate_error)?;
        ensure_embedding_column(&mut conn, embedding_dim).await?;
        // A clean close; failing to say goodbye is harmless.
        let _ = conn.close().await;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(|conn, _| {
                Box::pin(async move {
                    for stage in sql::CREATE_STAGES {
                        conn.execute(stage).await?;
                    }
                    Ok(())
                })
            })
            .connect_with(opts)
            .await
            .map_err(Error::postgres("connect pool"))?;
        let limits = Limits { embedding_dim: embedding_dim as usize, max_record_bytes: usize::MAX };
        Ok(PgSink { pool, limits })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn embedding_dim(&self) -> usize {
        self.limits.embedding_dim
    }

    /// A round trip to the database (readiness).
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await.map_err(Error::postgres("ping"))?;
        Ok(())
    }

    /// Starts a transaction; nothing is visible until [`PgTxn::commit`].
    pub async fn begin(&self) -> Result<PgTxn> {
        let tx = self.pool.begin().await.map_err(Error::postgres("begin"))?;
        Ok(PgTxn { tx, limits: self.limits })
    }

    /// Begin, write, hand the rejects to `dlq` (only if there are any), and
    /// commit only if `dlq` succeeded: the one-call form of the protocol.
    pub async fn write_batch<F>(&self, group: &str, batch: &EventBatch<'_>, dlq: F) -> Result<PgOutcome>
    where
        F: AsyncFnOnce(&[Reject]) -> Result<()>,
    {
        let mut txn = self.begin().await?;
        let outcome = txn.write(group, batch).await?;
        if !outcome.rejects.is_empty() {
            dlq(&outcome.rejects).await?;
        }
        txn.commit().await?;
        Ok(outcome)
    }

    /// The newest promotion event Postgres holds for `store`.
    pub async fn latest_promotion(&self, store: &str) -> Result<Option<crate::domain::Promotion>> {
        let row: Option<(serde_json::Value,)> = sqlx::query_as(include_str!("postgres/sql/latest_promotion.sql"))
            .bind(store)
            .fetch_optional(&self.pool)
            .await
            .map_err(Error::postgres("read the latest promotion"))?;
        match row {
            None => Ok(None),
            Some((json,)) => serde_json::from_value(json)
                .map(Some)
                .map_err(|e| Error::Internal(format!("postgres: promotions row is not a promotion: {e}"))),
        }
    }

    /// Removes every offset stored for `group` (a finished replay's).
    pub async fn forget_group(&self, group: &str) -> Result<()> {
        sqlx::query(include_str!("postgres/sql/forget_group.sql"))
            .bind(group)
            .execute(&self.pool)
            .await
            .map_err(Error::postgres(format!("forget the offsets of {group}")))?;
        Ok(())
    }

    /// Stored next offsets of `group` for the given partitions (absent when
    /// none is stored): where a consumer seeks on assignment.
    pub async fn stored_offsets(
        &self,
        group: &str,
        partitions: &[(String, i32)],
    ) -> Result<HashMap<(String, i32), i64>> {
        let topics: Vec<&str> = partitions.iter().map(|p| p.0.as_str()).collect();
        let parts: Vec<i32> = partitions.iter().map(|p| p.1).collect();
        let rows: Vec<(String, i32, i64)> = sqlx::query_as(sql::STORED_OFFSETS)
            .bind(group)
            .bind(topics)
            .bind(parts)
            .fetch_all(&self.pool)
            .await
            .map_err(Error::postgres("read stored offsets"))?;
        Ok(rows.into_iter().map(|(t, p, o)| ((t, p), o)).collect())
    }
}

/// Makes `project_contexts.embedding` a `vector(dim)` with an HNSW index, or
/// checks that it already is one.
async fn ensure_embedding_column(conn: &mut PgConnection, dim: u32) -> Result<()> {
    let mut tx = conn.begin().await.map_err(Error::postgres("begin embedding setup"))?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(SETUP_LOCK)
        .execute(&mut *tx)
        .await
        .map_err(Error::postgres("lock embedding setup"))?;
    let typmod: i32 = sqlx::query_scalar(include_str!("postgres/sql/embedding_typmod.sql"))
        .fetch_one(&mut *tx)
        .await
        .map_err(Error::postgres("read project_contexts.embedding type"))?;
    if typmod < 0 {
        tx.execute(format!("ALTER TABLE project_contexts ALTER COLUMN embedding TYPE vector({dim})").as_str())
            .await
            .map_err(Error::postgres(format!("set project_contexts.embedding to vector({dim})")))?;
    } else if typmod as u32 != dim {
        return Err(Error::Config(format!(
            "UDO_EMBEDDING_DIM is {dim} but the database's project_contexts.embedding column is vector({typmod}): \
             stored embeddings have {typmod} dimensions. Set UDO_EMBEDDING_DIM={typmod}, or use a fresh database \
             (changing the dimension means re-embedding every chunk)"
        )));
    }
    tx.execute(include_str!("postgres/sql/embedding_index.sql"))
        .await
        .map_err(Error::postgres("create HNSW index on project_contexts.embedding"))?;
    tx.commit().await.map_err(Error::postgres("commit embedding setup"))?;
    Ok(())
}

/// An open write transaction. Dropped without [`PgTxn::commit`], it rolls back.
pub struct PgTxn {
    tx: Transaction<'static, Postgres>,
    limits: Limits,
}

impl std::fmt::Debug for PgTxn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgTxn").finish_non_exhaustive()
    }
}

impl PgTxn {
    /// Writes a batch's rows and stores `batch.next_offset` for `group`.
    /// Rejected records are not written; they are returned so the caller can
    /// DLQ them before [`commit`](Self::commit). May be called for several
    /// batches (partitions) before one commit. After an error the
    /// transaction is aborted: drop it (that rolls back) and retry the batch
    /// in a new one.
    pub async fn write(&mut self, group: &str, batch: &EventBatch<'_>) -> Result<PgOutcome> {
        let tp = Tp::new(batch.topic, batch.partition);
        let plan = plan::plan(&tp, &batch.records, &self.limits);
        let mut out = PgOutcome { rejects: plan.rejects.clone(), events: plan.events, ..PgOutcome::default() };
        out.absorb(self.write_events(&plan).await?);
        let rejected: HashSet<i64> = out.rejects.iter().map(|r| r.offset).collect();
        out.events -= out.rejects.len() - plan.rejects.len();
        self.write_derived(&plan, &rejected).await?;
        sqlx::query(sql::STORE_OFFSET)
            .bind(group)
            .bind(batch.topic)
            .bind(batch.partition)
            .bind(batch.next_offset)
            .execute(&mut *self.tx)
            .await
            .map_err(Error::postgres("store offset"))?;
        Ok(out)
    }

    pub async fn commit(self) -> Result<()> {
        self.tx.commit().await.map_err(Error::postgres("commit"))
    }

    pub async fn rollback(self) -> Result<()> {
        self.tx.rollback().await.map_err(Error::postgres("rollback"))
    }

    async fn exec(&mut self, op: &str, stmt: sql::Stmt) -> Result<u64> {
        let args = stmt.args.map_err(|e| Error::Internal(format!("postgres: {op}: {e}")))?;
        let done = sqlx::query_with(&stmt.sql, args).execute(&mut *self.tx).await.map_err(Error::postgres(op))?;
        Ok(done.rows_affected())
    }

    /// Runs a checked insert (see `sql::checked`) and turns the reused
    /// event ids into rejects of `rows`.
    async fn checked<T>(
        &mut self,
        tp: &Tp,
        table: &'static str,
        stmt: sql::Stmt,
        rows: &[plan::Row<'_, T>],
        id: impl Fn(&T) -> Uuid,
    ) -> Result<PgOutcome> {
        let op = format!("insert into {table}");
        let args = stmt.args.map_err(|e| Error::Internal(format!("postgres: {op}: {e}")))?;
        let (inserted, reused): (i64, Vec<Uuid>) =
            sqlx::query_as_with(&stmt.sql, args).fetch_one(&mut *self.tx).await.map_err(Error::postgres(op))?;
        let reused: HashSet<Uuid> = reused.into_iter().collect();
        let rejects = rows
            .iter()
            .filter(|r| reused.contains(&id(r.event)))
            .map(|r| RejectReason::ReusedEventId { table }.reject(tp, r.offset, id(r.event)))
            .collect();
        Ok(PgOutcome { rejects, inserted: u64::try_from(inserted).unwrap_or(0), events: 0, checked: false })
    }

    /// Inserts one table's rows and returns the ones whose event id was
    /// already stored with another payload.
    async fn insert_checked<T>(
        &mut self,
        tp: &Tp,
        table: &'static str,
        rows: &[plan::Row<'_, T>],
        unnest: impl FnOnce(&[plan::Row<'_, T>]) -> sql::Unnest,
        id: impl Fn(&T) -> Uuid,
    ) -> Result<PgOutcome> {
        if rows.is_empty() {
            return Ok(PgOutcome::default());
        }
        let u = unnest(rows);
        let q = sql::checked(&u, table);
        self.checked(tp, table, u.stmt(q), rows, id).await
    }

    /// Sends one binary COPY payload; returns the rows it wrote.
    async fn copy_in(&mut self, op: &str, statement: &str, data: Vec<u8>) -> Result<u64> {
        let mut copy = self.tx.copy_in_raw(statement).await.map_err(Error::postgres(op))?;
        if let Err(e) = copy.send(data).await {
            // Abort so the connection is usable for the rollback.
            let _ = copy.abort("send failed").await;
            return Err(Error::Postgres { op: op.into(), source: e });
        }
        copy.finish().await.map_err(Error::postgres(op))
    }

    /// The fast path of the high-volume event tables (samples, ratings,
    /// decisions, chunk ledger): normally none of a batch's event ids is
    /// stored yet, so their rows go straight into the tables by binary COPY,
    /// as fast as a bulk load, under one savepoint. A stored id (a replay, a
    /// producer retry, a reused id) fails a COPY with a unique violation; the
    /// savepoint undoes the partial work and `None` sends the batch down the
    /// checked path, which tells replays from reused ids.
    async fn copy_events(&mut self, p: &plan::Plan<'_>) -> Result<Option<u64>> {
        let copies = copy::event_copies(p);
        if copies.is_empty() {
            return Ok(Some(0));
        }
        self.simple("SAVEPOINT udo_events").await?;
        let mut inserted = 0;
        for (table, statement, data) in copies {
            match self.copy_in(&format!("copy into {table}"), &statement, data).await {
                Ok(n) => inserted += n,
                Err(Error::Postgres { source: sqlx::Error::Database(db), .. }) if db.is_unique_violation() => {
                    self.simple("ROLLBACK TO SAVEPOINT udo_events").await?;
                    self.simple("RELEASE SAVEPOINT udo_events").await?;
                    return Ok(None);
                }
                Err(e) => return Err(e),
            }
        }
        self.simple("RELEASE SAVEPOINT udo_events").await?;
        Ok(Some(inserted))
    }

    /// The checked path of the high-volume event tables: idempotent inserts
    /// that report reused event ids (latency samples through the stage).
    async fn insert_events_checked(&mut self, p: &plan::Plan<'_>) -> Result<PgOutcome> {
        let mut out = PgOutcome::default();
        if !p.latency.is_empty() {
            let statement = copy::copy_into("udo_stage_latency", copy::LATENCY_COLUMNS);
            self.copy_in("stage latency", &statement, copy::latency_copy(&p.latency)).await?;
            let stmt = sql::Stmt::plain(sql::insert_latency_from_stage());
            out.absorb(self.checked(&p.tp, "latency_samples", stmt, &p.latency, |e| e.event_id).await?);
        }
        out.absorb(
            self.insert_checked(&p.tp, "uncertainty_feedback", &p.feedback, sql::feedback, |e| e.event_id).await?,
        );
        out.absorb(self.insert_checked(&p.tp, "uncertainty_logs", &p.decisions, sql::decisions, |e| e.event_id).await?);
        out.absorb(
            self.insert_checked(&p.tp, "project_context_events", &p.chunks, sql::chunk_events, |e| e.event_id).await?,
        );
        Ok(out)
    }

    /// A statement without parameters or results (transaction control).
    async fn simple(&mut self, statement: &str) -> Result<()> {
        self.tx.execute(statement).await.map_err(Error::postgres(statement.to_lowercase()))?;
        Ok(())
    }

    async fn write_events(&mut self, p: &plan::Plan<'_>) -> Result<PgOutcome> {
        let mut out = match self.copy_events(p).await? {
            Some(inserted) => PgOutcome { inserted, ..PgOutcome::default() },
            None => PgOutcome { checked: true, ..self.insert_events_checked(p).await? },
        };
        let lw = self
            .insert_checked(&p.tp, "latency_windows", &p.latency_windows, sql::latency_windows, |e| e.event_id)
            .await?;
        let uw = self
            .insert_checked(&p.tp, "uncertainty_windows", &p.uncertainty_windows, sql::uncertainty_windows, |e| {
                e.event_id
            })
            .await?;
        out.inserted += lw.inserted + uw.inserted;
        // The same window can be rejected by both tables: report it once.
        let mut window_rejects: Vec<Reject> = Vec::new();
        for r in lw.rejects.into_iter().chain(uw.rejects) {
            if !window_rejects.iter().any(|w| w.offset == r.offset) {
                window_rejects.push(r);
            }
        }
        // A window bound for both tables and rejected by one must leave no
        // row in the other: remove the row this transaction inserted for it
        // (the one carrying its own payload hash).
        if !window_rejects.is_empty() {
            let all = p.latency_windows.iter().chain(&p.uncertainty_windows);
            let rows: Vec<(Uuid, Uuid)> = all
                .filter(|r| window_rejects.iter().any(|w| w.offset == r.offset))
                .map(|r| (r.event.event_id, r.hash))
                .collect();
            let (ids, hashes): (Vec<Uuid>, Vec<Uuid>) = rows.into_iter().unzip();
            for table in ["latency_windows", "uncertainty_windows"] {
                let q = format!(
                    "DELETE FROM {table} t USING UNNEST($1::uuid[], $2::uuid[]) AS u(event_id, payload_hash)
                     WHERE t.event_id = u.event_id AND t.payload_hash = u.payload_hash"
                );
                let done = sqlx::query(&q)
                    .bind(&ids)
                    .bind(&hashes)
                    .execute(&mut *self.tx)
                    .await
                    .map_err(Error::postgres(format!("undo rejected window in {table}")))?;
                out.inserted -= done.rows_affected().min(out.inserted);
            }
            out.rejects.extend(window_rejects);
        }
        out.absorb(self.insert_checked(&p.tp, "alerts", &p.alerts, sql::alerts, |e| e.event_id).await?);
        out.absorb(
            self.insert_checked(&p.tp, "degradations", &p.degradations, sql::degradations, |e| e.event_id).await?,
        );
        out.absorb(self.insert_checked(&p.tp, "promotions", &p.promotions, sql::promotions, |e| e.event_id).await?);
        Ok(out)
    }

    /// Tables derived from accepted events: current chunks, health, projects.
    async fn write_derived(&mut self, p: &plan::Plan<'_>, rejected: &HashSet<i64>) -> Result<()> {
        let chunks: Vec<_> = p.chunks.iter().filter(|r| !rejected.contains(&r.offset)).copied().collect();
        let (upserts, deletes) = plan::split_ops(plan::newest_chunks(&chunks));
        if !upserts.is_empty() {
            let statement = copy::copy_into("udo_stage_contexts", copy::CONTEXT_COLUMNS);
            self.copy_in("stage project_contexts", &statement, copy::contexts_copy(&upserts)).await?;
            self.exec("upsert project_contexts", sql::Stmt::plain(sql::upsert_contexts_from_stage())).await?;
        }
        if !deletes.is_empty() {
            self.exec("delete from project_contexts", sql::delete_contexts(&deletes)).await?;
        }
        let degradations: Vec<_> = p.degradations.iter().filter(|r| !rejected.contains(&r.offset)).copied().collect();
        let health = plan::newest_health(&degradations);
        if !health.is_empty() {
            self.exec("upsert health_state", sql::health(&health)).await?;
        }
        let activity = plan::project_activity(p, rejected);
        if !activity.is_empty() {
            self.exec("upsert projects", sql::projects(&activity)).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod migration_tests {
    /// sqlx refuses to start on a database whose applied migration has
    /// changed by a byte, comments included: a migration, once released,
    /// never changes (a new one does the change). Its checksum is pinned.
    #[test]
    fn released_migrations_never_change() {
        let pinned: &[(i64, &str)] = &[
            (1, "152775e1caf3df52d7fa62dad065eea2ca0c83d5d27918aa97f4bf804e0a1977d96a39b024d5c96ee28c44fbca32bdfe"),
            (2, "a561c0c22f84d5413d53eb42235791ffa4a96c0b535ea7c575261d3e7f6a05b176bdd8aaaf1dbea99fb5139e3f267369"),
            (3, "73b8c1f123be634c6a7692743b02f7b548a4f80e6870d45e93740e5ca24e9b932804d682de3be3f5dbe50b78b0b81ea4"),
        ];
        let got: Vec<(i64, String)> = sqlx::migrate!()
            .migrations
            .iter()
            .map(|m| (m.version, m.checksum.iter().map(|b| format!("{b:02x}")).collect()))
            .collect();
        for (version, sum) in pinned {
            let now = got.iter().find(|(v, _)| v == version).map(|(_, s)| s.as_str());
            assert_eq!(now, Some(*sum), "migration {version} changed; add a new migration instead");
        }
    }
}
