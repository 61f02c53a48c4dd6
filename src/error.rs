//! The crate's error type, classified by whose problem it is (user, external
//! system, or us) so the CLI can say what to fix and pipelines know what to
//! retry.

use crate::codec::{EncodeError, RegistryError};
use rdkafka::error::KafkaError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorDomain {
    /// Bad flags, config or files: the user fixes it; retrying is pointless.
    User,
    /// A broker, database or registry failed or refused: may pass.
    External,
    /// A bug or broken invariant in udo-stream.
    Internal,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Config(String),
    #[error("kafka: {op}: {source}")]
    Kafka {
        op: String,
        #[source]
        source: KafkaError,
    },
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Encode(#[from] EncodeError),
    #[error("{op}: {source}")]
    Io {
        op: String,
        #[source]
        source: std::io::Error,
    },
    #[error("postgres: {op}: {source}")]
    Postgres {
        op: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("redis: {op}: {source}")]
    Redis {
        op: String,
        #[source]
        source: redis::RedisError,
    },
    #[error("{0}")]
    Failed(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn kafka(op: impl Into<String>) -> impl FnOnce(KafkaError) -> Error {
        let op = op.into();
        move |source| Error::Kafka { op, source }
    }

    pub fn postgres(op: impl Into<String>) -> impl FnOnce(sqlx::Error) -> Error {
        let op = op.into();
        move |source| Error::Postgres { op, source }
    }

    pub fn redis(op: impl Into<String>) -> impl FnOnce(redis::RedisError) -> Error {
        let op = op.into();
        move |source| Error::Redis { op, source }
    }

    pub fn domain(&self) -> ErrorDomain {
        match self {
            Error::Config(_) => ErrorDomain::User,
            Error::Kafka { .. }
            | Error::Io { .. }
            | Error::Postgres { .. }
            | Error::Redis { .. }
            | Error::Failed(_) => ErrorDomain::External,
            Error::Registry(e) if e.is_retryable() => ErrorDomain::External,
            Error::Registry(_) => ErrorDomain::User,
            Error::Encode(_) => ErrorDomain::Internal,
        }
    }

    /// Process exit code: 2 for usage/config errors (as clap), 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self.domain() {
            ErrorDomain::User => 2,
            _ => 1,
        }
    }
}
