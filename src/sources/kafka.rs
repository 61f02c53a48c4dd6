//! Kafka consumers with the delivery settings of design §6.

use crate::config::KafkaConfig;
use crate::error::{Error, Result};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::time::{Duration, Instant};

/// Logs assignment changes, so a rebalance is visible in the logs.
pub struct GroupContext {
    pub group: String,
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => tracing::info!(group = %self.group, partitions = %describe(tpl), "assigned"),
            Rebalance::Revoke(tpl) => tracing::info!(group = %self.group, partitions = %describe(tpl), "revoked"),
            Rebalance::Error(e) => tracing::warn!(group = %self.group, error = %e, "rebalance error"),
        }
    }
}

/// Context of the assigned consumers that ask for end-of-partition events
/// (`replay`, the analyzer's changelog restore): librdkafka also reports
/// each one through the error callback, which would log it as an error.
pub struct EofExpected;

impl ClientContext for EofExpected {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        use rdkafka::error::{KafkaError, RDKafkaErrorCode};
        if !matches!(error, KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)) {
            tracing::error!("librdkafka: {error}: {reason}");
        }
    }
}

impl ConsumerContext for EofExpected {}

/// A consumer that assigns partitions itself and never joins a group or
/// commits (`replay`, the changelog restore), told about partition ends.
pub fn assigned_consumer(kafka: &KafkaConfig, client_id: &str) -> Result<BaseConsumer<EofExpected>> {
    kafka
        .client(|c| {
            fetch_defaults(c);
            // Required by librdkafka, never used: nothing joins or commits.
            c.set("group.id", client_id)
                .set("enable.auto.commit", "false")
                .set("enable.auto.offset.store", "false")
                .set("enable.partition.eof", "true")
                .set("client.id", client_id);
        })
        .create_with_context(EofExpected)
        .map_err(Error::kafka(format!("create the {client_id} consumer")))
}

/// Reads `partitions` of `topic` from the beginning to their end (as far
/// as read_committed may read), handing `each` every record's partition,
/// offset and value: for state rebuilt from a topic at assignment.
pub fn read_to_end(
    kafka: &KafkaConfig,
    client_id: &str,
    topic: &str,
    partitions: &[i32],
    timeout: Duration,
    mut each: impl FnMut(i32, i64, &[u8]),
) -> Result<()> {
    if partitions.is_empty() {
        return Ok(());
    }
    read_topic(kafka, client_id, topic, Some(partitions), None, timeout, |m| {
        each(m.partition(), m.offset(), m.payload().unwrap_or_default())
    })
    .map(drop)
}

/// Fails, saying what to run, when any of `topics` is missing on the
/// cluster (a pipeline that writes to its internal topics would otherwise
/// retry forever against a topic nobody creates).
pub fn require_topics(kafka: &KafkaConfig, topics: &[String]) -> Result<()> {
    let probe: BaseConsumer = kafka
        .client(|c| {
            c.set("client.id", "udo-stream-topics");
        })
        .create()
        .map_err(Error::kafka("create a Kafka client"))?;
    let md = probe.fetch_metadata(None, Duration::from_secs(30)).map_err(Error::kafka("list the cluster's topics"))?;
    let have: std::collections::HashSet<&str> =
        md.topics().iter().filter(|t| t.error().is_none()).map(|t| t.name()).collect();
    let missing: Vec<&str> = topics.iter().map(String::as_str).filter(|t| !have.contains(t)).collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "topics {missing:?} do not exist on {}: run `udo-stream topics apply` with the same --topic-prefix first",
            kafka.brokers
        )))
    }
}

/// `topic[0,1,2]` style summary of a partition list.
pub fn describe(tpl: &TopicPartitionList) -> String {
    let mut by_topic: std::collections::BTreeMap<String, Vec<i32>> = Default::default();
    for e in tpl.elements() {
        by_topic.entry(e.topic().to_string()).or_default().push(e.partition());
    }
    by_topic.iter().map(|(t, p)| format!("{t}{p:?}")).collect::<Vec<_>>().join(" ")
}

