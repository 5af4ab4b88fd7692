//! The ids records are keyed by: a session (one run of one client process on one boot) and an
//! exchange (one request and its response, unique within a gateway run). Both serialise as the
//! bare string or number earlier stores hold.
use std::{borrow::Borrow, fmt};

use serde::{Deserialize, Serialize};

/// A session's id: 16 lower-case hex digits derived from the boot id, the tgid and the process
/// start time (by the daemon's identity stage); records of one session all carry it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SessionId(String);

impl SessionId {
    pub fn new(id: impl Into<String>) -> Self {
        SessionId(id.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<String> for SessionId {
    fn from(id: String) -> Self {
        SessionId(id)
    }
}

impl From<&str> for SessionId {
    fn from(id: &str) -> Self {
        SessionId(id.to_owned())
    }
}

impl AsRef<str> for SessionId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Maps keyed by session id are looked up by `&str`.
impl Borrow<str> for SessionId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for SessionId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for SessionId {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

/// An exchange's id, unique within one gateway run (and, being drawn from the clock at start,
/// across runs in practice); the records of one exchange all carry it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ExchangeId(u64);

impl ExchangeId {
    pub const fn new(id: u64) -> Self {
        ExchangeId(id)
    }

    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ExchangeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl From<u64> for ExchangeId {
    fn from(id: u64) -> Self {
        ExchangeId(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_their_bare_json() {
        let s = SessionId::new("4a6d4d37336ae30e");
        assert_eq!(serde_json::to_string(&s).unwrap(), r#""4a6d4d37336ae30e""#);
        assert_eq!(
            serde_json::from_str::<SessionId>(r#""4a6d4d37336ae30e""#).unwrap(),
            s
        );
        let x = ExchangeId::new(1796514147252593);
        assert_eq!(serde_json::to_string(&x).unwrap(), "1796514147252593");
        assert_eq!(serde_json::from_str::<ExchangeId>("1796514147252593").unwrap(), x);
        assert!(serde_json::from_str::<ExchangeId>(r#""7""#).is_err());
    }
}
