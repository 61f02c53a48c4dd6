//! The analyzer's engine (design §4): one `Engine` per task, where task `p`
//! owns partition `p` of the latency topic and of the component-keyed
//! feedback and decision streams. Driven by events, idle advances and
//! `close`, it returns output events; it does no IO, so every rule is tested
//! in-process and the IO shell only moves bytes and checkpoints.
//!
//! State is keyed by subject: a task's small `TaskMeta` (watermarks,
//! input bookkeeping) plus one `SubjectEntry` per subject. `changes` lists
//! the subjects changed or removed since the last checkpoint, so a
//! checkpoint's size follows what changed, not what is held.
//!
//! Determinism: outputs depend only on the order of inputs (and idle
//! advances), window stats come in (window end, key) order and transitions in
//! a fixed rule order, and every id is a UUIDv5 of rule, subject and window.
//! A restart from a checkpoint therefore re-emits identical events.

use super::events::{DecisionLog, Event, FeedbackRating, LatencySample, WindowStats};
use super::latency::{LatencyAgg, Sample};
use super::rules::{ComponentRules, Deployment, Thresholds, UncertaintyRules, WindowRef, output_id};
use super::uncertainty::{RatingAgg, RatingItem};
use super::windows::{Clock, Entry, Late, WindowSpec, Windows};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// What the engine needs to know; every value is configuration (design §4).
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
    /// A subject with no data for this long (event time) is dropped from
    /// state, its open alerts resolved (0: never).
    pub state_ttl_ms: i64,
    /// The namespace of this deployment's output ids.
    pub deployment: Deployment,
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
            state_ttl_ms: 0,
            deployment: Deployment::default(),
        }
    }
}

/// Latency key: `(component, None)` for the whole component, or
/// `(component, Some(endpoint))`. `None` sorts first, so a component's own
/// window (the one rules evaluate) precedes its endpoints in the output.
pub type LatencyKey = (String, Option<String>);
/// Uncertainty key: `(project, component)`.
pub type RatingKey = (String, String);

/// A `LatencyKey` by reference: hashes as the key does (a tuple hashes its
/// fields in order), so a known subject is found without allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct LatencyRef<'a>(&'a str, Option<&'a str>);

impl hashbrown::Equivalent<LatencyKey> for LatencyRef<'_> {
    fn equivalent(&self, key: &LatencyKey) -> bool {
        self.0 == key.0 && self.1 == key.1.as_deref()
    }
}

impl LatencyRef<'_> {
    fn owned(&self) -> LatencyKey {
        (self.0.to_string(), self.1.map(str::to_string))
    }
}

/// A `RatingKey` by reference (see `LatencyRef`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct RatingRef<'a>(&'a str, &'a str);

impl hashbrown::Equivalent<RatingKey> for RatingRef<'_> {
    fn equivalent(&self, key: &RatingKey) -> bool {
        self.0 == key.0 && self.1 == key.1
    }
}

/// A subject of the analyzer's state: a latency key or an uncertainty key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum SubjectKey {
    Latency(LatencyKey),
    Uncertainty(RatingKey),
}

/// One subject's state: open panes, rule state, last event time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SubjectEntry {
    Latency(Entry<LatencyAgg, ComponentRules>),
    Uncertainty(Entry<RatingAgg, UncertaintyRules>),
}

/// `SubjectEntry` by reference (encodes the same), for writing checkpoints
/// without copying the state.
#[derive(Debug, Clone, Copy, Serialize)]
pub enum EntryRef<'a> {
    Latency(&'a Entry<LatencyAgg, ComponentRules>),
    Uncertainty(&'a Entry<RatingAgg, UncertaintyRules>),
}

/// `SubjectKey` by reference (encodes the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum KeyRef<'a> {
    Latency(&'a LatencyKey),
    Uncertainty(&'a RatingKey),
}

impl KeyRef<'_> {
    pub fn to_owned(self) -> SubjectKey {
        match self {
            KeyRef::Latency(k) => SubjectKey::Latency(k.clone()),
            KeyRef::Uncertainty(k) => SubjectKey::Uncertainty(k.clone()),
        }
    }
}

/// What a checkpoint writes: changed subjects and removed ones.
#[derive(Debug, Default)]
pub struct Changes<'a> {
    pub put: Vec<(KeyRef<'a>, EntryRef<'a>)>,
    pub delete: Vec<KeyRef<'a>>,
}