/// How partitions are spread over a group's members.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Assignor {
    /// Incremental: unaffected partitions keep running through a rebalance
    /// (the materializers, whose partitions are independent).
    CooperativeSticky,
    /// Partition p of every subscribed topic goes to the same member, the
    /// co-partitioning a stateful join needs (the analyzer; Kafka Streams
    /// relies on the same property).
    Range,
}

/// Group consumer: at-least-once. Offsets are *stored* by the application
/// only after a record's effects are durable (`enable.auto.offset.store=false`)
/// and committed in the background from the store.
pub fn group_config(kafka: &KafkaConfig, group: &str) -> rdkafka::ClientConfig {
    group_config_with(kafka, group, Assignor::CooperativeSticky)
}

pub fn group_config_with(kafka: &KafkaConfig, group: &str, assignor: Assignor) -> rdkafka::ClientConfig {
    kafka.client(|c| {
        group_defaults(c, group, assignor);
    })
}

/// Fetch settings of every udo-stream consumer. librdkafka's defaults
/// prefetch only 100k messages and, once that queue is full, postpone the
/// next fetch by 1 s (`fetch.queue.backoff.ms`): a pipeline that had just
/// drained the queue then waited ~100 ms for records every ~15k of them
/// (`bench analyze`: 132k → 567k records/s). Prefetched bytes stay capped
/// by `queued.max.messages.kbytes` (64 MiB).
pub fn fetch_defaults(c: &mut rdkafka::ClientConfig) {
    c.set("queued.min.messages", "1000000").set("fetch.queue.backoff.ms", "10");
    // Never see an aborted output of the exactly-once analyzer (librdkafka's
    // default too; set here so no override can drop it: it is protected).
    c.set("isolation.level", "read_committed");
}

fn group_defaults(c: &mut rdkafka::ClientConfig, group: &str, assignor: Assignor) {
    fetch_defaults(c);
    c.set("group.id", group)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "5000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set(
            "partition.assignment.strategy",
            match assignor {
                Assignor::CooperativeSticky => "cooperative-sticky",
                Assignor::Range => "range",
            },
        )
        // The runner keeps polling while it retries a batch, so a store
        // outage does not count against this; only a stuck stage does.
        .set("max.poll.interval.ms", "30000")
        // Lag per partition comes from these statistics (udo_consumer_lag_records).
        .set("statistics.interval.ms", "5000")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        .set("client.id", format!("udo-stream-{group}"));
}

pub fn group_consumer(kafka: &KafkaConfig, group: &str, topics: &[&str]) -> Result<StreamConsumer<GroupContext>> {
    let consumer: StreamConsumer<GroupContext> = group_config(kafka, group)
        .create_with_context(GroupContext { group: group.to_string() })
        .map_err(Error::kafka("create consumer"))?;
    consumer.subscribe(topics).map_err(Error::kafka(format!("subscribe to {topics:?}")))?;
    Ok(consumer)
}

/// Consumer outside any group, assigned every partition of `topic` at
/// `start` (inspection tools: nothing is committed, no rebalance delay).
/// Where an inspecting reader starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    Beginning,
    End,
    /// This offset of each partition read.
    Offset(i64),
    /// The first record at or after this time (epoch ms).
    Time(i64),
}

