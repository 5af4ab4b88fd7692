//! CPU accounting for the benchmarks: how busy the host's CPUs were during a run, and how much
//! CPU one process spent. On a host where client, upstream and proxy share few CPUs, a
//! throughput ratio is bounded by CPU, and these figures say whether and by how much.
use std::time::Instant;

/// The host's CPU counters at one moment.
pub struct HostCpu {
    busy: u64,
    total: u64,
    at: Instant,
}

impl HostCpu {
    pub fn now() -> Self {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let fields: Vec<u64> = stat
            .lines()
            .next()
            .unwrap_or("")
            .split_whitespace()
            .skip(1)
            .filter_map(|v| v.parse().ok())
            .collect();
        let total: u64 = fields.iter().sum();
        // idle and iowait
        let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
        Self {
            busy: total - idle,
            total,
            at: Instant::now(),
        }
    }

    /// The fraction of all CPUs' time that was busy since `self`.
    pub fn busy_since(&self) -> f64 {
        let now = Self::now();
        (now.busy - self.busy) as f64 / (now.total - self.total).max(1) as f64
    }

    /// CPU-seconds spent by the whole host since `self` (busy fraction × CPUs × elapsed).
    pub fn busy_secs_since(&self) -> f64 {
        let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64;
        self.busy_since() * cpus * self.at.elapsed().as_secs_f64()
    }
}

/// CPU time (user + system) of a process and all its threads so far, in seconds.
pub fn process_secs(pid: u32) -> Option<f64> {
    Some(process_ticks(pid)? as f64 / 100.0)
}

/// CPU time (user + system, clock ticks of 10 ms) of a process and all its threads so far.
pub fn process_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = after.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}
