//! `provision user …`: the clinic's staff, who sign in at the terminals with ID and password.
//!
//! Passwords are checked against the appliance's policy and kept only as argon2id hashes
//! ([`provisioning_shared::password`], the same code the appliance uses); a person's own engine
//! account, if they have one, is kept as given (the appliance must present it), which is one
//! reason `clinic.json` is mode 0600.

use provisioning_shared::bundle::{Credential, SecretText, StaffAccount};
use provisioning_shared::password;
use provisioning_shared::scope::Scopes;
use zeroize::Zeroizing;

use crate::clinic::Locked;
use crate::error::{Error, Result};
use crate::vendor::Vendor;

/// Where a new password comes from.
#[derive(Debug)]
pub enum NewPassword {
    /// Given (from a file): checked against the policy.
    Given(Zeroizing<String>),
    /// Made here: random, shown once.
    Generate,
}

impl NewPassword {
    /// The password for `id`: the given one if the policy accepts it, or a new random one.
    /// Returns it, and whether it was generated (so it is to be shown).
    fn resolve(self, id: &str) -> Result<(Zeroizing<String>, bool)> {
        match self {
            NewPassword::Given(p) => {
                password::check_new_password(id, &p)?;
                Ok((p, false))
            }
            NewPassword::Generate => Ok((password::generate()?, true)),
        }
    }
}

/// A password that was set: shown to the vendor once if it was generated.
#[derive(Debug)]
pub struct PasswordSet {
    pub generated: Option<Zeroizing<String>>,
}

/// `user add`.
pub fn add(
    vendor: &Vendor,
    clinic: &str,
    id: &str,
    new: NewPassword,
    upstream: Option<Credential>,
    scopes: Scopes,
) -> Result<PasswordSet> {
    password::check_id(id)?;
    if let Some(c) = &upstream {
        password::check_upstream_id("--upstream-user", &c.user)?;
    }
    let mut open = Locked::open(vendor, clinic)?;
    if open.clinic.users.iter().any(|u| u.id == id) {
        return Err(Error::UserExists {
            clinic: clinic.to_owned(),
            id: id.to_owned(),
        });
    }
    let (secret, generated) = new.resolve(id)?;
    let mut next = open.clinic.clone();
    next.users.push(StaffAccount {
        id: id.to_owned(),
        hash: password::hash_password(secret.as_bytes())?,
        locked: false,
        upstream,
        scopes,
    });
    next.users.sort_by(|a, b| a.id.cmp(&b.id));
    open.commit(next, Vec::new())?;
    Ok(PasswordSet {
        generated: generated.then_some(secret),
    })
}

/// `user passwd`.
pub fn passwd(vendor: &Vendor, clinic: &str, id: &str, new: NewPassword) -> Result<PasswordSet> {
    let mut open = Locked::open(vendor, clinic)?;
    let mut next = open.clinic.clone();
    let user = next.user_mut(id)?;
    let (secret, generated) = new.resolve(id)?;
    user.hash = password::hash_password(secret.as_bytes())?;
    open.commit(next, Vec::new())?;
    Ok(PasswordSet {
        generated: generated.then_some(secret),
    })
}

/// `user lock` and `user unlock`.
pub fn set_locked(vendor: &Vendor, clinic: &str, id: &str, locked: bool) -> Result<()> {
    let mut open = Locked::open(vendor, clinic)?;
    let mut next = open.clinic.clone();
    let user = next.user_mut(id)?;
    if user.locked == locked {
        return Err(Error::UserAlready {
            clinic: clinic.to_owned(),
            id: id.to_owned(),
            state: if locked { "locked" } else { "unlocked" },
        });
    }
    user.locked = locked;
    open.commit(next, Vec::new())
}

/// `user remove`.
pub fn remove(vendor: &Vendor, clinic: &str, id: &str) -> Result<()> {
    let mut open = Locked::open(vendor, clinic)?;
    let mut next = open.clinic.clone();
    next.user_mut(id)?;
    next.users.retain(|u| u.id != id);
    open.commit(next, Vec::new())
}

/// The upstream credential from `--upstream-user` and the first line of its password file.
pub fn upstream(user: &str, password_file: &std::path::Path) -> Result<Credential> {
    password::check_upstream_id("--upstream-user", user)?;
    let p = cert_tool::keys::Passphrase::from_file(password_file)?;
    Ok(Credential {
        user: user.to_owned(),
        password: SecretText::new(p.expose()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::Fixture;

    fn given(p: &str) -> NewPassword {
        NewPassword::Given(Zeroizing::new(p.to_owned()))
    }

    #[test]
    fn users_are_hashed_and_every_refusal_changes_nothing() {
        let f = Fixture::new();
        let made = add(&f.vendor, "c1", "alice", NewPassword::Generate, None, Scopes::ALL).unwrap();
        let generated = made.generated.unwrap();
        add(
            &f.vendor,
            "c1",
            "bob",
            given("a long password"),
            None,
            Scopes::ALL,
        )
        .unwrap();
        let clinic = f.clinic();
        assert!(password::verify_password(
            &clinic.users[0].hash,
            generated.as_bytes()
        ));
        assert!(password::verify_password(
            &clinic.users[1].hash, b"a long password"
        ));
        assert!(!f.state().contains(generated.as_str()));

        let before = f.state();
        let refused = [
            add(&f.vendor, "c1", "carol", given("short"), None, Scopes::ALL).unwrap_err(),
            add(
                &f.vendor,
                "c1",
                "carol1234567",
                given("CAROL1234567"),
                None,
                Scopes::ALL,
            )
            .unwrap_err(),
            add(
                &f.vendor,
                "c1",
                "alice",
                given("another long one"),
                None,
                Scopes::ALL,
            )
            .unwrap_err(),
            add(
                &f.vendor,
                "c1",
                "bad id",
                given("another long one"),
                None,
                Scopes::ALL,
            )
            .unwrap_err(),
            add(
                &f.vendor,
                "c1",
                "dave",
                given("another long one"),
                Some(Credential {
                    user: "a:b".into(),
                    password: SecretText::new("x"),
                }),
                Scopes::ALL,
            )
            .unwrap_err(),
            passwd(&f.vendor, "c1", "ghost", given("another long one")).unwrap_err(),
            passwd(&f.vendor, "c1", "bob", given("bob")).unwrap_err(),
            set_locked(&f.vendor, "c1", "bob", false).unwrap_err(),
            remove(&f.vendor, "c1", "ghost").unwrap_err(),
        ];
        assert!(matches!(
            refused[0],
            Error::Shared(provisioning_shared::Error::WeakPassword(_))
        ));
        assert!(matches!(
            refused[1],
            Error::Shared(provisioning_shared::Error::WeakPassword(_))
        ));
        assert!(matches!(refused[2], Error::UserExists { .. }));
        assert!(matches!(refused[5], Error::UnknownUser { .. }));
        assert!(matches!(refused[7], Error::UserAlready { .. }));
        assert_eq!(f.state(), before);

        set_locked(&f.vendor, "c1", "bob", true).unwrap();
        assert!(f.clinic().users[1].locked);
        let again = passwd(&f.vendor, "c1", "bob", NewPassword::Generate).unwrap();
        assert!(password::verify_password(
            &f.clinic().users[1].hash,
            again.generated.unwrap().as_bytes()
        ));
        remove(&f.vendor, "c1", "alice").unwrap();
        assert_eq!(f.clinic().users.len(), 1);
    }
}
