//! Streaming secret detection and masking, for what clients receive (where configured) and for
//! everything ghgate records or logs; and the formats masking reads through: content codings
//! ([`encoding`]), server-sent events ([`sse`]) and the payloads of completion APIs ([`payload`]).
//!
//! A secret is replaced by `[MASKED:<rule>:<fingerprint>]`; the fingerprint is a short keyed
//! hash (HMAC-SHA256 under a key local to the gateway), so one secret is recognisable across
//! records and sessions without being revealed. This crate must never write a secret anywhere,
//! and must never let a body's output depend on how it was chunked.
//!
//! It knows nothing of the daemon: no I/O (the fingerprint key's file, the log masker and the
//! process-wide counters are the daemon's), no async runtime, no HTTP or TLS stack.
#![forbid(unsafe_code)]

pub mod config;
pub mod counts;
pub mod encoding;
mod engine;
pub mod payload;
pub mod policy;
pub mod rules;
pub mod sse;
pub mod stream;
mod teddy;

use std::{fmt, sync::Arc};

use hmac::{Hmac, Mac};
use sha2::Sha256;

pub use self::{
    config::{CustomRule, MaskConfig, MaskPlace, MaskRoute, ResponseMasking},
    engine::{CompileError, MIN_EXACT_LEN},
    rules::{Rule, Rules, Validator},
    sse::SseMasker,
    stream::{Piece, StreamMasker},
};

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
mod tests;
