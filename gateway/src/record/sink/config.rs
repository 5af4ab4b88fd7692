//! `[record.sink]`: where sealed segments and anchors go off the host, with which credentials,
//! and what happens when they cannot get there.
//!
//! Credentials are read from a file or the environment when the sink starts, never from the
//! configuration itself, and are held as [`Secret`]s: this module must never print them.
use std::path::PathBuf;

use serde::Deserialize;

use crate::approval::config::{check_webhook, shown_url};
use crate::credentials::Secret;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
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
    /// How often the store is looked at: sealed segments copied, the active one copied when
    /// due, anchors written (at most 60 000).
    #[serde(default = "default_interval")]
    pub interval_ms: u64,
    /// The active segment is copied again once it grew by a quarter of its last copy, and at
    /// least this much.
    #[serde(default = "default_partial_min")]
    pub partial_min_bytes: u64,
    /// …or once it grew at all and its last copy is this old.
    #[serde(default = "default_partial_max_secs")]
    pub partial_max_secs: u64,
    /// Sealed segments not yet confirmed remotely beyond which `on_sink_failure` applies.
    #[serde(default = "default_backlog")]
    pub max_backlog_bytes: u64,
    #[serde(default)]
    pub on_sink_failure: OnSinkFailure,
    /// A second copy of every anchor, POSTed to an HTTPS receiver the runner cannot rewrite.
    #[serde(default)]
    pub webhook: Option<AnchorWebhookConfig>,
}

/// `[record.sink.webhook]`: each anchor, as the JSON object the bucket holds, POSTed to `url`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnchorWebhookConfig {
    /// `https://…` (plain `http://` only to loopback addresses).
    pub url: String,
    /// A PEM file of CA certificates trusted for the receiver, besides the system's.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// A file (mode 0600) holding the bearer token sent as `Authorization: Bearer …`.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// The environment variable holding the bearer token (instead of `token_file`).
    #[serde(default)]
    pub token_env: Option<String>,
    /// Per POST.
    #[serde(default = "default_hook_timeout")]
    pub timeout_secs: u64,
    /// Anchors waiting for the receiver; past it the oldest head (never a seal while a head is
    /// left) makes way.
    #[serde(default = "default_hook_queue")]
    pub queue: usize,
    /// The wait after a failed POST, doubling on each failure up to `max_backoff_ms`.
    #[serde(default = "default_hook_backoff")]
    pub backoff_ms: u64,
    #[serde(default = "default_hook_max_backoff")]
    pub max_backoff_ms: u64,
}

impl std::fmt::Debug for AnchorWebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnchorWebhookConfig")
            .field("url", &shown_url(&self.url))
            .field("ca", &self.ca)
            .field("token_file", &self.token_file)
            .field("token_env", &self.token_env)
            .field("timeout_secs", &self.timeout_secs)
            .field("queue", &self.queue)
            .finish_non_exhaustive()
    }
}

fn default_hook_timeout() -> u64 {
    10
}
fn default_hook_queue() -> usize {
    10_000
}
fn default_hook_backoff() -> u64 {
    1000
}
fn default_hook_max_backoff() -> u64 {
    60_000
}

impl AnchorWebhookConfig {
    fn validate(&self) -> Result<(), (String, String)> {
        const KEY: &str = "record.sink.webhook";
        check_webhook(KEY, &self.url, self.timeout_secs, &Default::default())?;
        if self.token_file.is_some() && self.token_env.is_some() {
            return Err((
                format!("{KEY}.token_file"),
                "give token_file or token_env, not both".into(),
            ));
        }
        if let Some(ca) = &self.ca
            && !ca.is_absolute()
        {
            return Err((format!("{KEY}.ca"), "must be an absolute path".into()));
        }
        if self.queue == 0 {
            return Err((format!("{KEY}.queue"), "must be more than 0".into()));
        }
        if self.backoff_ms == 0 || self.max_backoff_ms < self.backoff_ms {
            return Err((
                format!("{KEY}.backoff_ms"),
                "must be more than 0 and at most max_backoff_ms".into(),
            ));
        }
        Ok(())
    }

