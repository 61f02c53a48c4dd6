//! Event-time sliding windows built from panes (DESIGN §4).
//!
//! A window of `size` sliding by `slide` is the merge of `size / slide`
//! consecutive panes of length `slide`, so each event is aggregated once (into
//! its pane) rather than once per overlapping window. Windows close in order
//! when the watermark (max event time seen − allowed lateness, or the idle
//! advance) passes their end. An event whose first window already closed is
//! late: it is returned to the caller to be counted and reported, never
//! folded silently into a partial set of windows.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Something that panes hold and windows merge.
pub trait Aggregate: Default {
    type Item;
    fn add(&mut self, item: &Self::Item);
    fn merge(&mut self, other: &Self);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowSpec {
    pub size_ms: i64,
    pub slide_ms: i64,
    pub allowed_lateness_ms: i64,
}

impl WindowSpec {
    pub fn new(size_ms: i64, slide_ms: i64, allowed_lateness_ms: i64) -> Result<WindowSpec, String> {
        if slide_ms <= 0 || size_ms <= 0 {
            return Err(format!("window size ({size_ms} ms) and slide ({slide_ms} ms) must be positive"));
        }
        if size_ms % slide_ms != 0 {
            return Err(format!("window size ({size_ms} ms) must be a multiple of the slide ({slide_ms} ms)"));
        }
        if allowed_lateness_ms < 0 {
            return Err(format!("allowed lateness must be >= 0, got {allowed_lateness_ms} ms"));
        }
        Ok(WindowSpec { size_ms, slide_ms, allowed_lateness_ms })
    }

    /// Start of the pane holding `t`.
    pub fn pane_of(&self, t: i64) -> i64 {
        t.div_euclid(self.slide_ms) * self.slide_ms
    }

    /// End of the first (earliest-closing) window holding `t`.
    pub fn first_window_end(&self, t: i64) -> i64 {
        self.pane_of(t) + self.slide_ms
    }
}

/// Why an event was refused: its first window already closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Late {
    pub first_window_end: i64,
    pub watermark: i64,
}

impl std::fmt::Display for Late {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "late: its first window ended at {} ms, watermark is {} ms", self.first_window_end, self.watermark)
    }
}

/// A closed window of one key.
#[derive(Debug, Clone, PartialEq)]
pub struct Closed<K, A> {
    pub key: K,
    pub start: i64,
    pub end: i64,
    pub agg: A,
}

/// Per-partition window state for keys `K`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Windows<K: Ord + Clone, A: Aggregate> {
    spec: WindowSpec,
    /// key -> pane start -> aggregate.
    panes: BTreeMap<K, BTreeMap<i64, A>>,
    max_event_time: Option<i64>,
    /// Watermark from the idle advance, when it exceeds the event one.
    idle_watermark: Option<i64>,
    /// Every window with end <= this has been emitted.
    closed_through: Option<i64>,
    /// Cap on the event watermark when several inputs feed these windows:
    /// the slowest input's watermark (see `limit_watermark`).
    #[serde(default)]
    limit: Option<i64>,
}

impl<K: Ord + Clone, A: Aggregate + Clone> Windows<K, A> {
    pub fn new(spec: WindowSpec) -> Self {
        Windows {
            spec,
            panes: BTreeMap::new(),
            max_event_time: None,
            idle_watermark: None,
            closed_through: None,
            limit: None,
        }
    }

    pub fn spec(&self) -> WindowSpec {
        self.spec
    }

