//! The analyzer's engine (DESIGN §4): one `Engine` per task, where task `p`
//! owns partition `p` of the latency topic and of the component-keyed
//! feedback and decision streams. Driven by events, idle advances and
//! `close`, it returns output events; it does no IO, so every rule is tested
//! in-process and the IO shell only moves bytes and checkpoints `TaskState`.
//!
//! Determinism: outputs depend only on the order of inputs (and idle
//! advances), window stats come in (window end, key) order and transitions in
//! a fixed rule order, and every id is a UUIDv5 of rule, subject and window.
//! A restart from a checkpoint therefore re-emits identical events.

use super::events::{DecisionLog, Event, FeedbackRating, LatencySample, WindowStats};
use super::latency::{LatencyAgg, Sample};
use super::rules::{ComponentRules, Thresholds, UncertaintyRules, WindowRef, output_id};
use super::uncertainty::{RatingAgg, RatingItem};
use super::windows::{Closed, Late, WindowSpec, Windows};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What the engine needs to know; every value is configuration (DESIGN §4).
#[derive(Debug, Clone, PartialEq)]
pub struct EngineConfig {
    pub spec: WindowSpec,
    /// Latency windows below this many samples are reported, not evaluated.
    pub min_samples: u64,
    /// Uncertainty windows below this many ratings are reported, not evaluated.
    pub min_ratings: u64,
    pub thresholds: Thresholds,
    /// The `source` field of output events.
    pub source: String,
    /// Partitions of `udo.writes.v1`: decision channels expected to hold
    /// the ratings watermark until seen or idle.
    pub decision_channels: i32,
}

impl EngineConfig {
    pub fn new(spec: WindowSpec) -> EngineConfig {
        EngineConfig {
            spec,
            min_samples: 20,
            min_ratings: 10,
            thresholds: Thresholds::default(),
            source: "udo-analyze".into(),
            decision_channels: 1,
        }
    }
}

/// Latency key: `(component, None)` for the whole component, or
/// `(component, Some(endpoint))`. `None` sorts first, so a component's own
/// window (the one rules evaluate) precedes its endpoints in the output.
pub type LatencyKey = (String, Option<String>);
/// Uncertainty key: `(project, component)`.
pub type RatingKey = (String, String);

/// Everything a task remembers; checkpointed with its input offsets.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskState {
    latency: Windows<LatencyKey, LatencyAgg>,
    ratings: Windows<RatingKey, RatingAgg>,
    components: BTreeMap<String, ComponentRules>,
    uncertainty: BTreeMap<RatingKey, UncertaintyRules>,
    /// Newest event time per input of the ratings windows.
    rating_inputs: BTreeMap<Source, i64>,
    /// Inputs declared idle by the caller (excluded from the watermark).
    idle: std::collections::BTreeSet<Source>,
    /// Last source offset ingested per decision channel (deduplication).
    channel_offsets: BTreeMap<i32, i64>,
    /// Routed inputs (see `Input::Routed`): last source offset per
    /// (stream, source partition), for deduplication.
    routed_offsets: BTreeMap<(Stream, i32), i64>,
    /// Newest event time per source partition that routed latency samples
    /// here: they hold the latency watermark, as decision channels hold the
    /// ratings one, until idle.
    latency_inputs: BTreeMap<i32, i64>,
    latency_idle: std::collections::BTreeSet<i32>,
}

/// The inputs of the ratings windows: the feedback partition, and one
/// channel per `udo.writes.v1` partition that decision logs were re-keyed
/// from. Their watermark is the slowest input's (Flink's rule for
/// multi-input operators and shuffles): decision logs take one more hop and
/// arrive interleaved from several source partitions, so neither ratings
/// running ahead nor one writes partition running ahead of another makes
/// them late. An input idle for `idle_timeout` stops holding it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Source {
    Feedback,
    /// Decision logs from this `udo.writes.v1` partition.
    Decisions(i32),
    /// Ratings routed here from this `udo.feedback.v1` partition.
    Routed(i32),
}

