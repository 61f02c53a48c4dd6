//! The Parsing Canonical Form of a schema and its CRC-64-AVRO fingerprint,
//! computed as the reference SDKs do (Java's `SchemaNormalization`,
//! fastavro): what the single-object header carries.
//!
//! apache-avro 0.21's `canonical_form` differs from them for our schemas:
//! it writes a logical type as `{"type":"long"}` where they write `"long"`,
//! keeps `precision`/`scale`, and does not give a nested record the
//! enclosing namespace. A record a Java or Python service framed would then
//! name a schema we do not know. `schemas/fingerprints.tsv` holds the
//! reference SDKs' own figures, checked by the tests.

use apache_avro::rabin::Rabin;
use digest::Digest;
use serde_json::{Map, Value};
use std::collections::HashSet;

const PRIMITIVES: &[&str] = &["null", "boolean", "int", "long", "float", "double", "bytes", "string"];

/// The Parsing Canonical Form of the schema `text`.
pub fn parsing_form(text: &str) -> Result<String, String> {
    let json: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let mut out = String::new();
    Form { defined: HashSet::new(), out: &mut out }.write(&json, "")?;
    Ok(out)
}

/// CRC-64-AVRO of `form`, little-endian (as the single-object header).
pub fn fingerprint(form: &str) -> [u8; 8] {
    let mut rabin = Rabin::new();
    rabin.update(form.as_bytes());
    rabin.finalize().into()
}

/// The fingerprint of the schema `text` as Java and fastavro compute it.
pub fn reference_fingerprint(text: &str) -> Result<[u8; 8], String> {
    parsing_form(text).map(|f| fingerprint(&f))
}

struct Form<'a> {
    /// Full names written so far: a later use is written as the name.
    defined: HashSet<String>,
    out: &'a mut String,
}

impl Form<'_> {
    /// Writes `schema`, whose relative names resolve in `namespace`.
    fn write(&mut self, schema: &Value, namespace: &str) -> Result<(), String> {
        match schema {
            Value::String(name) => {
                let full =
                    if PRIMITIVES.contains(&name.as_str()) { name.clone() } else { full_name(name, None, namespace) };
                self.quoted(&full);
                Ok(())
            }
            Value::Array(branches) => {
                self.out.push('[');
                for (i, b) in branches.iter().enumerate() {
                    if i > 0 {
                        self.out.push(',');
                    }
                    self.write(b, namespace)?;
                }
                self.out.push(']');
                Ok(())
            }
            Value::Object(map) => self.object(map, namespace),
            other => Err(format!("a schema is a string, an array or an object, not {other}")),
        }
    }

    fn object(&mut self, map: &Map<String, Value>, namespace: &str) -> Result<(), String> {
        let ty = match map.get("type") {
            Some(Value::String(t)) => t.as_str(),
            // `{"type": <schema>}`: the inner schema (attributes of the
            // outer object do not take part in parsing).
            Some(inner) => return self.write(inner, namespace),
            None => return Err("an object schema needs \"type\"".into()),
        };
        match ty {
            // A logical type is its underlying type: every attribute but
            // `type` is stripped, `{"type":"long",...}` reduces to "long".
            t if PRIMITIVES.contains(&t) => {
                self.quoted(t);
                Ok(())
            }
            "array" => {
                self.out.push_str("{\"type\":\"array\",\"items\":");
                self.write(map.get("items").ok_or("an array needs \"items\"")?, namespace)?;
                self.out.push('}');
                Ok(())
            }
            "map" => {
                self.out.push_str("{\"type\":\"map\",\"values\":");
                self.write(map.get("values").ok_or("a map needs \"values\"")?, namespace)?;
                self.out.push('}');
                Ok(())
            }
            "record" | "error" | "enum" | "fixed" => {
                let name = map.get("name").and_then(Value::as_str).ok_or_else(|| format!("a {ty} needs \"name\""))?;
                let own = map.get("namespace").and_then(Value::as_str);
                let full = full_name(name, own, namespace);
                if !self.defined.insert(full.clone()) {
                    self.quoted(&full);
                    return Ok(());
                }
                let inner = full.rsplit_once('.').map_or("", |(ns, _)| ns).to_string();
                self.out.push_str("{\"name\":");
                self.quoted(&full);
                let kind = if ty == "error" { "record" } else { ty };
                self.out.push_str(&format!(",\"type\":\"{kind}\""));
                match kind {
                    "enum" => {
                        self.out.push_str(",\"symbols\":[");
                        let symbols =
                            map.get("symbols").and_then(Value::as_array).ok_or("an enum needs \"symbols\"")?;
                        for (i, s) in symbols.iter().enumerate() {
                            if i > 0 {
                                self.out.push(',');
                            }
                            self.quoted(s.as_str().ok_or("an enum symbol is a string")?);
                        }
                        self.out.push(']');
                    }
                    "fixed" => {
                        let size = match map.get("size") {
                            Some(Value::Number(n)) => n.as_u64(),
                            Some(Value::String(s)) => s.parse().ok(),
                            _ => None,
                        };
                        let size = size.ok_or("a fixed needs an integer \"size\"")?;
                        self.out.push_str(&format!(",\"size\":{size}"));
                    }
                    _ => {
                        self.out.push_str(",\"fields\":[");
                        let fields = map.get("fields").and_then(Value::as_array).ok_or("a record needs \"fields\"")?;
                        for (i, f) in fields.iter().enumerate() {
                            if i > 0 {
                                self.out.push(',');
                            }
                            let fname = f.get("name").and_then(Value::as_str).ok_or("a record field needs \"name\"")?;
                            self.out.push_str("{\"name\":");
                            self.quoted(fname);
                            self.out.push_str(",\"type\":");
                            self.write(f.get("type").ok_or_else(|| format!("field {fname} needs \"type\""))?, &inner)?;
                            self.out.push('}');
                        }
                        self.out.push(']');
                    }
                }
                self.out.push('}');
                Ok(())
            }
            // A named type used as `{"type": "Name"}`.
            name => {
                self.quoted(&full_name(name, None, namespace));
                Ok(())
            }
        }
    }

    /// Names and symbols are plain identifiers: quoted without escaping,
    /// as the reference implementation writes them.
    fn quoted(&mut self, s: &str) {
        self.out.push('"');
        self.out.push_str(s);
        self.out.push('"');
    }
}

