//! Counts of secrets masked, per rule and place: pure data, never a secret or a fingerprint.
//! The daemon keeps one for the whole process (what `ghgate status` shows).
use std::collections::BTreeMap;

use crate::Finding;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts(BTreeMap<(String, &'static str), u64>);

impl Counts {
    /// Counts the secrets `found` at `place`.
    pub fn add(&mut self, found: &[Finding], place: &'static str) {
        for f in found {
            *self.0.entry((f.rule.clone(), place)).or_default() += 1;
        }
    }

    /// (rule, place, count), by rule then place.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &'static str, u64)> {
        self.0
            .iter()
            .map(|((rule, place), n)| (rule.as_str(), *place, *n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_rule_and_place() {
        let finding = |rule: &str| Finding {
            rule: rule.into(),
            fingerprint: "0123456789ab".into(),
            offset: 0,
            len: 40,
        };
        let mut counts = Counts::default();
        counts.add(
            &[finding("github-pat"), finding("jwt"), finding("github-pat")],
            "responses",
        );
        counts.add(&[finding("github-pat")], "records");
        counts.add(&[], "logs");
        let seen: Vec<_> = counts.iter().collect();
        assert_eq!(
            seen,
            [
                ("github-pat", "records", 1),
                ("github-pat", "responses", 2),
                ("jwt", "responses", 1)
            ]
        );
    }
}
