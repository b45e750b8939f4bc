//! The person at the terminal: ID and password, verified on the gateway itself.
//!
//! argon2id is deliberately slow, so a verified ID and password is remembered for a short time
//! (keyed by a SHA-256 of both, never the password itself) and API clients that send HTTP Basic
//! on every request pay for it once. Browsers sign in once on the login page and get a session
//! cookie that is valid only together with the certificate of the terminal that signed in.
//! Repeated failures lock the user, and the terminal they came from, for a while; while locked,
//! nothing is verified at all.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use base64::Engine as _;
use hyper::header::HeaderValue;
use rusqlite::Connection;
use zeroize::Zeroizing;

use crate::doors::identity::Terminal;
use crate::store::users;

/// What the gateway knows about the person after authentication.
#[derive(Clone, Debug)]
pub struct Person {
    /// `None` when person authentication is off (the certificate alone admits).
    pub user: Option<String>,
    /// The `Authorization` value to send upstream: the user's own engine account, or the clinic's.
    pub upstream: HeaderValue,
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

/// How many argon2id verifications may run at once. Each takes ~19 MiB and a core for tens of
/// milliseconds; a burst of sign-ins queues here instead of exhausting memory.
const CONCURRENT_VERIFICATIONS: usize = 4;

/// Verified credentials, sessions, and failure counts; shared by every connection.
pub struct People {
    settings: Settings,
    db: Mutex<Connection>,
    clinic: std::sync::RwLock<HeaderValue>,
    cache: Mutex<HashMap<[u8; 32], Cached>>,
    lockout: Mutex<Lockout>,
    sessions: Mutex<HashMap<[u8; 32], Session>>,
    /// Terminals (by certificate fingerprint) with a person signed in, until when.
    signed_in: Mutex<HashMap<[u8; 32], Instant>>,
    verifying: tokio::sync::Semaphore,
    /// argon2id verifications run so far (the metric `password_checks_total`).
    checks: std::sync::atomic::AtomicU64,
    /// Bumped when cached credentials are forgotten; per-connection memos of an older value are
    /// void.
    generation: std::sync::atomic::AtomicU64,
}

/// The credentials last verified on one connection. A client repeats the same `Authorization`
/// on every request of a keep-alive connection, so the next request is recognised by comparing
/// the header's bytes (in constant time) without decoding, hashing or the shared cache's lock.
/// It lives no longer than the shared cache entry would, and a reload voids it.
#[derive(Default)]
pub struct Memo(Mutex<Option<Remembered>>);

struct Remembered {
    header: HeaderValue,
    person: Person,
    until: Instant,
    generation: u64,
}

struct Cached {
    user: String,
    upstream: HeaderValue,
    until: Instant,
}

struct Session {
    user: String,
    terminal: [u8; 32],
    upstream: HeaderValue,
    until: Instant,
}

/// The Basic `Authorization` value for an engine account.
pub fn basic(id: &str, password: &str) -> HeaderValue {
    let token = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(format!("{id}:{password}")));
    let mut value = HeaderValue::from_str(&format!("Basic {}", token.as_str()))
        .unwrap_or_else(|_| HeaderValue::from_static("Basic"));
    value.set_sensitive(true);
    value
}

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
            checks: Default::default(),
            generation: Default::default(),
        }
    }

    /// The clinic's engine credential now.
    fn clinic(&self) -> HeaderValue {
        self.clinic.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the clinic's engine credential (a reload after an imported bundle changed it).
    pub fn set_clinic(&self, clinic: HeaderValue) {
        *self.clinic.write().unwrap_or_else(|p| p.into_inner()) = clinic;
    }

    /// Whether person authentication is on at all.
    pub fn required(&self) -> bool {
        self.settings.person
    }

    /// The person when authentication is off: nobody in particular, the clinic's credential.
    pub fn anonymous(&self) -> Person {
        Person {
            user: None,
            upstream: self.clinic(),
        }
    }

    /// The engine credential a user's writes are sent with now: their own engine account, or the
    /// clinic's (also for a user removed since). What the replayer hands a journaled write back with.
    pub fn credential_for(&self, user: Option<&str>) -> HeaderValue {
        let own = user.and_then(|id| users::lookup(&lock(&self.db), id).ok().flatten()?.upstream);
        match own {
            Some(c) => basic(&c.id, &c.password),
            None => self.clinic(),
        }
    }

    /// Forgets every remembered credential (on SIGHUP: a password change or a lock takes effect
    /// at once, not when the cache entry would have expired).
    pub fn forget_cached(&self) {
        lock(&self.cache).clear();
        self.generation.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// HTTP Basic from an `Authorization` header, remembered for the connection in `memo`.
    pub async fn basic(
        self: &Arc<Self>,
        header: Option<&HeaderValue>,
        terminal: &Terminal,
        memo: &Memo,
    ) -> Result<Person, Denied> {
        let header = header.ok_or(Denied::NoCredentials)?;
        let generation = self.generation.load(std::sync::atomic::Ordering::Relaxed);
        let recalled = lock(&memo.0)
            .as_ref()
            .filter(|m| {
                m.generation == generation
                    && m.until > Instant::now()
                    && aws_lc_rs::constant_time::verify_slices_are_equal(
                        m.header.as_bytes(),
                        header.as_bytes(),
                    )
                    .is_ok()
            })
            .map(|m| m.person.clone());
        if let Some(person) = recalled {
            let user = person.user.as_deref().unwrap_or("");
            if let Some(denied) = lock(&self.lockout).check(user, &terminal.name, Instant::now()) {
                return Err(denied);
            }
            return Ok(person);
        }
        let person = self.basic_uncached(header, terminal).await?;
        *lock(&memo.0) = Some(Remembered {
            header: header.clone(),
            person: person.clone(),
            until: Instant::now() + self.settings.cache,
            generation,
        });
        Ok(person)
    }

    async fn basic_uncached(
        self: &Arc<Self>,
        header: &HeaderValue,
        terminal: &Terminal,
    ) -> Result<Person, Denied> {
        let encoded = header
            .as_bytes()
            .strip_prefix(b"Basic ")
            .ok_or(Denied::Malformed("expected HTTP Basic"))?;
        let decoded = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(encoded.trim_ascii())
                .map_err(|_| Denied::Malformed("Basic credentials are not base64"))?,
        );
        let colon = decoded
            .iter()
            .position(|&b| b == b':')
            .ok_or(Denied::Malformed("Basic credentials have no ':'"))?;
        let id =
            std::str::from_utf8(&decoded[..colon]).map_err(|_| Denied::Malformed("the ID is not UTF-8"))?;
        self.verify(id, &decoded[colon + 1..], terminal).await
    }

    /// Checks an ID and password: lockouts first, then the cache, then argon2id.
    pub async fn verify(
        self: &Arc<Self>,
        id: &str,
        password: &[u8],
        terminal: &Terminal,
    ) -> Result<Person, Denied> {
        let now = Instant::now();
        if let Some(denied) = lock(&self.lockout).check(id, &terminal.name, now) {
            return Err(denied);
        }
        let key = sha256(&[id.as_bytes(), password]);
        if let Some(person) = self.cached(&key, terminal) {
            return Ok(person);
        }
        let _permit = self
            .verifying
            .acquire()
            .await
            .map_err(|_| Denied::Unavailable("shutting down".into()))?;
        // The same ID and password may have been verified while this request waited its turn (a
        // client opening many connections at once sends them on all): argon2id runs once.
        if let Some(person) = self.cached(&key, terminal) {
            return Ok(person);
        }
        let this = self.clone();
        let (id_owned, password) = (id.to_owned(), Zeroizing::new(password.to_vec()));
        let verdict = tokio::task::spawn_blocking(move || this.check_password(&id_owned, &password))
            .await
            .map_err(|e| Denied::Unavailable(e.to_string()))?;
        match verdict {
            Ok(person) => {
                lock(&self.lockout).succeeded(id, &terminal.name);
                lock(&self.cache).insert(
                    key,
                    Cached {
                        user: id.to_owned(),
                        upstream: person.upstream.clone(),
                        until: Instant::now() + self.settings.cache,
                    },
                );
                self.mark_signed_in(terminal);
                Ok(person)
            }
            Err(denied @ Denied::WrongPassword { .. }) => {
                let mut lockout = lock(&self.lockout);
                lockout.failed(id, &terminal.name, &self.settings, Instant::now());
                Err(denied)
            }
            Err(other) => Err(other),
        }
    }

    /// How many ID and password checks have run argon2id (the rest came from the cache).
    pub fn password_checks(&self) -> u64 {
        self.checks.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The person for credentials verified within `auth.cache_secs` (by their hash).
    fn cached(&self, key: &[u8; 32], terminal: &Terminal) -> Option<Person> {
        let person = lock(&self.cache)
            .get(key)
            .filter(|c| c.until > Instant::now())
            .map(|hit| Person {
                user: Some(hit.user.clone()),
                upstream: hit.upstream.clone(),
            })?;
        self.mark_signed_in(terminal);
        Some(person)
    }

    /// The slow part, on a blocking thread: the user's record and argon2id.
    fn check_password(&self, id: &str, password: &[u8]) -> Result<Person, Denied> {
        self.checks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let user = users::lookup(&lock(&self.db), id).map_err(|e| Denied::Unavailable(e.to_string()))?;
        let Some(user) = user else {
            users::dummy_verify(password);
            return Err(Denied::WrongPassword {
                user: id.to_owned(),
                known: false,
            });
        };
        if !users::verify_password(&user.hash, password) {
            return Err(Denied::WrongPassword {
                user: id.to_owned(),
                known: true,
            });
        }
        if user.locked {
            return Err(Denied::AccountLocked { user: user.id });
        }
        let upstream = match &user.upstream {
            Some(c) => basic(&c.id, &c.password),
            None => self.clinic(),
        };
        Ok(Person {
            user: Some(user.id),
            upstream,
        })
    }

    /// A successful sign-in on the login page: a new session token for the cookie.
    pub fn open_session(&self, person: &Person, terminal: &Terminal) -> String {
        let mut token = [0u8; 32];
        // The system RNG failing is not something to limp on from.
        aws_lc_rs::rand::fill(&mut token).expect("system random number generator");
        let text = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token);
        let mut sessions = lock(&self.sessions);
        let now = Instant::now();
        sessions.retain(|_, s| s.until > now);
        sessions.insert(
            sha256(&[text.as_bytes()]),
            Session {
                user: person.user.clone().unwrap_or_default(),
                terminal: terminal.fingerprint,
                upstream: person.upstream.clone(),
                until: now + self.settings.session,
            },
        );
        text
    }

    /// The person of a session cookie, if it is live and was opened by this very certificate.
    pub fn session(&self, token: &str, terminal: &Terminal) -> Option<Person> {
        let sessions = lock(&self.sessions);
        let s = sessions.get(&sha256(&[token.as_bytes()]))?;
        (s.until > Instant::now() && s.terminal == terminal.fingerprint).then(|| Person {
            user: Some(s.user.clone()),
            upstream: s.upstream.clone(),
        })
    }

    /// Ends a session (logout).
    pub fn close_session(&self, token: &str) {
        lock(&self.sessions).remove(&sha256(&[token.as_bytes()]));
    }

    fn mark_signed_in(&self, terminal: &Terminal) {
        let until = Instant::now() + self.settings.session;
        let mut signed_in = lock(&self.signed_in);
        match signed_in.get_mut(&terminal.fingerprint) {
            Some(t) => *t = until,
            None => {
                let now = Instant::now();
                signed_in.retain(|_, t| *t > now);
                signed_in.insert(terminal.fingerprint, until);
            }
        }
    }

    /// Whether a person signed in on this terminal (same certificate) within the session lifetime:
    /// what raw TCP routes require.
    pub fn signed_in(&self, terminal: &Terminal) -> bool {
        lock(&self.signed_in)
            .get(&terminal.fingerprint)
            .is_some_and(|until| *until > Instant::now())
    }

    /// The session lifetime, for the cookie's Max-Age.
    pub fn session_lifetime(&self) -> Duration {
        self.settings.session
    }
}

