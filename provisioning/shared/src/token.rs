//! One-time enrollment tokens: how a terminal without a certificate earns its first one.
//!
//! Made by the vendor (`kakehashi provision terminal add --enroll`, carried by the bundle) or on
//! the appliance (`kakehashi terminal add --enroll`); redeemed on the appliance at EST
//! `simpleenroll` with HTTP Basic `NAME:TOKEN`. A token is 128 random bits written as 32 hex
//! digits, shown once and kept only as the SHA-256 of that text, so a copy of the vendor's or
//! the appliance's state enrolls nobody.

use zeroize::Zeroizing;

use crate::Error;

/// A token's lifetime when `--token-hours` is not given.
pub const DEFAULT_HOURS: u32 = 24;
/// The longest lifetime a token may be given: a month.
pub const MAX_HOURS: u32 = 720;
/// Random bytes in a token (128 bits), written as hex.
const TOKEN_BYTES: usize = 16;

/// A fresh token: 16 random bytes as 32 lower-case hex digits.
pub fn generate() -> Result<Zeroizing<String>, Error> {
    let mut bytes = Zeroizing::new([0u8; TOKEN_BYTES]);
    aws_lc_rs::rand::fill(bytes.as_mut()).map_err(|_| Error::Random)?;
    Ok(Zeroizing::new(hex::encode(bytes.as_ref())))
}

/// What is stored of a token: the SHA-256 of its text (the bytes the terminal sends).
pub fn hash(token: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Whether `token` is the one whose [`hash`] is `stored`, in constant time.
pub fn matches(token: &[u8], stored: &[u8]) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(&hash(token), stored).is_ok()
}

/// Refuses a lifetime outside 1 to [`MAX_HOURS`] hours.
pub fn check_hours(hours: u32) -> Result<(), Error> {
    if (1..=MAX_HOURS).contains(&hours) {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "--token-hours {hours}: expected 1 to {MAX_HOURS}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_32_hex_digits_and_only_their_hash_matches() {
        let token = generate().unwrap();
        assert_eq!(token.len(), 32);
        assert!(
            token
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_ne!(*token, *generate().unwrap());
        let stored = hash(token.as_bytes());
        // Exactly `printf %s TOKEN | sha256sum`: the hash of the hex text, not of the bytes.
        assert_eq!(
            hex::encode(hash(b"00112233445566778899aabbccddeeff")),
            "5947d7c33d783f94b3b4c1a96ebc8991ed28f1b069b71e03376cba8caa98a720"
        );
        assert!(matches(token.as_bytes(), &stored));
        assert!(!matches(b"guess", &stored));
        assert!(check_hours(0).is_err() && check_hours(MAX_HOURS + 1).is_err());
        assert!(check_hours(1).is_ok() && check_hours(MAX_HOURS).is_ok());
    }
}
