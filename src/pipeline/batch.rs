//! A runner batch, decoded once.
//!
//! The runner polls raw Kafka records; `Decoder::batch` turns them into
//! what a stage works on: per partition, the decoded events in offset order
//! and the offset after the last record (which covers the records that did
//! not decode). Records that do not decode become `Reject`s, which the
//! runner dead-letters; records below the position the runner already
//! holds for their partition (a refetch after a rebalance) are dropped here,
//! and so are records of partitions no longer assigned.
//!
//! The records each topic may carry are declared once, from `topics/*.yaml`
//! (the same list guards decoding and encoding). Stages see `Rec`, never a
//! librdkafka type: a record's payload and headers are reachable through it
//! for the one stage that forwards raw bytes (the analyzer's re-keying).

use crate::codec::Codec;
use crate::domain::Event;
use crate::error::{Error, Result};
pub use crate::sinks::dlq::{Reason, Reject, Tp};
pub use crate::sources::record::Raw;
use crate::topics::TopicCatalog;
use std::collections::HashMap;

/// Next offsets to store (the offset after the last record whose effects are durable).
pub type Offsets = Vec<(Tp, i64)>;

/// A decoded record.
pub struct Rec<'a> {
    pub offset: i64,
    pub event: Event,
    raw: Raw<'a>,
}

impl<'a> Rec<'a> {
    /// A record built in memory, with no bytes behind it.
    pub fn new(offset: i64, event: Event) -> Rec<'static> {
        Rec { offset, event, raw: Raw::None }
    }

    /// The record's value as it was on the topic.
    pub fn payload(&self) -> &'a [u8] {
        self.raw.payload()
    }

    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.raw.header(name)
    }

    /// The record's Kafka timestamp, ms (when its producer made it).
    pub fn timestamp(&self) -> Option<i64> {
        self.raw.timestamp()
    }
}

/// One partition's share of a batch.
pub struct Part<'a> {
    pub tp: Tp,
    /// Offset after the last record of this partition in the batch,
    /// rejected ones included: where the partition resumes once the batch
    /// is durable.
    pub next_offset: i64,
    /// Decoded records in offset order.
    pub records: Vec<Rec<'a>>,
}

impl Part<'_> {
    /// What a store writes of this partition: the records `keep` keeps.
    pub fn events(&self, keep: impl Fn(i64) -> bool) -> crate::sinks::EventBatch<'_> {
        crate::sinks::EventBatch {
            topic: &self.tp.topic,
            partition: self.tp.partition,
            next_offset: self.next_offset,
            records: self.records.iter().filter(|r| keep(r.offset)).map(|r| (r.offset, &r.event)).collect(),
        }
    }
}

/// A batch, decoded and grouped by partition.
pub struct Batch<'a> {
    pub parts: Vec<Part<'a>>,
    /// Records that did not decode (the runner dead-letters them).
    pub rejects: Vec<Reject>,
    /// The poll filled the batch: more records are probably waiting (the
    /// consumer is catching up), so a silent partition is not yet idle.
    pub full: bool,
    /// Newest event time in the batch (record time for rejects), epoch ms;
    /// `i64::MIN` when empty.
    pub at: i64,
}

