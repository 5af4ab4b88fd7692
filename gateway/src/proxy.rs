//! The stage every accepted connection enters: TLS on a TLS port is read (ClientHello), and the
//! SNI decides — names configured for interception are terminated and go through the HTTP
//! pipeline; every other name, and every non-TLS port, is relayed untouched.
//!
//! The upstream is dialled first, at the address the client dialled, so the client is offered
//! exactly the protocol the upstream agreed to (h2 or http/1.1). A client that does not speak TLS
//! on a TLS port is closed with a log line naming it; nothing else is affected.
use std::{future::Future, pin::Pin, sync::Arc, time::Duration};

use rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};

use crate::{
    config::TlsConfig,
    http::{
        self, ConnInfo, Phases, Settings, UpstreamRoute,
        pool::{Key, Pool, Sender},
    },
    listen::{Accepted, Handler},
    relay::Relay,
    resolve::HostMap,
    tls::{
        hello,
        leaf::{ForName, LeafCache},
        readahead::ReadAhead,
        upstream::Proto,
    },
};

/// How long a client may take to send its ClientHello, and to finish the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Proxy<P> {
    pub relay: Relay,
    pub tls: TlsConfig,
    pub leaves: Arc<LeafCache>,
    pub pool: Arc<Pool>,
    pub phases: Arc<P>,
    pub settings: Settings,
    /// Names for connections without SNI, from the intercept set's resolved addresses.
    pub hosts: HostMap,
}

impl<P: Phases> Handler for Proxy<P> {
    fn handle(&self, conn: Accepted) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(self.run(conn))
    }
}

impl<P: Phases> Proxy<P> {
    async fn run(&self, conn: Accepted) {
        if !self.tls.ports.contains(&conn.orig_dst.0.port()) {
            return self.relay.run(conn, None, "not a TLS port").await;
        }
        let hello = match hello::peek(&conn.stream, HANDSHAKE_TIMEOUT).await {
            Ok(h) => h,
            Err(e) => {
                warn!(client = %conn.client, orig_dst = %conn.orig_dst, tgid = conn.caller.tgid, uid = conn.caller.uid,
                      comm = %conn.caller.comm, error = %e, "closing a connection to a TLS port that did not start TLS");
                return;
            }
        };
        // No SNI: name the connection after the configured host its address resolved from.
        let (name, named_by) = match hello.server_name {
            Some(name) => (Some(name), "sni"),
            None => (self.hosts.name_of(conn.orig_dst.0.ip()), "host map"),
        };
        let name = match name {
            Some(name) if self.tls.terminates(&name) => name,
            other => {
                info!(client = %conn.client, orig_dst = %conn.orig_dst, tgid = conn.caller.tgid, comm = %conn.caller.comm,
                      sni = other.as_deref().unwrap_or(""), named_by, "TLS name not terminated; relaying it untouched");
                let reason = match &other {
                    Some(n) if self.tls.passthrough_listed(n) => "on the passthrough list",
                    Some(_) => "name not intercepted",
                    None => "no SNI and no known name",
                };
                return self.relay.run(conn, other, reason).await;
            }
        };
        if named_by == "host map" {
            info!(client = %conn.client, orig_dst = %conn.orig_dst, name = %name, "no SNI; named after the host its address resolved from");
        }
        // Reach the upstream first (or find it in the pool) to learn its protocol.
        let key = Key {
            name: name.clone(),
            addr: conn.orig_dst.0,
        };
        // Each client is served in its own protocol where the upstream speaks it (an HTTP/1.1
        // client gets pooled HTTP/1.1 connections, not a share of one HTTP/2 connection).
        let reached = match choose_client_protocol(&hello.alpn, None).0 {
            Proto::Http2 => self.pool.get(&key).await,
            Proto::Http1 => self.pool.get_http1(&key).await,
        };
        let (upstream_proto, failed) = match reached {
            Ok(sender) => {
                let proto = sender.proto();
                if let Sender::Http1(send) = sender {
                    self.pool.put_back(&key, send);
                }
                (Some(proto), None)
            }
            Err(e) => {
                warn!(client = %conn.client, orig_dst = %conn.orig_dst, sni = %name, tgid = conn.caller.tgid,
                      error = %e, "upstream TLS failed; the client gets 502 and nothing is forwarded");
                (None, Some(e.to_string()))
            }
        };
        let (client_proto, client_alpn) = choose_client_protocol(&hello.alpn, upstream_proto);
        let mut config = match ServerConfig::builder_with_provider(self.pool.tls().provider())
            .with_safe_default_protocol_versions()
        {
            Ok(b) => b.with_no_client_auth().with_cert_resolver(Arc::new(ForName {
                cache: self.leaves.clone(),
                name: name.clone(),
            })),
            Err(e) => {
                warn!(error = %e, "cannot build the TLS server configuration");
                return;
            }
        };
        config.alpn_protocols = client_alpn.into_iter().collect();
        let Accepted {
            stream,
            client,
            orig_dst,
            caller,
            ..
        } = conn;
        // Small responses (API calls, SSE events) must not wait for Nagle.
        let _ = stream.set_nodelay(true);
        let mut tls = match tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            TlsAcceptor::from(Arc::new(config)).accept(ReadAhead::new(stream)),
        )
        .await
        {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                warn!(client = %client, sni = %name, tgid = caller.tgid, uid = caller.uid, comm = %caller.comm, error = %e,
                      "client TLS handshake failed (does the client trust ghgate's CA?)");
                return;
            }
            Err(_) => {
                warn!(client = %client, sni = %name, tgid = caller.tgid, comm = %caller.comm, "client TLS handshake timed out");
                return;
            }
        };
        tls.get_mut()
            .1
            .set_buffer_limit(Some(crate::tls::SEND_BUFFER_LIMIT));
        let client_tls = tls
            .get_ref()
            .1
            .protocol_version()
            .and_then(|v| v.as_str())
            .map(str::to_owned);
        let info = ConnInfo {
            id: http::next_connection_id(),
            session: caller.session_id(),
            client,
            orig_dst,
            caller,
            sni: name,
            client_proto,
            upstream_proto,
            client_tls,
        };
        let route = UpstreamRoute {
            pool: self.pool.clone(),
            key,
            failed,
        };
        http::serve(tls, info, route, self.phases.clone(), &self.settings).await;
    }
}

