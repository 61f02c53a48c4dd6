//! `udo-stream produce`: synthetic load with progress and a final summary.

use crate::codec::OutputFormat;
use crate::config::CommonArgs;
use crate::domain::Event;
use crate::error::{Error, Result};
use crate::shutdown::Shutdown;
use crate::sinks::kafka::counting_producer;
use crate::synth::{Generator, Incident, Kind, SynthConfig, simulated_time};
use clap::{Args, ValueEnum};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, Producer};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Clock {
    /// Event time is the wall clock at send; sending is paced to --rate.
    Wall,
    /// Event time advances at --rate from --start, sent as fast as possible.
    Simulated,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Avro (single-object, or Confluent framing with a registry).
    Avro,
    Json,
}

#[derive(Debug, Args)]
pub struct ProduceArgs {
    /// Which events: latency samples, feedback ratings, writes (decision logs
    /// and context chunks), or all mixed like production.
    #[arg(value_enum)]
    pub kind: Kind,
    /// Records per second (nominal: with --clock simulated, the event-time rate).
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Stop after this many records.
    #[arg(long, conflicts_with = "duration")]
    pub count: Option<u64>,
    /// Stop after this much event time (e.g. 10s, 2h); with neither --count
    /// nor --duration a wall-clock run goes on until interrupted.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    #[arg(long, value_enum, default_value = "wall")]
    pub clock: Clock,
    /// Event time of the first record, RFC 3339 (2026-01-01T00:00:00Z) or
    /// epoch milliseconds. Default: now; with --clock simulated, now minus
    /// the run's event time, so the run ends at now (a later run is never
    /// behind an earlier one's watermark).
    #[arg(long)]
    pub start: Option<String>,
    /// Incident to inject, repeatable: slow:COMPONENT@START[+DURATION]
    /// (latency x10), errors:COMPONENT@START[+DURATION] (20% errors) or
    /// disputed:COMPONENT@START[+DURATION] (ratings 30% positive).
    #[arg(long = "incident")]
    pub incidents: Vec<Incident>,
    /// Random seed; the same seed and flags give the same events.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Probability that a rating is +1.
    #[arg(long, default_value_t = 0.85)]
    pub approval_rate: f64,
    /// Baseline error rate of latency samples.
    #[arg(long, default_value_t = 0.005)]
    pub error_rate: f64,
    #[arg(long, value_enum, default_value = "avro")]
    pub format: Format,
    /// Send even when the analyzer would find the records late (they go to
    /// the DLQ as `late`): for testing late handling.
    #[arg(long)]
    pub allow_late: bool,
    /// How often to print progress.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
    pub progress_every: Duration,
}

fn parse_start(s: &str) -> Result<i64> {
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    let t = humantime::parse_rfc3339_weak(s)
        .map_err(|e| Error::Config(format!("--start {s:?}: {e}; use RFC 3339 (2026-01-01T00:00:00Z) or epoch ms")))?;
    Ok(t.duration_since(std::time::UNIX_EPOCH).map_err(|e| Error::Config(format!("--start: {e}")))?.as_millis() as i64)
}

/// A simulated run of `n` records at `rate` per second of event time
/// without --start: it ends at `now`.
fn default_simulated_start(now: i64, n: u64, rate: f64) -> i64 {
    now - (n as f64 / rate * 1000.0).ceil() as i64
}

impl ProduceArgs {
    fn check(&self) -> Result<Option<u64>> {
        if !(self.rate.is_finite() && self.rate > 0.0) {
            return Err(Error::Config(format!("--rate must be a positive number, got {}", self.rate)));
        }
        for (flag, v) in [("--approval-rate", self.approval_rate), ("--error-rate", self.error_rate)] {
            if !(0.0..=1.0).contains(&v) {
                return Err(Error::Config(format!("{flag} must be within [0, 1], got {v}")));
            }
        }
        let total = self.count.or(self.duration.map(|d| (self.rate * d.as_secs_f64()).round() as u64));
        if total.is_none() && self.clock == Clock::Simulated {
            return Err(Error::Config("--clock simulated needs --count or --duration (it does not wait)".into()));
        }
        Ok(total)
    }
}

pub async fn run(common: CommonArgs, args: ProduceArgs, shutdown: Shutdown) -> Result<()> {
    tokio::task::spawn_blocking(move || produce(common, args, shutdown))
        .await
        .map_err(|e| Error::Internal(format!("producer task: {e}")))?
}

