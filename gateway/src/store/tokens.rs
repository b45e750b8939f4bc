//! One-time enrollment tokens: how a terminal without a certificate earns its first one.
//!
//! `kakehashi terminal add NAME --enroll` makes a token for a terminal that is not registered
//! yet; the terminal (or the person setting it up) sends it with its CSR to EST `simpleenroll`
//! as HTTP Basic `NAME:TOKEN`. A token:
//! - is 128 random bits, shown once and stored only as its SHA-256 (a copy of `gateway.db`
//!   enrolls nobody), compared in constant time ([`provisioning_shared::token`], which also makes the
//!   vendor's tokens that a bundle carries);
//! - works once, and only until it expires (24 hours unless `--token-hours` says otherwise);
//! - locks after [`MAX_FAILURES`] wrong tries for its name, so it cannot be guessed online: a new
//!   `terminal add --enroll` replaces a locked token.
//!
//! [`redeem`] checks the token and runs the enrollment inside one write transaction, then marks
//! the token used and registers the terminal in the same commit: a refused or failed enrollment
//! leaves the inventory and the token as they were (except the count of wrong tries).

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use time::OffsetDateTime;
use zeroize::Zeroizing;

use engine_proxy::scope::Scopes;

use crate::store::inventory;
use crate::store::{self, Result, StoreError, db_path};

pub use provisioning_shared::token::{DEFAULT_HOURS, MAX_HOURS};

/// Wrong tokens for one name before its token locks.
pub const MAX_FAILURES: u32 = 5;

/// A token just made: the only time its text exists outside the terminal's hands.
#[derive(Debug)]
pub struct Issued {
    pub name: String,
    pub token: Zeroizing<String>,
    pub expires: OffsetDateTime,
    /// Whether an earlier token of the same name was replaced (and so stopped working).
    pub replaced: bool,
}

/// Makes a token for `name`, valid for `hours`, replacing any earlier token of that name.
/// Refuses a name already in the inventory: a registered terminal renews its certificate with
/// `simplereenroll`, or is removed first to be enrolled anew.
pub fn create(conn: &Connection, name: &str, hours: u32) -> Result<Issued> {
    inventory::check_name(name)?;
    provisioning_shared::token::check_hours(hours)?;
    let token = provisioning_shared::token::generate()?;
    let now = cert_tool::ca::now();
    let expires = now + time::Duration::hours(hours.into());
    let path = db_path(conn);
    let tx = begin(conn)?;
    if let Some(t) = inventory::Inventory::load(&tx)?.get(name) {
        return Err(StoreError::TerminalExists {
            name: name.to_owned(),
            added: t.added.clone(),
        });
    }
    let replaced = tx
        .execute("DELETE FROM enrollment_tokens WHERE name = ?1", params![name])
        .map_err(StoreError::sqlite(&path, "replace the enrollment token"))?
        > 0;
    tx.execute(
        "INSERT INTO enrollment_tokens (name, hash, created, expires) VALUES (?1, ?2, ?3, ?4)",
        params![
            name,
            provisioning_shared::token::hash(token.as_bytes()).as_slice(),
            text(now),
            text(expires)
        ],
    )
    .map_err(StoreError::sqlite(&path, "record the enrollment token"))?;
    tx.commit()
        .map_err(StoreError::sqlite(&path, "record the enrollment token"))?;
    Ok(Issued {
        name: name.to_owned(),
        token,
        expires,
        replaced,
    })
}

/// Why an enrollment was refused: the token, the request, or the appliance's own state.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("no enrollment token for terminal {0:?}: create one with `kakehashi terminal add {0} --enroll`")]
    NoToken(String),
    #[error("the enrollment token of terminal {name:?} was already used ({at}); a token works once")]
    Used { name: String, at: String },
    #[error("the enrollment token of terminal {name:?} expired at {at}")]
    Expired { name: String, at: String },
    #[error(
        "the enrollment token of terminal {name:?} is locked after {MAX_FAILURES} wrong tries: \
         create a new one with `kakehashi terminal add {name} --enroll`"
    )]
    Locked { name: String },
    #[error("wrong enrollment token for terminal {name:?} ({left} tries left before it locks)")]
    Wrong { name: String, left: u32 },
    #[error("terminal {0:?} is already registered: it renews with simplereenroll")]
    Registered(String),
    /// The token was right but the request cannot be granted (the CSR); the token stays usable.
    #[error("{0}")]
    Request(String),
    /// The appliance could not do its part (database, CA files); nothing was applied.
    #[error("{0}")]
    Failed(String),
}

