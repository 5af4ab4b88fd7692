//! The `ghgate` command line: one module per subcommand, each with its own arguments.
//!
//! Exit codes: 0 success, 1 runtime failure, 2 usage or configuration error.
mod approvals;
mod ca;
mod check;
mod detach;
mod doctor;
mod egress;
mod exec;
mod fleet;
mod install;
mod jsonlog;
mod logbuf;
mod mask;
pub mod policy;
mod run;
mod secrets;
mod sessions;
mod status;

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

use crate::config::{Config, ConfigError, DEFAULT_CONFIG_PATH, LogFormat};

/// ghgate: redirect, attribute and relay the GitHub traffic of chosen processes on this host.
#[derive(Debug, Parser)]
#[command(name = "ghgate", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway: attach the redirect programs and serve redirected connections.
    Run(run::Args),
    /// Validate a config and print the resolved intercept set; or check this kernel.
    Check(check::Args),
    /// Run a command inside the intercepted cgroup and exit with its status.
    Exec(exec::Args),
    /// Show what is attached: programs, cgroup, intercept set, counters.
    Status(status::Args),
    /// Detach every program and remove every pin ghgate made.
    Detach(detach::Args),
    /// Manage the interception CA.
    Ca(ca::Args),
    /// Recorded sessions: list, show, replay, export, verify, prune.
    Sessions(sessions::Args),
    /// The recorder's signing key.
    Record(sessions::RecordArgs),
    /// Mask secrets in files or standard input (to standard output), as the gateway would.
    Mask(mask::Args),
    /// Validate a policy file, or explain which rule decides a request (no traffic).
    Policy(policy::Args),
    /// Operations held for approval: list, show, approve, deny (over the control socket).
    Approvals(ApprovalsArgs),
    /// Is this host protected? One line per check; exit 1 if any fails.
    Doctor(doctor::Args),
    /// Install ghgate as a systemd service: unit, config, CA in the trust stores, runners' .env.
    Install(install::Args),
    /// Remove everything `ghgate install` added (the recordings stay unless --purge).
    Uninstall(install::UninstallArgs),
    /// Egress control: the allow-list that recorded traffic implies.
    Egress(egress::Args),
    /// Where a secret went: trace one fingerprint across the record, or list them all.
    Secrets(secrets::Args),
}

/// `ghgate approvals`: the control socket comes from `--socket`, else the config's
/// `[approvals] socket` (when the config can be read), else `/run/ghgate/control.sock`.
#[derive(Debug, clap::Args)]
struct ApprovalsArgs {
    /// Configuration file (TOML), read only for `[approvals] socket`.
    #[arg(long, short = 'c', env = "GHGATE_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    #[command(flatten)]
    inner: approvals::Args,
}

/// `--config`, shared by every subcommand that reads one.
#[derive(Debug, clap::Args)]
pub struct ConfigArg {
    /// Configuration file (TOML).
    #[arg(long, short = 'c', env = "GHGATE_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
}

impl ConfigArg {
    pub fn load(&self) -> Result<Config, ConfigError> {
        Config::load(&self.config)
    }
}

/// Parses the command line and runs it.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(a) => run::run(a),
        Command::Check(a) => check::run(a),
        Command::Exec(a) => exec::run(a),
        Command::Status(a) => status::run(a),
        Command::Detach(a) => detach::run(a),
        Command::Ca(a) => ca::run(a),
        Command::Sessions(a) => sessions::run(a),
        Command::Record(a) => sessions::run_record(a),
        Command::Mask(a) => mask::run(a),
        Command::Policy(a) => policy::run(a),
        Command::Doctor(a) => doctor::run(a),
        Command::Install(a) => install::run(a),
        Command::Uninstall(a) => install::run_uninstall(a),
        Command::Egress(a) => egress::run(a),
        Command::Secrets(a) => secrets::run(a),
        Command::Approvals(a) => {
            let socket = Config::load(&a.config)
                .map(|c| c.approvals.socket)
                .unwrap_or_else(|_| crate::approval::config::default_socket());
            approvals::run(a.inner, socket)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ghgate: error: {}", one_line(&e));
            if e.downcast_ref::<ConfigError>().is_some()
                || e.downcast_ref::<policy::Invalid>().is_some()
                || e.downcast_ref::<crate::policy::LoadError>().is_some()
            {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}

/// The whole context chain on one line, without repeating a cause that is already quoted.
pub fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let s = cause.to_string();
        if out.contains(&s) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&s);
    }
    out
}

/// Logs go to stderr, as text or JSON lines; `RUST_LOG` overrides the level.
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,hickory_proto=warn,hickory_resolver=warn")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(logbuf::Gathering);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.event_format(jsonlog::JsonLines).init(),
    }
}
