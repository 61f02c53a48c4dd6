//! `udo-stream status`: what an on-call engineer asks first, from Kafka
//! alone (no PostgreSQL needed): each component's health and last window,
//! uncertainty per project, open alerts with since-when, store roles, and
//! per pipeline the consumer lag and dead letters by class. The topics are
//! read from the beginning to their current end (the windows topic is
//! compacted, so it holds about one record per subject and window).

use crate::codec::OutputFormat;
use crate::config::CommonArgs;
use crate::domain::{AlertStatus, DegradationKind, Event, StoreRole};
use crate::error::{Error, Result};
use crate::pipeline::Pipeline;
use crate::sinks::dlq::headers;
use crate::sources::kafka::{partition_ends, read_topic};
use crate::topics::names;
use clap::Args;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print one JSON object instead of the screen.
    #[arg(long)]
    pub json: bool,
    /// Give up reading a topic to its end after this long.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// One component: its health and its last closed window.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ComponentStatus {
    pub component: String,
    /// HEALTHY until a degradation says otherwise.
    pub health: String,
    /// When the health last changed (end of the window that changed it).
    pub since: Option<i64>,
    pub reason: Option<String>,
    pub p95_ms: Option<f64>,
    pub error_rate: Option<f64>,
    pub samples: Option<i64>,
    pub window_end: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UncertaintyStatus {
    pub project_id: String,
    pub component: String,
    pub uncertainty: f64,
    pub ratings: i64,
    pub window_end: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OpenAlert {
    pub subject: String,
    pub rule: String,
    pub severity: String,
    pub value: f64,
    pub threshold: f64,
    /// End of the window that fired it.
    pub since: i64,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoreStatus {
    pub store: String,
    pub role: String,
    pub since: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PipelineStatus {
    pub pipeline: String,
    pub group: String,
    /// Records between the group's committed offsets and the ends of its
    /// inputs (None: the group has committed nothing yet).
    pub lag: Option<i64>,
    pub dead_letters: BTreeMap<String, u64>,
}

/// The analyzer's outputs folded into current state (pure: tested below).
#[derive(Debug, Default, Serialize)]
pub struct Board {
    pub components: BTreeMap<String, ComponentStatus>,
    pub uncertainty: BTreeMap<(String, String), UncertaintyStatus>,
    /// Latest alert per (subject, rule, severity); open ones are FIRING.
    alerts: BTreeMap<(String, String, String), (AlertStatus, OpenAlert)>,
    pub stores: BTreeMap<String, StoreStatus>,
}

impl Board {
    /// Folds one output event; later windows and transitions win, so the
    /// order across partitions does not matter.
    pub fn add(&mut self, event: &Event) {
        match event {
            Event::WindowStats(w) => {
                if let (Some(l), None) = (&w.latency, &w.endpoint) {
                    let c = self.component(&w.component);
                    if c.window_end.is_none_or(|e| e <= w.window_end) {
                        c.p95_ms = Some(l.p95_ms);
                        c.error_rate = Some(l.error_rate);
                        c.samples = Some(l.count);
                        c.window_end = Some(w.window_end);
                    }
                }
                if let (Some(u), Some(project)) = (&w.uncertainty, &w.project_id) {
                    let key = (project.clone(), w.component.clone());
                    let newer = self.uncertainty.get(&key).is_none_or(|x| x.window_end <= w.window_end);
                    if newer {
                        let status = UncertaintyStatus {
                            project_id: project.clone(),
                            component: w.component.clone(),
                            uncertainty: u.uncertainty,
                            ratings: u.ratings,
                            window_end: w.window_end,
                        };
                        self.uncertainty.insert(key, status);
                    }
                }
            }
            Event::Degradation(d) => {
                let c = self.component(&d.component);
                if c.since.is_none_or(|s| s <= d.window_end) {
                    c.health = match d.kind {
                        DegradationKind::Degraded => "DEGRADED",
                        DegradationKind::Recovered => "HEALTHY",
                    }
                    .into();
                    c.since = Some(d.window_end);
                    c.reason = Some(d.reason.clone());
                }
            }
            Event::Alert(a) => {
                let key = (a.subject.clone(), a.rule.clone(), a.severity.as_str().to_string());
                if self.alerts.get(&key).is_none_or(|(_, x)| x.since <= a.window_end) {
                    let open = OpenAlert {
                        subject: a.subject.clone(),
                        rule: a.rule.clone(),
                        severity: a.severity.as_str().to_string(),
                        value: a.value,
                        threshold: a.threshold,
                        since: a.window_end,
                        message: a.message.clone(),
                    };
                    self.alerts.insert(key, (a.status, open));
                }
            }
            Event::Promotion(p) => {
                let newer = self.stores.get(&p.store).is_none_or(|s| s.since <= p.occurred_at);
                if newer {
                    let role = match p.to_role {
                        StoreRole::Primary => "PRIMARY",
                        StoreRole::Shadow => "SHADOW",
                    };
                    let s = StoreStatus { store: p.store.clone(), role: role.into(), since: p.occurred_at };
                    self.stores.insert(p.store.clone(), s);
                }
            }
            _ => {}
        }
    }

    fn component(&mut self, name: &str) -> &mut ComponentStatus {
        self.components.entry(name.to_string()).or_insert_with(|| ComponentStatus {
            component: name.to_string(),
            health: "HEALTHY".into(),
            ..Default::default()
        })
    }

    /// Alerts whose latest transition is FIRING, oldest first.
    pub fn open_alerts(&self) -> Vec<OpenAlert> {
        let mut v: Vec<OpenAlert> =
            self.alerts.values().filter(|(s, _)| *s == AlertStatus::Firing).map(|(_, a)| a.clone()).collect();
        v.sort_by(|a, b| (a.since, &a.subject, &a.rule).cmp(&(b.since, &b.subject, &b.rule)));
        v
    }
}

#[derive(Debug, Serialize)]
struct Report {
    /// When the report was read (epoch ms).
    at: i64,
    topic_prefix: String,
    namespace: String,
    components: Vec<ComponentStatus>,
    uncertainty: Vec<UncertaintyStatus>,
    open_alerts: Vec<OpenAlert>,
    stores: Vec<StoreStatus>,
    pipelines: Vec<PipelineStatus>,
}

pub async fn run(common: CommonArgs, args: StatusArgs) -> Result<()> {
    let report = tokio::task::spawn_blocking(move || read(&common, args.timeout))
        .await
        .map_err(|e| Error::Internal(format!("status: {e}")))??;
    if args.json {
        println!("{}", serde_json::to_string(&report).map_err(|e| Error::Internal(format!("status json: {e}")))?);
    } else {
        print!("{}", screen(&report));
    }
    Ok(())
}

fn read(common: &CommonArgs, timeout: Duration) -> Result<Report> {
    let codec = crate::wiring::codec(common, OutputFormat::Avro);
    let catalog = crate::topics::TopicCatalog::builtin();
    let mut board = Board::default();
    for name in [names::WINDOWS, names::DEGRADATIONS, names::ALERTS, names::PROMOTIONS] {
        let allowed: Vec<String> = catalog.get(name).map(|t| t.records().to_vec()).unwrap_or_default();
        read_topic(&common.kafka, "udo-status", &common.topic(name), None, None, timeout, |msg| {
            // A record the analyzer did not write (or a tombstone) is not state.
            if let Ok(event) = codec.decode(&allowed, msg.payload().unwrap_or_default()) {
                board.add(&event);
            }
        })?;
    }
    let mut pipelines: Vec<PipelineStatus> = Pipeline::ALL
        .iter()
        .map(|p| -> Result<PipelineStatus> {
            let group = p.group(common);
            Ok(PipelineStatus {
                pipeline: p.name().into(),
                lag: group_lag(common, &group, &p.inputs(common))?,
                group,
                dead_letters: BTreeMap::new(),
            })
        })
        .collect::<Result<_>>()?;
    read_topic(&common.kafka, "udo-status", &common.topic(names::DLQ), None, None, timeout, |msg| {
        let header = |name: &str| -> Option<String> {
            msg.headers()?.iter().find(|h| h.key == name).and_then(|h| Some(String::from_utf8_lossy(h.value?).into()))
        };
        let pipeline = header(headers::PIPELINE).unwrap_or_default();
        let class = header(headers::ERROR_CLASS).unwrap_or_else(|| "unknown".into());
        if let Some(p) = pipelines.iter_mut().find(|p| p.pipeline == pipeline) {
            *p.dead_letters.entry(class).or_default() += 1;
        }
    })?;
    Ok(Report {
        at: crate::now_ms(),
        topic_prefix: common.topic_prefix.clone(),
        namespace: common.namespace(),
        open_alerts: board.open_alerts(),
        components: board.components.into_values().collect(),
        uncertainty: board.uncertainty.into_values().collect(),
        stores: board.stores.into_values().collect(),
        pipelines,
    })
}

/// Records between the group's committed offsets and the ends of `topics`.
fn group_lag(common: &CommonArgs, group: &str, topics: &[String]) -> Result<Option<i64>> {
    let consumer: BaseConsumer = common
        .kafka
        .client(|c| {
            c.set("group.id", group).set("enable.auto.commit", "false");
        })
        .create()
        .map_err(Error::kafka("create consumer"))?;
    let mut tpl = TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    for topic in topics {
        for (p, _, high) in partition_ends(&consumer, topic)? {
            tpl.add_partition(topic, p);
            ends.insert((topic.clone(), p), high);
        }
    }
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(30))
        .map_err(Error::kafka(format!("committed offsets of group {group}")))?;
    let mut lag = 0;
    let mut any = false;
    for e in committed.elements() {
        let high = ends.get(&(e.topic().to_string(), e.partition())).copied().unwrap_or(0);
        match e.offset() {
            Offset::Offset(o) => {
                any = true;
                lag += (high - o).max(0);
            }
            _ => lag += high,
        }
    }
    Ok(any.then_some(lag))
}

/// RFC 3339, seconds.
fn time(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

fn opt<T>(v: Option<T>, f: impl FnOnce(T) -> String) -> String {
    v.map_or_else(|| "-".into(), f)
}

fn screen(r: &Report) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let ns = if r.namespace.is_empty() { "(none)".to_string() } else { r.namespace.clone() };
    let _ = writeln!(s, "udo-stream status at {} (topic prefix {:?}, namespace {ns})", time(r.at), r.topic_prefix);
    let _ = writeln!(s, "\nCOMPONENTS");
    if r.components.is_empty() {
        let _ = writeln!(s, "  no window closed yet (is `udo-stream run --pipelines analyze` running?)");
    } else {
        let _ = writeln!(
            s,
            "  {:<14} {:<9} {:<21} {:>10} {:>7} {:>8}  last window end",
            "component", "health", "since", "P95 ms", "errors", "samples"
        );
    }
    for c in &r.components {
        let _ = writeln!(
            s,
            "  {:<14} {:<9} {:<21} {:>10} {:>7} {:>8}  {}",
            c.component,
            c.health,
            opt(c.since, time),
            opt(c.p95_ms, |v| format!("{v:.1}")),
            opt(c.error_rate, |v| format!("{:.1}%", v * 100.0)),
            opt(c.samples, |v| v.to_string()),
            opt(c.window_end, time)
        );
    }
    if !r.uncertainty.is_empty() {
        let _ = writeln!(s, "\nUNCERTAINTY (1 - Wilson lower bound of approval)");
        let _ =
            writeln!(s, "  {:<14} {:<14} {:>11} {:>8}  window end", "project", "component", "uncertainty", "ratings");
        for u in &r.uncertainty {
            let _ = writeln!(
                s,
                "  {:<14} {:<14} {:>11.3} {:>8}  {}",
                u.project_id,
                u.component,
                u.uncertainty,
                u.ratings,
                time(u.window_end)
            );
        }
    }
    let _ = writeln!(s, "\nOPEN ALERTS ({})", r.open_alerts.len());
    for a in &r.open_alerts {
        let _ = writeln!(
            s,
            "  {:<9} {:<22} {:<18} {:.3} > {} since {}",
            a.severity,
            a.subject,
            a.rule,
            a.value,
            a.threshold,
            time(a.since)
        );
    }
    if !r.stores.is_empty() {
        let _ = writeln!(s, "\nSTORES");
        for st in &r.stores {
            let _ = writeln!(s, "  {:<10} {:<8} since {}", st.store, st.role, time(st.since));
        }
    }
    let _ = writeln!(s, "\nPIPELINES");
    let _ = writeln!(s, "  {:<21} {:>9}  dead letters by class", "pipeline", "lag");
    for p in &r.pipelines {
        let dlq = if p.dead_letters.is_empty() {
            "none".to_string()
        } else {
            p.dead_letters.iter().map(|(c, n)| format!("{c} {n}")).collect::<Vec<_>>().join(", ")
        };
        let lag = opt(p.lag, |l| l.to_string());
        let lag = if p.lag.is_none() { "not run".to_string() } else { lag };
        let _ = writeln!(s, "  {:<21} {:>9}  {dlq}", p.pipeline, lag);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::*;
    use uuid::Uuid;

    fn window(component: &str, end: i64, p95: f64) -> Event {
        Event::WindowStats(WindowStats {
            event_id: Uuid::nil(),
            occurred_at: end,
            source: "t".into(),
            subject: component.into(),
            component: component.into(),
            endpoint: None,
            project_id: None,
            window_start: end - 300_000,
            window_end: end,
            latency: Some(LatencyStats {
                count: 100,
                error_count: 1,
                error_rate: 0.01,
                p50_ms: 1.0,
                p95_ms: p95,
                p99_ms: p95,
            }),
            uncertainty: None,
        })
    }

    fn alert(status: AlertStatus, end: i64) -> Event {
        Event::Alert(Alert {
            event_id: Uuid::nil(),
            occurred_at: end,
            source: "t".into(),
            rule: "latency_p95".into(),
            subject: "checkout".into(),
            component: "checkout".into(),
            project_id: None,
            severity: Severity::Warning,
            status,
            value: 900.0,
            threshold: 500.0,
            window_start: end - 300_000,
            window_end: end,
            message: String::new(),
        })
    }

    fn degradation(kind: DegradationKind, end: i64) -> Event {
        Event::Degradation(Degradation {
            event_id: Uuid::nil(),
            occurred_at: end,
            source: "t".into(),
            component: "checkout".into(),
            kind,
            reason: format!("{kind:?}"),
            p95_ms: 900.0,
            error_rate: 0.0,
            consecutive_windows: 3,
            window_start: end - 300_000,
            window_end: end,
        })
    }

    #[test]
    fn the_latest_window_and_transition_win_in_any_order() {
        let events = [
            window("checkout", 60_000, 100.0),
            window("checkout", 180_000, 900.0),
            window("checkout", 120_000, 500.0),
            degradation(DegradationKind::Degraded, 120_000),
            alert(AlertStatus::Firing, 120_000),
        ];
        let mut a = Board::default();
        events.iter().for_each(|e| a.add(e));
        let mut b = Board::default();
        events.iter().rev().for_each(|e| b.add(e));
        for board in [&a, &b] {
            let c = &board.components["checkout"];
            assert_eq!((c.p95_ms, c.window_end), (Some(900.0), Some(180_000)));
            assert_eq!((c.health.as_str(), c.since), ("DEGRADED", Some(120_000)));
            let open = board.open_alerts();
            assert_eq!(open.len(), 1);
            assert_eq!(open[0].since, 120_000);
        }
    }

    #[test]
    fn a_resolve_closes_the_alert_and_a_recovery_heals() {
        let mut b = Board::default();
        for e in [
            alert(AlertStatus::Firing, 120_000),
            degradation(DegradationKind::Degraded, 120_000),
            alert(AlertStatus::Resolved, 300_000),
            degradation(DegradationKind::Recovered, 360_000),
        ] {
            b.add(&e);
        }
        assert!(b.open_alerts().is_empty());
        assert_eq!(b.components["checkout"].health, "HEALTHY");
        assert_eq!(b.components["checkout"].since, Some(360_000));
    }
}
