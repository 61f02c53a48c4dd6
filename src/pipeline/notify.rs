//! `notify-alertmanager`: the alerts of `udo.alerts.v1` into Alertmanager
//! (its v2 API), in a consumer group of its own.
//!
//! - A FIRING alert becomes an active Alertmanager alert (labels
//!   `alertname` = the rule, `component`, `subject`, `severity`, and
//!   `project_id` when there is one; annotations `message`, `value`,
//!   `threshold`; `startsAt` = the window's start); its RESOLVED event is
//!   the same label set with `endsAt` = the resolving window's end.
//! - The runner owns delivery: a batch's alerts are posted in `commit`, so
//!   an Alertmanager outage pauses the partitions and retries (nothing
//!   skipped, offsets stored only after Alertmanager took the alerts).
//!   Posting an alert again is idempotent (Alertmanager keys by labels).
//! - Still-firing alerts are posted again every `notify.resend_interval`,
//!   inside Alertmanager's `resolve_timeout`.
//! - On assignment the partitions are read to their end first: which
//!   alerts are firing (re-sent at once, after a restart) and each alert's
//!   latest record. A replay or a restart that reads an alert's FIRING
//!   record behind its RESOLVED one skips it: a resolved alert never fires
//!   again.

use super::batch::{Batch, Offsets, Reject, Tp};
use super::commit::GroupCommit;
use super::retry::RetryPolicy;
use super::runner::Stage;
use super::{Pipeline, RunOptions, launch, need, once, runner_config};
use crate::codec::Codec;
use crate::config::CommonArgs;
use crate::config::KafkaConfig;
use crate::domain::{Alert, AlertStatus, Event};
use crate::error::Result;
use crate::shutdown::Shutdown;
use crate::sinks::alertmanager::{Alertmanager, AmAlert};
use crate::sources::kafka::Assignor;
use crate::telemetry::Readiness;
use crate::telemetry::events::{AlertDelivered, AlertsPosted};
use crate::topics::names;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant, UNIX_EPOCH};

/// An alert's identity: one hysteresis per rule, subject and severity.
type Key = (String, String, String);

fn key(a: &Alert) -> Key {
    (a.rule.clone(), a.subject.clone(), a.severity.as_str().to_string())
}

fn rfc3339(ms: i64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)).to_string()
}

/// The Alertmanager alert for `a`; `starts_at` is the firing's start when
/// known (a RESOLVED event keeps it).
pub fn am_alert(a: &Alert, starts_at: Option<&str>) -> AmAlert {
    let mut labels = BTreeMap::from([
        ("alertname".to_string(), a.rule.clone()),
        ("component".to_string(), a.component.clone()),
        ("subject".to_string(), a.subject.clone()),
        ("severity".to_string(), a.severity.as_str().to_string()),
    ]);
    if let Some(p) = &a.project_id {
        labels.insert("project_id".into(), p.clone());
    }
    let annotations = BTreeMap::from([
        ("message".to_string(), a.message.clone()),
        ("value".to_string(), format!("{}", a.value)),
        ("threshold".to_string(), format!("{}", a.threshold)),
    ]);
    AmAlert {
        labels,
        annotations,
        starts_at: starts_at.map_or_else(|| rfc3339(a.window_start), str::to_string),
        ends_at: (a.status == AlertStatus::Resolved).then(|| rfc3339(a.window_end)),
    }
}

/// Connects Alertmanager and starts the pipeline (at-least-once: a
/// repeated post is harmless, Alertmanager keys alerts by their labels).
pub(crate) fn assemble(
    common: &CommonArgs,
    opts: &RunOptions,
    group: String,
    shutdown: Shutdown,
    readiness: Readiness,
) -> crate::error::Result<tokio::task::JoinHandle<crate::error::Result<()>>> {
    let p = Pipeline::NotifyAlertmanager;
    let url = need(&opts.alertmanager_url, "--alertmanager-url / ALERTMANAGER_URL", p)?;
    let n = &opts.settings.notify;
    let am = Alertmanager::new(&crate::config::SecretUrl::from(url), n.request_timeout);
    let topic = common.topic(names::ALERTS);
    let decoder = crate::wiring::decoder(common, opts.output_format);
    let stage = NotifyStage::new(
        am,
        common.kafka.clone(),
        crate::wiring::codec(common, opts.output_format),
        topic.clone(),
        n.resend_interval,
    );
    let cfg =
        runner_config(p.name(), common, &opts.settings, &decoder, group, vec![topic], Assignor::CooperativeSticky);
    let parts = (cfg, stage, GroupCommit::new(p.name()));
    Ok(launch(RetryPolicy::of(&opts.settings), shutdown, readiness, once(parts)))
}

