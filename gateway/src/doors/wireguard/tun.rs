//! TUN mode: a kernel device carries the tunnel, for router deployments.
//!
//! The kernel holds the gateway's tunnel address (so it answers ping and routes the terminals'
//! network to the device); the gateway's routes listen on that address like any socket, and a
//! connection's terminal is the peer whose tunnel address is its source. That is sound because
//! the receive path drops every packet whose inner source is not its peer's own address before
//! the kernel sees it.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::audit::{Decision, Entry};
use crate::config::WireGuard;
use crate::doors::Doors;
use crate::doors::tcp::accept;
use crate::doors::wireguard::{Handoff, Opened, SetupError};
use crate::shutdown::Shutdown;

/// Creates the device with the gateway's tunnel address, up. Needs CAP_NET_ADMIN.
pub fn device(config: &WireGuard) -> Result<tun::Device, SetupError> {
    let mut tun = tun::Configuration::default();
    let mask = u32::MAX << (32 - u32::from(config.address.prefix));
    tun.tun_name(&config.tun_name)
        .address(config.address.address)
        .netmask(std::net::Ipv4Addr::from(mask))
        .mtu(config.mtu)
        .up();
    tun::create(&tun).map_err(|e| SetupError::Device {
        name: config.tun_name.clone(),
        message: format!(
            "cannot create the TUN device for wireguard.mode = \"tun\": {e} \
             (it needs CAP_NET_ADMIN; mode = \"userspace\" needs no privileges)"
        ),
    })
}

/// Binds a route's port on the tunnel address (the device must be up).
pub fn bind(address: SocketAddr) -> Result<std::net::TcpListener, SetupError> {
    let listen = |source| SetupError::Listen { address, source };
    let listener = std::net::TcpListener::bind(address).map_err(listen)?;
    listener.set_nonblocking(true).map_err(listen)?;
    Ok(listener)
}

/// Accepts on a tunnel port until shutdown; each connection goes to the workers with the key of
/// the peer whose tunnel address is its source.
pub async fn serve(
    doors: Doors,
    listener: TcpListener,
    port: u16,
    route: Arc<str>,
    handoff: Handoff,
    mut shutdown: Shutdown,
) {
    while let Some((stream, source)) = accept(&listener, &mut shutdown).await {
        let _ = stream.set_nodelay(true);
        let IpAddr::V4(ip) = source.ip() else { continue };
        let key = doors
            .live
            .now()
            .inventory()
            .by_tunnel_address(ip)
            .and_then(|t| Some(t.wireguard.as_ref()?.public_key));
        let Some(key) = key else {
            doors.audit.record_soon(Entry {
                decision: Decision::Deny,
                reason: format!("{ip} is no terminal's tunnel address").into(),
                source: source.to_string().into(),
                route: route.to_string().into(),
                ..Entry::default()
            });
            continue;
        };
        let Some(slot) = doors.slots.take() else {
            tracing::warn!(%source, "connection limit reached; closing a new tunnel connection");
            continue;
        };
        handoff(Opened {
            stream: Box::new(stream),
            source,
            key,
            port,
            slot,
        });
    }
}
