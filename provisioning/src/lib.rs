//! The vendor workflow (not built yet).
//!
//! This crate will own what a certified vendor does to set up a clinic: the clinic profile, the
//! terminal and user inventory, one-time enrollment tokens and the EST enrollment endpoint,
//! WireGuard configs and QR codes, and signed bundles that an appliance imports. Until then it
//! exports nothing, so that nothing can be mistaken for working.
#![forbid(unsafe_code)]
