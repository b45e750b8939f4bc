//! The appliance's data directory and its SQLite databases.
//!
//! One directory (mode 0700) holds everything the appliance must remember: `gateway.db` (the
//! terminal [`inventory`], the people ([`users`]) with upstream passwords, and the one-time
//! enrollment [`tokens`]) and `audit.db` (the hash-chained audit log, see [`crate::audit`]).
//! Every database is opened the way the local engine opens its own
//! ([`engine_proxy::sqlite::open`]: WAL, busy timeout, mode 0600, damage reported as such), with
//! `synchronous=FULL`, so what a commit acknowledged survives power loss, and a schema version in
//! `PRAGMA user_version` that a newer binary can migrate and an older one refuses to touch.

pub mod inventory;
pub mod tokens;
pub mod users;

use std::path::{Path, PathBuf};

use engine_proxy::scope::Scopes;
use engine_proxy::sqlite::{DbError, Durability};
use rusqlite::Connection;

/// The inventory and users database inside the data directory.
pub const GATEWAY_DB: &str = "gateway.db";
/// Mode of the data directory: only the gateway's user may look inside.
pub const DIR_MODE: u32 = 0o700;

/// The schema of `gateway.db` this binary writes.
const SCHEMA_VERSION: i64 = 5;

const SCHEMA_V1: &str = "
CREATE TABLE terminals (
    name    TEXT PRIMARY KEY NOT NULL,
    enabled INTEGER NOT NULL CHECK (enabled IN (0, 1)),
    added   TEXT NOT NULL,
    note    TEXT
) STRICT;
CREATE TABLE users (
    id                TEXT PRIMARY KEY NOT NULL,
    hash              TEXT NOT NULL,
    locked            INTEGER NOT NULL DEFAULT 0 CHECK (locked IN (0, 1)),
    upstream_id       TEXT,
    upstream_password TEXT,
    created           TEXT NOT NULL,
    changed           TEXT NOT NULL,
    CHECK ((upstream_id IS NULL) = (upstream_password IS NULL))
) STRICT;
";

/// Version 2: a terminal may have a WireGuard identity. Columns added in place (a v1 database
/// keeps its rows; every terminal starts without one). SQLite cannot add a UNIQUE column, so
/// uniqueness comes from indexes, which let any number of NULLs through: two terminals never
/// share a key or a tunnel address, and TLS-only terminals have neither. The preshared key is
/// stored as base64, as `wg` writes it: the file is already 0600 (it holds upstream passwords).
const SCHEMA_V2: &str = "
ALTER TABLE terminals ADD COLUMN wg_public_key TEXT;
ALTER TABLE terminals ADD COLUMN wg_preshared_key TEXT
    CHECK (wg_preshared_key IS NULL OR wg_public_key IS NOT NULL);
ALTER TABLE terminals ADD COLUMN wg_address TEXT
    CHECK ((wg_address IS NULL) = (wg_public_key IS NULL));
CREATE UNIQUE INDEX terminals_wg_public_key ON terminals (wg_public_key);
CREATE UNIQUE INDEX terminals_wg_address ON terminals (wg_address);
";

/// Version 3: one-time enrollment tokens (EST `simpleenroll`, see [`tokens`]). One
/// pending token per terminal name; the terminal itself is registered only when it enrolls. Only
/// the token's SHA-256 is kept: a copy of the database enrolls nobody.
const SCHEMA_V3: &str = "
CREATE TABLE enrollment_tokens (
    name     TEXT PRIMARY KEY NOT NULL,
    hash     BLOB NOT NULL CHECK (length(hash) = 32),
    created  TEXT NOT NULL,
    expires  TEXT NOT NULL,
    failures INTEGER NOT NULL DEFAULT 0 CHECK (failures >= 0),
    used     TEXT
) STRICT;
";

/// Version 4: where a terminal or a person came from. `bundle`: declared by the vendor's bundle,
/// so the next bundle may change or remove it; `local`: made on the appliance (`terminal add`,
/// `user add`, an EST enrollment), which bundles leave alone.
const SCHEMA_V4: &str = "
ALTER TABLE terminals ADD COLUMN origin TEXT NOT NULL DEFAULT 'local' CHECK (origin IN ('local', 'bundle'));
ALTER TABLE users ADD COLUMN origin TEXT NOT NULL DEFAULT 'local' CHECK (origin IN ('local', 'bundle'));
";

/// Version 5: scopes, what a terminal and a person may call (`client,reference,write`, see
/// [`engine_proxy::scope`]). NULL is every scope: what terminals and people had before scopes
/// existed, so an existing installation behaves as before until scopes are set.
const SCHEMA_V5: &str = "
ALTER TABLE terminals ADD COLUMN scopes TEXT;
ALTER TABLE users ADD COLUMN scopes TEXT;
";

