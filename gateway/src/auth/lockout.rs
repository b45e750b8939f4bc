//! Locking out after repeated failures. Failures are counted per user and per terminal, so that
//! guessing one account's password from many terminals, or many accounts' from one terminal, is
//! stopped either way. A lock is checked before anything is verified: a guess while locked out
//! costs no argon2id run.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::{Denied, Settings};

/// Failure counts per user and per terminal, and who is locked out until when.
#[derive(Default)]
pub(super) struct Lockout {
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
    pub(super) fn check(&mut self, user: &str, terminal: &str, now: Instant) -> Option<Denied> {
        let (by, left) = match self.users.locked_for(user, now) {
            Some(left) => (format!("user {user}"), left),
            // Checked before the text is made: this runs on every request.
            None => {
                let left = self.terminals.locked_for(terminal, now)?;
                (format!("terminal {terminal}"), left)
            }
        };
        Some(Denied::LockedOut {
            user: Some(user.to_owned()),
            by,
            retry_after: left + Duration::from_millis(999),
        })
    }

    pub(super) fn failed(&mut self, user: &str, terminal: &str, settings: &Settings, now: Instant) {
        self.users.failed(user, settings, now);
        self.terminals.failed(terminal, settings, now);
    }

    pub(super) fn succeeded(&mut self, user: &str, terminal: &str) {
        self.users.failures.remove(user);
        self.terminals.failures.remove(terminal);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::tests::settings;

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
