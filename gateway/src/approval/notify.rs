//! The webhook: each new pending approval is posted (JSON, or Slack's `{"text": …}`) to the
//! configured URL, retried with exponential backoff, in a background task; the outcome is one
//! `Step::Notified`.
//!
//! Must never block or fail the operation that created the approval, never put the webhook's
//! URL path or header values (secrets for Slack and most receivers) into a step or a log line,
//! and never send anything but the approval's own facts.
use std::{future::Future, pin::Pin, sync::Arc, time::Duration};

use serde_json::json;

use super::{
    Approval, Operation, Step,
    config::{WebhookConfig, WebhookFormat, shown_url},
    rfc3339,
};

/// The first retry waits this long (then 2×, 4×, … up to [`MAX_BACKOFF`]).
pub const DEFAULT_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Sends one POST and returns the response's status (the body is ignored). The gateway plugs in
/// its verified HTTPS client; `headers` include the content type. Timeouts are applied by the
/// caller.
pub trait Poster: Send + Sync {
    fn post<'a>(
        &'a self,
        url: &'a str,
        headers: &'a [(String, String)],
        body: Vec<u8>,
    ) -> Pin<Box<dyn Future<Output = Result<u16, crate::http::BoxError>> + Send + 'a>>;
}

pub struct Webhook {
    config: WebhookConfig,
    poster: Arc<dyn Poster>,
    backoff: Duration,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Webhook {
    /// `backoff` is the wait before the first retry ([`DEFAULT_BACKOFF`] outside tests).
    pub fn new(config: WebhookConfig, poster: Arc<dyn Poster>, backoff: Duration) -> Self {
        Self {
            config,
            poster,
            backoff,
        }
    }

    /// The request body (JSON in both formats).
    pub fn body(&self, approval: &Approval) -> Vec<u8> {
        let value = match self.config.format {
            WebhookFormat::Json => payload(approval),
            WebhookFormat::Slack => json!({ "text": summary(approval) }),
        };
        serde_json::to_vec(&value).expect("JSON serializes")
    }

    /// Posts `approval`, retrying failures; the outcome as `Step::Notified`.
    pub async fn deliver(&self, approval: &Approval) -> Step {
        let mut headers = vec![("content-type".to_owned(), "application/json".to_owned())];
        headers.extend(self.config.headers.iter().map(|(k, v)| (k.clone(), v.clone())));
        let body = self.body(approval);
        let timeout = Duration::from_secs(self.config.timeout_secs);
        let attempts = self.config.retries.saturating_add(1);
        let mut wait = self.backoff;
        let mut last = String::new();
        for attempt in 1..=attempts {
            if attempt > 1 {
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(MAX_BACKOFF);
            }
            let sent = tokio::time::timeout(
                timeout,
                self.poster.post(&self.config.url, &headers, body.clone()),
            );
            last = match sent.await {
                Ok(Ok(status)) if (200..300).contains(&status) => {
                    return Step::Notified {
                        ok: true,
                        attempts: attempt,
                        error: None,
                    };
                }
                Ok(Ok(status)) => format!("the receiver answered {status}"),
                Ok(Err(e)) => self.scrub(&e.to_string()),
                Err(_) => format!("no answer within {}s", self.config.timeout_secs),
            };
            tracing::debug!(
                approval = %approval.id,
                webhook = %shown_url(&self.config.url),
                attempt,
                error = %last,
                "webhook attempt failed"
            );
        }
        tracing::warn!(
            approval = %approval.id,
            webhook = %shown_url(&self.config.url),
            attempts,
            error = %last,
            "cannot notify approvers"
        );
        Step::Notified {
            ok: false,
            attempts,
            error: Some(last),
        }
    }

    /// A poster's error, with the URL and header values (secrets) replaced.
    fn scrub(&self, error: &str) -> String {
        scrub(error, &self.config.url, &self.config.headers)
    }
}

/// A webhook's error, with its URL's path and its header values (secrets) replaced.
pub fn scrub(error: &str, url: &str, headers: &std::collections::BTreeMap<String, String>) -> String {
    let mut e = error.replace(url, &shown_url(url));
    if let Some((_, rest)) = url.split_once("://")
        && let Some(slash) = rest.find('/')
        && rest.len() > slash + 1
    {
        e = e.replace(&rest[slash..], "/***");
    }
    for v in headers.values().filter(|v| !v.is_empty()) {
        e = e.replace(v.as_str(), "***");
    }
    e
}

/// The JSON format: the approval's facts and how to decide it.
fn payload(a: &Approval) -> serde_json::Value {
    json!({
        "event": "approval_requested",
        "id": a.id,
        "summary": summary(a),
        "operation": a.operation,
        "requester": a.requester,
        "rule": a.rule,
        "group": a.group,
        "needed": a.needed,
        "message": a.message,
        "created_at": a.created_at,
        "expires_at": a.expires_at,
        "expires": rfc3339(a.expires_at),
        "approve": a.approve_command(),
        "deny": format!("ghgate approvals deny {}", a.id),
    })
}

/// One readable paragraph (Slack's `text`).
pub fn summary(a: &Approval) -> String {
    let what = match &a.operation {
        Operation::GitRef { .. } => "a ref update",
        Operation::Api { .. } => "an API request",
    };
    let mut s = format!(
        "ghgate: approval {} requested for {what}: `{}` by {} (rule {:?}). Needs {} approver(s) of group {:?} before {}.",
        a.id,
        a.operation,
        a.requester,
        a.rule,
        a.needed,
        a.group,
        rfc3339(a.expires_at)
    );
    if let Some(m) = &a.message {
        s.push_str(&format!(" Note: {m}."));
    }
    s.push_str(&format!(
        " Approve: `{}` — deny: `ghgate approvals deny {}`",
        a.approve_command(),
        a.id
    ));
    s
}
