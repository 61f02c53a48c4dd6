//! The runner's lifecycle without a broker: librdkafka's in-process mock
//! cluster serves the group, and a recording stage fails when told to.

use super::*;
use crate::codec::{Catalog, Codec, OutputFormat};
use crate::config::{KafkaConfig, KafkaProperties};
use crate::domain::Limits;
use crate::synth::{Generator, Kind, SynthConfig};
use crate::topics::TopicCatalog;
use rdkafka::ClientConfig;
use rdkafka::consumer::BaseConsumer;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

const PREFIX: &str = "t.";
const INPUT: &str = "t.udo.latency.v1";
const DLQ: &str = "t.udo.dlq.v1";
const PARTITIONS: i32 = 4;

fn decoder() -> Decoder {
    let limits = Limits { embedding_dim: 8, max_record_bytes: 1 << 20 };
    let codec = Codec::new(Arc::new(Catalog::builtin()), limits, None, OutputFormat::Avro);
    Decoder::new(codec, &TopicCatalog::builtin(), PREFIX)
}

struct Cluster {
    mock: MockCluster<'static, DefaultProducerContext>,
}

impl Cluster {
    fn new() -> Cluster {
        let mock = MockCluster::new(1).expect("mock cluster");
        mock.create_topic(INPUT, PARTITIONS, 1).expect("input topic");
        mock.create_topic(DLQ, 1, 1).expect("dlq topic");
        Cluster { mock }
    }

    fn kafka(&self, extra: &[(&str, &str)]) -> KafkaConfig {
        // Short group timeouts keep rebalances quick; the DLQ producer gives
        // up on a delivery after 1.5 s (so an outage shows as an error).
        let mut props = vec![
            ("session.timeout.ms", "6000"),
            ("heartbeat.interval.ms", "500"),
            ("max.poll.interval.ms", "7000"),
            ("message.timeout.ms", "1500"),
            ("log_level", "3"),
        ];
        props.extend_from_slice(extra);
        KafkaConfig::new(&self.mock.bootstrap_servers(), props.into_iter().collect::<KafkaProperties>())
    }

    /// `n` records round-robin over the partitions; `bad` offsets (global
    /// index) carry bytes that do not decode.
    fn produce(&self, n: usize, bad: &[usize]) {
        let d = decoder();
        let producer: ThreadedProducer<DefaultProducerContext> =
            ClientConfig::new().set("bootstrap.servers", self.mock.bootstrap_servers()).create().expect("producer");
        let mut generator = Generator::new(SynthConfig::new(8), 1, 1_700_000_000_000);
        for i in 0..n {
            let payload = if bad.contains(&i) {
                b"garbage".to_vec()
            } else {
                let e = generator.next(Kind::Latency, 1_700_000_000_000 + i as i64);
                d.encode(INPUT, &e).unwrap()
            };
            let partition = (i % PARTITIONS as usize) as i32;
            producer.send(BaseRecord::<(), _>::to(INPUT).payload(&payload).partition(partition)).unwrap();
        }
        producer.flush(Duration::from_secs(10)).unwrap();
    }

    /// The group's committed offset per partition.
    fn committed(&self, group: &str) -> BTreeMap<i32, i64> {
        let c: BaseConsumer = self
            .kafka(&[])
            .client(|c| {
                c.set("group.id", group);
            })
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            tpl.add_partition(INPUT, p);
        }
        let got = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
        got.elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => Some((e.partition(), o)),
                _ => None,
            })
            .collect()
    }

    fn dlq_count(&self) -> usize {
        let c: BaseConsumer = self
            .kafka(&[])
            .client(|c| {
                c.set("group.id", "dlq-reader");
            })
            .create()
            .unwrap();
        let (_, hi) = c.fetch_watermarks(DLQ, 0, Duration::from_secs(10)).unwrap();
        hi as usize
    }
}

/// What the recording stage saw.
#[derive(Default)]
struct Log {
    assigned: usize,
    revoked: Vec<Tp>,
    writes: usize,
    aborts: usize,
    /// (partition, offset) of every record committed, in order.
    committed: Vec<(i32, i64)>,
    rejected: Vec<(i32, i64)>,
    /// Partitions assigned and not revoked since.
    owned: BTreeSet<i32>,
    /// Records written while their partition was not the stage's.
    foreign: Vec<(i32, i64)>,
}

/// When the stage's commit fails.
#[derive(Clone)]
enum Fail {
    Never,
    /// The first `n` commits fail with an outage.
    Times(Arc<AtomicU32>),
    /// Commits fail with an outage while the flag is set.
    While(Arc<AtomicBool>),
    /// A bug.
    Internal,
}

struct Recording {
    log: Arc<Mutex<Log>>,
    fail: Fail,
    /// How long each write takes.
    slow: Duration,
}

