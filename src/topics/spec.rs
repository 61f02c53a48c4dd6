//! One topic's declaration, as written in `topics/<name>.yaml`.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

/// (file name, text), one per `topics/*.yaml`, compiled in so the binary can
/// apply topics from anywhere; `--dir` reads a directory instead.
pub const BUILTIN: &[(&str, &str)] = &[
    ("udo.writes.v1.yaml", include_str!("../../topics/udo.writes.v1.yaml")),
    ("udo.feedback.v1.yaml", include_str!("../../topics/udo.feedback.v1.yaml")),
    ("udo.latency.v1.yaml", include_str!("../../topics/udo.latency.v1.yaml")),
    ("udo.windows.v1.yaml", include_str!("../../topics/udo.windows.v1.yaml")),
    ("udo.alerts.v1.yaml", include_str!("../../topics/udo.alerts.v1.yaml")),
    ("udo.degradations.v1.yaml", include_str!("../../topics/udo.degradations.v1.yaml")),
    ("udo.promotions.v1.yaml", include_str!("../../topics/udo.promotions.v1.yaml")),
    ("udo.dlq.v1.yaml", include_str!("../../topics/udo.dlq.v1.yaml")),
    ("udo.analyze.decisions.v1.yaml", include_str!("../../topics/udo.analyze.decisions.v1.yaml")),
    ("udo.analyze.changelog.v1.yaml", include_str!("../../topics/udo.analyze.changelog.v1.yaml")),
    ("udo.analyze.routed.v1.yaml", include_str!("../../topics/udo.analyze.routed.v1.yaml")),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CleanupPolicy {
    Delete,
    Compact,
}

impl CleanupPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            CleanupPolicy::Delete => "delete",
            CleanupPolicy::Compact => "compact",
        }
    }
}

