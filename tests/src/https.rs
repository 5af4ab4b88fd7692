//! The gateway side of the TLS tests: [`TlsGateway`], a gateway terminating TLS for one test
//! upstream; the upstream itself lives in `ghgate-test-support` and is re-exported here.
use std::{net::SocketAddr, path::PathBuf, sync::Arc};

pub use ghgate_test_support::https::*;

/// A gateway terminating TLS for one test upstream's port, the upstream, and ghgate's CA file.
/// Fields drop in order: the gateway (detached) before its cgroup.
pub struct TlsGateway {
    pub gw: crate::Gateway,
    pub upstream: Upstream,
    /// ghgate's CA, for clients.
    pub ca_file: PathBuf,
    /// The upstream's own CA (trusted by the gateway only when `trusted`).
    pub upstream_ca: PathBuf,
    pub cg: crate::TestCgroup,
    pub dir: tempfile::TempDir,
}

impl TlsGateway {
    /// `names`: what the upstream's certificate is for; `trusted`: whether the gateway trusts
    /// the upstream's CA; `git_root`: repositories to serve; `extra_toml`: appended config.
    pub fn start(names: &[&str], trusted: bool, git_root: Option<PathBuf>, extra_toml: &str) -> Self {
        Self::start_with(names, trusted, git_root, None, &|_| extra_toml.to_owned())
    }

