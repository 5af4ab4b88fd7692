//! `ghgate-bench mask`: how fast the secret masker is on one core, through its streaming API in
//! 16 KiB chunks, on (a) real source code from the local cargo registry, (b) the same code with a
//! secret planted every 10 KB, and (c) SSE chat-completion streams carrying secrets split across
//! events; and detect-secrets (PyPI, installed into target/bench on first use) on a sample of (a)
//! and of (b), which ghgate scans too, in the same run. Benchmarks report; they never assert.
//!
//! No secret is written in this file: every planted one is assembled at run time from a seeded
//! PRNG, checksums and split prefixes, so no scanner (ghgate's own included) flags the source.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, bail, ensure};
use ghgate::mask::{Finding, Masker, Rules};

#[derive(clap::Args)]
pub struct MaskArgs {
    /// Size of the source-code corpora (a) and (b), in MB (10^6 bytes); the SSE corpus (c) is
    /// half of it. The registry's text files are repeated if they hold less.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub mb: u64,
    /// Size of the samples of (a) and (b) that detect-secrets scans (and ghgate too, for a
    /// like-for-like ratio), in MB. detect-secrets scans about 0.1–0.2 MB/s.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub sample_mb: u64,
    /// Timed passes of ghgate over each corpus; each figure is the median of the passes.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub runs: u32,
    /// Skip detect-secrets (no PyPI install).
    #[arg(long)]
    pub no_detect_secrets: bool,
}

/// What the gateway's body hooks see at a time, about.
const CHUNK: usize = 16 * 1024;
/// Size of each body of (d): a small API response or source file.
const SMALL_BODY: usize = 2048;
/// Bodies of (d) per pass.
const SMALL_BODIES: usize = 8192;
/// Streams open at once in (d)'s other cases: as many as a busy runner's exchanges hold, and
/// more than a masker keeps spare scratch for (128).
const IN_FLIGHT: [usize; 2] = [64, 512];
/// One planted secret per this many bytes of (a).
const PLANT_EVERY: usize = 10_000;
const MB: f64 = 1e6;
const TARGET_MB_S: f64 = 1000.0;
const TARGET_RATIO: f64 = 50.0;
/// The registry's files taken as text: source code, docs, manifests, test data.
const TEXT_EXTENSIONS: &[&str] = &[
    "rs", "md", "toml", "txt", "json", "yml", "yaml", "c", "h", "cc", "cpp", "py", "sh", "js", "html",
];

// ---------------------------------------------------------------------------------------------
// Timing

/// One timed pass: wall-clock seconds and, where the kernel tells, CPU seconds of the thread.
#[derive(Clone, Copy)]
struct Timing {
    wall: f64,
    cpu: Option<f64>,
}

/// CPU time of the calling thread, in seconds (`/proc/thread-self/schedstat`, nanoseconds).
fn thread_cpu() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: u64 = text.split_whitespace().next()?.parse().ok()?;
    Some(ns as f64 / 1e9)
}

/// CPU time of this process's waited-for children, in seconds (`/proc/self/stat` cutime and
/// cstime, in the fixed USER_HZ of 100 ticks per second).
fn children_cpu() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // cutime and cstime are fields 16 and 17 of the whole line, 14 and 15 after the name.
    let ticks: u64 = fields.get(13)?.parse::<u64>().ok()? + fields.get(14)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, Timing) {
    let (cpu0, t0) = (thread_cpu(), Instant::now());
    let out = f();
    let wall = t0.elapsed().as_secs_f64();
    let cpu = thread_cpu().zip(cpu0).map(|(b, a)| b - a);
    (out, Timing { wall, cpu })
}

/// The throughput of a scan over `bytes`, from its timed passes.
struct Speed {
    bytes: usize,
    passes: Vec<Timing>,
}

impl Speed {
    /// MB per CPU-second: the per-core figure, unaffected by other work on the host. Falls back
    /// to wall-clock where the kernel does not report thread CPU time.
    fn per_core(&self) -> f64 {
        super::median(
            self.passes
                .iter()
                .map(|t| self.bytes as f64 / MB / t.cpu.unwrap_or(t.wall))
                .collect(),
        )
    }

    fn wall(&self) -> f64 {
        super::median(
            self.passes
                .iter()
                .map(|t| self.bytes as f64 / MB / t.wall)
                .collect(),
        )
    }
}

