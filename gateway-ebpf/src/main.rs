//! ghgate's kernel programs, attached to one cgroup (or the root cgroup in whole-host mode).
//!
//! - `connect4`/`connect6`: a TCP connect() whose destination is in the intercept set is rewritten
//!   to the gateway's listener (only if that listener carries the gateway's mark); the original
//!   destination and the caller are stored by socket cookie. Any other connect() to a guarded
//!   address (GitHub's published ranges: another port, UDP, SCTP…) is refused unless an intercept
//!   entry passes that port.
//! - `sendmsg4`/`sendmsg6`: an unconnected datagram to a guarded address is refused.
//! - `sock_ops`: once the client side is established, the record is also filed under the client's
//!   local address/port, which is what the gateway sees as the peer on accept.
//! - `getpeername4`/`getpeername6`: the client sees the original destination as its peer.
//! - egress control (`GatewayConfig::egress_mode`), for everything that is not GitHub's and not
//!   the gateway's: every UDP or TCP packet to port 53 goes to the gateway's resolver whatever
//!   server the caller named (`recvmsg4`/`recvmsg6` give the answer the source the caller
//!   expects), other connections and datagrams are reported as seen (at most once a second per
//!   caller and destination) and, in block mode, refused unless the allow tries hold the
//!   destination; `sock_create` refuses raw and ICMP sockets in block mode.
//! - `cgroup_skb/egress`: the backstop. A packet still headed for a guarded address after the
//!   socket hooks (a raw socket's hand-built datagram, a connection opened before the programs
//!   were attached) is dropped, unless it belongs to the gateway or to an allowed port.
//!
//! Every refusal is counted and written to the event ring for the gateway to record.
//!
//! These programs must never log per connection on the hot path, never block a connection they do
//! not intercept or guard, never redirect the gateway's own sockets (listed by cookie in
//! `GG_EXEMPT`), and never let a guarded connection through because a map operation failed.
#![no_std]
#![no_main]

use core::{ffi::c_void, mem::size_of_val};

use aya_ebpf::{
    bindings::{
        __sk_buff, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG,
        bpf_sock, bpf_sock_tuple,
    },
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        bpf_ktime_get_boot_ns,
        generated::{bpf_get_socket_cookie, bpf_get_socket_uid, bpf_sk_lookup_tcp, bpf_sk_release},
    },
    macros::{cgroup_skb, cgroup_sock, cgroup_sock_addr, map, sock_ops},
    maps::{Array, LpmTrie, LruHashMap, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::{SkBuffContext, SockAddrContext, SockContext, SockOpsContext},
};
use gateway_common::{
    ACTION_PASS, ACTION_REDIRECT, AF_INET, AF_INET6, ALLOW_PASS, ClientKey, ConnRecord, DNS_PORT,
    EGRESS_BLOCK, EGRESS_OFF, EVENT_RING_BYTES, GUARD_REFUSE, GatewayConfig, IPPROTO_MPTCP, IPPROTO_TCP,
    IPPROTO_UDP as IPPROTO_UDP_U32, InterceptKeyV4, InterceptKeyV6, MAX_ALLOW_ENTRIES, MAX_EXEMPT_SOCKETS,
    MAX_GUARD_ENTRIES, MAX_INTERCEPT_ENTRIES, MAX_SEEN, MAX_TRACKED_CONNECTIONS, ON_DOWN_BYPASS,
    PORT_PREFIX_BITS, RefusalEvent, SEEN_EVERY_NS, SeenKey, counter, reason,
};

/// Kernel return codes of cgroup sock_addr programs (0 makes the call fail with EPERM) and of
/// cgroup_skb programs (0 drops the packet).
const ALLOW: i32 = 1;
const DENY: i32 = 0;
const ETH_P_IP: u32 = 0x0800;
const ETH_P_IPV6: u32 = 0x86DD;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_TCP_U8: u8 = 6;
const SOCK_STREAM: u32 = 1;
const SOCK_DGRAM: u32 = 2;
const SOCK_RAW: u32 = 3;
const IPPROTO_ICMP: u32 = 1;
const IPPROTO_ICMPV6: u32 = 58;
const TCP_CLOSE: u32 = 7;
const BPF_F_CURRENT_NETNS: u64 = u64::MAX; // (u64)-1
/// `::ffff:0:0/96`, the v4-mapped prefix, as the third network-order word.
const V4_MAPPED_WORD: u32 = 0x0000_ffffu32.to_be();
/// `64:ff9b::/96`, the NAT64 well-known prefix, as the first network-order word.
const NAT64_WORD: u32 = 0x0064_ff9bu32.to_be();

