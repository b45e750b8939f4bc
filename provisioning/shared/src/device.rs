//! The appliance's device identity: the X25519 key bundles are encrypted to.
//!
//! It is made on the appliance by `kakehashi gateway init` and never leaves it; its public half
//! (an age recipient, `age1…`) goes into the request and names the appliance in every bundle.
//! The file holds age's own text form (`AGE-SECRET-KEY-1…`), so the standard `age` tool can
//! decrypt a bundle for inspection on the appliance (`age -d -i device.key`).

use std::path::Path;

use zeroize::Zeroizing;

/// A device identity and how it is written to its file.
pub struct Identity(pub age::x25519::Identity);

impl Identity {
    /// A new identity from the operating system's random numbers.
    pub fn generate() -> Identity {
        Identity(age::x25519::Identity::generate())
    }

    /// The public half: the age recipient (`age1…`).
    pub fn recipient(&self) -> String {
        self.0.to_public().to_string()
    }

    /// The file's text (a secret).
    pub fn to_text(&self) -> Zeroizing<String> {
        use age::secrecy::ExposeSecret as _;
        Zeroizing::new(format!("{}\n", self.0.to_string().expose_secret()))
    }

    /// Reads the identity from its file (first non-comment line), saying what is wrong with it.
    pub fn read(path: &Path) -> Result<Identity, String> {
        let text = Zeroizing::new(
            std::fs::read_to_string(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?,
        );
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .ok_or_else(|| format!("{}: empty; expected an AGE-SECRET-KEY-1… line", path.display()))?;
        line.parse::<age::x25519::Identity>()
            .map(Identity)
            .map_err(|e| format!("{}: not an age X25519 identity: {e}", path.display()))
    }
}
