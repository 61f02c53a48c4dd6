//! Graceful shutdown (DESIGN §6): the first SIGINT/SIGTERM asks every loop to
//! stop and finish its in-flight work; a second one exits at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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
        tokio::spawn(async move {
            wait_signal().await;
            tracing::info!("shutdown requested: finishing in-flight work (signal again to exit at once)");
            f.store(true, Ordering::SeqCst);
            let _ = tx.send(true);
            wait_signal().await;
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

    /// For synchronous loops.
    pub fn requested(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    /// Resolves once shutdown is requested.
    pub async fn wait(&mut self) {
        let _ = self.rx.wait_for(|v| *v).await;
    }
}

async fn wait_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
