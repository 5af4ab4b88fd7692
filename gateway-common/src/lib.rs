//! Map keys, values and constants shared by ghgate's eBPF programs and its userspace loader.
//!
//! Everything here is `#[repr(C)]`, padding-free and plain data: the kernel side reads and writes
//! these bytes directly, so a layout change here is an ABI change for pinned maps (bump
//! [`ABI_VERSION`]). This crate must never grow logic beyond small pure helpers.
#![no_std]

/// Bumped whenever a map key or value layout changes; part of the pin directory name so a new
/// gateway never reuses maps pinned by an incompatible one.
pub const ABI_VERSION: u32 = 3;

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

pub const IPPROTO_TCP: u32 = 6;
pub const IPPROTO_UDP: u32 = 17;
/// Multipath TCP: a stream socket that falls back to plain TCP when the peer does not speak it,
/// so it is redirected like TCP.
pub const IPPROTO_MPTCP: u32 = 262;
/// The DNS port, in host order.
pub const DNS_PORT: u16 = 53;

/// Names of the maps as they appear in the object file and in the pin directory.
pub mod map_names {
    pub const CONFIG: &str = "GG_CONFIG";
    pub const INTERCEPT_V4: &str = "GG_INTERCEPT4";
    pub const INTERCEPT_V6: &str = "GG_INTERCEPT6";
    pub const GUARD_V4: &str = "GG_GUARD4";
    pub const GUARD_V6: &str = "GG_GUARD6";
    pub const EXEMPT: &str = "GG_EXEMPT";
    pub const BY_COOKIE: &str = "GG_BY_COOKIE";
    pub const BY_CLIENT: &str = "GG_BY_CLIENT";
    pub const COUNTERS: &str = "GG_COUNTERS";
    pub const EVENTS: &str = "GG_EVENTS";
    /// Egress control's allow-list (configured CIDRs, allowed names' addresses), keyed like the
    /// intercept tries; port 0 stands for every port.
    pub const ALLOW_V4: &str = "GG_ALLOW4";
    pub const ALLOW_V6: &str = "GG_ALLOW6";
    /// When each (caller, destination) was last reported as seen: one event a second at most.
    pub const SEEN: &str = "GG_SEEN";
}

/// Names of the programs in the object file (kernel program names are at most 15 bytes).
pub mod prog_names {
    pub const CONNECT4: &str = "ghgate_connect4";
    pub const CONNECT6: &str = "ghgate_connect6";
    pub const SENDMSG4: &str = "ghgate_sendmsg4";
    pub const SENDMSG6: &str = "ghgate_sendmsg6";
    pub const GETPEERNAME4: &str = "ghgate_peer4";
    pub const GETPEERNAME6: &str = "ghgate_peer6";
    pub const SOCK_OPS: &str = "ghgate_sockops";
    pub const EGRESS: &str = "ghgate_egress";
    /// The source of a DNS answer from the gateway's resolver, rewritten back to the server the
    /// caller asked.
    pub const RECVMSG4: &str = "ghgate_recv4";
    pub const RECVMSG6: &str = "ghgate_recv6";
    /// Refuses raw and ICMP sockets when egress is blocked.
    pub const SOCK_CREATE: &str = "ghgate_sockcr";
    pub const ALL: [&str; 11] = [
        CONNECT4,
        CONNECT6,
        SENDMSG4,
        SENDMSG6,
        GETPEERNAME4,
        GETPEERNAME6,
        SOCK_OPS,
        EGRESS,
        RECVMSG4,
        RECVMSG6,
        SOCK_CREATE,
    ];
}

