//! Exactly-once: the transactional committer (Kafka Streams'
//! `exactly_once_v2`, KIP-447). One transaction holds a commit interval's
//! outputs, dead letters and changelog records (all produced through the
//! member's transactional producer) and the input offsets they cover
//! (`send_offsets_to_transaction` with the consumer's group metadata, so a
//! member of an older generation, a zombie, is fenced by the coordinator).
//!
//! librdkafka's error classes are handled as its `examples/transactions.c`
//! does: a retriable error repeats the step that failed; one that requires
//! an abort aborts the transaction, and the caller rewinds its consumer and
//! state to the last commit; a fatal one (a producer fenced by a newer
//! instance with the same transactional id) ends the pipeline.

use super::{Committer, Outcome, Recovery, Tp};
use crate::config::KafkaConfig;
use crate::error::{Error, Result};
use crate::pipeline::batch::Offsets;
use crate::pipeline::retry::RetryPolicy;
use crate::shutdown::Shutdown;
use crate::sinks::dlq::Dlq;
use crate::sinks::kafka::TxnProducer;
use crate::telemetry::events::{ErrorCounted, TransactionCommitted};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::Producer;
use rdkafka::{Offset, TopicPartitionList};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(30);
/// How long a transactional call may block before the producer counts as
/// wedged (its own timeout, plus slack).
const WEDGED: Duration = Duration::from_secs(45);
/// Once shutdown is asked for, how much longer a call may block: the process
/// exits within design §6's 30 s even when librdkafka is wedged.
const WEDGED_AT_SHUTDOWN: Duration = Duration::from_secs(15);

/// Runs a blocking transactional call of librdkafka with a deadline of our
/// own: `send_offsets_to_transaction` (and with it the other calls that
/// wait for a coordinator) can block forever when the coordinator it cached
/// is gone, its timeout never checked (librdkafka #5456, #5511; seen after
/// a rolling restart of the cluster). Past [`WEDGED`] (or
/// [`WEDGED_AT_SHUTDOWN`] after shutdown was asked for) the producer counts
/// as fatally failed: the pipeline restarts with a new producer, whose
/// `init_transactions` fences this one, or at shutdown exits with the
/// transaction open, never committed; the helper thread is left to return
/// whenever librdkafka lets it.
fn bounded<T: Send + 'static>(
    what: &str,
    id: &str,
    shutdown: &Shutdown,
    call: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    bounded_by(what, id, shutdown, (WEDGED, WEDGED_AT_SHUTDOWN), call)
}

fn bounded_by<T: Send + 'static>(
    what: &str,
    id: &str,
    shutdown: &Shutdown,
    (wedged, wedged_at_shutdown): (Duration, Duration),
    call: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("udo-txn-call".into())
        .spawn(move || {
            let _ = tx.send(call());
        })
        .map_err(|e| Error::Internal(format!("spawn a thread for {what}: {e}")))?;
    let started = Instant::now();
    let mut shutdown_seen: Option<Instant> = None;
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(v) => return Ok(v),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Err(Error::Internal(format!("the thread running {what} ended without an answer")));
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
        if shutdown.requested() && shutdown_seen.is_none() {
            shutdown_seen = Some(Instant::now());
        }
        let waited = started.elapsed();
        let at_shutdown = shutdown_seen.is_some_and(|t| t.elapsed() >= wedged_at_shutdown);
        if waited >= wedged || at_shutdown {
            return Err(Error::ProducerFatal(format!(
                "exactly-once: {what} did not return within {}s (transactional id {id:?}; librdkafka lost its \
                 coordinator); the open transaction is never committed: a new producer with this id aborts it",
                waited.as_secs()
            )));
        }
    }
}

static COMMITS: AtomicU64 = AtomicU64::new(0);
static COMMIT_NANOS: AtomicU64 = AtomicU64::new(0);
static COMMIT_MAX_NANOS: AtomicU64 = AtomicU64::new(0);

/// Commits so far in this process, their total and longest duration (what
/// `bench analyze` reports as the latency exactly-once adds).
pub fn commit_stats() -> (u64, Duration, Duration) {
    (
        COMMITS.load(Ordering::Relaxed),
        Duration::from_nanos(COMMIT_NANOS.load(Ordering::Relaxed)),
        Duration::from_nanos(COMMIT_MAX_NANOS.load(Ordering::Relaxed)),
    )
}
/// Retriable errors (a coordinator moving, concurrent transactions) repeat
/// the step under the retry policy, at most this many times...
const ATTEMPTS: u32 = 20;
/// ...and for at most this long: the consumer is not polled meanwhile, so the
/// step must give up well inside `max.poll.interval.ms` (30 s). Then the
/// commit counts as failed and the runner's backoff, which polls, takes over
/// (abort and rewind); a retry that outlived the poll interval would cost the
/// member its place in the group and fence the producer.
const STEP_BUDGET: Duration = Duration::from_secs(10);

