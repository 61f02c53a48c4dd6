use super::*;

const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

fn latencies(g: &mut Generator, component: &str, from_ms: i64, n: usize) -> Vec<f64> {
    (0..n as i64)
        .filter_map(|i| match g.next(Kind::Latency, from_ms + i) {
            Event::LatencySample(s) if s.component == component => Some(s.latency_ms),
            _ => None,
        })
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[test]
fn same_seed_same_events() {
    let a: Vec<Event> = {
        let mut g = Generator::new(SynthConfig::new(8), 7, T0);
        (0..500).map(|i| g.next(Kind::All, T0 + i)).collect()
    };
    let mut g = Generator::new(SynthConfig::new(8), 7, T0);
    let b: Vec<Event> = (0..500).map(|i| g.next(Kind::All, T0 + i)).collect();
    assert_eq!(a, b);
    let mut g = Generator::new(SynthConfig::new(8), 8, T0);
    let c: Vec<Event> = (0..500).map(|i| g.next(Kind::All, T0 + i)).collect();
    assert_ne!(a, c);
}

#[test]
fn every_generated_event_is_valid() {
    let limits = Limits { embedding_dim: 16, ..Limits::default() };
    let mut g = Generator::new(SynthConfig::new(16), 1, T0);
    for i in 0..5_000 {
        let e = g.next(Kind::All, T0 + i);
        e.validate(&limits).unwrap_or_else(|err| panic!("{e:?}: {err}"));
    }
}

#[test]
fn latency_is_lognormal_around_the_profile_median() {
    let mut g = Generator::new(SynthConfig::new(4), 3, T0);
    let m = median(latencies(&mut g, "checkout", T0, 50_000));
    assert!((40.0..50.0).contains(&m), "checkout median {m} not near 45 ms");
}

#[test]
fn slow_incident_multiplies_latency_only_inside_its_span() {
    let mut cfg = SynthConfig::new(4);
    cfg.incidents.push("slow:checkout@10s+10s".parse().unwrap());
    let mut g = Generator::new(cfg, 3, T0);
    let before = median(latencies(&mut g, "checkout", T0, 10_000));
    let during = median(latencies(&mut g, "checkout", T0 + 10_000, 10_000));
    let after = median(latencies(&mut g, "checkout", T0 + 20_000, 10_000));
    assert!(during > 7.0 * before, "during {during} vs before {before}");
    assert!(after < 1.5 * before, "after {after} vs before {before}");
    let search = median(latencies(&mut g, "search", T0 + 10_000, 10_000));
    assert!(search < 40.0, "other components unaffected, got {search}");
}

#[test]
fn error_incident_raises_error_rate_to_about_20_percent() {
    let mut cfg = SynthConfig::new(4);
    cfg.incidents.push("errors:auth@0s".parse().unwrap());
    let mut g = Generator::new(cfg, 5, T0);
    let (mut n, mut errors) = (0, 0);
    for i in 0..50_000 {
        if let Event::LatencySample(s) = g.next(Kind::Latency, T0 + i) {
            if s.component == "auth" {
                n += 1;
                errors += s.outcome.is_error() as usize;
            }
        }
    }
    let rate = errors as f64 / n as f64;
    assert!((0.17..0.23).contains(&rate), "auth error rate {rate}");
}

#[test]
fn ratings_follow_the_approval_rate_and_rate_known_decisions() {
    let mut cfg = SynthConfig::new(4);
    cfg.approval_rate = 0.3;
    let mut g = Generator::new(cfg, 9, T0);
    let mut decisions = std::collections::HashSet::new();
    let (mut n, mut pos, mut rated_known) = (0, 0, 0);
    for i in 0..40_000 {
        match g.next(Kind::All, T0 + i) {
            Event::DecisionLog(d) => {
                decisions.insert(d.event_id);
            }
            Event::FeedbackRating(f) => {
                n += 1;
                pos += (f.rating == 1) as usize;
                rated_known += decisions.contains(&f.decision_id) as usize;
            }
            _ => {}
        }
    }
    let rate = pos as f64 / n as f64;
    assert!((0.27..0.33).contains(&rate), "approval {rate}");
    assert!(rated_known as f64 > 0.99 * n as f64, "{rated_known} of {n} ratings rate a generated decision");
}

#[test]
fn embeddings_are_unit_vectors_of_the_configured_dimension() {
    let mut g = Generator::new(SynthConfig::new(32), 2, T0);
    let mut seen = 0;
    for i in 0..2_000 {
        if let Event::ContextChunk(c) = g.next(Kind::Writes, T0 + i) {
            if let Some(v) = c.embedding {
                assert_eq!(v.len(), 32);
                let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                assert!((norm - 1.0).abs() < 1e-4, "norm {norm}");
                seen += 1;
            }
        }
    }
    assert!(seen > 100);
}

#[test]
fn incident_parsing() {
    let i: Incident = "slow:checkout@5m+10m".parse().unwrap();
    assert_eq!(i.kind, IncidentKind::Slow);
    assert_eq!(i.component, "checkout");
    assert_eq!(i.start, Duration::from_secs(300));
    assert_eq!(i.duration, Some(Duration::from_secs(600)));
    assert!(i.covers(300_000) && i.covers(899_999) && !i.covers(900_000) && !i.covers(299_999));
    let open: Incident = "errors:auth@30s".parse().unwrap();
    assert!(open.covers(i64::MAX / 2));
    assert_eq!(open.to_string(), "errors:auth@30s");
    for bad in ["slow", "fast:x@1m", "slow:@1m", "slow:x", "slow:x@soon", "slow:x@1m+ever"] {
        let err = bad.parse::<Incident>().unwrap_err();
        assert!(err.contains("KIND:COMPONENT@START") || err.contains("use e.g."), "{bad}: {err}");
    }
    let disputed: Incident = "disputed:search@25m+15m".parse().unwrap();
    assert_eq!(disputed.kind, IncidentKind::Disputed);
    assert_eq!(disputed.to_string(), "disputed:search@25m+15m");
}

use std::time::Duration;
