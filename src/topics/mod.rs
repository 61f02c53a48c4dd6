//! Topics as code: `topics/*.yaml` parsed into specs (`spec`), compared with
//! what the broker has (`plan`, pure) and applied (`admin`, IO).

pub mod admin;
pub mod plan;
pub mod spec;

pub use spec::{TopicCatalog, TopicSpec, ValueSpec};

/// Names of the contract's topics (design §2), before any prefix.
pub mod names {
    pub const WRITES: &str = "udo.writes.v1";
    pub const FEEDBACK: &str = "udo.feedback.v1";
    pub const LATENCY: &str = "udo.latency.v1";
    pub const WINDOWS: &str = "udo.windows.v1";
    pub const ALERTS: &str = "udo.alerts.v1";
    pub const DEGRADATIONS: &str = "udo.degradations.v1";
    pub const PROMOTIONS: &str = "udo.promotions.v1";
    pub const DLQ: &str = "udo.dlq.v1";
    /// Internal: decision logs re-keyed by component for the analyzer.
    pub const DECISIONS_BY_COMPONENT: &str = "udo.analyze.decisions.v1";
    /// Internal: latency samples and ratings routed to their owning task.
    pub const ANALYZE_ROUTED: &str = "udo.analyze.routed.v1";
    /// Internal: the analyzer's state in exactly-once mode.
    pub const ANALYZE_CHANGELOG: &str = "udo.analyze.changelog.v1";
}
