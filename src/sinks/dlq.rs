//! The dead-letter queue (DESIGN §6): a record that cannot be decoded, fails
//! validation, is late, or reuses an event id with another payload goes to
//! `udo.dlq.v1` with its raw key and value, its original headers, and
//! `udo.dlq.*` headers naming where it came from and why. The caller awaits
//! delivery before storing the record's offset: the DLQ write gates the
//! offset store like any other effect.
//!
//! `dead_letter` builds the record (pure); `Dlq` sends it.

use crate::error::{Error, Result};
use crate::telemetry::events::DlqRecord;
use futures_util::future::try_join_all;
use crate::sources::record::Raw;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::time::Duration;

/// Header names, so consumers of the DLQ can filter and replay.
pub mod headers {
    pub const TOPIC: &str = "udo.dlq.topic";
    pub const PARTITION: &str = "udo.dlq.partition";
    pub const OFFSET: &str = "udo.dlq.offset";
    pub const TIMESTAMP: &str = "udo.dlq.timestamp";
    pub const PIPELINE: &str = "udo.dlq.pipeline";
    pub const ERROR_CLASS: &str = "udo.dlq.error.class";
    pub const ERROR_MESSAGE: &str = "udo.dlq.error.message";
}

/// Why a record was dead-lettered: a bounded class (metric label) and a
/// message naming the field and the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reason {
    pub class: String,
    pub message: String,
}

impl From<crate::codec::DecodeError> for Reason {
    fn from(e: crate::codec::DecodeError) -> Reason {
        Reason { class: e.class.as_str().into(), message: e.to_string() }
    }
}

/// A DLQ record ready to send.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
}

/// Builds the DLQ record for `msg`: raw bytes, original headers first, then
/// provenance. Long messages are cut so a header never dwarfs the record.
pub fn dead_letter(msg: &Raw<'_>, pipeline: &str, reason: &Reason) -> DeadLetter {
    let mut headers: Vec<(String, Vec<u8>)> =
        msg.headers().into_iter().map(|(k, v)| (k.to_string(), v.to_vec())).collect();
    let ts = msg.timestamp().map(|t| t.to_string()).unwrap_or_default();
    let mut message = reason.message.clone();
    if message.len() > 2048 {
        let mut cut = 2048;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push('…');
    }
    for (k, v) in [
        (headers::TOPIC, msg.topic().to_string()),
        (headers::PARTITION, msg.partition().to_string()),
        (headers::OFFSET, msg.offset().to_string()),
        (headers::TIMESTAMP, ts),
        (headers::PIPELINE, pipeline.to_string()),
        (headers::ERROR_CLASS, reason.class.clone()),
        (headers::ERROR_MESSAGE, message),
    ] {
        headers.push((k.to_string(), v.into_bytes()));
    }
    DeadLetter { key: msg.key().map(<[u8]>::to_vec), payload: msg.value().map(<[u8]>::to_vec), headers }
}

/// Sends dead letters and waits for the broker's acknowledgement.
#[derive(Clone)]
pub struct Dlq {
    producer: FutureProducer,
    topic: String,
    pipeline: &'static str,
}

impl Dlq {
    pub fn new(kafka: &crate::config::KafkaConfig, topic: String, pipeline: &'static str) -> Result<Dlq> {
        let producer = crate::sinks::kafka::producer_config_with(kafka, |c| {
            c.set("linger.ms", "1");
        })
        .create()
            .map_err(Error::kafka("create DLQ producer"))?;
        Ok(Dlq { producer, topic, pipeline })
    }

    /// Dead letters through an existing producer (exactly-once: the
    /// transactional one, so a dead letter commits or aborts with its batch).
    pub fn on(producer: FutureProducer, topic: String, pipeline: &'static str) -> Dlq {
        Dlq { producer, topic, pipeline }
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Sends every record and returns once all are durable (or the first error).
    pub async fn send_all(&self, items: &[(Raw<'_>, Reason)]) -> Result<()> {
        let sends = items.iter().map(|(msg, reason)| async move {
            let letter = dead_letter(msg, self.pipeline, reason);
            let mut hs = OwnedHeaders::new_with_capacity(letter.headers.len());
            for (k, v) in &letter.headers {
                hs = hs.insert(Header { key: k, value: Some(v) });
            }
            let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&self.topic).headers(hs);
            if let Some(k) = &letter.key {
                record = record.key(k.as_slice());
            }
            if let Some(p) = &letter.payload {
                record = record.payload(p.as_slice());
            }
            self.producer
                .send(record, Duration::from_secs(30))
                .await
                .map_err(|(e, _)| Error::Kafka { op: format!("write to DLQ {}", self.topic), source: e })?;
            DlqRecord {
                pipeline: self.pipeline,
                topic: msg.topic(),
                partition: msg.partition(),
                offset: msg.offset(),
                class: &reason.class,
                message: &reason.message,
            }
            .emit();
            Ok::<(), Error>(())
        });
        try_join_all(sends).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::Timestamp;
    use rdkafka::message::OwnedMessage;

    #[test]
    fn dead_letter_keeps_bytes_and_headers_and_names_the_source() {
        let original = OwnedHeaders::new().insert(Header { key: "trace", value: Some("abc") });
        let msg = OwnedMessage::new(
            Some(vec![0xff, 0x00]),
            Some(b"proj-1".to_vec()),
            "udo.writes.v1".into(),
            Timestamp::CreateTime(1_700_000_000_000),
            4,
            77,
            Some(original),
        );
        let reason = Reason { class: "malformed".into(), message: "x".repeat(5000) };
        let d = dead_letter(&Raw::from(&msg), "materialize-postgres", &reason);
        assert_eq!(d.payload.as_deref(), Some(&[0xff, 0x00][..]));
        assert_eq!(d.key.as_deref(), Some(&b"proj-1"[..]));
        let get =
            |k: &str| d.headers.iter().find(|(n, _)| n == k).map(|(_, v)| String::from_utf8_lossy(v).into_owned());
        assert_eq!(get("trace").as_deref(), Some("abc"), "original headers are kept");
        assert_eq!(get(headers::TOPIC).as_deref(), Some("udo.writes.v1"));
        assert_eq!(get(headers::PARTITION).as_deref(), Some("4"));
        assert_eq!(get(headers::OFFSET).as_deref(), Some("77"));
        assert_eq!(get(headers::TIMESTAMP).as_deref(), Some("1700000000000"));
        assert_eq!(get(headers::PIPELINE).as_deref(), Some("materialize-postgres"));
        assert_eq!(get(headers::ERROR_CLASS).as_deref(), Some("malformed"));
        assert!(get(headers::ERROR_MESSAGE).unwrap().chars().count() <= 2049, "long messages are cut");
    }
}
