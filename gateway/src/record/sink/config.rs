//! `[record.sink]`: where sealed segments and anchors go off the host, with which credentials,
//! and what happens when they cannot get there.
//!
//! Credentials are read from a file or the environment when the sink starts, never from the
//! configuration itself, and are held as [`Secret`]s: this module must never print them.
use std::path::PathBuf;

use serde::Deserialize;

use crate::credentials::Secret;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// The S3-compatible endpoint, e.g. `https://s3.eu-west-1.amazonaws.com` or
    /// `http://127.0.0.1:9000` (plain HTTP only for loopback).
    pub url: String,
    pub bucket: String,
    /// The runner's folder in the bucket; default the host name.
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default = "default_region")]
    pub region: String,
    /// A file of `access_key_id = "…"` and `secret_access_key = "…"` (mode 0600); without it,
    /// `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` from the environment.
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
    /// Object Lock retention put on every object (the bucket must have Object Lock enabled).
    #[serde(default)]
    pub object_lock: Option<ObjectLock>,
    /// How often the active segment is copied and an anchor written (at most 60 000).
    #[serde(default = "default_interval")]
    pub interval_ms: u64,
    /// Sealed segments not yet confirmed remotely beyond which `on_sink_failure` applies.
    #[serde(default = "default_backlog")]
    pub max_backlog_bytes: u64,
    #[serde(default)]
    pub on_sink_failure: OnSinkFailure,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ObjectLock {
    pub mode: LockMode,
    pub days: u32,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LockMode {
    /// No one, not even the bucket's root account, can shorten or remove it.
    Compliance,
    /// Users with `s3:BypassGovernanceRetention` can.
    Governance,
}

impl LockMode {
    pub fn header_value(self) -> &'static str {
        match self {
            LockMode::Compliance => "COMPLIANCE",
            LockMode::Governance => "GOVERNANCE",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnSinkFailure {
    /// New requests get 503 naming the sink while the backlog is over the limit.
    #[default]
    Refuse,
    /// Requests go on, and the span is recorded as an enforcement gap (`sink_behind`).
    Allow,
}

fn default_region() -> String {
    "us-east-1".into()
}
fn default_interval() -> u64 {
    10_000
}
fn default_backlog() -> u64 {
    1 << 30
}

/// The sink's access key pair.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub access_key_id: Secret,
    pub secret_access_key: Secret,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialsFile {
    access_key_id: String,
    secret_access_key: String,
}

impl SinkConfig {
    /// The key and message of the first invalid setting.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let url = self.url.trim_end_matches('/');
        let loopback = ["http://127.0.0.1", "http://[::1]", "http://localhost"]
            .iter()
            .any(|l| url == *l || url.starts_with(&format!("{l}:")) || url.starts_with(&format!("{l}/")));
        if !url.starts_with("https://") && !loopback {
            return Err((
                "record.sink.url",
                "must be https:// (plain http:// only to a loopback address)".into(),
            ));
        }
        if self.bucket.len() < 3
            || self.bucket.len() > 63
            || !self
                .bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        {
            return Err((
                "record.sink.bucket",
                "must be an S3 bucket name (3 to 63 lower-case letters, digits, '-' or '.')".into(),
            ));
        }
        if let Some(p) = &self.prefix
            && !valid_prefix(p)
        {
            return Err((
                "record.sink.prefix",
                "must be letters, digits, '-', '_' or '.', without '/'".into(),
            ));
        }
        if !(100..=60_000).contains(&self.interval_ms) {
            return Err(("record.sink.interval_ms", "must be between 100 and 60000".into()));
        }
        if self.max_backlog_bytes < 1 << 20 {
            return Err(("record.sink.max_backlog_bytes", "must be at least 1 MiB".into()));
        }
        if self.object_lock.is_some_and(|l| l.days == 0 || l.days > 36_500) {
            return Err((
                "record.sink.object_lock.days",
                "must be between 1 and 36500".into(),
            ));
        }
        Ok(())
    }

    /// The runner's folder: the configured prefix, or the host name.
    pub fn runner(&self) -> String {
        self.prefix.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            let host: String = host
                .trim()
                .chars()
                .map(|c| if valid_prefix_char(c) { c } else { '_' })
                .collect();
            if host.is_empty() { "runner".into() } else { host }
        })
    }

    /// Reads the credentials from the file or the environment. The error never holds them.
    pub fn credentials(&self) -> anyhow::Result<Credentials> {
        Credentials::load(self.credentials_file.as_deref())
    }
}

