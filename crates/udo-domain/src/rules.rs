//! Degradation and alert rules over closed windows (design §4). Each rule is
//! a `Hysteresis` per subject; events are emitted only on transitions, with
//! ids derived from (rule, subject, window, transition) so a replay or a
//! restart re-emits identical ids.

use super::events::*;
use super::hysteresis::{Hysteresis, Transition};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Namespace of every id udo-stream derives (UUIDv5).
pub const ID_NAMESPACE: Uuid = Uuid::from_u128(0x6b1d_8f0e_2c4a_4e51_9a37_d0c5_11e8_f3a2);

/// Deterministic output id.
pub fn output_id(parts: &[&str]) -> Uuid {
    Uuid::new_v5(&ID_NAMESPACE, parts.join("\u{1f}").as_bytes())
}

/// A deployment's namespace for output ids. Ids are derived from rule,
/// subject and window, so two deployments sharing a store (staging and
/// production, two demo runs) would derive the same ids for different
/// payloads; each deployment's ids are its namespace's UUIDv5 of the base
/// id instead. A replay or restart within one deployment still derives the
/// same ids. The empty namespace keeps the base ids.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Deployment(Option<Uuid>);

impl Deployment {
    pub fn new(name: &str) -> Deployment {
        Deployment(
            (!name.is_empty()).then(|| Uuid::new_v5(&ID_NAMESPACE, format!("deployment\u{1f}{name}").as_bytes())),
        )
    }

    /// This deployment's id for a base id.
    pub fn id(&self, base: Uuid) -> Uuid {
        match &self.0 {
            Some(ns) => Uuid::new_v5(ns, base.as_bytes()),
            None => base,
        }
    }

    /// Re-ids the events in place.
    pub fn stamp(&self, events: &mut [Event]) {
        if self.0.is_some() {
            for e in events {
                e.set_event_id(self.id(e.event_id()));
            }
        }
    }
}

/// Every alert rule and the severities it fires at (metrics start each
/// series at 0 from this list).
pub const ALERT_RULES: &[(&str, &[Severity])] = &[
    ("latency_p95", &[Severity::Warning, Severity::Critical]),
    ("error_rate", &[Severity::Warning]),
    ("uncertainty", &[Severity::Warning, Severity::Critical]),
];

/// Thresholds of design §4; every one is configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Thresholds {
    /// P95 above this (ms) fires a latency warning.
    pub p95_warning_ms: f64,
    /// P95 above this (ms) fires a latency critical alert.
    pub p95_critical_ms: f64,
    /// Error rate above this fires an error-rate warning.
    pub error_rate_warning: f64,
    /// Uncertainty above this fires a warning.
    pub uncertainty_warning: f64,
    /// Uncertainty above this fires a critical alert.
    pub uncertainty_critical: f64,
    /// An alert resolves when its value falls below `exit_ratio` × its threshold.
    pub alert_exit_ratio: f64,
    /// Consecutive windows over a threshold to fire.
    pub alert_enter_windows: u32,
    /// Consecutive windows under the exit threshold to resolve.
    pub alert_exit_windows: u32,
    /// HEALTHY → DEGRADED when P95 exceeds this (ms) or...
    pub degrade_p95_ms: f64,
    /// ...the error rate exceeds this, for `degrade_windows` windows.
    pub degrade_error_rate: f64,
    pub degrade_windows: u32,
    /// DEGRADED → HEALTHY when P95 is below this (ms) and...
    pub recover_p95_ms: f64,
    /// ...the error rate below this, for `recover_windows` windows.
    pub recover_error_rate: f64,
    pub recover_windows: u32,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            p95_warning_ms: 200.0,
            p95_critical_ms: 500.0,
            error_rate_warning: 0.05,
            uncertainty_warning: 0.5,
            uncertainty_critical: 0.7,
            alert_exit_ratio: 0.8,
            alert_enter_windows: 1,
            alert_exit_windows: 3,
            degrade_p95_ms: 200.0,
            degrade_error_rate: 0.05,
            degrade_windows: 2,
            recover_p95_ms: 160.0,
            recover_error_rate: 0.025,
            recover_windows: 3,
        }
    }
}

/// The window a decision is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowRef {
    pub start: i64,
    pub end: i64,
}

/// Rule state of one component's latency.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentRules {
    pub degradation: Hysteresis,
    pub p95_warning: Hysteresis,
    pub p95_critical: Hysteresis,
    pub error_rate_warning: Hysteresis,
}

/// Rule state of one (project, component)'s uncertainty.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UncertaintyRules {
    pub warning: Hysteresis,
    pub critical: Hysteresis,
}