/// Capacity of the per-connection maps. They are LRU, so a missed close can never exhaust them.
pub const MAX_TRACKED_CONNECTIONS: u32 = 65_536;
/// Capacity of each intercept trie (prefix, port) entries.
pub const MAX_INTERCEPT_ENTRIES: u32 = 16_384;
/// Capacity of each guard trie (address prefixes).
pub const MAX_GUARD_ENTRIES: u32 = 4_096;
/// Sockets of the gateway itself (by cookie). LRU: a cookie is never reused within a boot, so an
/// entry that is evicted long after its connect() costs nothing.
pub const MAX_EXEMPT_SOCKETS: u32 = 65_536;
/// Bytes of the refusal event ring (a power of two, a multiple of the page size). A flood of
/// refusals past it is counted ([`counter::EVENTS_LOST`]), never blocks anything.
pub const EVENT_RING_BYTES: u32 = 1024 * 1024;

/// Capacity of each egress allow trie ((port, prefix) entries). Full: what does not fit is not
/// allowed (block mode refuses it; it never passes).
pub const MAX_ALLOW_ENTRIES: u32 = 16_384;
/// (caller, destination) pairs remembered to rate-limit "seen" events. LRU.
pub const MAX_SEEN: u32 = 16_384;
/// A (caller, destination) pair is reported as seen at most once in this many nanoseconds.
pub const SEEN_EVERY_NS: u64 = 1_000_000_000;

/// `GatewayConfig::egress_mode`: what happens to connections that are neither GitHub's nor the
/// gateway's.
pub const EGRESS_OFF: u32 = 0;
/// Recorded (as seen events), never refused.
pub const EGRESS_AUDIT: u32 = 1;
/// Refused unless the allow tries hold the destination; raw and ICMP sockets refused.
pub const EGRESS_BLOCK: u32 = 2;

/// Value of an allow trie entry.
pub const ALLOW_PASS: u32 = 1;

/// What to do with a connection to a destination in the intercept set while no gateway listens.
pub const ON_DOWN_REFUSE: u32 = 0;
pub const ON_DOWN_BYPASS: u32 = 1;

/// The `SO_MARK` the gateway puts on its listening sockets. The programs redirect only to a
/// listener that carries it: setting a mark needs `CAP_NET_ADMIN`, so a process that binds the
/// gateway's port while the gateway is away cannot pass for it.
pub const DEFAULT_LISTENER_MARK: u32 = 0x2047;

/// Value of [`CONFIG`](map_names::CONFIG)'s single entry, written by userspace before attaching.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GatewayConfig {
    /// Listener for IPv4 (and v4-mapped) destinations, network byte order.
    pub listen_v4_addr: u32,
    /// Listener port, network byte order in the low 16 bits (as `bpf_sock_addr.user_port`).
    pub listen_v4_port: u32,
    /// Listener for IPv6 destinations, network byte order words.
    pub listen_v6_addr: [u32; 4],
    pub listen_v6_port: u32,
    /// The mark the gateway's listening sockets carry (see [`DEFAULT_LISTENER_MARK`]).
    pub listener_mark: u32,
    /// [`ON_DOWN_REFUSE`] or [`ON_DOWN_BYPASS`].
    pub on_gateway_down: u32,
    /// Non-zero once userspace has filled this entry; until then the programs pass everything.
    pub enabled: u32,
    /// [`EGRESS_OFF`], [`EGRESS_AUDIT`] or [`EGRESS_BLOCK`].
    pub egress_mode: u32,
    /// Port of the gateway's DNS resolver on both listen addresses, network byte order in the
    /// low 16 bits; 0: DNS is not redirected. With egress control on, every UDP and TCP packet
    /// to port 53 goes there, whatever server the caller named.
    pub dns_port: u32,
}

/// Key of the v4 intercept trie: destination port then address, so one prefix length covers
/// "this port, this network". `prefix_len` = 32 (port + pad) + address prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InterceptKeyV4 {
    /// Network byte order in the low 16 bits, zero above (as the kernel's `user_port`).
    pub port: u32,
    /// Network byte order.
    pub addr: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InterceptKeyV6 {
    pub port: u32,
    pub addr: [u32; 4],
}

/// Number of key bits before the address in both intercept tries.
pub const PORT_PREFIX_BITS: u32 = 32;

/// Value of an intercept trie entry: the most specific matching prefix decides.
pub const ACTION_REDIRECT: u32 = 1;
/// An allowed port to a guarded address: the connection goes direct, untouched.
pub const ACTION_PASS: u32 = 0;

