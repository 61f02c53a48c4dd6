//! Prometheus, proven against a real one (Debian's, `scripts/stack
//! prometheus up`):
//! - `promtool` checks `prometheus/rules.yml` and runs its unit tests
//!   (`prometheus/rules.test.yml`: every alert fires on the series that
//!   should trip it and not on the healthy ones);
//! - during a real run (the three pipelines over the incident input, with a
//!   record for the DLQ) Prometheus scrapes the processor, loads the rules,
//!   and every panel query of `dashboards/*.json` returns series. A query on
//!   a metric or label the processor does not export fails the test. The
//!   panels show the incident: checkout DEGRADED with its P95 over the
//!   limit mid-incident, then every alert transition and both degradations
//!   in the "in range" panels (counters start at 0, so `increase()` counts
//!   the first one too). Both dashboards take the data source and the
//!   component as variables.

use crate::support as common;
use crate::support::materialize as support;

use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};
use support::*;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// (PROMETHEUS_URL, PROMETHEUS_TARGETS_DIR) of the stack's Prometheus.
fn prometheus() -> (String, PathBuf) {
    let out = Command::new(format!("{ROOT}/scripts/stack")).args(["prometheus", "up"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "scripts/stack prometheus up: {}", String::from_utf8_lossy(&out.stderr));
    let var = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("export {name}=")))
            .unwrap_or_else(|| panic!("{name} in: {text}"))
            .trim_matches('\'')
            .to_string()
    };
    (var("PROMETHEUS_URL"), PathBuf::from(var("PROMETHEUS_TARGETS_DIR")))
}

fn promtool(args: &[&str]) {
    let out = Command::new("promtool").args(args).current_dir(format!("{ROOT}/prometheus")).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
}

/// An instant query's result vector.
fn query(url: &str, q: &str) -> Vec<Value> {
    let body: Value = ureq::get(&format!("{url}/api/v1/query"))
        .query("query", q)
        .call()
        .unwrap_or_else(|e| panic!("query {q}: {e}"))
        .body_mut()
        .read_json()
        .unwrap();
    assert_eq!(body["status"], "success", "{q}: {body}");
    body["data"]["result"].as_array().cloned().unwrap_or_default()
}

/// The labels a query groups by (`by (a, b)`), less `le`, which
/// `histogram_quantile` consumes, and those its legend shows (`{{a}}`):
/// each must be on the result's series. (A label the metric does not have
/// still groups, into one series without it: no series check sees that.)
fn shown_labels(expr: &str, legend: &str) -> Vec<String> {
    let mut labels = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("by (") {
        let inner = &rest[i + 4..];
        let end = inner.find(')').expect("closing parenthesis");
        labels.extend(inner[..end].split(',').map(|l| l.trim().to_string()).filter(|l| l != "le"));
        rest = &inner[end..];
    }
    let mut rest = legend;
    while let Some(i) = rest.find("{{") {
        let inner = &rest[i + 2..];
        let end = inner.find("}}").expect("closing braces");
        labels.push(inner[..end].trim().to_string());
        rest = &inner[end..];
    }
    labels.sort();
    labels.dedup();
    labels
}

/// Every panel query of every dashboard (title, query, legend), with
/// Grafana's variables given the values a 10-minute view would.
fn panel_queries() -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(format!("{ROOT}/dashboards")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let d: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for p in d["panels"].as_array().unwrap() {
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = t["expr"].as_str() {
                    let expr =
                        expr.replace("$__rate_interval", "1m").replace("$__range", "10m").replace("$component", ".*");
                    let legend = t["legendFormat"].as_str().unwrap_or("").to_string();
                    out.push((p["title"].as_str().unwrap_or("?").to_string(), expr, legend));
                }
            }
        }
    }
    out
}

/// Removes this run's target file, so Prometheus stops scraping it.
struct Target(PathBuf);

