//! Enforcement loss as evidence: the gateway keeps a small state file saying since when it has
//! been mediating, beats in it while it runs, and says when it stopped. A start that finds the
//! previous run ended without an orderly stop, or the programs gone, writes a signed record of the
//! gap (what was lost, since when, for how long); while running, a watcher notices programs that
//! were unpinned under it, records that, and attaches them again.
//!
//! This module only observes and reports; attaching is `redirect::attach`'s job.
use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use aya::maps::MapData;
use gateway_common::{counter, map_names};
use serde::{Deserialize, Serialize};
use tracing::{error, warn};

use super::{Maps, Pins};
use crate::record::{
    Recorder,
    model::{EnforcementGap, GapKind, Micros, now_micros},
};

/// The state file in `state_dir`.
pub const STATE_FILE: &str = "enforcement.json";
/// How often the running gateway beats (and checks its programs).
pub const BEAT: Duration = Duration::from_secs(2);
/// Gaps kept in the state file for `status` and `check` (the store keeps them all).
const KEEP_GAPS: usize = 20;

/// What the state file holds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// The running (or last) gateway process.
    pub pid: u32,
    /// `/proc/sys/kernel/random/boot_id` of its boot: a different one means the host rebooted.
    #[serde(default)]
    pub boot_id: String,
    pub started_at: Micros,
    /// The last beat: enforcement was known to be in force then.
    pub alive_at: Micros,
    /// Set by an orderly stop.
    #[serde(default)]
    pub stopped_at: Option<Micros>,
    /// Set by `ghgate detach`.
    #[serde(default)]
    pub detached_at: Option<Micros>,
    /// `on_gateway_down` of the last run: "refuse" or "bypass".
    #[serde(default)]
    pub on_gateway_down: String,
    /// The kernel's refusal and bypass counters at the last beat, to count what happened while
    /// the gateway was away.
    #[serde(default)]
    pub refused_down: u64,
    #[serde(default)]
    pub bypassed_down: u64,
    /// The most recent gaps, newest last.
    #[serde(default)]
    pub gaps: Vec<EnforcementGap>,
}

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(STATE_FILE)
}

pub fn load(state_dir: &Path) -> Option<State> {
    let text = std::fs::read_to_string(path(state_dir)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Written atomically; the file is small and rewritten whole.
pub fn save(state_dir: &Path, state: &State) -> std::io::Result<()> {
    let path = path(state_dir);
    let tmp = path.with_extension("json.tmp");
    std::fs::write(
        &tmp,
        serde_json::to_vec_pretty(state).map_err(std::io::Error::other)?,
    )?;
    std::fs::rename(&tmp, &path)
}

/// What the kernel says at a start, as far as the gap is concerned.
#[derive(Debug, Clone, Copy)]
pub struct Kernel<'a> {
    pub boot_id: &'a str,
    /// The previous run's programs were still pinned when this run started.
    pub still_attached: bool,
    /// The kernel's counters now (only meaningful when `still_attached`).
    pub refused_down: u64,
    pub bypassed_down: u64,
}

/// The gap a start finds, if any, given the previous run's state.
pub fn gap_at_start(previous: Option<&State>, kernel: Kernel, now: Micros) -> Option<EnforcementGap> {
    let prev = previous?;
    let since = prev.stopped_at.unwrap_or(prev.alive_at).max(prev.alive_at);
    let (refused, bypassed) = if kernel.still_attached {
        (
            kernel.refused_down.saturating_sub(prev.refused_down),
            kernel.bypassed_down.saturating_sub(prev.bypassed_down),
        )
    } else {
        (0, 0)
    };
    let (kind, detail) = if !prev.boot_id.is_empty() && prev.boot_id != kernel.boot_id {
        (
            GapKind::Reboot,
            "the host rebooted; the programs were attached again by this start".to_owned(),
        )
    } else if !kernel.still_attached {
        let how = match prev.detached_at {
            Some(_) => "`ghgate detach` removed the programs",
            None => "the programs and their pins were gone (removed by hand, or the host rebooted)",
        };
        (
            GapKind::Detached,
            format!("{how}: connections from the governed cgroup were not mediated"),
        )
    } else if prev.stopped_at.is_none() {
        (
            GapKind::GatewayDown,
            format!(
                "the gateway (pid {}) stopped without an orderly stop; the programs stayed attached ({})",
                prev.pid,
                while_down(&prev.on_gateway_down)
            ),
        )
    } else {
        (
            GapKind::GatewayStopped,
            format!(
                "the gateway (pid {}) was stopped; the programs stayed attached ({})",
                prev.pid,
                while_down(&prev.on_gateway_down)
            ),
        )
    };
    let since = match kind {
        GapKind::Detached => prev.detached_at.unwrap_or(since),
        _ => since,
    };
    Some(EnforcementGap {
        at: now,
        kind,
        since,
        until: now,
        detail,
        refused,
        bypassed,
    })
}

fn while_down(mode: &str) -> &'static str {
    if mode == "bypass" {
        "bypass mode: connections went straight to GitHub, unmediated"
    } else {
        "connections were refused meanwhile"
    }
}

