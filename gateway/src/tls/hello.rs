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
/// What the first peek at a ClientHello reads: a page.
const FIRST_PEEK: usize = 4096;

/// TLS extension type of Encrypted Client Hello (draft-ietf-tls-esni).
const EXT_ECH: u16 = 0xfe0d;

/// What the ClientHello asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The SNI name, lower-case and without a trailing dot, if any (an IP literal or an invalid
    /// name counts as none).
    pub server_name: Option<String>,
    /// ALPN protocols offered, in the client's order.
    pub alpn: Vec<Vec<u8>>,
    /// The hello carries an Encrypted Client Hello extension: its SNI is only the outer name.
    pub ech: bool,
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
    // The handshake header says how long the hello is: one too large to be peeked whole is
    // refused now, not after waiting for bytes a full receive window will never let through.
    if let (Some(1), Some(len)) = (bytes.get(5), bytes.get(6..9)) {
        let len = usize::from(len[0]) << 16 | usize::from(len[1]) << 8 | usize::from(len[2]);
        let records = len.div_ceil(16 * 1024).max(1);
        if len + 4 + 5 * records > MAX_HELLO {
            return Err(HelloError::TooLarge);
        }
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
                server_name: ch.server_name().map(normalise_name),
                alpn: ch
                    .alpn()
                    .map(|a| a.map(<[u8]>::to_vec).collect())
                    .unwrap_or_default(),
                ech: extension_types(bytes).is_some_and(|types| types.contains(&EXT_ECH)),
            }))
        }
        Ok(None) => Ok(None),
        Err((e, _)) => Err(HelloError::Malformed(e.to_string())),
    }
}