fn produce(common: CommonArgs, args: ProduceArgs, shutdown: Shutdown) -> Result<()> {
    let total = args.check()?;
    let seed = args.seed.unwrap_or_else(rand::random);
    let start_ms = match (args.start.as_deref(), total) {
        (Some(s), _) => parse_start(s)?,
        (None, Some(n)) if args.clock == Clock::Simulated => default_simulated_start(crate::now_ms(), n, args.rate),
        (None, _) => crate::now_ms(),
    };
    let mut cfg = SynthConfig::new(common.embedding_dim);
    cfg.approval_rate = args.approval_rate;
    cfg.error_rate = args.error_rate;
    cfg.incidents = args.incidents.clone();
    for i in &cfg.incidents {
        if !cfg.components.iter().any(|c| c.name == i.component) {
            let names: Vec<&str> = cfg.components.iter().map(|c| c.name.as_str()).collect();
            return Err(Error::Config(format!(
                "--incident {i}: no component {:?}; components: {}",
                i.component,
                names.join(", ")
            )));
        }
    }
    let codec = crate::wiring::codec(
        &common,
        match args.format {
            Format::Avro => OutputFormat::Avro,
            Format::Json => OutputFormat::Json,
        },
    );
    // Record type -> (contract topic, its declared records, full topic name).
    let topics = crate::topics::TopicCatalog::builtin();
    let mut routes: HashMap<String, (String, Vec<String>, String)> = HashMap::new();
    // The analyzer's internal repartition topics also declare input records;
    // producers publish to the contract's topics.
    let internal = [crate::topics::names::DECISIONS_BY_COMPONENT, crate::topics::names::ANALYZE_ROUTED];
    for spec in topics.specs().iter().filter(|s| !internal.contains(&s.name.as_str())) {
        for r in spec.records() {
            routes.entry(r.clone()).or_insert((spec.name.clone(), spec.records().to_vec(), common.topic(&spec.name)));
        }
    }

    let last_ms = match (args.clock, total) {
        (Clock::Simulated, Some(n)) => simulated_time(start_ms, n.saturating_sub(1), args.rate),
        _ => i64::MAX,
    };
    check_late(&common, &codec, &routes, args.kind, start_ms, last_ms, args.allow_late)?;

    let producer = counting_producer(&common.kafka)?;
    let mut generator = Generator::new(cfg, seed, start_ms);
    eprintln!(
        "produce: {:?} at {} rec/s, {} clock, {}, seed {seed}{}",
        args.kind,
        args.rate,
        if args.clock == Clock::Wall { "wall" } else { "simulated" },
        total.map_or("until interrupted".to_string(), |t| format!("{t} records")),
        if args.incidents.is_empty() {
            String::new()
        } else {
            format!(", incidents: {}", args.incidents.iter().map(ToString::to_string).collect::<Vec<_>>().join(" "))
        }
    );

    let started = Instant::now();
    let mut last_progress = Instant::now();
    let mut by_kind: BTreeMap<&'static str, u64> = BTreeMap::new();
    let (mut first_t, mut last_t) = (None, 0i64);
    let mut sent: u64 = 0;
    while total.is_none_or(|t| sent < t) && !shutdown.requested() {
        let t_ms = match args.clock {
            Clock::Simulated => simulated_time(start_ms, sent, args.rate),
            Clock::Wall => {
                // Pace: never run ahead of rate x elapsed.
                let ahead = sent as f64 / args.rate - started.elapsed().as_secs_f64();
                if ahead > 0.0 {
                    std::thread::sleep(Duration::from_secs_f64(ahead.min(0.05)));
                    continue;
                }
                crate::now_ms()
            }
        };
        let event = generator.next(args.kind, t_ms);
        let (contract, allowed, topic) = routes
            .get(event.record_name())
            .ok_or_else(|| Error::Config(format!("no topic declares {}", event.record_name())))?;
        let payload = codec.encode(contract, allowed, &event)?;
        send(&producer, topic, event.partition_key(), &payload)?;
        *by_kind.entry(event.record_name()).or_default() += 1;
        first_t.get_or_insert(t_ms);
        last_t = t_ms;
        sent += 1;
        if last_progress.elapsed() >= args.progress_every {
            last_progress = Instant::now();
            progress(&producer, sent, total, started, &event);
        }
    }
    if shutdown.requested() {
        eprintln!("produce: interrupted after {sent} records; flushing");
    }
    let flushed = producer.flush(Duration::from_secs(60));
    let elapsed = started.elapsed().as_secs_f64();
    let ctx = producer.context();
    let delivered = ctx.delivered.load(Ordering::Relaxed);
    let failed = ctx.failed.load(Ordering::Relaxed);
    let summary = serde_json::json!({
        "sent": sent,
        "delivered": delivered,
        "failed": failed,
        "elapsed_s": (elapsed * 1000.0).round() / 1000.0,
        "delivered_per_s": (delivered as f64 / elapsed.max(1e-9)).round(),
        "by_record": by_kind,
        "first_event_time": first_t,
        "last_event_time": last_t,
        "seed": seed,
        "start": start_ms,
    });
    eprintln!(
        "produce: done: {sent} sent, {delivered} delivered, {failed} failed in {elapsed:.2}s ({:.0} rec/s); {}",
        delivered as f64 / elapsed.max(1e-9),
        by_kind.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ")
    );
    println!("{summary}");
    if let Err(e) = flushed {
        return Err(Error::Unavailable(format!(
            "flush did not finish: {e}; {} records unconfirmed",
            sent - delivered - failed
        )));
    }
    if failed > 0 {
        let first = ctx.first_error.lock().expect("delivery error lock").clone().unwrap_or_default();
        return Err(Error::Unavailable(format!("{failed} records failed delivery; first error: {first}")));
    }
    Ok(())
}

