//! Latency aggregate of one pane or window: a DDSketch (mergeable, relative
//! error bounded by `ALPHA`, memory bounded by `MAX_BINS`) plus exact counts.
//!
//! The sketch keeps DDSketch's logarithmic mapping but stores only the bins
//! in use, as sorted `(index, count)` pairs: a pane of 40 samples holds ~30
//! bins (~240 bytes) where a dense store allocates 128 bins of 8 bytes at
//! least, and the analyzer holds several panes per subject for hundreds of
//! thousands of subjects.

use super::events::LatencyStats;
use super::windows::Aggregate;
use serde::{Deserialize, Serialize};

/// Relative accuracy of every quantile; below the 1% the contract demands.
pub const ALPHA: f64 = 0.008;
/// Bin cap: 1024 bins at this accuracy span 1 µs to ~13 s before the sketch
/// starts collapsing its lowest bins (which only ever hurts the lowest quantiles).
pub const MAX_BINS: usize = 1024;
/// Values at or below this (ms) count as zero.
const MIN_VALUE: f64 = 1e-3;

/// `ln(gamma)` with `gamma = (1 + ALPHA) / (1 - ALPHA)`.
fn gamma_ln() -> f64 {
    (2.0 * ALPHA / (1.0 - ALPHA)).ln_1p()
}

/// A sparse DDSketch of non-negative values.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sketch {
    /// `(bin index, count)`, sorted by index.
    bins: Vec<(i32, u32)>,
    zeros: u32,
}

impl Sketch {
    fn key(v: f64) -> i32 {
        (v.ln() / gamma_ln()).ceil() as i32
    }

    fn value(key: i32) -> f64 {
        let gamma = 1.0 + 2.0 * ALPHA / (1.0 - ALPHA);
        (key as f64 * gamma_ln()).exp() * (2.0 / (1.0 + gamma))
    }

    pub fn add(&mut self, v: f64) {
        if v.is_nan() || v <= MIN_VALUE {
            self.zeros = self.zeros.saturating_add(1);
            return;
        }
        let key = Self::key(v);
        match self.bins.binary_search_by_key(&key, |b| b.0) {
            Ok(i) => self.bins[i].1 = self.bins[i].1.saturating_add(1),
            Err(i) => {
                self.bins.insert(i, (key, 1));
                self.collapse();
            }
        }
    }

    pub fn merge(&mut self, other: &Sketch) {
        self.zeros = self.zeros.saturating_add(other.zeros);
        if other.bins.is_empty() {
            return;
        }
        if self.bins.is_empty() {
            self.bins.clone_from(&other.bins);
            return;
        }
        let (a, b) = (&self.bins, &other.bins);
        let mut merged = Vec::with_capacity(a.len() + b.len());
        let (mut i, mut j) = (0, 0);
        while i < a.len() && j < b.len() {
            match a[i].0.cmp(&b[j].0) {
                std::cmp::Ordering::Less => {
                    merged.push(a[i]);
                    i += 1;
                }
                std::cmp::Ordering::Greater => {
                    merged.push(b[j]);
                    j += 1;
                }
                std::cmp::Ordering::Equal => {
                    merged.push((a[i].0, a[i].1.saturating_add(b[j].1)));
                    i += 1;
                    j += 1;
                }
            }
        }
        merged.extend_from_slice(&a[i..]);
        merged.extend_from_slice(&b[j..]);
        self.bins = merged;
        self.collapse();
    }

    /// Past `MAX_BINS`, the lowest bins fold into one (DDSketch's collapse).
    fn collapse(&mut self) {
        if self.bins.len() <= MAX_BINS {
            return;
        }
        let excess = self.bins.len() - MAX_BINS;
        let folded = self.bins[..=excess].iter().fold(0u32, |n, b| n.saturating_add(b.1));
        self.bins[excess].1 = folded;
        self.bins.drain(..excess);
    }

    pub fn count(&self) -> u64 {
        self.zeros as u64 + self.bins.iter().map(|b| b.1 as u64).sum::<u64>()
    }

    /// Quantile `q` (rank `floor(q·(n−1))`), within `ALPHA` relative.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * (n - 1) as f64) as u64;
        if rank < self.zeros as u64 {
            return Some(0.0);
        }
        let mut seen = self.zeros as u64;
        for &(key, count) in &self.bins {
            seen += count as u64;
            if seen > rank {
                return Some(Self::value(key));
            }
        }
        self.bins.last().map(|b| Self::value(b.0))
    }

    pub fn bins(&self) -> usize {
        self.bins.len()
    }

    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.bins.capacity() * std::mem::size_of::<(i32, u32)>()
    }
}