/// Masks `data` as one stream, fed in [`CHUNK`]s; checks every input byte is accounted for in
/// the output (passed through, or replaced by a finding's replacement).
fn mask_stream(masker: &Masker, data: &[u8]) -> anyhow::Result<Vec<Finding>> {
    let mut stream = masker.stream();
    let (mut out, mut out_len, mut found) = (Vec::with_capacity(2 * CHUNK), 0usize, Vec::new());
    for chunk in data.chunks(CHUNK) {
        found.extend(stream.push(chunk, &mut out));
        out_len += out.len();
        out.clear();
    }
    found.extend(stream.finish(&mut out));
    out_len += out.len();
    let want = data.len() + found.iter().map(|f| f.replacement().len()).sum::<usize>()
        - found.iter().map(|f| f.len).sum::<usize>();
    ensure!(
        out_len == want,
        "the masker wrote {out_len} bytes for {} bytes in with {} finding(s), expected {want}",
        data.len(),
        found.len()
    );
    Ok(found)
}

/// Masks each completion as one SSE stream, fed in [`CHUNK`]s.
fn mask_sse(masker: &Masker, completions: &[Completion]) -> anyhow::Result<Vec<Vec<Finding>>> {
    let mut out = Vec::with_capacity(4 * CHUNK);
    let mut all = Vec::with_capacity(completions.len());
    for c in completions {
        let mut stream = masker.sse_stream();
        let (mut found, mut out_len) = (Vec::new(), 0usize);
        for chunk in c.bytes.chunks(CHUNK) {
            found.extend(stream.push(chunk, &mut out));
            out_len += out.len();
            out.clear();
        }
        found.extend(stream.finish(&mut out));
        out_len += out.len();
        out.clear();
        ensure!(
            out_len >= c.bytes.len() / 2,
            "the SSE masker wrote {out_len} bytes for a {}-byte stream",
            c.bytes.len()
        );
        all.push(found);
    }
    Ok(all)
}

/// Masks `bodies` as one stream each, `in_flight` streams open at a time (as an exchange holds
/// its streams while it runs); returns the findings.
fn mask_small(masker: &Masker, bodies: &[&[u8]], in_flight: usize) -> usize {
    let mut out = Vec::with_capacity(2 * SMALL_BODY);
    let mut found = 0;
    for group in bodies.chunks(in_flight) {
        let mut streams: Vec<_> = group.iter().map(|_| masker.stream()).collect();
        for (stream, body) in streams.iter_mut().zip(group) {
            found += stream.push(body, &mut out).len();
            out.clear();
        }
        for stream in &mut streams {
            found += stream.finish(&mut out).len();
            out.clear();
        }
    }
    found
}

/// `runs` timed passes of `scan`; the findings are those of the last pass.
fn measure<T>(
    runs: u32,
    bytes: usize,
    mut scan: impl FnMut() -> anyhow::Result<T>,
) -> anyhow::Result<(Speed, T)> {
    let mut passes = Vec::new();
    let mut last = None;
    for _ in 0..runs {
        let (found, t) = timed(&mut scan);
        last = Some(found?);
        passes.push(t);
    }
    Ok((Speed { bytes, passes }, last.expect("runs ≥ 1")))
}

// ---------------------------------------------------------------------------------------------
// Corpora

/// A small deterministic PRNG (splitmix64): the planted secrets look random but are the same
/// every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick(&mut self, alphabet: &[u8], n: usize) -> String {
        (0..n)
            .map(|_| alphabet[self.below(alphabet.len())] as char)
            .collect()
    }
}

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const UPPER_B32: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
/// The five dashes of PEM armour, kept apart so that no PEM header is ever literal here.
const DASHES: &str = "-----";

