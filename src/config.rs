//! Configuration shared by every command: flags with environment fallbacks
//! (`KAFKA_BROKERS`, `SCHEMA_REGISTRY_URL`, `UDO_*`). Secrets never reach
//! logs: `Display` of anything holding a URL goes through `redact`.

use crate::codec::{Catalog, Codec, HttpRegistry, OutputFormat, SchemaRegistry};
use crate::domain::Limits;
use crate::topics::TopicCatalog;
use clap::Args;
use std::sync::Arc;

#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// Kafka bootstrap servers, comma-separated.
    #[arg(long, global = true, env = "KAFKA_BROKERS", default_value = "127.0.0.1:19092")]
    pub brokers: String,

    /// Prefix added to every topic name, to run several environments (or
    /// test runs) on one cluster.
    #[arg(long, global = true, env = "UDO_TOPIC_PREFIX", default_value = "")]
    pub topic_prefix: String,

    /// Confluent Schema Registry URL; when set, Avro output uses Confluent
    /// framing and subjects `<topic>-value`.
    #[arg(long, global = true, env = "SCHEMA_REGISTRY_URL")]
    pub schema_registry_url: Option<String>,

    /// Dimension of context-chunk embeddings (pgvector `vector(N)`).
    #[arg(long, global = true, env = "UDO_EMBEDDING_DIM", default_value_t = 384)]
    pub embedding_dim: usize,

    /// Records larger than this many bytes are rejected to the DLQ.
    #[arg(long, global = true, env = "UDO_MAX_RECORD_BYTES", default_value_t = 1024 * 1024)]
    pub max_record_bytes: usize,
}

impl CommonArgs {
    pub fn limits(&self) -> Limits {
        Limits { embedding_dim: self.embedding_dim, max_record_bytes: self.max_record_bytes }
    }

    pub fn registry(&self) -> Option<Arc<dyn SchemaRegistry>> {
        self.schema_registry_url
            .as_deref()
            .filter(|u| !u.is_empty())
            .map(|u| Arc::new(HttpRegistry::new(u)) as Arc<dyn SchemaRegistry>)
    }

    pub fn codec(&self, format: OutputFormat) -> Codec {
        Codec::new(Arc::new(Catalog::builtin()), self.limits(), self.registry(), format)
    }

    pub fn topics(&self) -> TopicCatalog {
        TopicCatalog::builtin()
    }

    /// Full topic name for a contract name.
    pub fn topic(&self, name: &str) -> String {
        format!("{}{name}", self.topic_prefix)
    }

    /// Contract name for a full topic name (prefix stripped).
    pub fn contract_name<'a>(&self, topic: &'a str) -> &'a str {
        topic.strip_prefix(self.topic_prefix.as_str()).unwrap_or(topic)
    }
}

/// Hides the password of a `scheme://user:password@host` URL.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => match url[s + 3..at].split_once(':') {
            Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
            None => url.to_string(),
        },
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn redact_hides_passwords_only() {
        assert_eq!(super::redact("postgres://udo:secret@h:5432/udo"), "postgres://udo:***@h:5432/udo");
        assert_eq!(super::redact("redis://h:1/0"), "redis://h:1/0");
        assert_eq!(super::redact("http://user@h"), "http://user@h");
    }
}
