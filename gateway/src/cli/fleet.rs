//! `--remote URL [--runner R]` for the readers (`sessions list|show|export`, `secrets trace`):
//! each runner's copy in the bucket is mirrored into a scratch directory laid out as a store,
//! checked exactly as `sessions verify --remote` checks it (chain and seals under the key pinned
//! in the bucket, anchors), indexed, and only then read by the same code that reads a local
//! store. A runner whose copy does not verify is named and nothing is answered.
use std::path::{Path, PathBuf};

use anyhow::bail;

use crate::record::{
    index::{Index, index_path},
    model,
    sink::{config::Credentials, remote},
    store::{self, VerifyReport},
};

/// The fleet's bucket, as the readers take it.
#[derive(Debug, clap::Args)]
pub(super) struct FleetArgs {
    /// Read every runner's copy in this bucket (`https://endpoint/bucket`) instead of this host's
    /// store, once it verifies as `sessions verify --remote` checks it. Credentials:
    /// --credentials-file, else AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY.
    #[arg(long)]
    pub remote: Option<String>,
    /// Only this runner (its prefix in the bucket).
    #[arg(long, requires = "remote")]
    pub runner: Option<String>,
    #[arg(long, requires = "remote", default_value = "us-east-1")]
    pub region: String,
    #[arg(long, requires = "remote")]
    pub credentials_file: Option<PathBuf>,
}

/// One runner's copy, mirrored, verified and indexed.
pub(super) struct RunnerStore {
    pub runner: String,
    dir: ScratchDir,
    pub report: VerifyReport,
}

impl RunnerStore {
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn index(&self) -> anyhow::Result<Index> {
        Ok(Index::open_read_only(&index_path(self.dir()))?)
    }
}

/// The bucket named by `--remote`.
pub(super) fn open(url: &str, args: &FleetArgs) -> anyhow::Result<remote::Remote> {
    let creds = Credentials::load(args.credentials_file.as_deref())?;
    remote::Remote::open(url, &args.region, &creds)
}

/// The runners to read: `--runner`, else every runner with a folder in the bucket.
pub(super) async fn runners(bucket: &remote::Remote, args: &FleetArgs) -> anyhow::Result<Vec<String>> {
    let runners = match &args.runner {
        Some(r) => vec![r.clone()],
        None => bucket.runners().await?,
    };
    if runners.is_empty() {
        bail!("no runner has a copy in bucket {}", bucket.bucket);
    }
    Ok(runners)
}

/// Every runner's copy (or `--runner`'s), each verified as `verify --remote` does; the first
/// runner whose copy fails stops everything, named with every failure found.
pub(super) fn stores(url: &str, args: &FleetArgs) -> anyhow::Result<Vec<RunnerStore>> {
    let bucket = open(url, args)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut out = Vec::new();
        for runner in runners(&bucket, args).await? {
            let dir = scratch_dir()?;
            let mirror = bucket.mirror(&runner, dir.path()).await?;
            if let Err(failures) = remote::verify_runner(&bucket, &mirror, false, None, &[]).await {
                let lines: Vec<String> = failures.iter().map(|f| format!("  FAILED: {f}")).collect();
                bail!(
                    "runner {runner}: its copy in the bucket does not verify, so nothing is answered from it \
                     (`--runner` reads the others):\n{}",
                    lines.join("\n")
                );
            }
            let pinned = mirror.pinned.expect("verify_runner passed, so a key is pinned");
            let report = store::verify(dir.path(), &pinned, &mut |_| {})
                .map_err(|f| anyhow::anyhow!("runner {runner}: {f}"))?;
            Index::rebuild(&index_path(dir.path()), dir.path())?;
            out.push(RunnerStore { runner, dir, report });
        }
        Ok(out)
    })
}

/// A private scratch directory, removed on drop.
pub(super) fn scratch_dir() -> anyhow::Result<ScratchDir> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let base = std::env::temp_dir().join(format!(
        "ghgate-remote-{}-{}-{}",
        std::process::id(),
        model::now_micros(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::create_dir(&base)?;
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o700))?;
    Ok(ScratchDir(base))
}

pub(super) struct ScratchDir(PathBuf);

impl ScratchDir {
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
