//! systemd's notify protocol (`Type=notify`): the gateway says when it is ready, and while a
//! long start-up step runs (rebuilding the record index after an upgrade) that it needs longer
//! than `TimeoutStartSec`, so systemd does not kill it mid-rebuild and start it over.
use std::{
    ffi::{OsStr, OsString},
    sync::mpsc,
    thread,
    time::Duration,
};

use tracing::warn;

/// Tells systemd the gateway is ready (`Type=notify`), so that units ordered after it (the
/// runners) start only once the programs are attached and the listeners bound: with
/// `Type=simple` they would start as soon as the process is forked, before anything is enforced.
/// Nothing is sent when not started by systemd (no `NOTIFY_SOCKET`).
pub fn ready() {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = send_notify(&path, b"READY=1") {
        warn!(error = %e, "cannot tell systemd the gateway is ready");
    }
}

/// While it lives, asks systemd every `every` for `every` × 3 more time to start, saying what
/// the gateway is doing; stops when dropped. Only around steps that make progress by
/// themselves (a hung step would otherwise be waited for forever).
pub struct Extending {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Extending {
    /// Extends the start-up while `doing` (no-op outside systemd).
    pub fn start(doing: &str) -> Self {
        Self::start_at(std::env::var_os("NOTIFY_SOCKET"), doing, Duration::from_secs(20))
    }

    fn start_at(socket: Option<OsString>, doing: &str, every: Duration) -> Self {
        let Some(path) = socket else {
            return Self {
                stop: None,
                thread: None,
            };
        };
        let message = format!("EXTEND_TIMEOUT_USEC={}\nSTATUS={doing}", (every * 3).as_micros());
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = thread::Builder::new()
            .name("ghgate-notify".into())
            .spawn(move || {
                loop {
                    if let Err(e) = send_notify(&path, message.as_bytes()) {
                        warn!(error = %e, "cannot ask systemd for more time to start");
                    }
                    match stopped.recv_timeout(every) {
                        Err(mpsc::RecvTimeoutError::Timeout) => {}
                        _ => return,
                    }
                }
            })
            .ok();
        Self {
            stop: Some(stop),
            thread,
        }
    }
}

impl Drop for Extending {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn send_notify(path: &OsStr, message: &[u8]) -> std::io::Result<()> {
    use std::os::{linux::net::SocketAddrExt as _, unix::ffi::OsStrExt as _};
    let socket = std::os::unix::net::UnixDatagram::unbound()?;
    let bytes = path.as_bytes();
    // A leading `@` names a socket in the abstract namespace.
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => std::os::unix::net::SocketAddr::from_abstract_name(name)?,
        None => std::os::unix::net::SocketAddr::from_pathname(path)?,
    };
    socket.send_to_addr(message, &addr)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    /// The message reaches a socket bound where `NOTIFY_SOCKET` says, path or abstract name.
    #[test]
    fn ready_reaches_the_notify_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        super::send_notify(path.as_os_str(), b"READY=1").unwrap();
        let mut buf = [0u8; 16];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");

        use std::os::linux::net::SocketAddrExt as _;
        let name = format!("ghgate-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let abstract_listener = std::os::unix::net::UnixDatagram::bind_addr(&addr).unwrap();
        super::send_notify(std::ffi::OsStr::new(&format!("@{name}")), b"READY=1").unwrap();
        let n = abstract_listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }

    /// While it lives, the extender asks for more time again and again, with what the gateway
    /// is doing; once dropped, it asks no more.
    #[test]
    fn an_extender_asks_for_more_time_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        listener.set_nonblocking(true).unwrap();
        let extending = super::Extending::start_at(
            Some(path.into_os_string()),
            "rebuilding the record index",
            std::time::Duration::from_millis(40),
        );
        std::thread::sleep(std::time::Duration::from_millis(150));
        drop(extending);
        let mut got = Vec::new();
        let mut buf = [0u8; 128];
        while let Ok(n) = listener.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        assert!(got.len() >= 3, "asked again while it lived: {got:?}");
        assert!(
            got.iter()
                .all(|m| m == "EXTEND_TIMEOUT_USEC=120000\nSTATUS=rebuilding the record index"),
            "{got:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(
            listener.recv(&mut buf).is_err(),
            "asked again after it was dropped"
        );
    }
}