#[map(name = "GG_CONFIG")]
static CONFIG: Array<GatewayConfig> = Array::pinned(1, 0);

#[map(name = "GG_INTERCEPT4")]
static INTERCEPT_V4: LpmTrie<InterceptKeyV4, u32> = LpmTrie::pinned(MAX_INTERCEPT_ENTRIES, 0);

#[map(name = "GG_INTERCEPT6")]
static INTERCEPT_V6: LpmTrie<InterceptKeyV6, u32> = LpmTrie::pinned(MAX_INTERCEPT_ENTRIES, 0);

#[map(name = "GG_GUARD4")]
static GUARD_V4: LpmTrie<u32, u32> = LpmTrie::pinned(MAX_GUARD_ENTRIES, 0);

#[map(name = "GG_GUARD6")]
static GUARD_V6: LpmTrie<[u32; 4], u32> = LpmTrie::pinned(MAX_GUARD_ENTRIES, 0);

#[map(name = "GG_EXEMPT")]
static EXEMPT: LruHashMap<u64, u32> = LruHashMap::pinned(MAX_EXEMPT_SOCKETS, 0);

#[map(name = "GG_BY_COOKIE")]
static BY_COOKIE: LruHashMap<u64, ConnRecord> = LruHashMap::pinned(MAX_TRACKED_CONNECTIONS, 0);

#[map(name = "GG_BY_CLIENT")]
static BY_CLIENT: LruHashMap<ClientKey, ConnRecord> = LruHashMap::pinned(MAX_TRACKED_CONNECTIONS, 0);

#[map(name = "GG_COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(counter::COUNT, 0);

#[map(name = "GG_EVENTS")]
static EVENTS: RingBuf = RingBuf::pinned(EVENT_RING_BYTES, 0);

#[map(name = "GG_ALLOW4")]
static ALLOW_V4: LpmTrie<InterceptKeyV4, u32> = LpmTrie::pinned(MAX_ALLOW_ENTRIES, 0);

#[map(name = "GG_ALLOW6")]
static ALLOW_V6: LpmTrie<InterceptKeyV6, u32> = LpmTrie::pinned(MAX_ALLOW_ENTRIES, 0);

#[map(name = "GG_SEEN")]
static SEEN: LruHashMap<SeenKey, u64> = LruHashMap::pinned(MAX_SEEN, 0);

#[inline(always)]
fn bump(index: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot of a map value, valid for this program run.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
fn config() -> Option<&'static GatewayConfig> {
    match CONFIG.get(0) {
        Some(cfg) if cfg.enabled != 0 => Some(cfg),
        _ => None,
    }
}

/// The destination of a call, as the programs reason about it.
#[derive(Clone, Copy)]
struct Dest {
    /// The socket's family: how the destination is written back.
    family: u16,
    /// As written by the caller (v6 words, or the v4 address in `[0]`).
    addr: [u32; 4],
    /// The IPv4 address to look up: the v4 destination, or the one a v4-mapped or NAT64 v6
    /// destination embeds.
    v4: Option<u32>,
    port: u32,
    sock_type: u32,
    protocol: u32,
}

impl Dest {
    #[inline(always)]
    fn v4(ctx: &SockAddrContext) -> Self {
        let sa = ctx.sock_addr;
        // SAFETY: these ctx fields are readable in connect4/sendmsg4 programs.
        let (addr, port, sock_type, protocol) =
            unsafe { ((*sa).user_ip4, (*sa).user_port, (*sa).type_, (*sa).protocol) };
        Self {
            family: AF_INET,
            addr: [addr, 0, 0, 0],
            v4: Some(addr),
            port,
            sock_type,
            protocol,
        }
    }

    #[inline(always)]
    fn v6(ctx: &SockAddrContext) -> Self {
        let sa = ctx.sock_addr;
        // SAFETY: these ctx fields are readable in connect6/sendmsg6 programs; user_ip6 is read
        // as 32-bit words.
        let (addr, port, sock_type, protocol) = unsafe {
            (
                [
                    (*sa).user_ip6[0],
                    (*sa).user_ip6[1],
                    (*sa).user_ip6[2],
                    (*sa).user_ip6[3],
                ],
                (*sa).user_port,
                (*sa).type_,
                (*sa).protocol,
            )
        };
        let mapped = addr[0] == 0 && addr[1] == 0 && addr[2] == V4_MAPPED_WORD;
        let nat64 = addr[0] == NAT64_WORD && addr[1] == 0 && addr[2] == 0;
        Self {
            family: AF_INET6,
            addr,
            v4: if mapped || nat64 { Some(addr[3]) } else { None },
            port,
            sock_type,
            protocol,
        }
    }