struct Txn {
    pipeline: &'static str,
    producer: TxnProducer,
    /// Backoff of a retriable step (a coordinator moving or loading).
    retry: RetryPolicy,
    /// A transaction is open (none after the final commit at shutdown).
    open: AtomicBool,
    shutdown: Shutdown,
}

fn failed(op: &str, id: &str, e: KafkaError) -> Error {
    if let KafkaError::Transaction(t) = &e {
        if t.is_fatal() {
            return fatal(id, t.code(), &e.to_string());
        }
    }
    Error::kafka(format!("{op} (transactional id {id})"))(e)
}

/// A fatal producer error: fencing by a newer instance with the same id
/// stops this one for good; any other (a transaction state the broker lost
/// in an outage) restarts the pipeline with a new producer.
fn fatal(id: &str, code: RDKafkaErrorCode, why: &str) -> Error {
    use RDKafkaErrorCode as C;
    match code {
        C::Fenced | C::ProducerFenced | C::InvalidProducerEpoch | C::TransactionalIdAuthorizationFailed => {
            fenced(id, why)
        }
        _ => Error::ProducerFatal(format!(
            "exactly-once: the transactional producer {id:?} failed fatally ({why}); the pipeline restarts with a \
             new one, which aborts the open transaction"
        )),
    }
}

fn fenced(id: &str, why: &str) -> Error {
    Error::Fenced(format!(
        "exactly-once: this instance was fenced ({why}): another instance runs with transactional id {id:?} \
         (analyze.transactional_id), or a transaction outlived transaction.timeout.ms; this instance stops, \
         the other carries on"
    ))
}

impl Txn {
    fn id(&self) -> &str {
        &self.producer.id
    }

    /// The producer's fatal error, if it has one (after which every send
    /// fails with a bare "Fatal"): the error to stop with.
    fn fatal_error(&self) -> Option<Error> {
        use rdkafka::producer::Producer;
        let (code, why) = self.producer.producer.client().fatal_error()?;
        Some(fatal(self.id(), code, &why))
    }

    /// Registers the transactional id (aborting whatever a crashed
    /// predecessor with the same id left open) and begins a transaction.
    /// The coordinator may be away (a restart during an outage): a retriable
    /// error is retried with backoff until it answers or shutdown.
    fn init(&self) -> Result<()> {
        let mut backoff = self.retry.start();
        loop {
            let producer = self.producer.producer.clone();
            let e = match bounded("init_transactions", self.id(), &self.shutdown, move || {
                producer.init_transactions(TIMEOUT)
            })? {
                Ok(()) => return self.begin(),
                Err(e) => e,
            };
            let retriable = matches!(&e, KafkaError::Transaction(t) if t.is_retriable() && !t.is_fatal());
            let e = failed("init transactions", self.id(), e);
            let delay = match backoff.next_delay(&e) {
                Some(delay) if retriable && !self.shutdown.requested() => delay,
                _ => return Err(e),
            };
            tracing::warn!(pipeline = self.pipeline, "exactly-once: retrying in {delay:?}: {e}");
            if self.shutdown.sleep(delay) {
                return Err(e);
            }
        }
    }