/// Everything the local state can refuse or fail at, each naming the file, terminal or user.
///
/// Messages never contain a password or an upstream secret: they name what was wrong, not what
/// was typed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The operating system refused an operation on a file (missing, permissions, full disk).
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file operation shared with the PKI (atomic writes, directories, secret files) failed.
    #[error(transparent)]
    Files(#[from] cert_tool::Error),
    /// The file exists but is not an SQLite database (damaged, or something else put there).
    #[error("{}: not an SQLite database ({detail}); move it aside to start afresh, or restore a backup", path.display())]
    NotADatabase { path: PathBuf, detail: String },
    /// SQLite failed while doing `what` on the database `path`.
    #[error("{}: cannot {what}: {source}", path.display())]
    Sqlite {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    /// The database was written by a newer kakehashi whose schema this one does not know.
    #[error(
        "{}: schema version {found}, but this kakehashi knows only up to {known}: \
         it was written by a newer version; upgrade kakehashi",
        path.display()
    )]
    NewerSchema { path: PathBuf, found: i64, known: i64 },
    /// A row that does not hold what the schema promises (edited by hand, or damaged).
    #[error("{}: {what}", path.display())]
    Corrupt { path: PathBuf, what: String },

    /// A terminal name that is not in the inventory.
    #[error("terminal {name:?} is not registered (see `kakehashi terminal list`)")]
    UnknownTerminal { name: String },
    /// Adding a terminal that is already there.
    #[error("terminal {name:?} is already registered (added {added})")]
    TerminalExists { name: String, added: String },
    /// Giving a WireGuard identity to a terminal that has one already.
    #[error(
        "terminal {name:?} already has a WireGuard identity (tunnel address {address}); \
         remove and add it again to replace it"
    )]
    WireGuardExists {
        name: String,
        address: std::net::Ipv4Addr,
    },
    /// A WireGuard public key that another terminal has.
    #[error("the WireGuard public key {key} is already the key of terminal {by:?}")]
    WireGuardKeyTaken { key: String, by: String },
    /// A tunnel address that another terminal has.
    #[error("the tunnel address {address} is already the address of terminal {by:?}")]
    TunnelAddressTaken { address: std::net::Ipv4Addr, by: String },
    /// Every address of the tunnel network is given to a terminal.
    #[error(
        "no free tunnel address left in {net} (wireguard.address): remove unused WireGuard \
         terminals, or make the network larger (a shorter prefix)"
    )]
    TunnelNetworkFull { net: String },
    /// `gateway.toml` could not be read or is not valid (the message names the file and key).
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The appliance could not be found from `--config` and `--data-dir`.
    #[error(transparent)]
    Locate(#[from] crate::config::locate::LocateError),
    /// Enabling an enabled terminal, or disabling a disabled one.
    #[error("terminal {name:?} is already {state}; nothing changed")]
    TerminalAlready { name: String, state: &'static str },

    /// A user ID that is not known.
    #[error("user {id:?} does not exist (see `kakehashi user list`)")]
    UnknownUser { id: String },
    /// Adding a user that is already there.
    #[error("user {id:?} already exists; use `kakehashi user passwd {id}` to change the password")]
    UserExists { id: String },
    /// Locking a locked user, or unlocking an unlocked one.
    #[error("user {id:?} is already {state}; nothing changed")]
    UserAlready { id: String, state: &'static str },
    /// A new password that the policy refuses (the reason, never the password).
    #[error("password refused: {0}")]
    WeakPassword(&'static str),
    /// No password file, no environment variable, and no terminal to ask on.
    #[error(
        "no password given: use --password-file FILE, set KAKEHASHI_USER_PASSWORD, or run on a \
         terminal to be asked"
    )]
    PasswordUnavailable,
    /// argon2 could not hash (should not happen with valid parameters).
    #[error("password hashing failed: {0}")]
    Hash(String),

    /// A value given on the command line that is not acceptable (names the option and the rule).
    #[error("{0}")]
    Invalid(String),

    /// The audit log does not end where its head file says: recording on would hide that.
    #[error(
        "{}: {what}; see `kakehashi audit verify`; to start a new chain, move audit.db and \
         audit.head aside (and keep them)",
        path.display()
    )]
    AuditTampered { path: PathBuf, what: String },
    /// The audit log's writer thread is gone, so nothing more can be recorded.
    #[error("the audit log writer has stopped; entries can no longer be recorded")]
    AuditStopped,

    /// `journal.db` is not in the data directory: a wrong `--config` or `--data-dir`, or no
    /// gateway with a local journal has run there. Reported as such rather than as a damaged
    /// database.
    #[error(
        "{}: no such file: no gateway with a local journal has run on this data directory \
         (are --config and --data-dir right?)",
        path.display()
    )]
    NoJournal { path: PathBuf },
    /// `journal.db` could not be opened, checked, read or changed; the message names the file.
    /// (Boxed, as in the next variant, to keep every `Result` of this crate small.)
    #[error(transparent)]
    JournalFile(Box<engine_proxy::journal::JournalError>),
    /// The journal has no such entry, or the entry is not in a state the change applies to;
    /// nothing changed.
    #[error("{}: {source}", path.display())]
    JournalEntry {
        path: PathBuf,
        #[source]
        source: Box<engine_proxy::journal::JournalError>,
    },
}

