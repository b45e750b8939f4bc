//! Signed appliance updates (not built yet).
//!
//! This crate will own firmware images signed by the vendor, A/B slots, the health-checked commit
//! of a new slot and the rollback to the old one. Until then it exports nothing, so that nothing
//! can be mistaken for working.
#![forbid(unsafe_code)]
