//! The front doors: where a connection becomes an admitted terminal.
//!
//! Two doors let terminals in: [`tls`] (a client certificate per terminal, on the terminal
//! listeners) and [`wireguard`] (a registered peer key, and optionally a certificate inside the
//! tunnel). Both end in the same place, an [`Admitted`] connection: the stream, the terminal's
//! identity and its proof, where it came from, and the connection's [`slot::Slot`]. From there
//! on one pipeline serves them both (`crate::pipeline`), so a feature added for one door works
//! for the other. The EST listener (`crate::est`) runs the TLS door's handshake too, with a
//! certificate optional.
//!
//! Who is admitted is one rule ([`admission`]) over one snapshot of the inventory, CA and CRL
//! ([`live`]), used inside the TLS handshake, when a tunnel connection opens, and for every
//! open connection after a reload.

pub mod admission;
pub mod balance;
pub mod identity;
pub mod live;
pub mod slot;
pub mod tcp;
pub mod tls;
pub mod wireguard;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::audit::AuditLog;
use crate::metrics::Metrics;
use identity::Identified;
use live::Live;
use slot::{Slot, Slots};

/// A connection a door let in, with what the routes need to know about it.
///
/// `Who` is the terminal ([`Identified`]) on the terminal doors; the EST listener, where a
/// terminal may come without a certificate, has `Option` of the proof instead.
pub struct Admitted<S, Who = Identified> {
    pub stream: S,
    pub who: Who,
    /// The peer's address: TCP's, or the terminal's address inside the tunnel.
    pub source: SocketAddr,
    /// Held for the connection's whole life.
    pub slot: Slot,
}

/// What every door needs, shared by all of them.
#[derive(Clone)]
pub struct Doors {
    pub live: Arc<Live>,
    pub slots: Slots,
    pub audit: AuditLog,
    pub metrics: Arc<Metrics>,
    pub handshake_timeout: Duration,
}
