//! Graceful shutdown (design §6): the first SIGINT/SIGTERM asks every loop to
//! stop and finish its in-flight work; a second one exits at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

#[derive(Clone)]
pub struct Shutdown {
    flag: Arc<AtomicBool>,
    rx: watch::Receiver<bool>,
}

impl Shutdown {
    /// Installs the signal handlers. Call once, inside the runtime.
    pub fn install() -> Shutdown {
        let (tx, rx) = watch::channel(false);
        let flag = Arc::new(AtomicBool::new(false));
        let f = flag.clone();
        // One listener per signal for the whole process: a listener created
        // after a signal arrived would see that same signal again.
        let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            tracing::info!("shutdown requested: finishing in-flight work (signal again to exit at once)");
            f.store(true, Ordering::SeqCst);
            let _ = tx.send(true);
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            eprintln!("second signal: exiting now");
            std::process::exit(130);
        });
        Shutdown { flag, rx }
    }

    /// A handle that never fires (tests, library use).
    pub fn never() -> Shutdown {
        let (_tx, rx) = watch::channel(false);
        Shutdown { flag: Arc::new(AtomicBool::new(false)), rx }
    }

    /// A handle fired by its trigger instead of a signal (benchmarks, embedding).
    pub fn manual() -> (Shutdown, ShutdownTrigger) {
        let (tx, rx) = watch::channel(false);
        let flag = Arc::new(AtomicBool::new(false));
        (Shutdown { flag: flag.clone(), rx }, ShutdownTrigger { flag, tx })
    }

    /// For synchronous loops.
    pub fn requested(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    /// Sleeps `d` in a synchronous loop, waking early for shutdown; true if
    /// shutdown was requested.
    pub fn sleep(&self, d: std::time::Duration) -> bool {
        let until = std::time::Instant::now() + d;
        while !self.requested() && std::time::Instant::now() < until {
            std::thread::sleep(std::time::Duration::from_millis(100).min(until - std::time::Instant::now()));
        }
        self.requested()
    }

    /// Resolves once shutdown is requested.
    pub async fn wait(&mut self) {
        let _ = self.rx.wait_for(|v| *v).await;
    }
}

/// Fires a `Shutdown::manual` handle.
pub struct ShutdownTrigger {
    flag: Arc<AtomicBool>,
    tx: watch::Sender<bool>,
}

impl ShutdownTrigger {
    pub fn trigger(&self) {
        self.flag.store(true, Ordering::SeqCst);
        let _ = self.tx.send(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn a_sleep_ends_early_on_shutdown_and_says_so() {
        let (s, trigger) = Shutdown::manual();
        assert!(!s.sleep(Duration::from_millis(50)), "no shutdown yet");
        let started = Instant::now();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            trigger.trigger();
        });
        assert!(s.sleep(Duration::from_secs(20)));
        t.join().unwrap();
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    }
}
