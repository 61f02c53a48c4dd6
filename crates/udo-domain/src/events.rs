//! The events of design §3, one struct per Avro record in `schemas/`.
//!
//! Field names match the Avro schemas exactly so one serde mapping serves
//! Avro and JSON. Unknown fields are ignored (newer producers may add fields
//! with defaults); missing required fields are an error.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Serde adapter: UUIDs travel as strings in both Avro (`logicalType: uuid`)
/// and JSON; apache-avro's serializer is not human-readable, so the default
/// `Uuid` impl would emit bytes.
pub mod uuid_str {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};
    use uuid::Uuid;

    pub fn serialize<S: Serializer>(id: &Uuid, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(id.hyphenated().encode_lower(&mut Uuid::encode_buffer()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Uuid, D::Error> {
        let s = std::borrow::Cow::<str>::deserialize(d)?;
        Uuid::parse_str(&s).map_err(|e| D::Error::custom(format!("not a UUID ({e}): {s:?}")))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Outcome {
    Ok,
    Error,
    Timeout,
}

impl Outcome {
    pub fn is_error(self) -> bool {
        !matches!(self, Outcome::Ok)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencySample {
    #[serde(with = "uuid_str")]
    pub event_id: Uuid,
    pub occurred_at: i64,
    pub source: String,
    pub component: String,
    pub endpoint: String,
    pub latency_ms: f64,
    pub outcome: Outcome,
    #[serde(default)]
    pub status_code: Option<i32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeedbackRating {
    #[serde(with = "uuid_str")]
    pub event_id: Uuid,
    pub occurred_at: i64,
    pub source: String,
    pub project_id: String,
    pub component: String,
    #[serde(with = "uuid_str")]
    pub decision_id: Uuid,
    pub rating: i32,
    #[serde(default)]
    pub correction: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionLog {
    #[serde(with = "uuid_str")]
    pub event_id: Uuid,
    pub occurred_at: i64,
    pub source: String,
    pub project_id: String,
    pub component: String,
    pub decision: String,
    pub uncertainty_score: i32,
    #[serde(default)]
    pub rationale: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ChunkOp {
    #[default]
    Upsert,
    Delete,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContextChunk {
    #[serde(with = "uuid_str")]
    pub event_id: Uuid,
    pub occurred_at: i64,
    pub source: String,
    pub project_id: String,
    pub file_path: String,
    #[serde(default)]
    pub chunk_index: i32,
    #[serde(default)]
    pub op: ChunkOp,
    #[serde(default)]
    pub content: String,
    #[serde(default)]
    pub embedding: Option<Vec<f32>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencyStats {
    pub count: i64,
    pub error_count: i64,
    pub error_rate: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UncertaintyStats {
    pub ratings: i64,
    pub positive: i64,
    pub approval_rate: f64,
    pub wilson_lower: f64,
    pub uncertainty: f64,
    #[serde(default)]
    pub decisions: i64,
    #[serde(default)]
    pub predicted_mean: Option<f64>,
    #[serde(default)]
    pub calibration_gap: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowStats {
    #[serde(with = "uuid_str")]
    pub event_id: Uuid,
    pub occurred_at: i64,
    pub source: String,
    pub subject: String,
    pub component: String,
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub project_id: Option<String>,
    pub window_start: i64,
    pub window_end: i64,
    #[serde(default)]
    pub latency: Option<LatencyStats>,
    #[serde(default)]
    pub uncertainty: Option<UncertaintyStats>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Severity {
    Warning,
    Critical,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AlertStatus {
    Firing,
    Resolved,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    #[serde(with = "uuid_str")]
    pub event_id: Uuid,
    pub occurred_at: i64,
    pub source: String,
    pub rule: String,
    pub subject: String,
    pub component: String,
    #[serde(default)]
    pub project_id: Option<String>,
    pub severity: Severity,
    pub status: AlertStatus,
    pub value: f64,
    pub threshold: f64,
    pub window_start: i64,
    pub window_end: i64,
    #[serde(default)]
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DegradationKind {
    Degraded,
    Recovered,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Degradation {
    #[serde(with = "uuid_str")]
    pub event_id: Uuid,
    pub occurred_at: i64,
    pub source: String,
    pub component: String,
    pub kind: DegradationKind,
    pub reason: String,
    pub p95_ms: f64,
    pub error_rate: f64,
    pub consecutive_windows: i32,
    pub window_start: i64,
    pub window_end: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StoreRole {
    Shadow,
    Primary,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Promotion {
    #[serde(with = "uuid_str")]
    pub event_id: Uuid,
    pub occurred_at: i64,
    pub source: String,
    pub store: String,
    pub from_role: StoreRole,
    pub to_role: StoreRole,
    pub success_ratio: f64,
    pub attempts: i32,
    pub lag: i64,
    #[serde(default)]
    pub reason: String,
}

/// The one mapping of a contract enum to its names: `as_str` is the wire
/// (and database) name, the serde name too (tested); `label` the metric
/// label.
macro_rules! names {
    ($ty:ident { $($variant:ident => $wire:literal, $label:literal),+ $(,)? }) => {
        impl $ty {
            pub const ALL: &'static [$ty] = &[$($ty::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($ty::$variant => $wire),+ }
            }

            pub fn label(self) -> &'static str {
                match self { $($ty::$variant => $label),+ }
            }
        }
    };
}

names!(Severity { Warning => "WARNING", "warning", Critical => "CRITICAL", "critical" });
names!(AlertStatus { Firing => "FIRING", "firing", Resolved => "RESOLVED", "resolved" });
names!(DegradationKind { Degraded => "DEGRADED", "degraded", Recovered => "RECOVERED", "recovered" });
names!(StoreRole { Shadow => "SHADOW", "shadow", Primary => "PRIMARY", "primary" });
names!(Outcome { Ok => "OK", "ok", Error => "ERROR", "error", Timeout => "TIMEOUT", "timeout" });
names!(ChunkOp { Upsert => "UPSERT", "upsert", Delete => "DELETE", "delete" });

/// Any event of the contract. The variant name is the Avro record name.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Event {
    LatencySample(LatencySample),
    FeedbackRating(FeedbackRating),
    DecisionLog(DecisionLog),
    ContextChunk(ContextChunk),
    WindowStats(WindowStats),
    Alert(Alert),
    Degradation(Degradation),
    Promotion(Promotion),
}

/// Avro record names, as in `schemas/<name>.avsc`.
pub const RECORD_NAMES: [&str; 8] = [
    "LatencySample",
    "FeedbackRating",
    "DecisionLog",
    "ContextChunk",
    "WindowStats",
    "Alert",
    "Degradation",
    "Promotion",
];

impl Event {
    /// The Avro record name of this event.
    pub fn record_name(&self) -> &'static str {
        match self {
            Event::LatencySample(_) => "LatencySample",
            Event::FeedbackRating(_) => "FeedbackRating",
            Event::DecisionLog(_) => "DecisionLog",
            Event::ContextChunk(_) => "ContextChunk",
            Event::WindowStats(_) => "WindowStats",
            Event::Alert(_) => "Alert",
            Event::Degradation(_) => "Degradation",
            Event::Promotion(_) => "Promotion",
        }
    }

    pub fn event_id(&self) -> Uuid {
        match self {
            Event::LatencySample(e) => e.event_id,
            Event::FeedbackRating(e) => e.event_id,
            Event::DecisionLog(e) => e.event_id,
            Event::ContextChunk(e) => e.event_id,
            Event::WindowStats(e) => e.event_id,
            Event::Alert(e) => e.event_id,
            Event::Degradation(e) => e.event_id,
            Event::Promotion(e) => e.event_id,
        }
    }

    pub fn set_event_id(&mut self, id: Uuid) {
        match self {
            Event::LatencySample(e) => e.event_id = id,
            Event::FeedbackRating(e) => e.event_id = id,
            Event::DecisionLog(e) => e.event_id = id,
            Event::ContextChunk(e) => e.event_id = id,
            Event::WindowStats(e) => e.event_id = id,
            Event::Alert(e) => e.event_id = id,
            Event::Degradation(e) => e.event_id = id,
            Event::Promotion(e) => e.event_id = id,
        }
    }

    pub fn occurred_at(&self) -> i64 {
        match self {
            Event::LatencySample(e) => e.occurred_at,
            Event::FeedbackRating(e) => e.occurred_at,
            Event::DecisionLog(e) => e.occurred_at,
            Event::ContextChunk(e) => e.occurred_at,
            Event::WindowStats(e) => e.occurred_at,
            Event::Alert(e) => e.occurred_at,
            Event::Degradation(e) => e.occurred_at,
            Event::Promotion(e) => e.occurred_at,
        }
    }

    /// The record key that keeps everything a key's state needs in one
    /// partition (design §2): component for latency and feedback, project for
    /// writes, subject/component/store for outputs.
    pub fn partition_key(&self) -> &str {
        match self {
            Event::LatencySample(e) => &e.component,
            Event::FeedbackRating(e) => &e.component,
            Event::DecisionLog(e) => &e.project_id,
            Event::ContextChunk(e) => &e.project_id,
            Event::WindowStats(e) => &e.subject,
            Event::Alert(e) => &e.subject,
            Event::Degradation(e) => &e.component,
            Event::Promotion(e) => &e.store,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serde_name<T: Serialize>(v: T) -> String {
        serde_json::to_value(v).unwrap().as_str().unwrap().to_string()
    }

    #[test]
    fn enum_names_are_the_serde_names() {
        macro_rules! check {
            ($($ty:ident),+) => {$(
                for v in $ty::ALL {
                    assert_eq!(serde_name(v), v.as_str());
                    assert_eq!(v.label(), v.as_str().to_lowercase());
                }
            )+};
        }
        check!(Severity, AlertStatus, DegradationKind, StoreRole, Outcome, ChunkOp);
    }
}
