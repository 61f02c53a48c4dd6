//! Wire formats of design §3. Decoding detects the framing from the first
//! bytes, decodes with the writer schema, resolves against our reader schema
//! and validates (design §6); encoding writes Avro single-object by default,
//! Confluent framing when a registry is configured, or JSON on request.

pub mod canonical;
pub mod catalog;
pub mod error;
pub mod registry;
pub mod walk;

use apache_avro::{Schema, error::Details, types::Value};
pub use catalog::Catalog;
pub use error::{DecodeClass, DecodeError};
pub use registry::{MemoryRegistry, RegistryError, SchemaRegistry};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use udo_domain::{Event, Limits};

/// Single-object encoding marker (Avro spec).
pub const SINGLE_OBJECT_MAGIC: [u8; 2] = [0xC3, 0x01];
/// Confluent wire format magic byte.
pub const CONFLUENT_MAGIC: u8 = 0x00;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Confluent { schema_id: u32 },
    SingleObject { fingerprint: [u8; 8] },
    Json,
}

/// Detects the framing from the first bytes; the payload starts after it.
pub fn detect_framing(bytes: &[u8]) -> Result<(Framing, &[u8]), DecodeError> {
    match bytes {
        [] => Err(DecodeError::new(DecodeClass::Empty, "empty value")),
        [CONFLUENT_MAGIC, a, b, c, d, rest @ ..] => {
            Ok((Framing::Confluent { schema_id: u32::from_be_bytes([*a, *b, *c, *d]) }, rest))
        }
        [0xC3, 0x01, fp @ ..] if fp.len() >= 8 => {
            let (fp, rest) = fp.split_at(8);
            Ok((Framing::SingleObject { fingerprint: fp.try_into().expect("8 bytes") }, rest))
        }
        [b'{', ..] => Ok((Framing::Json, bytes)),
        [first, ..] => Err(DecodeError::new(
            DecodeClass::UnknownFraming,
            format!(
                "first byte 0x{first:02x} ({} bytes) is none of 0x00+schema id (Confluent), \
                 0xC3 0x01+fingerprint (Avro single-object) or '{{' (JSON)",
                bytes.len()
            ),
        )),
    }
}

/// How `encode` writes values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputFormat {
    /// Avro: Confluent framing when a registry is configured, else single-object.
    #[default]
    Avro,
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("no schema named {0} in this build's catalog")]
    UnknownRecord(String),
    #[error("record {record} is not declared on topic {topic} (it carries {allowed:?})")]
    WrongTopic { record: String, topic: String, allowed: Vec<String> },
    #[error("avro encoding of {record} failed: {message}")]
    Avro { record: String, message: String },
    #[error("json encoding failed: {0}")]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// Encoder/decoder shared by every pipeline and command.
#[derive(Clone)]
pub struct Codec {
    catalog: Arc<Catalog>,
    limits: Limits,
    registry: Option<Arc<dyn SchemaRegistry>>,
    format: OutputFormat,
    /// Topic -> its registered writer schema, so encoding under a registry
    /// registers and parses once per topic, not once per record.
    registered: Arc<Mutex<HashMap<String, Arc<Registered>>>>,
    /// Registry schema id -> the record of our catalog it is identical to
    /// (same parsing canonical form: nothing to resolve, so read directly),
    /// or `None`. Ids never change meaning, so this is asked once per id.
    identical: Arc<Mutex<HashMap<u32, Option<String>>>>,
}

/// A topic's value schema as registered: a record or a union of records.
struct Registered {
    id: u32,
    records: Vec<String>,
    schema: Schema,
}

