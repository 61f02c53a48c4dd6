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

/// A checkpoint store as the changelog keeps it after compaction: the
/// latest meta, the latest entry per subject, deletions applied.
#[derive(Default)]
struct Store {
    meta: Vec<u8>,
    entries: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Entries written by the last save.
    last_written: usize,
}

impl Store {
    fn save(&mut self, e: &mut Engine) {
        self.meta = postcard::to_stdvec(&e.meta()).unwrap();
        let c = e.changes();
        for k in &c.delete {
            self.entries.remove(&postcard::to_stdvec(k).unwrap());
        }
        for (k, v) in &c.put {
            self.entries.insert(postcard::to_stdvec(k).unwrap(), postcard::to_stdvec(v).unwrap());
        }
        self.last_written = c.put.len() + c.delete.len();
        e.mark_clean();
    }

    fn restore(&self, cfg: EngineConfig) -> Engine {
        let meta: TaskMeta = postcard::from_bytes(&self.meta).unwrap();
        let entries = self.entries.iter().map(|(k, v)| {
            (postcard::from_bytes::<SubjectKey>(k).unwrap(), postcard::from_bytes::<SubjectEntry>(v).unwrap())
        });
        Engine::restore(cfg, meta, entries).unwrap()
    }
}

/// Every subject's entry, encoded, in key order.
fn snapshot(e: &Engine) -> (Vec<u8>, Vec<(SubjectKey, Vec<u8>)>) {
    let mut all: Vec<(SubjectKey, Vec<u8>)> =
        e.everything().put.into_iter().map(|(k, v)| (k.to_owned(), postcard::to_stdvec(&v).unwrap())).collect();
    all.sort();
    (postcard::to_stdvec(&e.meta()).unwrap(), all)
}

#[test]
fn same_input_same_output_and_incremental_checkpoints_restore_the_same_state() {
    let input = incident(40, 10..20, 7);
    let uninterrupted = run(&mut Engine::new(cfg()), &input);
    for cut in [1, 5_000, 13_000, 30_000] {
        let mut first = Engine::new(cfg());
        let mut store = Store::default();
        let mut out = Vec::new();
        // Checkpoints of the changes only, every 997 inputs.
        for chunk in input[..cut].chunks(997) {
            out.extend(run(&mut first, chunk));
            store.save(&mut first);
        }
        let mut resumed = store.restore(cfg());
        assert_eq!(snapshot(&resumed), snapshot(&first), "restored state at {cut}");
        out.extend(run(&mut resumed, &input[cut..]));
        assert_eq!(out, uninterrupted, "cut at {cut}");
    }
    let ids: Vec<Uuid> = uninterrupted.iter().map(Event::event_id).collect();
    let distinct: std::collections::HashSet<&Uuid> = ids.iter().collect();
    assert_eq!(distinct.len(), ids.len(), "ids are unique per (rule, subject, window)");
}

#[test]
fn a_checkpoint_writes_what_changed_not_what_is_held() {
    let mut rng = SmallRng::seed_from_u64(5);
    let mut e = Engine::new(cfg());
    let mut store = Store::default();
    for i in 0..10_000 {
        let mut s = sample(&mut rng, MIN + i, "checkout", false);
        s.endpoint = format!("/e/{i}");
        e.ingest(Input::Latency(&s)).unwrap();
    }
    store.save(&mut e);
    assert_eq!(store.last_written, 10_001, "every endpoint and the component");
    assert!(store.meta.len() < 200, "meta of {} bytes", store.meta.len());
    let mut s = sample(&mut rng, MIN + 20_000, "checkout", false);
    s.endpoint = "/e/7".into();
    e.ingest(Input::Latency(&s)).unwrap();
    store.save(&mut e);
    assert_eq!(store.last_written, 2, "the endpoint and its component");
    // Windows close and the endpoints' panes go: each endpoint is deleted
    // (no rule state), the component keeps its rules.
    e.advance_idle(Stream::Latency, 10 * MIN);
    e.close(&mut Vec::new());
    assert_eq!(e.subjects(), 0, "no rule state was ever set: nothing held");
    store.save(&mut e);
    assert_eq!(store.last_written, 10_001);
    assert!(store.entries.is_empty());
}

