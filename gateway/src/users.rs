//! The people who may sign in at a terminal, verified on the gateway itself.
//!
//! Passwords are kept only as argon2id hashes (PHC strings) with OWASP's parameters, so sign-in
//! works while the cloud is unreachable and a stolen database does not give the passwords away.
//! A person may also have an upstream credential: the ID and password the gateway presents to the
//! cloud engine on their behalf, so the engine's own accounts never reach the terminals. That one
//! must be usable, so it is stored as given; `gateway.db` is mode 0600 for that reason.
//!
//! Passwords and upstream secrets live in [`Zeroizing`] buffers, are never printed and never
//! appear in an error message.

use std::path::Path;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use rusqlite::{Connection, OptionalExtension, params};
use zeroize::Zeroizing;

use crate::db::{self, Result, StoreError};
use crate::inventory::db_path;

/// A new password's shortest length, in characters.
pub const MIN_PASSWORD_CHARS: usize = 10;
/// The longest user ID.
pub const MAX_ID_CHARS: usize = 64;

/// OWASP's argon2id recommendation: 19 MiB of memory, 2 passes, 1 lane.
const M_COST_KIB: u32 = 19_456;
const T_COST: u32 = 2;
const P_COST: u32 = 1;
/// Salt length in bytes.
const SALT_LEN: usize = 16;

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
    pub created: String,
    pub changed: String,
}

/// Reads one person by exact ID; `None` if there is no such person.
pub fn lookup(conn: &Connection, id: &str) -> Result<Option<User>> {
    conn.query_row(
        "SELECT id, hash, locked, upstream_id, upstream_password FROM users WHERE id = ?1",
        params![id],
        |r| {
            let upstream_id: Option<String> = r.get(3)?;
            let password: Option<String> = r.get(4)?;
            Ok(User {
                id: r.get(0)?,
                hash: r.get(1)?,
                locked: r.get(2)?,
                upstream: upstream_id.zip(password).map(|(id, password)| Credential {
                    id,
                    password: Zeroizing::new(password),
                }),
            })
        },
    )
    .optional()
    .map_err(StoreError::sqlite(&db_path(conn), "read the user"))
}

/// Every person, by ID, for listings.
pub fn list(conn: &Connection) -> Result<Vec<Summary>> {
    let path = db_path(conn);
    let mut stmt = conn
        .prepare("SELECT id, locked, upstream_id, created, changed FROM users ORDER BY id")
        .map_err(StoreError::sqlite(&path, "read the users"))?;
    stmt.query_map([], |r| {
        let upstream_id: Option<String> = r.get(2)?;
        Ok(Summary {
            id: r.get(0)?,
            locked: r.get(1)?,
            upstream: upstream_id.is_some(),
            upstream_id,
            created: r.get(3)?,
            changed: r.get(4)?,
        })
    })
    .and_then(|rows| rows.collect())
    .map_err(StoreError::sqlite(&path, "read the users"))
}

/// Checks a password against a stored PHC hash in constant time; a malformed hash is `false`.
pub fn verify_password(hash: &str, password: &[u8]) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => Argon2::default().verify_password(password, &parsed).is_ok(),
        Err(_) => false,
    }
}

/// Spends what a real [`verify_password`] spends, for an ID that does not exist, so that a wrong
/// ID cannot be told from a wrong password by the time the answer takes.
pub fn dummy_verify(password: &[u8]) {
    let mut out = Zeroizing::new([0u8; 32]);
    let _ = hasher().hash_password_into(password, b"kakehashi-dummy-salt", out.as_mut_slice());
    std::hint::black_box(&out);
}

/// Hashes a password with argon2id (m=19456 KiB, t=2, p=1) and a fresh 16-byte random salt.
pub fn hash_password(password: &[u8]) -> Result<String> {
    let mut salt = [0u8; SALT_LEN];
    aws_lc_rs::rand::fill(&mut salt)
        .map_err(|_| StoreError::Hash("the random number generator failed".into()))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| StoreError::Hash(e.to_string()))?;
    let hash = hasher()
        .hash_password(password, &salt)
        .map_err(|e| StoreError::Hash(e.to_string()))?;
    Ok(hash.to_string())
}

