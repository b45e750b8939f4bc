//! Staff passwords: the policy for a new one, and the argon2id hash that the appliance verifies.
//!
//! One place for both sides: the vendor hashes on the laptop (`kakehashi provision user add`),
//! the appliance hashes too (`kakehashi user add`) and verifies at every sign-in. Passwords are
//! kept only as argon2id hashes (PHC strings) with OWASP's parameters, so sign-in works while the
//! cloud is unreachable and a stolen state file does not give the passwords away.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use zeroize::Zeroizing;

use crate::Error;

/// A new password's shortest length, in characters.
pub const MIN_PASSWORD_CHARS: usize = 10;
/// The longest user ID.
pub const MAX_ID_CHARS: usize = 64;

/// One of OWASP's equivalent argon2id configurations: 7 MiB of memory, 5 passes, 1 lane. The
/// same strength as their 19 MiB with 2 passes, for the same CPU, and what an appliance with
/// little memory can afford: the memory is taken on every sign-in that is not remembered, and an
/// allocator keeps what it once took. Hashes made with other parameters still verify (the PHC
/// string carries them).
const M_COST_KIB: u32 = 7_168;
const T_COST: u32 = 5;
const P_COST: u32 = 1;
/// Salt length in bytes.
const SALT_LEN: usize = 16;

/// Checks a password against a stored PHC hash in constant time; a malformed hash is `false`.
pub fn verify_password(hash: &str, password: &[u8]) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => Argon2::default().verify_password(password, &parsed).is_ok(),
        Err(_) => false,
    }
}

/// Checks that a stored hash from elsewhere (a bundle) is an argon2id PHC string that
/// [`verify_password`] can use, saying what is wrong with it otherwise.
pub fn check_hash(hash: &str) -> Result<(), String> {
    let parsed = PasswordHash::new(hash).map_err(|e| format!("not a PHC password hash: {e}"))?;
    if parsed.algorithm.as_str() != "argon2id" {
        return Err(format!("{} hash, expected argon2id", parsed.algorithm));
    }
    Ok(())
}

/// Spends what a real [`verify_password`] spends, for an ID that does not exist, so that a wrong
/// ID cannot be told from a wrong password by the time the answer takes.
pub fn dummy_verify(password: &[u8]) {
    let mut out = Zeroizing::new([0u8; 32]);
    let _ = hasher().hash_password_into(password, b"kakehashi-dummy-salt", out.as_mut_slice());
    std::hint::black_box(&out);
}

/// Hashes a password with argon2id (m=7168 KiB, t=5, p=1) and a fresh 16-byte random salt.
pub fn hash_password(password: &[u8]) -> Result<String, Error> {
    let mut salt = [0u8; SALT_LEN];
    aws_lc_rs::rand::fill(&mut salt).map_err(|_| Error::Hash("the random number generator failed".into()))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| Error::Hash(e.to_string()))?;
    let hash = hasher()
        .hash_password(password, &salt)
        .map_err(|e| Error::Hash(e.to_string()))?;
    Ok(hash.to_string())
}

fn hasher() -> Argon2<'static> {
    // The constants are valid argon2 parameters; the fallback is never taken.
    let params = Params::new(M_COST_KIB, T_COST, P_COST, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// The policy for a new password: at least 10 characters, and not the ID in any case.
pub fn check_new_password(id: &str, password: &str) -> Result<(), Error> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(Error::WeakPassword("it must have at least 10 characters"));
    }
    // Compared char by char: `to_lowercase` would leave an unzeroized copy of the password.
    if password
        .chars()
        .flat_map(char::to_lowercase)
        .eq(id.chars().flat_map(char::to_lowercase))
    {
        return Err(Error::WeakPassword("it must not be the user ID"));
    }
    Ok(())
}

/// The ID rule: 1 to 64 characters of `A-Z a-z 0-9 . _ @ -`, which fit HTTP Basic, logs and
/// listings without quoting.
pub fn check_id(id: &str) -> Result<(), Error> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_CHARS
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "user ID {id:?}: use 1 to 64 characters of A-Z, a-z, 0-9, '.', '_', '@' or '-'"
        )))
    }
}

/// The rule for an engine user ID (a person's upstream account, or the clinic's): 1 to 256
/// characters, no control characters, no ':' (it travels in HTTP Basic, where ':' ends the ID).
/// `option` names the flag in the message.
pub fn check_upstream_id(option: &str, id: &str) -> Result<(), Error> {
    crate::check_text(option, id, 256)?;
    if id.is_empty() || id.contains(':') {
        return Err(Error::Invalid(format!(
            "{option}: must not be empty or contain ':' (HTTP Basic ends the ID there)"
        )));
    }
    Ok(())
}

/// The alphabet of generated passwords: letters and digits that cannot be misread for one
/// another when read aloud or copied from paper (no 0/O, 1/l/I).
const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";

/// A random password of four groups of five, `xxxxx-xxxxx-xxxxx-xxxxx`: 99 bits, typed without
/// ambiguity. Used for staff passwords made by the vendor and for PKCS#12 files.
pub fn generate() -> Result<Zeroizing<String>, Error> {
    let mut out = Zeroizing::new(String::with_capacity(23));
    let mut byte = Zeroizing::new([0u8; 1]);
    let mut taken = 0;
    while taken < 20 {
        aws_lc_rs::rand::fill(byte.as_mut()).map_err(|_| Error::Random)?;
        // Rejection sampling: 248 = 8 × 31, so every character is equally likely.
        if usize::from(byte[0]) >= ALPHABET.len() * (256 / ALPHABET.len()) {
            continue;
        }
        if taken > 0 && taken % 5 == 0 {
            out.push('-');
        }
        out.push(char::from(ALPHABET[usize::from(byte[0]) % ALPHABET.len()]));
        taken += 1;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_argon2id_owasp_salted_and_verify() {
        let a = hash_password(b"correct horse").unwrap();
        let b = hash_password(b"correct horse").unwrap();
        assert!(a.starts_with("$argon2id$v=19$m=7168,t=5,p=1$"), "{a}");
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
        assert!(check_upstream_id("--engine-user", "ormaster").is_ok());
        for bad in ["", "a:b", "a\nb", &"x".repeat(257)] {
            assert!(check_upstream_id("--engine-user", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn generated_passwords_pass_the_policy_and_differ() {
        let a = generate().unwrap();
        let b = generate().unwrap();
        assert_ne!(*a, *b);
        assert_eq!(a.len(), 23);
        assert_eq!(a.matches('-').count(), 3);
        assert!(a.bytes().all(|c| c == b'-' || ALPHABET.contains(&c)), "{}", *a);
        check_new_password("alice", &a).unwrap();
    }
}
