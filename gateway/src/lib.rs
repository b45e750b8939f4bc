//! The Kakehashi appliance: configuration, the TLS front door, terminal identity, person
//! authentication, the audit log, metrics, and the daemon's life cycle.
//!
//! A connection's journey, by module: [`listener`] (accept, limit, handshake) → [`tls`] (the
//! policy and the terminal check inside the handshake) → [`identity`] (which terminal) → a route:
//! [`http`] (the engine API: [`person`] and [`login`] authenticate, `engine_proxy::upstream`
//! forwards, [`meter`] counts) or [`tcp`] (raw bytes) → [`audit`]. [`state`] holds what they share
//! and what SIGHUP replaces; [`run`] starts and stops it all.
//!
//! The appliance's own state lives in one data directory ([`db`]): the [`inventory`] of terminals,
//! the [`users`] who sign in, and the hash-chained [`audit`] log; [`cli`] holds `kakehashi
//! terminal|user|audit|journal`. [`appliance`] is the appliance's side of the vendor workflow:
//! `gateway init` (its own keys, a request for the vendor) and `gateway import-bundle`.
#![forbid(unsafe_code)]

pub mod admin;
pub mod appliance;
pub mod audit;
pub mod cli;
pub mod config;
pub mod db;
pub mod enrollment;
pub mod est;
pub mod h1;
pub mod http;
pub mod hybrid;
pub mod identity;
pub mod inventory;
pub mod listener;
pub mod login;
pub mod meter;
pub mod metrics;
pub mod person;
pub mod run;
pub mod state;
pub mod systemd;
pub mod tcp;
pub mod tls;
pub mod users;
pub mod wg;