/// A group-less reader of `topic` (every partition, or only `partition`)
/// from `start`: `tail`, `status` and the tests use it.
pub fn inspector(kafka: &KafkaConfig, topic: &str, partition: Option<i32>, start: Start) -> Result<StreamConsumer> {
    let consumer: StreamConsumer = kafka
        .client(|c| {
            fetch_defaults(c);
            c.set("group.id", format!("udo-inspect-{}", uuid::Uuid::new_v4()))
                .set("enable.auto.commit", "false")
                .set("enable.auto.offset.store", "false");
        })
        .create()
        .map_err(Error::kafka("create consumer"))?;
    let partitions = partitions_of(&consumer, topic)?;
    let partitions = match partition {
        Some(p) if partitions.contains(&p) => vec![p],
        Some(p) => {
            return Err(Error::Config(format!(
                "topic {topic} has no partition {p} (it has {}: 0 to {})",
                partitions.len(),
                partitions.len() - 1
            )));
        }
        None => partitions,
    };
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        let offset = match start {
            Start::Beginning => Offset::Beginning,
            Start::End => Offset::End,
            Start::Offset(o) => Offset::Offset(o),
            Start::Time(ms) => Offset::Offset(ms),
        };
        tpl.add_partition_offset(topic, p, offset).map_err(Error::kafka("assign"))?;
    }
    if let Start::Time(_) = start {
        // The broker answers each partition with the first offset at or
        // after the time (the end when none is).
        tpl = consumer
            .offsets_for_times(tpl, Duration::from_secs(30))
            .map_err(Error::kafka(format!("offsets for a time on {topic}")))?;
    }
    consumer.assign(&tpl).map_err(Error::kafka(format!("assign {topic}")))?;
    Ok(consumer)
}

/// Reads `topic` (every partition, or only `partitions`) to its end as of
/// now: from its start, or only its last `last` offsets; returns the
/// records read. Ends by position, so a transaction marker as the last
/// offset (never delivered) still counts as read.
pub fn read_topic(
    kafka: &KafkaConfig,
    client_id: &str,
    topic: &str,
    partitions: Option<&[i32]>,
    last: Option<i64>,
    timeout: Duration,
    mut f: impl FnMut(&rdkafka::message::BorrowedMessage<'_>),
) -> Result<u64> {
    let consumer: BaseConsumer = kafka
        .client(|c| {
            fetch_defaults(c);
            c.set("group.id", format!("udo-read-{}", uuid::Uuid::new_v4()))
                .set("client.id", client_id)
                .set("enable.auto.commit", "false")
                .set("enable.auto.offset.store", "false");
        })
        .create()
        .map_err(Error::kafka("create consumer"))?;
    let mut ends = partition_ends(&consumer, topic)?;
    if let Some(only) = partitions {
        ends.retain(|(p, ..)| only.contains(p));
    }
    let mut tpl = TopicPartitionList::new();
    for &(p, low, high) in &ends {
        if high > low {
            let from = last.map_or(Offset::Beginning, |n| Offset::Offset((high - n).max(low)));
            tpl.add_partition_offset(topic, p, from).map_err(Error::kafka("assign"))?;
        }
    }
    if tpl.count() == 0 {
        return Ok(0);
    }
    consumer.assign(&tpl).map_err(Error::kafka(format!("assign {topic}")))?;
    let deadline = Instant::now() + timeout;
    let mut read = 0u64;
    loop {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(msg)) => {
                f(&msg);
                read += 1;
                continue;
            }
            Some(Err(KafkaError::PartitionEOF(_))) => {}
            Some(Err(e)) => tracing::debug!(topic, "read: {e}"),
            None => {}
        }
        // At the end when every partition's position reached its end (a
        // transaction marker may be the last offset: position skips it).
        let pos = consumer.position().map_err(Error::kafka("position"))?;
        let done = ends.iter().all(|&(p, low, high)| {
            high <= low
                || matches!(pos.find_partition(topic, p).map(|e| e.offset()), Some(Offset::Offset(o)) if o >= high)
        });
        if done {
            return Ok(read);
        }
        if Instant::now() > deadline {
            return Err(Error::Unavailable(format!(
                "{topic} was not read to its end within {} (is the broker slow? `status` takes --timeout)",
                humantime::format_duration(timeout)
            )));
        }
    }
}

/// The partition ids of `topic`; an error naming the fix when it does not exist.
pub fn partitions_of<C: ConsumerContext, K: Consumer<C>>(consumer: &K, topic: &str) -> Result<Vec<i32>> {
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(30))
        .map_err(Error::kafka(format!("metadata of {topic}")))?;
    let parts: Vec<i32> = md
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if parts.is_empty() {
        return Err(Error::Config(format!(
            "topic {topic} does not exist (run `udo-stream topics apply`, check --topic-prefix / UDO_TOPIC_PREFIX)"
        )));
    }
    Ok(parts)
}

