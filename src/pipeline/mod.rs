//! Pipelines: each is a consumer group running a `Stage` on the shared
//! `runner` loop (design §2), which owns a record's lifecycle: `batch`
//! (decode once, group by partition, rejects), `retry` (the one policy),
//! then the stage's write and commit, and the `commit` strategy (the
//! delivery guarantee). Every pipeline is assembled the same way: its
//! module's `assemble` connects what it needs and hands [`launch`] a
//! function building its runner settings, stage and committer. `start`
//! runs any subset in one process, each on its own thread, with one
//! metrics/health endpoint.

pub mod analyze;
pub mod batch;
pub mod commit;
pub mod materialize;
pub mod notify;
pub mod replay;
pub mod retry;
pub mod runner;
pub mod stall;

use crate::codec::OutputFormat;
use crate::config::{CommonArgs, SecretUrl, Settings};
use crate::error::{Error, Result};
use crate::shutdown::Shutdown;
use crate::sources::kafka::Assignor;
use crate::telemetry::Readiness;
use crate::topics::names;
use batch::Decoder;
use commit::Committer;
use retry::RetryPolicy;
use runner::{RunnerConfig, Stage};
use tokio::task::JoinHandle;

/// The pipelines of design §2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Pipeline {
    Analyze,
    MaterializePostgres,
    MaterializeRedis,
    /// The alerts into Alertmanager (`--alertmanager-url`).
    NotifyAlertmanager,
}

impl Pipeline {
    pub fn name(self) -> &'static str {
        match self {
            Pipeline::Analyze => "analyze",
            Pipeline::MaterializePostgres => "materialize-postgres",
            Pipeline::MaterializeRedis => "materialize-redis",
            Pipeline::NotifyAlertmanager => "notify-alertmanager",
        }
    }

    /// The error classes of the sinks it writes (`udo_sink_retries_total`'s
    /// `sink` label).
    pub fn sinks(self) -> &'static [&'static str] {
        match self {
            Pipeline::Analyze => &["kafka", "postgres"],
            Pipeline::MaterializePostgres => &["postgres", "kafka"],
            Pipeline::MaterializeRedis => &["redis", "kafka"],
            Pipeline::NotifyAlertmanager => &["alertmanager", "kafka"],
        }
    }

    /// Every pipeline, in the order `status` lists them.
    pub const ALL: [Pipeline; 4] =
        [Pipeline::Analyze, Pipeline::MaterializePostgres, Pipeline::MaterializeRedis, Pipeline::NotifyAlertmanager];

    /// The topics its consumer group reads (full names).
    pub fn inputs(self, common: &CommonArgs) -> Vec<String> {
        let m = || crate::topics::Topics::with_prefix(&common.topic_prefix);
        match self {
            Pipeline::Analyze => m().analyze_inputs(),
            Pipeline::MaterializePostgres => m().postgres_inputs(),
            Pipeline::MaterializeRedis => m().redis_inputs(),
            Pipeline::NotifyAlertmanager => vec![common.topic(names::ALERTS)],
        }
    }

    /// Input topics whose records can arrive late (`udo_late_events_total`).
    fn late_topics(self, common: &CommonArgs) -> Vec<String> {
        match self {
            Pipeline::Analyze => [names::LATENCY, names::FEEDBACK].iter().map(|t| common.topic(t)).collect(),
            _ => Vec::new(),
        }
    }

    /// Consumer group (`udo-<pipeline>`, after the topic prefix so test runs
    /// and environments sharing a cluster never share a group).
    pub fn group(self, common: &CommonArgs) -> String {
        format!("{}udo-{}", common.topic_prefix, self.name())
    }
}

/// Everything `start` needs besides the common flags.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub pipelines: Vec<Pipeline>,
    pub settings: Settings,
    pub database_url: Option<SecretUrl>,
    pub redis_url: Option<SecretUrl>,
    pub alertmanager_url: Option<SecretUrl>,
    pub output_format: OutputFormat,
}

fn need<'a>(value: &'a Option<SecretUrl>, what: &str, pipeline: Pipeline) -> Result<&'a str> {
    value.as_ref().map(SecretUrl::expose).filter(|v| !v.is_empty()).ok_or_else(|| {
        Error::Config(format!("pipeline {} needs {what} (set the flag or the environment variable)", pipeline.name()))
    })
}

