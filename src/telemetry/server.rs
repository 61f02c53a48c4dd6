//! A minimal HTTP/1.1 endpoint for Prometheus scrapes and health probes.
//! Three fixed GET routes do not justify an HTTP framework in the build.

use metrics_exporter_prometheus::PrometheusHandle;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What `/readyz` reports: each pipeline registers checks (assigned, sink
/// reachable); the process is ready when every check passes.
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Arc<Mutex<BTreeMap<String, Option<String>>>>,
}

impl Readiness {
    /// Sets check `name`: `Ok` passes, `Err(reason)` fails with a reason.
    pub fn set(&self, name: &str, state: Result<(), String>) {
        let mut checks = self.checks.lock().expect("readiness lock");
        checks.insert(name.to_string(), state.err());
    }

    /// `None` when ready, else the failing checks.
    pub fn failing(&self) -> Option<String> {
        let checks = self.checks.lock().expect("readiness lock");
        let failing: Vec<String> =
            checks.iter().filter_map(|(k, v)| v.as_ref().map(|reason| format!("{k}: {reason}"))).collect();
        if checks.is_empty() {
            Some("no pipeline registered yet".into())
        } else if failing.is_empty() {
            None
        } else {
            Some(failing.join("\n"))
        }
    }
}

/// Binds `addr` and serves until the runtime stops. Returns the bound
/// address (port 0 picks a free one).
pub async fn serve(
    addr: &str,
    metrics: PrometheusHandle,
    readiness: Readiness,
) -> std::io::Result<std::net::SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { continue };
            let (metrics, readiness) = (metrics.clone(), readiness.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut len = 0;
                // Read the request head only; these routes take no body.
                while len < buf.len() {
                    match stream.read(&mut buf[len..]).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => len += n,
                    }
                    if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                let head = String::from_utf8_lossy(&buf[..len]);
                let path = head.split_whitespace().nth(1).unwrap_or("/");
                let (status, body) = respond(path, &metrics, &readiness);
                let response = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    Ok(local)
}

fn respond(path: &str, metrics: &PrometheusHandle, readiness: &Readiness) -> (&'static str, String) {
    match path {
        "/metrics" => {
            metrics.run_upkeep();
            ("200 OK", metrics.render())
        }
        "/healthz" => ("200 OK", "ok\n".into()),
        "/readyz" => match readiness.failing() {
            None => ("200 OK", "ready\n".into()),
            Some(why) => ("503 Service Unavailable", format!("not ready\n{why}\n")),
        },
        _ => ("404 Not Found", "routes: /metrics /healthz /readyz\n".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::Readiness;

    #[test]
    fn ready_only_when_every_check_passes() {
        let r = Readiness::default();
        assert!(r.failing().is_some(), "nothing registered is not ready");
        r.set("analyze.assigned", Ok(()));
        r.set("analyze.postgres", Err("connection refused".into()));
        assert_eq!(r.failing().as_deref(), Some("analyze.postgres: connection refused"));
        r.set("analyze.postgres", Ok(()));
        assert_eq!(r.failing(), None);
    }
}
