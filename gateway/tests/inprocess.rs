//! The gateway in-process, without the kernel: the same proxy `ghgate run` serves (built by
//! `ghgate::assemble`), behind a listener on loopback whose connections all "were going" to one
//! test upstream (`listen::FixedOrigDst`, the seam the kernel's redirect fills in production).
//! Real clients (curl) and a real TLS upstream; no root, no eBPF. What needs the kernel
//! (redirects, refusals in the kernel, fail-closed) is tested end to end in `tests/`.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Output,
    sync::Arc,
    time::{Duration, Instant},
};

use ghgate::{
    assemble::{Assembled, assemble},
    config::Config,
    listen::{self, FixedOrigDst},
    record::index::{Index, SessionFilter, index_path},
    redirect::Redirected,
    tls::ca,
};
use ghgate_test_support::{
    https::{TestCa, Upstream},
    loopback_v4,
};

/// A gateway serving in this process, its config and files, and the upstream every connection
/// goes to.
struct InProcess {
    /// The gateway's runtime (the test upstream runs one of its own).
    rt: tokio::runtime::Runtime,
    recorder: Option<Arc<ghgate::record::Recorder>>,
    config: Config,
    /// ghgate's CA, for clients.
    ca_file: PathBuf,
    listen: SocketAddr,
    upstream: Upstream,
    _dir: tempfile::TempDir,
}

impl InProcess {
    /// `names`: what the upstream's certificate is for; `extra`: TOML appended to the config.
    fn start(names: &[&str], extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let upstream_ca = TestCa::new();
        let upstream = Upstream::start(SocketAddr::new(loopback_v4().into(), 0), &upstream_ca, names);
        let text = format!(
            "state_dir = {state:?}\n\
             [redirect]\ncgroup = \"unused-in-process\"\n\
             [[intercept]]\ncidrs = [\"{ip}/32\"]\nports = [{port}]\n\
             [github]\nranges = \"off\"\nrefresh_secs = 0\n\
             [tls]\nports = [{port}]\nupstream_extra_roots = [{roots:?}]\n\
             {extra}",
            state = dir.path().join("state").display().to_string(),
            ip = upstream.addr.ip(),
            port = upstream.addr.port(),
            roots = upstream_ca.write_pem(dir.path()).display().to_string(),
        );
        let config = Config::parse(&text, Path::new("inprocess.toml")).unwrap_or_else(|e| panic!("{e}"));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let _entered = rt.enter();
        let Assembled { proxy, recorder, .. } = assemble(&config).unwrap();
        let listeners = listen::bind("127.0.0.1:0".parse().unwrap(), None, 2).unwrap();
        let listen = listeners[0].local_addr().unwrap();
        // Every connection is this test process calling the upstream, as the kernel would say.
        let caller = Redirected {
            orig_dst: upstream.addr,
            tgid: std::process::id(),
            pid: std::process::id(),
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
            cgroup_id: 0,
            comm: "inprocess".into(),
        };
        let _shards = listen::Shards::start(
            listeners.into_iter().map(|l| vec![l]).collect(),
            Arc::new(FixedOrigDst(caller)),
            Arc::new(proxy),
            None,
            &|_| {},
        )
        .unwrap();
        let ca_file = ca::dir(&config.state_dir).join(ca::CERT_FILE);
        drop(_entered);
        Self {
            rt,
            recorder,
            config,
            ca_file,
            listen,
            upstream,
            _dir: dir,
        }
    }

    /// curl to `https://NAME:PORT/PATH` through the gateway (trusting ghgate's CA), with `args`;
    /// prints the status code last.
    fn curl(&self, name: &str, path: &str, args: &[&str]) -> Output {
        let port = self.listen.port();
        std::process::Command::new("curl")
            .args(["-sS", "--max-time", "20", "-w", "\n%{http_code}", "--cacert"])
            .arg(&self.ca_file)
            .args(["--resolve", &format!("{name}:{port}:127.0.0.1")])
            .args(args)
            .arg(format!("https://{name}:{port}{path}"))
            .output()
            .expect("run curl")
    }

    /// Stops recording in order: everything queued is written and the segment sealed.
    fn stop_recording(&self) {
        if let Some(r) = &self.recorder {
            self.rt.block_on(r.flush()).unwrap();
            r.stop();
        }
    }

