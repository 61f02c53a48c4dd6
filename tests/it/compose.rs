//! docker-compose.yml cannot run here (no Docker engine), so it is checked
//! statically: it parses, every service is runnable and health-checked,
//! dependencies wait for health, and published ports match the table of
//! docs/operations.md (Docker).

use serde_json::Value;
use std::collections::BTreeMap;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{ROOT}/{path}")).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn compose() -> Value {
    serde_norway::from_str(&read("docker-compose.yml")).expect("docker-compose.yml parses")
}

fn services(c: &Value) -> &serde_json::Map<String, Value> {
    c["services"].as_object().expect("services map")
}

#[test]
fn every_contract_service_is_present_runnable_and_health_checked() {
    let c = compose();
    let s = services(&c);
    for name in
        ["kafka", "schema-registry", "kafka-ui", "connect", "postgres", "redis", "prometheus", "grafana", "udo-stream"]
    {
        let svc = s.get(name).unwrap_or_else(|| panic!("service {name} missing"));
        assert!(svc.get("image").is_some() || svc.get("build").is_some(), "{name}: needs image or build");
        assert!(svc.get("healthcheck").and_then(|h| h.get("test")).is_some(), "{name}: needs a healthcheck");
    }
    assert_eq!(s["udo-stream"]["build"], ".", "the processor is built from the repo's Dockerfile");
    assert!(std::path::Path::new(&format!("{ROOT}/Dockerfile")).exists());
}

#[test]
fn dependencies_exist_and_wait_for_health() {
    let c = compose();
    let s = services(&c);
    for (name, svc) in s {
        let Some(deps) = svc.get("depends_on") else { continue };
        for (dep, cond) in deps.as_object().unwrap_or_else(|| panic!("{name}: use the long depends_on form")) {
            assert!(s.contains_key(dep), "{name} depends on unknown service {dep}");
            // Optional companions (the UI's Connect view) may only wait for start.
            let c = cond["condition"].as_str().unwrap_or_default();
            assert!(c == "service_healthy" || c == "service_started", "{name} -> {dep}: condition {c:?}");
        }
    }
    let needs = |svc: &str, deps: &[&str]| {
        for d in deps {
            assert_eq!(
                s[svc]["depends_on"][d]["condition"], "service_healthy",
                "{svc} must wait for {d} to be healthy"
            );
        }
    };
    needs("udo-stream", &["kafka", "schema-registry", "postgres", "redis"]);
    needs("kafka-ui", &["kafka", "schema-registry"]);
    needs("connect", &["kafka", "schema-registry"]);
    needs("schema-registry", &["kafka"]);
}

#[test]
fn wiring_between_services_is_consistent() {
    let c = compose();
    let s = services(&c);
    let env = |svc: &str, key: &str| s[svc]["environment"][key].as_str().unwrap_or_default().to_string();
    assert_eq!(env("kafka-ui", "KAFKA_CLUSTERS_0_SCHEMAREGISTRY"), "http://schema-registry:8081");
    assert!(env("udo-stream", "SCHEMA_REGISTRY_URL").starts_with("http://schema-registry:"));
    assert!(env("udo-stream", "KAFKA_BROKERS").starts_with("kafka:"));
    assert!(env("udo-stream", "DATABASE_URL").contains("@postgres:5432/"));
    assert!(env("udo-stream", "REDIS_URL").contains("redis:6379"));
    // Prometheus scrapes the processor where it listens.
    let metrics_port = env("udo-stream", "UDO_METRICS_ADDR").rsplit(':').next().unwrap().to_string();
    assert!(read("docker/prometheus.yml").contains(&format!("udo-stream:{metrics_port}")));
    // Dashboards parse and chart only our metric namespace.
    let dash: Value = serde_json::from_str(&read("dashboards/udo-stream.json")).expect("dashboard JSON");
    let text = dash.to_string();
    assert!(text.contains("udo_"), "dashboard charts udo_ metrics");
}

/// Host port per service, from `"127.0.0.1:HOST:CONTAINER"` entries.
fn published_ports(c: &Value) -> BTreeMap<String, Vec<u16>> {
    services(c)
        .iter()
        .filter_map(|(name, svc)| {
            let ports = svc.get("ports")?.as_array()?;
            let host = ports
                .iter()
                .map(|p| {
                    let parts: Vec<&str> = p.as_str().expect("short port syntax").split(':').collect();
                    parts[parts.len() - 2].parse().expect("numeric host port")
                })
                .collect();
            Some((name.clone(), host))
        })
        .collect()
}

#[test]
fn published_ports_match_the_docs_table() {
    let readme = read("docs/operations.md");
    let ports = published_ports(&compose());
    assert!(ports.len() >= 8, "{ports:?}");
    let mut seen = Vec::new();
    for (svc, host_ports) in &ports {
        for port in host_ports {
            let row = format!("| `{svc}` | {port} |");
            assert!(readme.contains(&row), "docs/operations.md lacks the row starting {row:?}");
            assert!(!seen.contains(port), "host port {port} published twice");
            seen.push(*port);
        }
    }
}

/// The `connect` service runs the same `connectors/*.json` as
/// `scripts/stack connect`: it resolves every `${env:NAME}` they use (config
/// provider and variable) and mounts them where connectors/README.md says.
#[test]
fn the_connect_service_resolves_every_committed_connector_config() {
    let c = compose();
    let connect = &services(&c)["connect"];
    let env = connect["environment"].as_object().expect("connect environment");
    assert_eq!(env["CONNECT_CONFIG_PROVIDERS"], "env");
    assert_eq!(
        env["CONNECT_CONFIG_PROVIDERS_ENV_CLASS"],
        "org.apache.kafka.common.config.provider.EnvVarConfigProvider"
    );
    let stack = read("scripts/stack.d/connect.sh");
    let mut checked = 0;
    for entry in std::fs::read_dir(format!("{ROOT}/connectors")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let config: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(config["name"].is_string() && config["config"]["connector.class"].is_string(), "{}", path.display());
        for var in text.split("${env:").skip(1).map(|rest| rest.split('}').next().unwrap()) {
            assert!(env.contains_key(var), "{}: compose's connect sets no {var}", path.display());
            assert!(
                stack.contains(&format!("export {var}=")) || stack.contains(&format!(" {var}=")),
                "{}: scripts/stack's worker sets no {var}",
                path.display()
            );
        }
        checked += 1;
    }
    assert!(checked >= 2, "connectors/ holds {checked} configs");
    let volumes = connect["volumes"].as_array().unwrap();
    assert!(volumes.iter().any(|v| v == "./connectors:/etc/udo/connectors:ro"));
}
