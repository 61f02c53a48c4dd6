//! Store promotion (design §4): each materializer keeps the first-attempt
//! success of its last `window` (100) write attempts; a SHADOW store whose
//! ratio reaches `promote_ratio` (95%) over a full window while its lag is
//! within `max_lag` becomes PRIMARY, and a PRIMARY store whose ratio falls
//! below `demote_ratio` (80%) goes back to SHADOW. The gap between the two
//! thresholds is the hysteresis that keeps a store hovering at 85–90% from
//! flapping, the same shape as degradation. It is pure and driven by the
//! caller's attempts, so it is testable in-process and a replay of the same
//! attempts yields the same events: the event id is UUIDv5 of (store, from,
//! to, position of the triggering attempt), where the position (`at`, event
//! time in ms) is the caller's and survives a restart, unlike a counter.

use super::events::{Promotion, StoreRole};
use super::rules::{Deployment, output_id};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// Thresholds of design §4; every one is configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PromotionConfig {
    /// Write attempts the success ratio is computed over; promotion needs a full window.
    pub window: usize,
    /// SHADOW → PRIMARY when the first-attempt success ratio is at least this...
    pub promote_ratio: f64,
    /// ...and the consumer lag (records) is at most this.
    pub max_lag: i64,
    /// PRIMARY → SHADOW when the ratio falls below this.
    pub demote_ratio: f64,
}

impl Default for PromotionConfig {
    fn default() -> Self {
        PromotionConfig { window: 100, promote_ratio: 0.95, max_lag: 0, demote_ratio: 0.80 }
    }
}

/// One write attempt of a materializer, as the caller saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    /// The write succeeded on its first try (no retry was needed).
    pub first_attempt_ok: bool,
    /// Consumer lag (records behind the log end) after this write.
    pub lag: i64,
    /// Deterministic position of the attempt, epoch ms (e.g. the event time
    /// of the batch's last record): the event's `occurred_at` and part of its id.
    pub at: i64,
}

/// The promotion state of one store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorePromotion {
    store: String,
    role: StoreRole,
    /// First-attempt outcomes of the most recent attempts, oldest first.
    recent: VecDeque<bool>,
    successes: usize,
    #[serde(skip)]
    deployment: Deployment,
}

impl StorePromotion {
    /// A store starts as SHADOW with no history.
    pub fn new(store: impl Into<String>) -> Self {
        StorePromotion {
            store: store.into(),
            role: StoreRole::Shadow,
            recent: VecDeque::new(),
            successes: 0,
            deployment: Deployment::default(),
        }
    }

    /// Promotion ids in this deployment's namespace.
    pub fn in_deployment(mut self, deployment: Deployment) -> Self {
        self.deployment = deployment;
        self
    }

    pub fn store(&self) -> &str {
        &self.store
    }

    pub fn role(&self) -> StoreRole {
        self.role
    }

    /// Attempts currently in the window.
    pub fn attempts(&self) -> usize {
        self.recent.len()
    }

    /// First-attempt success ratio over the window (0 with no attempts).
    pub fn success_ratio(&self) -> f64 {
        if self.recent.is_empty() { 0.0 } else { self.successes as f64 / self.recent.len() as f64 }
    }

    /// Records one attempt and returns a promotion event if the role changed.
    pub fn record(&mut self, cfg: &PromotionConfig, source: &str, attempt: Attempt) -> Option<Promotion> {
        self.recent.push_back(attempt.first_attempt_ok);
        self.successes += usize::from(attempt.first_attempt_ok);
        while self.recent.len() > cfg.window.max(1) {
            if self.recent.pop_front() == Some(true) {
                self.successes -= 1;
            }
        }
        self.evaluate(cfg, source, attempt.lag, attempt.at)
    }

    /// Re-evaluates without a new attempt, e.g. when the lag reaches zero
    /// while no writes happen. `at` is as in [`Attempt::at`].
    pub fn observe_lag(&mut self, cfg: &PromotionConfig, source: &str, lag: i64, at: i64) -> Option<Promotion> {
        self.evaluate(cfg, source, lag, at)
    }

