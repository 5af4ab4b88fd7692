//! The kernel side, seen from userspace: load the eBPF object, attach it to a cgroup, pin it so
//! enforcement outlives the gateway process, and read and write its maps.
//!
//! Pin layout under `redirect.pin_dir` (bpffs):
//! - `abi<N>/GG_*`: the maps, shared by every gateway generation of the same ABI;
//! - `links/<program>.<generation>`: one pinned link per program and generation.
//!
//! A restarting gateway attaches its new generation before unpinning the old one, so at no moment
//! is the cgroup without programs. This module never attaches to a cgroup it was not given and
//! never removes pins outside `pin_dir`.
pub mod cgroup;
pub mod events;
pub mod exempt;
pub mod intercept;
pub mod live;
pub(crate) mod maps;
pub mod ranges;
pub mod watch;

use std::{
    fs,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSock, CgroupSockAddr, SockOps,
        links::{FdLink, PinnedLink},
    },
};
use gateway_common::{ABI_VERSION, prog_names};

pub use maps::{ClientTable, Maps, Redirected, Synced, client_key, comm, kernel_addr};

/// The compiled eBPF object, built by build.rs and embedded in the binary.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gateway-ebpf"));

/// Where the gateway's pins live.
#[derive(Debug, Clone)]
pub struct Pins {
    root: PathBuf,
}

impl Pins {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }
    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn maps_dir(&self) -> PathBuf {
        self.root.join(format!("abi{ABI_VERSION}"))
    }
    pub fn map(&self, name: &str) -> PathBuf {
        self.maps_dir().join(name)
    }
    pub fn links_dir(&self) -> PathBuf {
        self.root.join("links")
    }
    /// Pinned links, as (program name, path).
    pub fn links(&self) -> Vec<(String, PathBuf)> {
        let Ok(rd) = fs::read_dir(self.links_dir()) else {
            return Vec::new();
        };
        let mut out: Vec<_> = rd
            .filter_map(|e| e.ok())
            .map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let prog = name
                    .rsplit_once('-')
                    .map(|(p, _)| p)
                    .unwrap_or_default()
                    .to_owned();
                (prog, e.path())
            })
            .collect();
        out.sort();
        out
    }
    /// True when every program has a pinned link, i.e. interception is in force.
    pub fn attached(&self) -> bool {
        let links = self.links();
        prog_names::ALL
            .iter()
            .all(|p| links.iter().any(|(name, _)| name == p))
    }
}

/// Refuses early, in one line, when this process cannot load and attach programs.
pub fn check_privileges(what: &str) -> anyhow::Result<()> {
    const CAP_NET_ADMIN: u32 = 12;
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_BPF: u32 = 39;
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    let has = |cap: u32| eff & (1u64 << cap) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_NET_ADMIN)) {
        Ok(())
    } else {
        bail!("{what} needs root (or CAP_BPF + CAP_NET_ADMIN): run it with sudo")
    }
}

/// The conventional bpffs mount point.
const BPFFS: &str = "/sys/fs/bpf";

/// The pin directory must live on a bpffs mount, or pins would silently be plain files. When the
/// pin directory is below /sys/fs/bpf and nothing is mounted there yet (no systemd), mount it,
/// as systemd would.
pub fn ensure_bpffs(pin_root: &Path) -> anyhow::Result<()> {
    if on_bpffs(pin_root)? {
        return Ok(());
    }
    if pin_root.starts_with(BPFFS) && Path::new(BPFFS).is_dir() {
        nix::mount::mount(
            Some("bpf"),
            BPFFS,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .with_context(|| format!("cannot mount bpffs at {BPFFS}"))?;
        tracing::info!(path = BPFFS, "mounted bpffs");
        if on_bpffs(pin_root)? {
            return Ok(());
        }
    }
    bail!(
        "{} is not on a bpffs mount; mount one (mount -t bpf bpf {BPFFS}) or set redirect.pin_dir",
        pin_root.display()
    )
}

fn on_bpffs(path: &Path) -> anyhow::Result<bool> {
    let mut probe = path.to_path_buf();
    while !probe.exists() {
        if !probe.pop() {
            break;
        }
    }
    let fs_type = nix::sys::statfs::statfs(&probe)
        .with_context(|| format!("cannot stat {}", probe.display()))?
        .filesystem_type();
    Ok(fs_type == nix::sys::statfs::BPF_FS_MAGIC)
}

/// Loads the object and every program into the kernel (verifier included), without attaching.
/// Maps are created in, or reused from, `pins`' map directory.
pub fn load(pins: &Pins) -> anyhow::Result<Ebpf> {
    let maps_dir = pins.maps_dir();
    fs::create_dir_all(&maps_dir).with_context(|| format!("cannot create {}", maps_dir.display()))?;
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(&maps_dir)
        .load(EBPF_OBJECT)
        .map_err(|e| {
            if caused_by_errno(&e, libc::ENOSYS) {
                anyhow!(
                    "this kernel has no bpf() system call (built without CONFIG_BPF_SYSCALL, or blocked by a seccomp filter): ghgate cannot run here"
                )
            } else {
                anyhow!("the kernel refused ghgate's eBPF maps: {e}")
            }
        })?;
    for name in prog_names::ALL {
        let prog = ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("program {name} missing from the embedded eBPF object"))?;
        let result = match name {
            prog_names::SOCK_OPS => <&mut SockOps>::try_from(prog).map(|p| p.load()),
            prog_names::EGRESS => <&mut CgroupSkb>::try_from(prog).map(|p| p.load()),
            prog_names::SOCK_CREATE => <&mut CgroupSock>::try_from(prog).map(|p| p.load()),
            _ => <&mut CgroupSockAddr>::try_from(prog).map(|p| p.load()),
        };
        result
            .map_err(anyhow::Error::from)
            .and_then(|r| r.map_err(anyhow::Error::from))
            .map_err(|e| {
                anyhow!(
                    "this kernel cannot run ghgate: program {name} was rejected: {}",
                    error_chain(&e)
                )
            })?;
    }
    Ok(ebpf)
}

