//! Telemetry an admin already uses: a Prometheus `/metrics` endpoint ([`metrics`]) and event
//! sinks ([`sink`]: syslog or journald, an HTTPS webhook), as `[telemetry]` configures them.
//!
//! Off the data path: the stages count with atomic adds, the sinks are fed by the recorder's
//! tap into bounded buffers, and everything else is read when scraped. This module must never
//! hold traffic up, and never send or expose a secret: sinks stream records as the store holds
//! them (masked), metrics are counts labelled from closed sets and config rule names.
pub mod config;
pub mod metrics;
pub mod sink;

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use bytes::Bytes;
use http::{Method, Response, StatusCode, header};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tracing::{info, warn};

pub use self::metrics::metrics;
use self::{
    metrics::Sources,
    sink::{Backoff, Buffer, Sinks, Syslog, Webhook},
};
use crate::{
    approval::{Approvals, config::shown_url},
    config::Config,
    outbound::Outbound,
    record::{Recorder, model::Record},
    resolve::Resolver,
    tls::upstream::UpstreamTls,
};

/// Syslog's sends are retried this soon after a failure (journald restarting), doubling.
const SYSLOG_BACKOFF: Backoff = Backoff {
    first: Duration::from_millis(500),
    max: Duration::from_secs(30),
};

/// How long a scrape connection may stay idle or take.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(30);

/// Starts what `[telemetry]` asks for: the sinks' senders, the recorder's tap, and the metrics
/// listener (bound here, so a taken port fails the start). Returns the metrics address bound.
/// Must run inside a tokio runtime.
pub async fn start(
    config: &Config,
    recorder: Option<&Arc<Recorder>>,
    approvals: Option<Arc<Approvals>>,
) -> anyhow::Result<Option<SocketAddr>> {
    let t = &config.telemetry;
    let mut buffers = Vec::new();
    if let Some(s) = &t.syslog {
        let buffer = Arc::new(Buffer::new("syslog", s.buffer, metrics()));
        let output = Syslog::new(s).context("cannot open a socket for [telemetry.syslog]")?;
        tokio::spawn(sink::run(buffer.clone(), Arc::new(output), SYSLOG_BACKOFF));
        info!(socket = %s.socket.display(), format = ?s.format, "streaming events to syslog");
        buffers.push(buffer);
    }
    if let Some(w) = &t.webhook {
        let tls = UpstreamTls::new(w.ca.as_slice()).context("[telemetry.webhook] ca")?;
        let resolver = Arc::new(Resolver::new(&config.dns, &config.dns_servers())?);
        let outbound = Outbound::new(tls, resolver, Duration::from_secs(w.timeout_secs));
        let buffer = Arc::new(Buffer::new("webhook", w.buffer, metrics()));
        let backoff = Backoff {
            first: Duration::from_millis(w.backoff_ms),
            max: Duration::from_millis(w.max_backoff_ms),
        };
        let output = Webhook::new(w.clone(), outbound).context("[telemetry.webhook]")?;
        tokio::spawn(sink::run(buffer.clone(), Arc::new(output), backoff));
        info!(url = %shown_url(&w.url), "streaming events to a webhook");
        buffers.push(buffer);
    }
    let sinks = Sinks::new(buffers);
    let sink_names = [
        t.syslog.as_ref().map(|_| "syslog"),
        t.webhook.as_ref().map(|_| "webhook"),
    ]
    .into_iter()
    .flatten()
    .collect();
    if !sinks.is_empty()
        && let Some(r) = recorder
    {
        r.set_tap(Box::new(move |records: &[Record]| sinks.tap(records)));
    }
    let Some(addr) = t.metrics else {
        return Ok(None);
    };
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for [telemetry] metrics on {addr}"))?;
    let bound = listener.local_addr()?;
    let registry = metrics().registry(Sources {
        approvals,
        recorder: recorder.cloned(),
        record_dir: config.record.enabled.then(|| config.record_dir()),
        sinks: sink_names,
    });
    tokio::spawn(serve_metrics(listener, Arc::new(registry)));
    info!(listen = %bound, "serving Prometheus metrics at /metrics");
    Ok(Some(bound))
}

/// Answers `GET /metrics` with the text exposition; anything else with 404 or 405.
async fn serve_metrics(listener: TcpListener, registry: Arc<Registry>) {
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "metrics listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let registry = registry.clone();
                async move { Ok::<_, Infallible>(answer(&registry, req.method(), req.uri().path())) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .header_read_timeout(Some(SCRAPE_TIMEOUT))
                .timer(hyper_util::rt::TokioTimer::new())
                .serve_connection(TokioIo::new(tcp), svc);
            let _ = tokio::time::timeout(SCRAPE_TIMEOUT, conn).await;
        });
    }
}

fn answer(registry: &Registry, method: &Method, path: &str) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (method, path) {
        (&Method::GET | &Method::HEAD, "/metrics") => {
            (StatusCode::OK, metrics::CONTENT_TYPE, metrics::encode(registry))
        }
        (_, "/metrics") => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "only GET\n".to_owned(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "ghgate serves /metrics only\n".to_owned(),
        ),
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    r
}
