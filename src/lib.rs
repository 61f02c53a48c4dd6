//! udo-stream: an event-driven stream processor (see README for the map).

//!
//! The pure logic lives in workspace crates that cannot do IO (they do not
//! depend on tokio, rdkafka, sqlx or redis): `udo-domain` (events, windows,
//! the analyzer engine, promotion), `udo-codec` (Avro/JSON wire formats),
//! `udo-synth` (seeded synthetic load). They are re-exported here under
//! their short names.

pub use udo_codec as codec;
pub use udo_domain as domain;
pub use udo_synth as synth;

pub mod bench;
pub mod cli;
pub mod config;
pub mod error;
pub mod pipeline;
pub mod registry;
pub mod shutdown;
pub mod sinks;
pub mod sources;
pub mod telemetry;
pub mod topics;
pub mod wiring;

/// The wall clock, ms since the Unix epoch (the pure crates take time as
/// input; this is the one place the binary reads it as epoch millis).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}
