//! `udo-stream bench`: benchmarks (release build recommended). Each variant
//! of the enum is one benchmark; they print figures and ratios.

use crate::bench::materialize::{BenchConfig, run};
use crate::config::CommonArgs;
use crate::error::{Error, Result};
use clap::{Args, Subcommand};

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Materializer store paths vs binary COPY / multi-row INSERT (Postgres)
    /// and a raw pipelined HSET (Redis), on the same data and batch size.
    Materialize(MaterializeArgs),
    /// Analyzer: engine samples/s on one core, memory per key, P95 error,
    /// and the pipeline through the broker vs a raw rdkafka drain.
    Analyze(crate::bench::analyze::AnalyzeBenchArgs),
}

#[derive(Debug, Args)]
pub struct MaterializeArgs {
    /// Mixed events to write (the `produce all` mix).
    #[arg(long, default_value_t = 200_000)]
    pub records: usize,
    /// Records per batch (transaction / pipeline round trip), for every variant.
    #[arg(long, default_value_t = 5000)]
    pub batch_size: usize,
    /// Seed of the synthetic events.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// PostgreSQL server URL; a scratch database is created on it and dropped.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    /// Redis URL; its database is FLUSHED by the benchmark (default: database 10).
    #[arg(long, env = "UDO_BENCH_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
}

pub async fn run_bench(common: CommonArgs, cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Analyze(a) => crate::bench::analyze::run(common, a).await,
        BenchCommand::Materialize(a) => {
            if a.records == 0 || a.batch_size == 0 {
                return Err(Error::Config("--records and --batch-size must be at least 1".into()));
            }
            let redis_url = match a.redis_url {
                Some(u) => u,
                None => {
                    let base = std::env::var("REDIS_URL").map_err(|_| {
                        Error::Config("set --redis-url / UDO_BENCH_REDIS_URL or REDIS_URL (database 10 is used)".into())
                    })?;
                    let base = base.trim_end_matches('/');
                    match base.rsplit_once('/') {
                        Some((server, db)) if db.parse::<u32>().is_ok() && server.contains("://") => {
                            format!("{server}/10")
                        }
                        _ => format!("{base}/10"),
                    }
                }
            };
            let dim = u32::try_from(common.embedding_dim)
                .map_err(|_| Error::Config("UDO_EMBEDDING_DIM is too large".into()))?;
            let cfg = BenchConfig {
                database_url: a.database_url,
                redis_url,
                records: a.records,
                batch_size: a.batch_size,
                embedding_dim: dim,
                seed: a.seed,
            };
            eprintln!(
                "bench: {} records, batch size {}, embedding dim {dim} (Kafka and decoding excluded)",
                cfg.records, cfg.batch_size
            );
            let report = run(&cfg).await?;
            for line in report.lines() {
                println!("{line}");
            }
            Ok(())
        }
    }
}
