//! Booting one guest in QEMU and reading its verdict from the serial log.
//!
//! The guest's init prints exactly one `GHGATE-VM-RESULT: PASS` or `GHGATE-VM-RESULT: FAIL
//! <reason>` line and powers off. A guest passes only if that line says PASS and QEMU then exits
//! by itself. This module must never leave a QEMU running: every path out of [`boot`] has reaped it.
use std::{
    fs::{self, File},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::process;

const MARKER: &str = "GHGATE-VM-RESULT:";
/// How long a guest may take to power off after printing its verdict.
const POWER_OFF_GRACE: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(250);

/// One guest to boot.
pub struct Boot<'a> {
    pub vmlinuz: &'a Path,
    pub root: Root<'a>,
    /// The serial console is written here; QEMU's own messages go to the same path + `.qemu`.
    pub log: PathBuf,
    pub filter: Option<&'a str>,
    pub kvm: bool,
    pub timeout: Duration,
}

/// What the guest runs from.
#[derive(Clone, Copy)]
pub enum Root<'a> {
    /// An initramfs whose init runs the tests and powers off.
    Initramfs(&'a Path),
    /// A disk image (ext4, on NVMe: the cloud kernels build its driver in, so no initramfs is
    /// needed) booting systemd. The guest may reboot: QEMU boots it again, from the same disk.
    Disk(&'a Path),
}

pub enum Verdict {
    Pass,
    Fail(String),
}

pub struct Outcome {
    pub verdict: Verdict,
    pub elapsed: Duration,
}

impl Boot<'_> {
    fn command(&self) -> Command {
        let mut append = String::from("console=ttyS0 panic=-1 loglevel=4");
        if let Root::Disk(_) = self.root {
            append.push_str(" root=/dev/nvme0n1 rootfstype=ext4 rw");
        }
        if let Some(filter) = self.filter {
            append.push_str(" ghgate.filter=");
            append.push_str(filter);
        }
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args(["-machine", "pc", "-accel", if self.kvm { "kvm" } else { "tcg" }])
            .args(["-cpu", "max", "-smp", "1", "-m", "1024"])
            .arg("-nographic");
        if let Root::Initramfs(_) = self.root {
            // An initramfs guest never reboots: if it tries, something is wrong, and QEMU exits.
            cmd.arg("-no-reboot");
        }
        cmd.args(["-nodefaults", "-display", "none"])
            .arg("-serial")
            .arg(format!("file:{}", self.log.display()))
            .arg("-kernel")
            .arg(self.vmlinuz);
        match self.root {
            Root::Initramfs(initramfs) => {
                cmd.arg("-initrd").arg(initramfs);
            }
            Root::Disk(image) => {
                // cache=unsafe: the image is this run's copy, thrown away after.
                cmd.arg("-drive")
                    .arg(format!(
                        "file={},if=none,id=root,format=raw,cache=unsafe",
                        image.display()
                    ))
                    .args(["-device", "nvme,drive=root,serial=ghgate-root"]);
            }
        }
        cmd.args(["-append", &append]);
        cmd
    }

    /// QEMU's own stdout and stderr.
    pub fn qemu_log(&self) -> PathBuf {
        let mut name = self.log.clone().into_os_string();
        name.push(".qemu");
        PathBuf::from(name)
    }
}

/// Boots the guest and waits for it to power off, for at most `timeout`.
pub fn boot(boot: &Boot) -> Outcome {
    let start = Instant::now();
    let verdict = run(boot, start);
    Outcome {
        verdict,
        elapsed: start.elapsed(),
    }
}

