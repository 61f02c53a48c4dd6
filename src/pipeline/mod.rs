//! Pipelines: each is a consumer group running a `Stage` on the shared
//! `runner` loop (DESIGN §2). `run` starts any subset in one process.

pub mod runner;
