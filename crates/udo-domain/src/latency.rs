//! Latency aggregate of one pane or window: a DDSketch (mergeable, relative
//! error bounded by `ALPHA`, memory bounded by `MAX_BINS`) plus exact counts.

use super::events::LatencyStats;
use super::windows::Aggregate;
use sketches_ddsketch::{Config, DDSketch};

/// Relative accuracy of every quantile; below the 1% the contract demands.
pub const ALPHA: f64 = 0.008;
/// Bin cap: 1024 bins at this accuracy span 1 µs to ~13 s before the sketch
/// starts collapsing its lowest bins (which only ever hurts the lowest quantiles).
pub const MAX_BINS: u32 = 1024;

#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct LatencyAgg {
    sketch: DDSketch,
    pub count: u64,
    pub errors: u64,
}

impl Default for LatencyAgg {
    fn default() -> Self {
        LatencyAgg { sketch: DDSketch::new(Config::new(ALPHA, MAX_BINS, 1e-3)), count: 0, errors: 0 }
    }
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
        // Same config on both sides by construction, so merge cannot fail.
        self.sketch.merge(&other.sketch).expect("sketches share one config");
        self.count += other.count;
        self.errors += other.errors;
    }
}

impl LatencyAgg {
    /// Quantile `q` in ms (rank `floor(q·(n−1))`, within `ALPHA` relative).
    pub fn quantile(&self, q: f64) -> f64 {
        self.sketch.quantile(q).ok().flatten().unwrap_or(0.0)
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
        self.sketch.length()
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
        assert!(agg.bins() <= MAX_BINS as usize + 128, "{} bins", agg.bins());
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
