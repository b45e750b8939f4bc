//! The vendor workflow: what a certified vendor does to set up a clinic's appliance.
//!
//! What passes between the vendor and the appliance (the request, the bundle, the device
//! identity) and the credentials both make (staff password hashes, one-time enrollment tokens,
//! WireGuard keys, configs and QR codes) are `provisioning_shared`'s, one implementation for both
//! sides. This crate is the vendor's side, `kakehashi provision …` ([`cli`]), one module a stage
//! of the workflow:
//! - [`vendor`]: the vendor directory, its root CA and bundle-signing key (`vendor init`);
//! - [`clinic`]: a clinic's directory and its state file, `clinic.json`;
//! - [`setup`]: a clinic from an appliance's request, and its settings (`clinic add`, `set`);
//! - [`terminal`], [`user`]: the clinic's terminals and staff;
//! - [`build`]: the clinic's next bundle (`bundle build`).
#![forbid(unsafe_code)]

pub mod build;
pub mod cli;
pub mod clinic;
pub mod error;
pub mod setup;
pub mod terminal;
pub mod user;
pub mod vendor;

#[cfg(test)]
mod tests;

pub use error::{Error, Result};
