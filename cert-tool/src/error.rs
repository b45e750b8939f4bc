//! Every way the PKI can say no, each naming what was wrong and where.

use std::io;
use std::path::PathBuf;

/// What went wrong, precisely enough for a vendor to fix it without reading code.
///
/// Every variant that concerns a file names it: "which file, what was expected".
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The operating system refused an operation on a file (missing, permissions, full disk).
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// A file was read but is not what it should be.
    #[error("{}: not a valid {expected}: {detail}", path.display())]
    Malformed {
        path: PathBuf,
        expected: &'static str,
        detail: String,
    },

    /// The CA key would not decrypt with the passphrase given.
    #[error("{}: wrong passphrase (the key does not decrypt with it)", path.display())]
    WrongPassphrase { path: PathBuf },

    /// The CA key is encrypted and there is no way to ask for its passphrase.
    #[error(
        "{}: the key is encrypted and no passphrase was given: use --passphrase-file FILE, \
         set KAKEHASHI_CA_PASSPHRASE, or run on a terminal to be asked",
        path.display()
    )]
    PassphraseUnavailable { path: PathBuf },

    /// A new passphrase that would not protect a CA key.
    #[error("passphrase refused: {0}")]
    WeakPassphrase(&'static str),

    /// `init-ca` on a directory that already holds a CA.
    #[error("{}: a CA already exists here (ca.pem); refusing to overwrite it", dir.display())]
    CaExists { dir: PathBuf },

    /// A command that needs a CA was pointed at a directory without one.
    #[error("{}: no CA here (ca.pem is missing); create one with `kakehashi cert init-ca`", dir.display())]
    NoCa { dir: PathBuf },

    /// Issuing a name that already has a valid certificate.
    #[error(
        "{name}: already has a valid certificate (serial {serial}, valid until {not_after}); \
         use --replace to revoke it and issue a new one"
    )]
    NameInUse {
        name: String,
        serial: String,
        not_after: String,
    },

    /// A serial number that the index does not know.
    #[error("{}: no certificate with serial {serial}", index.display())]
    UnknownSerial { serial: String, index: PathBuf },

    /// A name that has no valid certificate in the index.
    #[error("{}: no valid certificate named {name}", index.display())]
    UnknownName { name: String, index: PathBuf },

    /// Revoking what is already revoked.
    #[error("serial {serial} was already revoked on {at}")]
    AlreadyRevoked { serial: String, at: String },

    /// A certificate signing request whose self-signature does not verify.
    #[error("{}: the CSR's signature does not verify: it was altered or damaged", path.display())]
    CsrSignature { path: PathBuf },

    /// A request that the command line or a profile does not allow.
    #[error("{0}")]
    Refused(String),

    /// The private key file and the certificate file do not belong together.
    #[error("{}: this key does not belong to the certificate {}", key.display(), cert.display())]
    KeyMismatch { key: PathBuf, cert: PathBuf },

    /// A cryptographic operation failed inside a library (should not happen with valid input).
    #[error("{what}: {detail}")]
    Crypto { what: &'static str, detail: String },
}

/// The PKI's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O error with the file it concerns.
    pub fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { op, path, source }
    }

    /// A malformed input file.
    pub fn malformed(path: impl Into<PathBuf>, expected: &'static str, detail: impl ToString) -> Error {
        Error::Malformed {
            path: path.into(),
            expected,
            detail: detail.to_string(),
        }
    }

    /// A library-level crypto failure.
    pub fn crypto(what: &'static str) -> impl FnOnce(rcgen::Error) -> Error {
        move |e| Error::Crypto {
            what,
            detail: e.to_string(),
        }
    }
}
