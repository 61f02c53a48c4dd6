//! A polled record as the rest of udo-stream sees it: `Raw` wraps the
//! librdkafka message (borrowed from a group consumer, or owned) so stages,
//! stores and the DLQ read its bytes without touching librdkafka types.

use rdkafka::message::{BorrowedMessage, Headers, Message, OwnedMessage};

/// A raw record as polled, from a group consumer or an assigned one.
#[derive(Clone, Copy)]
pub enum Raw<'a> {
    Kafka(&'a BorrowedMessage<'a>),
    Owned(&'a OwnedMessage),
    /// No bytes kept (events built in memory, for tests and tools).
    None,
}

impl<'a> From<&'a BorrowedMessage<'a>> for Raw<'a> {
    fn from(m: &'a BorrowedMessage<'a>) -> Raw<'a> {
        Raw::Kafka(m)
    }
}

impl<'a> From<&'a OwnedMessage> for Raw<'a> {
    fn from(m: &'a OwnedMessage) -> Raw<'a> {
        Raw::Owned(m)
    }
}

impl<'a> Raw<'a> {
    pub fn topic(&self) -> &'a str {
        match self {
            Raw::Kafka(m) => m.topic(),
            Raw::Owned(m) => m.topic(),
            Raw::None => "",
        }
    }

    pub fn partition(&self) -> i32 {
        match self {
            Raw::Kafka(m) => m.partition(),
            Raw::Owned(m) => m.partition(),
            Raw::None => -1,
        }
    }

    pub fn offset(&self) -> i64 {
        match self {
            Raw::Kafka(m) => m.offset(),
            Raw::Owned(m) => m.offset(),
            Raw::None => -1,
        }
    }

    /// The value, `None` for a tombstone.
    pub fn value(&self) -> Option<&'a [u8]> {
        match self {
            Raw::Kafka(m) => m.payload(),
            Raw::Owned(m) => m.payload(),
            Raw::None => None,
        }
    }

    /// The value's bytes (empty for a tombstone).
    pub fn payload(&self) -> &'a [u8] {
        self.value().unwrap_or(&[])
    }

    pub fn key(&self) -> Option<&'a [u8]> {
        match self {
            Raw::Kafka(m) => m.key(),
            Raw::Owned(m) => m.key(),
            Raw::None => None,
        }
    }

    /// Create or log-append time, epoch ms.
    pub fn timestamp(&self) -> Option<i64> {
        match self {
            Raw::Kafka(m) => m.timestamp().to_millis(),
            Raw::Owned(m) => m.timestamp().to_millis(),
            Raw::None => None,
        }
    }

    /// Every header, in order (a header without a value maps to empty bytes).
    pub fn headers(&self) -> Vec<(&'a str, &'a [u8])> {
        fn all<H: Headers>(h: &H) -> Vec<(&str, &[u8])> {
            h.iter().map(|h| (h.key, h.value.unwrap_or(&[]))).collect()
        }
        match self {
            Raw::Kafka(m) => m.headers().map(all).unwrap_or_default(),
            Raw::Owned(m) => m.headers().map(all).unwrap_or_default(),
            Raw::None => Vec::new(),
        }
    }

    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        fn find<'h, H: Headers>(h: &'h H, name: &str) -> Option<&'h [u8]> {
            h.iter().find(|h| h.key == name).map(|h| h.value.unwrap_or(&[]))
        }
        match self {
            Raw::Kafka(m) => m.headers().and_then(|h| find(h, name)),
            Raw::Owned(m) => m.headers().and_then(|h| find(h, name)),
            Raw::None => None,
        }
    }
}
