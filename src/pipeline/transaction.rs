//! Exactly-once: the runner's transactional commit (Kafka Streams'
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

use super::batch::Offsets;
use crate::error::{Error, Result};
use crate::sinks::kafka::TxnProducer;
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

/// Runs a blocking transactional call of librdkafka with a deadline of our
/// own: `send_offsets_to_transaction` (and with it the other calls that
/// wait for a coordinator) can block forever when the coordinator it cached
/// is gone, its timeout never checked (librdkafka #5456, #5511; seen after
/// a rolling restart of the cluster). Past [`WEDGED`] the producer counts as
/// fatally failed: the pipeline restarts with a new producer, whose
/// `init_transactions` fences this one; the helper thread is left to return
/// whenever librdkafka lets it.
fn bounded<T: Send + 'static>(what: &str, id: &str, call: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("udo-txn-call".into())
        .spawn(move || {
            let _ = tx.send(call());
        })
        .map_err(|e| Error::Internal(format!("spawn a thread for {what}: {e}")))?;
    rx.recv_timeout(WEDGED).map_err(|_| {
        Error::ProducerFatal(format!(
            "exactly-once: {what} did not return within {WEDGED:?} (transactional id {id:?}; librdkafka lost its \
             coordinator); the pipeline restarts with a new producer, which aborts the open transaction"
        ))
    })
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
/// the step this many times before the commit counts as failed.
const RETRIES: u32 = 20;

/// What became of the open transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Committed,
    /// Aborted: everything since the last commit is gone; rewind.
    Aborted,
}

pub struct Txn {
    pipeline: &'static str,
    producer: TxnProducer,
    /// A transaction is open (none after the final commit at shutdown).
    open: AtomicBool,
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
    pub fn new(pipeline: &'static str, producer: TxnProducer) -> Txn {
        Txn { pipeline, producer, open: AtomicBool::new(false) }
    }

    pub fn id(&self) -> &str {
        &self.producer.id
    }

    /// The producer's fatal error, if it has one (after which every send
    /// fails with a bare "Fatal"): the error to stop with.
    pub fn fatal_error(&self) -> Option<Error> {
        use rdkafka::producer::Producer;
        let (code, why) = self.producer.producer.client().fatal_error()?;
        Some(fatal(self.id(), code, &why))
    }

    /// Registers the transactional id (aborting whatever a crashed
    /// predecessor with the same id left open) and begins a transaction.
    pub fn init(&self) -> Result<()> {
        let p = &self.producer.producer;
        let producer = p.clone();
        bounded("init_transactions", self.id(), move || producer.init_transactions(TIMEOUT))?
            .map_err(|e| failed("init transactions", self.id(), e))?;
        self.begin()
    }

    fn begin(&self) -> Result<()> {
        self.producer.producer.begin_transaction().map_err(|e| failed("begin a transaction", self.id(), e))?;
        self.open.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Commits the open transaction with `offsets` for `consumer`'s group,
    /// then begins the next one unless `last`.
    pub fn commit<C: ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        offsets: &Offsets,
        last: bool,
    ) -> Result<Outcome> {
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
        let mut retries = 0;
        let outcome = loop {
            let producer = p.clone();
            let step = if offsets_sent {
                bounded("commit_transaction", id, move || producer.commit_transaction(TIMEOUT))?
            } else {
                let meta = consumer
                    .group_metadata()
                    .ok_or_else(|| Error::Internal("exactly-once needs a group member's metadata".into()))?;
                let offsets = tpl.clone();
                bounded("send_offsets_to_transaction", id, move || {
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
                    let aborted = bounded("abort_transaction", id, move || producer.abort_transaction(TIMEOUT))?
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
                KafkaError::Transaction(e) if e.is_retriable() && retries < RETRIES => {
                    retries += 1;
                    tracing::debug!(pipeline = self.pipeline, "transaction step retried ({e})");
                    std::thread::sleep(Duration::from_millis(50 * u64::from(retries)));
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
    pub fn abort(&self) -> Result<()> {
        if self.open.load(Ordering::SeqCst) {
            let p = &self.producer.producer;
            let producer = p.clone();
            bounded("abort_transaction", self.id(), move || producer.abort_transaction(TIMEOUT))?
                .map_err(|e| failed("abort the transaction", self.id(), e))?;
            self.open.store(false, Ordering::SeqCst);
        }
        self.begin()
    }
}
