//! Configuration, in one place. Connection settings are flags with
//! environment fallbacks (`KAFKA_BROKERS`, `DATABASE_URL`, `REDIS_URL`,
//! `SCHEMA_REGISTRY_URL`, `UDO_*`); pipeline tuning is layered like Arroyo's:
//! built-in defaults, then an optional TOML file (`--config`), then
//! `UDO__SECTION__KEY=value` environment overrides. Secrets never reach logs:
//! `Display` of anything holding a URL goes through `redact`.

use crate::domain::Limits;
use clap::Args;
use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;
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

    /// Namespace of this deployment's output ids (windows, alerts,
    /// degradations, promotions), so deployments sharing a database never
    /// collide; by default the topic prefix without its trailing separator
    /// (none without a prefix). Pin it to keep ids when the prefix changes.
    #[arg(long, global = true, env = "UDO_NAMESPACE")]
    pub namespace: Option<String>,

    /// Confluent Schema Registry URL; when set, Avro output uses Confluent
    /// framing and subjects `<topic>-value`.
    #[arg(long, global = true, env = "SCHEMA_REGISTRY_URL", hide_env_values = true)]
    pub schema_registry_url: Option<String>,

    /// Dimension of context-chunk embeddings (pgvector `vector(N)`).
    #[arg(long, global = true, env = "UDO_EMBEDDING_DIM", default_value_t = 384)]
    pub embedding_dim: usize,

    /// Records larger than this many bytes are rejected to the DLQ.
    #[arg(long, global = true, env = "UDO_MAX_RECORD_BYTES", default_value_t = 1024 * 1024)]
    pub max_record_bytes: usize,

    /// TOML settings file: `[kafka]` client properties (every command) and
    /// `[analyze]` / `[materialize]` / `[promotion]` / `[notify]` tuning (docs/configuration.md).
    #[arg(long, global = true, env = "UDO_CONFIG")]
    pub config: Option<std::path::PathBuf>,

    /// The layered settings (defaults, `--config`, `UDO__*`): see [`CommonArgs::load`].
    #[arg(skip)]
    pub settings: Settings,

    /// Kafka client settings every client of this process is made from.
    #[arg(skip)]
    pub kafka: KafkaConfig,
}

impl CommonArgs {
    /// Loads the layered settings and the Kafka client settings; called
    /// once, before any command runs.
    pub fn load(&mut self, env: impl IntoIterator<Item = (String, String)>) -> Result<(), String> {
        self.settings = Settings::load(self.config.as_deref(), env)?;
        self.kafka = KafkaConfig::new(&self.brokers, self.settings.kafka.clone());
        Ok(())
    }

    pub fn limits(&self) -> Limits {
        Limits { embedding_dim: self.embedding_dim, max_record_bytes: self.max_record_bytes }
    }

    /// Full topic name for a contract name.
    pub fn topic(&self, name: &str) -> String {
        format!("{}{name}", self.topic_prefix)
    }

    /// A topic named on the command line: the contract name (`udo.alerts.v1`)
    /// gets the prefix; a name that already carries it is taken as is.
    pub fn topic_arg(&self, name: &str) -> String {
        if !self.topic_prefix.is_empty() && name.starts_with(&self.topic_prefix) {
            name.to_string()
        } else {
            self.topic(name)
        }
    }

    /// The deployment namespace: `--namespace`, else the topic prefix
    /// without its trailing separator.
    pub fn namespace(&self) -> String {
        match &self.namespace {
            Some(n) => n.clone(),
            None => self.topic_prefix.trim_end_matches(['.', '-', '_']).to_string(),
        }
    }

    pub fn deployment(&self) -> crate::domain::rules::Deployment {
        crate::domain::rules::Deployment::new(&self.namespace())
    }

    /// Contract name for a full topic name (prefix stripped).
    pub fn contract_name<'a>(&self, topic: &'a str) -> &'a str {
        topic.strip_prefix(self.topic_prefix.as_str()).unwrap_or(topic)
    }
}

