use super::*;
use crate::events::{AlertStatus, DegradationKind, Outcome, Severity};
use proptest::prelude::*;
use rand::{Rng, SeedableRng, rngs::SmallRng};
use uuid::Uuid;

const MIN: i64 = 60_000;

fn cfg() -> EngineConfig {
    EngineConfig::new(WindowSpec::new(5 * MIN, MIN, 30_000).unwrap())
}

fn sample(rng: &mut SmallRng, t: i64, component: &str, slow: bool) -> LatencySample {
    let base = if slow { 600.0 } else { 40.0 };
    LatencySample {
        event_id: Uuid::from_u128(rng.random()),
        occurred_at: t,
        source: "test".into(),
        component: component.into(),
        endpoint: ["/a", "/b"][rng.random_range(0..2)].into(),
        latency_ms: base * rng.random_range(0.5..1.5),
        outcome: Outcome::Ok,
        status_code: None,
    }
}

/// `minutes` of 10 samples/s for "checkout" (slow during `slow`) and "auth".
fn incident(minutes: i64, slow: std::ops::Range<i64>, seed: u64) -> Vec<LatencySample> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut v = Vec::new();
    for ms in (0..minutes * MIN).step_by(100) {
        let minute = ms / MIN;
        v.push(sample(&mut rng, ms, "checkout", slow.contains(&minute)));
        v.push(sample(&mut rng, ms + 50, "auth", false));
    }
    v
}

fn run(engine: &mut Engine, samples: &[LatencySample]) -> Vec<Event> {
    let mut out = Vec::new();
    for s in samples {
        engine.ingest(Input::Latency(s)).unwrap();
        engine.close(&mut out);
    }
    out
}

