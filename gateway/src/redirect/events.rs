//! The kernel's refusals, as the gateway records them: read from the programs' event ring,
//! merged per caller, destination and reason within a moment (a retrying client is one record
//! with a count, not thousands), logged and written to the store.
//!
//! Events the programs wrote while the gateway was away wait in the pinned ring and are recorded
//! at the next start. This module never decides anything: the kernel already refused.
use std::{collections::BTreeMap, net::SocketAddr, sync::Arc, time::Duration};

use aya::maps::{Map, MapData, RingBuf};
use gateway_common::{IPPROTO_MPTCP, IPPROTO_TCP, IPPROTO_UDP, RefusalEvent, map_names, reason};
use tracing::{debug, info, warn};

use super::{Pins, Redirected, comm, kernel_addr, maps};
use crate::{
    egress::Egress,
    identity::Caller,
    record::{
        Recorder,
        model::{self, Micros, RefusalLayer, RefusalReason, Transport},
    },
};

/// How long refusals are gathered (and merged) before they are written: bounds what a flood
/// costs the store. The ring itself is drained as fast as the kernel fills it.
const GATHER: Duration = Duration::from_millis(250);
const IPPROTO_SCTP: u32 = 132;
const SOCK_STREAM: u32 = 1;
const SOCK_DGRAM: u32 = 2;

/// One event as the kernel reported it: a refusal, or a connection egress control let through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelEvent {
    /// Wall-clock time of the event.
    pub at: Micros,
    pub what: What,
    pub transport: Transport,
    pub caller: Redirected,
}

/// What the kernel did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum What {
    Refused(RefusalReason),
    /// Egress control saw it and let it through.
    Seen,
}

fn u32_at(raw: &[u8], offset: usize) -> u32 {
    u32::from_ne_bytes(raw[offset..offset + 4].try_into().expect("4 bytes"))
}

fn u64_at(raw: &[u8], offset: usize) -> u64 {
    u64::from_ne_bytes(raw[offset..offset + 8].try_into().expect("8 bytes"))
}

/// The fields of a [`RefusalEvent`] from its bytes (the layout is `repr(C)` without padding,
/// checked in gateway-common).
fn parse_event(raw: &[u8]) -> Option<RefusalEvent> {
    if raw.len() < std::mem::size_of::<RefusalEvent>() {
        return None;
    }
    let mut comm = [0u8; 16];
    comm.copy_from_slice(&raw[72..88]);
    Some(RefusalEvent {
        boot_ns: u64_at(raw, 0),
        cgroup_id: u64_at(raw, 8),
        reason: u32_at(raw, 16),
        family: u32_at(raw, 20),
        sock_type: u32_at(raw, 24),
        protocol: u32_at(raw, 28),
        addr: [u32_at(raw, 32), u32_at(raw, 36), u32_at(raw, 40), u32_at(raw, 44)],
        port: u32_at(raw, 48),
        tgid: u32_at(raw, 52),
        pid: u32_at(raw, 56),
        uid: u32_at(raw, 60),
        gid: u32_at(raw, 64),
        _pad: u32_at(raw, 68),
        comm,
    })
}

/// The transport a socket type and protocol make, as records name it.
pub fn transport(sock_type: u32, protocol: u32) -> Transport {
    match (sock_type, protocol) {
        (_, IPPROTO_TCP) => Transport::Tcp,
        (_, IPPROTO_MPTCP) => Transport::Mptcp,
        (_, IPPROTO_UDP) => Transport::Udp,
        (_, IPPROTO_SCTP) => Transport::Sctp,
        (SOCK_STREAM, 0) => Transport::Tcp,
        (SOCK_DGRAM, 0) => Transport::Udp,
        (t, p) => Transport::Other(format!("type {t} protocol {p}")),
    }
}

