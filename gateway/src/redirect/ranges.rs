//! GitHub's address space: the prefixes of GitHub's meta API lists that serve the API, git, the
//! web and Copilot, which the kernel mediates as a whole (port 443 intercepted, every other port
//! refused) instead of only the addresses one DNS answer gave.
//!
//! Where a set comes from, in order of preference: the last good refresh (cached in `state_dir`),
//! the configured snapshot file, the snapshot shipped in the binary. A refresh replaces the set
//! only when the whole answer is good; anything else keeps the set in force. This module never
//! decides what happens to a connection: it only says which prefixes are GitHub's.
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::config::GithubConfig;

/// The snapshot shipped with this build (GitHub meta API format, plus an `_ghgate` note).
pub const SHIPPED: &str = include_str!("../../data/github-meta.json");

/// The file in `state_dir` holding the last good refresh.
pub const CACHE_FILE: &str = "github-meta.json";

/// The shortest prefixes a meta answer may list. GitHub's own are /20 and /29 at their widest; a
/// wider one would turn interception on for large parts of the internet, so an answer with one
/// is refused as a whole.
const MIN_PREFIX_V4: u8 = 12;
const MIN_PREFIX_V6: u8 = 24;
/// More prefixes than the kernel's guard trie holds is not a plausible answer either.
const MAX_PREFIXES: usize = gateway_common::MAX_GUARD_ENTRIES as usize;

/// Where the set in force came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The snapshot shipped in the binary.
    Shipped,
    /// The snapshot file named by `[github] snapshot`.
    Snapshot,
    /// A refresh from the meta API, kept from an earlier run.
    Cached,
    /// A refresh from the meta API during this run.
    Refreshed,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::Shipped => "shipped snapshot",
            Source::Snapshot => "snapshot file",
            Source::Cached => "cached refresh",
            Source::Refreshed => "refreshed",
        })
    }
}

/// A set of GitHub's prefixes and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ranges {
    pub prefixes: BTreeSet<IpNet>,
    pub source: Source,
    /// When the set was fetched (RFC 3339), or the date a snapshot says it was taken.
    pub as_of: Option<String>,
}