    /// A TCP stream (MPTCP included: it falls back to TCP against the gateway).
    #[inline(always)]
    fn is_tcp(&self) -> bool {
        self.sock_type == SOCK_STREAM && (self.protocol == IPPROTO_TCP || self.protocol == IPPROTO_MPTCP)
    }

    /// The intercept trie's verdict for this (address, port), if an entry matches.
    #[inline(always)]
    fn intercept(&self) -> Option<u32> {
        let found = match self.v4 {
            Some(addr) => INTERCEPT_V4
                .get(Key::new(
                    PORT_PREFIX_BITS + 32,
                    InterceptKeyV4 {
                        port: self.port,
                        addr,
                    },
                ))
                .copied(),
            None => INTERCEPT_V6
                .get(Key::new(
                    PORT_PREFIX_BITS + 128,
                    InterceptKeyV6 {
                        port: self.port,
                        addr: self.addr,
                    },
                ))
                .copied(),
        };
        found
    }

    /// Does the egress allow-list hold this destination, on its port or on every port (0)?
    #[inline(always)]
    fn allowed(&self) -> bool {
        let on = |port: u32| match self.v4 {
            Some(addr) => ALLOW_V4
                .get(Key::new(PORT_PREFIX_BITS + 32, InterceptKeyV4 { port, addr }))
                .copied(),
            None => ALLOW_V6
                .get(Key::new(
                    PORT_PREFIX_BITS + 128,
                    InterceptKeyV6 {
                        port,
                        addr: self.addr,
                    },
                ))
                .copied(),
        };
        on(self.port) == Some(ALLOW_PASS) || on(0) == Some(ALLOW_PASS)
    }

    /// A UDP or TCP packet to port 53: DNS, whatever server it names.
    #[inline(always)]
    fn is_dns(&self) -> bool {
        self.port == u32::from(DNS_PORT.to_be())
            && (self.is_tcp()
                || (self.sock_type == SOCK_DGRAM && (self.protocol == IPPROTO_UDP_U32 || self.protocol == 0)))
    }

    #[inline(always)]
    fn guarded(&self) -> bool {
        let found = match self.v4 {
            Some(addr) => GUARD_V4.get(Key::new(32, addr)).copied(),
            None => GUARD_V6.get(Key::new(128, self.addr)).copied(),
        };
        found == Some(GUARD_REFUSE)
    }

    /// Is this the gateway's own listener?
    #[inline(always)]
    fn is_listener(&self, cfg: &GatewayConfig) -> bool {
        match (self.family, self.v4) {
            (AF_INET, Some(addr)) => addr == cfg.listen_v4_addr && self.port == cfg.listen_v4_port,
            (_, Some(addr)) => {
                self.addr[2] == V4_MAPPED_WORD
                    && addr == cfg.listen_v4_addr
                    && self.port == cfg.listen_v4_port
            }
            (_, None) => self.addr == cfg.listen_v6_addr && self.port == cfg.listen_v6_port,
        }
    }
}

#[cgroup_sock_addr(connect4)]
pub fn ghgate_connect4(ctx: SockAddrContext) -> i32 {
    on_connect(&ctx, Dest::v4(&ctx))
}

#[cgroup_sock_addr(connect6)]
pub fn ghgate_connect6(ctx: SockAddrContext) -> i32 {
    on_connect(&ctx, Dest::v6(&ctx))
}

#[cgroup_sock_addr(sendmsg4)]
pub fn ghgate_sendmsg4(ctx: SockAddrContext) -> i32 {
    on_sendmsg(&ctx, Dest::v4(&ctx))
}

#[cgroup_sock_addr(sendmsg6)]
pub fn ghgate_sendmsg6(ctx: SockAddrContext) -> i32 {
    on_sendmsg(&ctx, Dest::v6(&ctx))
}

