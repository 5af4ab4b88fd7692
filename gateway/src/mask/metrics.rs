//! What the gateway has masked since it started, per rule and place: the counters `ghgate
//! status` shows. Process-wide, like the kernel's counters; never holds a secret or a
//! fingerprint, only counts.
use std::{
    collections::BTreeMap,
    sync::{LazyLock, Mutex},
};

use super::Finding;

static COUNTS: LazyLock<Mutex<BTreeMap<(String, &'static str), u64>>> = LazyLock::new(Mutex::default);

/// Counts secrets masked at `place`.
pub fn count(found: &[Finding], place: &'static str) {
    if found.is_empty() {
        return;
    }
    if let Ok(mut counts) = COUNTS.lock() {
        for f in found {
            *counts.entry((f.rule.clone(), place)).or_default() += 1;
        }
    }
}

/// Secrets masked since start: (rule, place, count).
pub fn counts() -> Vec<(String, &'static str, u64)> {
    COUNTS
        .lock()
        .map(|c| c.iter().map(|((r, p), n)| (r.clone(), *p, *n)).collect())
        .unwrap_or_default()
}
