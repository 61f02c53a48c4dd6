//! Redis materialization (design §5): the current state readers want at
//! memory speed — context chunks per project, the latest window stats,
//! uncertainty and health per component, active alerts, and which store is
//! primary. Redis has no transactions spanning a consumer's offset, so each
//! batch of ONE topic-partition is applied by ONE Lua script (EVALSHA, one
//! round trip) that first compares the batch with the partition's offset
//! stored in Redis itself (`udo:offsets:{group}`, field `topic:partition`)
//! and applies only records at or past it, then advances it, atomically. A
//! replay, a retry after a lost reply, or a rebalance overlap is therefore a
//! no-op. The plan (keys, ops, JSON) is built by pure code and unit-tested;
//! the script only compares versions and writes. Within a key, newer wins
//! by (window end or event time, event id), so a late older event never
//! overwrites newer state.
//!
//! Key layout (values are Redis hashes unless noted; numbers as decimal text,
//! times as epoch ms):
//!
//! | key | content |
//! |---|---|
//! | `project:{project_id}:context` | field = file path, value = JSON array of that file's live chunks ordered by `chunk_index`: `[{"chunk_index","content","event_id","occurred_at","source"}]`; a DELETE removes the chunk, the field goes when no chunk is left. Embeddings stay in Postgres (pgvector does the similarity search). |
//! | `udo:latency:{component}` / `udo:latency:{component}:{endpoint}` (a `:` or `%` in the component written `%3A`, `%25`; likewise the project below) | latest closed latency window: `window_start`, `window_end`, `count`, `error_count`, `error_rate`, `p50_ms`, `p95_ms`, `p99_ms`, `event_id`, … |
//! | `udo:uncertainty:{project_id}:{component}` | latest uncertainty window: `uncertainty`, `wilson_lower`, `approval_rate`, `ratings`, `positive`, `decisions`, `predicted_mean`, `calibration_gap`, … |
//! | `udo:health:{component}` | `status` (`HEALTHY`/`DEGRADED`), `since` (window end of the transition), `reason`, `p95_ms`, `error_rate`, `event_id` |
//! | `udo:alerts:active` | field = `{rule}\|{subject}\|{severity}`, value = the FIRING alert's JSON; RESOLVED removes it |
//! | `udo:store:roles` | field = store, value = JSON of its latest promotion event |
//! | `udo:store:primary` | string: the store most recently promoted to PRIMARY that still is; absent when none |
//! | `udo:offsets:{group}` | field = `{topic}:{partition}`, value = next offset to apply |
//! | `udo:id:{event_id}` | string: the payload hash of the first event stored under that id, kept for `EVENT_ID_TTL` (the topics' retention) |
//!
//! An event id claimed with one payload refuses another (`claim`, before
//! the apply): the stored event is kept and the newcomer is dead-lettered
//! as `reused_event_id`, exactly as the PostgreSQL materializer does, so
//! the two stores agree.

use super::EventBatch;
use crate::domain::{Alert, ChunkOp, ContextChunk, Degradation, DegradationKind, Event, Promotion, WindowStats};
use crate::error::{Error, Result};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::collections::HashMap;
use std::time::Duration;

/// Key names (design §5).
pub mod keys {
    pub const ALERTS: &str = "udo:alerts:active";
    pub const STORE_ROLES: &str = "udo:store:roles";
    pub const STORE_PRIMARY: &str = "udo:store:primary";

    pub fn offsets(group: &str) -> String {
        format!("udo:offsets:{group}")
    }

    pub fn offset_field(topic: &str, partition: i32) -> String {
        format!("{topic}:{partition}")
    }

    pub fn context(project_id: &str) -> String {
        format!("project:{project_id}:context")
    }

    use crate::domain::subject::key_part;

    /// Every part but the last escapes `:` (and `%`), so no two subjects
    /// share a key ("adv:a" + "b" and "adv" + "a:b").
    pub fn latency(component: &str, endpoint: Option<&str>) -> String {
        match endpoint {
            Some(e) => format!("udo:latency:{}:{e}", key_part(component)),
            None => format!("udo:latency:{}", key_part(component)),
        }
    }

    pub fn uncertainty(project_id: Option<&str>, component: &str) -> String {
        match project_id {
            Some(p) => format!("udo:uncertainty:{}:{component}", key_part(p)),
            None => format!("udo:uncertainty:{}", key_part(component)),
        }
    }

