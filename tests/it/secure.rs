//! Production connectivity (design §7) against the stack's secured set
//! (`scripts/stack secure up`, which makes a CA and a server certificate
//! with openssl and random passwords):
//! - the three pipelines end to end with Kafka over SASL_SSL (SCRAM-SHA-512
//!   over TLS, the CA given as `ssl.ca.location`), PostgreSQL through
//!   pgbouncer with `sslmode=verify-full`, and Redis over TLS (`rediss://`)
//!   with an ACL user and password;
//! - a wrong Kafka password fails fast with "authentication failed" and
//!   without the password;
//! - no secret appears anywhere: every command's stdout and stderr (logging
//!   at debug level), `--help` with the secrets in the environment, and the
//!   metrics endpoint.

use crate::support as common;

use std::collections::BTreeMap;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const DIM: &str = "8";

/// The secured set's variables (`scripts/stack secure up` prints them as
/// eval-able exports; a shell reads them back, so quoting is the shell's).
fn secure_env() -> BTreeMap<String, String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/stack");
    let names = "KAFKA_BROKERS UDO__KAFKA__SECURITY_PROTOCOL UDO__KAFKA__SASL_MECHANISM UDO__KAFKA__SASL_USERNAME \
                 UDO__KAFKA__SASL_PASSWORD UDO__KAFKA__SSL_CA_LOCATION DATABASE_URL REDIS_URL SSL_CERT_FILE";
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(r#"set -e; eval "$("$0" secure up)"; for v in {names}; do printf '%s=%s\0' "$v" "${{!v}}"; done"#))
        .arg(script)
        .stderr(Stdio::inherit())
        .output()
        .expect("run scripts/stack secure up");
    assert!(out.status.success(), "scripts/stack secure up failed");
    let text = String::from_utf8(out.stdout).unwrap();
    let env: BTreeMap<String, String> =
        text.split('\0').filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect();
    assert_eq!(env.len(), 9, "{:?}", env.keys());
    env
}

/// The password inside `scheme://user:password@host...`.
fn url_password(url: &str) -> String {
    let rest = url.split_once("://").unwrap().1;
    let userinfo = rest.split_once('@').unwrap().0;
    userinfo.split_once(':').unwrap().1.to_string()
}

/// Every byte any command printed, to search for secrets at the end.
#[derive(Default)]
struct Transcript(String);

impl Transcript {
    fn add(&mut self, what: &str, out: &Output) {
        self.0.push_str(&format!("==== {what}\n"));
        self.0.push_str(&String::from_utf8_lossy(&out.stdout));
        self.0.push_str(&String::from_utf8_lossy(&out.stderr));
    }
}

fn udo(env: &BTreeMap<String, String>) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_udo-stream"));
    c.envs(env).env("UDO_EMBEDDING_DIM", DIM).env("UDO_LOG", "debug").env_remove("SCHEMA_REGISTRY_URL");
    c
}

fn ok(t: &mut Transcript, what: &str, out: Output) -> String {
    t.add(what, &out);
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// A fresh database through pgbouncer (TLS, verify-full); its URL keeps
/// the TLS parameters.
fn fresh_tls_database(url: &str) -> String {
    use sqlx::{Connection, Executor};
    let name = format!("udo_it_secure_{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    rt().block_on(async {
        let mut conn = sqlx::PgConnection::connect(url).await.expect("connect through pgbouncer with verify-full");
        let tls: (bool,) = sqlx::query_as("SELECT true").fetch_one(&mut conn).await.unwrap();
        assert!(tls.0);
        conn.execute(format!("CREATE DATABASE \"{name}\"").as_str()).await.unwrap();
        let _ = conn.close().await;
    });
    let (base, query) = url.split_once('?').unwrap();
    let (server, _) = base.rsplit_once('/').unwrap();
    format!("{server}/{name}?{query}")
}

fn count(url: &str, sql: &str) -> i64 {
    use sqlx::Connection;
    rt().block_on(async {
        let query = async {
            let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
            let (n,): (i64,) = sqlx::query_as(sql).fetch_one(&mut conn).await.unwrap_or((0,));
            let _ = conn.close().await;
            n
        };
        tokio::time::timeout(Duration::from_secs(20), query).await.expect("a count through pgbouncer answers in 20 s")
    })
}

