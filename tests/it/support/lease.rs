//! Leases on the stack's services. Suites run side by side in this binary;
//! one that stops, kills or freezes a service holds it alone, so its fault
//! never lands in another suite. Take a lease first thing in a test and keep
//! it to the end; when a test needs two, take the cluster or the registry
//! before the stores (one order everywhere: no deadlock).

use std::cell::RefCell;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

static STORES: RwLock<()> = RwLock::new(());
static CLUSTER: Mutex<()> = Mutex::new(());
static REGISTRY: Mutex<()> = Mutex::new(());

/// PostgreSQL, Redis and the single broker, shared with other suites.
pub fn stores() -> RwLockReadGuard<'static, ()> {
    STORES.read().unwrap_or_else(|e| e.into_inner())
}

/// PostgreSQL, Redis and the single broker alone: for a test that stops one.
pub fn stores_alone() -> RwLockWriteGuard<'static, ()> {
    STORES.write().unwrap_or_else(|e| e.into_inner())
}

/// The schema registry alone (a test freezes it with SIGSTOP).
pub fn registry() -> MutexGuard<'static, ()> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

thread_local! {
    /// The brokers this test thread's helpers talk to, when not the stack's
    /// single broker (see [`cluster`]).
    static BROKERS: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// The brokers set by a [`Cluster`] lease on this thread, if any.
pub(crate) fn brokers_override() -> Option<String> {
    BROKERS.with(|b| b.borrow().clone())
}

/// Tests that run on the three-node cluster; the last to finish stops it.
const CLUSTER_TESTS: usize = 4;
static CLUSTER_FINISHED: AtomicUsize = AtomicUsize::new(0);

/// The three-node cluster, started, alone; every helper called from this
/// test's thread talks to it until the lease ends.
pub struct Cluster {
    pub brokers: String,
    _held: MutexGuard<'static, ()>,
}

pub fn cluster() -> Cluster {
    let held = CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    let env = super::stack(&["cluster", "up"]);
    let brokers = env.trim().strip_prefix("export KAFKA_CLUSTER_BROKERS=").expect("cluster env").to_string();
    BROKERS.with(|b| *b.borrow_mut() = Some(brokers.clone()));
    Cluster { brokers, _held: held }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        BROKERS.with(|b| *b.borrow_mut() = None);
        if CLUSTER_FINISHED.fetch_add(1, Ordering::SeqCst) + 1 == CLUSTER_TESTS {
            let _ = std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/stack"))
                .args(["cluster", "down"])
                .status();
        }
    }
}

/// Redis database numbers: each test takes its own (0 is the demo's), from
/// the 64 the stack's Redis is started with.
static NEXT_REDIS_DB: AtomicU32 = AtomicU32::new(1);
pub const REDIS_DATABASES: u32 = 64;

pub(crate) fn next_redis_db() -> u32 {
    let n = NEXT_REDIS_DB.fetch_add(1, Ordering::SeqCst);
    assert!(n < REDIS_DATABASES, "more Redis databases taken than the stack's Redis has ({REDIS_DATABASES})");
    n
}
