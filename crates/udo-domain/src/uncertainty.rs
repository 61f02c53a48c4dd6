//! Observed uncertainty from ratings (design §4): `U = 1 − L`, where `L` is
//! the lower bound of the 95% Wilson score interval of the approval rate. Few
//! ratings give a wide interval, so U stays high until the evidence is there.

use super::events::UncertaintyStats;
use super::windows::Aggregate;

/// Two-sided 95% normal quantile.
pub const Z95: f64 = 1.959_963_984_540_054;

/// Lower bound of the Wilson score interval for `positive` of `n`.
pub fn wilson_lower(positive: u64, n: u64, z: f64) -> f64 {
    if n == 0 {
        return 0.0;
    }
    let n_f = n as f64;
    let p = positive as f64 / n_f;
    let z2 = z * z;
    let centre = p + z2 / (2.0 * n_f);
    let margin = z * (p * (1.0 - p) / n_f + z2 / (4.0 * n_f * n_f)).sqrt();
    ((centre - margin) / (1.0 + z2 / n_f)).clamp(0.0, 1.0)
}

/// Ratings and decisions of one (project, component) pane or window.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RatingAgg {
    pub ratings: u64,
    pub positive: u64,
    pub decisions: u64,
    /// Sum of predicted uncertainty (score / 100) over decisions.
    pub predicted_sum: f64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RatingItem {
    /// +1 or −1.
    Rating(i32),
    /// A decision's predicted uncertainty score, 0–100.
    Decision(i32),
}

impl Aggregate for RatingAgg {
    type Item = RatingItem;

    fn add(&mut self, item: &RatingItem) {
        match *item {
            RatingItem::Rating(r) => {
                self.ratings += 1;
                self.positive += (r > 0) as u64;
            }
            RatingItem::Decision(score) => {
                self.decisions += 1;
                self.predicted_sum += score as f64 / 100.0;
            }
        }
    }

    fn merge(&mut self, o: &Self) {
        self.ratings += o.ratings;
        self.positive += o.positive;
        self.decisions += o.decisions;
        self.predicted_sum += o.predicted_sum;
    }
}

impl RatingAgg {
    pub fn uncertainty(&self) -> f64 {
        1.0 - wilson_lower(self.positive, self.ratings, Z95)
    }

    pub fn stats(&self) -> UncertaintyStats {
        let wilson = wilson_lower(self.positive, self.ratings, Z95);
        let predicted_mean = (self.decisions > 0).then(|| self.predicted_sum / self.decisions as f64);
        UncertaintyStats {
            ratings: self.ratings as i64,
            positive: self.positive as i64,
            approval_rate: if self.ratings == 0 { 0.0 } else { self.positive as f64 / self.ratings as f64 },
            wilson_lower: wilson,
            uncertainty: 1.0 - wilson,
            decisions: self.decisions as i64,
            predicted_mean,
            calibration_gap: predicted_mean.map(|p| (1.0 - wilson) - p),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn wilson_matches_reference_values() {
        // Reference: Wilson (1927) score interval, z = 1.96, as tabulated by
        // e.g. Newcombe (1998) and R's binom.confint(method = "wilson").
        for (pos, n, want) in [(8, 10, 0.4902), (10, 10, 0.7225), (0, 10, 0.0), (50, 100, 0.4038), (81, 263, 0.2553)] {
            let got = wilson_lower(pos, n, Z95);
            assert!((got - want).abs() < 5e-4, "{pos}/{n}: {got} vs {want}");
        }
        assert_eq!(wilson_lower(0, 0, Z95), 0.0);
    }

    #[test]
    fn uncertainty_is_high_with_few_or_negative_ratings() {
        let agg = |pos: u64, n: u64| RatingAgg { ratings: n, positive: pos, ..Default::default() };
        assert!(agg(3, 3).uncertainty() > 0.4, "3 of 3 is not yet certain");
        assert!(agg(950, 1000).uncertainty() < 0.07);
        assert!(agg(200, 1000).uncertainty() > 0.75);
        let s = RatingAgg { ratings: 10, positive: 8, decisions: 4, predicted_sum: 1.2 }.stats();
        assert!((s.predicted_mean.unwrap() - 0.3).abs() < 1e-12);
        assert!((s.calibration_gap.unwrap() - (s.uncertainty - 0.3)).abs() < 1e-12);
        assert_eq!(RatingAgg::default().stats().predicted_mean, None);
    }

    proptest! {
        #[test]
        fn bound_is_below_the_rate_and_tightens_with_evidence(pos in 0u64..1000, extra in 0u64..1000) {
            let n = pos + extra;
            prop_assume!(n > 0);
            let l = wilson_lower(pos, n, Z95);
            prop_assert!((0.0..=1.0).contains(&l));
            prop_assert!(l <= pos as f64 / n as f64 + 1e-12);
            // Ten times the evidence at the same rate: a higher lower bound.
            prop_assert!(wilson_lower(pos * 10, n * 10, Z95) >= l - 1e-12);
        }
    }
}
