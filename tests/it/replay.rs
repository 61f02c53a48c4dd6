//! `udo-stream replay` against the real stack (design §7): two rounds of
//! mixed events are produced a moment apart; replaying from the moment
//! between them into empty stores materializes exactly the second round,
//! and `--from 0 --to <that moment>` exactly the first; a second replay of
//! the same range changes nothing (every table checksum and Redis key);
//! nothing is produced to any topic (no re-alerting, no dead letters), and
//! the replay leaves no offsets of its own in the stores.

use crate::support as common;
use crate::support::materialize as support;

use serde_json::Value;
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use support::*;

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

/// Runs a replay and returns its JSON report.
fn replay(prefix: &str, db: &str, redis: &str, range: &[&str]) -> Value {
    let mut args = vec!["replay", "--topic-prefix", prefix, "--database-url", db, "--redis-url", redis];
    args.extend_from_slice(range);
    let out = udo(&args, &[]);
    let line = out.lines().find(|l| l.starts_with("{\"group\"")).unwrap_or_else(|| panic!("no report in:\n{out}"));
    serde_json::from_str(line).unwrap()
}

/// Rows per input event table, by record name.
fn input_rows(pool: &sqlx::PgPool) -> BTreeMap<String, i64> {
    let c = pg_counts(pool);
    [
        ("LatencySample", "latency_samples"),
        ("FeedbackRating", "uncertainty_feedback"),
        ("DecisionLog", "uncertainty_logs"),
        ("ContextChunk", "project_context_events"),
    ]
    .into_iter()
    .map(|(record, table)| {
        let (rows, distinct) = c[table];
        assert_eq!(rows, distinct, "{table}: one row per event id");
        (record.to_string(), rows)
    })
    .filter(|(_, n)| *n > 0)
    .collect()
}

fn offsets_left(pool: &sqlx::PgPool, redis: &str) -> (i64, Vec<String>) {
    let rows: i64 = block_on(sqlx::query_scalar("SELECT count(*) FROM consumer_offsets").fetch_one(pool)).unwrap();
    let keys = redis_snapshot(redis).into_keys().filter(|k| k.starts_with("udo:offsets:")).collect();
    (rows, keys)
}

#[test]
fn replay_backfills_a_time_range_and_repeats_as_a_no_op() {
    let _stores = crate::support::lease::stores();
    let prefix = common::prefix("replay");
    common::apply_topics(&prefix);
    let first = produce_mixed(&prefix, 3000, 1);
    std::thread::sleep(Duration::from_millis(1500));
    let cut = now_ms();
    std::thread::sleep(Duration::from_millis(1500));
    let second = produce_mixed(&prefix, 4000, 2);
    let all_topics = topics(&prefix, &[&PG_TOPICS[..], &["udo.dlq.v1"]].concat());
    let marks = watermarks(&all_topics);

    // From the cut to the end: exactly the second round, in both stores.
    let db = block_on(common::fresh_database("replay_second"));
    let redis = block_on(common::fresh_redis_db());
    let report = replay(&prefix, &db, &redis, &["--from", &cut.to_string()]);
    let n_second: i64 = second.values().sum();
    assert_eq!(report["records"], n_second, "{report}");
    assert_eq!(report["events"], n_second, "{report}");
    assert_eq!((report["undecodable"].as_i64(), report["postgres_rejected"].as_i64()), (Some(0), Some(0)));
    assert_eq!(report["postgres_inserted"], n_second, "{report}");
    let pool = pg_pool(&db);
    assert_eq!(input_rows(&pool), second);
    let snapshot = redis_snapshot(&redis);
    assert!(snapshot.keys().any(|k| k.starts_with(&"project:".to_string())), "context chunks in Redis");
    assert_eq!(offsets_left(&pool, &redis), (0, vec![]), "the replay's own offsets are removed");

    // The same range again: nothing changes.
    let checksums = pg_checksums(&pool);
    let again = replay(&prefix, &db, &redis, &["--from", &cut.to_string()]);
    assert_eq!((again["records"].as_i64(), again["postgres_inserted"].as_i64()), (Some(n_second), Some(0)));
    assert_eq!(pg_checksums(&pool), checksums, "every table unchanged");
    assert_eq!(redis_snapshot(&redis), snapshot, "every Redis key unchanged");

    // From the start of the log to the cut: exactly the first round.
    let db_first = block_on(common::fresh_database("replay_first"));
    let report = replay(&prefix, &db_first, &redis, &["--from", "0", "--to", &cut.to_string(), "--stores", "postgres"]);
    assert_eq!(report["records"], first.values().sum::<i64>(), "{report}");
    let pool_first = pg_pool(&db_first);
    assert_eq!(input_rows(&pool_first), first);
    assert_eq!(redis_snapshot(&redis), snapshot, "--stores postgres leaves Redis alone");

    // Nothing was produced anywhere: no alert again, no dead letter.
    assert_eq!(watermarks(&all_topics), marks);
    block_on(pool.close());
    block_on(pool_first.close());
    block_on(common::drop_database(&db));
    block_on(common::drop_database(&db_first));
}

#[test]
fn replay_errors_name_the_flag() {
    let _stores = crate::support::lease::stores();
    let out = common::udo(&["replay", "--from", "last tuesday", "--database-url", "postgres://x@127.0.0.1:1/x"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("--from \"last tuesday\" is not a time") && err.contains("RFC 3339"), "{err}");
    let out = common::udo(&["replay", "--from", "2h", "--topics", "udo.nope.v1", "--stores", "postgres"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--topics") && err.contains("udo.nope.v1"), "{err}");
}