fn hasher() -> Argon2<'static> {
    // The constants are valid argon2 parameters; the fallback is never taken.
    let params = Params::new(M_COST_KIB, T_COST, P_COST, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// The policy for a new password: at least 10 characters, and not the ID in any case.
pub fn check_new_password(id: &str, password: &str) -> Result<()> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(StoreError::WeakPassword("it must have at least 10 characters"));
    }
    // Compared char by char: `to_lowercase` would leave an unzeroized copy of the password.
    if password
        .chars()
        .flat_map(char::to_lowercase)
        .eq(id.chars().flat_map(char::to_lowercase))
    {
        return Err(StoreError::WeakPassword("it must not be the user ID"));
    }
    Ok(())
}

/// The ID rule: 1 to 64 characters of `A-Z a-z 0-9 . _ @ -`, which fit HTTP Basic, logs and
/// listings without quoting.
pub fn check_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_CHARS
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "user ID {id:?}: use 1 to 64 characters of A-Z, a-z, 0-9, '.', '_', '@' or '-'"
        )))
    }
}

/// The rule for an upstream engine user ID: 1 to 256 characters, no control characters, no ':'
/// (it travels in HTTP Basic, where ':' ends the ID).
pub fn check_upstream_id(id: &str) -> Result<()> {
    db::check_text("--upstream-id", id, 256)?;
    if id.is_empty() || id.contains(':') {
        return Err(StoreError::Invalid(
            "--upstream-id: must not be empty or contain ':' (HTTP Basic ends the ID there)".into(),
        ));
    }
    Ok(())
}

/// Adds a person with an already-computed hash (see [`hash_password`]).
pub fn add(conn: &Connection, id: &str, hash: &str, upstream: Option<&Credential>) -> Result<()> {
    check_id(id)?;
    let path = db_path(conn);
    let now = db::now_text();
    let tx = begin(conn, &path)?;
    if exists(&tx, id)? {
        return Err(StoreError::UserExists { id: id.to_owned() });
    }
    tx.execute(
        "INSERT INTO users (id, hash, locked, upstream_id, upstream_password, created, changed)
         VALUES (?1, ?2, 0, ?3, ?4, ?5, ?5)",
        params![
            id,
            hash,
            upstream.map(|c| c.id.as_str()),
            upstream.map(|c| c.password.as_str()),
            now
        ],
    )
    .and_then(|_| tx.commit())
    .map_err(StoreError::sqlite(&path, "add the user"))
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
    let now = db::now_text();
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
    fn hashes_are_argon2id_owasp_salted_and_verify() {
        let a = hash_password(b"correct horse").unwrap();
        let b = hash_password(b"correct horse").unwrap();
        assert!(a.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{a}");
        assert_ne!(a, b, "a fresh salt each time");
        assert!(verify_password(&a, b"correct horse"));
        assert!(!verify_password(&a, b"correct horsf"));
        assert!(!verify_password("not a hash", b"correct horse"));
        assert!(!verify_password("", b""));
        dummy_verify(b"anything");
    }

    #[test]
    fn dummy_verify_costs_about_what_a_verify_costs() {
        let hash = hash_password(b"password-1").unwrap();
        let time = |f: &dyn Fn()| {
            let start = std::time::Instant::now();
            f();
            start.elapsed().as_secs_f64()
        };
        // Interleaved, and the fastest of each: the other tests share the cores, and a run that
        // was preempted says nothing about the work itself.
        let (mut real, mut dummy) = (f64::MAX, f64::MAX);
        for _ in 0..5 {
            real = real.min(time(&|| {
                verify_password(&hash, b"wrong-password");
            }));
            dummy = dummy.min(time(&|| dummy_verify(b"wrong-password")));
        }
        let ratio = dummy / real;
        assert!((0.5..2.0).contains(&ratio), "dummy {dummy}s vs real {real}s");
    }

    #[test]
    fn policy_and_ids() {
        assert!(check_new_password("alice", "short").is_err());
        assert!(check_new_password("reception01", "RECEPTION01").is_err());
        assert!(check_new_password("alice", "ten chars!").is_ok());
        for bad in ["", "a b", "a:b", "é", &"x".repeat(65)] {
            assert!(check_id(bad).is_err(), "{bad:?}");
        }
        for good in ["a", "dr.sato@clinic", "user_1-2", &"x".repeat(64)] {
            assert!(check_id(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn add_lookup_lock_upstream_remove() {
        let tmp = tempfile::tempdir().unwrap();
        let conn = db::open(tmp.path()).unwrap();
        let hash = hash_password(b"a long password").unwrap();
        add(&conn, "alice", &hash, None).unwrap();
        assert!(matches!(
            add(&conn, "alice", &hash, None),
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
