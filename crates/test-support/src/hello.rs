//! TLS ClientHellos a hostile client would send, made from real ones: rustls's client writes the
//! hello, and this module edits its bytes (the SNI, extensions, record framing) with every length
//! field kept consistent, so the gateway's parser sees exactly the case under test and nothing
//! else is wrong with it.
//!
//! An edited hello cannot finish a handshake (the transcript no longer matches what the client
//! would compute): it is for finding out how the gateway *decides*, not for talking HTTP.

/// Extension types this module edits.
pub const SERVER_NAME: u16 = 0x0000;
/// Encrypted Client Hello (draft-ietf-tls-esni, the codepoint browsers send).
pub const ECH: u16 = 0xfe0d;
const PRE_SHARED_KEY: u16 = 41;

/// A ClientHello taken apart: the fixed fields, then the extensions in order.
#[derive(Clone, Debug)]
pub struct ClientHello {
    /// The record layer's legacy version.
    record_version: [u8; 2],
    /// The body up to the extensions block: version, random, session id, suites, compression.
    fixed: Vec<u8>,
    pub extensions: Vec<(u16, Vec<u8>)>,
}

impl ClientHello {
    /// What rustls's client sends first for `name` (an IP address gives a hello without SNI),
    /// offering `alpn`.
    pub fn from_rustls(name: &str, alpn: &[&[u8]]) -> Self {
        let mut config =
            rustls::ClientConfig::builder_with_provider(rustls::crypto::ring::default_provider().into())
                .with_safe_default_protocol_versions()
                .expect("protocol versions")
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let server_name = rustls::pki_types::ServerName::try_from(name.to_owned())
            .unwrap_or_else(|e| panic!("{name:?} is not a name rustls accepts: {e}"));
        let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(config), server_name)
            .expect("client connection");
        let mut out = Vec::new();
        conn.write_tls(&mut out).expect("write hello");
        Self::parse(&out).expect("rustls wrote a ClientHello this module can read")
    }

    /// Takes apart one TLS record holding one whole ClientHello.
    pub fn parse(record: &[u8]) -> Option<Self> {
        let (&kind, rest) = record.split_first()?;
        if kind != 0x16 || rest.len() < 4 {
            return None;
        }
        let record_version = [rest[0], rest[1]];
        let len = u16::from_be_bytes([rest[2], rest[3]]) as usize;
        let msg = rest.get(4..4 + len)?;
        if msg.first() != Some(&1) {
            return None;
        }
        let body_len = u32::from_be_bytes([0, msg[1], msg[2], msg[3]]) as usize;
        let body = msg.get(4..4 + body_len)?;
        // version (2) + random (32), then session id, suites, compression methods.
        let mut at = 34;
        at += 1 + *body.get(at)? as usize;
        at += 2 + u16::from_be_bytes([*body.get(at)?, *body.get(at + 1)?]) as usize;
        at += 1 + *body.get(at)? as usize;
        let fixed = body.get(..at)?.to_vec();
        let ext_len = u16::from_be_bytes([*body.get(at)?, *body.get(at + 1)?]) as usize;
        let mut exts = body.get(at + 2..at + 2 + ext_len)?;
        let mut extensions = Vec::new();
        while !exts.is_empty() {
            let kind = u16::from_be_bytes([*exts.first()?, *exts.get(1)?]);
            let len = u16::from_be_bytes([*exts.get(2)?, *exts.get(3)?]) as usize;
            extensions.push((kind, exts.get(4..4 + len)?.to_vec()));
            exts = &exts[4 + len..];
        }
        Some(Self {
            record_version,
            fixed,
            extensions,
        })
    }

    /// The host names in the SNI extension, as raw bytes.
    pub fn server_names(&self) -> Vec<Vec<u8>> {
        let Some((_, data)) = self.extensions.iter().find(|(k, _)| *k == SERVER_NAME) else {
            return Vec::new();
        };
        let mut names = Vec::new();
        let mut list = data.get(2..).unwrap_or_default();
        while list.len() >= 3 {
            let len = u16::from_be_bytes([list[1], list[2]]) as usize;
            let Some(name) = list.get(3..3 + len) else { break };
            names.push(name.to_vec());
            list = &list[3 + len..];
        }
        names
    }

    /// Makes the SNI extension name exactly `names` (each a host_name entry, bytes as given),
    /// keeping its place among the extensions (adding it first if there was none).
    pub fn set_server_names(&mut self, names: &[&[u8]]) -> &mut Self {
        let mut list = Vec::new();
        for name in names {
            list.push(0u8);
            list.extend_from_slice(&(name.len() as u16).to_be_bytes());
            list.extend_from_slice(name);
        }
        let mut data = (list.len() as u16).to_be_bytes().to_vec();
        data.extend_from_slice(&list);
        match self.extensions.iter_mut().find(|(k, _)| *k == SERVER_NAME) {
            Some(ext) => ext.1 = data,
            None => self.extensions.insert(0, (SERVER_NAME, data)),
        }
        self
    }

    /// Removes every extension of type `kind`.
    pub fn remove(&mut self, kind: u16) -> &mut Self {
        self.extensions.retain(|(k, _)| *k != kind);
        self
    }

    /// Adds an extension (before a pre_shared_key, which must stay last).
    pub fn push(&mut self, kind: u16, data: Vec<u8>) -> &mut Self {
        let at = self
            .extensions
            .iter()
            .position(|(k, _)| *k == PRE_SHARED_KEY)
            .unwrap_or(self.extensions.len());
        self.extensions.insert(at, (kind, data));
        self
    }

    /// Adds an outer Encrypted Client Hello extension as a browser sends it: HPKE suite
    /// (HKDF-SHA256, AES-128-GCM), a config id, an X25519 encapsulated key and a sealed inner
    /// hello (here: filler bytes, which no one can tell from a real one without the key).
    pub fn push_ech(&mut self) -> &mut Self {
        let mut data = vec![0u8]; // outer
        data.extend_from_slice(&[0x00, 0x01, 0x00, 0x01]);
        data.push(0x2a);
        data.extend_from_slice(&32u16.to_be_bytes());
        data.extend((0..32u8).map(|i| i.wrapping_mul(37).wrapping_add(11)));
        data.extend_from_slice(&208u16.to_be_bytes());
        data.extend((0..208u16).map(|i| (i as u8).wrapping_mul(91).wrapping_add(3)));
        self.push(ECH, data)
    }

    /// Puts up to `n` bytes of unknown (GREASE) extensions first and moves the SNI last, so the
    /// name comes only after the padding (the extensions block stays within its 64 KiB limit).
    pub fn pad_before_sni(&mut self, n: usize) -> &mut Self {
        if let Some(at) = self.extensions.iter().position(|(k, _)| *k == SERVER_NAME) {
            let sni = self.extensions.remove(at);
            let end = self
                .extensions
                .iter()
                .position(|(k, _)| *k == PRE_SHARED_KEY)
                .unwrap_or(self.extensions.len());
            self.extensions.insert(end, sni);
        }
        let used: usize = self.extensions.iter().map(|(_, d)| 4 + d.len()).sum();
        let mut left = n.min(u16::MAX as usize - used);
        let mut kind = 0x0a0a_u16;
        while left > 4 {
            let len = (left - 4).min(60_000);
            self.extensions.insert(0, (kind, vec![0; len]));
            left -= 4 + len;
            kind = kind.wrapping_add(0x1010);
        }
        self
    }

    /// The handshake message: type, 24-bit length, body.
    pub fn message(&self) -> Vec<u8> {
        let mut exts = Vec::new();
        for (kind, data) in &self.extensions {
            exts.extend_from_slice(&kind.to_be_bytes());
            exts.extend_from_slice(&(data.len() as u16).to_be_bytes());
            exts.extend_from_slice(data);
        }
        let mut body = self.fixed.clone();
        body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
        body.extend_from_slice(&exts);
        let mut msg = vec![1u8];
        msg.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        msg.extend_from_slice(&body);
        msg
    }

    /// The hello in TLS records carrying at most `max` bytes of it each (one record when the
    /// hello fits): record-layer fragmentation, which TLS allows and naive parsers miss.
    pub fn records(&self, max: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for piece in self.message().chunks(max.max(1)) {
            out.push(0x16);
            out.extend_from_slice(&self.record_version);
            out.extend_from_slice(&(piece.len() as u16).to_be_bytes());
            out.extend_from_slice(piece);
        }
        out
    }

    /// The hello as one record.
    pub fn record(&self) -> Vec<u8> {
        self.records(16 * 1024)
    }
}