fn base64(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let n = (c[0] as u32) << 16 | (*c.get(1).unwrap_or(&0) as u32) << 8 | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            s.push(if i <= c.len() {
                B64[(n >> (18 - 6 * i) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    s
}

/// The kinds of secret planted, in turn, with the rule that must find each.
#[derive(Clone, Copy)]
enum Kind {
    GithubPat,
    AwsKeyId,
    EcKey,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::GithubPat, Kind::AwsKeyId, Kind::EcKey];

    fn rule(self) -> &'static str {
        match self {
            Kind::GithubPat => "github-pat",
            Kind::AwsKeyId => "aws-access-key-id",
            Kind::EcKey => "private-key",
        }
    }

    fn make(self, rng: &mut Rng) -> String {
        match self {
            // A classic token: 30 random base62 characters and their CRC32 in 6 base62 digits.
            Kind::GithubPat => {
                let random = rng.pick(BASE62, 30);
                let mut crc = crc32fast::hash(random.as_bytes());
                let mut check = [b'0'; 6];
                for d in check.iter_mut().rev() {
                    *d = BASE62[(crc % 62) as usize];
                    crc /= 62;
                }
                format!("{}_{random}{}", "ghp", String::from_utf8_lossy(&check))
            }
            Kind::AwsKeyId => format!("AK{}{}", "IA", rng.pick(UPPER_B32, 16)),
            // The size of a P-256 key in SEC1 DER, as random bytes.
            Kind::EcKey => {
                let body: Vec<u8> = (0..121).map(|_| rng.next() as u8).collect();
                let b64 = base64(&body);
                let lines: Vec<&str> = b64
                    .as_bytes()
                    .chunks(64)
                    .map(|l| std::str::from_utf8(l).expect("base64 is ASCII"))
                    .collect();
                format!(
                    "{DASHES}BEGIN EC {0}KEY{DASHES}\n{1}\n{DASHES}END EC {0}KEY{DASHES}",
                    "PRIVATE ",
                    lines.join("\n")
                )
            }
        }
    }

    /// The line the secret is planted as, split around it.
    fn line(self) -> (&'static str, &'static str) {
        match self {
            Kind::EcKey => ("", "\n"),
            _ => ("let planted = \"", "\";\n"),
        }
    }
}

/// The unpacked sources of the local cargo registry.
fn registry_src() -> anyhow::Result<PathBuf> {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set")?;
    let src = home.join("registry").join("src");
    ensure!(
        src.is_dir(),
        "no cargo registry sources at {}: the corpus is made of them (a `cargo fetch` puts them there)",
        src.display()
    );
    Ok(src)
}

fn text_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let Ok(kind) = e.file_type() else { continue };
        let path = e.path();
        if kind.is_dir() {
            text_files(&path, out);
        } else if kind.is_file()
            && path
                .extension()
                .and_then(|x| x.to_str())
                .is_some_and(|x| TEXT_EXTENSIONS.contains(&x))
        {
            out.push(path);
        }
    }
}

/// Corpus (a): UTF-8 text files of the registry, in a fixed order that takes from every crate,
/// concatenated up to `size` bytes (repeated if they hold less).
struct Source {
    bytes: Vec<u8>,
    root: PathBuf,
    files: usize,
    /// Bytes before the corpus repeats.
    distinct: usize,
}

fn source_corpus(size: usize) -> anyhow::Result<Source> {
    let root = registry_src()?;
    let mut paths = Vec::new();
    text_files(&root, &mut paths);
    let mut paths: Vec<(u32, PathBuf)> = paths
        .into_iter()
        .map(|p| {
            let rel = p.strip_prefix(&root).unwrap_or(&p).to_string_lossy().into_owned();
            (crc32fast::hash(rel.as_bytes()), p)
        })
        .collect();
    paths.sort();
    let (mut bytes, mut files) = (Vec::with_capacity(size), 0);
    for (_, p) in &paths {
        if bytes.len() >= size {
            break;
        }
        let Ok(text) = std::fs::read(p) else { continue };
        if std::str::from_utf8(&text).is_ok() {
            bytes.extend_from_slice(&text);
            files += 1;
        }
    }
    ensure!(!bytes.is_empty(), "no UTF-8 text file under {}", root.display());
    let distinct = bytes.len().min(size);
    while bytes.len() < size {
        let n = (size - bytes.len()).min(distinct);
        bytes.extend_from_within(..n);
    }
    bytes.truncate(size);
    Ok(Source {
        bytes,
        root,
        files,
        distinct,
    })
}

/// A secret planted in corpus (b).
struct Plant {
    /// The secret's place in (b), and its length.
    offset: usize,
    len: usize,
    /// The place of the line it was planted as, whole.
    line: (usize, usize),
    kind: Kind,
}

