//! Datagrams in: find each one's peer, let boringtun authenticate and decrypt it, check that
//! the inner source address is the peer's own, and hand the packet inside.
//!
//! A handshake initiation names its sender only inside the encryption, so it is matched by the
//! static key that boringtun's anonymous parse recovers; every later packet by the receiver index
//! the gateway chose ([`super::peers`]). A packet that fails any check is dropped and counted.

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::{Packet, TunnResult};
use tokio::io::{AsyncWrite, ReadBuf};

use crate::doors::wireguard::device::{BATCH, Inside, Running, destination};
use crate::doors::wireguard::keys::PublicKey;
use crate::metrics::Metrics;

impl Running {
    /// Reads a batch of datagrams and handles each.
    pub(super) fn receive(&mut self, cx: &mut Context<'_>) -> bool {
        let mut moved = false;
        for _ in 0..BATCH {
            let mut buf = ReadBuf::new(&mut self.recv);
            let from = match self.d.socket.poll_recv_from(cx, &mut buf) {
                Poll::Ready(Ok(from)) => from,
                Poll::Ready(Err(e)) => {
                    // Not worth a busy loop: the next tick or datagram tries again.
                    tracing::debug!(error = %e, "WireGuard socket receive error");
                    break;
                }
                Poll::Pending => break,
            };
            let len = buf.filled().len();
            moved = true;
            self.datagram(cx, from, len);
        }
        moved
    }

    /// One datagram: find its peer, decrypt, check, deliver.
    fn datagram(&mut self, cx: &mut Context<'_>, from: SocketAddr, len: usize) {
        let metrics = &self.d.doors.metrics;
        let datagram = &self.recv[..len];
        let packet = match self
            .limiter
            .verify_packet(Some(from.ip()), datagram, &mut self.work)
        {
            Ok(packet) => packet,
            Err(TunnResult::WriteToNetwork(cookie)) => {
                Metrics::inc(&metrics.wg_cookies_sent_total);
                let _ = self.d.socket.try_send_to(cookie, from);
                return;
            }
            Err(_) => {
                Metrics::inc(&metrics.wg_dropped_invalid_total);
                return;
            }
        };
        let (slot, is_data) = match &packet {
            Packet::HandshakeInit(init) => {
                match parse_handshake_anon(&self.d.private.static_secret(), &self.public, init) {
                    Ok(half) => (self.peers.by_key(&PublicKey(half.peer_static_public)), false),
                    Err(_) => {
                        Metrics::inc(&metrics.wg_dropped_invalid_total);
                        return;
                    }
                }
            }
            Packet::HandshakeResponse(p) => (self.peers.by_index(p.receiver_idx), false),
            Packet::PacketCookieReply(p) => (self.peers.by_index(p.receiver_idx), false),
            Packet::PacketData(p) => (self.peers.by_index(p.receiver_idx), true),
        };
        let Some(slot) = slot else {
            Metrics::inc(&metrics.wg_dropped_unknown_key_total);
            return;
        };
        let Some(peer) = self.peers.get_mut(slot) else {
            return;
        };
        let mut input: &[u8] = datagram;
        loop {
            match peer.tunn.decapsulate(Some(from.ip()), input, &mut self.work) {
                TunnResult::Done => {
                    if is_data && !input.is_empty() {
                        peer.endpoint = Some(from);
                    }
                    return;
                }
                TunnResult::Err(e) => {
                    tracing::trace!(terminal = %peer.name, error = ?e, "WireGuard packet refused");
                    Metrics::inc(&metrics.wg_dropped_invalid_total);
                    return;
                }
                TunnResult::WriteToNetwork(out) => {
                    // A handshake answered (or packets queued behind it): the peer is authentic
                    // and at this address.
                    if !is_data && input.len() == datagram.len() {
                        Metrics::inc(&metrics.wg_handshakes_total);
                    }
                    peer.endpoint = Some(from);
                    let _ = self.d.socket.try_send_to(out, from);
                    input = &[];
                }
                TunnResult::WriteToTunnelV4(inner, source) => {
                    peer.endpoint = Some(from);
                    if source != peer.address {
                        Metrics::inc(&metrics.wg_dropped_spoofed_total);
                        tracing::debug!(terminal = %peer.name, %source, "inner source address is not the terminal's; dropped");
                        return;
                    }
                    if destination(inner) != Some(self.d.address) {
                        Metrics::inc(&metrics.wg_dropped_unroutable_total);
                        return;
                    }
                    Metrics::inc(&metrics.wg_packets_received_total);
                    match &mut self.d.inside {
                        Inside::Stack(stack) => stack.deliver(inner),
                        Inside::Tun(dev) => {
                            // A full device queue drops the packet, as a router would.
                            let _ = Pin::new(dev).poll_write(cx, inner);
                        }
                    }
                    return;
                }
                TunnResult::WriteToTunnelV6(..) => {
                    Metrics::inc(&metrics.wg_dropped_unroutable_total);
                    return;
                }
            }
        }
    }
}
