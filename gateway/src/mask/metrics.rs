//! What the gateway has masked since it started, per rule and place: the counters `ghgate
//! status` shows. Process-wide, like the kernel's counters; never holds a secret or a
//! fingerprint, only counts.
use std::sync::{LazyLock, Mutex};

use ghgate_mask::{Finding, counts::Counts};

static COUNTS: LazyLock<Mutex<Counts>> = LazyLock::new(Mutex::default);

/// Counts secrets masked at `place`.
pub fn count(found: &[Finding], place: &'static str) {
    if found.is_empty() {
        return;
    }
    if let Ok(mut counts) = COUNTS.lock() {
        counts.add(found, place);
    }
}

/// Secrets masked since start: (rule, place, count).
pub fn counts() -> Vec<(String, &'static str, u64)> {
    COUNTS
        .lock()
        .map(|c| c.iter().map(|(r, p, n)| (r.to_owned(), p, n)).collect())
        .unwrap_or_default()
}