/// An input the engine consumes.
#[derive(Debug, Clone, Copy)]
pub enum Input<'a> {
    Latency(&'a LatencySample),
    Rating(&'a FeedbackRating),
    /// A decision log, the `udo.writes.v1` partition it came from (its
    /// channel) and its offset there. The re-keying hop is at-least-once, so
    /// after a restart a channel may repeat itself: offsets at or below the
    /// last one seen are duplicates and are skipped.
    Decision(&'a DecisionLog, i32, i64),
    /// A latency sample or rating its producer put on another partition
    /// (another partitioner, a null key), routed here by that partition's
    /// task: the source partition (its channel) and its offset there. As
    /// for decisions, a repeated offset is skipped and each channel holds
    /// the watermark of its stream until idle.
    RoutedLatency(&'a LatencySample, i32, i64),
    RoutedRating(&'a FeedbackRating, i32, i64),
}

/// Which window set an input or an idle advance concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Stream {
    /// Latency samples.
    Latency,
    /// Feedback ratings and decision logs (one window set: the calibration
    /// gap joins them).
    Ratings,
}

impl Input<'_> {
    /// The input's event time.
    pub fn occurred_at(&self) -> i64 {
        match self {
            Input::Latency(s) | Input::RoutedLatency(s, ..) => s.occurred_at,
            Input::Rating(r) | Input::RoutedRating(r, ..) => r.occurred_at,
            Input::Decision(d, ..) => d.occurred_at,
        }
    }

    pub fn stream(&self) -> Stream {
        match self {
            Input::Latency(_) | Input::RoutedLatency(..) => Stream::Latency,
            Input::Rating(_) | Input::Decision(..) | Input::RoutedRating(..) => Stream::Ratings,
        }
    }
}

/// Counts of what the last `close` produced, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Closing {
    pub component_windows: u64,
    pub endpoint_windows: u64,
    pub uncertainty_windows: u64,
}

#[derive(Debug)]
pub struct Engine {
    cfg: EngineConfig,
    state: TaskState,
}

impl Engine {
    pub fn new(cfg: EngineConfig) -> Engine {
        let state = TaskState {
            latency: Windows::new(cfg.spec),
            ratings: Windows::new(cfg.spec),
            components: BTreeMap::new(),
            uncertainty: BTreeMap::new(),
            rating_inputs: BTreeMap::new(),
            idle: Default::default(),
            channel_offsets: BTreeMap::new(),
            routed_offsets: BTreeMap::new(),
            latency_inputs: BTreeMap::new(),
            latency_idle: Default::default(),
        };
        let mut engine = Engine { cfg, state };
        engine.limit_ratings();
        engine
    }

    /// Resumes from a checkpoint. A state built with another window shape
    /// cannot be continued: `Err` says so and the caller starts afresh.
    pub fn restore(cfg: EngineConfig, state: TaskState) -> Result<Engine, String> {
        if state.latency.spec() != cfg.spec {
            return Err(format!(
                "checkpoint windows {:?} differ from the configured {:?}",
                state.latency.spec(),
                cfg.spec
            ));
        }
        Ok(Engine { cfg, state })
    }

    pub fn state(&self) -> &TaskState {
        &self.state
    }

    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// Adds one input (`Ok(false)`: a repeated decision, skipped), or says
    /// why it is late (the caller counts and reports it).
    pub fn ingest(&mut self, input: Input<'_>) -> Result<bool, Late> {
        match input {
            Input::Latency(s) => {
                let sample = Sample { latency_ms: s.latency_ms, is_error: s.outcome.is_error() };
                // The component key decides lateness for both: it holds every
                // sample, so it cannot be late where its endpoint is not.
                self.state.latency.add((s.component.clone(), None), s.occurred_at, &sample)?;
                self.state.latency.add((s.component.clone(), Some(s.endpoint.clone())), s.occurred_at, &sample)?;
                Ok(true)
            }
            Input::Rating(r) => self.add_rating(
                &r.project_id,
                &r.component,
                r.occurred_at,
                RatingItem::Rating(r.rating),
                Source::Feedback,
            ),
            Input::Decision(d, channel, offset) => {
                if self.state.channel_offsets.get(&channel).is_some_and(|last| offset <= *last) {
                    return Ok(false);
                }
                self.state.channel_offsets.insert(channel, offset);
                let item = RatingItem::Decision(d.uncertainty_score);
                self.add_rating(&d.project_id, &d.component, d.occurred_at, item, Source::Decisions(channel))
            }
            Input::RoutedLatency(s, channel, offset) => {
                if !self.first_time(Stream::Latency, channel, offset) {
                    return Ok(false);
                }
                let max = self.state.latency_inputs.entry(channel).or_insert(s.occurred_at);
                *max = (*max).max(s.occurred_at);
                self.state.latency_idle.remove(&channel);
                self.limit_latency();
                self.ingest(Input::Latency(s))
            }
            Input::RoutedRating(r, channel, offset) => {
                if !self.first_time(Stream::Ratings, channel, offset) {
                    return Ok(false);
                }
                let item = RatingItem::Rating(r.rating);
                self.add_rating(&r.project_id, &r.component, r.occurred_at, item, Source::Routed(channel))
            }
        }
    }

    /// One input of the ratings windows, from `source` (whose event time
    /// is observed for the watermark even when the input is late).
    fn add_rating(
        &mut self,
        project: &str,
        component: &str,
        t: i64,
        item: RatingItem,
        source: Source,
    ) -> Result<bool, Late> {
        let added = self.state.ratings.add((project.to_string(), component.to_string()), t, &item);
        self.observe(source, t);
        added.map(|()| true)
    }

    /// Records `offset` of a routed channel; false when already ingested.
    fn first_time(&mut self, stream: Stream, channel: i32, offset: i64) -> bool {
        let last = self.state.routed_offsets.entry((stream, channel)).or_insert(i64::MIN);
        if offset <= *last {
            return false;
        }
        *last = offset;
        true
    }

    /// Latency watermark cap: the slowest active routed channel's.
    fn limit_latency(&mut self) {
        let lateness = self.cfg.spec.allowed_lateness_ms;
        let limit = self
            .state
            .latency_inputs
            .iter()
            .filter(|(c, _)| !self.state.latency_idle.contains(c))
            .map(|(_, t)| t - lateness)
            .min();
        self.state.latency.limit_watermark(limit);
    }

    /// Declares a routed latency channel idle (or active again).
    pub fn set_latency_idle(&mut self, channel: i32, idle: bool) {
        let changed =
            if idle { self.state.latency_idle.insert(channel) } else { self.state.latency_idle.remove(&channel) };
        if changed {
            self.limit_latency();
        }
    }

    fn observe(&mut self, source: Source, t: i64) {
        let max = self.state.rating_inputs.entry(source).or_insert(t);
        *max = (*max).max(t);
        self.state.idle.remove(&source);
        self.limit_ratings();
    }

    /// Declares an input of the ratings windows idle (or active again).
    pub fn set_idle(&mut self, source: Source, idle: bool) {
        let changed = if idle { self.state.idle.insert(source) } else { self.state.idle.remove(&source) };
        if changed {
            self.limit_ratings();
        }
    }

    /// Ratings watermark = the slowest active input's; an active input with
    /// no event yet holds everything.
    fn limit_ratings(&mut self) {
        let lateness = self.cfg.spec.allowed_lateness_ms;
        let expected = (0..self.cfg.decision_channels).map(Source::Decisions).chain([Source::Feedback]);
        let inputs: std::collections::BTreeSet<Source> =
            expected.chain(self.state.rating_inputs.keys().copied()).collect();
        let limit = inputs
            .into_iter()
            .filter(|s| !self.state.idle.contains(s))
            .map(|s| self.state.rating_inputs.get(&s).map_or(i64::MIN / 2, |t| t - lateness))
            .min();
        self.state.ratings.limit_watermark(limit);
    }

    /// The stream's inputs have been silent for `idle_ms` of wall clock:
    /// move its watermark as far, so its windows still close.
    pub fn advance_idle(&mut self, stream: Stream, idle_ms: i64) {
        match stream {
            Stream::Latency => self.state.latency.advance_idle(idle_ms),
            Stream::Ratings => self.state.ratings.advance_idle(idle_ms),
        }
    }

    pub fn watermark(&self, stream: Stream) -> Option<i64> {
        match stream {
            Stream::Latency => self.state.latency.watermark(),
            Stream::Ratings => self.state.ratings.watermark(),
        }
    }

    /// Closes every window behind the watermarks and evaluates the rules:
    /// window stats for every key, then transitions, latency before ratings.
    pub fn close(&mut self, out: &mut Vec<Event>) -> Closing {
        let mut closing = Closing::default();
        for Closed { key: (component, endpoint), start, end, agg } in self.state.latency.close() {
            let stats = agg.stats();
            let window = WindowRef { start, end };
            let subject = super::subject::latency(&component, endpoint.as_deref());
            out.push(self.window_stats(&subject, &component, endpoint.clone(), None, window, |w| {
                w.latency = Some(stats.clone())
            }));
            if endpoint.is_some() {
                closing.endpoint_windows += 1;
                continue;
            }
            closing.component_windows += 1;
            if agg.count >= self.cfg.min_samples {
                let rules = self.state.components.entry(component.clone()).or_default();
                out.extend(rules.evaluate(&self.cfg.thresholds, &self.cfg.source, &component, window, &stats));
            }
        }
        for Closed { key: (project, component), start, end, agg } in self.state.ratings.close() {
            let stats = agg.stats();
            let window = WindowRef { start, end };
            let subject = super::subject::uncertainty(&project, &component);
            out.push(self.window_stats(&subject, &component, None, Some(project.clone()), window, |w| {
                w.uncertainty = Some(stats.clone())
            }));
            closing.uncertainty_windows += 1;
            if agg.ratings >= self.cfg.min_ratings {
                let rules = self.state.uncertainty.entry((project.clone(), component.clone())).or_default();
                out.extend(rules.evaluate(
                    &self.cfg.thresholds,
                    &self.cfg.source,
                    &project,
                    &component,
                    window,
                    stats.uncertainty,
                ));
            }
        }
        closing
    }

    fn window_stats(
        &self,
        subject: &str,
        component: &str,
        endpoint: Option<String>,
        project_id: Option<String>,
        window: WindowRef,
        fill: impl FnOnce(&mut WindowStats),
    ) -> Event {
        let kind = if project_id.is_some() { "uncertainty" } else { "latency" };
        let mut w = WindowStats {
            event_id: output_id(&["window", kind, subject, &window.start.to_string(), &window.end.to_string()]),
            occurred_at: window.end,
            source: self.cfg.source.clone(),
            subject: subject.to_string(),
            component: component.to_string(),
            endpoint,
            project_id,
            window_start: window.start,
            window_end: window.end,
            latency: None,
            uncertainty: None,
        };
        fill(&mut w);
        Event::WindowStats(w)
    }

    /// Components currently DEGRADED and alerts currently firing, for gauges.
    pub fn states(&self) -> (usize, usize) {
        let degraded = self.state.components.values().filter(|r| r.degradation.active).count();
        let firing = self
            .state
            .components
            .values()
            .map(|r| [r.p95_warning, r.p95_critical, r.error_rate_warning].iter().filter(|h| h.active).count())
            .sum::<usize>()
            + self
                .state
                .uncertainty
                .values()
                .map(|r| r.warning.active as usize + r.critical.active as usize)
                .sum::<usize>();
        (degraded, firing)
    }

    /// Forgets every event after `limit` (wall clock plus the allowed skew):
    /// a state restored from before such events were refused must not keep
    /// a watermark from the future. Returns the panes dropped.
    pub fn forget_future(&mut self, limit: i64) -> usize {
        let dropped = self.state.latency.forget_after(limit) + self.state.ratings.forget_after(limit);
        let mut changed = false;
        for t in self.state.latency_inputs.values_mut() {
            *t = (*t).min(limit);
        }
        self.limit_latency();
        for t in self.state.rating_inputs.values_mut() {
            if *t > limit {
                *t = limit;
                changed = true;
            }
        }
        if changed {
            self.limit_ratings();
        }
        dropped
    }

    /// Keys holding open panes (latency and uncertainty).
    pub fn active_keys(&self) -> usize {
        self.state.latency.active_keys() + self.state.ratings.active_keys()
    }
}

#[cfg(test)]
mod tests;
