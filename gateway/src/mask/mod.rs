//! Streaming secret detection and masking: for what clients receive (where configured) and for
//! everything the gateway records or logs.
//!
//! A secret is replaced by `[MASKED:<rule>:<fingerprint>]`; the fingerprint is a short keyed
//! hash (HMAC-SHA256 under a key local to this gateway), so one secret is recognisable across
//! records and sessions without being revealed. This module must never write a secret anywhere,
//! and must never let a body's output depend on how it was chunked.
pub mod encoding;
mod engine;
pub mod key;
pub mod metrics;
pub mod policy;
pub mod rules;
pub mod sse;
pub mod stream;
mod teddy;

use std::{fmt, sync::Arc};

use hmac::{Hmac, Mac};
use sha2::Sha256;

pub use self::{
    engine::{CompileError, MIN_EXACT_LEN},
    rules::{Rule, Rules, Validator},
    sse::SseMasker,
    stream::{Piece, StreamMasker},
};

/// The masker for the gateway's own log lines, set once at start (`ghgate run`); until then,
/// and in tools that never set it, the built-in rules under a one-off key.
static LOG_MASKER: std::sync::OnceLock<Masker> = std::sync::OnceLock::new();

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

/// One masked secret: which rule found it, its fingerprint, and where it was in the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub rule: String,
    pub fingerprint: String,
    /// Offset of the secret's first byte in the input stream.
    pub offset: u64,
    /// The secret's length in bytes.
    pub len: usize,
}

impl Finding {
    /// The text that stands in for the secret.
    pub fn replacement(&self) -> String {
        format!("[MASKED:{}:{}]", self.rule, self.fingerprint)
    }
}

/// The key under which fingerprints are computed. Never printed, never exported.
#[derive(Clone)]
pub struct FingerprintKey(Arc<[u8; 32]>);

impl FingerprintKey {
    pub fn new(bytes: [u8; 32]) -> Self {
        Self(Arc::new(bytes))
    }
}

impl fmt::Debug for FingerprintKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FingerprintKey(***)")
    }
}

/// A compiled rule set with its fingerprint key, and any exact values to mask besides. Cheap
/// to clone; shared by every stream.
#[derive(Clone)]
pub struct Masker {
    compiled: Arc<engine::Compiled>,
    key: FingerprintKey,
    exact: Option<Arc<engine::Exact>>,
}

impl fmt::Debug for Masker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Masker")
            .field("rules", &self.compiled.rule_ids().collect::<Vec<_>>())
            .field("exact_values", &self.exact.as_ref().map_or(0, |e| e.len()))
            .finish()
    }
}

impl Masker {
    /// A masker for `rules`. Panics if they do not compile: for the built-in rules, which
    /// tests compile; configured rules go through [`Masker::try_new`].
    pub fn new(rules: Rules, key: [u8; 32]) -> Masker {
        Masker::try_new(rules, FingerprintKey::new(key)).expect("the rules compile")
    }

    pub fn try_new(rules: Rules, key: FingerprintKey) -> Result<Masker, CompileError> {
        Ok(Masker {
            compiled: Arc::new(engine::Compiled::new(&rules)?),
            key,
            exact: None,
        })
    }

    /// This masker, also masking each of `values` wherever it appears, under its label (the
    /// rule name in the replacement). Values shorter than [`MIN_EXACT_LEN`] are ignored.
    pub fn with_exact(&self, values: &[(String, Vec<u8>)]) -> Masker {
        let mut all: Vec<(String, Vec<u8>)> = self.exact.as_ref().map(|e| e.entries()).unwrap_or_default();
        all.extend(values.iter().cloned());
        Masker {
            compiled: self.compiled.clone(),
            key: self.key.clone(),
            exact: engine::Exact::new(&all).map(Arc::new),
        }
    }

    /// The fingerprint of a secret: the first 12 hex digits of its HMAC-SHA256.
    pub fn fingerprint(&self, secret: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key.0[..]).expect("HMAC takes any key length");
        mac.update(secret);
        hex::encode(&mac.finalize().into_bytes()[..6])
    }

    /// The ids of the rules, in order.
    pub fn rule_ids(&self) -> Vec<String> {
        self.compiled.rule_ids().map(str::to_owned).collect()
    }

    /// An SSE-aware masker for one `text/event-stream` body.
    pub fn sse_stream(&self) -> SseMasker {
        SseMasker::new(self.clone())
    }
}
#[cfg(test)]
pub(crate) mod tests;
