//! Kafka producers: idempotent, all acks, Java-compatible partitioning;
//! `Outputs`, the pipelines' producer of their output topics.

use crate::config::KafkaConfig;
use crate::error::{Error, Result};
use crate::telemetry::events::RecordsProduced;
use futures_util::future::join_all;
use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{DeliveryFuture, DeliveryResult, FutureProducer, ProducerContext, ThreadedProducer};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Producer settings. `murmur2_random` puts a key in the same partition a
/// Java client would, so producers in any language agree on placement.
pub fn producer_config(kafka: &KafkaConfig) -> ClientConfig {
    producer_config_with(kafka, |_| {})
}

/// Producer settings with a role's own defaults (client id, linger), which
/// the user's `[kafka]` properties may still tune.
pub fn producer_config_with(kafka: &KafkaConfig, role: impl FnOnce(&mut ClientConfig)) -> ClientConfig {
    kafka.client(|c| {
        producer_defaults(c);
        role(c);
    })
}

fn producer_defaults(c: &mut ClientConfig) {
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "200000")
        .set("partitioner", "murmur2_random")
        .set("message.timeout.ms", "60000")
        .set("client.id", "udo-stream");
}

/// Counts delivery reports (the producer's only proof a record is durable).
#[derive(Default)]
pub struct DeliveryCounter {
    pub delivered: AtomicU64,
    pub failed: AtomicU64,
    pub first_error: Mutex<Option<String>>,
}

impl ClientContext for DeliveryCounter {}

impl ProducerContext for DeliveryCounter {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err((e, msg)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                let mut first = self.first_error.lock().expect("delivery error lock");
                if first.is_none() {
                    *first = Some(format!("{e} (topic {}, partition {})", msg.topic(), msg.partition()));
                }
            }
        }
    }
}

/// Fire-and-count producer for bulk loads: sends never block on the
/// network; delivery reports arrive on a background thread.
pub fn counting_producer(kafka: &KafkaConfig) -> Result<ThreadedProducer<DeliveryCounter>> {
    producer_config(kafka).create_with_context(DeliveryCounter::default()).map_err(Error::kafka("create producer"))
}

/// One record to produce.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub topic: String,
    /// `None`: by key (murmur2, as a Java client would place it).
    pub partition: Option<i32>,
    pub key: Vec<u8>,
    /// `None`: a tombstone (deletes the key from a compacted topic).
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
}

/// The rdkafka record for `r` (borrowing its bytes).
pub fn future_record(r: &Outgoing) -> rdkafka::producer::FutureRecord<'_, [u8], [u8]> {
    use rdkafka::message::{Header, OwnedHeaders};
    let mut record = rdkafka::producer::FutureRecord::to(&r.topic).key(r.key.as_slice());
    if let Some(payload) = &r.payload {
        record = record.payload(payload.as_slice());
    }
    if let Some(p) = r.partition {
        record = record.partition(p);
    }
    if !r.headers.is_empty() {
        let mut hs = OwnedHeaders::new_with_capacity(r.headers.len());
        for (k, v) in &r.headers {
            hs = hs.insert(Header { key: k, value: Some(v) });
        }
        record = record.headers(hs);
    }
    record
}

/// A pipeline's output producer. `send` does not wait, so consumption runs
/// on; `flush` waits until every output sent so far is acknowledged (the
/// proof an effect is durable, awaited before offsets move past its input).
/// An output the broker refused is kept and resent by the next `flush`:
/// outputs of records already processed cannot be handed back.
pub struct Outputs {
    pipeline: &'static str,
    producer: FutureProducer,
    rt: tokio::runtime::Handle,
    in_flight: Vec<(Outgoing, DeliveryFuture)>,
    unsent: Vec<Outgoing>,
}

impl Outputs {
    /// Call inside a tokio runtime (`flush` blocks on it).
    pub fn new(kafka: &KafkaConfig, pipeline: &'static str, role: impl FnOnce(&mut ClientConfig)) -> Result<Outputs> {
        let producer: FutureProducer = producer_config_with(kafka, |c| {
            c.set("client.id", format!("udo-{pipeline}"));
            role(c);
        })
        .create()
        .map_err(Error::kafka(format!("create the {pipeline} producer")))?;
        Ok(Outputs::on(producer, pipeline))
    }

