//! Statement text, bind values and COPY payloads for a batch, built without
//! IO. Bulk rows travel as binary COPY payloads (see [`super::copy`]), the
//! rest as `INSERT … SELECT … FROM UNNEST($1::t[], …)` with arrays bound as
//! parameters, so no SQL is ever built from data. In UNNEST binds epoch
//! milliseconds travel as int8 and become timestamptz in SQL
//! (`to_timestamp(ms / 1000.0)`); in COPY payloads they are encoded as
//! microseconds. Both are exact, and a test checks that the two paths store
//! identical rows.

use super::copy::{CONTEXT_COLUMNS, LATENCY_COLUMNS};
use super::plan::Row;
use crate::domain::{
    Alert, ContextChunk, DecisionLog, Degradation, DegradationKind, FeedbackRating, Promotion, WindowStats,
};
use sqlx::Arguments;
use sqlx::postgres::{PgArguments, Postgres};
use uuid::Uuid;

/// Session temp tables that COPY payloads are staged in before a checked
/// insert or upsert (created once per connection; emptied by the statement
/// that reads them, and at commit anyway).
pub const CREATE_STAGES: [&str; 2] = [include_str!("sql/stage_latency.sql"), include_str!("sql/stage_contexts.sql")];

/// Moves the staged rows into `latency_samples` (the stage is empty after),
/// checked like [`checked`]: one row (inserted count, reused event ids).
pub fn insert_latency_from_stage() -> String {
    format!(
        "WITH s AS (DELETE FROM udo_stage_latency RETURNING *),
         w AS (INSERT INTO latency_samples AS t ({LATENCY_COLUMNS}) SELECT {LATENCY_COLUMNS} FROM s
         {REUSE_CHECK})
         {CHECK_RESULT}"
    )
}

/// Conflict clause of a checked insert into a table aliased `t`: a new
/// event is inserted; a stored event with the same payload hash is left
/// alone (a replay); a stored event with another hash, a reused event id,
/// is kept as it is (the no-op update only makes it visible to RETURNING).
pub const REUSE_CHECK: &str = include_str!("sql/reuse_check.sql");

/// Reads a checked insert's `w` rows: (rows inserted, reused event ids).
const CHECK_RESULT: &str = include_str!("sql/check_result.sql");

/// A set-based insert into `table` that also reports reused event ids, in
/// one statement and round trip: one row (inserted count, reused ids).
pub fn checked(u: &Unnest, table: &str) -> String {
    format!("WITH w AS ({}) {CHECK_RESULT}", u.insert(&format!("{table} AS t"), REUSE_CHECK))
}

fn ts(col: &str) -> String {
    format!("to_timestamp({col}::float8 / 1000)")
}

/// A statement and its bind values.
pub struct Stmt {
    pub sql: String,
    /// Err names a value that could not be encoded (the statement must not run).
    pub args: Result<PgArguments, String>,
}

impl Stmt {
    pub fn plain(sql: String) -> Stmt {
        Stmt { sql, args: Ok(PgArguments::default()) }
    }
}

/// A set-based statement over parallel arrays: `SELECT … FROM UNNEST($1::t1[], $2::t2[], …) AS u(c1, c2, …)`.
pub struct Unnest {
    /// (name in `u`, element type, target column, select expression)
    cols: Vec<(String, &'static str, String, String)>,
    args: PgArguments,
    error: Option<String>,
    len: usize,
}

impl Unnest {
    pub fn new(len: usize) -> Self {
        Unnest { cols: Vec::new(), args: PgArguments::default(), error: None, len }
    }

    /// The statement `sql` (built from this, e.g. by [`Unnest::insert`]) with these binds.
    pub fn stmt(self, sql: String) -> Stmt {
        Stmt { sql, args: self.error.map_or(Ok(self.args), Err) }
    }