impl<'a> Batch<'a> {
    /// A batch built from decoded events (stage tests and tools).
    pub fn from_events(parts: Vec<(Tp, Vec<(i64, Event)>)>) -> Batch<'static> {
        let mut at = i64::MIN;
        let parts = parts
            .into_iter()
            .map(|(tp, events)| {
                let next_offset = events.iter().map(|(o, _)| o + 1).max().unwrap_or(0);
                let records = events
                    .into_iter()
                    .map(|(o, e)| {
                        at = at.max(e.occurred_at());
                        Rec::new(o, e)
                    })
                    .collect();
                Part { tp, next_offset, records }
            })
            .collect();
        Batch { parts, rejects: Vec::new(), full: false, at }
    }

    /// Partitions moving to `next_offset` without records (their position
    /// passed transaction markers).
    pub fn positions(parts: Vec<(Tp, i64)>) -> Batch<'static> {
        let parts = parts.into_iter().map(|(tp, next_offset)| Part { tp, next_offset, records: Vec::new() }).collect();
        Batch { parts, rejects: Vec::new(), full: false, at: i64::MIN }
    }

    /// Moves each partition's next offset up to `position(tp)` (the
    /// consumer's, past markers it skipped), never down.
    pub fn advance(&mut self, mut position: impl FnMut(&Tp) -> Option<i64>) {
        for p in &mut self.parts {
            if let Some(pos) = position(&p.tp) {
                p.next_offset = p.next_offset.max(pos);
            }
        }
    }

    /// Decoded records, all partitions.
    pub fn len(&self) -> usize {
        self.parts.iter().map(|p| p.records.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    /// Each partition's offset after this batch.
    pub fn next_offsets(&self) -> Offsets {
        self.parts.iter().map(|p| (p.tp.clone(), p.next_offset)).collect()
    }

    /// Keeps what is still owed after a rebalance: partitions `position`
    /// knows (assigned), records at or after their position.
    pub fn retain(&mut self, mut position: impl FnMut(&Tp) -> Option<i64>) {
        let mut keep = HashMap::new();
        self.parts.retain_mut(|p| match position(&p.tp) {
            Some(min) if p.next_offset > min => {
                p.records.retain(|r| r.offset >= min);
                keep.insert(p.tp.clone(), min);
                true
            }
            _ => false,
        });
        self.rejects.retain(|r| keep.get(&r.tp).is_some_and(|min| r.offset >= *min));
    }
}

/// Decodes records with the records each topic may carry, declared once.
#[derive(Clone)]
pub struct Decoder {
    codec: Codec,
    /// Full topic name → record names (`topics/*.yaml`).
    allowed: HashMap<String, Vec<String>>,
}

impl Decoder {
    /// Declares every topic of `catalog` under `prefix`.
    pub fn new(codec: Codec, catalog: &TopicCatalog, prefix: &str) -> Decoder {
        let allowed = catalog.specs().iter().map(|s| (format!("{prefix}{}", s.name), s.records().to_vec())).collect();
        Decoder { codec, allowed }
    }

    pub fn codec(&self) -> &Codec {
        &self.codec
    }

    /// The records `topic` may carry (none for an undeclared topic).
    pub fn allowed(&self, topic: &str) -> &[String] {
        self.allowed.get(topic).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Encodes an output for `topic` (its declared records guard it).
    pub fn encode(&self, topic: &str, event: &Event) -> Result<Vec<u8>> {
        Ok(self.codec.encode(topic, self.allowed(topic), event)?)
    }

    /// Decodes raw records into a batch. `position(tp)` is where each
    /// partition resumes (`None`: not assigned, its records are dropped);
    /// records below it are dropped. `Err` (retryable) only when a record
    /// cannot be judged now: the schema registry is unreachable.
    pub fn batch<'a>(
        &self,
        raws: impl IntoIterator<Item = Raw<'a>>,
        mut position: impl FnMut(&Tp) -> Option<i64>,
        full: bool,
    ) -> Result<Batch<'a>> {
        // Group by partition first (cheap), so each partition's records are
        // decoded into a vector of the right size (growing one moved every
        // decoded record again).
        let mut groups: Vec<Group<'a>> = Vec::new();
        let mut last = usize::MAX;
        for raw in raws {
            let (topic, partition) = (raw.topic(), raw.partition());
            // Records come in runs of one partition: check the last group first.
            let i = if last < groups.len() && groups[last].tp.partition == partition && groups[last].tp.topic == topic {
                last
            } else if let Some(i) = groups.iter().position(|g| g.tp.partition == partition && g.tp.topic == topic) {
                i
            } else {
                let tp = Tp::new(topic, partition);
                let Some(min) = position(&tp) else { continue };
                groups.push(Group { tp, min, raws: Vec::new() });
                groups.len() - 1
            };
            last = i;
            if raw.offset() >= groups[i].min {
                groups[i].raws.push(raw);
            }
        }
        let mut parts = Vec::with_capacity(groups.len());
        let mut rejects = Vec::new();
        let mut at = i64::MIN;
        for g in groups {
            if g.raws.is_empty() {
                continue;
            }
            let allowed = self.allowed(&g.tp.topic);
            let mut part = Part { tp: g.tp, next_offset: i64::MIN, records: Vec::with_capacity(g.raws.len()) };
            for raw in g.raws {
                let offset = raw.offset();
                part.next_offset = part.next_offset.max(offset + 1);
                match self.codec.decode(allowed, raw.payload()) {
                    Ok(event) => {
                        at = at.max(event.occurred_at());
                        part.records.push(Rec { offset, event, raw });
                    }
                    Err(e) if e.class.is_retryable() => {
                        let tp = &part.tp;
                        return Err(Error::Unavailable(format!("decode {tp}@{offset}: {e}")));
                    }
                    Err(e) => {
                        if let Some(ts) = raw.timestamp() {
                            at = at.max(ts);
                        }
                        rejects.push(Reject { tp: part.tp.clone(), offset, reason: e.into() });
                    }
                }
            }
            // Fetch order is offset order within a partition; keep it so.
            if !part.records.is_sorted_by_key(|r| r.offset) {
                part.records.sort_by_key(|r| r.offset);
            }
            parts.push(part);
        }
        Ok(Batch { parts, rejects, full, at })
    }
}

