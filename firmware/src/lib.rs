//! Signed appliance updates: images, A/B slots, the version floor, install, boot and commit.
//!
//! An update is an [`image`]: a manifest (version, board, the lowest version it may update from,
//! the payload's size and a SHA-256 per chunk) signed by the vendor's firmware key (ECDSA P-256),
//! then the payload, the new `kakehashi` binary, and optionally a root file system image for
//! appliances whose slots are partitions ([`rootfs`]). The appliance checks the signature
//! against the key it pins, the board and the version floor ([`floor`]) before it writes a
//! byte; then [`install`] streams the payload into the inactive slot, checking each chunk's hash as it goes,
//! under a temporary name that nothing boots, and marks the slot as on trial only once it is
//! whole and on disk. The [`bootloader`] interface keeps which slot is committed and which is on
//! trial; [`files`] is its backend for a general-purpose Linux (two slot directories and a
//! `current` symlink). [`boot`] decides at each start which slot runs: the trial slot until its
//! boot count passes the limit, then the committed one again.
//!
//! Power loss between any two writes leaves the committed slot bootable and unchanged: every
//! state change is one `rename` of a file written and synced beforehand.
#![forbid(unsafe_code)]

pub mod atomic;
pub mod backend;
pub mod boot;
pub mod bootloader;
pub mod files;
pub mod floor;
pub mod grub;
pub mod image;
pub mod install;
pub mod key;
pub mod manifest;
pub mod rootfs;
pub mod uboot;
pub mod vars;
pub mod version;

pub use bootloader::{BootEnv, Bootloader, Slot};
pub use version::Version;

/// Everything that can go wrong, each naming exactly what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// The image's source failed while it was read: a file's I/O error, or a download cut
    /// short, timed out or refused (the message names the URL and how far it got).
    #[error("cannot read image {origin}: {source}")]
    Read { origin: String, source: std::io::Error },
    #[error("not a Kakehashi firmware image (it does not begin with {expected:?})")]
    NotAnImage { expected: &'static str },
    #[error("the image is truncated: {0}")]
    Truncated(String),
    #[error("the image is malformed: {0}")]
    Malformed(String),
    #[error(
        "the image's signature does not verify: it was changed after signing, or not signed by the key it names"
    )]
    BadSignature,
    #[error(
        "the image is signed by firmware key {found}, but this appliance pins {pinned}: \
         it is not from this appliance's vendor"
    )]
    OtherKey { found: String, pinned: String },
    #[error("the image is for board {image:?}, but this appliance is {ours:?}")]
    OtherBoard { image: String, ours: String },
    #[error(
        "the image's version {image} is not above this appliance's version floor {floor}: \
         downgrades and replays of old images are refused"
    )]
    BelowFloor { image: Version, floor: Version },
    #[error("the image updates only from version {min_from} or later, and this appliance runs {running}")]
    TooOld { min_from: Version, running: Version },
    #[error(
        "the image expired at {expires} (signed in its manifest), and this appliance's clock says \
         {now}: install a newer image; if the clock is wrong, set it (NTP) and try again"
    )]
    Expired { expires: String, now: String },
    #[error(
        "chunk {index} of {what} does not match its SHA-256 in the signed manifest: the image is corrupted or tampered with"
    )]
    BadChunk { index: usize, what: &'static str },
    #[error(
        "the image goes on after its payload (at least {0} more bytes): it is damaged or was appended to"
    )]
    TrailingBytes(u64),
    #[error(
        "version {version} is on trial in slot {slot}: commit it or roll it back before installing another"
    )]
    TrialPending { version: String, slot: Slot },
    #[error("invalid version {text:?}: {why}")]
    Version { text: String, why: &'static str },
    #[error("the firmware key: {0}")]
    Key(String),
    #[error("the boot state: {0}")]
    State(String),
    /// A bootloader environment (U-Boot, GRUB) that cannot be read or written as it is.
    #[error("the boot environment {place}: {why}")]
    Env { place: String, why: String },
    #[error("{0}")]
    Refused(String),
    #[error("stopped at {0:?}")]
    Stopped(install::Step),
}

impl Error {
    /// An I/O error naming what was being done and to which file.
    pub fn io<'a>(
        what: &'static str,
        path: &'a std::path::Path,
    ) -> impl FnOnce(std::io::Error) -> Error + 'a {
        move |source| Error::Io {
            what,
            path: path.to_owned(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
