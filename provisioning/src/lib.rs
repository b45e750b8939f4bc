//! The vendor workflow: what a certified vendor does to set up a clinic's appliance.
//!
//! - [`request`]: what an appliance hands the vendor (`kakehashi gateway init`): public keys and
//!   CSRs, never a private key.
//! - [`device`]: the appliance's own key, which bundles are encrypted to.
//! - [`bundle`]: what the vendor hands back (`kakehashi provision bundle build`): configuration,
//!   certificates, CRL, inventory and people, signed by the vendor and encrypted to that appliance.
#![forbid(unsafe_code)]

pub mod bundle;
pub mod device;
pub mod request;
