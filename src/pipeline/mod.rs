//! Pipelines: each is a consumer group running a `Stage` on the shared
//! `runner` loop (design §2), which owns a record's lifecycle: `batch`
//! (decode once, group by partition, rejects), `retry` (the one policy),
//! then the stage's write and commit. `start` runs any subset in one
//! process, each on its own thread, with one metrics/health endpoint.

pub mod analyze;
pub mod batch;
pub mod materialize;
pub mod notify;
pub mod replay;
pub mod retry;
pub mod runner;
pub mod stall;
pub mod transaction;

use crate::codec::OutputFormat;
use crate::config::{CommonArgs, SecretUrl, Settings};
use crate::error::{Error, Result};
use crate::shutdown::Shutdown;
use crate::sources::kafka::Assignor;
use crate::telemetry::Readiness;
use crate::topics::names;
use batch::Decoder;
use retry::RetryPolicy;
use runner::RunnerConfig;

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
        let m = || materialize::MaterializeTopics::with_prefix(&common.topic_prefix);
        match self {
            Pipeline::Analyze => analyze::AnalyzeTopics::with_prefix(&common.topic_prefix).inputs(),
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
        retry: RetryPolicy::new(s.retry_min_delay, s.retry_max_delay),
        txn: None,
    }
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
        match p {
            Pipeline::Analyze => {
                let handle = analyze::start(&common, &opts, group, shutdown.clone(), readiness.clone()).await?;
                handles.push((p, handle));
            }
            Pipeline::NotifyAlertmanager => {
                let url = need(&opts.alertmanager_url, "--alertmanager-url / ALERTMANAGER_URL", p)?;
                let n = &opts.settings.notify;
                let am = crate::sinks::alertmanager::Alertmanager::new(&SecretUrl::from(url), n.request_timeout);
                let topic = common.topic(names::ALERTS);
                let decoder = common.decoder(opts.output_format);
                let stage = notify::NotifyStage::new(
                    am,
                    common.kafka.clone(),
                    common.codec(opts.output_format),
                    topic.clone(),
                    n.resend_interval,
                );
                let cfg = runner_config(
                    p.name(),
                    &common,
                    &opts.settings,
                    &decoder,
                    group,
                    vec![topic],
                    Assignor::CooperativeSticky,
                );
                let (sd, rd) = (shutdown.clone(), readiness.clone());
                handles.push((p, tokio::task::spawn_blocking(move || runner::run(cfg, stage, sd, rd))));
            }
            Pipeline::MaterializePostgres | Pipeline::MaterializeRedis => {
                let job = materialize::prepare(p, &common, &opts, group, readiness.clone()).await?;
                let (sd, rd) = (shutdown.clone(), readiness.clone());
                handles.push((p, tokio::task::spawn_blocking(move || job.run(sd, rd))));
            }
        }
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