/// Whether a gap lost mediation (as opposed to availability): `check` fails on these.
pub fn lost_mediation(gap: &EnforcementGap) -> bool {
    match gap.kind {
        GapKind::Detached => true,
        // Mediation went on; only the records' copy off the host fell behind.
        GapKind::Reboot | GapKind::SinkBehind => false,
        GapKind::GatewayDown | GapKind::GatewayStopped => {
            gap.bypassed > 0 || gap.detail.contains("bypass mode")
        }
    }
}

/// Changes the shared state and writes it, under its lock: the watcher's beats and the final
/// stop never overwrite each other's facts.
pub fn update(
    state: &Mutex<State>,
    state_dir: &Path,
    change: impl FnOnce(&mut State),
) -> std::io::Result<()> {
    let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
    change(&mut s);
    save(state_dir, &s)
}

impl State {
    /// Appends a gap, keeping the newest few.
    pub fn push_gap(&mut self, gap: EnforcementGap) {
        self.gaps.push(gap);
        let extra = self.gaps.len().saturating_sub(KEEP_GAPS);
        self.gaps.drain(..extra);
    }
}

/// A gap's length, for people.
pub fn span(gap: &EnforcementGap) -> String {
    let secs = gap.until.saturating_sub(gap.since) / 1_000_000;
    match secs {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s => format!("{:.1} h", s as f64 / 3600.0),
    }
}

/// The kernel's refusal and bypass counters for a gateway that is down.
pub fn down_counters(maps: &Maps) -> (u64, u64) {
    let counters = maps.counters().unwrap_or_default();
    let get = |i: u32| {
        counters
            .iter()
            .find(|(name, _)| *name == counter::NAMES[i as usize])
            .map(|(_, v)| *v)
            .unwrap_or(0)
    };
    (get(counter::REFUSED_GATEWAY_DOWN), get(counter::BYPASSED))
}