/// The local state's result type.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// What provisioning's shared code (password policy and hashes, tokens, WireGuard configs)
/// refuses, as the appliance's own errors, with the same messages.
impl From<provisioning_shared::Error> for StoreError {
    fn from(e: provisioning_shared::Error) -> StoreError {
        match e {
            provisioning_shared::Error::WeakPassword(why) => StoreError::WeakPassword(why),
            provisioning_shared::Error::Hash(detail) => StoreError::Hash(detail),
            provisioning_shared::Error::Invalid(message) => StoreError::Invalid(message),
            other => StoreError::Invalid(other.to_string()),
        }
    }
}

/// The shared opener's errors, in this crate's words.
impl From<DbError> for StoreError {
    fn from(e: DbError) -> StoreError {
        match e {
            DbError::Damaged { path, detail } => StoreError::NotADatabase { path, detail },
            DbError::Sqlite { path, what, source } => StoreError::Sqlite { path, what, source },
            DbError::Create { path, source } => StoreError::Io {
                op: "create",
                path,
                source,
            },
            DbError::Restrict { path, source } => StoreError::Io {
                op: "restrict the permissions of",
                path,
                source,
            },
        }
    }
}

impl StoreError {
    /// An I/O error with the file it concerns.
    pub fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> StoreError {
        let path = path.into();
        move |source| StoreError::Io { op, path, source }
    }

    /// A journal error on `path` (`journal.db`), named once: a file error already names it, an
    /// entry error (unknown id, wrong state) gets it in front.
    pub fn journal(path: &Path) -> impl FnOnce(engine_proxy::journal::JournalError) -> StoreError {
        use engine_proxy::journal::JournalError;
        let path = path.to_path_buf();
        move |e| match e {
            JournalError::NoEntry(_) | JournalError::WrongState { .. } => StoreError::JournalEntry {
                path,
                source: Box::new(e),
            },
            JournalError::Db(_) | JournalError::Stopped(_) => StoreError::JournalFile(Box::new(e)),
        }
    }

    /// An SQLite error on `path` while doing `what`; "not a database" gets its own message.
    pub fn sqlite(path: &Path, what: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
        let path = path.to_path_buf();
        move |source| match source.sqlite_error_code() {
            Some(rusqlite::ErrorCode::NotADatabase) => StoreError::NotADatabase {
                path,
                detail: source.to_string(),
            },
            _ => StoreError::Sqlite { path, what, source },
        }
    }
}

/// Opens (creating if needed) `DATA_DIR/gateway.db` with the current schema.
///
/// The directory is created with mode 0700 and the database with mode 0600: it holds password
/// hashes and the upstream passwords the gateway sends to the cloud engine.
pub fn open(data_dir: &Path) -> Result<Connection> {
    let path = data_dir.join(GATEWAY_DB);
    let conn = open_file(data_dir, &path)?;
    migrate(
        &conn,
        &path,
        SCHEMA_VERSION,
        &[SCHEMA_V1, SCHEMA_V2, SCHEMA_V3, SCHEMA_V4, SCHEMA_V5],
    )?;
    Ok(conn)
}

/// Opens one database file of the data directory with the appliance's settings (see the module
/// doc), creating the directory (0700) and the file (0600) if missing.
pub(crate) fn open_file(data_dir: &Path, path: &Path) -> Result<Connection> {
    cert_tool::files::create_dir(data_dir, DIR_MODE)?;
    Ok(engine_proxy::sqlite::open(path, Durability::Full)?)
}

/// Opens an existing database file for reading only what is there: nothing is created, and a
/// missing file is `None`. For commands that inspect (verify, export) and must not leave traces.
pub(crate) fn open_existing(path: &Path) -> Result<Option<Connection>> {
    Ok(engine_proxy::sqlite::open_existing(path, Durability::Full)?)
}

/// The file behind a connection, for error messages.
pub(crate) fn db_path(conn: &Connection) -> PathBuf {
    conn.path().unwrap_or(GATEWAY_DB).into()
}

