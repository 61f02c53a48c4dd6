//! Helpers for the materializer tests (tests/it/materialize.rs and
//! tests/it/materialize_faults.rs): run the real binary, read what the stores
//! hold (row counts, checksums, Redis snapshots), compare the stores'
//! offsets with the topics' high watermarks, and read the DLQ with headers.
//! Tests are synchronous (they drive child processes and sleep), so async
//! clients run on a private runtime.
#![allow(dead_code)]

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;
use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const DIM: &str = "8";

pub fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap())
}

pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    rt().block_on(f)
}

/// Topics each materializer reads (contract names).
pub const PG_TOPICS: [&str; 7] = [
    "udo.writes.v1",
    "udo.feedback.v1",
    "udo.latency.v1",
    "udo.windows.v1",
    "udo.alerts.v1",
    "udo.degradations.v1",
    "udo.promotions.v1",
];
pub const REDIS_TOPICS: [&str; 5] =
    ["udo.writes.v1", "udo.windows.v1", "udo.alerts.v1", "udo.degradations.v1", "udo.promotions.v1"];

/// Full names of contract topics under `prefix`.
pub fn topics(prefix: &str, names: &[&str]) -> Vec<String> {
    names.iter().map(|n| format!("{prefix}{n}")).collect()
}

/// The event tables (each keyed by event_id).
pub const EVENT_TABLES: [&str; 9] = [
    "latency_samples",
    "uncertainty_feedback",
    "uncertainty_logs",
    "project_context_events",
    "latency_windows",
    "uncertainty_windows",
    "alerts",
    "degradations",
    "promotions",
];

/// Tables of current state derived from the events.
pub const STATE_TABLES: [&str; 3] = ["project_contexts", "health_state", "projects"];

/// Every materialized table.
pub fn all_tables() -> impl Iterator<Item = &'static str> {
    EVENT_TABLES.into_iter().chain(STATE_TABLES)
}

/// A free local port for a child's metrics endpoint.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A running `udo-stream run` process.
pub struct Materializer {
    pub child: Child,
    pub port: u16,
}

pub fn materializer(pipelines: &str, prefix: &str, db: &str, redis: &str, env: &[(&str, &str)]) -> Materializer {
    let port = free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_udo-stream"));
    cmd.args(["run", "--pipelines", pipelines, "--topic-prefix", prefix])
        .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
        .env("KAFKA_BROKERS", super::brokers())
        .env("DATABASE_URL", db)
        .env("REDIS_URL", redis)
        .env("UDO_EMBEDDING_DIM", DIM)
        .env("UDO__MATERIALIZE__RETRY_MAX_DELAY", "2s")
        // One deployment across the tests' topic prefixes (see analyzer_with).
        .env("UDO_NAMESPACE", "it")
        .env("UDO_LOG", std::env::var("UDO_LOG").unwrap_or_else(|_| "warn".into()))
        .env_remove("SCHEMA_REGISTRY_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    Materializer { child: cmd.spawn().expect("start udo-stream run"), port }
}

/// A test that panics must not leave its materializer running.
impl Drop for Materializer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Materializer {
    /// SIGKILL: no shutdown hook runs.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM and wait for the graceful exit (design §6: within 30 s).
    pub fn stop(mut self) {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(35);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "udo-stream run exited with {status} after SIGTERM");
                return;
            }
            assert!(Instant::now() < deadline, "udo-stream run did not exit within 35 s of SIGTERM");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        let code = out.split(' ').nth(1)?.parse().ok()?;
        Some((code, out.split_once("\r\n\r\n").map(|x| x.1.to_string()).unwrap_or_default()))
    }

    /// Sum of a metric's samples whose line contains every `filters` string;
    /// 0 while `/metrics` does not answer (not started yet).
    pub fn metric(&self, name: &str, filters: &[&str]) -> f64 {
        self.try_metric(name, filters).unwrap_or(0.0)
    }

    /// As `metric`, but `None` when `/metrics` did not answer, for a test
    /// that compares two readings (a missed scrape is not a zero).
    pub fn try_metric(&self, name: &str, filters: &[&str]) -> Option<f64> {
        let (_, body) = self.get("/metrics")?;
        let sum = body
            .lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
            .filter(|l| filters.iter().all(|f| l.contains(f)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        Some(sum)
    }

    pub fn assert_alive(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("udo-stream run exited early with {status}");
        }
    }
}

