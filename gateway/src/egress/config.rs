//! `[egress]` of the gateway config: egress control for everything the governed cgroups reach
//! that is not GitHub's (GitHub's addresses are always mediated by the redirect, whatever this
//! says).
//!
//! ```toml
//! [egress]
//! mode = "block"          # "off" (default), "audit" or "block"
//! dns_port = 15353        # the gateway's resolver, on [listen]'s addresses
//! [[egress.allow]]
//! hosts = ["registry.npmjs.org", "*.pythonhosted.org"]
//! cidrs = ["10.0.0.0/8"]
//! ports = [443]           # empty or absent: every port
//! ```
//!
//! Pure data and its checks: nothing here touches the kernel or the network.
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Deserialize;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EgressMode {
    /// Nothing but GitHub is looked at (the behaviour before egress control existed).
    #[default]
    Off,
    /// Every connection and datagram is recorded with its caller and the name it was looked up
    /// by; nothing is refused.
    Audit,
    /// As audit, and what the allow-list does not hold is refused in the kernel (EPERM).
    Block,
}

impl EgressMode {
    pub fn as_str(self) -> &'static str {
        match self {
            EgressMode::Off => "off",
            EgressMode::Audit => "audit",
            EgressMode::Block => "block",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressConfig {
    #[serde(default)]
    pub mode: EgressMode,
    /// What block mode lets through, besides GitHub (always mediated) and DNS (always answered by
    /// the gateway's resolver).
    #[serde(default)]
    pub allow: Vec<AllowRule>,
    /// Port of the gateway's resolver on `[listen]`'s two addresses. With egress control on,
    /// every UDP and TCP packet of the governed cgroups to port 53 goes there, whatever server
    /// it names; the resolver asks `[dns] servers` (or the system's) and learns the answers
    /// before the caller gets them.
    #[serde(default = "default_dns_port")]
    pub dns_port: u16,
    /// An address learned from a DNS answer for an allowed name stays allowed at least this long,
    /// even if the answer's TTL is shorter (clients cache answers past their TTL).
    #[serde(default = "default_learned_min_secs")]
    pub learned_min_secs: u64,
    /// At most this many (address, name) pairs are remembered to name destinations in records;
    /// the oldest are forgotten first.
    #[serde(default = "default_name_cache")]
    pub name_cache: usize,
}

impl Default for EgressConfig {
    fn default() -> Self {
        Self {
            mode: EgressMode::Off,
            allow: Vec::new(),
            dns_port: default_dns_port(),
            learned_min_secs: default_learned_min_secs(),
            name_cache: default_name_cache(),
        }
    }
}

fn default_dns_port() -> u16 {
    15353
}

fn default_learned_min_secs() -> u64 {
    300
}

fn default_name_cache() -> usize {
    65_536
}

/// One allow-list entry: names (exact, or `*.suffix` for every name below it) and CIDRs, on
/// `ports` (every port when empty).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AllowRule {
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub cidrs: Vec<IpNet>,
    #[serde(default)]
    pub ports: Vec<u16>,
}

impl EgressConfig {
    pub fn enabled(&self) -> bool {
        self.mode != EgressMode::Off
    }

