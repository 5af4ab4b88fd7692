//! A real S3-compatible server for the record sink's tests: moto's server (PyPI `moto[server]`,
//! installed by `cargo xtask setup` in a virtualenv at the pinned version), started on a loopback
//! port of its own and stopped on drop; boto3 from the same virtualenv plays the auditor and the
//! attacker. [`Cut`] stands between the gateway and the server to make it unreachable for a while.
//!
//! moto implements S3 Object Lock (bucket lock configuration, per-object retention, refusal to
//! delete a locked version), which is what the sink's guarantees rest on.
use std::{
    io::{Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

/// The access key pair the tests give moto (it accepts any).
pub const ACCESS_KEY: &str = "AKIAGHGATEFLEETTEST1";
pub const SECRET_KEY: &str = "fleetSecretKeyThatMustNeverBeLogged0001";

/// The virtualenv `cargo xtask setup` made: `$GHGATE_MOTO_VENV`, else
/// `~/.cache/ghgate/moto-<pin from [workspace.metadata.ghgate] moto>`.
pub fn venv() -> PathBuf {
    if let Ok(v) = std::env::var("GHGATE_MOTO_VENV") {
        return v.into();
    }
    let manifest = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml")).unwrap();
    let doc: toml::Value = toml::from_str(&manifest).unwrap();
    let pin = doc["workspace"]["metadata"]["ghgate"]["moto"]
        .as_str()
        .expect("[workspace.metadata.ghgate] moto pins the S3 test server");
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    PathBuf::from(home).join(format!(".cache/ghgate/moto-{pin}"))
}

/// A running moto server on 127.0.0.1.
pub struct S3Server {
    pub port: u16,
    child: Child,
}

impl S3Server {
    pub fn start() -> S3Server {
        let bin = venv().join("bin/moto_server");
        assert!(
            bin.exists(),
            "{} is missing: run `cargo xtask setup`",
            bin.display()
        );
        let port = crate::free_port();
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto_server did not listen on {port}");
            thread::sleep(Duration::from_millis(100));
        }
        S3Server { port, child }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Runs `script` with boto3 (`s3` is a client of this server, `json` and `sys` imported;
    /// `args` are `sys.argv[1:]`) and parses what it prints as JSON.
    pub fn boto(&self, script: &str, args: &[&str]) -> Result<Value, String> {
        let prelude = format!(
            "import boto3, json, sys, datetime\n\
             s3 = boto3.client('s3', endpoint_url='{}', aws_access_key_id='{ACCESS_KEY}', \
             aws_secret_access_key='{SECRET_KEY}', region_name='us-east-1')\n",
            self.url()
        );
        let out = Command::new(venv().join("bin/python"))
            .arg("-c")
            .arg(prelude + script)
            .args(args)
            .output()
            .unwrap();
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
    }

    /// A bucket, with Object Lock enabled when `lock`.
    pub fn create_bucket(&self, name: &str, lock: bool) {
        self.boto(
            "s3.create_bucket(Bucket=sys.argv[1], ObjectLockEnabledForBucket=sys.argv[2]=='1')\nprint('null')",
            &[name, if lock { "1" } else { "0" }],
        )
        .unwrap();
    }

    /// Every key under `prefix`.
    pub fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let v = self
            .boto(
                "p = s3.get_paginator('list_objects_v2')\n\
                 print(json.dumps([o['Key'] for page in p.paginate(Bucket=sys.argv[1], Prefix=sys.argv[2]) for o in page.get('Contents', [])]))",
                &[bucket, prefix],
            )
            .unwrap();
        serde_json::from_value(v).unwrap()
    }

    /// An object's bytes.
    pub fn get(&self, bucket: &str, key: &str) -> Vec<u8> {
        let v = self
            .boto(
                "print(json.dumps(list(s3.get_object(Bucket=sys.argv[1], Key=sys.argv[2])['Body'].read())))",
                &[bucket, key],
            )
            .unwrap();
        serde_json::from_value(v).unwrap()
    }

    /// The Object Lock retention of an object's current version: (mode, retain-until as given,
    /// version id).
    pub fn retention(&self, bucket: &str, key: &str) -> (String, String, String) {
        let v = self
            .boto(
                "h = s3.head_object(Bucket=sys.argv[1], Key=sys.argv[2])\n\
                 print(json.dumps([h.get('ObjectLockMode', ''), str(h.get('ObjectLockRetainUntilDate', '')), h.get('VersionId', '')]))",
                &[bucket, key],
            )
            .unwrap();
        serde_json::from_value(v).unwrap()
    }

    /// Tries to delete one version of an object, as a holder of the bucket's credentials would
    /// to erase evidence; the error text when refused.
    pub fn delete_version(&self, bucket: &str, key: &str, version: &str) -> Result<(), String> {
        self.boto(
            "s3.delete_object(Bucket=sys.argv[1], Key=sys.argv[2], VersionId=sys.argv[3])\nprint('null')",
            &[bucket, key, version],
        )
        .map(|_| ())
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP forwarder on its own loopback port to `target`, which can be cut (its port then
/// refuses connections and open ones are reset) and restored on the same port.
pub struct Cut {
    pub port: u16,
    target: u16,
    open: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    accept: Option<thread::JoinHandle<()>>,
}

impl Cut {
    pub fn new(target: u16) -> Cut {
        let mut cut = Cut {
            port: crate::free_port(),
            target,
            open: Arc::new(AtomicBool::new(false)),
            conns: Arc::default(),
            accept: None,
        };
        cut.restore();
        cut
    }

    /// Stops listening and resets every open connection.
    pub fn cut(&mut self) {
        self.open.store(false, Ordering::SeqCst);
        // Wake the accept loop so it drops the listener.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    pub fn restore(&mut self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).unwrap();
        self.open.store(true, Ordering::SeqCst);
        let (open, conns, target) = (self.open.clone(), self.conns.clone(), self.target);
        self.accept = Some(thread::spawn(move || {
            for client in listener.incoming() {
                if !open.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                let mut list = conns.lock().unwrap();
                for s in [&client, &server] {
                    if let Ok(c) = s.try_clone() {
                        list.push(c);
                    }
                }
                drop(list);
                pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
                pipe(server, client);
            }
        }));
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    thread::spawn(move || {
        let mut buf = [0u8; 16 << 10];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 || to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}

impl Drop for Cut {
    fn drop(&mut self) {
        self.cut();
    }
}
