//! `ghgate sessions list|show|replay|export|verify|prune|reindex` and `ghgate record key export`:
//! what the recorder stored, for auditors. Reads the store and its index; never writes a record
//! (prune writes a signed tombstone file and deletes whole sealed segments, nothing else).
use std::{
    io::{IsTerminal, Write},
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use anyhow::{Context as _, bail};
use clap::{Subcommand, ValueEnum};

use super::{
    ConfigArg,
    fleet::{self, FleetArgs},
};
use crate::record::{
    export,
    index::{Index, IndexError, SessionFilter, index_path},
    model::{self, ExchangeId, Micros},
    session::{self, ReplayStep, SessionView},
    store::{self, key_path},
};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List recorded sessions, newest last.
    List {
        #[command(flatten)]
        config: ConfigArg,
        /// Only sessions active at or after this time: RFC 3339 ("2026-11-21T10:00:00Z") or an
        /// age ("2h", "7d").
        #[arg(long)]
        since: Option<String>,
        /// Only sessions that started at or before this time (same forms as --since).
        #[arg(long)]
        until: Option<String>,
        /// Only sessions that talked to this host (or a subdomain of it).
        #[arg(long)]
        host: Option<String>,
        #[arg(long)]
        uid: Option<u32>,
        /// Only sessions whose executable path contains this text.
        #[arg(long)]
        exe: Option<String>,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        fleet: FleetArgs,
    },
    /// Show a session's timeline: who, each exchange, every model call's prompt and reassembled
    /// answer, pushed refs with the policy's decisions beside them.
    Show {
        #[command(flatten)]
        config: ConfigArg,
        /// Session id (a unique prefix is enough).
        id: String,
        /// Also list every stream event (SSE, WebSocket) as recorded.
        #[arg(long)]
        events: bool,
        #[command(flatten)]
        fleet: FleetArgs,
    },
    /// Play a session back in order, with its original pacing: each fact as a line, each model
    /// answer's text as it streamed.
    Replay {
        #[command(flatten)]
        config: ConfigArg,
        id: String,
        /// Play N times faster (0 = no pauses).
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
    },
    /// Export a session as HAR 1.2, JSON lines or a self-contained HTML page.
    Export {
        #[command(flatten)]
        config: ConfigArg,
        id: String,
        #[arg(long, value_enum)]
        format: Format,
        /// Write here instead of standard output.
        #[arg(long, short = 'o')]
        output: Option<PathBuf>,
        #[command(flatten)]
        fleet: FleetArgs,
    },
    /// Check the store: framing, hash chain, signatures, and the index against the segments.
    Verify {
        #[command(flatten)]
        config: ConfigArg,
        /// Also check that this session's records are all present and intact.
        id: Option<String>,
        /// Verify the whole store (the default when no id is given).
        #[arg(long)]
        all: bool,
        /// The recorder's public key (from `ghgate record key export`); default: derived from
        /// the key in the store's directory.
        #[arg(long)]
        pubkey: Option<PathBuf>,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Delete whole sealed segments older than an age, leaving a signed tombstone.
    Prune {
        #[command(flatten)]
        config: ConfigArg,
        /// "90d", "12h", …; default: `record.retention_days` from the config.
        #[arg(long)]
        older_than: Option<String>,
    },
    /// List connections refused because they would have gone around the gateway (other ports
    /// or protocols to GitHub's addresses, foreign TLS names, …), and enforcement gaps, oldest
    /// first.
    Refusals {
        #[command(flatten)]
        config: ConfigArg,
        /// Only since this time: RFC 3339 or an age ("2h", "7d").
        #[arg(long)]
        since: Option<String>,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Rebuild the index from the segments.
    Reindex {
        #[command(flatten)]
        config: ConfigArg,
    },
}

/// The fleet's bucket, for `verify --remote`.
#[derive(Debug, clap::Args)]
struct RemoteArgs {
    #[command(flatten)]
    fleet: FleetArgs,
    /// Fail for a sealed segment that is not under unexpired Object Lock retention.
    #[arg(long, requires = "remote")]
    require_lock: bool,
    /// Anchors kept outside the bucket (what the `[record.sink.webhook]` receiver got, one JSON
    /// object per line): each must be signed by its runner's pinned key, and the runner's copy
    /// (and this host's store, for its runner) must pass through it.
    #[arg(long, value_name = "FILE", requires = "remote")]
    anchors: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Har,
    Jsonl,
    Html,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Command::List {
            config,
            since,
            until,
            host,
            uid,
            exe,
            json,
            fleet,
        } => {
            let filter = SessionFilter {
                since: since.as_deref().map(parse_when).transpose()?,
                until: until.as_deref().map(parse_when).transpose()?,
                host,
                uid,
                exe,
            };
            // (runner, rows): one runner per store read; no runner for this host's store.
            let mut all = Vec::new();
            match &fleet.remote {
                Some(url) => {
                    for store in fleet::stores(url, &fleet)? {
                        let rows = store.index()?.sessions(&filter)?;
                        all.push((Some(store.runner), rows));
                    }
                }
                None => {
                    let dir = record_dir(&config)?;
                    let index = Index::open_read_only(&index_path(&dir))?;
                    all.push((None, index.sessions(&filter)?));
                }
            }
            print_sessions(&all, json, fleet.remote.is_some())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Refusals { config, since, json } => {
            let dir = record_dir(&config)?;
            let index = Index::open_read_only(&index_path(&dir))?;
            let since = since.as_deref().map(parse_when).transpose()?.unwrap_or(0);
            let mut out = std::io::stdout().lock();
            let mut positions = index.records_of_kind("refusal", since)?;
            positions.extend(index.records_of_kind("enforcement_gap", since)?);
            // Store order is the order they were written in.
            positions.sort_unstable();
            {
                for (segment, offset) in positions {
                    let (_, record) = store::read_at(&dir, segment, offset)?;
                    if json {
                        writeln!(out, "{}", serde_json::to_string(&record)?)?;
                        continue;
                    }
                    match record {
                        model::Record::Refusal(r) => writeln!(
                            out,
                            "{}  {:<7} {:<18} {} {}{}  {} (pid {}, uid {}) ×{}{}",
                            format_time(r.at),
                            r.layer.as_str(),
                            r.reason.as_str(),
                            r.transport,
                            r.orig_dst,
                            r.sni.map(|s| format!(" sni {s}")).unwrap_or_default(),
                            r.comm,
                            r.tgid,
                            r.uid,
                            r.count,
                            r.detail.map(|d| format!("  {d}")).unwrap_or_default(),
                        )?,
                        model::Record::EnforcementGap(g) => writeln!(
                            out,
                            "{}  gap     {:<18} {} → {} ({})  {}",
                            format_time(g.at),
                            g.kind.as_str(),
                            format_time(g.since),
                            format_time(g.until),
                            crate::redirect::watch::span(&g),
                            g.detail
                        )?,
                        _ => {}
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Show {
            config,
            id,
            events,
            fleet,
        } => {
            let (_, view, runner) = load_from(&config, &fleet, &id)?;
            if let Some(runner) = runner {
                println!("runner {runner}");
            }
            print!("{}", session::render_text(&view, session::ShowOptions { events }));
            Ok(ExitCode::SUCCESS)
        }
        Command::Replay { config, id, speed } => {
            if !(speed >= 0.0 && speed.is_finite()) {
                bail!("--speed must be a number ≥ 0 (0 plays without pauses)");
            }
            let (_, view) = load(&config, &id)?;
            replay(&view, speed)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Export {
            config,
            id,
            format,
            output,
            fleet,
        } => {
            let (dir, view, runner) = load_from(&config, &fleet, &id)?;
            let dir = dir.path();
            if let Some(runner) = &runner {
                eprintln!("session {} from runner {runner}", view.start.session);
            }
            let text = match format {
                Format::Har => serde_json::to_vec_pretty(&export::to_har(&view))?,
                Format::Html => export::to_html_with_pushes(&view, &later_pushes(dir, &view)?).into_bytes(),
                Format::Jsonl => {
                    let index = Index::open_read_only(&index_path(dir))?;
                    // The records exactly as stored, not as this version would write them.
                    let mut lines = Vec::new();
                    for run in index.session_records(view.id().as_str())? {
                        for (_, json) in store::read_raw_run(dir, run.segment, run.offset, run.records)? {
                            lines.extend_from_slice(&json);
                            lines.push(b'\n');
                        }
                    }
                    lines
                }
            };
            match output {
                Some(path) => {
                    std::fs::write(&path, text)
                        .with_context(|| format!("cannot write {}", path.display()))?;
                    eprintln!("wrote {}", path.display());
                }
                None => std::io::stdout().lock().write_all(&text)?,
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify {
            config,
            id,
            all: _,
            pubkey,
            remote,
        } => match &remote.fleet.remote {
            Some(url) => verify_remote(&config, url, &remote),
            None => verify(&config, id.as_deref(), pubkey.as_deref()),
        },
        Command::Prune { config, older_than } => {
            let dir = record_dir(&config)?;
            let older_than = match older_than {
                Some(o) => o,
                None => match config.load()?.record.retention_days {
                    0 => bail!("record.retention_days is 0 (keep everything): give --older-than"),
                    d => format!("{d}d"),
                },
            };
            let age = parse_age(&older_than)?;
            let key = store::load_or_create_key(&key_path(&dir))?;
            let cutoff = model::now_micros().saturating_sub(age.as_micros() as u64);
            let report = store::prune(&dir, &key, cutoff, &format!("older than {older_than}"))?;
            if let Some((first, last)) = report.pruned {
                let mut index = Index::open(&index_path(&dir))?;
                index.forget_segments(first, last)?;
            }
            println!("{report}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Reindex { config } => {
            let dir = record_dir(&config)?;
            let n = Index::rebuild(&index_path(&dir), &dir)?;
            println!("indexed {n} records");
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub(super) fn record_dir(config: &ConfigArg) -> anyhow::Result<PathBuf> {
    let config = config.load()?;
    let dir = config.record_dir();
    if !dir.join("segments").is_dir() {
        bail!(
            "no session store in {} (has `ghgate run` recorded anything with this config?)",
            dir.display()
        );
    }
    Ok(dir)
}

/// The pushes (of any session, at or after this one began) that carried a fingerprint this
/// session received in a response.
fn later_pushes(dir: &Path, view: &SessionView) -> anyhow::Result<export::LaterPushes> {
    let received: std::collections::HashSet<&str> = view
        .exchanges
        .iter()
        .flat_map(|x| &x.masked)
        .filter(|m| crate::record::trace::received(m.place))
        .map(|m| m.fingerprint.as_str())
        .collect();
    let mut later = export::LaterPushes::new();
    if received.is_empty() {
        return Ok(later);
    }
    let index = Index::open_read_only(&index_path(dir))?;
    for (segment, offset) in index.records_of_kind("push_secret", view.start.at)? {
        if let (_, model::Record::PushSecret(p)) = store::read_at(dir, segment, offset)?
            && received.contains(p.fingerprint.as_str())
        {
            later.entry(p.fingerprint.clone()).or_default().push(p);
        }
    }
    Ok(later)
}

/// The session `id` (or a unique prefix) from this host's store, or with `--remote` from the one
/// runner whose verified copy has it (named).
fn load_from(
    config: &ConfigArg,
    fleet: &FleetArgs,
    id: &str,
) -> anyhow::Result<(StoreRef, SessionView, Option<String>)> {
    let Some(url) = &fleet.remote else {
        let (dir, view) = load(config, id)?;
        return Ok((StoreRef::Local(dir), view, None));
    };
    let mut found = Vec::new();
    for store in fleet::stores(url, fleet)? {
        let index = store.index()?;
        match index.resolve(id) {
            Ok(session) => found.push((store, index, session)),
            Err(IndexError::UnknownSession(_)) => {}
            Err(e) => return Err(anyhow::Error::new(e).context(format!("runner {}", store.runner))),
        }
    }
    match found.len() {
        0 => bail!("no runner in the bucket has a session with the id or id prefix {id:?}"),
        1 => {
            let (store, index, session) = found.pop().expect("one");
            let view = SessionView::load(store.dir(), &index, session.as_str())
                .with_context(|| format!("runner {}", store.runner))?;
            let runner = store.runner.clone();
            Ok((StoreRef::Remote(store), view, Some(runner)))
        }
        _ => {
            let names: Vec<String> = found
                .iter()
                .map(|(s, _, id)| format!("{id} on runner {}", s.runner))
                .collect();
            bail!(
                "the session id prefix {id:?} matches sessions on several runners ({}): give more characters or --runner",
                names.join(", ")
            )
        }
    }
}

/// A store being read: this host's, or a runner's verified copy (kept while it is read).
enum StoreRef {
    Local(PathBuf),
    Remote(fleet::RunnerStore),
}

impl StoreRef {
    fn path(&self) -> &Path {
        match self {
            StoreRef::Local(p) => p,
            StoreRef::Remote(s) => s.dir(),
        }
    }
}

/// `sessions list`'s table or JSON lines; with `runners`, each row names its runner.
fn print_sessions(
    all: &[(Option<String>, Vec<crate::record::index::SessionRow>)],
    json: bool,
    runners: bool,
) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        for (runner, rows) in all {
            for row in rows {
                let mut value = serde_json::to_value(row)?;
                if let (Some(r), Some(obj)) = (runner, value.as_object_mut()) {
                    obj.insert("runner".into(), r.clone().into());
                }
                writeln!(out, "{value}")?;
            }
        }
        return Ok(());
    }
    let runner_col = |r: &str| {
        if runners {
            format!("{r:<16}  ")
        } else {
            String::new()
        }
    };
    writeln!(
        out,
        "{}{:<16}  {:<20}  {:<10}  {:>9}  {:<28}  HOSTS",
        runner_col("RUNNER"),
        "SESSION",
        "STARTED (UTC)",
        "USER",
        "EXCHANGES",
        "EXE"
    )?;
    for (runner, rows) in all {
        for row in rows {
            writeln!(
                out,
                "{}{:<16}  {:<20}  {:<10}  {:>9}  {:<28}  {}",
                runner_col(runner.as_deref().unwrap_or_default()),
                row.id,
                format_time(row.started_at.unwrap_or(row.first_activity)),
                row.user
                    .clone()
                    .or_else(|| row.uid.map(|u| u.to_string()))
                    .unwrap_or_else(|| "?".into()),
                row.exchanges,
                row.exe.clone().or_else(|| row.comm.clone()).unwrap_or_default(),
                row.hosts.join(",")
            )?;
        }
    }
    Ok(())
}

fn load(config: &ConfigArg, id: &str) -> anyhow::Result<(PathBuf, SessionView)> {
    let dir = record_dir(config)?;
    let index = Index::open_read_only(&index_path(&dir))?;
    let view = SessionView::load(&dir, &index, id)?;
    Ok((dir, view))
}

fn verify(config: &ConfigArg, id: Option<&str>, pubkey: Option<&Path>) -> anyhow::Result<ExitCode> {
    let dir = record_dir(config)?;
    let key = match pubkey {
        Some(p) => store::load_public_key(p)?,
        None => store::load_or_create_key(&key_path(&dir))?.verifying_key(),
    };
    let tty = std::io::stderr().is_terminal();
    let mut last_shown = 0u64;
    let mut progress = |p: store::VerifyProgress| {
        let pct = (p.bytes_done * 100).checked_div(p.bytes_total).unwrap_or(100);
        if pct >= last_shown + 10 || (tty && pct != last_shown) {
            last_shown = pct;
            if tty {
                eprint!(
                    "\rverifying: {pct:>3}% ({} of {} bytes)",
                    p.bytes_done, p.bytes_total
                );
            } else {
                eprintln!("verifying: {pct}% ({} of {} bytes)", p.bytes_done, p.bytes_total);
            }
        }
    };
    let report = store::verify(&dir, &key, &mut progress);
    if tty {
        eprintln!();
    }
    let report = match report {
        Ok(r) => r,
        Err(failure) => {
            println!("FAILED: {failure}");
            return Ok(ExitCode::from(1));
        }
    };
    let index = Index::open_read_only(&index_path(&dir))?;
    if let Err(mismatch) = index.check(&dir) {
        println!("FAILED: {mismatch}");
        return Ok(ExitCode::from(1));
    }
    if let Some(id) = id {
        let view = SessionView::load(&dir, &index, id)?;
        println!(
            "session {}: {} exchanges, every record present and in the verified chain",
            view.start.session,
            view.exchanges.len()
        );
    }
    println!("OK: {report}");
    Ok(ExitCode::SUCCESS)
}

/// `verify --remote`: every runner in the bucket (or `--runner`), and this host's store against
/// its own runner's copy when the config has a sink and a store.
fn verify_remote(config: &ConfigArg, url: &str, args: &RemoteArgs) -> anyhow::Result<ExitCode> {
    use crate::record::sink::remote;
    let bucket = fleet::open(url, &args.fleet)?;
    // This host's store, and the runner it is.
    let local = config.load().ok().and_then(|c| {
        let runner = c.record.sink.as_ref()?.runner();
        let dir = c.record_dir();
        let key = store::load_or_create_key(&key_path(&dir)).ok()?.verifying_key();
        dir.join("segments").is_dir().then_some((runner, dir, key))
    });
    let kept = match &args.anchors {
        Some(path) => remote::read_anchors(path)?,
        None => Vec::new(),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut failed = false;
        let runners = fleet::runners(&bucket, &args.fleet).await?;
        if args.fleet.runner.is_none() {
            for a in kept.iter().filter(|a| !runners.contains(&a.runner)) {
                failed = true;
                println!(
                    "FAILED: runner {}: anchored seq {} (segment {:012}) outside the bucket, but the bucket has no copy of this runner",
                    a.runner, a.seq, a.segment
                );
            }
        }
        for runner in runners {
            let tmp = fleet::scratch_dir()?;
            let mirror = bucket.mirror(&runner, tmp.path()).await?;
            let mine = local
                .as_ref()
                .filter(|(r, ..)| *r == runner)
                .map(|(_, dir, key)| (dir.as_path(), *key));
            let theirs: Vec<_> = kept.iter().filter(|a| a.runner == runner).cloned().collect();
            match remote::verify_runner(&bucket, &mirror, args.require_lock, mine, &theirs).await {
                Ok(line) => println!("OK: {line}"),
                Err(failures) => {
                    failed = true;
                    for f in failures {
                        println!("FAILED: {f}");
                    }
                }
            }
        }
        Ok(if failed {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        })
    })
}

/// Plays the session back: each fact when it happened, relative to the session's start, and each
/// model answer's text piece by piece, as it streamed.
fn replay(view: &SessionView, speed: f64) -> anyhow::Result<()> {
    let steps = view.replay_steps();
    let Some(first) = steps.first().map(|(at, _)| *at) else {
        return Ok(());
    };
    let mut out = std::io::stdout().lock();
    let mut previous = first;
    // The answer being written, and whether the cursor is mid-line in it.
    let mut streaming: Option<(ExchangeId, String)> = None;
    for (at, step) in &steps {
        if speed > 0.0 && *at > previous {
            let pause = Duration::from_micros(((at - previous) as f64 / speed) as u64);
            // Long idle stretches are shortened, so a day-long session still replays.
            std::thread::sleep(pause.min(Duration::from_secs(10)));
        }
        previous = (*at).max(previous);
        let when = format!("{:>10.3}s", at.saturating_sub(first) as f64 / 1e6);
        match step {
            ReplayStep::Line(text) => {
                if streaming.take().is_some() {
                    writeln!(out)?;
                }
                writeln!(out, "{when}  {text}")?;
            }
            ReplayStep::Text { exchange, part, text } => {
                let same = streaming
                    .as_ref()
                    .is_some_and(|(x, p)| x == exchange && p == part);
                if !same {
                    if streaming.is_some() {
                        writeln!(out)?;
                    }
                    writeln!(out, "{when}  answer, {part}:")?;
                    streaming = Some((*exchange, part.clone()));
                }
                write!(out, "{text}")?;
            }
        }
        out.flush()?;
    }
    if streaming.is_some() {
        writeln!(out)?;
    }
    Ok(())
}

/// RFC 3339, or an age before now ("90m", "2h", "7d").
pub(super) fn parse_when(text: &str) -> anyhow::Result<Micros> {
    if let Ok(t) = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339) {
        return Ok((t.unix_timestamp_nanos() / 1000).max(0) as u64);
    }
    let age = parse_age(text).with_context(|| format!("{text:?} is neither an RFC 3339 time nor an age"))?;
    Ok(model::now_micros().saturating_sub(age.as_micros() as u64))
}

fn parse_age(text: &str) -> anyhow::Result<Duration> {
    let (n, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let n: u64 = n
        .parse()
        .with_context(|| format!("{text:?}: expected a number and a unit, like 90d or 12h"))?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        "w" => 7 * 86400,
        _ => bail!("{text:?}: the unit must be s, m, h, d or w"),
    };
    Ok(Duration::from_secs(n * secs))
}

pub fn format_time(micros: Micros) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000)
        .ok()
        .and_then(|t| {
            t.format(&time::macros::format_description!(
                "[year]-[month]-[day] [hour]:[minute]:[second]"
            ))
            .ok()
        })
        .unwrap_or_else(|| micros.to_string())
}

/// `ghgate record key export`.
#[derive(Debug, clap::Args)]
pub struct RecordArgs {
    #[command(subcommand)]
    command: RecordCommand,
}

#[derive(Debug, Subcommand)]
enum RecordCommand {
    /// The recorder's signing key.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
}

#[derive(Debug, Subcommand)]
enum KeyCommand {
    /// Print the public key (PEM) that `ghgate sessions verify --pubkey` checks signatures with.
    Export {
        #[command(flatten)]
        config: ConfigArg,
    },
}

pub fn run_record(args: RecordArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        RecordCommand::Key {
            command: KeyCommand::Export { config },
        } => {
            let config = config.load()?;
            let path = key_path(&config.record_dir());
            if !path.exists() {
                bail!(
                    "no recorder key at {} (it is created by the first `ghgate run`)",
                    path.display()
                );
            }
            let key = store::load_or_create_key(&path)?;
            print!("{}", store::public_key_pem(&key));
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_and_times_parse() {
        assert_eq!(parse_age("90d").unwrap(), Duration::from_secs(90 * 86400));
        assert_eq!(parse_age("12h").unwrap(), Duration::from_secs(12 * 3600));
        assert!(parse_age("12").is_err());
        assert!(parse_age("d").is_err());
        assert!(parse_age("5y").is_err());
        assert_eq!(parse_when("2026-01-01T00:00:00Z").unwrap(), 1_767_225_600_000_000);
        let recent = parse_when("1h").unwrap();
        assert!(model::now_micros() - recent >= 3_600_000_000);
        assert_eq!(format_time(1_767_225_600_000_000), "2026-01-01 00:00:00");
    }
}