#[inline(always)]
fn on_connect(ctx: &SockAddrContext, dst: Dest) -> i32 {
    let Some(cfg) = config() else {
        return ALLOW;
    };
    bump(counter::INSPECTED);
    if dst.is_listener(cfg) {
        return ALLOW;
    }
    let verdict = if dst.is_tcp() { dst.intercept() } else { None };
    match verdict {
        Some(ACTION_REDIRECT) if !exempt(ctx) => redirect(ctx, cfg, &dst),
        Some(ACTION_PASS) if dst.guarded() => {
            bump(counter::PASSED_ALLOWED_PORT);
            ALLOW
        }
        Some(_) => ALLOW,
        None if dst.guarded() && !exempt(ctx) => {
            let why = if dst.is_tcp() {
                counter::REFUSED_PORT
            } else {
                counter::REFUSED_NOT_TCP
            };
            refuse(&dst, why)
        }
        None => egress(ctx, cfg, &dst),
    }
}

#[inline(always)]
fn on_sendmsg(ctx: &SockAddrContext, dst: Dest) -> i32 {
    let Some(cfg) = config() else {
        return ALLOW;
    };
    bump(counter::INSPECTED);
    if dst.is_listener(cfg) {
        return ALLOW;
    }
    if dst.guarded() {
        if exempt(ctx) {
            return ALLOW;
        }
        return refuse(&dst, counter::REFUSED_NOT_TCP);
    }
    egress(ctx, cfg, &dst)
}

/// Egress control for a connect() or sendmsg() that is neither GitHub's nor the gateway's.
#[inline(always)]
fn egress(ctx: &SockAddrContext, cfg: &GatewayConfig, dst: &Dest) -> i32 {
    if cfg.egress_mode == EGRESS_OFF || exempt(ctx) {
        return ALLOW;
    }
    if dst.is_dns() && cfg.dns_port != 0 {
        return to_resolver(ctx, cfg, dst);
    }
    if cfg.egress_mode == EGRESS_BLOCK && !dst.allowed() {
        bump(counter::REFUSED_NOT_ALLOWED);
        report(dst, reason::NOT_ALLOWED);
        return DENY;
    }
    bump(counter::EGRESS_SEEN);
    seen(dst);
    ALLOW
}

/// Reports a connection or datagram egress control let through, at most once a second for one
/// caller and destination (a chatty UDP socket is not an event per packet).
#[inline(always)]
fn seen(dst: &Dest) {
    let key = SeenKey {
        addr: dst.addr,
        port: dst.port,
        family: u32::from(dst.family),
        protocol: dst.protocol,
        tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
    };
    // SAFETY: plain helper call valid in every program type.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    // SAFETY: the value is copied out at once, never kept.
    if let Some(last) = unsafe { SEEN.get(&key) }.copied()
        && now.wrapping_sub(last) < SEEN_EVERY_NS
    {
        return;
    }
    // A failed insert only costs a repeated event.
    let _ = SEEN.insert(&key, &now, 0);
    report(dst, reason::SEEN);
}

/// Sends DNS to the gateway's resolver (which learns the answers before the caller gets them),
/// remembering the server the caller named so its answer can come from there.
#[inline(always)]
fn to_resolver(ctx: &SockAddrContext, cfg: &GatewayConfig, dst: &Dest) -> i32 {
    let mapped = dst.family == AF_INET6 && dst.addr[2] == V4_MAPPED_WORD;
    // The answer's source could not be put back without the record: the caller would drop it.
    if remember_dest(ctx, dst, dst.family == AF_INET || mapped).is_err() {
        return DENY;
    }
    rewrite_dest(ctx, cfg, dst, mapped, cfg.dns_port);
    bump(counter::DNS_REDIRECTED);
    ALLOW
}

#[cgroup_sock_addr(recvmsg4)]
pub fn ghgate_recv4(ctx: SockAddrContext) -> i32 {
    let Some(cfg) = config() else {
        return ALLOW;
    };
    // SAFETY: recvmsg4 programs read and write the source address as 32-bit words.
    unsafe {
        let sa = ctx.sock_addr;
        if cfg.dns_port == 0 || (*sa).user_port != cfg.dns_port || (*sa).user_ip4 != cfg.listen_v4_addr {
            return ALLOW;
        }
        let cookie = bpf_get_socket_cookie(sa as *mut c_void);
        if let Some(rec) = BY_COOKIE.get(&cookie)
            && rec.family == AF_INET as u32
        {
            (*sa).user_ip4 = rec.orig_addr[0];
            (*sa).user_port = rec.orig_port;
        }
    }
    ALLOW
}

