//! Broker faults on the three-node cluster of the stack (`scripts/stack
//! cluster up`: static KRaft quorum, replication factor 3,
//! `min.insync.replicas=2`), with all three pipelines running in one
//! process (the analyzer exactly-once) and idempotent `acks=all` producers:
//! - kill -9 of the broker leading the most partitions during a 500k-event
//!   run;
//! - a rolling restart of all three brokers, one by one, mid-run;
//! - two brokers down (below `min.insync.replicas`, and the controller
//!   quorum with them) for longer than the pipelines' delivery timeout.
//!
//! After each: per input partition, what was produced (the log, which an
//! idempotent producer writes without duplicates) against what landed
//! (each store's stored offset), 0 lost and 0 duplicate rows in
//! PostgreSQL, Redis holding exactly PostgreSQL's chunks, and every analyzer
//! output id exactly once to a read_committed reader. The figures are
//! printed.

use crate::support as common;
use crate::support::materialize as support;

use common::stack;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use support::*;

const INPUTS: [&str; 3] = ["udo.writes.v1", "udo.feedback.v1", "udo.latency.v1"];

/// Events per run: 500k by default (sized for CI); a longer soak with
/// `UDO_FAULT_EVENTS=5000000 scripts/test broker_faults`.
fn events(default: u64) -> u64 {
    std::env::var("UDO_FAULT_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// One run: topics replicated 3 times, fresh stores, the three pipelines.
struct Run {
    prefix: String,
    db: String,
    redis: String,
    pool: sqlx::PgPool,
    pipelines: Materializer,
}

fn start(tag: &str, extra: &[(&str, &str)]) -> Run {
    let prefix = common::prefix(tag);
    let out = common::udo_ok(&["topics", "apply", "--topic-prefix", &prefix, "--replication", "3"]);
    assert!(out.contains("11 created"), "{out}");
    let db = block_on(common::fresh_database(tag));
    let redis = block_on(common::fresh_redis_db());
    let pool = pg_pool(&db);
    let transactional_id = format!("{prefix}analyzer");
    let mut env = vec![
        ("UDO__ANALYZE__PROCESSING", "exactly_once"),
        ("UDO__ANALYZE__TRANSACTIONAL_ID", transactional_id.as_str()),
        ("UDO__ANALYZE__IDLE_TIMEOUT", "3s"),
        ("UDO__MATERIALIZE__BATCH_SIZE", "2000"),
    ];
    env.extend_from_slice(extra);
    let mut pipelines = materializer("analyze,materialize-postgres,materialize-redis", &prefix, &db, &redis, &env);
    let deadline = Instant::now() + Duration::from_secs(120);
    while !["analyze", "materialize-postgres", "materialize-redis"]
        .iter()
        .all(|p| pipelines.metric("udo_assigned_partitions", &[&format!("pipeline=\"{p}\"")]) > 0.0)
    {
        pipelines.assert_alive();
        assert!(Instant::now() < deadline, "the pipelines got no partitions within 120 s");
        std::thread::sleep(Duration::from_millis(300));
    }
    Run { prefix, db, redis, pool, pipelines }
}

/// The node (1-3) leading the most partitions of `prefix`'s topics.
fn busiest_leader(prefix: &str) -> i32 {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let c: BaseConsumer = rdkafka::ClientConfig::new().set("bootstrap.servers", common::brokers()).create().unwrap();
    let md = c.fetch_metadata(None, Duration::from_secs(10)).unwrap();
    let mut led: BTreeMap<i32, usize> = BTreeMap::new();
    for t in md.topics().iter().filter(|t| t.name().starts_with(prefix)) {
        for p in t.partitions() {
            *led.entry(p.leader()).or_default() += 1;
        }
    }
    led.into_iter().max_by_key(|(_, n)| *n).map(|(b, _)| b).expect("partitions have leaders")
}

/// Waits until both materializers hold every input offset, then checks
/// and prints, per input partition, produced against landed; exact rows;
/// Redis consistent; analyzer outputs exactly once. Returns the summary.
fn check(run: &mut Run, produced: &BTreeMap<String, i64>, what: &str) -> String {
    let pg_group = format!("{}udo-materialize-postgres", run.prefix);
    let redis_group = format!("{}udo-materialize-redis", run.prefix);
    let (pool, redis, pipelines) = (&run.pool, &run.redis, &mut run.pipelines);
    wait_both_caught_up(&run.prefix, pool, redis, pipelines, Duration::from_secs(400));
    let logs = watermarks(&topics(&run.prefix, &INPUTS));
    let (pg, red) = (pg_offsets(pool, &pg_group), redis_offsets(redis, &redis_group));
    let mut lines = Vec::new();
    for ((topic, p), high) in &logs {
        let (in_pg, in_redis) = (pg.get(&(topic.clone(), *p)).copied().unwrap_or(0), red.get(&(topic.clone(), *p)));
        assert_eq!(in_pg, *high, "{topic}[{p}]: postgres stored {in_pg} of {high}");
        let short = topic.trim_start_matches(&run.prefix);
        lines.push(format!(
            "{short}[{p}] produced {high}, postgres {in_pg}{}",
            in_redis.map(|r| format!(", redis {r}")).unwrap_or_default()
        ));
    }
    let in_logs: i64 = logs.values().sum();
    let total: i64 = produced.values().sum();
    assert_eq!(in_logs, total, "the logs hold exactly what the producer sent (no duplicate, none lost)");
    assert_exact_and_consistent(pool, redis, produced);
    // Analyzer outputs, read_committed: no id twice.
    let mut ids: BTreeMap<String, usize> = BTreeMap::new();
    for t in ["udo.windows.v1", "udo.alerts.v1", "udo.degradations.v1"] {
        for v in tail(&format!("{}{t}", run.prefix)) {
            if let Some(id) = v["value"]["event_id"].as_str() {
                *ids.entry(id.to_string()).or_default() += 1;
            }
        }
    }
    let dups = ids.values().filter(|n| **n > 1).count();
    assert!(!ids.is_empty(), "the analyzer produced outputs");
    assert_eq!(dups, 0, "analyzer output ids seen more than once");
    let summary = format!(
        "{what}: produced {total}, landed {total} in postgres (0 lost, 0 duplicate), redis consistent, \
         {} analyzer outputs exactly once\n  {}",
        ids.len(),
        lines.join("\n  ")
    );
    eprintln!("{summary}");
    summary
}

#[test]
fn kill_9_of_the_busiest_leader_during_500k_events_loses_and_duplicates_nothing() {
    let _cluster = common::lease::cluster();
    let _stores = common::lease::stores();
    let mut run = start("faults-kill", &[]);
    let mut producer = produce_in_background(&run.prefix, events(500_000), None, 51);
    std::thread::sleep(Duration::from_secs(3));
    let victim = busiest_leader(&run.prefix);
    stack(&["kill", &format!("kafka-{victim}")]);
    // Else this would test a kill after the run, not during it.
    assert!(producer.try_wait().unwrap().is_none(), "the broker was killed while the events were still being produced");
    let produced = produced(producer);
    stack(&["start", &format!("kafka-{victim}")]);
    check(&mut run, &produced, &format!("kill -9 of kafka-{victim} (busiest leader)"));
    run.pipelines.stop();
    block_on(common::drop_database(&run.db));
}

#[test]
fn a_rolling_restart_of_the_three_brokers_mid_run_loses_nothing_and_lag_returns_to_0() {
    let _cluster = common::lease::cluster();
    let _stores = common::lease::stores();
    let mut run = start("faults-roll", &[]);
    let producer = produce_in_background(&run.prefix, events(500_000), None, 52);
    for n in 1..=3 {
        std::thread::sleep(Duration::from_secs(2));
        stack(&["stop", &format!("kafka-{n}")]);
        stack(&["start", &format!("kafka-{n}")]);
        run.pipelines.assert_alive();
    }
    let produced = produced(producer);
    // `check` waits for every stored offset to reach the log's end: lag 0.
    check(&mut run, &produced, "rolling restart of kafka-1, kafka-2, kafka-3");
    run.pipelines.stop();
    block_on(common::drop_database(&run.db));
}

/// Two nodes down (below `min.insync.replicas`, and the controller quorum
/// with them) for longer than the delivery timeout: errors are counted, the
/// pipelines hold their work, and once the nodes return everything lands.
/// The group loses its coordinator meanwhile, so partitions a retry had
/// paused are taken away and given back: they must fetch again.
#[test]
fn two_brokers_down_past_the_delivery_timeout_hold_everything_until_they_return() {
    let _cluster = common::lease::cluster();
    let _stores = common::lease::stores();
    // Delivery gives up after 10 s; the outage lasts 25 s.
    let mut run = start("faults-isr", &[("UDO__KAFKA__MESSAGE_TIMEOUT_MS", "10000")]);
    let produced = produced(produce_in_background(&run.prefix, events(500_000) * 2 / 5, None, 53));
    std::thread::sleep(Duration::from_secs(2));
    let errors_before = run.pipelines.metric("udo_errors_total", &[]);
    stack(&["stop", "kafka-2"]);
    stack(&["stop", "kafka-3"]);
    let down = Instant::now();
    while down.elapsed() < Duration::from_secs(25) {
        run.pipelines.assert_alive();
        std::thread::sleep(Duration::from_millis(500));
    }
    let errors = run.pipelines.metric("udo_errors_total", &[]) - errors_before;
    stack(&["start", "kafka-2"]);
    stack(&["start", "kafka-3"]);
    assert!(errors >= 1.0, "the outage shows as counted errors ({errors})");
    let summary = check(&mut run, &produced, "kafka-2 and kafka-3 down for 25 s (delivery timeout 10 s)");
    eprintln!("{summary}\n  errors counted during the outage: {errors}");
    run.pipelines.stop();
    block_on(common::drop_database(&run.db));
}