/// Corpus (b): (a) with a line holding a secret after the first line break past every
/// [`PLANT_EVERY`] bytes.
fn plant(clean: &[u8], rng: &mut Rng) -> (Vec<u8>, Vec<Plant>) {
    let mut out = Vec::with_capacity(clean.len() + clean.len() / 50);
    let mut plants = Vec::new();
    let (mut from, mut mark) = (0, PLANT_EVERY);
    while mark < clean.len() {
        let Some(nl) = clean[mark..].iter().position(|&b| b == b'\n') else {
            break;
        };
        let at = mark + nl + 1;
        out.extend_from_slice(&clean[from..at]);
        let kind = Kind::ALL[plants.len() % Kind::ALL.len()];
        let (before, after) = kind.line();
        let line_start = out.len();
        out.extend_from_slice(before.as_bytes());
        let offset = out.len();
        let secret = kind.make(rng);
        out.extend_from_slice(secret.as_bytes());
        out.extend_from_slice(after.as_bytes());
        plants.push(Plant {
            offset,
            len: secret.len(),
            line: (line_start, out.len()),
            kind,
        });
        from = at;
        mark += PLANT_EVERY;
    }
    out.extend_from_slice(&clean[from..]);
    (out, plants)
}

/// Of the plants, how many a finding of the rule planted masked at their place, and how many
/// were masked inside another finding (one of the corpus's own PEM blocks, say, that the planted
/// line fell into) or by another rule.
fn planted_found(plants: &[Plant], found: &[Finding]) -> (usize, usize) {
    let at: BTreeMap<u64, &Finding> = found.iter().map(|f| (f.offset, f)).collect();
    let (mut right, mut covered) = (0, 0);
    for p in plants {
        let (start, end) = (p.offset as u64, (p.offset + p.len) as u64);
        if at.get(&start).is_some_and(|f| f.rule == p.kind.rule()) {
            right += 1;
        } else if at
            .range(..end)
            .next_back()
            .is_some_and(|(_, f)| f.offset + f.len as u64 > start)
        {
            covered += 1;
        }
    }
    (right, covered)
}

/// One chat completion, streamed as OpenAI does, with one secret split across its events.
struct Completion {
    bytes: Vec<u8>,
    events: usize,
    kind: Kind,
    secret: String,
    /// Events the secret's text is spread over.
    spread: usize,
}

/// Bytes of source text each completion's answer carries.
const COMPLETION_TEXT: usize = 3000;

fn chat_event(out: &mut Vec<u8>, id: usize, delta: &str, finish: &str) {
    out.extend_from_slice(
        format!(
            "data: {{\"id\":\"chatcmpl-{id:08}\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\
             \"model\":\"gpt-4o-mini\",\"system_fingerprint\":\"fp_0ba0d124f1\",\"choices\":[{{\"index\":0,\
             \"delta\":{delta},\"logprobs\":null,\"finish_reason\":{finish}}}]}}\n\n"
        )
        .as_bytes(),
    );
}

