//! The intercept set in force: one owner applies the names' answers and GitHub's ranges to the
//! kernel, so the DNS refresher and the ranges refresher (both here) never undo each other's
//! entries.
//!
//! It also refreshes the ranges from the meta API (through the gateway's own verified client)
//! and keeps the last good set when a refresh fails. It never decides what a connection may do
//! beyond what `intercept::desired` computes.
use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use http::{HeaderName, Method, StatusCode, header};
use tracing::{info, warn};

use super::{
    Maps, Synced,
    intercept::{self, RangePorts, Resolved},
    ranges::{self, Ranges, Source},
};
use crate::{
    config::{Config, GithubConfig, InterceptRule},
    outbound::Outbound,
    record::model,
    resolve::{Failing, HostSet, Resolver},
};

/// After a failed refresh, try again this soon (or at the regular interval, if sooner).
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(300);

pub struct LiveSet {
    inner: Mutex<Inner>,
}

struct Inner {
    maps: Maps,
    rules: Vec<InterceptRule>,
    tls_ports: Vec<u16>,
    allow_ports: Vec<u16>,
    resolved: Resolved,
    /// Every name has had an answer: stale name entries may be removed.
    names_complete: bool,
    ranges: Ranges,
    last_refresh_error: Option<String>,
}

impl Inner {
    fn apply(&mut self) -> anyhow::Result<Synced> {
        let desired = intercept::desired(
            &self.rules,
            &self.resolved,
            &self.ranges.prefixes,
            RangePorts {
                tls: &self.tls_ports,
                allowed: &self.allow_ports,
            },
        );
        self.maps.sync(&desired, self.names_complete)
    }
}