/// What a topic's values are.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum ValueSpec {
    /// Avro records by name (`schemas/<name>.avsc`); several = a union.
    Records(Vec<String>),
    /// `raw`: bytes kept as they came (the DLQ).
    Raw(RawMarker),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RawMarker {
    Raw,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicSpec {
    /// Topic name without the environment prefix.
    pub name: String,
    /// What the topic carries, for people browsing a Kafka UI.
    pub description: String,
    /// Partition count: the unit of parallelism and ordering.
    pub partitions: i32,
    /// Replication factor (1 on a single local broker).
    pub replication: i32,
    pub cleanup_policy: CleanupPolicy,
    /// Retention as a duration (e.g. `7d`); absent = the broker default.
    #[serde(default)]
    pub retention: Option<String>,
    /// Field the record key holds (documentation; the producer sets it).
    pub key: String,
    pub value: ValueSpec,
    /// Extra broker configs, verbatim (`max.message.bytes: "2097152"`).
    #[serde(default)]
    pub configs: BTreeMap<String, String>,
}

impl TopicSpec {
    /// Broker configs this spec declares (cleanup, retention, extras).
    pub fn broker_configs(&self) -> Result<BTreeMap<String, String>, String> {
        let mut out = self.configs.clone();
        out.insert("cleanup.policy".into(), self.cleanup_policy.as_str().into());
        if let Some(r) = &self.retention {
            let d = humantime::parse_duration(r).map_err(|e| {
                format!("topic {}: field `retention`: {r:?} is not a duration ({e}); e.g. 7d, 12h", self.name)
            })?;
            out.insert("retention.ms".into(), d.as_millis().to_string());
        }
        Ok(out)
    }

    /// The Avro record names this topic's values may hold (empty for raw).
    pub fn records(&self) -> &[String] {
        match &self.value {
            ValueSpec::Records(r) => r,
            ValueSpec::Raw(_) => &[],
        }
    }

    fn check(&self, file: &str) -> Result<(), String> {
        let bad = |field: &str, why: String| Err(format!("{file}: field `{field}`: {why}"));
        if self.partitions < 1 {
            return bad("partitions", format!("must be >= 1, got {}", self.partitions));
        }
        if self.replication < 1 {
            return bad("replication", format!("must be >= 1, got {}", self.replication));
        }
        if let ValueSpec::Records(r) = &self.value {
            if r.is_empty() {
                return bad("value", "list at least one schema, or write `raw`".into());
            }
        }
        let stem = file.trim_end_matches(".yaml").trim_end_matches(".yml");
        if stem != self.name {
            return bad("name", format!("{:?} must match the file name {stem:?}", self.name));
        }
        self.broker_configs().map(|_| ()).or_else(|e| bad("retention", e))
    }
}

/// All declared topics, sorted by name.
#[derive(Debug, Clone)]
pub struct TopicCatalog {
    specs: Vec<TopicSpec>,
}

impl TopicCatalog {
    pub fn builtin() -> TopicCatalog {
        Self::parse(BUILTIN.iter().map(|(f, t)| (f.to_string(), t.to_string())))
            .expect("built-in topics parse (unit-tested)")
    }

    /// Reads every `*.yaml` file of `dir`.
    pub fn load_dir(dir: &Path) -> Result<TopicCatalog, String> {
        let entries = std::fs::read_dir(dir).map_err(|e| format!("cannot read topics dir {}: {e}", dir.display()))?;
        let mut files = Vec::new();
        for entry in entries {
            let path = entry.map_err(|e| e.to_string())?.path();
            if matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
                let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                files.push((path.file_name().unwrap_or_default().to_string_lossy().into_owned(), text));
            }
        }
        if files.is_empty() {
            return Err(format!("no *.yaml topic files in {}", dir.display()));
        }
        Self::parse(files)
    }

    pub fn parse(files: impl IntoIterator<Item = (String, String)>) -> Result<TopicCatalog, String> {
        let mut specs = Vec::new();
        for (file, text) in files {
            let spec: TopicSpec = serde_norway::from_str(&text).map_err(|e| format!("{file}: {e}"))?;
            spec.check(&file)?;
            specs.push(spec);
        }
        specs.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(TopicCatalog { specs })
    }

    pub fn specs(&self) -> &[TopicSpec] {
        &self.specs
    }

    /// The same topics with another replication factor (`topics apply --replication`).
    pub fn with_replication(mut self, replication: i32) -> TopicCatalog {
        for s in &mut self.specs {
            s.replication = replication;
        }
        self
    }

    pub fn get(&self, name: &str) -> Option<&TopicSpec> {
        self.specs.iter().find(|s| s.name == name)
    }

    /// The records a topic carries; `Err` names the unknown topic.
    pub fn records(&self, name: &str) -> Result<&[String], String> {
        self.get(name).map(TopicSpec::records).ok_or_else(|| {
            let known: Vec<&str> = self.specs.iter().map(|s| s.name.as_str()).collect();
            format!("unknown topic {name:?}; declared topics: {}", known.join(", "))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_topics_parse_and_match_the_topics_dir() {
        let c = TopicCatalog::builtin();
        let dir = TopicCatalog::load_dir(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/topics"))).unwrap();
        assert_eq!(c.specs(), dir.specs(), "add new topics/*.yaml to topics::spec::BUILTIN");
        let names: Vec<&str> = c.specs().iter().map(|s| s.name.as_str()).collect();
        for n in [
            super::super::names::WRITES,
            super::super::names::FEEDBACK,
            super::super::names::LATENCY,
            super::super::names::WINDOWS,
            super::super::names::ALERTS,
            super::super::names::DEGRADATIONS,
            super::super::names::PROMOTIONS,
            super::super::names::DLQ,
            super::super::names::DECISIONS_BY_COMPONENT,
        ] {
            assert!(names.contains(&n), "{n} missing");
        }
        let windows = c.get("udo.windows.v1").unwrap();
        assert_eq!(windows.cleanup_policy, CleanupPolicy::Compact);
        assert_eq!(c.get("udo.dlq.v1").unwrap().value, ValueSpec::Raw(RawMarker::Raw));
        assert_eq!(c.records("udo.writes.v1").unwrap(), ["ContextChunk", "DecisionLog"]);
        assert_eq!(c.get("udo.latency.v1").unwrap().broker_configs().unwrap()["retention.ms"], "604800000");
    }

    #[test]
    fn bad_specs_name_file_and_field() {
        let base =
            "name: t\ndescription: d\npartitions: 3\nreplication: 1\ncleanup_policy: delete\nkey: k\nvalue: [A]\n";
        let err = |text: String| TopicCatalog::parse([("t.yaml".to_string(), text)]).unwrap_err();
        assert!(err(base.replace("partitions: 3", "partitions: 0")).contains("`partitions`"));
        assert!(err(base.replace("name: t", "name: u")).contains("`name`"));
        assert!(err(format!("{base}retention: forever\n")).contains("`retention`"));
        assert!(err(format!("{base}partition: 3\n")).contains("unknown field `partition`"));
        assert!(err(base.replace("cleanup_policy: delete", "cleanup_policy: shred")).contains("cleanup_policy"));
        assert!(err(base.replace("value: [A]", "value: []")).contains("`value`"));
    }
}
