//! CSRF tokens for every Ward HTML form (DESIGN.md §7). A token is an HMAC, under a key derived
//! from the master key, of what the form is bound to: the session, or before sign-in a random
//! browser cookie (so login forms cannot be forged either). Nothing is stored; every node
//! computes the same token; comparison is constant-time.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::crypto::constant_time_eq;

/// What a form is bound to.
#[derive(Debug, Clone, Copy)]
pub enum Binding<'a> {
    /// The SHA-256 of a session id.
    Session(&'a str),
    /// The anonymous browser cookie.
    Browser(&'a str),
}

pub fn token(key: &[u8; 32], binding: Binding<'_>) -> String {
    let (tag, value) = match binding {
        Binding::Session(v) => ("session", v),
        Binding::Browser(v) => ("browser", v),
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return String::new();
    };
    mac.update(tag.as_bytes());
    mac.update(b"\0");
    mac.update(value.as_bytes());
    URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
}

pub fn verify(key: &[u8; 32], binding: Binding<'_>, presented: &str) -> bool {
    let expected = token(key, binding);
    !presented.is_empty() && constant_time_eq(expected.as_bytes(), presented.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_bind_to_their_session_or_browser() {
        let key = [7u8; 32];
        let t = token(&key, Binding::Session("abc"));
        assert!(verify(&key, Binding::Session("abc"), &t));
        assert!(!verify(&key, Binding::Session("abd"), &t));
        assert!(!verify(&key, Binding::Browser("abc"), &t));
        assert!(!verify(&[8u8; 32], Binding::Session("abc"), &t));
        assert!(!verify(&key, Binding::Session("abc"), ""));
    }
}
