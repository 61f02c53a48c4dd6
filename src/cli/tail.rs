//! `udo-stream tail`: decode and print any topic, one JSON line per record.
//! Undecodable records are printed with their error and never stop it.

use crate::codec::Codec;
use crate::codec::OutputFormat;
use crate::config::CommonArgs;
use crate::error::{Error, Result};
use crate::shutdown::Shutdown;
use crate::sources::kafka::{Start, inspector};
use clap::Args;
use rdkafka::consumer::Consumer;
use rdkafka::message::{Headers, Message};
use serde_json::{Map, Value, json};
use std::io::Write;
use std::time::Duration;

#[derive(Debug, Args)]
pub struct TailArgs {
    /// Topic to read, by its name in topics/ (`udo.alerts.v1`); the topic
    /// prefix is added (a name that already carries it is taken as is).
    pub topic: String,
    /// Start from the oldest record instead of only new ones.
    #[arg(long, conflicts_with_all = ["offset", "from"])]
    pub from_beginning: bool,
    /// Read only this partition.
    #[arg(long)]
    pub partition: Option<i32>,
    /// Start at this offset (of each partition read; with --partition, of that one).
    #[arg(long, conflicts_with = "from")]
    pub offset: Option<i64>,
    /// Start at the first record at or after a time: RFC 3339
    /// (`2026-12-06T10:00:00Z`) or a duration ago (`15m`).
    #[arg(long, value_parser = parse_since)]
    pub from: Option<i64>,
    /// Exit once every partition read is at the end it had when tail
    /// started (what is there, then stop; `--idle-exit` still bounds a wait).
    #[arg(long)]
    pub to_end: bool,
    /// Exit after printing this many records.
    #[arg(long)]
    pub max: Option<u64>,
    /// Exit when no record arrives for this long (e.g. 5s).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub idle_exit: Option<Duration>,
}

/// `--from`: an RFC 3339 time or a duration before now, as epoch ms.
pub fn parse_since(s: &str) -> std::result::Result<i64, String> {
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        return Ok(t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64));
    }
    match humantime::parse_duration(s) {
        Ok(ago) => Ok(crate::now_ms() - ago.as_millis() as i64),
        Err(_) => Err(format!("{s:?} is neither an RFC 3339 time (2026-12-06T10:00:00Z) nor a duration (15m)")),
    }
}

fn is_fatal(e: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::error::{KafkaError, RDKafkaErrorCode as C};
    match e {
        KafkaError::MessageConsumption(code) => {
            !matches!(code, C::AllBrokersDown | C::BrokerTransportFailure | C::OperationTimedOut | C::PartitionEOF)
        }
        _ => true,
    }
}

pub async fn run(common: CommonArgs, args: TailArgs, mut shutdown: Shutdown) -> Result<()> {
    let codec = crate::wiring::codec(&common, OutputFormat::Avro);
    let topics = crate::topics::TopicCatalog::builtin();
    let topic = common.topic_arg(&args.topic);
    let contract = common.contract_name(&topic);
    // Undeclared topics are decoded against every known record.
    let allowed: Option<Vec<String>> = match topics.get(contract) {
        Some(spec) if spec.records().is_empty() => None, // raw (DLQ)
        Some(spec) => Some(spec.records().to_vec()),
        None => Some(codec.catalog().names().map(String::from).collect()),
    };
    let start = match (args.from_beginning, args.offset, args.from) {
        (true, ..) => Start::Beginning,
        (_, Some(o), _) => Start::Offset(o),
        (_, _, Some(t)) => Start::Time(t),
        _ => Start::End,
    };
    let consumer = inspector(&common.kafka, &topic, args.partition, start)?;
    // --to-end: each partition's end now; read until every position reaches it.
    let ends: Vec<(i32, i64)> = if args.to_end {
        crate::sources::kafka::partition_ends(&consumer, &topic)?
            .into_iter()
            .filter(|(p, low, high)| high > low && args.partition.is_none_or(|only| only == *p))
            .map(|(p, _, high)| (p, high))
            .collect()
    } else {
        Vec::new()
    };
    let at_end = || {
        let Ok(pos) = consumer.position() else { return false };
        ends.iter().all(|&(p, high)| {
            matches!(pos.find_partition(&topic, p).map(|e| e.offset()), Some(rdkafka::Offset::Offset(o)) if o >= high)
        })
    };
    let idle = args.idle_exit.unwrap_or(Duration::MAX);
    let mut printed = 0u64;
    let mut out = std::io::stdout().lock();
    let mut check = tokio::time::interval(Duration::from_millis(200));
    while args.max.is_none_or(|m| printed < m) {
        if args.to_end && at_end() {
            break;
        }
        let msg = tokio::select! {
            m = consumer.recv() => m,
            _ = check.tick(), if args.to_end => continue,
            _ = tokio::time::sleep(idle) => break,
            _ = shutdown.wait() => break,
        };
        let msg = match msg {
            Ok(m) => m,
            // Connection drops are transient (librdkafka reconnects by itself):
            // say so and keep reading, as a tail should.
            Err(e) if !is_fatal(&e) => {
                tracing::warn!(topic = %topic, "{e}; retrying");
                continue;
            }
            Err(e) => return Err(Error::kafka(format!("consume {}", topic))(e)),
        };
        let line = render(&codec, allowed.as_deref(), &msg);
        writeln!(out, "{line}").map_err(|e| Error::Io { op: "write stdout".into(), source: e })?;
        printed += 1;
    }
    out.flush().map_err(|e| Error::Io { op: "flush stdout".into(), source: e })?;
    Ok(())
}

/// One output line: provenance, then the decoded value or the error.
pub fn render<M: Message>(codec: &Codec, allowed: Option<&[String]>, msg: &M) -> Value {
    let mut line = Map::new();
    line.insert("topic".into(), json!(msg.topic()));
    line.insert("partition".into(), json!(msg.partition()));
    line.insert("offset".into(), json!(msg.offset()));
    line.insert("timestamp".into(), json!(msg.timestamp().to_millis()));
    line.insert("key".into(), msg.key().map_or(Value::Null, |k| json!(String::from_utf8_lossy(k))));
    if let Some(headers) = msg.headers() {
        let h: Map<String, Value> = headers
            .iter()
            .map(|h| (h.key.to_string(), h.value.map_or(Value::Null, |v| json!(String::from_utf8_lossy(v)))))
            .collect();
        line.insert("headers".into(), Value::Object(h));
    }
    let payload = msg.payload().unwrap_or_default();
    match allowed {
        None => {
            line.insert("raw".into(), json!(preview(payload)));
        }
        Some(allowed) => match codec.decode(allowed, payload) {
            Ok(event) => {
                line.insert("record".into(), json!(event.record_name()));
                line.insert("value".into(), serde_json::to_value(&event).unwrap_or(Value::Null));
            }
            Err(e) => {
                line.insert("error".into(), json!({"class": e.class.as_str(), "field": e.field, "message": e.message}));
                line.insert("raw".into(), json!(preview(payload)));
            }
        },
    }
    Value::Object(line)
}

/// Raw bytes for humans: text as text, the rest escaped, long values cut.
fn preview(bytes: &[u8]) -> String {
    const MAX: usize = 512;
    let cut = &bytes[..bytes.len().min(MAX)];
    let mut s: String = cut.escape_ascii().to_string();
    if bytes.len() > MAX {
        s.push_str(&format!("... ({} bytes)", bytes.len()));
    }
    s
}
