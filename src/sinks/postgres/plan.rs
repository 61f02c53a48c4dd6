//! The pure half of a Postgres batch write: defensive validation, the payload
//! hash, in-batch dedupe, sorting events by table, and the reductions the
//! derived tables need (newest chunk per key, newest health per component,
//! project activity). No IO here, so every rule is unit-tested without a
//! database; `sql.rs` turns the result into statements.

use super::canonical;
use crate::domain::{ChunkOp, ContextChunk, Degradation, Event, Limits, ValidationError};
use crate::sinks::dlq::{Reason, Reject, Tp};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, hash_map::Entry};
use std::fmt;
use uuid::Uuid;

/// Namespace of payload hashes (UUIDv5 = SHA-1 of namespace + canonical JSON, 122 bits).
const PAYLOAD_NS: Uuid = Uuid::from_u128(0x2f0c_61d4_8b7e_4f39_a1c2_5e9d_03b7_c4a8);

/// Digest of an event's payload: UUIDv5 (SHA-1) of its record name and
/// canonical JSON (object keys sorted, null fields left out, so adding an
/// optional field to a schema does not change the digest of old events).
pub fn payload_hash(event: &Event) -> Uuid {
    let mut buf = Vec::with_capacity(256);
    buf.extend_from_slice(event.record_name().as_bytes());
    buf.push(b'\n');
    let head = buf.len();
    if canonical::write(event, &mut buf).is_err() {
        buf.truncate(head);
        canonical_reference(event, &mut buf);
    }
    uuid_v5(&PAYLOAD_NS, &buf)
}

/// The definition of the canonical JSON (through `serde_json::Value`);
/// `canonical::write` produces the same bytes faster.
fn canonical_reference(event: &Event, out: &mut Vec<u8>) {
    let value = serde_json::to_value(event).expect("events always serialize to JSON");
    canonical_json(&value, out);
}

/// `Uuid::new_v5`, with the hardware-accelerated SHA-1 (hashing is the
/// sink's main CPU cost).
fn uuid_v5(namespace: &Uuid, name: &[u8]) -> Uuid {
    use sha1::{Digest, Sha1};
    let digest = Sha1::new().chain_update(namespace.as_bytes()).chain_update(name).finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_sha1_bytes(bytes).into_uuid()
}

fn canonical_json(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Object(map) => {
            let mut fields: Vec<(&String, &Value)> = map.iter().filter(|(_, v)| !v.is_null()).collect();
            fields.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (i, (k, v)) in fields.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut *out, k).expect("writing JSON to a Vec cannot fail");
                out.push(b':');
                canonical_json(v, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical_json(v, out);
            }
            out.push(b']');
        }
        scalar => serde_json::to_writer(&mut *out, scalar).expect("writing JSON to a Vec cannot fail"),
    }
}

/// Why the sink did not write a record (it goes to the DLQ, before the
/// transaction that stores its partition's offset commits).
#[derive(Debug, Clone, PartialEq)]
pub enum RejectReason {
    /// The event id is already stored in `table` (or appeared earlier in the
    /// same batch) with a different payload; the stored row is kept.
    ReusedEventId { table: &'static str },
    /// A value the tables cannot hold (design §6 rules, checked again here
    /// so one bad record can never fail a whole batch on a CHECK constraint).
    Invalid(ValidationError),
}

impl RejectReason {
    /// The dead letter of `event_id` at `offset` of `tp`.
    pub fn reject(self, tp: &Tp, offset: i64, event_id: Uuid) -> Reject {
        let reason = Reason { class: self.class().into(), message: format!("event {event_id}: {self}") };
        Reject { tp: tp.clone(), offset, reason }
    }

    /// The DLQ error class (`udo.dlq.error.class` header, metrics label).
    pub fn class(&self) -> &'static str {
        match self {
            RejectReason::ReusedEventId { .. } => "reused_event_id",
            RejectReason::Invalid(_) => "invalid",
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RejectReason::ReusedEventId { table } => {
                write!(f, "event id already stored in {table} with a different payload; the stored event is kept")
            }
            RejectReason::Invalid(e) => write!(f, "{e}"),
        }
    }
}