/// Records of one partition, before decoding.
struct Group<'a> {
    tp: Tp,
    min: i64,
    raws: Vec<Raw<'a>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::OutputFormat;
    use crate::synth::{Generator, Kind, SynthConfig};
    use rdkafka::Timestamp;
    use rdkafka::message::OwnedMessage;

    fn decoder() -> Decoder {
        let codec = Codec::new(
            std::sync::Arc::new(crate::codec::Catalog::builtin()),
            crate::domain::Limits { embedding_dim: 8, max_record_bytes: 1 << 20 },
            None,
            OutputFormat::Avro,
        );
        Decoder::new(codec, &TopicCatalog::builtin(), "t.")
    }

    fn msg(d: &Decoder, topic: &str, partition: i32, offset: i64, good: bool) -> OwnedMessage {
        let payload = if good {
            let e = Generator::new(SynthConfig::new(8), offset as u64, 1_700_000_000_000)
                .next(Kind::Latency, 1_700_000_000_000);
            d.encode(topic, &e).unwrap()
        } else {
            b"not a record".to_vec()
        };
        OwnedMessage::new(
            Some(payload),
            None,
            topic.into(),
            Timestamp::CreateTime(1_700_000_000_000),
            partition,
            offset,
            None,
        )
    }

    #[test]
    fn groups_by_partition_rejects_garbage_and_drops_what_is_behind_or_unassigned() {
        let d = decoder();
        let lat = "t.udo.latency.v1";
        let msgs = [
            msg(&d, lat, 0, 10, true),
            msg(&d, lat, 1, 5, true),
            msg(&d, lat, 0, 11, false),
            msg(&d, lat, 0, 12, true),
            msg(&d, lat, 1, 6, true),
            msg(&d, lat, 2, 0, true),
            msg(&d, lat, 3, 3, true),
        ];
        let position = |tp: &Tp| match tp.partition {
            0 => Some(0),
            1 => Some(6), // offset 5 is already durable
            3 => Some(9), // everything behind
            _ => None,    // partition 2 is not assigned
        };
        let b = d.batch(msgs.iter().map(Raw::from), position, true).unwrap();
        let shape: Vec<(i32, i64, Vec<i64>)> = b
            .parts
            .iter()
            .map(|p| (p.tp.partition, p.next_offset, p.records.iter().map(|r| r.offset).collect()))
            .collect();
        assert_eq!(shape, vec![(0, 13, vec![10, 12]), (1, 7, vec![6])], "{:?}", b.rejects);
        assert_eq!(b.rejects.len(), 1);
        assert_eq!((b.rejects[0].tp.partition, b.rejects[0].offset), (0, 11));
        assert_eq!(b.rejects[0].reason.class, "unknown_framing");
        assert!(b.full);
        assert!(b.at > 0);
    }

    #[test]
    fn a_record_of_the_wrong_topic_is_a_reject() {
        let d = decoder();
        let e = Generator::new(SynthConfig::new(8), 1, 1_700_000_000_000).next(Kind::Latency, 1_700_000_000_000);
        let payload = d.encode("t.udo.latency.v1", &e).unwrap();
        let m = OwnedMessage::new(Some(payload), None, "t.udo.feedback.v1".into(), Timestamp::NotAvailable, 0, 0, None);
        let b = d.batch([Raw::from(&m)], |_| Some(0), false).unwrap();
        assert_eq!(b.rejects[0].reason.class, "wrong_schema");
        assert_eq!(b.parts[0].next_offset, 1, "a reject still moves the partition on");
    }

    #[test]
    fn retain_keeps_assigned_partitions_from_their_position() {
        let d = decoder();
        let lat = "t.udo.latency.v1";
        let msgs: Vec<_> = (0..4).map(|o| msg(&d, lat, o % 2, o as i64, o != 2)).collect();
        let mut b = d.batch(msgs.iter().map(Raw::from), |_| Some(0), false).unwrap();
        assert_eq!(b.len(), 3);
        b.retain(|tp| (tp.partition == 0).then_some(2));
        assert_eq!(b.parts.len(), 1);
        assert!(b.parts[0].records.is_empty(), "offset 0 is behind, offset 2 is a reject");
        assert_eq!(b.rejects.len(), 1);
    }
}
