//! librdkafka reports every transient condition it recovers from by itself
//! (a coordinator still loading, a dropped connection, a request timing
//! out) as a warning. An operator cannot act on those, so they stay out of
//! the log unless the same condition persists: then one line, and again at
//! most once a minute while it lasts. `UDO_LOG=debug` shows them all.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, Layer};

/// Message fragments of conditions librdkafka retries by itself.
const TRANSIENT: &[&str] = &[
    "Coordinator load in progress",
    "Coordinator not available",
    "Not coordinator",
    "Disconnected",
    "Connection refused",
    "Broker transport failure",
    "Timed out",
    "timed out",
    "all broker connections are down",
    "Failed to resolve",
    "Connection reset",
];

/// A condition seen for this long without a break of `GAP` persists.
const PERSISTS: Duration = Duration::from_secs(30);
const GAP: Duration = Duration::from_secs(10);
const REPEAT: Duration = Duration::from_secs(60);

/// One condition: first and last seen in the current stretch, last shown.
type Stretch = (Instant, Instant, Option<Instant>);

#[derive(Default)]
pub struct QuietLibrdkafka {
    verbose: bool,
    seen: Mutex<HashMap<&'static str, Stretch>>,
}

impl QuietLibrdkafka {
    pub fn new(verbose: bool) -> Self {
        QuietLibrdkafka { verbose, seen: Mutex::default() }
    }

    /// Whether a librdkafka line about `condition` is shown at `now`.
    fn show(&self, condition: &'static str, now: Instant) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let entry = seen.entry(condition).or_insert((now, now, None));
        if now.duration_since(entry.1) > GAP {
            *entry = (now, now, None); // a new stretch
        }
        entry.1 = now;
        let persists = now.duration_since(entry.0) >= PERSISTS;
        if persists && entry.2.is_none_or(|shown| now.duration_since(shown) >= REPEAT) {
            entry.2 = Some(now);
            return true;
        }
        false
    }
}

#[derive(Default)]
struct Fields {
    message: String,
    target: String,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message = value.to_string(),
            "log.target" => self.target = value.to_string(),
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => self.message = format!("{value:?}"),
            "log.target" => self.target = format!("{value:?}"),
            _ => {}
        }
    }
}

impl<S: tracing::Subscriber> Layer<S> for QuietLibrdkafka {
    fn event_enabled(&self, event: &tracing::Event<'_>, _: Context<'_, S>) -> bool {
        if self.verbose {
            return true;
        }
        let mut f = Fields::default();
        event.record(&mut f);
        // Lines from the `log` crate carry their target as a field.
        let target = if f.target.is_empty() { event.metadata().target() } else { f.target.as_str() };
        if !target.contains("librdkafka") && !f.message.starts_with("librdkafka:") {
            return true;
        }
        match TRANSIENT.iter().find(|t| f.message.contains(*t)) {
            Some(condition) => self.show(condition, Instant::now()),
            None => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transient_condition_shows_only_once_it_persists_then_once_a_minute() {
        let q = QuietLibrdkafka::new(false);
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert!(!q.show("Disconnected", at(0)));
        assert!(!q.show("Disconnected", at(8)));
        // A break longer than the gap starts a new stretch.
        assert!(!q.show("Disconnected", at(25)));
        assert!(!q.show("Disconnected", at(33)));
        assert!(!q.show("Disconnected", at(41)));
        assert!(!q.show("Disconnected", at(49)));
        assert!(q.show("Disconnected", at(57)), "persisted 32 s");
        assert!(!q.show("Disconnected", at(65)));
        let mut t = 65;
        while t < 112 {
            t += 5;
            assert!(!q.show("Disconnected", at(t)), "within the minute at {t}");
        }
        assert!(q.show("Disconnected", at(122)), "again a minute later");
        assert!(!q.show("Coordinator load in progress", at(122)), "conditions are apart");
    }
}