pub struct NotifyStage {
    am: Alertmanager,
    kafka: KafkaConfig,
    codec: Codec,
    topic: String,
    resend_every: Duration,
    last_resend: Option<Instant>,
    /// Firing alerts as last posted, with their partition.
    firing: BTreeMap<Key, (Tp, AmAlert)>,
    /// What the partitions held at assignment: each alert's latest record.
    latest: HashMap<Key, (Tp, i64)>,
    /// Prepared by `write`, posted by `commit`: (key, partition, alert, firing).
    /// (alert, partition, what to post, firing, the record's Kafka timestamp).
    pending: Vec<(Key, Tp, AmAlert, bool, Option<i64>)>,
}

impl NotifyStage {
    pub fn new(am: Alertmanager, kafka: KafkaConfig, codec: Codec, topic: String, resend_every: Duration) -> Self {
        NotifyStage {
            am,
            kafka,
            codec,
            topic,
            resend_every,
            last_resend: None,
            firing: BTreeMap::new(),
            latest: HashMap::new(),
            pending: Vec::new(),
        }
    }

    /// Folds `alerts` (partition, offset, alert; in offset order per
    /// partition) into the latest record per alert and the firing set.
    fn settle(&mut self, alerts: Vec<(Tp, i64, Alert)>) {
        for (tp, offset, a) in alerts {
            let k = key(&a);
            self.latest.insert(k.clone(), (tp.clone(), offset));
            match a.status {
                AlertStatus::Firing => {
                    let am = am_alert(&a, None);
                    self.firing.insert(k, (tp, am));
                }
                AlertStatus::Resolved => {
                    self.firing.remove(&k);
                }
            }
        }
    }

    /// Reads the assigned partitions to their end (see the module doc).
    fn restore(&mut self, parts: &[Tp]) -> Result<()> {
        let partitions: Vec<i32> = parts.iter().filter(|tp| tp.topic == self.topic).map(|tp| tp.partition).collect();
        let allowed = vec!["Alert".to_string()];
        let mut alerts = Vec::new();
        let codec = &self.codec;
        crate::sources::kafka::read_to_end(
            &self.kafka,
            "udo-notify-restore",
            &self.topic,
            &partitions,
            Duration::from_secs(60),
            |p, offset, payload| {
                // A record that does not decode went to the DLQ when it was
                // first consumed; here it only does not count.
                if let Ok(Event::Alert(a)) = codec.decode(&allowed, payload) {
                    alerts.push((Tp::new(&self.topic, p), offset, a));
                }
            },
        )?;
        let restored = alerts.len();
        self.settle(alerts);
        tracing::info!(
            pipeline = "notify-alertmanager",
            records = restored,
            firing = self.firing.len(),
            "read the alerts to their end: firing ones are sent again"
        );
        self.last_resend = None;
        Ok(())
    }
}

impl Stage for NotifyStage {
    fn assigned(&mut self, parts: &[Tp]) -> Result<Offsets> {
        self.restore(parts)?;
        Ok(Vec::new())
    }

    fn revoked(&mut self, parts: &[Tp]) -> Offsets {
        self.firing.retain(|_, (tp, _)| !parts.contains(tp));
        self.latest.retain(|_, (tp, _)| !parts.contains(tp));
        Vec::new()
    }