/// Runs the binary with this module's embedding dimension and `env`;
/// insists on success; its stdout and stderr.
pub fn udo(args: &[&str], env: &[(&str, &str)]) -> String {
    let env: Vec<(&str, &str)> = [("UDO_EMBEDDING_DIM", DIM)].into_iter().chain(env.iter().copied()).collect();
    let (stdout, stderr) = super::udo_ok_with(args, &env);
    stdout + &stderr
}

/// `produce all` of `count` events in the background: paced by the wall
/// clock at `rate` a second, or as fast as the brokers take them with
/// `rate` None (simulated event time from 2026-01-01).
pub fn produce_in_background(prefix: &str, count: u64, rate: Option<u64>, seed: u64) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_udo-stream"));
    cmd.args(["produce", "all"]);
    match rate {
        Some(rate) => cmd.args(["--clock", "wall", "--rate", &rate.to_string()]),
        None => cmd.args(["--clock", "simulated", "--start", "2026-01-01T00:00:00Z", "--rate", "200"]),
    };
    cmd.args(["--count", &count.to_string(), "--seed", &seed.to_string(), "--topic-prefix", prefix])
        .env("KAFKA_BROKERS", super::brokers())
        .env("UDO_EMBEDDING_DIM", DIM)
        .env_remove("SCHEMA_REGISTRY_URL")
        // The load, not the pipelines, is what this producer stands for: give
        // it librdkafka's own delivery timeout (5 min) rather than the tool's
        // 1 min, which a broker killed while other suites start JVMs on the
        // same 2 cores has outlasted.
        .env("UDO__KAFKA__MESSAGE_TIMEOUT_MS", "300000")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start udo-stream produce")
}

/// Waits for a background producer; returns the count per record type.
pub fn produced(child: Child) -> BTreeMap<String, i64> {
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "produce failed: {text}");
    let line = text.lines().find(|l| l.contains("\"by_record\"")).expect("produce prints a summary");
    let v: Value = serde_json::from_str(line).unwrap();
    assert_eq!(v["failed"], 0, "{line}");
    v["by_record"].as_object().unwrap().iter().map(|(k, n)| (k.clone(), n.as_i64().unwrap())).collect()
}

/// Waits until both materializers' stores hold every input partition's end.
pub fn wait_both_caught_up(prefix: &str, pool: &sqlx::PgPool, redis: &str, m: &mut Materializer, timeout: Duration) {
    let (pg_group, redis_group) =
        (format!("{prefix}udo-materialize-postgres"), format!("{prefix}udo-materialize-redis"));
    wait_caught_up(
        "postgres",
        &topics(prefix, &PG_TOPICS),
        timeout,
        || pg_offsets(pool, &pg_group),
        || m.assert_alive(),
    );
    wait_caught_up(
        "redis",
        &topics(prefix, &REDIS_TOPICS),
        timeout,
        || redis_offsets(redis, &redis_group),
        || m.assert_alive(),
    );
}

/// `produce all` of `count` mixed events; returns the count per record type.
pub fn produce_mixed(prefix: &str, count: u64, seed: u64) -> BTreeMap<String, i64> {
    let out = udo(
        &[
            "produce",
            "all",
            "--clock",
            "simulated",
            "--start",
            "2026-01-01T00:00:00Z",
            "--rate",
            "200",
            "--count",
            &count.to_string(),
            "--seed",
            &seed.to_string(),
            "--topic-prefix",
            prefix,
        ],
        &[],
    );
    let line = out.lines().find(|l| l.contains("\"by_record\"")).expect("produce prints a summary");
    let v: Value = serde_json::from_str(line).unwrap();
    assert_eq!(v["failed"], 0, "{line}");
    v["by_record"].as_object().unwrap().iter().map(|(k, n)| (k.clone(), n.as_i64().unwrap())).collect()
}

/// Every decoded record of a topic (`udo tail`), as JSON lines.
pub fn tail(topic: &str) -> Vec<Value> {
    tail_with(topic, &[])
}

