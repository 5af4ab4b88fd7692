//! Masking in the daemon: the `ghgate-mask` crate (engine, rules, streams, SSE, content decoding,
//! `[mask]` and its per-route policy, all re-exported here), plus what belongs to a running
//! gateway: the fingerprint key's file ([`key`]), the process-wide counters ([`metrics`]), the
//! masker of log lines ([`for_logs`]) and the caller's credentials in a request head
//! ([`caller_credentials`]).
//!
//! Must never write a secret anywhere: log lines go through [`for_logs`].
pub mod key;
pub mod metrics;
pub mod seen;

use std::sync::OnceLock;

use base64::Engine as _;
pub use ghgate_mask::*;

/// The masker for the gateway's own log lines, set once at start (`ghgate run`); until then,
/// and in tools that never set it, the built-in rules under a one-off key.
static LOG_MASKER: OnceLock<Masker> = OnceLock::new();

/// Makes `masker` the one log lines go through. Only the first call counts.
pub fn set_log_masker(masker: Masker) {
    let _ = LOG_MASKER.set(masker);
}

/// `text` as it may appear in a log line: secrets masked. For anything a client controls that
/// a log line names (URLs, upstream errors).
pub fn for_logs(text: &str) -> String {
    let masker = LOG_MASKER.get_or_init(|| {
        let mut key = [0u8; 32];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut key);
        Masker::new(Rules::builtin(), key)
    });
    masker.mask_str(text).0
}

/// The caller's own credentials in a request head, to be masked by exact value wherever they
/// appear: bearer/token values, and the password of basic auth (and the base64 form itself).
pub fn caller_credentials(headers: &http::HeaderMap) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    // `Proxy-Authorization` never gets this far: it is hop-by-hop, stripped before any stage.
    for value in headers.get_all(http::header::AUTHORIZATION) {
        let v = value.as_bytes();
        let (scheme, rest) = match v.iter().position(|&b| b == b' ') {
            Some(i) => (&v[..i], v[i + 1..].trim_ascii()),
            None => (&b""[..], v.trim_ascii()),
        };
        out.push(("credential".to_owned(), rest.to_vec()));
        if scheme.eq_ignore_ascii_case(b"basic")
            && let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(rest)
            && let Some(colon) = decoded.iter().position(|&b| b == b':')
        {
            out.push(("credential".to_owned(), decoded[colon + 1..].to_vec()));
        }
    }
    for name in ["x-github-token", "x-api-key", "api-key", "private-token"] {
        for value in headers.get_all(name) {
            out.push(("credential".to_owned(), value.as_bytes().trim_ascii().to_vec()));
        }
    }
    out.retain(|(_, v)| v.len() >= MIN_EXACT_LEN);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caller_credentials_from_headers() {
        let mut h = http::HeaderMap::new();
        h.insert(
            "authorization",
            "Basic eC1hY2Nlc3MtdG9rZW46c2VjcmV0dmFsdWUxMjM=".parse().unwrap(),
        );
        let creds = caller_credentials(&h);
        assert!(creds.iter().any(|(_, v)| v == b"secretvalue123"), "{creds:?}");
    }
}
