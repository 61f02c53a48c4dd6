//! Topics as code: `topics/*.yaml` parsed into specs (`spec`), compared with
//! what the broker has (`plan`, pure) and applied (`admin`, IO).

pub mod admin;
pub mod plan;
pub mod spec;

pub use spec::{TopicCatalog, TopicSpec, ValueSpec};

/// Full topic names under one prefix, and which pipeline reads which.
#[derive(Debug, Clone)]
pub struct Topics {
    pub writes: String,
    pub feedback: String,
    pub latency: String,
    pub windows: String,
    pub alerts: String,
    pub degradations: String,
    pub promotions: String,
    pub dlq: String,
    /// Decision logs re-keyed by component (the analyzer's).
    pub decisions: String,
    /// Latency samples and ratings routed to the task owning their component.
    pub routed: String,
    /// The analyzer's state, exactly-once.
    pub changelog: String,
}

impl Topics {
    pub fn with_prefix(prefix: &str) -> Topics {
        let t = |n: &str| format!("{prefix}{n}");
        Topics {
            writes: t(names::WRITES),
            feedback: t(names::FEEDBACK),
            latency: t(names::LATENCY),
            windows: t(names::WINDOWS),
            alerts: t(names::ALERTS),
            degradations: t(names::DEGRADATIONS),
            promotions: t(names::PROMOTIONS),
            dlq: t(names::DLQ),
            decisions: t(names::DECISIONS_BY_COMPONENT),
            routed: t(names::ANALYZE_ROUTED),
            changelog: t(names::ANALYZE_CHANGELOG),
        }
    }

    /// What the analyzer subscribes to.
    pub fn analyze_inputs(&self) -> Vec<String> {
        [&self.latency, &self.feedback, &self.decisions, &self.routed, &self.writes].map(String::clone).to_vec()
    }

    /// The analyzer's inputs whose partition `p` belongs to its task `p`
    /// (`writes` is keyed by project and re-keyed into `decisions`).
    pub fn is_task_input(&self, topic: &str) -> bool {
        topic == self.latency || topic == self.feedback || topic == self.decisions || topic == self.routed
    }

    /// The analyzer's and the materializers' outputs.
    pub fn outputs(&self) -> Vec<String> {
        [&self.windows, &self.alerts, &self.degradations, &self.promotions].map(String::clone).to_vec()
    }

    /// PostgreSQL holds everything: the three inputs and every output.
    pub fn postgres_inputs(&self) -> Vec<String> {
        let mut t = vec![self.writes.clone(), self.feedback.clone(), self.latency.clone()];
        t.extend(self.outputs());
        t
    }

    /// Redis holds current state: context chunks (writes) and the outputs.
    pub fn redis_inputs(&self) -> Vec<String> {
        let mut t = vec![self.writes.clone()];
        t.extend(self.outputs());
        t
    }
}

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
