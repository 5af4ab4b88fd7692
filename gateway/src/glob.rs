//! The one glob the configuration uses: `*` matches any run of characters (`/` included);
//! every other character matches itself. Paths, cgroups, executables, claims.

/// Whether `text` matches `pattern`.
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
}
