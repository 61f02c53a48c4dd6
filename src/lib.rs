//! udo-stream: an event-driven stream processor (see README for the map).

pub mod bench;
pub mod cli;
pub mod codec;
pub mod config;
pub mod domain;
pub mod error;
pub mod pipeline;
pub mod shutdown;
pub mod sinks;
pub mod sources;
pub mod synth;
pub mod telemetry;
pub mod topics;
