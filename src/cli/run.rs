//! `udo-stream run`: start pipelines (design §2) with a metrics and health
//! endpoint, until SIGINT/SIGTERM.

use crate::codec::OutputFormat;
use crate::config::{CommonArgs, SecretUrl};
use crate::error::{Error, Result};
use crate::pipeline::{Pipeline, RunOptions, start};
use crate::shutdown::Shutdown;
use crate::telemetry::{Readiness, metrics_handle, serve};
use clap::{Args, ValueEnum};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Avro (single-object, or Confluent framing with a registry).
    Avro,
    Json,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Pipelines to run, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', required = true, env = "UDO_PIPELINES")]
    pub pipelines: Vec<Pipeline>,
    /// PostgreSQL URL (materializer tables, analyzer checkpoints).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<SecretUrl>,
    /// Redis URL (materialize-redis).
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<SecretUrl>,
    /// Alertmanager base URL, e.g. http://127.0.0.1:9093 (notify-alertmanager).
    #[arg(long, env = "ALERTMANAGER_URL", hide_env_values = true)]
    pub alertmanager_url: Option<SecretUrl>,
    /// Address of the /metrics, /healthz and /readyz endpoint.
    #[arg(long, env = "UDO_METRICS_ADDR", default_value = "127.0.0.1:9464")]
    pub metrics_addr: String,
    /// Encoding of output events.
    #[arg(long, value_enum, default_value = "avro")]
    pub output_format: Format,
}

pub async fn run(common: CommonArgs, args: RunArgs, shutdown: Shutdown) -> Result<()> {
    let settings = common.settings.clone();
    let readiness = Readiness::default();
    let addr = serve(&args.metrics_addr, metrics_handle(), readiness.clone()).await.map_err(|e| Error::Io {
        op: format!("listen on {} (set --metrics-addr / UDO_METRICS_ADDR to another address)", args.metrics_addr),
        source: e,
    })?;
    let mut pipelines = args.pipelines.clone();
    pipelines.sort();
    pipelines.dedup();
    tracing::info!(
        pipelines = ?pipelines.iter().map(|p| p.name()).collect::<Vec<_>>(),
        brokers = %common.brokers,
        database = %args.database_url.as_ref().map(SecretUrl::to_string).unwrap_or_default(),
        redis = %args.redis_url.as_ref().map(SecretUrl::to_string).unwrap_or_default(),
        "starting; metrics on http://{addr}/metrics"
    );
    let opts = RunOptions {
        pipelines,
        settings,
        database_url: args.database_url,
        redis_url: args.redis_url,
        alertmanager_url: args.alertmanager_url,
        output_format: match args.output_format {
            Format::Avro => OutputFormat::Avro,
            Format::Json => OutputFormat::Json,
        },
    };
    start(common, opts, shutdown, readiness).await
}
