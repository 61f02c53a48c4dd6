//! The analyzer stage on decoded events, with checkpoints in memory (no
//! database) and librdkafka's mock cluster taking its outputs.

use super::*;
use crate::codec::{Catalog, Codec, OutputFormat};
use crate::config::{KafkaConfig, KafkaProperties};
use crate::domain::Limits;
use crate::synth::{Generator, Kind as SynthKind, SynthConfig};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use std::sync::{Arc, Mutex};

const PREFIX: &str = "t.";
const T0: i64 = 1_700_000_000_000;

/// A task's stored state: meta, offsets and the latest entry per subject.
#[derive(Clone, Default, Debug, PartialEq)]
struct Stored {
    meta: Vec<u8>,
    offsets: BTreeMap<String, i64>,
    config: String,
    entries: BTreeMap<Vec<u8>, Vec<u8>>,
}

#[derive(Clone, Default)]
struct Memory {
    saved: Arc<Mutex<BTreeMap<i32, Stored>>>,
    down: Arc<std::sync::atomic::AtomicBool>,
}

impl Checkpoints for Memory {
    fn load(&mut self, tasks: &[i32]) -> Result<Vec<Restored>> {
        let saved = self.saved.lock().unwrap();
        Ok(tasks
            .iter()
            .filter_map(|t| {
                let s = saved.get(t)?.clone();
                let entries = s.entries.into_iter().collect();
                Some(Restored { task: *t, meta: s.meta, offsets: s.offsets, config: s.config, entries })
            })
            .collect())
    }

    fn save(&mut self, checkpoints: &[Checkpoint]) -> Result<()> {
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(Error::Unavailable("checkpoint store down".into()));
        }
        let mut saved = self.saved.lock().unwrap();
        for c in checkpoints {
            let s = saved.entry(c.task).or_default();
            (s.meta, s.offsets, s.config) = (c.meta.clone(), c.offsets.clone(), c.config.clone());
            for k in &c.delete {
                s.entries.remove(k);
            }
            s.entries.extend(c.put.iter().cloned());
        }
        Ok(())
    }
}

struct Fixture {
    mock: MockCluster<'static, DefaultProducerContext>,
    rt: tokio::runtime::Runtime,
}

impl Fixture {
    fn new() -> Fixture {
        let mock = MockCluster::new(1).unwrap();
        for t in ["windows", "alerts", "degradations", "analyze.decisions"] {
            mock.create_topic(&format!("{PREFIX}udo.{t}.v1"), 1, 1).unwrap();
        }
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        Fixture { mock, rt }
    }

    fn stage(&self, store: Memory) -> AnalyzeStage<Memory> {
        self.stage_with(store, |_| {})
    }

    fn stage_with(&self, store: Memory, tune: impl FnOnce(&mut AnalyzeSettings)) -> AnalyzeStage<Memory> {
        let _guard = self.rt.enter();
        let limits = Limits { embedding_dim: 8, max_record_bytes: 1 << 20 };
        let codec = Codec::new(Arc::new(Catalog::builtin()), limits, None, OutputFormat::Avro);
        let catalog = TopicCatalog::builtin();
        let decoder = Decoder::new(codec, &catalog, PREFIX);
        let props: KafkaProperties = [("log_level", "3")].into_iter().collect();
        let kafka = KafkaConfig::new(&self.mock.bootstrap_servers(), props);
        let mut settings = AnalyzeSettings { checkpoint_interval: Duration::ZERO, ..AnalyzeSettings::default() };
        tune(&mut settings);
        let topics = Topics::with_prefix(PREFIX);
        let outputs = Outputs::new(&kafka, PIPELINE, |_| {}).unwrap();
        let mut stage =
            AnalyzeStage::new(settings, decoder, &catalog, topics.clone(), outputs, store, Readiness::default())
                .unwrap();
        let parts: Vec<Tp> = topics.analyze_inputs().into_iter().map(|t| Tp::new(t, 0)).collect();
        stage.assigned(&parts).unwrap();
        stage
    }
}

/// Latency samples of task 0 at `T0 + at` for each `at` (ms), offsets from
/// `first`, of components that task 0 owns (Kafka's partitioner puts them
/// on partition 0, as the generator's producer would).
fn latency(first: i64, at: &[i64]) -> Batch<'static> {
    task0(SynthKind::Latency, "t.udo.latency.v1", first, at)
}

/// Feedback ratings of task 0, as [`latency`].
fn ratings(first: i64, at: &[i64]) -> Batch<'static> {
    task0(SynthKind::Feedback, "t.udo.feedback.v1", first, at)
}

fn task0(kind: SynthKind, topic: &str, first: i64, at: &[i64]) -> Batch<'static> {
    let mut g = Generator::new(SynthConfig::new(8), first as u64, T0);
    let events = at
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let mut e = g.next(kind, T0 + t);
            match &mut e {
                Event::LatencySample(s) => s.component = owned_by(0, &s.component),
                Event::FeedbackRating(r) => r.component = owned_by(0, &r.component),
                _ => {}
            }
            (first + i as i64, e)
        })
        .collect();
    Batch::from_events(vec![(Tp::new(topic, 0), events)])
}