    /// `(key, message)` of the first problem.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.enabled() && self.dns_port == 0 {
            return Err(("egress.dns_port".into(), "must be a non-zero port".into()));
        }
        if self.name_cache == 0 {
            return Err(("egress.name_cache".into(), "must be at least 1".into()));
        }
        for (i, rule) in self.allow.iter().enumerate() {
            if rule.hosts.is_empty() && rule.cidrs.is_empty() {
                return Err((
                    format!("egress.allow[{i}]"),
                    "give `hosts` or `cidrs` (or both)".into(),
                ));
            }
            if rule.ports.contains(&0) {
                return Err((
                    format!("egress.allow[{i}].ports"),
                    "ports are 1-65535 (leave `ports` out for every port)".into(),
                ));
            }
            for (j, host) in rule.hosts.iter().enumerate() {
                if let Err(why) = check_pattern(host) {
                    return Err((
                        format!("egress.allow[{i}].hosts[{j}]"),
                        format!("{host:?}: {why}"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The ports on which `name` is allowed: `None` if no rule names it, `Some(vec![])` for
    /// every port.
    pub fn ports_for(&self, name: &str) -> Option<Vec<u16>> {
        let name = normalize(name);
        let mut out: Option<Vec<u16>> = None;
        for rule in &self.allow {
            if rule.hosts.iter().any(|p| matches(p, &name)) {
                match (&mut out, rule.ports.is_empty()) {
                    (_, true) => return Some(Vec::new()),
                    (Some(ports), false) => ports.extend(&rule.ports),
                    (None, false) => out = Some(rule.ports.clone()),
                }
            }
        }
        if let Some(ports) = &mut out {
            ports.sort_unstable();
            ports.dedup();
        }
        out
    }
}

/// A name as compared: lower case, without one trailing dot.
pub fn normalize(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// Does the pattern (`name` or `*.suffix`) cover `name` (normalized)? `*.example.com` covers
/// `a.example.com` and `a.b.example.com`, not `example.com` itself.
pub fn matches(pattern: &str, name: &str) -> bool {
    let pattern = normalize(pattern);
    match pattern.strip_prefix("*.") {
        Some(suffix) => name.len() > suffix.len() + 1 && name.ends_with(&format!(".{suffix}")),
        None => pattern == name,
    }
}

fn check_pattern(host: &str) -> Result<(), String> {
    if host.parse::<IpAddr>().is_ok() {
        return Err("an address belongs in `cidrs` (as a /32 or /128)".into());
    }
    let bare = host.strip_prefix("*.").unwrap_or(host);
    let ok = !bare.is_empty()
        && bare.len() <= 253
        && bare.trim_end_matches('.').split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if !ok {
        return Err("not a DNS name (or `*.` followed by one)".into());
    }
    if bare.trim_end_matches('.').split('.').count() < 2 && host.starts_with("*.") {
        return Err("a wildcard must keep at least two labels (`*.example.com`, not `*.com`)".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(toml_text: &str) -> EgressConfig {
        #[derive(Deserialize)]
        struct Wrap {
            egress: EgressConfig,
        }
        toml::from_str::<Wrap>(toml_text).unwrap().egress
    }

    #[test]
    fn off_by_default() {
        let c = EgressConfig::default();
        assert_eq!(c.mode, EgressMode::Off);
        assert!(!c.enabled());
        assert!(c.validate().is_ok());
    }

    #[test]
    fn names_match_exactly_or_below_a_wildcard() {
        assert!(matches("example.com", "example.com"));
        assert!(matches("Example.COM.", "example.com"));
        assert!(!matches("example.com", "a.example.com"));
        assert!(matches("*.example.com", "a.example.com"));
        assert!(matches("*.example.com", "a.b.example.com"));
        assert!(!matches("*.example.com", "example.com"));
        assert!(!matches("*.example.com", "badexample.com"));
        assert!(!matches("*.example.com", "example.com.evil.net"));
    }

    #[test]
    fn ports_for_a_name_join_every_rule_naming_it() {
        let c = config(
            r#"[egress]
mode = "block"
[[egress.allow]]
hosts = ["a.test"]
ports = [443]
[[egress.allow]]
hosts = ["*.test"]
ports = [80, 443]
[[egress.allow]]
hosts = ["any.test"]
"#,
        );
        assert!(c.validate().is_ok());
        assert_eq!(c.ports_for("a.test"), Some(vec![80, 443]));
        assert_eq!(c.ports_for("b.test"), Some(vec![80, 443]));
        assert_eq!(c.ports_for("ANY.test."), Some(vec![]), "every port");
        assert_eq!(c.ports_for("other.example"), None);
    }

    #[test]
    fn bad_rules_are_named() {
        for (text, key) in [
            ("[[egress.allow]]\nports = [443]\n", "egress.allow[0]"),
            (
                "[[egress.allow]]\nhosts = [\"a.test\"]\nports = [0]\n",
                "egress.allow[0].ports",
            ),
            (
                "[[egress.allow]]\nhosts = [\"10.0.0.1\"]\n",
                "egress.allow[0].hosts[0]",
            ),
            (
                "[[egress.allow]]\nhosts = [\"*.com\"]\n",
                "egress.allow[0].hosts[0]",
            ),
            (
                "[[egress.allow]]\nhosts = [\"a b.test\"]\n",
                "egress.allow[0].hosts[0]",
            ),
        ] {
            let c = config(&format!("[egress]\nmode = \"block\"\n{text}"));
            assert_eq!(c.validate().unwrap_err().0, key, "{text}");
        }
        let c = config("[egress]\nmode = \"audit\"\ndns_port = 0\n");
        assert_eq!(c.validate().unwrap_err().0, "egress.dns_port");
    }
}
