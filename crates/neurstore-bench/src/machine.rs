//! What the benchmark ran on, and how busy the machine was (other load skews every number).

use serde::Serialize;

/// The machine, as far as the benchmark can tell.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// CPU model name from /proc/cpuinfo ("unknown" elsewhere).
    pub cpu: String,
    /// Threads available to this process.
    pub threads: usize,
    /// 1-minute load average when the run started.
    pub load_before: Option<f64>,
    /// 1-minute load average when the run ended.
    pub load_after: Option<f64>,
}

impl Machine {
    /// Probes the CPU and the current load.
    pub fn probe() -> Machine {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".to_string());
        Machine {
            cpu,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            load_before: load_average(),
            load_after: None,
        }
    }

    /// Records the load at the end of the run.
    pub fn finish(mut self) -> Machine {
        self.load_after = load_average();
        self
    }

    /// One line naming the machine.
    pub fn describe(&self) -> String {
        format!(
            "machine: {} ({} threads); load average at start: {}",
            self.cpu,
            self.threads,
            fmt_load(self.load_before)
        )
    }

    /// One line with the load before and after.
    pub fn load_line(&self) -> String {
        format!(
            "load average: {} at start, {} at end (above ~0.5 on a 2-core machine, expect noise)",
            fmt_load(self.load_before),
            fmt_load(self.load_after)
        )
    }
}

/// Measures how much CPU other processes used while a benchmark ran: a busy machine makes every
/// number noisy, and the load average lags too much to tell.
pub struct CpuMeter {
    start: Option<(u64, u64)>,
    at: std::time::Instant,
}

impl CpuMeter {
    /// Starts measuring.
    pub fn start() -> CpuMeter {
        CpuMeter {
            start: cpu_ticks(),
            at: std::time::Instant::now(),
        }
    }

    /// Share of all CPUs' time, since `start`, that processes other than this one used
    /// (0 = quiet, 1 = every core busy elsewhere); `None` where /proc is unavailable.
    pub fn others_share(&self) -> Option<f64> {
        let (busy0, own0) = self.start?;
        let (busy1, own1) = cpu_ticks()?;
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        // /proc reports both in USER_HZ ticks, 100 per second on Linux.
        let capacity = self.at.elapsed().as_secs_f64() * 100.0 * threads;
        let others = busy1.saturating_sub(busy0) as f64 - own1.saturating_sub(own0) as f64;
        Some((others / capacity).clamp(0.0, 1.0))
    }
}

/// (busy ticks of the whole machine, ticks of this process).
fn cpu_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal [guest guest_nice, already in user/nice]
    let busy = [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| cpu.get(i)).sum();
    let own = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesized command name; utime and stime are fields 14 and 15.
    let rest = own.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((busy, utime + stime))
}

fn fmt_load(load: Option<f64>) -> String {
    load.map_or_else(|| "unknown".to_string(), |l| format!("{l:.2}"))
}

fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