/// One event bound for one table.
#[derive(Debug)]
pub struct Row<'a, T> {
    pub offset: i64,
    pub hash: Uuid,
    pub event: &'a T,
}

impl<T> Clone for Row<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Row<'_, T> {}

/// Events of a batch sorted by destination, after validation and dedupe.
#[derive(Debug, Default)]
pub struct Plan<'a> {
    /// The partition the batch is from.
    pub tp: Tp,
    /// Rejected before touching the database (invalid, or the same event id
    /// twice in the batch with different payloads).
    pub rejects: Vec<Reject>,
    pub latency: Vec<Row<'a, crate::domain::LatencySample>>,
    pub feedback: Vec<Row<'a, crate::domain::FeedbackRating>>,
    pub decisions: Vec<Row<'a, crate::domain::DecisionLog>>,
    pub chunks: Vec<Row<'a, ContextChunk>>,
    /// Window stats carrying latency stats (`latency_windows`).
    pub latency_windows: Vec<Row<'a, crate::domain::WindowStats>>,
    /// Window stats carrying uncertainty stats (`uncertainty_windows`).
    pub uncertainty_windows: Vec<Row<'a, crate::domain::WindowStats>>,
    pub alerts: Vec<Row<'a, crate::domain::Alert>>,
    pub degradations: Vec<Row<'a, Degradation>>,
    pub promotions: Vec<Row<'a, crate::domain::Promotion>>,
    /// Events kept (not rejected, not in-batch duplicates).
    pub events: usize,
    /// Identical repeats of an event earlier in the batch (skipped).
    pub duplicates: usize,
}

/// Sorts a batch's `(offset, event)` records by table. The first occurrence
/// of an event id wins; a later one with the same payload is a duplicate
/// (skipped), with another payload a reject. Events failing validation
/// against `limits` are rejects.
pub fn plan<'a>(tp: &Tp, records: &[(i64, &'a Event)], limits: &Limits) -> Plan<'a> {
    let mut p = Plan { tp: tp.clone(), ..Plan::default() };
    // (record name, event id) -> payload hash of the first occurrence.
    let mut seen: HashMap<(&'static str, Uuid), Uuid> = HashMap::with_capacity(records.len());
    let hashes = payload_hashes(records);
    for (&(offset, event), hash) in records.iter().zip(hashes) {
        let event_id = event.event_id();
        if let Err(e) = event.validate(limits) {
            p.rejects.push(RejectReason::Invalid(e).reject(tp, offset, event_id));
            continue;
        }
        match seen.entry((event.record_name(), event_id)) {
            Entry::Occupied(first) if *first.get() == hash => {
                p.duplicates += 1;
                continue;
            }
            Entry::Occupied(_) => {
                let table = table_of(event);
                p.rejects.push(RejectReason::ReusedEventId { table }.reject(tp, offset, event_id));
                continue;
            }
            Entry::Vacant(v) => {
                v.insert(hash);
            }
        }
        p.events += 1;
        match event {
            Event::LatencySample(e) => p.latency.push(Row { offset, hash, event: e }),
            Event::FeedbackRating(e) => p.feedback.push(Row { offset, hash, event: e }),
            Event::DecisionLog(e) => p.decisions.push(Row { offset, hash, event: e }),
            Event::ContextChunk(e) => p.chunks.push(Row { offset, hash, event: e }),
            Event::WindowStats(e) => {
                if e.latency.is_some() {
                    p.latency_windows.push(Row { offset, hash, event: e });
                }
                if e.uncertainty.is_some() {
                    p.uncertainty_windows.push(Row { offset, hash, event: e });
                }
                if e.latency.is_none() && e.uncertainty.is_none() {
                    p.events -= 1;
                    let e = ValidationError {
                        field: "latency".into(),
                        reason: "a window carries neither latency nor uncertainty stats".into(),
                    };
                    p.rejects.push(RejectReason::Invalid(e).reject(tp, offset, event_id));
                }
            }
            Event::Alert(e) => p.alerts.push(Row { offset, hash, event: e }),
            Event::Degradation(e) => p.degradations.push(Row { offset, hash, event: e }),
            Event::Promotion(e) => p.promotions.push(Row { offset, hash, event: e }),
        }
    }
    p
}