/// A task's state besides its subjects: small, whatever their number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskMeta {
    latency: Clock,
    ratings: Clock,
    inputs: Inputs,
}

/// Input bookkeeping of a task (watermark inputs, deduplication).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Inputs {
    /// Newest event time per input of the ratings windows.
    rating_inputs: BTreeMap<Source, i64>,
    /// Inputs declared idle by the caller (excluded from the watermark).
    idle: BTreeSet<Source>,
    /// Last source offset ingested per decision channel (deduplication).
    channel_offsets: BTreeMap<i32, i64>,
    /// Routed inputs (see `Input::Routed`): last source offset per
    /// (stream, source partition), for deduplication.
    routed_offsets: BTreeMap<(Stream, i32), i64>,
    /// Newest event time per source partition that routed latency samples
    /// here: they hold the latency watermark, as decision channels hold the
    /// ratings one, until idle.
    latency_inputs: BTreeMap<i32, i64>,
    latency_idle: BTreeSet<i32>,
}

/// Why an input was not ingested.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Its first window already closed.
    Late(Late),
    /// It would add a subject past the capacity (`set_capacity`), which
    /// the task holds this many of.
    Cardinality { held: usize },
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Late(late) => late.fmt(f),
            Refused::Cardinality { held } => write!(f, "a new subject past the capacity ({held} held)"),
        }
    }
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
    /// Subjects dropped for having had no data for the time to live.
    pub expired_subjects: u64,
}

#[derive(Debug)]
pub struct Engine {
    cfg: EngineConfig,
    latency: Windows<LatencyKey, LatencyAgg, ComponentRules>,
    ratings: Windows<RatingKey, RatingAgg, UncertaintyRules>,
    inputs: Inputs,
    /// Subjects this task may hold (set by the caller; the instance bound).
    capacity: usize,
}

impl Engine {
    pub fn new(cfg: EngineConfig) -> Engine {
        let mut latency = Windows::new(cfg.spec);
        let mut ratings = Windows::new(cfg.spec);
        latency.set_ttl(cfg.state_ttl_ms);
        ratings.set_ttl(cfg.state_ttl_ms);
        let mut engine = Engine { cfg, latency, ratings, inputs: Inputs::default(), capacity: usize::MAX };
        engine.limit_ratings();
        engine
    }

    /// Resumes from a checkpoint: its meta and every subject entry. A state
    /// built with another window shape cannot be continued: `Err` says so
    /// and the caller starts afresh.
    pub fn restore(
        cfg: EngineConfig,
        meta: TaskMeta,
        entries: impl IntoIterator<Item = (SubjectKey, SubjectEntry)>,
    ) -> Result<Engine, String> {
        if meta.latency.spec() != cfg.spec || meta.ratings.spec() != cfg.spec {
            return Err(format!(
                "checkpoint windows {:?} differ from the configured {:?}",
                meta.latency.spec(),
                cfg.spec
            ));
        }
        let (mut lat, mut rat) = (Vec::new(), Vec::new());
        for (key, entry) in entries {
            match (key, entry) {
                (SubjectKey::Latency(k), SubjectEntry::Latency(e)) => lat.push((k, e)),
                (SubjectKey::Uncertainty(k), SubjectEntry::Uncertainty(e)) => rat.push((k, e)),
                (key, _) => return Err(format!("subject {key:?} holds an entry of another kind")),
            }
        }
        let latency = Windows::restore(meta.latency, cfg.state_ttl_ms, lat);
        let ratings = Windows::restore(meta.ratings, cfg.state_ttl_ms, rat);
        Ok(Engine { cfg, latency, ratings, inputs: meta.inputs, capacity: usize::MAX })
    }

