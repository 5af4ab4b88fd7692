//! The detection engine and the streaming scan every masker shares.
//!
//! A keyword prefilter (aho-corasick, ASCII case-insensitive) finds the only places where a
//! secret can begin: every rule's match begins with one of its keywords. At such a place, a lazy
//! DFA of all rules, anchored there, says whether a match begins there and — the point of using
//! it — whether the bytes seen so far *decide* that: once the DFA is dead (or the stream has
//! ended) no later byte can change the answer. Only then does the meta regex run, anchored, for
//! the rule and its `secret` group. Bytes before an undecided place are released; the place and
//! what follows are held until more bytes (or the end) decide it. So the output never depends on
//! how the stream was chunked, and what is held is bounded by the longest possible secret.
//!
//! Must never: hold bytes that no keyword makes undecided, emit a byte of a secret it found,
//! or panic on any input.
use std::sync::{Arc, Mutex};

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, Anchored as AcAnchored, Input as AcInput, MatchKind};
use regex_automata::{
    Anchored, Input,
    hybrid::{self, LazyStateID},
    meta,
    util::{captures::Captures, syntax},
};

use super::rules::{Extend, PEM_MAX, Rule, Rules, Validator, entropy};

/// Fewer bytes than this between a PEM header and its end are no key (an Ed25519 key in PKCS#8
/// is 64 base64 characters with its footer).
const PEM_MIN_BODY: usize = 48;

/// A rule set that failed to compile.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error("rule {rule:?}: invalid regex: {error}")]
    Regex { rule: String, error: String },
    #[error("rule {rule:?}: {why}")]
    Rule { rule: String, why: String },
    #[error("the rules do not compile together: {0}")]
    Set(String),
}

/// What the engine needs of each rule at match time.
struct RuleMeta {
    id: Arc<str>,
    validator: Validator,
    min_entropy: f64,
    extend: Extend,
}

/// Where keywords begin. A case-insensitive search over every keyword would rule out
/// aho-corasick's SIMD searcher (Teddy, up to 64 patterns), so the search is for a few short
/// case-sensitive probes — each keyword's first bytes (`gh`-style families share theirs), and
/// for a case-insensitive rule's keywords the lower, UPPER and Capitalized forms of their first
/// three or four letters — and each probe found is confirmed against the whole keyword. (So a
/// case-insensitive rule's keyword is found in those three casings, with camel case after them:
/// `apiKey`, `ApiKey`; `tOkEn` is not.) The probes go to aho-corasick in the order
/// [`super::teddy`] picks, which keeps its SIMD searcher fast on code.
struct Keywords {
    probes: AhoCorasick,
    /// Each keyword, and whether it is matched case-insensitively.
    list: Vec<(Vec<u8>, bool)>,
    /// For each byte, the keywords that can begin with it, in either case (indices into
    /// `list`): a probe found is confirmed against these only.
    by_first: Box<[Vec<usize>; 256]>,
}

impl Keywords {
    fn new(rules: &Rules) -> Result<Keywords, CompileError> {
        let mut list = Vec::new();
        let mut probes = std::collections::BTreeSet::new();
        for r in rules.iter() {
            let ci = r.regex.starts_with("(?i");
            for k in &r.keywords {
                let k = if ci { k.to_ascii_lowercase() } else { k.clone() };
                // Short enough that keyword families share a probe (`api_key`, `apikey`, `api-key`
                // → `api`; `xoxb-`, `xoxp-` → `xox`), long enough that probes are rare in code.
                let want = if ci {
                    if k.starts_with("api") || k.len() <= 4 {
                        3
                    } else {
                        4
                    }
                } else if k.starts_with("xox") || k.starts_with("sk_") || k.starts_with("rk_") {
                    3
                } else {
                    4
                };
                let prefix = &k.as_bytes()[..k.len().min(want)];
                if ci {
                    let lower = prefix.to_ascii_lowercase();
                    let mut capital = lower.clone();
                    capital[0] = capital[0].to_ascii_uppercase();
                    probes.extend([prefix.to_ascii_uppercase(), capital, lower]);
                } else {
                    probes.insert(prefix.to_vec());
                }
                list.push((k.into_bytes(), ci));
            }
        }
        let probes = AhoCorasickBuilder::new()
            .match_kind(MatchKind::LeftmostFirst)
            .build(super::teddy::order(probes.into_iter().collect()))
            .map_err(|e| CompileError::Set(e.to_string()))?;
        let lowered: Vec<Vec<u8>> = list.iter().map(|(k, _)| k.to_ascii_lowercase()).collect();
        let by_first = index_by_first(&lowered);
        Ok(Keywords {
            probes,
            list,
            by_first,
        })
    }

