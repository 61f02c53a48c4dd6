//! Internal events (Vector's pattern): one struct per thing that happens,
//! whose `emit()` logs and counts together so a log line and its metric never
//! drift apart. Metric names are `udo_<noun>_<unit>[_total]`; labels are
//! bounded (pipeline, topic, partition, sink, rule, severity, class), never an
//! event or user id.

use metrics::{counter, gauge, histogram};
use std::time::Duration;

pub struct RecordsConsumed<'a> {
    pub pipeline: &'static str,
    pub topic: &'a str,
    pub count: u64,
}

impl RecordsConsumed<'_> {
    pub fn emit(&self) {
        counter!("udo_records_consumed_total", "pipeline" => self.pipeline, "topic" => self.topic.to_string())
            .increment(self.count);
    }
}

pub struct RecordsProduced<'a> {
    pub pipeline: &'static str,
    pub topic: &'a str,
    pub count: u64,
}

impl RecordsProduced<'_> {
    pub fn emit(&self) {
        counter!("udo_records_produced_total", "pipeline" => self.pipeline, "topic" => self.topic.to_string())
            .increment(self.count);
    }
}

/// A record sent to the DLQ (undecodable, invalid, late or conflicting).
pub struct DlqRecord<'a> {
    pub pipeline: &'static str,
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub class: &'a str,
    pub message: &'a str,
}

impl DlqRecord<'_> {
    pub fn emit(&self) {
        let key = super::dlq_log::Key {
            pipeline: self.pipeline,
            topic: self.topic.to_string(),
            partition: self.partition,
            class: self.class.to_string(),
        };
        if super::dlq_log::record(key, self.offset) {
            tracing::warn!(
                pipeline = self.pipeline,
                topic = self.topic,
                partition = self.partition,
                offset = self.offset,
                class = self.class,
                "record sent to the DLQ: {} (more of this partition and class within {:?} are summed up in one line)",
                self.message,
                super::dlq_log::INTERVAL
            );
        }
        counter!("udo_dlq_records_total", "pipeline" => self.pipeline, "topic" => self.topic.to_string(),
            "class" => self.class.to_string())
        .increment(1);
        // A bad record is an error of its producer: counted with the others.
        counter!("udo_errors_total", "pipeline" => self.pipeline, "step" => "reject", "class" => self.class.to_string())
            .increment(1);
    }
}

/// A pipeline step failed (consume, decode, write, dlq, commit, tick,
/// checkpoint, produce, assign). Every error path emits one; the runner's
/// retry policy decides what follows.
pub struct ErrorCounted<'a> {
    pub pipeline: &'static str,
    pub step: &'static str,
    pub error: &'a crate::error::Error,
}

impl ErrorCounted<'_> {
    pub fn emit(&self) {
        let class = self.error.class();
        // librdkafka reconnects and refetches by itself: a transient consume
        // error is counted, and logged only at DEBUG (a partition that stays
        // stuck is reported by the stall detector, with the last error).
        if self.step == "consume" && self.error.retry() == crate::error::Retry::Backoff {
            tracing::debug!(pipeline = self.pipeline, step = self.step, class, "consume failed: {}", self.error);
        } else {
            tracing::warn!(pipeline = self.pipeline, step = self.step, class, "{} failed: {}", self.step, self.error);
        }
        counter!("udo_errors_total", "pipeline" => self.pipeline, "step" => self.step, "class" => class).increment(1);
    }
}

/// A step failed; it is retried after `delay` with the partitions paused
/// (the error itself is logged by `ErrorCounted`).
pub struct SinkRetry<'a> {
    pub pipeline: &'static str,
    pub sink: &'static str,
    pub attempt: u32,
    pub delay: Duration,
    pub error: &'a str,
}

impl SinkRetry<'_> {
    pub fn emit(&self) {
        tracing::info!(
            pipeline = self.pipeline,
            sink = self.sink,
            attempt = self.attempt,
            "partitions paused, retrying in {:?} ({})",
            self.delay,
            self.error
        );
        counter!("udo_sink_retries_total", "pipeline" => self.pipeline, "sink" => self.sink).increment(1);
        gauge!("udo_sink_paused", "pipeline" => self.pipeline).set(1.0);
    }
}

/// The sink answered again after retries.
pub struct SinkRecovered {
    pub pipeline: &'static str,
    pub sink: &'static str,
    pub attempts: u32,
    pub outage: Duration,
}

impl SinkRecovered {
    pub fn emit(&self) {
        tracing::info!(
            pipeline = self.pipeline,
            sink = self.sink,
            attempts = self.attempts,
            "write succeeded after {:.1?}; partitions resumed",
            self.outage
        );
        gauge!("udo_sink_paused", "pipeline" => self.pipeline).set(0.0);
    }
}