#[cgroup_sock_addr(recvmsg6)]
pub fn ghgate_recv6(ctx: SockAddrContext) -> i32 {
    let Some(cfg) = config() else {
        return ALLOW;
    };
    // SAFETY: as above, with 32-bit accesses to user_ip6.
    unsafe {
        let sa = ctx.sock_addr;
        let from = [
            (*sa).user_ip6[0],
            (*sa).user_ip6[1],
            (*sa).user_ip6[2],
            (*sa).user_ip6[3],
        ];
        let mapped_listener = [0, 0, V4_MAPPED_WORD, cfg.listen_v4_addr];
        if cfg.dns_port == 0
            || (*sa).user_port != cfg.dns_port
            || (from != cfg.listen_v6_addr && from != mapped_listener)
        {
            return ALLOW;
        }
        let cookie = bpf_get_socket_cookie(sa as *mut c_void);
        if let Some(rec) = BY_COOKIE.get(&cookie) {
            let addr = if rec.family == AF_INET as u32 {
                [0, 0, V4_MAPPED_WORD, rec.orig_addr[0]]
            } else {
                rec.orig_addr
            };
            (*sa).user_ip6[0] = addr[0];
            (*sa).user_ip6[1] = addr[1];
            (*sa).user_ip6[2] = addr[2];
            (*sa).user_ip6[3] = addr[3];
            (*sa).user_port = rec.orig_port;
        }
    }
    ALLOW
}

/// In block mode, a raw or ICMP socket could reach any address without a connect() or sendmsg()
/// these programs see: it is refused at creation.
#[cgroup_sock(sock_create)]
pub fn ghgate_sockcr(ctx: SockContext) -> i32 {
    let Some(cfg) = config() else {
        return ALLOW;
    };
    if cfg.egress_mode != EGRESS_BLOCK {
        return ALLOW;
    }
    // SAFETY: family, type and protocol are readable in sock_create programs.
    let (family, sock_type, protocol) =
        unsafe { ((*ctx.sock).family, (*ctx.sock).type_, (*ctx.sock).protocol) };
    let inet = family == u32::from(AF_INET) || family == u32::from(AF_INET6);
    let icmp = protocol == IPPROTO_ICMP || protocol == IPPROTO_ICMPV6;
    if !inet || (sock_type != SOCK_RAW && !icmp) {
        return ALLOW;
    }
    bump(counter::REFUSED_RAW_SOCKET);
    let dst = Dest {
        family: family as u16,
        addr: [0; 4],
        v4: None,
        port: 0,
        sock_type,
        protocol,
    };
    report(&dst, reason::RAW_SOCKET);
    DENY
}

/// Is the calling socket the gateway's own (registered by cookie before its connect)?
#[inline(always)]
fn exempt(ctx: &SockAddrContext) -> bool {
    // SAFETY: plain helper call valid in cgroup sock_addr programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr as *mut c_void) };
    // SAFETY: the value is only compared, never kept.
    if unsafe { EXEMPT.get(&cookie) }.is_some() {
        bump(counter::SELF_EXCLUDED);
        return true;
    }
    false
}

#[cgroup_skb]
pub fn ghgate_egress(ctx: SkBuffContext) -> i32 {
    // A packet the program cannot read is not one it can tell is headed for GitHub.
    try_egress(&ctx).unwrap_or(ALLOW)
}

