//! `ghgate detach`: remove every program, link and map ghgate pinned under `pin_dir`.
use std::process::ExitCode;

use super::ConfigArg;
use crate::redirect::{self, Pins};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    config: ConfigArg,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = args.config.load()?;
    redirect::check_privileges("ghgate detach")?;
    let pins = Pins::new(&config.redirect.pin_dir);
    if !pins.root().exists() {
        println!("nothing attached: {} does not exist", pins.root().display());
        return Ok(ExitCode::SUCCESS);
    }
    let done = redirect::detach(&pins)?;
    println!(
        "detached {} program links and removed {} maps from {}; connections are no longer redirected",
        done.links,
        done.maps,
        pins.root().display()
    );
    Ok(ExitCode::SUCCESS)
}
