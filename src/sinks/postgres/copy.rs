//! PostgreSQL's binary COPY format, written without IO: a header, rows of
//! length-prefixed big-endian fields, a trailer; and the payloads of the
//! sink's bulk tables. Binary COPY is the cheapest way into a table (the
//! server parses no text, not even a float), so the sink writes its bulk
//! rows this way, and `bench materialize` uses the same payloads for its
//! COPY baseline.

use super::plan::{Plan, Row};
use crate::domain::{ContextChunk, DecisionLog, FeedbackRating, LatencySample};
use uuid::Uuid;

/// Microseconds between the Unix epoch and PostgreSQL's (2000-01-01).
const PG_EPOCH_US: i64 = 946_684_800_000_000;

/// One COPY payload being written. Call [`row`](Self::row) with the field
/// count, then one field method per column, in the statement's column order.
#[derive(Debug)]
pub struct CopyBuf(Vec<u8>);

impl CopyBuf {
    /// A payload with room for about `bytes` bytes.
    pub fn with_capacity(bytes: usize) -> CopyBuf {
        let mut b = Vec::with_capacity(bytes + 21);
        b.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
        b.extend_from_slice(&0i32.to_be_bytes()); // flags
        b.extend_from_slice(&0i32.to_be_bytes()); // header extension length
        CopyBuf(b)
    }

    pub fn row(&mut self, fields: i16) {
        self.0.extend_from_slice(&fields.to_be_bytes());
    }

    /// A row of an event table: its field count, then the four columns
    /// every event table starts with.
    pub fn event_header(&mut self, fields: i16, event_id: &Uuid, payload_hash: &Uuid, occurred_at: i64, source: &str) {
        self.row(fields);
        self.uuid(event_id);
        self.uuid(payload_hash);
        self.ts_ms(occurred_at);
        self.text(source);
    }

    pub fn bytes(&mut self, v: &[u8]) {
        self.0.extend_from_slice(&(v.len() as i32).to_be_bytes());
        self.0.extend_from_slice(v);
    }

    pub fn null(&mut self) {
        self.0.extend_from_slice(&(-1i32).to_be_bytes());
    }

    pub fn uuid(&mut self, u: &Uuid) {
        self.bytes(u.as_bytes());
    }

    /// `timestamptz` from epoch milliseconds (validated to a sane range
    /// upstream, so the multiplication cannot overflow).
    pub fn ts_ms(&mut self, ms: i64) {
        self.bytes(&(ms * 1000 - PG_EPOCH_US).to_be_bytes());
    }

    pub fn text(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }

    pub fn opt_text(&mut self, s: Option<&str>) {
        match s {
            Some(s) => self.text(s),
            None => self.null(),
        }
    }

    pub fn i16(&mut self, v: i16) {
        self.bytes(&v.to_be_bytes());
    }

    pub fn i32(&mut self, v: i32) {
        self.bytes(&v.to_be_bytes());
    }

    pub fn opt_i32(&mut self, v: Option<i32>) {
        match v {
            Some(v) => self.i32(v),
            None => self.null(),
        }
    }

    pub fn f64(&mut self, v: f64) {
        self.bytes(&v.to_be_bytes());
    }

    /// pgvector's binary `vector`: dimension (int16), an unused int16, then
    /// the float4s.
    pub fn vector(&mut self, v: Option<&[f32]>) {
        let Some(v) = v else { return self.null() };
        self.0.extend_from_slice(&((4 + 4 * v.len()) as i32).to_be_bytes());
        self.0.extend_from_slice(&(v.len() as i16).to_be_bytes());
        self.0.extend_from_slice(&0i16.to_be_bytes());
        for x in v {
            self.0.extend_from_slice(&x.to_be_bytes());
        }
    }

    /// The payload with its trailer.
    pub fn finish(mut self) -> Vec<u8> {
        self.0.extend_from_slice(&(-1i16).to_be_bytes());
        self.0
    }
}

// ---- the sink's tables

/// Columns of the COPY payloads below, in the order they write them.
pub const LATENCY_COLUMNS: &str =
    "event_id, payload_hash, occurred_at, source, component, endpoint, latency_ms, outcome, status_code";
pub const FEEDBACK_COLUMNS: &str =
    "event_id, payload_hash, occurred_at, source, project_id, component, decision_id, rating, correction";