    /// The first place at or after `from` where a whole keyword begins.
    fn find(&self, buf: &[u8], from: usize) -> Option<usize> {
        let mut at = from;
        loop {
            let p = self.probes.find(AcInput::new(buf).range(at..))?.start();
            let rest = &buf[p..];
            let whole = self.by_first[usize::from(rest[0])].iter().any(|&i| {
                let (k, ci) = &self.list[i];
                rest.len() >= k.len()
                    && if *ci {
                        rest[..k.len()].eq_ignore_ascii_case(k)
                    } else {
                        rest[..k.len()] == k[..]
                    }
            });
            if whole {
                return Some(p);
            }
            at = p + 1;
        }
    }
}

/// The rules, compiled once and shared by every masker.
pub(crate) struct Compiled {
    rules: Vec<RuleMeta>,
    keywords: Option<Keywords>,
    /// Longest keyword, in bytes: a keyword may be cut by the end of what has arrived.
    max_keyword: usize,
    /// Every keyword, lowercased, to tell whether the end of what has arrived could begin one.
    keyword_list: Vec<Vec<u8>>,
    /// For each byte, the keywords of `keyword_list` that can begin with it (in either case).
    keyword_first: Box<[Vec<usize>; 256]>,
    regex: Option<meta::Regex>,
    dfa: Option<hybrid::dfa::DFA>,
    /// Scratch of streams that have ended, for the next ones: a fresh DFA cache costs more to
    /// set up (zeroed sparse sets, the start states) than masking a URL or a log field does.
    spare: Mutex<Vec<Scratch>>,
}

/// The most spare scratches kept (about one per stream masked at once; each holds a DFA cache
/// of at most the configured capacity, most far less).
const MAX_SPARE: usize = 16;

/// For each byte, the indices of the (lowercase) `keywords` that begin with it in either case.
fn index_by_first(keywords: &[Vec<u8>]) -> Box<[Vec<usize>; 256]> {
    let mut index: Box<[Vec<usize>; 256]> = Box::new(std::array::from_fn(|_| Vec::new()));
    for (i, k) in keywords.iter().enumerate() {
        let Some(&first) = k.first() else { continue };
        index[usize::from(first)].push(i);
        if first.to_ascii_uppercase() != first {
            index[usize::from(first.to_ascii_uppercase())].push(i);
        }
    }
    index
}

fn syntax_config() -> syntax::Config {
    syntax::Config::new().unicode(false).utf8(false)
}