/// Pipeline tuning: `[analyze]`, `[materialize]` and `[promotion]` tables of
/// the TOML file. Every field has the default of docs/design.md.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// `[kafka]`: librdkafka properties for every client (see [`KafkaProperties`]).
    pub kafka: KafkaProperties,
    pub analyze: AnalyzeSettings,
    pub materialize: MaterializeSettings,
    /// `[promotion]`: store promotion thresholds (design §4).
    pub promotion: crate::domain::promotion::PromotionConfig,
    pub notify: NotifySettings,
}

/// `[notify]`: the Alertmanager notifier (`notify-alertmanager`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifySettings {
    /// How often still-firing alerts are sent again ("1m"): well inside
    /// Alertmanager's `resolve_timeout` (5m by default), after which an
    /// alert not re-sent counts as resolved.
    #[serde(deserialize_with = "duration")]
    pub resend_interval: Duration,
    /// Timeout of one request to Alertmanager ("10s").
    #[serde(deserialize_with = "duration")]
    pub request_timeout: Duration,
}

impl Default for NotifySettings {
    fn default() -> Self {
        NotifySettings { resend_interval: Duration::from_secs(60), request_timeout: Duration::from_secs(10) }
    }
}

/// `[analyze]`: windows, evaluation minimums and rule thresholds (design §4).
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
    /// An input whose event time is further ahead of this host's clock goes
    /// to the DLQ (class `future`) and never moves a watermark ("5m").
    #[serde(deserialize_with = "duration")]
    pub max_future_skew: Duration,
    /// A subject (component, endpoint, or project and component) with no
    /// data for this long of event time is dropped from state; its firing
    /// alerts resolve and a DEGRADED component gets a RECOVERED event whose
    /// reason says no data arrived ("1h"; longer than window_size plus
    /// allowed_lateness; "0s" keeps every subject forever).
    #[serde(deserialize_with = "duration")]
    pub state_ttl: Duration,
    /// Most subjects one instance holds. Past it, records for new subjects
    /// go to the DLQ (class `cardinality`) and known subjects go on. Default:
    /// a quarter of this machine's memory at 8 KB per busy subject.
    pub max_subjects: usize,
    /// Latency windows with fewer samples are reported but not evaluated.
    pub min_samples: u64,
    /// Uncertainty windows with fewer ratings are reported but not evaluated.
    pub min_ratings: u64,
    /// How often engine state and input offsets are checkpointed
    /// (at-least-once, to PostgreSQL).
    #[serde(deserialize_with = "duration")]
    pub checkpoint_interval: Duration,
    /// `at_least_once` (default) or `exactly_once` (Kafka transactions).
    pub processing: Processing,
    /// Exactly-once: how often a transaction commits outputs, state and
    /// input offsets ("100ms", as Kafka Streams).
    #[serde(deserialize_with = "duration")]
    pub commit_interval: Duration,
    /// Exactly-once: this instance's stable transactional id (default
    /// `<group>-<host name>`). Two live instances must not share one: the
    /// newer fences the older.
    pub transactional_id: Option<String>,
    /// Alert and degradation thresholds.
    pub thresholds: crate::domain::rules::Thresholds,
}

/// The analyzer's processing guarantee (docs/delivery.md).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Processing {
    /// Outputs since the last checkpoint are re-emitted after a crash, with
    /// the same ids (consumers dedupe by `event_id`). Cheaper.
    #[default]
    AtLeastOnce,
    /// Outputs, state (changelog topic) and input offsets commit in one
    /// Kafka transaction: a `read_committed` consumer sees each output once.
    ExactlyOnce,
}