impl From<StoreError> for Refused {
    fn from(e: StoreError) -> Refused {
        Refused::Failed(e.to_string())
    }
}

/// Checks `name`'s token and, if it is right, runs `enroll` (which signs the certificate); on
/// success marks the token used and registers the terminal, enabled, in the same transaction.
///
/// A wrong token counts towards the lock (committed at once, even though the request is refused);
/// every other refusal changes nothing. If `enroll` succeeds but the final commit fails, the
/// error says so and `undo` is the caller's to run (the CA has issued a certificate for a
/// terminal that is not registered, which no listener admits).
pub fn redeem<T>(
    conn: &Connection,
    name: &str,
    token: &[u8],
    enroll: impl FnOnce() -> std::result::Result<T, Refused>,
) -> std::result::Result<T, Refused> {
    let path = db_path(conn);
    let tx = begin(conn)?;
    let row = tx
        .query_row(
            "SELECT hash, expires, failures, used FROM enrollment_tokens WHERE name = ?1",
            params![name],
            |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, u32>(2)?,
                    r.get::<_, Option<String>>(3)?,
                ))
            },
        )
        .optional()
        .map_err(StoreError::sqlite(&path, "read the enrollment token"))?;
    let Some((stored, expires, failures, used)) = row else {
        return Err(Refused::NoToken(name.to_owned()));
    };
    if let Some(at) = used {
        return Err(Refused::Used {
            name: name.to_owned(),
            at,
        });
    }
    if failures >= MAX_FAILURES {
        return Err(Refused::Locked {
            name: name.to_owned(),
        });
    }
    if !provisioning_shared::token::matches(token, &stored) {
        tx.execute(
            "UPDATE enrollment_tokens SET failures = failures + 1 WHERE name = ?1",
            params![name],
        )
        .and_then(|_| tx.commit())
        .map_err(StoreError::sqlite(&path, "count a wrong enrollment token"))?;
        return Err(Refused::Wrong {
            name: name.to_owned(),
            left: MAX_FAILURES - failures - 1,
        });
    }
    // Expiry is judged only for the right token, so a guesser learns nothing from it.
    let expired = OffsetDateTime::parse(&expires, &time::format_description::well_known::Rfc3339)
        .map_or(true, |t| t <= cert_tool::ca::now());
    if expired {
        return Err(Refused::Expired {
            name: name.to_owned(),
            at: expires,
        });
    }
    if inventory::Inventory::load(&tx)?.get(name).is_some() {
        return Err(Refused::Registered(name.to_owned()));
    }
    let done = enroll()?;
    tx.execute(
        "UPDATE enrollment_tokens SET used = ?2 WHERE name = ?1",
        params![name, store::now_text()],
    )
    .map_err(StoreError::sqlite(&path, "mark the enrollment token used"))?;
    inventory::insert(
        &tx,
        name,
        Some("enrolled with a one-time token (EST)"),
        Scopes::ALL,
    )?;
    tx.commit()
        .map_err(StoreError::sqlite(&path, "register the enrolled terminal"))?;
    Ok(done)
}

/// The state of one name's token, for listings and tests.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Pending {
    pub name: String,
    pub created: String,
    pub expires: String,
    pub failures: u32,
    pub used: Option<String>,
}

impl Pending {
    /// What the token can still do: `pending` (it works), `used`, `locked` (too many wrong
    /// tries) or `expired`.
    pub fn state(&self, now: OffsetDateTime) -> &'static str {
        let expired = OffsetDateTime::parse(&self.expires, &time::format_description::well_known::Rfc3339)
            .map_or(true, |t| t <= now);
        match () {
            _ if self.used.is_some() => "used",
            _ if self.failures >= MAX_FAILURES => "locked",
            _ if expired => "expired",
            _ => "pending",
        }
    }
}

/// Every token, used or not.
pub fn list(conn: &Connection) -> Result<Vec<Pending>> {
    let path = db_path(conn);
    conn.prepare("SELECT name, created, expires, failures, used FROM enrollment_tokens ORDER BY name")
        .and_then(|mut stmt| {
            stmt.query_map([], |r| {
                Ok(Pending {
                    name: r.get(0)?,
                    created: r.get(1)?,
                    expires: r.get(2)?,
                    failures: r.get(3)?,
                    used: r.get(4)?,
                })
            })?
            .collect()
        })
        .map_err(StoreError::sqlite(&path, "read the enrollment tokens"))
}