impl LiveSet {
    pub fn new(maps: Maps, config: &Config, ranges: Ranges) -> Self {
        note_fetched(&ranges);
        Self {
            inner: Mutex::new(Inner {
                maps,
                rules: config.intercept_rules(),
                tls_ports: config.tls.ports.clone(),
                allow_ports: if config.github.enabled() {
                    config.github.allow_ports.clone()
                } else {
                    Vec::new()
                },
                resolved: Resolved::new(),
                names_complete: false,
                ranges,
                last_refresh_error: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// New answers for the names; `complete` once every name has had one.
    pub fn set_names(&self, resolved: &Resolved, complete: bool) -> anyhow::Result<Synced> {
        let mut inner = self.lock();
        inner.resolved = resolved.clone();
        inner.names_complete = complete;
        inner.apply()
    }

    /// A new set of GitHub's ranges.
    pub fn set_ranges(&self, ranges: Ranges) -> anyhow::Result<Synced> {
        note_fetched(&ranges);
        let mut inner = self.lock();
        inner.ranges = ranges;
        inner.last_refresh_error = None;
        inner.apply()
    }

    pub fn ranges(&self) -> Ranges {
        self.lock().ranges.clone()
    }

    /// For `ghgate status`: where the ranges came from, how old they are, the last failure.
    pub fn summary(&self) -> serde_json::Value {
        let inner = self.lock();
        ranges::summary(&inner.ranges, inner.last_refresh_error.as_deref())
    }

    /// For `ghgate doctor`: how many intercepted names there are, and which have no answer yet.
    pub fn names_summary(&self) -> serde_json::Value {
        let inner = self.lock();
        let unresolved: Vec<&String> = inner
            .resolved
            .iter()
            .filter(|(_, a)| a.as_ref().is_none_or(|a| a.is_empty()))
            .map(|(n, _)| n)
            .collect();
        serde_json::json!({ "total": inner.resolved.len(), "unresolved": unresolved })
    }

    /// The entries the kernel holds now (for the start-up log line).
    pub fn entries(&self) -> anyhow::Result<usize> {
        Ok(self.lock().maps.entries()?.len())
    }

    /// Records why a refresh failed; returns whether this is a new failure (worth a log line).
    fn note_failure(&self, error: String) -> bool {
        let mut inner = self.lock();
        let new = inner.last_refresh_error.as_deref() != Some(error.as_str());
        inner.last_refresh_error = Some(error);
        new
    }

    fn had_failure(&self) -> bool {
        self.lock().last_refresh_error.is_some()
    }
}

/// Tells the metrics when the ranges in force were fetched from the meta API (never, for a
/// snapshot).
fn note_fetched(ranges: &Ranges) {
    let fetched = matches!(ranges.source, Source::Refreshed | Source::Cached)
        .then_some(ranges.as_of.as_deref())
        .flatten()
        .and_then(|t| time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok())
        .map_or(0, |t| (t.unix_timestamp_nanos() / 1000) as u64);
    crate::telemetry::metrics().ranges_fetched(fetched);
}

/// Re-resolves the intercept set's names as they fall due, forever, applying each change. A
/// kernel update that keeps failing is logged when it starts and when it works again.
pub async fn names_forever(mut hosts: HostSet, resolver: Resolver, live: Arc<LiveSet>) {
    let mut failing = Failing::default();
    loop {
        let Some(next) = hosts.next_due() else {
            return; // no names, nothing to refresh
        };
        tokio::time::sleep_until(next).await;
        if hosts.refresh_due(&resolver).await || !hosts.complete() {
            match live.set_names(hosts.resolved(), hosts.complete()) {
                Ok(s) => {
                    if failing.worked(&()) {
                        info!("the intercept set can be updated again");
                    }
                    if !s.is_empty() {
                        info!(
                            added = s.added,
                            changed = s.changed,
                            removed = s.removed,
                            "intercept set updated"
                        );
                    }
                }
                Err(e) => {
                    if failing.failed(()) {
                        warn!(error = %format!("{e:#}"), "cannot update the intercept set (logged again when it can)");
                    }
                }
            }
        }
    }
}

/// Fetches the ranges once: the whole answer, or why it is not usable.
pub async fn fetch(outbound: &Outbound, config: &GithubConfig) -> Result<Ranges, String> {
    let headers: [(HeaderName, String); 2] = [
        (header::ACCEPT, "application/vnd.github+json".into()),
        (
            header::USER_AGENT,
            concat!("ghgate/", env!("CARGO_PKG_VERSION")).into(),
        ),
    ];
    let response = outbound
        .request(Method::GET, &config.meta_url, &headers, None)
        .await
        .map_err(|e| e.to_string())?;
    if response.status != StatusCode::OK {
        return Err(format!("{} answered {}", config.meta_url, response.status));
    }
    let text = std::str::from_utf8(&response.body)
        .map_err(|_| format!("{} answered with non-UTF-8 bytes", config.meta_url))?;
    let prefixes =
        ranges::parse_meta(text, &config.meta_lists).map_err(|e| format!("{}: {e}", config.meta_url))?;
    Ok(Ranges {
        prefixes,
        source: Source::Refreshed,
        as_of: Some(model::rfc3339(model::now_micros())),
    })
}

/// Refreshes the ranges at start and every `refresh_secs`, forever. A failure keeps the set in
/// force and is logged once when it starts and once when it ends, not at every retry.
pub async fn refresh_forever(
    live: Arc<LiveSet>,
    outbound: Outbound,
    config: GithubConfig,
    state_dir: PathBuf,
) {
    if !config.enabled() || config.refresh_secs == 0 {
        return;
    }
    let interval = Duration::from_secs(config.refresh_secs);
    loop {
        let wait = match fetch(&outbound, &config).await {
            Ok(fresh) => {
                let recovered = live.had_failure();
                let change = ranges::change(&live.ranges().prefixes, &fresh.prefixes);
                match live.set_ranges(fresh.clone()) {
                    Ok(_) => {
                        if recovered || change.added + change.removed > 0 {
                            info!(url = %config.meta_url, prefixes = fresh.prefixes.len(), added = change.added,
                                  removed = change.removed, "GitHub's ranges refreshed");
                        }
                        if let Err(e) = ranges::save(&state_dir, &config, &fresh) {
                            warn!(error = %e, "cannot keep the refreshed ranges for the next start");
                        }
                        interval
                    }
                    Err(e) => {
                        let e = format!("cannot apply the refreshed ranges: {e:#}");
                        if live.note_failure(e.clone()) {
                            warn!(error = %e, "GitHub's ranges not refreshed; the set in force stays");
                        }
                        interval.min(RETRY_AFTER_FAILURE)
                    }
                }
            }
            Err(e) => {
                if live.note_failure(e.clone()) {
                    warn!(error = %e, url = %config.meta_url, "GitHub's ranges not refreshed; the set in force stays");
                }
                interval.min(RETRY_AFTER_FAILURE)
            }
        };
        tokio::time::sleep(wait).await;
    }
}
