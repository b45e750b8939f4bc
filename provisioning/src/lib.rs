//! The vendor workflow: what a certified vendor does to set up a clinic's appliance.
//!
//! - [`request`]: what an appliance hands the vendor (`kakehashi gateway init`): public keys and
//!   CSRs, never a private key.
//! - [`device`]: the appliance's own key, which bundles are encrypted to.
//! - [`bundle`]: what the vendor hands back (`kakehashi provision bundle build`): configuration,
//!   certificates, CRL, inventory and people, signed by the vendor and encrypted to that appliance.
//! - [`password`], [`token`], [`wireguard`]: what the vendor and the appliance make alike (staff
//!   password hashes, one-time enrollment tokens, WireGuard terminal configs and QR codes), one
//!   implementation for both.
//!
//! The vendor's side, `kakehashi provision …` ([`cli`]), one module a stage of the workflow:
//! - [`vendor`]: the vendor directory, its root CA and bundle-signing key (`vendor init`);
//! - [`clinic`]: a clinic's directory and its state file, `clinic.json`;
//! - [`setup`]: a clinic from an appliance's request, and its settings (`clinic add`, `set`);
//! - [`terminal`], [`user`]: the clinic's terminals and staff;
//! - [`build`]: the clinic's next bundle (`bundle build`).
#![forbid(unsafe_code)]

pub mod build;
pub mod bundle;
pub mod cli;
pub mod clinic;
pub mod device;
pub mod error;
pub mod password;
pub mod request;
pub mod setup;
pub mod terminal;
pub mod token;
pub mod user;
pub mod vendor;
pub mod wireguard;

pub use error::{Error, Result};

/// Free text given on the command line (a note, an engine user ID): at most `max` characters and
/// no control characters, so that it prints on one line of a listing. `what` names the option.
pub fn check_text(what: &str, text: &str, max: usize) -> Result<()> {
    if text.chars().count() > max {
        return Err(Error::Invalid(format!("{what}: at most {max} characters")));
    }
    if text.chars().any(char::is_control) {
        return Err(Error::Invalid(format!(
            "{what}: control characters (newlines, tabs, escapes) are not allowed"
        )));
    }
    Ok(())
}
