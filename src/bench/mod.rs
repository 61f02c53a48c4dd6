//! Benchmarks behind `udo-stream bench …`: each measures a pipeline's store
//! or compute path against a plain baseline on the same data, in one run, so
//! the ratio means something on any machine (BENCHMARKS.md has figures).

pub mod alloc;
pub mod analyze;
pub mod materialize;