/// A TLS record header announcing a handshake, followed by bytes that are no ClientHello.
pub fn garbage_record() -> Vec<u8> {
    let mut out = vec![0x16, 0x03, 0x01, 0x00, 0x40];
    out.extend((0..0x40u8).map(|i| i.wrapping_mul(53) ^ 0xa5));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rustls_hello_reads_back_byte_for_byte() {
        let raw = {
            let h = ClientHello::from_rustls("api.github.com", &[b"h2"]);
            h.record()
        };
        let again = ClientHello::parse(&raw).unwrap();
        assert_eq!(again.record(), raw);
        assert_eq!(again.server_names(), vec![b"api.github.com".to_vec()]);
    }

    #[test]
    fn edits_keep_every_length_right() {
        let mut h = ClientHello::from_rustls("api.github.com", &[b"h2"]);
        h.set_server_names(&[b"API.GITHUB.COM."]).push_ech();
        let parsed = ClientHello::parse(&h.record()).unwrap();
        assert_eq!(parsed.server_names(), vec![b"API.GITHUB.COM.".to_vec()]);
        assert!(parsed.extensions.iter().any(|(k, _)| *k == ECH));
        // rustls's own server-side parser accepts the edited hello.
        let mut acceptor = rustls::server::Acceptor::default();
        acceptor.read_tls(&mut h.record().as_slice()).unwrap();
        assert!(acceptor.accept().is_ok_and(|a| a.is_some()));
    }

    #[test]
    fn fragments_reassemble_to_the_same_message() {
        let h = ClientHello::from_rustls("github.com", &[]);
        let frags = h.records(7);
        assert!(frags.len() > h.record().len(), "more record headers");
        let mut acceptor = rustls::server::Acceptor::default();
        let mut rd = frags.as_slice();
        while !rd.is_empty() {
            acceptor.read_tls(&mut rd).unwrap();
        }
        let accepted = acceptor.accept().ok().flatten().expect("a whole hello");
        assert_eq!(accepted.client_hello().server_name(), Some("github.com"));
    }

    #[test]
    fn padding_puts_the_name_after_64_kib() {
        let mut h = ClientHello::from_rustls("evil.example", &[]);
        h.pad_before_sni(70_000);
        let ext_bytes: usize = h.extensions.iter().map(|(_, d)| 4 + d.len()).sum();
        assert!(
            ext_bytes <= u16::MAX as usize && ext_bytes > 65_000,
            "{ext_bytes}"
        );
        assert_eq!(
            h.extensions.last().map(|e| e.0),
            Some(SERVER_NAME),
            "the name comes last"
        );
        let bytes = h.record();
        assert!(bytes.len() > 64 * 1024, "{}", bytes.len());
        assert!(ClientHello::parse(&bytes).is_none(), "more than one record");
    }

    #[test]
    fn an_ip_address_gives_a_hello_without_sni() {
        let h = ClientHello::from_rustls("127.0.0.1", &[]);
        assert!(h.server_names().is_empty());
    }
}