#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencyAgg {
    sketch: Sketch,
    pub count: u64,
    pub errors: u64,
}

impl std::fmt::Debug for LatencyAgg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LatencyAgg").field("count", &self.count).field("errors", &self.errors).finish()
    }
}

/// One sample: latency in ms and whether the request failed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub latency_ms: f64,
    pub is_error: bool,
}

impl Aggregate for LatencyAgg {
    type Item = Sample;

    fn add(&mut self, s: &Sample) {
        self.sketch.add(s.latency_ms);
        self.count += 1;
        self.errors += s.is_error as u64;
    }

    fn merge(&mut self, other: &Self) {
        self.sketch.merge(&other.sketch);
        self.count += other.count;
        self.errors += other.errors;
    }

    fn heap_bytes(&self) -> usize {
        self.sketch.heap_bytes()
    }
}

impl LatencyAgg {
    /// Quantile `q` in ms (rank `floor(q·(n−1))`, within `ALPHA` relative).
    pub fn quantile(&self, q: f64) -> f64 {
        self.sketch.quantile(q).unwrap_or(0.0)
    }

    pub fn error_rate(&self) -> f64 {
        if self.count == 0 { 0.0 } else { self.errors as f64 / self.count as f64 }
    }

    pub fn stats(&self) -> LatencyStats {
        LatencyStats {
            count: self.count as i64,
            error_count: self.errors as i64,
            error_rate: self.error_rate(),
            p50_ms: self.quantile(0.50),
            p95_ms: self.quantile(0.95),
            p99_ms: self.quantile(0.99),
        }
    }

    /// Bins in use: what the sketch's memory grows with.
    pub fn bins(&self) -> usize {
        self.sketch.bins()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand_distr::{Distribution, LogNormal, Pareto};

    fn exact(mut v: Vec<f64>, q: f64) -> f64 {
        v.sort_by(f64::total_cmp);
        v[(q * (v.len() as f64 - 1.0)) as usize]
    }

    fn rel_err(est: f64, exact: f64) -> f64 {
        ((est - exact) / exact).abs()
    }

    fn check(values: Vec<f64>) {
        let mut agg = LatencyAgg::default();
        for &v in &values {
            agg.add(&Sample { latency_ms: v, is_error: false });
        }
        for q in [0.5, 0.95, 0.99] {
            let e = rel_err(agg.quantile(q), exact(values.clone(), q));
            assert!(e <= 0.01, "q{q}: relative error {e}");
        }
    }

    #[test]
    fn p95_within_one_percent_on_lognormal() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let d = LogNormal::new(45f64.ln(), 0.5).unwrap();
        check((0..100_000).map(|_| d.sample(&mut rng)).collect());
    }

    #[test]
    fn p95_within_one_percent_on_pareto() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let d = Pareto::new(5.0, 1.2).unwrap(); // heavy tail
        check((0..100_000).map(|_| d.sample(&mut rng)).collect());
    }

    #[test]
    fn merged_panes_equal_one_sketch_of_all_samples() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let d = LogNormal::new(3.0, 0.8).unwrap();
        let values: Vec<f64> = (0..20_000).map(|_| d.sample(&mut rng)).collect();
        let mut whole = LatencyAgg::default();
        let mut panes = vec![LatencyAgg::default(); 5];
        for (i, &v) in values.iter().enumerate() {
            let s = Sample { latency_ms: v, is_error: i % 10 == 0 };
            whole.add(&s);
            panes[i % 5].add(&s);
        }
        let mut merged = LatencyAgg::default();
        panes.iter().for_each(|p| merged.merge(p));
        assert_eq!(merged.stats(), whole.stats());
        assert_eq!(whole.stats().error_count, 2000);
        assert!((whole.error_rate() - 0.1).abs() < 1e-12);
    }

    #[test]
    fn memory_is_bounded_whatever_the_spread() {
        let mut agg = LatencyAgg::default();
        let mut v = 0.001;
        while v < 1e9 {
            agg.add(&Sample { latency_ms: v, is_error: false });
            v *= 1.001;
        }
        assert!(agg.bins() <= MAX_BINS, "{} bins", agg.bins());
    }

    proptest! {
        #[test]
        fn quantiles_within_alpha_on_arbitrary_positive_data(values in proptest::collection::vec(0.01f64..1e5, 1..500)) {
            let mut agg = LatencyAgg::default();
            for &v in &values {
                agg.add(&Sample { latency_ms: v, is_error: false });
            }
            for q in [0.5, 0.95, 0.99] {
                let e = rel_err(agg.quantile(q), exact(values.clone(), q));
                prop_assert!(e <= ALPHA + 1e-9, "q{} err {}", q, e);
            }
        }
    }
}
