//! `cargo xtask vm-test`: runs the guest tests (package ghgate-vm-tests) inside QEMU on each
//! Debian kernel ghgate supports, so the eBPF programs meet each kernel's verifier and hooks.
//!
//! Build static binaries, fetch kernels, write one initramfs, boot a guest per kernel (several at
//! once), read each verdict from the serial log. Everything lands under `<target>/vm-tests/`.
//!
//! Beside the kernel guests, the systemd guest boots a Debian root filesystem (built from Debian's
//! packages and cached, see [`rootfs`]) with systemd as init on the 6.12 kernel, where
//! `vm-systemd` installs ghgate as an admin would, runs a runner-like unit, reboots once and
//! uninstalls.
//! This module must never report a kernel as passed without its PASS line and a clean QEMU exit,
//! and must never leave a QEMU running.
mod apt;
mod cpio;
mod kernel;
mod qemu;
mod rootfs;

use std::{
    fs::{self, File},
    io::{BufWriter, Write},
    num::NonZero,
    path::Path,
    sync::atomic::{AtomicUsize, Ordering},
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use self::{
    kernel::{Kernel, Series},
    qemu::{Boot, Outcome, Root, Verdict},
};
use crate::{
    cargo::{self, Metadata},
    setup,
    workspace::Workspace,
};

/// The target the guest binaries are built for: static, so the initramfs needs no libc.
pub const GUEST_TARGET: &str = "x86_64-unknown-linux-musl";
/// The cargo profile for guest binaries (root Cargo.toml): release, stripped, no debug info.
const PROFILE: &str = "vm";
/// Lines of a failed guest's serial log to print.
const TAIL_LINES: usize = 60;
/// How long a guest may run by default: boot takes 4-8 s under TCG, the tests the rest.
const DEFAULT_TIMEOUT_SECS: u64 = 300;
/// How long the systemd guest may run: two systemd boots under TCG, the install, the runner's
/// jobs, doctor twice and the uninstall (measured: see the report).
const SYSTEMD_TIMEOUT_SECS: u64 = 900;
/// The kernel the systemd guest boots.
const SYSTEMD_KERNEL: Series = Series::V6_12;
/// The systemd guest's test driver, in the guest's [`rootfs::PAYLOAD_DIR`].
const SYSTEMD_DRIVER: &str = "vm-systemd";

/// Where each built binary goes in the initramfs, and which package builds it.
const BINARIES: [(&str, &str, &str); 4] = [
    ("init", "ghgate-vm-tests", "vm-init"),
    ("bin/vm-guest", "ghgate-vm-tests", "vm-guest"),
    ("bin/ghgate", "ghgate", "ghgate"),
    ("bin/ghgate-probe", "ghgate-e2e", "ghgate-probe"),
];

/// Boot the guest tests in QEMU on Debian's 5.10, 6.1 and 6.12 cloud kernels.
///
/// Kernels are downloaded once with apt (5.10 from bullseye through a private apt configuration)
/// and kept in target/vm-tests/kernels/. Serial logs are in target/vm-tests/logs/<kernel>.log.
/// Needs no root; QEMU runs without KVM unless --kvm.
#[derive(clap::Args)]
pub struct Args {
    /// Kernels to boot: a comma-separated list, or `all`.
    #[arg(long, value_enum, value_delimiter = ',', default_values = ["6.1", "6.12"])]
    pub kernel: Vec<KernelArg>,
    /// Run only the guest tests whose names contain NAME (passed as `ghgate.filter=NAME`).
    #[arg(long, value_name = "NAME")]
    pub filter: Option<String>,
    /// Use KVM instead of TCG emulation. Off by default: under nested virtualisation (CI's
    /// machines) QEMU with KVM hangs or aborts.
    #[arg(long)]
    pub kvm: bool,
    /// Skip the systemd guest (install, runner unit, reboot, uninstall in a Debian guest).
    #[arg(long, conflicts_with = "systemd_only")]
    pub no_systemd: bool,
    /// Boot only the systemd guest, no kernel guests.
    #[arg(long)]
    pub systemd_only: bool,
    /// Seconds each guest may run, boot included, before QEMU is killed.
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = DEFAULT_TIMEOUT_SECS,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub timeout: u64,
}

/// A `--kernel` value.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum KernelArg {
    #[value(name = "5.10")]
    V5_10,
    #[value(name = "6.1")]
    V6_1,
    #[value(name = "6.12")]
    V6_12,
    All,
}