/// `name`, suffixed until partition `p` of six owns it.
fn owned_by(p: i32, name: &str) -> String {
    (0..).map(|i| format!("{name}-{i}")).find(|c| partition_of(c.as_bytes(), 6) == p).unwrap()
}

#[test]
fn a_sample_on_another_tasks_partition_is_routed_to_its_owner() {
    let f = Fixture::new();
    let _guard = f.rt.enter();
    let mut stage = f.stage(Memory::default());
    let mut g = Generator::new(SynthConfig::new(8), 1, T0);
    let mut e = g.next(SynthKind::Latency, T0);
    let Event::LatencySample(s) = &mut e else { unreachable!() };
    s.component = owned_by(4, "elsewhere");
    let batch = Batch::from_events(vec![(Tp::new("t.udo.latency.v1", 0), vec![(7, e)])]);
    assert!(stage.write(&batch).unwrap().is_empty());
    let task = &stage.tasks[&0];
    assert_eq!(task.engine.active_keys(), 0, "task 0 does not window a component it does not own");
    assert_eq!(task.next["t.udo.latency.v1"], 8, "but its offset moves past the routed record");
}

fn spread(n: i64, step: i64) -> Vec<i64> {
    (0..n).map(|i| i * step).collect()
}

#[test]
fn a_retried_batch_is_not_ingested_twice() {
    let f = Fixture::new();
    let _guard = f.rt.enter();
    let (once, twice) = (Memory::default(), Memory::default());
    let mut a = f.stage(once.clone());
    let mut b = f.stage(twice.clone());
    let first = latency(0, &spread(500, 1_000));
    let second = latency(500, &spread(500, 1_000).iter().map(|t| t + 500_000).collect::<Vec<_>>());
    for batch in [&first, &second] {
        a.write(batch).unwrap();
        a.commit(batch).unwrap();
        // The runner retries a batch whose DLQ write or commit failed.
        b.write(batch).unwrap();
        b.abort();
        b.write(batch).unwrap();
        b.commit(batch).unwrap();
    }
    a.finish();
    b.finish();
    let (once, twice) = (once.saved.lock().unwrap(), twice.saved.lock().unwrap());
    assert_eq!(once[&0].offsets, BTreeMap::from([("t.udo.latency.v1".to_string(), 1000)]));
    assert_eq!(once[&0].meta, twice[&0].meta, "the retried run holds the same engine state");
    assert_eq!(once[&0].entries, twice[&0].entries, "the retried run holds the same subjects");
    assert_eq!(once[&0].offsets, twice[&0].offsets);
}

#[test]
fn an_event_behind_the_watermark_is_a_late_reject() {
    let f = Fixture::new();
    let _guard = f.rt.enter();
    let mut stage = f.stage(Memory::default());
    let on_time = latency(0, &spread(100, 10_000)); // 0 .. 990 s
    assert!(stage.write(&on_time).unwrap().is_empty());
    stage.commit(&on_time).unwrap();
    let late = latency(100, &[0]);
    let rejects = stage.write(&late).unwrap();
    assert_eq!(rejects.len(), 1);
    assert_eq!((rejects[0].offset, rejects[0].reason.class.as_str()), (100, "late"));
}

#[test]
fn a_checkpoint_covers_what_was_ingested_and_a_failed_one_is_an_error_to_retry() {
    let f = Fixture::new();
    let _guard = f.rt.enter();
    let store = Memory::default();
    let mut stage = f.stage(store.clone());
    let b = latency(0, &spread(50, 1_000));
    stage.write(&b).unwrap();
    stage.commit(&b).unwrap();
    store.down.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(stage.tick().is_err(), "a checkpoint the store refused is the runner's to retry");
    assert!(store.saved.lock().unwrap().is_empty());
    store.down.store(false, std::sync::atomic::Ordering::SeqCst);
    let offsets = stage.tick().unwrap();
    assert!(offsets.contains(&(Tp::new("t.udo.latency.v1", 0), 50)), "{offsets:?}");
    assert_eq!(store.saved.lock().unwrap()[&0].offsets["t.udo.latency.v1"], 50);
}

#[test]
fn decision_channels_going_idle_close_the_ratings_windows_they_held_at_once() {
    let f = Fixture::new();
    let _guard = f.rt.enter();
    let idle = Duration::from_millis(300);
    let mut stage = f.stage_with(Memory::default(), |s| s.idle_timeout = idle);
    // The decision channels have sent nothing since the assignment: each
    // holds the ratings watermark until it has been silent for `idle`.
    std::thread::sleep(idle);
    let b = ratings(0, &spread(600, 1_000)); // 10 min of event time
    assert!(stage.write(&b).unwrap().is_empty());
    stage.commit(&b).unwrap();
    let closed = |s: &AnalyzeStage<Memory>| s.tasks[&0].engine.closed_through(Stream::Ratings);
    assert_eq!(closed(&stage), None, "held by the decision channels");
    // The feedback just spoke, so no idle advance; but the silent channels
    // are idle now and the windows behind the feedback's watermark close at
    // this tick, not when the next record or the feedback's own timeout comes.
    stage.tick().unwrap();
    let through = closed(&stage).expect("the ratings windows closed at the tick");
    assert!(through >= T0 + 500_000, "closed through {} s", (through - T0) / 1000);
}
