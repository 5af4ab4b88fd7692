//! The detection engine and the streaming scan every masker shares.
//!
//! A keyword prefilter (aho-corasick, ASCII case-insensitive) finds the only places where a
//! secret can begin: every rule's match begins with one of its keywords. At such a place, a lazy
//! DFA of the rules, anchored there, says whether a match begins there and — the point of using
//! it — whether the bytes seen so far *decide* that: once the DFA is dead (or the stream has
//! ended) no later byte can change the answer. (A rule whose bounded repetitions would make the
//! shared DFA large gets a DFA of its own, run only where one of its keywords begins: see
//! [`Group`].) Only then does the meta regex run, anchored, for
//! the rule and its `secret` group. Bytes before an undecided place are released; the place and
//! what follows are held until more bytes (or the end) decide it. So the output never depends on
//! how the stream was chunked, and what is held is bounded by the longest possible secret.
//!
//! Must never: hold bytes that no keyword makes undecided, emit a byte of a secret it found,
//! or panic on any input.
use std::{
    cell::RefCell,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

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
    /// The lazy DFAs: the first is every rule's that is small enough to share one.
    groups: Vec<Group>,
    /// Scratch of streams that have ended, for the next ones: a fresh DFA cache costs more to
    /// set up (zeroed sparse sets, the start states) than masking a URL or a log field does.
    spare: Mutex<Spare>,
    /// Tells this compilation's scratches from another's in a thread's own ([`LOCAL`]).
    id: u64,
}

/// Ids of compilations.
static COMPILATIONS: AtomicU64 = AtomicU64::new(0);

/// Compilations a thread keeps a one-shot scratch for; past it, the least recently used is
/// dropped (a compilation replaced by a reload of the rules leaves its scratch behind).
const LOCAL_SCRATCHES: usize = 2;
/// A thread keeps no one-shot scratch whose DFA caches grew past this (a long text's scan):
/// such a scratch goes to the shared spares, whose memory budget decides.
const LOCAL_SCRATCH_BYTES: usize = 1 << 20;

thread_local! {
    /// Each thread's one-shot scratches, by compilation id, least recently used first.
    static LOCAL: RefCell<Vec<(u64, Scratch)>> = const { RefCell::new(Vec::new()) };
}

/// A lazy DFA over some of the rules.
///
/// A DFA cache's sparse sets are sized by the DFA's NFA, and every fresh cache zeroes them.
/// Bounded repetitions make NFA states: the `jwt` rule's `{8,4000}…{8,8000}` alone compiles to
/// about 26,000 states, against about 6,000 for all the ordinary rules together. So a rule over
/// [`OWN_DFA_POSITIONS`] gets a DFA (and, in each stream's scratch, a cache) of its own, which
/// is only started where one of its keywords begins; the ordinary rules share the first DFA.
///
/// The DFAs decide together what the one DFA of every rule would: a match begins at a place if
/// one of them matches there, and the bytes decide it once every DFA started there is dead.
/// Which rule matched is still the meta regex's to say, in rule order.
struct Group {
    dfa: hybrid::dfa::DFA,
    /// The keywords, lowercased, one of which begins every match of the group's rules; `None`
    /// for the shared group, which is started at every keyword.
    gate: Option<Vec<Vec<u8>>>,
}

impl Group {
    /// Whether a match of this group's rules may begin at the start of `rest`.
    fn may_begin(&self, rest: &[u8]) -> bool {
        let Some(keywords) = &self.gate else {
            return true;
        };
        keywords.iter().any(|k| {
            let n = k.len().min(rest.len());
            // Cut by the end of what has arrived: more bytes will tell.
            rest[..n].eq_ignore_ascii_case(&k[..n])
        })
    }
}

/// A rule whose regex spans more positions than this (a bounded repetition counts its body
/// that many times) gets a DFA of its own.
const OWN_DFA_POSITIONS: u64 = 2048;

/// About how many NFA states a regex compiles to: its literal bytes and classes, a bounded
/// repetition's body counted as many times as it may repeat.
fn positions(hir: &regex_syntax::hir::Hir) -> u64 {
    use regex_syntax::hir::HirKind;
    match hir.kind() {
        HirKind::Empty | HirKind::Look(_) | HirKind::Class(_) => 1,
        HirKind::Literal(l) => l.0.len() as u64,
        HirKind::Repetition(r) => positions(&r.sub).saturating_mul(u64::from(r.max.unwrap_or(r.min).max(1))),
        HirKind::Capture(c) => positions(&c.sub),
        HirKind::Concat(v) | HirKind::Alternation(v) => v.iter().map(positions).fold(0, u64::saturating_add),
    }
}

