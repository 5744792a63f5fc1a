//! Client assertion JWTs: RFC 7523 `private_key_jwt` client authentication, as profiled by HL7
//! SMART App Launch 2.2 ("client-confidential-asymmetric", and Backend Services).
//!
//! Pure apart from CPU work: no database, no network. The caller
//! 1. reads the unverified header with [`peek_header`] (and, when the form has no `client_id`,
//!    the unverified issuer with [`peek_issuer`]) to find the client and its key set;
//! 2. calls [`verify`]; when the error [`AssertionError::is_unknown_kid`], it refetches the
//!    client's registered JWKS URL once and calls [`verify`] again;
//! 3. records the returned `jti` (per client, until `exp`) in its replay cache and rejects a `jti`
//!    already seen for that client (SMART App Launch 2.2 requires this replay check).
//!
//! The parsing and claim checks are in `assertion_claims.rs` (pure, fuzzed); this module adds
//! what needs josekit: picking the key by `kid` and verifying the signature.

use josekit::jws::JwsVerifier;

use super::assertion_claims::echo;
#[cfg(test)]
use super::assertion_claims::{check_claims, parse_object, MAX_ECHO_CHARS};
pub use super::assertion_claims::{
    peek_header, peek_issuer, verify_with, AssertionError, AssertionHeader, Expectations, JsonPart,
    VerifiedAssertion, CLIENT_ASSERTION_TYPE, CLOCK_SKEW_SECONDS, MAX_ASSERTION_BYTES,
    MAX_JTI_CHARS, MAX_LIFETIME_SECONDS,
};
use crate::clients::jwks::ClientKey;

/// Verifies a client assertion: the header must be `jwt`'s own; `jku`, if any, must be the
/// registered JWKS URL; exactly one key must have the `kid`; that key must allow the `alg`;
/// the signature must verify; then the claims are checked (RFC 7523 §3, SMART App Launch 2.2).
pub fn verify(
    jwt: &str,
    header: &AssertionHeader,
    keys: &[ClientKey],
    expect: &Expectations<'_>,
) -> Result<VerifiedAssertion, AssertionError> {
    verify_with(jwt, header, expect, |signing_input, signature| {
        let key = select_key(keys, &header.kid)?;
        verifier_for(key, &header.alg)?
            .verify(signing_input, signature)
            .map_err(|_| AssertionError::BadSignature)
    })
}

/// SMART App Launch 2.2: the server identifies the key by `kid`. Exactly one key must match;
/// none means the caller may refetch the key set ([`AssertionError::is_unknown_kid`]).
fn select_key<'k>(keys: &'k [ClientKey], kid: &str) -> Result<&'k ClientKey, AssertionError> {
    let mut matching = keys.iter().filter(|k| k.kid == kid);
    match (matching.next(), matching.next()) {
        (Some(key), None) => Ok(key),
        (None, _) => Err(AssertionError::UnknownKid),
        (Some(_), Some(_)) => Err(AssertionError::AmbiguousKid),
    }
}

