//! Synthetic load: realistic events for demos, tests and benchmarks.
//!
//! Pure and seeded: the same seed, kind and event times give the same events,
//! so a test can regenerate exactly what `udo-stream produce` sent. Event time
//! is an input (the caller's clock), which is how the simulated clock lets
//! hours of event time pass in seconds.

mod incident;
mod samples;

pub use incident::{Incident, IncidentKind};
pub use samples::one_of_each;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, LogNormal, Normal};
use std::collections::VecDeque;
use udo_domain::*;
use uuid::Uuid;

pub const SOURCE: &str = "udo-stream-produce";

/// Which events to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    Latency,
    Feedback,
    Writes,
    All,
}

/// One named component with its latency profile.
#[derive(Debug, Clone)]
pub struct ComponentProfile {
    pub name: String,
    pub endpoints: Vec<String>,
    /// Median latency in ms (lognormal location).
    pub median_ms: f64,
    /// Lognormal shape; 0.5 gives P95 ≈ 2.3 × median.
    pub sigma: f64,
}

#[derive(Debug, Clone)]
pub struct SynthConfig {
    pub components: Vec<ComponentProfile>,
    pub projects: Vec<String>,
    /// Probability that a rating is +1.
    pub approval_rate: f64,
    /// Baseline probability of an ERROR/TIMEOUT outcome.
    pub error_rate: f64,
    pub embedding_dim: usize,
    pub incidents: Vec<Incident>,
}

impl SynthConfig {
    pub fn new(embedding_dim: usize) -> SynthConfig {
        let c = |name: &str, endpoints: &[&str], median_ms: f64| ComponentProfile {
            name: name.into(),
            endpoints: endpoints.iter().map(|e| e.to_string()).collect(),
            median_ms,
            sigma: 0.5,
        };
        SynthConfig {
            components: vec![
                c("checkout", &["POST /cart/checkout", "POST /payment/authorize", "GET /order/status"], 45.0),
                c("search", &["GET /search", "GET /suggest"], 30.0),
                c("recommend", &["GET /recommendations", "POST /rerank"], 60.0),
                c("auth", &["POST /login", "POST /token/refresh"], 12.0),
                c("inventory", &["GET /stock", "PUT /reservation"], 25.0),
            ],
            projects: vec!["proj-atlas".into(), "proj-borealis".into(), "proj-cygnus".into()],
            approval_rate: 0.85,
            error_rate: 0.005,
            embedding_dim,
            incidents: Vec::new(),
        }
    }
}

const WORDS: &[&str] = &[
    "cache",
    "retry",
    "payment",
    "latency",
    "index",
    "vector",
    "schema",
    "partition",
    "offset",
    "window",
    "quantile",
    "feedback",
    "project",
    "context",
    "decision",
    "uncertain",
    "review",
    "deploy",
    "rollback",
    "embedding",
    "token",
    "session",
    "ledger",
    "stock",
    "order",
    "search",
    "ranking",
    "signal",
    "budget",
];

const FILES: &[&str] = &[
    "README.md",
    "src/main.rs",
    "src/lib.rs",
    "src/api/handlers.rs",
    "src/db/schema.sql",
    "docs/architecture.md",
    "docs/runbook.md",
    "config/default.toml",
    "src/ranking/model.py",
    "tests/integration.rs",
];

/// A decision we generated, remembered so that ratings rate real decisions.
#[derive(Debug, Clone)]
struct Decided {
    id: Uuid,
    project: String,
    component: usize,
}

pub struct Generator {
    cfg: SynthConfig,
    rng: StdRng,
    /// Event time of the first event; incidents are relative to it.
    start_ms: i64,
    recent: VecDeque<Decided>,
    lognormals: Vec<LogNormal<f64>>,
}

impl Generator {
    pub fn new(cfg: SynthConfig, seed: u64, start_ms: i64) -> Generator {
        let lognormals = cfg
            .components
            .iter()
            .map(|c| LogNormal::new(c.median_ms.ln(), c.sigma).expect("finite lognormal parameters"))
            .collect();
        Generator { cfg, rng: StdRng::seed_from_u64(seed), start_ms, recent: VecDeque::new(), lognormals }
    }

    pub fn config(&self) -> &SynthConfig {
        &self.cfg
    }

    fn uuid(&mut self) -> Uuid {
        uuid::Builder::from_random_bytes(self.rng.random()).into_uuid()
    }

    fn incident_active(&self, kind: IncidentKind, component: &str, t_ms: i64) -> bool {
        let offset = t_ms - self.start_ms;
        self.cfg.incidents.iter().any(|i| i.kind == kind && i.component == component && i.covers(offset))
    }

    /// The next event of `kind` at event time `t_ms`.
    pub fn next(&mut self, kind: Kind, t_ms: i64) -> Event {
        let roll: f64 = self.rng.random();
        match kind {
            Kind::Latency => self.latency(t_ms),
            Kind::Feedback => self.feedback(t_ms),
            Kind::Writes if roll < 0.6 => self.decision(t_ms),
            Kind::Writes => self.chunk(t_ms),
            // Mostly latency, as in production; ratings lag decisions.
            Kind::All if roll < 0.80 => self.latency(t_ms),
            Kind::All if roll < 0.90 => self.feedback(t_ms),
            Kind::All if roll < 0.97 => self.decision(t_ms),
            Kind::All => self.chunk(t_ms),
        }
    }

