//! What the vendor and the appliance share: the files that pass between them, and the
//! credentials both make.
//!
//! The formats, one implementation for the side that writes and the side that reads:
//! - [`request`]: what an appliance hands the vendor (`kakehashi gateway init`): public keys and
//!   CSRs, never a private key;
//! - [`device`]: the appliance's own key (an age X25519 identity), which bundles are encrypted to;
//! - [`bundle`]: what the vendor hands back (`kakehashi provision bundle build`): configuration,
//!   certificates, CRL, inventory and people, signed by the vendor and encrypted to that
//!   appliance; sealed here, opened and verified here.
//!
//! The credentials both make (`kakehashi provision …` on the vendor's laptop, `kakehashi terminal`
//! and `kakehashi user` on the appliance), alike on both sides:
//! - [`password`]: the policy for a new password and ID, argon2id hashes and their verification;
//! - [`token`]: one-time enrollment tokens;
//! - [`wireguard`]: X25519 keys, the clinic's tunnel network, `wg-quick` configs and QR codes.
//!
//! The vendor's workflow is the `provisioning` crate; the appliance's side is the gateway's.
#![forbid(unsafe_code)]

pub mod bundle;
pub mod device;
pub mod error;
pub mod password;
pub mod request;
pub mod token;
pub mod wireguard;

/// What terminals and people may call: declared by the vendor, carried in bundles, enforced by
/// the appliance; the engine API rules' own type.
pub use engine_proxy::scope;
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
