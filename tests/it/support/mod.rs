//! Shared helpers for integration tests against the real local stack
//! (`scripts/stack up`). They fail loudly when the stack is unreachable:
//! a skipped integration test would hide a broken pipeline.
#![allow(dead_code)]

pub mod analyze;
pub mod lease;
pub mod materialize;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use std::process::{Command, Output};
use std::time::Duration;

/// The brokers of the stack's single node, or of the cluster while this
/// test holds [`lease::cluster`]; waits for them to answer.
pub fn brokers() -> String {
    if let Some(b) = lease::brokers_override() {
        return b;
    }
    let b = std::env::var("KAFKA_BROKERS").expect(
        "KAFKA_BROKERS is not set: run integration tests with scripts/test (it starts the stack and exports it)",
    );
    let probe: BaseConsumer = ClientConfig::new().set("bootstrap.servers", &b).create().expect("client");
    // A broker on a loaded 2-core machine can be slow to answer for a few
    // seconds: only one silent for a minute is unreachable.
    let mut last = None;
    for _ in 0..6 {
        match probe.fetch_metadata(Some("__udo_probe"), Duration::from_secs(10)) {
            Ok(_) => {
                WRITABLE.get_or_init(|| writable(&b));
                return b;
            }
            Err(e) => last = Some(e),
        }
    }
    panic!("Kafka broker at {b} is unreachable ({last:?}); start it with scripts/stack up");
}

static WRITABLE: std::sync::OnceLock<()> = std::sync::OnceLock::new();

/// Waits until the broker takes a record on a topic created now. A broker
/// just started answers requests while it still loads its partitions and
/// can take half a minute more to serve a new topic: every suite starting
/// at once would see "unknown topic" until then.
fn writable(brokers: &str) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let topic = format!("it-ready-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let admin: AdminClient<_> = ClientConfig::new().set("bootstrap.servers", brokers).create().expect("admin client");
    let new = NewTopic::new(&topic, 1, TopicReplication::Fixed(1));
    let created = materialize::block_on(admin.create_topics(&[new], &AdminOptions::new())).expect("create it-ready");
    assert!(created.iter().all(Result::is_ok), "create {topic}: {created:?}");
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("message.timeout.ms", "180000")
        .create()
        .expect("producer");
    producer.send(BaseRecord::<(), _>::to(&topic).payload("ready")).expect("queue a record");
    producer.flush(Duration::from_secs(180)).unwrap_or_else(|e| panic!("the broker at {brokers} takes no record: {e}"));
    let (_, high) = producer.client().fetch_watermarks(&topic, 0, Duration::from_secs(30)).expect("watermarks");
    assert_eq!(high, 1, "the broker at {brokers} took the record on {topic}");
}

/// The stack's brokers as the library's Kafka settings (no extra properties).
pub fn kafka() -> udo_stream::config::KafkaConfig {
    udo_stream::config::KafkaConfig::new(&brokers(), Default::default())
}