/// A `scopes` column as stored: NULL for every scope, else the canonical list.
pub(crate) fn scopes_text(scopes: Scopes) -> Option<String> {
    (scopes != Scopes::ALL).then(|| scopes.to_string())
}

/// A `scopes` column read back; `whose` names the row for the error (a hand-edited database).
pub(crate) fn scopes_column(path: &Path, whose: &str, text: Option<&str>) -> Result<Scopes> {
    match text {
        None => Ok(Scopes::ALL),
        Some(text) => text.parse().map_err(|e| StoreError::Corrupt {
            path: path.to_owned(),
            what: format!("{whose}: scopes: {e}"),
        }),
    }
}

/// Brings the schema to `version` by running the scripts after the current `user_version`
/// (`scripts[0]` makes version 1), all in one transaction, so two processes starting at once
/// cannot both migrate.
pub(crate) fn migrate(conn: &Connection, path: &Path, version: i64, scripts: &[&str]) -> Result<()> {
    let current = user_version(conn, path)?;
    if current == version {
        return Ok(());
    }
    if current > version {
        return Err(StoreError::NewerSchema {
            path: path.into(),
            found: current,
            known: version,
        });
    }
    let tx = conn
        .unchecked_transaction()
        .map_err(StoreError::sqlite(path, "begin the schema upgrade"))?;
    // Another process may have migrated between our read and the transaction: read again.
    let current = user_version(&tx, path)?;
    if current < version {
        let from = usize::try_from(current).unwrap_or(0);
        for script in scripts.iter().skip(from) {
            tx.execute_batch(script)
                .map_err(StoreError::sqlite(path, "create the schema"))?;
        }
        tx.pragma_update(None, "user_version", version)
            .map_err(StoreError::sqlite(path, "record the schema version"))?;
    }
    tx.commit()
        .map_err(StoreError::sqlite(path, "commit the schema upgrade"))
}

/// The schema version recorded in the file.
pub(crate) fn user_version(conn: &Connection, path: &Path) -> Result<i64> {
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(StoreError::sqlite(path, "read the schema version"))
}

/// The time to record for a change: RFC 3339 in whole seconds, as the PKI writes it.
pub(crate) fn now_text() -> String {
    cert_tool::ca::rfc3339(cert_tool::ca::now())
}

/// Refuses text with control characters (which would break listings and logs) or longer than
/// `max` characters; `what` names the option.
pub(crate) fn check_text(what: &str, text: &str, max: usize) -> Result<()> {
    Ok(provisioning_shared::check_text(what, text, max)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn creates_dir_and_file_private_and_is_idempotent() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        drop(open(&dir).unwrap());
        let conn = open(&dir).unwrap();
        assert_eq!(user_version(&conn, &dir).unwrap(), SCHEMA_VERSION);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(GATEWAY_DB)), 0o600);
    }

    #[test]
    fn refuses_a_file_that_is_not_sqlite_and_a_newer_schema() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join(GATEWAY_DB), vec![b'x'; 4096]).unwrap();
        let err = open(tmp.path()).unwrap_err().to_string();
        assert!(err.contains("gateway.db: not an SQLite database"), "{err}");

        let tmp = tempfile::tempdir().unwrap();
        open(tmp.path())
            .unwrap()
            .pragma_update(None, "user_version", 7)
            .unwrap();
        let err = open(tmp.path()).unwrap_err().to_string();
        assert!(err.contains("schema version 7"), "{err}");
    }

    #[test]
    fn a_version_1_database_is_upgraded_in_place_and_keeps_its_rows() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join(GATEWAY_DB);
        {
            let conn = open_file(tmp.path(), &path).unwrap();
            migrate(&conn, &path, 1, &[SCHEMA_V1]).unwrap();
            conn.execute(
                "INSERT INTO terminals (name, enabled, added) VALUES ('old-pc', 1, '2025-01-01T00:00:00Z')",
                [],
            )
            .unwrap();
        }
        let conn = open(tmp.path()).unwrap();
        assert_eq!(user_version(&conn, &path).unwrap(), SCHEMA_VERSION);
        let (name, key): (String, Option<String>) = conn
            .query_row("SELECT name, wg_public_key FROM terminals", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!((name.as_str(), key), ("old-pc", None));
        // An address without a key is refused by the schema itself.
        assert!(
            conn.execute("UPDATE terminals SET wg_address = '10.77.0.2'", [])
                .is_err()
        );
        let tokens: i64 = conn
            .query_row("SELECT count(*) FROM enrollment_tokens", [], |r| r.get(0))
            .unwrap();
        assert_eq!(tokens, 0, "version 3 adds an empty token table");
    }
}