/// [`tail`] with more environment (e.g. `SCHEMA_REGISTRY_URL`).
pub fn tail_with(topic: &str, env: &[(&str, &str)]) -> Vec<Value> {
    // To the end each partition had at the start: right after a broker
    // fault a partition's new leader may take seconds to answer, which an
    // idle timeout alone would take for the end of the topic.
    let text = udo(&["tail", topic, "--from-beginning", "--to-end", "--idle-exit", "30s"], env);
    text.lines().filter(|l| l.starts_with('{')).map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// High watermark of every partition of `topics`.
pub fn watermarks(topics: &[String]) -> BTreeMap<(String, i32), i64> {
    let c: BaseConsumer = ClientConfig::new().set("bootstrap.servers", super::brokers()).create().unwrap();
    let mut out = BTreeMap::new();
    for t in topics {
        // Retried: right after a broker fault, leadership may still be moving.
        let retry = |what: &str, f: &mut dyn FnMut() -> rdkafka::error::KafkaResult<()>| {
            let deadline = Instant::now() + Duration::from_secs(60);
            while let Err(e) = f() {
                assert!(Instant::now() < deadline, "{what} of {t}: {e}");
                std::thread::sleep(Duration::from_millis(500));
            }
        };
        let mut md = None;
        retry("metadata", &mut || c.fetch_metadata(Some(t), Duration::from_secs(10)).map(|m| md = Some(m)));
        let md = md.unwrap();
        for p in md.topics()[0].partitions() {
            let mut high = 0;
            retry("watermarks", &mut || c.fetch_watermarks(t, p.id(), Duration::from_secs(10)).map(|(_, h)| high = h));
            out.insert((t.clone(), p.id()), high);
        }
    }
    out
}

pub fn pg_pool(url: &str) -> sqlx::PgPool {
    block_on(sqlx::postgres::PgPoolOptions::new().max_connections(2).connect(url)).unwrap()
}

pub fn pg_offsets(pool: &sqlx::PgPool, group: &str) -> BTreeMap<(String, i32), i64> {
    let rows: Vec<(String, i32, i64)> = block_on(
        sqlx::query_as("SELECT topic, partition, next_offset FROM consumer_offsets WHERE consumer_group = $1")
            .bind(group)
            .fetch_all(pool),
    )
    .unwrap_or_default();
    rows.into_iter().map(|(t, p, o)| ((t, p), o)).collect()
}

pub fn redis_con(url: &str) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(url).unwrap();
    block_on(client.get_multiplexed_async_connection()).unwrap()
}

pub fn redis_offsets(url: &str, group: &str) -> BTreeMap<(String, i32), i64> {
    let mut con = redis_con(url);
    let h: BTreeMap<String, i64> =
        block_on(redis::cmd("HGETALL").arg(format!("udo:offsets:{group}")).query_async(&mut con)).unwrap_or_default();
    h.into_iter()
        .filter_map(|(f, o)| {
            let (t, p) = f.rsplit_once(':')?;
            Some(((t.to_string(), p.parse().ok()?), o))
        })
        .collect()
}

/// Partitions (with records) whose stored offset is short of the high watermark.
pub fn behind(stored: &BTreeMap<(String, i32), i64>, topics: &[String]) -> Vec<String> {
    watermarks(topics)
        .into_iter()
        .filter(|(_, high)| *high > 0)
        .filter(|(k, high)| stored.get(k).copied().unwrap_or(0) < *high)
        .map(|((t, p), high)| format!("{t}[{p}] at {} of {high}", stored.get(&(t.clone(), p)).copied().unwrap_or(0)))
        .collect()
}

/// Waits until `stored()` reaches the high watermark of every partition.
pub fn wait_caught_up(
    what: &str,
    topics: &[String],
    timeout: Duration,
    mut stored: impl FnMut() -> BTreeMap<(String, i32), i64>,
    mut alive: impl FnMut(),
) {
    let deadline = Instant::now() + timeout;
    loop {
        alive();
        let b = behind(&stored(), topics);
        if b.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "{what} not caught up after {timeout:?}: {b:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// (count, distinct event ids) per event table.
pub fn pg_counts(pool: &sqlx::PgPool) -> BTreeMap<&'static str, (i64, i64)> {
    EVENT_TABLES
        .iter()
        .map(|t| {
            let q = format!("SELECT count(*), count(DISTINCT event_id) FROM {t}");
            (*t, block_on(sqlx::query_as::<_, (i64, i64)>(&q).fetch_one(pool)).unwrap())
        })
        .collect()
}

/// md5 of every row of every table (and of the stored offsets, without
/// their wall-clock `updated_at`), order-independent.
pub fn pg_checksums(pool: &sqlx::PgPool) -> BTreeMap<String, (i64, String)> {
    let mut out = BTreeMap::new();
    for t in all_tables() {
        let q = format!("SELECT count(*), coalesce(md5(string_agg(x::text, '|' ORDER BY x::text)), '') FROM {t} x");
        out.insert(t.to_string(), block_on(sqlx::query_as::<_, (i64, String)>(&q).fetch_one(pool)).unwrap());
    }
    let q = "SELECT count(*), coalesce(md5(string_agg(concat_ws(',', consumer_group, topic, partition, next_offset), \
             '|' ORDER BY consumer_group, topic, partition)), '') FROM consumer_offsets";
    out.insert("consumer_offsets".into(), block_on(sqlx::query_as::<_, (i64, String)>(q).fetch_one(pool)).unwrap());
    out
}

/// Every key of a Redis database with its full content (JSON values normalized).
pub fn redis_snapshot(url: &str) -> BTreeMap<String, String> {
    block_on(super::redis_snapshot(url))
}

/// One DLQ record: its raw value and headers.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: BTreeMap<String, String>,
}

