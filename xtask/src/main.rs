//! `cargo xtask`: the developer entry point for building, running, testing, fuzzing and
//! benchmarking ghgate.
//!
//! Each subcommand lives in its own module with its own args struct; this file only parses the
//! command line and dispatches. It must never contain task logic, and nothing in xtask may pick a
//! toolchain other than the pins in `[workspace.metadata.ghgate]`.
#![forbid(unsafe_code)]

mod bench;
mod build_ebpf;
mod cargo;
mod fuzz;
mod host;
mod process;
mod run;
mod setup;
mod test;
mod vm_test;
mod workspace;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::workspace::Workspace;

/// Developer tasks for ghgate, using the toolchains pinned in the workspace Cargo.toml.
#[derive(Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Setup(setup::Args),
    BuildEbpf(build_ebpf::Args),
    Run(run::Args),
    Test(test::Args),
    Bench(bench::Args),
    Fuzz(fuzz::Args),
    VmTest(vm_test::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = Workspace::load().and_then(|ws| match cli.command {
        Command::Setup(args) => setup::run(&ws, args),
        Command::BuildEbpf(args) => build_ebpf::run(&ws, args),
        Command::Run(args) => run::run(&ws, args),
        Command::Test(args) => test::run(&ws, args),
        Command::Bench(args) => bench::run(&ws, args),
        Command::Fuzz(args) => fuzz::run(&ws, args),
        Command::VmTest(args) => vm_test::run(&ws, args),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