    /// As `start`, with the upstream playing GitHub's side of credential brokering (`auth`),
    /// the config's extra TOML made once the upstream's address is known, and every name in
    /// `names` resolved to the upstream for the gateway's own requests (`[dns] overrides`).
    /// A gateway for github.com and api.github.com under the policy `policy_text` (written in
    /// `dir`, which is made traversable for approvers of other uids), asking the upstream's API
    /// what the policy needs, with its approval socket in `dir`; `git_root` serves repositories.
    pub fn with_policy(dir: &std::path::Path, policy_text: &str, git_root: Option<PathBuf>) -> Self {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711)).unwrap();
        let policy = dir.join("policy.toml");
        std::fs::write(&policy, policy_text).unwrap();
        let socket = dir.join("control.sock");
        let toml = |addr: SocketAddr| {
            format!(
                "[policy]\nfile = \"{}\"\napi_url = \"https://api.github.com:{}\"\n\n[approvals]\nsocket = \"{}\"\n",
                policy.display(),
                addr.port(),
                socket.display()
            )
        };
        Self::start_with(&["github.com", "api.github.com"], true, git_root, None, &toml)
    }

    pub fn start_with(
        names: &[&str],
        trusted: bool,
        git_root: Option<PathBuf>,
        auth: Option<Arc<Auth>>,
        extra_toml: &dyn Fn(SocketAddr) -> String,
    ) -> Self {
        Self::start_tweaked(names, trusted, git_root, auth, extra_toml, &|_| {})
    }

    /// As `start_with`, with the gateway's spec adjusted by `tweak` before it starts (e.g.
    /// `[tls] passthrough` names).
    pub fn start_tweaked(
        names: &[&str],
        trusted: bool,
        git_root: Option<PathBuf>,
        auth: Option<Arc<Auth>>,
        extra_toml: &dyn Fn(SocketAddr) -> String,
        tweak: &dyn Fn(&mut crate::GatewaySpec),
    ) -> Self {
        Self::build(names, trusted, git_root, auth, extra_toml, tweak, None)
    }

    /// As `start`, trusted, to an upstream that offers only HTTP/1.1 in ALPN.
    pub fn start_h1_upstream(names: &[&str]) -> Self {
        Self::build(
            names,
            true,
            None,
            None,
            &|_| String::new(),
            &|_| {},
            Some(&[b"http/1.1"]),
        )
    }

    fn build(
        names: &[&str],
        trusted: bool,
        git_root: Option<PathBuf>,
        auth: Option<Arc<Auth>>,
        extra_toml: &dyn Fn(SocketAddr) -> String,
        tweak: &dyn Fn(&mut crate::GatewaySpec),
        alpn: Option<&[&[u8]]>,
    ) -> Self {
        let cg = crate::TestCgroup::new();
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new();
        let bind = SocketAddr::new(crate::loopback_v4().into(), 0);
        let mut builder = Upstream::builder(&ca, names).bind(bind).git(git_root).auth(auth);
        if let Some(alpn) = alpn {
            builder = builder.alpn(alpn);
        }
        let upstream = builder.start();
        let port = upstream.addr.port();
        let upstream_ca = ca.write_pem(dir.path());
        let spec = crate::GatewaySpec {
            intercept: vec![(vec![], vec![format!("{}/32", upstream.addr.ip())], vec![port])],
            overrides: names
                .iter()
                .map(|n| (n.to_string(), vec![upstream.addr.ip().to_string()]))
                .collect(),
            tls_ports: vec![port],
            upstream_extra_roots: if trusted {
                vec![upstream_ca.clone()]
            } else {
                vec![]
            },
            extra_toml: extra_toml(upstream.addr),
            ..Default::default()
        };
        let mut spec = spec;
        tweak(&mut spec);
        let gw = crate::Gateway::start(&cg, &spec);
        let ca_file = gw.ca_file();
        Self {
            gw,
            upstream,
            ca_file,
            upstream_ca,
            cg,
            dir,
        }
    }

    /// `https://NAME:PORT/PATH` for the upstream, and the matching `--resolve` for curl.
    pub fn url(&self, name: &str, path: &str) -> (String, String) {
        let port = self.upstream.addr.port();
        (
            format!("https://{name}:{port}{path}"),
            format!("{name}:{port}:{}", self.upstream.addr.ip()),
        )
    }

    /// `git ARGS…` in `dir` inside the cgroup, configured only with `http.sslCAInfo` (ghgate's CA)
    /// and `http.curloptResolve` (github.com → the upstream); panics with git's stderr on failure.
    pub fn git(&self, dir: &std::path::Path, args: &[&str]) {
        let out = self.git_output(dir, args);
        assert!(
            out.status.success(),
            "git {args:?} through ghgate: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `git clone https://github.com:<upstream port>/o/r.git DIR/work` through the gateway; the
    /// clone's path.
    pub fn clone_o_r(&self, dir: &std::path::Path) -> std::path::PathBuf {
        let url = format!("https://github.com:{}/o/r.git", self.upstream.addr.port());
        self.git(dir, &["clone", "-q", &url, "work"]);
        dir.join("work")
    }

    /// As [`TlsGateway::git`], for a command that may fail: its output.
    pub fn git_output(&self, dir: &std::path::Path, args: &[&str]) -> std::process::Output {
        self.git_command(dir, args).output().unwrap()
    }

    /// The `git ARGS…` command [`TlsGateway::git`] runs, to add to (an environment variable).
    pub fn git_command(&self, dir: &std::path::Path, args: &[&str]) -> std::process::Command {
        let port = self.upstream.addr.port();
        let mut cmd = self.gw.exec("git");
        cmd.current_dir(dir)
            .arg("-c")
            .arg(format!("http.sslCAInfo={}", self.ca_file.display()))
            .arg("-c")
            .arg(format!(
                "http.curloptResolve=github.com:{port}:{}",
                self.upstream.addr.ip()
            ))
            .args(args)
            .env("GIT_TERMINAL_PROMPT", "0")
            // This environment points git at the system bundle; the tests configure git only by -c.
            .env_remove("GIT_SSL_CAINFO")
            .env_remove("GIT_SSL_CAPATH");
        cmd
    }

    /// Sends `request` as it is (a hand-made HTTP/1.1 head and body: two Host headers, an
    /// absolute-form target, a pkt-line body) over TLS with `sni` to the upstream's port,
    /// inside the cgroup, and returns the response as text.
    pub fn raw(&self, sni: &str, request: &[u8]) -> String {
        use std::io::Write as _;
        let script = r#"
import socket, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[4])
s = ctx.wrap_socket(socket.create_connection((sys.argv[1], int(sys.argv[2]))), server_hostname=sys.argv[3])
s.sendall(sys.stdin.buffer.read())
data = b""
while chunk := s.recv(65536):
    data += chunk
sys.stdout.write(data.decode("latin-1"))
"#;
        let mut child = self
            .gw
            .exec("python3")
            .args(["-c", script])
            .arg(self.upstream.addr.ip().to_string())
            .arg(self.upstream.addr.port().to_string())
            .arg(sni)
            .arg(&self.ca_file)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(request).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "python3 TLS client: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ghgate exec -- curl -sS --cacert <ghgate CA> --resolve … ARGS… URL` inside the cgroup.
    pub fn curl(&self, name: &str, path: &str, args: &[&str]) -> std::process::Output {
        let (url, resolve) = self.url(name, path);
        self.gw
            .exec("curl")
            .args(["-sS", "--max-time", "120", "--cacert"])
            .arg(&self.ca_file)
            .args(["--resolve", &resolve])
            .args(args)
            .arg(&url)
            .output()
            .unwrap()
    }
}