    pub fn health(component: &str) -> String {
        format!("udo:health:{component}")
    }

    pub fn alert_field(rule: &str, subject: &str, severity: &str) -> String {
        format!("{rule}|{subject}|{severity}")
    }
}

/// Applies one batch: see the module docs. KEYS[1] is the offsets hash;
/// ARGV = field, next offset, then ops `name, record offset, key index,
/// n, n args…`.
const APPLY_LUA: &str = include_str!("redis/apply.lua");
const CLAIM_LUA: &str = include_str!("redis/claim.lua");

/// How long an event id stays claimed: the retention of the topics Redis
/// materializes (a replay cannot bring back anything older).
pub const EVENT_ID_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// The events whose ids Redis keys hold (the raw inputs live in PostgreSQL).
pub fn holds_id(event: &Event) -> Option<uuid::Uuid> {
    match event {
        Event::ContextChunk(e) => Some(e.event_id),
        Event::WindowStats(e) => Some(e.event_id),
        Event::Alert(e) => Some(e.event_id),
        Event::Degradation(e) => Some(e.event_id),
        Event::Promotion(e) => Some(e.event_id),
        Event::LatencySample(_) | Event::FeedbackRating(_) | Event::DecisionLog(_) => None,
    }
}

/// What an apply did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RedisOutcome {
    /// False when the stored offset was already at or past the batch's next
    /// offset: a replay, nothing changed.
    pub applied: bool,
    /// The partition's stored next offset before this batch (None: none stored).
    pub previous_offset: Option<i64>,
    /// Key updates made (events older than the stored state change nothing).
    pub writes: usize,
}

/// The script's KEYS and ARGV for one batch.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScriptCall {
    pub keys: Vec<String>,
    pub args: Vec<String>,
    key_index: HashMap<String, usize>,
}

impl ScriptCall {
    /// 1-based index of `key` in KEYS, adding it once.
    fn key(&mut self, key: String) -> usize {
        if let Some(&i) = self.key_index.get(&key) {
            return i;
        }
        self.keys.push(key.clone());
        let i = self.keys.len();
        self.key_index.insert(key, i);
        i
    }

    fn op(&mut self, name: &str, offset: i64, key: String, args: Vec<String>) {
        let k = self.key(key);
        self.args.extend([name.to_owned(), offset.to_string(), k.to_string(), args.len().to_string()]);
        self.args.extend(args);
    }
}

fn put_args(order_field: &str, order: i64, event_id: &uuid::Uuid, fields: Vec<(&str, String)>) -> Vec<String> {
    let mut args = vec![order_field.to_owned(), order.to_string(), event_id.to_string()];
    for (f, v) in fields {
        args.push(f.to_owned());
        args.push(v);
    }
    args
}

fn json(v: &impl serde::Serialize) -> String {
    serde_json::to_string(v).expect("events always serialize to JSON")
}

/// Builds the script call for a batch (pure).
pub fn plan(group: &str, batch: &EventBatch<'_>) -> ScriptCall {
    let mut call = ScriptCall::default();
    call.key(keys::offsets(group));
    call.args.push(keys::offset_field(batch.topic, batch.partition));
    call.args.push(batch.next_offset.to_string());
    // Chunks of one (project, file) become one op, in batch order.
    type FileChunks<'e> = ((&'e str, &'e str), Vec<(i64, &'e ContextChunk)>);
    let mut files: Vec<FileChunks<'_>> = Vec::new();
    let mut file_index: HashMap<(&str, &str), usize> = HashMap::new();
    for &(offset, event) in &batch.records {
        match event {
            Event::ContextChunk(c) => {
                let k = (c.project_id.as_str(), c.file_path.as_str());
                let i = *file_index.entry(k).or_insert_with(|| {
                    files.push((k, Vec::new()));
                    files.len() - 1
                });
                files[i].1.push((offset, c));
            }
            Event::WindowStats(w) => window_ops(&mut call, offset, w),
            Event::Degradation(d) => health_op(&mut call, offset, d),
            Event::Alert(a) => alert_op(&mut call, offset, a),
            Event::Promotion(p) => role_op(&mut call, offset, p),
            // Raw inputs live in Postgres; in Redis they only advance the offset.
            Event::LatencySample(_) | Event::FeedbackRating(_) | Event::DecisionLog(_) => {}
        }
    }
    for ((project, file), chunks) in files {
        chunks_op(&mut call, project, file, &chunks);
    }
    call
}