/// Payload hashes of a batch, in order. Hashing (canonical JSON + SHA-1)
/// is the sink's main CPU cost, so a large batch is hashed on two threads.
fn payload_hashes(records: &[(i64, &Event)]) -> Vec<Uuid> {
    const PARALLEL_FROM: usize = 512;
    if records.len() < PARALLEL_FROM {
        return records.iter().map(|(_, e)| payload_hash(e)).collect();
    }
    let (a, b) = records.split_at(records.len() / 2);
    std::thread::scope(|scope| {
        let second = scope.spawn(|| b.iter().map(|(_, e)| payload_hash(e)).collect::<Vec<_>>());
        let mut out: Vec<Uuid> = a.iter().map(|(_, e)| payload_hash(e)).collect();
        match second.join() {
            Ok(rest) => out.extend(rest),
            // Hashing cannot panic on a valid event; if it did, do it here.
            Err(_) => out.extend(b.iter().map(|(_, e)| payload_hash(e))),
        }
        out
    })
}

/// The table whose `event_id` an event is checked against.
pub fn table_of(event: &Event) -> &'static str {
    match event {
        Event::LatencySample(_) => "latency_samples",
        Event::FeedbackRating(_) => "uncertainty_feedback",
        Event::DecisionLog(_) => "uncertainty_logs",
        Event::ContextChunk(_) => "project_context_events",
        Event::WindowStats(w) if w.latency.is_none() => "uncertainty_windows",
        Event::WindowStats(_) => "latency_windows",
        Event::Alert(_) => "alerts",
        Event::Degradation(_) => "degradations",
        Event::Promotion(_) => "promotions",
    }
}

/// The newest (by `occurred_at`, then event id) chunk event per
/// (project, file, chunk index): only it can change `project_contexts`.
/// Returned in key order, so statements touch rows in a stable order.
pub fn newest_chunks<'a>(rows: &[Row<'a, ContextChunk>]) -> Vec<Row<'a, ContextChunk>> {
    let mut newest: BTreeMap<(&str, &str, i32), Row<'a, ContextChunk>> = BTreeMap::new();
    for r in rows {
        let e = r.event;
        let key = (e.project_id.as_str(), e.file_path.as_str(), e.chunk_index);
        match newest.get(&key) {
            Some(cur) if (cur.event.occurred_at, cur.event.event_id) >= (e.occurred_at, e.event_id) => {}
            _ => {
                newest.insert(key, *r);
            }
        }
    }
    newest.into_values().collect()
}

/// Splits newest chunk events into upserts and deletes.
pub fn split_ops<'a>(rows: Vec<Row<'a, ContextChunk>>) -> (Vec<Row<'a, ContextChunk>>, Vec<Row<'a, ContextChunk>>) {
    rows.into_iter().partition(|r| r.event.op == ChunkOp::Upsert)
}

/// The newest degradation (by window end, then event id) per component: the
/// component's health.
pub fn newest_health<'a>(rows: &[Row<'a, Degradation>]) -> Vec<&'a Degradation> {
    let mut newest: BTreeMap<&str, &'a Degradation> = BTreeMap::new();
    for r in rows {
        let e = r.event;
        match newest.get(e.component.as_str()) {
            Some(cur) if (cur.window_end, cur.event_id) >= (e.window_end, e.event_id) => {}
            _ => {
                newest.insert(&e.component, e);
            }
        }
    }
    newest.into_values().collect()
}

