//! Configuration, in one place. Connection settings are flags with
//! environment fallbacks (`KAFKA_BROKERS`, `DATABASE_URL`, `REDIS_URL`,
//! `SCHEMA_REGISTRY_URL`, `UDO_*`); pipeline tuning is layered like Arroyo's:
//! built-in defaults, then an optional TOML file (`--config`), then
//! `UDO__SECTION__KEY=value` environment overrides. Secrets never reach logs:
//! `Display` of anything holding a URL goes through `redact`.

use crate::codec::{Catalog, Codec, HttpRegistry, OutputFormat, SchemaRegistry};
use crate::domain::Limits;
use crate::topics::TopicCatalog;
use clap::Args;
use serde::{Deserialize, Deserializer};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// Kafka bootstrap servers, comma-separated.
    #[arg(long, global = true, env = "KAFKA_BROKERS", default_value = "127.0.0.1:19092")]
    pub brokers: String,

    /// Prefix added to every topic name, to run several environments (or
    /// test runs) on one cluster.
    #[arg(long, global = true, env = "UDO_TOPIC_PREFIX", default_value = "")]
    pub topic_prefix: String,

    /// Confluent Schema Registry URL; when set, Avro output uses Confluent
    /// framing and subjects `<topic>-value`.
    #[arg(long, global = true, env = "SCHEMA_REGISTRY_URL")]
    pub schema_registry_url: Option<String>,

    /// Dimension of context-chunk embeddings (pgvector `vector(N)`).
    #[arg(long, global = true, env = "UDO_EMBEDDING_DIM", default_value_t = 384)]
    pub embedding_dim: usize,

    /// Records larger than this many bytes are rejected to the DLQ.
    #[arg(long, global = true, env = "UDO_MAX_RECORD_BYTES", default_value_t = 1024 * 1024)]
    pub max_record_bytes: usize,
}

impl CommonArgs {
    pub fn limits(&self) -> Limits {
        Limits { embedding_dim: self.embedding_dim, max_record_bytes: self.max_record_bytes }
    }

    pub fn registry(&self) -> Option<Arc<dyn SchemaRegistry>> {
        self.schema_registry_url
            .as_deref()
            .filter(|u| !u.is_empty())
            .map(|u| Arc::new(HttpRegistry::new(u)) as Arc<dyn SchemaRegistry>)
    }

    pub fn codec(&self, format: OutputFormat) -> Codec {
        Codec::new(Arc::new(Catalog::builtin()), self.limits(), self.registry(), format)
    }

    pub fn topics(&self) -> TopicCatalog {
        TopicCatalog::builtin()
    }

    /// Full topic name for a contract name.
    pub fn topic(&self, name: &str) -> String {
        format!("{}{name}", self.topic_prefix)
    }

    /// Contract name for a full topic name (prefix stripped).
    pub fn contract_name<'a>(&self, topic: &'a str) -> &'a str {
        topic.strip_prefix(self.topic_prefix.as_str()).unwrap_or(topic)
    }
}

/// Pipeline tuning: `[analyze]`, `[materialize]` and `[promotion]` tables of
/// the TOML file. Every field has the DESIGN default.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub analyze: AnalyzeSettings,
    pub materialize: MaterializeSettings,
    /// `[promotion]`: store promotion thresholds (DESIGN §4).
    pub promotion: crate::domain::promotion::PromotionConfig,
}

/// `[analyze]`: windows, evaluation minimums and rule thresholds (DESIGN §4).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnalyzeSettings {
    /// Sliding window length ("5m").
    #[serde(deserialize_with = "duration")]
    pub window_size: Duration,
    /// Slide between window starts ("1m"); the size must be a multiple.
    #[serde(deserialize_with = "duration")]
    pub window_slide: Duration,
    /// How far behind the newest event time an event may arrive ("30s").
    #[serde(deserialize_with = "duration")]
    pub allowed_lateness: Duration,
    /// A partition silent this long advances its watermark by wall clock.
    #[serde(deserialize_with = "duration")]
    pub idle_timeout: Duration,
    /// Latency windows with fewer samples are reported but not evaluated.
    pub min_samples: u64,
    /// Uncertainty windows with fewer ratings are reported but not evaluated.
    pub min_ratings: u64,
    /// How often engine state and input offsets are checkpointed.
    #[serde(deserialize_with = "duration")]
    pub checkpoint_interval: Duration,
    /// Alert and degradation thresholds.
    pub thresholds: crate::domain::rules::Thresholds,
}

impl Default for AnalyzeSettings {
    fn default() -> Self {
        AnalyzeSettings {
            window_size: Duration::from_secs(300),
            window_slide: Duration::from_secs(60),
            allowed_lateness: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(30),
            min_samples: 20,
            min_ratings: 10,
            checkpoint_interval: Duration::from_secs(2),
            thresholds: Default::default(),
        }
    }
}

/// `[materialize]`: batching and retry of the store writers.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MaterializeSettings {
    /// Most records per partition batch.
    pub batch_size: usize,
    /// Longest wait to fill a batch ("100ms").
    #[serde(deserialize_with = "duration")]
    pub linger: Duration,
    /// First retry delay after a failed store write; doubles with jitter...
    #[serde(deserialize_with = "duration")]
    pub retry_min_delay: Duration,
    /// ...up to this.
    #[serde(deserialize_with = "duration")]
    pub retry_max_delay: Duration,
}

