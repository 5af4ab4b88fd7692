//! False positives of the built-in mask rules on real code: the masker runs over the Rust sources
//! of this workspace's dependencies (the crates `Cargo.lock` names, as the local cargo registry
//! holds them; up to 60 MB, spread over every crate), prints what each rule found, and holds the
//! rules to a budget. Needs no root; the registry is where cargo fetched those dependencies, so
//! they are there wherever this test was built. Only the locked crates count: what else the
//! registry holds (the tools `cargo install` fetched, at whatever versions were newest then)
//! differs from one machine to the next, and once moved another crate's test vectors into the
//! sample.
//!
//! Only rule names, file names and offsets are printed: never the bytes a rule matched.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use ghgate::mask::{Masker, Rules};

/// Bytes of Rust scanned at most: enough for every rule to meet thousands of its keywords, little
/// enough for a debug build (the mask's regex crates are optimised even there).
const CAP: u64 = 60_000_000;

/// Rules whose findings in crate sources are mostly true: test fixtures hold PEM keys and
/// `scheme://user:pass@host` examples. Counted and printed, not budgeted.
const FIXTURE_RULES: &[&str] = &["private-key", "url-credentials"];

/// The registry's unpacked sources: `$CARGO_HOME/registry/src`, else `~/.cargo/registry/src`.
fn registry_src() -> Option<PathBuf> {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))?;
    let src = home.join("registry").join("src");
    src.is_dir().then_some(src)
}

/// The registry crates `Cargo.lock` locks, as their directories are named (`name-version`).
fn locked_crates() -> std::collections::BTreeSet<String> {
    let lock = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.lock");
    let text = std::fs::read_to_string(&lock).expect("the workspace's Cargo.lock");
    let mut crates = std::collections::BTreeSet::new();
    for package in text.split("[[package]]") {
        let field = |name: &str| {
            package.lines().find_map(|l| {
                l.strip_prefix(name)?
                    .trim_start()
                    .strip_prefix('=')?
                    .trim()
                    .strip_prefix('"')?
                    .strip_suffix('"')
                    .map(str::to_owned)
            })
        };
        if let (Some(name), Some(version), Some(source)) = (field("name"), field("version"), field("source"))
            && source.starts_with("registry+")
        {
            crates.insert(format!("{name}-{version}"));
        }
    }
    crates
}

/// Every `*.rs` file under `dir` (symbolic links are not followed).
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let Ok(kind) = e.file_type() else { continue };
        let path = e.path();
        if kind.is_dir() {
            rust_files(&path, out);
        } else if kind.is_file() && path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
}

/// Where a finding was: the file (relative to the registry) and the offset in it.
struct Place {
    file: String,
    offset: u64,
}

#[test]
fn builtin_rules_on_registry_sources() {
    let Some(src) = registry_src() else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but there is no cargo registry at $CARGO_HOME/registry/src or ~/.cargo/registry/src"
        );
        eprintln!("skipping: no cargo registry at $CARGO_HOME/registry/src or ~/.cargo/registry/src");
        return;
    };
    let locked = locked_crates();
    assert!(!locked.is_empty(), "no registry crate in Cargo.lock");
    let mut files = Vec::new();
    // `src/<index>/<name-version>/…`: the locked crates' directories only.
    for index in std::fs::read_dir(&src).into_iter().flatten().flatten() {
        for krate in std::fs::read_dir(index.path()).into_iter().flatten().flatten() {
            if locked.contains(krate.file_name().to_string_lossy().as_ref()) {
                rust_files(&krate.path(), &mut files);
            }
        }
    }
    // A fixed order that is not alphabetical, so the cap takes files from every crate rather
    // than all of the first few.
    let mut files: Vec<(u32, String, PathBuf)> = files
        .into_iter()
        .filter_map(|p| {
            let rel = p.strip_prefix(&src).ok()?.to_string_lossy().into_owned();
            Some((crc32fast::hash(rel.as_bytes()), rel, p))
        })
        .collect();
    files.sort();

    let masker = Masker::new(Rules::builtin(), [0x5a; 32]);
    let mut found: BTreeMap<String, Vec<Place>> = BTreeMap::new();
    let (mut scanned, mut nfiles) = (0u64, 0usize);
    let mut out = Vec::new();
    for (_, rel, path) in &files {
        if scanned >= CAP {
            break;
        }
        let Ok(text) = std::fs::read(path) else { continue };
        let mut stream = masker.stream();
        let mut findings = Vec::new();
        for chunk in text.chunks(64 * 1024) {
            findings.extend(stream.push(chunk, &mut out));
            out.clear();
        }
        findings.extend(stream.finish(&mut out));
        out.clear();
        for f in findings {
            found.entry(f.rule).or_default().push(Place {
                file: rel.clone(),
                offset: f.offset,
            });
        }
        scanned += text.len() as u64;
        nfiles += 1;
    }
    assert!(nfiles > 0, "no Rust file under {}", src.display());

    let mb = scanned as f64 / 1e6;
    println!(
        "built-in mask rules over {mb:.1} MB of Rust in {nfiles} files of {}:",
        src.display()
    );
    let (mut budgeted, mut fixtures) = (0usize, 0usize);
    // Every rule, those that found nothing too: the report is what each rule does on code.
    for rule in masker.rule_ids() {
        let n = found.get(&rule).map_or(0, Vec::len);
        let fixture = FIXTURE_RULES.contains(&rule.as_str());
        println!(
            "  {rule:<28} {n:>6}{}",
            if fixture {
                "   (test fixtures; not budgeted)"
            } else {
                ""
            }
        );
        if fixture {
            fixtures += n;
        } else {
            budgeted += n;
        }
    }
    println!(
        "  {fixtures} finding(s) by {FIXTURE_RULES:?}, {budgeted} by the other rules (budget: fewer than 1 per 2 MB)"
    );
    for (rule, places) in found.iter().filter(|(r, _)| !FIXTURE_RULES.contains(&r.as_str())) {
        for p in places {
            println!("  {rule} at {}:{}", p.file, p.offset);
        }
    }

    let github: usize = found
        .iter()
        .filter(|(r, _)| r.starts_with("github-"))
        .map(|(_, p)| p.len())
        .sum();
    assert_eq!(
        github, 0,
        "GitHub rules, whose tokens carry a checksum, flagged crate sources"
    );
    // The budget, from what this test measured when it was written. Over all the Rust then in the
    // registry (227 MB), 17 findings outside the fixture rules, all in two crates: 15 in
    // jsonwebtoken's tests/hmac.rs and tests/dangerous.rs (its JWT test vectors: 9 whole ones by
    // `jwt`, and 6 broken ones — a header alone, a bad or empty signature — by `generic-secret`
    // as `let token = "…"`), and 2 in windows-sys (`pub credentials: MI_UserCredentials_0,`: a
    // field's type taken for a value). The 60 MB sample took jsonwebtoken's tests: 15. Findings
    // come a fixture file at a time, so the budget holds a whole one with room to spare: 1 per
    // 2 MB (30 in 60 MB). A rule that starts flagging ordinary code goes past it at once.
    let allowed = (mb / 2.0) as usize;
    assert!(
        budgeted < allowed.max(1),
        "{budgeted} finding(s) outside {FIXTURE_RULES:?} in {mb:.1} MB of Rust: the budget is fewer than \
         {} (1 per 2 MB); see the list above",
        allowed.max(1)
    );
}