/// One op for a file's chunks in a batch. Only the newest event per chunk
/// (by occurred_at, then event id) is sent: it is the only one that can
/// change the chunk, since newer always wins (this also keeps an older
/// UPSERT later in the same batch from resurrecting a deleted chunk).
fn chunks_op(call: &mut ScriptCall, project: &str, file: &str, chunks: &[(i64, &ContextChunk)]) {
    let mut newest: Vec<(i64, &ContextChunk)> = Vec::with_capacity(chunks.len());
    for &(offset, c) in chunks {
        match newest.iter_mut().find(|(_, n)| n.chunk_index == c.chunk_index) {
            Some(slot) if (c.occurred_at, c.event_id) > (slot.1.occurred_at, slot.1.event_id) => *slot = (offset, c),
            Some(_) => {}
            None => newest.push((offset, c)),
        }
    }
    let mut args = vec![file.to_owned(), newest.len().to_string()];
    for (offset, c) in newest {
        let (op, content) = match c.op {
            ChunkOp::Upsert => (c.op.as_str(), c.content.clone()),
            ChunkOp::Delete => (c.op.as_str(), String::new()),
        };
        args.extend([
            offset.to_string(),
            c.chunk_index.to_string(),
            c.occurred_at.to_string(),
            c.event_id.to_string(),
            op.to_owned(),
            content,
            c.source.clone(),
        ]);
    }
    // The op runs when any of the file's records is at or past the stored offset.
    let last = chunks.iter().map(|(o, _)| *o).max().unwrap_or(0);
    call.op("chunks", last, keys::context(project), args);
}

fn window_ops(call: &mut ScriptCall, offset: i64, w: &WindowStats) {
    let common = |extra: Vec<(&'static str, String)>| {
        let mut f = vec![
            ("subject", w.subject.clone()),
            ("component", w.component.clone()),
            ("window_start", w.window_start.to_string()),
            ("window_end", w.window_end.to_string()),
            ("event_id", w.event_id.to_string()),
            ("occurred_at", w.occurred_at.to_string()),
            ("source", w.source.clone()),
        ];
        f.extend(extra);
        f
    };
    if let Some(l) = &w.latency {
        let mut extra = vec![
            ("count", l.count.to_string()),
            ("error_count", l.error_count.to_string()),
            ("error_rate", l.error_rate.to_string()),
            ("p50_ms", l.p50_ms.to_string()),
            ("p95_ms", l.p95_ms.to_string()),
            ("p99_ms", l.p99_ms.to_string()),
        ];
        if let Some(e) = &w.endpoint {
            extra.push(("endpoint", e.clone()));
        }
        let args = put_args("window_end", w.window_end, &w.event_id, common(extra));
        call.op("put", offset, keys::latency(&w.component, w.endpoint.as_deref()), args);
    }
    if let Some(u) = &w.uncertainty {
        let mut extra = vec![
            ("ratings", u.ratings.to_string()),
            ("positive", u.positive.to_string()),
            ("approval_rate", u.approval_rate.to_string()),
            ("wilson_lower", u.wilson_lower.to_string()),
            ("uncertainty", u.uncertainty.to_string()),
            ("decisions", u.decisions.to_string()),
        ];
        if let Some(p) = &w.project_id {
            extra.push(("project_id", p.clone()));
        }
        if let Some(m) = u.predicted_mean {
            extra.push(("predicted_mean", m.to_string()));
        }
        if let Some(g) = u.calibration_gap {
            extra.push(("calibration_gap", g.to_string()));
        }
        let args = put_args("window_end", w.window_end, &w.event_id, common(extra));
        call.op("put", offset, keys::uncertainty(w.project_id.as_deref(), &w.component), args);
    }
}

fn health_op(call: &mut ScriptCall, offset: i64, d: &Degradation) {
    let status = match d.kind {
        DegradationKind::Degraded => "DEGRADED",
        DegradationKind::Recovered => "HEALTHY",
    };
    let fields = vec![
        ("component", d.component.clone()),
        ("status", status.to_owned()),
        ("since", d.window_end.to_string()),
        ("window_end", d.window_end.to_string()),
        ("reason", d.reason.clone()),
        ("p95_ms", d.p95_ms.to_string()),
        ("error_rate", d.error_rate.to_string()),
        ("event_id", d.event_id.to_string()),
        ("occurred_at", d.occurred_at.to_string()),
    ];
    call.op("put", offset, keys::health(&d.component), put_args("window_end", d.window_end, &d.event_id, fields));
}