/// What to boot, how.
pub struct Options {
    pub kernels: Vec<Series>,
    pub filter: Option<String>,
    pub kvm: bool,
    pub timeout: Duration,
    /// Boot the systemd guest too.
    pub systemd: bool,
}

impl Options {
    /// The kernels CI boots, every test, TCG, the default timeout.
    pub fn ci() -> Self {
        Self {
            kernels: Series::CI.to_vec(),
            filter: None,
            kvm: false,
            timeout: Duration::from_secs(DEFAULT_TIMEOUT_SECS),
            systemd: true,
        }
    }
}

pub fn run(ws: &Workspace, args: Args) -> Result<()> {
    setup::ensure_setup(ws)?;
    check(
        ws,
        &Options {
            kernels: if args.systemd_only {
                Vec::new()
            } else {
                selection(&args.kernel)
            },
            filter: args.filter,
            kvm: args.kvm,
            timeout: Duration::from_secs(args.timeout),
            systemd: !args.no_systemd,
        },
    )
}

/// The kernels named, in the order given, each once; `all` means every series.
fn selection(args: &[KernelArg]) -> Vec<Series> {
    let mut kernels = Vec::new();
    for arg in args {
        let named: &[Series] = match arg {
            KernelArg::V5_10 => &[Series::V5_10],
            KernelArg::V6_1 => &[Series::V6_1],
            KernelArg::V6_12 => &[Series::V6_12],
            KernelArg::All => &Series::ALL,
        };
        for series in named {
            if !kernels.contains(series) {
                kernels.push(*series);
            }
        }
    }
    kernels
}

/// Builds the guest, fetches the kernels and boots one guest per kernel; an error if any failed.
/// Assumes setup is done.
pub fn check(ws: &Workspace, options: &Options) -> Result<()> {
    if let Some(filter) = &options.filter
        && (filter.is_empty() || filter.contains(|c: char| c.is_whitespace() || c == '"'))
    {
        bail!(
            "--filter {filter:?}: must be one word without quotes, since it goes on the kernel command line"
        );
    }
    let metadata = Metadata::load(ws)?;
    let vm_dir = metadata.target_dir.join("vm-tests");

    println!("vm-test: building the guest binaries ({GUEST_TARGET}, profile {PROFILE})");
    let mut build = vec!["build", "--profile", PROFILE, "--target", GUEST_TARGET];
    for (i, (_, package, _)) in BINARIES.iter().enumerate() {
        if !BINARIES[..i].iter().any(|(_, earlier, _)| earlier == package) {
            build.extend(["-p", package]);
        }
    }
    build.push("--bins");
    cargo::run(ws, "build of the guest binaries", build)?;
    let bin_dir = metadata.target_dir.join(GUEST_TARGET).join(PROFILE);

    println!("vm-test: kernels {}", names(&options.kernels));
    let kernels = options
        .kernels
        .iter()
        .map(|series| kernel::fetch(&vm_dir, *series))
        .collect::<Result<Vec<Kernel>>>()?;

    let initramfs = vm_dir.join("initramfs.cpio");
    if !kernels.is_empty() {
        let size = write_initramfs(&initramfs, &bin_dir)?;
        println!(
            "vm-test: {} ({:.1} MiB)",
            ws.display(&initramfs),
            size as f64 / 1048576.0
        );
    }

    let logs = vm_dir.join("logs");
    fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let mut guests: Vec<Guest> = Vec::new();
    let mut boots: Vec<Boot> = Vec::new();
    let systemd = if options.systemd {
        Some(systemd_disk(&vm_dir, &bin_dir)?)
    } else {
        None
    };
    // The systemd guest first: it is the longest, so the kernel guests run beside it.
    if let Some((kernel, disk)) = &systemd {
        guests.push(Guest {
            name: format!("systemd-{}", kernel.series.name()),
            package: kernel.package.clone(),
            version: kernel.version.clone(),
        });
        boots.push(Boot {
            vmlinuz: &kernel.vmlinuz,
            root: Root::Disk(disk),
            log: logs.join(format!("systemd-{}.log", kernel.series.name())),
            filter: None,
            kvm: options.kvm,
            timeout: Duration::from_secs(SYSTEMD_TIMEOUT_SECS.max(options.timeout.as_secs())),
        });
    }
    for kernel in &kernels {
        guests.push(Guest {
            name: kernel.series.name().to_owned(),
            package: kernel.package.clone(),
            version: kernel.version.clone(),
        });
        boots.push(Boot {
            vmlinuz: &kernel.vmlinuz,
            root: Root::Initramfs(&initramfs),
            log: logs.join(format!("{}.log", kernel.series.name())),
            filter: options.filter.as_deref(),
            kvm: options.kvm,
            timeout: options.timeout,
        });
    }
    if boots.is_empty() {
        bail!("vm-test: nothing to boot (no kernel, and the systemd guest skipped)");
    }
    let outcomes = boot_all(&boots, &guests);

    report(ws, &guests, &boots, &outcomes)
}

