//! Where a point in time starts in a partition: the first offset whose
//! record timestamp is at or after it, found by binary search over probes
//! of single records. Brokers answer this themselves (ListOffsets by
//! timestamp), but not every Kafka-compatible one answers it right (the
//! local stack's answers every time with the log start), so `replay` asks
//! the records. Timestamps are assumed not to go back within a partition,
//! which holds for broker (LogAppend) time and, up to producer clock skew,
//! for create time: the same assumption Kafka's own time index makes.

/// One partition's search for the first offset in `lo..hi` whose record's
/// timestamp is `>= ts` (`hi` when there is none), driven by probes: ask
/// [`next_probe`](Self::next_probe), read the first record at or after that
/// offset, tell [`observe`](Self::observe). A driver can run the searches of
/// many partitions in lockstep, one fetch round per step. About
/// log2(hi − lo) probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Search {
    lo: i64,
    hi: i64,
    ts: i64,
}

impl Search {
    pub fn new(lo: i64, hi: i64, ts: i64) -> Search {
        Search { lo, hi: hi.max(lo), ts }
    }

    /// The offset to probe next, or `None` once the answer is known.
    pub fn next_probe(&self) -> Option<i64> {
        (self.lo < self.hi).then(|| self.lo + (self.hi - self.lo) / 2)
    }

    /// What the probe of `probed` found: the first record at or after it as
    /// (its offset, its timestamp), or `None` when there is none before the
    /// end (compacted or aborted offsets leave gaps).
    pub fn observe(&mut self, probed: i64, first: Option<(i64, i64)>) {
        match first {
            // Everything up to that record is earlier than `ts`.
            Some((at, t)) if at < self.hi && t < self.ts => self.lo = at + 1,
            // The answer is that record or an earlier one; offsets between
            // `probed` and it hold no record, so `probed` stands for it.
            _ => self.hi = probed,
        }
    }

    /// The answer, once [`next_probe`](Self::next_probe) is `None`.
    pub fn result(&self) -> Option<i64> {
        (self.lo >= self.hi).then_some(self.lo)
    }
}

/// A whole search with a synchronous probe (see [`Search`]).
pub fn first_at_or_after<E>(
    lo: i64,
    hi: i64,
    ts: i64,
    mut probe: impl FnMut(i64) -> Result<Option<(i64, i64)>, E>,
) -> Result<i64, E> {
    let mut s = Search::new(lo, hi, ts);
    while let Some(at) = s.next_probe() {
        s.observe(at, probe(at)?);
    }
    Ok(s.result().unwrap_or(hi))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A partition as (offset, timestamp) records, offsets increasing.
    fn probe_of(log: &[(i64, i64)], hi: i64) -> impl FnMut(i64) -> Result<Option<(i64, i64)>, ()> + '_ {
        move |off| Ok(log.iter().copied().find(|&(o, _)| o >= off && o < hi))
    }

    #[test]
    fn finds_the_first_record_at_or_after_a_time() {
        let log: Vec<(i64, i64)> = (0..10).map(|o| (o, 1000 + o * 10)).collect();
        assert_eq!(first_at_or_after(0, 10, 1000, probe_of(&log, 10)), Ok(0));
        assert_eq!(first_at_or_after(0, 10, 1031, probe_of(&log, 10)), Ok(4));
        assert_eq!(first_at_or_after(0, 10, 1040, probe_of(&log, 10)), Ok(4));
        assert_eq!(first_at_or_after(0, 10, 9999, probe_of(&log, 10)), Ok(10), "after the end: hi");
        assert_eq!(first_at_or_after(5, 5, 0, probe_of(&log, 5)), Ok(5), "empty range");
    }

    #[test]
    fn probe_errors_are_returned() {
        assert_eq!(first_at_or_after(0, 10, 5, |_| Err::<Option<(i64, i64)>, _>("down")), Err("down"));
    }

    proptest! {
        /// Against a linear scan, over logs with gaps (compaction) and
        /// repeated timestamps; the number of probes stays logarithmic.
        #[test]
        fn matches_a_linear_scan(
            steps in proptest::collection::vec((1i64..4, 0i64..3), 0..200),
            start in 0i64..50, ts in 0i64..700,
        ) {
            let mut log = Vec::new();
            let (mut o, mut t) = (start, 0);
            for (gap, dt) in steps {
                log.push((o, t));
                o += gap;
                t += dt;
            }
            let hi = o;
            let want = log.iter().find(|&&(_, t)| t >= ts).map_or(hi, |&(o, _)| o);
            let mut probes = 0;
            let mut probe = probe_of(&log, hi);
            let got = first_at_or_after(start, hi, ts, |off| { probes += 1; probe(off) }).unwrap();
            // With gaps, `want`'s record may sit after offsets that hold
            // nothing; any offset in that gap starts at the same record.
            let first_from = |from: i64| log.iter().find(|&&(o, _)| o >= from).map(|&(o, _)| o).unwrap_or(hi);
            prop_assert_eq!(first_from(got), want);
            prop_assert!(probes <= 64 - (hi - start).max(1).leading_zeros() as i64 + 1, "{} probes", probes);
        }
    }
}
