use clap::Parser;

// Counts heap bytes for `bench analyze`'s memory-per-key figure; only in
// benchmark builds (`--features bench-alloc`), never in the shipped binary.
#[cfg(feature = "bench-alloc")]
#[global_allocator]
static ALLOC: udo_stream::bench::alloc::Counting = udo_stream::bench::alloc::Counting;

use udo_stream::cli::{Cli, run};

#[tokio::main]
async fn main() {
    udo_stream::telemetry::init();
    let cli = Cli::parse();
    if let Err(e) = run(cli).await {
        eprintln!("error: {e}");
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            eprintln!("  caused by: {s}");
            source = s.source();
        }
        std::process::exit(e.exit_code());
    }
}
