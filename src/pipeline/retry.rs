//! The one retry policy of every pipeline step, driven by the error's retry
//! hint (`Error::retry`): a transient failure is retried after exponential
//! backoff with jitter, `min_delay` to `max_delay`; anything else stops the
//! pipeline with its message. `max_attempts` bounds it for finite jobs
//! (`replay`); the live pipelines never give up on an outage, because
//! skipping would lose records. The waiting itself is the caller's (the
//! runner polls the consumer meanwhile, so the group keeps its member).

use crate::error::{Error, Retry};
use backon::{BackoffBuilder, ExponentialBuilder};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub min_delay: Duration,
    pub max_delay: Duration,
    /// `None`: retry transient failures for as long as they last.
    pub max_attempts: Option<u32>,
}

impl RetryPolicy {
    pub fn new(min_delay: Duration, max_delay: Duration) -> RetryPolicy {
        RetryPolicy { min_delay, max_delay, max_attempts: None }
    }

    /// The policy the settings give (`materialize.retry_min_delay` and
    /// `retry_max_delay`): every retry of every pipeline uses it.
    pub fn of(settings: &crate::config::Settings) -> RetryPolicy {
        RetryPolicy::new(settings.materialize.retry_min_delay, settings.materialize.retry_max_delay)
    }

    pub fn with_max_attempts(self, attempts: u32) -> RetryPolicy {
        RetryPolicy { max_attempts: Some(attempts), ..self }
    }

    /// Starts retrying one failing step.
    pub fn start(&self) -> Retrying {
        let delays = ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_jitter()
            .without_max_times()
            .build();
        Retrying { policy: *self, delays: Box::new(delays), attempt: 0, since: Instant::now() }
    }
}

/// One failing step: how many attempts failed, since when, and the next delay.
pub struct Retrying {
    policy: RetryPolicy,
    delays: Box<dyn Iterator<Item = Duration> + Send>,
    attempt: u32,
    since: Instant,
}

impl std::fmt::Debug for Retrying {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Retrying").field("attempt", &self.attempt).field("since", &self.since).finish()
    }
}

impl Retrying {
    /// After a failed attempt: the delay before the next one, or `None`
    /// when the error says retrying cannot help or the attempts are spent.
    pub fn next_delay(&mut self, e: &Error) -> Option<Duration> {
        self.attempt += 1;
        if e.retry() == Retry::Stop || self.policy.max_attempts.is_some_and(|max| self.attempt >= max) {
            return None;
        }
        Some(self.delays.next().unwrap_or(self.policy.max_delay))
    }

    /// Failed attempts so far.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Time since the first failure.
    pub fn outage(&self) -> Duration {
        self.since.elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outage() -> Error {
        Error::Unavailable("store down".into())
    }

    #[test]
    fn transient_errors_back_off_within_bounds_and_bugs_stop_at_once() {
        let policy = RetryPolicy::new(Duration::from_millis(10), Duration::from_millis(80));
        let mut r = policy.start();
        for _ in 0..50 {
            let d = r.next_delay(&outage()).expect("an outage is retried");
            assert!(d <= Duration::from_millis(160), "{d:?} (max plus jitter)");
        }
        assert_eq!(r.attempts(), 50);
        let mut r = policy.start();
        assert_eq!(r.next_delay(&Error::Internal("broken invariant".into())), None);
        assert_eq!(r.next_delay(&Error::Config("bad".into())), None);
    }

    #[test]
    fn a_bounded_policy_gives_up() {
        let mut r = RetryPolicy::new(Duration::from_millis(1), Duration::from_millis(2)).with_max_attempts(3).start();
        assert!(r.next_delay(&outage()).is_some());
        assert!(r.next_delay(&outage()).is_some());
        assert_eq!(r.next_delay(&outage()), None);
    }
}
