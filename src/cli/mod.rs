//! The `udo-stream` command line (design §7). Each subcommand lives in its
//! own file; this one parses and dispatches.

mod bench;
mod produce;
mod replay;
pub(crate) mod run;
mod schemas;
mod status;
mod tail;
mod topics;

use crate::config::CommonArgs;
use crate::error::Result;
use crate::shutdown::Shutdown;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "udo-stream",
    version,
    about = "Event-driven stream processor: Kafka to PostgreSQL/pgvector and Redis",
    after_help = "First steps: in a checkout, `scripts/demo` tells the whole story and `eval \"$(scripts/stack env)\"` \
                  points every command at the local stack. `udo-stream status` shows what is wrong right now; \
                  `udo-stream <command> --help` explains each command; docs/ has configuration, operations \
                  and the delivery guarantees."
)]
pub struct Cli {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run pipelines (analyze, materialize-postgres, materialize-redis).
    Run(run::RunArgs),
    /// Publish synthetic events (realistic distributions, injectable incidents).
    Produce(produce::ProduceArgs),
    /// Reprocess a time range of topics into the stores (backfill), without re-alerting.
    Replay(replay::ReplayArgs),
    /// What is wrong right now: component health, open alerts, lag and dead
    /// letters per pipeline (from Kafka; `--json` for scripts).
    Status(status::StatusArgs),
    /// Decode and print a topic, one JSON line per record.
    Tail(tail::TailArgs),
    /// Topics as code (`topics/*.yaml`).
    #[command(subcommand)]
    Topics(topics::TopicsCommand),
    /// Avro schemas (`schemas/*.avsc`).
    #[command(subcommand)]
    Schemas(schemas::SchemasCommand),
    /// Benchmarks (build with --release).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

pub async fn run(mut cli: Cli) -> Result<()> {
    cli.common.load(std::env::vars()).map_err(crate::error::Error::Config)?;
    // Every command but `schemas` talks to Kafka: connect once up front, so
    // a wrong password or CA fails in seconds with what to fix.
    if !matches!(cli.command, Command::Schemas(_)) {
        let kafka = cli.common.kafka.clone();
        tokio::task::spawn_blocking(move || {
            crate::sources::kafka::check_connection(&kafka, std::time::Duration::from_secs(60))
        })
        .await
        .map_err(|e| crate::error::Error::Internal(format!("connection check panicked: {e}")))??;
    }
    let shutdown = Shutdown::install();
    match cli.command {
        Command::Run(args) => run::run(cli.common, args, shutdown).await,
        Command::Produce(args) => produce::run(cli.common, args, shutdown).await,
        Command::Replay(args) => replay::run(cli.common, args, shutdown).await,
        Command::Tail(args) => tail::run(cli.common, args, shutdown).await,
        Command::Status(args) => status::run(cli.common, args).await,
        Command::Topics(cmd) => topics::run(cli.common, cmd).await,
        Command::Schemas(cmd) => schemas::run(cli.common, cmd).await,
        Command::Bench(cmd) => bench::run_bench(cli.common, cmd).await,
    }
}