/// A guest booted: its name in the summary and the kernel package it runs.
struct Guest {
    name: String,
    package: String,
    version: String,
}

/// The systemd guest's kernel and this run's disk: the cached Debian image (built first if
/// missing) with this run's ghgate and test driver written in. Prints what each step cost.
fn systemd_disk(vm_dir: &Path, bin_dir: &Path) -> Result<(Kernel, std::path::PathBuf)> {
    let kernel = kernel::fetch(vm_dir, SYSTEMD_KERNEL)?;
    let base = rootfs::base(vm_dir)?;
    match base.built_in {
        Some(took) => println!(
            "vm-test: systemd guest root filesystem built in {:.1} s (cold: mmdebstrap + mke2fs)",
            took.as_secs_f64()
        ),
        None => println!("vm-test: systemd guest root filesystem cached (warm)"),
    }
    let dir = vm_dir.join("systemd");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let disk = dir.join("run.img");
    let start = std::time::Instant::now();
    let ghgate = bin_dir.join("ghgate");
    let driver = bin_dir.join(SYSTEMD_DRIVER);
    let probe = bin_dir.join("ghgate-probe");
    rootfs::for_run(
        &base.image,
        &disk,
        &[
            (ghgate.as_path(), "ghgate"),
            (driver.as_path(), SYSTEMD_DRIVER),
            (probe.as_path(), "ghgate-probe"),
        ],
    )?;
    println!(
        "vm-test: systemd guest disk {} prepared in {:.1} s",
        disk.display(),
        start.elapsed().as_secs_f64()
    );
    Ok((kernel, disk))
}

fn names(kernels: &[Series]) -> String {
    kernels.iter().map(|s| s.name()).collect::<Vec<_>>().join(", ")
}

/// Writes the guest's root filesystem: the directories vm-init mounts over, a console for the
/// kernel to open before devtmpfs exists, and the four binaries. Returns its size in bytes.
fn write_initramfs(path: &Path, bin_dir: &Path) -> Result<u64> {
    let partial = path.with_extension("cpio.partial");
    let file = File::create(&partial).with_context(|| format!("creating {}", partial.display()))?;
    let mut archive = cpio::Writer::new(BufWriter::new(file));
    entries(&mut archive, bin_dir).with_context(|| format!("writing {}", partial.display()))?;
    archive
        .finish()
        .and_then(|out| out.into_inner().map_err(|e| e.into_error()))
        .with_context(|| format!("writing {}", partial.display()))?;
    fs::rename(&partial, path)
        .with_context(|| format!("renaming {} to {}", partial.display(), path.display()))?;
    Ok(fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .len())
}

fn entries(archive: &mut cpio::Writer<impl Write>, bin_dir: &Path) -> Result<()> {
    archive.dir("/dev", 0o755)?;
    archive.char_device("/dev/console", 0o600, 5, 1)?;
    for dir in ["/proc", "/sys", "/tmp", "/bin", "/etc"] {
        archive.dir(dir, 0o755)?;
    }
    for (dest, package, bin) in BINARIES {
        let src = bin_dir.join(bin);
        let data = fs::read(&src).with_context(|| {
            format!(
                "reading {} (built by package {package}; did the build above succeed?)",
                src.display()
            )
        })?;
        archive.file(dest, 0o755, &data)?;
    }
    Ok(())
}

/// Boots every guest, at most one per available CPU at a time (each guest has one vCPU).
fn boot_all(boots: &[Boot], guests: &[Guest]) -> Vec<Outcome> {
    let workers = thread::available_parallelism()
        .map_or(1, NonZero::get)
        .min(boots.len());
    println!(
        "vm-test: booting {} guest(s), {workers} at a time, timeout {} s each",
        boots.len(),
        boots.first().map_or(0, |b| b.timeout.as_secs())
    );
    let next = AtomicUsize::new(0);
    let mut outcomes: Vec<Option<Outcome>> = boots.iter().map(|_| None).collect();
    thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(boot) = boots.get(i) else {
                            return done;
                        };
                        let name = &guests[i].name;
                        println!("[{name}] booting {}", guests[i].package);
                        let outcome = qemu::boot(boot);
                        let secs = outcome.elapsed.as_secs_f64();
                        match &outcome.verdict {
                            Verdict::Pass => println!("[{name}] PASS in {secs:.1} s"),
                            Verdict::Fail(reason) => println!("[{name}] FAIL in {secs:.1} s: {reason}"),
                        }
                        done.push((i, outcome));
                    }
                })
            })
            .collect();
        for handle in handles {
            for (i, outcome) in handle.join().expect("a guest-boot thread panicked") {
                outcomes[i] = Some(outcome);
            }
        }
    });
    outcomes
        .into_iter()
        .map(|o| o.expect("every guest was booted"))
        .collect()
}

