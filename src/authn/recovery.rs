//! Recovery codes: ten single-use codes shown once at TOTP enrolment, stored as SHA-256
//! (each has 60 bits of entropy and guesses are throttled like TOTP guesses).

use rand::Rng;

use crate::crypto::sha256_b64;

pub const COUNT: usize = 10;
const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";

/// A fresh code formatted for reading aloud: `xxxx-xxxx-xxxx`.
pub fn generate() -> String {
    let mut rng = rand::rngs::OsRng;
    let chars: String = (0..12)
        .map(|_| char::from(ALPHABET[rng.gen_range(0..ALPHABET.len())]))
        .collect();
    format!("{}-{}-{}", &chars[0..4], &chars[4..8], &chars[8..12])
}

/// The form compared: case, spaces and dashes do not matter to the person typing it.
pub fn normalize(code: &str) -> String {
    code.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

pub fn hash(code: &str) -> String {
    sha256_b64(normalize(code).as_bytes())
}

/// Whether the input looks like a recovery code rather than a TOTP code.
pub fn looks_like_recovery_code(code: &str) -> bool {
    normalize(code).len() == 12
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_readable_and_normalised() {
        let a = generate();
        assert_eq!(a.len(), 14);
        assert_ne!(a, generate());
        assert_eq!(hash(&a), hash(&a.to_uppercase().replace('-', " ")));
        assert!(looks_like_recovery_code(&a));
        assert!(!looks_like_recovery_code("123456"));
    }
}
