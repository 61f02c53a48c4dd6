//! Kafka Connect for real: a distributed worker (`scripts/stack connect up`,
//! Apache Kafka's connect-runtime, plugins from Maven Central) reading what
//! the analyzer writes through the live registry. Every config in
//! `connectors/` is deployed through the REST API, exactly as committed but
//! for this run's topic prefix, and shown working end to end:
//! - `alerts-to-file`: every alert's event id in the file it appends to;
//! - `alerts-and-windows-to-postgres` (Debezium's JDBC sink): one row per
//!   alert and per window, keyed by event id, the nested window statistics
//!   flattened to columns, values equal to the topic's.
//!
//! A config added to `connectors/` without a check here fails the test.

use crate::support as common;
use crate::support::materialize as support;

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};
use support::*;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

struct Connect {
    url: String,
    out_dir: String,
}

fn connect() -> Connect {
    let env = common::stack(&["connect", "up"]);
    Connect { url: common::exported(&env, "CONNECT_URL"), out_dir: common::exported(&env, "UDO_CONNECT_OUT_DIR") }
}

/// `connectors/*.json`, each as committed.
fn committed() -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(format!("{ROOT}/connectors")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&path).unwrap();
            out.insert(stem, serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display())));
        }
    }
    out
}

/// The committed config for this run: its name, topics and output file
/// carry the run's prefix; nothing else changes.
fn for_run(mut c: Value, prefix: &str) -> Value {
    let name = format!("{prefix}{}", c["name"].as_str().unwrap());
    c["name"] = name.into();
    let cfg = c["config"].as_object_mut().unwrap();
    let topics: Vec<String> =
        cfg["topics"].as_str().unwrap().split(',').map(|t| format!("{prefix}{}", t.trim())).collect();
    cfg.insert("topics".into(), topics.join(",").into());
    if let Some(file) = cfg.get("file").and_then(Value::as_str) {
        let (dir, base) = file.rsplit_once('/').unwrap();
        let file = format!("{dir}/{prefix}{base}");
        cfg.insert("file".into(), file.into());
    }
    c
}