fn run(boot: &Boot, start: Instant) -> Verdict {
    // A log from an earlier run must not be mistaken for this one's.
    for path in [&boot.log, &boot.qemu_log()] {
        if let Err(err) = fs::remove_file(path)
            && err.kind() != std::io::ErrorKind::NotFound
        {
            return Verdict::Fail(format!("cannot remove the old {}: {err}", path.display()));
        }
    }
    let qemu_log = match File::create(boot.qemu_log()) {
        Ok(file) => file,
        Err(err) => return Verdict::Fail(format!("cannot create {}: {err}", boot.qemu_log().display())),
    };
    let mut cmd = boot.command();
    let stderr = match qemu_log.try_clone() {
        Ok(file) => file,
        Err(err) => return Verdict::Fail(format!("cannot share {}: {err}", boot.qemu_log().display())),
    };
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(qemu_log))
        .stderr(Stdio::from(stderr));
    println!("$ {}", process::display(&cmd));
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(err) => {
            return Verdict::Fail(format!(
                "could not start qemu-system-x86_64: {err} (`cargo xtask setup` installs it)"
            ));
        }
    };

    let mut reported_at = None;
    let mut parsed_len = 0;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                let serial = read_lossy(&boot.log);
                return match (status.success(), reported(&serial)) {
                    (true, Some(Reported::Pass)) => Verdict::Pass,
                    (true, Some(Reported::Fail(reason))) => Verdict::Fail(reason),
                    (true, None) => Verdict::Fail(no_verdict(&serial)),
                    (false, _) => Verdict::Fail(format!(
                        "qemu exited with {status}: {}",
                        last_line(&read_lossy(&boot.qemu_log())).unwrap_or("no message")
                    )),
                };
            }
            Ok(None) => {}
            Err(err) => {
                kill(&mut child);
                return Verdict::Fail(format!("waiting for qemu: {err}"));
            }
        }
        if start.elapsed() >= boot.timeout {
            kill(&mut child);
            let serial = read_lossy(&boot.log);
            let said = match reported(&serial) {
                Some(Reported::Pass) => " (it had printed PASS but did not power off)",
                Some(Reported::Fail(_)) => " (it had printed FAIL but did not power off)",
                None => "",
            };
            return Verdict::Fail(format!(
                "timed out after {} s; qemu killed{said}",
                boot.timeout.as_secs()
            ));
        }
        // A guest that has given its verdict but hangs on the way out need not use the whole
        // timeout. The log is parsed again only when it has grown.
        let len = fs::metadata(&boot.log).map_or(0, |m| m.len());
        if reported_at.is_none() && len != parsed_len {
            parsed_len = len;
            if reported(&read_lossy(&boot.log)).is_some() {
                reported_at = Some(Instant::now());
            }
        }
        if reported_at.is_some_and(|at| at.elapsed() >= POWER_OFF_GRACE) {
            kill(&mut child);
            let verdict = match reported(&read_lossy(&boot.log)) {
                Some(Reported::Fail(reason)) => format!("{reason}; "),
                _ => String::new(),
            };
            return Verdict::Fail(format!(
                "{verdict}the guest printed its result but did not power off within {} s; qemu killed",
                POWER_OFF_GRACE.as_secs()
            ));
        }
        thread::sleep(POLL);
    }
}

fn kill(child: &mut Child) {
    // An error here means it already exited; wait reaps it either way.
    let _ = child.kill();
    let _ = child.wait();
}

fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default()
}

#[derive(Debug, PartialEq)]
enum Reported {
    Pass,
    Fail(String),
}

/// The verdict line in a serial log; the last one counts, since init prints it just before
/// powering off. The line must be whole (a marker after other text is kernel noise or a test
/// talking about the marker), except that it may follow the firmware's control sequences.
fn reported(serial: &str) -> Option<Reported> {
    let mut lines = serial.lines().rev().flat_map(|line| runs(line).into_iter().rev());
    lines.find_map(|line| {
        let rest = line.trim_end().strip_prefix(MARKER)?.trim();
        if rest == "PASS" {
            return Some(Reported::Pass);
        }
        let reason = rest.strip_prefix("FAIL")?.trim();
        Some(Reported::Fail(if reason.is_empty() {
            "the guest reported FAIL without a reason".to_owned()
        } else {
            reason.to_owned()
        }))
    })
}

/// Why a guest that powered off left no verdict, as far as its log tells.
fn no_verdict(serial: &str) -> String {
    if let Some(panic) = serial.lines().find(|l| l.contains("Kernel panic")) {
        return format!("no {MARKER} line; {}", panic.trim());
    }
    if serial.trim().is_empty() {
        return format!("no {MARKER} line and an empty serial log (did the kernel start?)");
    }
    format!("no {MARKER} line before qemu exited")
}

fn last_line(text: &str) -> Option<&str> {
    text.lines().map(str::trim).rfind(|l| !l.is_empty())
}

/// The last `n` lines of a serial log, safe to print: without the terminal control sequences
/// the firmware writes (SeaBIOS resets and clears the screen).
pub fn tail(text: &str, n: usize) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|line| printable(line))
        .collect()
}

/// `line` without ANSI escape sequences and other control characters (tabs stay).
fn printable(line: &str) -> String {
    runs(line).concat()
}

