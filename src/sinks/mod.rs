//! Where records go: Kafka producers (and, later, the stores).

pub mod dlq;
pub mod kafka;
