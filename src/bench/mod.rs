//! Benchmarks behind `udo-stream bench …`: each measures a pipeline's store
//! or compute path against a plain baseline on the same data, in one run, so
//! the ratio means something on any machine (BENCHMARKS.md has figures).

pub mod alloc;
pub mod analyze;
pub mod materialize;
pub mod subjects;

/// Cores busy on average over a phase, of the machine's cores.
pub type Busy = Option<(f64, usize)>;

/// The machine's CPU time so far, all processes (the broker's JVM too),
/// from `/proc/stat`: how many cores a phase kept busy. `None` off Linux.
#[derive(Clone, Copy, Debug)]
pub struct CpuTicks {
    busy: u64,
    all: u64,
    cores: usize,
}

impl CpuTicks {
    pub fn now() -> Option<CpuTicks> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let mut lines = stat.lines();
        // user nice system idle iowait irq softirq steal
        let ticks: Vec<u64> =
            lines.next()?.strip_prefix("cpu ")?.split_whitespace().take(8).filter_map(|t| t.parse().ok()).collect();
        let idle = ticks.get(3)? + ticks.get(4)?;
        let all: u64 = ticks.iter().sum();
        let cores = lines.filter(|l| l.starts_with("cpu")).count();
        Some(CpuTicks { busy: all - idle, all, cores })
    }

    /// Cores busy on average since this reading, and the machine's cores.
    pub fn cores_busy_since(self) -> Busy {
        let now = CpuTicks::now()?;
        let all = now.all.checked_sub(self.all).filter(|a| *a > 0)?;
        Some(((now.busy - self.busy) as f64 / all as f64 * self.cores as f64, self.cores))
    }

    /// ", 1.84 of 2 cores busy" for a figure's line, or nothing.
    pub fn describe(busy: Busy) -> String {
        busy.map(|(b, cores)| format!(", {b:.2} of {cores} cores busy")).unwrap_or_default()
    }
}