/// Scratches kept for the next streams, and what their DFA caches hold.
struct Spare {
    scratches: Vec<Scratch>,
    bytes: usize,
    /// [`MAX_SPARE_BYTES`] (tests lower it).
    max_bytes: usize,
}

/// The most spare scratches kept: about one per stream masked at once. Past it, every further
/// stream builds its DFA caches again, which costs ten times what masking a small body does
/// (`ghgate-bench mask`, case (d)).
const MAX_SPARE: usize = 128;
/// The most memory the spare scratches' DFA caches may hold together. A cache of the shared
/// DFA holds about 110 KiB after ordinary use (most of it the sparse sets, 16 bytes per NFA
/// state); one that a long scan grew may hold up to the
/// configured capacity, and is dropped rather than kept past this.
const MAX_SPARE_BYTES: usize = 16 << 20;

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
        let (keywords, regex, groups) = if patterns.is_empty() {
            (None, None, Vec::new())
        } else {
            let ac = Keywords::new(rules)?;
            let regex = meta::Regex::builder()
                .syntax(syntax_config())
                // Only ever run anchored at a keyword: an unanchored prefilter would be built
                // (at some cost per start) and never used.
                .configure(meta::Config::new().utf8_empty(false).auto_prefilter(false))
                .build_many(&patterns)
                .map_err(|e| CompileError::Set(e.to_string()))?;
            (Some(ac), Some(regex), groups(rules)?)
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
            groups,
            spare: Mutex::new(Spare {
                scratches: Vec::new(),
                bytes: 0,
                max_bytes: MAX_SPARE_BYTES,
            }),
            id: COMPILATIONS.fetch_add(1, Ordering::Relaxed),
        })
    }

    /// Runs a one-shot scan (a header value, a URL, a log field) with a scratch of this
    /// thread's own, taken and given back without the spares' lock. Threads that mask many short
    /// texts at once contended for that lock: with two threads, each call took ten times as
    /// long as with one. A scratch too large to keep, or one more of these rules' than the one
    /// this thread keeps (a scan nested in another), goes to the spares as a stream's does.
    pub(crate) fn with_scratch<R>(&self, scan: impl FnOnce(&mut Scratch) -> R) -> R {
        let mine = LOCAL
            .try_with(|local| {
                let mut local = local.try_borrow_mut().ok()?;
                let at = local.iter().position(|(id, _)| *id == self.id)?;
                Some(local.remove(at).1)
            })
            .ok()
            .flatten();
        let mut scratch = mine.unwrap_or_else(|| self.take_scratch());
        let out = scan(&mut scratch);
        // A run belongs to its scan's offsets: never resumed by another.
        scratch.run = None;
        let bytes: usize = scratch.caches.iter().flatten().map(|c| c.memory_usage()).sum();
        let mut back = Some(scratch);
        if bytes <= LOCAL_SCRATCH_BYTES {
            let _ = LOCAL.try_with(|local| {
                if let Ok(mut local) = local.try_borrow_mut()
                    && !local.iter().any(|(id, _)| *id == self.id)
                {
                    if local.len() >= LOCAL_SCRATCHES {
                        local.remove(0);
                    }
                    local.extend(back.take().map(|s| (self.id, s)));
                }
            });
        }
        if let Some(scratch) = back {
            self.give_back(scratch);
        }
        out
    }

    /// Scratch for a new stream: a spare one if there is one (its DFA cache keeps the states it
    /// has built, which are valid for any input), else a new one.
    pub(crate) fn take_scratch(&self) -> Scratch {
        self.spare
            .lock()
            .ok()
            .and_then(|mut s| {
                let scratch = s.scratches.pop()?;
                s.bytes -= scratch.bytes;
                Some(scratch)
            })
            .unwrap_or_else(Scratch::new)
    }

    /// A stream has ended: its scratch serves the next one, if the spares have room for it.
    pub(crate) fn give_back(&self, mut scratch: Scratch) {
        // A run belongs to its stream's offsets: never resumed by another.
        scratch.run = None;
        scratch.bytes = scratch.caches.iter().flatten().map(|c| c.memory_usage()).sum();
        if let Ok(mut s) = self.spare.lock()
            && s.scratches.len() < MAX_SPARE
            && s.bytes + scratch.bytes <= s.max_bytes
        {
            s.bytes += scratch.bytes;
            s.scratches.push(scratch);
        }
    }

    /// The lazy DFAs' NFA sizes, shared group first (for tests).
    #[cfg(test)]
    fn nfa_states(&self) -> Vec<usize> {
        self.groups
            .iter()
            .map(|g| g.dfa.get_nfa().states().len())
            .collect()
    }

    pub(crate) fn rule_ids(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|r| &*r.id)
    }
}

