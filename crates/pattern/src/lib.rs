//! The patterns ghgate's configuration matches with, one copy of each for every section that
//! uses them: host names (`tls.intercept`, `tls.passthrough`, `[[mask.route]] host`) and the one
//! glob (paths, cgroups, executables, claims); and the one normalisation of a host name that
//! requests are classified by and records are indexed by ([`host_and_port`]).
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

/// The normalised host and port of an authority (a `Host` value, a URL's authority): lower case,
/// one trailing dot removed; `None` for user info, an empty or malformed name, or a port that is
/// not a port.
pub fn host_and_port(authority: &str) -> Option<(String, Option<u16>)> {
    let (host, port) = if authority.starts_with('[') {
        let end = authority.find(']')?;
        let (h, rest) = authority.split_at(end + 1);
        match rest {
            "" => (h, None),
            r => (h, Some(r.strip_prefix(':')?)),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let port = match port {
        None | Some("") => None,
        Some(p) if p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => Some(p.parse::<u16>().ok()?),
        Some(_) => return None,
    };
    let mut host = host.to_ascii_lowercase();
    if host.ends_with('.') {
        host.pop();
    }
    let ok = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        !v6.is_empty()
            && v6
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
    } else {
        !host.is_empty()
            && host.split('.').all(|label| {
                !label.is_empty()
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            })
    };
    ok.then_some((host, port))
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

    #[test]
    fn authorities() {
        let hp = |a: &str| host_and_port(a);
        assert_eq!(hp("API.GitHub.com."), Some(("api.github.com".into(), None)));
        assert_eq!(hp("github.com:8443"), Some(("github.com".into(), Some(8443))));
        assert_eq!(hp("github.com:"), Some(("github.com".into(), None)));
        assert_eq!(hp("[::1]:443"), Some(("[::1]".into(), Some(443))));
        for bad in [
            "",
            ".",
            "a..b",
            "user@github.com",
            "github.com:99999",
            "github.com:x",
            "[::1",
            "[]",
            "[::1]x",
        ] {
            assert_eq!(hp(bad), None, "{bad:?}");
        }
    }
}
