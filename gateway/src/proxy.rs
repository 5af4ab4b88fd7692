//! The stage every accepted connection enters: on a TLS port the ClientHello is read, and the
//! SNI decides, failing closed — a name configured for interception is terminated and goes
//! through the HTTP pipeline; a name on the passthrough list is recorded, then relayed untouched;
//! anything else (a foreign name, no name, a hello that does not parse, an ECH hello whose real
//! name is hidden, bytes that are not TLS) is refused and recorded, and no upstream is dialled.
//! Connections to a configured non-TLS port are relayed as TCP.
//!
//! The upstream is dialled first, at the address the client dialled, so the client is offered
//! exactly the protocol the upstream agreed to (h2 or http/1.1).
use std::{future::Future, pin::Pin, sync::Arc, time::Duration};

use rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::{
    config::TlsConfig,
    http::{
        self, ConnInfo, Phases, Settings, UpstreamRoute,
        pool::{Key, Pools, Sender},
    },
    listen::{Accepted, Handler},
    record::model::{self, PassthroughReason, RefusalLayer, RefusalReason, Transport},
    relay::Relay,
    tls::{
        fronting::{Fronting, Refused},
        hello::{self, HelloError},
        leaf::{ForName, LeafCache},
        readahead::ReadAhead,
        upstream::Proto,
    },
};

/// How long a client may take to send its ClientHello, and to finish the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// TLS alert descriptions sent with a refusal (RFC 8446 §6).
const ALERT_HANDSHAKE_FAILURE: u8 = 40;
const ALERT_DECODE_ERROR: u8 = 50;
const ALERT_UNRECOGNIZED_NAME: u8 = 112;

pub struct Proxy<P> {
    pub relay: Relay,
    pub tls: TlsConfig,
    pub leaves: Arc<LeafCache>,
    /// Session tickets for clients, shared by every terminated connection so that a client's
    /// next connection resumes (no leaf signature, one round trip less). A ticket resumes only
    /// for the name it was issued under (rustls checks the SNI), and only in this process: its
    /// keys are random, rotated every 6 hours and never written anywhere.
    pub tickets: Arc<dyn rustls::server::ProducesTickets>,
    /// Upstream connections, one pool per shard.
    pub pool: Pools,
    pub phases: Arc<P>,
    pub settings: Settings,
    /// The TLS server configurations made so far, per name and ALPN list.
    pub configs: ServerConfigs,
    /// The connections each process and cgroup holds, and all of them, capped.
    pub caps: Arc<crate::listen::caps::Caps>,
    /// Decides whether a passthrough connection could front for an intercepted name.
    pub fronting: Arc<Fronting>,
}

/// TLS server configurations per (name, ALPN protocols), made once and shared by the connections
/// terminated for them. Made per connection, each came with its own session cache (a table for
/// 256 sessions) that the connection kept for its life, and cost a build on every accept.
pub struct ServerConfigs(std::sync::Mutex<ConfigCache>);

/// (name, ALPN protocols) → configuration.
type ConfigCache = lru::LruCache<(String, Vec<Vec<u8>>), Arc<ServerConfig>>;

impl ServerConfigs {
    fn lock(&self) -> std::sync::MutexGuard<'_, ConfigCache> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Default for ServerConfigs {
    fn default() -> Self {
        Self(std::sync::Mutex::new(lru::LruCache::new(
            std::num::NonZeroUsize::new(1024).expect("non-zero"),
        )))
    }
}

impl<P: Phases> Handler for Proxy<P> {
    fn handle(&self, conn: Accepted) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(self.run(conn))
    }
}

/// What the peek decided for a connection on a TLS port.
#[derive(Debug, PartialEq, Eq)]
pub enum Peeked {
    /// The name, and the ALPN protocols the client offered.
    Terminate(String, Vec<Vec<u8>>),
    Passthrough(String),
    /// `ghgate doctor`'s reserved name: answered by the gateway itself, never dialled.
    SelfTest,
    Refuse {
        reason: RefusalReason,
        sni: Option<String>,
        detail: String,
        /// The TLS alert to send, where the client spoke TLS.
        alert: Option<u8>,
    },
    /// The client went away (or never spoke) before a decision: nothing to refuse or record.
    Gone(String),
}