/// The runner settings every pipeline shares.
pub(crate) fn runner_config(
    pipeline: &'static str,
    common: &CommonArgs,
    settings: &Settings,
    decoder: &Decoder,
    group: String,
    topics: Vec<String>,
    assignor: Assignor,
) -> RunnerConfig {
    let s = &settings.materialize;
    RunnerConfig {
        pipeline,
        kafka: common.kafka.clone(),
        group,
        topics,
        assignor,
        decoder: decoder.clone(),
        dlq_topic: common.topic(names::DLQ),
        batch_size: s.batch_size,
        linger: s.linger,
        retry: RetryPolicy::of(settings),
    }
}

/// What [`launch`] runs: a pipeline's runner settings, stage and committer.
pub(crate) type Parts<S, K> = (RunnerConfig, S, K);

/// A build function for parts made once (a pipeline whose committer has no
/// producer to replace).
pub(crate) fn once<S, K>(parts: Parts<S, K>) -> impl FnMut() -> Result<Parts<S, K>> + Send + 'static
where
    S: Stage,
    K: Committer,
{
    let mut parts = Some(parts);
    move || parts.take().ok_or_else(|| Error::Internal("a pipeline built once was started twice".into()))
}

/// Starts a pipeline on its own thread: `build` makes its parts, and makes
/// them again, after a backoff of `retry`, when the committer's producer
/// failed fatally (a new producer aborts what the old one left open).
pub(crate) fn launch<S: Stage, K: Committer>(
    retry: RetryPolicy,
    shutdown: Shutdown,
    readiness: Readiness,
    mut build: impl FnMut() -> Result<Parts<S, K>> + Send + 'static,
) -> JoinHandle<Result<()>> {
    tokio::task::spawn_blocking(move || {
        let mut restarts = retry.start();
        loop {
            let (cfg, stage, committer) = build()?;
            let pipeline = cfg.pipeline;
            match runner::run(cfg, stage, committer, shutdown.clone(), readiness.clone()) {
                Err(Error::ProducerFatal(why)) if !shutdown.requested() => {
                    let e = Error::Unavailable(why);
                    let delay = restarts.next_delay(&e).unwrap_or(retry.max_delay);
                    tracing::warn!(pipeline, "restarting in {delay:?}: {e}");
                    if shutdown.sleep(delay) {
                        return Ok(());
                    }
                }
                // Shutting down with librdkafka wedged: the open transaction
                // was never committed, so nothing it holds is visible or
                // lost; the next start aborts it and reads its inputs again.
                Err(Error::ProducerFatal(why)) => {
                    tracing::warn!(
                        pipeline,
                        "exiting with the last transaction uncommitted (the next start aborts it and reprocesses \
                         its inputs): {why}"
                    );
                    return Ok(());
                }
                other => return other,
            }
        }
    })
}

/// Runs the chosen pipelines until shutdown; the first failure stops the others.
pub async fn start(common: CommonArgs, opts: RunOptions, shutdown: Shutdown, readiness: Readiness) -> Result<()> {
    let mut handles = Vec::new();
    for &p in &opts.pipelines {
        crate::telemetry::events::PipelineStarted {
            pipeline: p.name(),
            sinks: p.sinks(),
            late_topics: &p.late_topics(&common),
            inputs: &p.inputs(&common),
            analyzer: p == Pipeline::Analyze,
        }
        .emit();
        let group = p.group(&common);
        let (sd, rd) = (shutdown.clone(), readiness.clone());
        let handle = match p {
            Pipeline::Analyze => analyze::assemble(&common, &opts, group, sd, rd).await?,
            Pipeline::NotifyAlertmanager => notify::assemble(&common, &opts, group, sd, rd)?,
            Pipeline::MaterializePostgres | Pipeline::MaterializeRedis => {
                materialize::assemble(p, &common, &opts, group, sd, rd).await?
            }
        };
        handles.push((p, handle));
    }
    // The first pipeline to fail ends the process (its supervisor restarts
    // it; every pipeline resumes from its own durable offsets): a process
    // that kept running with one pipeline dead would look healthy.
    let mut pending: Vec<_> = handles.into_iter().map(|(p, h)| Box::pin(async move { (p, h.await) })).collect();
    while !pending.is_empty() {
        let ((p, joined), _, rest) = futures_util::future::select_all(pending).await;
        pending = rest;
        let result = joined.map_err(|e| Error::Internal(format!("pipeline {} panicked: {e}", p.name())))?;
        if let Err(e) = result {
            tracing::error!(pipeline = p.name(), "failed: {e}");
            return Err(e);
        }
    }
    Ok(())
}
