//! The gateway's own sockets: each is registered with the kernel by its cookie before it
//! connects, so the programs neither redirect it (a loop back into the gateway) nor refuse it
//! (a GitHub address on a guarded port).
//!
//! A socket cookie is unique for the life of a boot, so an entry can never be inherited by
//! another process, and nothing needs removing when the gateway stops: unlike a process id, a
//! dead gateway leaves no exclusion a newcomer could reuse. Every outbound connection of the
//! gateway goes through [`connect`]; this module never connects anywhere by itself.
use std::{
    io,
    net::SocketAddr,
    sync::{Mutex, OnceLock},
};

use aya::maps::{HashMap, Map, MapData};
use gateway_common::map_names;
use tokio::net::{TcpSocket, TcpStream};

use super::Pins;

static EXEMPT: OnceLock<Mutex<HashMap<MapData, u64, u32>>> = OnceLock::new();

/// Opens the kernel's exemption map; from now on [`connect`] registers every socket in it.
pub fn install(pins: &Pins) -> anyhow::Result<()> {
    let map = HashMap::try_from(Map::LruHashMap(super::maps::open(pins, map_names::EXEMPT)?))?;
    let _ = EXEMPT.set(Mutex::new(map));
    Ok(())
}

/// A TCP connection of the gateway's own to `addr`, exempt from the programs when they are
/// installed (in-process tests without a kernel simply connect).
pub async fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    exempt(socket2::SockRef::from(&socket))?;
    socket.connect(addr).await
}

/// A UDP socket of the gateway's own bound to `local`, exempt from the programs (registered
/// before anything is sent on it), when they are installed.
pub fn udp(local: SocketAddr) -> io::Result<tokio::net::UdpSocket> {
    let socket = std::net::UdpSocket::bind(local)?;
    exempt(socket2::SockRef::from(&socket))?;
    socket.set_nonblocking(true)?;
    tokio::net::UdpSocket::from_std(socket)
}

/// Puts `socket` in the exempt map (by its cookie) when the programs are installed; a socket
/// must be exempt before it connects or sends.
fn exempt(socket: socket2::SockRef<'_>) -> io::Result<()> {
    let Some(map) = EXEMPT.get() else {
        return Ok(());
    };
    let cookie = socket.cookie()?;
    map.lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(cookie, 1, 0)
        .map_err(|e| {
            io::Error::other(format!(
                "cannot exempt the gateway's own socket from the programs: {e}"
            ))
        })
}