    fn write(&mut self, batch: &Batch<'_>) -> Result<Vec<Reject>> {
        self.pending.clear();
        // The last record per alert in this batch is what Alertmanager needs.
        let mut last: BTreeMap<Key, (Tp, &Alert, Option<i64>)> = BTreeMap::new();
        for part in &batch.parts {
            for rec in &part.records {
                let Event::Alert(a) = &rec.event else { continue };
                let k = key(a);
                // Behind the alert's latest record at assignment (a replay,
                // a restart): that newer record decides; a resolved alert
                // must not fire again.
                if let Some((tp, off)) = self.latest.get(&k) {
                    if *tp == part.tp && rec.offset < *off {
                        continue;
                    }
                }
                last.insert(k, (part.tp.clone(), a, rec.timestamp()));
            }
        }
        for (k, (tp, a, ts)) in last {
            let starts = self.firing.get(&k).map(|(_, am)| am.starts_at.clone());
            let am = am_alert(a, starts.as_deref());
            self.pending.push((k, tp, am, a.status == AlertStatus::Firing, ts));
        }
        Ok(Vec::new())
    }

    fn commit(&mut self, batch: &Batch<'_>) -> Result<Offsets> {
        let alerts: Vec<AmAlert> = self.pending.iter().map(|(_, _, am, _, _)| am.clone()).collect();
        self.am.post(&alerts)?;
        let firing = self.pending.iter().filter(|p| p.3).count();
        AlertsPosted { firing, resolved: alerts.len() - firing, resend: false }.emit();
        let now = crate::now_ms();
        for ts in self.pending.iter().filter_map(|p| p.4) {
            AlertDelivered { lag_ms: now - ts }.emit();
        }
        for (k, tp, am, firing, _) in self.pending.drain(..) {
            if firing {
                self.firing.insert(k, (tp, am));
            } else {
                self.firing.remove(&k);
            }
        }
        Ok(batch.next_offsets())
    }

    fn abort(&mut self) {
        self.pending.clear();
    }

    fn tick(&mut self) -> Result<Offsets> {
        let due = self.last_resend.is_none_or(|t| t.elapsed() >= self.resend_every);
        if due && !self.firing.is_empty() {
            let alerts: Vec<AmAlert> = self.firing.values().map(|(_, am)| am.clone()).collect();
            self.am.post(&alerts)?;
            AlertsPosted { firing: alerts.len(), resolved: 0, resend: true }.emit();
        }
        if due {
            self.last_resend = Some(Instant::now());
        }
        Ok(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Severity;

    fn alert(status: AlertStatus, start: i64, end: i64) -> Alert {
        Alert {
            event_id: uuid::Uuid::from_u128(1),
            occurred_at: end,
            source: "analyze".into(),
            rule: "latency_p95".into(),
            subject: "checkout".into(),
            component: "checkout".into(),
            project_id: None,
            severity: Severity::Critical,
            status,
            value: 612.5,
            threshold: 500.0,
            window_start: start,
            window_end: end,
            message: "latency_p95 612.500 > 500 (critical)".into(),
        }
    }

    #[test]
    fn a_firing_alert_has_the_rule_labels_and_no_end_and_its_resolve_keeps_the_start() {
        let t0 = 1_767_225_600_000;
        let firing = am_alert(&alert(AlertStatus::Firing, t0, t0 + 300_000), None);
        assert_eq!(firing.labels["alertname"], "latency_p95");
        assert_eq!(firing.labels["severity"], Severity::Critical.as_str());
        assert_eq!((firing.labels["component"].as_str(), firing.labels["subject"].as_str()), ("checkout", "checkout"));
        assert_eq!(firing.annotations["value"], "612.5");
        assert_eq!(firing.annotations["threshold"], "500");
        assert_eq!(firing.starts_at, "2026-01-01T00:00:00.000Z");
        assert_eq!(firing.ends_at, None);
        let resolved = am_alert(&alert(AlertStatus::Resolved, t0 + 600_000, t0 + 900_000), Some(&firing.starts_at));
        assert_eq!(resolved.labels, firing.labels, "the same alert for Alertmanager");
        assert_eq!(resolved.starts_at, firing.starts_at);
        assert_eq!(resolved.ends_at.as_deref(), Some("2026-01-01T00:15:00.000Z"));
        let json = serde_json::to_value(&resolved).unwrap();
        assert!(json.get("startsAt").is_some() && json.get("endsAt").is_some(), "{json}");
    }
}
