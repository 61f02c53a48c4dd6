//! Where records come from: Kafka consumers.

pub mod kafka;
pub mod record;
