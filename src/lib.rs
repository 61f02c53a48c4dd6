//! udo-stream: an event-driven stream processor (see README for the map).

pub mod codec;
pub mod domain;
pub mod synth;
