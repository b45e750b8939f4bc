//! Packets out: what the inside (the userspace stack, or the TUN device) sends is encrypted for
//! the peer its destination names and sent to that peer's latest endpoint (it roams: the receive
//! path keeps the endpoint current).

use std::pin::Pin;
use std::task::{Context, Poll};

use boringtun::noise::TunnResult;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::UdpSocket;

use crate::doors::wireguard::device::{BATCH, Inside, Running, destination};
use crate::doors::wireguard::peers::Peers;
use crate::metrics::Metrics;

impl Running {
    /// Runs the inside (stack or device) and encrypts what it sends.
    pub(super) fn inside(&mut self, cx: &mut Context<'_>) -> bool {
        let mut accepted = Vec::new();
        let Running {
            d, peers, work, recv, ..
        } = self;
        let metrics = &d.doors.metrics;
        let moved = match &mut d.inside {
            Inside::Stack(stack) => {
                let moved = stack.poll(cx, &mut |a| accepted.push(a));
                stack.outbound(|packet| seal(peers, work, &d.socket, metrics, packet));
                moved
            }
            Inside::Tun(dev) => {
                let mut moved = false;
                for _ in 0..BATCH {
                    let mut buf = ReadBuf::new(recv);
                    match Pin::new(&mut *dev).poll_read(cx, &mut buf) {
                        Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                            moved = true;
                            let len = buf.filled().len();
                            seal(peers, work, &d.socket, metrics, &recv[..len]);
                        }
                        _ => break,
                    }
                }
                moved
            }
        };
        for a in accepted {
            self.open(a);
        }
        moved
    }
}

/// Encrypts a packet for the peer its destination names and sends it to the peer's endpoint.
fn seal(peers: &mut Peers, work: &mut [u8], socket: &UdpSocket, metrics: &Metrics, packet: &[u8]) {
    // boringtun panics on a destination buffer smaller than the packet plus its 32 bytes; the
    // device's MTU keeps packets far below, and a packet that is not is dropped, not a panic.
    if packet.len() + 32 > work.len() {
        Metrics::inc(&metrics.wg_dropped_unroutable_total);
        return;
    }
    let Some(dst) = destination(packet) else { return };
    let Some(peer) = peers.by_address(dst).and_then(|slot| peers.get_mut(slot)) else {
        Metrics::inc(&metrics.wg_dropped_unroutable_total);
        return;
    };
    match peer.tunn.encapsulate(packet, work) {
        TunnResult::WriteToNetwork(out) => {
            if let Some(endpoint) = peer.endpoint {
                let _ = socket.try_send_to(out, endpoint);
            }
        }
        TunnResult::Err(e) => tracing::trace!(error = ?e, "cannot encrypt for the peer"),
        // No session yet: boringtun queued the packet and will send it after the handshake.
        _ => {}
    }
}