impl Default for MaterializeSettings {
    fn default() -> Self {
        MaterializeSettings {
            batch_size: 5000,
            linger: Duration::from_millis(100),
            retry_min_delay: Duration::from_millis(100),
            retry_max_delay: Duration::from_secs(5),
        }
    }
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s)
        .map_err(|e| serde::de::Error::custom(format!("{s:?} is not a duration like \"30s\" or \"5m\" ({e})")))
}

impl Settings {
    /// Defaults, then `file` (if any), then `UDO__SECTION__KEY` variables
    /// from `env`. Errors name the file or variable and the field.
    pub fn load(
        file: Option<&std::path::Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, String> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
                text.parse::<toml::Table>().map_err(|e| format!("config file {}: {e}", path.display()))?
            }
            None => toml::Table::new(),
        };
        let mut overridden = Vec::new();
        for (name, value) in env {
            let Some(path) = name.strip_prefix("UDO__") else { continue };
            let keys: Vec<String> = path.split("__").map(str::to_ascii_lowercase).collect();
            // A value is TOML when it parses as one (numbers, booleans), else a string.
            let parsed = format!("v = {value}")
                .parse::<toml::Table>()
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or(toml::Value::String(value.clone()));
            let (last, parents) = keys.split_last().ok_or_else(|| format!("{name}: empty key"))?;
            let mut cur = &mut table;
            for k in parents {
                cur = cur
                    .entry(k.clone())
                    .or_insert_with(|| toml::Value::Table(Default::default()))
                    .as_table_mut()
                    .ok_or_else(|| format!("{name}: {k} is not a table"))?;
            }
            cur.insert(last.clone(), parsed);
            overridden.push(name);
        }
        let source = match (file, overridden.is_empty()) {
            (Some(p), true) => format!("config file {}", p.display()),
            (Some(p), false) => format!("config file {} with {}", p.display(), overridden.join(", ")),
            (None, false) => overridden.join(", "),
            (None, true) => "defaults".to_string(),
        };
        let settings: Settings = serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|e| format!("{source}: field `{}`: {}", e.path(), e.inner()))?;
        settings.validate().map_err(|e| format!("{source}: {e}"))?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), String> {
        self.analyze.window_spec().map(|_| ())?;
        if self.materialize.batch_size == 0 {
            return Err("field `materialize.batch_size` must be at least 1".into());
        }
        let p = &self.promotion;
        let ratios_ok = (0.0..=1.0).contains(&p.demote_ratio) && (p.demote_ratio..=1.0).contains(&p.promote_ratio);
        if p.window == 0 || !ratios_ok {
            return Err(format!(
                "fields `promotion.*`: need window >= 1 and 0 <= demote_ratio <= promote_ratio <= 1 \
                 (got window {}, demote_ratio {}, promote_ratio {})",
                p.window, p.demote_ratio, p.promote_ratio
            ));
        }
        Ok(())
    }
}

impl AnalyzeSettings {
    pub fn window_spec(&self) -> Result<crate::domain::windows::WindowSpec, String> {
        crate::domain::windows::WindowSpec::new(
            self.window_size.as_millis() as i64,
            self.window_slide.as_millis() as i64,
            self.allowed_lateness.as_millis() as i64,
        )
        .map_err(|e| format!("analyze.window_size/window_slide/allowed_lateness: {e}"))
    }
}

/// Hides the password of a `scheme://user:password@host` URL.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => match url[s + 3..at].split_once(':') {
            Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
            None => url.to_string(),
        },
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::Settings;
    use std::time::Duration;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn settings_layer_defaults_file_then_env() {
        let dir = std::env::temp_dir().join(format!("udo-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("udo.toml");
        std::fs::write(
            &file,
            "[analyze]\nwindow_size = \"10m\"\nmin_samples = 5\n[analyze.thresholds]\np95_warning_ms = 250.0\n",
        )
        .unwrap();
        let s = Settings::load(Some(&file), env(&[("UDO__ANALYZE__MIN_SAMPLES", "7"), ("OTHER", "x")])).unwrap();
        assert_eq!(s.analyze.window_size, Duration::from_secs(600));
        assert_eq!(s.analyze.min_samples, 7, "env wins over the file");
        assert_eq!(s.analyze.thresholds.p95_warning_ms, 250.0);
        assert_eq!(s.analyze.thresholds.p95_critical_ms, 500.0, "untouched fields keep defaults");
        assert_eq!(s.analyze.window_slide, Duration::from_secs(60));
        assert_eq!(Settings::load(None, vec![]).unwrap(), Settings::default());
    }

    #[test]
    fn settings_errors_name_the_source_and_field() {
        let e = Settings::load(None, env(&[("UDO__ANALYZE__WINDOW_SIZE", "soon")])).unwrap_err();
        assert!(e.contains("UDO__ANALYZE__WINDOW_SIZE") && e.contains("analyze.window_size"), "{e}");
        let e = Settings::load(None, env(&[("UDO__ANALYZE__MIN_SAMPLE", "3")])).unwrap_err();
        assert!(e.contains("min_sample"), "unknown fields are refused: {e}");
        let e = Settings::load(None, env(&[("UDO__ANALYZE__WINDOW_SLIDE", "7m")])).unwrap_err();
        assert!(e.contains("multiple of the slide"), "{e}");
    }

    #[test]
    fn redact_hides_passwords_only() {
        assert_eq!(super::redact("postgres://udo:secret@h:5432/udo"), "postgres://udo:***@h:5432/udo");
        assert_eq!(super::redact("redis://h:1/0"), "redis://h:1/0");
        assert_eq!(super::redact("http://user@h"), "http://user@h");
    }
}