impl Compiled {
    pub(crate) fn new(rules: &Rules) -> Result<Compiled, CompileError> {
        // The built-in rules are checked by a test; checking them here would cost every start
        // (the literal extraction is the slow part, and a gateway restart must be quick).
        for r in rules.iter().filter(|r| !r.builtin) {
            check_rule(r)?;
        }
        let patterns: Vec<&str> = rules.iter().map(|r| r.regex.as_str()).collect();
        let keywords: Vec<&str> = rules
            .iter()
            .flat_map(|r| r.keywords.iter().map(String::as_str))
            .collect();
        let max_keyword = keywords.iter().map(|k| k.len()).max().unwrap_or(0);
        let (keywords, regex, dfa) = if patterns.is_empty() {
            (None, None, None)
        } else {
            let ac = Keywords::new(rules)?;
            let regex = meta::Regex::builder()
                .syntax(syntax_config())
                // Only ever run anchored at a keyword: an unanchored prefilter would be built
                // (at some cost per start) and never used.
                .configure(meta::Config::new().utf8_empty(false).auto_prefilter(false))
                .build_many(&patterns)
                .map_err(|e| CompileError::Set(e.to_string()))?;
            let dfa = hybrid::dfa::Builder::new()
                .syntax(syntax_config())
                .thompson(regex_automata::nfa::thompson::Config::new().utf8(false))
                .configure(hybrid::dfa::Config::new().cache_capacity(8 << 20))
                .build_many(&patterns)
                .map_err(|e| CompileError::Set(e.to_string()))?;
            (Some(ac), Some(regex), Some(dfa))
        };
        let keyword_list: Vec<Vec<u8>> = rules
            .iter()
            .flat_map(|r| r.keywords.iter().map(|k| k.to_ascii_lowercase().into_bytes()))
            .collect();
        Ok(Compiled {
            rules: rules
                .iter()
                .map(|r| RuleMeta {
                    id: Arc::from(r.id.as_str()),
                    validator: r.validator,
                    min_entropy: r.min_entropy,
                    extend: r.extend,
                })
                .collect(),
            keyword_first: index_by_first(&keyword_list),
            keyword_list,
            keywords,
            max_keyword,
            regex,
            dfa,
            spare: Mutex::new(Vec::new()),
        })
    }

    /// Scratch for a new stream: a spare one if there is one (its DFA cache keeps the states it
    /// has built, which are valid for any input), else a new one.
    pub(crate) fn take_scratch(&self) -> Scratch {
        self.spare
            .lock()
            .ok()
            .and_then(|mut s| s.pop())
            .unwrap_or_else(Scratch::new)
    }

    /// A stream has ended: its scratch serves the next one.
    pub(crate) fn give_back(&self, mut scratch: Scratch) {
        // A run belongs to its stream's offsets: never resumed by another.
        scratch.run = None;
        if let Ok(mut s) = self.spare.lock()
            && s.len() < MAX_SPARE
        {
            s.push(scratch);
        }
    }

    pub(crate) fn rule_ids(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|r| &*r.id)
    }
}

/// A rule's own checks: its regex compiles, its id and keywords are usable, and its keywords
/// cover where its matches can begin.
fn check_rule(r: &Rule) -> Result<(), CompileError> {
    let fail = |why: String| CompileError::Rule {
        rule: r.id.clone(),
        why,
    };
    if r.id.is_empty()
        || !r
            .id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(fail("the id must be letters, digits, '-' or '_'".into()));
    }
    if r.keywords.is_empty() {
        return Err(fail(
            "at least one keyword is needed: every match must begin with one".into(),
        ));
    }
    if let Some(k) = r.keywords.iter().find(|k| k.len() < 2) {
        return Err(fail(format!("keyword {k:?} is too short (2 bytes at least)")));
    }
    let hir = syntax::parse_with(&r.regex, &syntax_config()).map_err(|e| CompileError::Regex {
        rule: r.id.clone(),
        error: e.to_string(),
    })?;
    if hir.properties().minimum_len() == Some(0) {
        return Err(fail("the regex can match the empty string".into()));
    }
    // Every match must begin with a keyword: check the regex's literal prefixes against them.
    use regex_syntax::hir::literal::{ExtractKind, Extractor};
    // Generous limits: case-insensitive keywords expand to every casing.
    let prefixes = Extractor::new()
        .kind(ExtractKind::Prefix)
        .limit_total(8192)
        .limit_class(64)
        .extract(&hir);
    let lower: Vec<Vec<u8>> = r
        .keywords
        .iter()
        .map(|k| k.to_ascii_lowercase().into_bytes())
        .collect();
    let Some(literals) = prefixes.literals() else {
        return Err(fail(
            "the regex must begin with one of the rule's keywords (it can begin with anything)".into(),
        ));
    };
    for lit in literals {
        let l = lit.as_bytes().to_ascii_lowercase();
        // An exact literal must start with a keyword; an inexact one (the extractor gave up
        // expanding) must at least be the start of one.
        let covered = lower
            .iter()
            .any(|k| l.starts_with(k) || (!lit.is_exact() && !l.is_empty() && k.starts_with(&l)));
        if !covered {
            return Err(fail(format!(
                "the regex can begin with {:?}, which starts with none of the keywords {:?}",
                String::from_utf8_lossy(lit.as_bytes()),
                r.keywords
            )));
        }
    }
    Ok(())
}