fn transitions(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Degradation(d) => Some(format!("{} {:?}@{}", d.component, d.kind, d.window_end / MIN)),
            Event::Alert(a) => {
                Some(format!("{} {} {:?} {:?}@{}", a.subject, a.rule, a.severity, a.status, a.window_end / MIN))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn an_incident_degrades_alerts_then_recovers_and_resolves() {
    // checkout is slow from minute 10 to 19; 40 minutes in all.
    let out = run(&mut Engine::new(cfg()), &incident(40, 10..20, 1));
    let got = transitions(&out);
    // Windows are 5 minutes sliding by 1: the first window holding a slow
    // minute ends at 11; P95 crosses 200 ms once ≥ 5% of the window is slow.
    assert_eq!(
        got,
        [
            "checkout latency_p95 Warning Firing@11",
            "checkout latency_p95 Critical Firing@11",
            "checkout DEGRADED@12",
            // The window ending at 25 is the first with no slow minute; 3 such windows recover.
            "checkout RECOVERED@27",
            "checkout latency_p95 Warning Resolved@27",
            "checkout latency_p95 Critical Resolved@27",
        ]
        .map(|s| s.replace("DEGRADED", "Degraded").replace("RECOVERED", "Recovered")),
        "{got:#?}"
    );
    // auth never misbehaves; every closed window is reported for both components and their endpoints.
    let stats: Vec<&WindowStats> = out
        .iter()
        .filter_map(|e| match e {
            Event::WindowStats(w) => Some(w),
            _ => None,
        })
        .collect();
    let subjects: std::collections::BTreeSet<&str> = stats.iter().map(|w| w.subject.as_str()).collect();
    assert_eq!(
        subjects.into_iter().collect::<Vec<_>>(),
        ["auth", "auth /a", "auth /b", "checkout", "checkout /a", "checkout /b"]
    );
    let checkout_p95 =
        stats.iter().find(|w| w.subject == "checkout" && w.window_end == 16 * MIN).unwrap().latency.clone().unwrap();
    assert!(checkout_p95.p95_ms > 500.0 && checkout_p95.count == 3000, "{checkout_p95:?}");
}

#[test]
fn same_input_same_output_and_a_restored_checkpoint_continues_identically() {
    let input = incident(40, 10..20, 7);
    let uninterrupted = run(&mut Engine::new(cfg()), &input);
    for cut in [1, 5_000, 13_000, 30_000] {
        let mut first = Engine::new(cfg());
        let mut out = run(&mut first, &input[..cut]);
        let bytes = postcard::to_stdvec(first.state()).unwrap();
        let state: TaskState = postcard::from_bytes(&bytes).unwrap();
        let mut resumed = Engine::restore(cfg(), state).unwrap();
        out.extend(run(&mut resumed, &input[cut..]));
        assert_eq!(out, uninterrupted, "cut at {cut}");
    }
    let ids: Vec<Uuid> = uninterrupted.iter().map(Event::event_id).collect();
    let distinct: std::collections::HashSet<&Uuid> = ids.iter().collect();
    assert_eq!(distinct.len(), ids.len(), "ids are unique per (rule, subject, window)");
}

#[test]
fn restore_refuses_another_window_shape() {
    let engine = Engine::new(cfg());
    let other = EngineConfig::new(WindowSpec::new(10 * MIN, MIN, 30_000).unwrap());
    assert!(Engine::restore(other, engine.state().clone()).unwrap_err().contains("differ"));
}

#[test]
fn late_events_are_refused_and_reported_not_folded_in() {
    let mut e = Engine::new(cfg());
    let mut rng = SmallRng::seed_from_u64(3);
    e.ingest(Input::Latency(&sample(&mut rng, 10 * MIN, "checkout", false))).unwrap();
    // Within the allowed lateness: accepted.
    e.ingest(Input::Latency(&sample(&mut rng, 10 * MIN - 20_000, "checkout", false))).unwrap();
    // Its first window (ending at 9 min) closed at watermark 10 min − 30 s: late.
    let late = e.ingest(Input::Latency(&sample(&mut rng, 9 * MIN - 40_000, "checkout", false))).unwrap_err();
    assert_eq!(late.first_window_end, 9 * MIN);
    e.advance_idle(Stream::Latency, 2 * MIN);
    let mut out = Vec::new();
    e.close(&mut out);
    let counts: Vec<(i64, i64)> = out
        .iter()
        .filter_map(|ev| match ev {
            Event::WindowStats(w) if w.endpoint.is_none() => Some((w.window_end / MIN, w.latency.as_ref()?.count)),
            _ => None,
        })
        .collect();
    assert_eq!(counts, [(10, 1), (11, 2)], "the late sample of minute 8 is in no window");
}

#[test]
fn an_idle_partition_closes_its_windows_by_wall_clock() {
    let mut e = Engine::new(cfg());
    let mut rng = SmallRng::seed_from_u64(4);
    for i in 0..30 {
        e.ingest(Input::Latency(&sample(&mut rng, i * 1000, "checkout", false))).unwrap();
    }
    let mut out = Vec::new();
    e.close(&mut out);
    assert!(out.is_empty(), "watermark 0: nothing closes");
    e.advance_idle(Stream::Latency, 6 * MIN);
    e.close(&mut out);
    let ends: Vec<i64> = out
        .iter()
        .filter_map(|ev| match ev {
            Event::WindowStats(w) if w.endpoint.is_none() => Some(w.window_end / MIN),
            _ => None,
        })
        .collect();
    assert_eq!(ends, [1, 2, 3, 4, 5], "every window holding minute 0 closed");
    assert_eq!(e.watermark(Stream::Ratings), None, "the other stream is untouched");
}

#[test]
fn small_windows_are_reported_but_not_evaluated() {
    let mut e = Engine::new(cfg());
    let mut rng = SmallRng::seed_from_u64(5);
    // 10 slow samples per minute: below min_samples (20) per window? No:
    // 5 minutes × 3 = 15 samples per window.
    let mut out = Vec::new();
    for m in 0..20 {
        for k in 0..3 {
            e.ingest(Input::Latency(&sample(&mut rng, m * MIN + k * 1000, "search", true))).unwrap();
            e.close(&mut out);
        }
    }
    assert!(out.iter().any(|e| matches!(e, Event::WindowStats(_))));
    assert!(transitions(&out).is_empty(), "{:?}", transitions(&out));
}

fn rating(t: i64, project: &str, component: &str, positive: bool) -> FeedbackRating {
    FeedbackRating {
        event_id: Uuid::from_u128(t as u128 * 7 + positive as u128),
        occurred_at: t,
        source: "t".into(),
        project_id: project.into(),
        component: component.into(),
        decision_id: Uuid::nil(),
        rating: if positive { 1 } else { -1 },
        correction: None,
    }
}

fn decision(t: i64, project: &str, component: &str, score: i32) -> DecisionLog {
    DecisionLog {
        event_id: Uuid::from_u128(t as u128 * 11),
        occurred_at: t,
        source: "t".into(),
        project_id: project.into(),
        component: component.into(),
        decision: "d".into(),
        uncertainty_score: score,
        rationale: None,
    }
}

#[test]
fn uncertainty_alerts_per_project_component_with_calibration() {
    let mut e = Engine::new(cfg());
    let mut out = Vec::new();
    // 20 minutes: 6 ratings/min for atlas|search, negative from minute 5 to 9; decisions predict 30%.
    for m in 0..20 {
        for k in 0..6 {
            let t = m * MIN + k * 5000;
            let bad = (5..10).contains(&m);
            e.ingest(Input::Rating(&rating(t, "atlas", "search", !bad || k == 0))).unwrap();
            e.ingest(Input::Decision(&decision(t + 1, "atlas", "search", 30), 0, t)).unwrap();
            e.close(&mut out);
        }
    }
    // Window ending at 7 (minutes 2–6): 20 of 30 positive, U = 0.51 > 0.5.
    // Ending at 9 (minutes 4–8): 10 of 30, U = 0.81 > 0.7. Resolving takes 3
    // windows under 0.8 × the threshold.
    assert_eq!(
        transitions(&out),
        [
            "atlas|search uncertainty Warning Firing@7",
            "atlas|search uncertainty Critical Firing@9",
            "atlas|search uncertainty Critical Resolved@15",
            "atlas|search uncertainty Warning Resolved@16",
        ]
    );
    let w = out
        .iter()
        .find_map(|ev| match ev {
            Event::WindowStats(w) if w.window_end == 5 * MIN => w.uncertainty.clone(),
            _ => None,
        })
        .unwrap();
    assert_eq!((w.ratings, w.decisions), (30, 30));
    assert!((w.predicted_mean.unwrap() - 0.3).abs() < 1e-9);
    assert!((w.calibration_gap.unwrap() - (w.uncertainty - 0.3)).abs() < 1e-9);
}

/// A window stats event of a constant P95 per minute (via one sample per
/// 2 s with a fixed latency): drives the rules from a P95 series.
fn series(p95s: &[f64]) -> Vec<String> {
    let mut e = Engine::new(EngineConfig::new(WindowSpec::new(MIN, MIN, 0).unwrap()));
    let mut out = Vec::new();
    for (m, &p) in p95s.iter().enumerate() {
        for k in 0..30 {
            let s = LatencySample {
                event_id: Uuid::nil(),
                occurred_at: m as i64 * MIN + k * 2000,
                source: "t".into(),
                component: "c".into(),
                endpoint: "/".into(),
                latency_ms: p,
                outcome: Outcome::Ok,
                status_code: None,
            };
            e.ingest(Input::Latency(&s)).unwrap();
        }
    }
    e.advance_idle(Stream::Latency, MIN);
    e.close(&mut out);
    transitions(&out)
}

proptest! {
    /// A signal oscillating around the P95 threshold never flaps: at most
    /// one warning fires (it needs 3 windows below 160 ms to resolve) and
    /// two consecutive windows above are needed to degrade.
    #[test]
    fn no_flapping_around_one_threshold(n in 4usize..30, jitter in 1.0f64..9.0) {
        let p95s: Vec<f64> = (0..n).map(|i| if i % 2 == 0 { 200.0 + jitter } else { 200.0 - jitter }).collect();
        let got = series(&p95s);
        prop_assert_eq!(got, vec!["c latency_p95 Warning Firing@1".to_string()]);
    }

    /// Whatever the input order within the allowed lateness, the same
    /// windows close with the same stats (panes are order-independent).
    #[test]
    fn permuting_on_time_input_changes_nothing(seed in 0u64..1000) {
        let input = incident(12, 3..6, seed);
        let mut shuffled = input.clone();
        let mut rng = SmallRng::seed_from_u64(seed);
        // Swap neighbours less than 10 s apart: always within the 30 s lateness.
        for i in (1..shuffled.len()).step_by(3) {
            if rng.random_bool(0.5) && shuffled[i].occurred_at - shuffled[i - 1].occurred_at < 10_000 {
                shuffled.swap(i, i - 1);
            }
        }
        let close_all = |v: &[LatencySample]| {
            let mut e = Engine::new(cfg());
            for s in v { e.ingest(Input::Latency(s)).unwrap(); }
            e.advance_idle(Stream::Latency, 10 * MIN);
            let mut out = Vec::new();
            e.close(&mut out);
            out
        };
        prop_assert_eq!(close_all(&input), close_all(&shuffled));
    }
}

#[test]
fn severity_and_kind_names_are_the_contract_ones() {
    let out = run(&mut Engine::new(cfg()), &incident(40, 10..20, 1));
    assert!(
        out.iter().any(
            |e| matches!(e, Event::Alert(a) if a.severity == Severity::Critical && a.status == AlertStatus::Firing)
        )
    );
    assert!(out.iter().any(|e| matches!(e, Event::Degradation(d) if d.kind == DegradationKind::Recovered)));
}

#[test]
fn a_lagging_input_holds_the_ratings_watermark_until_it_is_idle() {
    let mut e = Engine::new(cfg());
    let mut out = Vec::new();
    // Ratings run ten minutes ahead of decisions (which take one more hop).
    for m in 0..10 {
        e.ingest(Input::Rating(&rating(m * MIN, "atlas", "search", true))).unwrap();
    }
    e.close(&mut out);
    assert!(out.is_empty(), "no decision seen yet: the decisions input holds every window open");
    for m in 0..10 {
        e.ingest(Input::Decision(&decision(m * MIN + 1, "atlas", "search", 40), 0, m)).expect("not late");
    }
    e.close(&mut out);
    let first = out.iter().find_map(|ev| match ev {
        Event::WindowStats(w) => w.uncertainty.clone().map(|u| (w.window_end / MIN, u.ratings, u.decisions)),
        _ => None,
    });
    assert_eq!(first, Some((1, 1, 1)), "the first window holds both inputs");
    // Decisions stop; once declared idle, ratings alone drive the watermark.
    for m in 10..20 {
        e.ingest(Input::Rating(&rating(m * MIN, "atlas", "search", true))).unwrap();
    }
    out.clear();
    e.close(&mut out);
    assert!(out.is_empty(), "held by the decisions input at minute 9");
    e.set_idle(Source::Decisions(0), true);
    e.close(&mut out);
    let last_end = out
        .iter()
        .filter_map(|ev| match ev {
            Event::WindowStats(w) => Some(w.window_end / MIN),
            _ => None,
        })
        .max();
    assert_eq!(last_end, Some(18), "watermark 19 min − 30 s");
    // A decision behind already-closed windows is late, not folded in.
    assert!(e.ingest(Input::Decision(&decision(12 * MIN, "atlas", "search", 40), 0, 100)).is_err());
}

#[test]
fn decision_channels_hold_the_watermark_at_the_slowest_source_partition() {
    let mut c = cfg();
    c.decision_channels = 2;
    let mut e = Engine::new(c);
    let mut out = Vec::new();
    for m in 0..20 {
        e.ingest(Input::Rating(&rating(m * MIN, "atlas", "search", true))).unwrap();
        // Channel 0 (one writes partition) runs to minute 19 ...
        e.ingest(Input::Decision(&decision(m * MIN + 2, "atlas", "search", 40), 0, m)).unwrap();
    }
    e.close(&mut out);
    assert!(out.is_empty(), "channel 1 not seen yet: held");
    // ... while channel 1 is still at minute 3: its decisions are not late.
    for m in 0..4 {
        e.ingest(Input::Decision(&decision(m * MIN + 3, "atlas", "search", 40), 1, m)).expect("not late");
    }
    e.close(&mut out);
    let ends: Vec<i64> = out
        .iter()
        .filter_map(|ev| match ev {
            Event::WindowStats(w) => Some(w.window_end / MIN),
            _ => None,
        })
        .collect();
    assert_eq!(ends, [1, 2], "closed up to channel 1's watermark (minute 3 − 30 s)");
}

#[test]
fn repeated_decisions_from_a_replayed_channel_count_once() {
    let mut e = Engine::new(cfg());
    let mut out = Vec::new();
    let d = decision(MIN / 2, "atlas", "search", 40);
    assert_eq!(e.ingest(Input::Decision(&d, 0, 7)), Ok(true));
    assert_eq!(e.ingest(Input::Decision(&d, 0, 7)), Ok(false), "same channel offset: a replay");
    assert_eq!(e.ingest(Input::Decision(&d, 0, 3)), Ok(false), "older offset: a replay");
    e.ingest(Input::Rating(&rating(MIN / 2, "atlas", "search", true))).unwrap();
    e.advance_idle(Stream::Ratings, 10 * MIN);
    e.set_idle(Source::Feedback, true);
    e.set_idle(Source::Decisions(0), true);
    e.close(&mut out);
    let Some(Event::WindowStats(w)) = out.first() else { panic!("{out:?}") };
    assert_eq!(w.uncertainty.as_ref().unwrap().decisions, 1);
}

/// Window counts per (start, end) of one component's own windows.
fn counts(events: &[Event]) -> Vec<(i64, i64, i64)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::WindowStats(w) if w.endpoint.is_none() => {
                Some((w.window_start, w.window_end, w.latency.as_ref().unwrap().count))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn routed_samples_count_once_and_hold_the_watermark_until_idle() {
    let mut rng = SmallRng::seed_from_u64(5);
    let samples: Vec<LatencySample> = (0..600).map(|i| sample(&mut rng, i * 1000, "checkout", false)).collect();
    // The reference: every sample read from the owner's own partition.
    let mut plain = Engine::new(cfg());
    let want = counts(&run(&mut plain, &samples));

    // A third routed from channel 4, lagging 40 s (more than the allowed
    // lateness) behind the others, and replayed twice (at-least-once hop).
    let mut routed = Engine::new(cfg());
    let mut out = Vec::new();
    let (own, other): (Vec<(usize, &LatencySample)>, Vec<_>) =
        samples.iter().enumerate().partition(|(i, _)| i % 3 != 0);
    let mut pending = other.iter().peekable();
    for (_, s) in &own {
        while let Some((i, r)) = pending.peek() {
            if r.occurred_at + 40_000 > s.occurred_at {
                break;
            }
            for _ in 0..2 {
                routed.ingest(Input::RoutedLatency(r, 4, *i as i64)).expect("a routed channel is never late");
            }
            pending.next();
        }
        routed.ingest(Input::Latency(s)).expect("own samples wait for the routed channel");
        routed.close(&mut out);
    }
    for (i, r) in pending {
        routed.ingest(Input::RoutedLatency(r, 4, *i as i64)).unwrap();
    }
    routed.close(&mut out);
    let got = counts(&out);
    assert_eq!(got, want[..got.len()], "the same windows with the same counts, each once");
    assert!(got.len() >= want.len() - 1, "{} of {} windows", got.len(), want.len());
    // An idle routed channel stops holding the watermark.
    let before = routed.watermark(Stream::Latency);
    routed.set_latency_idle(4, true);
    assert!(routed.watermark(Stream::Latency) >= before);
}