impl Codec {
    pub fn new(
        catalog: Arc<Catalog>,
        limits: Limits,
        registry: Option<Arc<dyn SchemaRegistry>>,
        format: OutputFormat,
    ) -> Codec {
        Codec { catalog, limits, registry, format, registered: Arc::default(), identical: Arc::default() }
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Decodes and validates one record value. `allowed` lists the record
    /// names declared for the topic (`topics/*.yaml`).
    pub fn decode(&self, allowed: &[String], bytes: &[u8]) -> Result<Event, DecodeError> {
        if bytes.len() > self.limits.max_record_bytes {
            return Err(DecodeError::new(
                DecodeClass::Oversized,
                format!(
                    "{} bytes exceeds max_record_bytes {} (UDO_MAX_RECORD_BYTES)",
                    bytes.len(),
                    self.limits.max_record_bytes
                ),
            ));
        }
        let (framing, payload) = detect_framing(bytes)?;
        let event = match framing {
            Framing::Json => self.decode_json(allowed, payload)?,
            Framing::SingleObject { fingerprint } => {
                let entry = self.catalog.by_fingerprint(&fingerprint).ok_or_else(|| {
                    DecodeError::new(
                        DecodeClass::UnknownSchema,
                        format!(
                            "single-object fingerprint {} matches no schema of this build; \
                             producer and processor schemas differ (run `udo-stream schemas check`)",
                            hex(&fingerprint)
                        ),
                    )
                })?;
                check_allowed(allowed, &entry.name)?;
                // Written with our own schema: nothing to resolve, so
                // serde_avro_fast reads it straight into the event. A datum
                // it refuses goes through apache-avro, whose error names
                // the fault (and is the reference the two are tested against).
                match direct_event(entry, payload) {
                    Some(event) => event,
                    None => {
                        // Before apache-avro, which reserves what lengths claim.
                        walk::check_datum(&entry.schema, payload)?;
                        reference_event(entry, payload)?
                    }
                }
            }
            Framing::Confluent { schema_id } => {
                let registry = self.registry.as_ref().ok_or_else(|| {
                    DecodeError::new(
                        DecodeClass::UnknownSchema,
                        format!("Confluent-framed record (schema id {schema_id}) but SCHEMA_REGISTRY_URL is not set"),
                    )
                })?;
                let writer = registry.schema_by_id(schema_id).map_err(|e| {
                    let class = if e.is_retryable() { DecodeClass::Registry } else { DecodeClass::UnknownSchema };
                    DecodeError::new(class, e.to_string())
                })?;
                // Identical to our schema: read directly, as single-object.
                let direct = self
                    .identical_entry(schema_id, &writer)
                    .filter(|entry| allowed.contains(&entry.name))
                    .and_then(|entry| direct_event(entry, payload));
                match direct {
                    Some(event) => event,
                    None => self.resolved_event(schema_id, &writer, allowed, payload)?,
                }
            }
        };
        event.validate(&self.limits).map_err(|e| DecodeError::field(DecodeClass::Invalid, e.field, e.reason))?;
        Ok(event)
    }

    /// A Confluent-framed datum of registry schema `schema_id`, resolved
    /// against our reader schema of the record it names.
    fn resolved_event(
        &self,
        schema_id: u32,
        writer: &Schema,
        allowed: &[String],
        payload: &[u8],
    ) -> Result<Event, DecodeError> {
        // Bounds and field names first: apache-avro reserves what lengths claim.
        walk::check_datum(writer, payload)?;
        let value = read_datum(writer, payload)?;
        // A union writer schema (multi-record topic) yields the branch.
        let (name, value) = match (writer, value) {
            (Schema::Union(u), Value::Union(i, inner)) => (record_name(&u.variants()[i as usize]), *inner),
            (s, v) => (record_name(s), v),
        };
        let name = name.ok_or_else(|| {
            DecodeError::new(DecodeClass::UnknownSchema, format!("registry schema id {schema_id} is not a record"))
        })?;
        check_allowed(allowed, &name)?;
        let entry = self.catalog.get(&name).ok_or_else(|| {
            DecodeError::new(DecodeClass::UnknownSchema, format!("record {name} is not in this build's schemas"))
        })?;
        // Schema resolution maps an older/newer writer onto our reader.
        let value = value.resolve(&entry.schema).map_err(avro_error)?;
        to_event(&name, &value)
    }

    /// The catalog record registry schema `id` is identical to, if any.
    fn identical_entry(&self, id: u32, writer: &Schema) -> Option<&catalog::Entry> {
        let mut known = self.identical.lock().expect("identical lock");
        let name = known.entry(id).or_insert_with(|| {
            let entry = self.catalog.get(&record_name(writer)?)?;
            (entry.schema.canonical_form() == writer.canonical_form()).then(|| entry.name.clone())
        });
        self.catalog.get(name.as_deref()?)
    }

    fn decode_json(&self, allowed: &[String], bytes: &[u8]) -> Result<Event, DecodeError> {
        if let Err(e) = std::str::from_utf8(bytes) {
            return Err(DecodeError::new(
                DecodeClass::InvalidUtf8,
                format!("JSON value is not valid UTF-8 at byte {}", e.valid_up_to()),
            ));
        }
        // Through serde_path_to_error, so a bad value (`1e400`) names its field.
        let mut json = serde_json::Deserializer::from_slice(bytes);
        let value: serde_json::Value = serde_path_to_error::deserialize(&mut json).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if path == "." || path.is_empty() {
                DecodeError::new(DecodeClass::Malformed, format!("invalid JSON: {inner}"))
            } else {
                DecodeError::field(DecodeClass::Malformed, path, format!("invalid JSON: {inner}"))
            }
        })?;
        json.end().map_err(|e| DecodeError::new(DecodeClass::Malformed, format!("invalid JSON: {e}")))?;
        let serde_json::Value::Object(map) = &value else {
            return Err(DecodeError::new(DecodeClass::Malformed, "JSON value must be an object"));
        };
        // Several record types on one topic: pick the one whose required
        // fields are all present (their field sets are disjoint enough).
        let name = match allowed {
            [only] => only.clone(),
            _ => {
                // Score: fewest missing required fields, then fewest keys
                // the record does not know.
                let mut best: Option<(&str, Vec<&str>, usize)> = None;
                for name in allowed {
                    let Some(entry) = self.catalog.get(name) else { continue };
                    let missing: Vec<&str> =
                        entry.required_fields.iter().filter(|f| !map.contains_key(*f)).map(String::as_str).collect();
                    let unknown = map.keys().filter(|k| !entry.fields.contains(k)).count();
                    if best.as_ref().is_none_or(|(_, m, u)| (missing.len(), unknown) < (m.len(), *u)) {
                        best = Some((name, missing, unknown));
                    }
                }
                match best {
                    Some((name, missing, _)) if missing.is_empty() => name.to_string(),
                    Some((name, missing, _)) => {
                        return Err(DecodeError::field(
                            DecodeClass::Malformed,
                            missing[0],
                            format!("missing; closest record type is {name} (topic carries {allowed:?})"),
                        ));
                    }
                    None => return Err(DecodeError::new(DecodeClass::UnknownSchema, "topic declares no known record")),
                }
            }
        };
        json_to_event(&name, value)
    }

    /// Encodes an event for `topic`, whose declared records are `allowed`.
    pub fn encode(&self, topic: &str, allowed: &[String], event: &Event) -> Result<Vec<u8>, EncodeError> {
        let record = event.record_name();
        let Some(index) = allowed.iter().position(|a| a == record) else {
            return Err(EncodeError::WrongTopic {
                record: record.into(),
                topic: topic.into(),
                allowed: allowed.to_vec(),
            });
        };
        if self.format == OutputFormat::Json {
            return Ok(serde_json::to_vec(event)?);
        }
        let entry = self.catalog.get(record).ok_or_else(|| EncodeError::UnknownRecord(record.into()))?;
        let avro_err = |e: apache_avro::Error| EncodeError::Avro { record: record.into(), message: e.to_string() };
        let value = apache_avro::to_value(event).map_err(avro_err)?.resolve(&entry.schema).map_err(avro_err)?;
        match &self.registry {
            None => {
                let mut out = Vec::with_capacity(256);
                out.extend_from_slice(&SINGLE_OBJECT_MAGIC);
                out.extend_from_slice(&entry.fingerprint);
                out.extend(apache_avro::to_avro_datum(&entry.schema, value).map_err(avro_err)?);
                Ok(out)
            }
            Some(registry) => {
                let writer = self.registered_schema(registry.as_ref(), topic, allowed)?;
                let (id, schema) = (writer.id, &writer.schema);
                let value = if allowed.len() == 1 { value } else { Value::Union(index as u32, Box::new(value)) };
                let mut out = Vec::with_capacity(256);
                out.push(CONFLUENT_MAGIC);
                out.extend_from_slice(&id.to_be_bytes());
                out.extend(apache_avro::to_avro_datum(schema, value).map_err(avro_err)?);
                Ok(out)
            }
        }
    }

    /// The topic's registered writer schema (a record, or a union of the
    /// topic's records), registering it on first use.
    fn registered_schema(
        &self,
        registry: &dyn SchemaRegistry,
        topic: &str,
        allowed: &[String],
    ) -> Result<Arc<Registered>, EncodeError> {
        if let Some(hit) = self.registered.lock().expect("codec cache lock").get(topic) {
            if hit.records == allowed {
                return Ok(hit.clone());
            }
        }
        let text =
            self.catalog.topic_schema_text(allowed).ok_or_else(|| EncodeError::UnknownRecord(allowed.join(",")))?;
        let id = registry.register(&format!("{topic}-value"), &text)?;
        let schema = Schema::parse_str(&text)
            .map_err(|e| EncodeError::Avro { record: allowed.join(","), message: e.to_string() })?;
        let entry = Arc::new(Registered { id, records: allowed.to_vec(), schema });
        self.registered.lock().expect("codec cache lock").insert(topic.to_string(), entry.clone());
        Ok(entry)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn record_name(schema: &Schema) -> Option<String> {
    match schema {
        Schema::Record(r) => Some(r.name.name.clone()),
        _ => None,
    }
}

fn check_allowed(allowed: &[String], name: &str) -> Result<(), DecodeError> {
    if allowed.iter().any(|a| a == name) {
        Ok(())
    } else {
        Err(DecodeError::new(
            DecodeClass::WrongSchema,
            format!("record {name} does not belong on this topic (it carries {allowed:?})"),
        ))
    }
}

/// Reads exactly one datum; trailing bytes mean the framing lied.
fn read_datum(schema: &Schema, payload: &[u8]) -> Result<Value, DecodeError> {
    let mut reader = payload;
    let value = apache_avro::from_avro_datum(schema, &mut reader, None).map_err(avro_error)?;
    no_trailing(reader)?;
    Ok(value)
}

/// Trailing bytes after the datum mean the framing lied.
fn no_trailing(rest: &[u8]) -> Result<(), DecodeError> {
    if rest.is_empty() {
        Ok(())
    } else {
        Err(DecodeError::new(DecodeClass::Malformed, format!("{} trailing bytes after the Avro datum", rest.len())))
    }
}

fn avro_error(e: apache_avro::Error) -> DecodeError {
    let class = match e.details() {
        Details::ConvertToUtf8(_) | Details::ConvertToUtf8Error(_) => DecodeClass::InvalidUtf8,
        Details::GetEnumValue { .. } | Details::GetEnumSymbol(_) => DecodeClass::UnknownEnum,
        _ => DecodeClass::Malformed,
    };
    DecodeError::new(class, format!("avro: {e}"))
}

/// Builds the `Event` variant named by the record, deserializing with `$de`.
macro_rules! event_of {
    ($name:expr, $de:expr) => {
        Ok(match $name {
            "LatencySample" => Event::LatencySample($de?),
            "FeedbackRating" => Event::FeedbackRating($de?),
            "DecisionLog" => Event::DecisionLog($de?),
            "ContextChunk" => Event::ContextChunk($de?),
            "WindowStats" => Event::WindowStats($de?),
            "Alert" => Event::Alert($de?),
            "Degradation" => Event::Degradation($de?),
            "Promotion" => Event::Promotion($de?),
            other => {
                return Err(DecodeError::new(DecodeClass::UnknownSchema, format!("no event type for record {other}")));
            }
        })
    };
}

fn to_event(name: &str, value: &Value) -> Result<Event, DecodeError> {
    fn de<T: serde::de::DeserializeOwned>(value: &Value) -> Result<T, DecodeError> {
        apache_avro::from_value(value).map_err(|e| DecodeError::new(DecodeClass::Malformed, format!("avro: {e}")))
    }
    event_of!(name, de(value))
}

/// `payload` as the event `entry` names, read by apache-avro.
fn reference_event(entry: &catalog::Entry, payload: &[u8]) -> Result<Event, DecodeError> {
    let mut reader = payload;
    let value = entry.reader.read(&mut reader).map_err(avro_error)?;
    no_trailing(reader)?;
    to_event(&entry.name, &value)
}

/// `payload` as the event `entry` names, read by serde_avro_fast with
/// `entry`'s schema; `None` when it does not read (any fault, trailing bytes
/// included).
fn direct_event(entry: &catalog::Entry, payload: &[u8]) -> Option<Event> {
    use serde_avro_fast::de::{DeserializerState, read::SliceRead};
    use std::io::BufRead;
    fn de<'a, T: serde::Deserialize<'a>>(state: &mut DeserializerState<'_, SliceRead<'a>>) -> Result<T, DecodeError> {
        T::deserialize(state.deserializer()).map_err(|e| DecodeError::new(DecodeClass::Malformed, e.to_string()))
    }
    let mut state = DeserializerState::from_slice(payload, &entry.direct);
    let event: Result<Event, DecodeError> = (|| event_of!(entry.name.as_str(), de(&mut state)))();
    let event = event.ok()?;
    state.into_reader().fill_buf().ok()?.is_empty().then_some(event)
}

fn json_to_event(name: &str, value: serde_json::Value) -> Result<Event, DecodeError> {
    fn de<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> Result<T, DecodeError> {
        serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner().to_string();
            let class =
                if inner.starts_with("unknown variant") { DecodeClass::UnknownEnum } else { DecodeClass::Malformed };
            if path == "." { DecodeError::new(class, inner) } else { DecodeError::field(class, path, inner) }
        })
    }
    // Each arm moves `value` exactly once; only one arm runs.
    event_of!(name, de(value))
}

#[cfg(test)]
mod tests;