/// One durable batch write to a store.
pub struct SinkWrite {
    pub pipeline: &'static str,
    pub sink: &'static str,
    pub records: u64,
    pub elapsed: Duration,
}

impl SinkWrite {
    pub fn emit(&self) {
        counter!("udo_sink_records_total", "pipeline" => self.pipeline, "sink" => self.sink).increment(self.records);
        counter!("udo_sink_batches_total", "pipeline" => self.pipeline, "sink" => self.sink).increment(1);
        histogram!("udo_sink_write_seconds", "pipeline" => self.pipeline, "sink" => self.sink)
            .record(self.elapsed.as_secs_f64());
    }
}

/// A partition batch met event ids already stored in Postgres (a replay, a
/// producer retry, a reused id) and took the checked path, slower than the
/// bulk COPY. Steadily rising outside a replay means duplicates upstream.
pub struct PostgresCheckedWrite<'a> {
    pub pipeline: &'static str,
    pub topic: &'a str,
    pub partition: i32,
}

impl PostgresCheckedWrite<'_> {
    pub fn emit(&self) {
        tracing::debug!(
            pipeline = self.pipeline,
            topic = self.topic,
            partition = self.partition,
            "batch met stored event ids; checked insert"
        );
        counter!("udo_postgres_checked_writes_total", "pipeline" => self.pipeline).increment(1);
    }
}

/// Records between the newest offset and the durably processed position.
pub struct ConsumerLag<'a> {
    pub pipeline: &'static str,
    pub topic: &'a str,
    pub partition: i32,
    pub lag: i64,
}

impl ConsumerLag<'_> {
    pub fn emit(&self) {
        gauge!("udo_consumer_lag_records", "pipeline" => self.pipeline, "topic" => self.topic.to_string(),
            "partition" => self.partition.to_string())
        .set(self.lag as f64);
    }
}

pub struct PartitionsChanged<'a> {
    pub pipeline: &'static str,
    pub assigned: bool,
    pub partitions: &'a str,
    pub total: usize,
}

impl PartitionsChanged<'_> {
    pub fn emit(&self) {
        let what = if self.assigned { "assigned" } else { "revoked" };
        tracing::info!(pipeline = self.pipeline, total = self.total, "{what}: {}", self.partitions);
        gauge!("udo_assigned_partitions", "pipeline" => self.pipeline).set(self.total as f64);
        counter!("udo_rebalances_total", "pipeline" => self.pipeline, "change" => what).increment(1);
    }
}

/// Windows closed by the analyzer (`kind`: latency, component, uncertainty).
pub struct WindowsClosed {
    pub kind: &'static str,
    pub count: u64,
}

impl WindowsClosed {
    pub fn emit(&self) {
        counter!("udo_windows_closed_total", "kind" => self.kind).increment(self.count);
    }
}

/// A pipeline starts: its counters of rare events exist from the start at
/// 0, so a dashboard's rate or an alert's expression sees a series (0/s)
/// rather than none before the first retry or late event.
pub struct PipelineStarted<'a> {
    pub pipeline: &'static str,
    pub sinks: &'static [&'static str],
    pub late_topics: &'a [String],
    /// Its input topics (dead letters are counted by source topic).
    pub inputs: &'a [String],
    /// The analyzer: alerts, degradations and windows are counted too.
    pub analyzer: bool,
}

/// Every class a dead letter can have (decode, then stage rejects).
const DLQ_CLASSES: &[&str] = &[
    "oversized",
    "empty",
    "unknown_framing",
    "unknown_schema",
    "wrong_schema",
    "malformed",
    "invalid_utf8",
    "unknown_enum",
    "invalid",
    "registry_unavailable",
    "late",
    "future",
    "cardinality",
    "reused_id",
    "reused_event_id",
];

impl PipelineStarted<'_> {
    pub fn emit(&self) {
        tracing::debug!(pipeline = self.pipeline, "starting");
        for sink in self.sinks {
            counter!("udo_sink_retries_total", "pipeline" => self.pipeline, "sink" => *sink).increment(0);
        }
        gauge!("udo_sink_paused", "pipeline" => self.pipeline).set(0.0);
        for topic in self.late_topics {
            counter!("udo_late_events_total", "topic" => topic.clone()).increment(0);
        }
        // A series that appears at 1 hides its first event from increase()
        // and rate(): an alert on the first dead letter would never fire.
        for topic in self.inputs {
            for class in DLQ_CLASSES {
                counter!("udo_dlq_records_total", "pipeline" => self.pipeline, "topic" => topic.clone(),
                    "class" => *class)
                .increment(0);
            }
        }
        if self.analyzer {
            use crate::domain::{AlertStatus, DegradationKind};
            for (rule, severities) in crate::domain::rules::ALERT_RULES {
                for severity in *severities {
                    for status in AlertStatus::ALL {
                        counter!("udo_alerts_total", "rule" => rule.to_string(), "severity" => severity.label(),
                            "status" => status.label())
                        .increment(0);
                    }
                }
            }
            for kind in DegradationKind::ALL {
                counter!("udo_degradations_total", "kind" => kind.label()).increment(0);
            }
            for kind in ["component", "endpoint", "uncertainty"] {
                counter!("udo_windows_closed_total", "kind" => kind).increment(0);
            }
        }
    }
}

