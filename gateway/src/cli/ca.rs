//! `ghgate ca init|export`: create the interception CA, and print its certificate for trust
//! stores. Never prints the private key.
use std::process::ExitCode;

use clap::Subcommand;

use super::ConfigArg;
use crate::tls::ca::{self, Ca};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the CA in `<state_dir>/ca` (key mode 0600), name-constrained to `tls.intercept`.
    Init {
        #[command(flatten)]
        config: ConfigArg,
        /// Replace an existing CA (clients that trusted the old one must trust the new one).
        #[arg(long)]
        force: bool,
    },
    /// Print the CA certificate (PEM) on standard output.
    Export {
        #[command(flatten)]
        config: ConfigArg,
    },
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Command::Init { config, force } => {
            let config = config.load()?;
            let dir = ca::dir(&config.state_dir);
            let ca = Ca::init(&dir, &config.tls.intercept, force)?;
            eprintln!(
                "created the interception CA in {}; trust it with: ghgate ca export > /usr/local/share/ca-certificates/ghgate.crt && update-ca-certificates",
                dir.display()
            );
            drop(ca);
        }
        Command::Export { config } => {
            let config = config.load()?;
            let ca = Ca::load(&ca::dir(&config.state_dir))?;
            print!("{}", ca.cert_pem());
        }
    }
    Ok(ExitCode::SUCCESS)
}
