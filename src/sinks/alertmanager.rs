//! Alertmanager's v2 API, the one call the notifier needs:
//! `POST /api/v2/alerts` with a list of alerts (each a label set, the
//! annotations, `startsAt`, and `endsAt` once resolved). Alertmanager keys an
//! alert by its labels, so posting the same alert again is idempotent and
//! refreshes it (a firing one would otherwise resolve itself after
//! `resolve_timeout`).

use crate::config::SecretUrl;
use crate::error::{Error, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// One alert as the v2 API takes it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AmAlert {
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    #[serde(rename = "startsAt")]
    pub starts_at: String,
    #[serde(rename = "endsAt", skip_serializing_if = "Option::is_none")]
    pub ends_at: Option<String>,
}

pub struct Alertmanager {
    /// `<base>/api/v2/alerts`; the base may carry credentials (never printed).
    endpoint: SecretUrl,
    /// What errors name: the URL without credentials.
    shown: String,
    agent: ureq::Agent,
}

impl Alertmanager {
    pub fn new(url: &SecretUrl, timeout: Duration) -> Alertmanager {
        let base = url.expose().trim_end_matches('/');
        let agent = ureq::Agent::config_builder().timeout_global(Some(timeout)).build().into();
        Alertmanager {
            endpoint: SecretUrl::from(format!("{base}/api/v2/alerts").as_str()),
            shown: format!("{}/api/v2/alerts", SecretUrl::from(base)),
            agent,
        }
    }

    /// Posts `alerts` (nothing to do when empty).
    pub fn post(&self, alerts: &[AmAlert]) -> Result<()> {
        if alerts.is_empty() {
            return Ok(());
        }
        match self.agent.post(self.endpoint.expose()).send_json(alerts) {
            Ok(_) => Ok(()),
            Err(ureq::Error::StatusCode(code)) => Err(Error::Alertmanager {
                // 5xx and 429: down or overloaded; any other status is a
                // request it will never take (bad URL, credentials, payload).
                transient: code >= 500 || code == 429,
                message: format!(
                    "POST {} answered HTTP {code}{}",
                    self.shown,
                    if code == 404 { " (check --alertmanager-url: the base URL, without /api/v2)" } else { "" }
                ),
            }),
            Err(e) => Err(Error::Alertmanager { transient: true, message: format!("POST {}: {e}", self.shown) }),
        }
    }
}
