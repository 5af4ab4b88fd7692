//! Capability lists: the words after the NUL of a ref advertisement's first line or of a push's
//! command lines (`report-status side-band-64k agent=git/2.47.3`).
//!
//! Read as git's `parse_feature_value` reads them: words are separated by any of git's white
//! space (space, tab, LF, CR), the list ends at a NUL, and a capability is asked for when a word
//! is its name or its name followed by `=value`. Rendered with single spaces.
use crate::oid::{ObjectFormat, preview};

/// An `object-format=` this crate does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unsupported object format {0}")]
pub struct UnknownObjectFormat(pub String);

/// A list of capabilities, in order, as bytes (a value need not be UTF-8).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    words: Vec<Vec<u8>>,
}

/// git's `isspace`: these four, not vertical tab or form feed.
fn is_git_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

impl Capabilities {
    /// Parses a list; it ends at a NUL, as git reads it as a C string.
    pub fn parse(list: &[u8]) -> Self {
        let list = list.split(|&b| b == 0).next().unwrap_or_default();
        Self {
            words: list
                .split(|&b| is_git_space(b))
                .filter(|w| !w.is_empty())
                .map(<[u8]>::to_vec)
                .collect(),
        }
    }

    /// Adds the words of another list (a push may send capabilities on more than one line; git
    /// reads each).
    pub fn extend(&mut self, other: Capabilities) {
        self.words.extend(other.words);
    }

    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    pub fn len(&self) -> usize {
        self.words.len()
    }

    /// The words, as sent.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        self.words.iter().map(Vec::as_slice)
    }

    /// The words, as text (lossily).
    pub fn to_strings(&self) -> Vec<String> {
        self.iter()
            .map(|w| String::from_utf8_lossy(w).into_owned())
            .collect()
    }

    fn matches(word: &[u8], name: &str) -> bool {
        word.strip_prefix(name.as_bytes())
            .is_some_and(|rest| rest.is_empty() || rest[0] == b'=')
    }

    /// Whether `name` is asked for (alone or with a value).
    pub fn has(&self, name: &str) -> bool {
        self.iter().any(|w| Self::matches(w, name))
    }

    /// The value of the first `name=value`.
    pub fn value(&self, name: &str) -> Option<&[u8]> {
        self.iter()
            .find_map(|w| w.strip_prefix(name.as_bytes())?.strip_prefix(b"="))
    }

    /// Every value of `name=value` words, in order (`symref=` comes once per symbolic ref).
    pub fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.iter()
            .filter_map(move |w| w.strip_prefix(name.as_bytes())?.strip_prefix(b"="))
    }

    /// The `object-format` named, if any.
    pub fn object_format(&self) -> Result<Option<ObjectFormat>, UnknownObjectFormat> {
        self.value("object-format")
            .map(|v| ObjectFormat::from_name(v).ok_or_else(|| UnknownObjectFormat(preview(v))))
            .transpose()
    }

    /// Removes every word of `name`; whether any was there.
    pub fn remove(&mut self, name: &str) -> bool {
        let before = self.words.len();
        self.words.retain(|w| !Self::matches(w, name));
        self.words.len() != before
    }

    /// Adds `word` unless a capability of its name is there already.
    pub fn add(&mut self, word: &str) {
        let name = word.split('=').next().unwrap_or(word);
        if !self.has(name) {
            self.words.push(word.as_bytes().to_vec());
        }
    }

    /// What the gateway passes on of a receive-pack advertisement: no `push-cert` (GitHub does
    /// not take push certificates, and a certificate's commands cannot be rewritten), and
    /// `no-thin` when the policy reads pushed trees (a thin pack's deltas name bases it does not
    /// hold). Whether anything changed.
    pub fn rewrite_for_push(&mut self, no_thin: bool) -> bool {
        let mut changed = self.remove("push-cert");
        if no_thin && !self.has("no-thin") {
            self.add("no-thin");
            changed = true;
        }
        changed
    }

    /// The words joined by single spaces.
    pub fn render(&self) -> Vec<u8> {
        self.words.join(&b' ')
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_split_on_gits_white_space_and_end_at_a_nul() {
        // What git's send-pack writes: a leading space.
        let c = Capabilities::parse(b" report-status side-band-64k object-format=sha1 agent=git/2.47.3");
        assert_eq!(c.len(), 4);
        assert!(c.has("report-status") && !c.has("report-status-v2") && !c.has("side-band"));
        assert_eq!(c.value("agent"), Some(&b"git/2.47.3"[..]));
        assert_eq!(c.object_format(), Ok(Some(ObjectFormat::Sha1)));
        // A client that ends its list with CR, or separates words with tabs, asks for what git
        // reads there (copies split on spaces alone and missed both).
        let c = Capabilities::parse(b"report-status\tpush-options\r");
        assert!(c.has("report-status") && c.has("push-options"), "{c:?}");
        let c = Capabilities::parse(b"atomic\0push-cert");
        assert!(c.has("atomic") && !c.has("push-cert"), "git stops at the NUL");
        assert!(Capabilities::parse(b"object-format=md5").object_format().is_err());
    }

    #[test]
    fn push_cert_goes_and_no_thin_comes_once() {
        let mut c = Capabilities::parse(b"report-status push-cert=1700000000-5f1a2b quiet push-cert");
        assert!(c.has("push-cert"));
        assert!(c.rewrite_for_push(true));
        assert_eq!(c.render(), b"report-status quiet no-thin");
        assert!(!c.rewrite_for_push(true), "nothing more to change");
        assert!(!c.rewrite_for_push(false));
        let symrefs = Capabilities::parse(b"symref=HEAD:refs/heads/main symref=refs/x:refs/y");
        assert_eq!(symrefs.values("symref").count(), 2);
    }
}
