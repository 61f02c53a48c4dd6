//! Where records go: Kafka producers (and, later, the stores).

pub mod checkpoints;
pub mod dlq;
pub mod kafka;
pub mod postgres;
pub mod redis;
