//! The Kakehashi appliance: the `kakehashi` binary's library.
//!
//! A connection's journey, by folder: [`doors`] (accept, the TLS or WireGuard door, the one
//! admission rule: an [`doors::Admitted`] connection) → [`pipeline`] (the stages: admit, gateway
//! pages, authenticate ([`auth`]), authorize, limit, forward (`engine_proxy`), respond) over
//! [`http1`], the terminal side's HTTP/1.1 → [`audit`]. The EST listener ([`est`]) enrolls terminals
//! through the TLS door's handshake.
//!
//! [`daemon`] starts and stops it all and holds what is shared; [`config`] is `gateway.toml`;
//! [`store`] is the data directory's SQLite state (inventory, people, enrollment tokens);
//! [`appliance`] is the appliance's side of the vendor workflow; [`cli`] holds every command
//! line of the appliance (`kakehashi gateway|terminal|user|audit|journal|demo`).
// Deny, not forbid: two calls are allowed, each through the libc crate and in a function of its
// own: `malloc_trim` in `daemon::trim`, which hands memory freed by a burst back to the system,
// and `sched_setscheduler` in `audit::pace`, which moves the audit writer between scheduling
// classes (rustix wraps neither).
#![deny(unsafe_code)]

pub mod appliance;
pub mod audit;
pub mod auth;
pub mod backup;
pub mod budget;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod doors;
pub mod est;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod http1;
pub mod io;
pub mod metrics;
pub mod pipeline;
pub mod shutdown;
pub mod status;
pub mod store;
#[cfg(test)]
mod testing;
pub mod uplink;
