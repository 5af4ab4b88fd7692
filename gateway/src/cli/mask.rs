//! `ghgate mask`: masks files (or standard input) with the configured rules and writes the
//! result to standard output, with a summary per rule on standard error — for sanitising logs
//! and for trying rules out. Never writes a secret it found anywhere.
use std::{
    collections::BTreeMap,
    io::{self, Read, Write},
    path::PathBuf,
    process::ExitCode,
};

use anyhow::Context as _;

use crate::{
    config::{Config, DEFAULT_CONFIG_PATH},
    mask::{self, Finding, FingerprintKey, MaskConfig, Masker, policy::MaskSet},
};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Configuration file whose `[mask]` rules and fingerprint key to use. Without one (and
    /// none at the default place), the built-in rules and a one-off key are used.
    #[arg(long, short = 'c', env = "GHGATE_CONFIG")]
    config: Option<PathBuf>,
    /// Treat the input as an SSE completion stream: choice text is reassembled across events.
    #[arg(long)]
    sse: bool,
    /// List the rules (id and keywords) and exit.
    #[arg(long)]
    list_rules: bool,
    /// Files to mask, in order; standard input when none is given (or for `-`).
    files: Vec<PathBuf>,
}

/// The masker `ghgate mask` uses, and a note on where its fingerprint key came from.
fn masker(args: &Args) -> anyhow::Result<(Masker, String)> {
    let path = args.config.clone().or_else(|| {
        std::path::Path::new(DEFAULT_CONFIG_PATH)
            .exists()
            .then(|| DEFAULT_CONFIG_PATH.into())
    });
    let (cfg, state_dir) = match &path {
        Some(p) => {
            let config = Config::load(p)?;
            (config.mask, Some(config.state_dir))
        }
        None => (MaskConfig::default(), None),
    };
    // The gateway's own key, when readable, so fingerprints match the records; never created here.
    let key_path = state_dir.as_deref().map(mask::key::path);
    let (key, note) = match key_path.filter(|p| p.exists()) {
        Some(p) => (
            mask::key::load_or_create(state_dir.as_deref().expect("set"))?,
            format!("fingerprints keyed as in {}", p.display()),
        ),
        None => {
            let mut k = [0u8; 32];
            rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut k);
            (
                FingerprintKey::new(k),
                "fingerprints use a one-off key (no gateway key found)".to_owned(),
            )
        }
    };
    let set = MaskSet::new(&cfg, key).context("cannot compile the [mask] rules")?;
    Ok((set.records, note))
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (masker, note) = masker(&args)?;
    if args.list_rules {
        let rules = mask::Rules::builtin();
        for id in masker.rule_ids() {
            let keywords = rules
                .iter()
                .find(|r| r.id == id)
                .map(|r| r.keywords.join(" "))
                .unwrap_or_default();
            println!("{id}\t{keywords}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let inputs: Vec<Option<PathBuf>> = if args.files.is_empty() {
        vec![None]
    } else {
        args.files
            .iter()
            .map(|f| (f.as_os_str() != "-").then(|| f.clone()))
            .collect()
    };
    let mut stdout = io::stdout().lock();
    let mut counts: BTreeMap<String, (u64, Vec<String>)> = BTreeMap::new();
    let mut total = 0u64;
    for input in inputs {
        let mut reader: Box<dyn Read> = match &input {
            Some(p) => {
                Box::new(std::fs::File::open(p).with_context(|| format!("cannot open {}", p.display()))?)
            }
            None => Box::new(io::stdin().lock()),
        };
        let name = input
            .as_ref()
            .map_or("standard input".to_owned(), |p| p.display().to_string());
        let mut found: Vec<Finding> = Vec::new();
        let mut out = Vec::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut plain = masker.stream();
        let mut sse = masker.sse_stream();
        loop {
            let n = reader
                .read(&mut buf)
                .with_context(|| format!("cannot read {name}"))?;
            if n == 0 {
                break;
            }
            found.extend(if args.sse {
                sse.push(&buf[..n], &mut out)
            } else {
                plain.push(&buf[..n], &mut out)
            });
            stdout
                .write_all(&out)
                .context("cannot write to standard output")?;
            out.clear();
        }
        found.extend(if args.sse {
            sse.finish(&mut out)
        } else {
            plain.finish(&mut out)
        });
        stdout
            .write_all(&out)
            .context("cannot write to standard output")?;
        for f in found {
            total += 1;
            let entry = counts.entry(f.rule).or_default();
            entry.0 += 1;
            if !entry.1.contains(&f.fingerprint) {
                entry.1.push(f.fingerprint);
            }
        }
    }
    stdout.flush().context("cannot write to standard output")?;
    let mut err = io::stderr().lock();
    let _ = writeln!(err, "ghgate mask: {total} secret(s) masked; {note}");
    for (rule, (n, fps)) in &counts {
        let _ = writeln!(err, "  {rule}: {n} ({} distinct)", fps.len());
    }
    Ok(ExitCode::SUCCESS)
}
