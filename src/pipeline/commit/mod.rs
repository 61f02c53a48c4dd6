//! The delivery guarantee, as a strategy the runner is given: how the
//! offsets a stage made durable become the group's, what a revoked
//! partition owes, and what a failed step costs.
//!
//! - [`GroupCommit`] (at-least-once with idempotent effects): offsets are
//!   stored once the stage's effects are durable and librdkafka commits
//!   them; a revoke commits what the partition owes synchronously; a failed
//!   step retries the same batch.
//! - [`Transactional`] (exactly-once, Kafka Streams' `exactly_once_v2`):
//!   outputs, dead letters, state and input offsets commit in one Kafka
//!   transaction at each checkpoint; a failed step aborts it and the runner
//!   rewinds to the last commit.
//!
//! The runner calls the same methods either way and never asks which one it
//! has (design §6).

mod group;
mod transactional;

pub use group::GroupCommit;
pub use transactional::{Transactional, commit_stats};

use super::batch::{Offsets, Tp};
use crate::config::KafkaConfig;
use crate::error::{Error, Result};
use crate::sinks::dlq::Dlq;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, ConsumerContext};

/// What became of the work since the last commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Durable, or nothing was pending.
    Committed,
    /// Discarded (a transaction aborted): the runner rewinds the stage and
    /// every assigned partition to the last commit.
    Aborted,
}

/// What a step that failed costs, once its backoff is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// Nothing was made durable or visible: the same batch is tried again.
    RetryBatch,
    /// Part of the work may be in an open transaction that must never
    /// commit: abort it ([`Committer::abort`]) and rewind.
    AbortAndRewind,
}

pub trait Committer: Send + Sync + 'static {
    /// Consumer settings the guarantee rests on.
    fn configure(&self, _client: &mut ClientConfig) {}

    /// Before the first poll (registering a transactional id).
    fn init(&self) -> Result<()> {
        Ok(())
    }

    /// The producer the runner's dead letters go through (a transactional
    /// one puts them in the same transaction as the offsets they gate).
    fn dlq(&self, kafka: &KafkaConfig, topic: String, pipeline: &'static str) -> Result<Dlq>;

    /// Offsets whose effects the stage made durable. `assigned` tells the
    /// partitions this member still owns.
    fn store<C: ConsumerContext>(&self, consumer: &BaseConsumer<C>, offsets: &Offsets, assigned: &dyn Fn(&Tp) -> bool);

    /// The stage checkpointed (its tick returned offsets).
    fn checkpoint<C: ConsumerContext>(&self, consumer: &BaseConsumer<C>) -> Result<Outcome>;

    /// In the rebalance callback, before `parts` go: commit what they owe
    /// (`offsets`: the stage's last word on them), or discard it when the
    /// assignment was `lost` (another member owns them already).
    fn revoke<C: ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        parts: &[Tp],
        offsets: Offsets,
        lost: bool,
    ) -> Result<Outcome>;

    /// After a failed step's backoff: retry the batch, or abort and rewind.
    fn recovery(&self) -> Recovery {
        Recovery::RetryBatch
    }

    /// Discards the work since the last commit (a [`Recovery::AbortAndRewind`]).
    fn abort(&self) -> Result<()> {
        Ok(())
    }

    /// The error to stop with when a send failed for a reason only the
    /// producer knows (a fenced transactional producer says just "Fatal").
    fn fatal_error(&self) -> Option<Error> {
        None
    }

    /// Shutdown: the last commit, with whatever was stored last.
    fn finish<C: ConsumerContext>(&self, consumer: &BaseConsumer<C>) -> Result<()>;
}
