//! Connections held through the gateway, capped per process, per cgroup and in all
//! (`[http] max_connections_per_process`, `max_connections_per_cgroup`, `max_connections`).
//!
//! One process looping on connect or leaking connections must not take every open file and
//! every byte of memory the gateway has and leave the rest of the runner without GitHub. The
//! process cap alone is per kernel tgid, so a process that forks gets a fresh one per child:
//! the cgroup's cap bounds what all of a job's processes (or a container's) hold together, and
//! the total bounds what every cgroup holds, below what the gateway's open files and memory
//! allow. Over any cap, a connection is closed at once; each cap logs once per run of refusals.
use std::{
    collections::HashMap,
    hash::Hash,
    sync::{Arc, Mutex},
};

use tracing::{info, warn};

use crate::identity::Caller;

/// The caps, and what is held under them.
pub struct Caps {
    max: Limits,
    held: Mutex<Held>,
}

/// Each cap.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub per_process: u32,
    pub per_cgroup: u32,
    pub total: u32,
}

#[derive(Default)]
struct Held {
    processes: HashMap<u32, Count>,
    cgroups: HashMap<u64, Count>,
    total: Count,
}

#[derive(Default)]
struct Count {
    count: u32,
    /// Connections refused since this count reached its cap (logged at the first).
    refused: u64,
}

impl Count {
    /// Whether this count is at its cap `max`: then a refusal is counted (in the metrics under
    /// `cap`), and the answer says whether it is the first of a run (to be logged).
    fn full(&mut self, max: u32, cap: &'static str) -> Option<bool> {
        (self.count >= max).then(|| {
            crate::telemetry::metrics().capped(cap);
            self.refused += 1;
            self.refused == 1
        })
    }

    /// Gives one back; the refusals of the run that ended, if this was the last one held.
    fn leave(&mut self) -> Option<u64> {
        self.count = self.count.saturating_sub(1);
        (self.count == 0).then_some(self.refused)
    }
}

/// Gives one back under `key`, forgetting the key once it holds none; the refusals of the run
/// that ended then.
fn leave<K: Hash + Eq>(map: &mut HashMap<K, Count>, key: &K) -> Option<u64> {
    let refused = map.get_mut(key)?.leave()?;
    map.remove(key);
    Some(refused)
}

/// Open files the gateway needs besides its connections' (record segments, index, listeners,
/// BPF maps, logs), with room to spare.
const FILES_BESIDES_CONNECTIONS: u64 = 1024;

/// `max_connections`, lowered to what `open_files` allow (two files per connection at most):
/// past the open files limit, connections would not be closed, as over a cap, but wait in the
/// listen queue. `None` when it fits.
fn fitted(total: u32, open_files: u64) -> Option<u32> {
    let room = open_files.saturating_sub(FILES_BESIDES_CONNECTIONS) / 2;
    (u64::from(total) > room).then(|| u32::try_from(room.max(1)).unwrap_or(u32::MAX))
}

/// The caps as configured, `total` fitted to the open files limit (logged when lowered).
pub fn limits(per_process: u32, per_cgroup: u32, total: u32) -> Limits {
    let open_files = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(u64::MAX, |(soft, _)| soft);
    let total = match fitted(total, open_files) {
        Some(fit) => {
            info!(
                max_connections = total,
                open_files,
                now = fit,
                "[http] max_connections lowered to fit the open files limit (two files per connection at most); raise LimitNOFILE to hold more"
            );
            fit
        }
        None => total,
    };
    Limits {
        per_process,
        per_cgroup,
        total,
    }
}

/// One connection held; given back when dropped.
pub struct Slot {
    of: Arc<Caps>,
    tgid: u32,
    cgroup: u64,
}

