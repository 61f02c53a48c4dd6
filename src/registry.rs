//! Confluent Schema Registry client over HTTP (REST, TopicNameStrategy
//! subjects `<topic>-value`), the IO side of `codec::SchemaRegistry`. Used
//! only when `SCHEMA_REGISTRY_URL` is set. Lookups are cached for the life of
//! the process: ids are immutable in the registry, so a schema is fetched at
//! most once per id.

use crate::codec::registry::Compatibility;
use crate::codec::{RegistryError, SchemaRegistry};
use apache_avro::Schema;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// Confluent Schema Registry over HTTP.
pub struct HttpRegistry {
    base: String,
    agent: ureq::Agent,
    by_id: Mutex<HashMap<u32, Arc<Schema>>>,
    by_subject: Mutex<HashMap<(String, String), u32>>,
}

#[derive(Deserialize)]
struct IdResponse {
    id: u32,
}

#[derive(Deserialize)]
struct SchemaResponse {
    schema: String,
}

#[derive(Deserialize)]
struct CompatResponse {
    is_compatible: bool,
    #[serde(default)]
    messages: Vec<String>,
}

impl HttpRegistry {
    pub fn new(url: &str) -> HttpRegistry {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(10)))
            .http_status_as_error(false)
            .build()
            .into();
        HttpRegistry {
            base: url.trim_end_matches('/').to_string(),
            agent,
            by_id: Mutex::default(),
            by_subject: Mutex::default(),
        }
    }

    pub fn url(&self) -> &str {
        &self.base
    }

    fn unreachable(&self, e: ureq::Error) -> RegistryError {
        RegistryError::Unreachable { url: self.base.clone(), message: e.to_string() }
    }

    fn read<T: serde::de::DeserializeOwned>(
        &self,
        what: &str,
        resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<Result<T, (u16, String)>, RegistryError> {
        let mut resp = resp.map_err(|e| self.unreachable(e))?;
        let status = resp.status().as_u16();
        let body = resp.body_mut().read_to_string().map_err(|e| self.unreachable(e))?;
        if (200..300).contains(&status) {
            serde_json::from_str(&body).map(Ok).map_err(|e| RegistryError::Rejected {
                status,
                what: what.to_string(),
                body: format!("unexpected body ({e}): {body}"),
            })
        } else {
            Ok(Err((status, body)))
        }
    }

    /// Asks the registry whether `schema_text` may become the next version
    /// of `subject` under the subject's configured compatibility level.
    pub fn check_compatibility(&self, subject: &str, schema_text: &str) -> Result<Compatibility, RegistryError> {
        let what = format!("compatibility of {subject}");
        let resp = self
            .agent
            .post(format!("{}/compatibility/subjects/{subject}/versions/latest?verbose=true", self.base))
            .header("Content-Type", CONTENT_TYPE)
            .send_json(serde_json::json!({ "schema": schema_text }));
        match self.read::<CompatResponse>(&what, resp)? {
            Ok(r) if r.is_compatible => Ok(Compatibility::Compatible),
            Ok(r) => Ok(Compatibility::Incompatible(r.messages)),
            // 40401 subject not found / 40402 version not found.
            Err((404, _)) => Ok(Compatibility::NewSubject),
            Err((status, body)) => Err(RegistryError::Rejected { status, what, body }),
        }
    }
}

impl HttpRegistry {
    /// The schema text of `subject`'s latest version (`None`: not registered).
    pub fn latest_schema(&self, subject: &str) -> Result<Option<String>, RegistryError> {
        let what = format!("latest version of {subject}");
        let resp = self
            .agent
            .get(format!("{}/subjects/{subject}/versions/latest", self.base))
            .header("Accept", CONTENT_TYPE)
            .call();
        match self.read::<SchemaResponse>(&what, resp)? {
            Ok(r) => Ok(Some(r.schema)),
            Err((404, _)) => Ok(None),
            Err((status, body)) => Err(RegistryError::Rejected { status, what, body }),
        }
    }
}

impl SchemaRegistry for HttpRegistry {
    /// The writer schema behind a Confluent-framed record.
    fn schema_by_id(&self, id: u32) -> Result<Arc<Schema>, RegistryError> {
        if let Some(s) = self.by_id.lock().expect("registry cache lock").get(&id) {
            return Ok(s.clone());
        }
        let what = format!("schema id {id}");
        let resp = self.agent.get(format!("{}/schemas/ids/{id}", self.base)).header("Accept", CONTENT_TYPE).call();
        let body: SchemaResponse = self.read(&what, resp)?.map_err(|(status, body)| RegistryError::Rejected {
            status,
            what: what.clone(),
            body,
        })?;
        let schema =
            Schema::parse_str(&body.schema).map_err(|e| RegistryError::BadSchema { id, message: e.to_string() })?;
        let schema = Arc::new(schema);
        self.by_id.lock().expect("registry cache lock").insert(id, schema.clone());
        Ok(schema)
    }

    /// Registers (or finds: registering an identical schema is idempotent in
    /// the registry) `schema_text` under `subject` and returns its id.
    fn register(&self, subject: &str, schema_text: &str) -> Result<u32, RegistryError> {
        let key = (subject.to_string(), schema_text.to_string());
        if let Some(id) = self.by_subject.lock().expect("registry cache lock").get(&key) {
            return Ok(*id);
        }
        let what = format!("register {subject}");
        let resp = self
            .agent
            .post(format!("{}/subjects/{subject}/versions", self.base))
            .header("Content-Type", CONTENT_TYPE)
            .send_json(serde_json::json!({ "schema": schema_text }));
        let body: IdResponse = self.read(&what, resp)?.map_err(|(status, body)| RegistryError::Rejected {
            status,
            what: what.clone(),
            body,
        })?;
        self.by_subject.lock().expect("registry cache lock").insert(key, body.id);
        Ok(body.id)
    }
}
