//! A partition that cannot advance. librdkafka retries a batch it cannot
//! read (corrupt, or compressed with a codec it lacks) forever, reporting
//! each failure without saying which partition; the runner would see only
//! errors. Its statistics say which: a partition with records waiting whose
//! fetch position has not moved for `after` while consume errors came is
//! stuck (a merely slow or paused partition sees no consume errors). Pure:
//! the runner feeds it statistics and errors, and reports what it says in
//! `/readyz` and the logs.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How long a partition with waiting records may make no progress, while
/// consume errors come, before it is called stuck.
pub const STUCK_AFTER: Duration = Duration::from_secs(20);

#[derive(Debug)]
struct Watch {
    /// (application offset, next fetch offset) when last seen moving.
    position: (i64, i64),
    since: Instant,
    /// Consume errors counted when it last moved.
    errors_then: u64,
}

#[derive(Debug)]
pub struct Stalls {
    after: Duration,
    parts: BTreeMap<(String, i32), Watch>,
    errors: u64,
    last_error: Option<String>,
    detail: Option<String>,
}

/// The records waiting on a partition, from the broker's end offset: what
/// is stored (durable), else committed, else the fetch position, else the
/// log start. Negative offsets are librdkafka's "none".
pub fn lag(hi: i64, stored: i64, committed: i64, next: i64, lo: i64) -> Option<i64> {
    if hi < 0 {
        return None;
    }
    let base = [stored, committed, next, lo].into_iter().find(|o| *o >= 0)?;
    Some((hi - base).max(0))
}

impl Stalls {
    pub fn new(after: Duration) -> Stalls {
        Stalls { after, parts: BTreeMap::new(), errors: 0, last_error: None, detail: None }
    }

    /// A consume error from the poll (librdkafka does not say whose).
    pub fn consume_error(&mut self, error: String) {
        self.errors += 1;
        self.last_error = Some(error);
    }

    /// librdkafka's own words on the last unreadable batch (which says the
    /// codec and the offset, but not the partition).
    pub fn detail(&mut self, detail: String) {
        self.detail = Some(detail);
    }

    /// One partition's statistics at `now`.
    pub fn observe(&mut self, topic: &str, partition: i32, position: (i64, i64), waiting: i64, now: Instant) {
        let errors = self.errors;
        let w = self.parts.entry((topic.to_string(), partition)).or_insert(Watch {
            position,
            since: now,
            errors_then: errors,
        });
        if w.position != position || waiting <= 0 {
            *w = Watch { position, since: now, errors_then: errors };
        }
    }

    /// Forgets partitions no longer assigned.
    pub fn retain(&mut self, assigned: impl Fn(&str, i32) -> bool) {
        self.parts.retain(|(t, p), _| assigned(t, *p));
    }

    /// What is stuck at `now`, one line per partition (empty: nothing).
    pub fn stuck(&self, now: Instant) -> Vec<String> {
        self.parts
            .iter()
            .filter(|(_, w)| now.duration_since(w.since) >= self.after && self.errors > w.errors_then)
            .map(|((t, p), w)| {
                format!(
                    "{t}[{p}] has not moved past offset {} for {}s while records wait and {} consume errors came \
                     (last: {}); a batch the client cannot read (corrupt, or an unsupported compression codec)",
                    w.position.1.max(w.position.0),
                    now.duration_since(w.since).as_secs(),
                    self.errors - w.errors_then,
                    self.detail.as_deref().or(self.last_error.as_deref()).unwrap_or("?")
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_counts_from_the_broker_end_even_before_anything_was_consumed() {
        assert_eq!(lag(20, -1001, -1001, 0, 0), Some(20), "the first batch unreadable: all 20 wait");
        assert_eq!(lag(20, 15, 10, 17, 0), Some(5), "what is stored counts");
        assert_eq!(lag(20, -1001, 12, 17, 0), Some(8));
        assert_eq!(lag(-1, 0, 0, 0, 0), None, "no end offset known yet");
    }

    #[test]
    fn only_a_partition_that_sees_errors_and_no_progress_is_stuck() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(30);
        let mut s = Stalls::new(Duration::from_secs(20));
        s.observe("t", 0, (-1001, 0), 20, t0);
        s.observe("t", 1, (5, 5), 10, t0);
        s.observe("t", 2, (9, 9), 0, t0);
        // Partition 1 moves, partition 2 has nothing waiting, partition 0 is still.
        s.observe("t", 1, (8, 8), 7, later);
        s.observe("t", 0, (-1001, 0), 20, later);
        s.observe("t", 2, (9, 9), 0, later);
        assert!(s.stuck(later).is_empty(), "no consume error: paused or slow, not stuck");
        s.consume_error("Message consumption error: BadCompression".into());
        let stuck = s.stuck(later);
        assert_eq!(stuck.len(), 1, "{stuck:?}");
        assert!(stuck[0].starts_with("t[0] has not moved past offset 0") && stuck[0].contains("BadCompression"));
        s.observe("t", 0, (-1001, 5), 15, later + Duration::from_secs(1));
        assert!(s.stuck(later + Duration::from_secs(2)).is_empty(), "it moved");
        s.retain(|_, p| p != 0);
        let much_later = later + Duration::from_secs(60);
        s.observe("t", 1, (9, 9), 6, much_later);
        s.observe("t", 2, (9, 9), 0, much_later);
        assert!(s.stuck(much_later).is_empty(), "a revoked partition is forgotten, moving ones are fine");
    }
}