/// RFC 8725 §3.1: the algorithm must be one the key is registered for, checked before a verifier
/// is built from the header's `alg`, so the header can never pick how a key is used.
/// The key's verifiers were built when its key set was read; only a registered `alg` has one.
fn verifier_for<'k>(key: &'k ClientKey, alg: &str) -> Result<&'k dyn JwsVerifier, AssertionError> {
    key.verifier(alg)
        .ok_or_else(|| AssertionError::AlgNotAllowedForKey(echo(alg)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clients::jwks;
    use base64::Engine;
    use josekit::jwk::alg::ec::EcKeyPair;
    use josekit::jwk::alg::rsa::RsaKeyPair;
    use josekit::jwk::KeyPair;
    use josekit::jws::{JwsSigner, ES256, ES384, HS256, PS256, RS256, RS384};
    use proptest::prelude::*;
    use serde_json::json;
    use serde_json::Value;
    use std::sync::LazyLock;

    const NOW: i64 = 1_700_000_000;
    const CLIENT: &str = "client-123";
    const TOKEN_URL: &str = "https://ward.example.org/token";
    const ISSUER_URL: &str = "https://ward.example.org";
    const JWKS_URL: &str = "https://app.example.com/.well-known/jwks.json";

    static RSA: LazyLock<RsaKeyPair> = LazyLock::new(|| RS384.generate_key_pair(2048).unwrap());
    static RSA_OTHER: LazyLock<RsaKeyPair> =
        LazyLock::new(|| RS384.generate_key_pair(2048).unwrap());
    static EC384: LazyLock<EcKeyPair> = LazyLock::new(|| ES384.generate_key_pair().unwrap());
    static EC384_OTHER: LazyLock<EcKeyPair> = LazyLock::new(|| ES384.generate_key_pair().unwrap());
    static EC256: LazyLock<EcKeyPair> = LazyLock::new(|| ES256.generate_key_pair().unwrap());
    static KEYS: LazyLock<Vec<ClientKey>> = LazyLock::new(|| {
        client_keys(&[
            public_jwk(&*RSA, "rsa-1", Some("RS384")),
            public_jwk(&*EC384, "ec-1", Some("ES384")),
        ])
    });

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    /// The public JWK with `kid` and `alg` (josekit sets the generating algorithm as `alg`;
    /// `None` removes it, so the key's type implies its algorithms).
    fn public_jwk(pair: &dyn KeyPair, kid: &str, alg: Option<&str>) -> Value {
        let mut jwk = serde_json::to_value(pair.to_jwk_public_key().as_ref()).unwrap();
        jwk["kid"] = json!(kid);
        match alg {
            Some(alg) => jwk["alg"] = json!(alg),
            None => drop(jwk.as_object_mut().unwrap().remove("alg")),
        }
        jwk
    }

    /// The keys exactly as Ward builds them from a registered JWKS.
    fn client_keys(jwks: &[Value]) -> Vec<ClientKey> {
        jwks::validate(&json!({ "keys": jwks })).unwrap()
    }

    fn rsa_signer(alg: &str, pair: &RsaKeyPair) -> Box<dyn JwsSigner> {
        let der = pair.to_der_private_key();
        match alg {
            "RS256" => Box::new(RS256.signer_from_der(der).unwrap()),
            "RS384" => Box::new(RS384.signer_from_der(der).unwrap()),
            "PS256" => Box::new(PS256.signer_from_der(der).unwrap()),
            other => panic!("no RSA signer for {other}"),
        }
    }

    fn rs384() -> Box<dyn JwsSigner> {
        rsa_signer("RS384", &RSA)
    }

    fn es384(pair: &EcKeyPair) -> Box<dyn JwsSigner> {
        Box::new(ES384.signer_from_der(pair.to_der_private_key()).unwrap())
    }

    fn sign_raw(header: &str, payload: &str, signer: &dyn JwsSigner) -> String {
        let input = format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()));
        let signature = signer.sign(input.as_bytes()).unwrap();
        format!("{input}.{}", b64(&signature))
    }

    fn sign(header: Value, payload: Value, signer: &dyn JwsSigner) -> String {
        sign_raw(&header.to_string(), &payload.to_string(), signer)
    }

    fn claims() -> Value {
        json!({
            "iss": CLIENT,
            "sub": CLIENT,
            "aud": TOKEN_URL,
            "exp": NOW + 120,
            "iat": NOW,
            "jti": "5c0b6a8e-5b7e-4d0e-9d5f-0c6f0e1c2a77",
        })
    }

    fn with(mut payload: Value, name: &str, value: Value) -> Value {
        payload[name] = value;
        payload
    }

    fn without(mut payload: Value, name: &str) -> Value {
        payload.as_object_mut().unwrap().remove(name);
        payload
    }

    fn rsa_token(payload: Value) -> String {
        sign(
            json!({"alg": "RS384", "kid": "rsa-1", "typ": "JWT"}),
            payload,
            &*rs384(),
        )
    }

    fn check_with(
        jwt: &str,
        keys: &[ClientKey],
        registered_jku: Option<&str>,
    ) -> Result<VerifiedAssertion, AssertionError> {
        let header = peek_header(jwt)?;
        let audiences = [TOKEN_URL.to_owned(), ISSUER_URL.to_owned()];
        let expect = Expectations {
            client_id: CLIENT,
            audiences: &audiences,
            registered_jku,
            now: NOW,
        };
        verify(jwt, &header, keys, &expect)
    }

    fn check(jwt: &str) -> Result<VerifiedAssertion, AssertionError> {
        check_with(jwt, &KEYS, None)
    }

    fn claims_error(payload: Value) -> AssertionError {
        check(&rsa_token(payload)).unwrap_err()
    }

    // ---- happy paths ----

    #[test]
    fn accepts_rs384() {
        let verified = check(&rsa_token(claims())).unwrap();
        assert_eq!(verified.jti, "5c0b6a8e-5b7e-4d0e-9d5f-0c6f0e1c2a77");
        assert_eq!(verified.exp, NOW + 120);
    }

    #[test]
    fn accepts_es384() {
        let jwt = sign(
            json!({"alg": "ES384", "kid": "ec-1"}),
            claims(),
            &*es384(&EC384),
        );
        assert_eq!(check(&jwt).unwrap().exp, NOW + 120);
    }

    #[test]
    fn accepts_rs256_when_the_key_declares_it() {
        let keys = client_keys(&[
            public_jwk(&*RSA, "rsa-256", Some("RS256")),
            public_jwk(&*EC384, "ec-1", Some("ES384")),
        ]);
        let jwt = sign(
            json!({"alg": "RS256", "kid": "rsa-256"}),
            claims(),
            &*rsa_signer("RS256", &RSA),
        );
        assert!(check_with(&jwt, &keys, None).is_ok());
    }

    #[test]
    fn accepts_any_implied_rsa_alg_when_the_key_declares_none() {
        let keys = client_keys(&[public_jwk(&*RSA, "rsa-any", None)]);
        for alg in ["RS256", "RS384", "PS256"] {
            let jwt = sign(
                json!({"alg": alg, "kid": "rsa-any"}),
                claims(),
                &*rsa_signer(alg, &RSA),
            );
            assert!(check_with(&jwt, &keys, None).is_ok(), "{alg}");
        }
    }

    #[test]
    fn accepts_es256_when_the_key_declares_it() {
        let keys = client_keys(&[
            public_jwk(&*EC384, "ec-1", Some("ES384")),
            public_jwk(&*EC256, "ec-256", Some("ES256")),
        ]);
        let signer = ES256.signer_from_der(EC256.to_der_private_key()).unwrap();
        let jwt = sign(json!({"alg": "ES256", "kid": "ec-256"}), claims(), &signer);
        assert!(check_with(&jwt, &keys, None).is_ok());
    }

    #[test]
    fn accepts_aud_as_single_element_array_and_issuer_url() {
        assert!(check(&rsa_token(with(claims(), "aud", json!([TOKEN_URL])))).is_ok());
        assert!(check(&rsa_token(with(claims(), "aud", json!(ISSUER_URL)))).is_ok());
        assert!(check(&rsa_token(with(
            claims(),
            "aud",
            json!([TOKEN_URL, ISSUER_URL])
        )))
        .is_ok());
    }

    #[test]
    fn accepts_jku_equal_to_registered_url() {
        let header = json!({"alg": "RS384", "kid": "rsa-1", "jku": JWKS_URL});
        let jwt = sign(header, claims(), &*rs384());
        assert_eq!(peek_header(&jwt).unwrap().jku.as_deref(), Some(JWKS_URL));
        assert!(check_with(&jwt, &KEYS, Some(JWKS_URL)).is_ok());
        // Without a jku, a client with a registered URL is fine too.
        assert!(check_with(&rsa_token(claims()), &KEYS, Some(JWKS_URL)).is_ok());
    }

    #[test]
    fn accepts_times_at_the_limits() {
        let edge = with(
            with(
                with(claims(), "exp", json!(NOW + MAX_LIFETIME_SECONDS)),
                "nbf",
                json!(NOW + CLOCK_SKEW_SECONDS),
            ),
            "iat",
            json!(NOW + CLOCK_SKEW_SECONDS),
        );
        assert!(check(&rsa_token(edge)).is_ok());
        let minimal = with(
            without(without(claims(), "iat"), "nbf"),
            "exp",
            json!(NOW + 1),
        );
        assert!(check(&rsa_token(minimal)).is_ok());
    }

    #[test]
    fn peek_header_reads_alg_kid_jku() {
        let jwt = sign(
            json!({"alg": "ES384", "kid": "ec-1", "jku": JWKS_URL}),
            claims(),
            &*es384(&EC384),
        );
        assert_eq!(
            peek_header(&jwt).unwrap(),
            AssertionHeader {
                alg: "ES384".into(),
                kid: "ec-1".into(),
                jku: Some(JWKS_URL.into())
            }
        );
    }

    #[test]
    fn peek_issuer_reads_unverified_iss() {
        assert_eq!(peek_issuer(&rsa_token(claims())).as_deref(), Some(CLIENT));
        assert_eq!(peek_issuer(&rsa_token(without(claims(), "iss"))), None);
        assert_eq!(
            peek_issuer(&rsa_token(with(claims(), "iss", json!(7)))),
            None
        );
        assert_eq!(peek_issuer("not a jwt"), None);
        assert_eq!(peek_issuer(&"a".repeat(MAX_ASSERTION_BYTES + 1)), None);
        let duplicated = sign_raw(
            r#"{"alg":"RS384","kid":"rsa-1"}"#,
            r#"{"iss":"a","iss":"b"}"#,
            &*rs384(),
        );
        assert_eq!(peek_issuer(&duplicated), None);
    }

    #[test]
    fn unknown_kid_is_flagged_for_refetch() {
        let jwt = sign(
            json!({"alg": "RS384", "kid": "rotated"}),
            claims(),
            &*rs384(),
        );
        let err = check(&jwt).unwrap_err();
        assert_eq!(err, AssertionError::UnknownKid);
        assert!(err.is_unknown_kid());
        assert!(!AssertionError::BadSignature.is_unknown_kid());
    }

    // ---- header ----

    #[test]
    fn rejects_alg_none() {
        let jwt = format!(
            "{}.{}.{}",
            b64(br#"{"alg":"none","kid":"rsa-1"}"#),
            b64(claims().to_string().as_bytes()),
            b64(b"x")
        );
        assert_eq!(peek_header(&jwt), Err(AssertionError::AlgNone));
        // Unsigned JWTs carry an empty signature part.
        let unsigned = format!(
            "{}.{}.",
            b64(br#"{"alg":"none","kid":"rsa-1"}"#),
            b64(claims().to_string().as_bytes())
        );
        assert_eq!(peek_header(&unsigned), Err(AssertionError::Malformed));
    }

    fn hmac_token(alg: &str) -> String {
        let secret = b"a shared secret that is long enough for any HMAC algorithm at all....";
        let signer: Box<dyn JwsSigner> = match alg {
            "HS256" => Box::new(HS256.signer_from_bytes(secret).unwrap()),
            "HS384" => Box::new(josekit::jws::HS384.signer_from_bytes(secret).unwrap()),
            _ => Box::new(josekit::jws::HS512.signer_from_bytes(secret).unwrap()),
        };
        sign(json!({"alg": alg, "kid": "rsa-1"}), claims(), &*signer)
    }

    #[test]
    fn rejects_alg_hs256() {
        assert_eq!(
            peek_header(&hmac_token("HS256")),
            Err(AssertionError::SymmetricAlg)
        );
    }

    #[test]
    fn rejects_alg_hs384() {
        assert_eq!(
            peek_header(&hmac_token("HS384")),
            Err(AssertionError::SymmetricAlg)
        );
    }

    #[test]
    fn rejects_alg_hs512() {
        assert_eq!(
            peek_header(&hmac_token("HS512")),
            Err(AssertionError::SymmetricAlg)
        );
    }

    #[test]
    fn rejects_unknown_alg() {
        for alg in ["RS1", "EdDSA", "rs384", "ES256K", ""] {
            let jwt = sign(json!({"alg": alg, "kid": "rsa-1"}), claims(), &*rs384());
            assert!(
                matches!(peek_header(&jwt), Err(AssertionError::AlgNotAllowed(_))),
                "{alg}"
            );
        }
        let jwt = sign(json!({"alg": 384, "kid": "rsa-1"}), claims(), &*rs384());
        assert_eq!(peek_header(&jwt), Err(AssertionError::MissingAlg));
        let jwt = sign(json!({"kid": "rsa-1"}), claims(), &*rs384());
        assert_eq!(peek_header(&jwt), Err(AssertionError::MissingAlg));
    }

    #[test]
    fn rejects_long_alg_without_echoing_it() {
        let alg = format!("X{}\"\\\u{7}é", "A".repeat(500));
        let jwt = sign(json!({"alg": alg, "kid": "rsa-1"}), claims(), &*rs384());
        let err = peek_header(&jwt).unwrap_err();
        let message = err.to_string();
        assert!(message.len() < 160, "{message}");
        assert!(!message.contains(&"A".repeat(MAX_ECHO_CHARS)), "{message}");
        assert_eq!(echo("a\"b\\c\u{7}é"), "a?b?c??");
    }

    #[test]
    fn rejects_missing_kid() {
        let jwt = sign(json!({"alg": "RS384"}), claims(), &*rs384());
        assert_eq!(peek_header(&jwt), Err(AssertionError::MissingKid));
        let jwt = sign(json!({"alg": "RS384", "kid": ""}), claims(), &*rs384());
        assert_eq!(peek_header(&jwt), Err(AssertionError::MissingKid));
    }

    #[test]
    fn rejects_non_string_kid() {
        for kid in [
            json!(1),
            json!(null),
            json!(["rsa-1"]),
            json!({"kid": "rsa-1"}),
            json!(true),
        ] {
            let jwt = sign(json!({"alg": "RS384", "kid": kid}), claims(), &*rs384());
            assert_eq!(peek_header(&jwt), Err(AssertionError::MissingKid));
        }
    }

    #[test]
    fn rejects_non_string_jku() {
        for jku in [json!(null), json!(1), json!([JWKS_URL])] {
            let jwt = sign(
                json!({"alg": "RS384", "kid": "rsa-1", "jku": jku}),
                claims(),
                &*rs384(),
            );
            assert_eq!(peek_header(&jwt), Err(AssertionError::InvalidJku));
        }
    }

    #[test]
    fn rejects_jku_not_registered_url() {
        for jku in [
            "https://evil.example.com/jwks.json",
            "https://app.example.com/.well-known/jwks.json/",
            "https://APP.example.com/.well-known/jwks.json",
            "https://app.example.com/.well-known/jwks.json?x",
        ] {
            let jwt = sign(
                json!({"alg": "RS384", "kid": "rsa-1", "jku": jku}),
                claims(),
                &*rs384(),
            );
            assert_eq!(
                check_with(&jwt, &KEYS, Some(JWKS_URL)),
                Err(AssertionError::JkuMismatch),
                "{jku}"
            );
        }
    }

    #[test]
    fn rejects_jku_with_inline_jwks() {
        let jwt = sign(
            json!({"alg": "RS384", "kid": "rsa-1", "jku": JWKS_URL}),
            claims(),
            &*rs384(),
        );
        assert_eq!(
            check_with(&jwt, &KEYS, None),
            Err(AssertionError::JkuWithoutRegisteredUrl)
        );
    }

    #[test]
    fn rejects_alg_not_allowed_for_key() {
        // An RS384 header naming an EC key.
        let jwt = sign(json!({"alg": "RS384", "kid": "ec-1"}), claims(), &*rs384());
        assert_eq!(
            check(&jwt),
            Err(AssertionError::AlgNotAllowedForKey("RS384".into()))
        );
        // An ES256 header naming a key declared ES384.
        let signer = ES256.signer_from_der(EC256.to_der_private_key()).unwrap();
        let jwt = sign(json!({"alg": "ES256", "kid": "ec-1"}), claims(), &signer);
        assert_eq!(
            check(&jwt),
            Err(AssertionError::AlgNotAllowedForKey("ES256".into()))
        );
        // RS256 on an RSA key declared RS384.
        let jwt = sign(
            json!({"alg": "RS256", "kid": "rsa-1"}),
            claims(),
            &*rsa_signer("RS256", &RSA),
        );
        assert_eq!(
            check(&jwt),
            Err(AssertionError::AlgNotAllowedForKey("RS256".into()))
        );
    }

    #[test]
    fn rejects_hs256_keyed_with_public_key() {
        for secret in [RSA.to_pem_public_key(), RSA.to_der_public_key()] {
            let hmac = HS256.signer_from_bytes(&secret).unwrap();
            let jwt = sign(json!({"alg": "HS256", "kid": "rsa-1"}), claims(), &hmac);
            assert_eq!(peek_header(&jwt), Err(AssertionError::SymmetricAlg));
            // Even a caller that skipped peek_header cannot get it through.
            let forged = AssertionHeader {
                alg: "HS256".into(),
                kid: "rsa-1".into(),
                jku: None,
            };
            let audiences = [TOKEN_URL.to_owned()];
            let expect = Expectations {
                client_id: CLIENT,
                audiences: &audiences,
                registered_jku: None,
                now: NOW,
            };
            assert_eq!(
                verify(&jwt, &forged, &KEYS, &expect),
                Err(AssertionError::SymmetricAlg)
            );
            // Relabelled as RS384, the HMAC is just a bad signature.
            let relabelled = sign(json!({"alg": "RS384", "kid": "rsa-1"}), claims(), &hmac);
            assert_eq!(check(&relabelled), Err(AssertionError::BadSignature));
        }
    }

    #[test]
    fn rejects_crit_header() {
        let header = json!({"alg": "RS384", "kid": "rsa-1", "b64": false, "crit": ["b64"]});
        let jwt = sign(header, claims(), &*rs384());
        assert_eq!(peek_header(&jwt), Err(AssertionError::CriticalHeader));
    }

    #[test]
    fn rejects_header_mismatch() {
        let jwt = rsa_token(claims());
        let audiences = [TOKEN_URL.to_owned()];
        let expect = Expectations {
            client_id: CLIENT,
            audiences: &audiences,
            registered_jku: None,
            now: NOW,
        };
        let other = AssertionHeader {
            alg: "ES384".into(),
            kid: "ec-1".into(),
            jku: None,
        };
        assert_eq!(
            verify(&jwt, &other, &KEYS, &expect),
            Err(AssertionError::HeaderMismatch)
        );
    }

    #[test]
    fn rejects_header_not_json_object() {
        for header in [
            "[]",
            "\"RS384\"",
            "{",
            "{\"alg\":\"RS384\",\"kid\":\"rsa-1\"} x",
            "\u{0}",
        ] {
            let jwt = sign_raw(header, &claims().to_string(), &*rs384());
            assert_eq!(
                peek_header(&jwt),
                Err(AssertionError::NotJsonObject(JsonPart::Header)),
                "{header}"
            );
        }
        let jwt = format!("{}.{}.{}", b64(&[0xff, 0xfe]), b64(b"{}"), b64(b"sig"));
        assert_eq!(
            peek_header(&jwt),
            Err(AssertionError::NotJsonObject(JsonPart::Header))
        );
    }

    #[test]
    fn rejects_duplicate_header_member() {
        let header = r#"{"alg":"HS256","kid":"rsa-1","alg":"RS384"}"#;
        let jwt = sign_raw(header, &claims().to_string(), &*rs384());
        assert_eq!(
            peek_header(&jwt),
            Err(AssertionError::DuplicateMember(JsonPart::Header))
        );
        let nested = r#"{"alg":"RS384","kid":"rsa-1","x":{"a":1,"a":2}}"#;
        let jwt = sign_raw(nested, &claims().to_string(), &*rs384());
        assert_eq!(
            peek_header(&jwt),
            Err(AssertionError::DuplicateMember(JsonPart::Header))
        );
    }

    // ---- key selection and signature ----

    #[test]
    fn rejects_ambiguous_kid() {
        let mut keys = KEYS.clone();
        keys.push(keys[0].clone());
        assert_eq!(
            check_with(&rsa_token(claims()), &keys, None),
            Err(AssertionError::AmbiguousKid)
        );
    }

    #[test]
    fn rejects_unknown_kid() {
        let jwt = sign(json!({"alg": "RS384", "kid": "nope"}), claims(), &*rs384());
        assert_eq!(check(&jwt), Err(AssertionError::UnknownKid));
        assert_eq!(
            check_with(&rsa_token(claims()), &[], None),
            Err(AssertionError::UnknownKid)
        );
    }

    #[test]
    fn rejects_bad_signature() {
        let jwt = rsa_token(claims());
        let (input, signature) = jwt.rsplit_once('.').unwrap();
        let mut bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(signature)
            .unwrap();
        bytes[10] ^= 0x01;
        assert_eq!(
            check(&format!("{input}.{}", b64(&bytes))),
            Err(AssertionError::BadSignature)
        );
        // A changed payload under the original signature.
        let tampered = rsa_token(with(claims(), "sub", json!("someone-else")));
        let (_, tampered_payload, _) = split3(&tampered);
        let (header, _, signature) = split3(&jwt);
        let spliced = format!("{header}.{tampered_payload}.{signature}");
        assert_eq!(check(&spliced), Err(AssertionError::BadSignature));
    }

    fn split3(jwt: &str) -> (&str, &str, &str) {
        let mut parts = jwt.split('.');
        (
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap(),
        )
    }

    #[test]
    fn rejects_signature_by_other_key_with_same_kid() {
        let jwt = sign(
            json!({"alg": "RS384", "kid": "rsa-1"}),
            claims(),
            &*rsa_signer("RS384", &RSA_OTHER),
        );
        assert_eq!(check(&jwt), Err(AssertionError::BadSignature));
        let jwt = sign(
            json!({"alg": "ES384", "kid": "ec-1"}),
            claims(),
            &*es384(&EC384_OTHER),
        );
        assert_eq!(check(&jwt), Err(AssertionError::BadSignature));
    }

    #[test]
    fn rejects_zero_ecdsa_signature() {
        let (header, payload) = (json!({"alg": "ES384", "kid": "ec-1"}), claims());
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(payload.to_string().as_bytes())
        );
        for signature in [vec![0u8; 96], vec![0u8; 95], vec![0xffu8; 96], vec![]] {
            let jwt = format!("{input}.{}", b64(&signature));
            assert!(check(&jwt).is_err());
        }
        assert_eq!(
            check(&format!("{input}.{}", b64(&[0u8; 96]))),
            Err(AssertionError::BadSignature)
        );
    }

    #[test]
    fn rejects_truncated_token() {
        let jwt = rsa_token(claims());
        // A signature cut short (still canonical base64url) does not verify.
        let (input, signature) = jwt.rsplit_once('.').unwrap();
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(signature)
            .unwrap();
        let short = format!("{input}.{}", b64(&bytes[..bytes.len() - 3]));
        assert_eq!(check(&short), Err(AssertionError::BadSignature));
        let two_parts = jwt.rsplit_once('.').unwrap().0;
        assert_eq!(peek_header(two_parts), Err(AssertionError::Malformed));
        assert_eq!(
            peek_header(&format!("{two_parts}.")),
            Err(AssertionError::Malformed)
        );
        assert_eq!(
            peek_header(jwt.split('.').next().unwrap()),
            Err(AssertionError::Malformed)
        );
        for cut in [1, 5, 17, jwt.len() / 2, jwt.len() - 1] {
            assert!(check(&jwt[..cut]).is_err(), "{cut}");
        }
        assert_eq!(peek_header(""), Err(AssertionError::Malformed));
    }

    #[test]
    fn rejects_extra_segments() {
        let jwt = rsa_token(claims());
        assert_eq!(
            peek_header(&format!("{jwt}.")),
            Err(AssertionError::Malformed)
        );
        assert_eq!(
            peek_header(&format!("{jwt}.abc")),
            Err(AssertionError::Malformed)
        );
        assert_eq!(
            peek_header(&format!("{jwt}.a.b.c")),
            Err(AssertionError::Malformed)
        );
        assert_eq!(
            peek_header(&format!("{jwt}..")),
            Err(AssertionError::Encrypted)
        );
    }

    #[test]
    fn rejects_non_base64url() {
        let jwt = rsa_token(claims());
        let (header, payload, signature) = split3(&jwt);
        let cases = [
            format!("{header}.{payload}.{}+", &signature[1..]),
            format!("{header}.{payload}.{}/", &signature[1..]),
            format!("{header}=.{payload}.{signature}"),
            format!("{header}.{payload}=.{signature}"),
            format!("{header}.{payload} .{signature}"),
            // 342 + 3 characters: a length no base64 encoding has.
            format!("{header}.{payload}.{signature}AAA"),
            format!("{header}.{}.{signature}", payload.replace('e', "é")),
        ];
        for case in cases {
            assert_eq!(
                peek_header(&case),
                Err(AssertionError::NotBase64Url),
                "{case}"
            );
        }
    }

    #[test]
    fn rejects_jwe() {
        let header = b64(br#"{"alg":"RSA-OAEP-256","enc":"A256GCM","kid":"rsa-1"}"#);
        let jwe = format!(
            "{header}.{}.{}.{}.{}",
            b64(&[1; 256]),
            b64(&[2; 12]),
            b64(b"ciphertext"),
            b64(&[3; 16])
        );
        assert_eq!(peek_header(&jwe), Err(AssertionError::Encrypted));
        assert_eq!(peek_issuer(&jwe), None);
    }

    #[test]
    fn rejects_oversized() {
        assert_eq!(
            peek_header(&"a".repeat(MAX_ASSERTION_BYTES + 1)),
            Err(AssertionError::TooLarge)
        );
        let big = rsa_token(with(
            claims(),
            "padding",
            json!("x".repeat(MAX_ASSERTION_BYTES)),
        ));
        assert_eq!(check(&big), Err(AssertionError::TooLarge));
        let dots = ".".repeat(MAX_ASSERTION_BYTES);
        assert_eq!(peek_header(&dots), Err(AssertionError::Malformed));
    }

    // ---- claims ----

    #[test]
    fn rejects_payload_not_json_object() {
        for payload in ["[]", "1700000000", "null", "{\"iss\":", "\"claims\""] {
            let jwt = sign_raw(r#"{"alg":"RS384","kid":"rsa-1"}"#, payload, &*rs384());
            assert_eq!(
                check(&jwt),
                Err(AssertionError::NotJsonObject(JsonPart::Payload)),
                "{payload}"
            );
        }
    }

    #[test]
    fn rejects_duplicate_payload_member() {
        let good = claims();
        let body = good.as_object().unwrap();
        let mut payload = String::from(r#"{"iss":"attacker","#);
        payload.push_str(&serde_json::to_string(body).unwrap()[1..]);
        let jwt = sign_raw(r#"{"alg":"RS384","kid":"rsa-1"}"#, &payload, &*rs384());
        assert_eq!(
            check(&jwt),
            Err(AssertionError::DuplicateMember(JsonPart::Payload))
        );
        let nested = with(claims(), "cnf", json!({}));
        let text = nested
            .to_string()
            .replace(r#""cnf":{}"#, r#""cnf":{"x":1,"x":2}"#);
        let jwt = sign_raw(r#"{"alg":"RS384","kid":"rsa-1"}"#, &text, &*rs384());
        assert_eq!(
            check(&jwt),
            Err(AssertionError::DuplicateMember(JsonPart::Payload))
        );
    }

    #[test]
    fn rejects_missing_iss() {
        assert_eq!(
            claims_error(without(claims(), "iss")),
            AssertionError::MissingIssuer
        );
        assert_eq!(
            claims_error(with(claims(), "iss", json!(123))),
            AssertionError::MissingIssuer
        );
        assert_eq!(
            claims_error(with(claims(), "iss", json!(""))),
            AssertionError::MissingIssuer
        );
    }

    #[test]
    fn rejects_missing_sub() {
        assert_eq!(
            claims_error(without(claims(), "sub")),
            AssertionError::MissingSubject
        );
        assert_eq!(
            claims_error(with(claims(), "sub", json!([CLIENT]))),
            AssertionError::MissingSubject
        );
    }

    #[test]
    fn rejects_iss_not_sub() {
        assert_eq!(
            claims_error(with(claims(), "sub", json!("other"))),
            AssertionError::IssuerNotSubject
        );
        assert_eq!(
            claims_error(with(claims(), "iss", json!("other"))),
            AssertionError::IssuerNotSubject
        );
    }

    #[test]
    fn rejects_wrong_client() {
        let other = with(
            with(claims(), "iss", json!("client-999")),
            "sub",
            json!("client-999"),
        );
        assert_eq!(claims_error(other), AssertionError::WrongClient);
    }

    #[test]
    fn rejects_missing_aud() {
        assert_eq!(
            claims_error(without(claims(), "aud")),
            AssertionError::MissingAudience
        );
    }

    #[test]
    fn rejects_wrong_aud() {
        for aud in [
            json!("https://other.example.org/token"),
            json!("https://ward.example.org/token/"),
            json!([TOKEN_URL, "https://other.example.org/token"]),
            json!(["https://other.example.org/token", TOKEN_URL]),
            json!([]),
            json!([[TOKEN_URL]]),
            json!([TOKEN_URL, 1]),
            json!(null),
            json!(1),
            json!({"aud": TOKEN_URL}),
        ] {
            assert_eq!(
                claims_error(with(claims(), "aud", aud.clone())),
                AssertionError::WrongAudience,
                "{aud}"
            );
        }
    }

    #[test]
    fn rejects_missing_exp() {
        assert_eq!(
            claims_error(without(claims(), "exp")),
            AssertionError::MissingExpiry
        );
    }

    #[test]
    fn rejects_non_integer_numeric_claims() {
        for name in ["exp", "iat", "nbf"] {
            for value in [
                json!(1_700_000_060.5),
                json!(1_700_000_060.0),
                json!("1700000060"),
                json!(true),
                json!(null),
                json!([NOW + 60]),
            ] {
                let err = claims_error(with(claims(), name, value.clone()));
                assert_eq!(
                    err,
                    AssertionError::NonIntegerNumericDate(name),
                    "{name}={value}"
                );
                assert!(err.to_string().contains("numeric claims must be integers"));
            }
        }
        // The exponent form is a float to serde_json too.
        let payload = claims()
            .to_string()
            .replace(&format!("\"exp\":{}", NOW + 120), "\"exp\":1.70000012e9");
        let jwt = sign_raw(r#"{"alg":"RS384","kid":"rsa-1"}"#, &payload, &*rs384());
        assert_eq!(
            check(&jwt),
            Err(AssertionError::NonIntegerNumericDate("exp"))
        );
    }

    #[test]
    fn rejects_expired() {
        assert_eq!(
            claims_error(with(claims(), "exp", json!(NOW))),
            AssertionError::Expired
        );
        assert_eq!(
            claims_error(with(claims(), "exp", json!(NOW - 1))),
            AssertionError::Expired
        );
        assert_eq!(
            claims_error(with(claims(), "exp", json!(i64::MIN))),
            AssertionError::Expired
        );
    }

    #[test]
    fn rejects_exp_too_far_ahead() {
        for exp in [
            json!(NOW + MAX_LIFETIME_SECONDS + 1),
            json!(i64::MAX),
            json!(u64::MAX),
        ] {
            assert_eq!(
                claims_error(with(claims(), "exp", exp)),
                AssertionError::ExpiryTooFarAhead
            );
        }
    }

    #[test]
    fn rejects_nbf_in_future() {
        let payload = with(claims(), "nbf", json!(NOW + CLOCK_SKEW_SECONDS + 1));
        assert_eq!(claims_error(payload), AssertionError::NotYetValid);
        assert_eq!(
            claims_error(with(claims(), "nbf", json!(u64::MAX))),
            AssertionError::NotYetValid
        );
    }

    #[test]
    fn rejects_iat_in_future() {
        let payload = with(claims(), "iat", json!(NOW + CLOCK_SKEW_SECONDS + 1));
        assert_eq!(claims_error(payload), AssertionError::IssuedInFuture);
    }

    #[test]
    fn rejects_missing_jti() {
        assert_eq!(
            claims_error(without(claims(), "jti")),
            AssertionError::MissingJti
        );
    }

    #[test]
    fn rejects_invalid_jti() {
        for jti in [
            json!(""),
            json!("j".repeat(MAX_JTI_CHARS + 1)),
            json!("abc\ndef"),
            json!("abc\u{0}"),
            json!("\u{85}"),
            json!(12345),
            json!(null),
            json!(["a"]),
        ] {
            assert_eq!(
                claims_error(with(claims(), "jti", jti.clone())),
                AssertionError::InvalidJti,
                "{jti}"
            );
        }
        // 255 characters, multi-byte ones included, are fine.
        let long = "é".repeat(MAX_JTI_CHARS);
        assert_eq!(
            check(&rsa_token(with(claims(), "jti", json!(long.clone()))))
                .unwrap()
                .jti,
            long
        );
    }

    // ---- messages ----

    #[test]
    fn messages_fit_error_description() {
        let all = [
            AssertionError::TooLarge,
            AssertionError::Encrypted,
            AssertionError::Malformed,
            AssertionError::NotBase64Url,
            AssertionError::NotJsonObject(JsonPart::Header),
            AssertionError::DuplicateMember(JsonPart::Payload),
            AssertionError::CriticalHeader,
            AssertionError::MissingAlg,
            AssertionError::AlgNone,
            AssertionError::SymmetricAlg,
            AssertionError::AlgNotAllowed(echo("\"\\\u{1}é")),
            AssertionError::MissingKid,
            AssertionError::InvalidJku,
            AssertionError::HeaderMismatch,
            AssertionError::JkuMismatch,
            AssertionError::JkuWithoutRegisteredUrl,
            AssertionError::UnknownKid,
            AssertionError::AmbiguousKid,
            AssertionError::AlgNotAllowedForKey("RS384".into()),
            AssertionError::KeyUnusable("ES384".into()),
            AssertionError::BadSignature,
            AssertionError::MissingIssuer,
            AssertionError::MissingSubject,
            AssertionError::IssuerNotSubject,
            AssertionError::WrongClient,
            AssertionError::MissingAudience,
            AssertionError::WrongAudience,
            AssertionError::NonIntegerNumericDate("iat"),
            AssertionError::MissingExpiry,
            AssertionError::Expired,
            AssertionError::ExpiryTooFarAhead,
            AssertionError::NotYetValid,
            AssertionError::IssuedInFuture,
            AssertionError::MissingJti,
            AssertionError::InvalidJti,
        ];
        for err in all {
            let message = err.to_string();
            // RFC 6749 §5.2: error_description is %x20-21 / %x23-5B / %x5D-7E.
            assert!(
                message
                    .chars()
                    .all(|c| (' '..='~').contains(&c) && c != '"' && c != '\\'),
                "{message}"
            );
        }
    }

    // ---- never panics ----

    fn proptest_expectations(audiences: &[String]) -> Expectations<'_> {
        Expectations {
            client_id: CLIENT,
            audiences,
            registered_jku: Some(JWKS_URL),
            now: NOW,
        }
    }

    fn run_everything(jwt: &str) {
        let audiences = [TOKEN_URL.to_owned()];
        let expect = proptest_expectations(&audiences);
        let _ = peek_issuer(jwt);
        let header = peek_header(jwt).unwrap_or(AssertionHeader {
            alg: "RS384".into(),
            kid: "rsa-1".into(),
            jku: None,
        });
        let _ = verify(jwt, &header, &KEYS, &expect);
        for kid in ["rsa-1", "ec-1"] {
            for alg in ["RS384", "ES384", "PS512"] {
                let forced = AssertionHeader {
                    alg: alg.into(),
                    kid: kid.into(),
                    jku: None,
                };
                let _ = verify(jwt, &forced, &KEYS, &expect);
            }
        }
    }

    proptest! {
        #[test]
        fn peek_header_and_verify_never_panic_on_arbitrary_strings(jwt in any::<String>()) {
            run_everything(&jwt);
        }

        #[test]
        fn never_panic_on_three_base64url_parts(
            header in prop_oneof![
                Just(r#"{"alg":"RS384","kid":"rsa-1"}"#.to_owned()),
                Just(r#"{"alg":"ES384","kid":"ec-1"}"#.to_owned()),
                "\\{\"alg\":\"[A-Z0-9]{0,6}\",\"kid\":\"[a-z0-9-]{0,6}\"(,\"jku\":.{0,8})?\\}",
                ".{0,40}",
            ],
            payload in prop::collection::vec(any::<u8>(), 0..200),
            signature in prop::collection::vec(any::<u8>(), 0..600),
        ) {
            let jwt = format!("{}.{}.{}", b64(header.as_bytes()), b64(&payload), b64(&signature));
            run_everything(&jwt);
        }

        #[test]
        fn claim_checks_never_panic(payload in "\\{(\"(iss|sub|aud|exp|nbf|iat|jti)\":(-?[0-9]{1,25}(\\.[0-9])?|\"[^\"]{0,10}\"|\\[\\]|null|true|\\[\"[a-z]{0,3}\"\\]),?){0,8}\\}") {
            let audiences = [TOKEN_URL.to_owned()];
            if let Ok(map) = parse_object(payload.as_bytes(), JsonPart::Payload) {
                let _ = check_claims(&map, &proptest_expectations(&audiences));
            }
        }
    }
}
