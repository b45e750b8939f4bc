//! Checking an ID and password. argon2id is the slow part, so everything here is about running
//! it as rarely as possible without ever trusting less: a short-lived cache keyed by a hash of
//! the credentials, a per-connection memo of the last `Authorization` header, and a few slots
//! that a burst of sign-ins queues for.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use base64::Engine as _;
use engine_proxy::scope::Scopes;
use hyper::header::HeaderValue;
use zeroize::Zeroizing;

use super::{Denied, People, Person, basic, lock, sha256};
use crate::doors::identity::Terminal;
use crate::store::users;

/// How many argon2id verifications may run at once: one, on the `password-check` thread. Each
/// takes the hash's memory (7 MiB for new hashes) and a core for tens of milliseconds; the
/// allocator keeps, per thread, what a verification once took, so one thread keeps the gateway's
/// memory bounded by one verification's (four threads held 4 × 19 MiB for good). A burst of
/// sign-ins queues here; requests with the same credentials find them remembered when their turn
/// comes.
pub(super) const CONCURRENT_VERIFICATIONS: usize = 1;

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

pub(super) struct Cached {
    user: Arc<str>,
    upstream: HeaderValue,
    scopes: Scopes,
    until: Instant,
}

/// A person as they stand now ([`People::standing`]).
pub enum Standing {
    /// The engine credential to act for them with, and what they may call.
    Allowed(HeaderValue, Scopes),
    /// Removed or locked: nothing more is done in their name.
    Gone(String),
    /// The user database could not be read.
    Unknown(String),
}

impl People {
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
            scopes: Scopes::ALL,
        }
    }

    /// The clinic's engine credential: what the prober calls the cloud with.
    pub fn clinic_credential(&self) -> HeaderValue {
        self.clinic()
    }

    /// A person as they stand now, for a write they made offline: their engine credential (their
    /// own account, or the clinic's) and what they may call; `None` (authentication off): the
    /// clinic's and every scope. A person removed or locked since is [`Standing::Gone`].
    pub fn standing(&self, user: Option<&str>) -> Standing {
        let Some(id) = user else {
            return Standing::Allowed(self.clinic(), Scopes::ALL);
        };
        match users::lookup(&lock(&self.db), id) {
            Err(e) => Standing::Unknown(e.to_string()),
            Ok(None) => Standing::Gone(format!("user {id:?} no longer exists")),
            Ok(Some(u)) if u.locked => Standing::Gone(format!("user {id:?} is locked")),
            Ok(Some(u)) => {
                let credential = match &u.upstream {
                    Some(c) => basic(&c.id, &c.password),
                    None => self.clinic(),
                };
                Standing::Allowed(credential, u.scopes)
            }
        }
    }

    /// Forgets every remembered credential (on SIGHUP: a password change or a lock takes effect
    /// at once, not when the cache entry would have expired).
    pub fn forget_cached(&self) {
        lock(&self.cache).clear();
        self.refresh_sessions();
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
        let (answer, verdict) = tokio::sync::oneshot::channel();
        self.checker
            .send(Box::new(move || {
                let _ = answer.send(this.check_password(&id_owned, &password));
            }))
            .map_err(|_| Denied::Unavailable("the password-check thread has stopped".into()))?;
        let verdict = verdict
            .await
            .map_err(|_| Denied::Unavailable("the password check did not finish".into()))?;
        match verdict {
            Ok(person) => {
                lock(&self.lockout).succeeded(id, &terminal.name);
                lock(&self.cache).insert(
                    key,
                    Cached {
                        user: id.into(),
                        upstream: person.upstream.clone(),
                        scopes: person.scopes,
                        until: Instant::now() + self.settings.cache,
                    },
                );
                self.mark_signed_in(terminal, &person);
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
                scopes: hit.scopes,
            })?;
        self.mark_signed_in(terminal, &person);
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
            user: Some(user.id.into()),
            upstream,
            scopes: user.scopes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::tests::settings;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_requests_with_the_same_new_password_run_argon2id_once_per_permit() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::store::open(dir.path()).unwrap();
        let hash = users::hash_password(b"correct horse battery").unwrap();
        users::add(&db, "nurse", &hash, None, engine_proxy::scope::Scopes::ALL).unwrap();
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
}