    fn begin(&self) -> Result<()> {
        self.producer.producer.begin_transaction().map_err(|e| failed("begin a transaction", self.id(), e))?;
        self.open.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Commits the open transaction with `offsets` for `consumer`'s group,
    /// then begins the next one unless `last`.
    fn commit<C: ConsumerContext>(&self, consumer: &BaseConsumer<C>, offsets: &Offsets, last: bool) -> Result<Outcome> {
        let p = &self.producer.producer;
        let id = self.id();
        if !self.open.load(Ordering::SeqCst) {
            if offsets.is_empty() {
                // After the final commit (a revoke while shutting down): nothing to do.
                return Ok(Outcome::Committed);
            }
            self.begin()?;
        }
        let mut tpl = TopicPartitionList::new();
        for (tp, off) in offsets {
            tpl.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(*off))
                .map_err(|e| failed("list the offsets to commit", id, e))?;
        }
        let started = Instant::now();
        let mut offsets_sent = tpl.count() == 0;
        let mut backoff = self.retry.with_max_attempts(ATTEMPTS).start();
        let outcome = loop {
            let producer = p.clone();
            let step = if offsets_sent {
                bounded("commit_transaction", id, &self.shutdown, move || producer.commit_transaction(TIMEOUT))?
            } else {
                let meta = consumer
                    .group_metadata()
                    .ok_or_else(|| Error::Internal("exactly-once needs a group member's metadata".into()))?;
                let offsets = tpl.clone();
                bounded("send_offsets_to_transaction", id, &self.shutdown, move || {
                    producer.send_offsets_to_transaction(&offsets, &meta, TIMEOUT)
                })?
            };
            let e = match step {
                Ok(()) if offsets_sent => break Outcome::Committed,
                Ok(()) => {
                    offsets_sent = true;
                    continue;
                }
                Err(e) => e,
            };
            match e {
                KafkaError::Transaction(e) if e.txn_requires_abort() => {
                    tracing::warn!(pipeline = self.pipeline, "transaction aborted ({e}); rewinding to the last commit");
                    let producer = p.clone();
                    let aborted =
                        bounded("abort_transaction", id, &self.shutdown, move || producer.abort_transaction(TIMEOUT))?
                            .map_err(|e| failed("abort the transaction", id, e));
                    match aborted {
                        Ok(()) => break Outcome::Aborted,
                        // The coordinator is away: the transaction stays open
                        // (never committed); the runner's next abort, after its
                        // backoff, resumes this one.
                        Err(e) if e.retry() == crate::error::Retry::Backoff => {
                            tracing::warn!(pipeline = self.pipeline, "the abort is retried later: {e}");
                            return Ok(Outcome::Aborted);
                        }
                        Err(e) => return Err(e),
                    }
                }
                KafkaError::Transaction(t) if t.is_retriable() => {
                    let e = failed("commit the transaction", id, KafkaError::Transaction(t));
                    let Some(delay) = backoff.next_delay(&e).filter(|d| started.elapsed() + *d <= STEP_BUDGET) else {
                        return Err(e);
                    };
                    tracing::debug!(pipeline = self.pipeline, "transaction step retried in {delay:?} ({e})");
                    std::thread::sleep(delay);
                }
                e => return Err(failed("commit the transaction", id, e)),
            }
        };
        let nanos = started.elapsed().as_nanos() as u64;
        COMMITS.fetch_add(1, Ordering::Relaxed);
        COMMIT_NANOS.fetch_add(nanos, Ordering::Relaxed);
        COMMIT_MAX_NANOS.fetch_max(nanos, Ordering::Relaxed);
        self.open.store(false, Ordering::SeqCst);
        if !last {
            self.begin()?;
        }
        Ok(outcome)
    }

    /// Aborts the open transaction (an assignment lost, a failed step) and
    /// begins the next. An abort that fails leaves it open: the next call
    /// aborts again.
    fn abort(&self) -> Result<()> {
        if self.open.load(Ordering::SeqCst) {
            let p = &self.producer.producer;
            let producer = p.clone();
            bounded("abort_transaction", self.id(), &self.shutdown, move || producer.abort_transaction(TIMEOUT))?
                .map_err(|e| failed("abort the transaction", self.id(), e))?;
            self.open.store(false, Ordering::SeqCst);
        }
        self.begin()
    }
}

/// The exactly-once committer: one transaction per checkpoint (the
/// analyzer's `commit_interval`) through the member's transactional
/// producer, which the stage's outputs and the runner's dead letters go
/// through too.
pub struct Transactional {
    txn: Txn,
    /// Offsets the next transaction commits.
    pending: std::sync::Mutex<std::collections::BTreeMap<Tp, i64>>,
}

impl Transactional {
    /// `retry`: the backoff of a transactional step the coordinator asks to
    /// repeat, and of registering the id while the coordinator is away.
    pub fn new(pipeline: &'static str, producer: TxnProducer, shutdown: Shutdown, retry: RetryPolicy) -> Self {
        let txn = Txn { pipeline, producer, retry, open: AtomicBool::new(false), shutdown };
        Transactional { txn, pending: Default::default() }
    }

    fn take_pending(&self, more: Offsets) -> Offsets {
        let mut pending = self.pending.lock().expect("pending lock");
        pending.extend(more);
        std::mem::take(&mut *pending).into_iter().collect()
    }

    /// Commits the open transaction with the pending offsets; a commit that
    /// fails for good reports the producer's own fatal error when it has one.
    fn commit_pending<C: ConsumerContext>(&self, consumer: &BaseConsumer<C>, last: bool) -> Result<Outcome> {
        let offsets = self.take_pending(Vec::new());
        let started = Instant::now();
        match self.txn.commit(consumer, &offsets, last) {
            Ok(Outcome::Committed) => {
                TransactionCommitted { pipeline: self.txn.pipeline, elapsed: started.elapsed() }.emit();
                Ok(Outcome::Committed)
            }
            Ok(Outcome::Aborted) => Ok(Outcome::Aborted),
            Err(e) => {
                let e = self.txn.fatal_error().unwrap_or(e);
                ErrorCounted { pipeline: self.txn.pipeline, step: "commit", error: &e }.emit();
                Err(e)
            }
        }
    }
}

