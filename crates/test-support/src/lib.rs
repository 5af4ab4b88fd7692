//! Test fakes that know nothing of ghgate: a TLS upstream impersonating GitHub (HTTP/1.1 and
//! HTTP/2, git smart HTTP, SSE, WebSocket, token-checking), GitHub's edge and meta API, a DNS
//! server, an OIDC issuer, plain TCP/UDP servers, crafted ClientHellos, git fixtures, and loopback addresses of a
//! test's own. Shared by the gateway's in-process tests and the end-to-end suite (`ghgate-e2e`).
//!
//! Everything here listens on loopback only and stops on drop. Nothing here may depend on the
//! gateway crate: a fake that did could only agree with it.
pub mod dns;
pub mod edge;
pub mod fixtures;
pub mod hello;
pub mod https;
pub mod oidc;
pub mod servers;

use std::{
    net::{Ipv4Addr, TcpListener},
    sync::atomic::{AtomicU32, Ordering},
};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A free TCP port on both 127.0.0.1 and ::1.
pub fn free_port() -> u16 {
    loop {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().unwrap().port();
        if TcpListener::bind(("::1", port)).is_ok() {
            return port;
        }
    }
}

/// A loopback address of this test's own (127.x.y.z), so parallel tests never share one.
pub fn loopback_v4() -> Ipv4Addr {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    Ipv4Addr::new(
        127,
        10 + (pid % 200) as u8,
        (pid >> 8) as u8 ^ (n as u8),
        2 + (n % 250) as u8,
    )
}