pub const DECISION_COLUMNS: &str =
    "event_id, payload_hash, occurred_at, source, project_id, component, decision, uncertainty_score, rationale";
pub const CHUNK_EVENT_COLUMNS: &str =
    "event_id, payload_hash, occurred_at, source, project_id, file_path, chunk_index, op";
pub const CONTEXT_COLUMNS: &str =
    "project_id, file_path, chunk_index, event_id, occurred_at, source, content, embedding";

/// `COPY table (columns) FROM STDIN` in binary format.
pub fn copy_into(table: &str, columns: &str) -> String {
    format!("COPY {table} ({columns}) FROM STDIN (FORMAT binary)")
}

/// The high-volume event tables of a batch as binary COPY payloads:
/// (table, COPY statement, payload), for tables with rows.
pub(super) fn event_copies(p: &Plan<'_>) -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    if !p.latency.is_empty() {
        out.push(("latency_samples", copy_into("latency_samples", LATENCY_COLUMNS), latency_copy(&p.latency)));
    }
    if !p.feedback.is_empty() {
        let stmt = copy_into("uncertainty_feedback", FEEDBACK_COLUMNS);
        out.push(("uncertainty_feedback", stmt, feedback_copy(&p.feedback)));
    }
    if !p.decisions.is_empty() {
        out.push(("uncertainty_logs", copy_into("uncertainty_logs", DECISION_COLUMNS), decisions_copy(&p.decisions)));
    }
    if !p.chunks.is_empty() {
        let stmt = copy_into("project_context_events", CHUNK_EVENT_COLUMNS);
        out.push(("project_context_events", stmt, chunk_events_copy(&p.chunks)));
    }
    out
}

