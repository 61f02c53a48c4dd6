//! The three-node cluster of the stack (`scripts/stack cluster up`: static
//! KRaft quorum, replication factor 3, `min.insync.replicas=2`): a
//! replicated topic keeps serving produce and consume through `kill -9` of
//! the node leading its partitions, with udo-stream's producer settings
//! (idempotent, `acks=all`) and a consumer group. Nothing produced is lost
//! and the log holds no duplicate. The killed node is started again at the
//! end. (The deep broker-fault tests with the pipelines belong to the
//! exactly-once work.)

use crate::support::{self as common, stack};
use rdkafka::Message;
use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use udo_stream::config::KafkaConfig;
use udo_stream::sinks::kafka::{DeliveryCounter, producer_config};

const RECORDS: u64 = 40_000;

#[test]
fn replicated_topic_serves_through_kill_9_of_its_leader() {
    let cluster = common::lease::cluster();
    let kafka = KafkaConfig::new(&cluster.brokers, Default::default());
    let topic = format!("it-cluster-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);

    let admin = udo_stream::topics::admin::admin_client(&kafka).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let created = rt
        .block_on(admin.create_topics(&[NewTopic::new(&topic, 3, TopicReplication::Fixed(3))], &AdminOptions::new()))
        .unwrap();
    assert!(created.iter().all(Result::is_ok), "{created:?}");

    // The node leading partition 0 (metadata settles once the topic exists).
    let probe: BaseConsumer = kafka.client(|_| {}).create().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let leader = loop {
        let md = probe.fetch_metadata(Some(&topic), Duration::from_secs(5)).unwrap();
        let parts = md.topics()[0].partitions();
        if parts.len() == 3 && parts.iter().all(|p| p.leader() >= 1 && p.isr().len() == 3) {
            break parts[0].leader();
        }
        assert!(Instant::now() < deadline, "topic {topic} never got 3 in-sync replicas");
        std::thread::sleep(Duration::from_millis(200));
    };

    // Producer: udo-stream's settings, paced over ~20 s.
    let producer: ThreadedProducer<DeliveryCounter> =
        producer_config(&kafka).create_with_context(DeliveryCounter::default()).unwrap();
    let consumer: BaseConsumer = kafka
        .client(|c| {
            c.set("group.id", format!("{topic}-reader"))
                .set("auto.offset.reset", "earliest")
                .set("session.timeout.ms", "10000");
        })
        .create()
        .unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut seen: HashMap<(i32, i64), u64> = HashMap::new();
            let mut by_seq: HashMap<u64, u32> = HashMap::new();
            let deadline = Instant::now() + Duration::from_secs(240);
            while Instant::now() < deadline && !(done.load(Ordering::SeqCst) && by_seq.len() as u64 >= RECORDS) {
                if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                    let seq: u64 = std::str::from_utf8(m.payload().unwrap()).unwrap().parse().unwrap();
                    if seen.insert((m.partition(), m.offset()), seq).is_none() {
                        *by_seq.entry(seq).or_default() += 1;
                    }
                }
            }
            by_seq
        })
    };
    let started = Instant::now();
    let mut killed_at = None;
    for i in 0..RECORDS {
        let key = format!("k{}", i % 97);
        let payload = i.to_string();
        loop {
            match producer.send(BaseRecord::to(&topic).key(&key).payload(&payload)) {
                Ok(()) => break,
                Err((_, _)) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        if i % 2000 == 0 {
            std::thread::sleep(Duration::from_millis(1000));
        }
        if i == RECORDS / 3 {
            stack(&["kill", &format!("kafka-{leader}")]);
            killed_at = Some(started.elapsed());
        }
    }
    producer.flush(Duration::from_secs(120)).unwrap();
    done.store(true, Ordering::SeqCst);
    let ctx = producer.context();
    let delivered = ctx.delivered.load(Ordering::SeqCst);
    let failed = ctx.failed.load(Ordering::SeqCst);
    let by_seq = reader.join().unwrap();
    let duplicates = by_seq.values().filter(|n| **n > 1).count();
    eprintln!(
        "kill -9 of kafka-{leader} at {killed_at:?}: produced {RECORDS}, delivered {delivered}, failed {failed}, \
         consumed {} distinct, {duplicates} duplicated in the log, in {:?}",
        by_seq.len(),
        started.elapsed()
    );
    stack(&["start", &format!("kafka-{leader}")]);
    assert!(killed_at.is_some());
    assert_eq!(failed, 0, "no send failed: {:?}", ctx.first_error.lock().unwrap());
    assert_eq!(delivered, RECORDS);
    assert_eq!(by_seq.len() as u64, RECORDS, "every record consumed");
    assert_eq!(duplicates, 0, "the idempotent producer wrote no duplicate");
    let _ = rt.block_on(admin.delete_topics(&[&topic], &AdminOptions::new()));
}
