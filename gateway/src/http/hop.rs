//! Hop-by-hop headers (RFC 9110 §7.6.1): they describe one connection, so a proxy removes them
//! before forwarding, along with every header the `Connection` header names.
//!
//! This is the one place they are removed: from a request before any stage sees its head (so
//! what the stages decide on is what goes upstream), and from a response before the response
//! hooks see it. Kept: `TE: trailers` (the one TE value HTTP/2 allows end to end) and, for a
//! WebSocket handshake the engine relays (`ghgate_policy::classify::is_websocket`), `Upgrade:
//! websocket` with `Connection: upgrade`.
use http::{HeaderMap, HeaderName, HeaderValue, header};

const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop headers in place. `websocket`: a WebSocket handshake relayed over
/// HTTP/1.1, which keeps `Upgrade: websocket` and `Connection: upgrade`.
pub fn strip(headers: &mut HeaderMap, websocket: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    let trailers = headers
        .get_all(header::TE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"trailers"));
    let upgrade = headers.get(header::UPGRADE).cloned();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    if trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if websocket && let Some(upgrade) = upgrade {
        headers.insert(header::UPGRADE, upgrade);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

#[cfg(test)]
mod tests {
    use ghgate_policy::classify::is_websocket;
    use http::Version;

    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    }

    #[test]
    fn removes_standard_and_connection_named_headers() {
        let mut h = map(&[
            ("connection", "close, X-Secret-Hop"),
            ("x-secret-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("te", "gzip"),
            ("trailer", "x-checksum"),
            ("upgrade", "h2c"),
            ("proxy-authorization", "Basic abc"),
            ("proxy-authenticate", "Basic"),
            ("authorization", "Bearer keep-me"),
            ("host", "api.github.com"),
        ]);
        strip(&mut h, false);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["authorization", "host"]);
    }

    #[test]
    fn te_trailers_is_kept_and_nothing_else_of_te() {
        let mut h = map(&[("te", "gzip, Trailers"), ("connection", "te")]);
        strip(&mut h, false);
        assert_eq!(h.get("te").unwrap(), "trailers");
        assert!(!h.contains_key("connection"));
        let mut h = map(&[("te", "deflate")]);
        strip(&mut h, false);
        assert!(!h.contains_key("te"));
    }

    #[test]
    fn websocket_handshake_keeps_upgrade() {
        let mut h = map(&[
            ("connection", "Upgrade, keep-alive"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "x"),
        ]);
        assert!(is_websocket(Version::HTTP_11, &h));
        assert!(!is_websocket(Version::HTTP_2, &h));
        strip(&mut h, true);
        assert_eq!(h.get("upgrade").unwrap(), "websocket");
        assert_eq!(h.get("connection").unwrap(), "upgrade");
        assert!(h.contains_key("sec-websocket-key"));
        // Still a handshake once stripped: the classifier reads the stripped head.
        assert!(is_websocket(Version::HTTP_11, &h));
    }

    #[test]
    fn other_upgrades_are_removed() {
        let mut h = map(&[("connection", "Upgrade"), ("upgrade", "h2c")]);
        assert!(!is_websocket(Version::HTTP_11, &h));
        strip(&mut h, false);
        assert!(h.is_empty());
    }
}
