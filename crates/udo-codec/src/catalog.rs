//! The Avro schemas of `schemas/`, compiled into the binary so the processor
//! and the CLI never depend on a working directory. `schemas check` compares
//! this catalog with the directory on disk.

use apache_avro::headers::HeaderBuilder;
use apache_avro::types::Value;
use apache_avro::{GenericSingleObjectReader, Schema, rabin::Rabin};
use std::collections::HashMap;
use std::sync::Arc;

/// (record name, schema text), one per `schemas/<name>.avsc`.
pub const BUILTIN: &[(&str, &str)] = &[
    ("LatencySample", include_str!("../../../schemas/LatencySample.avsc")),
    ("FeedbackRating", include_str!("../../../schemas/FeedbackRating.avsc")),
    ("DecisionLog", include_str!("../../../schemas/DecisionLog.avsc")),
    ("ContextChunk", include_str!("../../../schemas/ContextChunk.avsc")),
    ("WindowStats", include_str!("../../../schemas/WindowStats.avsc")),
    ("Alert", include_str!("../../../schemas/Alert.avsc")),
    ("Degradation", include_str!("../../../schemas/Degradation.avsc")),
    ("Promotion", include_str!("../../../schemas/Promotion.avsc")),
];

/// One parsed schema with its single-object fingerprint.
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: String,
    pub text: String,
    pub schema: Schema,
    /// CRC-64-AVRO (Rabin) of the parsing canonical form as Java and
    /// fastavro compute it, little-endian, as the single-object encoding
    /// header carries it (what we write).
    pub fingerprint: [u8; 8],
    /// The fingerprint earlier builds wrote (apache-avro's canonical form):
    /// still decoded, for records already on the topics.
    pub legacy_fingerprint: [u8; 8],
    /// Top-level fields without a default: what a JSON record must carry.
    pub required_fields: Vec<String>,
    /// All top-level field names.
    pub fields: Vec<String>,
    /// Reads datums of this schema.
    pub reader: DatumReader,
    /// The same schema for `serde_avro_fast`, which deserializes a datum
    /// straight into our types (the hot path of a record written with this
    /// very schema, where there is nothing to resolve).
    pub direct: Arc<serde_avro_fast::Schema>,
}

/// Decodes datums of one schema with its names resolved once:
/// `apache_avro::from_avro_datum` resolves the schema on every call, which
/// was most of a record's decode time. (A single-object reader whose header
/// is empty: the framing was checked already.)
#[derive(Clone)]
pub struct DatumReader(Arc<GenericSingleObjectReader>);

struct NoHeader;

impl HeaderBuilder for NoHeader {
    fn build_header(&self) -> Vec<u8> {
        Vec::new()
    }
}

impl DatumReader {
    pub fn new(schema: &Schema) -> Result<DatumReader, apache_avro::Error> {
        GenericSingleObjectReader::new_with_header_builder(schema.clone(), NoHeader).map(|r| DatumReader(Arc::new(r)))
    }

    /// One datum from the front of `payload` (advanced past it).
    pub fn read(&self, payload: &mut &[u8]) -> Result<Value, apache_avro::Error> {
        self.0.read_value(payload)
    }
}

impl std::fmt::Debug for DatumReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DatumReader")
    }
}

#[derive(Debug, Clone)]
pub struct Catalog {
    by_name: HashMap<String, Entry>,
    by_fingerprint: HashMap<[u8; 8], String>,
}

#[derive(Debug, thiserror::Error)]
#[error("schema {name}: {message}")]
pub struct CatalogError {
    pub name: String,
    pub message: String,
}

impl Catalog {
    /// The schemas compiled into this build.
    pub fn builtin() -> Catalog {
        Self::from_sources(BUILTIN.iter().map(|(n, t)| (n.to_string(), t.to_string())))
            .expect("built-in schemas parse (checked by unit tests)")
    }

    /// Parses `(expected record name, schema text)` pairs; the record name
    /// inside each text must equal the expected name (the file stem).
    pub fn from_sources(sources: impl IntoIterator<Item = (String, String)>) -> Result<Catalog, CatalogError> {
        let mut by_name = HashMap::new();
        let mut by_fingerprint = HashMap::new();
        for (name, text) in sources {
            let fail = |message: String| CatalogError { name: name.clone(), message };
            let schema = Schema::parse_str(&text).map_err(|e| fail(format!("does not parse: {e}")))?;
            let Schema::Record(record) = &schema else {
                return Err(fail("top level must be a record".into()));
            };
            if record.name.name != name {
                return Err(fail(format!("file declares record `{}`; name the file after it", record.name.name)));
            }
            let required_fields =
                record.fields.iter().filter(|f| f.default.is_none()).map(|f| f.name.clone()).collect();
            let fields = record.fields.iter().map(|f| f.name.clone()).collect();
            let fingerprint = crate::canonical::reference_fingerprint(&text).map_err(fail)?;
            let fp = schema.fingerprint::<Rabin>().bytes;
            let legacy_fingerprint: [u8; 8] =
                fp.as_slice().try_into().map_err(|_| fail("fingerprint is not 8 bytes".into()))?;
            let reader = DatumReader::new(&schema).map_err(|e| fail(format!("does not resolve: {e}")))?;
            let direct = Arc::new(
                text.parse::<serde_avro_fast::Schema>()
                    .map_err(|e| fail(format!("does not parse for serde_avro_fast: {e}")))?,
            );
            by_fingerprint.insert(fingerprint, name.clone());
            by_fingerprint.insert(legacy_fingerprint, name.clone());
            let entry =
                Entry { name, text, schema, fingerprint, legacy_fingerprint, required_fields, fields, reader, direct };
            by_name.insert(entry.name.clone(), entry);
        }
        Ok(Catalog { by_name, by_fingerprint })
    }

    pub fn get(&self, name: &str) -> Option<&Entry> {
        self.by_name.get(name)
    }

    pub fn by_fingerprint(&self, fp: &[u8; 8]) -> Option<&Entry> {
        self.by_fingerprint.get(fp).and_then(|n| self.by_name.get(n))
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }

    /// The value schema a topic registers: the record itself, or a union of
    /// records when the topic carries several (udo.writes.v1).
    pub fn topic_schema_text(&self, records: &[String]) -> Option<String> {
        let texts: Option<Vec<&str>> = records.iter().map(|r| self.get(r).map(|e| e.text.as_str())).collect();
        let texts = texts?;
        Some(if texts.len() == 1 { texts[0].to_string() } else { format!("[{}]", texts.join(",")) })
    }
}

/// Why data written with `registered` cannot be read with `new` (BACKWARD
/// compatibility), as apache-avro's resolution rules see it: the field or
/// type at fault. `None` when it can (or either does not parse). For
/// registries whose compatibility answer carries no reason.
pub fn backward_incompatibility(registered: &str, new: &str) -> Option<String> {
    let (old, new) = (Schema::parse_str(registered).ok()?, Schema::parse_str(new).ok()?);
    apache_avro::schema_compatibility::SchemaCompatibility::can_read(&old, &new).err().map(|e| e.to_string())
}
