//! The materializer stage on decoded events, with an in-memory store (no
//! database) and librdkafka's mock cluster for its promotion events.

use super::*;
use crate::codec::{Catalog, Codec, OutputFormat};
use crate::config::{KafkaConfig, KafkaProperties};
use crate::domain::Limits;
use crate::pipeline::batch::Reason;
use crate::synth::{Generator, Kind, SynthConfig};
use crate::topics::TopicCatalog;
use crate::topics::Topics;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

const PREFIX: &str = "t.";

/// Rows and offsets, visible only once committed; refuses `reject` offsets
/// and fails the next `fail_commits` commits.
#[derive(Default)]
struct Memory {
    rows: Mutex<BTreeMap<(Tp, i64), String>>,
    offsets: Mutex<HashMap<(String, i32), i64>>,
    fail_commits: AtomicU32,
    reject: Vec<i64>,
}

#[derive(Clone, Default)]
struct MemoryStore(Arc<Memory>);

type Staged = Vec<((Tp, i64), String)>;

impl Store for MemoryStore {
    type Prepared = (Staged, Vec<(Tp, i64)>);

    async fn stored_offsets(&self, _: &str, partitions: &[(String, i32)]) -> Result<HashMap<(String, i32), i64>> {
        let offsets = self.0.offsets.lock().unwrap();
        Ok(partitions.iter().filter_map(|k| offsets.get(k).map(|o| (k.clone(), *o))).collect())
    }

    async fn ping(&self) -> Result<()> {
        Ok(())
    }

