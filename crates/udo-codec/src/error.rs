//! Why a record could not be decoded. The class is what the DLQ header
//! `udo.dlq.error.class` and the metrics label carry, so it is a closed set.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DecodeClass {
    /// Larger than `max_record_bytes`.
    Oversized,
    /// Empty value (a tombstone where none is expected).
    Empty,
    /// First bytes are none of the three known framings.
    UnknownFraming,
    /// Framing names a schema (fingerprint, registry id) we cannot find.
    UnknownSchema,
    /// A known record type that does not belong on this topic.
    WrongSchema,
    /// Bytes do not decode with the writer schema (truncated, corrupt).
    Malformed,
    /// A string that is not valid UTF-8.
    InvalidUtf8,
    /// An enum symbol outside the schema's symbols.
    UnknownEnum,
    /// Decoded, but a value breaks a rule (NaN, range, dimension...).
    Invalid,
    /// The schema registry could not be reached; retryable, not the record's fault.
    Registry,
}

impl DecodeClass {
    pub fn as_str(self) -> &'static str {
        match self {
            DecodeClass::Oversized => "oversized",
            DecodeClass::Empty => "empty",
            DecodeClass::UnknownFraming => "unknown_framing",
            DecodeClass::UnknownSchema => "unknown_schema",
            DecodeClass::WrongSchema => "wrong_schema",
            DecodeClass::Malformed => "malformed",
            DecodeClass::InvalidUtf8 => "invalid_utf8",
            DecodeClass::UnknownEnum => "unknown_enum",
            DecodeClass::Invalid => "invalid",
            DecodeClass::Registry => "registry_unavailable",
        }
    }

    /// Whether retrying the same bytes later may succeed (only when the
    /// failure was ours to reach the registry, never the record's content).
    pub fn is_retryable(self) -> bool {
        matches!(self, DecodeClass::Registry)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    pub class: DecodeClass,
    /// Field path when one field is at fault.
    pub field: Option<String>,
    pub message: String,
}

impl DecodeError {
    pub fn new(class: DecodeClass, message: impl Into<String>) -> Self {
        DecodeError { class, field: None, message: message.into() }
    }

    pub fn field(class: DecodeClass, field: impl Into<String>, message: impl Into<String>) -> Self {
        DecodeError { class, field: Some(field.into()), message: message.into() }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{}: field `{}`: {}", self.class.as_str(), field, self.message),
            None => write!(f, "{}: {}", self.class.as_str(), self.message),
        }
    }
}

impl std::error::Error for DecodeError {}
