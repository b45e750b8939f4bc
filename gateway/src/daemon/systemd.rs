//! `Type=notify` for systemd: tell the service manager when the gateway is ready, reloading or
//! stopping. A datagram to `$NOTIFY_SOCKET`; without that variable, nothing happens.

use std::os::unix::net::UnixDatagram;

/// Sends one notification (`READY=1`, `RELOADING=1`, `STOPPING=1`, `STATUS=…`).
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(socket) = UnixDatagram::unbound() else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    let sent = match bytes.strip_prefix(b"@") {
        // An abstract socket (Linux): the name after '@'.
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(name)
                .and_then(|addr| socket.send_to_addr(state.as_bytes(), &addr))
        }
        None => socket.send_to(state.as_bytes(), &path),
    };
    if let Err(e) = sent {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}
