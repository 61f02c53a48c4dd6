//! Where records go: Kafka producers (outputs, the DLQ, the analyzer's
//! changelog), PostgreSQL, Redis and the analyzer's checkpoints.

pub mod alertmanager;
pub mod changelog;
pub mod checkpoints;
pub mod dlq;
pub mod kafka;
pub mod postgres;
pub mod redis;

use crate::domain::Event;

/// What a store writes: one partition's decoded events in offset order
/// (records that did not decode are absent) and the offset the partition
/// resumes from once they are durable (last offset + 1, or further when
/// trailing records went to the DLQ).
#[derive(Debug, Clone)]
pub struct EventBatch<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub next_offset: i64,
    pub records: Vec<(i64, &'a Event)>,
}