/// Alerts posted to Alertmanager (a batch's, or the firing ones sent again).
pub struct AlertsPosted {
    pub firing: usize,
    pub resolved: usize,
    pub resend: bool,
}

impl AlertsPosted {
    pub fn emit(&self) {
        tracing::debug!(
            firing = self.firing,
            resolved = self.resolved,
            resend = self.resend,
            "alerts posted to Alertmanager"
        );
        let kind = if self.resend { "resend" } else { "new" };
        counter!("udo_alertmanager_alerts_posted_total", "status" => "firing", "kind" => kind)
            .increment(self.firing as u64);
        counter!("udo_alertmanager_alerts_posted_total", "status" => "resolved", "kind" => kind)
            .increment(self.resolved as u64);
    }
}

/// An alert accepted by Alertmanager, this long after the analyzer emitted
/// it (the alert record's Kafka timestamp: its window's close); a replay's
/// old records count too.
pub struct AlertDelivered {
    pub lag_ms: i64,
}

impl AlertDelivered {
    pub fn emit(&self) {
        histogram!("udo_alertmanager_delivery_seconds").record(self.lag_ms.max(0) as f64 / 1000.0);
    }
}

/// Latency samples or ratings a producer put on a partition whose task does
/// not own their component (another partitioner, a null key), sent on to
/// the owner through `udo.analyze.routed.v1`.
pub struct RecordsRouted<'a> {
    pub topic: &'a str,
    pub count: u64,
}

impl RecordsRouted<'_> {
    pub fn emit(&self) {
        counter!("udo_analyze_routed_records_total", "topic" => self.topic.to_string()).increment(self.count);
    }
}

/// An event behind the watermark: counted here, reported on the DLQ.
pub struct LateEvent<'a> {
    pub topic: &'a str,
}

impl LateEvent<'_> {
    pub fn emit(&self) {
        counter!("udo_late_events_total", "topic" => self.topic.to_string()).increment(1);
    }
}

pub struct AlertEmitted<'a> {
    pub rule: &'a str,
    pub severity: &'static str,
    pub status: &'static str,
    pub subject: &'a str,
}

impl AlertEmitted<'_> {
    pub fn emit(&self) {
        tracing::info!(rule = self.rule, severity = self.severity, subject = self.subject, "alert {}", self.status);
        counter!("udo_alerts_total", "rule" => self.rule.to_string(), "severity" => self.severity,
            "status" => self.status)
        .increment(1);
    }
}

pub struct DegradationEmitted<'a> {
    pub kind: &'static str,
    pub component: &'a str,
}

impl DegradationEmitted<'_> {
    pub fn emit(&self) {
        tracing::info!(component = self.component, "component {}", self.kind);
        counter!("udo_degradations_total", "kind" => self.kind).increment(1);
    }
}

/// Engine state of the analyzer's assigned tasks: subjects per state.
pub struct StateMachines {
    pub degraded_components: usize,
    pub firing_alerts: usize,
    pub active_keys: usize,
}

impl StateMachines {
    pub fn emit(&self) {
        gauge!("udo_components_degraded").set(self.degraded_components as f64);
        gauge!("udo_alerts_firing").set(self.firing_alerts as f64);
        gauge!("udo_window_keys_active").set(self.active_keys as f64);
    }
}

pub struct CheckpointWritten {
    pub tasks: usize,
    /// Subjects written or deleted.
    pub subjects: usize,
    pub bytes: usize,
    pub elapsed: Duration,
}

impl CheckpointWritten {
    pub fn emit(&self) {
        tracing::debug!(
            tasks = self.tasks,
            subjects = self.subjects,
            bytes = self.bytes,
            "checkpoint written in {:?}",
            self.elapsed
        );
        counter!("udo_checkpoint_subjects_total").increment(self.subjects as u64);
        histogram!("udo_checkpoint_write_seconds").record(self.elapsed.as_secs_f64());
        counter!("udo_checkpoint_bytes_total").increment(self.bytes as u64);
        gauge!("udo_checkpoint_age_seconds").set(0.0);
    }
}