/// Value of a guard trie entry (keys are bare addresses, network byte order): every connection
/// to such an address that no intercept entry redirects or passes is refused.
pub const GUARD_REFUSE: u32 = 1;

/// What the kernel learned about a redirected connection at connect() time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnRecord {
    /// Original destination address: for [`AF_INET`] only `orig_addr[0]` is used. Network order.
    pub orig_addr: [u32; 4],
    /// Original destination port, network byte order in the low 16 bits.
    pub orig_port: u32,
    pub family: u32,
    pub tgid: u32,
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    pub cgroup_id: u64,
    pub comm: [u8; 16],
    /// Socket cookie of the client socket, so the record can be removed when it closes.
    pub cookie: u64,
}

/// The client end of a redirected connection as the gateway sees it on accept (its peer).
/// v4-mapped IPv6 client addresses are stored as [`AF_INET`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ClientKey {
    pub addr: [u32; 4],
    /// Host byte order.
    pub port: u32,
    pub family: u32,
}

/// Why the kernel refused (or flagged) a connection: the `reason` of a [`RefusalEvent`].
pub mod reason {
    /// A TCP port to a guarded address that is neither intercepted nor allowed.
    pub const PORT_NOT_ALLOWED: u32 = 1;
    /// UDP, SCTP or any other non-TCP socket to a guarded address.
    pub const NOT_TCP: u32 = 2;
    /// Something other than the gateway listens on the gateway's port.
    pub const FOREIGN_LISTENER: u32 = 3;
    /// The connection could not be remembered (map full or failing): refused, not let through.
    pub const MAP_ERROR: u32 = 4;
    /// No gateway listens (fail-closed): the connect fails with ECONNREFUSED.
    pub const GATEWAY_DOWN: u32 = 5;
    /// A packet to a guarded address that no socket hook saw (a raw socket, a connection older
    /// than the programs): dropped at egress.
    pub const EGRESS_DROPPED: u32 = 6;
    /// Egress control in block mode: the destination is not on the allow-list.
    pub const NOT_ALLOWED: u32 = 7;
    /// Egress control in block mode: a raw or ICMP socket (it could reach any address unseen).
    pub const RAW_SOCKET: u32 = 8;
    /// Not a refusal: egress control saw a connection or datagram to this destination and let it
    /// through (audit mode, or allowed in block mode).
    pub const SEEN: u32 = 9;
}

/// One refusal, written by the programs to the [`EVENTS`](map_names::EVENTS) ring and recorded
/// by the gateway (at once, or at its next start if it was away).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RefusalEvent {
    /// `CLOCK_BOOTTIME` nanoseconds: still right after the gateway was away.
    pub boot_ns: u64,
    pub cgroup_id: u64,
    /// One of [`reason`].
    pub reason: u32,
    pub family: u32,
    /// Socket type (`SOCK_STREAM`, `SOCK_DGRAM`) and protocol as the socket was created.
    pub sock_type: u32,
    pub protocol: u32,
    /// Destination as the caller wrote it (for [`AF_INET`] only `addr[0]`), network order.
    pub addr: [u32; 4],
    /// Network byte order in the low 16 bits.
    pub port: u32,
    pub tgid: u32,
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    pub _pad: u32,
    pub comm: [u8; 16],
}

/// Key of [`SEEN`](map_names::SEEN): who went where, how.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeenKey {
    pub addr: [u32; 4],
    pub port: u32,
    pub family: u32,
    pub protocol: u32,
    pub tgid: u32,
}