/// The fail-closed decision for a ClientHello (or what stood in its place).
pub fn decide(tls: &TlsConfig, hello: Result<hello::Hello, HelloError>) -> Peeked {
    let refuse = |reason, sni: Option<String>, detail: String, alert| Peeked::Refuse {
        reason,
        sni,
        detail,
        alert,
    };
    let hello = match hello {
        Ok(h) => h,
        Err(e @ HelloError::NotTls(_)) => return refuse(RefusalReason::NotTls, None, e.to_string(), None),
        Err(e @ (HelloError::Malformed(_) | HelloError::TooLarge)) => {
            return refuse(
                RefusalReason::MalformedHello,
                None,
                e.to_string(),
                Some(ALERT_DECODE_ERROR),
            );
        }
        Err(e @ HelloError::Timeout(_)) => return refuse(RefusalReason::NotTls, None, e.to_string(), None),
        Err(e @ (HelloError::Closed | HelloError::Io(_))) => return Peeked::Gone(e.to_string()),
    };
    match hello.server_name {
        Some(name) if crate::selftest::is_name(&name) => Peeked::SelfTest,
        Some(name) if tls.passthrough_listed(&name) => Peeked::Passthrough(name),
        Some(name) if tls.terminates(&name) => Peeked::Terminate(name, hello.alpn),
        // An ECH hello names only its outer name; whatever it hides must not be relayed.
        other if hello.ech => refuse(
            RefusalReason::Ech,
            other,
            "Encrypted Client Hello hides the real server name".into(),
            Some(ALERT_HANDSHAKE_FAILURE),
        ),
        Some(name) => refuse(
            RefusalReason::ForeignSni,
            Some(name),
            "the name is neither intercepted nor on the passthrough list ([tls] intercept, passthrough)"
                .into(),
            Some(ALERT_UNRECOGNIZED_NAME),
        ),
        None => refuse(
            RefusalReason::NoSni,
            None,
            "no server name (or an address or invalid name in its place)".into(),
            Some(ALERT_UNRECOGNIZED_NAME),
        ),
    }
}

/// A terminated client connection, ready to be served: its TLS stream, facts and upstream.
type Terminated = (
    tokio_rustls::server::TlsStream<ReadAhead<tokio::net::TcpStream>>,
    ConnInfo,
    UpstreamRoute,
);