fn alert_op(call: &mut ScriptCall, offset: i64, a: &Alert) {
    let status = a.status.as_str();
    let args = vec![
        keys::alert_field(&a.rule, &a.subject, a.severity.as_str()),
        status.to_owned(),
        a.window_end.to_string(),
        a.event_id.to_string(),
        json(a),
    ];
    call.op("alert", offset, keys::ALERTS.to_owned(), args);
}

fn role_op(call: &mut ScriptCall, offset: i64, p: &Promotion) {
    let primary = call.key(keys::STORE_PRIMARY.to_owned());
    let args = vec![p.store.clone(), p.occurred_at.to_string(), p.event_id.to_string(), json(p), primary.to_string()];
    call.op("role", offset, keys::STORE_ROLES.to_owned(), args);
}

/// Redis sink: a connection manager (reconnects by itself) and the script.
#[derive(Clone)]
pub struct RedisSink {
    con: ConnectionManager,
    script: redis::Script,
    claim: redis::Script,
}

impl std::fmt::Debug for RedisSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSink").field("script", &self.script.get_hash()).finish_non_exhaustive()
    }
}

impl RedisSink {
    /// Connects (a few quick retries, then the error) and loads the script.
    pub async fn connect(url: &str) -> Result<RedisSink> {
        let client = redis::Client::open(url)
            .map_err(|e| Error::Config(format!("REDIS_URL is not a valid Redis URL: {}", e)))?;
        // redis-rs hands `factor` to backon as the exponential multiplier
        // (its default of 100 means a second retry waits ~100 s): keep the
        // manager's own reconnect short; the pipeline's backoff does the rest.
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(1)
            .set_factor(2)
            .set_max_delay(2000)
            .set_connection_timeout(Duration::from_secs(5))
            .set_response_timeout(Duration::from_secs(30));
        let mut con = client.get_connection_manager_with_config(config).await.map_err(Error::redis("connect"))?;
        let script = redis::Script::new(APPLY_LUA);
        script.prepare_invoke().load_async(&mut con).await.map_err(Error::redis("load apply script"))?;
        let claim = redis::Script::new(CLAIM_LUA);
        claim.prepare_invoke().load_async(&mut con).await.map_err(Error::redis("load claim script"))?;
        Ok(RedisSink { con, script, claim })
    }

    /// A round trip to Redis (readiness).
    pub async fn ping(&self) -> Result<()> {
        let mut con = self.con.clone();
        let _: String = redis::cmd("PING").query_async(&mut con).await.map_err(Error::redis("ping"))?;
        Ok(())
    }

    /// Applies a batch atomically unless Redis already holds its offset.
    pub async fn apply(&self, group: &str, batch: &EventBatch<'_>) -> Result<RedisOutcome> {
        let call = plan(group, batch);
        let mut inv = self.script.prepare_invoke();
        for k in &call.keys {
            inv.key(k);
        }
        for a in &call.args {
            inv.arg(a);
        }
        let mut con = self.con.clone();
        let (applied, previous, writes): (i64, i64, i64) =
            inv.invoke_async(&mut con).await.map_err(Error::redis("apply batch"))?;
        Ok(RedisOutcome {
            applied: applied == 1,
            previous_offset: (previous >= 0).then_some(previous),
            writes: usize::try_from(writes).unwrap_or(0),
        })
    }