    /// The task's state besides its subjects.
    pub fn meta(&self) -> TaskMeta {
        TaskMeta {
            latency: self.latency.clock().clone(),
            ratings: self.ratings.clock().clone(),
            inputs: self.inputs.clone(),
        }
    }

    /// Subjects changed or removed since `mark_clean`.
    pub fn changes(&self) -> Changes<'_> {
        let (lp, ld) = self.latency.changes();
        let (rp, rd) = self.ratings.changes();
        let put = lp
            .into_iter()
            .map(|(k, e)| (KeyRef::Latency(k), EntryRef::Latency(e)))
            .chain(rp.into_iter().map(|(k, e)| (KeyRef::Uncertainty(k), EntryRef::Uncertainty(e))))
            .collect();
        let delete = ld.into_iter().map(KeyRef::Latency).chain(rd.into_iter().map(KeyRef::Uncertainty)).collect();
        Changes { put, delete }
    }

    /// Every subject held (a full rewrite).
    pub fn everything(&self) -> Changes<'_> {
        let put = self
            .latency
            .entries()
            .map(|(k, e)| (KeyRef::Latency(k), EntryRef::Latency(e)))
            .chain(self.ratings.entries().map(|(k, e)| (KeyRef::Uncertainty(k), EntryRef::Uncertainty(e))))
            .collect();
        Changes { put, delete: Vec::new() }
    }

    /// The changes were checkpointed.
    pub fn mark_clean(&mut self) {
        self.latency.mark_clean();
        self.ratings.mark_clean();
    }

    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// Subjects held: latency keys (components and endpoints) and
    /// uncertainty keys, with open windows or rule state.
    pub fn subjects(&self) -> usize {
        self.latency.len() + self.ratings.len()
    }

    /// How many subjects this task may hold; inputs that would add one past
    /// it are refused (`Refused::Cardinality`), existing subjects go on.
    pub fn set_capacity(&mut self, capacity: usize) {
        self.capacity = capacity;
    }

    /// Estimated heap bytes of the state.
    pub fn state_bytes(&self) -> usize {
        let lat = |k: &LatencyKey| k.0.capacity() + k.1.as_ref().map_or(0, String::capacity);
        let rat = |k: &RatingKey| k.0.capacity() + k.1.capacity();
        self.latency.heap_bytes(lat) + self.ratings.heap_bytes(rat)
    }

    fn admit(&self, new: usize) -> Result<(), Refused> {
        let held = self.subjects();
        if new > 0 && held.saturating_add(new) > self.capacity {
            return Err(Refused::Cardinality { held });
        }
        Ok(())
    }

    /// Adds one input (`Ok(false)`: a repeated decision, skipped), or says
    /// why not (the caller counts and reports it).
    pub fn ingest(&mut self, input: Input<'_>) -> Result<bool, Refused> {
        match input {
            Input::Latency(s) => {
                if let Some(late) = self.latency.late(s.occurred_at) {
                    return Err(Refused::Late(late));
                }
                let component = LatencyRef(&s.component, None);
                let endpoint = LatencyRef(&s.component, Some(&s.endpoint));
                let new = !self.latency.contains(&component) as usize + !self.latency.contains(&endpoint) as usize;
                if let Err(refused) = self.admit(new) {
                    // Refused, but on time: event time still moves on.
                    self.latency.observe(s.occurred_at);
                    return Err(refused);
                }
                let sample = Sample { latency_ms: s.latency_ms, is_error: s.outcome.is_error() };
                // Both keys share one clock: neither is late if the other is not.
                self.latency.add_by(&component, LatencyRef::owned, s.occurred_at, &sample).map_err(Refused::Late)?;
                self.latency.add_by(&endpoint, LatencyRef::owned, s.occurred_at, &sample).map_err(Refused::Late)?;
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
                if self.inputs.channel_offsets.get(&channel).is_some_and(|last| offset <= *last) {
                    return Ok(false);
                }
                self.inputs.channel_offsets.insert(channel, offset);
                let item = RatingItem::Decision(d.uncertainty_score);
                self.add_rating(&d.project_id, &d.component, d.occurred_at, item, Source::Decisions(channel))
            }
            Input::RoutedLatency(s, channel, offset) => {
                if !self.first_time(Stream::Latency, channel, offset) {
                    return Ok(false);
                }
                let max = self.inputs.latency_inputs.entry(channel).or_insert(s.occurred_at);
                *max = (*max).max(s.occurred_at);
                self.inputs.latency_idle.remove(&channel);
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
    /// is observed for the watermark even when the input is refused).
    fn add_rating(
        &mut self,
        project: &str,
        component: &str,
        t: i64,
        item: RatingItem,
        source: Source,
    ) -> Result<bool, Refused> {
        let key = RatingRef(project, component);
        let owned = |k: &RatingRef<'_>| (k.0.to_string(), k.1.to_string());
        let added = match self.ratings.late(t) {
            Some(late) => Err(Refused::Late(late)),
            None => match self.admit(!self.ratings.contains(&key) as usize) {
                Ok(()) => self.ratings.add_by(&key, owned, t, &item).map_err(Refused::Late),
                Err(refused) => {
                    self.ratings.observe(t);
                    Err(refused)
                }
            },
        };
        self.observe(source, t);
        added.map(|()| true)
    }

    /// Records `offset` of a routed channel; false when already ingested.
    fn first_time(&mut self, stream: Stream, channel: i32, offset: i64) -> bool {
        let last = self.inputs.routed_offsets.entry((stream, channel)).or_insert(i64::MIN);
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
            .inputs
            .latency_inputs
            .iter()
            .filter(|(c, _)| !self.inputs.latency_idle.contains(c))
            .map(|(_, t)| t - lateness)
            .min();
        self.latency.limit_watermark(limit);
    }

    /// Declares a routed latency channel idle (or active again).
    pub fn set_latency_idle(&mut self, channel: i32, idle: bool) {
        let changed =
            if idle { self.inputs.latency_idle.insert(channel) } else { self.inputs.latency_idle.remove(&channel) };
        if changed {
            self.limit_latency();
        }
    }

    fn observe(&mut self, source: Source, t: i64) {
        let max = self.inputs.rating_inputs.entry(source).or_insert(t);
        *max = (*max).max(t);
        self.inputs.idle.remove(&source);
        self.limit_ratings();
    }

    /// Declares an input of the ratings windows idle (or active again).
    pub fn set_idle(&mut self, source: Source, idle: bool) {
        let changed = if idle { self.inputs.idle.insert(source) } else { self.inputs.idle.remove(&source) };
        if changed {
            self.limit_ratings();
        }
    }

    /// Ratings watermark = the slowest active input's; an active input with
    /// no event yet holds everything.
    fn limit_ratings(&mut self) {
        let lateness = self.cfg.spec.allowed_lateness_ms;
        let expected = (0..self.cfg.decision_channels).map(Source::Decisions).chain([Source::Feedback]);
        let inputs: BTreeSet<Source> = expected.chain(self.inputs.rating_inputs.keys().copied()).collect();
        let limit = inputs
            .into_iter()
            .filter(|s| !self.inputs.idle.contains(s))
            .map(|s| self.inputs.rating_inputs.get(&s).map_or(i64::MIN / 2, |t| t - lateness))
            .min();
        self.ratings.limit_watermark(limit);
    }

    /// The stream's inputs have been silent for `idle_ms` of wall clock:
    /// move its watermark as far, so its windows still close.
    pub fn advance_idle(&mut self, stream: Stream, idle_ms: i64) {
        match stream {
            Stream::Latency => self.latency.advance_idle(idle_ms),
            Stream::Ratings => self.ratings.advance_idle(idle_ms),
        }
    }

    /// The end of the last window closed of `stream`, if any.
    pub fn closed_through(&self, stream: Stream) -> Option<i64> {
        match stream {
            Stream::Latency => self.latency.closed_through(),
            Stream::Ratings => self.ratings.closed_through(),
        }
    }

    pub fn watermark(&self, stream: Stream) -> Option<i64> {
        match stream {
            Stream::Latency => self.latency.watermark(),
            Stream::Ratings => self.ratings.watermark(),
        }
    }

    /// Closes every window behind the watermarks and evaluates the rules:
    /// window stats for every key, then transitions, latency before ratings;
    /// then closes what subjects quiet for the time to live left open.
    pub fn close(&mut self, out: &mut Vec<Event>) -> Closing {
        let first = out.len();
        let closing = self.close_into(out);
        self.cfg.deployment.stamp(&mut out[first..]);
        closing
    }

    fn close_into(&mut self, out: &mut Vec<Event>) -> Closing {
        let mut closing = Closing::default();
        let cfg = &self.cfg;
        self.latency.close(|(component, endpoint), start, end, agg, rules| {
            let stats = agg.stats();
            let window = WindowRef { start, end };
            let subject = super::subject::latency(component, endpoint.as_deref());
            out.push(window_stats(cfg, &subject, component, endpoint.clone(), None, window, |w| {
                w.latency = Some(stats.clone())
            }));
            if endpoint.is_some() {
                closing.endpoint_windows += 1;
                return;
            }
            closing.component_windows += 1;
            if agg.count >= cfg.min_samples {
                out.extend(rules.evaluate(&cfg.thresholds, &cfg.source, component, window, &stats));
            }
        });
        self.ratings.close(|(project, component), start, end, agg, rules| {
            let stats = agg.stats();
            let window = WindowRef { start, end };
            let subject = super::subject::uncertainty(project, component);
            out.push(window_stats(cfg, &subject, component, None, Some(project.clone()), window, |w| {
                w.uncertainty = Some(stats.clone())
            }));
            closing.uncertainty_windows += 1;
            if agg.ratings >= cfg.min_ratings {
                out.extend(rules.evaluate(&cfg.thresholds, &cfg.source, project, component, window, stats.uncertainty));
            }
        });
        let (th, source, ttl) = (&cfg.thresholds, &cfg.source, cfg.state_ttl_ms);
        for x in self.latency.take_expired() {
            closing.expired_subjects += 1;
            if x.key.1.is_none() {
                out.extend(x.rules.expire(th, source, &x.key.0, x.at, ttl));
            }
        }
        for x in self.ratings.take_expired() {
            closing.expired_subjects += 1;
            out.extend(x.rules.expire(th, source, &x.key.0, &x.key.1, x.at, ttl));
        }
        closing
    }

    /// Components currently DEGRADED and alerts currently firing, for gauges.
    pub fn states(&self) -> (usize, usize) {
        let (mut degraded, mut firing) = (0, 0);
        for (_, r) in self.latency.rules() {
            degraded += r.degradation.active as usize;
            firing += [r.p95_warning, r.p95_critical, r.error_rate_warning].iter().filter(|h| h.active).count();
        }
        for (_, r) in self.ratings.rules() {
            firing += r.warning.active as usize + r.critical.active as usize;
        }
        (degraded, firing)
    }

    /// Forgets every event after `limit` (wall clock plus the allowed skew):
    /// a state restored from before such events were refused must not keep
    /// a watermark from the future. Returns the panes dropped.
    pub fn forget_future(&mut self, limit: i64) -> usize {
        let dropped = self.latency.forget_after(limit) + self.ratings.forget_after(limit);
        let mut changed = false;
        for t in self.inputs.latency_inputs.values_mut() {
            *t = (*t).min(limit);
        }
        self.limit_latency();
        for t in self.inputs.rating_inputs.values_mut() {
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
        self.latency.active_keys() + self.ratings.active_keys()
    }
}

fn window_stats(
    cfg: &EngineConfig,
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
        source: cfg.source.clone(),
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

#[cfg(test)]
mod tests;