/// Decodes one ring entry; `boot_offset_ns` turns boot-time nanoseconds into wall-clock ones.
pub fn decode(raw: &[u8], boot_offset_ns: i128) -> Option<KernelEvent> {
    let ev = parse_event(raw)?;
    let what = match ev.reason {
        reason::PORT_NOT_ALLOWED => What::Refused(RefusalReason::PortNotAllowed),
        reason::NOT_TCP => What::Refused(RefusalReason::NotTcp),
        reason::FOREIGN_LISTENER => What::Refused(RefusalReason::ForeignListener),
        reason::MAP_ERROR => What::Refused(RefusalReason::MapError),
        reason::GATEWAY_DOWN => What::Refused(RefusalReason::GatewayDown),
        reason::EGRESS_DROPPED => What::Refused(RefusalReason::EgressDropped),
        reason::NOT_ALLOWED => What::Refused(RefusalReason::NotAllowed),
        reason::RAW_SOCKET => What::Refused(RefusalReason::RawSocket),
        reason::SEEN => What::Seen,
        _ => return None,
    };
    // A v4-mapped destination is the IPv4 address it spells (as redirect records store it).
    let orig_dst = match kernel_addr(ev.family, &ev.addr, ev.port).ok()? {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => SocketAddr::V6(v6),
        },
        v4 => v4,
    };
    let at = ((i128::from(ev.boot_ns) + boot_offset_ns) / 1000).max(0);
    Some(KernelEvent {
        at: at as Micros,
        what,
        transport: transport(ev.sock_type, ev.protocol),
        caller: Redirected {
            orig_dst,
            tgid: ev.tgid,
            pid: ev.pid,
            uid: ev.uid,
            gid: ev.gid,
            cgroup_id: ev.cgroup_id,
            comm: comm(&ev.comm),
        },
    })
}

/// Wall-clock minus boot-time, in nanoseconds: what turns a kernel timestamp into a date.
fn boot_offset_ns() -> i128 {
    let now = |clock| {
        nix::time::clock_gettime(clock)
            .map(|t| i128::from(t.tv_sec()) * 1_000_000_000 + i128::from(t.tv_nsec()))
            .unwrap_or(0)
    };
    now(nix::time::ClockId::CLOCK_REALTIME) - now(nix::time::ClockId::CLOCK_BOOTTIME)
}

/// Events merged by caller, destination, transport and what was done: (first, count) each.
pub fn merge(events: Vec<KernelEvent>) -> Vec<(KernelEvent, u64)> {
    let mut merged: BTreeMap<(u32, SocketAddr, Transport, What), (KernelEvent, u64)> = BTreeMap::new();
    for r in events {
        let key = (r.caller.tgid, r.caller.orig_dst, r.transport.clone(), r.what);
        merged.entry(key).and_modify(|(_, n)| *n += 1).or_insert((r, 1));
    }
    let mut out: Vec<_> = merged.into_values().collect();
    out.sort_by_key(|(r, _)| r.at);
    out
}

/// The ring of refusal events, opened from its pin.
pub fn open(pins: &Pins) -> anyhow::Result<RingBuf<MapData>> {
    Ok(RingBuf::try_from(Map::RingBuf(maps::open(
        pins,
        map_names::EVENTS,
    )?))?)
}

/// Reads events forever: logs each refusal (merged) and records it with its caller; records
/// each connection egress control let through with the name it was looked up by (logged only
/// at debug: a quiet log for traffic that changes nothing).
pub async fn record_forever(
    ring: RingBuf<MapData>,
    recorder: Option<Arc<Recorder>>,
    egress: Option<Arc<Egress>>,
) {
    let registered = crate::sys::watch_ring(ring);
    let mut fd = match registered {
        Ok(fd) => fd,
        Err(e) => {
            warn!(error = %e, "cannot watch the kernel's refusal events; refusals are still counted");
            return;
        }
    };
    let mut pending = Vec::new();
    let mut flush = tokio::time::interval(GATHER);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            ready = fd.readable_mut() => match ready {
                Ok(mut guard) => {
                    let offset = boot_offset_ns();
                    while let Some(item) = guard.get_inner_mut().next() {
                        pending.extend(decode(&item, offset));
                    }
                    guard.clear_ready();
                }
                Err(e) => {
                    warn!(error = %e, "the kernel's refusal events cannot be read; refusals are still counted");
                    return;
                }
            },
            _ = flush.tick(), if !pending.is_empty() => {
                for (event, count) in merge(std::mem::take(&mut pending)) {
                    note(&event, count, recorder.as_ref(), egress.as_deref());
                }
            }
        }
    }
}

