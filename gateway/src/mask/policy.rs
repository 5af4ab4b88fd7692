//! Which masker applies where: the rule sets for responses, records and logs (built-in rules
//! less `disable`, plus custom rules by their `places`), and per host and path what clients
//! receive. Built once at start from `[mask]`; pure, no I/O.
use base64::Engine as _;

use super::{FingerprintKey, Masker, Rule, Rules, Validator, rules::Extend};
use crate::{
    config::{MaskConfig, MaskPlace, ResponseMasking, name_matches},
    glob::glob,
};

/// The maskers of a running gateway, and what they have masked so far.
#[derive(Debug, Clone)]
pub struct MaskSet {
    pub responses: Masker,
    pub records: Masker,
    pub logs: Masker,
    default: ResponseMasking,
    routes: Vec<(String, String, ResponseMasking)>,
}

fn custom(r: &crate::config::CustomRule) -> Rule {
    Rule {
        id: r.id.clone(),
        keywords: r.keywords.clone(),
        regex: r.regex.clone(),
        validator: Validator::None,
        min_entropy: r.min_entropy,
        extend: Extend::None,
        builtin: false,
    }
}

fn rules_for(cfg: &MaskConfig, place: MaskPlace) -> Rules {
    let mut rules = Rules::builtin();
    rules.retain(|r| !cfg.disable.contains(&r.id));
    for r in cfg.rules.iter().filter(|r| r.places.contains(&place)) {
        rules.push(custom(r));
    }
    rules
}

/// Validates `[mask]`: `Err((key, message))` names the offending key.
pub fn check(cfg: &MaskConfig) -> Result<(), (String, String)> {
    let builtin: Vec<String> = Rules::builtin().iter().map(|r| r.id.clone()).collect();
    for (i, id) in cfg.disable.iter().enumerate() {
        if !builtin.contains(id) {
            return Err((
                format!("mask.disable[{i}]"),
                format!("{id:?} is not a built-in rule; they are: {}", builtin.join(", ")),
            ));
        }
    }
    for (i, route) in cfg.routes.iter().enumerate() {
        let host = route.host.strip_prefix("*.").unwrap_or(&route.host);
        if route.host != "*" && (host.is_empty() || host.contains('*')) {
            return Err((
                format!("mask.route[{i}].host"),
                format!("{:?} must be a host name, `*.suffix` or `*`", route.host),
            ));
        }
        if !route.path.starts_with('/') && route.path != "*" {
            return Err((
                format!("mask.route[{i}].path"),
                format!("{:?} must start with '/' (or be `*`)", route.path),
            ));
        }
    }
    let mut seen = builtin.clone();
    for (i, r) in cfg.rules.iter().enumerate() {
        if seen.contains(&r.id) {
            return Err((
                format!("mask.rule[{i}].id"),
                format!("{:?} is already a rule's id", r.id),
            ));
        }
        seen.push(r.id.clone());
        if r.places.is_empty() {
            return Err((format!("mask.rule[{i}].places"), "name at least one place".into()));
        }
        if !(0.0..=8.0).contains(&r.min_entropy) {
            return Err((
                format!("mask.rule[{i}].min_entropy"),
                "must be between 0 and 8 bits per byte".into(),
            ));
        }
        let mut one = Rules::empty();
        one.push(custom(r));
        if let Err(e) = Masker::try_new(one, FingerprintKey::new([0; 32])) {
            return Err((format!("mask.rule[{i}]"), e.to_string()));
        }
    }
    Ok(())
}

impl MaskSet {
    /// The same set with `values` masked by exact value everywhere (static credentials, known
    /// at start): folded in once, instead of per exchange.
    pub fn with_exact(&self, values: &[(String, Vec<u8>)]) -> MaskSet {
        if values.is_empty() {
            return self.clone();
        }
        MaskSet {
            responses: self.responses.with_exact(values),
            records: self.records.with_exact(values),
            logs: self.logs.with_exact(values),
            default: self.default,
            routes: self.routes.clone(),
        }
    }

    /// Builds the maskers; the config was checked at load.
    pub fn new(cfg: &MaskConfig, key: FingerprintKey) -> Result<MaskSet, super::CompileError> {
        let make = |place| Masker::try_new(rules_for(cfg, place), key.clone());
        // Places share one compiled rule set unless a custom rule tells them apart: compiling
        // is most of what a (re)start costs.
        let everywhere = |r: &crate::config::CustomRule| {
            [MaskPlace::Responses, MaskPlace::Records, MaskPlace::Logs]
                .iter()
                .all(|p| r.places.contains(p))
        };
        let responses = make(MaskPlace::Responses)?;
        let (records, logs) = if cfg.rules.iter().all(everywhere) {
            (responses.clone(), responses.clone())
        } else {
            let records = make(MaskPlace::Records)?;
            let same = cfg
                .rules
                .iter()
                .all(|r| r.places.contains(&MaskPlace::Records) == r.places.contains(&MaskPlace::Logs));
            let logs = if same {
                records.clone()
            } else {
                make(MaskPlace::Logs)?
            };
            (records, logs)
        };
        Ok(MaskSet {
            responses,
            records,
            logs,
            default: cfg.responses,
            routes: cfg
                .routes
                .iter()
                .map(|r| {
                    (
                        r.host.to_ascii_lowercase(),
                        r.path.to_ascii_lowercase(),
                        r.responses,
                    )
                })
                .collect(),
        })
    }