struct AlertCtx<'a> {
    th: &'a Thresholds,
    source: &'a str,
    subject: &'a str,
    component: &'a str,
    project_id: Option<&'a str>,
    window: WindowRef,
}

impl AlertCtx<'_> {
    fn step(&self, h: &mut Hysteresis, rule: &str, severity: Severity, value: f64, threshold: f64) -> Option<Event> {
        let enter = value > threshold;
        let exit = value < threshold * self.th.alert_exit_ratio;
        let status = match h.step(enter, exit, self.th.alert_enter_windows, self.th.alert_exit_windows)? {
            Transition::Entered { .. } => AlertStatus::Firing,
            Transition::Exited { .. } => AlertStatus::Resolved,
        };
        let sev = severity.as_str();
        let message = match status {
            AlertStatus::Firing => format!("{rule} {value:.3} > {threshold} ({sev})"),
            AlertStatus::Resolved => {
                format!("{rule} {value:.3} < {:.3} ({sev} resolved)", threshold * self.th.alert_exit_ratio)
            }
        };
        let end = self.window.end.to_string();
        Some(self.alert(rule, severity, status, value, threshold, &[&end], message))
    }

    /// The alert event about this context's window; its id is derived from
    /// rule, subject, severity, status and `id_tail`.
    #[allow(clippy::too_many_arguments)]
    fn alert(
        &self,
        rule: &str,
        severity: Severity,
        status: AlertStatus,
        value: f64,
        threshold: f64,
        id_tail: &[&str],
        message: String,
    ) -> Event {
        let mut id = vec!["alert", rule, self.subject, severity.as_str(), status.as_str()];
        id.extend_from_slice(id_tail);
        Event::Alert(Alert {
            event_id: output_id(&id),
            occurred_at: self.window.end,
            source: self.source.into(),
            rule: rule.into(),
            subject: self.subject.into(),
            component: self.component.into(),
            project_id: self.project_id.map(String::from),
            severity,
            status,
            value,
            threshold,
            window_start: self.window.start,
            window_end: self.window.end,
            message,
        })
    }
}

impl ComponentRules {
    /// Evaluates one closed per-component latency window (already known to
    /// hold at least `min_samples`). Returns transitions in a fixed order:
    /// degradation, then alerts by rule and severity.
    pub fn evaluate(
        &mut self,
        th: &Thresholds,
        source: &str,
        component: &str,
        window: WindowRef,
        stats: &LatencyStats,
    ) -> Vec<Event> {
        let mut out = Vec::new();
        let (p95, err) = (stats.p95_ms, stats.error_rate);
        let degrade = p95 > th.degrade_p95_ms || err > th.degrade_error_rate;
        let recover = p95 < th.recover_p95_ms && err < th.recover_error_rate;
        if let Some(t) = self.degradation.step(degrade, recover, th.degrade_windows, th.recover_windows) {
            let (kind, name, n, reason) = match t {
                Transition::Entered { after } => (
                    DegradationKind::Degraded,
                    DegradationKind::Degraded.as_str(),
                    after,
                    format!(
                        "p95 {p95:.1} ms (limit {}) / error rate {:.2}% (limit {:.2}%) for {after} windows",
                        th.degrade_p95_ms,
                        err * 100.0,
                        th.degrade_error_rate * 100.0
                    ),
                ),
                Transition::Exited { after } => (
                    DegradationKind::Recovered,
                    DegradationKind::Recovered.as_str(),
                    after,
                    format!(
                        "p95 {p95:.1} ms < {} and error rate {:.2}% < {:.2}% for {after} windows",
                        th.recover_p95_ms,
                        err * 100.0,
                        th.recover_error_rate * 100.0
                    ),
                ),
            };
            out.push(Event::Degradation(Degradation {
                event_id: output_id(&["degradation", component, name, &window.end.to_string()]),
                occurred_at: window.end,
                source: source.into(),
                component: component.into(),
                kind,
                reason,
                p95_ms: p95,
                error_rate: err,
                consecutive_windows: n as i32,
                window_start: window.start,
                window_end: window.end,
            }));
        }
        let ctx = AlertCtx { th, source, subject: component, component, project_id: None, window };
        out.extend(ctx.step(&mut self.p95_warning, "latency_p95", Severity::Warning, p95, th.p95_warning_ms));
        out.extend(ctx.step(&mut self.p95_critical, "latency_p95", Severity::Critical, p95, th.p95_critical_ms));
        out.extend(ctx.step(&mut self.error_rate_warning, "error_rate", Severity::Warning, err, th.error_rate_warning));
        out
    }
}

