//! Telemetry, in one place: logging (stderr; stdout belongs to command output
//! such as `tail`'s JSON lines, level from `UDO_LOG`), the Prometheus
//! recorder, and the HTTP endpoint serving `/metrics`, `/healthz` and
//! `/readyz`. Internal events, each logging and counting together, are in
//! `events`.

pub mod components;
pub mod dlq_log;
pub mod events;
mod quiet;
mod server;

pub use server::{Readiness, serve};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

pub fn init() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    // Database notices ("relation ... already exists, skipping") are DEBUG.
    let directives = std::env::var("UDO_LOG").unwrap_or_default();
    let filter = tracing_subscriber::EnvFilter::try_new(&directives)
        .ok()
        .filter(|_| !directives.is_empty())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info,rdkafka=warn,sqlx::postgres::notice=warn"));
    let verbose = directives.contains("debug") || directives.contains("trace");
    // Colours only on a terminal: logs piped to files stay greppable.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_target(false).with_ansi(ansi);
    let _ = tracing_subscriber::registry().with(filter).with(quiet::QuietLibrdkafka::new(verbose)).with(fmt).try_init();
}

/// `1 record`, `2 records`: counts in messages people read.
pub fn count(n: impl Into<u64>, noun: &str) -> String {
    let n = n.into();
    if n == 1 { format!("1 {noun}") } else { format!("{n} {noun}s") }
}

/// Seconds buckets for batch and checkpoint latencies: 1 ms to 30 s.
const SECONDS_BUCKETS: [f64; 14] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Installs the process-wide Prometheus recorder once and returns its handle.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS_BUCKETS)
                .expect("non-empty bucket list")
                .build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder was installed first (a library
            // user's): theirs then receives our metrics, which is what they want.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}
