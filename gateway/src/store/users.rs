//! The people who may sign in at a terminal, verified on the gateway itself.
//!
//! Passwords are kept only as argon2id hashes (PHC strings) with OWASP's parameters, so sign-in
//! works while the cloud is unreachable and a stolen database does not give the passwords away.
//! The policy, the hash and its verification are provisioning's ([`provisioning_shared::password`]), so
//! the vendor's laptop and the appliance hash alike; this module stores the people.
//! A person may also have an upstream credential: the ID and password the gateway presents to the
//! cloud engine on their behalf, so the engine's own accounts never reach the terminals. That one
//! must be usable, so it is stored as given; `gateway.db` is mode 0600 for that reason.
//!
//! Passwords and upstream secrets live in [`Zeroizing`] buffers, are never printed and never
//! appear in an error message.

use std::path::Path;

use engine_proxy::scope::Scopes;
pub use provisioning_shared::password::{MAX_ID_CHARS, MIN_PASSWORD_CHARS, dummy_verify, verify_password};
use rusqlite::{Connection, OptionalExtension, params};
use zeroize::Zeroizing;

use crate::store::{self, Result, StoreError, db_path};

/// An account at the cloud engine that the gateway uses instead of the person's own.
pub struct Credential {
    /// The engine's user ID (not a secret; shown in listings).
    pub id: String,
    /// The engine password, wiped from memory when dropped.
    pub password: Zeroizing<String>,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("id", &self.id)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// A person as the gateway needs them at sign-in.
#[derive(Debug)]
pub struct User {
    /// The sign-in ID: 1 to 64 of `A-Z a-z 0-9 . _ @ -`, compared exactly.
    pub id: String,
    /// The argon2id hash of the password, as a PHC string (`$argon2id$v=19$m=…`).
    pub hash: String,
    /// A locked person is refused even with the right password (an administrator's decision).
    pub locked: bool,
    /// What the gateway presents to the cloud engine for this person, if set.
    pub upstream: Option<Credential>,
    /// What this person may call, at any terminal that may call it too.
    pub scopes: Scopes,
}

/// A person as listings show them: never a hash, never a secret.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Summary {
    pub id: String,
    pub locked: bool,
    /// Whether an upstream credential is set.
    pub upstream: bool,
    /// The upstream engine's user ID, if set (not a secret).
    pub upstream_id: Option<String>,
    pub scopes: Scopes,
    pub created: String,
    pub changed: String,
}

/// Reads one person by exact ID; `None` if there is no such person.
pub fn lookup(conn: &Connection, id: &str) -> Result<Option<User>> {
    let path = db_path(conn);
    let row = conn
        .query_row(
            "SELECT id, hash, locked, upstream_id, upstream_password, scopes FROM users WHERE id = ?1",
            params![id],
            |r| {
                let upstream_id: Option<String> = r.get(3)?;
                let password: Option<String> = r.get(4)?;
                let user = User {
                    id: r.get(0)?,
                    hash: r.get(1)?,
                    locked: r.get(2)?,
                    upstream: upstream_id.zip(password).map(|(id, password)| Credential {
                        id,
                        password: Zeroizing::new(password),
                    }),
                    scopes: Scopes::ALL,
                };
                Ok((user, r.get::<_, Option<String>>(5)?))
            },
        )
        .optional()
        .map_err(StoreError::sqlite(&path, "read the user"))?;
    let Some((mut user, scopes)) = row else {
        return Ok(None);
    };
    user.scopes = store::scopes_column(&path, &format!("user {:?}", user.id), scopes.as_deref())?;
    Ok(Some(user))
}

/// Every person, by ID, for listings.
pub fn list(conn: &Connection) -> Result<Vec<Summary>> {
    let path = db_path(conn);
    let mut stmt = conn
        .prepare("SELECT id, locked, upstream_id, created, changed, scopes FROM users ORDER BY id")
        .map_err(StoreError::sqlite(&path, "read the users"))?;
    let rows = stmt
        .query_map([], |r| {
            let upstream_id: Option<String> = r.get(2)?;
            let summary = Summary {
                id: r.get(0)?,
                locked: r.get(1)?,
                upstream: upstream_id.is_some(),
                upstream_id,
                scopes: Scopes::ALL,
                created: r.get(3)?,
                changed: r.get(4)?,
            };
            Ok((summary, r.get::<_, Option<String>>(5)?))
        })
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .map_err(StoreError::sqlite(&path, "read the users"))?;
    rows.into_iter()
        .map(|(mut summary, scopes)| {
            summary.scopes =
                store::scopes_column(&path, &format!("user {:?}", summary.id), scopes.as_deref())?;
            Ok(summary)
        })
        .collect()
}