impl Caps {
    pub fn new(max: Limits) -> Arc<Self> {
        Arc::new(Self {
            max,
            held: Mutex::new(Held::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A slot for one more connection of `caller`, or `None` when it, its cgroup or the gateway
    /// holds the most it may (the first refusal of a run of them is logged, per cap).
    pub fn enter(self: &Arc<Self>, caller: &Caller) -> Option<Slot> {
        let (tgid, cgroup) = (caller.tgid, caller.cgroup_id);
        let mut guard = self.lock();
        let held = &mut *guard;
        if let Some(first) = held.total.full(self.max.total, "total") {
            if first {
                warn!(
                    tgid,
                    comm = %caller.comm,
                    held = held.total.count,
                    "the gateway holds as many connections as [http] max_connections allows; further connections are closed at once until some close"
                );
            }
            return None;
        }
        // Entries are made only for a connection let in: a refused one leaves none behind.
        if let Some(first) = held
            .cgroups
            .get_mut(&cgroup)
            .and_then(|c| c.full(self.max.per_cgroup, "cgroup"))
        {
            if first {
                warn!(
                    tgid,
                    comm = %caller.comm,
                    cgroup = caller.cgroup.as_deref().unwrap_or("?"),
                    cgroup_id = cgroup,
                    held = self.max.per_cgroup,
                    "a cgroup's processes hold as many connections as [http] max_connections_per_cgroup allows; its further connections are closed at once until it closes some"
                );
            }
            return None;
        }
        if let Some(first) = held
            .processes
            .get_mut(&tgid)
            .and_then(|p| p.full(self.max.per_process, "process"))
        {
            if first {
                warn!(
                    tgid,
                    comm = %caller.comm,
                    held = self.max.per_process,
                    "a process holds as many connections as [http] max_connections_per_process allows; its further connections are closed at once until it closes some"
                );
            }
            return None;
        }
        held.processes.entry(tgid).or_default().count += 1;
        held.cgroups.entry(cgroup).or_default().count += 1;
        held.total.count += 1;
        crate::telemetry::metrics().held(held.total.count);
        Some(Slot {
            of: self.clone(),
            tgid,
            cgroup,
        })
    }

    /// Connections held now: by process `tgid`, by cgroup `cgroup`, in all.
    #[cfg(test)]
    fn held(&self, tgid: u32, cgroup: u64) -> (u32, u32, u32) {
        let held = self.lock();
        (
            held.processes.get(&tgid).map_or(0, |h| h.count),
            held.cgroups.get(&cgroup).map_or(0, |h| h.count),
            held.total.count,
        )
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut guard = self.of.lock();
        let held = &mut *guard;
        if let Some(refused @ 1..) = leave(&mut held.processes, &self.tgid) {
            info!(
                tgid = self.tgid,
                refused, "a process that was refused connections over its cap holds none now"
            );
        }
        if let Some(refused @ 1..) = leave(&mut held.cgroups, &self.cgroup) {
            info!(
                cgroup_id = self.cgroup,
                refused, "a cgroup that was refused connections over its cap holds none now"
            );
        }
        // The total's run of refusals ends when a connection closes: there is room again.
        held.total.count = held.total.count.saturating_sub(1);
        crate::telemetry::metrics().held(held.total.count);
        if held.total.refused > 0 {
            info!(
                refused = held.total.refused,
                "connections were refused over [http] max_connections; there is room again"
            );
            held.total.refused = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(tgid: u32, cgroup_id: u64) -> Caller {
        Caller {
            tgid,
            pid: tgid,
            uid: 1000,
            gid: 1000,
            cgroup_id,
            comm: "test".into(),
            exe: None,
            start_ticks: None,
            cgroup: None,
            ci: Vec::new(),
            login: Default::default(),
        }
    }

    fn caps(per_process: u32, per_cgroup: u32, total: u32) -> Arc<Caps> {
        Caps::new(Limits {
            per_process,
            per_cgroup,
            total,
        })
    }

    #[test]
    fn a_process_gets_at_most_its_cap_and_others_are_not_affected() {
        let caps = caps(2, 100, 100);
        let a1 = caps.enter(&caller(10, 1)).expect("first");
        let a2 = caps.enter(&caller(10, 1)).expect("second");
        assert!(caps.enter(&caller(10, 1)).is_none(), "over the cap");
        let b = caps
            .enter(&caller(11, 1))
            .expect("another process is not affected");
        drop(a1);
        let a3 = caps
            .enter(&caller(10, 1))
            .expect("a slot given back is taken again");
        assert_eq!(caps.held(10, 1), (2, 3, 3));
        assert_eq!(caps.held(11, 1).0, 1);
        drop((a2, a3, b));
        let held = caps.lock();
        assert!(
            held.processes.is_empty() && held.cgroups.is_empty() && held.total.count == 0,
            "no entry is kept for a process or cgroup holding none"
        );
    }

    #[test]
    fn forked_processes_share_their_cgroup_s_cap() {
        let caps = caps(3, 5, 100);
        // Three children of one job, each under its own process cap.
        let job: Vec<Slot> = (0..3u32)
            .flat_map(|child| [100 + child; 3])
            .filter_map(|tgid| caps.enter(&caller(tgid, 7)))
            .collect();
        assert_eq!(job.len(), 5, "the cgroup's cap bounds them together");
        assert_eq!(caps.held(102, 7).1, 5);
        // A refusal by the cgroup's cap takes no process slot.
        assert_eq!(caps.held(102, 7).0, 0);
        let other = caps
            .enter(&caller(200, 8))
            .expect("another cgroup is not affected");
        drop(job);
        assert_eq!(caps.held(100, 7), (0, 0, 1));
        drop(other);
    }

    #[test]
    fn the_total_fits_the_open_files() {
        assert_eq!(fitted(65536, 524_288), None);
        assert_eq!(fitted(65536, 20_000), Some(9488));
        assert_eq!(fitted(100, 1024), Some(1), "never zero");
    }

    #[test]
    fn the_total_bounds_every_cgroup_together() {
        let caps = caps(10, 10, 4);
        let mut held: Vec<Slot> = (0..6u64)
            .filter_map(|cg| caps.enter(&caller(cg as u32, cg)))
            .collect();
        assert_eq!(held.len(), 4);
        assert!(caps.enter(&caller(99, 99)).is_none());
        assert_eq!(caps.lock().total.refused, 3);
        held.pop();
        assert_eq!(caps.lock().total.refused, 0, "a closed connection makes room");
        let _room = caps.enter(&caller(99, 99)).expect("room again");
        assert!(caps.enter(&caller(98, 98)).is_none());
    }
}
