//! Reading the fleet: every runner's copy in the bucket, mirrored into a local directory laid out
//! as a store (so the one verifier, index and views read it), and `verify --remote`'s checks of
//! what only the bucket can prove: the pinned key, the anchors, Object Lock retention, and a
//! local store against its remote copy (cut short, rewritten or re-signed).
//!
//! Read-only towards the bucket; it must never print the credentials.
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use ed25519_dalek::VerifyingKey;
use ed25519_dalek::pkcs8::DecodePublicKey as _;
use futures_util::StreamExt as _;
use object_store::aws::AmazonS3;
use object_store::path::Path as ObjPath;
use object_store::signer::Signer as _;
use object_store::{ObjectStore as _, ObjectStoreExt as _};

use super::config::Credentials;
use crate::record::store::{self, Anchor};

/// A bucket given as `http(s)://endpoint/bucket`.
pub struct Remote {
    s3: AmazonS3,
    pub bucket: String,
}

/// One runner's copy, mirrored.
pub struct Mirror {
    pub runner: String,
    /// A store directory: `segments/` holds the sealed segments and, after them, the newest
    /// partial copy.
    pub dir: PathBuf,
    pub pinned: Option<VerifyingKey>,
    /// Keys the runner presented after the pin (`keys/`).
    pub changed_keys: Vec<String>,
    pub anchors: Vec<Anchor>,
    /// Sealed segments in the bucket, with their object paths.
    pub sealed: Vec<(u64, ObjPath)>,
}

impl Remote {
    pub fn open(url: &str, region: &str, creds: &Credentials) -> Result<Remote> {
        let url = url.trim_end_matches('/');
        let Some((endpoint, bucket)) = url
            .rsplit_once('/')
            .filter(|(e, b)| e.contains("://") && !e.ends_with('/') && !b.is_empty())
        else {
            bail!(
                "--remote must be the endpoint and the bucket, e.g. https://s3.eu-west-1.amazonaws.com/fleet-evidence"
            );
        };
        let _ = rustls::crypto::ring::default_provider().install_default();
        let s3 = super::s3_client(endpoint, bucket, region, creds, None)?;
        Ok(Remote {
            s3,
            bucket: bucket.to_owned(),
        })
    }

    /// Every runner with a folder in the bucket.
    pub async fn runners(&self) -> Result<Vec<String>> {
        let list = self
            .s3
            .list_with_delimiter(None)
            .await
            .context("cannot list the bucket")?;
        let mut runners: Vec<String> = list
            .common_prefixes
            .iter()
            .map(|p| p.as_ref().trim_end_matches('/').to_owned())
            .collect();
        runners.sort();
        Ok(runners)
    }

    async fn get(&self, path: &ObjPath) -> Result<bytes::Bytes> {
        Ok(self
            .s3
            .get(path)
            .await
            .with_context(|| format!("cannot read {path}"))?
            .bytes()
            .await?)
    }

    /// Downloads `runner`'s copy into `into`.
    pub async fn mirror(&self, runner: &str, into: &Path) -> Result<Mirror> {
        let seg_dir = into.join("segments");
        std::fs::create_dir_all(&seg_dir)?;
        let prefix = ObjPath::from(runner);
        let mut objects = self.s3.list(Some(&prefix));
        let (mut sealed, mut partial, mut anchors, mut keys, mut pin) =
            (vec![], vec![], vec![], vec![], None);
        while let Some(meta) = objects.next().await {
            let meta = meta.context("cannot list the runner's objects")?;
            let rest = meta
                .location
                .as_ref()
                .strip_prefix(runner)
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_owned();
            let number = |dir: &str| {
                rest.strip_prefix(dir)
                    .and_then(|n| n.strip_suffix(".seg"))
                    .filter(|n| n.len() == 12)
                    .and_then(|n| n.parse::<u64>().ok())
            };
            if let Some(n) = number("segments/") {
                sealed.push((n, meta.location));
            } else if let Some(n) = number("partial/") {
                partial.push((n, meta.location));
            } else if rest.starts_with("anchors/") {
                anchors.push(meta.location);
            } else if rest.starts_with("keys/") {
                keys.push(rest);
            } else if rest == "runner.pub" {
                pin = Some(meta.location);
            }
        }
        sealed.sort();
        for (n, path) in &sealed {
            std::fs::write(store::segment_path(into, *n), self.get(path).await?)?;
        }
        let last_sealed = sealed.last().map_or(0, |s| s.0);
        if let Some((n, path)) = partial.iter().filter(|p| p.0 > last_sealed).max() {
            std::fs::write(store::segment_path(into, *n), self.get(path).await?)?;
        }
        let pinned = match pin {
            Some(p) => {
                let pem = String::from_utf8(self.get(&p).await?.to_vec()).unwrap_or_default();
                Some(
                    VerifyingKey::from_public_key_pem(&pem)
                        .context("the pinned runner.pub is not an Ed25519 public key")?,
                )
            }
            None => None,
        };
        let mut parsed = Vec::new();
        for path in &anchors {
            let body = self.get(path).await?;
            parsed.push(
                serde_json::from_slice(&body).with_context(|| format!("anchor {path} does not parse"))?,
            );
        }
        Ok(Mirror {
            runner: runner.to_owned(),
            dir: into.to_owned(),
            pinned,
            changed_keys: keys,
            anchors: parsed,
            sealed,
        })
    }

