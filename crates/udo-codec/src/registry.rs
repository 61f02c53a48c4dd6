//! What the codec needs of a schema registry (TopicNameStrategy subjects
//! `<topic>-value`): the `SchemaRegistry` trait, its errors, and an
//! in-memory registry for tests. The HTTP client lives in the binary crate
//! (`src/registry.rs`), which does the IO.

use apache_avro::Schema;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("schema registry {url} unreachable: {message}")]
    Unreachable { url: String, message: String },
    #[error("schema registry answered {status} for {what}: {body}")]
    Rejected { status: u16, what: String, body: String },
    #[error("registry schema id {id} does not parse: {message}")]
    BadSchema { id: u32, message: String },
}

impl RegistryError {
    /// Transport failures and 5xx may pass; 4xx are about what we sent.
    pub fn is_retryable(&self) -> bool {
        match self {
            RegistryError::Unreachable { .. } => true,
            RegistryError::Rejected { status, .. } => *status >= 500,
            RegistryError::BadSchema { .. } => false,
        }
    }
}

/// Outcome of a compatibility check of a local schema against a subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compatibility {
    Compatible,
    Incompatible(Vec<String>),
    /// The subject has no version yet: anything registers.
    NewSubject,
}

/// Where Confluent-framed records find their writer schemas. The HTTP client
/// is the real one; the in-memory one lets codec logic be tested without IO.
pub trait SchemaRegistry: Send + Sync {
    fn schema_by_id(&self, id: u32) -> Result<Arc<Schema>, RegistryError>;
    fn register(&self, subject: &str, schema_text: &str) -> Result<u32, RegistryError>;
}

/// Registry held in memory: ids assigned from 1 in registration order,
/// re-registering the same text under a subject returns the same id.
#[derive(Default)]
pub struct MemoryRegistry {
    inner: Mutex<MemoryState>,
}

/// Schemas by id - 1, and (subject, text) -> id.
type MemoryState = (Vec<Arc<Schema>>, HashMap<(String, String), u32>);

impl SchemaRegistry for MemoryRegistry {
    fn schema_by_id(&self, id: u32) -> Result<Arc<Schema>, RegistryError> {
        let inner = self.inner.lock().expect("memory registry lock");
        id.checked_sub(1).and_then(|i| inner.0.get(i as usize)).cloned().ok_or_else(|| RegistryError::Rejected {
            status: 404,
            what: format!("schema id {id}"),
            body: "Schema not found".into(),
        })
    }

    fn register(&self, subject: &str, schema_text: &str) -> Result<u32, RegistryError> {
        let mut inner = self.inner.lock().expect("memory registry lock");
        if let Some(id) = inner.1.get(&(subject.to_string(), schema_text.to_string())) {
            return Ok(*id);
        }
        let schema = Schema::parse_str(schema_text).map_err(|e| RegistryError::Rejected {
            status: 422,
            what: format!("register {subject}"),
            body: e.to_string(),
        })?;
        inner.0.push(Arc::new(schema));
        let id = inner.0.len() as u32;
        inner.1.insert((subject.to_string(), schema_text.to_string()), id);
        Ok(id)
    }
}