impl Drop for Target {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn the_rules_check_and_pass_their_unit_tests() {
    let _stores = crate::support::lease::stores();
    prometheus(); // installs promtool with it
    promtool(&["check", "rules", "rules.yml"]);
    promtool(&["test", "rules", "rules.test.yml"]);
}

/// The incident input in two parts, so Prometheus scrapes the middle of it:
/// `first` is minutes 0-15 (checkout slow from 10), else minutes 15-35
/// (slow until 20).
fn produce_part(prefix: &str, first: bool) {
    // Two seeds: one seed's event ids would repeat in the second part.
    let (start, duration, incident, seed) = if first {
        ("2026-01-01T00:00:00Z", "15m", "slow:checkout@10m+10m", "11")
    } else {
        ("2026-01-01T00:15:00Z", "20m", "slow:checkout@0m+5m", "12")
    };
    common::udo_ok(&[
        "produce",
        "all",
        "--clock",
        "simulated",
        "--rate",
        "60",
        "--seed",
        seed,
        "--topic-prefix",
        prefix,
        "--embedding-dim",
        DIM,
        "--start",
        start,
        "--duration",
        duration,
        "--incident",
        incident,
    ]);
}

/// Waits until `q` returns a series whose value satisfies `ok` (up to 2
/// minutes: with other suites running, a new target's first scrape has
/// taken more than one).
fn wait_for(url: &str, q: &str, what: &str, ok: impl Fn(f64) -> bool) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let v = query(url, q).iter().filter_map(|s| s["value"][1].as_str()?.parse::<f64>().ok()).reduce(f64::max);
        if let Some(v) = v.filter(|v| ok(*v)) {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: {q} gave {v:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn both_dashboards_take_the_data_source_and_component_as_variables() {
    let _stores = crate::support::lease::stores();
    for (file, vars) in
        [("udo-stream.json", &["datasource"][..]), ("udo-components.json", &["datasource", "component"])]
    {
        let d: Value =
            serde_json::from_str(&std::fs::read_to_string(format!("{ROOT}/dashboards/{file}")).unwrap()).unwrap();
        let names: Vec<&str> =
            d["templating"]["list"].as_array().unwrap().iter().filter_map(|v| v["name"].as_str()).collect();
        assert_eq!(names, vars, "{file}: variables");
        for p in d["panels"].as_array().unwrap() {
            assert_eq!(p["datasource"]["uid"], "${datasource}", "{file}: panel {} data source", p["title"]);
            for t in p["targets"].as_array().unwrap() {
                let expr = t["expr"].as_str().unwrap();
                if expr.contains("udo_component_") {
                    assert!(
                        expr.contains(r#"component=~"$component""#),
                        "{file}: {expr} ignores the component variable"
                    );
                }
            }
        }
    }
}

#[test]
fn every_dashboard_panel_returns_series_during_a_real_run() {
    let _stores = crate::support::lease::stores();
    let (url, targets) = prometheus();
    let prefix = common::prefix("prom");
    common::apply_topics(&prefix);
    let db = block_on(common::fresh_database("prom"));
    let redis = block_on(common::fresh_redis_db());
    let mut m = materializer(
        "analyze,materialize-postgres,materialize-redis",
        &prefix,
        &db,
        &redis,
        &[("UDO__ANALYZE__IDLE_TIMEOUT", "3s")],
    );
    let file = targets.join(format!("{}json", prefix));
    let _target = Target(file.clone());
    let instance = format!("127.0.0.1:{}", m.port);
    std::fs::write(&file, format!(r#"[{{"targets":["{instance}"],"labels":{{"run":"{prefix}"}}}}]"#)).unwrap();
    // Scraped before any input: the alert counters are there at 0.
    let run = format!(r#"instance="{instance}""#);
    wait_for(&url, &format!(r#"count(udo_alerts_total{{{run}}} == 0)"#), "alert series at 0 before any alert", |n| {
        n >= 10.0
    });

    // Mid-incident: the components dashboard shows checkout degraded and
    // its P95 over the limit.
    produce_part(&prefix, true);
    let checkout = |m: &str, extra: &str| format!(r#"max({m}{{{run},component=~"checkout"{extra}}})"#);
    wait_for(&url, &checkout("udo_component_degraded", ""), "checkout DEGRADED mid-incident", |v| v == 1.0);
    wait_for(&url, &checkout("udo_component_latency_ms", r#",quantile="0.95""#), "checkout's P95 over 200 ms", |v| {
        v > 200.0
    });
    produce_part(&prefix, false);
    let p: FutureProducer = rdkafka::ClientConfig::new().set("bootstrap.servers", common::brokers()).create().unwrap();
    let topic = format!("{prefix}udo.latency.v1");
    block_on(p.send(FutureRecord::to(&topic).key("checkout").payload(&b"not avro"[..]), Duration::from_secs(30)))
        .unwrap();

    // The run has what every panel shows: outputs, alerts, a dead letter.
    let deadline = Instant::now() + Duration::from_secs(240);
    while !(m.metric("udo_alerts_total", &[]) > 0.0 && m.metric("udo_dlq_records_total", &[]) > 0.0) {
        m.assert_alive();
        assert!(Instant::now() < deadline, "no alert or dead letter within 240 s");
        std::thread::sleep(Duration::from_millis(500));
    }
    let up = format!(r#"up{{job="udo-stream",instance="{instance}"}} == 1"#);
    let deadline = Instant::now() + Duration::from_secs(60);
    while query(&url, &up).is_empty() {
        assert!(Instant::now() < deadline, "Prometheus does not scrape {instance} (target file {})", file.display());
        std::thread::sleep(Duration::from_millis(500));
    }

    // Rates need two scrapes after the first increment: wait for each query.
    let mut wrong = Vec::new();
    for (title, expr, legend) in panel_queries() {
        let deadline = Instant::now() + Duration::from_secs(30);
        let series = loop {
            let series = query(&url, &expr);
            if !series.is_empty() || Instant::now() > deadline {
                break series;
            }
            std::thread::sleep(Duration::from_millis(500));
        };
        eprintln!("panel {title:?}: {} series for {expr}", series.len());
        if series.is_empty() {
            wrong.push(format!("{title}: no series for {expr}"));
        }
        for label in shown_labels(&expr, &legend) {
            let on_a_series = series.iter().any(|s| s["metric"][&label].as_str().is_some_and(|v| !v.is_empty()));
            if !series.is_empty() && !on_a_series {
                wrong.push(format!("{title}: no series has the label {label:?} ({expr}, legend {legend:?})"));
            }
        }
    }
    assert!(wrong.is_empty(), "dashboard panels that show nothing:\n  {}", wrong.join("\n  "));

    // After the incident: checkout healthy again; the "in range" panels
    // count every alert transition and both degradations, the first ones
    // included.
    wait_for(&url, &checkout("udo_component_degraded", ""), "checkout RECOVERED", |v| v == 0.0);
    let (alerts, degradations) = (m.metric("udo_alerts_total", &[]), m.metric("udo_degradations_total", &[]));
    assert!(
        alerts >= 4.0 && degradations == 2.0,
        "the incident: {alerts} alert transitions, {degradations} degradations"
    );
    let in_range = |m: &str| format!("sum(round(increase({m}{{{run}}}[10m])))");
    let shown = wait_for(&url, &in_range("udo_alerts_total"), "alerts in range", |v| v >= alerts);
    assert_eq!(shown, alerts, "alerts in range");
    let shown = wait_for(&url, &in_range("udo_degradations_total"), "degradations in range", |v| v >= degradations);
    assert_eq!(shown, degradations, "degradations in range");

    // The rules are loaded and evaluate on the live series.
    for rule in ["udo:records_consumed:rate5m", "udo:consumer_lag_records:sum", "udo:sink_retries:rate5m"] {
        let deadline = Instant::now() + Duration::from_secs(30);
        while query(&url, rule).is_empty() {
            assert!(Instant::now() < deadline, "recording rule {rule} has no series");
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    // This run's process (a target file an interrupted run left behind
    // names a dead one, rightly alerting).
    let alerts = query(&url, &format!(r#"ALERTS{{alertname="UdoProcessorDown",{run}}}"#));
    assert!(alerts.is_empty(), "the processor is up: {alerts:?}");
    m.stop();
    block_on(common::drop_database(&db));
}