/// Corpus (c): completions whose answers are slices of `text` cut into tokens of 1–6
/// characters, one event each, with a secret (GitHub token or AWS key id, in turn) in the middle
/// of each answer; up to `size` bytes in all.
fn sse_corpus(text: &[u8], size: usize, rng: &mut Rng) -> Vec<Completion> {
    let mut completions = Vec::new();
    let (mut total, mut pos) = (0, 0);
    while total < size {
        if pos + COMPLETION_TEXT > text.len() {
            pos = 0;
        }
        let answer =
            String::from_utf8_lossy(&text[pos..(pos + COMPLETION_TEXT).min(text.len())]).into_owned();
        pos += COMPLETION_TEXT;
        let kind = [Kind::GithubPat, Kind::AwsKeyId][completions.len() % 2];
        let secret = kind.make(rng);
        let mut mid = answer.len() / 2;
        while !answer.is_char_boundary(mid) {
            mid += 1;
        }
        let at = answer[mid..].find(' ').map_or(answer.len(), |i| mid + i + 1);
        let answer = format!("{}{secret} {}", &answer[..at], &answer[at..]);
        let (secret_from, secret_to) = (at, at + secret.len());

        let id = completions.len();
        let mut bytes = Vec::with_capacity(COMPLETION_TEXT * 80);
        chat_event(&mut bytes, id, r#"{"role":"assistant","content":""}"#, "null");
        let (mut events, mut spread) = (1, 0);
        let chars: Vec<(usize, char)> = answer.char_indices().collect();
        let mut i = 0;
        while i < chars.len() {
            let j = (i + 1 + rng.below(6)).min(chars.len());
            let (from, to) = (chars[i].0, chars.get(j).map_or(answer.len(), |c| c.0));
            let token = serde_json::to_string(&answer[from..to]).expect("a string serialises");
            chat_event(&mut bytes, id, &format!("{{\"content\":{token}}}"), "null");
            events += 1;
            if from < secret_to && to > secret_from {
                spread += 1;
            }
            i = j;
        }
        chat_event(&mut bytes, id, "{}", "\"stop\"");
        bytes.extend_from_slice(b"data: [DONE]\n\n");
        total += bytes.len();
        completions.push(Completion {
            bytes,
            events: events + 2,
            kind,
            secret,
            spread,
        });
    }
    completions
}

/// The first `size` bytes of a corpus or less, cut at a line break and never inside a planted
/// line.
fn sample_end(corpus: &[u8], size: usize, plants: &[Plant]) -> usize {
    let mut end = corpus[..size.min(corpus.len())]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    if let Some(p) = plants.iter().find(|p| p.line.0 < end && end < p.line.1) {
        end = p.line.0;
    }
    end
}

// ---------------------------------------------------------------------------------------------
// detect-secrets

struct DetectSecrets {
    exe: PathBuf,
    version: String,
    /// What a scan of an empty file costs: the interpreter's start and the plugins' loading.
    startup: Timing,
}

/// What one `detect-secrets scan` took and reported, per type of secret.
struct Scan {
    timing: Timing,
    types: BTreeMap<String, usize>,
}

impl DetectSecrets {
    fn install(target_dir: &Path, dir: &Path) -> anyhow::Result<Self> {
        let exe = crate::pypi::tool(target_dir, "detect-secrets", "detect-secrets", "detect-secrets")?;
        let out = Command::new(&exe).arg("--version").output()?;
        let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        std::fs::write(dir.join("empty.txt"), b"")?;
        let mut ds = DetectSecrets {
            exe,
            version,
            startup: Timing { wall: 0.0, cpu: None },
        };
        ds.startup = ds.scan(dir, "empty.txt")?.timing;
        Ok(ds)
    }

    /// `detect-secrets scan` of `file` in `dir`: one process on one core (`-c 1`), no network
    /// verification (`-n`), the file scanned whether or not git tracks it (`--all-files`).
    fn scan(&self, dir: &Path, file: &str) -> anyhow::Result<Scan> {
        let (cpu0, t0) = (children_cpu(), Instant::now());
        let out = Command::new(&self.exe)
            .current_dir(dir)
            .args(["-c", "1", "scan", "-n", "--all-files", file])
            .output()
            .with_context(|| format!("cannot start {}", self.exe.display()))?;
        let wall = t0.elapsed().as_secs_f64();
        let cpu = children_cpu().zip(cpu0).map(|(b, a)| b - a);
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            bail!(
                "detect-secrets scan {file} failed ({}): {}",
                out.status,
                err.trim()
            );
        }
        let report: serde_json::Value =
            serde_json::from_slice(&out.stdout).context("detect-secrets printed no JSON report")?;
        let mut types = BTreeMap::new();
        for list in report["results"].as_object().into_iter().flat_map(|r| r.values()) {
            for secret in list.as_array().into_iter().flatten() {
                let kind = secret["type"].as_str().unwrap_or("?").to_owned();
                *types.entry(kind).or_insert(0) += 1;
            }
        }
        Ok(Scan {
            timing: Timing { wall, cpu },
            types,
        })
    }

    /// MB/s of a scan of `bytes`, its start-up cost taken off (which favours detect-secrets).
    fn speed(&self, scan: &Scan, bytes: usize) -> Speed {
        let cpu = match (scan.timing.cpu, self.startup.cpu) {
            (Some(c), Some(s)) => Some((c - s).max(0.01)),
            _ => None,
        };
        Speed {
            bytes,
            passes: vec![Timing {
                wall: (scan.timing.wall - self.startup.wall).max(0.01),
                cpu,
            }],
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The benchmark

fn per_rule(found: &[Finding]) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for f in found {
        *counts.entry(&f.rule).or_default() += 1;
    }
    if counts.is_empty() {
        return "none".into();
    }
    counts
        .iter()
        .map(|(r, n)| format!("{r} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Lengths of (e)'s texts: a header value, a URL, a log field.
const SHORT_TEXT: std::ops::RangeInclusive<usize> = 8..=160;
/// Passes over (e)'s texts per thread.
const SHORT_PASSES: usize = 20;

/// (e)'s texts: the corpus's lines of a header value's length, up to 10,000.
fn short_texts(corpus: &[u8]) -> Vec<String> {
    corpus
        .split(|&b| b == b'\n')
        .filter(|l| SHORT_TEXT.contains(&l.len()))
        .take(10_000)
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .collect()
}

/// Wall-clock ns per `mask_str` call, one thread pinned to each of `cpus`, all at once; the
/// slowest thread's. Wall-clock: a thread waiting for a lock another holds spends no CPU.
fn one_shot_ns(masker: &Masker, texts: &[String], cpus: &[usize]) -> anyhow::Result<f64> {
    let start = std::sync::Barrier::new(cpus.len());
    std::thread::scope(|scope| {
        let threads: Vec<_> = cpus
            .iter()
            .map(|&cpu| {
                let start = &start;
                scope.spawn(move || -> anyhow::Result<f64> {
                    super::pin_to(cpu)?;
                    // One pass to warm, as a serving gateway is.
                    texts
                        .iter()
                        .for_each(|t| drop(std::hint::black_box(masker.mask_str(t))));
                    start.wait();
                    let t0 = Instant::now();
                    for _ in 0..SHORT_PASSES {
                        texts
                            .iter()
                            .for_each(|t| drop(std::hint::black_box(masker.mask_str(t))));
                    }
                    Ok(t0.elapsed().as_nanos() as f64 / (SHORT_PASSES * texts.len().max(1)) as f64)
                })
            })
            .collect();
        threads.into_iter().try_fold(0.0_f64, |slowest, t| {
            let ns = t
                .join()
                .map_err(|_| anyhow::anyhow!("a masking thread panicked"))??;
            Ok(slowest.max(ns))
        })
    })
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "missed" }
}

pub fn run(args: &MaskArgs) -> anyhow::Result<()> {
    let header = super::Header::now();
    // One core: the figures are per core, and detect-secrets (started from this thread)
    // inherits the same one.
    let cpus = super::allowed_cpus();
    let cpu = cpus.last().copied();
    if let Some(cpu) = cpu {
        super::pin_to(cpu)?;
    }
    let size = (args.mb as f64 * MB) as usize;
    eprintln!("reading {} MB of text from the cargo registry…", args.mb);
    let source = source_corpus(size)?;
    let mut rng = Rng(0x6768_6761_7465);
    let (planted, plants) = plant(&source.bytes, &mut rng);
    let completions = sse_corpus(&source.bytes, size / 2, &mut rng);
    let sse_bytes: usize = completions.iter().map(|c| c.bytes.len()).sum();
    let sse_events: usize = completions.iter().map(|c| c.events).sum();
    let masker = Masker::new(Rules::builtin(), [0x42; 32]);

    eprintln!("(a) clean source code…");
    let (a, found_a) = measure(args.runs, source.bytes.len(), || {
        mask_stream(&masker, &source.bytes)
    })?;
    eprintln!("(b) with planted secrets…");
    let (b, found_b) = measure(args.runs, planted.len(), || mask_stream(&masker, &planted))?;
    let (right, covered) = planted_found(&plants, &found_b);
    eprintln!("(c) SSE completion streams…");
    let (c, found_c) = measure(args.runs, sse_bytes, || mask_sse(&masker, &completions))?;
    let sse_found = completions
        .iter()
        .zip(&found_c)
        .filter(|(c, found)| {
            let fp = masker.fingerprint(c.secret.as_bytes());
            found
                .iter()
                .any(|f| f.rule == c.kind.rule() && f.fingerprint == fp)
        })
        .count();
    // (d): the corpus cut into small bodies, one stream each; bodies with a keyword in them
    // run the DFA, which is where a stream's scratch (its DFA caches) comes in.
    let bodies: Vec<&[u8]> = source.bytes.chunks(SMALL_BODY).take(SMALL_BODIES).collect();
    let small_bytes: usize = bodies.iter().map(|b| b.len()).sum();
    eprintln!(
        "(d) small bodies, 1, {} and {} streams at once…",
        IN_FLIGHT[0], IN_FLIGHT[1]
    );
    let (d1, found_d1) = measure(args.runs, small_bytes, || Ok(mask_small(&masker, &bodies, 1)))?;
    let mut dn = Vec::new();
    for n in IN_FLIGHT {
        let (d, found) = measure(args.runs, small_bytes, || Ok(mask_small(&masker, &bodies, n)))?;
        ensure!(
            found == found_d1,
            "(d) found {found_d1} one at a time and {found} {n} at once"
        );
        dn.push((n, d));
    }
    eprintln!("(e) short texts one at a time, on one thread and on two at once…");
    let texts = short_texts(&source.bytes);
    let e1 = one_shot_ns(&masker, &texts, &cpus[cpus.len() - 1..])?;
    let e2 = match cpus.as_slice() {
        [first, .., last] => Some(one_shot_ns(&masker, &texts, &[*first, *last])?),
        _ => None,
    };
    let sse_other: usize = found_c.iter().map(Vec::len).sum::<usize>() - sse_found;
    let spread = (
        completions.iter().map(|c| c.spread).min().unwrap_or(0),
        completions.iter().map(|c| c.spread).max().unwrap_or(0),
    );

    // The samples both scanners see, written out for detect-secrets.
    let sample = (args.sample_mb as f64 * MB) as usize;
    let end_a = sample_end(&source.bytes, sample, &[]);
    let end_b = sample_end(&planted, sample, &plants);
    let sample_a = &source.bytes[..end_a];
    let sample_b = &planted[..end_b];
    let sample_plants = plants.iter().filter(|p| p.line.1 <= end_b).count();
    let (sa, found_sa) = measure(args.runs, sample_a.len(), || mask_stream(&masker, sample_a))?;
    let (sb, found_sb) = measure(args.runs, sample_b.len(), || mask_stream(&masker, sample_b))?;
    let ds = if args.no_detect_secrets {
        None
    } else {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("corpus-a.txt"), sample_a)?;
        std::fs::write(dir.path().join("corpus-b.txt"), sample_b)?;
        let target_dir = std::env::current_exe()?
            .parent()
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .context("the target directory of this binary")?;
        let ds = DetectSecrets::install(&target_dir, dir.path())?;
        eprintln!(
            "detect-secrets on the {:.1} MB sample of (a) (about 0.1–0.2 MB/s: minutes)…",
            sample_a.len() as f64 / MB
        );
        let scan_a = ds.scan(dir.path(), "corpus-a.txt")?;
        eprintln!("detect-secrets on the sample of (b)…");
        let scan_b = ds.scan(dir.path(), "corpus-b.txt")?;
        Some((ds, scan_a, scan_b))
    };

    println!();
    println!("ghgate-bench mask");
    println!(
        "host: kernel {}, {} CPUs, {}load average {} at start, {} at end",
        header.kernel,
        header.cpus,
        cpu.map_or(String::new(), |c| format!("everything on CPU {c}, ")),
        header.load,
        super::load_average()
    );
    println!(
        "corpus: {:.1} MB of {} UTF-8 text files (*.{}) from {}{}",
        source.bytes.len() as f64 / MB,
        source.files,
        TEXT_EXTENSIONS.join(", *."),
        source.root.display(),
        if source.distinct < source.bytes.len() {
            format!(", repeated (only {:.1} MB there)", source.distinct as f64 / MB)
        } else {
            String::new()
        }
    );
    println!(
        "ghgate: built-in rules, one stream per corpus (per completion for (c)) fed in {} KiB chunks, one thread;",
        CHUNK / 1024
    );
    println!(
        "        MB/s per core = 10^6 bytes per CPU-second of the thread, median of {} passes (wall-clock beside it)",
        args.runs
    );
    println!();
    println!(
        "{:<52} {:>14} {:>10} {:>10}",
        "ghgate", "MB/s per core", "wall MB/s", "findings"
    );
    let row = |label: &str, s: &Speed, n: usize| {
        println!("{label:<52} {:>14.0} {:>10.0} {n:>10}", s.per_core(), s.wall());
    };
    row("(a) source code as it is", &a, found_a.len());
    row(
        &format!("(b) with a secret every {} KB", PLANT_EVERY / 1000),
        &b,
        found_b.len(),
    );
    row(
        &format!(
            "(c) SSE chat streams, {:.1} MB, sse_stream()",
            sse_bytes as f64 / MB
        ),
        &c,
        found_c.iter().map(Vec::len).sum(),
    );
    row("(d) 2 KB bodies, 1 stream at a time", &d1, found_d1);
    for (n, d) in &dn {
        row(&format!("(d) 2 KB bodies, {n} streams at once"), d, found_d1);
    }
    println!("(a) found the corpus's own: {}", per_rule(&found_a));
    println!(
        "(b) planted {} (github-pat, aws-access-key-id, EC private-key in turn): {} found by the rule planted, \
         {} masked inside another finding, {} not masked; {} other finding(s) (the corpus's own)",
        plants.len(),
        right,
        covered,
        plants.len() - right - covered,
        found_b.len() - right
    );
    let per_stream = |s: &Speed| 1e6 / (s.per_core() * MB / SMALL_BODY as f64);
    println!(
        "(d) {} bodies of {} bytes per pass, µs per stream: {:.1} one at a time{}",
        bodies.len(),
        SMALL_BODY,
        per_stream(&d1),
        dn.iter()
            .map(|(n, d)| format!(
                ", {:.1} {n} at once ({:.2}×)",
                per_stream(d),
                d1.per_core() / d.per_core()
            ))
            .collect::<String>()
    );
    println!(
        "(e) {} short texts (lines of the corpus, {}–{} bytes) masked one at a time (mask_str), as header values, \
         URLs and log fields are: {:.0} ns a call on one thread{}",
        texts.len(),
        SHORT_TEXT.start(),
        SHORT_TEXT.end(),
        e1,
        e2.map_or(" (one CPU: no second thread)".into(), |e2| format!(
            ", {e2:.0} ns on each of two threads at once, on two CPUs ({:.2}×)",
            e2 / e1
        ))
    );
    println!(
        "(c) {} completions, {} events; planted {} secrets (GitHub token, AWS key id in turn), each split over \
         {}–{} events: {} found, {} missed; {} other finding(s)",
        completions.len(),
        sse_events,
        completions.len(),
        spread.0,
        spread.1,
        sse_found,
        completions.len() - sse_found,
        sse_other
    );

    let a_ok = a.per_core() >= TARGET_MB_S;
    let mut ratios = Vec::new();
    println!();
    match &ds {
        None => println!("detect-secrets: skipped (--no-detect-secrets)"),
        Some((ds, scan_a, scan_b)) => {
            let (da, db) = (ds.speed(scan_a, sample_a.len()), ds.speed(scan_b, sample_b.len()));
            println!(
                "detect-secrets {} vs ghgate on the same samples: one process on the same CPU (-c 1 scan -n \
                 --all-files FILE);",
                ds.version
            );
            println!(
                "its start-up ({:.2} s wall, {:.2} CPU-s: a scan of an empty file) is taken off its times",
                ds.startup.wall,
                ds.startup.cpu.unwrap_or(f64::NAN)
            );
            println!(
                "{:<34} {:>8} {:>15} {:>15} {:>9} {:>30}",
                "MB/s per core", "MB", "ghgate", "detect-secrets", "ratio", "findings ghgate/detect-secrets"
            );
            for (label, bytes, g, d, found, scan) in [
                ("(a) sample", sample_a.len(), &sa, &da, &found_sa, scan_a),
                ("(b) sample", sample_b.len(), &sb, &db, &found_sb, scan_b),
            ] {
                let ratio = g.per_core() / d.per_core();
                ratios.push((label, ratio));
                println!(
                    "{label:<34} {:>8.1} {:>15.0} {:>15.3} {:>8.0}× {:>30}",
                    bytes as f64 / MB,
                    g.per_core(),
                    d.per_core(),
                    ratio,
                    format!("{}/{}", found.len(), scan.types.values().sum::<usize>())
                );
            }
            println!(
                "(b) sample: {sample_plants} planted; detect-secrets reported: {}",
                scan_b
                    .types
                    .iter()
                    .map(|(t, n)| format!("{t} {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            println!(
                "(a) sample: detect-secrets reported: {}",
                if scan_a.types.is_empty() {
                    "none".to_owned()
                } else {
                    scan_a
                        .types
                        .iter()
                        .map(|(t, n)| format!("{t} {n}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            );
        }
    }
    println!();
    println!("targets");
    println!(
        "  ≥ {TARGET_MB_S:.0} MB/s per core on (a):          {:>8.0} MB/s  {}",
        a.per_core(),
        verdict(a_ok)
    );
    if ratios.is_empty() {
        println!("  ≥ {TARGET_RATIO:.0}× detect-secrets:                not measured (--no-detect-secrets)");
    }
    for (label, ratio) in ratios {
        println!(
            "  ≥ {TARGET_RATIO:.0}× detect-secrets, {label}:    {ratio:>8.0}×      {}",
            verdict(ratio >= TARGET_RATIO)
        );
    }
    Ok(())
}
