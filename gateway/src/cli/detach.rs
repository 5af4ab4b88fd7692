//! `ghgate detach`: remove every program, link and map ghgate pinned under `pin_dir`.
use std::process::ExitCode;

use super::ConfigArg;
use crate::redirect::{self, Pins, watch};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    config: ConfigArg,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = args.config.load()?;
    redirect::check_privileges("ghgate detach")?;
    let pins = Pins::new(&config.redirect.pin_dir);
    let state = watch::load(&config.state_dir);
    if let Some(s) = state.as_ref().filter(|s| {
        s.stopped_at.is_none()
            && std::path::Path::new(&format!("/proc/{}", s.pid)).exists()
            && crate::record::model::now_micros().saturating_sub(s.alive_at)
                < 4 * watch::BEAT.as_micros() as u64
    }) {
        anyhow::bail!(
            "the gateway (pid {}) is running and would attach its programs again: stop it first (it records an enforcement gap for whatever happens in between)",
            s.pid
        );
    }
    if !pins.root().exists() {
        println!("nothing attached: {} does not exist", pins.root().display());
        return Ok(ExitCode::SUCCESS);
    }
    let done = redirect::detach(&pins)?;
    // The next start records the gap this opens, from now.
    if let Some(mut s) = state {
        s.detached_at = Some(crate::record::model::now_micros());
        if let Err(e) = watch::save(&config.state_dir, &s) {
            eprintln!("warning: cannot note the detach in the enforcement state file: {e}");
        }
    }
    println!(
        "detached {} program links and removed {} maps from {}; connections are no longer redirected",
        done.links,
        done.maps,
        pins.root().display()
    );
    Ok(ExitCode::SUCCESS)
}
