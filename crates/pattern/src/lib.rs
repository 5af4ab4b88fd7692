//! The patterns ghgate's configuration matches with, one copy of each for every section that
//! uses them: host names (`tls.intercept`, `tls.passthrough`, `[[mask.route]] host`) and the one
//! glob (paths, cgroups, executables, claims).
//!
//! Pure string functions: no allocation beyond a glob's split, no I/O, never a panic.
#![forbid(unsafe_code)]

/// Whether host `name` matches `pattern`: a name (compared without ASCII case) or `*.suffix`,
/// which matches every name below `suffix` but not `suffix` itself. `name` is lower-case (as
/// the classifier and the TLS peek give it).
pub fn name_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => {
            name.len() > suffix.len()
                && name.ends_with(suffix)
                && name[..name.len() - suffix.len()].ends_with('.')
        }
        None => pattern.eq_ignore_ascii_case(name),
    }
}

/// Whether `text` matches the glob `pattern`: `*` matches any run of characters (`/`
/// included); every other character matches itself.
pub fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("*", "/anything"));
        assert!(glob("/chat/*", "/chat/completions"));
        assert!(!glob("/chat/*", "/v1/chat/completions"));
        assert!(glob("*/completions", "/v1/chat/completions"));
        assert!(glob("/a*b*c", "/axxbyyc"));
        assert!(!glob("/a*b*c", "/axxc"));
        assert!(glob("/exact", "/exact"));
    }

    #[test]
    fn names() {
        assert!(name_matches("github.com", "github.com"));
        assert!(name_matches("GitHub.com", "github.com"));
        assert!(!name_matches("github.com", "api.github.com"));
        assert!(name_matches("*.github.com", "api.github.com"));
        assert!(name_matches("*.github.com", "a.b.github.com"));
        assert!(
            !name_matches("*.github.com", "github.com"),
            "the suffix itself is not below it"
        );
        assert!(
            !name_matches("*.github.com", "evilgithub.com"),
            "a label boundary is needed"
        );
    }
}