/// Failure counts per user and per terminal, and who is locked out until when.
#[derive(Default)]
struct Lockout {
    users: Counts,
    terminals: Counts,
}

/// Failures and locks for one kind of name. Looked up by `&str`, so the check on every request
/// allocates nothing.
#[derive(Default)]
struct Counts {
    failures: HashMap<String, Vec<Instant>>,
    locked: HashMap<String, Instant>,
}

impl Counts {
    /// How long `name` stays locked, forgetting a lock that has ended.
    fn locked_for(&mut self, name: &str, now: Instant) -> Option<Duration> {
        let until = *self.locked.get(name)?;
        if until > now {
            return Some(until - now);
        }
        self.locked.remove(name);
        None
    }

    fn failed(&mut self, name: &str, settings: &Settings, now: Instant) {
        if self.failures.len() > 10_000 {
            self.failures
                .retain(|_, v| v.last().is_some_and(|t| now - *t < settings.window));
        }
        let list = self.failures.entry(name.to_owned()).or_default();
        list.retain(|t| now - *t < settings.window);
        list.push(now);
        if list.len() >= settings.failures as usize {
            self.failures.remove(name);
            self.locked.insert(name.to_owned(), now + settings.window);
        }
    }
}

impl Lockout {
    fn check(&mut self, user: &str, terminal: &str, now: Instant) -> Option<Denied> {
        let (by, left) = match self.users.locked_for(user, now) {
            Some(left) => (format!("user {user}"), left),
            None => (
                format!("terminal {terminal}"),
                self.terminals.locked_for(terminal, now)?,
            ),
        };
        Some(Denied::LockedOut {
            user: Some(user.to_owned()),
            by,
            retry_after: left + Duration::from_millis(999),
        })
    }