/// A server name as names are compared: lower-case, one trailing dot removed (`API.github.com.`
/// is `api.github.com`).
pub fn normalise_name(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// The extension types of a ClientHello that rustls has already accepted as well-formed (it
/// does not expose them). Only walks lengths: the contents are rustls's business.
fn extension_types(bytes: &[u8]) -> Option<Vec<u16>> {
    // The handshake message may span several records: join their payloads.
    let mut handshake = Vec::new();
    let mut rest = bytes;
    while rest.len() >= 5 && rest[0] == 0x16 {
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        handshake.extend_from_slice(rest.get(5..5 + len)?);
        rest = &rest[5 + len..];
    }
    let body_len = usize::from(*handshake.get(1)?) << 16
        | usize::from(*handshake.get(2)?) << 8
        | usize::from(*handshake.get(3)?);
    let mut body = handshake.get(4..4 + body_len)?;
    let mut take = |n: usize| -> Option<&[u8]> {
        let (head, tail) = (body.get(..n)?, body.get(n..)?);
        body = tail;
        Some(head)
    };
    take(2 + 32)?; // legacy_version, random
    let sid = usize::from(take(1)?[0]);
    take(sid)?;
    let suites = take(2)?;
    take(usize::from(u16::from_be_bytes([suites[0], suites[1]])))?;
    let compression = usize::from(take(1)?[0]);
    take(compression)?;
    let ext_len = take(2)?;
    let mut exts = take(usize::from(u16::from_be_bytes([ext_len[0], ext_len[1]])))?;
    let mut types = Vec::new();
    while exts.len() >= 4 {
        types.push(u16::from_be_bytes([exts[0], exts[1]]));
        let len = usize::from(u16::from_be_bytes([exts[2], exts[3]]));
        exts = exts.get(4 + len..)?;
    }
    Some(types)
}

/// Peeks at `stream` until a whole ClientHello has arrived, within `timeout`.
pub async fn peek(stream: &TcpStream, timeout: Duration) -> Result<Hello, HelloError> {
    let work = async {
        // Grown only for a hello that fills it: most fit in the first page. A buffer of the
        // largest size for every connection was zeroed (all 16 pages touched) at each
        // handshake, and the long-lived buffers later placed in those pages were resident
        // whole: about 10 KiB more per idle HTTP/2 connection.
        let mut buf = vec![0u8; FIRST_PEEK];
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
                if buf.len() == MAX_HELLO {
                    return Err(HelloError::TooLarge);
                }
                buf.resize((buf.len() * 4).min(MAX_HELLO), 0);
                continue;
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
    fn names_are_compared_without_case_or_a_trailing_dot() {
        assert_eq!(normalise_name("API.GitHub.com."), "api.github.com");
        assert_eq!(normalise_name("github.com"), "github.com");
    }

    #[test]
    fn an_ech_extension_is_seen_and_its_absence_too() {
        let plain = client_hello("github.com", &[b"h2"]);
        assert!(!parse(&plain).unwrap().unwrap().ech);
        // An outer ECH extension as a client sends it: type outer (0), HPKE suite
        // (HKDF-SHA256, AES-128-GCM), config id, a 32-byte encapsulated key, a payload.
        let mut ech = vec![0, 0, 1, 0, 1, 0x42, 0, 32];
        ech.extend([7u8; 32]);
        ech.extend([0, 64]);
        ech.extend([9u8; 64]);
        let with = add_extension(&plain, EXT_ECH, &ech);
        let hello = parse(&with).unwrap().unwrap();
        assert!(hello.ech);
        assert_eq!(
            hello.server_name.as_deref(),
            Some("github.com"),
            "the outer name is still read"
        );
    }

    /// A real hello with one more extension appended, every length fixed up.
    fn add_extension(hello: &[u8], ext_type: u16, data: &[u8]) -> Vec<u8> {
        let mut out = hello.to_vec();
        let added = 4 + data.len();
        out.extend_from_slice(&ext_type.to_be_bytes());
        out.extend_from_slice(&(data.len() as u16).to_be_bytes());
        out.extend_from_slice(data);
        let bump16 = |b: &mut [u8], at: usize| {
            let v = u16::from_be_bytes([b[at], b[at + 1]]) as usize + added;
            b[at..at + 2].copy_from_slice(&(v as u16).to_be_bytes());
        };
        bump16(&mut out, 3); // record length
        let hs = (usize::from(out[6]) << 16 | usize::from(out[7]) << 8 | usize::from(out[8])) + added;
        out[6..9].copy_from_slice(&[(hs >> 16) as u8, (hs >> 8) as u8, hs as u8]);
        // The extensions' length sits right before the extensions, which end the message.
        let mut at = 5 + 4 + 2 + 32;
        at += 1 + usize::from(out[at]);
        at += 2 + usize::from(u16::from_be_bytes([out[at], out[at + 1]]));
        at += 1 + usize::from(out[at]);
        bump16(&mut out, at);
        out
    }

    #[test]
    fn partial_hello_asks_for_more() {
        let bytes = client_hello("github.com", &[]);
        for cut in [1, 5, 40, bytes.len() - 1] {
            assert_eq!(parse(&bytes[..cut]), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn a_hello_longer_than_can_be_peeked_is_too_large_from_its_header() {
        // A handshake header announcing 70 000 bytes: refused before they arrive.
        assert_eq!(
            parse(&[0x16, 3, 1, 0x40, 0, 1, 0x01, 0x11, 0x70]),
            Err(HelloError::TooLarge)
        );
        assert_eq!(parse(&[0x16, 3, 1, 0x40, 0, 1, 0x00, 0x40, 0x00]), Ok(None));
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

    /// A hello larger than the first peek (here about 10 KiB of ALPN names, in one record,
    /// dribbled in pieces) is read whole: the buffer grows.
    #[tokio::test]
    async fn a_hello_larger_than_the_first_peek_is_read_whole() {
        use tokio::io::AsyncWriteExt as _;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let names: Vec<Vec<u8>> = (0..50u8).map(|i| vec![b'a' + i % 26; 200]).collect();
        let alpn: Vec<&[u8]> = names.iter().map(Vec::as_slice).collect();
        let bytes = client_hello("github.com", &alpn);
        assert!(bytes.len() > 2 * FIRST_PEEK, "{} bytes", bytes.len());
        let client = tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            for piece in bytes.chunks(3000) {
                s.write_all(piece).await.unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            s
        });
        let (server, _) = listener.accept().await.unwrap();
        let hello = peek(&server, Duration::from_secs(5)).await.unwrap();
        assert_eq!(hello.server_name.as_deref(), Some("github.com"));
        assert_eq!(hello.alpn, names);
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
