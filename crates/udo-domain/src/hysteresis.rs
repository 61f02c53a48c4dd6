//! A two-state machine with hysteresis: it enters after `enter_windows`
//! consecutive windows meet the enter condition and leaves after
//! `exit_windows` consecutive windows meet the (stricter) exit condition.
//! Degradation, alerts and store promotion all have this shape (design §4).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Hysteresis {
    pub active: bool,
    /// Consecutive windows meeting the condition that would flip the state.
    pub streak: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Became active; `after` windows in a row met the enter condition.
    Entered {
        after: u32,
    },
    Exited {
        after: u32,
    },
}

impl Hysteresis {
    /// Feeds one evaluated window. Windows meeting neither condition reset
    /// the streak, so only *consecutive* evidence flips the state.
    pub fn step(&mut self, enter: bool, exit: bool, enter_windows: u32, exit_windows: u32) -> Option<Transition> {
        let (cond, needed) = if self.active { (exit, exit_windows) } else { (enter, enter_windows) };
        if !cond {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        if self.streak < needed.max(1) {
            return None;
        }
        let after = self.streak;
        self.streak = 0;
        self.active = !self.active;
        Some(if self.active { Transition::Entered { after } } else { Transition::Exited { after } })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Degradation shape: enter above 200 for 2 windows, exit below 160 for 3.
    fn run(values: &[f64]) -> Vec<(usize, Transition)> {
        let mut h = Hysteresis::default();
        values.iter().enumerate().filter_map(|(i, &v)| h.step(v > 200.0, v < 160.0, 2, 3).map(|t| (i, t))).collect()
    }

    #[test]
    fn enters_after_two_and_exits_after_three_consecutive_windows() {
        let t = run(&[100.0, 250.0, 250.0, 250.0, 150.0, 150.0, 150.0, 150.0]);
        assert_eq!(t, vec![(2, Transition::Entered { after: 2 }), (6, Transition::Exited { after: 3 })]);
        // Broken streaks do not count.
        assert!(run(&[250.0, 100.0, 250.0, 100.0, 250.0]).is_empty());
    }

    #[test]
    fn a_signal_oscillating_around_one_threshold_does_not_flap() {
        let mut v = vec![250.0, 250.0];
        v.extend((0..100).map(|i| if i % 2 == 0 { 190.0 } else { 210.0 }));
        assert_eq!(run(&v).len(), 1, "entered once, never left between 160 and 200");
    }

    proptest! {
        #[test]
        fn transitions_alternate_and_need_their_streaks(values in proptest::collection::vec(100f64..300.0, 0..200)) {
            let t = run(&values);
            for (k, (i, tr)) in t.iter().enumerate() {
                let want_enter = k % 2 == 0;
                prop_assert_eq!(matches!(tr, Transition::Entered { .. }), want_enter);
                let (n, ok): (usize, fn(f64) -> bool) = if want_enter { (2, |v| v > 200.0) } else { (3, |v| v < 160.0) };
                prop_assert!(*i + 1 >= n && values[i + 1 - n..=*i].iter().all(|&v| ok(v)));
            }
        }
    }
}
