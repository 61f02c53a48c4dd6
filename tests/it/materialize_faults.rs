//! The materializers under faults, against the real stack:
//! - `kill -9` of the materializer process three times during a run of
//!   200k events, restarting it each time: nothing lost, no duplicate row
//!   (count(*) = count(distinct event_id) = produced), Redis consistent with
//!   Postgres;
//! - PostgreSQL, then Redis, stopped for ~20 s mid-run and started again
//!   (`scripts/stack stop|start`): the pipeline pauses and retries (not
//!   ready meanwhile), resumes by itself, loses nothing, and its consumer
//!   lag returns to 0.
//!
//! - PostgreSQL stopped for 3 minutes (`UDO_TEST_OUTAGE_SECS`) under two
//!   `materialize-postgres` members of one group: the runner keeps polling
//!   while it retries, so neither member leaves the group (no rebalance,
//!   although the outage is 6× `max.poll.interval.ms`), and nothing is lost.
//!
//! These tests stop shared services, so they never overlap: a lock keeps
//! them sequential within this binary, and cargo runs test binaries one
//! after another. Embeddings are 8-dimensional to keep 200k records fast.

use crate::support as common;
use crate::support::materialize as support;

use std::process::Command;
use std::time::{Duration, Instant};
use support::*;

fn stack(args: &[&str]) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/stack");
    let out = Command::new(script).args(args).output().expect("run scripts/stack");
    assert!(out.status.success(), "scripts/stack {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Starts the materializers and waits until both groups gave them
/// partitions. After a SIGKILL the coordinator completes the new member's
/// join once the dead member's session (10 s) expires.
fn start_assigned(pipelines: &str, prefix: &str, db: &str, redis: &str) -> Materializer {
    let mut m = materializer(pipelines, prefix, db, redis, &[]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        m.assert_alive();
        if m.metric("udo_assigned_partitions", &["materialize-postgres"]) > 0.0
            && m.metric("udo_assigned_partitions", &["materialize-redis"]) > 0.0
        {
            return m;
        }
        assert!(Instant::now() < deadline, "the materializers got no partitions within 60 s");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn kill_9_three_times_during_200k_events_loses_and_duplicates_nothing() {
    let _stores = crate::support::lease::stores();
    let started = Instant::now();
    let prefix = common::prefix("matkill");
    common::apply_topics(&prefix);
    let db = block_on(common::fresh_database("matkill"));
    let redis = block_on(common::fresh_redis_db());
    let pool = pg_pool(&db);
    let pg_group = format!("{prefix}udo-materialize-postgres");
    let all = topics(&prefix, &PG_TOPICS);

    // 200k events over ~40 s of wall clock; the materializer is killed
    // three times while they arrive and restarted each time. Each instance
    // is killed once it holds its partitions and has written something: a
    // member killed before its group assignment completes teaches nothing.
    let producer = produce_in_background(&prefix, 200_000, Some(5_000), 41);
    let pipelines = "materialize-postgres,materialize-redis";
    let mut progress = Vec::new();
    for _ in 0..3 {
        let before: i64 = pg_offsets(&pool, &pg_group).values().sum();
        let mut m = start_assigned(pipelines, &prefix, &db, &redis);
        let deadline = Instant::now() + Duration::from_secs(120);
        while pg_offsets(&pool, &pg_group).values().sum::<i64>() <= before {
            m.assert_alive();
            assert!(Instant::now() < deadline, "a restarted materializer writes");
            std::thread::sleep(Duration::from_millis(200));
        }
        std::thread::sleep(Duration::from_millis(1500));
        m.assert_alive();
        m.kill9();
        let stored: i64 = pg_offsets(&pool, &pg_group).values().sum();
        let total: i64 = watermarks(&all).values().sum();
        progress.push(format!("{stored}/{total}"));
    }
    let produced = produced(producer);
    assert_eq!(produced.values().sum::<i64>(), 200_000);
    let mut m = start_assigned(pipelines, &prefix, &db, &redis);
    wait_both_caught_up(&prefix, &pool, &redis, &mut m, Duration::from_secs(300));
    m.stop();
    eprintln!("kill -9 at stored/available offsets {progress:?}; all caught up after {:?}", started.elapsed());
    // Each kill landed mid-run: something was durable, not everything.
    assert!(
        progress.iter().any(|p| !p.starts_with("0/")),
        "the materializer made progress between kills: {progress:?}"
    );
    assert_exact_and_consistent(&pool, &redis, &produced);
    block_on(common::drop_database(&db));
}

#[test]
fn postgres_then_redis_outage_pauses_retries_and_resumes_without_loss() {
    let _stores = crate::support::lease::stores_alone();
    let prefix = common::prefix("matout");
    common::apply_topics(&prefix);
    let db = block_on(common::fresh_database("matout"));
    let redis = block_on(common::fresh_redis_db());
    let pool = pg_pool(&db);

    let mut m = materializer(
        "materialize-postgres,materialize-redis",
        &prefix,
        &db,
        &redis,
        &[("UDO__MATERIALIZE__BATCH_SIZE", "1000")],
    );
    // 60 s of traffic at 1000 events/s; each store is down for ~20 s of it.
    let producer = produce_in_background(&prefix, 60_000, Some(1_000), 42);
    for (service, pipeline) in [("postgres", "materialize-postgres"), ("redis", "materialize-redis")] {
        // The store goes down while its pipeline is writing (not before its
        // group has assigned it partitions, which a loaded machine delays).
        let written = |m: &Materializer| m.try_metric("udo_sink_records_total", &[&format!("sink=\"{service}\"")]);
        let deadline = Instant::now() + Duration::from_secs(60);
        let at_start = loop {
            m.assert_alive();
            match written(&m) {
                Some(n) if n > 0.0 => break n,
                _ => assert!(Instant::now() < deadline, "{pipeline} wrote nothing within 60 s"),
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        std::thread::sleep(Duration::from_secs(2));
        assert!(written(&m).is_some_and(|n| n > at_start), "{pipeline} is writing before the outage");
        let retries_of = |m: &Materializer| m.try_metric("udo_sink_retries_total", &[&format!("sink=\"{service}\"")]);
        let retries_before = retries_of(&m).expect("/metrics answers before the outage");
        stack(&["stop", service]);
        let down = Instant::now();
        let (mut saw_unready, mut retries) = (false, 0.0);
        // At least 20 s; longer only until a retry shows (an attempt against
        // a stopped PostgreSQL waits out the pool's 10 s acquire timeout).
        while down.elapsed() < Duration::from_secs(20) || (retries < 1.0 && down.elapsed() < Duration::from_secs(60)) {
            m.assert_alive();
            if let Some((code, _)) = m.get("/readyz") {
                saw_unready |= code != 200;
            }
            if let Some(now) = retries_of(&m) {
                retries = now - retries_before;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        stack(&["start", service]);
        assert!(retries >= 1.0, "{service} down for {:?}: the batch was retried ({retries} retries)", down.elapsed());
        assert!(saw_unready, "/readyz reports the {service} outage");
        eprintln!("{service} outage: {retries} retries while down ({:?})", down.elapsed());
    }
    let produced = produced(producer);
    wait_both_caught_up(&prefix, &pool, &redis, &mut m, Duration::from_secs(240));
    // Lag comes from librdkafka statistics (every 5 s): it returns to 0.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let lag = m.metric("udo_consumer_lag_records", &[]);
        let series = m.metric("udo_consumer_lag_records", &["materialize-postgres"]);
        if lag == 0.0 && m.get("/metrics").is_some_and(|(_, b)| b.contains("udo_consumer_lag_records")) {
            let (code, body) = m.get("/readyz").unwrap();
            assert_eq!(code, 200, "ready again: {body}");
            break;
        }
        assert!(Instant::now() < deadline, "consumer lag did not return to 0: {lag} (postgres {series})");
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(m.metric("udo_sink_paused", &[]) == 0.0, "partitions resumed");
    m.stop();
    assert_exact_and_consistent(&pool, &redis, &produced);
    block_on(common::drop_database(&db));
}

#[test]
fn a_three_minute_postgres_outage_under_two_members_causes_no_rebalance_and_loses_nothing() {
    let _stores = crate::support::lease::stores_alone();
    let outage: u64 = std::env::var("UDO_TEST_OUTAGE_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(180);
    let prefix = common::prefix("matlong");
    common::apply_topics(&prefix);
    let db = block_on(common::fresh_database("matlong"));
    let redis = block_on(common::fresh_redis_db());
    let pool = pg_pool(&db);
    let group = format!("{prefix}udo-materialize-postgres");
    let env = [("UDO__MATERIALIZE__BATCH_SIZE", "1000")];
    let mut members = [
        materializer("materialize-postgres", &prefix, &db, &redis, &env),
        materializer("materialize-postgres", &prefix, &db, &redis, &env),
    ];
    // Both members hold partitions (the group has split) before traffic.
    let deadline = Instant::now() + Duration::from_secs(90);
    while !members.iter().all(|m| m.metric("udo_assigned_partitions", &["materialize-postgres"]) > 0.0) {
        members.iter_mut().for_each(Materializer::assert_alive);
        assert!(Instant::now() < deadline, "the two members did not split the partitions within 90 s");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Traffic before, during and after the outage.
    let rate = 150;
    let producer = produce_in_background(&prefix, rate * (outage + 40), Some(rate), 43);
    std::thread::sleep(Duration::from_secs(10));
    let rebalances = |ms: &[Materializer; 2]| -> f64 { ms.iter().map(|m| m.metric("udo_rebalances_total", &[])).sum() };
    let before = rebalances(&members);
    stack(&["stop", "postgres"]);
    let down = Instant::now();
    while down.elapsed() < Duration::from_secs(outage) {
        members.iter_mut().for_each(Materializer::assert_alive);
        std::thread::sleep(Duration::from_secs(1));
    }
    let retries: f64 = members.iter().map(|m| m.metric("udo_sink_retries_total", &["sink=\"postgres\""])).sum();
    stack(&["start", "postgres"]);
    let produced = produced(producer);
    wait_caught_up(
        "postgres",
        &topics(&prefix, &PG_TOPICS),
        Duration::from_secs(300),
        || pg_offsets(&pool, &group),
        || members.iter_mut().for_each(Materializer::assert_alive),
    );
    let after = rebalances(&members);
    eprintln!("postgres down {outage} s under two members: {retries} retries, rebalances {before} -> {after}");
    assert!(retries >= 2.0, "the members retried during the outage ({retries})");
    assert_eq!(after, before, "no member left the group during a {outage} s outage");
    for m in &members {
        assert!(m.metric("udo_assigned_partitions", &["materialize-postgres"]) > 0.0, "both members kept partitions");
    }
    assert_exact_rows(&pool, &produced);
    for m in members {
        m.stop();
    }
    block_on(common::drop_database(&db));
}
