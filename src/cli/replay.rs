//! `udo-stream replay`: reprocess a time range of topics into the stores
//! (backfill or repair), without re-alerting. See `pipeline/replay.rs`.

use crate::codec::OutputFormat;
use crate::config::{CommonArgs, SecretUrl};
use crate::error::{Error, Result};
use crate::pipeline::replay::{MAX_ATTEMPTS, ReplayConfig, replay};
use crate::pipeline::retry::RetryPolicy;
use crate::shutdown::Shutdown;
use crate::sinks::postgres::PgSink;
use crate::sinks::redis::RedisSink;
use crate::topics::Topics;
use clap::{Args, ValueEnum};
use std::collections::HashSet;
use std::time::UNIX_EPOCH;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ValueEnum)]
pub enum Store {
    Postgres,
    Redis,
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// Replay records stamped at or after this time: RFC 3339
    /// (2026-11-22T10:00:00Z), epoch milliseconds, or a duration ago (90m).
    #[arg(long)]
    pub from: String,
    /// ...and before this time (same forms); default: up to the end of each
    /// partition when the replay starts.
    #[arg(long)]
    pub to: Option<String>,
    /// Topics to replay (contract names, e.g. udo.latency.v1; --topic-prefix
    /// is added); default: every topic the chosen stores materialize.
    #[arg(long, value_delimiter = ',')]
    pub topics: Vec<String>,
    /// Stores to write.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "postgres,redis")]
    pub stores: Vec<Store>,
    /// PostgreSQL URL (needed with --stores postgres).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<SecretUrl>,
    /// Redis URL (needed with --stores redis).
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<SecretUrl>,
    /// Records per store write.
    #[arg(long, default_value_t = 5000)]
    pub batch_size: usize,
}

/// A point in time as epoch milliseconds: RFC 3339, epoch milliseconds, or
/// a duration before `now_ms`.
pub fn parse_time(flag: &str, text: &str, now_ms: i64) -> Result<i64, String> {
    let t = text.trim();
    if let Ok(ms) = t.parse::<i64>() {
        return Ok(ms);
    }
    if let Ok(at) = humantime::parse_rfc3339_weak(t) {
        let d = at.duration_since(UNIX_EPOCH).map_err(|_| format!("{flag} {t:?} is before 1970"))?;
        return Ok(d.as_millis() as i64);
    }
    if let Ok(ago) = humantime::parse_duration(t) {
        return Ok(now_ms - ago.as_millis() as i64);
    }
    Err(format!(
        "{flag} {t:?} is not a time: use RFC 3339 (2026-11-22T10:00:00Z), epoch milliseconds \
         (1763805600000) or a duration ago (90m, 2h)"
    ))
}

pub async fn run(common: CommonArgs, args: ReplayArgs, shutdown: Shutdown) -> Result<()> {
    let now_ms = crate::now_ms();
    let from_ms = parse_time("--from", &args.from, now_ms).map_err(Error::Config)?;
    let to_ms = args.to.as_deref().map(|t| parse_time("--to", t, now_ms)).transpose().map_err(Error::Config)?;
    if let Some(to) = to_ms.filter(|to| *to <= from_ms) {
        return Err(Error::Config(format!("--to ({to} ms) must be after --from ({from_ms} ms)")));
    }
    if args.batch_size == 0 {
        return Err(Error::Config("--batch-size must be at least 1".into()));
    }
    let stores: HashSet<Store> = args.stores.iter().copied().collect();
    let materialized = Topics::with_prefix(&common.topic_prefix);
    let redis_topics: HashSet<String> = materialized.redis_inputs().into_iter().collect();
    let catalog = crate::topics::TopicCatalog::builtin();
    let topics: Vec<String> = if args.topics.is_empty() {
        let mut t = Vec::new();
        if stores.contains(&Store::Postgres) {
            t.extend(materialized.postgres_inputs());
        }
        if stores.contains(&Store::Redis) {
            t.extend(materialized.redis_inputs());
        }
        t.sort();
        t.dedup();
        t
    } else {
        args.topics.iter().map(|t| common.topic(common.contract_name(t))).collect()
    };
    for t in &topics {
        let records = catalog.records(common.contract_name(t)).map_err(|e| {
            Error::Config(format!("--topics: {e} (replay reads the materialized topics: {})", names_of(&materialized)))
        })?;
        if records.is_empty() {
            return Err(Error::Config(format!("--topics: {t} holds no events to materialize (the DLQ?)")));
        }
    }
    let postgres = match (stores.contains(&Store::Postgres), &args.database_url) {
        (false, _) => None,
        (true, Some(url)) => Some(PgSink::connect(url.expose(), common.embedding_dim as u32).await?),
        (true, None) => {
            return Err(Error::Config("--stores postgres needs --database-url or DATABASE_URL".into()));
        }
    };
    let redis = match (stores.contains(&Store::Redis), &args.redis_url) {
        (false, _) => None,
        (true, Some(url)) => Some(RedisSink::connect(url.expose()).await?),
        (true, None) => return Err(Error::Config("--stores redis needs --redis-url or REDIS_URL".into())),
    };
    tracing::info!(
        topics = ?topics,
        from_ms,
        to_ms,
        database = %args.database_url.as_ref().filter(|_| postgres.is_some()).map(SecretUrl::to_string).unwrap_or_default(),
        redis = %args.redis_url.as_ref().filter(|_| redis.is_some()).map(SecretUrl::to_string).unwrap_or_default(),
        "replay: finding the range"
    );
    let cfg = ReplayConfig {
        kafka: common.kafka.clone(),
        topics,
        from_ms,
        to_ms,
        batch_size: args.batch_size,
        postgres,
        redis,
        redis_topics,
        decoder: crate::wiring::decoder(&common, OutputFormat::Avro),
        retry: RetryPolicy::of(&common.settings).with_max_attempts(MAX_ATTEMPTS),
    };
    let rt = tokio::runtime::Handle::current();
    let report = tokio::task::spawn_blocking(move || replay(&rt, &cfg, &shutdown))
        .await
        .map_err(|e| Error::Internal(format!("replay thread: {e}")))??;
    println!("{}", serde_json::to_string(&report).unwrap_or_default());
    if report.interrupted {
        return Err(Error::Unavailable(
            "replay interrupted before the end of the range (run it again: it is idempotent)".into(),
        ));
    }
    Ok(())
}

fn names_of(t: &Topics) -> String {
    let mut all = t.postgres_inputs();
    all.sort();
    all.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_in_every_form_and_errors_name_the_flag() {
        let now = 1_763_805_600_000;
        assert_eq!(parse_time("--from", "1763805600000", now), Ok(1_763_805_600_000));
        assert_eq!(parse_time("--from", "2025-11-22T10:00:00Z", now), Ok(1_763_805_600_000));
        assert_eq!(parse_time("--from", "2025-11-22T10:00:00.250Z", now), Ok(1_763_805_600_250));
        assert_eq!(parse_time("--from", "90m", now), Ok(now - 90 * 60_000));
        let err = parse_time("--to", "yesterday", now).unwrap_err();
        assert!(err.starts_with("--to \"yesterday\"") && err.contains("RFC 3339"), "{err}");
    }
}
