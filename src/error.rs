//! The crate's error type. Each error says whose problem it is (`domain`:
//! user, external system, or us), which the CLI turns into an exit code, and
//! what a pipeline does about it (`retry`: back off and try again, or stop),
//! which the runner's one retry policy follows. Bad records are not errors:
//! they are rejects, and go to the DLQ (`pipeline::batch`).

use crate::codec::{EncodeError, RegistryError};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorDomain {
    /// Bad flags, config or files: the user fixes it; retrying is pointless.
    User,
    /// A broker, database or registry failed or refused: may pass.
    External,
    /// A bug or broken invariant in udo-stream.
    Internal,
}

/// What a pipeline does with a failed step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Transient (a store or broker outage): pause, back off, try again.
    Backoff,
    /// Retrying cannot help (a bug, a refused configuration, data a store
    /// cannot hold that validation let through): stop the pipeline with the
    /// message, never retry forever and never skip.
    Stop,
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
    /// An external system did not answer in time or dropped a request.
    #[error("{0}")]
    Unavailable(String),
    /// Alertmanager's API: down or overloaded (`transient`, retried), or it
    /// refused the request (a bad URL, credentials, payload: not retried).
    #[error("alertmanager: {message}")]
    Alertmanager { message: String, transient: bool },
    /// Exactly-once: this instance's transactional producer was fenced by a
    /// newer one with the same transactional id (or its transaction timed
    /// out). Not retried: the other instance carries on.
    #[error("{0}")]
    Fenced(String),
    /// Exactly-once: the transactional producer hit a fatal error of its
    /// own (not another instance's fencing). The runner stops; the pipeline
    /// restarts with a new producer, which aborts what was open.
    #[error("{0}")]
    ProducerFatal(String),
    /// A broken invariant: a bug in udo-stream.
    #[error("internal error (a bug in udo-stream, please report it): {0}")]
    Internal(String),
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
            Error::Kafka { .. } | Error::Io { .. } | Error::Postgres { .. } | Error::Redis { .. } => {
                ErrorDomain::External
            }
            Error::Unavailable(_) | Error::Fenced(_) | Error::ProducerFatal(_) => ErrorDomain::External,
            Error::Alertmanager { transient: true, .. } => ErrorDomain::External,
            Error::Alertmanager { .. } => ErrorDomain::User,
            Error::Registry(e) if e.is_retryable() => ErrorDomain::External,
            Error::Registry(_) => ErrorDomain::User,
            Error::Encode(_) | Error::Internal(_) => ErrorDomain::Internal,
        }
    }

    /// The retry hint (see [`Retry`]).
    pub fn retry(&self) -> Retry {
        let transient = match self {
            Error::Config(_) | Error::Encode(_) | Error::Internal(_) | Error::Fenced(_) | Error::ProducerFatal(_) => {
                false
            }
            Error::Registry(e) => e.is_retryable(),
            Error::Io { .. } | Error::Unavailable(_) => true,
            Error::Alertmanager { transient, .. } => *transient,
            Error::Kafka { source, .. } => kafka_transient(source),
            Error::Postgres { source, .. } => postgres_transient(source),
            Error::Redis { source, .. } => redis_transient(source),
        };
        if transient { Retry::Backoff } else { Retry::Stop }
    }

    /// A bounded label for `udo_errors_total{class}`.
    pub fn class(&self) -> &'static str {
        match self {
            Error::Config(_) => "config",
            Error::Kafka { .. } => "kafka",
            Error::Registry(_) => "registry",
            Error::Encode(_) => "encode",
            Error::Io { .. } => "io",
            Error::Postgres { .. } => "postgres",
            Error::Redis { .. } => "redis",
            Error::Unavailable(_) => "unavailable",
            Error::Alertmanager { .. } => "alertmanager",
            Error::Fenced(_) => "fenced",
            Error::ProducerFatal(_) => "producer_fatal",
            Error::Internal(_) => "internal",
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

/// Kafka errors that retrying cannot fix: authentication and authorization,
/// a record the broker will never take, a fenced or fatal client, bad config.
fn kafka_transient(e: &KafkaError) -> bool {
    use RDKafkaErrorCode as C;
    let code = match e {
        KafkaError::ClientConfig(..) | KafkaError::ClientCreation(_) | KafkaError::Subscription(_) => return false,
        other => other.rdkafka_error_code(),
    };
    !matches!(
        code,
        Some(
            C::Fatal
                | C::Authentication
                | C::SaslAuthenticationFailed
                | C::TopicAuthorizationFailed
                | C::GroupAuthorizationFailed
                | C::ClusterAuthorizationFailed
                | C::TransactionalIdAuthorizationFailed
                | C::MessageSizeTooLarge
                | C::InvalidRecord
                | C::ProducerFenced
                | C::InvalidProducerEpoch
                | C::InvalidArgument
                | C::InvalidConfig
        )
    )
}

/// Postgres errors that are ours, not the server's state: a value or a
/// statement the database refuses (SQLSTATE classes 22 data exception, 23
/// integrity, 42 syntax or undefined object) fails the same way every time.
fn postgres_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            !(code.starts_with("22") || code.starts_with("23") || code.starts_with("42"))
        }
        sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::ColumnIndexOutOfBounds { .. }
        | sqlx::Error::TypeNotFound { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::Encode(_)
        | sqlx::Error::Configuration(_)
        | sqlx::Error::Migrate(_) => false,
        _ => true,
    }
}

/// Redis errors that are ours: a script or type error, a refused login.
fn redis_transient(e: &redis::RedisError) -> bool {
    use redis::ErrorKind as K;
    !matches!(
        e.kind(),
        K::ResponseError | K::TypeError | K::ParseError | K::AuthenticationFailed | K::InvalidClientConfig
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outages_back_off_and_bugs_stop() {
        let timeout = Error::Kafka {
            op: "produce".into(),
            source: KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut),
        };
        assert_eq!(timeout.retry(), Retry::Backoff);
        let too_large = Error::Kafka {
            op: "produce".into(),
            source: KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge),
        };
        assert_eq!(too_large.retry(), Retry::Stop);
        assert_eq!(Error::postgres("write")(sqlx::Error::PoolTimedOut).retry(), Retry::Backoff);
        assert_eq!(Error::postgres("write")(sqlx::Error::ColumnNotFound("x".into())).retry(), Retry::Stop);
        let io = redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(Error::redis("apply")(io).retry(), Retry::Backoff);
        let script = redis::RedisError::from((redis::ErrorKind::ResponseError, "script error"));
        assert_eq!(Error::redis("apply")(script).retry(), Retry::Stop);
        assert_eq!(Error::Internal("x".into()).retry(), Retry::Stop);
        assert!(Error::Internal("x".into()).to_string().contains("bug"));
        assert_eq!(Error::Unavailable("ping timed out".into()).retry(), Retry::Backoff);
        assert_eq!(Error::Config("bad".into()).retry(), Retry::Stop);
    }
}