/// Hashes a password with argon2id (m=7168 KiB, t=5, p=1) and a fresh 16-byte random salt.
pub fn hash_password(password: &[u8]) -> Result<String> {
    Ok(provisioning_shared::password::hash_password(password)?)
}

/// The policy for a new password: at least 10 characters, and not the ID in any case.
pub fn check_new_password(id: &str, password: &str) -> Result<()> {
    Ok(provisioning_shared::password::check_new_password(id, password)?)
}

/// The ID rule: 1 to 64 characters of `A-Z a-z 0-9 . _ @ -`, which fit HTTP Basic, logs and
/// listings without quoting.
pub fn check_id(id: &str) -> Result<()> {
    Ok(provisioning_shared::password::check_id(id)?)
}

/// The rule for an upstream engine user ID: 1 to 256 characters, no control characters, no ':'
/// (it travels in HTTP Basic, where ':' ends the ID).
pub fn check_upstream_id(id: &str) -> Result<()> {
    Ok(provisioning_shared::password::check_upstream_id(
        "--upstream-id", id,
    )?)
}

/// Adds a person with an already-computed hash (see [`hash_password`]).
pub fn add(
    conn: &Connection,
    id: &str,
    hash: &str,
    upstream: Option<&Credential>,
    scopes: Scopes,
) -> Result<()> {
    check_id(id)?;
    let path = db_path(conn);
    let now = store::now_text();
    let tx = begin(conn, &path)?;
    if exists(&tx, id)? {
        return Err(StoreError::UserExists { id: id.to_owned() });
    }
    tx.execute(
        "INSERT INTO users (id, hash, locked, upstream_id, upstream_password, created, changed, scopes)
         VALUES (?1, ?2, 0, ?3, ?4, ?5, ?5, ?6)",
        params![
            id,
            hash,
            upstream.map(|c| c.id.as_str()),
            upstream.map(|c| c.password.as_str()),
            now,
            store::scopes_text(scopes),
        ],
    )
    .and_then(|_| tx.commit())
    .map_err(StoreError::sqlite(&path, "add the user"))
}

/// Replaces what a person may call; it takes effect at their next sign-in.
pub fn set_scopes(conn: &Connection, id: &str, scopes: Scopes) -> Result<()> {
    update(conn, id, "scopes = ?2", params![id, store::scopes_text(scopes)])
}

/// Replaces a person's password hash.
pub fn set_hash(conn: &Connection, id: &str, hash: &str) -> Result<()> {
    update(conn, id, "hash = ?2", params![id, hash])
}

/// Locks or unlocks a person; refuses (changing nothing) if they already are so.
pub fn set_locked(conn: &Connection, id: &str, locked: bool) -> Result<()> {
    let path = db_path(conn);
    let tx = begin(conn, &path)?;
    let current: Option<bool> = tx
        .query_row("SELECT locked FROM users WHERE id = ?1", params![id], |r| {
            r.get(0)
        })
        .optional()
        .map_err(StoreError::sqlite(&path, "read the user"))?;
    match current {
        None => return Err(unknown(id)),
        Some(c) if c == locked => {
            return Err(StoreError::UserAlready {
                id: id.to_owned(),
                state: if locked { "locked" } else { "unlocked" },
            });
        }
        Some(_) => {}
    }
    update(&tx, id, "locked = ?2", params![id, locked])?;
    tx.commit().map_err(StoreError::sqlite(&path, "change the user"))
}

/// Sets or clears (`None`) a person's upstream credential.
pub fn set_upstream(conn: &Connection, id: &str, upstream: Option<&Credential>) -> Result<()> {
    update(
        conn,
        id,
        "upstream_id = ?2, upstream_password = ?3",
        params![
            id,
            upstream.map(|c| c.id.as_str()),
            upstream.map(|c| c.password.as_str())
        ],
    )
}

