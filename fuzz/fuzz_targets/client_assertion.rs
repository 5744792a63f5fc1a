//! Client assertion JWTs (RFC 7523, SMART App Launch 2.2) on arbitrary input: the header and
//! claim checks around the signature, with the signature check replaced by a stand-in.
//!
//! Input: either a compact JWT (one line), or lines `header JSON`, `payload JSON`, `signature`
//! (raw bytes, base64url-encoded here; `bad` stands for a signature that does not verify) and
//! an optional registered JWKS URL. Besides "no panic" it asserts:
//! - reading is deterministic, and an accepted header holds an allowed `alg`, a `kid`, no `crit`;
//! - nothing after the signature is looked at when the signature fails, and the signature check
//!   sees exactly the first two parts and the decoded third;
//! - an accepted assertion satisfies every claim rule, checked by an independent oracle over
//!   plain `serde_json`; and an assertion the oracle accepts is refused only for a duplicated
//!   JSON member (which the oracle's parser cannot see);
//! - every error message fits RFC 6749 §5.2's `error_description` characters.
#![no_main]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};
use ward_fuzz::oauth::assertion_claims::{
    peek_header, peek_issuer, verify_with, AssertionError, Expectations, ALLOWED_ALGS,
    CLOCK_SKEW_SECONDS, MAX_ASSERTION_BYTES, MAX_JTI_CHARS, MAX_LIFETIME_SECONDS,
};

const NOW: i64 = 1_700_000_000;
const CLIENT: &str = "client-123";

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let lines: Vec<&str> = text.splitn(4, '\n').collect();
    let (jwt, registered) = match lines.as_slice() {
        [jwt] => (jwt.to_string(), None),
        [jwt, registered] => (jwt.to_string(), Some(*registered)),
        [header, payload, rest @ ..] => {
            let signature = rest.first().copied().unwrap_or("sig");
            let jwt = [header.as_bytes(), payload.as_bytes(), signature.as_bytes()]
                .map(|part| URL_SAFE_NO_PAD.encode(part))
                .join(".");
            (jwt, rest.get(1).copied().filter(|r| !r.is_empty()))
        }
        [] => return,
    };
    check(&jwt, registered);
});

fn check(jwt: &str, registered: Option<&str>) {
    let audiences = [
        "https://ward.example.org/token".to_owned(),
        "https://ward.example.org".to_owned(),
    ];
    let expect = Expectations {
        client_id: CLIENT,
        audiences: &audiences,
        registered_jku: registered,
        now: NOW,
    };
    let issuer = peek_issuer(jwt);
    assert_eq!(issuer, peek_issuer(jwt), "deterministic");
    if let Some(iss) = &issuer {
        assert!(!iss.is_empty());
        let payload = jwt
            .split('.')
            .nth(1)
            .and_then(|part| URL_SAFE_NO_PAD.decode(part).ok())
            .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok());
        assert_eq!(
            payload.as_ref().and_then(|p| p.get("iss")),
            Some(&Value::from(iss.as_str()))
        );
    }
    let plain = Plain::read(jwt);
    let header = match peek_header(jwt) {
        Ok(header) => header,
        Err(error) => {
            assert_eq!(Err(error.clone()), peek_header(jwt), "deterministic");
            assert_fit_for_client(&error);
            return;
        }
    };
    assert_eq!(Ok(header.clone()), peek_header(jwt), "deterministic");
    assert!(jwt.len() <= MAX_ASSERTION_BYTES);
    assert!(ALLOWED_ALGS.contains(&header.alg.as_str()));
    assert!(!header.kid.is_empty());
    let plain = plain.expect("an accepted header is three base64url parts");
    assert_eq!(
        plain.header.get("alg"),
        Some(&Value::from(header.alg.as_str()))
    );
    assert_eq!(
        plain.header.get("kid"),
        Some(&Value::from(header.kid.as_str()))
    );
    assert_eq!(
        plain.header.get("jku"),
        header.jku.as_deref().map(Value::from).as_ref()
    );
    assert!(!plain.header.contains_key("crit"));

    let jku_ok = match (&header.jku, registered) {
        (None, _) => true,
        (Some(jku), Some(url)) => jku == url,
        (Some(_), None) => false,
    };
    // A signature that does not verify: refused as such, or for the jku before it; the payload
    // is never read.
    let mut called = false;
    let refused = verify_with(jwt, &header, &expect, |input, signature| {
        called = true;
        assert_eq!(input, plain.signing_input.as_bytes());
        assert_eq!(signature, plain.signature.as_slice());
        Err(AssertionError::BadSignature)
    });
    assert_eq!(
        called, jku_ok,
        "the signature is checked exactly when jku is fine"
    );
    match refused {
        Err(AssertionError::BadSignature) => assert!(jku_ok),
        Err(AssertionError::JkuMismatch | AssertionError::JkuWithoutRegisteredUrl) => {
            assert!(!jku_ok)
        }
        other => panic!("a failed signature must win over the claims: {other:?}"),
    }
    // The signature verifies (unless the input says `bad`): the claims decide.
    let signature_ok = plain.signature != b"bad";
    let result = verify_with(jwt, &header, &expect, |_, _| {
        if signature_ok {
            Ok(())
        } else {
            Err(AssertionError::BadSignature)
        }
    });
    let oracle = plain
        .payload
        .as_ref()
        .and_then(|payload| claims_oracle(payload, &audiences));
    match &result {
        Ok(verified) => {
            assert!(jku_ok && signature_ok);
            assert_eq!(oracle, Some((verified.jti.clone(), verified.exp)));
        }
        Err(error) => {
            assert_fit_for_client(error);
            if jku_ok && signature_ok && oracle.is_some() {
                assert!(
                    matches!(error, AssertionError::DuplicateMember(_)),
                    "the oracle accepts, Ward refuses: {error:?}"
                );
            }
        }
    }
}

