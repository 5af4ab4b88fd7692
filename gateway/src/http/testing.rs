//! Exchanges built the way the engine builds them (classified once, from a real request head),
//! for the unit tests of the stages that read them.
use std::{
    net::SocketAddr,
    sync::{Arc, atomic::AtomicU64},
    time::Instant,
};

use ghgate_policy::classify::{self, GitHub};

use super::{ConnInfo, Exchange};
use crate::{
    identity::Caller,
    listen::{ClientAddr, OrigDstAddr},
    tls::upstream::Proto,
};

/// The caller every test exchange comes from: this process, as the kernel would say.
pub fn caller() -> Caller {
    Caller {
        tgid: std::process::id(),
        pid: std::process::id(),
        uid: nix::unistd::getuid().as_raw(),
        gid: nix::unistd::getgid().as_raw(),
        cgroup_id: 0,
        comm: "unit-test".into(),
        exe: None,
        start_ticks: None,
        cgroup: None,
        ci: Vec::new(),
        login: crate::identity::Login::default(),
    }
}

/// `METHOD https://HOST/PATH` with `headers`, on a connection whose SNI is `host`, classified
/// as the engine classifies it (panics if the engine would refuse it from its head).
pub fn exchange(method: &str, host: &str, path: &str, headers: &[(&str, &str)]) -> Exchange {
    let mut req = ::http::Request::builder()
        .method(method)
        .uri(path)
        .header(::http::header::HOST, host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let (parts, ()) = req.body(()).expect("a valid request head").into_parts();
    let req = classify::classify(&parts, host, &GitHub::default())
        .unwrap_or_else(|e| panic!("the engine refuses {method} {host}{path}: {e}"));
    let addr: SocketAddr = "127.0.0.1:443".parse().expect("an address");
    let conn = ConnInfo {
        id: 1,
        session: "unit-test-session".into(),
        client: ClientAddr(addr),
        orig_dst: OrigDstAddr(addr),
        caller: caller(),
        sni: host.into(),
        client_proto: Proto::Http1,
        upstream_proto: Some(Proto::Http1),
        client_tls: None,
    };
    Exchange {
        id: 1.into(),
        conn: Arc::new(conn),
        url: req.url(),
        req,
        started: Instant::now(),
        bodyless: !headers.iter().any(|(k, _)| {
            k.eq_ignore_ascii_case("content-length") || k.eq_ignore_ascii_case("transfer-encoding")
        }),
        bytes_up: AtomicU64::new(0),
        bytes_down: AtomicU64::new(0),
    }
}
