//! The device's clock: boringtun's timers (handshake retries, keepalives, session expiry) every
//! 250 ms, the rate limiter's second, and the peers kept in step with the inventory after a
//! reload.

use boringtun::noise::TunnResult;

use crate::doors::wireguard::device::{Inside, Running};
use crate::metrics::Metrics;

impl Running {
    /// The timers: boringtun's, the rate limiter's second, and reloads.
    pub(super) fn on_tick(&mut self) {
        self.ticks += 1;
        if self.ticks.is_multiple_of(4) {
            self.limiter.reset_count();
        }
        let generation = self.d.doors.live.generation();
        if generation != self.generation {
            self.sync();
        }
        for peer in self.peers.iter_mut() {
            match peer.tunn.update_timers(&mut self.work) {
                TunnResult::WriteToNetwork(out) => {
                    if let Some(endpoint) = peer.endpoint {
                        let _ = self.d.socket.try_send_to(out, endpoint);
                    }
                }
                TunnResult::Err(boringtun::noise::errors::WireGuardError::ConnectionExpired) => {
                    // Sessions expired after a long silence: the terminal starts a new
                    // handshake when it next sends; there is nothing to retry from this side.
                }
                _ => {}
            }
        }
    }

    /// Makes the peers match the current inventory, ending the sessions and streams of those
    /// that were removed, disabled or changed.
    pub(super) fn sync(&mut self) {
        let snapshot = self.d.doors.live.now();
        self.generation = snapshot.generation;
        let cut = self
            .peers
            .sync(&snapshot.admission, &self.d.private, &self.limiter);
        for address in &cut {
            if let Inside::Stack(stack) = &mut self.d.inside {
                stack.cut(*address);
            }
        }
        if !cut.is_empty() {
            tracing::info!(
                peers = self.peers.len(),
                ended = cut.len(),
                "WireGuard peers reloaded"
            );
        }
        Metrics::set(&self.d.doors.metrics.wg_peers, self.peers.len() as u64);
    }
}