    fn failed(&mut self, user: &str, terminal: &str, settings: &Settings, now: Instant) {
        self.users.failed(user, settings, now);
        self.terminals.failed(terminal, settings, now);
    }

    fn succeeded(&mut self, user: &str, terminal: &str) {
        self.users.failures.remove(user);
        self.terminals.failures.remove(terminal);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            person: true,
            cache: Duration::from_secs(60),
            failures: 3,
            window: Duration::from_secs(900),
            session: Duration::from_secs(3600),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_requests_with_the_same_new_password_run_argon2id_once_per_permit() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::store::open(dir.path()).unwrap();
        let hash = users::hash_password(b"correct horse battery").unwrap();
        users::add(&db, "nurse", &hash, None).unwrap();
        let people = Arc::new(People::new(
            settings(),
            db,
            HeaderValue::from_static("Basic eA=="),
        ));
        let terminal = Terminal {
            name: "reception-1".into(),
            fingerprint: [7; 32],
        };
        // A client opening 16 connections at once sends the same credentials on each.
        let verdicts: Vec<_> = (0..16)
            .map(|_| {
                let (people, terminal) = (people.clone(), terminal.clone());
                tokio::spawn(async move { people.verify("nurse", b"correct horse battery", &terminal).await })
            })
            .collect();
        for verdict in verdicts {
            assert_eq!(verdict.await.unwrap().unwrap().user.as_deref(), Some("nurse"));
        }
        let checks = people.password_checks();
        assert!(
            (1..=CONCURRENT_VERIFICATIONS as u64).contains(&checks),
            "{checks} argon2id runs: the requests that waited for a permit found the answer cached"
        );
    }

