//! Typed addresses, so the compiler keeps the client, the original destination and the
//! listener apart (after linkerd2-proxy's `addrs`).
use std::{fmt, net::SocketAddr};

/// The client end of an accepted connection (the peer the listener sees).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientAddr(pub SocketAddr);

/// Where the client meant to connect before the kernel redirected it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OrigDstAddr(pub SocketAddr);

/// An address this gateway listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ListenAddr(pub SocketAddr);

macro_rules! display_inner {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }
    )*};
}
display_inner!(ClientAddr, OrigDstAddr, ListenAddr);
