//! Reading a connection's TLS ClientHello without consuming it.
//!
//! The bytes are peeked (MSG_PEEK), so whichever way the connection goes next — terminated here,
//! or relayed byte for byte to its original destination — it starts from the client's first
//! byte. Parsing is rustls's own, not ours. This module never writes to the connection.
use std::time::Duration;

use rustls::server::Acceptor;
use tokio::net::TcpStream;

/// The largest ClientHello we wait for: one full TLS record plus header, times four records.
const MAX_HELLO: usize = 4 * (16 * 1024 + 5);

/// What the ClientHello asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The SNI name, lower-case, if any.
    pub server_name: Option<String>,
    /// ALPN protocols offered, in the client's order.
    pub alpn: Vec<Vec<u8>>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HelloError {
    #[error("the client does not speak TLS (first byte {0:#04x})")]
    NotTls(u8),
    #[error("malformed ClientHello: {0}")]
    Malformed(String),
    #[error("the client closed the connection before finishing its ClientHello")]
    Closed,
    #[error("no ClientHello within {0:?}")]
    Timeout(Duration),
    #[error("the ClientHello is larger than {MAX_HELLO} bytes")]
    TooLarge,
    #[error("reading the ClientHello failed: {0}")]
    Io(String),
}

/// Parses a ClientHello from the bytes a client sent first. `Ok(None)`: not all of it yet.
pub fn parse(bytes: &[u8]) -> Result<Option<Hello>, HelloError> {
    match bytes.first() {
        None => return Ok(None),
        Some(0x16) => {}
        Some(&b) => return Err(HelloError::NotTls(b)),
    }
    let mut acceptor = Acceptor::default();
    let mut rd = bytes;
    while !rd.is_empty() {
        acceptor
            .read_tls(&mut rd)
            .map_err(|e| HelloError::Io(e.to_string()))?;
    }
    match acceptor.accept() {
        Ok(Some(accepted)) => {
            let ch = accepted.client_hello();
            Ok(Some(Hello {
                server_name: ch.server_name().map(|s| s.to_ascii_lowercase()),
                alpn: ch
                    .alpn()
                    .map(|a| a.map(<[u8]>::to_vec).collect())
                    .unwrap_or_default(),
            }))
        }
        Ok(None) => Ok(None),
        Err((e, _)) => Err(HelloError::Malformed(e.to_string())),
    }
}

/// Peeks at `stream` until a whole ClientHello has arrived, within `timeout`.
pub async fn peek(stream: &TcpStream, timeout: Duration) -> Result<Hello, HelloError> {
    let work = async {
        let mut buf = vec![0u8; MAX_HELLO];
        let mut seen = 0;
        loop {
            let n = stream
                .peek(&mut buf)
                .await
                .map_err(|e| HelloError::Io(e.to_string()))?;
            if n == 0 {
                return Err(HelloError::Closed);
            }
            if let Some(hello) = parse(&buf[..n])? {
                return Ok(hello);
            }
            if n == buf.len() {
                return Err(HelloError::TooLarge);
            }
            if n == seen {
                // peek returns at once while old data sits unread: wait for more to arrive.
                stream
                    .readable()
                    .await
                    .map_err(|e| HelloError::Io(e.to_string()))?;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            seen = n;
        }
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| HelloError::Timeout(timeout))?
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real ClientHello, produced by rustls's client for `name` with `alpn`.
    fn client_hello(name: &str, alpn: &[&[u8]]) -> Vec<u8> {
        let roots = rustls::RootCertStore::empty();
        let mut config =
            rustls::ClientConfig::builder_with_provider(rustls::crypto::ring::default_provider().into())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
        let mut conn = rustls::ClientConnection::new(
            std::sync::Arc::new(config),
            rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap(),
        )
        .unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    #[test]
    fn reads_sni_and_alpn() {
        let bytes = client_hello("API.github.com", &[b"h2", b"http/1.1"]);
        let hello = parse(&bytes).unwrap().unwrap();
        assert_eq!(hello.server_name.as_deref(), Some("api.github.com"));
        assert_eq!(hello.alpn, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
    }

    #[test]
    fn partial_hello_asks_for_more() {
        let bytes = client_hello("github.com", &[]);
        for cut in [1, 5, 40, bytes.len() - 1] {
            assert_eq!(parse(&bytes[..cut]), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn plain_http_is_not_tls() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(HelloError::NotTls(b'G')));
    }

    #[test]
    fn garbage_after_a_handshake_byte_is_malformed() {
        let err = parse(&[0x16, 3, 1, 0, 4, 0xff, 0xff, 0xff, 0xff]).unwrap_err();
        assert!(matches!(err, HelloError::Malformed(_)), "{err:?}");
    }

    #[tokio::test]
    async fn peek_leaves_the_bytes_for_whoever_reads_next() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let bytes = client_hello("github.com", &[b"h2"]);
        let sent = bytes.clone();
        let client = tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            // Dribble the hello in two pieces.
            s.write_all(&sent[..10]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(30)).await;
            s.write_all(&sent[10..]).await.unwrap();
            s
        });
        let (mut server, _) = listener.accept().await.unwrap();
        let hello = peek(&server, Duration::from_secs(5)).await.unwrap();
        assert_eq!(hello.server_name.as_deref(), Some("github.com"));
        let mut got = vec![0u8; bytes.len()];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(got, bytes, "peek consumed nothing");
        drop(client.await.unwrap());
    }

    #[tokio::test]
    async fn silent_client_times_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let err = peek(&server, Duration::from_millis(100)).await.unwrap_err();
        assert_eq!(err, HelloError::Timeout(Duration::from_millis(100)));
    }
}