fn deploy(connect: &Connect, c: &Value) -> String {
    let name = c["name"].as_str().unwrap().to_string();
    // A connector left by an interrupted earlier run of the same prefix.
    let _ = ureq::delete(&format!("{}/connectors/{name}", connect.url)).call();
    let mut resp = ureq::post(&format!("{}/connectors", connect.url))
        .config()
        .http_status_as_error(false)
        .build()
        .send_json(c)
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.body_mut().read_to_string().unwrap();
    assert_eq!(status, 201, "POST /connectors {name}: {body}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s: Value = ureq::get(&format!("{}/connectors/{name}/status", connect.url))
            .call()
            .ok()
            .and_then(|mut r| r.body_mut().read_json().ok())
            .unwrap_or(Value::Null);
        let tasks = s["tasks"].as_array().cloned().unwrap_or_default();
        if s["connector"]["state"] == "RUNNING" && !tasks.is_empty() && tasks.iter().all(|t| t["state"] == "RUNNING") {
            return name;
        }
        assert!(
            !tasks.iter().any(|t| t["state"] == "FAILED"),
            "{name} failed: {}",
            tasks.iter().map(|t| t["trace"].as_str().unwrap_or("")).collect::<Vec<_>>().join("\n")
        );
        assert!(Instant::now() < deadline, "{name} not RUNNING after 60 s: {s}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn wait_until(what: &str, secs: u64, mut done: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        match done() {
            Ok(()) => return,
            Err(e) if Instant::now() >= deadline => panic!("timed out after {secs} s waiting for {what}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

fn ids(records: &[Value]) -> BTreeSet<String> {
    records.iter().map(|r| r["event_id"].as_str().unwrap().to_string()).collect()
}

#[test]
fn every_committed_connector_runs_on_a_real_worker_and_delivers_the_analyzer_outputs() {
    let _registry = crate::support::lease::registry();
    let _stores = crate::support::lease::stores();
    let connect = connect();
    let registry = common::exported(&common::stack(&["registry", "env"]), "SCHEMA_REGISTRY_URL");
    let reg = [("SCHEMA_REGISTRY_URL", registry.as_str())];
    let prefix = common::prefix("cx");
    common::apply_topics(&prefix);
    let db = block_on(common::fresh_database("cx"));

    // 30 minutes of event time, checkout slow from minute 5 for 8 minutes:
    // alerts fire and resolve, and hundreds of windows close.
    let mut args = vec!["produce", "all", "--clock", "simulated", "--rate", "60", "--start", "2026-01-01T00:00:00Z"];
    args.extend(["--duration", "30m", "--seed", "31", "--topic-prefix", &prefix, "--incident", "slow:checkout@5m+8m"]);
    udo(&args, &reg);
    let inputs: Vec<String> =
        ["udo.latency.v1", "udo.feedback.v1", "udo.writes.v1"].map(|t| format!("{prefix}{t}")).into();
    let produced: i64 = watermarks(&inputs).values().sum();
    let mut analyzer = materializer("analyze", &prefix, &db, "redis://unused", &reg);
    wait_until("the analyzer to read every input", 180, || {
        analyzer.assert_alive();
        let read = analyzer.metric("udo_records_consumed_total", &["analyze"]);
        if read >= produced as f64 { Ok(()) } else { Err(format!("{read} of {produced}")) }
    });
    // The last commit interval's outputs, then the topics as they stand.
    std::thread::sleep(Duration::from_secs(3));
    analyzer.stop();
    let tail_reg = |topic: &str| -> Vec<Value> {
        tail_with(&format!("{prefix}{topic}"), &reg).into_iter().map(|r| r["value"].clone()).collect()
    };
    let alerts = tail_reg("udo.alerts.v1");
    let windows = tail_reg("udo.windows.v1");
    let (alert_ids, window_ids) = (ids(&alerts), ids(&windows));
    let statuses: Vec<&str> = alerts.iter().map(|a| a["status"].as_str().unwrap()).collect();
    assert!(statuses.contains(&"FIRING") && statuses.contains(&"RESOLVED"), "alerts: {statuses:?}");
    assert!(window_ids.len() >= 100, "{} windows", window_ids.len());

    let pool = pg_pool(&std::env::var("DATABASE_URL").unwrap());
    // Debezium's default table name: the topic's, dots made underscores.
    let table = |topic: &str| format!("\"{}\"", format!("{prefix}{topic}").replace('.', "_"));
    let configs = committed();
    assert!(!configs.is_empty(), "connectors/ holds no config");
    let mut deployed = Vec::new();
    for (file, config) in configs {
        let c = for_run(config, &prefix);
        let name = deploy(&connect, &c);
        deployed.push(name.clone());
        match file.as_str() {
            "alerts-to-file" => {
                let path =
                    c["config"]["file"].as_str().unwrap().replace("${env:UDO_CONNECT_OUT_DIR}", &connect.out_dir);
                wait_until("every alert in the file sink's output", 90, || {
                    let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
                    let missing: Vec<_> = alert_ids.iter().filter(|id| !text.contains(id.as_str())).collect();
                    if missing.is_empty() {
                        Ok(())
                    } else {
                        Err(format!("{} missing, e.g. {}", missing.len(), missing[0]))
                    }
                });
                let lines = std::fs::read_to_string(&path).unwrap().lines().count();
                eprintln!("{name}: {lines} lines in {path}, every one of the {} alerts", alert_ids.len());
            }
            "alerts-and-windows-to-postgres" => {
                let rows = |t: &str| -> Result<BTreeSet<String>, String> {
                    let q = format!("SELECT event_id FROM {}", table(t));
                    let v: Vec<(String,)> = block_on(sqlx::query_as(&q).fetch_all(&pool)).map_err(|e| e.to_string())?;
                    Ok(v.into_iter().map(|(id,)| id).collect())
                };
                wait_until("one row per alert and per window", 120, || {
                    let (a, w) = (rows("udo.alerts.v1")?, rows("udo.windows.v1")?);
                    if a == alert_ids && w == window_ids {
                        Ok(())
                    } else {
                        Err(format!(
                            "{} of {} alerts, {} of {} windows",
                            a.len(),
                            alert_ids.len(),
                            w.len(),
                            window_ids.len()
                        ))
                    }
                });
                // Values as on the topic: the alert's enums and measure, a
                // window's flattened latency statistics.
                for a in &alerts {
                    let q =
                        format!("SELECT severity, status, value FROM {} WHERE event_id = $1", table("udo.alerts.v1"));
                    let (severity, status, value): (String, String, f64) =
                        block_on(sqlx::query_as(&q).bind(a["event_id"].as_str().unwrap()).fetch_one(&pool)).unwrap();
                    assert_eq!(
                        (severity.as_str(), status.as_str()),
                        (a["severity"].as_str().unwrap(), a["status"].as_str().unwrap())
                    );
                    assert_eq!(value, a["value"].as_f64().unwrap(), "{a}");
                }
                let w = windows.iter().find(|w| w["latency"].is_object()).expect("a window with latency");
                let q = format!(
                    "SELECT latency_count, latency_p95_ms, component FROM {} WHERE event_id = $1",
                    table("udo.windows.v1")
                );
                let (count, p95, component): (i64, f64, String) =
                    block_on(sqlx::query_as(&q).bind(w["event_id"].as_str().unwrap()).fetch_one(&pool)).unwrap();
                assert_eq!(count, w["latency"]["count"].as_i64().unwrap(), "{w}");
                assert_eq!(p95, w["latency"]["p95_ms"].as_f64().unwrap(), "{w}");
                assert_eq!(component, w["component"].as_str().unwrap());
                eprintln!(
                    "{name}: {} alert rows, {} window rows, equal to the topics",
                    alert_ids.len(),
                    window_ids.len()
                );
            }
            other => panic!("connectors/{other}.json has no end-to-end check in tests/it/connect.rs"),
        }
    }
    for name in deployed {
        ureq::delete(&format!("{}/connectors/{name}", connect.url)).call().unwrap();
    }
    for t in ["udo.alerts.v1", "udo.windows.v1"] {
        block_on(sqlx::query(&format!("DROP TABLE IF EXISTS {}", table(t))).execute(&pool)).unwrap();
    }
    block_on(common::drop_database(&db));
}
