//! Where records go: Kafka producers (outputs, the DLQ, the analyzer's
//! changelog), PostgreSQL, Redis and the analyzer's checkpoints.

pub mod alertmanager;
pub mod changelog;
pub mod checkpoints;
pub mod dlq;
pub mod kafka;
pub mod postgres;
pub mod redis;
