//! Login sessions: what a browser's cookie stands for, and which terminals have a person signed
//! in (what raw TCP routes require). Both are bound to the certificate of the terminal that
//! signed in, so a cookie or a sign-in does not travel to another terminal.

use std::time::{Duration, Instant};

use base64::Engine as _;
use engine_proxy::scope::Scopes;
use hyper::header::HeaderValue;

use super::{People, Person, lock, sha256};
use crate::doors::identity::Terminal;

pub(super) struct Session {
    user: String,
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

    /// Records that a person who may call `scopes` signed in on this terminal.
    pub(super) fn mark_signed_in(&self, terminal: &Terminal, scopes: Scopes) {
        let until = Instant::now() + self.settings.session;
        let mut signed_in = lock(&self.signed_in);
        match signed_in.get_mut(&terminal.fingerprint) {
            Some(t) => *t = (until, scopes),
            None => {
                let now = Instant::now();
                signed_in.retain(|_, (t, _)| *t > now);
                signed_in.insert(terminal.fingerprint, (until, scopes));
            }
        }
    }

    /// The scopes of the person who signed in last on this terminal (same certificate) within the
    /// session lifetime, if anyone did: what raw TCP routes require.
    pub fn signed_in(&self, terminal: &Terminal) -> Option<Scopes> {
        lock(&self.signed_in)
            .get(&terminal.fingerprint)
            .filter(|(until, _)| *until > Instant::now())
            .map(|(_, scopes)| *scopes)
    }

    /// The session lifetime, for the cookie's Max-Age.
    pub fn session_lifetime(&self) -> Duration {
        self.settings.session
    }
}