/// "1h", "90s": a duration in the unit it was most likely configured in.
pub fn short_duration(ms: i64) -> String {
    match ms {
        ms if ms >= 3_600_000 && ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms >= 60_000 && ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms if ms % 1000 == 0 => format!("{}s", ms / 1000),
        ms => format!("{ms}ms"),
    }
}

/// What closes an expired subject's open state: one event per firing alert
/// (resolved) and per active degradation, at `at` (the subject's last event
/// plus the time to live), with ids derived from the expiry. Its alerts are
/// about the quiet span `[at - ttl, at]`.
struct Expiry<'a> {
    ctx: AlertCtx<'a>,
    at: i64,
    ttl_ms: i64,
}

impl Expiry<'_> {
    fn why(&self) -> String {
        format!(
            "no data for {} (analyze.state_ttl): the subject's state expired, its health is unknown",
            short_duration(self.ttl_ms)
        )
    }

    fn resolve(&self, h: &Hysteresis, rule: &str, severity: Severity, threshold: f64) -> Option<Event> {
        if !h.active {
            return None;
        }
        let message = format!("{rule} ({}) resolved: {}", severity.as_str(), self.why());
        let at = self.at.to_string();
        Some(self.ctx.alert(rule, severity, AlertStatus::Resolved, 0.0, threshold, &["expired", &at], message))
    }
}

impl ComponentRules {
    /// The component had no data for `ttl_ms`: resolves its firing alerts
    /// and, if DEGRADED, says it is no longer tracked (a RECOVERED event
    /// whose reason says no data arrived), so nothing stays firing forever.
    pub fn expire(&self, th: &Thresholds, source: &str, component: &str, at: i64, ttl_ms: i64) -> Vec<Event> {
        let window = WindowRef { start: at - ttl_ms, end: at };
        let ctx = AlertCtx { th, source, subject: component, component, project_id: None, window };
        let x = Expiry { ctx, at, ttl_ms };
        let mut out = Vec::new();
        if self.degradation.active {
            let kind = DegradationKind::Recovered;
            out.push(Event::Degradation(Degradation {
                event_id: output_id(&["degradation", component, "expired", &at.to_string()]),
                occurred_at: at,
                source: source.into(),
                component: component.into(),
                kind,
                reason: x.why(),
                p95_ms: 0.0,
                error_rate: 0.0,
                consecutive_windows: 0,
                window_start: at - ttl_ms,
                window_end: at,
            }));
        }
        out.extend(x.resolve(&self.p95_warning, "latency_p95", Severity::Warning, th.p95_warning_ms));
        out.extend(x.resolve(&self.p95_critical, "latency_p95", Severity::Critical, th.p95_critical_ms));
        out.extend(x.resolve(&self.error_rate_warning, "error_rate", Severity::Warning, th.error_rate_warning));
        out
    }
}

impl UncertaintyRules {
    /// The (project, component) had no ratings for `ttl_ms`: resolves its
    /// firing alerts.
    pub fn expire(
        &self,
        th: &Thresholds,
        source: &str,
        project_id: &str,
        component: &str,
        at: i64,
        ttl_ms: i64,
    ) -> Vec<Event> {
        let subject = crate::subject::uncertainty(project_id, component);
        let window = WindowRef { start: at - ttl_ms, end: at };
        let ctx = AlertCtx { th, source, subject: &subject, component, project_id: Some(project_id), window };
        let x = Expiry { ctx, at, ttl_ms };
        let mut out = Vec::new();
        out.extend(x.resolve(&self.warning, "uncertainty", Severity::Warning, th.uncertainty_warning));
        out.extend(x.resolve(&self.critical, "uncertainty", Severity::Critical, th.uncertainty_critical));
        out
    }
}

