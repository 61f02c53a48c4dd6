//! The dead-letter queue (design §6): a record that cannot be decoded, fails
//! validation, is late, or reuses an event id with another payload goes to
//! `udo.dlq.v1` with its raw key and value, its original headers, and
//! `udo.dlq.*` headers naming where it came from and why. The caller awaits
//! delivery before storing the record's offset: the DLQ write gates the
//! offset store like any other effect.
//!
//! A dead letter always fits the DLQ topic: one whose value would exceed
//! the topic's `max.message.bytes` (declared in `topics/udo.dlq.v1.yaml`,
//! which also sizes the producer) keeps a prefix of the value, with its
//! original size and SHA-256 in headers, so no single record, however
//! large, can stop a pipeline.
//!
//! `dead_letter` builds the record (pure); `Dlq` sends it.

use crate::error::{Error, Result};
use crate::sources::record::Raw;
use crate::telemetry::events::DlqRecord;
use futures_util::future::try_join_all;
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
    /// Set (`true`) when the value kept is a prefix of the original.
    pub const VALUE_TRUNCATED: &str = "udo.dlq.value.truncated";
    /// The original value's size in bytes (with a truncated value).
    pub const VALUE_SIZE: &str = "udo.dlq.value.size";
    /// Hex SHA-256 of the original value (with a truncated value).
    pub const VALUE_SHA256: &str = "udo.dlq.value.sha256";
    /// The original key's size, when only a prefix of it is kept.
    pub const KEY_SIZE: &str = "udo.dlq.key.size";
    /// How many original headers were left out (they did not fit).
    pub const HEADERS_DROPPED: &str = "udo.dlq.headers.dropped";
}

/// Room kept for the record batch's own framing below the topic's limit.
const FRAMING_BYTES: usize = 16 * 1024;
/// A key or the original headers larger than this are cut or left out, so
/// the value (the evidence) keeps most of the room.
const MAX_KEY_BYTES: usize = 16 * 1024;
const MAX_ORIGINAL_HEADER_BYTES: usize = 64 * 1024;

/// The DLQ topic's `max.message.bytes` as `topics/udo.dlq.v1.yaml` declares
/// it (the broker's default when it declares none): the producers that
/// write dead letters take it as their `message.max.bytes`.
pub fn topic_max_bytes() -> usize {
    crate::topics::TopicCatalog::builtin()
        .get(crate::topics::names::DLQ)
        .and_then(|spec| spec.configs.get("max.message.bytes"))
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_048_588)
}

/// The most a dead letter's key, value and headers may add up to.
pub fn max_letter_bytes() -> usize {
    topic_max_bytes().saturating_sub(FRAMING_BYTES).max(4096)
}

/// A topic partition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tp {
    pub topic: String,
    pub partition: i32,
}

impl Tp {
    pub fn new(topic: impl Into<String>, partition: i32) -> Tp {
        Tp { topic: topic.into(), partition }
    }
}

impl std::fmt::Display for Tp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}[{}]", self.topic, self.partition)
    }
}

/// A record for the DLQ: which one, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    pub tp: Tp,
    pub offset: i64,
    pub reason: Reason,
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

