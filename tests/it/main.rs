//! The integration tests: one binary against the real local stack
//! (`scripts/test` starts it). One binary links the crate once and lets
//! suites run side by side; the services a suite breaks on purpose are
//! guarded by the locks in `support::lease`, so a fault in one suite never
//! lands in another.

mod support;

mod alertmanager;
mod analyze;
mod broker_faults;
mod cluster;
mod compose;
mod connect;
mod demo;
mod exactly_once;
mod hostile;
mod interop;
mod kafka_roundtrip;
mod materialize;
mod materialize_faults;
mod prometheus;
mod registry;
mod replay;
mod secure;
mod state_scale;
mod stores;
mod third_party;
