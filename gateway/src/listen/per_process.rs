//! Connections held per process, capped (`[http] max_connections_per_process`): one process in
//! the governed cgroup, looping on connect or leaking connections, cannot take every open file
//! and every byte of memory the gateway has and leave the rest of the runner without GitHub.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use tracing::{info, warn};

/// The connections each process holds (by its kernel tgid).
pub struct PerProcess {
    max: u32,
    held: Mutex<HashMap<u32, Held>>,
}

#[derive(Default)]
struct Held {
    count: u32,
    /// Connections refused since the process reached the cap (logged at the first).
    refused: u64,
}

/// One connection held by a process; given back when dropped.
pub struct Slot {
    of: Arc<PerProcess>,
    tgid: u32,
}

impl PerProcess {
    pub fn new(max: u32) -> Arc<Self> {
        Arc::new(Self {
            max,
            held: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Held>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A slot for one more connection of process `tgid`, or `None` when it holds the most it
    /// may (the first refusal of a run of them is logged).
    pub fn enter(self: &Arc<Self>, tgid: u32, comm: &str) -> Option<Slot> {
        let mut held = self.lock();
        let h = held.entry(tgid).or_default();
        if h.count >= self.max {
            h.refused += 1;
            if h.refused == 1 {
                warn!(
                    tgid,
                    comm,
                    held = h.count,
                    "a process holds as many connections as [http] max_connections_per_process allows; its further connections are closed at once until it closes some"
                );
            }
            return None;
        }
        h.count += 1;
        Some(Slot {
            of: self.clone(),
            tgid,
        })
    }

    /// Connections `tgid` holds now.
    #[cfg(test)]
    fn held(&self, tgid: u32) -> u32 {
        self.lock().get(&tgid).map_or(0, |h| h.count)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self.of.lock();
        if let Some(h) = held.get_mut(&self.tgid) {
            h.count = h.count.saturating_sub(1);
            if h.count == 0 {
                if h.refused > 0 {
                    info!(
                        tgid = self.tgid,
                        refused = h.refused,
                        "a process that was refused connections over its cap holds none now"
                    );
                }
                held.remove(&self.tgid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_gets_at_most_its_cap_and_others_are_not_affected() {
        let per = PerProcess::new(2);
        let a1 = per.enter(10, "a").expect("first");
        let a2 = per.enter(10, "a").expect("second");
        assert!(per.enter(10, "a").is_none(), "over the cap");
        let b = per.enter(11, "b").expect("another process is not affected");
        drop(a1);
        let a3 = per.enter(10, "a").expect("a slot given back is taken again");
        assert_eq!((per.held(10), per.held(11)), (2, 1));
        drop((a2, a3, b));
        assert!(
            per.lock().is_empty(),
            "no entry is kept for a process holding none"
        );
    }
}