impl DeadLetter {
    /// Bytes the broker counts for it: key, value and headers.
    pub fn size(&self) -> usize {
        self.key.as_ref().map_or(0, Vec::len)
            + self.payload.as_ref().map_or(0, Vec::len)
            + self.headers.iter().map(|(k, v)| k.len() + v.len() + 8).sum::<usize>()
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Builds the DLQ record for `msg`: raw bytes, original headers first, then
/// provenance. Long messages are cut so a header never dwarfs the record;
/// the whole letter stays within `max_bytes` (see the module doc).
pub fn dead_letter(msg: &Raw<'_>, pipeline: &str, reason: &Reason, max_bytes: usize) -> DeadLetter {
    let original: Vec<(String, Vec<u8>)> =
        msg.headers().into_iter().map(|(k, v)| (k.to_string(), v.to_vec())).collect();
    let original_bytes: usize = original.iter().map(|(k, v)| k.len() + v.len() + 8).sum();
    let mut headers = Vec::new();
    let mut dropped = 0;
    if original_bytes <= MAX_ORIGINAL_HEADER_BYTES {
        headers = original;
    } else {
        dropped = original.len();
    }
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
    if dropped > 0 {
        headers.push((headers::HEADERS_DROPPED.into(), dropped.to_string().into_bytes()));
    }
    let key = msg.key().map(|k| {
        if k.len() > MAX_KEY_BYTES {
            headers.push((headers::KEY_SIZE.into(), k.len().to_string().into_bytes()));
            k[..MAX_KEY_BYTES].to_vec()
        } else {
            k.to_vec()
        }
    });
    let mut letter = DeadLetter { key, payload: None, headers };
    if let Some(value) = msg.value() {
        // What the value may take once the truncation headers are in.
        let room = max_bytes.saturating_sub(letter.size() + 256);
        if value.len() <= room {
            letter.payload = Some(value.to_vec());
        } else {
            letter.headers.push((headers::VALUE_TRUNCATED.into(), b"true".to_vec()));
            letter.headers.push((headers::VALUE_SIZE.into(), value.len().to_string().into_bytes()));
            letter.headers.push((headers::VALUE_SHA256.into(), sha256_hex(value).into_bytes()));
            letter.payload = Some(value[..room].to_vec());
        }
    }
    letter
}

/// Sends dead letters and waits for the broker's acknowledgement.
#[derive(Clone)]
pub struct Dlq {
    producer: FutureProducer,
    topic: String,
    pipeline: &'static str,
    max_bytes: usize,
}

impl Dlq {
    pub fn new(kafka: &crate::config::KafkaConfig, topic: String, pipeline: &'static str) -> Result<Dlq> {
        let producer = crate::sinks::kafka::producer_config_with(kafka, |c| {
            c.set("linger.ms", "1").set("message.max.bytes", topic_max_bytes().to_string());
        })
        .create()
        .map_err(Error::kafka("create DLQ producer"))?;
        Ok(Dlq { producer, topic, pipeline, max_bytes: max_letter_bytes() })
    }

    /// Dead letters through an existing producer (exactly-once: the
    /// transactional one, so a dead letter commits or aborts with its batch).
    /// (That producer's `message.max.bytes` is the DLQ topic's too.)
    pub fn on(producer: FutureProducer, topic: String, pipeline: &'static str) -> Dlq {
        Dlq { producer, topic, pipeline, max_bytes: max_letter_bytes() }
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Sends every record and returns once all are durable (or the first error).
    pub async fn send_all(&self, items: &[(Raw<'_>, Reason)]) -> Result<()> {
        let sends = items.iter().map(|(msg, reason)| async move {
            let letter = dead_letter(msg, self.pipeline, reason, self.max_bytes);
            match self.send(&letter).await {
                // The topic on the broker was made with a smaller limit than
                // topics/ declares: a letter cut to its headers still goes.
                Err(e) if is_too_large(&e) => {
                    let small = dead_letter(msg, self.pipeline, reason, 2 * FRAMING_BYTES);
                    self.send(&small).await.map_err(|e| too_large_hint(&self.topic, e))?;
                }
                r => r?,
            }
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

    async fn send(&self, letter: &DeadLetter) -> Result<()> {
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
            .map(|_| ())
            .map_err(|(e, _)| Error::Kafka { op: format!("write to DLQ {}", self.topic), source: e })
    }
}

fn is_too_large(e: &Error) -> bool {
    matches!(e, Error::Kafka { source, .. }
        if source.rdkafka_error_code() == Some(rdkafka::error::RDKafkaErrorCode::MessageSizeTooLarge))
}

/// A DLQ that refuses even a letter cut to its headers: the pipeline stops,
/// and says what to change.
fn too_large_hint(topic: &str, e: Error) -> Error {
    if is_too_large(&e) {
        Error::Config(format!(
            "the DLQ topic {topic} refuses a dead letter of a few KiB: raise its max.message.bytes to at least {} \
             (declared in topics/udo.dlq.v1.yaml; `udo-stream topics apply` reports the drift) ({e})",
            topic_max_bytes()
        ))
    } else {
        e
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
        let d = dead_letter(&Raw::from(&msg), "materialize-postgres", &reason, max_letter_bytes());
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
        assert_eq!(get(headers::VALUE_TRUNCATED), None, "a small value is kept whole");
    }

    #[test]
    fn a_dead_letter_always_fits_the_topic() {
        let max = max_letter_bytes();
        assert!(max >= 1_000_000, "topics/udo.dlq.v1.yaml declares about 1 MiB, got {max}");
        let value: Vec<u8> = (0..5_000_000u32).map(|i| (i % 251) as u8).collect();
        let many = (0..2000)
            .fold(OwnedHeaders::new(), |h, i| h.insert(Header { key: &format!("h{i}"), value: Some(&[7u8; 100][..]) }));
        for (key, hs) in [(vec![1u8; 10], None), (vec![2u8; 100_000], Some(many))] {
            let msg = OwnedMessage::new(
                Some(value.clone()),
                Some(key.clone()),
                "udo.writes.v1".into(),
                Timestamp::NotAvailable,
                0,
                9,
                hs.clone(),
            );
            let reason = Reason { class: "oversized".into(), message: "too big".into() };
            let d = dead_letter(&Raw::from(&msg), "analyze", &reason, max);
            assert!(d.size() <= max, "{} > {max}", d.size());
            let get =
                |k: &str| d.headers.iter().find(|(n, _)| n == k).map(|(_, v)| String::from_utf8_lossy(v).into_owned());
            assert_eq!(get(headers::VALUE_TRUNCATED).as_deref(), Some("true"));
            assert_eq!(get(headers::VALUE_SIZE).as_deref(), Some("5000000"));
            assert_eq!(get(headers::VALUE_SHA256), Some(sha256_hex(&value)));
            let kept = d.payload.as_deref().unwrap();
            assert!(kept.len() > 500_000 && value.starts_with(kept), "a prefix of the value is kept");
            if hs.is_some() {
                assert_eq!(get(headers::HEADERS_DROPPED).as_deref(), Some("2000"));
                assert_eq!(get(headers::KEY_SIZE).as_deref(), Some("100000"));
                assert_eq!(d.key.as_ref().unwrap().len(), MAX_KEY_BYTES);
            }
        }
    }
}
