//! A check of an Avro datum's structure against its writer schema that
//! allocates nothing: every length read from the wire (strings, bytes,
//! fixed, array and map blocks, block byte sizes) is checked against the
//! bytes that remain, and nesting is bounded, before a decoder that
//! allocates by what the wire claims (apache-avro reserves an array's
//! claimed count up front) ever sees the bytes. Its errors name the field
//! at fault (`embedding[3]`, `severity`), which apache-avro's do not.

use crate::error::{DecodeClass, DecodeError};
use apache_avro::Schema;
use apache_avro::schema::{Name, RecordSchema};
use std::collections::HashMap;

/// Deeper than this is refused: a recursive schema could otherwise nest as
/// deep as the record has bytes, and every decoder recurses.
pub const MAX_DEPTH: usize = 64;

/// Checks that `bytes` hold exactly one datum of `schema`.
pub fn check_datum(schema: &Schema, bytes: &[u8]) -> Result<(), DecodeError> {
    let mut names = HashMap::new();
    collect_names(schema, &mut names);
    let mut w = Walker { names, input: bytes, path: Vec::new() };
    w.value(schema, 0)?;
    if w.input.is_empty() {
        Ok(())
    } else {
        Err(DecodeError::new(DecodeClass::Malformed, format!("{} trailing bytes after the Avro datum", w.input.len())))
    }
}

/// Named schemas (records, enums, fixed) by full name, for `Ref`s.
fn collect_names<'s>(schema: &'s Schema, names: &mut HashMap<&'s Name, &'s Schema>) {
    match schema {
        Schema::Record(r) if names.insert(&r.name, schema).is_none() => {
            for f in &r.fields {
                collect_names(&f.schema, names);
            }
        }
        Schema::Enum(e) => {
            names.insert(&e.name, schema);
        }
        Schema::Fixed(f) => {
            names.insert(&f.name, schema);
        }
        Schema::Decimal(d) => collect_names(&d.inner, names),
        Schema::Array(a) => collect_names(&a.items, names),
        Schema::Map(m) => collect_names(&m.types, names),
        Schema::Union(u) => u.variants().iter().for_each(|v| collect_names(v, names)),
        _ => {}
    }
}

/// One path segment: a record field or an array/map position.
enum Seg<'s> {
    Field(&'s str),
    Index(u64),
    Key,
}

struct Walker<'s, 'b> {
    names: HashMap<&'s Name, &'s Schema>,
    input: &'b [u8],
    path: Vec<Seg<'s>>,
}

