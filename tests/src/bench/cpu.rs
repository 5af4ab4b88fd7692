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

    /// How busy the host was since `self`, from one reading of the counters.
    pub fn since(&self) -> HostBusy {
        let now = Self::now();
        let fraction = (now.busy - self.busy) as f64 / (now.total - self.total).max(1) as f64;
        let cpus = cpus() as f64;
        HostBusy {
            fraction,
            cpu_secs: fraction * cpus * self.at.elapsed().as_secs_f64(),
        }
    }
}

/// The CPUs this host has for everything (client, upstream, gateway).
pub fn cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// The host's CPU use over an interval.
pub struct HostBusy {
    /// The fraction of all CPUs' time that was busy.
    pub fraction: f64,
    /// CPU-seconds spent by the whole host (busy fraction × CPUs × elapsed).
    pub cpu_secs: f64,
}

/// Bytes in a GiB, for CPU-seconds per GiB.
pub const GIB: f64 = (1u64 << 30) as f64;

/// Measures one run: the host's CPU use, and one process's (when given and alive).
pub struct Meter {
    host: HostCpu,
    process: Option<(u32, f64)>,
}

impl Meter {
    pub fn start(pid: Option<u32>) -> Self {
        Self {
            host: HostCpu::now(),
            process: pid.and_then(|p| Some((p, process_secs(p)?))),
        }
    }

    /// The host's use since `start`, and the CPU-seconds the process spent.
    pub fn stop(&self) -> (HostBusy, Option<f64>) {
        let spent = self
            .process
            .and_then(|(pid, before)| Some(process_secs(pid)? - before));
        (self.host.since(), spent)
    }
}

/// CPU time (user + system) of a process and all its threads so far, in seconds.
pub fn process_secs(pid: u32) -> Option<f64> {
    Some(process_ticks(pid)? as f64 / 100.0)
}

/// Nanoseconds on a CPU so far of a process's threads, summed by role: those whose name starts
/// with `path_prefix` (the threads a request's work runs on) and all the others. From
/// `/proc/PID/task/*/schedstat`, which counts in nanoseconds, not ticks: fine enough for one
/// request at a time. Threads that ended are not counted (the gateway's are long-lived).
pub fn thread_ns(pid: u32, path_prefix: &str) -> Option<(u64, u64)> {
    let (mut path, mut other) = (0, 0);
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten() {
        let dir = task.path();
        let (Ok(comm), Ok(stat)) = (
            std::fs::read_to_string(dir.join("comm")),
            std::fs::read_to_string(dir.join("schedstat")),
        ) else {
            continue;
        };
        let ns: u64 = stat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if comm.starts_with(path_prefix) {
            path += ns;
        } else {
            other += ns;
        }
    }
    Some((path, other))
}

/// CPU time (user + system, clock ticks of 10 ms) of a process and all its threads so far.
pub fn process_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = after.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::thread_ns;

    /// CPU a thread named like a shard burns is counted on the path's side, while it lives.
    #[test]
    fn a_threads_cpu_is_counted_by_its_name() {
        let pid = std::process::id();
        let before = thread_ns(pid, "ghgate-shard").expect("read this process's threads");
        let (done, release) = std::sync::mpsc::channel::<()>();
        let (burnt, wait) = std::sync::mpsc::channel::<()>();
        let shard = std::thread::Builder::new()
            .name("ghgate-shard-9".into())
            .spawn(move || {
                // 60 ms on the CPU, however long a busy host takes to give it.
                let cpu = || {
                    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID).unwrap();
                    Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32)
                };
                let start = cpu();
                let mut x = 0u64;
                while cpu() - start < Duration::from_millis(60) {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
                burnt.send(()).unwrap();
                // Alive until read: an ended thread is no longer counted.
                let _ = release.recv();
            })
            .unwrap();
        wait.recv().unwrap();
        let after = thread_ns(pid, "ghgate-shard").expect("read this process's threads");
        done.send(()).unwrap();
        shard.join().unwrap();
        let (path, other) = (after.0 - before.0, after.1 - before.1);
        assert!(path >= 50_000_000, "the shard's 60 ms of CPU: {path} ns counted");
        assert!(
            other < path,
            "the waiting thread's share is small: {other} ns vs {path}"
        );
    }
}