    fn latency(&mut self, t_ms: i64) -> Event {
        let ci = self.rng.random_range(0..self.cfg.components.len());
        let comp = &self.cfg.components[ci];
        let endpoint = comp.endpoints[self.rng.random_range(0..comp.endpoints.len())].clone();
        let name = comp.name.clone();
        let mut latency_ms = self.lognormals[ci].sample(&mut self.rng);
        if self.incident_active(IncidentKind::Slow, &name, t_ms) {
            latency_ms *= 10.0;
        }
        let error_rate =
            if self.incident_active(IncidentKind::Errors, &name, t_ms) { 0.20 } else { self.cfg.error_rate };
        let outcome = if self.rng.random::<f64>() < error_rate {
            if self.rng.random::<f64>() < 0.8 { Outcome::Error } else { Outcome::Timeout }
        } else {
            Outcome::Ok
        };
        let status_code = Some(match outcome {
            Outcome::Ok => 200,
            Outcome::Error => 500,
            Outcome::Timeout => 504,
        });
        Event::LatencySample(LatencySample {
            event_id: self.uuid(),
            occurred_at: t_ms,
            source: SOURCE.into(),
            component: name,
            endpoint,
            latency_ms: (latency_ms * 1000.0).round() / 1000.0,
            outcome,
            status_code,
        })
    }

    fn decision(&mut self, t_ms: i64) -> Event {
        let ci = self.rng.random_range(0..self.cfg.components.len());
        let project = self.cfg.projects[self.rng.random_range(0..self.cfg.projects.len())].clone();
        // Predicted uncertainty clusters low with a long tail, like a
        // model that is usually confident.
        let score = (Normal::new(30.0, 18.0).expect("valid normal").sample(&mut self.rng) as i32).clamp(0, 100);
        let id = self.uuid();
        self.recent.push_back(Decided { id, project: project.clone(), component: ci });
        if self.recent.len() > 1024 {
            self.recent.pop_front();
        }
        let decision = format!("{} {} for {}", self.word(), self.word(), self.cfg.components[ci].name);
        Event::DecisionLog(DecisionLog {
            event_id: id,
            occurred_at: t_ms,
            source: SOURCE.into(),
            project_id: project,
            component: self.cfg.components[ci].name.clone(),
            decision,
            uncertainty_score: score,
            rationale: (self.rng.random::<f64>() < 0.5).then(|| self.sentence(8)),
        })
    }

    fn feedback(&mut self, t_ms: i64) -> Event {
        let decided = if self.recent.is_empty() {
            None
        } else {
            let i = self.rng.random_range(0..self.recent.len());
            Some(self.recent[i].clone())
        };
        let (decision_id, project, ci) = match decided {
            Some(d) => (d.id, d.project, d.component),
            None => (
                self.uuid(),
                self.cfg.projects[self.rng.random_range(0..self.cfg.projects.len())].clone(),
                self.rng.random_range(0..self.cfg.components.len()),
            ),
        };
        let component = self.cfg.components[ci].name.clone();
        let approval =
            if self.incident_active(IncidentKind::Disputed, &component, t_ms) { 0.30 } else { self.cfg.approval_rate };
        let rating = if self.rng.random::<f64>() < approval { 1 } else { -1 };
        Event::FeedbackRating(FeedbackRating {
            event_id: self.uuid(),
            occurred_at: t_ms,
            source: SOURCE.into(),
            project_id: project,
            component,
            decision_id,
            rating,
            correction: (rating < 0 && self.rng.random::<f64>() < 0.5).then(|| self.sentence(6)),
        })
    }

    fn chunk(&mut self, t_ms: i64) -> Event {
        let project = self.cfg.projects[self.rng.random_range(0..self.cfg.projects.len())].clone();
        let file = FILES[self.rng.random_range(0..FILES.len())];
        let chunk_index = self.rng.random_range(0..4);
        let delete = self.rng.random::<f64>() < 0.03;
        let (content, embedding) = if delete {
            (String::new(), None)
        } else {
            let content = self.sentence(40);
            let embedding = self.embedding(&project, file);
            (content, Some(embedding))
        };
        Event::ContextChunk(ContextChunk {
            event_id: self.uuid(),
            occurred_at: t_ms,
            source: SOURCE.into(),
            project_id: project,
            file_path: file.into(),
            chunk_index,
            op: if delete { ChunkOp::Delete } else { ChunkOp::Upsert },
            content,
            embedding,
        })
    }

    /// Unit vector near a per-file direction, so chunks of one file are
    /// nearest neighbours of each other, as real embeddings would be.
    fn embedding(&mut self, project: &str, file: &str) -> Vec<f32> {
        let seed = project.bytes().chain(file.bytes()).fold(0xcbf29ce484222325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100000001b3) // FNV-1a
        });
        let mut base = StdRng::seed_from_u64(seed);
        let normal = Normal::new(0.0f32, 1.0).expect("valid normal");
        let mut v: Vec<f32> = (0..self.cfg.embedding_dim)
            .map(|_| normal.sample(&mut base) + 0.2 * normal.sample(&mut self.rng))
            .collect();
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(f32::MIN_POSITIVE);
        v.iter_mut().for_each(|x| *x /= norm);
        v
    }

    fn word(&mut self) -> &'static str {
        WORDS[self.rng.random_range(0..WORDS.len())]
    }

    fn sentence(&mut self, words: usize) -> String {
        (0..words).map(|_| self.word()).collect::<Vec<_>>().join(" ")
    }
}

#[cfg(test)]
mod tests;

/// Event time of the `i`-th record under the simulated clock: time advances
/// at the nominal `rate` however fast records are actually sent.
pub fn simulated_time(start_ms: i64, i: u64, rate: f64) -> i64 {
    start_ms + (i as f64 * 1000.0 / rate) as i64
}