/// (partition, low, high) of every partition of `topic`.
pub fn partition_ends<C: ConsumerContext, K: Consumer<C>>(consumer: &K, topic: &str) -> Result<Vec<(i32, i64, i64)>> {
    let parts = partitions_of(consumer, topic)?;
    // A topic just created has partitions whose leader is still being
    // elected: retried briefly, through the one retry policy.
    let policy = crate::pipeline::retry::RetryPolicy::new(Duration::from_millis(100), Duration::from_secs(1))
        .with_max_attempts(20);
    parts
        .into_iter()
        .map(|p| {
            let mut retrying = policy.start();
            loop {
                match consumer.fetch_watermarks(topic, p, Duration::from_secs(30)) {
                    Ok((low, high)) => return Ok((p, low, high)),
                    Err(e) => {
                        let e = Error::kafka(format!("offsets of {topic}[{p}]"))(e);
                        match retrying.next_delay(&e) {
                            Some(delay) => std::thread::sleep(delay),
                            None => return Err(e),
                        }
                    }
                }
            }
        })
        .collect()
}

/// Keeps the first client error that retrying cannot fix (authentication,
/// TLS), which librdkafka otherwise only reports while it retries forever.
#[derive(Default)]
pub struct ConnectProbe {
    fatal: std::sync::Mutex<Option<(rdkafka::error::RDKafkaErrorCode, String)>>,
}

impl ClientContext for ConnectProbe {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        use rdkafka::error::RDKafkaErrorCode as C;
        match error.rdkafka_error_code() {
            Some(
                code @ (C::Authentication
                | C::SaslAuthenticationFailed
                | C::UnsupportedSASLMechanism
                | C::IllegalSASLState
                | C::SSL),
            ) => {
                self.fatal.lock().expect("probe lock").get_or_insert((code, reason.to_string()));
            }
            _ => tracing::debug!("kafka: {error}: {reason}"),
        }
    }
}

impl rdkafka::producer::ProducerContext for ConnectProbe {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &rdkafka::producer::DeliveryResult<'_>, _: ()) {}
}

/// Connects once before a command starts: answers within seconds when the
/// cluster is reachable, fails fast with what to fix when the credentials
/// or TLS settings are wrong (no secret is part of the message), and after
/// `timeout` when no broker answers.
pub fn check_connection(kafka: &KafkaConfig, timeout: Duration) -> Result<()> {
    use rdkafka::error::RDKafkaErrorCode as C;
    use rdkafka::producer::{BaseProducer, Producer};
    let probe: BaseProducer<ConnectProbe> = kafka
        .client(|c| {
            c.set("client.id", "udo-stream-connect");
        })
        .create_with_context(ConnectProbe::default())
        .map_err(Error::kafka("create a Kafka client"))?;
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let attempt = probe.client().fetch_metadata(None, Duration::from_millis(500));
        probe.poll(Duration::ZERO);
        if let Some((code, reason)) = probe.context().fatal.lock().expect("probe lock").take() {
            let hint = match code {
                C::SSL => {
                    "TLS failed: check security.protocol and ssl.ca.location (the CA that signed the brokers' certificates)"
                }
                _ => "authentication failed: check sasl.mechanism, sasl.username and sasl.password",
            };
            return Err(Error::Config(format!("kafka: {hint} (brokers {}): {reason}", kafka.brokers)));
        }
        match attempt {
            Ok(_) => return Ok(()),
            Err(e) if std::time::Instant::now() >= deadline => {
                return Err(Error::Kafka {
                    op: format!(
                        "connect to {} (no broker answered within {timeout:?}; check --brokers / KAFKA_BROKERS and security.protocol)",
                        kafka.brokers
                    ),
                    source: e,
                });
            }
            Err(_) => {}
        }
    }
}
