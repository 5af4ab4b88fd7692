//! ghgate's kernel programs, attached to one cgroup (or the root cgroup in whole-host mode).
//!
//! - `connect4`/`connect6`: a TCP connect() whose destination is in the intercept set is rewritten
//!   to the gateway's listener; the original destination and the caller are stored by socket cookie.
//! - `sock_ops`: once the client side is established, the record is also filed under the client's
//!   local address/port, which is what the gateway sees as the peer on accept.
//! - `getpeername4`/`getpeername6`: the client sees the original destination as its peer.
//!
//! These programs must never log per connection on the hot path, never block a connection they do
//! not intercept, and never redirect the gateway's own connections.
#![no_std]
#![no_main]

use core::{ffi::c_void, mem::size_of_val};

use aya_ebpf::{
    bindings::{
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG, bpf_sock_tuple,
    },
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        generated::{bpf_get_socket_cookie, bpf_sk_lookup_tcp, bpf_sk_release},
    },
    macros::{cgroup_sock_addr, map, sock_ops},
    maps::{Array, LpmTrie, LruHashMap, PerCpuArray, lpm_trie::Key},
    programs::{SockAddrContext, SockOpsContext},
};
use gateway_common::{
    ACTION_REDIRECT, AF_INET, AF_INET6, ClientKey, ConnRecord, GatewayConfig, InterceptKeyV4, InterceptKeyV6,
    MAX_INTERCEPT_ENTRIES, MAX_TRACKED_CONNECTIONS, ON_DOWN_BYPASS, PORT_PREFIX_BITS, counter,
};

/// Kernel return codes of cgroup sock_addr programs.
const ALLOW: i32 = 1;
const SOCK_STREAM: u32 = 1;
const TCP_CLOSE: u32 = 7;
const BPF_F_CURRENT_NETNS: u64 = u64::MAX; // (u64)-1
/// `::ffff:0:0/96`, the v4-mapped prefix, as the third network-order word.
const V4_MAPPED_WORD: u32 = 0x0000_ffffu32.to_be();

#[map(name = "GG_CONFIG")]
static CONFIG: Array<GatewayConfig> = Array::pinned(1, 0);

#[map(name = "GG_INTERCEPT4")]
static INTERCEPT_V4: LpmTrie<InterceptKeyV4, u32> = LpmTrie::pinned(MAX_INTERCEPT_ENTRIES, 0);

#[map(name = "GG_INTERCEPT6")]
static INTERCEPT_V6: LpmTrie<InterceptKeyV6, u32> = LpmTrie::pinned(MAX_INTERCEPT_ENTRIES, 0);

#[map(name = "GG_BY_COOKIE")]
static BY_COOKIE: LruHashMap<u64, ConnRecord> = LruHashMap::pinned(MAX_TRACKED_CONNECTIONS, 0);

#[map(name = "GG_BY_CLIENT")]
static BY_CLIENT: LruHashMap<ClientKey, ConnRecord> = LruHashMap::pinned(MAX_TRACKED_CONNECTIONS, 0);

#[map(name = "GG_COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(counter::COUNT, 0);

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

/// Where a connection should go instead, in the socket's own address family.
enum Redirect {
    V4 {
        addr: u32,
        port: u32,
    },
    /// A v6 socket: `addr` may be a v4-mapped listener address.
    V6 {
        addr: [u32; 4],
        port: u32,
    },
}

#[cgroup_sock_addr(connect4)]
pub fn ghgate_connect4(ctx: SockAddrContext) -> i32 {
    // Failing to inspect a connection must never break it: any error lets it through unchanged.
    let _ = try_connect4(&ctx);
    ALLOW
}

#[cgroup_sock_addr(connect6)]
pub fn ghgate_connect6(ctx: SockAddrContext) -> i32 {
    let _ = try_connect6(&ctx);
    ALLOW
}

fn try_connect4(ctx: &SockAddrContext) -> Result<(), ()> {
    let sa = ctx.sock_addr;
    // SAFETY: ctx fields are readable in connect4 programs; the verifier checks each access.
    let (sock_type, dst, port) = unsafe { ((*sa).type_, (*sa).user_ip4, (*sa).user_port) };
    if sock_type != SOCK_STREAM {
        return Ok(());
    }
    let cfg = config().ok_or(())?;
    bump(counter::INSPECTED);
    if !lookup_v4(dst, port) || is_self(cfg) {
        return Ok(());
    }
    if dst == cfg.listen_v4_addr && port == cfg.listen_v4_port {
        return Ok(());
    }
    if cfg.on_gateway_down == ON_DOWN_BYPASS && !listener_v4_up(ctx, cfg) {
        bump(counter::BYPASSED);
        return Ok(());
    }
    remember(ctx, AF_INET, [dst, 0, 0, 0], port)?;
    // 32-bit stores: the verifier rejects narrower writes to user_ip4/user_port.
    // SAFETY: connect4 programs may write user_ip4 and user_port.
    unsafe {
        (*sa).user_ip4 = cfg.listen_v4_addr;
        (*sa).user_port = cfg.listen_v4_port;
    }
    bump(counter::REDIRECTED_V4);
    apply(
        ctx,
        Redirect::V4 {
            addr: cfg.listen_v4_addr,
            port: cfg.listen_v4_port,
        },
    );
    Ok(())
}