    /// The Object Lock mode and retain-until date of an object's current version (the headers a
    /// HEAD returns), through a presigned HEAD.
    pub async fn retention(&self, path: &ObjPath) -> Result<Option<(String, String)>> {
        let url = self
            .s3
            .signed_url(object_store::signer::Method::HEAD, path, Duration::from_secs(300))
            .await?;
        let resp = reqwest::Client::new()
            .head(url.as_str())
            .send()
            .await
            .with_context(|| format!("cannot HEAD {path}"))?;
        if !resp.status().is_success() {
            bail!("HEAD {path}: {}", resp.status());
        }
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        Ok(header("x-amz-object-lock-mode").zip(header("x-amz-object-lock-retain-until-date")))
    }
}

/// One failure of `verify --remote`: which runner, which segment, what.
pub struct Failure {
    pub runner: String,
    pub segment: Option<u64>,
    pub what: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "runner {}", self.runner)?;
        if let Some(s) = self.segment {
            write!(f, " segment {s:012}")?;
        }
        write!(f, ": {}", self.what)
    }
}

/// Anchors kept outside the bucket (the anchor webhook's receiver): one JSON object per line, or
/// one JSON array.
pub fn read_anchors(path: &Path) -> Result<Vec<Anchor>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the anchors {}", path.display()))?;
    if text.trim_start().starts_with('[') {
        return serde_json::from_str(&text)
            .with_context(|| format!("{} is not a JSON array of anchors", path.display()));
    }
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .with_context(|| format!("{} line {}: not an anchor", path.display(), i + 1))
        })
        .collect()
}

