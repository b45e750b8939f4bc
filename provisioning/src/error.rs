//! Every way the vendor workflow can say no, each naming the clinic, file or flag concerned.

use std::path::PathBuf;

/// What went wrong, precisely enough for a vendor to fix it without reading code. Messages never
/// contain a password, a token or a key: they name what was wrong, not what was typed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The PKI refused or failed (a CA directory, a key, a passphrase, a certificate file).
    #[error(transparent)]
    Pki(#[from] cert_tool::Error),
    /// A password, ID or value that the rules both sides share refuse, or no random numbers
    /// (`provisioning_shared`'s own messages).
    #[error(transparent)]
    Shared(#[from] provisioning_shared::Error),
    /// The appliance's request file cannot be used.
    #[error(transparent)]
    Request(#[from] provisioning_shared::request::RequestError),
    /// A bundle could not be made.
    #[error(transparent)]
    Bundle(#[from] provisioning_shared::bundle::BundleError),
    /// The operating system refused an operation on a file (missing, permissions, full disk).
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A clinic's state file that does not hold what it should (edited by hand, or damaged).
    #[error("{}: not a valid clinic state file: {detail}", path.display())]
    State { path: PathBuf, detail: String },

    /// A command that needs a vendor directory was pointed at a directory without one.
    #[error(
        "{}: no vendor here ({} is missing): create one with `kakehashi provision vendor init`, \
         or give the right --dir (or KAKEHASHI_VENDOR_DIR)",
        dir.display(), missing
    )]
    NoVendor { dir: PathBuf, missing: &'static str },
    /// `vendor init` on a directory that has a vendor already.
    #[error("{}: a vendor exists here already ({found}); refusing to overwrite it", dir.display())]
    VendorExists { dir: PathBuf, found: String },
    /// A clinic ID that the vendor directory does not have.
    #[error("no clinic {id:?} in {} (see `kakehashi provision clinic list`)", dir.display())]
    NoClinic { id: String, dir: PathBuf },
    /// `clinic add` with an ID that is taken.
    #[error("clinic {id:?} exists already ({}); choose another --clinic", dir.display())]
    ClinicExists { id: String, dir: PathBuf },
    /// `clinic add` with the request of an appliance that already serves another clinic.
    #[error(
        "{}: appliance {appliance} is already the appliance of clinic {clinic:?}: one appliance \
         serves one clinic (run `kakehashi gateway init` on the new appliance for its own request)",
        request.display()
    )]
    ApplianceTaken {
        request: PathBuf,
        appliance: String,
        clinic: String,
    },

    /// A terminal name the clinic does not have.
    #[error(
        "clinic {clinic:?} has no terminal {name:?} (see `kakehashi provision terminal list --clinic {clinic}`)"
    )]
    UnknownTerminal { clinic: String, name: String },
    /// Adding a terminal whose name is taken.
    #[error("clinic {clinic:?} has a terminal {name:?} already (added {added}); choose another --name")]
    TerminalExists {
        clinic: String,
        name: String,
        added: String,
    },
    /// Adding a terminal under the name of a revoked one.
    #[error(
        "terminal {name:?} of clinic {clinic:?} was revoked ({at}), and every bundle keeps \
         revoking that name: choose another --name"
    )]
    TerminalRevoked {
        clinic: String,
        name: String,
        at: String,
    },
    /// Enabling an enabled terminal, or disabling a disabled one.
    #[error("terminal {name:?} of clinic {clinic:?} is already {state}; nothing changed")]
    TerminalAlready {
        clinic: String,
        name: String,
        state: &'static str,
    },
    /// Every address of the clinic's tunnel network is given to a terminal.
    #[error(
        "clinic {clinic:?}: no free tunnel address left in {net}: revoke unused WireGuard \
         terminals, or make the network larger (`provision clinic set --wg-network`)"
    )]
    TunnelNetworkFull { clinic: String, net: String },

    /// A user ID the clinic does not have.
    #[error("clinic {clinic:?} has no user {id:?} (see `kakehashi provision user list --clinic {clinic}`)")]
    UnknownUser { clinic: String, id: String },
    /// Adding a user whose ID is taken.
    #[error(
        "clinic {clinic:?} has a user {id:?} already; use `kakehashi provision user passwd \
         --clinic {clinic} --id {id}` to change the password"
    )]
    UserExists { clinic: String, id: String },
    /// Locking a locked user, or unlocking an unlocked one.
    #[error("user {id:?} of clinic {clinic:?} is already {state}; nothing changed")]
    UserAlready {
        clinic: String,
        id: String,
        state: &'static str,
    },
    /// `bundle build` for a clinic that lacks something the appliance needs.
    #[error("clinic {clinic:?}: cannot build a bundle yet: {missing}")]
    NotReady { clinic: String, missing: String },

    /// A value given on the command line that is not acceptable (names the option and the rule).
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    /// An I/O error with the file it concerns.
    pub fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { op, path, source }
    }
}

/// The vendor workflow's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