/// Whether `errno` is somewhere in an error's chain of causes.
fn caused_by_errno(e: &(dyn std::error::Error + 'static), errno: i32) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if c.downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::raw_os_error)
            == Some(errno)
        {
            return true;
        }
        cause = c.source();
    }
    false
}

fn error_chain(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = e.chain().map(|c| c.to_string()).collect();
    parts.dedup();
    // Verifier logs are long; the first lines name the problem, the tail says where.
    let text = parts.join(": ");
    let lines: Vec<&str> = text.lines().collect();
    if lines.len() > 12 {
        format!(
            "{} … {}",
            lines[..4].join(" | "),
            lines[lines.len() - 6..].join(" | ")
        )
    } else {
        lines.join(" | ")
    }
}

/// Attaches a new generation of every program to `cgroup_dir`, pins its links, then unpins older
/// generations. Returns the new generation's link paths.
pub fn attach(ebpf: &mut Ebpf, cgroup_dir: &Path, pins: &Pins) -> anyhow::Result<Vec<PathBuf>> {
    let cgroup =
        fs::File::open(cgroup_dir).with_context(|| format!("cannot open cgroup {}", cgroup_dir.display()))?;
    let links_dir = pins.links_dir();
    fs::create_dir_all(&links_dir).with_context(|| format!("cannot create {}", links_dir.display()))?;
    let generation = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let mut pinned = Vec::new();
    for name in prog_names::ALL {
        let prog = ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("program {name} missing"))?;
        // Links (bpf_link) imply multi-attach: the old and new generation coexist briefly.
        let link: FdLink = match name {
            prog_names::SOCK_OPS => {
                let p: &mut SockOps = prog.try_into()?;
                let id = p
                    .attach(&cgroup, CgroupAttachMode::Single)
                    .with_context(|| attach_hint(name, cgroup_dir))?;
                p.take_link(id)?.try_into()?
            }
            prog_names::EGRESS => {
                let p: &mut CgroupSkb = prog.try_into()?;
                let id = p
                    .attach(&cgroup, CgroupSkbAttachType::Egress, CgroupAttachMode::Single)
                    .with_context(|| attach_hint(name, cgroup_dir))?;
                p.take_link(id)?.try_into()?
            }
            prog_names::SOCK_CREATE => {
                let p: &mut CgroupSock = prog.try_into()?;
                let id = p
                    .attach(&cgroup, CgroupAttachMode::Single)
                    .with_context(|| attach_hint(name, cgroup_dir))?;
                p.take_link(id)?.try_into()?
            }
            _ => {
                let p: &mut CgroupSockAddr = prog.try_into()?;
                let id = p
                    .attach(&cgroup, CgroupAttachMode::Single)
                    .with_context(|| attach_hint(name, cgroup_dir))?;
                p.take_link(id)?.try_into()?
            }
        };
        let path = links_dir.join(format!("{name}-{generation}"));
        link.pin(&path)
            .with_context(|| format!("cannot pin {}", path.display()))?;
        pinned.push(path);
    }
    for (_, path) in pins.links() {
        if !pinned.contains(&path) {
            unpin_link(&path)?;
        }
    }
    Ok(pinned)
}

fn attach_hint(name: &str, cgroup_dir: &Path) -> String {
    format!(
        "cannot attach {name} to {} (needs Linux ≥ 5.8 with cgroup bpf_link support, and no exclusive program on that cgroup)",
        cgroup_dir.display()
    )
}

fn unpin_link(path: &Path) -> anyhow::Result<()> {
    match PinnedLink::from_pin(path) {
        // Dropping the last reference detaches the program.
        Ok(link) => drop(
            link.unpin()
                .with_context(|| format!("cannot unpin {}", path.display()))?,
        ),
        Err(_) => fs::remove_file(path).with_context(|| format!("cannot remove {}", path.display()))?,
    }
    Ok(())
}

/// What [`detach`] removed.
#[derive(Debug, Default)]
pub struct Detached {
    pub links: usize,
    pub maps: usize,
}

/// Detaches every program and removes every pin under `pins`.
pub fn detach(pins: &Pins) -> anyhow::Result<Detached> {
    let mut done = Detached::default();
    for (_, path) in pins.links() {
        unpin_link(&path)?;
        done.links += 1;
    }
    let _ = fs::remove_dir(pins.links_dir());
    if let Ok(rd) = fs::read_dir(pins.root()) {
        for entry in rd.filter_map(|e| e.ok()) {
            let dir = entry.path();
            let is_maps = entry.file_name().to_string_lossy().starts_with("abi");
            if !is_maps || !dir.is_dir() {
                continue;
            }
            for map in fs::read_dir(&dir)?.filter_map(|e| e.ok()) {
                fs::remove_file(map.path())
                    .with_context(|| format!("cannot remove {}", map.path().display()))?;
                done.maps += 1;
            }
            fs::remove_dir(&dir).with_context(|| format!("cannot remove {}", dir.display()))?;
        }
    }
    if pins.root().exists() {
        fs::remove_dir(pins.root()).with_context(|| {
            format!(
                "cannot remove {} (something else is pinned there?)",
                pins.root().display()
            )
        })?;
    }
    Ok(done)
}
