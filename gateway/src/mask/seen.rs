//! The fingerprints of secrets the gateway has seen in responses (a Copilot suggestion, any
//! other answer, a WebSocket message), so that a push carrying one of them can be refused
//! (`secret_seen = true` in a policy rule).
//!
//! Bounded: the most recent [`CAPACITY`] fingerprints are kept, least recently seen out first.
//! Nothing new is written to disk: at start the set is rebuilt from the record store through its
//! index (the `masked` records of response places), so it outlives restarts exactly as far as the
//! record does. Holds fingerprints only, never a secret.
use std::{num::NonZeroUsize, path::Path, sync::Mutex};

use ghgate_record::{
    index::{Index, RecordSource as _, StoreDir, index_path},
    model::{Place, Record},
};

/// How many fingerprints are kept.
pub const CAPACITY: usize = 100_000;

pub struct SeenSecrets {
    set: Mutex<lru::LruCache<String, ()>>,
}

impl Default for SeenSecrets {
    fn default() -> Self {
        Self::with_capacity(CAPACITY)
    }
}

impl SeenSecrets {
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            set: Mutex::new(lru::LruCache::new(
                NonZeroUsize::new(capacity.max(1)).expect("at least one"),
            )),
        }
    }

    /// Whether a secret found at `place` came from the upstream's side.
    pub fn from_response(place: Place) -> bool {
        matches!(
            place,
            Place::ResponseBody | Place::ResponseHeader | Place::WebSocket
        )
    }

    pub fn insert(&self, fingerprint: &str) {
        if let Ok(mut s) = self.set.lock() {
            s.put(fingerprint.to_owned(), ());
        }
    }

    pub fn contains(&self, fingerprint: &str) -> bool {
        self.set.lock().is_ok_and(|s| s.contains(fingerprint))
    }

    pub fn len(&self) -> usize {
        self.set.lock().map_or(0, |s| s.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Fills the set from the record store in `record_dir`: the newest `masked` records of
    /// response places, oldest first so the newest stay. A record that cannot be read is
    /// skipped (and counted): the set is an aid to the policy, the record stays the authority.
    pub fn rebuild(&self, record_dir: &Path) -> Result<Rebuilt, ghgate_record::index::IndexError> {
        let index = Index::open_read_only(&index_path(record_dir))?;
        let positions = index.records_of_kind("masked", 0)?;
        // A secret is masked once per place it appears: reading a few times the capacity finds
        // the newest distinct fingerprints without reading the whole history.
        let start = positions.len().saturating_sub(CAPACITY * 4);
        let mut out = Rebuilt::default();
        let store = StoreDir(record_dir);
        for (segment, offset) in &positions[start..] {
            match store.read_at(*segment, *offset) {
                Ok((_, Record::Masked(m))) if Self::from_response(m.place) => {
                    self.insert(&m.fingerprint);
                    out.read += 1;
                }
                Ok(_) => {}
                Err(_) => out.unreadable += 1,
            }
        }
        Ok(out)
    }
}

/// What a rebuild read.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Rebuilt {
    pub read: u64,
    pub unreadable: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_set_is_bounded_and_keeps_the_most_recently_seen() {
        let seen = SeenSecrets::with_capacity(2);
        seen.insert("a");
        seen.insert("b");
        seen.insert("a");
        seen.insert("c");
        assert!(seen.contains("a") && seen.contains("c"));
        assert!(!seen.contains("b"), "the least recently seen went first");
        assert_eq!(seen.len(), 2);
        assert!(SeenSecrets::from_response(Place::ResponseBody));
        assert!(!SeenSecrets::from_response(Place::RequestBody));
        assert!(!SeenSecrets::from_response(Place::GitPushPack));
    }
}