impl UncertaintyRules {
    /// Evaluates one closed (project, component) window holding at least
    /// `min_ratings` ratings.
    pub fn evaluate(
        &mut self,
        th: &Thresholds,
        source: &str,
        project_id: &str,
        component: &str,
        window: WindowRef,
        uncertainty: f64,
    ) -> Vec<Event> {
        let subject = crate::subject::uncertainty(project_id, component);
        let ctx = AlertCtx { th, source, subject: &subject, component, project_id: Some(project_id), window };
        let mut out = Vec::new();
        out.extend(ctx.step(&mut self.warning, "uncertainty", Severity::Warning, uncertainty, th.uncertainty_warning));
        out.extend(ctx.step(
            &mut self.critical,
            "uncertainty",
            Severity::Critical,
            uncertainty,
            th.uncertainty_critical,
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(p95: f64, err: f64) -> LatencyStats {
        LatencyStats {
            count: 100,
            error_count: (err * 100.0) as i64,
            error_rate: err,
            p50_ms: p95 / 2.0,
            p95_ms: p95,
            p99_ms: p95 * 1.5,
        }
    }

    /// Feeds a P95 series (error rate 0) and returns the emitted events.
    fn series(p95s: &[f64]) -> Vec<Event> {
        let th = Thresholds::default();
        let mut rules = ComponentRules::default();
        p95s.iter()
            .enumerate()
            .flat_map(|(i, &p)| {
                let w = WindowRef { start: i as i64 * 60_000, end: i as i64 * 60_000 + 300_000 };
                rules.evaluate(&th, "analyze", "checkout", w, &stats(p, 0.0))
            })
            .collect()
    }

    fn label(e: &Event) -> String {
        match e {
            Event::Degradation(d) => format!("{:?}@{}", d.kind, d.window_end),
            Event::Alert(a) => format!("{}:{:?}:{:?}@{}", a.rule, a.severity, a.status, a.window_end),
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn an_incident_yields_exactly_one_degraded_and_one_recovered_with_alerts() {
        // Healthy, 4 slow windows (600 ms), then healthy again.
        let ev = series(&[50.0, 50.0, 600.0, 600.0, 600.0, 600.0, 50.0, 50.0, 50.0, 50.0]);
        let labels: Vec<String> = ev.iter().map(label).collect();
        let want = [
            "latency_p95:Warning:Firing@420000",
            "latency_p95:Critical:Firing@420000",
            "Degraded@480000",
            "Recovered@780000",
            "latency_p95:Warning:Resolved@780000",
            "latency_p95:Critical:Resolved@780000",
        ];
        assert_eq!(labels, want, "{labels:#?}");
        // Same input, same ids: replays and restarts dedupe downstream.
        let again: Vec<Uuid> = series(&[50.0, 50.0, 600.0, 600.0, 600.0, 600.0, 50.0, 50.0, 50.0, 50.0])
            .iter()
            .map(Event::event_id)
            .collect();
        assert_eq!(again, ev.iter().map(Event::event_id).collect::<Vec<_>>());
        let distinct: std::collections::HashSet<Uuid> = again.into_iter().collect();
        assert_eq!(distinct.len(), 6);
    }

    #[test]
    fn error_rate_degrades_and_alerts_without_latency() {
        let th = Thresholds::default();
        let mut r = ComponentRules::default();
        let w = |i: i64| WindowRef { start: i * 60_000, end: i * 60_000 + 300_000 };
        let a = r.evaluate(&th, "a", "auth", w(0), &stats(20.0, 0.2));
        assert!(matches!(&a[..], [Event::Alert(x)] if x.rule == "error_rate" && x.status == AlertStatus::Firing));
        let b = r.evaluate(&th, "a", "auth", w(1), &stats(20.0, 0.2));
        assert!(matches!(&b[..], [Event::Degradation(d)] if d.kind == DegradationKind::Degraded));
        // Between every exit and enter limit (alert exit 4%, recovery 2.5%, enter 5%): no change.
        for i in 2..10 {
            assert!(r.evaluate(&th, "a", "auth", w(i), &stats(20.0, 0.045)).is_empty());
        }
    }

    #[test]
    fn uncertainty_alerts_fire_and_resolve_per_project_component() {
        let th = Thresholds::default();
        let mut r = UncertaintyRules::default();
        let w = |i: i64| WindowRef { start: i * 60_000, end: i * 60_000 + 300_000 };
        let fired = r.evaluate(&th, "a", "proj-atlas", "search", w(0), 0.75);
        assert_eq!(fired.len(), 2, "warning and critical");
        let Event::Alert(a) = &fired[1] else { panic!() };
        assert_eq!(
            (a.subject.as_str(), a.severity, a.project_id.as_deref()),
            ("proj-atlas|search", Severity::Critical, Some("proj-atlas"))
        );
        assert!(r.evaluate(&th, "a", "proj-atlas", "search", w(1), 0.6).is_empty(), "0.6 is above 0.8 x 0.7");
        let mut resolved = Vec::new();
        for i in 2..5 {
            resolved.extend(r.evaluate(&th, "a", "proj-atlas", "search", w(i), 0.3));
        }
        assert_eq!(resolved.len(), 2);
        assert!(resolved.iter().all(|e| matches!(e, Event::Alert(a) if a.status == AlertStatus::Resolved)));
    }
}