impl<P: Phases> Proxy<P> {
    fn run(&self, conn: Accepted) -> impl Future<Output = ()> + Send + '_ {
        // Held for the connection's life; over the cap, the connection is closed unread.
        let slot = self.caps.enter(&conn.caller);
        // A connection's future is as large as its largest state for as long as it lives, and
        // is copied whole into its box: the set-up's state (peek, upstream, handshake) is over
        // twice serving's. Boxed apart, it is freed before serving starts; made here and not in
        // an `async fn`, the connection (and its caller) is not kept as an argument beside it,
        // and the set-up's result is handed to `serve` before anything waits: 888 bytes for the
        // whole connection's future (release build), against 7,032 before.
        let setup = slot.is_some().then(|| Box::pin(self.terminate(conn)));
        async move {
            let (Some(_slot), Some(setup)) = (slot, setup) else {
                return;
            };
            let serving = match setup.await {
                Some((tls, info, route)) => {
                    http::serve(tls, info, route, self.phases.clone(), &self.settings)
                }
                None => return,
            };
            serving.await;
        }
    }

    /// Everything before serving: the peek's decision (relaying, refusing or self-testing here
    /// and returning `None`), the upstream's protocol, the client's handshake.
    async fn terminate(&self, conn: Accepted) -> Option<Terminated> {
        if !self.tls.ports.contains(&conn.orig_dst.0.port()) {
            self.relay.run(conn, None, PassthroughReason::NotATlsPort).await;
            return None;
        }
        let (name, alpn) = match decide(&self.tls, hello::peek(&conn.stream, HANDSHAKE_TIMEOUT).await) {
            Peeked::Terminate(name, alpn) => (name, alpn),
            Peeked::Passthrough(name) => {
                self.passthrough(conn, name).await;
                return None;
            }
            Peeked::SelfTest => {
                self.selftest(conn).await;
                return None;
            }
            Peeked::Refuse {
                reason,
                sni,
                detail,
                alert,
            } => {
                self.refuse(conn, reason, sni, detail, alert).await;
                return None;
            }
            Peeked::Gone(why) => {
                debug!(client = %conn.client, orig_dst = %conn.orig_dst, why, "client left before its ClientHello");
                return None;
            }
        };
        // Reach the upstream first (or find it in the pool) to learn its protocol.
        let key = Key {
            name: name.clone(),
            addr: conn.orig_dst.0,
        };
        // Each client is served in its own protocol where the upstream speaks it (an HTTP/1.1
        // client gets pooled HTTP/1.1 connections, not a share of one HTTP/2 connection).
        let reached = match choose_client_protocol(&alpn, None).0 {
            Proto::Http2 => self.pool.here().get(&key).await,
            Proto::Http1 => self.pool.here().get_http1(&key).await,
        };
        let (upstream_proto, failed) = match reached {
            Ok(sender) => {
                let proto = sender.proto();
                if let Sender::Http1(send) = sender {
                    self.pool.here().put_back(&key, send);
                }
                (Some(proto), None)
            }
            Err(e) => {
                warn!(client = %conn.client, orig_dst = %conn.orig_dst, sni = %name, tgid = conn.caller.tgid,
                      error = %e, "upstream TLS failed; the client gets 502 and nothing is forwarded");
                (None, Some(e.to_string()))
            }
        };
        let (client_proto, client_alpn) = choose_client_protocol(&alpn, upstream_proto);
        let config = self.server_config(&name, client_alpn.into_iter().collect())?;
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
            TlsAcceptor::from(config).accept(ReadAhead::new(stream)),
        )
        .await
        {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                warn!(client = %client, sni = %name, tgid = caller.tgid, uid = caller.uid, comm = %caller.comm, error = %e,
                      "client TLS handshake failed (does the client trust ghgate's CA?)");
                return None;
            }
            Err(_) => {
                warn!(client = %client, sni = %name, tgid = caller.tgid, comm = %caller.comm, "client TLS handshake timed out");
                return None;
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
            pool: self.pool.here().clone(),
            key,
            failed,
        };
        Some((tls, info, route))
    }
}

impl<P: Phases> Proxy<P> {
    /// The TLS server configuration of a connection terminated for `name` offering `alpn`: a
    /// leaf for that name (cached), and the shared session tickets. Made once per name and ALPN
    /// list (see [`ServerConfigs`]).
    fn server_config(&self, name: &str, alpn: Vec<Vec<u8>>) -> Option<Arc<ServerConfig>> {
        let key = (name.to_owned(), alpn);
        if let Some(config) = self.configs.lock().get(&key) {
            return Some(config.clone());
        }
        match ServerConfig::builder_with_provider(self.pool.tls().provider())
            .with_safe_default_protocol_versions()
        {
            Ok(b) => {
                let mut config = b.with_no_client_auth().with_cert_resolver(Arc::new(ForName {
                    cache: self.leaves.clone(),
                    name: name.to_owned(),
                }));
                config.ticketer = self.tickets.clone();
                config.alpn_protocols = key.1.clone();
                let config = Arc::new(config);
                self.configs.lock().put(key, config.clone());
                Some(config)
            }
            Err(e) => {
                warn!(error = %e, "cannot build the TLS server configuration");
                None
            }
        }
    }

