//! The person at the terminal: ID and password, verified on the gateway itself.
//!
//! argon2id is deliberately slow, so a verified ID and password is remembered for a short time
//! (keyed by a SHA-256 of both, never the password itself) and API clients that send HTTP Basic
//! on every request pay for it once. Browsers sign in once on the login page and get a session
//! cookie that is valid only together with the certificate of the terminal that signed in.
//! Repeated failures lock the user, and the terminal they came from, for a while; while locked,
//! nothing is verified at all.

mod lockout;
mod sessions;
mod verify;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use base64::Engine as _;
use engine_proxy::scope::Scopes;
use hyper::header::HeaderValue;
use rusqlite::Connection;
use zeroize::Zeroizing;

use lockout::Lockout;
use sessions::Session;
use verify::{CONCURRENT_VERIFICATIONS, Cached};

pub use verify::{Memo, Standing};

/// What the gateway knows about the person after authentication.
#[derive(Clone, Debug)]
pub struct Person {
    /// `None` when person authentication is off (the certificate alone admits). Shared: every
    /// request's audit entry and journal entry carry it.
    pub user: Option<Arc<str>>,
    /// The `Authorization` value to send upstream: the user's own engine account, or the clinic's.
    pub upstream: HeaderValue,
    /// What the person may call (every scope when authentication is off: the terminal's
    /// scopes alone decide then).
    pub scopes: Scopes,
}

/// Why a person was not admitted. Each maps to one HTTP status and one audit reason.
#[derive(Debug)]
pub enum Denied {
    /// No credentials at all: ask for them.
    NoCredentials,
    /// Credentials that are not HTTP Basic `id:password`.
    Malformed(&'static str),
    /// Unknown ID or wrong password. The client is told the same in both cases.
    WrongPassword { user: String, known: bool },
    /// An administrator locked the account (`kakehashi user lock`).
    AccountLocked { user: String },
    /// Too many failures: try again after `retry_after`.
    LockedOut {
        user: Option<String>,
        by: String,
        retry_after: Duration,
    },
    /// The user database could not be read.
    Unavailable(String),
}

impl Denied {
    /// The reason written to the audit log.
    pub fn reason(&self) -> String {
        match self {
            Denied::NoCredentials => "no ID and password".into(),
            Denied::Malformed(why) => format!("malformed credentials: {why}"),
            Denied::WrongPassword { known: true, .. } => "wrong password".into(),
            Denied::WrongPassword { known: false, .. } => "unknown user".into(),
            Denied::AccountLocked { .. } => "account locked by an administrator".into(),
            Denied::LockedOut { by, retry_after, .. } => {
                format!(
                    "locked out ({by}) after repeated failures, {} s left",
                    retry_after.as_secs()
                )
            }
            Denied::Unavailable(e) => format!("user database unavailable: {e}"),
        }
    }

    /// The user ID the attempt named, if any.
    pub fn user(&self) -> Option<&str> {
        match self {
            Denied::WrongPassword { user, .. } | Denied::AccountLocked { user } => Some(user),
            Denied::LockedOut { user, .. } => user.as_deref(),
            _ => None,
        }
    }
}

/// The authentication settings from `[auth]`.
#[derive(Clone, Debug)]
pub struct Settings {
    pub person: bool,
    pub cache: Duration,
    pub failures: u32,
    pub window: Duration,
    pub session: Duration,
}

/// Verified credentials, sessions, and failure counts; shared by every connection.
pub struct People {
    settings: Settings,
    db: Mutex<Connection>,
    clinic: std::sync::RwLock<HeaderValue>,
    cache: Mutex<HashMap<[u8; 32], Cached>>,
    lockout: Mutex<Lockout>,
    sessions: Mutex<HashMap<[u8; 32], Session>>,
    /// Terminals (by certificate fingerprint) with a person signed in: until when, who, and
    /// what that person may call.
    signed_in: Mutex<HashMap<[u8; 32], sessions::SignedIn>>,
    verifying: tokio::sync::Semaphore,
    /// Where argon2id runs: one thread for the gateway's life (see `CONCURRENT_VERIFICATIONS`).
    checker: std::sync::mpsc::Sender<Check>,
    /// argon2id verifications run so far (the metric `password_checks_total`).
    checks: std::sync::atomic::AtomicU64,
    /// Bumped when cached credentials are forgotten; per-connection memos of an older value are
    /// void.
    generation: std::sync::atomic::AtomicU64,
}

impl People {
    pub fn new(settings: Settings, db: Connection, clinic: HeaderValue) -> People {
        People {
            settings,
            db: Mutex::new(db),
            clinic: std::sync::RwLock::new(clinic),
            cache: Mutex::default(),
            lockout: Mutex::default(),
            sessions: Mutex::default(),
            signed_in: Mutex::default(),
            verifying: tokio::sync::Semaphore::new(CONCURRENT_VERIFICATIONS),
            checker: start_checker(),
            checks: Default::default(),
            generation: Default::default(),
        }
    }
}

/// One password check, run on the `password-check` thread.
type Check = Box<dyn FnOnce() + Send>;

/// Starts the thread that runs every argon2id check, one at a time; it ends when `People` (the
/// sender) is dropped.
fn start_checker() -> std::sync::mpsc::Sender<Check> {
    let (tx, rx) = std::sync::mpsc::channel::<Check>();
    let started = std::thread::Builder::new()
        .name("password-check".into())
        .spawn(move || {
            while let Ok(check) = rx.recv() {
                check();
            }
        });
    if let Err(e) = started {
        // Without the thread every check answers "unavailable" (its receiver is gone): sign-in
        // fails closed, and says why.
        tracing::error!("cannot start the password-check thread: {e}");
    }
    tx
}

/// The Basic `Authorization` value for an engine account.
pub fn basic(id: &str, password: &str) -> HeaderValue {
    let token = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(format!("{id}:{password}")));
    let mut value = HeaderValue::from_str(&format!("Basic {}", token.as_str()))
        .unwrap_or_else(|_| HeaderValue::from_static("Basic"));
    value.set_sensitive(true);
    value
}

/// Through aws-lc's context, not `engine_proxy::digest`: the parts are passwords and session
/// tokens, which must not stay behind in a buffer on the stack.
fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for p in parts {
        ctx.update(&(p.len() as u64).to_be_bytes());
        ctx.update(p);
    }
    let mut out = [0; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these maps leaves it consistent (every update is one insert
    // or remove), so a poisoned lock is still safe to use.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The settings the tests of every part run with: three failures lock for 15 minutes.
    pub(super) fn settings() -> Settings {
        Settings {
            person: true,
            cache: Duration::from_secs(60),
            failures: 3,
            window: Duration::from_secs(900),
            session: Duration::from_secs(3600),
        }
    }
}