impl Default for AnalyzeSettings {
    fn default() -> Self {
        AnalyzeSettings {
            window_size: Duration::from_secs(300),
            window_slide: Duration::from_secs(60),
            allowed_lateness: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(30),
            max_future_skew: Duration::from_secs(300),
            state_ttl: Duration::from_secs(3600),
            max_subjects: default_max_subjects(),
            min_samples: 20,
            min_ratings: 10,
            checkpoint_interval: Duration::from_secs(2),
            processing: Processing::AtLeastOnce,
            commit_interval: Duration::from_millis(100),
            transactional_id: None,
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

/// A quarter of this machine's memory at 8 KB per busy subject (the
/// analyzer's budget), between 10,000 and 10,000,000.
fn default_max_subjects() -> usize {
    let total_kb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().find_map(|l| l.strip_prefix("MemTotal:")?.trim().strip_suffix("kB")?.trim().parse().ok())
        })
        .unwrap_or(4 * 1024 * 1024usize);
    (total_kb / 4 / 8).clamp(10_000, 10_000_000)
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
            // A value is TOML when it parses as one (numbers, booleans), else
            // a string; Kafka properties stay strings as given (a password
            // like `1e5` must not become a number).
            let parsed = if keys.first().is_some_and(|k| k == "kafka") {
                toml::Value::String(value.clone())
            } else {
                format!("v = {value}")
                    .parse::<toml::Table>()
                    .ok()
                    .and_then(|mut t| t.remove("v"))
                    .unwrap_or(toml::Value::String(value.clone()))
            };
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
            let field = match keys.split_first() {
                Some((k, rest)) if k == "kafka" => format!("kafka.{}", rest.join(".").replace('_', ".")),
                _ => keys.join("."),
            };
            overridden.push((name, field));
        }
        // An error names the variable that set the field, else every source.
        let source = |err: &str| {
            if let Some((name, _)) = overridden.iter().find(|(_, f)| err.contains(&format!("`{f}`"))) {
                return name.clone();
            }
            let names: Vec<&str> = overridden.iter().map(|(n, _)| n.as_str()).collect();
            match (file, names.is_empty()) {
                (Some(p), true) => format!("config file {}", p.display()),
                (Some(p), false) => format!("config file {} with {}", p.display(), names.join(", ")),
                (None, false) => names.join(", "),
                (None, true) => "defaults".to_string(),
            }
        };
        let settings: Settings = serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
            let err = format!("field `{}`: {}", e.path(), e.inner());
            format!("{}: {err}", source(&err))
        })?;
        settings.validate().map_err(|e| format!("{}: {e}", source(&e)))?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), String> {
        self.kafka.validate()?;
        let spec = self.analyze.window_spec()?;
        let ttl = self.analyze.state_ttl.as_millis() as i64;
        if ttl != 0 && ttl <= spec.size_ms + spec.allowed_lateness_ms {
            return Err(format!(
                "field `analyze.state_ttl` ({}) must be longer than analyze.window_size plus                  analyze.allowed_lateness ({}), or \"0s\" to keep subjects forever",
                humantime::format_duration(self.analyze.state_ttl),
                humantime::format_duration(Duration::from_millis((spec.size_ms + spec.allowed_lateness_ms) as u64))
            ));
        }
        if self.analyze.max_subjects == 0 {
            return Err("field `analyze.max_subjects` must be at least 1".into());
        }
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

/// librdkafka properties from the `[kafka]` table and `UDO__KAFKA__*`
/// variables, applied to every Kafka client the binary creates (consumers,
/// producers, admin; `run`, `tail`, `replay`, `produce`, `topics`, `bench`),
/// after udo-stream's own defaults, so they can tune anything but the
/// delivery settings design §6 rests on.
///
/// In TOML, dotted keys are the property names (`sasl.mechanism = "..."` or
/// `"sasl.mechanism" = "..."`); in a variable, `_` stands for `.`
/// (`UDO__KAFKA__SASL_MECHANISM`). Values of secret properties (passwords,
/// keys, the SASL user) never appear in `Debug`, logs or errors.
#[derive(Clone, Default, PartialEq)]
pub struct KafkaProperties(BTreeMap<String, String>);

/// Properties udo-stream sets itself; overriding them would break the
/// delivery guarantees or the client's role.
const PROTECTED_KAFKA: &[&str] = &[
    "bootstrap.servers",
    "group.id",
    "enable.auto.offset.store",
    "enable.auto.commit",
    "enable.idempotence",
    "acks",
    "partitioner",
    "isolation.level",
    "transactional.id",
    "partition.assignment.strategy",
];

/// librdkafka properties spelled with `_` (the rest use `.`).
const UNDERSCORE_KAFKA: &[&str] = &["log_level"];

impl KafkaProperties {
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// Whether a property's value must never be shown (librdkafka's
    /// sensitive properties and anything named like a secret).
    pub fn is_secret(key: &str) -> bool {
        key.contains("password")
            || key.contains("secret")
            || key.ends_with(".pem")
            || key.contains("private.key")
            || key == "sasl.username"
            || key == "sasl.oauthbearer.config"
            || key == "ssl.key.location"
    }

    fn insert(&mut self, path: &str, value: &toml::Value) -> Result<(), String> {
        let text = match value {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Table(t) => {
                for (k, v) in t {
                    self.insert(&format!("{path}.{k}"), v)?;
                }
                return Ok(());
            }
            other => {
                return Err(format!(
                    "field `kafka.{path}`: expected a string, number or boolean, got {}",
                    other.type_str()
                ));
            }
        };
        let key = if UNDERSCORE_KAFKA.contains(&path) { path.to_string() } else { path.replace('_', ".") };
        self.0.insert(key, text);
        Ok(())
    }

    /// Refuses protected properties and whatever librdkafka refuses (an
    /// unknown name, a bad value), naming the field, never a secret value.
    fn validate(&self) -> Result<(), String> {
        for key in self.0.keys() {
            if PROTECTED_KAFKA.contains(&key.as_str()) {
                return Err(format!(
                    "field `kafka.{key}`: set by udo-stream itself ({}); remove it",
                    if key == "bootstrap.servers" {
                        "use --brokers / KAFKA_BROKERS"
                    } else {
                        "the delivery settings of docs/design.md §6"
                    }
                ));
            }
            let mut c = rdkafka::ClientConfig::new();
            c.set(key, self.0[key].as_str());
            if let Err(e) = c.create_native_config() {
                let why = match e {
                    rdkafka::error::KafkaError::ClientConfig(_, desc, _, _) if !Self::is_secret(key) => desc,
                    _ => "librdkafka refuses it".to_string(),
                };
                return Err(format!("field `kafka.{key}`: {why} (see librdkafka's CONFIGURATION.md)"));
            }
        }
        Ok(())
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for KafkaProperties {
    /// Properties set in code (tests, tools); not validated.
    fn from_iter<I: IntoIterator<Item = (K, V)>>(pairs: I) -> KafkaProperties {
        KafkaProperties(pairs.into_iter().map(|(k, v)| (k.into(), v.into())).collect())
    }
}

impl std::fmt::Debug for KafkaProperties {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| (k, if Self::is_secret(k) { "***" } else { v.as_str() })))
            .finish()
    }
}