impl Credentials {
    /// From `file` (`access_key_id = "…"`, `secret_access_key = "…"`, mode 0600), else from
    /// `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`. The error never holds them.
    pub fn load(file: Option<&std::path::Path>) -> anyhow::Result<Credentials> {
        use anyhow::Context as _;
        if let Some(path) = file {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(path)
                .with_context(|| format!("cannot read the record sink credentials {}", path.display()))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                anyhow::bail!(
                    "the record sink credentials {} are readable by group or others (mode {:04o}); chmod 600 it",
                    path.display(),
                    mode & 0o777
                );
            }
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the record sink credentials {}", path.display()))?;
            // The parser's message could quote the file: name the file only.
            let file: CredentialsFile = toml::from_str(&text).map_err(|_| {
                anyhow::anyhow!(
                    "the record sink credentials {} must hold access_key_id = \"…\" and secret_access_key = \"…\"",
                    path.display()
                )
            })?;
            return Ok(Credentials {
                access_key_id: Secret::new(file.access_key_id),
                secret_access_key: Secret::new(file.secret_access_key),
            });
        }
        let var = |name: &str| {
            std::env::var(name)
                .ok()
                .filter(|v| !v.is_empty())
                .map(Secret::new)
                .with_context(|| format!("the record sink has no credentials_file and {name} is not set"))
        };
        Ok(Credentials {
            access_key_id: var("AWS_ACCESS_KEY_ID")?,
            secret_access_key: var("AWS_SECRET_ACCESS_KEY")?,
        })
    }
}

fn valid_prefix_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

pub fn valid_prefix(p: &str) -> bool {
    !p.is_empty() && p.len() <= 200 && p != "." && p != ".." && p.chars().all(valid_prefix_char)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sink(extra: &str) -> SinkConfig {
        toml::from_str(&format!(
            "url = \"https://s3.example.com\"\nbucket = \"fleet-evidence\"\n{extra}"
        ))
        .unwrap()
    }

    #[test]
    fn plain_http_only_to_loopback_and_prefixes_cannot_climb() {
        assert!(sink("").validate().is_ok());
        let mut s = sink("");
        s.url = "http://s3.example.com".into();
        assert_eq!(s.validate().unwrap_err().0, "record.sink.url");
        s.url = "http://127.0.0.1.evil.example:9000".into();
        assert_eq!(s.validate().unwrap_err().0, "record.sink.url");
        s.url = "http://127.0.0.1:9000".into();
        assert!(s.validate().is_ok());
        for bad in ["../other", "a/b", "", ".."] {
            assert_eq!(
                sink(&format!("prefix = {bad:?}")).validate().unwrap_err().0,
                "record.sink.prefix"
            );
        }
        let locked = sink("[object_lock]\nmode = \"compliance\"\ndays = 0");
        assert_eq!(locked.validate().unwrap_err().0, "record.sink.object_lock.days");
    }

    #[test]
    fn credentials_never_appear_in_debug_or_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("creds");
        std::fs::write(
            &path,
            "access_key_id = \"AKIAFLEETSECRET1\"\nsecret_access_key = \"s3cr3t-very\"\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut s = sink("");
        s.credentials_file = Some(path.clone());
        let err = s.credentials().unwrap_err().to_string();
        assert!(err.contains("chmod 600") && !err.contains("s3cr3t"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let c = s.credentials().unwrap();
        assert_eq!(c.secret_access_key.expose(), "s3cr3t-very");
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("s3cr3t") && !shown.contains("AKIAFLEET"),
            "{shown}"
        );
        std::fs::write(
            &path,
            "access_key_id = \"AKIAFLEETSECRET1\"\nsecret = \"s3cr3t-very\"\n",
        )
        .unwrap();
        let err = s.credentials().unwrap_err().to_string();
        assert!(!err.contains("s3cr3t"), "{err}");
    }
}