/// The token read with plain serde_json (which keeps the last of duplicated members).
struct Plain {
    header: Map<String, Value>,
    /// None when the payload is not a JSON object (the header is read without it).
    payload: Option<Map<String, Value>>,
    signature: Vec<u8>,
    signing_input: String,
}

impl Plain {
    fn read(jwt: &str) -> Option<Self> {
        let parts: Vec<&str> = jwt.split('.').collect();
        let [header, payload, signature] = parts.as_slice() else {
            return None;
        };
        let object = |part: &str| match serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).ok()?)
        {
            Ok(Value::Object(map)) => Some(map),
            _ => None,
        };
        Some(Self {
            header: object(header)?,
            payload: object(payload),
            signature: URL_SAFE_NO_PAD.decode(signature).ok()?,
            signing_input: format!("{header}.{payload}"),
        })
    }
}

/// RFC 7523 §3 with SMART App Launch 2.2's limits, read independently: `iss` = `sub` = the
/// client; `aud` an accepted string or a non-empty array of only accepted strings; integer
/// `exp` in (now, now + 5 min]; integer `nbf`/`iat` if present, not beyond the skew; `jti` a
/// string of 1..=255 characters without control characters. The (jti, exp) when accepted.
fn claims_oracle(payload: &Map<String, Value>, audiences: &[String]) -> Option<(String, i64)> {
    let string = |name: &str| payload.get(name)?.as_str().filter(|s| !s.is_empty());
    if string("iss")? != CLIENT || string("sub")? != CLIENT {
        return None;
    }
    let accepted = |v: &Value| v.as_str().is_some_and(|s| audiences.iter().any(|a| a == s));
    let aud_ok = match payload.get("aud")? {
        Value::Array(items) => !items.is_empty() && items.iter().all(accepted),
        other => accepted(other),
    };
    if !aud_ok {
        return None;
    }
    // An integer NumericDate; integers beyond i64 count as i64::MAX (always too far ahead).
    let date = |name: &str| -> Result<Option<i64>, ()> {
        match payload.get(name) {
            None => Ok(None),
            Some(Value::Number(n)) if n.is_i64() => Ok(n.as_i64()),
            Some(Value::Number(n)) if n.is_u64() => Ok(Some(i64::MAX)),
            Some(_) => Err(()),
        }
    };
    let exp = date("exp").ok()??;
    let (nbf, iat) = (date("nbf").ok()?, date("iat").ok()?);
    if exp <= NOW || exp > NOW + MAX_LIFETIME_SECONDS {
        return None;
    }
    let latest = NOW + CLOCK_SKEW_SECONDS;
    if nbf.is_some_and(|t| t > latest) || iat.is_some_and(|t| t > latest) {
        return None;
    }
    let jti = payload.get("jti")?.as_str()?;
    let chars = jti.chars().count();
    if chars == 0 || chars > MAX_JTI_CHARS || jti.chars().any(char::is_control) {
        return None;
    }
    Some((jti.to_owned(), exp))
}

/// RFC 6749 §5.2: `error_description` is printable ASCII without `"` and `\`; and it stays short.
fn assert_fit_for_client(error: &AssertionError) {
    let message = error.to_string();
    assert!(
        message
            .chars()
            .all(|c| matches!(c, ' '..='~') && c != '"' && c != '\\'),
        "{message}"
    );
    assert!(message.len() <= 160, "{message}");
}
