//! Which masker applies where: the rule sets for responses, records and logs (built-in rules
//! less `disable`, plus custom rules by their `places`), and per host and path what clients
//! receive. Built once at start from `[mask]`; pure, no I/O.
use ghgate_pattern::{glob, name_matches};

use crate::{
    CompileError, FingerprintKey, Masker,
    config::{MaskConfig, MaskPlace, ResponseMasking},
};

/// The maskers of a running gateway, one per place, and what clients receive per route.
#[derive(Debug, Clone)]
pub struct MaskSet {
    pub responses: Masker,
    pub records: Masker,
    pub logs: Masker,
    default: ResponseMasking,
    routes: Vec<(String, String, ResponseMasking)>,
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
    pub fn new(cfg: &MaskConfig, key: FingerprintKey) -> Result<MaskSet, CompileError> {
        let make = |place| Masker::try_new(cfg.rules_for(place), key.clone());
        // Places share one compiled rule set unless a custom rule tells them apart: compiling
        // is most of what a (re)start costs.
        let responses = make(MaskPlace::Responses)?;
        let (records, logs) = if cfg.rules.iter().all(|r| r.everywhere()) {
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
        cfg.validate().unwrap();
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
    fn custom_rules_apply_to_their_places() {
        let cfg: MaskConfig = toml::from_str(
            r#"[[rule]]
            id = "acme-key"
            regex = 'acme_[a-z0-9]{12}'
            keywords = ["acme_"]
            places = ["records"]"#,
        )
        .unwrap();
        cfg.validate().unwrap();
        let set = MaskSet::new(&cfg, FingerprintKey::new([1; 32])).unwrap();
        let text = "k=acme_0a1b2c3d4e5f;";
        assert!(set.records.mask_str(text).0.contains("[MASKED:acme-key:"));
        assert_eq!(set.responses.mask_str(text).0, text);
        assert_eq!(set.logs.mask_str(text).0, text);
    }
}