#[inline(always)]
fn try_egress(ctx: &SkBuffContext) -> Result<i32, i64> {
    if config().is_none() {
        return Ok(ALLOW);
    }
    // cgroup_skb packets begin at the network header; `protocol` is in network order.
    let proto = u32::from(u16::from_be(ctx.skb.protocol() as u16));
    let (dst, transport, l4) = if proto == ETH_P_IP {
        let first: u8 = ctx.load(0)?;
        let transport: u8 = ctx.load(9)?;
        let addr: u32 = ctx.load(16)?;
        (
            Dest {
                family: AF_INET,
                addr: [addr, 0, 0, 0],
                v4: Some(addr),
                port: 0,
                sock_type: 0,
                protocol: u32::from(transport),
            },
            transport,
            usize::from(first & 0x0f) * 4,
        )
    } else if proto == ETH_P_IPV6 {
        let transport: u8 = ctx.load(6)?;
        let addr: [u32; 4] = [ctx.load(24)?, ctx.load(28)?, ctx.load(32)?, ctx.load(36)?];
        let nat64 = addr[0] == NAT64_WORD && addr[1] == 0 && addr[2] == 0;
        (
            Dest {
                family: AF_INET6,
                addr,
                v4: if nat64 { Some(addr[3]) } else { None },
                port: 0,
                sock_type: 0,
                protocol: u32::from(transport),
            },
            transport,
            40,
        )
    } else {
        return Ok(ALLOW);
    };
    if !dst.guarded() {
        return Ok(ALLOW);
    }
    // SAFETY: plain helper call valid in cgroup_skb programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.skb.skb as *mut c_void) };
    // SAFETY: the value is only compared, never kept.
    if unsafe { EXEMPT.get(&cookie) }.is_some() {
        return Ok(ALLOW);
    }
    let mut dst = dst;
    if transport == IPPROTO_TCP_U8 || transport == IPPROTO_UDP {
        let port_be: u16 = ctx.load(l4 + 2)?;
        dst.port = u32::from(port_be);
    }
    // A TCP connection to an allowed port of a guarded address passed connect(): its packets too.
    if transport == IPPROTO_TCP_U8 && dst.intercept() == Some(ACTION_PASS) {
        return Ok(ALLOW);
    }
    bump(counter::DROPPED_EGRESS);
    // Before 6.x a cgroup_skb program cannot ask for the current task (and a packet need not be
    // sent in its sender's context anyway): the socket's owner is what is known.
    // SAFETY: plain helper call valid in cgroup_skb programs.
    let uid = unsafe { bpf_get_socket_uid(ctx.skb.skb as *mut __sk_buff) };
    write_event(
        &dst,
        reason::EGRESS_DROPPED,
        Who {
            tgid: 0,
            pid: 0,
            uid,
            gid: 0,
            cgroup_id: 0,
            comm: [0; 16],
        },
    );
    Ok(DENY)
}

/// Counts a refusal, reports it, and fails the call (EPERM).
#[inline(always)]
fn refuse(dst: &Dest, counter_index: u32) -> i32 {
    bump(counter_index);
    let why = match counter_index {
        counter::REFUSED_PORT => reason::PORT_NOT_ALLOWED,
        counter::REFUSED_NOT_TCP => reason::NOT_TCP,
        counter::REFUSED_FOREIGN_LISTENER => reason::FOREIGN_LISTENER,
        _ => reason::MAP_ERROR,
    };
    report(dst, why);
    DENY
}

/// Writes a refusal event; a full ring only loses the event (counted), never the refusal.
#[inline(always)]
fn report(dst: &Dest, why: u32) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    // SAFETY: plain helper call valid in cgroup sock_addr programs.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    write_event(
        dst,
        why,
        Who {
            tgid: (pid_tgid >> 32) as u32,
            pid: pid_tgid as u32,
            uid: uid_gid as u32,
            gid: (uid_gid >> 32) as u32,
            cgroup_id,
            comm: bpf_get_current_comm().unwrap_or([0; 16]),
        },
    );
}

/// Who made a refused call or packet, as far as the program can tell.
struct Who {
    tgid: u32,
    pid: u32,
    uid: u32,
    gid: u32,
    cgroup_id: u64,
    comm: [u8; 16],
}

/// Writes a refusal event; a full ring only loses the event (counted), never the refusal.
#[inline(always)]
fn write_event(dst: &Dest, why: u32, who: Who) {
    let Some(mut entry) = EVENTS.reserve::<RefusalEvent>(0) else {
        bump(counter::EVENTS_LOST);
        return;
    };
    // SAFETY: plain helper call valid in every program type.
    let boot_ns = unsafe { bpf_ktime_get_boot_ns() };
    entry.write(RefusalEvent {
        boot_ns,
        cgroup_id: who.cgroup_id,
        reason: why,
        family: u32::from(dst.family),
        sock_type: dst.sock_type,
        protocol: dst.protocol,
        addr: dst.addr,
        port: dst.port,
        tgid: who.tgid,
        pid: who.pid,
        uid: who.uid,
        gid: who.gid,
        _pad: 0,
        comm: who.comm,
    });
    entry.submit(0);
}