    fn evaluate(&mut self, cfg: &PromotionConfig, source: &str, lag: i64, at: i64) -> Option<Promotion> {
        let ratio = self.success_ratio();
        let n = self.recent.len();
        let (to, reason) = match self.role {
            StoreRole::Shadow if n >= cfg.window.max(1) && ratio >= cfg.promote_ratio && lag <= cfg.max_lag => (
                StoreRole::Primary,
                format!(
                    "first-attempt success {:.1}% over the last {n} writes >= {:.1}% and lag {lag} <= {}",
                    ratio * 100.0,
                    cfg.promote_ratio * 100.0,
                    cfg.max_lag
                ),
            ),
            StoreRole::Primary if ratio < cfg.demote_ratio => (
                StoreRole::Shadow,
                format!(
                    "first-attempt success {:.1}% over the last {n} writes < {:.1}%",
                    ratio * 100.0,
                    cfg.demote_ratio * 100.0
                ),
            ),
            _ => return None,
        };
        let from = std::mem::replace(&mut self.role, to);
        Some(Promotion {
            event_id: self.deployment.id(output_id(&[
                "promotion",
                &self.store,
                from.as_str(),
                to.as_str(),
                &at.to_string(),
            ])),
            occurred_at: at,
            source: source.into(),
            store: self.store.clone(),
            from_role: from,
            to_role: to,
            success_ratio: ratio,
            attempts: i32::try_from(n).unwrap_or(i32::MAX),
            lag,
            reason,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Event, Limits};

    const T0: i64 = 1_750_000_000_000;

    /// Feeds outcomes (lag 0) one second apart from T0 + `start` s; returns (attempt index, event).
    fn feed(p: &mut StorePromotion, start: usize, outcomes: &[bool], lag: i64) -> Vec<(usize, Promotion)> {
        let cfg = PromotionConfig::default();
        outcomes
            .iter()
            .enumerate()
            .filter_map(|(i, &ok)| {
                let at = T0 + (start + i) as i64 * 1000;
                p.record(&cfg, "udo-materialize-postgres", Attempt { first_attempt_ok: ok, lag, at })
                    .map(|e| (start + i, e))
            })
            .collect()
    }

    /// `n` attempts where every `k`-th fails (k = 0: none fail).
    fn pattern(n: usize, k: usize) -> Vec<bool> {
        (0..n).map(|i| k == 0 || (i + 1) % k != 0).collect()
    }

    #[test]
    fn promotes_once_the_window_is_full_and_good() {
        let mut p = StorePromotion::new("postgres");
        let ev = feed(&mut p, 0, &pattern(150, 0), 0);
        assert_eq!(ev.len(), 1, "one transition, not one event per attempt: {ev:?}");
        let (i, e) = &ev[0];
        assert_eq!(*i, 99, "promoted on the 100th attempt, not earlier (1 success is not 100%)");
        assert_eq!((e.from_role, e.to_role, e.attempts, e.lag), (StoreRole::Shadow, StoreRole::Primary, 100, 0));
        assert_eq!(e.success_ratio, 1.0);
        assert_eq!(e.occurred_at, T0 + 99_000);
        assert_eq!(p.role(), StoreRole::Primary);
        // The event is valid by the contract's own rules.
        Event::Promotion(e.clone()).validate(&Limits::default()).unwrap();
    }

    #[test]
    fn exactly_95_percent_promotes_and_94_does_not() {
        let mut p = StorePromotion::new("redis");
        assert!(feed(&mut p, 0, &pattern(100, 16), 0).is_empty(), "6 failures of 100: 94%");
        assert_eq!(p.success_ratio(), 0.94);
        let mut p = StorePromotion::new("redis");
        assert_eq!(feed(&mut p, 0, &pattern(100, 20), 0).len(), 1, "95% promotes");
    }

    #[test]
    fn hovering_between_80_and_95_percent_never_flaps() {
        let mut p = StorePromotion::new("postgres");
        assert_eq!(feed(&mut p, 0, &pattern(100, 0), 0).len(), 1);
        // ~87.5% success for a long time: stays PRIMARY.
        assert!(feed(&mut p, 100, &pattern(2000, 8), 0).is_empty());
        assert_eq!(p.role(), StoreRole::Primary);
        // A shadow store at ~87.5% is never promoted either.
        let mut s = StorePromotion::new("redis");
        assert!(feed(&mut s, 0, &pattern(2000, 8), 0).is_empty());
        assert_eq!(s.role(), StoreRole::Shadow);
    }

    #[test]
    fn demotes_below_80_percent_and_can_be_promoted_again() {
        let mut p = StorePromotion::new("postgres");
        feed(&mut p, 0, &pattern(100, 0), 0);
        // Every 4th attempt fails (75% in steady state): the ratio slides down
        // and crosses 80% once.
        let ev = feed(&mut p, 100, &pattern(300, 4), 0);
        assert_eq!(ev.len(), 1, "{ev:?}");
        let (_, d) = &ev[0];
        assert_eq!((d.from_role, d.to_role), (StoreRole::Primary, StoreRole::Shadow));
        assert!(d.success_ratio < 0.80, "{}", d.success_ratio);
        // Recovers to a full window of successes: promoted again (new id).
        let ev2 = feed(&mut p, 400, &pattern(200, 0), 0);
        assert_eq!(ev2.len(), 1);
        assert_eq!(ev2[0].1.to_role, StoreRole::Primary);
        assert_ne!(ev2[0].1.event_id, d.event_id);
    }

    #[test]
    fn not_promoted_while_lagging_then_promoted_when_caught_up() {
        let cfg = PromotionConfig::default();
        let mut p = StorePromotion::new("redis");
        assert!(feed(&mut p, 0, &pattern(300, 0), 5_000).is_empty(), "100% success but 5000 records behind");
        assert_eq!(p.role(), StoreRole::Shadow);
        assert!(p.observe_lag(&cfg, "udo-materialize-redis", 1, T0 + 400_000).is_none());
        let e = p.observe_lag(&cfg, "udo-materialize-redis", 0, T0 + 401_000).expect("caught up: promoted");
        assert_eq!((e.to_role, e.lag, e.occurred_at), (StoreRole::Primary, 0, T0 + 401_000));
        // A configurable bound allows some lag.
        let relaxed = PromotionConfig { max_lag: 100, ..PromotionConfig::default() };
        let mut q = StorePromotion::new("redis");
        let got: Vec<_> = (0..100)
            .filter_map(|i| q.record(&relaxed, "s", Attempt { first_attempt_ok: true, lag: 100, at: T0 + i * 1000 }))
            .collect();
        assert_eq!(got.len(), 1);
    }

    #[test]
    fn replaying_the_same_attempts_yields_identical_events() {
        let run = || {
            let mut p = StorePromotion::new("postgres");
            let mut outcomes = pattern(100, 0);
            outcomes.extend(pattern(300, 3));
            outcomes.extend(pattern(300, 0));
            feed(&mut p, 0, &outcomes, 0)
        };
        let a = run();
        assert_eq!(a.len(), 3, "promote, demote, promote");
        assert_eq!(a, run());
        let ids: std::collections::HashSet<_> = a.iter().map(|(_, e)| e.event_id).collect();
        assert_eq!(ids.len(), 3);
        // Same store and transition at another position: another id; another store: another id.
        assert_eq!(
            a[0].1.event_id,
            output_id(&["promotion", "postgres", "SHADOW", "PRIMARY", &(T0 + 99_000).to_string()])
        );
        let mut r = StorePromotion::new("redis");
        let other = feed(&mut r, 0, &pattern(100, 0), 0);
        assert_ne!(other[0].1.event_id, a[0].1.event_id);
        // Another deployment: the same promotion under an id of its own.
        let deployment = Deployment::new("staging");
        let mut s = StorePromotion::new("postgres").in_deployment(deployment);
        let staged = feed(&mut s, 0, &pattern(100, 0), 0);
        assert_eq!(staged[0].1.event_id, deployment.id(a[0].1.event_id));
        assert_ne!(staged[0].1.event_id, a[0].1.event_id);
    }

    #[test]
    fn state_round_trips_through_serde() {
        let mut p = StorePromotion::new("postgres");
        feed(&mut p, 0, &pattern(120, 10), 0);
        let json = serde_json::to_string(&p).unwrap();
        let back: StorePromotion = serde_json::from_str(&json).unwrap();
        assert_eq!(back, p);
        assert_eq!(back.attempts(), 100);
    }
}
