//! Kafka producers: idempotent, all acks, Java-compatible partitioning.

use crate::error::{Error, Result};
use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::message::Message;
use rdkafka::producer::{DeliveryResult, ProducerContext, ThreadedProducer};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Producer settings. `murmur2_random` puts a key in the same partition a
/// Java client would, so producers in any language agree on placement.
pub fn producer_config(brokers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "200000")
        .set("partitioner", "murmur2_random")
        .set("message.timeout.ms", "60000")
        .set("client.id", "udo-stream");
    c
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
pub fn counting_producer(brokers: &str) -> Result<ThreadedProducer<DeliveryCounter>> {
    producer_config(brokers).create_with_context(DeliveryCounter::default()).map_err(Error::kafka("create producer"))
}