/// Prints the failed guests' log tails and a summary table; an error if any guest failed.
fn report(ws: &Workspace, guests: &[Guest], boots: &[Boot], outcomes: &[Outcome]) -> Result<()> {
    let mut failed = Vec::new();
    for ((guest, boot), outcome) in guests.iter().zip(boots).zip(outcomes) {
        if let Verdict::Fail(_) = outcome.verdict {
            failed.push(format!("{} (log: {})", guest.name, ws.display(&boot.log)));
            let serial = fs::read(&boot.log).unwrap_or_default();
            let serial = String::from_utf8_lossy(&serial);
            println!(
                "\n--- {} ({}), last {TAIL_LINES} lines of {} ---",
                guest.name,
                guest.package,
                ws.display(&boot.log)
            );
            for line in qemu::tail(&serial, TAIL_LINES) {
                println!("{line}");
            }
            println!("--- end of {} ---", ws.display(&boot.log));
            let qemu_log = boot.qemu_log();
            let said = fs::read_to_string(&qemu_log).unwrap_or_default();
            if !said.trim().is_empty() {
                println!("qemu's messages ({}):", ws.display(&qemu_log));
                for line in qemu::tail(&said, TAIL_LINES) {
                    println!("  {line}");
                }
            }
        }
    }

    let rows: Vec<[String; 5]> = guests
        .iter()
        .zip(outcomes)
        .map(|(guest, outcome)| {
            let (result, reason) = match &outcome.verdict {
                Verdict::Pass => ("PASS", ""),
                Verdict::Fail(reason) => ("FAIL", reason.as_str()),
            };
            [
                guest.name.clone(),
                guest.version.clone(),
                result.to_owned(),
                format!("{:.1}", outcome.elapsed.as_secs_f64()),
                reason.to_owned(),
            ]
        })
        .collect();
    let header = ["guest", "package version", "result", "seconds", "reason"];
    let width = |col: usize| {
        rows.iter()
            .map(|r| r[col].len())
            .chain([header[col].len()])
            .max()
            .unwrap_or(0)
    };
    let (w0, w1, w2, w3) = (width(0), width(1), width(2), width(3));
    let line = |[kernel, version, result, seconds, reason]: [&str; 5]| {
        let row = format!("{kernel:<w0$}  {version:<w1$}  {result:<w2$}  {seconds:>w3$}  {reason}");
        println!("{}", row.trim_end());
    };
    println!();
    line(header);
    for [kernel, version, result, seconds, reason] in &rows {
        line([kernel, version, result, seconds, reason]);
    }

    if !failed.is_empty() {
        bail!("vm-test failed on guest {}", failed.join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_selection_expands_all_and_keeps_order_without_repeats() {
        use KernelArg::*;
        assert_eq!(selection(&[V6_12, V6_1]), [Series::V6_12, Series::V6_1]);
        assert_eq!(
            selection(&[V6_1, All]),
            [Series::V6_1, Series::V5_10, Series::V6_12]
        );
        assert_eq!(selection(&[V5_10, V5_10]), [Series::V5_10]);
    }

    #[test]
    fn default_kernels_are_the_ci_set() {
        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: Args,
        }
        let cli = Cli::parse_from(["vm-test"]);
        assert_eq!(selection(&cli.args.kernel), Series::CI);
        assert_eq!(cli.args.timeout, Options::ci().timeout.as_secs());
        let cli = Cli::parse_from(["vm-test", "--kernel", "5.10,6.12"]);
        assert_eq!(selection(&cli.args.kernel), [Series::V5_10, Series::V6_12]);
        assert!(Cli::try_parse_from(["vm-test", "--kernel", "4.19"]).is_err());
        assert!(Cli::try_parse_from(["vm-test", "--timeout", "0"]).is_err());
    }
}