/// Payload of [`LATENCY_COLUMNS`].
pub fn latency_copy(rows: &[Row<'_, LatencySample>]) -> Vec<u8> {
    let mut c = CopyBuf::with_capacity(rows.len() * 150);
    for r in rows {
        let e = r.event;
        c.event_header(9, &e.event_id, &r.hash, e.occurred_at, &e.source);
        c.text(&e.component);
        c.text(&e.endpoint);
        c.f64(e.latency_ms);
        c.text(e.outcome.as_str());
        c.opt_i32(e.status_code);
    }
    c.finish()
}

/// Payload of [`FEEDBACK_COLUMNS`].
pub fn feedback_copy(rows: &[Row<'_, FeedbackRating>]) -> Vec<u8> {
    let mut c = CopyBuf::with_capacity(rows.len() * 200);
    for r in rows {
        let e = r.event;
        c.event_header(9, &e.event_id, &r.hash, e.occurred_at, &e.source);
        c.text(&e.project_id);
        c.text(&e.component);
        c.uuid(&e.decision_id);
        c.i16(e.rating as i16);
        c.opt_text(e.correction.as_deref());
    }
    c.finish()
}

/// Payload of [`DECISION_COLUMNS`].
pub fn decisions_copy(rows: &[Row<'_, DecisionLog>]) -> Vec<u8> {
    let mut c = CopyBuf::with_capacity(rows.len() * 250);
    for r in rows {
        let e = r.event;
        c.event_header(9, &e.event_id, &r.hash, e.occurred_at, &e.source);
        c.text(&e.project_id);
        c.text(&e.component);
        c.text(&e.decision);
        c.i16(e.uncertainty_score as i16);
        c.opt_text(e.rationale.as_deref());
    }
    c.finish()
}

/// Payload of [`CHUNK_EVENT_COLUMNS`] (the ledger: no content or embedding).
pub fn chunk_events_copy(rows: &[Row<'_, ContextChunk>]) -> Vec<u8> {
    let mut c = CopyBuf::with_capacity(rows.len() * 150);
    for r in rows {
        let e = r.event;
        c.event_header(8, &e.event_id, &r.hash, e.occurred_at, &e.source);
        c.text(&e.project_id);
        c.text(&e.file_path);
        c.i32(e.chunk_index);
        c.text(e.op.as_str());
    }
    c.finish()
}

/// Payload of [`CONTEXT_COLUMNS`]: current chunks, embeddings in pgvector's
/// binary form (no float is printed or parsed on the way).
pub fn contexts_copy(rows: &[Row<'_, ContextChunk>]) -> Vec<u8> {
    let dim = rows.iter().find_map(|r| r.event.embedding.as_ref()).map_or(0, Vec::len);
    let mut c = CopyBuf::with_capacity(rows.len() * (4 * dim + 400));
    for r in rows {
        let e = r.event;
        c.row(8);
        c.text(&e.project_id);
        c.text(&e.file_path);
        c.i32(e.chunk_index);
        c.uuid(&e.event_id);
        c.ts_ms(e.occurred_at);
        c.text(&e.source);
        c.text(&e.content);
        c.vector(e.embedding.as_deref());
    }
    c.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ChunkOp, Outcome};

    #[test]
    fn copy_binary_has_header_fields_and_nulls() {
        let e = LatencySample {
            event_id: Uuid::from_u128(1),
            occurred_at: 1_750_000_000_123,
            source: "a\tb".into(),
            component: "checkout".into(),
            endpoint: "/pay".into(),
            latency_ms: 12.5,
            outcome: Outcome::Timeout,
            status_code: None,
        };
        let rows = [Row { offset: 0, hash: Uuid::from_u128(2), event: &e }];
        let b = latency_copy(&rows);
        assert_eq!(&b[..11], b"PGCOPY\n\xff\r\n\0");
        assert_eq!(&b[19..21], &9i16.to_be_bytes(), "nine fields");
        assert_eq!(&b[21..25], &16i32.to_be_bytes());
        assert_eq!(&b[25..41], Uuid::from_u128(1).as_bytes());
        assert_eq!(&b[b.len() - 6..], &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff], "NULL status, then the trailer");
        let text = String::from_utf8_lossy(&b);
        assert!(text.contains("a\tb") && text.contains("TIMEOUT"), "text travels raw, unescaped");
    }

    #[test]
    fn contexts_copy_carries_binary_vectors_and_null_embeddings() {
        let chunk = |embedding: Option<Vec<f32>>| ContextChunk {
            event_id: Uuid::from_u128(3),
            occurred_at: 1_750_000_000_000,
            source: "s".into(),
            project_id: "p".into(),
            file_path: "f.rs".into(),
            chunk_index: 2,
            op: ChunkOp::Upsert,
            content: "c".into(),
            embedding,
        };
        let (with, without) = (chunk(Some(vec![0.25, 4.0])), chunk(None));
        let rows =
            [Row { offset: 0, hash: Uuid::nil(), event: &with }, Row { offset: 1, hash: Uuid::nil(), event: &without }];
        let b = contexts_copy(&rows);
        let vector: Vec<u8> = [
            &12i32.to_be_bytes()[..],
            &2i16.to_be_bytes(),
            &0i16.to_be_bytes(),
            &0.25f32.to_be_bytes(),
            &4.0f32.to_be_bytes(),
        ]
        .concat();
        assert!(b.windows(vector.len()).any(|w| w == vector.as_slice()), "length, dimension, unused, float4s");
        assert_eq!(&b[b.len() - 6..], &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff], "NULL embedding, then the trailer");
    }

    #[test]
    fn header_fields_nulls_and_trailer() {
        let mut c = CopyBuf::with_capacity(0);
        c.row(3);
        c.ts_ms(946_684_800_001); // 2000-01-01 00:00:00.001 UTC
        c.opt_text(None);
        c.vector(Some(&[1.0, -0.5]));
        let b = c.finish();
        assert_eq!(&b[..11], b"PGCOPY\n\xff\r\n\0");
        assert_eq!(&b[19..21], &3i16.to_be_bytes());
        assert_eq!(&b[21..25], &8i32.to_be_bytes());
        assert_eq!(&b[25..33], &1000i64.to_be_bytes(), "microseconds since PostgreSQL's epoch");
        assert_eq!(&b[33..37], &(-1i32).to_be_bytes(), "NULL");
        assert_eq!(&b[37..41], &12i32.to_be_bytes(), "vector length: 2 + 2 + 2 × 4 bytes");
        assert_eq!(&b[41..43], &2i16.to_be_bytes(), "dimension");
        assert_eq!(&b[45..49], &1.0f32.to_be_bytes());
        assert_eq!(&b[53..], &(-1i16).to_be_bytes(), "trailer");
    }
}