fn note(r: &KernelEvent, count: u64, recorder: Option<&Arc<Recorder>>, egress: Option<&Egress>) {
    let c = &r.caller;
    let name = egress.and_then(|e| e.name_of(c.orig_dst.ip()));
    let reason = match r.what {
        What::Refused(reason) => reason,
        What::Seen => {
            debug!(orig_dst = %c.orig_dst, transport = %r.transport, name = name.as_deref().unwrap_or(""),
                   tgid = c.tgid, comm = %c.comm, count, "egress seen");
            let Some(recorder) = recorder else { return };
            let caller = Caller::from_kernel_at(c, r.at);
            recorder.egress(
                &caller,
                model::EgressSeen {
                    session: caller.session_id(),
                    at: r.at,
                    orig_dst: c.orig_dst.to_string(),
                    transport: r.transport.clone(),
                    name,
                    count,
                    tgid: c.tgid,
                    uid: c.uid,
                    comm: c.comm.clone(),
                },
            );
            return;
        }
    };
    let detail = match (reason, &name) {
        (RefusalReason::NotAllowed, Some(n)) => {
            Some(format!("not on the egress allow-list (looked up as {n})"))
        }
        (RefusalReason::NotAllowed, None) => {
            Some("not on the egress allow-list (never looked up through the gateway's resolver)".to_owned())
        }
        (RefusalReason::RawSocket, _) => {
            Some("raw and ICMP sockets are refused while egress is blocked".to_owned())
        }
        _ => None,
    };
    info!(layer = "kernel", reason = reason.as_str(), orig_dst = %c.orig_dst, transport = %r.transport,
          tgid = c.tgid, pid = c.pid, uid = c.uid, comm = %c.comm, cgroup_id = c.cgroup_id, count,
          name = name.as_deref().unwrap_or(""), "connection refused");
    crate::telemetry::metrics().refused(RefusalLayer::Kernel, reason, count);
    let Some(recorder) = recorder else { return };
    let caller = Caller::from_kernel_at(c, r.at);
    recorder.refusal(
        &caller,
        model::Refusal {
            session: caller.session_id(),
            at: r.at,
            layer: RefusalLayer::Kernel,
            reason,
            orig_dst: c.orig_dst.to_string(),
            transport: r.transport.clone(),
            client: None,
            sni: None,
            detail,
            count,
            tgid: c.tgid,
            uid: c.uid,
            comm: c.comm.clone(),
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(reason: u32, port: u16, tgid: u32, boot_ns: u64) -> Vec<u8> {
        let ev = RefusalEvent {
            boot_ns,
            cgroup_id: 7,
            reason,
            family: u32::from(gateway_common::AF_INET),
            sock_type: SOCK_STREAM,
            protocol: IPPROTO_TCP,
            addr: [u32::from_ne_bytes([140, 82, 112, 4]), 0, 0, 0],
            port: u32::from(port.to_be()),
            tgid,
            pid: tgid + 1,
            uid: 1000,
            gid: 1000,
            _pad: 0,
            comm: *b"ssh\0\0\0\0\0\0\0\0\0\0\0\0\0",
        };
        // The bytes as the kernel lays the struct out.
        let mut raw = Vec::new();
        raw.extend(ev.boot_ns.to_ne_bytes());
        raw.extend(ev.cgroup_id.to_ne_bytes());
        for w in [ev.reason, ev.family, ev.sock_type, ev.protocol] {
            raw.extend(w.to_ne_bytes());
        }
        for w in ev.addr {
            raw.extend(w.to_ne_bytes());
        }
        for w in [ev.port, ev.tgid, ev.pid, ev.uid, ev.gid, ev._pad] {
            raw.extend(w.to_ne_bytes());
        }
        raw.extend(ev.comm);
        assert_eq!(raw.len(), std::mem::size_of::<RefusalEvent>());
        raw
    }

    #[test]
    fn events_decode_with_wall_clock_times() {
        let r = decode(
            &event(reason::PORT_NOT_ALLOWED, 22, 42, 5_000_000_000),
            1_700_000_000_000_000_000,
        )
        .unwrap();
        assert_eq!(r.what, What::Refused(RefusalReason::PortNotAllowed));
        assert_eq!(r.caller.orig_dst, "140.82.112.4:22".parse().unwrap());
        assert_eq!((r.caller.tgid, r.caller.pid, r.caller.uid), (42, 43, 1000));
        assert_eq!(r.caller.comm, "ssh");
        assert_eq!(r.transport, Transport::Tcp);
        assert_eq!(r.at, 1_700_000_005_000_000);
        assert_eq!(
            decode(&event(99, 22, 42, 0), 0),
            None,
            "unknown reasons are dropped"
        );
        assert_eq!(decode(&[0u8; 10], 0), None, "short entries are dropped");
    }

    #[test]
    fn a_retrying_caller_is_one_record_with_a_count() {
        let mut batch = Vec::new();
        for i in 0..5 {
            batch.push(decode(&event(reason::PORT_NOT_ALLOWED, 22, 42, 1000 + i), 0).unwrap());
        }
        batch.push(decode(&event(reason::PORT_NOT_ALLOWED, 80, 42, 900), 0).unwrap());
        batch.push(decode(&event(reason::PORT_NOT_ALLOWED, 22, 77, 2000), 0).unwrap());
        let merged = merge(batch);
        let counts: Vec<(u16, u32, u64)> = merged
            .iter()
            .map(|(r, n)| (r.caller.orig_dst.port(), r.caller.tgid, *n))
            .collect();
        assert_eq!(counts, [(80, 42, 1), (22, 42, 5), (22, 77, 1)], "in time order");
    }

    #[test]
    fn egress_events_are_seen_or_refused_and_merge_apart() {
        // Microseconds apart: `at` is kept in microseconds.
        let seen = decode(&event(reason::SEEN, 8080, 42, 10_000), 0).unwrap();
        assert_eq!(seen.what, What::Seen);
        let refused = decode(&event(reason::NOT_ALLOWED, 8080, 42, 11_000), 0).unwrap();
        assert_eq!(refused.what, What::Refused(RefusalReason::NotAllowed));
        let raw = decode(&event(reason::RAW_SOCKET, 0, 42, 12_000), 0).unwrap();
        assert_eq!(raw.what, What::Refused(RefusalReason::RawSocket));
        let merged = merge(vec![seen.clone(), refused, seen]);
        let counts: Vec<(What, u64)> = merged.iter().map(|(e, n)| (e.what, *n)).collect();
        assert_eq!(
            counts,
            [(What::Seen, 2), (What::Refused(RefusalReason::NotAllowed), 1)],
            "a refusal is never folded into what was let through"
        );
    }

    #[test]
    fn transports_are_named() {
        assert_eq!(transport(SOCK_DGRAM, IPPROTO_UDP), Transport::Udp);
        assert_eq!(transport(SOCK_STREAM, IPPROTO_MPTCP), Transport::Mptcp);
        assert_eq!(transport(SOCK_STREAM, IPPROTO_SCTP), Transport::Sctp);
        assert_eq!(transport(3, 1).as_str(), "type 3 protocol 1");
    }
}