impl Ranges {
    /// No ranges at all (`[github] ranges = "off"`).
    pub fn none() -> Self {
        Self {
            prefixes: BTreeSet::new(),
            source: Source::Shipped,
            as_of: None,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MetaError {
    #[error("not a JSON object: {0}")]
    NotJson(String),
    #[error("the list {0:?} is missing or not a list of strings")]
    MissingList(String),
    #[error("{list}[{index}]: {value:?} is not an address or prefix")]
    BadPrefix {
        list: String,
        index: usize,
        value: String,
    },
    #[error("{0} is wider than GitHub's ranges can be (refusing the whole answer)")]
    TooWide(IpNet),
    #[error("the lists hold no prefix at all")]
    Empty,
    #[error("the lists hold {0} prefixes, more than the kernel's guard set holds ({MAX_PREFIXES})")]
    TooMany(usize),
}

/// The prefixes of `lists` in a meta API answer. All or nothing: one bad entry refuses the whole
/// answer, so a broken or hostile answer can never shrink or widen the set in force.
pub fn parse_meta(text: &str, lists: &[String]) -> Result<BTreeSet<IpNet>, MetaError> {
    let doc: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(text).map_err(|e| MetaError::NotJson(e.to_string()))?;
    let mut out = BTreeSet::new();
    for list in lists {
        let entries = doc
            .get(list)
            .and_then(|v| v.as_array())
            .ok_or_else(|| MetaError::MissingList(list.clone()))?;
        for (index, entry) in entries.iter().enumerate() {
            let value = entry
                .as_str()
                .ok_or_else(|| MetaError::MissingList(list.clone()))?;
            let net = parse_prefix(value).ok_or_else(|| MetaError::BadPrefix {
                list: list.clone(),
                index,
                value: value.chars().take(64).collect(),
            })?;
            let too_wide = match net {
                IpNet::V4(n) => n.prefix_len() < MIN_PREFIX_V4,
                IpNet::V6(n) => n.prefix_len() < MIN_PREFIX_V6,
            };
            if too_wide {
                return Err(MetaError::TooWide(net));
            }
            out.insert(net.trunc());
        }
    }
    if out.is_empty() {
        return Err(MetaError::Empty);
    }
    if out.len() > MAX_PREFIXES {
        return Err(MetaError::TooMany(out.len()));
    }
    Ok(out)
}

/// `a.b.c.d/n`, `x::/n`, or a bare address (GitHub lists some as such).
fn parse_prefix(s: &str) -> Option<IpNet> {
    let s = s.trim();
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
}

/// The date a snapshot says it was taken (`_ghgate.published_by_github_no_later_than`).
fn snapshot_date(text: &str) -> Option<String> {
    let doc: serde_json::Value = serde_json::from_str(text).ok()?;
    let note = doc.get("_ghgate")?;
    note.get("published_by_github_no_later_than")
        .or_else(|| note.get("date"))
        .and_then(|v| v.as_str())
        .map(str::to_owned)
}

/// What a refresh leaves in `state_dir`, so the next start begins from it.
#[derive(Debug, Serialize, Deserialize)]
struct Cache {
    fetched_at: String,
    url: String,
    lists: Vec<String>,
    prefixes: Vec<IpNet>,
}

pub fn cache_path(state_dir: &Path) -> PathBuf {
    state_dir.join(CACHE_FILE)
}

/// The set to start from: the cached refresh (when it was fetched from the configured URL for
/// the configured lists), else the configured snapshot, else the shipped one.
pub fn initial(config: &GithubConfig, state_dir: &Path) -> anyhow::Result<Ranges> {
    use anyhow::Context as _;
    if !config.enabled() {
        return Ok(Ranges::none());
    }
    if let Some(cache) = std::fs::read_to_string(cache_path(state_dir))
        .ok()
        .and_then(|t| serde_json::from_str::<Cache>(&t).ok())
        .filter(|c| c.url == config.meta_url && c.lists == config.meta_lists && !c.prefixes.is_empty())
    {
        return Ok(Ranges {
            prefixes: cache.prefixes.into_iter().collect(),
            source: Source::Cached,
            as_of: Some(cache.fetched_at),
        });
    }
    let (text, source) = match &config.snapshot {
        Some(path) => (
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read [github] snapshot {}", path.display()))?,
            Source::Snapshot,
        ),
        None => (SHIPPED.to_owned(), Source::Shipped),
    };
    let prefixes = parse_meta(&text, &config.meta_lists).with_context(|| match &config.snapshot {
        Some(path) => format!("[github] snapshot {}", path.display()),
        None => "the shipped GitHub ranges snapshot".to_owned(),
    })?;
    Ok(Ranges {
        prefixes,
        source,
        as_of: snapshot_date(&text),
    })
}

/// Keeps a good refresh for the next start (written atomically; a failure only loses the cache).
pub fn save(state_dir: &Path, config: &GithubConfig, ranges: &Ranges) -> std::io::Result<()> {
    let cache = Cache {
        fetched_at: ranges.as_of.clone().unwrap_or_default(),
        url: config.meta_url.clone(),
        lists: config.meta_lists.clone(),
        prefixes: ranges.prefixes.iter().copied().collect(),
    };
    let path = cache_path(state_dir);
    let tmp = path.with_extension("json.tmp");
    std::fs::write(
        &tmp,
        serde_json::to_vec_pretty(&cache).map_err(std::io::Error::other)?,
    )?;
    std::fs::rename(&tmp, &path)
}

/// What a refresh found, for the log.
#[derive(Debug, PartialEq, Eq)]
pub struct Change {
    pub added: usize,
    pub removed: usize,
}

/// How `next` differs from `current`.
pub fn change(current: &BTreeSet<IpNet>, next: &BTreeSet<IpNet>) -> Change {
    Change {
        added: next.difference(current).count(),
        removed: current.difference(next).count(),
    }
}

/// A summary for `ghgate status` (written by the running gateway into its metrics file).
pub fn summary(ranges: &Ranges, last_error: Option<&str>) -> serde_json::Value {
    let mut by_family: BTreeMap<&str, usize> = BTreeMap::new();
    for p in &ranges.prefixes {
        *by_family
            .entry(if p.addr().is_ipv4() { "ipv4" } else { "ipv6" })
            .or_default() += 1;
    }
    let fetched = matches!(ranges.source, Source::Refreshed | Source::Cached);
    serde_json::json!({
        "source": ranges.source,
        "as_of": ranges.as_of,
        "fetched_at": if fetched { ranges.as_of.clone() } else { None },
        "prefixes": ranges.prefixes.len(),
        "by_family": by_family,
        "last_refresh_error": last_error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lists(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_shipped_snapshot_parses_with_the_default_lists() {
        let config = GithubConfig::default();
        let set = parse_meta(SHIPPED, &config.meta_lists).unwrap();
        // GitHub's own prefixes, v4 and v6, and the Azure front ends they publish one by one.
        for p in [
            "140.82.112.0/20",
            "185.199.108.0/22",
            "2a0a:a440::/29",
            "20.201.28.151/32",
        ] {
            assert!(set.contains(&p.parse().unwrap()), "{p} missing");
        }
        assert!(set.len() > 50, "{}", set.len());
        assert!(set.len() < 400, "{}", set.len());
        assert_eq!(snapshot_date(SHIPPED).as_deref(), Some("2026-07-23"));
    }

    #[test]
    fn a_bad_answer_is_refused_whole() {
        let l = lists(&["api", "git"]);
        type Check = fn(&MetaError) -> bool;
        let cases: [(&str, Check); 7] = [
            ("<html>rate limited</html>", |e| {
                matches!(e, MetaError::NotJson(_))
            }),
            (
                r#"{"api": ["140.82.112.0/20"]}"#,
                |e| matches!(e, MetaError::MissingList(l) if l == "git"),
            ),
            (r#"{"api": ["140.82.112.0/20"], "git": "nope"}"#, |e| {
                matches!(e, MetaError::MissingList(_))
            }),
            (
                r#"{"api": ["140.82.112.0/20"], "git": ["140.82.999.0/20"]}"#,
                |e| matches!(e, MetaError::BadPrefix { index: 0, .. }),
            ),
            (r#"{"api": ["0.0.0.0/0"], "git": []}"#, |e| {
                matches!(e, MetaError::TooWide(_))
            }),
            (r#"{"api": ["2000::/3"], "git": []}"#, |e| {
                matches!(e, MetaError::TooWide(_))
            }),
            (r#"{"api": [], "git": []}"#, |e| *e == MetaError::Empty),
        ];
        for (text, ok) in cases {
            let err = parse_meta(text, &l).unwrap_err();
            assert!(ok(&err), "{text}: {err}");
        }
    }

    #[test]
    fn bare_addresses_and_host_bits_are_normalised() {
        let set = parse_meta(
            r#"{"api": ["192.0.2.1", "140.82.112.7/20", "2606:50c0::1/32"]}"#,
            &lists(&["api"]),
        )
        .unwrap();
        let got: Vec<String> = set.iter().map(|p| p.to_string()).collect();
        assert_eq!(got, ["140.82.112.0/20", "192.0.2.1/32", "2606:50c0::/32"]);
    }

    #[test]
    fn the_cache_wins_only_for_the_same_url_and_lists() {
        let dir = tempfile::tempdir().unwrap();
        let config = GithubConfig::default();
        let fresh = Ranges {
            prefixes: ["198.51.100.0/24".parse().unwrap()].into(),
            source: Source::Refreshed,
            as_of: Some("2026-12-05T10:00:00Z".into()),
        };
        save(dir.path(), &config, &fresh).unwrap();
        let got = initial(&config, dir.path()).unwrap();
        assert_eq!(got.source, Source::Cached);
        assert_eq!(got.prefixes, fresh.prefixes);
        assert_eq!(got.as_of.as_deref(), Some("2026-12-05T10:00:00Z"));

        let other = GithubConfig {
            meta_lists: lists(&["api"]),
            ..GithubConfig::default()
        };
        let got = initial(&other, dir.path()).unwrap();
        assert_eq!(got.source, Source::Shipped, "a cache of other lists is not used");
    }

    #[test]
    fn a_snapshot_file_replaces_the_shipped_one() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("meta.json");
        std::fs::write(
            &file,
            r#"{"api": ["127.77.0.0/24"], "git": [], "web": [], "copilot": []}"#,
        )
        .unwrap();
        let config = GithubConfig {
            snapshot: Some(file),
            ..GithubConfig::default()
        };
        let got = initial(&config, dir.path()).unwrap();
        assert_eq!(got.source, Source::Snapshot);
        assert_eq!(got.prefixes.len(), 1);
        let off = GithubConfig {
            ranges: crate::config::RangesMode::Off,
            ..GithubConfig::default()
        };
        assert!(initial(&off, dir.path()).unwrap().prefixes.is_empty());
    }
}