#[test]
fn memory_per_subject_fits_the_budget() {
    // 40 lognormal samples a minute per endpoint, a full window open.
    let mut rng = SmallRng::seed_from_u64(9);
    let d = rand_distr::LogNormal::new(45f64.ln(), 0.5).unwrap();
    let mut e = Engine::new(cfg());
    let endpoints = 2_000;
    for m in 0..5 {
        for k in 0..40 {
            for i in 0..endpoints {
                let mut s = sample(&mut rng, m * MIN + k * 1000 + i as i64 % 1000, "checkout", false);
                s.endpoint = format!("GET /api/v1/items/{i}");
                s.latency_ms = rand_distr::Distribution::sample(&d, &mut rng);
                e.ingest(Input::Latency(&s)).unwrap();
            }
        }
        e.close(&mut Vec::new());
    }
    let per = e.state_bytes() / e.subjects();
    eprintln!("{per} bytes per busy subject");
    assert!(per <= 8 * 1024, "{per} bytes per busy subject");
    // Subjects with no open window: 2,000 slow components, degraded, then
    // quiet. Their endpoints (no rule state) are gone, each component keeps
    // only its rules.
    let mut e = Engine::new(cfg());
    for m in 0..4 {
        for k in 0..20 {
            for i in 0..endpoints {
                let mut s = sample(&mut rng, m * MIN + k * 1000, &format!("component-{i}"), true);
                s.endpoint = "GET /api/v1/items".into();
                e.ingest(Input::Latency(&s)).unwrap();
            }
        }
    }
    e.advance_idle(Stream::Latency, 10 * MIN);
    e.close(&mut Vec::new());
    assert_eq!(e.subjects(), endpoints);
    assert_eq!(e.states().0, endpoints, "all degraded");
    let idle = e.state_bytes() / e.subjects();
    eprintln!("{idle} bytes per subject with no open window");
    assert!(idle <= 512, "{idle} bytes per subject with no open window");
    // After a burst: 20,000 endpoints come and go, the components stay.
    for i in 0..20_000 {
        let mut s = sample(&mut rng, 20 * MIN + i, &format!("component-{}", i % endpoints as i64), false);
        s.endpoint = format!("GET /burst/{i}");
        e.ingest(Input::Latency(&s)).unwrap();
    }
    e.advance_idle(Stream::Latency, 30 * MIN);
    e.close(&mut Vec::new());
    assert_eq!(e.subjects(), endpoints, "the burst's endpoints are gone");
    let idle = e.state_bytes() / e.subjects();
    eprintln!("{idle} bytes per subject with no open window, after a burst");
    assert!(idle <= 512, "{idle} bytes for a subject with no open window");
}

#[test]
fn a_quiet_subject_expires_and_closes_what_it_left_open() {
    let mut c = cfg();
    c.state_ttl_ms = 30 * MIN;
    // checkout is slow for 10 minutes, then silent; auth goes on for an hour.
    let mut rng = SmallRng::seed_from_u64(11);
    let mut input = Vec::new();
    for ms in (0..70 * MIN).step_by(100) {
        if ms < 10 * MIN {
            input.push(sample(&mut rng, ms, "checkout", true));
        }
        input.push(sample(&mut rng, ms + 50, "auth", false));
    }
    let mut per_input = Engine::new(c.clone());
    let out = run(&mut per_input, &input);
    let t = transitions(&out);
    let expired: Vec<&String> = t.iter().filter(|l| l.starts_with("checkout")).collect();
    assert!(expired.iter().any(|l| l.starts_with("checkout Degraded")), "{expired:?}");
    let last = out
        .iter()
        .rev()
        .filter_map(|e| match e {
            Event::Degradation(d) if d.component == "checkout" => Some(d),
            _ => None,
        })
        .next()
        .unwrap();
    assert_eq!(last.kind, DegradationKind::Recovered, "{expired:?}");
    assert!(last.reason.contains("no data for 30m"), "{}", last.reason);
    // Its last sample was just before 10 min: it expires 30 min later.
    assert_eq!(last.occurred_at, 10 * MIN - 100 + 30 * MIN);
    let resolved: Vec<_> = out
        .iter()
        .filter_map(|e| match e {
            Event::Alert(a) if a.subject == "checkout" && a.message.contains("no data") => Some(a),
            _ => None,
        })
        .collect();
    assert_eq!(resolved.len(), 2, "p95 warning and critical resolve: {resolved:?}");
    assert!(resolved.iter().all(|a| a.status == AlertStatus::Resolved));
    let (degraded, firing) = per_input.states();
    assert_eq!((degraded, firing), (0, 0));
    // Deterministic: closing once per 1000 inputs gives the same events.
    let mut batched = Engine::new(c);
    let mut out2 = Vec::new();
    for chunk in input.chunks(1000) {
        for s in chunk {
            batched.ingest(Input::Latency(s)).unwrap();
        }
        batched.close(&mut out2);
    }
    let ids = |v: &[Event]| -> std::collections::BTreeSet<Uuid> {
        v.iter().filter(|e| !matches!(e, Event::WindowStats(_))).map(Event::event_id).collect()
    };
    assert_eq!(ids(&out2), ids(&out));
}