/// The text between the control sequences of `line`. The firmware's sequences are not followed
/// by a newline, so the first text the guest prints shares a line with them.
fn runs(line: &str) -> Vec<String> {
    let mut runs = vec![String::new()];
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        let separator = match c {
            '\x1b' => {
                // CSI (`ESC [` parameters, then a final byte in @..~) or a two-character escape.
                if chars.next_if_eq(&'[').is_some() {
                    while chars.next().is_some_and(|c| !('@'..='~').contains(&c)) {}
                } else {
                    chars.next();
                }
                true
            }
            '\t' => false,
            c => c.is_control(),
        };
        let current = runs.last_mut().expect("never empty");
        if !separator {
            current.push(c);
        } else if !current.is_empty() {
            runs.push(String::new());
        }
    }
    runs.retain(|run| !run.is_empty());
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_verdict_line() {
        let pass = "[    1.0] Run /init as init process\r\nvm-init: ready\r\nGHGATE-VM-RESULT: PASS\r\n";
        assert_eq!(reported(pass), Some(Reported::Pass));
        let fail = "GHGATE-VM-RESULT: FAIL redirect_v6: connection refused\r\n[ 9.1] reboot: Power down\r\n";
        assert_eq!(
            reported(fail),
            Some(Reported::Fail("redirect_v6: connection refused".to_owned()))
        );
        assert_eq!(
            reported("GHGATE-VM-RESULT: FAIL\n"),
            Some(Reported::Fail(
                "the guest reported FAIL without a reason".to_owned()
            ))
        );
    }

    #[test]
    fn only_a_whole_line_counts_and_the_last_one_wins() {
        assert_eq!(reported("test prints GHGATE-VM-RESULT: PASS\n"), None);
        assert_eq!(reported("GHGATE-VM-RESULT: PASSED\n"), None);
        assert_eq!(reported("GHGATE-VM-RESULT: maybe\n"), None);
        let first_output =
            "Probing EDD (edd=off to disable)... o\x1bc\x1b[?7l\x1b[2JGHGATE-VM-RESULT: FAIL mount\r\n";
        assert_eq!(reported(first_output), Some(Reported::Fail("mount".to_owned())));
        assert_eq!(
            reported("GHGATE-VM-RESULT: PASS\nGHGATE-VM-RESULT: FAIL late\n"),
            Some(Reported::Fail("late".to_owned()))
        );
    }

    #[test]
    fn explains_a_missing_verdict() {
        let panic = "[ 2.0] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100\n";
        assert_eq!(
            no_verdict(panic),
            "no GHGATE-VM-RESULT: line; [ 2.0] Kernel panic - not syncing: Attempted to kill init! \
             exitcode=0x00000100"
        );
        assert!(no_verdict("").contains("empty serial log"));
    }

    #[test]
    fn command_line_follows_the_options() {
        let boot = Boot {
            vmlinuz: Path::new("/k/vmlinuz"),
            root: Root::Initramfs(Path::new("/t/initramfs.cpio")),
            log: PathBuf::from("/t/logs/6.1.log"),
            filter: Some("redirect"),
            kvm: false,
            timeout: Duration::from_secs(1),
        };
        let line = process::display(&boot.command());
        assert_eq!(
            line,
            "qemu-system-x86_64 -machine pc -accel tcg -cpu max -smp 1 -m 1024 -nographic -no-reboot \
             -nodefaults -display none -serial file:/t/logs/6.1.log -kernel /k/vmlinuz \
             -initrd /t/initramfs.cpio \
             -append 'console=ttyS0 panic=-1 loglevel=4 ghgate.filter=redirect'"
        );
        let plain = Boot {
            filter: None,
            kvm: true,
            ..boot
        };
        let line = process::display(&plain.command());
        assert!(line.contains("-accel kvm"), "{line}");
        assert!(
            line.ends_with("-append 'console=ttyS0 panic=-1 loglevel=4'"),
            "{line}"
        );
        assert_eq!(plain.qemu_log(), Path::new("/t/logs/6.1.log.qemu"));
        let systemd = Boot {
            root: Root::Disk(Path::new("/t/systemd.img")),
            filter: None,
            ..plain
        };
        let line = process::display(&systemd.command());
        assert!(!line.contains("-no-reboot"), "the guest reboots once: {line}");
        assert!(!line.contains("-initrd"), "{line}");
        assert!(
            line.contains(
                "-drive file=/t/systemd.img,if=none,id=root,format=raw,cache=unsafe \
                 -device nvme,drive=root,serial=ghgate-root"
            ),
            "{line}"
        );
        assert!(
            line.ends_with("'console=ttyS0 panic=-1 loglevel=4 root=/dev/nvme0n1 rootfstype=ext4 rw'"),
            "{line}"
        );
    }

    #[test]
    fn tail_keeps_the_last_lines_without_terminal_controls() {
        assert_eq!(tail("a\r\nb\r\nc\r\n", 2), ["b", "c"]);
        assert_eq!(tail("a\n", 60), ["a"]);
        let seabios =
            "\x1bc\x1b[?7l\x1b[2J\x1b[0mSeaBIOS (version 1.16.2)\r\nx\x1b[?7l\x1b[2Jvm-init:\tready\n";
        assert_eq!(
            tail(seabios, 60),
            ["SeaBIOS (version 1.16.2)", "xvm-init:\tready"]
        );
    }
}
