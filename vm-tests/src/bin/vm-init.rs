//! PID 1 of a vm-test guest: prepare a minimal system, run the guest tests, report one line,
//! power off.
//!
//! The host (`cargo xtask vm-test`) reads exactly one `GHGATE-VM-RESULT:` line from the serial
//! console. This program must never return (PID 1 exiting panics the kernel) and must power off
//! whatever happens, so a guest never outlives its test.
#![allow(
    unsafe_code,
    reason = "PID 1 of a throwaway guest: sets its environment before any thread exists and brings up loopback with ioctls that nix does not wrap"
)]
use std::{
    fs,
    io::Write as _,
    process::{Command, ExitStatus},
    time::Instant,
};

use nix::{
    mount::{MsFlags, mount},
    sys::reboot::{RebootMode, reboot},
};

fn main() {
    let verdict = match setup() {
        Ok(()) => run_tests(),
        Err(e) => Err(format!("guest setup failed: {e}")),
    };
    let line = match verdict {
        Ok(()) => "GHGATE-VM-RESULT: PASS".to_string(),
        Err(why) => format!("GHGATE-VM-RESULT: FAIL {why}"),
    };
    println!("{line}");
    let _ = std::io::stdout().flush();
    nix::unistd::sync();
    let _ = reboot(RebootMode::RB_POWER_OFF);
    // Not reached; but PID 1 must not exit.
    loop {
        std::thread::park();
    }
}

fn mount_fs(source: &str, target: &str, fstype: &str, data: Option<&str>) -> Result<(), String> {
    fs::create_dir_all(target).map_err(|e| format!("mkdir {target}: {e}"))?;
    mount(
        Some(source),
        target,
        Some(fstype),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        data,
    )
    .map_err(|e| format!("mount {fstype} on {target}: {e}"))
}

fn setup() -> Result<(), String> {
    mount_fs("proc", "/proc", "proc", None)?;
    mount_fs("sysfs", "/sys", "sysfs", None)?;
    // devtmpfs needs dev nodes, so no MS_NODEV.
    fs::create_dir_all("/dev").ok();
    mount(
        Some("devtmpfs"),
        "/dev",
        Some("devtmpfs"),
        MsFlags::MS_NOSUID,
        None::<&str>,
    )
    .map_err(|e| format!("mount devtmpfs: {e}"))?;
    mount_fs("tmpfs", "/tmp", "tmpfs", Some("mode=1777"))?;
    mount_fs("bpf", "/sys/fs/bpf", "bpf", None)?;
    mount_fs("cgroup2", "/sys/fs/cgroup", "cgroup2", None)?;
    loopback_up()?;
    // SAFETY-relevant for the harness: whole-host tests refuse to run without this marker.
    // Set before any thread exists.
    // SAFETY: single-threaded at this point; nothing else reads the environment concurrently.
    unsafe { std::env::set_var("GHGATE_VM_GUEST", "1") };
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    println!("vm-init: kernel {release}, guest ready");
    Ok(())
}

/// `ip link set lo up`, with the ioctl the ip command would use.
fn loopback_up() -> Result<(), String> {
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| format!("socket: {e}"))?;
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    use std::os::fd::AsRawFd;
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the ifreq we own, for a socket we own.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut req) < 0 {
            return Err(format!("SIOCGIFFLAGS lo: {}", std::io::Error::last_os_error()));
        }
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS as _, &req) < 0 {
            return Err(format!("SIOCSIFFLAGS lo: {}", std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

fn run_tests() -> Result<(), String> {
    let cmdline = fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let filter = cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("ghgate.filter="))
        .map(str::to_owned);
    let start = Instant::now();
    let mut cmd = Command::new("/bin/vm-guest");
    cmd.env("PATH", "/bin").env("RUST_BACKTRACE", "1");
    if let Some(f) = &filter {
        cmd.arg(f);
    }
    let status: ExitStatus = cmd
        .status()
        .map_err(|e| format!("cannot run /bin/vm-guest: {e}"))?;
    println!("vm-init: guest tests took {:.1} s", start.elapsed().as_secs_f64());
    if status.success() {
        Ok(())
    } else {
        Err(format!("vm-guest exited with {status}"))
    }
}