/// Every pinned map, held open by the watcher so that pins removed under a running gateway can
/// be put back (the maps live on while a file descriptor holds them).
pub struct HeldMaps(Vec<(&'static str, MapData)>);

impl HeldMaps {
    pub fn open(pins: &Pins) -> anyhow::Result<Self> {
        let names = [
            map_names::CONFIG,
            map_names::INTERCEPT_V4,
            map_names::INTERCEPT_V6,
            map_names::GUARD_V4,
            map_names::GUARD_V6,
            map_names::EXEMPT,
            map_names::BY_COOKIE,
            map_names::BY_CLIENT,
            map_names::COUNTERS,
            map_names::EVENTS,
        ];
        let mut held = Vec::with_capacity(names.len());
        for name in names {
            held.push((name, super::maps::open(pins, name)?));
        }
        Ok(Self(held))
    }

    /// Pins again every map whose pin is gone.
    fn repin(&self, pins: &Pins) -> anyhow::Result<usize> {
        std::fs::create_dir_all(pins.maps_dir())?;
        let mut repinned = 0;
        for (name, map) in &self.0 {
            let path = pins.map(name);
            if !path.exists() {
                map.pin(&path)
                    .map_err(|e| anyhow::anyhow!("cannot pin {} again: {e}", path.display()))?;
                repinned += 1;
            }
        }
        Ok(repinned)
    }
}

/// The running gateway's watch: beats in the state file, and when the programs' pins are gone
/// (someone removed them under it), records the gap and attaches the programs again.
pub struct Watch {
    pub pins: Pins,
    pub cgroup_dir: PathBuf,
    pub state_dir: PathBuf,
    pub recorder: Option<Arc<Recorder>>,
    pub held: HeldMaps,
    pub maps: Maps,
    pub state: Arc<Mutex<State>>,
}

impl Watch {
    pub async fn run_forever(self) {
        loop {
            tokio::time::sleep(BEAT).await;
            self.beat().await;
        }
    }

    async fn beat(&self) {
        let now = now_micros();
        if !self.pins.attached() {
            let since = self.state.lock().map(|s| s.alive_at).unwrap_or(now);
            let restored = self.held.repin(&self.pins).and_then(|_| {
                let mut ebpf = super::load(&self.pins)?;
                super::attach(&mut ebpf, &self.cgroup_dir, &self.pins)?;
                Ok(())
            });
            let detail = match &restored {
                Ok(()) => "the programs' pins were removed while the gateway ran: connections from the governed cgroup were not mediated until the gateway attached them again".to_owned(),
                Err(e) => format!("the programs' pins were removed while the gateway ran, and attaching them again failed ({e:#}): connections from the governed cgroup are NOT mediated"),
            };
            let gap = EnforcementGap {
                at: now_micros(),
                kind: GapKind::Detached,
                since,
                until: now_micros(),
                detail,
                refused: 0,
                bypassed: 0,
            };
            match &restored {
                Ok(()) => {
                    warn!(since = since, span = %span(&gap), "enforcement was lost (pins removed) and is restored")
                }
                Err(e) => {
                    error!(error = %format!("{e:#}"), "enforcement is lost: the programs' pins were removed and cannot be restored")
                }
            }
            if let Some(r) = &self.recorder
                && let Err(e) = r.enforcement_gap(gap.clone()).await
            {
                error!(error = %e, "cannot record the enforcement gap");
            }
            if let Err(e) = update(&self.state, &self.state_dir, |s| s.push_gap(gap)) {
                warn!(error = %e, "cannot write the enforcement state file");
            }
        }
        let (refused, bypassed) = down_counters(&self.maps);
        let beat = update(&self.state, &self.state_dir, |s| {
            s.alive_at = now;
            s.refused_down = refused;
            s.bypassed_down = bypassed;
        });
        if let Err(e) = beat {
            warn!(error = %e, "cannot write the enforcement state file");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prev(stopped: bool) -> State {
        State {
            pid: 41,
            boot_id: "boot-a".into(),
            started_at: 1_000_000,
            alive_at: 50_000_000,
            stopped_at: stopped.then_some(50_500_000),
            detached_at: None,
            on_gateway_down: "refuse".into(),
            refused_down: 3,
            bypassed_down: 0,
            gaps: Vec::new(),
        }
    }

    const ATTACHED: Kernel = Kernel {
        boot_id: "boot-a",
        still_attached: true,
        refused_down: 10,
        bypassed_down: 0,
    };

    #[test]
    fn a_first_start_has_no_gap() {
        assert_eq!(gap_at_start(None, ATTACHED, 99), None);
    }

    #[test]
    fn a_crash_is_a_gap_from_the_last_beat_with_what_the_kernel_refused_meanwhile() {
        let gap = gap_at_start(Some(&prev(false)), ATTACHED, 80_000_000).unwrap();
        assert_eq!(gap.kind, GapKind::GatewayDown);
        assert_eq!((gap.since, gap.until), (50_000_000, 80_000_000));
        assert_eq!(gap.refused, 7);
        assert!(gap.detail.contains("pid 41"), "{}", gap.detail);
        assert!(!lost_mediation(&gap), "fail-closed: nothing got through");
        assert_eq!(span(&gap), "30 s");
    }

    #[test]
    fn an_orderly_stop_in_bypass_mode_lost_mediation() {
        let mut p = prev(true);
        p.on_gateway_down = "bypass".into();
        let kernel = Kernel {
            bypassed_down: 4,
            ..ATTACHED
        };
        let gap = gap_at_start(Some(&p), kernel, 90_000_000).unwrap();
        assert_eq!(gap.kind, GapKind::GatewayStopped);
        assert_eq!(gap.since, 50_500_000);
        assert_eq!(gap.bypassed, 4);
        assert!(lost_mediation(&gap));
    }

    #[test]
    fn programs_gone_is_a_detached_gap() {
        let mut p = prev(true);
        p.detached_at = Some(60_000_000);
        let gone = Kernel {
            boot_id: "boot-a",
            still_attached: false,
            refused_down: 0,
            bypassed_down: 0,
        };
        let gap = gap_at_start(Some(&p), gone, 90_000_000).unwrap();
        assert_eq!(gap.kind, GapKind::Detached);
        assert_eq!(gap.since, 60_000_000);
        assert!(gap.detail.contains("ghgate detach"), "{}", gap.detail);
        assert!(lost_mediation(&gap));
        let gap = gap_at_start(Some(&prev(false)), gone, 90_000_000).unwrap();
        assert!(gap.detail.contains("removed by hand"), "{}", gap.detail);
    }

    #[test]
    fn a_reboot_is_its_own_kind_and_lost_nothing_by_itself() {
        let gone = Kernel {
            boot_id: "boot-b",
            still_attached: false,
            refused_down: 0,
            bypassed_down: 0,
        };
        let gap = gap_at_start(Some(&prev(false)), gone, 90_000_000).unwrap();
        assert_eq!(gap.kind, GapKind::Reboot);
        assert!(!lost_mediation(&gap));
    }

    #[test]
    fn the_state_file_round_trips_and_keeps_the_newest_gaps() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = prev(true);
        for i in 0..25 {
            s.push_gap(gap_at_start(Some(&prev(false)), ATTACHED, 60_000_000 + i).unwrap());
        }
        assert_eq!(s.gaps.len(), KEEP_GAPS);
        assert_eq!(s.gaps.last().unwrap().at, 60_000_024);
        save(dir.path(), &s).unwrap();
        assert_eq!(load(dir.path()), Some(s));
    }
}
