//! Who is calling: facts about the process behind a redirected connection.
//!
//! The kernel-sourced facts (captured at connect() time by the eBPF side) are authoritative;
//! /proc adds detail when the process is still there. This module never trusts anything the
//! client sends over the connection.
use std::{fmt, path::PathBuf};

use crate::redirect::Redirected;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Caller {
    pub tgid: u32,
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    pub cgroup_id: u64,
    pub comm: String,
    /// From /proc/<tgid>/exe at accept; `None` when the process was already gone (or hidden).
    pub exe: Option<PathBuf>,
}

impl Caller {
    /// The kernel's facts, completed from /proc where the process still exists.
    pub fn from_kernel(r: &Redirected) -> Self {
        let exe = std::fs::read_link(format!("/proc/{}/exe", r.tgid)).ok();
        Self {
            tgid: r.tgid,
            pid: r.pid,
            uid: r.uid,
            gid: r.gid,
            cgroup_id: r.cgroup_id,
            comm: r.comm.clone(),
            exe,
        }
    }
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{}] uid={}", self.comm, self.tgid, self.uid)
    }
}