/// Everything on a DLQ topic (read until 3 s without records).
pub fn read_dlq(topic: &str) -> Vec<DeadLetter> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", super::brokers())
        .set("group.id", format!("dlq-reader-{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for ((t, p), _) in watermarks(&[topic.to_string()]) {
        tpl.add_partition_offset(&t, p, Offset::Beginning).unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let mut last = Instant::now();
    while last.elapsed() < Duration::from_secs(3) {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            let mut headers = BTreeMap::new();
            if let Some(h) = m.headers() {
                for i in 0..h.count() {
                    let hd = h.get(i);
                    headers.insert(hd.key.to_string(), String::from_utf8_lossy(hd.value.unwrap_or_default()).into());
                }
            }
            out.push(DeadLetter { key: m.key().map(<[u8]>::to_vec), value: m.payload().map(<[u8]>::to_vec), headers });
            last = Instant::now();
        }
    }
    out
}

/// Commits `offset` for every partition of `topics` in `group` (the group
/// must have no live member): `kafka-consumer-groups --reset-offsets`.
pub fn reset_group(group: &str, topics: &[String], offset: i64) {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", super::brokers())
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for ((t, p), _) in watermarks(topics) {
        tpl.add_partition_offset(&t, p, Offset::Offset(offset)).unwrap();
    }
    // A member that just stopped may still be leaving: the broker refuses a
    // commit from outside the group until it is empty, as it would refuse
    // `kafka-consumer-groups --reset-offsets`. Wait for that, briefly.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match c.commit(&tpl, rdkafka::consumer::CommitMode::Sync) {
            Ok(()) => return,
            Err(e)
                if Instant::now() < deadline
                    && ["member", "rebalance"].iter().any(|w| e.to_string().to_lowercase().contains(w)) =>
            {
                std::thread::sleep(Duration::from_millis(200))
            }
            Err(e) => panic!("reset {group}: {e}"),
        }
    }
}

/// Exact rows per kind, and Redis holding exactly Postgres's live chunks.
/// Exactly one row per produced input event in its table.
pub fn assert_exact_rows(pool: &sqlx::PgPool, produced: &BTreeMap<String, i64>) {
    let counts = pg_counts(pool);
    for (table, kind) in [
        ("latency_samples", "LatencySample"),
        ("uncertainty_feedback", "FeedbackRating"),
        ("uncertainty_logs", "DecisionLog"),
        ("project_context_events", "ContextChunk"),
    ] {
        let n = produced[kind];
        assert_eq!(counts[table], (n, n), "{table}: (count(*), count(distinct event_id)) = produced {kind}");
    }
}

pub fn assert_exact_and_consistent(pool: &sqlx::PgPool, redis: &str, produced: &BTreeMap<String, i64>) {
    assert_exact_rows(pool, produced);
    let pg: std::collections::BTreeSet<(String, String, i64, String)> = block_on(
        sqlx::query_as::<_, (String, String, i32, String)>(
            "SELECT project_id, file_path, chunk_index, event_id::text FROM project_contexts",
        )
        .fetch_all(pool),
    )
    .unwrap()
    .into_iter()
    .map(|(p, f, i, e)| (p, f, i as i64, e))
    .collect();
    let mut con = redis_con(redis);
    let mut red = std::collections::BTreeSet::new();
    let keys: Vec<String> = block_on(redis::cmd("KEYS").arg("project:*:context").query_async(&mut con)).unwrap();
    for key in keys {
        let project = key.trim_start_matches("project:").trim_end_matches(":context").to_string();
        let h: std::collections::BTreeMap<String, String> =
            block_on(redis::cmd("HGETALL").arg(&key).query_async(&mut con)).unwrap();
        for (file, json) in h {
            for c in serde_json::from_str::<Vec<serde_json::Value>>(&json).unwrap() {
                let id = c["event_id"].as_str().unwrap().to_string();
                red.insert((project.clone(), file.clone(), c["chunk_index"].as_i64().unwrap(), id));
            }
        }
    }
    assert!(!pg.is_empty());
    assert_eq!(red, pg, "Redis holds exactly the chunks Postgres holds");
}