impl<'s, 'b> Walker<'s, 'b> {
    fn field_path(&self) -> String {
        let mut out = String::new();
        for seg in &self.path {
            match seg {
                Seg::Field(f) => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(f);
                }
                Seg::Index(i) => out.push_str(&format!("[{i}]")),
                Seg::Key => out.push_str("{key}"),
            }
        }
        out
    }

    fn fail(&self, class: DecodeClass, message: impl Into<String>) -> DecodeError {
        if self.path.is_empty() {
            DecodeError::new(class, message)
        } else {
            DecodeError::field(class, self.field_path(), message)
        }
    }

    fn take(&mut self, n: u64, what: &str) -> Result<&'b [u8], DecodeError> {
        let left = self.input.len();
        if n > left as u64 {
            return Err(self.fail(
                DecodeClass::Malformed,
                format!("{what} claims {n} bytes but only {left} remain (truncated or corrupt)"),
            ));
        }
        let (head, rest) = self.input.split_at(n as usize);
        self.input = rest;
        Ok(head)
    }

    /// A zig-zag varint (at most 10 bytes).
    fn long(&mut self) -> Result<i64, DecodeError> {
        let mut value: u64 = 0;
        for i in 0..10 {
            let Some((&b, rest)) = self.input.split_first() else {
                return Err(self.fail(DecodeClass::Malformed, "the datum ends inside a number (truncated)"));
            };
            self.input = rest;
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok((value >> 1) as i64 ^ -((value & 1) as i64));
            }
        }
        Err(self.fail(DecodeClass::Malformed, "a number is longer than 10 bytes (corrupt varint)"))
    }

    fn int(&mut self) -> Result<i32, DecodeError> {
        let v = self.long()?;
        i32::try_from(v).map_err(|_| self.fail(DecodeClass::Malformed, format!("{v} does not fit an Avro int")))
    }

    /// A length prefix: non-negative and within what remains.
    fn len(&mut self, what: &str) -> Result<u64, DecodeError> {
        let n = self.long()?;
        if n < 0 {
            return Err(self.fail(DecodeClass::Malformed, format!("{what} has a negative length ({n})")));
        }
        Ok(n as u64)
    }

    fn string(&mut self) -> Result<&'b str, DecodeError> {
        let n = self.len("a string")?;
        let bytes = self.take(n, "a string")?;
        std::str::from_utf8(bytes).map_err(|e| {
            self.fail(DecodeClass::InvalidUtf8, format!("not valid UTF-8 at byte {} of the string", e.valid_up_to()))
        })
    }

    fn value(&mut self, schema: &'s Schema, depth: usize) -> Result<(), DecodeError> {
        if depth > MAX_DEPTH {
            return Err(self.fail(DecodeClass::Malformed, format!("nested deeper than {MAX_DEPTH} levels")));
        }
        match schema {
            Schema::Null => Ok(()),
            Schema::Boolean => match self.take(1, "a boolean")?[0] {
                0 | 1 => Ok(()),
                b => Err(self.fail(DecodeClass::Malformed, format!("boolean byte 0x{b:02x} is neither 0 nor 1"))),
            },
            Schema::Int | Schema::Date | Schema::TimeMillis => self.int().map(|_| ()),
            Schema::Long
            | Schema::TimeMicros
            | Schema::TimestampMillis
            | Schema::TimestampMicros
            | Schema::TimestampNanos
            | Schema::LocalTimestampMillis
            | Schema::LocalTimestampMicros
            | Schema::LocalTimestampNanos => self.long().map(|_| ()),
            Schema::Float => self.take(4, "a float").map(|_| ()),
            Schema::Double => self.take(8, "a double").map(|_| ()),
            Schema::Bytes | Schema::BigDecimal => {
                let n = self.len("bytes")?;
                self.take(n, "bytes").map(|_| ())
            }
            Schema::String => self.string().map(|_| ()),
            Schema::Uuid => {
                let s = self.string()?;
                if is_uuid(s) {
                    Ok(())
                } else {
                    let shown: String = s.chars().take(40).collect();
                    Err(self.fail(DecodeClass::Malformed, format!("{shown:?} is not a UUID (8-4-4-4-12 hex digits)")))
                }
            }
            Schema::Fixed(f) => self.take(f.size as u64, "a fixed").map(|_| ()),
            Schema::Duration => self.take(12, "a duration").map(|_| ()),
            Schema::Decimal(d) => self.value(&d.inner, depth + 1),
            Schema::Enum(e) => {
                let i = self.long()?;
                if i < 0 || i as usize >= e.symbols.len() {
                    return Err(self.fail(
                        DecodeClass::UnknownEnum,
                        format!(
                            "enum index {i} is outside {}'s {} symbols {:?}",
                            e.name.name,
                            e.symbols.len(),
                            e.symbols
                        ),
                    ));
                }
                Ok(())
            }
            Schema::Union(u) => {
                let i = self.long()?;
                let variants = u.variants();
                match usize::try_from(i).ok().and_then(|i| variants.get(i)) {
                    Some(v) => self.value(v, depth + 1),
                    None => Err(self.fail(
                        DecodeClass::Malformed,
                        format!("union branch {i} is outside the {} branches of the schema", variants.len()),
                    )),
                }
            }
            Schema::Record(RecordSchema { fields, .. }) => {
                for f in fields {
                    self.path.push(Seg::Field(&f.name));
                    self.value(&f.schema, depth + 1)?;
                    self.path.pop();
                }
                Ok(())
            }
            Schema::Array(a) => self.blocks(&a.items, None, depth),
            Schema::Map(m) => self.blocks(&m.types, Some(()), depth),
            Schema::Ref { name } => {
                let target = self
                    .names
                    .get(name)
                    .copied()
                    .or_else(|| self.names.iter().find(|(n, _)| n.name == name.name).map(|(_, s)| *s));
                match target {
                    Some(s) => self.value(s, depth + 1),
                    None => Err(self.fail(
                        DecodeClass::UnknownSchema,
                        format!("the schema names {} but never defines it", name.name),
                    )),
                }
            }
        }
    }

    /// Array or map blocks. A block's count is checked against what remains
    /// (at least one byte per item, or the item's least size) before any
    /// item is read: decoders reserve the claimed count.
    fn blocks(&mut self, items: &'s Schema, map: Option<()>, depth: usize) -> Result<(), DecodeError> {
        let least = min_size(items, &self.names, 0).max(1) + if map.is_some() { 1 } else { 0 };
        let mut index: u64 = 0;
        loop {
            let count = self.long()?;
            if count == 0 {
                return Ok(());
            }
            if count < 0 {
                // A negative count is followed by the block's size in bytes.
                let size = self.len("a block")?;
                if size > self.input.len() as u64 {
                    return Err(self.fail(
                        DecodeClass::Malformed,
                        format!("a block claims {size} bytes but only {} remain", self.input.len()),
                    ));
                }
            }
            let n = count.unsigned_abs();
            let left = self.input.len() as u64;
            if n.saturating_mul(least) > left {
                return Err(self.fail(
                    DecodeClass::Malformed,
                    format!("a block claims {n} items (at least {least} bytes each) but only {left} bytes remain"),
                ));
            }
            for _ in 0..n {
                if map.is_some() {
                    self.path.push(Seg::Key);
                    self.string()?;
                    self.path.pop();
                }
                self.path.push(Seg::Index(index));
                self.value(items, depth + 1)?;
                self.path.pop();
                index += 1;
            }
        }
    }
}

/// The fewest bytes a datum of `schema` takes (refs and deep nesting count 0).
fn min_size(schema: &Schema, names: &HashMap<&Name, &Schema>, depth: usize) -> u64 {
    if depth > 8 {
        return 0;
    }
    match schema {
        Schema::Null => 0,
        Schema::Float => 4,
        Schema::Double => 8,
        Schema::Duration => 12,
        Schema::Fixed(f) => f.size as u64,
        Schema::Decimal(d) => min_size(&d.inner, names, depth + 1),
        Schema::Record(r) => {
            r.fields.iter().map(|f| min_size(&f.schema, names, depth + 1)).fold(0, u64::saturating_add)
        }
        Schema::Union(u) => 1 + u.variants().iter().map(|v| min_size(v, names, depth + 1)).min().unwrap_or(0),
        Schema::Ref { name } => names.get(name).map_or(0, |s| min_size(s, names, depth + 1)),
        _ => 1,
    }
}

/// The canonical 8-4-4-4-12 form (what the `uuid` logical type holds).
fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}
