//! `[approvals]` of the gateway config: where new approvals are announced (a webhook), whether
//! root may decide on the control socket, and the optional HTTPS control listener for approvers
//! elsewhere, with their tokens' SHA-256 hashes or the OIDC issuers whose ID tokens name them.
//!
//! Must never hold a token itself, nor print a webhook's URL path or header values (Slack
//! webhook URLs and authorization headers are secrets): `Debug` shows them as `***`.
use std::{collections::BTreeMap, fmt, net::SocketAddr, path::PathBuf};

use serde::Deserialize;

use crate::config::OidcConfig;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalsConfig {
    /// The control socket `ghgate approvals` talks to; approvers are its peers' uids. Outside
    /// the state directory (which only root may enter); its directory is created 0755.
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
    /// Posted to on every new pending approval.
    #[serde(default)]
    pub webhook: Option<WebhookConfig>,
    /// An HTTPS control listener (off unless given); the Unix socket always serves.
    #[serde(default)]
    pub http: Option<HttpControlConfig>,
    /// Whether root with no other user's login behind it (uid 0 with login uid 0 or unset) may
    /// decide approvals on the control socket. Off: such a process is nobody in particular
    /// (any service, any `sudo -i` session), so it cannot stand for an approver.
    #[serde(default)]
    pub allow_root_socket: bool,
    /// Approvals one requester (its bound identity) may have pending at once; past it, new
    /// operations are refused (429) until some are decided or expire.
    #[serde(default = "default_per_requester")]
    pub max_pending_per_requester: usize,
    /// Approvals one uid may have pending at once, whatever executables it runs.
    #[serde(default = "default_per_uid")]
    pub max_pending_per_uid: usize,
    /// Approvals pending at once in all.
    #[serde(default = "default_max_pending")]
    pub max_pending: usize,
}

fn default_per_requester() -> usize {
    super::MAX_PENDING_PER_REQUESTER
}
fn default_per_uid() -> usize {
    super::MAX_PENDING_PER_UID
}
fn default_max_pending() -> usize {
    super::MAX_PENDING
}

impl Default for ApprovalsConfig {
    fn default() -> Self {
        Self {
            socket: default_socket(),
            webhook: None,
            http: None,
            allow_root_socket: false,
            max_pending_per_requester: default_per_requester(),
            max_pending_per_uid: default_per_uid(),
            max_pending: default_max_pending(),
        }
    }
}

impl ApprovalsConfig {
    /// The caps on pending approvals.
    pub fn pending_caps(&self) -> super::PendingCaps {
        super::PendingCaps {
            per_requester: self.max_pending_per_requester,
            per_uid: self.max_pending_per_uid,
            total: self.max_pending,
        }
    }
}

/// Where `ghgate approvals` finds the gateway when no config says otherwise.
pub fn default_socket() -> PathBuf {
    PathBuf::from("/run/ghgate/control.sock")
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `https://…` (plain `http://` only to loopback addresses).
    pub url: String,
    #[serde(default)]
    pub format: WebhookFormat,
    /// Further attempts after a failed one (non-2xx status, error, timeout), with exponential
    /// backoff from 1 s, capped at 60 s.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Per attempt.
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// Extra request headers (an `Authorization` for the receiver, …).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The first retry's delay; each next one doubles it (at most 60 s).
    #[serde(default = "default_backoff_ms")]
    pub backoff_ms: u64,
}

fn default_backoff_ms() -> u64 {
    1000
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookFormat {
    /// The approval as a JSON object.
    #[default]
    Json,
    /// `{"text": "…"}`, for Slack (and Mattermost, …) incoming webhooks.
    Slack,
}

fn default_retries() -> u32 {
    5
}
fn default_timeout() -> u64 {
    10
}

impl fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &shown_url(&self.url))
            .field("format", &self.format)
            .field("retries", &self.retries)
            .field("timeout_secs", &self.timeout_secs)
            .field("headers", &shown_headers(&self.headers))
            .finish()
    }
}

/// A webhook's headers as `Debug` shows them: the names, each value `***`.
pub fn shown_headers(headers: &BTreeMap<String, String>) -> BTreeMap<&str, &'static str> {
    headers.keys().map(|k| (k.as_str(), "***")).collect()
}

/// A URL with everything after its authority (and any userinfo) shown as `***`.
pub fn shown_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let tail = if end < rest.len() { "/***" } else { "" };
    if scheme.is_empty() {
        format!("{host}{tail}")
    } else {
        format!("{scheme}://{host}{tail}")
    }
}