impl Committer for Transactional {
    /// Offsets commit with the transactions, never on their own.
    fn configure(&self, client: &mut ClientConfig) {
        client.set("enable.auto.commit", "false");
    }

    fn init(&self) -> Result<()> {
        self.txn.init()?;
        tracing::info!(
            pipeline = self.txn.pipeline,
            transactional_id = self.txn.id(),
            "exactly-once: transactions initialized"
        );
        Ok(())
    }

    fn dlq(&self, _kafka: &KafkaConfig, topic: String, pipeline: &'static str) -> Result<Dlq> {
        Ok(Dlq::on(self.txn.producer.producer.clone(), topic, pipeline))
    }

    fn store<C: ConsumerContext>(
        &self,
        _consumer: &BaseConsumer<C>,
        offsets: &Offsets,
        _assigned: &dyn Fn(&Tp) -> bool,
    ) {
        self.pending.lock().expect("pending lock").extend(offsets.iter().cloned());
    }

    fn checkpoint<C: ConsumerContext>(&self, consumer: &BaseConsumer<C>) -> Result<Outcome> {
        self.commit_pending(consumer, false)
    }

    /// Commits what the partitions owe before they go, or aborts when they
    /// are already someone else's.
    fn revoke<C: ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        _parts: &[Tp],
        offsets: Offsets,
        lost: bool,
    ) -> Result<Outcome> {
        if !lost {
            self.pending.lock().expect("pending lock").extend(offsets);
            return self.commit_pending(consumer, false);
        }
        self.take_pending(offsets);
        match self.txn.abort() {
            Ok(()) => Ok(Outcome::Aborted),
            // A transient failure leaves it open: the runner's next abort,
            // after a backoff, resumes it.
            Err(e) => {
                ErrorCounted { pipeline: self.txn.pipeline, step: "abort", error: &e }.emit();
                if e.retry() == crate::error::Retry::Backoff { Ok(Outcome::Aborted) } else { Err(e) }
            }
        }
    }

    /// The open transaction may miss what was refused (librdkafka makes it
    /// abortable) and must never commit, and resending into the next one
    /// would duplicate what the rewind recomputes.
    fn recovery(&self) -> Recovery {
        Recovery::AbortAndRewind
    }

    fn abort(&self) -> Result<()> {
        self.pending.lock().expect("pending lock").clear();
        self.txn.abort()
    }

    fn fatal_error(&self) -> Option<Error> {
        self.txn.fatal_error()
    }

    /// An abort at this point loses nothing: the next start reads the
    /// inputs again from the last commit.
    fn finish<C: ConsumerContext>(&self, consumer: &BaseConsumer<C>) -> Result<()> {
        self.commit_pending(consumer, true).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: (Duration, Duration) = (Duration::from_secs(3), Duration::from_millis(400));

    #[test]
    fn a_call_that_returns_is_answered() {
        let v = bounded_by("call", "id", &Shutdown::never(), LIMITS, || 7).unwrap();
        assert_eq!(v, 7);
    }

    #[test]
    fn a_wedged_call_is_a_fatal_producer_error_past_the_deadline() {
        let started = Instant::now();
        let e = bounded_by("send_offsets_to_transaction", "t-1", &Shutdown::never(), LIMITS, || {
            std::thread::sleep(Duration::from_secs(10))
        })
        .unwrap_err();
        assert!(
            matches!(&e, Error::ProducerFatal(m) if m.contains("send_offsets_to_transaction") && m.contains("\"t-1\"")),
            "{e}"
        );
        assert!(started.elapsed() >= LIMITS.0 && started.elapsed() < Duration::from_secs(6), "{:?}", started.elapsed());
    }

    #[test]
    fn shutdown_cuts_a_wedged_call_short() {
        let (shutdown, trigger) = Shutdown::manual();
        let started = Instant::now();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            trigger.trigger();
        });
        let e =
            bounded_by("commit_transaction", "t-2", &shutdown, LIMITS, || std::thread::sleep(Duration::from_secs(10)))
                .unwrap_err();
        t.join().unwrap();
        assert!(matches!(e, Error::ProducerFatal(_)), "{e}");
        // 300 ms to the signal, then at most 400 ms (+ one 200 ms slice).
        assert!(started.elapsed() < LIMITS.0, "waited {:?} after shutdown", started.elapsed());
    }
}