impl Stage for Recording {
    fn assigned(&mut self, parts: &[Tp]) -> Result<Offsets> {
        let mut log = self.log.lock().unwrap();
        log.assigned += 1;
        log.owned.extend(parts.iter().map(|tp| tp.partition));
        Ok(Vec::new())
    }

    fn revoked(&mut self, parts: &[Tp]) -> Offsets {
        let mut log = self.log.lock().unwrap();
        log.revoked.extend(parts.iter().cloned());
        for tp in parts {
            log.owned.remove(&tp.partition);
        }
        Vec::new()
    }

    fn write(&mut self, batch: &Batch<'_>) -> Result<Vec<Reject>> {
        std::thread::sleep(self.slow);
        let mut log = self.log.lock().unwrap();
        log.writes += 1;
        for p in &batch.parts {
            if !log.owned.contains(&p.tp.partition) {
                let foreign: Vec<(i32, i64)> = p.records.iter().map(|r| (p.tp.partition, r.offset)).collect();
                log.foreign.extend(foreign);
            }
        }
        Ok(Vec::new())
    }

    fn commit(&mut self, batch: &Batch<'_>) -> Result<Offsets> {
        let outage = || Err(Error::Unavailable("store down".into()));
        match &self.fail {
            Fail::Never => {}
            Fail::Times(n) => {
                if n.load(Ordering::SeqCst) > 0 {
                    n.fetch_sub(1, Ordering::SeqCst);
                    return outage();
                }
            }
            Fail::While(flag) => {
                if flag.load(Ordering::SeqCst) {
                    return outage();
                }
            }
            Fail::Internal => return Err(Error::Internal("broken invariant".into())),
        }
        let mut log = self.log.lock().unwrap();
        for p in &batch.parts {
            log.committed.extend(p.records.iter().map(|r| (p.tp.partition, r.offset)));
        }
        log.rejected.extend(batch.rejects.iter().map(|r| (r.tp.partition, r.offset)));
        Ok(batch.next_offsets())
    }

    fn abort(&mut self) {
        self.log.lock().unwrap().aborts += 1;
    }
}

/// A runner in the background.
struct Running {
    trigger: crate::shutdown::ShutdownTrigger,
    handle: std::thread::JoinHandle<Result<()>>,
    log: Arc<Mutex<Log>>,
}

impl Running {
    fn start(kafka: KafkaConfig, group: &str, fail: Fail) -> Running {
        Running::start_slow(kafka, group, fail, Duration::ZERO)
    }