    async fn write(&self, _: &str, parts: &[&Part<'_>]) -> Result<(Self::Prepared, Vec<Reject>)> {
        let (mut rows, mut offsets, mut rejects) = (Vec::new(), Vec::new(), Vec::new());
        for p in parts {
            for r in &p.records {
                if self.0.reject.contains(&r.offset) {
                    let reason = Reason { class: "reused_id".into(), message: "event id reused".into() };
                    rejects.push(Reject { tp: p.tp.clone(), offset: r.offset, reason });
                } else {
                    rows.push(((p.tp.clone(), r.offset), r.event.record_name().to_string()));
                }
            }
            offsets.push((p.tp.clone(), p.next_offset));
        }
        Ok(((rows, offsets), rejects))
    }

    async fn commit(&self, _: &str, (rows, offsets): Self::Prepared, _: &[&Part<'_>]) -> Result<Committed> {
        if self.0.fail_commits.load(Ordering::SeqCst) > 0 {
            self.0.fail_commits.fetch_sub(1, Ordering::SeqCst);
            return Err(Error::Unavailable("store down".into()));
        }
        let records = rows.len() as u64;
        self.0.rows.lock().unwrap().extend(rows);
        let mut stored = self.0.offsets.lock().unwrap();
        for (tp, off) in offsets {
            stored.insert((tp.topic, tp.partition), off);
        }
        Ok(Committed { records, changed: records })
    }
}

struct Fixture {
    _mock: MockCluster<'static, DefaultProducerContext>,
    rt: tokio::runtime::Runtime,
}

impl Fixture {
    fn new() -> Fixture {
        let mock = MockCluster::new(1).unwrap();
        mock.create_topic("t.udo.promotions.v1", 1, 1).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        Fixture { _mock: mock, rt }
    }

    fn stage(&self, store: MemoryStore, window: usize) -> MaterializeStage<MemoryStore> {
        let _guard = self.rt.enter();
        let limits = Limits { embedding_dim: 8, max_record_bytes: 1 << 20 };
        let codec = Codec::new(Arc::new(Catalog::builtin()), limits, None, OutputFormat::Avro);
        let decoder = Decoder::new(codec, &TopicCatalog::builtin(), PREFIX);
        let props: KafkaProperties = [("log_level", "3")].into_iter().collect();
        let kafka = KafkaConfig::new(&self._mock.bootstrap_servers(), props);
        let promo = PromotionConfig { window, ..PromotionConfig::default() };
        let c = Common::new(
            "materialize-test",
            "memory",
            "group".into(),
            decoder,
            &Topics::with_prefix(PREFIX),
            &kafka,
            promo,
            Default::default(),
            Readiness::default(),
        )
        .unwrap();
        MaterializeStage::new(c, store)
    }
}

fn batch(partition: i32, offsets: std::ops::Range<i64>) -> Batch<'static> {
    let mut g = Generator::new(SynthConfig::new(8), partition as u64, 1_700_000_000_000);
    let events = offsets.map(|o| (o, g.next(Kind::Latency, 1_700_000_000_000 + o))).collect();
    Batch::from_events(vec![(Tp::new("t.udo.latency.v1", partition), events)])
}

#[test]
fn rows_and_offsets_become_durable_together_at_commit() {
    let f = Fixture::new();
    let store = MemoryStore::default();
    let mut stage = f.stage(store.clone(), 100);
    let tp = Tp::new("t.udo.latency.v1", 0);
    assert_eq!(stage.assigned(std::slice::from_ref(&tp)).unwrap(), vec![(tp.clone(), 0)], "a new store starts at 0");
    let b = batch(0, 0..10);
    assert!(stage.write(&b).unwrap().is_empty());
    assert!(store.0.rows.lock().unwrap().is_empty(), "nothing visible before the commit");
    assert_eq!(stage.commit(&b).unwrap(), vec![(tp.clone(), 10)]);
    assert_eq!(store.0.rows.lock().unwrap().len(), 10);
    assert_eq!(stage.assigned(std::slice::from_ref(&tp)).unwrap(), vec![(tp, 10)], "resumes where the store is");
}

#[test]
fn a_failed_commit_leaves_nothing_and_the_retry_counts_as_a_failed_first_attempt() {
    let f = Fixture::new();
    let store = MemoryStore::default();
    store.0.fail_commits.store(1, Ordering::SeqCst);
    let mut stage = f.stage(store.clone(), 4);
    let b = batch(0, 0..10);
    stage.write(&b).unwrap();
    assert!(stage.commit(&b).is_err());
    stage.abort();
    assert!(store.0.rows.lock().unwrap().is_empty());
    stage.write(&b).unwrap();
    stage.commit(&b).unwrap();
    assert_eq!(store.0.rows.lock().unwrap().len(), 10, "the retry wrote every record once");
    assert!(stage.c.promotion.success_ratio() < 1.0, "the retried batch was not a first-attempt success");
}

#[test]
fn store_rejects_go_back_to_the_runner_and_the_offset_still_moves_past_them() {
    let f = Fixture::new();
    let store = MemoryStore(Arc::new(Memory { reject: vec![3, 7], ..Memory::default() }));
    let mut stage = f.stage(store.clone(), 100);
    let b = batch(2, 0..10);
    let rejects = stage.write(&b).unwrap();
    assert_eq!(rejects.iter().map(|r| r.offset).collect::<Vec<_>>(), vec![3, 7]);
    assert_eq!(stage.commit(&b).unwrap(), vec![(Tp::new("t.udo.latency.v1", 2), 10)]);
    assert_eq!(store.0.rows.lock().unwrap().len(), 8);
}

#[test]
fn a_full_window_of_first_attempt_successes_while_caught_up_promotes_the_store() {
    let f = Fixture::new();
    let mut stage = f.stage(MemoryStore::default(), 3);
    for i in 0..3 {
        let b = batch(0, i * 10..(i + 1) * 10);
        stage.write(&b).unwrap();
        stage.commit(&b).unwrap();
    }
    assert_eq!(stage.c.promotion.role(), StoreRole::Primary);
    assert_eq!(stage.c.outputs.pending(), 1, "one promotion event sent");
    let _guard = f.rt.enter();
    stage.tick().unwrap();
    assert_eq!(stage.c.outputs.pending(), 0, "acknowledged by the broker at the tick");
}