    /// `ghgate doctor`'s self-test name: terminated with a leaf from the CA and answered here
    /// (see [`crate::selftest`]); nothing is dialled, forwarded or recorded.
    async fn selftest(&self, conn: Accepted) {
        let name = crate::selftest::NAME;
        let Some(config) = self.server_config(name, vec![b"http/1.1".to_vec()]) else {
            return;
        };
        let Accepted {
            stream,
            client,
            orig_dst,
            caller,
            ..
        } = conn;
        let answered = async {
            let tls = tokio::time::timeout(
                HANDSHAKE_TIMEOUT,
                TlsAcceptor::from(config).accept(ReadAhead::new(stream)),
            )
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
            crate::selftest::answer(tls).await
        };
        match answered.await {
            Ok(()) => info!(client = %client, orig_dst = %orig_dst, tgid = caller.tgid, uid = caller.uid,
                            comm = %caller.comm, "self-test answered"),
            Err(e) => warn!(client = %client, orig_dst = %orig_dst, tgid = caller.tgid, uid = caller.uid,
                            comm = %caller.comm, error = %e, "self-test failed (does the client trust ghgate's CA?)"),
        }
    }

    /// A name on the passthrough list: checked (its own address, no intercepted name served
    /// there: `tls::fronting`), recorded (and acknowledged) before the upstream is dialled, then
    /// relayed untouched; refused while the record cannot be written.
    async fn passthrough(&self, conn: Accepted, name: String) {
        const REASON: PassthroughReason = PassthroughReason::PassthroughList;
        if let Err(refused) = self
            .fronting
            .check(conn.caller.cgroup_id, &name, conn.orig_dst.0)
            .await
        {
            let (reason, detail) = match refused {
                Refused::Elsewhere(d) => (RefusalReason::PassthroughElsewhere, d),
                Refused::Fronts(d) => (RefusalReason::PassthroughFronts, d),
            };
            return self
                .refuse(conn, reason, Some(name), detail, Some(ALERT_HANDSHAKE_FAILURE))
                .await;
        }
        if let Some(recorder) = &self.relay.recorder {
            let facts = model::PassthroughStart {
                session: conn.caller.session_id(),
                at: model::now_micros(),
                client: conn.client.to_string(),
                orig_dst: conn.orig_dst.to_string(),
                sni: Some(name.clone()),
                reason: REASON,
            };
            if let Err(cause) = recorder.passthrough_start(&conn.caller, facts).await {
                let detail = format!("the relay could not be recorded before it began: {cause}");
                return self
                    .refuse(
                        conn,
                        RefusalReason::StoreUnavailable,
                        Some(name),
                        detail,
                        Some(ALERT_HANDSHAKE_FAILURE),
                    )
                    .await;
            }
        }
        info!(client = %conn.client, orig_dst = %conn.orig_dst, tgid = conn.caller.tgid, comm = %conn.caller.comm,
              sni = %name, "TLS name on the passthrough list; relaying it untouched");
        self.relay.run(conn, Some(name), REASON).await
    }