    /// The sessions the store's index lists, once it has caught up with `want` exchanges.
    fn sessions_with(&self, want: u64) -> Vec<ghgate::record::index::SessionRow> {
        let path = index_path(&self.config.record_dir());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(index) = Index::open_read_only(&path) {
                let rows = index.sessions(&SessionFilter::default()).unwrap();
                if rows.iter().map(|r| r.exchanges).sum::<u64>() >= want {
                    return rows;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the index never listed {want} exchanges"
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_request_goes_through_the_pipeline_and_is_recorded() {
    let g = InProcess::start(&["api.github.com"], "");
    let out = g.curl("api.github.com", "/inprocess", &[]);
    assert!(
        text(&out).ends_with("\n200"),
        "{}{}",
        text(&out),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(g.upstream.served(), 1);
    let sessions = g.sessions_with(1);
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    assert_eq!(sessions[0].tgid, Some(std::process::id()), "{sessions:?}");
    assert_eq!(sessions[0].hosts, ["api.github.com"], "{sessions:?}");
}

#[test]
fn a_host_that_is_not_the_sni_is_answered_421_and_never_forwarded() {
    let g = InProcess::start(&["api.github.com"], "");
    let out = g.curl("api.github.com", "/user", &["-H", "Host: evil.example"]);
    assert!(text(&out).ends_with("\n421"), "{}", text(&out));
    assert_eq!(g.upstream.served(), 0, "nothing reached the upstream");
}

#[test]
fn a_name_neither_intercepted_nor_passed_through_is_refused_at_the_peek() {
    let g = InProcess::start(&["api.github.com"], "");
    let out = g.curl("elsewhere.example", "/", &[]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unrecognized name"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(g.upstream.connections(), 0, "the upstream was never dialled");
}

#[test]
fn a_denied_api_write_never_reaches_the_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "default = \"allow\"\n[[rule]]\nname = \"no-deletes\"\naction = \"deny\"\nmethod = [\"DELETE\"]\nmessage = \"deletes are not allowed\"\n",
    )
    .unwrap();
    let g = InProcess::start(
        &["api.github.com"],
        &format!("[policy]\nfile = {:?}\n", policy.display().to_string()),
    );
    let out = g.curl(
        "api.github.com",
        "/repos/o/r/git/refs/heads/main",
        &["-X", "DELETE"],
    );
    assert!(text(&out).ends_with("\n403"), "{}", text(&out));
    assert!(text(&out).contains("deletes are not allowed"), "{}", text(&out));
    assert_eq!(g.upstream.served(), 0);
    let ok = g.curl("api.github.com", "/repos/o/r", &[]);
    assert!(text(&ok).ends_with("\n200"), "{}", text(&ok));
    assert_eq!(g.upstream.served(), 1);
}

/// Where the store written by `write_the_compatibility_store` is kept: a store in today's
/// on-disk format that every later version must still verify, list, show and export. The record
/// crate's tests read it (`crates/record/tests/compat.rs`); only its writing needs the gateway.
fn compat_store() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates/record/tests/fixtures/store-2026-12")
}

/// Writes the compatibility store (segments and the recorder's public key, no private key and no
/// index) from real traffic through the in-process gateway. Run it only when the on-disk format
/// changes on purpose: `cargo test -p ghgate --test inprocess -- --ignored write_the_compat`.
#[test]
#[ignore = "regenerates a committed fixture"]
fn write_the_compatibility_store() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "default = \"allow\"\n[[rule]]\nname = \"no-deletes\"\naction = \"deny\"\nmethod = [\"DELETE\"]\nmessage = \"deletes are not allowed\"\n",
    )
    .unwrap();
    let g = InProcess::start(
        &["api.github.com", "api.githubcopilot.com"],
        &format!("[policy]\nfile = {:?}\n", policy.display().to_string()),
    );
    for (name, path, args) in [
        (
            "api.github.com",
            "/repos/o/r",
            vec![
                "-H",
                "Authorization: Bearer ghp_C0mpatSt0reT0kenN0tRealAtAll012345678",
            ],
        ),
        ("api.githubcopilot.com", "/sse?n=3", vec!["-N"]),
        (
            "api.github.com",
            "/repos/o/r/git/refs/heads/main",
            vec!["-X", "DELETE"],
        ),
        ("api.github.com", "/user", vec!["-H", "Host: evil.example"]),
        ("elsewhere.example", "/", vec![]),
    ] {
        let _ = g.curl(name, path, &args);
    }
    g.sessions_with(4);
    let record = g.config.record_dir();
    let key = ghgate::record::store::load_or_create_key(&ghgate::record::store::key_path(&record)).unwrap();
    let out = compat_store();
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(out.join("segments")).unwrap();
    g.stop_recording();
    for e in std::fs::read_dir(record.join("segments")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), out.join("segments").join(e.file_name())).unwrap();
    }
    std::fs::write(
        out.join("recorder.pub.pem"),
        ghgate::record::store::public_key_pem(&key),
    )
    .unwrap();
}

/// A hyper HTTP/1.1 client over rustls (as git's, gh's and the bench's stacks hold connections),
/// quiet for longer than the head deadline between requests on one keep-alive connection: the
/// quiet is the idle timeout's, so the next request is answered on the same connection.
#[test]
fn a_keep_alive_connection_quiet_past_the_head_deadline_serves_its_next_request() {
    use http_body_util::{BodyExt as _, Empty};
    use hyper_util::rt::TokioIo;
    use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject as _};

    let g = InProcess::start(
        &["api.github.com"],
        "[http]\nheader_read_timeout_secs = 1\nidle_timeout_secs = 30\n",
    );
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&g.ca_file).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let mut tls =
        rustls::ClientConfig::builder_with_provider(rustls::crypto::ring::default_provider().into())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let (listen, port) = (g.listen, g.upstream.addr.port());
    let tls = Arc::new(tls);
    let statuses = g.rt.block_on(async move {
        let connect = || async {
            let tcp = tokio::net::TcpStream::connect(listen).await.unwrap();
            let name = ServerName::try_from("api.github.com").unwrap();
            tokio_rustls::TlsConnector::from(tls.clone())
                .connect(name, tcp)
                .await
                .unwrap()
        };
        // A first connection, so that the second resumes its TLS session (as the bench's do).
        drop(connect().await);
        let stream = connect().await;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        let conn = tokio::spawn(conn);
        let mut statuses = Vec::new();
        for i in 0..2 {
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(2500)).await;
                assert!(
                    !conn.is_finished(),
                    "the connection closed while quiet: {:?}",
                    conn.await
                );
            }
            send.ready().await.unwrap();
            let req = hyper::Request::get("/x")
                .header("host", format!("api.github.com:{port}"))
                .body(Empty::<bytes::Bytes>::new())
                .unwrap();
            let resp = send.send_request(req).await.unwrap();
            statuses.push(resp.status().as_u16());
            resp.into_body().collect().await.unwrap();
        }
        statuses
    });
    assert_eq!(statuses, [200, 200]);
    assert_eq!(g.upstream.served(), 2);
}
