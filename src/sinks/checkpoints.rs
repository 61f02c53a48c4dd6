//! Analyzer checkpoints in PostgreSQL (`analyze_checkpoints`): the engine
//! state of a task and the input offsets it covers, written in one
//! transaction so a restore never pairs a state with the wrong offsets.

use crate::error::{Error, Result};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use std::collections::BTreeMap;
use std::time::Duration;

/// One task's checkpoint.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Checkpoint {
    pub task: i32,
    pub state: Vec<u8>,
    /// Next offset per input topic (of partition `task`).
    pub offsets: BTreeMap<String, i64>,
    pub config: String,
}

/// Where a stateful stage keeps its checkpoints: PostgreSQL (at-least-once),
/// the changelog topic inside the transaction (exactly-once,
/// `sinks::changelog`), memory (unit tests). Called on the runner thread,
/// which blocks on IO.
pub trait Checkpoints: Send + 'static {
    fn load(&mut self, tasks: &[i32]) -> Result<Vec<Checkpoint>>;
    /// All of them, atomically (or in the open transaction).
    fn save(&mut self, checkpoints: &[Checkpoint]) -> Result<()>;
    /// Whether `save` makes the offsets durable by itself (PostgreSQL), or
    /// the caller's transaction commit does (the changelog).
    fn transactional(&self) -> bool {
        false
    }
    /// The open transaction was aborted: forget what `save` sent into it.
    fn clear(&mut self) {}
}

impl Checkpoints for CheckpointStore {
    fn load(&mut self, tasks: &[i32]) -> Result<Vec<Checkpoint>> {
        tokio::runtime::Handle::current().block_on(CheckpointStore::load(self, tasks))
    }

    fn save(&mut self, checkpoints: &[Checkpoint]) -> Result<()> {
        tokio::runtime::Handle::current().block_on(CheckpointStore::save(self, checkpoints))
    }
}

#[derive(Clone)]
pub struct CheckpointStore {
    pool: PgPool,
    group: String,
}

impl CheckpointStore {
    /// Connects and applies the migrations (idempotent, serialized by sqlx's lock).
    pub async fn connect(url: &str, group: &str) -> Result<CheckpointStore> {
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(5))
            .connect(url)
            .await
            .map_err(Error::postgres(format!("connect to {}", crate::config::redact(url))))?;
        sqlx::migrate!()
            .run(&pool)
            .await
            .map_err(|e| Error::Postgres { op: "apply migrations".into(), source: e.into() })?;
        Ok(CheckpointStore { pool, group: group.to_string() })
    }

    pub async fn load(&self, tasks: &[i32]) -> Result<Vec<Checkpoint>> {
        let rows: Vec<(i32, Vec<u8>, serde_json::Value, String)> =
            sqlx::query_as(include_str!("postgres/sql/checkpoint_load.sql"))
                .bind(&self.group)
                .bind(tasks)
                .fetch_all(&self.pool)
                .await
                .map_err(Error::postgres("load analyzer checkpoints"))?;
        rows.into_iter()
            .map(|(task, state, offsets, config)| {
                let offsets = serde_json::from_value(offsets)
                    .map_err(|e| Error::Internal(format!("checkpoint of task {task}: bad offsets: {e}")))?;
                Ok(Checkpoint { task, state, offsets, config })
            })
            .collect()
    }

    /// Writes every checkpoint in one transaction.
    pub async fn save(&self, checkpoints: &[Checkpoint]) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(Error::postgres("begin checkpoint"))?;
        for c in checkpoints {
            sqlx::query(include_str!("postgres/sql/checkpoint_save.sql"))
                .bind(&self.group)
                .bind(c.task)
                .bind(&c.state)
                .bind(serde_json::to_value(&c.offsets).unwrap_or_default())
                .bind(&c.config)
                .execute(&mut *tx)
                .await
                .map_err(Error::postgres(format!("write checkpoint of task {}", c.task)))?;
        }
        tx.commit().await.map_err(Error::postgres("commit checkpoint"))
    }
}