    /// Refuses a connection at the TLS peek: an alert where the client spoke TLS, then close;
    /// logged and recorded with its caller. Nothing is dialled.
    async fn refuse(
        &self,
        conn: Accepted,
        reason: RefusalReason,
        sni: Option<String>,
        detail: String,
        alert: Option<u8>,
    ) {
        let caller = &conn.caller;
        info!(layer = "gateway", reason = reason.as_str(), client = %conn.client, orig_dst = %conn.orig_dst,
              sni = sni.as_deref().unwrap_or(""), tgid = caller.tgid, pid = caller.pid, uid = caller.uid,
              comm = %caller.comm, detail = %detail, "connection refused");
        crate::telemetry::metrics().refused(RefusalLayer::Gateway, reason, 1);
        if let Some(recorder) = &self.relay.recorder {
            recorder.refusal(
                caller,
                model::Refusal {
                    session: caller.session_id(),
                    at: model::now_micros(),
                    layer: RefusalLayer::Gateway,
                    reason,
                    orig_dst: conn.orig_dst.to_string(),
                    transport: Transport::Tcp,
                    client: Some(conn.client.to_string()),
                    sni,
                    detail: Some(detail),
                    count: 1,
                    tgid: caller.tgid,
                    uid: caller.uid,
                    comm: caller.comm.clone(),
                },
            );
        }
        if let Some(description) = alert {
            use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
            let mut stream = conn.stream;
            // Consume the hello (it was only peeked): closing a socket with unread bytes sends a
            // reset, which could overtake the alert.
            let mut hello = vec![0u8; 64 * 1024];
            let _ = tokio::time::timeout(Duration::from_millis(100), stream.read(&mut hello)).await;
            // A fatal alert record: TLS 1.2 record version, as every TLS stack accepts.
            let record = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, description];
            let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&record)).await;
            let _ = stream.shutdown().await;
            // Give the client a moment to read the alert and close first.
            let _ = tokio::time::timeout(Duration::from_secs(1), stream.read(&mut hello)).await;
        }
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

    fn hello(name: Option<&str>, ech: bool) -> Result<hello::Hello, HelloError> {
        Ok(hello::Hello {
            server_name: name.map(hello::normalise_name),
            alpn: vec![b"h2".to_vec()],
            ech,
        })
    }

    fn reason(p: Peeked) -> Option<RefusalReason> {
        match p {
            Peeked::Refuse { reason, .. } => Some(reason),
            _ => None,
        }
    }

    #[test]
    fn the_peek_fails_closed() {
        let tls = TlsConfig {
            passthrough: vec!["*.github.io".into()],
            ..TlsConfig::default()
        };
        assert_eq!(
            decide(&tls, hello(Some("API.github.com."), false)),
            Peeked::Terminate("api.github.com".into(), vec![b"h2".to_vec()]),
            "case and one trailing dot do not matter"
        );
        assert_eq!(
            decide(&tls, hello(Some("octo.github.io"), false)),
            Peeked::Passthrough("octo.github.io".into())
        );
        // The self-test name is answered by the gateway whatever the lists say; it is never
        // dialled, so a hostile caller gains nothing by sending it.
        let all = TlsConfig {
            passthrough: vec!["*.invalid".into()],
            ..TlsConfig::default()
        };
        assert_eq!(
            decide(&all, hello(Some("SelfTest.ghgate.invalid."), false)),
            Peeked::SelfTest
        );
        // An ECH hello whose outer name is intercepted is terminated: the hidden name never
        // reaches anything (Chromium sends GREASE ECH on every connection).
        assert!(matches!(
            decide(&tls, hello(Some("github.com"), true)),
            Peeked::Terminate(..)
        ));
        let refused = [
            (hello(Some("example.com"), false), RefusalReason::ForeignSni),
            (
                hello(Some("githubusercontent.com"), false),
                RefusalReason::ForeignSni,
            ),
            (hello(Some("evil.com"), true), RefusalReason::Ech),
            (hello(None, true), RefusalReason::Ech),
            (hello(None, false), RefusalReason::NoSni),
            (Err(HelloError::NotTls(b'S')), RefusalReason::NotTls),
            (
                Err(HelloError::Malformed("x".into())),
                RefusalReason::MalformedHello,
            ),
            (Err(HelloError::TooLarge), RefusalReason::MalformedHello),
            (Err(HelloError::Timeout(HANDSHAKE_TIMEOUT)), RefusalReason::NotTls),
        ];
        for (h, want) in refused {
            let shown = format!("{h:?}");
            assert_eq!(reason(decide(&tls, h)), Some(want), "{shown}");
        }
        assert!(matches!(decide(&tls, Err(HelloError::Closed)), Peeked::Gone(_)));
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
