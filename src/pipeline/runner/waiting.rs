//! Retry while polling: after a failed step the assignment is paused and
//! the consumer is still polled while the backoff runs, so a store outage
//! longer than `max.poll.interval.ms` does not cost the group its member,
//! and rebalances are served meanwhile (newly assigned partitions wait
//! with the others). Records that arrive are held for the next batch.

use super::{Record, Runner, Stage};
use crate::error::{Error, Result};
use crate::pipeline::commit::Committer;
use crate::telemetry::events::{ErrorCounted, SinkRecovered, SinkRetry};
use rdkafka::consumer::Consumer;
use std::time::{Duration, Instant};

/// How a retried step ended.
pub(super) enum Flow<T> {
    Done(T),
    /// Shutdown came during the retries: nothing was stored.
    Shutdown,
}

impl<'c, S: Stage, K: Committer> Runner<'c, S, K> {
    /// After a failed step: count it; stop on a `Stop` hint; else pause the
    /// assignment (once per outage) and wait out the backoff while polling.
    pub(super) fn wait(&mut self, step: &'static str, e: Error, held: &mut Vec<Record<'c>>) -> Result<Flow<()>> {
        let pipeline = self.cfg.pipeline;
        ErrorCounted { pipeline, step, error: &e }.emit();
        if self.paused.is_none() {
            let tpl = self.consumer.assignment().unwrap_or_default();
            if let Err(pe) = self.consumer.pause(&tpl) {
                tracing::warn!(pipeline, "pause: {pe}");
            }
            self.paused = Some((tpl, self.cfg.retry.start()));
        }
        let retrying = &mut self.paused.as_mut().expect("paused").1;
        let Some(delay) = retrying.next_delay(&e) else {
            let e = self.committer.fatal_error().unwrap_or(e);
            tracing::error!(pipeline, step, "stopping: retrying cannot help: {e}");
            return Err(e);
        };
        let attempt = retrying.attempts();
        self.readiness.set(&format!("{pipeline}.sinks"), Err(format!("{}: {e}", e.class())));
        SinkRetry { pipeline, sink: e.class(), attempt, delay, error: &e.to_string() }.emit();
        let until = Instant::now() + delay;
        let mut generation = self.generation();
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if self.shutdown.requested() {
                return Ok(Flow::Shutdown);
            }
            if left.is_zero() {
                return Ok(Flow::Done(()));
            }
            // Polling keeps the member in the group and serves rebalances.
            match self.consumer.poll(left.min(Duration::from_millis(50))) {
                Some(Ok(m)) => held.push(m),
                Some(Err(err)) => self.consume_error(err),
                None => {}
            }
            let now = self.generation();
            if now != generation {
                // Newly assigned partitions wait with the others.
                generation = now;
                let tpl = self.consumer.assignment().unwrap_or_default();
                if let Err(pe) = self.consumer.pause(&tpl) {
                    tracing::warn!(pipeline, "pause: {pe}");
                }
                if let Some((paused, _)) = &mut self.paused {
                    *paused = tpl;
                }
            }
        }
    }

    /// A consume error: counted, and remembered for telling a stuck partition.
    pub(super) fn consume_error(&self, e: rdkafka::error::KafkaError) {
        let e = Error::kafka("consume")(e);
        ErrorCounted { pipeline: self.cfg.pipeline, step: "consume", error: &e }.emit();
        self.consumer.context().stalls.lock().expect("stalls lock").0.consume_error(e.to_string());
    }

    /// The step succeeded: resume fetching if it had been paused.
    pub(super) fn recovered(&mut self) {
        if let Some((paused, retrying)) = &self.paused {
            let pipeline = self.cfg.pipeline;
            // Resume the assignment as it is now (a rebalance may have
            // changed it) and whatever was paused and since revoked.
            let mut tpl = self.consumer.assignment().unwrap_or_default();
            for e in paused.elements() {
                if tpl.find_partition(e.topic(), e.partition()).is_none() {
                    tpl.add_partition(e.topic(), e.partition());
                }
            }
            if let Err(e) = self.consumer.resume(&tpl) {
                tracing::warn!(pipeline, "resume: {e}");
            }
            SinkRecovered { pipeline, sink: "all", attempts: retrying.attempts() + 1, outage: retrying.outage() }
                .emit();
            self.readiness.set(&format!("{pipeline}.sinks"), Ok(()));
            self.paused = None;
        }
    }

    /// `step` under the one policy, waiting while polling between attempts.
    pub(super) fn retried<T>(
        &mut self,
        step: &'static str,
        held: &mut Vec<Record<'c>>,
        mut attempt: impl FnMut(&mut Self) -> Result<T>,
    ) -> Result<Flow<T>> {
        loop {
            match attempt(self) {
                Ok(v) => return Ok(Flow::Done(v)),
                Err(e) => {
                    if let Flow::Shutdown = self.wait(step, e, held)? {
                        return Ok(Flow::Shutdown);
                    }
                }
            }
        }
    }
}