/// Checks a mirrored runner: its chain and seals under the pinned key, its anchors and those
/// `kept` outside the bucket, its objects' retention (`require_lock`: missing retention fails),
/// and, when given, the local store that claims to be this runner. What passed, or every failure
/// found.
pub async fn verify_runner(
    remote: &Remote,
    m: &Mirror,
    require_lock: bool,
    local: Option<(&Path, VerifyingKey)>,
    kept: &[Anchor],
) -> Result<String, Vec<Failure>> {
    let fail = |segment: Option<u64>, what: String| Failure {
        runner: m.runner.clone(),
        segment,
        what,
    };
    let mut failures = Vec::new();
    let Some(pinned) = m.pinned else {
        return Err(vec![fail(
            None,
            "no pinned key (runner.pub) in the bucket".into(),
        )]);
    };
    for k in &m.changed_keys {
        failures.push(fail(
            None,
            format!("the runner later presented a different signing key ({k})"),
        ));
    }
    let report = match store::verify(&m.dir, &pinned, &mut |_| {}) {
        Ok(r) => Some(r),
        Err(f) => {
            failures.push(fail(
                Some(f.segment),
                format!("the bucket's copy does not verify under the pinned key: {f}"),
            ));
            None
        }
    };
    let mut max_anchored = 0;
    for a in &m.anchors {
        let Some(hash) = a.verify(&pinned).filter(|_| a.runner == m.runner) else {
            failures.push(fail(
                Some(a.segment),
                format!(
                    "anchor of seq {} is not signed by the pinned key for this runner",
                    a.seq
                ),
            ));
            continue;
        };
        max_anchored = max_anchored.max(a.seq);
        match store::frame_hash(&m.dir, a.segment, a.seq) {
            Ok(Some(h)) if h == hash => {}
            _ => failures.push(fail(
                Some(a.segment),
                format!(
                    "the chain does not pass through anchored seq {} ({}): cut short or rewritten",
                    a.seq, a.hash
                ),
            )),
        }
    }
    // The bucket's newest frame: a kept anchor past it was taken while the sink was behind, or
    // the bucket's copy was cut short since.
    let bucket_head = report.as_ref().map_or(0, |r| r.last_seq);
    for a in kept {
        let Some(hash) = a.verify(&pinned) else {
            failures.push(fail(
                Some(a.segment),
                format!("the kept anchor of seq {} is not signed by the pinned key", a.seq),
            ));
            continue;
        };
        max_anchored = max_anchored.max(a.seq);
        match store::frame_hash(&m.dir, a.segment, a.seq) {
            Ok(Some(h)) if h == hash => {}
            Ok(Some(_)) => failures.push(fail(
                Some(a.segment),
                format!(
                    "the bucket's chain does not pass through kept anchor seq {} ({}): rewritten",
                    a.seq, a.hash
                ),
            )),
            _ if a.seq > bucket_head => failures.push(fail(
                Some(a.segment),
                format!(
                    "the bucket's copy ends at seq {bucket_head}, before kept anchor seq {}: cut short (or the runner's sink is still behind)",
                    a.seq
                ),
            )),
            _ => failures.push(fail(
                Some(a.segment),
                format!(
                    "the bucket's copy lacks the frame of kept anchor seq {}: cut short or rewritten",
                    a.seq
                ),
            )),
        }
    }
    let mut locked = 0;
    for (n, path) in &m.sealed {
        match remote.retention(path).await {
            Ok(Some((_, until))) => {
                let until =
                    time::OffsetDateTime::parse(&until, &time::format_description::well_known::Rfc3339);
                if until.is_ok_and(|u| u > time::OffsetDateTime::now_utc()) {
                    locked += 1;
                } else if require_lock {
                    failures.push(fail(Some(*n), "its Object Lock retention has expired".into()));
                }
            }
            Ok(None) if require_lock => {
                failures.push(fail(Some(*n), "not under Object Lock retention".into()))
            }
            Ok(None) => {}
            Err(e) => failures.push(fail(Some(*n), format!("{e:#}"))),
        }
    }
    if let Some((dir, key)) = local {
        if key != pinned {
            failures.push(fail(
                None,
                "the local store is signed with a key other than the one pinned in the bucket: re-signed"
                    .into(),
            ));
        }
        for (n, _) in &m.sealed {
            let (ours, theirs) = (store::segment_path(dir, *n), store::segment_path(&m.dir, *n));
            match std::fs::read(&ours) {
                Ok(bytes) => {
                    if std::fs::read(&theirs).ok().as_deref() != Some(&bytes[..]) {
                        failures.push(fail(
                            Some(*n),
                            "the local segment differs from the bucket's copy: rewritten".into(),
                        ));
                    }
                }
                // Pruned locally is fine when a tombstone says so; verify of the local store checks that.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => failures.push(fail(Some(*n), format!("cannot read the local copy: {e}"))),
            }
        }
        for a in kept {
            let Some(hash) = a.verify(&pinned) else { continue };
            if let Ok(Some(h)) = store::frame_hash(dir, a.segment, a.seq)
                && h != hash
            {
                failures.push(fail(
                    Some(a.segment),
                    format!(
                        "the local store does not pass through kept anchor seq {} ({}): rewritten",
                        a.seq, a.hash
                    ),
                ));
            }
        }
        match store::verify(dir, &key, &mut |_| {}) {
            Ok(r) if r.last_seq < max_anchored => failures.push(fail(
                Some(r.last_segment),
                format!(
                    "the local store ends at seq {} but the bucket anchored seq {max_anchored}: cut short",
                    r.last_seq
                ),
            )),
            Ok(_) => {}
            Err(f) => failures.push(fail(
                Some(f.segment),
                format!("the local store does not verify: {f}"),
            )),
        }
    }
    if !failures.is_empty() {
        return Err(failures);
    }
    let report = report.expect("no failure");
    Ok(format!(
        "runner {}: {report}; {} anchors{} up to seq {max_anchored}; {locked} of {} sealed segments under Object Lock",
        m.runner,
        m.anchors.len(),
        if kept.is_empty() {
            String::new()
        } else {
            format!(" (and {} kept outside the bucket)", kept.len())
        },
        m.sealed.len()
    ))
}