fn begin(conn: &Connection) -> Result<rusqlite::Transaction<'_>> {
    rusqlite::Transaction::new_unchecked(conn, TransactionBehavior::Immediate)
        .map_err(StoreError::sqlite(&db_path(conn), "begin a transaction"))
}

fn text(t: OffsetDateTime) -> String {
    cert_tool::ca::rfc3339(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok() -> std::result::Result<(), Refused> {
        Ok(())
    }

    #[test]
    fn a_token_works_once_and_registers_the_terminal() {
        let tmp = tempfile::tempdir().unwrap();
        let conn = store::open(tmp.path()).unwrap();
        let issued = create(&conn, "tablet-1", 24).unwrap();
        assert_eq!(issued.token.len(), 32);
        let stored: Vec<u8> = conn
            .query_row("SELECT hash FROM enrollment_tokens", [], |r| r.get(0))
            .unwrap();
        assert_ne!(stored, issued.token.as_bytes(), "only the hash is kept");
        // A refused request (bad CSR) leaves the token usable and registers nothing.
        let err = redeem(&conn, "tablet-1", issued.token.as_bytes(), || {
            Err::<(), _>(Refused::Request("bad CSR".into()))
        })
        .unwrap_err();
        assert!(matches!(err, Refused::Request(_)));
        assert!(inventory::Inventory::load(&conn).unwrap().is_empty());
        redeem(&conn, "tablet-1", issued.token.as_bytes(), ok).unwrap();
        let registered = inventory::Inventory::load(&conn).unwrap();
        assert_eq!(registered.get("tablet-1").map(|t| t.enabled), Some(true));
        let again = redeem(&conn, "tablet-1", issued.token.as_bytes(), ok).unwrap_err();
        assert!(matches!(again, Refused::Used { .. }), "{again}");
        // A registered terminal gets no token.
        assert!(matches!(
            create(&conn, "tablet-1", 24),
            Err(StoreError::TerminalExists { .. })
        ));
        assert!(matches!(
            redeem(&conn, "nobody", b"x", ok),
            Err(Refused::NoToken(_))
        ));
    }

    #[test]
    fn wrong_tokens_lock_it_and_a_new_token_replaces_it() {
        let tmp = tempfile::tempdir().unwrap();
        let conn = store::open(tmp.path()).unwrap();
        let issued = create(&conn, "pc", 1).unwrap();
        for left in (0..MAX_FAILURES).rev() {
            let err = redeem(&conn, "pc", b"guess", ok).unwrap_err();
            assert!(
                matches!(err, Refused::Wrong { left: l, .. } if l == left),
                "{err}"
            );
        }
        let err = redeem(&conn, "pc", issued.token.as_bytes(), ok).unwrap_err();
        assert!(matches!(err, Refused::Locked { .. }), "{err}");
        assert_eq!(list(&conn).unwrap()[0].failures, MAX_FAILURES);
        let fresh = create(&conn, "pc", 1).unwrap();
        assert!(fresh.replaced);
        assert!(redeem(&conn, "pc", issued.token.as_bytes(), ok).is_err());
        redeem(&conn, "pc", fresh.token.as_bytes(), ok).unwrap();
    }

    #[test]
    fn an_expired_token_is_refused_and_lifetimes_are_bounded() {
        let tmp = tempfile::tempdir().unwrap();
        let conn = store::open(tmp.path()).unwrap();
        let issued = create(&conn, "pc", 1).unwrap();
        conn.execute(
            "UPDATE enrollment_tokens SET expires = '2020-01-01T00:00:00Z'",
            [],
        )
        .unwrap();
        let err = redeem(&conn, "pc", issued.token.as_bytes(), ok).unwrap_err();
        assert!(matches!(err, Refused::Expired { .. }), "{err}");
        assert!(inventory::Inventory::load(&conn).unwrap().is_empty());
        assert!(create(&conn, "pc", 0).is_err());
        assert!(create(&conn, "pc", MAX_HOURS + 1).is_err());
        assert!(create(&conn, ".bad", 1).is_err());
    }
}