    /// Adds a column `name` of Postgres element type `ty`, one value per row.
    pub fn col<T>(&mut self, name: &str, ty: &'static str, values: Vec<T>) -> &mut Self
    where
        T: for<'q> sqlx::Encode<'q, Postgres> + sqlx::Type<Postgres> + sqlx::postgres::PgHasArrayType + Send,
    {
        self.push(name.to_owned(), ty, name.to_owned(), format!("u.{name}"), values)
    }

    /// Adds a timestamptz column `target` from epoch milliseconds (`u.<target>_ms`).
    pub fn ts_col(&mut self, target: &str, values: Vec<i64>) -> &mut Self {
        let name = format!("{target}_ms");
        let expr = ts(&format!("u.{name}"));
        self.push(name, "int8", target.to_owned(), expr, values)
    }

    fn push<T>(&mut self, name: String, ty: &'static str, target: String, expr: String, values: Vec<T>) -> &mut Self
    where
        T: for<'q> sqlx::Encode<'q, Postgres> + sqlx::Type<Postgres> + sqlx::postgres::PgHasArrayType + Send,
    {
        debug_assert_eq!(values.len(), self.len, "column {name}");
        if let Err(e) = self.args.add(values) {
            self.error.get_or_insert(format!("encode column {name}: {e}"));
        }
        self.cols.push((name, ty, target, expr));
        self
    }

    /// `UNNEST(...) AS u(...)`.
    pub fn unnest_clause(&self) -> String {
        let params: Vec<String> = self.cols.iter().enumerate().map(|(i, c)| format!("${}::{}[]", i + 1, c.1)).collect();
        let names: Vec<&str> = self.cols.iter().map(|c| c.0.as_str()).collect();
        format!("UNNEST({}) AS u({})", params.join(", "), names.join(", "))
    }

    /// `INSERT INTO table (targets) SELECT exprs FROM UNNEST(...) AS u(...) <tail>`.
    pub fn insert(&self, table: &str, tail: &str) -> String {
        let targets: Vec<&str> = self.cols.iter().map(|c| c.2.as_str()).collect();
        let exprs: Vec<&str> = self.cols.iter().map(|c| c.3.as_str()).collect();
        format!(
            "INSERT INTO {table} ({}) SELECT {} FROM {} {tail}",
            targets.join(", "),
            exprs.join(", "),
            self.unnest_clause()
        )
    }
}

fn map<T, U>(rows: &[Row<'_, T>], f: impl Fn(&T) -> U) -> Vec<U> {
    rows.iter().map(|r| f(r.event)).collect()
}

fn header<T>(
    rows: &[Row<'_, T>],
    id: impl Fn(&T) -> Uuid,
    at: impl Fn(&T) -> i64,
    source: impl Fn(&T) -> String,
) -> Unnest {
    let mut u = Unnest::new(rows.len());
    u.col("event_id", "uuid", map(rows, id))
        .col("payload_hash", "uuid", rows.iter().map(|r| r.hash).collect())
        .ts_col("occurred_at", map(rows, at))
        .col("source", "text", map(rows, source));
    u
}

pub fn feedback(rows: &[Row<'_, FeedbackRating>]) -> Unnest {
    let mut u = header(rows, |e| e.event_id, |e| e.occurred_at, |e| e.source.clone());
    u.col("project_id", "text", map(rows, |e| e.project_id.clone()))
        .col("component", "text", map(rows, |e| e.component.clone()))
        .col("decision_id", "uuid", map(rows, |e| e.decision_id))
        .col("rating", "int2", map(rows, |e| e.rating as i16))
        .col("correction", "text", map(rows, |e| e.correction.clone()));
    u
}

pub fn decisions(rows: &[Row<'_, DecisionLog>]) -> Unnest {
    let mut u = header(rows, |e| e.event_id, |e| e.occurred_at, |e| e.source.clone());
    u.col("project_id", "text", map(rows, |e| e.project_id.clone()))
        .col("component", "text", map(rows, |e| e.component.clone()))
        .col("decision", "text", map(rows, |e| e.decision.clone()))
        .col("uncertainty_score", "int2", map(rows, |e| e.uncertainty_score as i16))
        .col("rationale", "text", map(rows, |e| e.rationale.clone()));
    u
}

/// The chunk event ledger: every chunk event, without content or embedding.
pub fn chunk_events(rows: &[Row<'_, ContextChunk>]) -> Unnest {
    let mut u = header(rows, |e| e.event_id, |e| e.occurred_at, |e| e.source.clone());
    u.col("project_id", "text", map(rows, |e| e.project_id.clone()))
        .col("file_path", "text", map(rows, |e| e.file_path.clone()))
        .col("chunk_index", "int4", map(rows, |e| e.chunk_index))
        .col("op", "text", map(rows, |e| e.op.as_str().to_owned()));
    u
}

/// Upserts the staged newest chunk per key into `project_contexts` (the
/// stage is empty after), unless the ledger already holds a newer event for
/// that key (a later UPSERT, already applied, or a DELETE tombstone): newer
/// wins by (occurred_at, event_id).
pub fn upsert_contexts_from_stage() -> String {
    format!(
        "WITH s AS (DELETE FROM udo_stage_contexts RETURNING *)
         INSERT INTO project_contexts AS c ({CONTEXT_COLUMNS})
         SELECT {CONTEXT_COLUMNS} FROM s
         WHERE NOT EXISTS (
             SELECT 1 FROM project_context_events e
             WHERE e.project_id = s.project_id AND e.file_path = s.file_path AND e.chunk_index = s.chunk_index
               AND (e.occurred_at, e.event_id) > (s.occurred_at, s.event_id))
         ON CONFLICT (project_id, file_path, chunk_index) DO UPDATE SET
             event_id = EXCLUDED.event_id, occurred_at = EXCLUDED.occurred_at, source = EXCLUDED.source,
             content = EXCLUDED.content, embedding = EXCLUDED.embedding
         WHERE (c.occurred_at, c.event_id) < (EXCLUDED.occurred_at, EXCLUDED.event_id)"
    )
}

/// Deletes chunks older than the newest DELETE per key (idempotent).
pub fn delete_contexts(rows: &[Row<'_, ContextChunk>]) -> Stmt {
    let mut u = Unnest::new(rows.len());
    u.col("project_id", "text", map(rows, |e| e.project_id.clone()))
        .col("file_path", "text", map(rows, |e| e.file_path.clone()))
        .col("chunk_index", "int4", map(rows, |e| e.chunk_index))
        .col("event_id", "uuid", map(rows, |e| e.event_id))
        .col("occurred_ms", "int8", map(rows, |e| e.occurred_at));
    let sql = format!(
        "DELETE FROM project_contexts c USING {}
         WHERE c.project_id = u.project_id AND c.file_path = u.file_path AND c.chunk_index = u.chunk_index
           AND (c.occurred_at, c.event_id) < ({}, u.event_id)",
        u.unnest_clause(),
        ts("u.occurred_ms")
    );
    u.stmt(sql)
}

fn window_cols<'a>(u: &mut Unnest, rows: &[Row<'a, WindowStats>]) {
    u.col("subject", "text", map(rows, |e| e.subject.clone()))
        .col("component", "text", map(rows, |e| e.component.clone()))
        .ts_col("window_start", map(rows, |e| e.window_start))
        .ts_col("window_end", map(rows, |e| e.window_end));
}

/// Rows must all carry latency stats (the plan only routes those here).
pub fn latency_windows(rows: &[Row<'_, WindowStats>]) -> Unnest {
    let mut u = header(rows, |e| e.event_id, |e| e.occurred_at, |e| e.source.clone());
    window_cols(&mut u, rows);
    let stats: Vec<_> = rows.iter().filter_map(|r| r.event.latency.clone()).collect();
    debug_assert_eq!(stats.len(), rows.len());
    u.col("endpoint", "text", map(rows, |e| e.endpoint.clone()))
        .col("count", "int8", stats.iter().map(|s| s.count).collect())
        .col("error_count", "int8", stats.iter().map(|s| s.error_count).collect())
        .col("error_rate", "float8", stats.iter().map(|s| s.error_rate).collect())
        .col("p50_ms", "float8", stats.iter().map(|s| s.p50_ms).collect())
        .col("p95_ms", "float8", stats.iter().map(|s| s.p95_ms).collect())
        .col("p99_ms", "float8", stats.iter().map(|s| s.p99_ms).collect());
    u
}

/// Rows must all carry uncertainty stats.
pub fn uncertainty_windows(rows: &[Row<'_, WindowStats>]) -> Unnest {
    let mut u = header(rows, |e| e.event_id, |e| e.occurred_at, |e| e.source.clone());
    window_cols(&mut u, rows);
    let stats: Vec<_> = rows.iter().filter_map(|r| r.event.uncertainty.clone()).collect();
    debug_assert_eq!(stats.len(), rows.len());
    u.col("project_id", "text", map(rows, |e| e.project_id.clone()))
        .col("ratings", "int8", stats.iter().map(|s| s.ratings).collect())
        .col("positive", "int8", stats.iter().map(|s| s.positive).collect())
        .col("approval_rate", "float8", stats.iter().map(|s| s.approval_rate).collect())
        .col("wilson_lower", "float8", stats.iter().map(|s| s.wilson_lower).collect())
        .col("uncertainty", "float8", stats.iter().map(|s| s.uncertainty).collect())
        .col("decisions", "int8", stats.iter().map(|s| s.decisions).collect())
        .col("predicted_mean", "float8", stats.iter().map(|s| s.predicted_mean).collect())
        .col("calibration_gap", "float8", stats.iter().map(|s| s.calibration_gap).collect());
    u
}

pub fn alerts(rows: &[Row<'_, Alert>]) -> Unnest {
    let mut u = header(rows, |e| e.event_id, |e| e.occurred_at, |e| e.source.clone());
    u.col("rule", "text", map(rows, |e| e.rule.clone()))
        .col("subject", "text", map(rows, |e| e.subject.clone()))
        .col("component", "text", map(rows, |e| e.component.clone()))
        .col("project_id", "text", map(rows, |e| e.project_id.clone()))
        .col("severity", "text", map(rows, |e| e.severity.as_str().to_owned()))
        .col("status", "text", map(rows, |e| e.status.as_str().to_owned()))
        .col("value", "float8", map(rows, |e| e.value))
        .col("threshold", "float8", map(rows, |e| e.threshold))
        .ts_col("window_start", map(rows, |e| e.window_start))
        .ts_col("window_end", map(rows, |e| e.window_end))
        .col("message", "text", map(rows, |e| e.message.clone()));
    u
}

fn kind(k: DegradationKind) -> &'static str {
    match k {
        DegradationKind::Degraded => "DEGRADED",
        DegradationKind::Recovered => "RECOVERED",
    }
}

pub fn degradations(rows: &[Row<'_, Degradation>]) -> Unnest {
    let mut u = header(rows, |e| e.event_id, |e| e.occurred_at, |e| e.source.clone());
    u.col("component", "text", map(rows, |e| e.component.clone()))
        .col("kind", "text", map(rows, |e| kind(e.kind).to_owned()))
        .col("reason", "text", map(rows, |e| e.reason.clone()))
        .col("p95_ms", "float8", map(rows, |e| e.p95_ms))
        .col("error_rate", "float8", map(rows, |e| e.error_rate))
        .col("consecutive_windows", "int4", map(rows, |e| e.consecutive_windows))
        .ts_col("window_start", map(rows, |e| e.window_start))
        .ts_col("window_end", map(rows, |e| e.window_end));
    u
}

pub fn promotions(rows: &[Row<'_, Promotion>]) -> Unnest {
    let mut u = header(rows, |e| e.event_id, |e| e.occurred_at, |e| e.source.clone());
    u.col("store", "text", map(rows, |e| e.store.clone()))
        .col("from_role", "text", map(rows, |e| e.from_role.as_str().to_owned()))
        .col("to_role", "text", map(rows, |e| e.to_role.as_str().to_owned()))
        .col("success_ratio", "float8", map(rows, |e| e.success_ratio))
        .col("attempts", "int4", map(rows, |e| e.attempts))
        .col("lag", "int8", map(rows, |e| e.lag))
        .col("reason", "text", map(rows, |e| e.reason.clone()));
    u
}

/// Health per component from its newest degradation; a newer window wins.
pub fn health(rows: &[&Degradation]) -> Stmt {
    let mut u = Unnest::new(rows.len());
    let status = |e: &Degradation| match e.kind {
        DegradationKind::Degraded => "DEGRADED",
        DegradationKind::Recovered => "HEALTHY",
    };
    u.col("component", "text", rows.iter().map(|e| e.component.clone()).collect())
        .col("status", "text", rows.iter().map(|e| status(e).to_owned()).collect())
        .ts_col("since", rows.iter().map(|e| e.window_end).collect())
        .col("event_id", "uuid", rows.iter().map(|e| e.event_id).collect())
        .col("reason", "text", rows.iter().map(|e| e.reason.clone()).collect())
        .col("p95_ms", "float8", rows.iter().map(|e| e.p95_ms).collect())
        .col("error_rate", "float8", rows.iter().map(|e| e.error_rate).collect());
    let sql = u.insert(
        "health_state AS h",
        "ON CONFLICT (component) DO UPDATE SET status = EXCLUDED.status, since = EXCLUDED.since,
             event_id = EXCLUDED.event_id, reason = EXCLUDED.reason, p95_ms = EXCLUDED.p95_ms,
             error_rate = EXCLUDED.error_rate
         WHERE (h.since, h.event_id) < (EXCLUDED.since, EXCLUDED.event_id)",
    );
    u.stmt(sql)
}

/// Projects with their first/last event time; only ever widens the span.
pub fn projects(activity: &std::collections::BTreeMap<String, (i64, i64)>) -> Stmt {
    let mut u = Unnest::new(activity.len());
    u.col("project_id", "text", activity.keys().cloned().collect())
        .ts_col("first_seen_at", activity.values().map(|v| v.0).collect())
        .ts_col("last_seen_at", activity.values().map(|v| v.1).collect());
    let sql = u.insert(
        "projects AS p",
        "ON CONFLICT (project_id) DO UPDATE SET
             first_seen_at = LEAST(p.first_seen_at, EXCLUDED.first_seen_at),
             last_seen_at = GREATEST(p.last_seen_at, EXCLUDED.last_seen_at)
         WHERE p.first_seen_at > EXCLUDED.first_seen_at OR p.last_seen_at < EXCLUDED.last_seen_at",
    );
    u.stmt(sql)
}

pub const STORE_OFFSET: &str = include_str!("sql/store_offset.sql");

pub const STORED_OFFSETS: &str = include_str!("sql/stored_offsets.sql");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unnest_insert_converts_ms_columns_to_timestamps() {
        let mut u = Unnest::new(1);
        u.col("event_id", "uuid", vec![Uuid::nil()]).ts_col("occurred_at", vec![1i64]).col(
            "p95_ms",
            "float8",
            vec![1.0f64],
        );
        assert_eq!(
            u.insert("t", "ON CONFLICT DO NOTHING"),
            "INSERT INTO t (event_id, occurred_at, p95_ms) SELECT u.event_id, \
             to_timestamp(u.occurred_at_ms::float8 / 1000), u.p95_ms \
             FROM UNNEST($1::uuid[], $2::int8[], $3::float8[]) AS u(event_id, occurred_at_ms, p95_ms) \
             ON CONFLICT DO NOTHING"
        );
    }
}
