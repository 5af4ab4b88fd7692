//! `ghgate secrets trace FINGERPRINT|--from-value` and `ghgate secrets list`: where a secret went,
//! from the record. Answers only over a store that verifies (framing, hash chain, signatures,
//! and the index against the segments), and only from the records that verification covered.
//!
//! `--from-value` reads a secret on standard input and hashes it with the gateway's fingerprint
//! key; the value is never printed, stored or logged, and the key is never created here.
use std::{io::Read as _, path::Path, process::ExitCode};

use anyhow::{Context as _, bail};
use clap::Subcommand;

use super::fleet;
use super::{ConfigArg, fleet::FleetArgs};
use crate::record::{
    index::{Index, StoreDir, index_path},
    model::{self, DecisionOutcome},
    store::{self, VerifyReport, key_path},
    trace::{self, SightingKind, Trace},
};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Every place a secret's fingerprint appears in the record, oldest first: who received it
    /// in a response (session, caller, prompt), and which pushes carried it (repository, ref,
    /// commit, file) and what came of each.
    Trace {
        #[command(flatten)]
        config: ConfigArg,
        /// The fingerprint, as records and `[MASKED:rule:fingerprint]` show it.
        #[arg(required_unless_present = "from_value", conflicts_with = "from_value")]
        fingerprint: Option<String>,
        /// Read the secret itself on standard input and use its fingerprint under the gateway's
        /// key (the value is never shown or kept).
        #[arg(long)]
        from_value: bool,
        /// Trace over every runner's copy in the bucket (`--runner`: one), each answered only
        /// once it verifies as `sessions verify --remote` checks it. With --from-value the
        /// fingerprint is taken under this host's key, so it matches the runners sharing it.
        #[command(flatten)]
        fleet: FleetArgs,
    },
    /// Every fingerprint in the record, by first sighting: rules, first and last sighting, how
    /// often received, sent and pushed, and what came of the pushes.
    List {
        #[command(flatten)]
        config: ConfigArg,
    },
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Command::Trace {
            config,
            fingerprint,
            from_value,
            fleet,
        } => {
            let fingerprint = match (fingerprint, from_value) {
                (Some(f), false) => parse_fingerprint(&f)?,
                _ => fingerprint_of_stdin(&config.load()?.state_dir)?,
            };
            if let Some(url) = &fleet.remote {
                // Every runner verifies before any is answered from (fleet::stores refuses otherwise).
                for store in fleet::stores(url, &fleet)? {
                    let t = trace::trace(&StoreDir(store.dir()), &fingerprint, store.report.last_seq)?;
                    println!("runner {}:", store.runner);
                    print!("{}", render_trace(&t, &store.report));
                }
                return Ok(ExitCode::SUCCESS);
            }
            let config = config.load()?;
            let dir = store_dir(&config.record_dir())?;
            let report = match verified(&dir) {
                Ok(r) => r,
                Err(why) => {
                    println!("FAILED: the store does not verify, so nothing is answered from it: {why}");
                    return Ok(ExitCode::from(1));
                }
            };
            let t = trace::trace(&StoreDir(&dir), &fingerprint, report.last_seq)?;
            print!("{}", render_trace(&t, &report));
            Ok(ExitCode::SUCCESS)
        }
        Command::List { config } => {
            let dir = store_dir(&config.load()?.record_dir())?;
            let report = match verified(&dir) {
                Ok(r) => r,
                Err(why) => {
                    println!("FAILED: the store does not verify, so nothing is answered from it: {why}");
                    return Ok(ExitCode::from(1));
                }
            };
            println!("{}", verified_line(&report));
            let all = trace::summaries(&StoreDir(&dir), report.last_seq)?;
            if all.is_empty() {
                println!("no secret fingerprints in the verified range");
            }
            for s in all {
                let rules: Vec<&str> = s.rules.iter().map(String::as_str).collect();
                println!(
                    "{}  {}  first {}  last {}  received {}  sent {}  pushed {} (refused {}, held {}, forwarded {})",
                    s.fingerprint,
                    rules.join(","),
                    model::rfc3339(s.first),
                    model::rfc3339(s.last),
                    s.received,
                    s.sent,
                    s.pushed,
                    s.refused,
                    s.held,
                    s.forwarded
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// A fingerprint as a person may paste it: in any case, with spaces around, or as the whole
/// `[MASKED:rule:fingerprint]` a masked text shows.
fn parse_fingerprint(text: &str) -> anyhow::Result<String> {
    let t = text.trim();
    let t = t
        .strip_prefix("[MASKED:")
        .and_then(|rest| rest.strip_suffix(']'))
        .and_then(|inner| inner.rsplit_once(':'))
        .map_or(t, |(_, fp)| fp.trim());
    if t.len() != FINGERPRINT_HEX || !t.bytes().all(|b| b.is_ascii_hexdigit()) {
        // Not echoed: what was given may be the secret itself (use --from-value for that).
        bail!(
            "that is not a fingerprint: fingerprints are {FINGERPRINT_HEX} hex digits, as in \
             [MASKED:rule:0123456789ab] (to trace a secret by its value, pipe it to --from-value)"
        );
    }
    Ok(t.to_ascii_lowercase())
}

/// The hex digits of a fingerprint (six bytes of the keyed hash).
const FINGERPRINT_HEX: usize = 12;

fn store_dir(dir: &Path) -> anyhow::Result<std::path::PathBuf> {
    if !dir.join("segments").is_dir() {
        bail!(
            "no session store in {} (has `ghgate run` recorded anything with this config?)",
            dir.display()
        );
    }
    Ok(dir.to_owned())
}

/// The store's own verification, then the index's agreement with it.
fn verified(dir: &Path) -> Result<VerifyReport, String> {
    let key = store::load_or_create_key(&key_path(dir))
        .map_err(|e| e.to_string())?
        .verifying_key();
    let report = store::verify(dir, &key, &mut |_| {}).map_err(|e| e.to_string())?;
    let index = Index::open_read_only(&index_path(dir)).map_err(|e| e.to_string())?;
    index.check(dir).map_err(|e| e.to_string())?;
    Ok(report)
}

fn verified_line(r: &VerifyReport) -> String {
    format!(
        "over a store that verifies: {} records, seq {} to {}, {} segments (head {})",
        r.records,
        r.first_seq,
        r.last_seq,
        r.segments,
        &hex::encode(r.head_hash)[..16]
    )
}

/// The fingerprint of the secret on standard input, under the gateway's key (which must exist).
fn fingerprint_of_stdin(state_dir: &Path) -> anyhow::Result<String> {
    let key_file = crate::mask::key::path(state_dir);
    if !key_file.exists() {
        bail!(
            "no fingerprint key at {} (the gateway makes it at its first start); without it no fingerprint matches the record",
            key_file.display()
        );
    }
    let key = crate::mask::key::load_or_create(state_dir)?;
    let mut value = Vec::new();
    std::io::stdin()
        .take(1 << 20)
        .read_to_end(&mut value)
        .context("cannot read the secret from standard input")?;
    // A trailing newline (from echo or a terminal) is not part of the secret.
    while value.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        value.pop();
    }
    if value.is_empty() {
        bail!("standard input held no secret");
    }
    let masker = crate::mask::Masker::try_new(crate::mask::Rules::builtin(), key)
        .context("cannot compile the masking rules")?;
    let fingerprint = masker.fingerprint(&value);
    value.fill(0);
    Ok(fingerprint)
}

fn outcome_word(o: DecisionOutcome) -> &'static str {
    match o {
        DecisionOutcome::Passed => "FORWARDED",
        DecisionOutcome::Held => "HELD",
        DecisionOutcome::Refused | DecisionOutcome::RefusedAtomicPush => "REFUSED",
    }
}

/// The trace, for people: one block per sighting, then the verdict on pushes.
pub fn render_trace(t: &Trace, report: &VerifyReport) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "fingerprint {}", t.fingerprint);
    let _ = writeln!(out, "{}", verified_line(report));
    if t.sightings.is_empty() {
        let _ = writeln!(out, "not found in the verified range");
        return out;
    }
    for s in &t.sightings {
        let caller = s.caller.as_ref().map_or_else(
            || "caller unknown (session start not in range)".to_owned(),
            |c| c.to_string(),
        );
        let request = s.request.as_deref().unwrap_or("(request not recorded)");
        let when = model::rfc3339(s.at);
        match &s.kind {
            SightingKind::Received { place, client_masked } => {
                let _ = writeln!(
                    out,
                    "{when}  RECEIVED in a response ({place}{}) to {request}",
                    if *client_masked {
                        ", masked for the client"
                    } else {
                        ", NOT masked for the client"
                    }
                );
                let _ = writeln!(
                    out,
                    "    session {} exchange {}, caller {caller}, rule {}",
                    s.session, s.exchange, s.rule
                );
                if let Some(p) = &s.prompt {
                    let _ = writeln!(out, "    prompt: {p}");
                }
            }
            SightingKind::Sent { place } => {
                let _ = writeln!(out, "{when}  SENT in the {place} of {request}");
                let _ = writeln!(
                    out,
                    "    session {} exchange {}, caller {caller}, rule {}",
                    s.session, s.exchange, s.rule
                );
            }
            SightingKind::Pushed {
                repository,
                ref_name,
                commit,
                path,
                outcome,
                rule_decided,
            } => {
                let _ = writeln!(
                    out,
                    "{when}  PUSHED to {} {ref_name}, commit {}, file {}: {} by {rule_decided}",
                    repository.as_deref().unwrap_or("(repository unknown)"),
                    commit.map_or_else(|| "(unknown)".to_owned(), |c| c.to_string()),
                    path.as_deref().unwrap_or("(unknown)"),
                    outcome_word(*outcome),
                );
                let _ = writeln!(
                    out,
                    "    session {} exchange {}, caller {caller}, rule {}",
                    s.session, s.exchange, s.rule
                );
            }
        }
    }
    let pushes: Vec<_> = t.pushed().collect();
    if t.never_pushed() {
        let _ = writeln!(
            out,
            "suggested but never pushed within the verified range (seq {} to {})",
            report.first_seq, report.last_seq
        );
    } else if !pushes.is_empty() {
        let forwarded = pushes
            .iter()
            .filter(|s| {
                matches!(
                    s.kind,
                    SightingKind::Pushed {
                        outcome: DecisionOutcome::Passed,
                        ..
                    }
                )
            })
            .count();
        let _ = writeln!(
            out,
            "pushed {} time(s): {} forwarded upstream, {} refused or held",
            pushes.len(),
            forwarded,
            pushes.len() - forwarded
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::parse_fingerprint;

    #[test]
    fn fingerprints_are_read_as_people_paste_them() {
        for text in [
            "0a1b2c3d4e5f",
            "0A1B2C3D4E5F",
            "  0a1B2c3D4e5F\n",
            "[MASKED:github-pat:0a1b2c3d4e5f]",
            " [MASKED:github-pat:0A1B2C3D4E5F] ",
        ] {
            assert_eq!(parse_fingerprint(text).unwrap(), "0a1b2c3d4e5f", "{text:?}");
        }
        for text in [
            "",
            "0a1b 2c3d4e5f",
            "0a1b2c3d4e5",
            "0a1b2c3d4e5f0",
            "ghp_0a1b2c3d4e5f",
            "0a1b2c3d4e5g",
        ] {
            let err = parse_fingerprint(text).unwrap_err().to_string();
            assert!(
                err.contains("not a fingerprint") && !err.contains(text.trim()) || text.trim().is_empty(),
                "{err}"
            );
        }
    }
}