/// A name with a dot is full; otherwise its own namespace, else the
/// enclosing one, qualifies it (an empty namespace is the null namespace).
fn full_name(name: &str, own: Option<&str>, enclosing: &str) -> String {
    if name.contains('.') {
        return name.to_string();
    }
    match own.unwrap_or(enclosing) {
        "" => name.to_string(),
        ns => format!("{ns}.{name}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_examples_fingerprint_as_the_reference_implementation() {
        // Rabin fingerprints from the Avro specification's test vectors
        // (share/test/data/schema-tests.txt), as signed 64-bit values.
        let vectors: &[(&str, i64)] = &[
            (r#""null""#, 7195948357588979594),
            (r#"{"type":"boolean"}"#, -6970731678124411036),
            (r#"{"name":"foo","type":"fixed","size":15}"#, 1756455273707447556),
            (
                r#"{"type":"record","name":"PigValue","fields":[{"name":"value","type":["null","int","long","PigValue"]}]}"#,
                -1759257747318642341,
            ),
        ];
        for (schema, want) in vectors {
            let fp = reference_fingerprint(schema).unwrap();
            assert_eq!(i64::from_le_bytes(fp), *want, "{schema}: {}", parsing_form(schema).unwrap());
        }
    }

    #[test]
    fn logical_types_reduce_to_their_type_and_nested_names_take_the_namespace() {
        let schema = r#"{"type":"record","name":"A","namespace":"io.x","doc":"d","fields":[
            {"name":"at","type":{"type":"long","logicalType":"timestamp-millis"},"default":0},
            {"name":"id","type":{"type":"string","logicalType":"uuid"}},
            {"name":"amount","type":{"type":"bytes","logicalType":"decimal","precision":9,"scale":2}},
            {"name":"b","type":["null",{"type":"record","name":"B","fields":[{"name":"k","type":{"type":"enum","name":"K","symbols":["X","Y"]}}]}]},
            {"name":"again","type":"B"},
            {"name":"m","type":{"type":"map","values":{"type":"array","items":"K"}}}]}"#;
        assert_eq!(
            parsing_form(schema).unwrap(),
            r#"{"name":"io.x.A","type":"record","fields":[{"name":"at","type":"long"},{"name":"id","type":"string"},{"name":"amount","type":"bytes"},{"name":"b","type":["null",{"name":"io.x.B","type":"record","fields":[{"name":"k","type":{"name":"io.x.K","type":"enum","symbols":["X","Y"]}}]}]},{"name":"again","type":"io.x.B"},{"name":"m","type":{"type":"map","values":{"type":"array","items":"io.x.K"}}}]}"#
        );
    }

    #[test]
    fn a_malformed_schema_is_an_error_naming_what_is_missing() {
        let e = parsing_form(r#"{"type":"record","name":"A","fields":[{"type":"long"}]}"#).unwrap_err();
        assert!(e.contains("needs \"name\""), "{e}");
    }
}