/// Sends an intercepted TCP connect to the gateway, if the gateway is the one listening.
#[inline(always)]
fn redirect(ctx: &SockAddrContext, cfg: &GatewayConfig, dst: &Dest) -> i32 {
    // A v4 or v4-mapped destination goes to the v4 listener; a NAT64 or plain v6 one to the v6
    // listener (the gateway dials the address as written).
    let mapped = dst.family == AF_INET6 && dst.addr[2] == V4_MAPPED_WORD;
    let to_v4 = dst.family == AF_INET || mapped;
    match listener(ctx, cfg, to_v4) {
        Listener::Gateway => {}
        Listener::Foreign => return refuse(dst, counter::REFUSED_FOREIGN_LISTENER),
        Listener::None if cfg.on_gateway_down == ON_DOWN_BYPASS => {
            bump(counter::BYPASSED);
            return ALLOW;
        }
        // Fail-closed: the connect goes to the dead port and fails with ECONNREFUSED.
        Listener::None => {
            bump(counter::REFUSED_GATEWAY_DOWN);
            report(dst, reason::GATEWAY_DOWN);
        }
    }
    // Without a record the gateway could not tell where the connection was going; letting it
    // through would bypass the gateway: refuse it.
    if remember_dest(ctx, dst, to_v4).is_err() {
        return DENY;
    }
    let port = if to_v4 {
        cfg.listen_v4_port
    } else {
        cfg.listen_v6_port
    };
    rewrite_dest(ctx, cfg, dst, mapped, port);
    bump(if to_v4 {
        counter::REDIRECTED_V4
    } else {
        counter::REDIRECTED_V6
    });
    ALLOW
}

/// Remembers where the caller was going (a v4 or v4-mapped destination as v4) under the
/// socket's cookie; a failure is counted and reported, and the caller must refuse.
#[inline(always)]
fn remember_dest(ctx: &SockAddrContext, dst: &Dest, to_v4: bool) -> Result<(), ()> {
    let (family, orig) = if to_v4 {
        (AF_INET, [dst.v4.unwrap_or(dst.addr[0]), 0, 0, 0])
    } else {
        (AF_INET6, dst.addr)
    };
    remember(ctx, family, orig, dst.port).inspect_err(|()| {
        bump(counter::MAP_ERRORS);
        report(dst, reason::MAP_ERROR);
    })
}

/// Points the caller at the gateway's address in its own family (a v4-mapped destination at the
/// mapped v4 listener), on `port`.
#[inline(always)]
fn rewrite_dest(ctx: &SockAddrContext, cfg: &GatewayConfig, dst: &Dest, mapped: bool, port: u32) {
    let sa = ctx.sock_addr;
    // SAFETY: connect and sendmsg programs may write the destination; every store is 32 bits
    // wide (the verifier rejects narrower writes to user_ip4/user_port).
    unsafe {
        if dst.family == AF_INET {
            (*sa).user_ip4 = cfg.listen_v4_addr;
        } else {
            let addr = if mapped {
                [0, 0, V4_MAPPED_WORD, cfg.listen_v4_addr]
            } else {
                cfg.listen_v6_addr
            };
            (*sa).user_ip6[0] = addr[0];
            (*sa).user_ip6[1] = addr[1];
            (*sa).user_ip6[2] = addr[2];
            (*sa).user_ip6[3] = addr[3];
        }
        (*sa).user_port = port;
    }
}

enum Listener {
    /// A socket carrying the gateway's mark listens on the gateway's address.
    Gateway,
    /// Something else listens there: a process that bound the port while the gateway was away.
    Foreign,
    None,
}

/// Who listens on the gateway's address (v4 or v6)? A dead gateway's socket disappears with its
/// process, even after kill -9.
#[inline(always)]
fn listener(ctx: &SockAddrContext, cfg: &GatewayConfig, v4: bool) -> Listener {
    // SAFETY: an all-zero bpf_sock_tuple is a valid value of this plain C union.
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    let len = if v4 {
        // Writing union fields is safe; the port is already in network order.
        tuple.__bindgen_anon_1.ipv4.daddr = cfg.listen_v4_addr;
        tuple.__bindgen_anon_1.ipv4.dport = cfg.listen_v4_port as u16;
        // SAFETY: reading back the member just written.
        size_of_val(unsafe { &tuple.__bindgen_anon_1.ipv4 }) as u32
    } else {
        tuple.__bindgen_anon_1.ipv6.daddr = cfg.listen_v6_addr;
        tuple.__bindgen_anon_1.ipv6.dport = cfg.listen_v6_port as u16;
        // SAFETY: as above.
        size_of_val(unsafe { &tuple.__bindgen_anon_1.ipv6 }) as u32
    };
    // SAFETY: the tuple lives on this program's stack for the duration of the call; a socket the
    // lookup returns is read and released before returning, as the verifier demands.
    unsafe {
        let sk = bpf_sk_lookup_tcp(
            ctx.sock_addr as *mut c_void,
            &mut tuple as *mut bpf_sock_tuple,
            len,
            BPF_F_CURRENT_NETNS,
            0,
        );
        if sk.is_null() {
            return Listener::None;
        }
        let mark = (*(sk as *const bpf_sock)).mark;
        bpf_sk_release(sk as *mut c_void);
        if mark == cfg.listener_mark {
            Listener::Gateway
        } else {
            Listener::Foreign
        }
    }
}