    /// What clients receive from `host` at `path`: the request's classified host and canonical
    /// path (`classify`), matched ignoring ASCII case as the policy matches them.
    pub fn responses(&self, host: &str, path: &str) -> ResponseMasking {
        let path = path.to_ascii_lowercase();
        self.routes
            .iter()
            .find(|(h, p, _)| (h == "*" || name_matches(h, host)) && glob(p, &path))
            .map_or(self.default, |r| r.2)
    }
}

/// Whether a body of this content type is text worth masking for clients. Binary bodies (git
/// packs, archives, images) pass untouched to clients; records mask every body.
pub fn is_text(content_type: Option<&str>) -> bool {
    let Some(ct) = content_type else { return true };
    let ct = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    ct.starts_with("text/")
        || ct.ends_with("+json")
        || ct.ends_with("+xml")
        || matches!(
            ct.as_str(),
            "application/json"
                | "application/x-ndjson"
                | "application/jsonl"
                | "application/javascript"
                | "application/xml"
                | "application/x-www-form-urlencoded"
                | "application/graphql"
                | "application/yaml"
                | "application/x-yaml"
                | ""
        )
}

/// The caller's own credentials in a request head, to be masked by exact value wherever they
/// appear: bearer/token values, and the password of basic auth (and the base64 form itself).
pub fn caller_credentials(headers: &http::HeaderMap) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    // `Proxy-Authorization` never gets this far: it is hop-by-hop, stripped before any stage.
    for value in headers.get_all(http::header::AUTHORIZATION) {
        let v = value.as_bytes();
        let (scheme, rest) = match v.iter().position(|&b| b == b' ') {
            Some(i) => (&v[..i], v[i + 1..].trim_ascii()),
            None => (&b""[..], v.trim_ascii()),
        };
        out.push(("credential".to_owned(), rest.to_vec()));
        if scheme.eq_ignore_ascii_case(b"basic")
            && let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(rest)
            && let Some(colon) = decoded.iter().position(|&b| b == b':')
        {
            out.push(("credential".to_owned(), decoded[colon + 1..].to_vec()));
        }
    }
    for name in ["x-github-token", "x-api-key", "api-key", "private-token"] {
        for value in headers.get_all(name) {
            out.push(("credential".to_owned(), value.as_bytes().trim_ascii().to_vec()));
        }
    }
    out.retain(|(_, v)| v.len() >= super::MIN_EXACT_LEN);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_pick_the_first_match() {
        let cfg: MaskConfig = toml::from_str(
            r#"
            responses = "mask"
            [[route]]
            host = "*.githubcopilot.com"
            path = "/chat/*"
            responses = "alert"
            [[route]]
            host = "api.github.com"
            responses = "off"
            "#,
        )
        .unwrap();
        check(&cfg).unwrap();
        let set = MaskSet::new(&cfg, FingerprintKey::new([1; 32])).unwrap();
        assert_eq!(
            set.responses("api.githubcopilot.com", "/chat/completions"),
            ResponseMasking::Alert
        );
        // Case is no way around a route, as it is none around a policy rule.
        assert_eq!(
            set.responses("api.githubcopilot.com", "/Chat/Completions"),
            ResponseMasking::Alert
        );
        assert_eq!(
            set.responses("api.githubcopilot.com", "/models"),
            ResponseMasking::Mask
        );
        assert_eq!(
            set.responses("api.github.com", "/repos/o/r"),
            ResponseMasking::Off
        );
        assert_eq!(set.responses("github.com", "/"), ResponseMasking::Mask);
    }

    #[test]
    fn bad_config_names_the_key() {
        let bad = |text: &str| check(&toml::from_str::<MaskConfig>(text).unwrap()).unwrap_err();
        assert_eq!(bad(r#"disable = ["nope"]"#).0, "mask.disable[0]");
        let (key, msg) = bad(r#"[[rule]]
            id = "acme"
            regex = '[a-z]+_acme'
            keywords = ["acme"]"#);
        assert_eq!(key, "mask.rule[0]");
        assert!(msg.contains("keywords"), "{msg}");
        let (key, _) = bad(r#"[[rule]]
            id = "acme"
            regex = 'acme_('
            keywords = ["acme_"]"#);
        assert_eq!(key, "mask.rule[0]");
        assert_eq!(
            bad("[[route]]\nhost = \"a*b\"\nresponses = \"off\"").0,
            "mask.route[0].host"
        );
    }

    #[test]
    fn custom_rules_apply_to_their_places() {
        let cfg: MaskConfig = toml::from_str(
            r#"[[rule]]
            id = "acme-key"
            regex = 'acme_[a-z0-9]{12}'
            keywords = ["acme_"]
            places = ["records"]"#,
        )
        .unwrap();
        check(&cfg).unwrap();
        let set = MaskSet::new(&cfg, FingerprintKey::new([1; 32])).unwrap();
        let text = "k=acme_0a1b2c3d4e5f;";
        assert!(set.records.mask_str(text).0.contains("[MASKED:acme-key:"));
        assert_eq!(set.responses.mask_str(text).0, text);
        assert_eq!(set.logs.mask_str(text).0, text);
    }

    #[test]
    fn caller_credentials_from_headers() {
        let mut h = http::HeaderMap::new();
        h.insert(
            "authorization",
            "Basic eC1hY2Nlc3MtdG9rZW46c2VjcmV0dmFsdWUxMjM=".parse().unwrap(),
        );
        let creds = caller_credentials(&h);
        assert!(creds.iter().any(|(_, v)| v == b"secretvalue123"), "{creds:?}");
    }
}