fn try_connect6(ctx: &SockAddrContext) -> Result<(), ()> {
    let sa = ctx.sock_addr;
    // SAFETY: ctx fields are readable in connect6 programs; user_ip6 is read as 32-bit words.
    let (sock_type, port) = unsafe { ((*sa).type_, (*sa).user_port) };
    if sock_type != SOCK_STREAM {
        return Ok(());
    }
    let dst = unsafe {
        [
            (*sa).user_ip6[0],
            (*sa).user_ip6[1],
            (*sa).user_ip6[2],
            (*sa).user_ip6[3],
        ]
    };
    let cfg = config().ok_or(())?;
    bump(counter::INSPECTED);
    let mapped = dst[0] == 0 && dst[1] == 0 && dst[2] == V4_MAPPED_WORD;
    let hit = if mapped {
        lookup_v4(dst[3], port)
    } else {
        lookup_v6(dst, port)
    };
    if !hit || is_self(cfg) {
        return Ok(());
    }
    let target = if mapped {
        if dst[3] == cfg.listen_v4_addr && port == cfg.listen_v4_port {
            return Ok(());
        }
        if cfg.on_gateway_down == ON_DOWN_BYPASS && !listener_v4_up(ctx, cfg) {
            bump(counter::BYPASSED);
            return Ok(());
        }
        remember(ctx, AF_INET, [dst[3], 0, 0, 0], port)?;
        bump(counter::REDIRECTED_V4);
        Redirect::V6 {
            addr: [0, 0, V4_MAPPED_WORD, cfg.listen_v4_addr],
            port: cfg.listen_v4_port,
        }
    } else {
        if dst == cfg.listen_v6_addr && port == cfg.listen_v6_port {
            return Ok(());
        }
        if cfg.on_gateway_down == ON_DOWN_BYPASS && !listener_v6_up(ctx, cfg) {
            bump(counter::BYPASSED);
            return Ok(());
        }
        remember(ctx, AF_INET6, dst, port)?;
        bump(counter::REDIRECTED_V6);
        Redirect::V6 {
            addr: cfg.listen_v6_addr,
            port: cfg.listen_v6_port,
        }
    };
    apply(ctx, target);
    Ok(())
}

#[inline(always)]
fn apply(ctx: &SockAddrContext, target: Redirect) {
    let sa = ctx.sock_addr;
    // SAFETY: connect programs may write the destination; every store is 32 bits wide.
    unsafe {
        match target {
            Redirect::V4 { addr, port } => {
                (*sa).user_ip4 = addr;
                (*sa).user_port = port;
            }
            Redirect::V6 { addr, port } => {
                (*sa).user_ip6[0] = addr[0];
                (*sa).user_ip6[1] = addr[1];
                (*sa).user_ip6[2] = addr[2];
                (*sa).user_ip6[3] = addr[3];
                (*sa).user_port = port;
            }
        }
    }
}

#[inline(always)]
fn lookup_v4(addr: u32, port: u32) -> bool {
    let key = Key::new(PORT_PREFIX_BITS + 32, InterceptKeyV4 { port, addr });
    matches!(INTERCEPT_V4.get(&key), Some(&ACTION_REDIRECT))
}

#[inline(always)]
fn lookup_v6(addr: [u32; 4], port: u32) -> bool {
    let key = Key::new(PORT_PREFIX_BITS + 128, InterceptKeyV6 { port, addr });
    matches!(INTERCEPT_V6.get(&key), Some(&ACTION_REDIRECT))
}

#[inline(always)]
fn is_self(cfg: &GatewayConfig) -> bool {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if tgid != 0 && tgid == cfg.gateway_tgid {
        bump(counter::SELF_EXCLUDED);
        return true;
    }
    false
}

/// Is a socket listening on the gateway's v4 address? Only asked in bypass mode: a dead gateway's
/// listening socket disappears with its process, even after kill -9.
#[inline(always)]
fn listener_v4_up(ctx: &SockAddrContext, cfg: &GatewayConfig) -> bool {
    // SAFETY: an all-zero bpf_sock_tuple is a valid value of this plain C union.
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    // Writing union fields is safe; the port is already in network order.
    tuple.__bindgen_anon_1.ipv4.daddr = cfg.listen_v4_addr;
    tuple.__bindgen_anon_1.ipv4.dport = cfg.listen_v4_port as u16;
    // SAFETY: reading back the member just written.
    let len = size_of_val(unsafe { &tuple.__bindgen_anon_1.ipv4 }) as u32;
    listener_lookup(ctx, &mut tuple, len)
}

#[inline(always)]
fn listener_v6_up(ctx: &SockAddrContext, cfg: &GatewayConfig) -> bool {
    // SAFETY: as above.
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    // Writing union fields is safe; the port is already in network order.
    tuple.__bindgen_anon_1.ipv6.daddr = cfg.listen_v6_addr;
    tuple.__bindgen_anon_1.ipv6.dport = cfg.listen_v6_port as u16;
    // SAFETY: reading back the member just written.
    let len = size_of_val(unsafe { &tuple.__bindgen_anon_1.ipv6 }) as u32;
    listener_lookup(ctx, &mut tuple, len)
}

#[inline(always)]
fn listener_lookup(ctx: &SockAddrContext, tuple: &mut bpf_sock_tuple, len: u32) -> bool {
    // SAFETY: the tuple lives on this program's stack for the duration of the call; a socket the
    // lookup returns is released before returning, as the verifier demands.
    unsafe {
        let sk = bpf_sk_lookup_tcp(
            ctx.sock_addr as *mut c_void,
            tuple as *mut bpf_sock_tuple,
            len,
            BPF_F_CURRENT_NETNS,
            0,
        );
        if sk.is_null() {
            return false;
        }
        bpf_sk_release(sk as *mut c_void);
    }
    true
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
    if BY_COOKIE.insert(&cookie, &record, 0).is_err() {
        // Without a record the gateway could not tell where the connection was going: leave it
        // alone rather than redirect it blind.
        bump(counter::MAP_ERRORS);
        return Err(());
    }
    Ok(())
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