    /// Applies several batches (one per partition) in one round trip: a
    /// pipeline of EVALSHA calls, each atomic and fenced on its own, so a
    /// failure part-way leaves every partition either applied or not. After
    /// a Redis restart the script cache is empty (NOSCRIPT): the script is
    /// loaded again and the pipeline resent, which the fences make safe.
    pub async fn apply_all(&self, group: &str, batches: &[EventBatch<'_>]) -> Result<Vec<RedisOutcome>> {
        if batches.is_empty() {
            return Ok(Vec::new());
        }
        let calls: Vec<ScriptCall> = batches.iter().map(|b| plan(group, b)).collect();
        let mut pipe = redis::pipe();
        for call in &calls {
            pipe.cmd("EVALSHA").arg(self.script.get_hash()).arg(call.keys.len()).arg(&call.keys).arg(&call.args);
        }
        let mut con = self.con.clone();
        let replies: Vec<(i64, i64, i64)> = match pipe.query_async(&mut con).await {
            Ok(r) => r,
            Err(e) if e.kind() == redis::ErrorKind::NoScriptError => {
                self.script.load_async(&mut con).await.map_err(Error::redis("reload apply script"))?;
                pipe.query_async(&mut con).await.map_err(Error::redis("apply batches"))?
            }
            Err(e) => return Err(Error::Redis { op: "apply batches".into(), source: e }),
        };
        Ok(replies
            .into_iter()
            .map(|(applied, previous, writes)| RedisOutcome {
                applied: applied == 1,
                previous_offset: (previous >= 0).then_some(previous),
                writes: usize::try_from(writes).unwrap_or(0),
            })
            .collect())
    }

    /// Claims `(event id, payload hash)` pairs in order; returns the
    /// positions whose id is already claimed with another payload.
    pub async fn claim_ids(&self, ids: &[(uuid::Uuid, uuid::Uuid)]) -> Result<Vec<usize>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut inv = self.claim.prepare_invoke();
        inv.arg(EVENT_ID_TTL.as_secs());
        for (id, hash) in ids {
            inv.key(format!("udo:id:{id}"));
            inv.arg(hash.to_string());
        }
        let mut con = self.con.clone();
        let refused: Vec<usize> = inv.invoke_async(&mut con).await.map_err(Error::redis("claim event ids"))?;
        Ok(refused.into_iter().filter_map(|i| i.checked_sub(1)).collect())
    }

    /// Removes every offset stored for `group` (a finished replay's).
    pub async fn forget_group(&self, group: &str) -> Result<()> {
        let mut con = self.con.clone();
        let _: i64 = redis::cmd("DEL")
            .arg(keys::offsets(group))
            .query_async(&mut con)
            .await
            .map_err(Error::redis(format!("forget the offsets of {group}")))?;
        Ok(())
    }

    /// The latest promotion event stored for `store` (`udo:store:roles`), if any.
    pub async fn store_role(&self, store: &str) -> Result<Option<Promotion>> {
        let mut con = self.con.clone();
        let raw: Option<String> = redis::cmd("HGET")
            .arg(keys::STORE_ROLES)
            .arg(store)
            .query_async(&mut con)
            .await
            .map_err(Error::redis("read store role"))?;
        match raw {
            None => Ok(None),
            Some(json) => serde_json::from_str(&json).map(Some).map_err(|e| {
                Error::Internal(format!("redis: {} field {store} is not a promotion: {e}", keys::STORE_ROLES))
            }),
        }
    }

