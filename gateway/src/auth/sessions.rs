//! Login sessions: what a browser's cookie stands for, and which terminals have a person signed
//! in (what raw TCP routes require). Both are bound to the certificate of the terminal that
//! signed in, so a cookie or a sign-in does not travel to another terminal.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use engine_proxy::scope::Scopes;
use hyper::header::HeaderValue;

use std::collections::HashMap;

use super::{People, Person, lock, sha256};
use crate::doors::identity::Terminal;
use crate::store::users;

/// A person signed in on a terminal, for raw TCP routes.
pub(super) struct SignedIn {
    until: Instant,
    user: String,
    scopes: Scopes,
}

pub(super) struct Session {
    user: Arc<str>,
    terminal: [u8; 32],
    upstream: HeaderValue,
    scopes: Scopes,
    until: Instant,
}

impl People {
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
                scopes: person.scopes,
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
            scopes: s.scopes,
        })
    }

    /// Ends a session (logout).
    pub fn close_session(&self, token: &str) {
        lock(&self.sessions).remove(&sha256(&[token.as_bytes()]));
    }

    /// Records that `person` signed in on this terminal.
    pub(super) fn mark_signed_in(&self, terminal: &Terminal, person: &Person) {
        let now = Instant::now();
        let entry = SignedIn {
            until: now + self.settings.session,
            user: person.user.as_deref().unwrap_or_default().to_owned(),
            scopes: person.scopes,
        };
        let mut signed_in = lock(&self.signed_in);
        if !signed_in.contains_key(&terminal.fingerprint) {
            signed_in.retain(|_, s| s.until > now);
        }
        signed_in.insert(terminal.fingerprint, entry);
    }

    /// The scopes of the person who signed in last on this terminal (same certificate) within the
    /// session lifetime, if anyone did: what raw TCP routes require.
    pub fn signed_in(&self, terminal: &Terminal) -> Option<Scopes> {
        lock(&self.signed_in)
            .get(&terminal.fingerprint)
            .filter(|s| s.until > Instant::now())
            .map(|s| s.scopes)
    }

    /// Brings login sessions and sign-ins up to date with the people as they are now (on
    /// SIGHUP): a person removed or locked since is signed out, a change of scopes counts at
    /// once. A user database that cannot be read changes nothing.
    pub(super) fn refresh_sessions(&self) {
        let db = lock(&self.db);
        let mut known: HashMap<String, Option<Option<Scopes>>> = HashMap::new();
        let mut now_of = |user: &str| {
            *known
                .entry(user.to_owned())
                .or_insert_with(|| match users::lookup(&db, user) {
                    Ok(Some(u)) if !u.locked => Some(Some(u.scopes)),
                    Ok(_) => Some(None),
                    Err(_) => None,
                })
        };
        lock(&self.sessions).retain(|_, s| match now_of(&s.user) {
            Some(Some(scopes)) => {
                s.scopes = scopes;
                true
            }
            Some(None) => false,
            None => true,
        });
        lock(&self.signed_in).retain(|_, s| match now_of(&s.user) {
            // Authentication off: nobody in particular signed in.
            _ if s.user.is_empty() => true,
            Some(Some(scopes)) => {
                s.scopes = scopes;
                true
            }
            Some(None) => false,
            None => true,
        });
    }

    /// The session lifetime, for the cookie's Max-Age.
    pub fn session_lifetime(&self) -> Duration {
        self.settings.session
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::tests::settings;

    #[test]
    fn a_reload_brings_sessions_and_sign_ins_up_to_date_with_the_people() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::store::open(dir.path()).unwrap();
        let hash = users::hash_password(b"correct horse battery").unwrap();
        users::add(&db, "nurse", &hash, None, Scopes::ALL).unwrap();
        users::add(&db, "temp", &hash, None, Scopes::ALL).unwrap();
        let people = People::new(settings(), db, HeaderValue::from_static("Basic eA=="));
        let terminal = |n: u8| Terminal {
            name: format!("reception-{n}"),
            fingerprint: [n; 32],
        };
        let person = |id: &str| Person {
            user: Some(id.into()),
            upstream: HeaderValue::from_static("Basic eA=="),
            scopes: Scopes::ALL,
        };
        let nurse = people.open_session(&person("nurse"), &terminal(1));
        let temp = people.open_session(&person("temp"), &terminal(2));
        people.mark_signed_in(&terminal(1), &person("nurse"));
        people.mark_signed_in(&terminal(2), &person("temp"));

        let conn = crate::store::open(dir.path()).unwrap();
        users::set_scopes(&conn, "nurse", "reference".parse().unwrap()).unwrap();
        users::set_locked(&conn, "temp", true).unwrap();
        people.forget_cached();

        let now = people.session(&nurse, &terminal(1)).expect("still signed in");
        assert_eq!(now.scopes.to_string(), "reference");
        assert_eq!(people.signed_in(&terminal(1)).unwrap().to_string(), "reference");
        assert!(
            people.session(&temp, &terminal(2)).is_none(),
            "a locked person is signed out"
        );
        assert!(people.signed_in(&terminal(2)).is_none());
    }
}
