//! Analyzer checkpoints. A task's state is keyed: a small meta (watermarks,
//! input bookkeeping) and one entry per subject. A checkpoint carries the
//! meta, the input offsets it covers and only the subjects changed or
//! removed since the last one; a restore reads the meta and every live
//! subject. At-least-once keeps them in PostgreSQL (`analyze_checkpoints`
//! and `analyze_state`, one transaction per checkpoint, so a restore never
//! pairs a state with the wrong offsets); exactly-once in the changelog
//! topic (`sinks::changelog`).

use crate::error::{Error, Result};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// One task's checkpoint: what changed since the last one.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Checkpoint {
    pub task: i32,
    /// The encoded task meta.
    pub meta: Vec<u8>,
    /// Next offset per input topic (of partition `task`).
    pub offsets: BTreeMap<String, i64>,
    pub config: String,
    /// Encoded subject key and entry, for each subject changed.
    pub put: Vec<(Vec<u8>, Vec<u8>)>,
    /// Encoded keys of the subjects removed.
    pub delete: Vec<Vec<u8>>,
}

impl Checkpoint {
    /// Bytes written (for the checkpoint metrics).
    pub fn bytes(&self) -> usize {
        self.meta.len()
            + self.put.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
            + self.delete.iter().map(Vec::len).sum::<usize>()
    }
}

/// A task's state as stored: its meta, offsets and every subject.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Restored {
    pub task: i32,
    pub meta: Vec<u8>,
    pub offsets: BTreeMap<String, i64>,
    pub config: String,
    pub entries: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Where a stateful stage keeps its checkpoints: PostgreSQL (at-least-once),
/// the changelog topic inside the transaction (exactly-once,
/// `sinks::changelog`), memory (unit tests). Called on the runner thread,
/// which blocks on IO.
pub trait Checkpoints: Send + 'static {
    fn load(&mut self, tasks: &[i32]) -> Result<Vec<Restored>>;
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
    fn load(&mut self, tasks: &[i32]) -> Result<Vec<Restored>> {
        tokio::runtime::Handle::current().block_on(CheckpointStore::load(self, tasks))
    }

    fn save(&mut self, checkpoints: &[Checkpoint]) -> Result<()> {
        tokio::runtime::Handle::current().block_on(CheckpointStore::save(self, checkpoints))
    }
}

/// Subjects per statement: large checkpoints go in several round trips of
/// bounded size, all in the one transaction.
const ROWS_PER_STATEMENT: usize = 5_000;

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

    pub async fn load(&self, tasks: &[i32]) -> Result<Vec<Restored>> {
        let started = Instant::now();
        let rows: Vec<(i32, Vec<u8>, serde_json::Value, String)> =
            sqlx::query_as(include_str!("postgres/sql/checkpoint_load.sql"))
                .bind(&self.group)
                .bind(tasks)
                .fetch_all(&self.pool)
                .await
                .map_err(Error::postgres("load analyzer checkpoints"))?;
        let mut out: BTreeMap<i32, Restored> = BTreeMap::new();
        for (task, meta, offsets, config) in rows {
            let offsets = serde_json::from_value(offsets)
                .map_err(|e| Error::Internal(format!("checkpoint of task {task}: bad offsets: {e}")))?;
            out.insert(task, Restored { task, meta, offsets, config, entries: Vec::new() });
        }
        let with_meta: Vec<i32> = out.keys().copied().collect();
        if !with_meta.is_empty() {
            use futures_util::TryStreamExt;
            let mut rows = sqlx::query_as::<_, (i32, Vec<u8>, Vec<u8>)>(include_str!("postgres/sql/state_load.sql"))
                .bind(&self.group)
                .bind(&with_meta)
                .fetch(&self.pool);
            let (mut n, mut said) = (0usize, Instant::now());
            while let Some((task, subject, entry)) =
                rows.try_next().await.map_err(Error::postgres("load analyzer state"))?
            {
                if let Some(r) = out.get_mut(&task) {
                    r.entries.push((subject, entry));
                }
                n += 1;
                if said.elapsed() >= Duration::from_secs(2) {
                    tracing::info!(subjects = n, "restoring analyzer state from PostgreSQL");
                    said = Instant::now();
                }
            }
            tracing::info!(subjects = n, tasks = ?with_meta, elapsed = ?started.elapsed(), "analyzer state read");
        }
        Ok(out.into_values().collect())
    }

    /// Writes every checkpoint in one transaction.
    pub async fn save(&self, checkpoints: &[Checkpoint]) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(Error::postgres("begin checkpoint"))?;
        for c in checkpoints {
            let failed = || format!("write checkpoint of task {}", c.task);
            sqlx::query(include_str!("postgres/sql/checkpoint_save.sql"))
                .bind(&self.group)
                .bind(c.task)
                .bind(&c.meta)
                .bind(serde_json::to_value(&c.offsets).unwrap_or_default())
                .bind(&c.config)
                .execute(&mut *tx)
                .await
                .map_err(Error::postgres(failed()))?;
            for keys in c.delete.chunks(ROWS_PER_STATEMENT) {
                sqlx::query(include_str!("postgres/sql/state_delete.sql"))
                    .bind(&self.group)
                    .bind(c.task)
                    .bind(keys)
                    .execute(&mut *tx)
                    .await
                    .map_err(Error::postgres(failed()))?;
            }
            for rows in c.put.chunks(ROWS_PER_STATEMENT) {
                let (keys, entries): (Vec<&[u8]>, Vec<&[u8]>) =
                    rows.iter().map(|(k, v)| (k.as_slice(), v.as_slice())).unzip();
                sqlx::query(include_str!("postgres/sql/state_put.sql"))
                    .bind(&self.group)
                    .bind(c.task)
                    .bind(keys)
                    .bind(entries)
                    .execute(&mut *tx)
                    .await
                    .map_err(Error::postgres(failed()))?;
            }
        }
        tx.commit().await.map_err(Error::postgres("commit checkpoint"))
    }
}