    /// Outputs through an existing producer (the transactional one).
    pub fn on(producer: FutureProducer, pipeline: &'static str) -> Outputs {
        Outputs { pipeline, producer, rt: tokio::runtime::Handle::current(), in_flight: Vec::new(), unsent: Vec::new() }
    }

    /// Forgets every output not yet acknowledged (their transaction was aborted).
    pub fn clear(&mut self) {
        self.in_flight.clear();
        self.unsent.clear();
    }

    /// Outputs sent or kept, not yet acknowledged.
    pub fn pending(&self) -> usize {
        self.in_flight.len() + self.unsent.len()
    }

    /// Sends without waiting for acknowledgements; a full local queue waits
    /// for what is in flight. On an error the records not sent are kept.
    pub fn send(&mut self, records: Vec<Outgoing>) -> Result<()> {
        let mut records = records.into_iter();
        while let Some(r) = records.next() {
            let sent = loop {
                match self.producer.send_result(future_record(&r)) {
                    Ok(delivery) => break Ok(delivery),
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                        if let Err(e) = self.flush() {
                            break Err(e);
                        }
                    }
                    Err((e, _)) => break Err(Error::Kafka { op: format!("produce to {}", r.topic), source: e }),
                }
            };
            match sent {
                Ok(delivery) => self.in_flight.push((r, delivery)),
                Err(e) => {
                    self.unsent.push(r);
                    self.unsent.extend(records);
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Resends what the broker refused before, then waits for every output
    /// in flight. `Err` when some were refused again (kept for the next).
    pub fn flush(&mut self) -> Result<()> {
        if !self.unsent.is_empty() {
            let again = std::mem::take(&mut self.unsent);
            self.send(again)?;
        }
        let pending = std::mem::take(&mut self.in_flight);
        if pending.is_empty() {
            return Ok(());
        }
        let results = self.rt.block_on(join_all(pending.into_iter().map(|(r, f)| async move { (r, f.await) })));
        let mut delivered: BTreeMap<String, u64> = BTreeMap::new();
        let mut error = None;
        for (r, result) in results {
            match result {
                Ok(Ok(_)) => *delivered.entry(r.topic).or_default() += 1,
                Ok(Err((e, _))) => {
                    error = Some(Error::Kafka { op: format!("deliver to {}", r.topic), source: e });
                    self.unsent.push(r);
                }
                Err(_) => {
                    error = Some(Error::Unavailable(format!("delivery to {} was cancelled", r.topic)));
                    self.unsent.push(r);
                }
            }
        }
        for (topic, count) in delivered {
            RecordsProduced { pipeline: self.pipeline, topic: &topic, count }.emit();
        }
        error.map_or(Ok(()), Err)
    }
}

/// Exactly-once: one transactional producer per member (KIP-447: fenced by
/// the consumer group's generation, so its id only has to be stable per
/// instance). The stage's outputs, its changelog and the DLQ all go through
/// it, so they commit or abort together with the input offsets.
#[derive(Clone)]
pub struct TxnProducer {
    pub producer: FutureProducer,
    pub id: String,
}

impl TxnProducer {
    pub fn new(kafka: &KafkaConfig, pipeline: &'static str, id: &str) -> Result<TxnProducer> {
        let producer: FutureProducer = producer_config_with(kafka, |c| {
            c.set("client.id", format!("udo-{pipeline}"))
                .set("transactional.id", id)
                // A transaction left open by a crashed member is aborted by
                // the broker after this long (or at once by its successor's
                // init with the same id).
                .set("transaction.timeout.ms", "60000")
                .set("linger.ms", "5")
                // Dead letters go through it too: the DLQ topic's limit.
                .set("message.max.bytes", crate::sinks::dlq::topic_max_bytes().to_string());
        })
        .create()
        .map_err(Error::kafka(format!("create the transactional producer {id}")))?;
        Ok(TxnProducer { producer, id: id.to_string() })
    }

    pub fn outputs(&self, pipeline: &'static str) -> Outputs {
        Outputs::on(self.producer.clone(), pipeline)
    }
}
