//! The `[mask]` section of the configuration: its serde model, named defaults and its own
//! `validate()`, which names the offending key. The daemon's `Config` holds a [`MaskConfig`] and
//! calls [`MaskConfig::validate`] at load; [`crate::policy::MaskSet`] is built from it.
//!
//! Pure: no I/O. A custom rule is compiled here once, to check it, and again by `MaskSet`.
use serde::Deserialize;

use crate::{FingerprintKey, Masker, Rule, Rules, Validator, rules::Extend};

/// Secret masking. Records, logs and credential headers are always masked; `responses` says
/// what clients receive.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct MaskConfig {
    /// What happens to secrets in responses to clients, unless a `[[mask.route]]` says otherwise.
    #[serde(default)]
    pub responses: ResponseMasking,
    /// Built-in rules to turn off, by id (`ghgate mask --list-rules` lists them).
    #[serde(default)]
    pub disable: Vec<String>,
    /// Per host and path: first match wins.
    #[serde(default, rename = "route")]
    pub routes: Vec<MaskRoute>,
    /// Rules of your own, after the built-in ones.
    #[serde(default, rename = "rule")]
    pub rules: Vec<CustomRule>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ResponseMasking {
    /// Clients receive the masked body.
    #[default]
    Mask,
    /// Clients receive the body as sent; each secret is recorded as an alert.
    Alert,
    /// Clients receive the body as sent; the record is still masked.
    Off,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaskRoute {
    /// Exact host name or `*.suffix`; `*` alone for any.
    #[serde(default = "default_any")]
    pub host: String,
    /// Path glob (`*` matches any run of characters, `/` included); the query is not matched.
    #[serde(default = "default_any")]
    pub path: String,
    pub responses: ResponseMasking,
}

fn default_any() -> String {
    "*".into()
}

/// Where a custom rule applies.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum MaskPlace {
    /// Response bodies to clients.
    Responses,
    /// Bodies, headers and URLs in session records.
    Records,
    /// The gateway's own log lines.
    Logs,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomRule {
    /// Short name, shown in replacements: letters, digits, `-`, `_`.
    pub id: String,
    /// Byte-oriented regex; a group named `secret` marks what is masked (default: the match).
    pub regex: String,
    /// Literal starts of a match (ASCII case-insensitive): every match must begin with one.
    pub keywords: Vec<String>,
    /// Minimum Shannon entropy of the secret, bits per byte (0 = no check).
    #[serde(default)]
    pub min_entropy: f64,
    #[serde(default = "default_places")]
    pub places: Vec<MaskPlace>,
}

fn default_places() -> Vec<MaskPlace> {
    vec![MaskPlace::Responses, MaskPlace::Records, MaskPlace::Logs]
}

/// A `[mask]` value that cannot be used: the key (`mask.rule[0].id`, …) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{key}`: {message}")]
pub struct InvalidConfig {
    pub key: String,
    pub message: String,
}

fn invalid(key: String, message: impl Into<String>) -> InvalidConfig {
    InvalidConfig {
        key,
        message: message.into(),
    }
}

impl CustomRule {
    /// The rule this entry defines.
    pub fn rule(&self) -> Rule {
        Rule {
            id: self.id.clone(),
            keywords: self.keywords.clone(),
            regex: self.regex.clone(),
            validator: Validator::None,
            min_entropy: self.min_entropy,
            extend: Extend::None,
            builtin: false,
        }
    }

    /// Whether the rule applies to responses, records and logs alike.
    pub fn everywhere(&self) -> bool {
        [MaskPlace::Responses, MaskPlace::Records, MaskPlace::Logs]
            .iter()
            .all(|p| self.places.contains(p))
    }
}

impl MaskConfig {
    /// The rules that apply at `place`: the built-in ones less `disable`, then the custom rules
    /// for that place.
    pub fn rules_for(&self, place: MaskPlace) -> Rules {
        let mut rules = Rules::builtin();
        rules.retain(|r| !self.disable.contains(&r.id));
        for r in self.rules.iter().filter(|r| r.places.contains(&place)) {
            rules.push(r.rule());
        }
        rules
    }

    /// Checks everything a user can get wrong in `[mask]`, naming the key.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        let mut builtin: Vec<String> = Rules::builtin().iter().map(|r| r.id.clone()).collect();
        builtin.dedup();
        for (i, id) in self.disable.iter().enumerate() {
            if !builtin.contains(id) {
                return Err(invalid(
                    format!("mask.disable[{i}]"),
                    format!("{id:?} is not a built-in rule; they are: {}", builtin.join(", ")),
                ));
            }
        }
        for (i, route) in self.routes.iter().enumerate() {
            let host = route.host.strip_prefix("*.").unwrap_or(&route.host);
            if route.host != "*" && (host.is_empty() || host.contains('*')) {
                return Err(invalid(
                    format!("mask.route[{i}].host"),
                    format!("{:?} must be a host name, `*.suffix` or `*`", route.host),
                ));
            }
            if !route.path.starts_with('/') && route.path != "*" {
                return Err(invalid(
                    format!("mask.route[{i}].path"),
                    format!("{:?} must start with '/' (or be `*`)", route.path),
                ));
            }
        }
        let mut seen = builtin;
        for (i, r) in self.rules.iter().enumerate() {
            if seen.contains(&r.id) {
                return Err(invalid(
                    format!("mask.rule[{i}].id"),
                    format!("{:?} is already a rule's id", r.id),
                ));
            }
            seen.push(r.id.clone());
            if r.places.is_empty() {
                return Err(invalid(
                    format!("mask.rule[{i}].places"),
                    "name at least one place",
                ));
            }
            if !(0.0..=8.0).contains(&r.min_entropy) {
                return Err(invalid(
                    format!("mask.rule[{i}].min_entropy"),
                    "must be between 0 and 8 bits per byte",
                ));
            }
            let mut one = Rules::empty();
            one.push(r.rule());
            if let Err(e) = Masker::try_new(one, FingerprintKey::new([0; 32])) {
                return Err(invalid(format!("mask.rule[{i}]"), e.to_string()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_config_names_the_key() {
        let bad = |text: &str| {
            toml::from_str::<MaskConfig>(text)
                .unwrap()
                .validate()
                .unwrap_err()
        };
        assert_eq!(bad(r#"disable = ["nope"]"#).key, "mask.disable[0]");
        let e = bad(r#"[[rule]]
            id = "acme"
            regex = '[a-z]+_acme'
            keywords = ["acme"]"#);
        assert_eq!(e.key, "mask.rule[0]");
        assert!(e.message.contains("keywords"), "{e}");
        let e = bad(r#"[[rule]]
            id = "acme"
            regex = 'acme_('
            keywords = ["acme_"]"#);
        assert_eq!(e.key, "mask.rule[0]");
        assert_eq!(
            bad("[[route]]\nhost = \"a*b\"\nresponses = \"off\"").key,
            "mask.route[0].host"
        );
        assert_eq!(
            bad("[[route]]\npath = \"chat\"\nresponses = \"off\"").key,
            "mask.route[0].path"
        );
        let e = bad(r#"[[rule]]
            id = "github-pat"
            regex = 'ghp_x'
            keywords = ["ghp_"]"#);
        assert_eq!(e.key, "mask.rule[0].id");
        assert_eq!(e.to_string(), format!("`mask.rule[0].id`: {}", e.message));
        let e = bad(r#"[[rule]]
            id = "acme"
            regex = 'acme_x'
            keywords = ["acme_"]
            places = []"#);
        assert_eq!(e.key, "mask.rule[0].places");
        let e = bad(r#"[[rule]]
            id = "acme"
            regex = 'acme_x'
            keywords = ["acme_"]
            min_entropy = 9.0"#);
        assert_eq!(e.key, "mask.rule[0].min_entropy");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let e = toml::from_str::<MaskConfig>("respones = \"off\"").unwrap_err();
        assert!(e.to_string().contains("respones"), "{e}");
        assert!(toml::from_str::<MaskConfig>("responses = \"redact\"").is_err());
    }

    #[test]
    fn a_default_config_is_valid_and_masks_responses() {
        let cfg = MaskConfig::default();
        cfg.validate().unwrap();
        assert_eq!(cfg.responses, ResponseMasking::Mask);
        assert_eq!(cfg.rules_for(MaskPlace::Logs).len(), Rules::builtin().len());
    }
}