/// The rules' lazy DFAs: the shared one first, then one per rule too large to share it.
fn groups(rules: &Rules) -> Result<Vec<Group>, CompileError> {
    let build = |patterns: &[&str]| {
        hybrid::dfa::Builder::new()
            .syntax(syntax_config())
            .thompson(regex_automata::nfa::thompson::Config::new().utf8(false))
            .configure(hybrid::dfa::Config::new().cache_capacity(8 << 20))
            .build_many(patterns)
            .map_err(|e| CompileError::Set(e.to_string()))
    };
    let (mut shared, mut own) = (Vec::new(), Vec::new());
    for r in rules.iter() {
        let hir = syntax::parse_with(&r.regex, &syntax_config()).map_err(|e| CompileError::Regex {
            rule: r.id.clone(),
            error: e.to_string(),
        })?;
        if positions(&hir) > OWN_DFA_POSITIONS {
            own.push(r);
        } else {
            shared.push(r.regex.as_str());
        }
    }
    let mut groups = Vec::with_capacity(1 + own.len());
    if !shared.is_empty() {
        groups.push(Group {
            dfa: build(&shared)?,
            gate: None,
        });
    }
    for r in own {
        groups.push(Group {
            dfa: build(&[r.regex.as_str()])?,
            gate: Some(
                r.keywords
                    .iter()
                    .map(|k| k.to_ascii_lowercase().into_bytes())
                    .collect(),
            ),
        });
    }
    Ok(groups)
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

/// Lazy-DFA runs anchored at one place, kept so the next push continues them instead of
/// starting over.
struct Run {
    at: u64,
    /// Every group's DFA that is not dead yet has been fed the bytes up to here.
    fed_to: u64,
    matched: bool,
    live: Vec<Live>,
}

/// A group's DFA still running.
struct Live {
    group: usize,
    sid: LazyStateID,
    /// Its cache's clear count when `sid` was taken: a cleared cache forgets its states.
    clears: usize,
}

/// Per-stream scratch: a DFA cache per group (built when first needed), captures, a resumable
/// run.
pub(crate) struct Scratch {
    caches: Vec<Option<hybrid::dfa::Cache>>,
    caps: Option<Captures>,
    run: Option<Run>,
    /// What the caches held when the scratch was last given back.
    bytes: usize,
}

impl Scratch {
    pub(crate) fn new() -> Scratch {
        Scratch {
            caches: Vec::new(),
            caps: None,
            run: None,
            bytes: 0,
        }
    }

    /// The cache of group `g`, built on first use.
    fn cache(&mut self, g: usize, dfa: &hybrid::dfa::DFA) -> &mut hybrid::dfa::Cache {
        if self.caches.len() <= g {
            self.caches.resize_with(g + 1, || None);
        }
        self.caches[g].get_or_insert_with(|| dfa.create_cache())
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

/// The first place at or after `pos` in `buf` where a keyword of `compiled` (or an exact value)
/// begins. Nothing is a secret that does not begin at one.
pub(crate) fn next_keyword(
    compiled: &Compiled,
    exact: Option<&Exact>,
    buf: &[u8],
    pos: usize,
) -> Option<usize> {
    let rules = compiled.keywords.as_ref().and_then(|k| k.find(buf, pos));
    let exact = exact.and_then(|e| e.ac.find(AcInput::new(buf).range(pos..)).map(|m| m.start()));
    match (rules, exact) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

impl Scan<'_> {
    fn next_keyword(&self, buf: &[u8], pos: usize) -> Option<usize> {
        next_keyword(self.compiled, self.exact, buf, pos)
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
        let Some(regex) = &self.compiled.regex else {
            return Decision::NoSecret;
        };
        let groups = &self.compiled.groups;
        let at = self.base + t as u64;
        let caches = &self.scratch.caches;
        let resumed = self.scratch.run.take().filter(|r| {
            r.at == at
                && r.fed_to >= at
                && r.live.iter().all(|l| {
                    caches
                        .get(l.group)
                        .and_then(Option::as_ref)
                        .is_some_and(|c| c.clear_count() == l.clears)
                })
        });
        let (from, mut matched, mut live) = match resumed {
            Some(r) => ((r.fed_to - self.base) as usize, r.matched, r.live),
            None => {
                let mut live = Vec::new();
                for (g, group) in groups.iter().enumerate() {
                    if !group.may_begin(&buf[t..]) {
                        continue;
                    }
                    let cache = self.scratch.cache(g, &group.dfa);
                    let input = Input::new(buf).range(t..).anchored(Anchored::Yes);
                    match group.dfa.start_state_forward(cache, &input) {
                        Ok(sid) => live.push(Live {
                            group: g,
                            sid,
                            clears: 0,
                        }),
                        Err(_) => return self.decide_by_regex(regex, buf, t),
                    }
                }
                (t, false, live)
            }
        };
        // Each DFA in turn, up to the end of what has arrived or its death.
        let mut k = 0;
        while k < live.len() {
            let l = &mut live[k];
            let dfa = &groups[l.group].dfa;
            let cache = self.scratch.cache(l.group, dfa);
            let mut dead = false;
            for &b in &buf[from..] {
                l.sid = match dfa.next_state(cache, l.sid, b) {
                    Ok(s) => s,
                    Err(_) => return self.decide_by_regex(regex, buf, t),
                };
                if l.sid.is_match() {
                    matched = true;
                }
                if l.sid.is_dead() || l.sid.is_quit() {
                    dead = true;
                    break;
                }
            }
            if dead {
                live.swap_remove(k);
            } else {
                l.clears = cache.clear_count();
                k += 1;
            }
        }
        if !live.is_empty() {
            if !self.final_ {
                self.scratch.run = Some(Run {
                    at,
                    fed_to: self.base + buf.len() as u64,
                    matched,
                    live,
                });
                return Decision::Undecided;
            }
            for l in &live {
                let dfa = &groups[l.group].dfa;
                match dfa.next_eoi_state(self.scratch.cache(l.group, dfa), l.sid) {
                    Ok(s) if s.is_match() => matched = true,
                    Ok(_) => {}
                    Err(_) => return self.decide_by_regex(regex, buf, t),
                }
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
    fn long_rules_get_dfas_of_their_own_and_the_shared_one_stays_small() {
        let c = Compiled::new(&Rules::builtin()).unwrap();
        let own: Vec<&str> = c
            .groups
            .iter()
            .filter_map(|g| g.gate.as_ref())
            .map(|gate| std::str::from_utf8(&gate[0]).unwrap())
            .collect();
        assert_eq!(own, ["ghs_", "eyj"]);
        let states = c.nfa_states();
        // Every fresh cache zeroes four sparse sets of 4 bytes per state of its NFA.
        assert!(states[0] < 8_000, "{states:?}");
        assert!(states[1..].iter().all(|&n| n > 20_000), "{states:?}");
    }

    /// Scans `text` (whole) with `scratch`.
    fn scan(c: &Compiled, scratch: &mut Scratch, text: &[u8]) {
        Scan {
            compiled: c,
            exact: None,
            scratch,
            base: 0,
            final_: true,
        }
        .step(text, 0);
    }

    #[test]
    fn only_a_rules_keyword_starts_its_own_dfa() {
        let c = Compiled::new(&Rules::builtin()).unwrap();
        let mut scratch = Scratch::new();
        scan(&c, &mut scratch, b"let token = config.lookup(name);");
        assert!(scratch.caches.len() == 1 && scratch.caches[0].is_some());
        scan(&c, &mut scratch, b"let token = eyJhbGciOi.x;");
        assert!(scratch.caches.len() == 3 && scratch.caches[1].is_none() && scratch.caches[2].is_some());
        // A keyword cut by the end of what has arrived may still be the rule's.
        assert!(c.groups[2].may_begin(b"ey") && c.groups[2].may_begin(b"EYJhbG"));
        assert!(!c.groups[2].may_begin(b"token"));
    }

    /// How many one-shot scratches this thread keeps, and whether one is `c`'s.
    fn local(c: &Compiled) -> (usize, bool) {
        LOCAL.with(|l| {
            let l = l.borrow();
            (l.len(), l.iter().any(|(id, _)| *id == c.id))
        })
    }

    #[test]
    fn one_shot_scans_keep_their_scratch_on_their_thread() {
        let text = b"password = lookup(name); token = next(); apiKey: 12";
        let (a, b, c) = (
            Compiled::new(&Rules::builtin()).unwrap(),
            Compiled::new(&Rules::builtin()).unwrap(),
            Compiled::new(&Rules::builtin()).unwrap(),
        );
        a.with_scratch(|s| scan(&a, s, text));
        // Kept on this thread, not among the spares, and found again warm.
        assert_eq!(local(&a), (1, true));
        assert!(a.spare.lock().unwrap().scratches.is_empty());
        a.with_scratch(|s| assert_eq!(s.caches.iter().flatten().count(), 1, "the warm cache"));
        // Taken out while in use: a nested scan of the same rules gets another, and the spares
        // keep whichever this thread has no room for.
        a.with_scratch(|outer| {
            assert_eq!(local(&a), (0, false));
            a.with_scratch(|inner| scan(&a, inner, text));
            scan(&a, outer, text);
        });
        assert_eq!(local(&a), (1, true));
        assert_eq!(a.spare.lock().unwrap().scratches.len(), 1);
        // Two compilations' scratches fit; a third's pushes out the least recently used.
        b.with_scratch(|s| scan(&b, s, text));
        assert_eq!((local(&a), local(&b)), ((2, true), (2, true)));
        c.with_scratch(|s| scan(&c, s, text));
        assert_eq!((local(&a).1, local(&b).1, local(&c).1), (false, true, true));
        // Another thread has its own.
        std::thread::scope(|t| {
            t.spawn(|| {
                assert_eq!(local(&b), (0, false));
                b.with_scratch(|s| scan(&b, s, text));
                assert_eq!(local(&b), (1, true));
            });
        });
    }

    #[test]
    fn spare_scratches_are_kept_for_many_streams_within_their_memory() {
        let c = Compiled::new(&Rules::builtin()).unwrap();
        let text = b"password = lookup(name); token = next(); apiKey: 12";
        let used = |n: usize| -> Vec<Scratch> {
            (0..n)
                .map(|_| {
                    let mut scratch = c.take_scratch();
                    scan(&c, &mut scratch, text);
                    scratch
                })
                .collect()
        };
        let taken = used(64);
        let per_scratch: usize = taken[0].caches.iter().flatten().map(|c| c.memory_usage()).sum();
        eprintln!("a scratch that masked a line holds {per_scratch} bytes");
        assert!(per_scratch > 0);
        for s in taken {
            c.give_back(s);
        }
        // All 64 are kept, and the next 64 streams build no cache.
        assert_eq!(c.spare.lock().unwrap().scratches.len(), 64);
        assert_eq!(c.spare.lock().unwrap().bytes, 64 * per_scratch);
        let again: Vec<Scratch> = (0..64).map(|_| c.take_scratch()).collect();
        assert!(again.iter().all(|s| s.caches.iter().flatten().count() == 1));
        assert_eq!(c.spare.lock().unwrap().bytes, 0);
        // Past the count or the memory budget, a scratch is dropped.
        drop(again);
        for s in used(MAX_SPARE + 10) {
            c.give_back(s);
        }
        let spare = c.spare.lock().unwrap();
        let kept = MAX_SPARE.min(MAX_SPARE_BYTES / per_scratch);
        assert_eq!((spare.scratches.len(), spare.bytes), (kept, kept * per_scratch));
        // However many fit in the memory budget.
        drop(spare);
        c.spare.lock().unwrap().max_bytes = 3 * per_scratch + per_scratch / 2;
        let all: Vec<Scratch> = (0..kept).map(|_| c.take_scratch()).collect();
        for s in all {
            c.give_back(s);
        }
        let spare = c.spare.lock().unwrap();
        assert_eq!((spare.scratches.len(), spare.bytes), (3, 3 * per_scratch));
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
