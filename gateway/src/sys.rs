//! The daemon's only `unsafe` code: two system calls' worth of glue that no safe crate in the tree
//! offers. Everything else in the daemon is built with `unsafe_code` denied (workspace lints).
//!
//! Each function here is safe to call: its `unsafe` block's conditions hold for every argument
//! its (concrete) types admit.
#![allow(
    unsafe_code,
    reason = "the daemon's one module of FFI glue; each block states its SAFETY"
)]

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd, FromRawFd as _, OwnedFd, RawFd},
};

use aya::maps::{MapData, RingBuf};
use nix::sys::inotify::Inotify;
use tokio::io::{Interest, unix::AsyncFd};

/// A pidfd for `tgid` (readable once the process exits), or `None` when it is gone or the
/// kernel has no `pidfd_open` (before 5.3).
pub fn pidfd_open(tgid: u32) -> Option<OwnedFd> {
    let pid = libc::pid_t::try_from(tgid).ok()?;
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1; no memory is
    // passed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, libc::O_NONBLOCK) };
    let fd = i32::try_from(fd).ok().filter(|fd| *fd >= 0)?;
    // SAFETY: a non-negative return is a new descriptor that this process now owns, and nothing
    // else holds it.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Watches a pidfd for readability (its process has exited).
pub fn watch_pidfd(pidfd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the AsyncFd owns the OwnedFd, so the descriptor stays open, and the same, for as
    // long as it is registered.
    unsafe { AsyncFd::register_with_interest(pidfd, Interest::READABLE) }.map_err(io::Error::from)
}

/// Watches a kernel ring buffer for readability (events to read).
pub fn watch_ring(ring: RingBuf<MapData>) -> io::Result<AsyncFd<RingBuf<MapData>>> {
    // SAFETY: the ring owns its map's file descriptor, which stays open and the same for as long
    // as the AsyncFd owns the ring.
    unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }.map_err(io::Error::from)
}

/// An inotify instance registered with the reactor ([`watch_inotify`]).
pub struct Inotified(Inotify);

impl Inotified {
    pub fn inotify(&self) -> &Inotify {
        &self.0
    }
}

impl AsRawFd for Inotified {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// Watches an inotify instance for readability (events to read).
pub fn watch_inotify(inotify: Inotify) -> io::Result<AsyncFd<Inotified>> {
    // SAFETY: the descriptor is the Inotify's own, which the AsyncFd owns (inside Inotified, which
    // gives out only a shared reference) and which is never closed or replaced while it lives.
    unsafe { AsyncFd::register_with_interest(Inotified(inotify), Interest::READABLE) }
        .map_err(io::Error::from)
}

/// The kernel's NTP status (`adjtimex`): false while `STA_UNSYNC` is set, `None` when it cannot
/// be read.
pub fn clock_synced() -> Option<bool> {
    // SAFETY: timex is plain data, for which all zeroes is a valid value.
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    // SAFETY: with modes 0 adjtimex only writes the kernel's state into the timex it is given,
    // which lives across the call.
    let state = unsafe { libc::adjtimex(&mut tx) };
    if state < 0 {
        return None;
    }
    Some(state != libc::TIME_ERROR && tx.status & libc::STA_UNSYNC == 0)
}

/// Bytes free to unprivileged writers, and the size, of the filesystem holding `dir` (statvfs):
/// what `doctor` reports of the store, and what ends the recorder's writing reads ahead after a
/// failure.
pub fn disk_space(dir: &std::path::Path) -> nix::Result<(u64, u64)> {
    #[allow(
        clippy::unnecessary_cast,
        reason = "fsblkcnt_t and c_ulong are not u64 on every target"
    )]
    nix::sys::statvfs::statvfs(dir).map(|s| {
        let block = s.fragment_size() as u64;
        (s.blocks_available() as u64 * block, s.blocks() as u64 * block)
    })
}
