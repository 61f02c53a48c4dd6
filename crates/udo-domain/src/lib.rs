//! Product logic with no IO: events and their validation. Nothing here may
//! import tokio, rdkafka, sqlx or redis, so every rule is testable in-process.

pub mod engine;
pub mod events;
pub mod hysteresis;
pub mod latency;
pub mod partitioner;
pub mod promotion;
pub mod rules;
pub mod subject;
pub mod uncertainty;
pub mod validate;
pub mod windows;

pub use events::*;
pub use validate::{Limits, ValidationError};
