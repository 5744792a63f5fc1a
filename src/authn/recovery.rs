//! Recovery codes: ten single-use codes shown once at TOTP enrolment. Each has about 59 bits of
//! entropy, below what an unkeyed hash protects offline (NIST SP 800-63B §5.1.2.2), so they are
//! stored as an HMAC under a master-derived key over the user id and the code: a stolen database
//! alone cannot be searched for codes. Online guesses are throttled like TOTP guesses.

use rand::Rng;

use crate::crypto::seal::Sealer;

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

pub fn hash(sealer: &Sealer, user_id: &str, code: &str) -> String {
    let data = format!("{user_id}\0{}", normalize(code));
    sealer.keyed_hash("recovery-code", data.as_bytes())
}

/// The code's hash under every master key held (current first): codes issued before a
/// master-key rotation are still found.
pub fn hashes(sealer: &Sealer, user_id: &str, code: &str) -> Vec<String> {
    let data = format!("{user_id}\0{}", normalize(code));
    sealer.keyed_hashes("recovery-code", data.as_bytes())
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
        let sealer = Sealer::new(&crate::crypto::seal::MasterKey::generate());
        assert_eq!(
            hash(&sealer, "u1", &a),
            hash(&sealer, "u1", &a.to_uppercase().replace('-', " "))
        );
        assert_ne!(
            hash(&sealer, "u1", &a),
            hash(&sealer, "u2", &a),
            "bound to the user"
        );
        assert!(looks_like_recovery_code(&a));
        // Codes issued before a master-key rotation are still found.
        let old = crate::crypto::seal::MasterKey::generate();
        let rotated = Sealer::with_previous(
            &crate::crypto::seal::MasterKey::generate(),
            std::slice::from_ref(&old),
        );
        let issued = hash(&Sealer::new(&old), "u1", &a);
        assert!(hashes(&rotated, "u1", &a).contains(&issued));
        assert_eq!(hashes(&rotated, "u1", &a)[0], hash(&rotated, "u1", &a));
        assert!(!looks_like_recovery_code("123456"));
    }
}