    pub fn watermark(&self) -> Option<i64> {
        let event = self.max_event_time.map(|t| t - self.spec.allowed_lateness_ms);
        let event = match (event, self.limit) {
            (Some(e), Some(l)) => Some(e.min(l)),
            (e, _) => e,
        };
        match (event, self.idle_watermark) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    /// Adds an event, or says why it is late (the caller reports it).
    pub fn add(&mut self, key: K, t: i64, item: &A::Item) -> Result<(), Late> {
        // Late: the first window holding `t` ended at or behind the watermark,
        // so it is (or will be, at the next `close`) emitted without it.
        // A capped watermark may sit behind windows already emitted; those
        // are closed whatever the watermark says.
        let closed = match (self.watermark(), self.closed_through) {
            (Some(w), Some(c)) => Some(w.max(c)),
            (w, c) => w.or(c),
        };
        if let Some(watermark) = closed {
            let first_window_end = self.spec.first_window_end(t);
            if first_window_end <= watermark {
                return Err(Late { first_window_end, watermark });
            }
        }
        self.max_event_time = Some(self.max_event_time.map_or(t, |m| m.max(t)));
        self.panes.entry(key).or_default().entry(self.spec.pane_of(t)).or_default().add(item);
        Ok(())
    }

    /// Caps the event watermark (`None` lifts the cap). With several inputs
    /// the watermark is the slowest input's, as in Flink: an input running
    /// behind another does not see its events declared late. Never moves the
    /// watermark back past windows already closed.
    pub fn limit_watermark(&mut self, limit: Option<i64>) {
        self.limit = limit;
    }

    /// Moves the watermark by wall-clock idleness: the partition saw its last
    /// event `idle_ms` ago, so event time is assumed to have moved as much.
    pub fn advance_idle(&mut self, idle_ms: i64) {
        if let Some(m) = self.max_event_time {
            let w = m + idle_ms - self.spec.allowed_lateness_ms;
            self.idle_watermark = Some(self.idle_watermark.map_or(w, |x| x.max(w)));
        }
    }

    /// Closes every window whose end <= watermark, in (end, key) order, and
    /// drops panes no open window needs.
    pub fn close(&mut self) -> Vec<Closed<K, A>> {
        let Some(wm) = self.watermark() else { return Vec::new() };
        let (size, slide) = (self.spec.size_ms, self.spec.slide_ms);
        let mut end = self.closed_through.map_or(i64::MIN / 2, |c| c + slide);
        let mut out = Vec::new();
        loop {
            // Windows holding no pane emit nothing: jump to the next window
            // that holds one, which ends one slide after its first pane.
            let first =
                self.panes.values().filter_map(|p| p.range(end.saturating_sub(size)..).next().map(|(k, _)| *k)).min();
            let Some(first) = first else { break };
            end = end.max(first + slide);
            if end > wm {
                break;
            }
            let start = end - size;
            for (key, panes) in &self.panes {
                let mut agg: Option<A> = None;
                for (_, pane) in panes.range(start..end) {
                    agg.get_or_insert_with(A::default).merge(pane);
                }
                if let Some(agg) = agg {
                    out.push(Closed { key: key.clone(), start, end, agg });
                }
            }
            self.closed_through = Some(end);
            end += slide;
        }
        // A pane is needed while some open window (end > closed_through) holds it.
        if let Some(c) = self.closed_through {
            let keep_from = c + slide - size;
            for panes in self.panes.values_mut() {
                *panes = panes.split_off(&keep_from);
            }
            self.panes.retain(|_, p| !p.is_empty());
        }
        out
    }

    /// Forgets events after `limit`: panes that start after it go and the
    /// event watermark comes back to it. For a restored state written before
    /// event times from the future were refused. Returns the panes dropped.
    pub fn forget_after(&mut self, limit: i64) -> usize {
        let before = self.pane_count();
        for panes in self.panes.values_mut() {
            panes.retain(|start, _| *start <= limit);
        }
        self.panes.retain(|_, p| !p.is_empty());
        self.max_event_time = self.max_event_time.map(|m| m.min(limit));
        let lateness = self.spec.allowed_lateness_ms;
        self.idle_watermark = self.idle_watermark.map(|w| w.min(limit - lateness));
        before - self.pane_count()
    }

    /// Number of keys with open panes (for memory accounting).
    pub fn active_keys(&self) -> usize {
        self.panes.len()
    }

    pub fn pane_count(&self) -> usize {
        self.panes.values().map(BTreeMap::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Sum and count of i64 values: the simplest aggregate to check against.
    #[derive(Debug, Clone, Default, PartialEq)]
    struct Sum(i64, u64);

    impl Aggregate for Sum {
        type Item = i64;
        fn add(&mut self, v: &i64) {
            self.0 += v;
            self.1 += 1;
        }
        fn merge(&mut self, o: &Self) {
            self.0 += o.0;
            self.1 += o.1;
        }
    }

    fn spec() -> WindowSpec {
        WindowSpec::new(300, 60, 30).unwrap()
    }

    #[test]
    fn spec_rejects_bad_shapes() {
        assert!(WindowSpec::new(300, 70, 0).unwrap_err().contains("multiple"));
        assert!(WindowSpec::new(0, 60, 0).is_err());
        assert!(WindowSpec::new(300, 60, -1).is_err());
    }

    #[test]
    fn window_closes_once_watermark_passes_its_end() {
        let mut w: Windows<&str, Sum> = Windows::new(spec());
        w.add("a", 10, &1).unwrap();
        w.add("a", 70, &2).unwrap();
        assert!(w.close().is_empty()); // wm = 70 - 30 = 40 < 60
        w.add("a", 95, &4).unwrap(); // wm = 65: window [-240, 60) closes
        let c = w.close();
        assert_eq!(c, vec![Closed { key: "a", start: -240, end: 60, agg: Sum(1, 1) }]);
        w.add("a", 400, &8).unwrap(); // wm = 370: ends 120..=360 close
        let ends: Vec<i64> = w.close().iter().map(|c| c.end).collect();
        assert_eq!(ends, [120, 180, 240, 300, 360]);
    }

    #[test]
    fn events_behind_a_closed_window_are_late_and_handed_back() {
        let mut w: Windows<&str, Sum> = Windows::new(spec());
        w.add("a", 200, &1).unwrap(); // wm 170: windows ending <= 170 are closed
        // Its first window [.., 120) is closed.
        assert_eq!(w.add("a", 100, &1), Err(Late { first_window_end: 120, watermark: 170 }));
        assert_eq!(w.add("a", 125, &1), Ok(())); // still within lateness
    }

    #[test]
    fn forgetting_the_future_brings_the_watermark_back() {
        let mut w: Windows<u8, Sum> = Windows::new(spec());
        w.add(1, 100, &1).unwrap();
        w.add(1, 4_000_000_000_000, &1).unwrap();
        assert!(w.watermark().unwrap() > 1_000_000);
        assert_eq!(w.forget_after(1_000), 1);
        assert_eq!(w.watermark(), Some(1_000 - spec().allowed_lateness_ms));
        // Events after the real ones are on time again.
        w.add(1, 990, &1).unwrap();
    }

    #[test]
    fn idle_advance_closes_windows_without_new_events() {
        let mut w: Windows<&str, Sum> = Windows::new(spec());
        w.add("a", 10, &1).unwrap();
        assert!(w.close().is_empty());
        w.advance_idle(500);
        let ends: Vec<i64> = w.close().iter().map(|c| c.end).collect();
        assert_eq!(ends, [60, 120, 180, 240, 300]);
        assert_eq!(w.pane_count(), 0, "panes dropped once no window needs them");
    }

    /// Brute force: every window end (multiple of slide) whose window holds
    /// at least one non-late event, recomputed from the raw events.
    fn brute(
        spec: WindowSpec,
        events: &[(u8, i64, i64)],
        accepted: &[bool],
        closed_through: i64,
    ) -> Vec<(u8, i64, Sum)> {
        let mut out = std::collections::BTreeMap::new();
        for (i, &(k, t, v)) in events.iter().enumerate() {
            if !accepted[i] {
                continue;
            }
            let first = spec.first_window_end(t);
            let mut end = first;
            while end < first + spec.size_ms && end <= closed_through {
                let e: &mut Sum = out.entry((end, k)).or_default();
                e.add(&v);
                end += spec.slide_ms;
            }
        }
        out.into_iter().map(|((end, k), s)| (k, end, s)).collect()
    }

    proptest! {
        #[test]
        fn closed_windows_match_brute_force(
            events in proptest::collection::vec((0u8..3, 0i64..3000, -5i64..50), 1..200),
            size_panes in 1i64..6, slide in prop::sample::select(vec![10i64, 60, 100]), lateness in 0i64..200,
        ) {
            let spec = WindowSpec::new(size_panes * slide, slide, lateness).unwrap();
            let mut w: Windows<u8, Sum> = Windows::new(spec);
            let mut closed = Vec::new();
            let mut accepted = Vec::new();
            for (i, &(k, t, v)) in events.iter().enumerate() {
                accepted.push(w.add(k, t, &v).is_ok());
                if i % 7 == 0 {
                    closed.extend(w.close());
                }
            }
            w.advance_idle(10_000);
            closed.extend(w.close());
            let through = w.closed_through.unwrap();
            let got: Vec<(u8, i64, Sum)> = {
                let mut v: Vec<_> = closed.into_iter().map(|c| {
                    prop_assert_eq!(c.end - c.start, spec.size_ms);
                    Ok((c.key, c.end, c.agg))
                }).collect::<Result<_, TestCaseError>>()?;
                v.sort_by_key(|(k, e, _)| (*e, *k));
                v
            };
            let want = brute(spec, &events, &accepted, through);
            prop_assert_eq!(got, want);
            // Late events are exactly those behind an already-closed window.
            prop_assert!(accepted[0]);
        }

        #[test]
        fn closing_order_is_by_end_then_key(events in proptest::collection::vec((0u8..4, 0i64..2000), 1..100)) {
            let mut w: Windows<u8, Sum> = Windows::new(WindowSpec::new(120, 60, 0).unwrap());
            for &(k, t) in &events {
                let _ = w.add(k, t, &1);
            }
            w.advance_idle(5000);
            let c = w.close();
            let order: Vec<(i64, u8)> = c.iter().map(|c| (c.end, c.key)).collect();
            let mut sorted = order.clone();
            sorted.sort();
            prop_assert_eq!(order, sorted);
        }
    }
}