/// Which HTTP version to speak with a client, and which ALPN value (if any) to select for it.
///
/// The upstream's protocol when the client offered it (no translation needed); otherwise the
/// client's first choice among h2 and http/1.1, and the pipeline translates. A client that
/// offered neither (or no ALPN at all) gets HTTP/1.1 without an ALPN selection.
pub fn choose_client_protocol(client_alpn: &[Vec<u8>], upstream: Option<Proto>) -> (Proto, Option<Vec<u8>>) {
    let offered: Vec<Proto> = client_alpn
        .iter()
        .filter_map(|p| match p.as_slice() {
            b"h2" => Some(Proto::Http2),
            b"http/1.1" => Some(Proto::Http1),
            _ => None,
        })
        .collect();
    match upstream
        .filter(|p| offered.contains(p))
        .or_else(|| offered.first().copied())
    {
        Some(p) => (p, Some(p.alpn().to_vec())),
        None => (Proto::Http1, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alpn(list: &[&str]) -> Vec<Vec<u8>> {
        list.iter().map(|s| s.as_bytes().to_vec()).collect()
    }

    #[test]
    fn the_upstream_protocol_wins_when_the_client_offered_it() {
        let both = alpn(&["h2", "http/1.1"]);
        assert_eq!(
            choose_client_protocol(&both, Some(Proto::Http1)),
            (Proto::Http1, Some(b"http/1.1".to_vec()))
        );
        assert_eq!(
            choose_client_protocol(&both, Some(Proto::Http2)),
            (Proto::Http2, Some(b"h2".to_vec()))
        );
    }

    #[test]
    fn otherwise_the_clients_first_choice_and_the_pipeline_translates() {
        assert_eq!(
            choose_client_protocol(&alpn(&["http/1.1"]), Some(Proto::Http2)).0,
            Proto::Http1
        );
        assert_eq!(
            choose_client_protocol(&alpn(&["h2", "http/1.1"]), None).0,
            Proto::Http2
        );
    }

    #[test]
    fn no_usable_alpn_means_http1_without_selecting_one() {
        assert_eq!(
            choose_client_protocol(&[], Some(Proto::Http2)),
            (Proto::Http1, None)
        );
        assert_eq!(
            choose_client_protocol(&alpn(&["spdy/3"]), Some(Proto::Http2)),
            (Proto::Http1, None)
        );
    }
}
