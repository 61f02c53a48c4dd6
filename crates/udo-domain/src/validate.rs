//! Semantic validation of decoded events (design §6). Decoding proves the
//! bytes match a schema; this proves the values make sense. Every rejection
//! names the field and the reason so the DLQ entry is actionable.

use super::events::*;
use std::fmt;

/// Limits that depend on configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Required length of every embedding vector (`vector(N)` in Postgres).
    pub embedding_dim: usize,
    /// Records larger than this (key + value bytes) are rejected.
    pub max_record_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { embedding_dim: 384, max_record_bytes: 1024 * 1024 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    /// Dotted field path, e.g. `embedding[3]`.
    pub field: String,
    pub reason: String,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "field `{}`: {}", self.field, self.reason)
    }
}

impl std::error::Error for ValidationError {}

fn err(field: impl Into<String>, reason: impl Into<String>) -> ValidationError {
    ValidationError { field: field.into(), reason: reason.into() }
}

type Check = Result<(), ValidationError>;

fn non_empty(field: &str, v: &str) -> Check {
    if v.trim().is_empty() { Err(err(field, "must not be empty")) } else { Ok(()) }
}

fn timestamp(field: &str, ms: i64) -> Check {
    // Before 2000-01-01 or after 2100 is a unit mistake (seconds, micros), not data.
    const MIN: i64 = 946_684_800_000;
    const MAX: i64 = 4_102_444_800_000;
    if (MIN..MAX).contains(&ms) {
        Ok(())
    } else {
        Err(err(field, format!("{ms} is not epoch milliseconds between 2000 and 2100")))
    }
}

fn finite(field: &str, v: f64) -> Check {
    if v.is_finite() { Ok(()) } else { Err(err(field, format!("must be a finite number, got {v}"))) }
}

fn unit_interval(field: &str, v: f64) -> Check {
    finite(field, v)?;
    if (0.0..=1.0).contains(&v) { Ok(()) } else { Err(err(field, format!("must be within [0, 1], got {v}"))) }
}

fn header(event_id: &uuid::Uuid, occurred_at: i64, source: &str) -> Check {
    if event_id.is_nil() {
        return Err(err("event_id", "must not be the nil UUID"));
    }
    timestamp("occurred_at", occurred_at)?;
    non_empty("source", source)
}

fn window(start: i64, end: i64) -> Check {
    timestamp("window_start", start)?;
    timestamp("window_end", end)?;
    if end <= start {
        return Err(err("window_end", format!("must be after window_start ({end} <= {start})")));
    }
    Ok(())
}

impl Event {
    /// Checks every value rule of design §6 for this event.
    pub fn validate(&self, limits: &Limits) -> Check {
        match self {
            Event::LatencySample(e) => {
                header(&e.event_id, e.occurred_at, &e.source)?;
                non_empty("component", &e.component)?;
                non_empty("endpoint", &e.endpoint)?;
                finite("latency_ms", e.latency_ms)?;
                if e.latency_ms < 0.0 {
                    return Err(err("latency_ms", format!("must be >= 0, got {}", e.latency_ms)));
                }
                if let Some(code) = e.status_code {
                    if !(0..=999).contains(&code) {
                        return Err(err("status_code", format!("must be within 0..=999, got {code}")));
                    }
                }
                Ok(())
            }
            Event::FeedbackRating(e) => {
                header(&e.event_id, e.occurred_at, &e.source)?;
                non_empty("project_id", &e.project_id)?;
                non_empty("component", &e.component)?;
                if e.decision_id.is_nil() {
                    return Err(err("decision_id", "must not be the nil UUID"));
                }
                if e.rating != 1 && e.rating != -1 {
                    return Err(err("rating", format!("must be +1 or -1, got {}", e.rating)));
                }
                Ok(())
            }
            Event::DecisionLog(e) => {
                header(&e.event_id, e.occurred_at, &e.source)?;
                non_empty("project_id", &e.project_id)?;
                non_empty("component", &e.component)?;
                non_empty("decision", &e.decision)?;
                if !(0..=100).contains(&e.uncertainty_score) {
                    return Err(err(
                        "uncertainty_score",
                        format!("must be within 0..=100, got {}", e.uncertainty_score),
                    ));
                }
                Ok(())
            }
            Event::ContextChunk(e) => {
                header(&e.event_id, e.occurred_at, &e.source)?;
                non_empty("project_id", &e.project_id)?;
                non_empty("file_path", &e.file_path)?;
                if e.chunk_index < 0 {
                    return Err(err("chunk_index", format!("must be >= 0, got {}", e.chunk_index)));
                }
                if let Some(v) = &e.embedding {
                    if v.len() != limits.embedding_dim {
                        return Err(err(
                            "embedding",
                            format!(
                                "has dimension {}, the configured dimension is {} (UDO_EMBEDDING_DIM)",
                                v.len(),
                                limits.embedding_dim
                            ),
                        ));
                    }
                    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                        return Err(err(format!("embedding[{i}]"), format!("must be finite, got {}", v[i])));
                    }
                }
                if e.op == ChunkOp::Upsert && e.content.is_empty() && e.embedding.is_none() {
                    return Err(err("content", "an UPSERT needs content or an embedding"));
                }
                Ok(())
            }
            Event::WindowStats(e) => {
                header(&e.event_id, e.occurred_at, &e.source)?;
                non_empty("subject", &e.subject)?;
                non_empty("component", &e.component)?;
                window(e.window_start, e.window_end)?;
                if let Some(l) = &e.latency {
                    for (f, v) in
                        [("latency.p50_ms", l.p50_ms), ("latency.p95_ms", l.p95_ms), ("latency.p99_ms", l.p99_ms)]
                    {
                        finite(f, v)?;
                    }
                    unit_interval("latency.error_rate", l.error_rate)?;
                }
                if let Some(u) = &e.uncertainty {
                    unit_interval("uncertainty.uncertainty", u.uncertainty)?;
                    unit_interval("uncertainty.approval_rate", u.approval_rate)?;
                }
                Ok(())
            }
            Event::Alert(e) => {
                header(&e.event_id, e.occurred_at, &e.source)?;
                non_empty("rule", &e.rule)?;
                non_empty("subject", &e.subject)?;
                finite("value", e.value)?;
                finite("threshold", e.threshold)?;
                window(e.window_start, e.window_end)
            }
            Event::Degradation(e) => {
                header(&e.event_id, e.occurred_at, &e.source)?;
                non_empty("component", &e.component)?;
                finite("p95_ms", e.p95_ms)?;
                unit_interval("error_rate", e.error_rate)?;
                window(e.window_start, e.window_end)
            }
            Event::Promotion(e) => {
                header(&e.event_id, e.occurred_at, &e.source)?;
                non_empty("store", &e.store)?;
                unit_interval("success_ratio", e.success_ratio)?;
                if e.from_role == e.to_role {
                    return Err(err("to_role", "must differ from from_role"));
                }
                Ok(())
            }
        }
    }
}