    /// Stored next offsets of `group` for the given partitions (absent when
    /// none is stored): where the Redis consumer seeks on assignment.
    pub async fn stored_offsets(
        &self,
        group: &str,
        partitions: &[(String, i32)],
    ) -> Result<HashMap<(String, i32), i64>> {
        if partitions.is_empty() {
            return Ok(HashMap::new());
        }
        let fields: Vec<String> = partitions.iter().map(|(t, p)| keys::offset_field(t, *p)).collect();
        let mut con = self.con.clone();
        let values: Vec<Option<i64>> = redis::cmd("HMGET")
            .arg(keys::offsets(group))
            .arg(&fields)
            .query_async(&mut con)
            .await
            .map_err(Error::redis("read stored offsets"))?;
        Ok(partitions.iter().cloned().zip(values).filter_map(|(k, v)| v.map(|v| (k, v))).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::*;
    use uuid::Uuid;

    const T: i64 = 1_750_000_000_000;

    fn batch<'a>(records: Vec<(i64, &'a Event)>) -> EventBatch<'a> {
        EventBatch { topic: "udo.writes.v1", partition: 3, next_offset: 100, records }
    }

    #[test]
    fn header_is_offsets_key_field_and_next_offset() {
        let call = plan("udo-materialize-redis", &batch(vec![]));
        assert_eq!(call.keys, ["udo:offsets:udo-materialize-redis"]);
        assert_eq!(call.args, ["udo.writes.v1:3", "100"]);
    }

    #[test]
    fn chunks_of_one_project_share_a_key_and_carry_json() {
        let c = |id: u128, file: &str, op| {
            Event::ContextChunk(ContextChunk {
                event_id: Uuid::from_u128(id),
                occurred_at: T,
                source: "s".into(),
                project_id: "atlas".into(),
                file_path: file.into(),
                chunk_index: 2,
                op,
                content: "fn main() {}".into(),
                embedding: Some(vec![0.1; 4]),
            })
        };
        let (a, b) = (c(1, "src/a.rs", ChunkOp::Upsert), c(2, "src/b.rs", ChunkOp::Delete));
        let (a2, a3) = (c(3, "src/a.rs", ChunkOp::Delete), c(4, "src/a.rs", ChunkOp::Upsert));
        let mut other = c(5, "src/a.rs", ChunkOp::Upsert);
        if let Event::ContextChunk(x) = &mut other {
            x.chunk_index = 0;
        }
        let recs = vec![(7, &a), (8, &b), (9, &a2), (10, &other), (11, &a3)];
        let call = plan("g", &batch(recs));
        assert_eq!(call.keys, ["udo:offsets:g", "project:atlas:context"]);
        let ops = &call.args[2..];
        // One op per file: src/a.rs carries chunk 2's newest event (id 4 wins
        // the tie on time by id) and chunk 0; then src/b.rs.
        assert_eq!(&ops[..6], ["chunks", "11", "2", "16", "src/a.rs", "2"]);
        let id = |n: u128| Uuid::from_u128(n).to_string();
        assert_eq!(&ops[6..13], ["11", "2", &T.to_string(), &id(4), "UPSERT", "fn main() {}", "s"]);
        assert_eq!(&ops[13..18], ["10", "0", &T.to_string(), &id(5), "UPSERT"]);
        assert_eq!(&ops[20..26], ["chunks", "8", "2", "9", "src/b.rs", "1"]);
        assert_eq!(&ops[26..33], ["8", "2", &T.to_string(), &id(2), "DELETE", "", "s"]);
        assert!(!call.args.iter().any(|a| a.contains("0.1")), "vectors stay in Postgres");
    }

    #[test]
    fn windows_health_alerts_and_promotions_map_to_their_keys() {
        let w = Event::WindowStats(WindowStats {
            event_id: Uuid::from_u128(1),
            occurred_at: T,
            source: "analyze".into(),
            subject: "atlas|search".into(),
            component: "search".into(),
            endpoint: None,
            project_id: Some("atlas".into()),
            window_start: T - 300_000,
            window_end: T,
            latency: None,
            uncertainty: Some(UncertaintyStats {
                ratings: 10,
                positive: 4,
                approval_rate: 0.4,
                wilson_lower: 0.17,
                uncertainty: 0.83,
                decisions: 3,
                predicted_mean: None,
                calibration_gap: None,
            }),
        });
        let d = Event::Degradation(Degradation {
            event_id: Uuid::from_u128(2),
            occurred_at: T,
            source: "analyze".into(),
            component: "checkout".into(),
            kind: DegradationKind::Degraded,
            reason: "slow".into(),
            p95_ms: 250.0,
            error_rate: 0.0,
            consecutive_windows: 2,
            window_start: T - 300_000,
            window_end: T,
        });
        let p = Event::Promotion(Promotion {
            event_id: Uuid::from_u128(3),
            occurred_at: T,
            source: "m".into(),
            store: "postgres".into(),
            from_role: StoreRole::Shadow,
            to_role: StoreRole::Primary,
            success_ratio: 1.0,
            attempts: 100,
            lag: 0,
            reason: String::new(),
        });
        let call = plan("g", &batch(vec![(1, &w), (2, &d), (3, &p)]));
        assert_eq!(
            call.keys,
            [
                "udo:offsets:g",
                "udo:uncertainty:atlas:search",
                "udo:health:checkout",
                "udo:store:primary",
                "udo:store:roles"
            ]
        );
        let health_at = call.args.iter().position(|a| a == "DEGRADED").unwrap();
        assert_eq!(call.args[health_at - 1], "status");
        assert!(!call.args.iter().any(|a| a == "predicted_mean"), "absent optional stats are not written");
        let role = call.args.iter().position(|a| a == "role").unwrap();
        assert_eq!(call.args[role + 2], "5", "roles hash");
        assert_eq!(call.args.last().unwrap(), "4", "primary key index");
    }
}
