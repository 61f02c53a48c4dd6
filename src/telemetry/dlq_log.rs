//! The DLQ's log lines, bounded: per pipeline, partition and class, the
//! first dead letter of an interval is logged in full and the rest are
//! counted into one summary line when the interval ends (a replay behind
//! the watermark once logged 136,333 WARN lines, one per late record). Every
//! record still goes to the DLQ and into `udo_dlq_records_total`.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long the records after the first of a key are summed up.
pub const INTERVAL: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    pub pipeline: &'static str,
    pub topic: String,
    pub partition: i32,
    pub class: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub key: Key,
    /// Records after the logged first one.
    pub more: u64,
    pub first_offset: i64,
    pub last_offset: i64,
    pub over: Duration,
}

struct Open {
    since: Instant,
    more: u64,
    first_offset: i64,
    last_offset: i64,
}

/// The aggregation, without a clock or a logger of its own.
#[derive(Default)]
pub struct DlqLog {
    open: HashMap<Key, Open>,
}

impl DlqLog {
    /// A dead letter at `now`: `true` when it is to be logged in full (the
    /// first of its key in an interval); the summaries of intervals that
    /// ended go to `ended`.
    pub fn record(&mut self, key: Key, offset: i64, now: Instant, ended: &mut Vec<Summary>) -> bool {
        self.due(now, ended);
        match self.open.get_mut(&key) {
            Some(o) => {
                o.more += 1;
                o.last_offset = offset;
                false
            }
            None => {
                self.open.insert(key, Open { since: now, more: 0, first_offset: offset, last_offset: offset });
                true
            }
        }
    }

    /// Closes the intervals older than [`INTERVAL`]; those that counted
    /// records beyond the first give a summary.
    pub fn due(&mut self, now: Instant, ended: &mut Vec<Summary>) {
        let expired: Vec<Key> =
            self.open.iter().filter(|(_, o)| now.duration_since(o.since) >= INTERVAL).map(|(k, _)| k.clone()).collect();
        for key in expired {
            let o = self.open.remove(&key).expect("expired key");
            if o.more > 0 {
                ended.push(Summary {
                    key,
                    more: o.more,
                    first_offset: o.first_offset,
                    last_offset: o.last_offset,
                    over: now.duration_since(o.since),
                });
            }
        }
    }
}

fn global() -> &'static Mutex<DlqLog> {
    static LOG: OnceLock<Mutex<DlqLog>> = OnceLock::new();
    LOG.get_or_init(Default::default)
}

fn log_summaries(ended: &[Summary]) {
    for s in ended {
        tracing::warn!(
            pipeline = s.key.pipeline,
            topic = %s.key.topic,
            partition = s.key.partition,
            class = %s.key.class,
            "{} more sent to the DLQ in {:.0?} (offsets {}..={}; the DLQ's headers say why)",
            super::count(s.more, "record"),
            s.over,
            s.first_offset,
            s.last_offset
        );
    }
}

/// A dead letter: whether to log it in full (summaries due are logged).
pub fn record(key: Key, offset: i64) -> bool {
    let mut ended = Vec::new();
    let full = global().lock().expect("dlq log lock").record(key, offset, Instant::now(), &mut ended);
    log_summaries(&ended);
    full
}

/// Logs the summaries of intervals that ended (the runner calls it between batches).
pub fn flush_due() {
    let mut ended = Vec::new();
    global().lock().expect("dlq log lock").due(Instant::now(), &mut ended);
    log_summaries(&ended);
}

/// Logs every summary still open (at shutdown).
pub fn flush_all() {
    let mut ended = Vec::new();
    global().lock().expect("dlq log lock").due(Instant::now() + INTERVAL, &mut ended);
    log_summaries(&ended);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(partition: i32, class: &str) -> Key {
        Key { pipeline: "analyze", topic: "udo.latency.v1".into(), partition, class: class.into() }
    }

    #[test]
    fn the_first_of_an_interval_is_logged_and_the_rest_summed_up_once() {
        let mut log = DlqLog::default();
        let t0 = Instant::now();
        let mut ended = Vec::new();
        assert!(log.record(key(0, "late"), 10, t0, &mut ended));
        for off in 11..1000 {
            assert!(!log.record(key(0, "late"), off, t0 + Duration::from_millis(off as u64), &mut ended));
        }
        // Another partition and another class are keys of their own.
        assert!(log.record(key(1, "late"), 5, t0, &mut ended));
        assert!(log.record(key(0, "invalid"), 6, t0, &mut ended));
        assert!(ended.is_empty());
        log.due(t0 + INTERVAL, &mut ended);
        assert_eq!(ended.len(), 1, "only the key with more than one record: {ended:?}");
        assert_eq!((ended[0].more, ended[0].first_offset, ended[0].last_offset), (989, 10, 999));
        // The next interval starts with a full line again.
        assert!(log.record(key(0, "late"), 1000, t0 + INTERVAL, &mut ended));
    }
}