/// Seconds since the last checkpoint, and event-time lag of the watermark
/// behind the wall clock.
pub struct AnalyzeProgress {
    pub checkpoint_age: Duration,
    pub processing_lag: Option<Duration>,
}

impl AnalyzeProgress {
    pub fn emit(&self) {
        gauge!("udo_checkpoint_age_seconds").set(self.checkpoint_age.as_secs_f64());
        if let Some(lag) = self.processing_lag {
            gauge!("udo_processing_lag_seconds").set(lag.as_secs_f64());
        }
    }
}

/// A materializer's first-attempt write success over its promotion window,
/// and its role (1 = PRIMARY, 0 = SHADOW).
pub struct SinkSuccessRatio {
    pub pipeline: &'static str,
    pub sink: &'static str,
    pub ratio: f64,
    pub primary: bool,
}

impl SinkSuccessRatio {
    pub fn emit(&self) {
        gauge!("udo_sink_success_ratio", "pipeline" => self.pipeline, "sink" => self.sink).set(self.ratio);
        let primary = if self.primary { 1.0 } else { 0.0 };
        gauge!("udo_store_primary", "pipeline" => self.pipeline, "sink" => self.sink).set(primary);
    }
}

/// A store changed role (SHADOW ↔ PRIMARY).
pub struct PromotionEmitted<'a> {
    pub pipeline: &'static str,
    pub store: &'a str,
    pub to_role: &'static str,
    pub reason: &'a str,
}

impl PromotionEmitted<'_> {
    pub fn emit(&self) {
        tracing::info!(pipeline = self.pipeline, store = self.store, "store is now {}: {}", self.to_role, self.reason);
        counter!("udo_promotions_total", "pipeline" => self.pipeline, "store" => self.store.to_string(),
            "to_role" => self.to_role)
        .increment(1);
    }
}

/// Exactly-once: a transaction (outputs, state, input offsets) committed.
pub struct TransactionCommitted {
    pub pipeline: &'static str,
    pub elapsed: Duration,
}

impl TransactionCommitted {
    pub fn emit(&self) {
        counter!("udo_transactions_committed_total", "pipeline" => self.pipeline).increment(1);
        histogram!("udo_transaction_commit_seconds", "pipeline" => self.pipeline).record(self.elapsed.as_secs_f64());
    }
}

/// The analyzer's state per task: subjects held and their estimated bytes.
pub struct StateSize {
    pub task: i32,
    pub subjects: usize,
    pub bytes: usize,
}

impl StateSize {
    pub fn emit(&self) {
        // Tasks are partitions of the input topics: a bounded label.
        let task = self.task.to_string();
        gauge!("udo_analyze_subjects", "task" => task.clone()).set(self.subjects as f64);
        gauge!("udo_analyze_state_bytes", "task" => task).set(self.bytes as f64);
    }

    /// A task no longer held here.
    pub fn forget(task: i32) {
        let task = task.to_string();
        gauge!("udo_analyze_subjects", "task" => task.clone()).set(0.0);
        gauge!("udo_analyze_state_bytes", "task" => task).set(0.0);
    }
}

/// A record refused because it would add a subject past analyze.max_subjects.
pub struct SubjectRejected<'a> {
    pub topic: &'a str,
}

impl SubjectRejected<'_> {
    pub fn emit(&self) {
        counter!("udo_analyze_subjects_rejected_total", "topic" => self.topic.to_string()).increment(1);
    }
}

/// Subjects dropped for having had no data for analyze.state_ttl.
pub struct SubjectsExpired {
    pub count: u64,
}

impl SubjectsExpired {
    pub fn emit(&self) {
        tracing::debug!(subjects = self.count, "subjects expired (no data for analyze.state_ttl)");
        counter!("udo_analyze_subjects_expired_total").increment(self.count);
    }
}

/// Task state restored on assignment.
pub struct StateRestored {
    pub tasks: usize,
    pub subjects: usize,
    pub bytes: usize,
    pub elapsed: Duration,
}

impl StateRestored {
    pub fn emit(&self) {
        tracing::info!(
            pipeline = "analyze",
            tasks = self.tasks,
            subjects = self.subjects,
            bytes = self.bytes,
            "state restored in {:.2?}",
            self.elapsed
        );
        gauge!("udo_state_restore_seconds", "pipeline" => "analyze").set(self.elapsed.as_secs_f64());
        counter!("udo_state_restored_subjects_total", "pipeline" => "analyze").increment(self.subjects as u64);
    }
}