/// The analyzer windows latency samples and ratings by event time: a record
/// older than what its partition already holds, by more than the allowed
/// lateness, is late and goes to the DLQ. Says so before sending (with the
/// times), and refuses a run that would be late from start to end.
fn check_late(
    common: &CommonArgs,
    codec: &crate::codec::Codec,
    routes: &HashMap<String, (String, Vec<String>, String)>,
    kind: Kind,
    first_ms: i64,
    last_ms: i64,
    allow_late: bool,
) -> Result<()> {
    let records: &[&str] = match kind {
        Kind::Latency => &["LatencySample"],
        Kind::Feedback => &["FeedbackRating"],
        Kind::All => &["LatencySample", "FeedbackRating"],
        Kind::Writes => &[],
    };
    let lateness = common.settings.analyze.allowed_lateness.as_millis() as i64;
    for record in records {
        let Some((contract, allowed, topic)) = routes.get(*record) else { continue };
        // The newest event time among each partition's last few records.
        let mut newest: Option<(i64, i32)> = None;
        let read = crate::sources::kafka::read_topic(
            &common.kafka,
            "udo-produce",
            topic,
            None,
            Some(5),
            Duration::from_secs(30),
            |m| {
                use rdkafka::message::Message;
                let t = codec.decode(allowed, m.payload().unwrap_or_default()).map(|e| e.occurred_at());
                if let Ok(t) = t
                    && newest.is_none_or(|(n, _)| t > n)
                {
                    newest = Some((t, m.partition()));
                }
            },
        );
        // Only advice: a topic that cannot be read now does not stop the run.
        if let Err(e) = read {
            tracing::warn!("could not check {topic} for records that would be late: {e}");
            continue;
        }
        let Some((newest, partition)) = newest else { continue };
        let limit = newest - lateness;
        if first_ms >= limit {
            continue;
        }
        let time = |ms: i64| {
            humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64))
        };
        let what = format!(
            "{contract} already holds events up to {} (partition {partition}); the analyzer takes events at most {} \
             (analyze.allowed_lateness) older than the newest it has seen, so this run's events before {} would be \
             late and dead-lettered (it starts at {})",
            time(newest),
            humantime::format_duration(Duration::from_millis(lateness as u64)),
            time(limit),
            time(first_ms),
        );
        let fix = format!("use a fresh set of topics (another --topic-prefix), or --start {} or later", time(newest));
        if last_ms < limit && !allow_late {
            return Err(Error::Config(format!(
                "{what}: every record would be late; {fix}, or --allow-late to send them anyway"
            )));
        }
        tracing::warn!("{what}; {fix}");
    }
    Ok(())
}

fn send(
    producer: &rdkafka::producer::ThreadedProducer<crate::sinks::kafka::DeliveryCounter>,
    topic: &str,
    key: &str,
    payload: &[u8],
) -> Result<()> {
    loop {
        match producer.send(BaseRecord::to(topic).key(key).payload(payload)) {
            Ok(()) => return Ok(()),
            // Local queue full: the broker is slower than us; wait for room.
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err((e, _)) => return Err(Error::Kafka { op: format!("send to {topic}"), source: e }),
        }
    }
}

fn progress(
    producer: &rdkafka::producer::ThreadedProducer<crate::sinks::kafka::DeliveryCounter>,
    sent: u64,
    total: Option<u64>,
    started: Instant,
    last: &Event,
) {
    let ctx = producer.context();
    let secs = started.elapsed().as_secs_f64();
    let event_time = humantime::format_rfc3339_millis(
        std::time::UNIX_EPOCH + Duration::from_millis(last.occurred_at().max(0) as u64),
    );
    eprintln!(
        "produce: {sent}{} sent ({:.0}/s), {} delivered, {} failed, {} in flight, event time {event_time}",
        total.map_or(String::new(), |t| format!("/{t}")),
        sent as f64 / secs.max(1e-9),
        ctx.delivered.load(Ordering::Relaxed),
        ctx.failed.load(Ordering::Relaxed),
        producer.in_flight_count(),
    );
}

#[cfg(test)]
mod tests {
    use super::default_simulated_start;
    use crate::synth::simulated_time;

    #[test]
    fn a_simulated_run_without_start_ends_at_now() {
        let now = 1_767_225_600_000;
        for (n, rate) in [(3000, 50.0), (180_000, 50.0), (7, 3.0), (1, 1000.0)] {
            let start = default_simulated_start(now, n, rate);
            let last = simulated_time(start, n - 1, rate);
            assert!(last <= now && now - last <= (1000.0 / rate).ceil() as i64 + 1, "n={n} rate={rate}: last {last}");
        }
    }
}
