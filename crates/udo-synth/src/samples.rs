//! Fixtures: one event of each record type.

use crate::{Generator, Kind, SynthConfig};
use udo_domain::*;

fn id(n: u128) -> uuid::Uuid {
    uuid::Uuid::from_u128(n)
}

/// One valid event of every record type (the inputs from the generator,
/// the outputs written out): fixtures for codec and interop tests.
pub fn one_of_each(dim: usize, t0: i64) -> Vec<Event> {
    let mut g = Generator::new(SynthConfig::new(dim), 42, t0);
    let mut out: Vec<Event> = Vec::new();
    let mut i = 0;
    while out.len() < 4 {
        let e = g.next(Kind::All, t0 + i);
        i += 1;
        let is_upsert = !matches!(&e, Event::ContextChunk(c) if c.embedding.is_none());
        if is_upsert && !out.iter().any(|o| o.record_name() == e.record_name()) {
            out.push(e);
        }
    }
    let (ws, we) = (t0, t0 + 300_000);
    out.push(Event::WindowStats(WindowStats {
        event_id: id(1),
        occurred_at: we,
        source: "analyze".into(),
        subject: "checkout|POST /pay".into(),
        component: "checkout".into(),
        endpoint: Some("POST /pay".into()),
        project_id: None,
        window_start: ws,
        window_end: we,
        latency: Some(LatencyStats {
            count: 120,
            error_count: 3,
            error_rate: 0.025,
            p50_ms: 44.5,
            p95_ms: 101.25,
            p99_ms: 180.0,
        }),
        uncertainty: None,
    }));
    out.push(Event::WindowStats(WindowStats {
        event_id: id(2),
        occurred_at: we,
        source: "analyze".into(),
        subject: "proj-atlas|checkout".into(),
        component: "checkout".into(),
        endpoint: None,
        project_id: Some("proj-atlas".into()),
        window_start: ws,
        window_end: we,
        latency: None,
        uncertainty: Some(UncertaintyStats {
            ratings: 40,
            positive: 30,
            approval_rate: 0.75,
            wilson_lower: 0.598,
            uncertainty: 0.402,
            decisions: 12,
            predicted_mean: Some(0.31),
            calibration_gap: Some(0.092),
        }),
    }));
    out.push(Event::Alert(Alert {
        event_id: id(3),
        occurred_at: we,
        source: "analyze".into(),
        rule: "latency_p95".into(),
        subject: "checkout".into(),
        component: "checkout".into(),
        project_id: None,
        severity: Severity::Critical,
        status: AlertStatus::Firing,
        value: 612.0,
        threshold: 500.0,
        window_start: ws,
        window_end: we,
        message: "p95 612 ms > 500 ms".into(),
    }));
    out.push(Event::Degradation(Degradation {
        event_id: id(4),
        occurred_at: we,
        source: "analyze".into(),
        component: "checkout".into(),
        kind: DegradationKind::Degraded,
        reason: "p95 > 200 ms for 2 windows".into(),
        p95_ms: 612.0,
        error_rate: 0.01,
        consecutive_windows: 2,
        window_start: ws,
        window_end: we,
    }));
    out.push(Event::Promotion(Promotion {
        event_id: id(5),
        occurred_at: we,
        source: "materialize-redis".into(),
        store: "redis".into(),
        from_role: StoreRole::Shadow,
        to_role: StoreRole::Primary,
        success_ratio: 0.99,
        attempts: 100,
        lag: 0,
        reason: "".into(),
    }));
    out
}