/// Removes a person.
pub fn remove(conn: &Connection, id: &str) -> Result<()> {
    let path = db_path(conn);
    let n = conn
        .execute("DELETE FROM users WHERE id = ?1", params![id])
        .map_err(StoreError::sqlite(&path, "remove the user"))?;
    if n == 0 { Err(unknown(id)) } else { Ok(()) }
}

/// Whether a person with this ID exists.
pub fn exists(conn: &Connection, id: &str) -> Result<bool> {
    conn.query_row("SELECT 1 FROM users WHERE id = ?1", params![id], |_| Ok(()))
        .optional()
        .map(|r| r.is_some())
        .map_err(StoreError::sqlite(&db_path(conn), "read the user"))
}

/// Runs `UPDATE users SET {set}, changed = now WHERE id = ?1`; an unknown ID is an error.
fn update(conn: &Connection, id: &str, set: &str, args: &[&dyn rusqlite::ToSql]) -> Result<()> {
    let path = db_path(conn);
    let sql = format!(
        "UPDATE users SET {set}, changed = ?{} WHERE id = ?1",
        args.len() + 1
    );
    let now = store::now_text();
    let mut all: Vec<&dyn rusqlite::ToSql> = args.to_vec();
    all.push(&now);
    let n = conn
        .execute(&sql, all.as_slice())
        .map_err(StoreError::sqlite(&path, "change the user"))?;
    if n == 0 { Err(unknown(id)) } else { Ok(()) }
}

fn begin<'c>(conn: &'c Connection, path: &Path) -> Result<rusqlite::Transaction<'c>> {
    conn.unchecked_transaction()
        .map_err(StoreError::sqlite(path, "begin a transaction"))
}

fn unknown(id: &str) -> StoreError {
    StoreError::UnknownUser { id: id.to_owned() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gateway_refuses_what_provisioning_refuses_with_its_own_errors() {
        assert!(matches!(
            check_new_password("alice", "short"),
            Err(StoreError::WeakPassword(_))
        ));
        assert!(matches!(check_id("a b"), Err(StoreError::Invalid(_))));
        assert!(matches!(check_upstream_id("a:b"), Err(StoreError::Invalid(_))));
    }

    #[test]
    fn add_lookup_lock_upstream_remove() {
        let tmp = tempfile::tempdir().unwrap();
        let conn = store::open(tmp.path()).unwrap();
        let hash = hash_password(b"a long password").unwrap();
        add(&conn, "alice", &hash, None, Scopes::ALL).unwrap();
        assert!(matches!(
            add(&conn, "alice", &hash, None, Scopes::ALL),
            Err(StoreError::UserExists { .. })
        ));
        let alice = lookup(&conn, "alice").unwrap().unwrap();
        assert!(!alice.locked && alice.upstream.is_none());
        assert!(verify_password(&alice.hash, b"a long password"));
        assert!(lookup(&conn, "Alice").unwrap().is_none());

        set_locked(&conn, "alice", true).unwrap();
        assert!(matches!(
            set_locked(&conn, "alice", true),
            Err(StoreError::UserAlready { state: "locked", .. })
        ));
        let cred = Credential {
            id: "orca-user".into(),
            password: Zeroizing::new("engine secret".into()),
        };
        set_upstream(&conn, "alice", Some(&cred)).unwrap();
        let alice = lookup(&conn, "alice").unwrap().unwrap();
        assert!(alice.locked);
        let up = alice.upstream.unwrap();
        assert_eq!(
            (up.id.as_str(), up.password.as_str()),
            ("orca-user", "engine secret")
        );
        assert!(!format!("{up:?}").contains("engine secret"));
        let listed = list(&conn).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].upstream_id.as_deref(), Some("orca-user"));

        set_upstream(&conn, "alice", None).unwrap();
        assert!(lookup(&conn, "alice").unwrap().unwrap().upstream.is_none());
        assert!(matches!(
            set_hash(&conn, "bob", &hash),
            Err(StoreError::UnknownUser { .. })
        ));
        remove(&conn, "alice").unwrap();
        assert!(matches!(
            remove(&conn, "alice"),
            Err(StoreError::UnknownUser { .. })
        ));
    }
}
