//! Logging setup: human-readable lines on stderr (stdout belongs to command
//! output such as `tail`'s JSON lines), level from `UDO_LOG` (default info).

pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("UDO_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rdkafka=warn"));
    let _ =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).try_init();
}