/// redis-cli over TLS as the ACL user (the password through REDISCLI_AUTH,
/// never on a command line).
fn redis_cli(env: &BTreeMap<String, String>, args: &[&str]) -> String {
    let url = &env["REDIS_URL"];
    let hostport = url.split_once('@').unwrap().1.split('/').next().unwrap();
    let (host, port) = hostport.split_once(':').unwrap();
    let out = Command::new("timeout")
        .args([
            "10",
            "redis-cli",
            "--tls",
            "--cacert",
            &env["SSL_CERT_FILE"],
            "-h",
            host,
            "-p",
            port,
            "--user",
            "udo",
            "-n",
            "9",
        ])
        .args(args)
        .env("REDISCLI_AUTH", url_password(url))
        .output()
        .expect("run redis-cli");
    assert!(out.status.success(), "redis-cli {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The pipelines' process, killed if the test fails before stopping it.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn pipelines_run_over_sasl_ssl_tls_postgres_and_tls_redis_without_leaking_secrets() {
    let _stores = crate::support::lease::stores();
    let env = secure_env();
    let secrets =
        [env["UDO__KAFKA__SASL_PASSWORD"].clone(), url_password(&env["DATABASE_URL"]), url_password(&env["REDIS_URL"])];
    for s in &secrets {
        assert!(s.len() >= 16, "the stack makes long random passwords");
    }
    let mut t = Transcript::default();
    let prefix = common::prefix("secure");

    // Topics and events over SASL_SSL.
    let out =
        ok(&mut t, "topics apply", udo(&env).args(["topics", "apply", "--topic-prefix", &prefix]).output().unwrap());
    assert!(out.contains("11 created"), "{out}");
    let summary = ok(
        &mut t,
        "produce",
        udo(&env)
            .args(["produce", "all", "--clock", "simulated", "--rate", "50", "--count", "3000", "--seed", "11"])
            .args(["--topic-prefix", &prefix])
            .output()
            .unwrap(),
    );
    let line = summary.lines().find(|l| l.contains("\"by_record\"")).expect("produce prints a summary");
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(v["failed"], 0, "{line}");
    let samples = v["by_record"]["LatencySample"].as_i64().expect("latency samples produced");
    let ratings = v["by_record"]["FeedbackRating"].as_i64().expect("ratings produced");

    // The three pipelines: PostgreSQL through pgbouncer (verify-full), Redis over TLS.
    let db = fresh_tls_database(&env["DATABASE_URL"]);
    let redis_url = env["REDIS_URL"].replace("/0", "/9");
    redis_cli(&env, &["FLUSHDB"]);
    let metrics = format!("127.0.0.1:{}", free_port());
    // The run's output goes to files, not pipes: at debug level it writes
    // more than a pipe holds, and a full pipe would block it.
    let log_dir = std::env::temp_dir().join(format!("{prefix}run"));
    std::fs::create_dir_all(&log_dir).unwrap();
    let (out_path, err_path) = (log_dir.join("stdout"), log_dir.join("stderr"));
    let run = udo(&env)
        .args(["run", "--pipelines", "analyze,materialize-postgres,materialize-redis"])
        .args(["--metrics-addr", &metrics, "--topic-prefix", &prefix])
        .env("DATABASE_URL", &db)
        .env("REDIS_URL", &redis_url)
        .env("UDO__ANALYZE__IDLE_TIMEOUT", "2s")
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .expect("start the pipelines");
    let mut run = Running(run);
    let deadline = Instant::now() + Duration::from_secs(180);
    let redis_group = format!("udo:offsets:{prefix}udo-materialize-redis");
    loop {
        let landed = count(&db, "SELECT count(*) FROM latency_samples");
        let rated = count(&db, "SELECT count(*) FROM uncertainty_feedback");
        let windows = count(&db, "SELECT count(*) FROM latency_windows");
        let redis_offsets: i64 = redis_cli(&env, &["HLEN", &redis_group]).parse().unwrap_or(0);
        if landed == samples && rated == ratings && windows > 0 && redis_offsets > 0 {
            eprintln!(
                "landed {landed} samples, {rated} ratings, {windows} windows; Redis holds {redis_offsets} offsets"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pipelines did not finish over TLS: {landed}/{samples} samples, {rated}/{ratings} ratings, {windows} windows, {redis_offsets} Redis offsets"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    let latency_keys = redis_cli(&env, &["--scan", "--pattern", "udo:latency:*"]);
    assert!(!latency_keys.is_empty(), "Redis over TLS holds window stats");
    let agent = ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(10))).build().new_agent();
    let body = agent.get(&format!("http://{metrics}/metrics")).call().unwrap().into_body().read_to_string().unwrap();
    assert!(body.contains("udo_records_consumed_total"), "metrics served");
    t.0.push_str("==== /metrics\n");
    t.0.push_str(&body);
    let pid = run.0.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let status = run.0.wait().unwrap();
    let out = Output { status, stdout: std::fs::read(&out_path).unwrap(), stderr: std::fs::read(&err_path).unwrap() };
    ok(&mut t, "run", out);

    // A wrong password fails fast, says so, and does not print it.
    let wrong = format!("wrong-{}", uuid::Uuid::new_v4().simple());
    let started = Instant::now();
    let out = udo(&env)
        .args(["topics", "apply", "--dry-run", "--topic-prefix", &prefix])
        .env("UDO__KAFKA__SASL_PASSWORD", &wrong)
        .output()
        .unwrap();
    let took = started.elapsed();
    t.add("wrong password", &out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a wrong password must fail");
    assert!(stderr.contains("authentication failed"), "{stderr}");
    assert!(took < Duration::from_secs(20), "fails fast, took {took:?}");
    assert!(!t.0.contains(&wrong), "the wrong password was printed:\n{stderr}");

    // --help with every secret in the environment.
    for cmd in [&["--help"][..], &["run", "--help"], &["replay", "--help"], &["bench", "analyze", "--help"]] {
        let out = udo(&env).args(cmd).output().unwrap();
        ok(&mut t, &format!("{cmd:?}"), out);
    }

    for (i, s) in secrets.iter().enumerate() {
        if let Some(at) = t.0.find(s.as_str()) {
            let from = t.0[..at].rfind("====").unwrap_or(0);
            panic!(
                "secret #{i} printed, in:\n{}",
                t.0[from..(at + 200).min(t.0.len())].replace(s.as_str(), "<SECRET>")
            );
        }
    }
    eprintln!("searched {} bytes of output for {} secrets: none found", t.0.len(), secrets.len() + 1);
    // The secured set holds a JVM: stopped again for the rest of the suite.
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/stack");
    assert!(Command::new(script).args(["secure", "down"]).status().unwrap().success());
}
