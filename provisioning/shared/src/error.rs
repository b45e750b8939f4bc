//! What the shared code refuses: a password, an ID, a value, or the random number generator.

/// Why a credential could not be made or a value is not acceptable. Messages never contain a
/// password, a token or a key: they name what was wrong, not what was typed. The vendor's
/// workflow and the appliance each show them as their own errors, with these messages.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A new password that the policy refuses (the reason, never the password).
    #[error("password refused: {0}")]
    WeakPassword(&'static str),
    /// argon2 could not hash (should not happen with valid parameters).
    #[error("password hashing failed: {0}")]
    Hash(String),
    /// The operating system's random number generator failed.
    #[error("the random number generator failed")]
    Random,
    /// A value that is not acceptable (names the option and the rule).
    #[error("{0}")]
    Invalid(String),
}

/// The shared code's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