/// The checks every webhook of the config passes (`key` is its table, e.g. "approvals.webhook"):
/// https (plain http to loopback only), a valid URL, a timeout of 1 to 300 s, headers that are
/// valid and leave the content type to ghgate. Never quotes a header value or the URL's path.
pub fn check_webhook(
    key: &str,
    url: &str,
    timeout_secs: u64,
    headers: &BTreeMap<String, String>,
) -> Result<(), (String, String)> {
    let loopback = [
        "http://127.",
        "http://[::1]",
        "http://localhost:",
        "http://localhost/",
    ];
    if !(url.starts_with("https://") || loopback.iter().any(|p| url.starts_with(p))) {
        return Err((
            format!("{key}.url"),
            format!(
                "{:?} must be an https:// URL (plain http only to loopback addresses)",
                shown_url(url)
            ),
        ));
    }
    if url.parse::<http::Uri>().is_err() {
        return Err((
            format!("{key}.url"),
            format!("{:?} is not a valid URL", shown_url(url)),
        ));
    }
    if !(1..=300).contains(&timeout_secs) {
        return Err((format!("{key}.timeout_secs"), "must be between 1 and 300".into()));
    }
    for (name, value) in headers {
        let key = format!("{key}.headers.{name:?}");
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err((key, "is not a valid header name".into()));
        }
        if name.eq_ignore_ascii_case("content-type") || name.eq_ignore_ascii_case("content-length") {
            return Err((key, "is set by ghgate".into()));
        }
        if http::HeaderValue::from_str(value).is_err() {
            // The value may be a secret: never quoted.
            return Err((key, "has a value that is not a valid header value".into()));
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpControlConfig {
    /// Address and port of the HTTPS listener (e.g. "0.0.0.0:9443").
    pub listen: SocketAddr,
    /// PEM certificate chain presented to approvers.
    pub tls_cert_file: PathBuf,
    /// PEM private key, refused if group or others may read it.
    pub tls_key_file: PathBuf,
    /// Approvers' bearer tokens, as SHA-256 hashes (`printf %s TOKEN | sha256sum`).
    #[serde(default, rename = "token")]
    pub tokens: Vec<TokenConfig>,
    /// OIDC issuers whose ID tokens, sent as the bearer token, name approvers.
    #[serde(default)]
    pub oidc: Option<ApproverOidcConfig>,
}

/// `[approvals.http.oidc]`: ID tokens of these issuers authenticate approvers. Keep them apart
/// from `[oidc]` (whose tokens callers present): a CI job's token must never approve.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApproverOidcConfig {
    /// The claim that names the approver, as approver groups list it (`users`); a token
    /// without it is refused. The issuer and subject are recorded beside it.
    #[serde(default = "default_name_claim")]
    pub name_claim: String,
    /// The claim that holds the approver's Unix user on the runners (`preferred_username`, a
    /// custom claim), when groups list approvers by e-mail: a requester who is, or logged in as,
    /// that user cannot approve through its ID token. Unset: the name is compared as it is.
    #[serde(default)]
    pub user_claim: Option<String>,
    #[serde(default, rename = "issuer")]
    pub issuers: Vec<crate::config::OidcIssuer>,
}

impl ApproverOidcConfig {
    /// The issuers, as the OIDC validator takes them.
    pub fn issuers(&self) -> OidcConfig {
        OidcConfig {
            issuers: self.issuers.clone(),
        }
    }
}

fn default_name_claim() -> String {
    "email".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// The approver's user name, as approver groups list it.
    pub name: String,
    /// The Unix user the token's holder logs in as on the runners, when it is not `name`: a
    /// requester who is, or logged in as, that user cannot approve with this token.
    #[serde(default)]
    pub user: Option<String>,
    /// Hex SHA-256 of the token.
    pub sha256: String,
}

impl ApprovalsConfig {
    /// Validates `[approvals]`: `Err((key, message))` names the offending key.
    pub fn validate(&self) -> Result<(), (String, String)> {
        for (key, n) in [
            (
                "approvals.max_pending_per_requester",
                self.max_pending_per_requester,
            ),
            ("approvals.max_pending_per_uid", self.max_pending_per_uid),
            ("approvals.max_pending", self.max_pending),
        ] {
            if n == 0 {
                return Err((
                    key.into(),
                    "must be at least 1 (0 would refuse every approval)".into(),
                ));
            }
        }
        if let Some(w) = &self.webhook {
            check_webhook("approvals.webhook", &w.url, w.timeout_secs, &w.headers)?;
            if w.retries > 20 {
                return Err(("approvals.webhook.retries".into(), "must be at most 20".into()));
            }
        }
        if let Some(h) = &self.http {
            for (key, path) in [
                ("approvals.http.tls_cert_file", &h.tls_cert_file),
                ("approvals.http.tls_key_file", &h.tls_key_file),
            ] {
                if !path.is_absolute() {
                    return Err((key.into(), format!("{} must be an absolute path", path.display())));
                }
            }
            let oidc_issuers = h.oidc.as_ref().map_or(0, |o| o.issuers.len());
            if h.tokens.is_empty() && oidc_issuers == 0 {
                return Err((
                    "approvals.http.token".into(),
                    "no [[approvals.http.token]] and no [[approvals.http.oidc.issuer]]: nobody could \
                     authenticate; remove [approvals.http] or add approvers' token hashes or an issuer"
                        .into(),
                ));
            }
            if let Some(o) = &h.oidc {
                if o.issuers.is_empty() {
                    return Err((
                        "approvals.http.oidc.issuer".into(),
                        "no [[approvals.http.oidc.issuer]]: name the issuer whose ID tokens approvers present"
                            .into(),
                    ));
                }
                if o.name_claim.trim().is_empty() {
                    return Err((
                        "approvals.http.oidc.name_claim".into(),
                        "must name a claim (\"email\", \"preferred_username\", \"sub\")".into(),
                    ));
                }
                o.issuers().validate("approvals.http.oidc")?;
            }
            for (i, t) in h.tokens.iter().enumerate() {
                if t.name.trim().is_empty() {
                    return Err((
                        format!("approvals.http.token[{i}].name"),
                        "must not be empty".into(),
                    ));
                }
                if t.sha256.len() != 64 || !t.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err((
                        format!("approvals.http.token[{i}].sha256"),
                        "must be 64 hex digits: the SHA-256 of the token (printf %s TOKEN | sha256sum), \
                         not the token"
                            .into(),
                    ));
                }
                if h.tokens[..i]
                    .iter()
                    .any(|o| o.sha256.eq_ignore_ascii_case(&t.sha256))
                {
                    return Err((
                        format!("approvals.http.token[{i}].sha256"),
                        "is listed twice: each approver needs a token of their own".into(),
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Wrap {
        #[serde(default)]
        approvals: ApprovalsConfig,
    }

    fn parse(text: &str) -> Result<ApprovalsConfig, String> {
        let c: Wrap = toml::from_str(text).map_err(|e| e.to_string())?;
        c.approvals.validate().map_err(|(k, m)| format!("`{k}`: {m}"))?;
        Ok(c.approvals)
    }

    const FULL: &str = r#"
        [approvals.webhook]
        url = "https://hooks.slack.com/services/T000/B000/SECRETPATH"
        format = "slack"
        headers = { "X-Token" = "hunter2" }
        [approvals.http]
        listen = "0.0.0.0:9443"
        tls_cert_file = "/etc/ghgate/control.pem"
        tls_key_file = "/etc/ghgate/control-key.pem"
        [[approvals.http.token]]
        name = "alice"
        sha256 = "2bd806c97f0e00af1a1fc3328fa763a9269723c8db8fac4f93af71db186d6e90"
    "#;

    #[test]
    fn full_config_parses_with_defaults_and_hides_secrets() {
        let c = parse(FULL).unwrap();
        let w = c.webhook.as_ref().unwrap();
        assert_eq!(
            (w.format, w.retries, w.timeout_secs),
            (WebhookFormat::Slack, 5, 10)
        );
        assert_eq!(c.http.as_ref().unwrap().tokens[0].name, "alice");
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("SECRETPATH") && !shown.contains("hunter2"),
            "{shown}"
        );
        assert!(shown.contains("https://hooks.slack.com/***"), "{shown}");
        assert!(parse("").unwrap().webhook.is_none());
    }

    #[test]
    fn mistakes_name_their_key() {
        let cases = [
            (
                FULL.replace("https://hooks", "http://hooks"),
                "approvals.webhook.url",
            ),
            (FULL.replace("\"slack\"", "\"teams\""), "format"),
            (
                FULL.replace("format =", "retries = 99\nformat ="),
                "approvals.webhook.retries",
            ),
            (
                FULL.replace("X-Token", "Content-Type"),
                "approvals.webhook.headers",
            ),
            (
                FULL.replace("\"/etc/ghgate/control.pem\"", "\"control.pem\""),
                "tls_cert_file",
            ),
            (
                FULL.replace("2bd806c9", "hunter2"),
                "approvals.http.token[0].sha256",
            ),
            (
                FULL.replace("name = \"alice\"", "name = \"\""),
                "approvals.http.token[0].name",
            ),
            (
                FULL.replace("sha256 =", "token = \"x\"\nsha256 ="),
                "unknown field `token`",
            ),
            (
                format!(
                    "{FULL}\n[[approvals.http.token]]\nname = \"bob\"\nsha256 = \
                     \"2BD806C97F0E00AF1A1FC3328FA763A9269723C8DB8FAC4F93AF71DB186D6E90\"\n"
                ),
                "approvals.http.token[1].sha256",
            ),
        ];
        for (text, key) in cases {
            let err = parse(&text).unwrap_err();
            assert!(err.contains(key), "expected {key} in: {err}");
            assert!(!err.contains("hunter2") && !err.contains("SECRETPATH"), "{err}");
        }
        let no_tokens = FULL[..FULL.find("[[approvals.http.token]]").unwrap()].to_owned();
        assert!(parse(&no_tokens).unwrap_err().contains("approvals.http.token"));
        let loopback = FULL.replace("https://hooks.slack.com", "http://127.0.0.1:8080");
        assert!(parse(&loopback).is_ok());
    }
}