    fn start_slow(kafka: KafkaConfig, group: &str, fail: Fail, slow: Duration) -> Running {
        let log = Arc::new(Mutex::new(Log::default()));
        let stage = Recording { log: log.clone(), fail, slow };
        let cfg = RunnerConfig {
            pipeline: "test",
            kafka,
            group: group.into(),
            topics: vec![INPUT.into()],
            assignor: Assignor::CooperativeSticky,
            decoder: decoder(),
            dlq_topic: DLQ.into(),
            batch_size: 50,
            linger: Duration::from_millis(20),
            retry: RetryPolicy::new(Duration::from_millis(50), Duration::from_millis(400)),
        };
        let (shutdown, trigger) = Shutdown::manual();
        let handle = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
            let _guard = rt.enter();
            run(cfg, stage, crate::pipeline::commit::GroupCommit::new("test"), shutdown, Readiness::default())
        });
        Running { trigger, handle, log }
    }

    /// Waits until `done(log)` holds (or panics after `secs`).
    fn until(&self, secs: u64, what: &str, done: impl Fn(&Log) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !done(&self.log.lock().unwrap()) {
            assert!(!self.handle.is_finished(), "the runner stopped while waiting for {what}");
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(self) -> (Result<()>, Arc<Mutex<Log>>) {
        self.trigger.trigger();
        (self.handle.join().expect("runner thread"), self.log)
    }
}

/// Waits until the two members together have committed `n` distinct
/// records (a replay counts once), then stops both.
fn finish_two(first: Running, second: Running, n: usize) -> (Log, Log) {
    let distinct = || {
        let (l1, l2) = (first.log.lock().unwrap(), second.log.lock().unwrap());
        l1.committed.iter().chain(&l2.committed).collect::<BTreeSet<_>>().len()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while distinct() < n {
        assert!(Instant::now() < deadline, "records missing: {} of {n}", distinct());
        std::thread::sleep(Duration::from_millis(50));
    }
    let (r1, log1) = first.stop();
    let (r2, log2) = second.stop();
    r1.unwrap();
    r2.unwrap();
    let take = |log: Arc<Mutex<Log>>| std::mem::take(&mut *log.lock().unwrap());
    (take(log1), take(log2))
}

fn all_offsets(n: usize) -> BTreeSet<(i32, i64)> {
    (0..n).map(|i| ((i % PARTITIONS as usize) as i32, (i / PARTITIONS as usize) as i64)).collect()
}

fn exactly_once(committed: &[(i32, i64)], n: usize, rejected: &[(i32, i64)]) {
    let set: BTreeSet<(i32, i64)> = committed.iter().copied().collect();
    assert_eq!(set.len(), committed.len(), "a record was committed twice");
    let mut want = all_offsets(n);
    for r in rejected {
        want.remove(r);
    }
    assert_eq!(set, want, "every record committed exactly once");
}

#[test]
fn a_failing_commit_is_retried_with_the_same_batch_until_it_succeeds() {
    let cluster = Cluster::new();
    cluster.produce(400, &[]);
    let run = Running::start(cluster.kafka(&[]), "retry", Fail::Times(Arc::new(AtomicU32::new(3))));
    run.until(30, "400 records", |l| l.committed.len() >= 400);
    assert!(run.log.lock().unwrap().revoked.is_empty(), "no rebalance");
    let (result, log) = run.stop();
    result.unwrap();
    let log = log.lock().unwrap();
    exactly_once(&log.committed, 400, &[]);
    assert_eq!(log.aborts, 3, "each failed attempt aborted");
    assert!(log.writes >= 3 + 8, "the failed batch was written again: {} writes", log.writes);
    assert_eq!(cluster.committed("retry"), (0..PARTITIONS).map(|p| (p, 100)).collect());
}

#[test]
fn a_dead_letter_gates_the_offset_of_its_record() {
    let cluster = Cluster::new();
    cluster.produce(40, &[5, 17]); // partition 1 offset 1, partition 1 offset 4
    // The broker refuses every produce for a while: the DLQ write fails.
    let refusals = vec![RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION; 400];
    cluster.mock.request_errors(RDKafkaApiKey::Produce, &refusals);
    let run = Running::start(cluster.kafka(&[]), "gate", Fail::Never);
    run.until(30, "a failed DLQ write", |l| l.aborts >= 1 && l.assigned >= 1);
    std::thread::sleep(Duration::from_secs(2));
    {
        let log = run.log.lock().unwrap();
        assert!(
            !log.committed.iter().any(|(p, _)| *p == 1),
            "partition 1 committed past a record not yet dead-lettered: {:?}",
            log.committed
        );
    }
    assert!(cluster.committed("gate").get(&1).is_none_or(|o| *o <= 1), "offset stored past the reject");
    cluster.mock.clear_request_errors(RDKafkaApiKey::Produce);
    run.until(30, "the rest", |l| l.committed.len() >= 38);
    let (result, log) = run.stop();
    result.unwrap();
    let log = log.lock().unwrap();
    exactly_once(&log.committed, 40, &[(1, 1), (1, 4)]);
    assert_eq!(cluster.dlq_count(), 2, "each reject dead-lettered once, retries included");
    assert_eq!(cluster.committed("gate")[&1], 10);
}

#[test]
fn a_revoke_while_retrying_drops_the_revoked_partitions_from_the_batch() {
    let cluster = Cluster::new();
    cluster.produce(400, &[]);
    let outage = Arc::new(AtomicBool::new(true));
    let first = Running::start(cluster.kafka(&[]), "revoke", Fail::While(outage.clone()));
    first.until(30, "a failing batch", |l| l.aborts >= 2);
    // A second member joins while the first waits out its retries (and polls).
    let second = Running::start(cluster.kafka(&[]), "revoke", Fail::Never);
    first.until(60, "partitions revoked from the first member", |l| !l.revoked.is_empty());
    outage.store(false, Ordering::SeqCst);
    let (log1, log2) = finish_two(first, second, 400);
    let mut all = log1.committed.clone();
    all.extend(&log2.committed);
    exactly_once(&all, 400, &[]);
    assert!(!log2.committed.is_empty(), "the second member took over partitions");
}

#[test]
fn a_rebalance_under_load_hands_each_record_over_once() {
    // Full batches and a slow stage (the mock cluster takes ~5 s to
    // rebalance; 4000 records at 100 ms per 50 take 8 s), so the revoke
    // comes while the first member is busy. No record may reach a stage
    // that does not own its partition, and none may be lost. This stage
    // keeps no offsets, so the next owner starts from the group's commit:
    // the runner commits what it stored on the revoke, but the group can
    // refuse that commit once it has moved on, and then the next owner
    // replays (at-least-once; a real stage resumes from its own offsets).
    let cluster = Cluster::new();
    cluster.produce(4000, &[]);
    let slow = Duration::from_millis(100);
    let first = Running::start_slow(cluster.kafka(&[]), "handover", Fail::Never, slow);
    first.until(30, "the first batches", |l| l.committed.len() >= 200);
    let second = Running::start_slow(cluster.kafka(&[]), "handover", Fail::Never, slow);
    first.until(60, "partitions revoked from the first member", |l| !l.revoked.is_empty());
    let (log1, log2) = finish_two(first, second, 4000);
    assert!(log1.foreign.is_empty(), "written after their partition was revoked: {:?}", log1.foreign);
    assert!(log2.foreign.is_empty(), "written while not assigned: {:?}", log2.foreign);
    let all: BTreeSet<(i32, i64)> = log1.committed.iter().chain(&log2.committed).copied().collect();
    assert_eq!(all, all_offsets(4000), "every record committed");
    assert!(!log2.committed.is_empty(), "the second member took over partitions");
}

#[test]
fn partitions_paused_by_a_retry_fetch_again_when_they_come_back_after_it() {
    // librdkafka keeps a pause through revoke and re-assign: the first
    // member pauses its partitions, loses half to a second member during
    // the retry, recovers, then gets them back when the second leaves.
    let cluster = Cluster::new();
    cluster.produce(400, &[]);
    let outage = Arc::new(AtomicBool::new(true));
    let first = Running::start(cluster.kafka(&[]), "back", Fail::While(outage.clone()));
    first.until(30, "a failing batch", |l| l.aborts >= 2);
    let second = Running::start(cluster.kafka(&[]), "back", Fail::Never);
    first.until(60, "partitions revoked from the first member", |l| !l.revoked.is_empty());
    second.until(60, "the second member's records", |l| !l.committed.is_empty());
    outage.store(false, Ordering::SeqCst);
    first.until(60, "the first member recovered", |l| !l.committed.is_empty());
    let (r2, log2) = second.stop();
    r2.unwrap();
    cluster.produce(400, &[]);
    let done = log2.lock().unwrap().committed.clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut all = first.log.lock().unwrap().committed.clone();
        all.extend(&done);
        let seen: BTreeSet<(i32, i64)> = all.iter().copied().collect();
        if seen.len() >= 800 {
            break;
        }
        let missing: BTreeSet<i32> = all_offsets(800).difference(&seen).map(|(p, _)| *p).collect();
        assert!(Instant::now() < deadline, "partitions {missing:?} never fetched again: {} of 800", seen.len());
        std::thread::sleep(Duration::from_millis(50));
    }
    let (r1, log1) = first.stop();
    r1.unwrap();
    let mut all = log1.lock().unwrap().committed.clone();
    all.extend(&done);
    exactly_once(&all, 800, &[]);
}

#[test]
fn shutdown_during_a_retry_stores_nothing_and_returns_promptly() {
    let cluster = Cluster::new();
    cluster.produce(40, &[]);
    let run = Running::start(cluster.kafka(&[]), "shutdown", Fail::While(Arc::new(AtomicBool::new(true))));
    run.until(30, "a failing batch", |l| l.aborts >= 2);
    let asked = Instant::now();
    let (result, log) = run.stop();
    result.unwrap();
    assert!(asked.elapsed() < Duration::from_secs(5), "stopped in {:?}", asked.elapsed());
    assert!(log.lock().unwrap().committed.is_empty());
    assert!(cluster.committed("shutdown").is_empty(), "no offset stored");
}

#[test]
fn an_internal_error_stops_the_pipeline_without_retrying() {
    let cluster = Cluster::new();
    cluster.produce(40, &[]);
    let run = Running::start(cluster.kafka(&[]), "bug", Fail::Internal);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !run.handle.is_finished() {
        assert!(Instant::now() < deadline, "the runner kept going after a bug");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (result, log) = run.stop();
    let e = result.expect_err("the pipeline stops with the error");
    assert!(e.to_string().contains("broken invariant"), "{e}");
    let log = log.lock().unwrap();
    assert_eq!(log.writes, 1, "not retried");
    assert!(cluster.committed("bug").is_empty());
}

#[test]
fn an_outage_longer_than_max_poll_interval_keeps_the_member() {
    let cluster = Cluster::new();
    cluster.produce(40, &[]);
    let outage = Arc::new(AtomicBool::new(true));
    let run = Running::start(cluster.kafka(&[]), "long", Fail::While(outage.clone()));
    run.until(30, "a failing batch", |l| l.aborts >= 1);
    // max.poll.interval.ms is 7 s: a runner that slept instead of polling
    // would be evicted and see its partitions revoked.
    std::thread::sleep(Duration::from_secs(10));
    outage.store(false, Ordering::SeqCst);
    run.until(30, "the records", |l| l.committed.len() >= 40);
    {
        let log = run.log.lock().unwrap();
        assert!(log.revoked.is_empty(), "the member was evicted: {:?}", log.revoked);
        assert_eq!(log.assigned, 1);
    }
    let (result, log) = run.stop();
    result.unwrap();
    let log = log.lock().unwrap();
    exactly_once(&log.committed, 40, &[]);
}