#[inline(always)]
fn remember(ctx: &SockAddrContext, family: u16, addr: [u32; 4], port: u32) -> Result<(), ()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    // SAFETY: plain helper calls valid in cgroup sock_addr programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr as *mut c_void) };
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let record = ConnRecord {
        orig_addr: addr,
        orig_port: port,
        family: family as u32,
        tgid: (pid_tgid >> 32) as u32,
        pid: pid_tgid as u32,
        uid: uid_gid as u32,
        gid: (uid_gid >> 32) as u32,
        cgroup_id,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
        cookie,
    };
    BY_COOKIE.insert(&cookie, &record, 0).map_err(|_| ())
}

#[cgroup_sock_addr(getpeername4)]
pub fn ghgate_peer4(ctx: SockAddrContext) -> i32 {
    // SAFETY: reading the cookie and rewriting user_ip4/user_port is allowed in getpeername4.
    unsafe {
        let cookie = bpf_get_socket_cookie(ctx.sock_addr as *mut c_void);
        if let Some(rec) = BY_COOKIE.get(&cookie) {
            if rec.family == AF_INET as u32 {
                (*ctx.sock_addr).user_ip4 = rec.orig_addr[0];
                (*ctx.sock_addr).user_port = rec.orig_port;
            }
        }
    }
    ALLOW
}

#[cgroup_sock_addr(getpeername6)]
pub fn ghgate_peer6(ctx: SockAddrContext) -> i32 {
    // SAFETY: as above, with 32-bit stores to user_ip6.
    unsafe {
        let cookie = bpf_get_socket_cookie(ctx.sock_addr as *mut c_void);
        if let Some(rec) = BY_COOKIE.get(&cookie) {
            let addr = if rec.family == AF_INET as u32 {
                [0, 0, V4_MAPPED_WORD, rec.orig_addr[0]]
            } else {
                rec.orig_addr
            };
            (*ctx.sock_addr).user_ip6[0] = addr[0];
            (*ctx.sock_addr).user_ip6[1] = addr[1];
            (*ctx.sock_addr).user_ip6[2] = addr[2];
            (*ctx.sock_addr).user_ip6[3] = addr[3];
            (*ctx.sock_addr).user_port = rec.orig_port;
        }
    }
    ALLOW
}

#[sock_ops]
pub fn ghgate_sockops(ctx: SockOpsContext) -> u32 {
    match ctx.op() {
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => on_established(&ctx),
        BPF_SOCK_OPS_STATE_CB if ctx.arg(1) == TCP_CLOSE => {
            // SAFETY: plain helper call on the sock_ops context.
            let cookie = unsafe { bpf_get_socket_cookie(ctx.ops as *mut c_void) };
            let _ = BY_COOKIE.remove(&cookie);
        }
        _ => {}
    }
    0
}

#[inline(always)]
fn on_established(ctx: &SockOpsContext) {
    // SAFETY: plain helper call on the sock_ops context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.ops as *mut c_void) };
    let Some(record) = (unsafe { BY_COOKIE.get(&cookie) }) else {
        return;
    };
    let key = if ctx.family() == AF_INET as u32 {
        ClientKey {
            addr: [ctx.local_ip4(), 0, 0, 0],
            port: ctx.local_port(),
            family: AF_INET as u32,
        }
    } else {
        let ip6 = ctx.local_ip6();
        if ip6[0] == 0 && ip6[1] == 0 && ip6[2] == V4_MAPPED_WORD {
            ClientKey {
                addr: [ip6[3], 0, 0, 0],
                port: ctx.local_port(),
                family: AF_INET as u32,
            }
        } else {
            ClientKey {
                addr: ip6,
                port: ctx.local_port(),
                family: AF_INET6 as u32,
            }
        }
    };
    if BY_CLIENT.insert(&key, record, 0).is_err() {
        bump(counter::MAP_ERRORS);
        return;
    }
    // Ask for state changes so the cookie record goes away when this socket closes.
    let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
    bump(counter::ESTABLISHED);
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