impl<'de> Deserialize<'de> for KafkaProperties {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let table = toml::Table::deserialize(d)?;
        let mut props = KafkaProperties::default();
        for (k, v) in &table {
            props.insert(k, v).map_err(serde::de::Error::custom)?;
        }
        Ok(props)
    }
}

/// What every Kafka client of the process is made from: the bootstrap
/// servers and the `[kafka]` properties.
#[derive(Clone, Default, Debug)]
pub struct KafkaConfig {
    pub brokers: String,
    pub properties: KafkaProperties,
}

impl KafkaConfig {
    pub fn new(brokers: &str, properties: KafkaProperties) -> KafkaConfig {
        KafkaConfig { brokers: brokers.to_string(), properties }
    }

    /// A client config: the bootstrap servers, then the caller's defaults
    /// for its role, then the user's properties (which may not touch the
    /// protected ones, see [`KafkaProperties`]).
    pub fn client(&self, defaults: impl FnOnce(&mut rdkafka::ClientConfig)) -> rdkafka::ClientConfig {
        let mut c = rdkafka::ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        defaults(&mut c);
        for (k, v) in self.properties.iter() {
            c.set(k, v);
        }
        c
    }
}

/// A connection URL that may hold a password: `Debug` and `Display` hide it,
/// [`SecretUrl::expose`] gives it to the client that connects.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(String);