    /// The bearer token, from `token_file` (mode 0600) or `token_env`; the error never holds it.
    pub fn token(&self) -> anyhow::Result<Option<Secret>> {
        use anyhow::Context as _;
        if let Some(path) = &self.token_file {
            let text = read_private(path, "the anchor webhook token")?;
            let token = text.trim();
            anyhow::ensure!(
                !token.is_empty(),
                "the anchor webhook token {} is empty",
                path.display()
            );
            anyhow::ensure!(
                http::HeaderValue::from_str(&format!("Bearer {token}")).is_ok(),
                "the anchor webhook token {} is not usable in a header",
                path.display()
            );
            return Ok(Some(Secret::new(token)));
        }
        let Some(var) = &self.token_env else {
            return Ok(None);
        };
        let token = std::env::var(var)
            .ok()
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
            .with_context(|| format!("record.sink.webhook.token_env names {var}, which is not set"))?;
        anyhow::ensure!(
            http::HeaderValue::from_str(&format!("Bearer {token}")).is_ok(),
            "{var} is not usable in a header"
        );
        Ok(Some(Secret::new(token)))
    }
}

/// Reads a file of secrets, refusing one that group or others may read. Errors name the file,
/// never its content.
fn read_private(path: &std::path::Path, what: &str) -> anyhow::Result<String> {
    use std::os::unix::fs::PermissionsExt as _;

    use anyhow::Context as _;
    let mode = std::fs::metadata(path)
        .with_context(|| format!("cannot read {what} {}", path.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        anyhow::bail!(
            "{what} {} is readable by group or others (mode {:04o}); chmod 600 it",
            path.display(),
            mode & 0o777
        );
    }
    std::fs::read_to_string(path).with_context(|| format!("cannot read {what} {}", path.display()))
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
fn default_partial_min() -> u64 {
    1 << 20
}
fn default_partial_max_secs() -> u64 {
    60
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
    pub fn validate(&self) -> Result<(), (String, String)> {
        self.validate_own().map_err(|(k, m)| (k.to_owned(), m))?;
        self.webhook
            .as_ref()
            .map_or(Ok(()), AnchorWebhookConfig::validate)
    }

    fn validate_own(&self) -> Result<(), (&'static str, String)> {
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
        if !(1..=3600).contains(&self.partial_max_secs) {
            return Err((
                "record.sink.partial_max_secs",
                "must be between 1 and 3600".into(),
            ));
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
            let text = read_private(path, "the record sink credentials")?;
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

    #[test]
    fn the_anchor_webhook_is_https_its_token_private_and_neither_ever_shown() {
        let hook = |extra: &str| {
            sink(&format!(
                "[webhook]\nurl = \"https://anchors.example/in/PATHSECRET\"\n{extra}"
            ))
        };
        assert!(hook("").validate().is_ok());
        let mut plain = hook("");
        plain.webhook.as_mut().unwrap().url = "http://anchors.example/in".into();
        assert_eq!(plain.validate().unwrap_err().0, "record.sink.webhook.url");
        let both = hook("token_file = \"/etc/t\"\ntoken_env = \"T\"");
        assert_eq!(both.validate().unwrap_err().0, "record.sink.webhook.token_file");
        assert_eq!(
            hook("queue = 0").validate().unwrap_err().0,
            "record.sink.webhook.queue"
        );

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "hook-t0ken-very-secret\n").unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let mut s = hook("");
        let w = s.webhook.as_mut().unwrap();
        w.token_file = Some(path.clone());
        let err = w.token().unwrap_err().to_string();
        assert!(err.contains("chmod 600") && !err.contains("hook-t0ken"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let token = w.token().unwrap().unwrap();
        assert_eq!(token.expose(), "hook-t0ken-very-secret");
        std::fs::write(&path, "hook-t0ken\nsecond line\n").unwrap();
        let err = w.token().unwrap_err().to_string();
        assert!(!err.contains("hook-t0ken"), "{err}");
        w.token_file = None;
        w.token_env = Some("GHGATE_TEST_UNSET_ANCHOR_TOKEN".into());
        let err = w.token().unwrap_err().to_string();
        assert!(err.contains("GHGATE_TEST_UNSET_ANCHOR_TOKEN"), "{err}");
        let shown = format!("{s:?}");
        assert!(
            !shown.contains("PATHSECRET") && shown.contains("anchors.example"),
            "{shown}"
        );
    }
}