/// First and last event time per project seen in the input events of a batch.
pub fn project_activity(plan: &Plan<'_>, rejected: &std::collections::HashSet<i64>) -> BTreeMap<String, (i64, i64)> {
    let mut out: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    let mut see = |offset: i64, project: &str, at: i64| {
        if rejected.contains(&offset) {
            return;
        }
        let e = out.entry(project.to_owned()).or_insert((at, at));
        e.0 = e.0.min(at);
        e.1 = e.1.max(at);
    };
    for r in &plan.chunks {
        see(r.offset, &r.event.project_id, r.event.occurred_at);
    }
    for r in &plan.decisions {
        see(r.offset, &r.event.project_id, r.event.occurred_at);
    }
    for r in &plan.feedback {
        see(r.offset, &r.event.project_id, r.event.occurred_at);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp() -> Tp {
        Tp::new("udo.writes.v1", 2)
    }

    fn same_canonical_json(e: &Event) {
        let mut fast = Vec::new();
        canonical::write(e, &mut fast).expect("every event shape is handled by the fast writer");
        let mut reference = Vec::new();
        canonical_reference(e, &mut reference);
        assert_eq!(String::from_utf8_lossy(&fast), String::from_utf8_lossy(&reference));
    }

    #[test]
    fn canonical_writer_matches_the_reference_on_synthetic_events() {
        for seed in 0..4 {
            for e in crate::bench::materialize::events(3000, 24, seed) {
                same_canonical_json(&e);
            }
        }
    }

    mod canonical_writer {
        use super::*;
        use crate::domain::*;
        use proptest::prelude::*;

        fn text() -> impl Strategy<Value = String> {
            proptest::collection::vec(any::<char>(), 0..12).prop_map(|c| c.into_iter().collect())
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

            /// Output events and chunks with arbitrary text (escapes,
            /// unicode), floats (NaN, infinities, subnormals) and optional
            /// fields: the fast writer's bytes are the reference's.
            #[test]
            fn matches_the_reference(
                id in any::<u128>(), at in any::<i64>(), s in text(), t in text(),
                f in proptest::collection::vec(any::<f64>(), 6),
                o in proptest::option::of(any::<f64>()), n in any::<i64>(), k in any::<i32>(),
                emb in proptest::option::of(proptest::collection::vec(any::<f32>(), 0..6)),
                flags in any::<[bool; 4]>(),
            ) {
                let event_id = Uuid::from_u128(id);
                let latency = flags[0].then(|| LatencyStats {
                    count: n, error_count: n / 2, error_rate: f[0], p50_ms: f[1], p95_ms: f[2], p99_ms: f[3],
                });
                let uncertainty = flags[1].then(|| UncertaintyStats {
                    ratings: n, positive: n / 3, approval_rate: f[4], wilson_lower: f[5], uncertainty: f[0],
                    decisions: n, predicted_mean: o, calibration_gap: o.map(|x| -x),
                });
                let events = [
                    Event::WindowStats(WindowStats {
                        event_id, occurred_at: at, source: s.clone(), subject: t.clone(), component: s.clone(),
                        endpoint: flags[2].then(|| t.clone()), project_id: flags[3].then(|| s.clone()),
                        window_start: at / 2, window_end: n, latency, uncertainty,
                    }),
                    Event::Alert(Alert {
                        event_id, occurred_at: at, source: s.clone(), rule: t.clone(), subject: s.clone(),
                        component: t.clone(), project_id: flags[0].then(|| t.clone()),
                        severity: if flags[1] { Severity::Critical } else { Severity::Warning },
                        status: if flags[2] { AlertStatus::Firing } else { AlertStatus::Resolved },
                        value: f[0], threshold: f[1], window_start: at, window_end: n, message: s.clone(),
                    }),
                    Event::Degradation(Degradation {
                        event_id, occurred_at: at, source: s.clone(), component: t.clone(),
                        kind: if flags[0] { DegradationKind::Degraded } else { DegradationKind::Recovered },
                        reason: s.clone(), p95_ms: f[2], error_rate: f[3], consecutive_windows: k,
                        window_start: at, window_end: n,
                    }),
                    Event::Promotion(Promotion {
                        event_id, occurred_at: at, source: s.clone(), store: t.clone(),
                        from_role: if flags[0] { StoreRole::Shadow } else { StoreRole::Primary },
                        to_role: if flags[1] { StoreRole::Shadow } else { StoreRole::Primary },
                        success_ratio: f[4], attempts: k, lag: n, reason: t.clone(),
                    }),
                    Event::ContextChunk(ContextChunk {
                        event_id, occurred_at: at, source: s.clone(), project_id: t.clone(), file_path: s.clone(),
                        chunk_index: k, op: if flags[3] { ChunkOp::Upsert } else { ChunkOp::Delete },
                        content: t.clone(), embedding: emb,
                    }),
                    Event::LatencySample(LatencySample {
                        event_id, occurred_at: at, source: s.clone(), component: t.clone(), endpoint: s.clone(),
                        latency_ms: f[5], outcome: if flags[2] { Outcome::Ok } else { Outcome::Timeout },
                        status_code: flags[3].then_some(k),
                    }),
                    Event::FeedbackRating(FeedbackRating {
                        event_id, occurred_at: at, source: s.clone(), project_id: t.clone(), component: s.clone(),
                        decision_id: Uuid::from_u128(!id), rating: k, correction: flags[0].then(|| t.clone()),
                    }),
                    Event::DecisionLog(DecisionLog {
                        event_id, occurred_at: at, source: s.clone(), project_id: t.clone(), component: s.clone(),
                        decision: t.clone(), uncertainty_score: k, rationale: flags[1].then(|| s.clone()),
                    }),
                ];
                for e in &events {
                    same_canonical_json(e);
                }
            }
        }
    }

    #[test]
    fn accelerated_uuid_v5_is_uuid_v5() {
        for name in [&b""[..], b"x", &[7u8; 63], &[200u8; 64], &[1u8; 5000]] {
            assert_eq!(uuid_v5(&PAYLOAD_NS, name), Uuid::new_v5(&PAYLOAD_NS, name));
        }
    }
    use crate::domain::*;

    const T: i64 = 1_750_000_000_000;

    fn chunk(id: u128, at: i64, file: &str, idx: i32, op: ChunkOp) -> Event {
        Event::ContextChunk(ContextChunk {
            event_id: Uuid::from_u128(id),
            occurred_at: at,
            source: "test".into(),
            project_id: "p1".into(),
            file_path: file.into(),
            chunk_index: idx,
            op,
            content: "text".into(),
            embedding: Some(vec![0.5; 3]),
        })
    }

    fn decision(id: u128, score: i32) -> Event {
        Event::DecisionLog(DecisionLog {
            event_id: Uuid::from_u128(id),
            occurred_at: T,
            source: "test".into(),
            project_id: "p1".into(),
            component: "search".into(),
            decision: "ship".into(),
            uncertainty_score: score,
            rationale: None,
        })
    }

    fn limits() -> Limits {
        Limits { embedding_dim: 3, max_record_bytes: usize::MAX }
    }

    #[test]
    fn payload_hash_is_stable_and_sensitive() {
        let a = decision(1, 40);
        assert_eq!(payload_hash(&a), payload_hash(&a.clone()));
        assert_ne!(payload_hash(&a), payload_hash(&decision(1, 41)));
        // Pinned (and checked with Python's uuid5 over the same canonical JSON): the
        // digest is stored, so it must never change across releases.
        assert_eq!(payload_hash(&a).to_string(), "3309f93a-f7d7-5977-9906-07b203b554eb");
    }

    #[test]
    fn canonical_json_sorts_keys_and_drops_nulls() {
        let v: Value = serde_json::from_str(r#"{"b":1,"a":{"z":null,"y":[null,2.5,"x"]},"c":null}"#).unwrap();
        let mut out = Vec::new();
        canonical_json(&v, &mut out);
        assert_eq!(String::from_utf8(out).unwrap(), r#"{"a":{"y":[null,2.5,"x"]},"b":1}"#);
    }

    #[test]
    fn dedupes_within_a_batch_and_rejects_conflicting_reuse() {
        let (a, a_again, a_other, b) = (decision(1, 40), decision(1, 40), decision(1, 99), decision(2, 10));
        let bad = decision(3, 101);
        let recs = [(10, &a), (11, &a_again), (12, &a_other), (13, &b), (14, &bad)];
        let p = plan(&tp(), &recs, &limits());
        assert_eq!((p.events, p.duplicates, p.decisions.len()), (2, 1, 2));
        assert_eq!(p.decisions.iter().map(|r| r.offset).collect::<Vec<_>>(), [10, 13]);
        assert_eq!(p.rejects.len(), 2);
        assert_eq!(p.rejects[0].offset, 12);
        assert_eq!(p.rejects[0].reason.class, "reused_event_id");
        assert!(p.rejects[0].reason.message.contains("already stored in uncertainty_logs"), "{:?}", p.rejects[0]);
        assert_eq!(p.rejects[0].tp, tp());
        assert_eq!(p.rejects[1].offset, 14);
        assert_eq!(p.rejects[1].reason.class, "invalid");
        assert!(p.rejects[1].reason.message.contains("uncertainty_score"), "{:?}", p.rejects[1]);
    }

    #[test]
    fn wrong_embedding_dimension_is_a_reject_not_a_failed_batch() {
        let c = chunk(1, T, "a.rs", 0, ChunkOp::Upsert);
        let p = plan(&tp(), &[(0, &c)], &Limits { embedding_dim: 4, max_record_bytes: usize::MAX });
        assert_eq!(p.rejects.len(), 1);
        assert!(p.rejects[0].reason.message.contains("UDO_EMBEDDING_DIM"), "{:?}", p.rejects[0]);
    }

    #[test]
    fn newest_chunk_per_key_wins_by_time_then_id() {
        let evs = [
            chunk(5, T + 10, "a.rs", 0, ChunkOp::Upsert),
            chunk(3, T + 20, "a.rs", 0, ChunkOp::Delete),
            chunk(4, T + 5, "a.rs", 0, ChunkOp::Upsert),
            chunk(1, T, "a.rs", 1, ChunkOp::Upsert),
            chunk(2, T, "a.rs", 1, ChunkOp::Upsert),
            chunk(6, T, "b.rs", 0, ChunkOp::Upsert),
        ];
        let recs: Vec<(i64, &Event)> = evs.iter().enumerate().map(|(i, e)| (i as i64, e)).collect();
        let p = plan(&tp(), &recs, &limits());
        let newest = newest_chunks(&p.chunks);
        let ids: Vec<u128> = newest.iter().map(|r| r.event.event_id.as_u128()).collect();
        assert_eq!(ids, [3, 2, 6], "delete at T+20 wins a.rs#0; same time: larger id wins a.rs#1");
        let (ups, dels) = split_ops(newest);
        assert_eq!((ups.len(), dels.len()), (2, 1));
    }

    #[test]
    fn health_is_the_newest_window_per_component() {
        let d = |id: u128, end: i64, kind| {
            Event::Degradation(Degradation {
                event_id: Uuid::from_u128(id),
                occurred_at: end,
                source: "analyze".into(),
                component: "checkout".into(),
                kind,
                reason: "r".into(),
                p95_ms: 300.0,
                error_rate: 0.0,
                consecutive_windows: 2,
                window_start: end - 300_000,
                window_end: end,
            })
        };
        let evs = [d(1, T + 60_000, DegradationKind::Recovered), d(2, T, DegradationKind::Degraded)];
        let recs = [(0, &evs[0]), (1, &evs[1])];
        let p = plan(&tp(), &recs, &limits());
        let h = newest_health(&p.degradations);
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].kind, DegradationKind::Recovered, "the later window wins even when it came first");
    }

    #[test]
    fn project_activity_spans_accepted_input_events() {
        let evs = [
            chunk(1, T + 5, "a.rs", 0, ChunkOp::Upsert),
            decision(2, 10),
            chunk(3, T + 99, "b.rs", 0, ChunkOp::Delete),
        ];
        let recs: Vec<(i64, &Event)> = evs.iter().enumerate().map(|(i, e)| (i as i64, e)).collect();
        let p = plan(&tp(), &recs, &limits());
        let act = project_activity(&p, &[2].into_iter().collect());
        assert_eq!(act.get("p1"), Some(&(T, T + 5)), "offset 2 was rejected by the database");
    }

    #[test]
    fn a_window_with_both_stats_goes_to_both_tables() {
        let w = Event::WindowStats(WindowStats {
            event_id: Uuid::from_u128(9),
            occurred_at: T,
            source: "analyze".into(),
            subject: "checkout".into(),
            component: "checkout".into(),
            endpoint: None,
            project_id: None,
            window_start: T - 300_000,
            window_end: T,
            latency: Some(LatencyStats {
                count: 1,
                error_count: 0,
                error_rate: 0.0,
                p50_ms: 1.0,
                p95_ms: 1.0,
                p99_ms: 1.0,
            }),
            uncertainty: None,
        });
        let p = plan(&tp(), &[(0, &w)], &limits());
        assert_eq!((p.latency_windows.len(), p.uncertainty_windows.len(), p.events), (1, 0, 1));
    }
}