    #[test]
    fn failures_lock_the_user_and_the_terminal_for_the_window() {
        let mut l = Lockout::default();
        let s = settings();
        let t0 = Instant::now();
        for i in 0..2 {
            l.failed("alice", "t1", &s, t0 + Duration::from_secs(i));
            assert!(l.check("alice", "t1", t0).is_none());
        }
        l.failed("alice", "t1", &s, t0 + Duration::from_secs(2));
        let Some(Denied::LockedOut { retry_after, .. }) = l.check("alice", "t2", t0 + Duration::from_secs(3))
        else {
            panic!("the user is locked on every terminal");
        };
        assert!(retry_after > Duration::from_secs(890) && retry_after <= Duration::from_secs(900));
        assert!(matches!(
            l.check("bob", "t1", t0 + Duration::from_secs(3)),
            Some(Denied::LockedOut { .. })
        ));
        assert!(l.check("bob", "t2", t0 + Duration::from_secs(3)).is_none());
        assert!(
            l.check("alice", "t1", t0 + Duration::from_secs(903)).is_none(),
            "the lock ends"
        );
    }

    #[test]
    fn old_failures_fall_out_of_the_window_and_success_clears_them() {
        let mut l = Lockout::default();
        let s = settings();
        let t0 = Instant::now();
        l.failed("alice", "t1", &s, t0);
        l.failed("alice", "t1", &s, t0 + Duration::from_secs(1));
        l.failed("alice", "t1", &s, t0 + Duration::from_secs(1000));
        assert!(l.check("alice", "t1", t0 + Duration::from_secs(1001)).is_none());
        l.failed("alice", "t1", &s, t0 + Duration::from_secs(1002));
        l.succeeded("alice", "t1");
        l.failed("alice", "t1", &s, t0 + Duration::from_secs(1003));
        assert!(l.check("alice", "t1", t0 + Duration::from_secs(1004)).is_none());
    }
}
