//! Kafka producers: idempotent, all acks, Java-compatible partitioning.

use crate::config::KafkaConfig;
use crate::error::{Error, Result};
use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::message::Message;
use rdkafka::producer::{DeliveryResult, ProducerContext, ThreadedProducer};
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
    pub key: Vec<u8>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
}

/// The rdkafka record for `r` (borrowing its bytes).
pub fn future_record(r: &Outgoing) -> rdkafka::producer::FutureRecord<'_, [u8], [u8]> {
    use rdkafka::message::{Header, OwnedHeaders};
    let mut record = rdkafka::producer::FutureRecord::to(&r.topic).key(r.key.as_slice()).payload(r.payload.as_slice());
    if !r.headers.is_empty() {
        let mut hs = OwnedHeaders::new_with_capacity(r.headers.len());
        for (k, v) in &r.headers {
            hs = hs.insert(Header { key: k, value: Some(v) });
        }
        record = record.headers(hs);
    }
    record
}

/// Sends every record and returns once the broker acknowledged all of them
/// (the proof an effect is durable), or the first failure. A full local
/// queue waits instead of failing.
pub async fn produce_all(producer: &rdkafka::producer::FutureProducer, records: &[Outgoing]) -> Result<()> {
    use rdkafka::error::{KafkaError, RDKafkaErrorCode};
    let mut pending = Vec::with_capacity(records.len());
    for r in records {
        loop {
            match producer.send_result(future_record(r)) {
                Ok(delivery) => {
                    pending.push(delivery);
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
                Err((e, _)) => return Err(Error::Kafka { op: format!("produce to {}", r.topic), source: e }),
            }
        }
    }
    for (delivery, r) in pending.into_iter().zip(records) {
        match delivery.await {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => return Err(Error::Kafka { op: format!("deliver to {}", r.topic), source: e }),
            Err(_) => return Err(Error::Unavailable(format!("producer dropped a delivery to {}", r.topic))),
        }
    }
    Ok(())
}