impl SecretUrl {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for SecretUrl {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(SecretUrl(s.to_string()))
    }
}

impl From<&str> for SecretUrl {
    fn from(s: &str) -> Self {
        SecretUrl(s.to_string())
    }
}

impl std::fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&redact(&self.0))
    }
}

impl std::fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretUrl({})", redact(&self.0))
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
    fn kafka_properties_from_toml_and_env() {
        let dir = std::env::temp_dir().join(format!("udo-kcfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("udo.toml");
        std::fs::write(
            &file,
            "[kafka]\nsecurity.protocol = \"SASL_SSL\"\n\"sasl.mechanism\" = \"PLAIN\"\nsocket.keepalive.enable = true\nlinger.ms = 20\n",
        )
        .unwrap();
        let s = Settings::load(
            Some(&file),
            env(&[("UDO__KAFKA__SASL_MECHANISM", "SCRAM-SHA-512"), ("UDO__KAFKA__SASL_PASSWORD", "hunter2-secret")]),
        )
        .unwrap();
        let k = &s.kafka;
        assert_eq!(k.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(k.get("sasl.mechanism"), Some("SCRAM-SHA-512"), "env wins over the file");
        assert_eq!(k.get("socket.keepalive.enable"), Some("true"));
        assert_eq!(k.get("linger.ms"), Some("20"));
        assert_eq!(k.get("sasl.password"), Some("hunter2-secret"));
        let shown = format!("{s:?}");
        assert!(!shown.contains("hunter2"), "Debug shows no secret: {shown}");
        assert!(shown.contains("SCRAM-SHA-512"), "{shown}");
        // Applied after the role's defaults.
        let c = super::KafkaConfig::new("b:1", k.clone()).client(|c| {
            c.set("linger.ms", "5");
        });
        assert_eq!(c.get("linger.ms"), Some("20"));
        assert_eq!(c.get("bootstrap.servers"), Some("b:1"));
    }

    #[test]
    fn kafka_properties_errors_name_the_field_never_the_secret() {
        let e = Settings::load(None, env(&[("UDO__KAFKA__SASL_PASWORD", "hunter2-secret")])).unwrap_err();
        assert!(e.contains("kafka.sasl.pasword") && e.contains("UDO__KAFKA__SASL_PASWORD"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        let e = Settings::load(None, env(&[("UDO__KAFKA__SECURITY_PROTOCOL", "SSH")])).unwrap_err();
        assert!(e.contains("kafka.security.protocol"), "{e}");
        let e = Settings::load(None, env(&[("UDO__KAFKA__ENABLE_AUTO_OFFSET_STORE", "true")])).unwrap_err();
        assert!(e.contains("kafka.enable.auto.offset.store") && e.contains("docs/design.md §6"), "{e}");
        let e = Settings::load(None, env(&[("UDO__KAFKA__BOOTSTRAP_SERVERS", "x:1")])).unwrap_err();
        assert!(e.contains("KAFKA_BROKERS"), "{e}");
    }

    #[test]
    fn secret_urls_never_print_their_password() {
        let u: super::SecretUrl = "postgres://udo:hunter2@h:5432/udo?sslmode=verify-full".parse().unwrap();
        assert!(!format!("{u} {u:?}").contains("hunter2"));
        assert_eq!(u.expose(), "postgres://udo:hunter2@h:5432/udo?sslmode=verify-full");
    }

    #[test]
    fn redact_hides_passwords_only() {
        assert_eq!(super::redact("postgres://udo:secret@h:5432/udo"), "postgres://udo:***@h:5432/udo");
        assert_eq!(super::redact("redis://h:1/0"), "redis://h:1/0");
        assert_eq!(super::redact("http://user@h"), "http://user@h");
    }
}

/// docs/configuration.md against the definitions above: every flag with its
/// variable and default, every settings key with its default. The settings'
/// own field lists come from serde (an unknown key's error lists the
/// expected ones), so a new, renamed or re-defaulted setting fails here
/// until the page follows.
#[cfg(test)]
mod reference {
    use super::{CommonArgs, Settings};
    use clap::Args;
    use std::collections::{BTreeMap, BTreeSet};

    const PAGE: &str = include_str!("../docs/configuration.md");

    /// The fields serde expects in `[section]` (dotted for nested tables).
    fn fields(section: &str) -> Vec<String> {
        let probe = match section {
            "" => "not_a_setting = 1\n".to_string(),
            _ => format!("[{section}]\nnot_a_setting = 1\n"),
        };
        let e = toml::from_str::<Settings>(&probe).expect_err("an unknown key is refused").to_string();
        let expected = e.split("expected").nth(1).unwrap_or_else(|| panic!("serde lists the fields: {e}"));
        expected.split('`').skip(1).step_by(2).map(str::to_string).collect()
    }

    /// The page's settings block: keys per section (commented keys count as
    /// documented), and the block with only its live lines.
    fn page_settings() -> (BTreeMap<String, BTreeSet<String>>, String) {
        let start = PAGE.find("```toml\n[analyze]").expect("the settings block starts with [analyze]");
        let block = &PAGE[start + 8..];
        let block = &block[..block.find("```").expect("the block ends")];
        let mut keys: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut section = String::new();
        for line in block.lines() {
            let bare = line.trim_start_matches('#').trim();
            if let Some(name) = line.strip_prefix('[') {
                section = name.split(']').next().unwrap().to_string();
            } else if let Some((key, _)) = bare.split_once(" = ") {
                keys.entry(section.clone()).or_default().insert(key.trim().to_string());
            }
        }
        (keys, block.to_string())
    }

    #[test]
    fn the_configuration_reference_matches_the_settings() {
        let (documented, block) = page_settings();
        let tables = ["analyze", "analyze.thresholds", "materialize", "promotion", "notify"];
        for table in tables {
            for field in fields(table) {
                if tables.contains(&format!("{table}.{field}").as_str()) {
                    continue;
                }
                assert!(
                    documented.get(table).is_some_and(|k| k.contains(&field)),
                    "docs/configuration.md: `{field}` of [{table}] is not documented"
                );
            }
            for key in documented.get(table).into_iter().flatten() {
                assert!(
                    fields(table).contains(key),
                    "docs/configuration.md documents [{table}] {key}, which is no setting"
                );
            }
        }
        assert_eq!(
            fields(""),
            ["kafka", "analyze", "materialize", "promotion", "notify"],
            "the top-level tables the page names"
        );
        // Every live value on the page is the default.
        let page: Settings = toml::from_str(&block).expect("the page's settings block parses");
        assert_eq!(page, Settings::default(), "docs/configuration.md shows a value that is not the default");
    }

    #[test]
    fn the_flag_table_lists_every_flag_with_its_variable_and_default() {
        let rows: Vec<&str> = PAGE.lines().filter(|l| l.starts_with("| `")).collect();
        let common = CommonArgs::augment_args(clap::Command::new("udo-stream"));
        let run = crate::cli::run::RunArgs::augment_args(clap::Command::new("run"));
        for (prefix, cmd) in [("", &common), ("run ", &run)] {
            for arg in cmd.get_arguments() {
                let Some(long) = arg.get_long() else { continue };
                let flag = format!("`{prefix}--{long}`");
                let row = rows
                    .iter()
                    .find(|r| r.starts_with(&format!("| {flag} ")))
                    .unwrap_or_else(|| panic!("docs/configuration.md has no row for {flag}"));
                if let Some(env) = arg.get_env() {
                    let env = env.to_string_lossy();
                    assert!(row.contains(&format!("`{env}`")), "the row of {flag} names `{env}`: {row}");
                }
                for default in arg.get_default_values() {
                    let default = default.to_string_lossy();
                    if !default.is_empty() {
                        assert!(row.contains(&format!("`{default}`")), "the row of {flag} shows `{default}`: {row}");
                    }
                }
            }
        }
    }
}