/// A topic prefix no other test run uses, so tests never see each other's records.
pub fn prefix(test: &str) -> String {
    format!("it-{test}-{}.", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

/// Runs the real binary with the stack's environment and `env`.
pub fn udo_with(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_udo-stream"));
    cmd.args(args).env("KAFKA_BROKERS", brokers()).env_remove("SCHEMA_REGISTRY_URL");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run udo-stream")
}

/// Runs the real binary with the stack's environment.
pub fn udo(args: &[&str]) -> Output {
    udo_with(args, &[])
}

/// Runs the binary with `env` and insists on success: its stdout, and its stderr.
pub fn udo_ok_with(args: &[&str], env: &[(&str, &str)]) -> (String, String) {
    let out = udo_with(args, env);
    let (stdout, stderr) =
        (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    assert!(out.status.success(), "udo-stream {args:?} failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}", out.status);
    (stdout, stderr)
}

/// Runs the binary and insists on success, returning stdout.
pub fn udo_ok(args: &[&str]) -> String {
    udo_ok_with(args, &[]).0
}

pub fn apply_topics(prefix: &str) {
    let out = udo_ok(&["topics", "apply", "--topic-prefix", prefix]);
    assert!(out.contains("11 created"), "{out}");
}

/// A new, empty PostgreSQL database on the `DATABASE_URL` server (the stack's
/// user may CREATE DATABASE), named after the test; returns its URL. Fails
/// loudly when the server is unreachable. Drop it with [`drop_database`].
pub async fn fresh_database(test: &str) -> String {
    use sqlx::{Connection, Executor};
    let url = std::env::var("DATABASE_URL").expect(
        "DATABASE_URL is not set: run integration tests with scripts/test (it starts the stack and exports it)",
    );
    let mut conn = sqlx::PgConnection::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at DATABASE_URL is unreachable ({e}); start it with scripts/stack up"));
    let name = format!("udo_it_{}_{}", test.to_lowercase(), &uuid::Uuid::new_v4().simple().to_string()[..8]);
    conn.execute(format!("CREATE DATABASE \"{name}\"").as_str()).await.expect("create test database");
    let _ = conn.close().await;
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url.as_str(), String::new()),
    };
    let (server, _db) = base.rsplit_once('/').expect("DATABASE_URL has a database path");
    format!("{server}/{name}{query}")
}

/// Drops a database made by [`fresh_database`] (best effort; open pool
/// connections are terminated).
pub async fn drop_database(url: &str) {
    use sqlx::{Connection, Executor};
    let name = url.rsplit_once('/').map(|(_, n)| n.split('?').next().unwrap_or(n)).unwrap_or_default().to_owned();
    let Ok(admin) = std::env::var("DATABASE_URL") else { return };
    if let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await {
        let _ = conn.execute(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)").as_str()).await;
        let _ = conn.close().await;
    }
}

/// A database of the `REDIS_URL` server no other test uses, flushed. Fails
/// loudly when Redis is unreachable or was started with too few databases.
pub async fn fresh_redis_db() -> String {
    let db = lease::next_redis_db();
    let url = std::env::var("REDIS_URL")
        .expect("REDIS_URL is not set: run integration tests with scripts/test (it starts the stack and exports it)");
    let base = url.trim_end_matches('/');
    let base = match base.rsplit_once('/') {
        Some((server, last)) if last.parse::<u32>().is_ok() && server.contains("://") => server,
        _ => base,
    };
    let url = format!("{base}/{db}");
    let client = redis::Client::open(url.as_str()).expect("REDIS_URL parses");
    let mut con = client
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("Redis at REDIS_URL is unreachable ({e}); start it with scripts/stack up"));
    let _: () = redis::cmd("FLUSHDB").query_async(&mut con).await.unwrap_or_else(|e| {
        panic!(
            "Redis database {db}: {e}; the stack starts Redis with {} databases: \
             restart it with scripts/stack stop redis && scripts/stack start redis",
            lease::REDIS_DATABASES
        )
    });
    url
}

/// Runs one of the project's scripts (`scripts/<name>`); its stdout, after
/// asserting success.
pub fn script(name: &str, args: &[&str]) -> String {
    let path = format!("{}/scripts/{name}", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(&path).args(args).output().unwrap_or_else(|e| panic!("run {path}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "scripts/{name} {args:?}: {}{stdout}", String::from_utf8_lossy(&out.stderr));
    stdout
}

/// `scripts/stack ARGS`: its stdout (the `env` lines of `up`).
pub fn stack(args: &[&str]) -> String {
    script("stack", args)
}

/// The value of `export NAME=value` in a script's output (shell quoting
/// undone).
pub fn exported(output: &str, name: &str) -> String {
    output
        .lines()
        .find_map(|l| l.strip_prefix(&format!("export {name}=")))
        .unwrap_or_else(|| panic!("{name} in: {output}"))
        .trim_matches('\'')
        .replace("\\*", "*")
}

/// `scripts/interop env`: AVRO_CLASSPATH, PYTHONPATH, KAFKA_CLASSPATH.
pub fn interop_env() -> String {
    script("interop", &["env"])
}

/// `interop/kafka_clients.py ARGS`, the Python service of the interop tests.
pub fn python_client(pythonpath: &str, args: &[&str]) -> String {
    let out = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/interop/kafka_clients.py"))
        .args(args)
        .env("PYTHONPATH", pythonpath)
        .output()
        .expect("run python3");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "kafka_clients.py {args:?}: {}{text}", String::from_utf8_lossy(&out.stderr));
    text
}

/// Every key of a Redis database with its full content; JSON values are
/// compared as JSON (Lua's cjson writes object keys in hash order, which is
/// not significant).
pub async fn redis_snapshot(url: &str) -> std::collections::BTreeMap<String, String> {
    use std::collections::BTreeMap;
    let client = redis::Client::open(url).expect("redis url");
    let mut con = client.get_multiplexed_async_connection().await.expect("redis connection");
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query_async(&mut con).await.unwrap();
    let mut out = BTreeMap::new();
    for k in keys {
        let ty: String = redis::cmd("TYPE").arg(&k).query_async(&mut con).await.unwrap();
        let v = match ty.as_str() {
            "hash" => {
                let h: BTreeMap<String, String> = redis::cmd("HGETALL").arg(&k).query_async(&mut con).await.unwrap();
                let h: BTreeMap<String, String> = h
                    .into_iter()
                    .map(|(f, v)| match serde_json::from_str::<serde_json::Value>(&v) {
                        Ok(j) if v.starts_with(['{', '[']) => (f, j.to_string()),
                        _ => (f, v),
                    })
                    .collect();
                format!("{h:?}")
            }
            "string" => redis::cmd("GET").arg(&k).query_async::<String>(&mut con).await.unwrap(),
            other => format!("<{other}>"),
        };
        out.insert(k, v);
    }
    out
}
