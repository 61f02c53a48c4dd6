//! PostgreSQL's binary COPY format, written without IO: a header, rows of
//! length-prefixed big-endian fields, a trailer. Binary COPY is the cheapest
//! way into a table (the server parses no text, not even a float), so the
//! sink stages its bulk rows this way and `bench materialize` uses the same
//! writer for its COPY baseline.

/// Microseconds between the Unix epoch and PostgreSQL's (2000-01-01).
const PG_EPOCH_US: i64 = 946_684_800_000_000;

/// One COPY payload being written. Call [`row`](Self::row) with the field
/// count, then one field method per column, in the statement's column order.
#[derive(Debug)]
pub struct CopyBuf(Vec<u8>);

impl CopyBuf {
    /// A payload with room for about `bytes` bytes.
    pub fn with_capacity(bytes: usize) -> CopyBuf {
        let mut b = Vec::with_capacity(bytes + 21);
        b.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
        b.extend_from_slice(&0i32.to_be_bytes()); // flags
        b.extend_from_slice(&0i32.to_be_bytes()); // header extension length
        CopyBuf(b)
    }

    pub fn row(&mut self, fields: i16) {
        self.0.extend_from_slice(&fields.to_be_bytes());
    }

    pub fn bytes(&mut self, v: &[u8]) {
        self.0.extend_from_slice(&(v.len() as i32).to_be_bytes());
        self.0.extend_from_slice(v);
    }

    pub fn null(&mut self) {
        self.0.extend_from_slice(&(-1i32).to_be_bytes());
    }

    pub fn uuid(&mut self, u: &uuid::Uuid) {
        self.bytes(u.as_bytes());
    }

    /// `timestamptz` from epoch milliseconds (validated to a sane range
    /// upstream, so the multiplication cannot overflow).
    pub fn ts_ms(&mut self, ms: i64) {
        self.bytes(&(ms * 1000 - PG_EPOCH_US).to_be_bytes());
    }

    pub fn text(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }

    pub fn opt_text(&mut self, s: Option<&str>) {
        match s {
            Some(s) => self.text(s),
            None => self.null(),
        }
    }

    pub fn i16(&mut self, v: i16) {
        self.bytes(&v.to_be_bytes());
    }

    pub fn i32(&mut self, v: i32) {
        self.bytes(&v.to_be_bytes());
    }

    pub fn opt_i32(&mut self, v: Option<i32>) {
        match v {
            Some(v) => self.i32(v),
            None => self.null(),
        }
    }

    pub fn f64(&mut self, v: f64) {
        self.bytes(&v.to_be_bytes());
    }

    /// pgvector's binary `vector`: dimension (int16), an unused int16, then
    /// the float4s.
    pub fn vector(&mut self, v: Option<&[f32]>) {
        let Some(v) = v else { return self.null() };
        self.0.extend_from_slice(&((4 + 4 * v.len()) as i32).to_be_bytes());
        self.0.extend_from_slice(&(v.len() as i16).to_be_bytes());
        self.0.extend_from_slice(&0i16.to_be_bytes());
        for x in v {
            self.0.extend_from_slice(&x.to_be_bytes());
        }
    }

    /// The payload with its trailer.
    pub fn finish(mut self) -> Vec<u8> {
        self.0.extend_from_slice(&(-1i16).to_be_bytes());
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_fields_nulls_and_trailer() {
        let mut c = CopyBuf::with_capacity(0);
        c.row(3);
        c.ts_ms(946_684_800_001); // 2000-01-01 00:00:00.001 UTC
        c.opt_text(None);
        c.vector(Some(&[1.0, -0.5]));
        let b = c.finish();
        assert_eq!(&b[..11], b"PGCOPY\n\xff\r\n\0");
        assert_eq!(&b[19..21], &3i16.to_be_bytes());
        assert_eq!(&b[21..25], &8i32.to_be_bytes());
        assert_eq!(&b[25..33], &1000i64.to_be_bytes(), "microseconds since PostgreSQL's epoch");
        assert_eq!(&b[33..37], &(-1i32).to_be_bytes(), "NULL");
        assert_eq!(&b[37..41], &12i32.to_be_bytes(), "vector length: 2 + 2 + 2 × 4 bytes");
        assert_eq!(&b[41..43], &2i16.to_be_bytes(), "dimension");
        assert_eq!(&b[45..49], &1.0f32.to_be_bytes());
        assert_eq!(&b[53..], &(-1i16).to_be_bytes(), "trailer");
    }
}