/// Exact values masked wherever they appear (brokered tokens, the caller's own credential).
pub(crate) struct Exact {
    ac: AhoCorasick,
    values: Vec<Vec<u8>>,
    labels: Vec<Arc<str>>,
    max_len: usize,
}

/// Exact values shorter than this are not masked: they would mangle ordinary text.
pub const MIN_EXACT_LEN: usize = 8;

impl Exact {
    pub(crate) fn new(values: &[(String, Vec<u8>)]) -> Option<Exact> {
        let kept: Vec<&(String, Vec<u8>)> = values.iter().filter(|(_, v)| v.len() >= MIN_EXACT_LEN).collect();
        if kept.is_empty() {
            return None;
        }
        let ac = AhoCorasickBuilder::new()
            .match_kind(MatchKind::LeftmostLongest)
            .start_kind(aho_corasick::StartKind::Both)
            .build(kept.iter().map(|(_, v)| v.as_slice()))
            .ok()?;
        Some(Exact {
            ac,
            max_len: kept.iter().map(|(_, v)| v.len()).max().unwrap_or(0),
            values: kept.iter().map(|(_, v)| v.clone()).collect(),
            labels: kept.iter().map(|(l, _)| Arc::from(l.as_str())).collect(),
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.values.len()
    }

    /// The (label, value) pairs, to build a larger set from.
    pub(crate) fn entries(&self) -> Vec<(String, Vec<u8>)> {
        self.labels
            .iter()
            .map(|l| l.to_string())
            .zip(self.values.iter().cloned())
            .collect()
    }
}

/// A secret the engine decided to mask: its place in the buffer and the rule that found it.
pub(crate) struct Hit {
    pub start: usize,
    pub end: usize,
    pub rule: Arc<str>,
}

/// What the bytes so far say about a place where a keyword begins.
enum Decision {
    /// More bytes are needed to know.
    Undecided,
    NoSecret,
    /// One or more secrets, in order (exact values inside a rule's match come before it).
    Secret(Vec<Hit>),
}

/// A lazy-DFA run anchored at one place, kept so the next push continues it instead of
/// starting over.
struct Run {
    at: u64,
    sid: LazyStateID,
    fed_to: u64,
    matched: bool,
    clears: usize,
}

/// Per-stream scratch: the DFA cache, captures, a resumable run.
pub(crate) struct Scratch {
    cache: Option<hybrid::dfa::Cache>,
    caps: Option<Captures>,
    run: Option<Run>,
}

impl Scratch {
    pub(crate) fn new() -> Scratch {
        Scratch {
            cache: None,
            caps: None,
            run: None,
        }
    }
}

/// The scanner over a buffer whose first byte is at stream offset `base`.
pub(crate) struct Scan<'a> {
    pub compiled: &'a Compiled,
    pub exact: Option<&'a Exact>,
    pub scratch: &'a mut Scratch,
    pub base: u64,
    pub final_: bool,
}

/// What one step of the scan found, from position `pos` on.
pub(crate) enum Step {
    /// Nothing undecided or secret up to `safe`: release the bytes before it.
    Release(usize),
    /// The bytes before `at` are clean; from `at` on, wait for more.
    Hold(usize),
    /// Secrets, in order: the bytes before the first one's start, and between them, are clean.
    Secret(Vec<Hit>),
}

impl Scan<'_> {
    /// The first place at or after `pos` where a keyword (or an exact value) begins.
    fn next_keyword(&self, buf: &[u8], pos: usize) -> Option<usize> {
        let rules = self.compiled.keywords.as_ref().and_then(|k| k.find(buf, pos));
        let exact = self
            .exact
            .and_then(|e| e.ac.find(AcInput::new(buf).range(pos..)).map(|m| m.start()));
        match (rules, exact) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The next step from `pos`.
    pub(crate) fn step(&mut self, buf: &[u8], pos: usize) -> Step {
        let mut from = pos;
        // A keyword (or exact value) cut by the end of what has arrived may begin before the
        // next whole one: nothing from there on is decided. Computed once, again only if the
        // scan moves past it.
        let mut partial = if self.final_ {
            buf.len()
        } else {
            self.partial_keyword(buf, from)
        };
        loop {
            if partial < from {
                partial = self.partial_keyword(buf, from);
            }
            let Some(k) = self.next_keyword(buf, from) else {
                return Step::Release(partial);
            };
            if partial < k {
                return Step::Hold(partial);
            }
            match self.decide(buf, k) {
                Decision::Undecided => return Step::Hold(k),
                Decision::NoSecret => from = k + 1,
                Decision::Secret(hit) => return Step::Secret(hit),
            }
        }
    }

    /// Where the end of `buf` (from `from` on) begins what could be the start of a keyword or
    /// an exact value that has not fully arrived; `buf.len()` when it cannot.
    fn partial_keyword(&self, buf: &[u8], from: usize) -> usize {
        let longest = self
            .compiled
            .max_keyword
            .max(self.exact.map_or(0, |e| e.max_len))
            .saturating_sub(1);
        let first = buf.len().saturating_sub(longest).max(from);
        (first..buf.len())
            .find(|&i| {
                let tail = &buf[i..];
                self.compiled.keyword_first[usize::from(tail[0])]
                    .iter()
                    .any(|&k| {
                        let k = &self.compiled.keyword_list[k];
                        k.len() > tail.len() && k[..tail.len()].eq_ignore_ascii_case(tail)
                    })
                    || self.exact.is_some_and(|e| {
                        e.values
                            .iter()
                            .any(|v| v.len() > tail.len() && v.starts_with(tail))
                    })
            })
            .unwrap_or(buf.len())
    }

    fn decide(&mut self, buf: &[u8], t: usize) -> Decision {
        if let Some(exact) = self.exact {
            match self.decide_exact(exact, buf, t) {
                Decision::NoSecret => {}
                other => return other,
            }
        }
        self.decide_rules(buf, t)
    }

    fn decide_exact(&self, exact: &Exact, buf: &[u8], t: usize) -> Decision {
        let rest = &buf[t..];
        let found = exact
            .ac
            .find(AcInput::new(buf).range(t..).anchored(AcAnchored::Yes));
        let longer_possible = |than: usize| {
            !self.final_
                && exact
                    .values
                    .iter()
                    .any(|v| v.len() > than && v.len() > rest.len() && v.starts_with(rest))
        };
        match found {
            Some(m) if !longer_possible(m.len()) => Decision::Secret(vec![Hit {
                start: m.start(),
                end: m.end(),
                rule: exact.labels[m.pattern().as_usize()].clone(),
            }]),
            Some(_) => Decision::Undecided,
            None if longer_possible(0) => Decision::Undecided,
            None => Decision::NoSecret,
        }
    }

    fn decide_rules(&mut self, buf: &[u8], t: usize) -> Decision {
        let (Some(dfa), Some(regex)) = (&self.compiled.dfa, &self.compiled.regex) else {
            return Decision::NoSecret;
        };
        let cache = self.scratch.cache.get_or_insert_with(|| dfa.create_cache());
        let at = self.base + t as u64;
        let resumed = self
            .scratch
            .run
            .take()
            .filter(|r| r.at == at && r.clears == cache.clear_count() && r.fed_to >= at);
        let (mut sid, mut i, mut matched) = match resumed {
            Some(r) => (r.sid, (r.fed_to - self.base) as usize, r.matched),
            None => {
                let input = Input::new(buf).range(t..).anchored(Anchored::Yes);
                match dfa.start_state_forward(cache, &input) {
                    Ok(sid) => (sid, t, false),
                    Err(_) => return self.decide_by_regex(regex, buf, t),
                }
            }
        };
        let mut decided = false;
        while i < buf.len() {
            sid = match dfa.next_state(cache, sid, buf[i]) {
                Ok(s) => s,
                Err(_) => return self.decide_by_regex(regex, buf, t),
            };
            i += 1;
            if sid.is_match() {
                matched = true;
            }
            if sid.is_dead() || sid.is_quit() {
                decided = true;
                break;
            }
        }
        if !decided {
            if !self.final_ {
                self.scratch.run = Some(Run {
                    at,
                    sid,
                    fed_to: self.base + i as u64,
                    matched,
                    clears: cache.clear_count(),
                });
                return Decision::Undecided;
            }
            match dfa.next_eoi_state(cache, sid) {
                Ok(s) if s.is_match() => matched = true,
                Ok(_) => {}
                Err(_) => return self.decide_by_regex(regex, buf, t),
            }
        }
        if !matched {
            return Decision::NoSecret;
        }
        self.decide_by_regex(regex, buf, t)
    }

    /// The rule and secret of the match anchored at `t`, extended and validated. Only called
    /// once the DFA has decided (or could not run: then the regex decides, in the final pass).
    fn decide_by_regex(&mut self, regex: &meta::Regex, buf: &[u8], t: usize) -> Decision {
        let caps = self.scratch.caps.get_or_insert_with(|| regex.create_captures());
        let input = Input::new(buf).range(t..).anchored(Anchored::Yes);
        regex.search_captures(&input, caps);
        let Some(m) = caps.get_match() else {
            return Decision::NoSecret;
        };
        let rule = &self.compiled.rules[m.pattern().as_usize()];
        let secret = ["secret", "secret2", "secret3"]
            .iter()
            .find_map(|name| caps.get_group_by_name(name))
            .unwrap_or(m.span());
        let (start, mut end) = (secret.start, secret.end);
        if rule.extend == Extend::PemBody {
            match pem_end(buf, t, m.end(), self.final_) {
                // A header with no key after it (code that looks for one, documentation).
                Some(e) if e - m.end() < PEM_MIN_BODY => return Decision::NoSecret,
                Some(e) => end = e,
                None => return Decision::Undecided,
            }
        }
        let bytes = &buf[start..end];
        if !rule.validator.check(bytes) || (rule.min_entropy > 0.0 && entropy(bytes) < rule.min_entropy) {
            return Decision::NoSecret;
        }
        let mut id = rule.id.clone();
        if rule.validator == Validator::Generic
            && let Some(specific) = self.specific_rule(regex, buf, start, end)
        {
            // `TOKEN=ghp_…`: the value is a GitHub token, and its record should say so.
            id = specific;
        }
        // Exact values (the caller's own credential) are masked wherever they are, also in the
        // part of a rule's match before its secret (`token_<value> = "…"`).
        let mut hits = Vec::new();
        let mut start = start;
        if let Some(exact) = self.exact {
            for m in exact
                .ac
                .find_iter(AcInput::new(&buf[..end]).range(t..start.max(t)))
            {
                if m.end() > start {
                    // It runs into the secret: one span covers both.
                    start = m.start();
                    break;
                }
                hits.push(Hit {
                    start: m.start(),
                    end: m.end(),
                    rule: exact.labels[m.pattern().as_usize()].clone(),
                });
            }
        }
        hits.push(Hit { start, end, rule: id });
        Decision::Secret(hits)
    }

    /// A rule other than the generic ones whose secret is exactly `buf[start..end]`.
    fn specific_rule(
        &mut self,
        regex: &meta::Regex,
        buf: &[u8],
        start: usize,
        end: usize,
    ) -> Option<Arc<str>> {
        let caps = self.scratch.caps.get_or_insert_with(|| regex.create_captures());
        regex.search_captures(&Input::new(buf).range(start..).anchored(Anchored::Yes), caps);
        let m = caps.get_match()?;
        let rule = &self.compiled.rules[m.pattern().as_usize()];
        let secret = ["secret", "secret2", "secret3"]
            .iter()
            .find_map(|name| caps.get_group_by_name(name))
            .unwrap_or(m.span());
        let specific = rule.validator != Validator::Generic
            && rule.extend == Extend::None
            && (secret.start, secret.end) == (start, end)
            && rule.validator.check(&buf[start..end]);
        specific.then(|| rule.id.clone())
    }
}

/// Where a PEM private key whose header starts at `start` (and ends at `header_end`) ends:
/// after its `-----END … PRIVATE KEY…-----` line, or else after the base64 body that follows
/// the header. `None` while the bytes so far do not decide it.
fn pem_end(buf: &[u8], start: usize, header_end: usize, final_: bool) -> Option<usize> {
    let limit = (start + PEM_MAX).min(buf.len());
    // Until PEM_MAX bytes (or the end) have arrived, a footer may still come.
    let complete = final_ || buf.len() >= start + PEM_MAX;
    let window = &buf[header_end..limit];
    if let Some(p) = memchr::memmem::find(window, b"-----END") {
        let footer_from = header_end + p + 8;
        let footer_window = &buf[footer_from..(footer_from + 40).min(buf.len())];
        match memchr::memmem::find(footer_window, b"-----") {
            Some(q) if memchr::memmem::find(&footer_window[..q], b"PRIVATE KEY").is_some() => {
                return Some(footer_from + q + 5);
            }
            Some(_) => {}
            None if !final_ && footer_from + 40 > buf.len() => return None,
            None => {}
        }
    }
    if !complete {
        return None;
    }
    // No footer: the key body is the run of base64 (and line breaks, escaped or not).
    let run = window.iter().position(|&b| {
        !(b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b'\r' | b'\n' | b'\\'))
    });
    let end = header_end + run.unwrap_or(window.len());
    // Never end on half of an escape (`\"` in JSON): the quote would lose its backslash.
    let backslashes = buf[header_end..end]
        .iter()
        .rev()
        .take_while(|&&b| b == b'\\')
        .count();
    Some(end - backslashes % 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_rule_passes_the_checks_custom_rules_get() {
        for r in Rules::builtin().iter() {
            check_rule(r).unwrap_or_else(|e| panic!("{e}"));
        }
    }

    #[test]
    fn the_builtin_keywords_fit_the_simd_searcher() {
        // Teddy takes at most 64 patterns; past that, clean text scans several times slower.
        let k = Keywords::new(&Rules::builtin()).unwrap();
        assert!(
            k.probes.patterns_len() <= 64,
            "{} probes",
            k.probes.patterns_len()
        );
        let text = b"let apiKey = 1; let API_KEY = 2; Token x; tOkEn y; ghp_";
        let found: Vec<usize> = std::iter::successors(k.find(text, 0), |&p| k.find(text, p + 1)).collect();
        let at = |s: &str| text.windows(s.len()).position(|w| w == s.as_bytes()).unwrap();
        assert_eq!(found, vec![at("apiKey"), at("API_KEY"), at("Token"), at("ghp_")]);
    }
}
