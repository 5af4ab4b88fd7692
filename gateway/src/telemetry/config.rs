//! `[telemetry]` of the gateway config: the Prometheus endpoint and the event sinks (syslog or
//! journald, an HTTPS webhook).
//!
//! Must never print a webhook's URL path or header values (receivers' tokens): `Debug` shows
//! them as `***`.
use std::{collections::BTreeMap, fmt, net::SocketAddr, path::PathBuf};

use serde::Deserialize;

use crate::approval::config::{check_webhook, shown_headers, shown_url};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Where `GET /metrics` is served (Prometheus text format); off unless given.
    #[serde(default)]
    pub metrics: Option<SocketAddr>,
    /// Serve `/metrics` on an address other than loopback. The counters hold no secrets, but
    /// they tell who is refused what; off, a non-loopback `metrics` is a config error.
    #[serde(default)]
    pub metrics_allow_remote: bool,
    /// Events (decisions, refusals, maskings, approval steps) as JSON lines to the local syslog
    /// socket or journald.
    #[serde(default)]
    pub syslog: Option<SyslogConfig>,
    /// Events as batches of JSON lines POSTed to an HTTPS receiver.
    #[serde(default)]
    pub webhook: Option<SinkWebhookConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyslogConfig {
    /// The datagram socket: `/dev/log` (RFC 5424), or journald's native socket
    /// `/run/systemd/journal/socket` with `format = "journald"`.
    #[serde(default = "default_syslog_socket")]
    pub socket: PathBuf,
    #[serde(default)]
    pub format: SyslogFormat,
    /// Events waiting to be sent; past it the oldest are dropped (and counted).
    #[serde(default = "default_buffer")]
    pub buffer: usize,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyslogFormat {
    /// `<PRI>1 TIMESTAMP HOST ghgate PID EVENT - JSON` (facility daemon).
    #[default]
    Rfc5424,
    /// journald's native protocol: `MESSAGE=JSON`, `PRIORITY`, `SYSLOG_IDENTIFIER=ghgate`,
    /// `GHGATE_EVENT`.
    Journald,
}

pub fn default_syslog_socket() -> PathBuf {
    PathBuf::from("/dev/log")
}

fn default_buffer() -> usize {
    10_000
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkWebhookConfig {
    /// `https://…` (plain `http://` only to loopback addresses).
    pub url: String,
    /// A PEM file of CA certificates trusted for the receiver, besides the system's.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Extra request headers (an `Authorization` for the receiver, …).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Per POST.
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// The most lines one POST carries.
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// Events waiting to be sent, the ones of failed POSTs included; past it the oldest are
    /// dropped (and counted).
    #[serde(default = "default_buffer")]
    pub buffer: usize,
    /// The wait after a failed POST, doubling on each failure up to `max_backoff_ms`.
    #[serde(default = "default_backoff_ms")]
    pub backoff_ms: u64,
    #[serde(default = "default_max_backoff_ms")]
    pub max_backoff_ms: u64,
}

fn default_timeout() -> u64 {
    10
}
fn default_batch() -> usize {
    500
}
fn default_backoff_ms() -> u64 {
    1000
}
fn default_max_backoff_ms() -> u64 {
    60_000
}

impl fmt::Debug for SinkWebhookConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SinkWebhookConfig")
            .field("url", &shown_url(&self.url))
            .field("ca", &self.ca)
            .field("headers", &shown_headers(&self.headers))
            .field("timeout_secs", &self.timeout_secs)
            .field("batch", &self.batch)
            .field("buffer", &self.buffer)
            .finish_non_exhaustive()
    }
}

impl TelemetryConfig {
    /// Validates `[telemetry]`: `Err((key, message))` names the offending key. `recording` is
    /// `[record] enabled`: the sinks stream what the recorder writes.
    pub fn validate(&self, recording: bool) -> Result<(), (String, String)> {
        if let Some(addr) = self.metrics {
            if addr.port() == 0 {
                return Err((
                    "telemetry.metrics".into(),
                    format!("{addr} needs a non-zero port"),
                ));
            }
            if !addr.ip().is_loopback() && !self.metrics_allow_remote {
                return Err((
                    "telemetry.metrics".into(),
                    format!(
                        "{addr} is not a loopback address: use 127.0.0.1 (scrape through an SSH tunnel or a \
                         local agent), or set metrics_allow_remote = true"
                    ),
                ));
            }
        }
        if (self.syslog.is_some() || self.webhook.is_some()) && !recording {
            return Err((
                "telemetry".into(),
                "the event sinks stream what the recorder writes: they need [record] enabled = true".into(),
            ));
        }
        if let Some(s) = &self.syslog {
            if !s.socket.is_absolute() {
                return Err((
                    "telemetry.syslog.socket".into(),
                    "must be an absolute path".into(),
                ));
            }
            if s.buffer == 0 {
                return Err(("telemetry.syslog.buffer".into(), "must be more than 0".into()));
            }
        }
        if let Some(w) = &self.webhook {
            check_webhook("telemetry.webhook", &w.url, w.timeout_secs, &w.headers)?;
            if w.buffer == 0 || w.batch == 0 {
                return Err((
                    "telemetry.webhook".into(),
                    "`buffer` and `batch` must be more than 0".into(),
                ));
            }
            if w.backoff_ms == 0 || w.max_backoff_ms < w.backoff_ms {
                return Err((
                    "telemetry.webhook.backoff_ms".into(),
                    "must be more than 0 and at most max_backoff_ms".into(),
                ));
            }
            if let Some(ca) = &w.ca
                && !ca.is_absolute()
            {
                return Err(("telemetry.webhook.ca".into(), "must be an absolute path".into()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> TelemetryConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn off_by_default_and_loopback_only() {
        let c = parse("");
        assert!(c.metrics.is_none() && c.syslog.is_none() && c.webhook.is_none());
        assert!(c.validate(true).is_ok());
        let remote = parse(r#"metrics = "0.0.0.0:9477""#);
        let (key, message) = remote.validate(true).unwrap_err();
        assert_eq!(key, "telemetry.metrics");
        assert!(message.contains("not a loopback address"), "{message}");
        let allowed = parse("metrics = \"0.0.0.0:9477\"\nmetrics_allow_remote = true");
        assert!(allowed.validate(true).is_ok());
        assert!(parse(r#"metrics = "[::1]:9477""#).validate(true).is_ok());
    }

    #[test]
    fn sinks_need_the_recorder_and_an_https_webhook() {
        let c = parse("[syslog]\n");
        assert_eq!(c.syslog.as_ref().unwrap().socket, PathBuf::from("/dev/log"));
        assert_eq!(c.validate(false).unwrap_err().0, "telemetry");
        let plain = parse("[webhook]\nurl = \"http://siem.example/x\"");
        assert_eq!(plain.validate(true).unwrap_err().0, "telemetry.webhook.url");
        let w = parse(
            "[webhook]\nurl = \"https://siem.example/hook/SECRETPATH\"\nheaders = { authorization = \"Bearer SECRETVALUE\" }",
        );
        assert!(w.validate(true).is_ok());
        let shown = format!("{w:?}");
        assert!(
            !shown.contains("SECRETPATH") && !shown.contains("SECRETVALUE"),
            "{shown}"
        );
    }
}