#[test]
fn past_the_capacity_new_subjects_are_refused_and_known_ones_go_on() {
    let mut rng = SmallRng::seed_from_u64(13);
    let mut e = Engine::new(cfg());
    e.set_capacity(3);
    let at = |rng: &mut SmallRng, c: &str, ep: &str| {
        let mut s = sample(rng, MIN, c, false);
        s.endpoint = ep.into();
        s
    };
    e.ingest(Input::Latency(&at(&mut rng, "a", "/1"))).unwrap();
    e.ingest(Input::Latency(&at(&mut rng, "a", "/2"))).unwrap();
    assert_eq!(e.subjects(), 3);
    let refused = e.ingest(Input::Latency(&at(&mut rng, "b", "/1"))).unwrap_err();
    assert_eq!(refused, Refused::Cardinality { held: 3 });
    assert_eq!(e.ingest(Input::Latency(&at(&mut rng, "a", "/1"))), Ok(true));
    let r = rating(MIN, "atlas", "search", true);
    assert_eq!(e.ingest(Input::Rating(&r)), Err(Refused::Cardinality { held: 3 }));
}

#[test]
fn restore_refuses_another_window_shape() {
    let engine = Engine::new(cfg());
    let other = EngineConfig::new(WindowSpec::new(10 * MIN, MIN, 30_000).unwrap());
    assert!(Engine::restore(other, engine.meta(), Vec::new()).unwrap_err().contains("differ"));
}

#[test]
fn late_events_are_refused_and_reported_not_folded_in() {
    let mut e = Engine::new(cfg());
    let mut rng = SmallRng::seed_from_u64(3);
    e.ingest(Input::Latency(&sample(&mut rng, 10 * MIN, "checkout", false))).unwrap();
    // Within the allowed lateness: accepted.
    e.ingest(Input::Latency(&sample(&mut rng, 10 * MIN - 20_000, "checkout", false))).unwrap();
    // Its first window (ending at 9 min) closed at watermark 10 min − 30 s: late.
    let Refused::Late(late) =
        e.ingest(Input::Latency(&sample(&mut rng, 9 * MIN - 40_000, "checkout", false))).unwrap_err()
    else {
        panic!("not late")
    };
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

#[test]
fn each_deployment_derives_ids_of_its_own_and_the_same_ones_again() {
    let input = incident(40, 10..20, 7);
    let ids = |namespace: &str| {
        let mut c = cfg();
        c.deployment = crate::rules::Deployment::new(namespace);
        let events = run(&mut Engine::new(c), &input);
        assert!(events.iter().any(|e| matches!(e, Event::Alert(_))), "the incident alerts");
        (events.iter().map(Event::event_id).collect::<Vec<_>>(), transitions(&events))
    };
    let (base, story) = ids("");
    let (staging, staging_story) = ids("staging");
    let (production, production_story) = ids("production");
    // The same story, told with ids no other deployment derives.
    assert_eq!(staging_story, story);
    assert_eq!(production_story, story);
    let all: std::collections::HashSet<Uuid> = base.iter().chain(&staging).chain(&production).copied().collect();
    assert_eq!(all.len(), 3 * base.len(), "ids shared between deployments");
    // A restart or replay within a deployment derives the same ids again.
    assert_eq!(ids("staging").0, staging);
    // No namespace keeps the ids of a deployment without a prefix.
    let mut plain = Engine::new(cfg());
    assert_eq!(run(&mut plain, &input).iter().map(Event::event_id).collect::<Vec<_>>(), base);
}
