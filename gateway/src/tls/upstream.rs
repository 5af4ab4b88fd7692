//! TLS toward the real endpoint: verified with the system's roots (plus configured extras), for
//! the name the client asked for, at the address the client dialled — never re-resolved.
//!
//! Failures are classified in words a user can act on (expired, wrong name, unknown issuer);
//! this module never disables verification, for any name.
use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use rustls::{
    CertificateError, ClientConfig, RootCertStore,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, ServerName, pem::PemObject as _},
};
use tokio::net::TcpStream;
use tokio_rustls::{TlsConnector, client::TlsStream};

use super::readahead::ReadAhead;

/// The HTTP version a TLS connection negotiated with ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Http1,
    Http2,
}

impl Proto {
    pub fn alpn(self) -> &'static [u8] {
        match self {
            Proto::Http1 => b"http/1.1",
            Proto::Http2 => b"h2",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{addr} did not complete the TLS handshake within {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
    #[error("the upstream certificate for {name} at {addr} was rejected: {reason}")]
    Certificate {
        name: String,
        addr: SocketAddr,
        reason: String,
    },
    #[error("TLS handshake with {name} at {addr} failed: {reason}")]
    Handshake {
        name: String,
        addr: SocketAddr,
        reason: String,
    },
}

/// Cheap to clone: the root store is loaded once and shared, and so are the client
/// configurations of the two ALPN offers the gateway makes, with their session stores: a new
/// upstream connection resumes a TLS session of an earlier one for the same name (an abbreviated
/// handshake; the server proves it holds the keys of a session that was verified for that name),
/// instead of a full handshake and certificate verification.
#[derive(Clone)]
pub struct UpstreamTls {
    provider: Arc<CryptoProvider>,
    roots: Arc<RootCertStore>,
    /// Offering h2 and http/1.1, and http/1.1 alone.
    both: Arc<ClientConfig>,
    http1: Arc<ClientConfig>,
}

impl UpstreamTls {
    /// System roots plus each PEM file of `extra`.
    pub fn new(extra: &[PathBuf]) -> anyhow::Result<Self> {
        let mut roots = RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        let (added, _ignored) = roots.add_parsable_certificates(native.certs);
        if added == 0 && extra.is_empty() {
            tracing::warn!(
                "no system CA certificates found: upstream TLS will fail; install ca-certificates"
            );
        }
        for path in extra {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .with_context(|| format!("cannot read tls.upstream_extra_roots file {}", path.display()))?
                .collect::<Result<_, _>>()
                .with_context(|| format!("{} holds a malformed certificate", path.display()))?;
            anyhow::ensure!(!certs.is_empty(), "{} holds no certificate", path.display());
            for c in certs {
                roots
                    .add(c)
                    .with_context(|| format!("{} holds an unusable CA certificate", path.display()))?;
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = Arc::new(roots);
        Ok(Self {
            both: Self::config(&provider, &roots, &[Proto::Http2, Proto::Http1]),
            http1: Self::config(&provider, &roots, &[Proto::Http1]),
            provider,
            roots,
        })
    }

    fn config(
        provider: &Arc<CryptoProvider>,
        roots: &Arc<RootCertStore>,
        alpn: &[Proto],
    ) -> Arc<ClientConfig> {
        let mut config = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.alpn().to_vec()).collect();
        Arc::new(config)
    }

    pub fn provider(&self) -> Arc<CryptoProvider> {
        self.provider.clone()
    }

    /// Connects to `addr`, verifies the certificate for `name`, offering `alpn` (the subset of
    /// h2/http/1.1 the client offered).
    pub async fn connect(
        &self,
        addr: SocketAddr,
        name: &str,
        alpn: &[Proto],
        timeout: Duration,
    ) -> Result<(TlsStream<ReadAhead<TcpStream>>, Proto), UpstreamError> {
        let config = match alpn {
            [Proto::Http2, Proto::Http1] => self.both.clone(),
            [Proto::Http1] => self.http1.clone(),
            other => Self::config(&self.provider, &self.roots, other),
        };
        let server_name = ServerName::try_from(name.to_owned()).map_err(|e| UpstreamError::Handshake {
            name: name.into(),
            addr,
            reason: format!("invalid server name: {e}"),
        })?;
        let work = async {
            let tcp = crate::redirect::exempt::connect(addr)
                .await
                .map_err(|source| UpstreamError::Connect { addr, source })?;
            let _ = tcp.set_nodelay(true);
            TlsConnector::from(config)
                .connect(server_name, ReadAhead::new(tcp))
                .await
                .map_err(|e| classify(e, name, addr))
        };
        let mut tls = tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| UpstreamError::Timeout { addr, timeout })??;
        tls.get_mut().1.set_buffer_limit(Some(super::SEND_BUFFER_LIMIT));
        let proto = match tls.get_ref().1.alpn_protocol() {
            Some(b"h2") => Proto::Http2,
            _ => Proto::Http1,
        };
        Ok((tls, proto))
    }
}

fn classify(e: std::io::Error, name: &str, addr: SocketAddr) -> UpstreamError {
    let tls_err = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match tls_err {
        Some(rustls::Error::InvalidCertificate(cert)) => UpstreamError::Certificate {
            name: name.into(),
            addr,
            reason: match cert {
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                    "certificate expired".into()
                }
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                    "certificate not valid yet".into()
                }
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                    format!("certificate is not valid for {name} (wrong name)")
                }
                CertificateError::UnknownIssuer => {
                    "certificate issued by an unknown CA (unknown issuer)".into()
                }
                CertificateError::Revoked => "certificate revoked".into(),
                other => format!("{other:?}"),
            },
        },
        Some(other) => UpstreamError::Handshake {
            name: name.into(),
            addr,
            reason: other.to_string(),
        },
        None => UpstreamError::Handshake {
            name: name.into(),
            addr,
            reason: e.to_string(),
        },
    }
}