/// Indexes of the per-CPU counters.
pub mod counter {
    /// connect() and sendmsg() calls inspected.
    pub const INSPECTED: u32 = 0;
    pub const REDIRECTED_V4: u32 = 1;
    pub const REDIRECTED_V6: u32 = 2;
    /// Destination in the set but no gateway listening and on_gateway_down = bypass.
    pub const BYPASSED: u32 = 3;
    /// Connections of the gateway itself, never redirected.
    pub const SELF_EXCLUDED: u32 = 4;
    /// Redirected connections whose client side reached ESTABLISHED.
    pub const ESTABLISHED: u32 = 5;
    /// A record could not be stored (map update failed): the connection was refused.
    pub const MAP_ERRORS: u32 = 6;
    /// Refused: a port to a guarded address that is neither intercepted nor allowed.
    pub const REFUSED_PORT: u32 = 7;
    /// Refused: a non-TCP socket to a guarded address.
    pub const REFUSED_NOT_TCP: u32 = 8;
    /// Refused: the gateway's port was held by a listener without the gateway's mark.
    pub const REFUSED_FOREIGN_LISTENER: u32 = 9;
    /// Redirected while no gateway listened (fail-closed): refused by the kernel's TCP.
    pub const REFUSED_GATEWAY_DOWN: u32 = 10;
    /// Refusal events that did not fit in the ring (the counters above still count them).
    pub const EVENTS_LOST: u32 = 11;
    /// Connections to an allowed port of a guarded address, let through.
    pub const PASSED_ALLOWED_PORT: u32 = 12;
    /// Packets to a guarded address dropped at egress (raw sockets, pre-existing connections).
    pub const DROPPED_EGRESS: u32 = 13;
    /// Egress control: connections and datagrams let through (audit, or allowed).
    pub const EGRESS_SEEN: u32 = 14;
    /// Egress control: refused, not on the allow-list.
    pub const REFUSED_NOT_ALLOWED: u32 = 15;
    /// Egress control: DNS sent to the gateway's resolver instead of the server named.
    pub const DNS_REDIRECTED: u32 = 16;
    /// Egress control: raw or ICMP sockets refused.
    pub const REFUSED_RAW_SOCKET: u32 = 17;
    pub const COUNT: u32 = 18;
    pub const NAMES: [&str; COUNT as usize] = [
        "inspected",
        "redirected_v4",
        "redirected_v6",
        "bypassed_gateway_down",
        "self_excluded",
        "established",
        "map_errors",
        "refused_port",
        "refused_not_tcp",
        "refused_foreign_listener",
        "refused_gateway_down",
        "events_lost",
        "passed_allowed_port",
        "dropped_egress",
        "egress_seen",
        "refused_not_allowed",
        "dns_redirected",
        "refused_raw_socket",
    ];
}

#[cfg(feature = "user")]
#[allow(
    unsafe_code,
    reason = "aya::Pod is an unsafe trait: these types are #[repr(C)] plain data with no padding the kernel reads as uninitialised"
)]
mod pod {
    // SAFETY: each type is repr(C), made only of integers and integer arrays laid out without
    // padding (checked by the size assertions below), so every bit pattern is valid.
    unsafe impl aya::Pod for super::GatewayConfig {}
    unsafe impl aya::Pod for super::InterceptKeyV4 {}
    unsafe impl aya::Pod for super::InterceptKeyV6 {}
    unsafe impl aya::Pod for super::ConnRecord {}
    unsafe impl aya::Pod for super::ClientKey {}
    unsafe impl aya::Pod for super::RefusalEvent {}
    unsafe impl aya::Pod for super::SeenKey {}
}

// No padding anywhere: the kernel compares keys byte for byte.
const _: () = assert!(core::mem::size_of::<GatewayConfig>() == 4 * 12);
const _: () = assert!(core::mem::size_of::<InterceptKeyV4>() == 8);
const _: () = assert!(core::mem::size_of::<InterceptKeyV6>() == 20);
const _: () = assert!(core::mem::size_of::<ConnRecord>() == 4 * 10 + 8 + 16 + 8);
const _: () = assert!(core::mem::size_of::<ClientKey>() == 24);
const _: () = assert!(core::mem::size_of::<RefusalEvent>() == 8 + 8 + 4 * 4 + 16 + 4 * 6 + 16);
const _: () = assert!(core::mem::size_of::<SeenKey>() == 4 * 8);
