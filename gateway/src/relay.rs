//! The TCP relay: forwards an accepted connection to its original destination, byte for byte.
//!
//! Bytes move with splice(2) through a pipe, so they never enter userspace. This stage never
//! resolves names (it dials the address the client dialled) and never forwards a connection
//! whose destination is unknown.
use std::{
    future::Future,
    io,
    os::fd::{AsFd, AsRawFd, OwnedFd},
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use nix::{
    fcntl::{FcntlArg, OFlag, SpliceFFlags, fcntl, splice},
    sys::socket::{Shutdown, shutdown},
    unistd::pipe2,
};
use tokio::{io::Interest, net::TcpStream};
use tracing::{info, warn};

use crate::{
    listen::{Accepted, Handler},
    record::{
        Recorder,
        model::{self, PassthroughReason},
    },
};

/// Bytes moved per splice call; also the pipe's capacity.
const CHUNK: usize = 1 << 20;

/// Relays each connection to where it was going.
pub struct Relay {
    pub connect_timeout: Duration,
    /// Where the facts of each relayed connection are recorded, when recording.
    pub recorder: Option<Arc<Recorder>>,
}

impl Handler for Relay {
    fn handle(&self, conn: Accepted) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(self.run(conn, None, PassthroughReason::NotATlsPort))
    }
}

impl Relay {
    /// Relays `conn`; `sni` and `reason` say what was seen of it and why it was not terminated.
    pub(crate) async fn run(&self, conn: Accepted, sni: Option<String>, reason: PassthroughReason) {
        let Accepted {
            stream: client,
            client: client_addr,
            orig_dst,
            caller,
            accepted_at,
        } = conn;
        let upstream = match tokio::time::timeout(
            self.connect_timeout,
            crate::redirect::exempt::connect(orig_dst.0),
        )
        .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                warn!(client = %client_addr, orig_dst = %orig_dst, tgid = caller.tgid, uid = caller.uid, comm = %caller.comm,
                      error = %e, "cannot reach original destination; resetting client");
                reset(client);
                return;
            }
            Err(_) => {
                warn!(client = %client_addr, orig_dst = %orig_dst, tgid = caller.tgid, uid = caller.uid, comm = %caller.comm,
                      timeout_s = self.connect_timeout.as_secs(), "original destination did not answer; resetting client");
                reset(client);
                return;
            }
        };
        let _ = client.set_nodelay(true);
        let _ = upstream.set_nodelay(true);
        let (up, down) = (AtomicU64::new(0), AtomicU64::new(0));
        let result = relay(&client, &upstream, &up, &down).await;
        let outcome = match &result {
            Ok(()) => "closed".to_string(),
            Err(e) => format!("error: {e}"),
        };
        info!(
            client = %client_addr,
            orig_dst = %orig_dst,
            sni = sni.as_deref().unwrap_or(""),
            tgid = caller.tgid,
            pid = caller.pid,
            uid = caller.uid,
            gid = caller.gid,
            comm = %caller.comm,
            exe = %caller.exe.as_deref().map(|p| p.display().to_string()).unwrap_or_default(),
            cgroup_id = caller.cgroup_id,
            bytes_up = up.load(Ordering::Relaxed),
            bytes_down = down.load(Ordering::Relaxed),
            duration_ms = accepted_at.elapsed().as_millis() as u64,
            outcome = %outcome,
            "connection relayed"
        );
        if let Some(recorder) = &self.recorder {
            recorder.passthrough(
                &caller,
                model::Passthrough {
                    session: caller.session_id(),
                    at: model::now_micros().saturating_sub(accepted_at.elapsed().as_micros() as u64),
                    client: client_addr.to_string(),
                    orig_dst: orig_dst.to_string(),
                    sni,
                    reason,
                    bytes_up: up.load(Ordering::Relaxed),
                    bytes_down: down.load(Ordering::Relaxed),
                    duration_us: accepted_at.elapsed().as_micros() as u64,
                },
            );
        }
    }
}

/// Sends RST rather than FIN, so the client sees a failure rather than an empty answer.
fn reset(stream: TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let _ = nix::sys::socket::setsockopt(&stream, nix::sys::socket::sockopt::Linger, &linger);
    drop(stream);
}

/// Relays both directions until both have ended; counts bytes as they move. The first error
/// ends both directions.
pub async fn relay(a: &TcpStream, b: &TcpStream, a_to_b: &AtomicU64, b_to_a: &AtomicU64) -> io::Result<()> {
    tokio::try_join!(pump(a, b, a_to_b), pump(b, a, b_to_a)).map(|_| ())
}

/// A pipe and how many bytes it holds at most.
fn pipe() -> io::Result<(OwnedFd, OwnedFd, usize)> {
    let (r, w) = pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
    // A larger pipe means fewer syscalls per byte; the default (64 KiB) still works if refused.
    let _ = fcntl(&w, FcntlArg::F_SETPIPE_SZ(CHUNK as i32));
    let capacity = fcntl(&w, FcntlArg::F_GETPIPE_SZ)
        .map(|n| n as usize)
        .unwrap_or(64 * 1024);
    Ok((r, w, capacity))
}

/// One direction: socket → pipe → socket, reading and writing as each side is ready so both
/// hops stay busy, then half-close the destination on EOF. The pipe is never filled past its
/// capacity, so an EAGAIN always means the socket, never the pipe.
async fn pump(from: &TcpStream, to: &TcpStream, count: &AtomicU64) -> io::Result<()> {
    let (pipe_r, pipe_w, capacity) = pipe()?;
    let flags = SpliceFFlags::SPLICE_F_NONBLOCK | SpliceFFlags::SPLICE_F_MOVE;
    let (mut in_pipe, mut eof) = (0usize, false);
    loop {
        if in_pipe > 0 {
            match to.try_io(Interest::WRITABLE, || {
                Ok(splice(pipe_r.as_fd(), None, to.as_fd(), None, in_pipe, flags)?)
            }) {
                Ok(n) => {
                    in_pipe -= n;
                    count.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        if eof && in_pipe == 0 {
            // Peer finished sending: pass the half-close on and let the other direction finish.
            let _ = shutdown(to.as_raw_fd(), Shutdown::Write);
            return Ok(());
        }
        if !eof && in_pipe < capacity {
            match from.try_io(Interest::READABLE, || {
                Ok(splice(
                    from.as_fd(),
                    None,
                    pipe_w.as_fd(),
                    None,
                    capacity - in_pipe,
                    flags,
                )?)
            }) {
                Ok(0) => eof = true,
                Ok(n) => in_pipe += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        let want_read = !eof && in_pipe < capacity;
        let want_write = in_pipe > 0;
        if !want_read && !want_write {
            // EOF was read just now with the pipe empty: loop round to pass the half-close on.
            continue;
        }
        tokio::select! {
            r = from.readable(), if want_read => r?,
            w = to.writable(), if want_write => w?,
        }
    }
}
