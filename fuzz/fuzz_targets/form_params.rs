//! The form-encoded parameters of /token, /authorize, /introspect and /revoke, and the client
//! credentials read from them and from an `Authorization: Basic` header, on arbitrary input.
//!
//! Input: the first line is the `Authorization` header value (an empty line means none); the
//! rest is the `application/x-www-form-urlencoded` body. Besides "no panic" it asserts:
//! - `Params::parse` is deterministic and accepts exactly the UTF-8 input whose decoded pairs
//!   are valid UTF-8, have unique names and number at most `MAX_PARAMS` (an independent oracle
//!   over `url::form_urlencoded`); an accepted parse keeps every pair, in order;
//! - `get` treats an empty value as absent (RFC 6749 §3.1); the pairs round-trip through form
//!   encoding;
//! - `presented` picks exactly one method (RFC 6749 §2.3) and its result agrees with the input;
//! - a Basic header decodes per RFC 6749 §2.3.1 (form-urlencoded inside Basic): it matches an
//!   independent decoder, and credentials encoded the RFC way come back unchanged;
//! - the authorization request checks (`authorize_request::validate`, for a fixed public client)
//!   are deterministic; an accepted request satisfies every rule (PKCE S256, registered redirect
//!   URI, known `aud`, normalised non-empty scope, launch only with the `launch` scope, bounded
//!   `state`/`nonce`/`login_hint`/`max_age`, no `request`); an error is shown as a page exactly
//!   when the client or redirect URI is not trusted, and otherwise goes back to the presented
//!   redirect URI, whose own query survives, with `error`, `state` and `iss` appended.
#![no_main]

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use libfuzzer_sys::fuzz_target;
use url::form_urlencoded;
use ward_fuzz::clients::{ClientKind, GrantType, LaunchMode};
use ward_fuzz::oauth::assertion_claims::CLIENT_ASSERTION_TYPE;
use ward_fuzz::oauth::authorize_request::{
    error_redirect, redirect_with, valid_launch_value, validate, Registration, Rejection,
    MAX_LOGIN_HINT_BYTES, MAX_MAX_AGE, MAX_NONCE_BYTES, MAX_STATE_BYTES,
};
use ward_fuzz::oauth::client_credentials::{presented, Presented};
use ward_fuzz::oauth::error::{OAuthError, Params, MAX_PARAMS};
use ward_fuzz::oauth::{pkce, redirect_uri};
use ward_fuzz::smart::scopes::{IdentityScope, ScopeSet};

fuzz_target!(|data: &[u8]| {
    let (header, body) = match data.iter().position(|b| *b == b'\n') {
        Some(at) => (Some(&data[..at]), &data[at + 1..]),
        None => (None, data),
    };
    let params = check_parse(body);
    check_parse(data);
    let Some(params) = params else {
        return;
    };
    let header = header
        .map(String::from_utf8_lossy)
        .filter(|h| !h.is_empty());
    check_presented(header.as_deref(), &params);
    check_basic_round_trip(&params);
    check_authorize(&params);
});

/// Parses `encoded` and checks the result against the oracle; the parameters when accepted.
fn check_parse(encoded: &[u8]) -> Option<Params> {
    let parsed = Params::parse(encoded);
    let again = Params::parse(encoded);
    let expected = oracle(encoded);
    match (&parsed, &again) {
        (Ok(p), Ok(q)) => assert_eq!(owned(p), owned(q), "parse is deterministic"),
        (Err(e), Err(f)) => assert_eq!(e, f, "parse is deterministic"),
        _ => panic!("parse is deterministic"),
    }
    match parsed {
        Ok(params) => {
            let pairs = owned(&params);
            assert_eq!(
                Some(&pairs),
                expected.as_ref(),
                "accepted: oracle disagrees"
            );
            assert!(pairs.len() <= MAX_PARAMS);
            for (i, (name, value)) in pairs.iter().enumerate() {
                assert!(
                    pairs[..i].iter().all(|(n, _)| n != name),
                    "duplicated `{name}`"
                );
                let want = (!value.is_empty()).then_some(value.as_str());
                assert_eq!(params.get(name), want, "an empty value is absent");
                assert_eq!(params.contains(name), want.is_some());
                assert_eq!(params.require(name).ok(), want);
            }
            let encoded_again = form_urlencoded::Serializer::new(String::new())
                .extend_pairs(&pairs)
                .finish();
            let reparsed = Params::parse(encoded_again.as_bytes())
                .unwrap_or_else(|e| panic!("re-encoded parameters refused: {e}"));
            assert_eq!(
                owned(&reparsed),
                pairs,
                "pairs round-trip through form encoding"
            );
            Some(params)
        }
        Err(error) => {
            assert_eq!(expected, None, "refused ({error}): oracle accepts");
            assert_eq!(error.code, "invalid_request");
            assert_safe_description(&error);
            None
        }
    }
}

/// What `Params::parse` must accept, computed independently: UTF-8 input, decoded pairs that
/// were valid UTF-8 (no replacement character), unique names, at most `MAX_PARAMS` pairs.
fn oracle(encoded: &[u8]) -> Option<Vec<(String, String)>> {
    std::str::from_utf8(encoded).ok()?;
    let pairs: Vec<(String, String)> = form_urlencoded::parse(encoded)
        .map(|(n, v)| (n.into_owned(), v.into_owned()))
        .collect();
    let unique = pairs
        .iter()
        .enumerate()
        .all(|(i, (n, _))| pairs[..i].iter().all(|(m, _)| m != n));
    let lossless = pairs
        .iter()
        .all(|(n, v)| !n.contains('\u{FFFD}') && !v.contains('\u{FFFD}'));
    (unique && lossless && pairs.len() <= MAX_PARAMS).then_some(pairs)
}

fn owned(params: &Params) -> Vec<(String, String)> {
    params
        .pairs()
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
        .collect()
}

/// Error descriptions are short and carry no control characters.
fn assert_safe_description(error: &OAuthError) {
    assert!(error.description.chars().count() <= 200, "{error}");
    assert!(!error.description.chars().any(char::is_control), "{error}");
}

fn check_presented(header: Option<&str>, params: &Params) {
    let result = presented(header, params);
    assert_eq!(result, presented(header, params), "deterministic");
    let basic = header.map(decode_basic);
    let secret = params.get("client_secret");
    let assertion = params.get("client_assertion");
    let methods = [basic.is_some(), secret.is_some(), assertion.is_some()]
        .iter()
        .filter(|m| **m)
        .count();
    match result {
        Ok(Presented::SecretBasic { client_id, secret }) => {
            assert_eq!(
                basic.flatten(),
                Some((client_id.clone(), secret)),
                "Basic credentials decode per RFC 6749 §2.3.1"
            );
            assert_eq!(methods, 1);
            assert!(params.get("client_id").is_none_or(|id| id == client_id));
        }
        Ok(Presented::SecretPost { client_id, secret }) => {
            assert!(header.is_none() && assertion.is_none());
            assert_eq!(params.get("client_id"), Some(client_id.as_str()));
            assert_eq!(params.get("client_secret"), Some(secret.as_str()));
        }
        Ok(Presented::Assertion {
            client_id,
            assertion,
        }) => {
            assert!(header.is_none() && secret.is_none());
            assert_eq!(params.get("client_assertion"), Some(assertion.as_str()));
            assert_eq!(params.get("client_id"), client_id.as_deref());
            assert_eq!(
                params.get("client_assertion_type"),
                Some(CLIENT_ASSERTION_TYPE)
            );
        }
        Ok(Presented::None { client_id }) => {
            assert_eq!(methods, 0);
            assert_eq!(params.get("client_id"), Some(client_id.as_str()));
        }
        Err(error) => {
            assert!(
                error.code == "invalid_request" || error.code == "invalid_client",
                "{error}"
            );
            assert_safe_description(&error);
            // A well-formed Basic header alone, with no client_id to contradict it, is accepted.
            if let Some(Some((id, _))) = &basic {
                assert!(
                    methods > 1 || params.get("client_id").is_some_and(|f| f != id),
                    "well-formed Basic credentials refused: {error}"
                );
            }
        }
    }
}

/// RFC 6749 §2.3.1 read independently: `Basic` (any case), base64 of
/// `urlencode(client_id) ":" urlencode(secret)` where each side is form-urlencoded (`+` is a
/// space, `%XX` a byte, every other character itself, `&` and `=` included) and decodes to
/// UTF-8; both sides non-empty. Outer `None`: not Basic; inner `None`: malformed.
fn decode_basic(header: &str) -> Option<(String, String)> {
    let (scheme, value) = header.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let text = String::from_utf8(STANDARD.decode(value.trim()).ok()?).ok()?;
    let (id, secret) = text.split_once(':')?;
    let (id, secret) = (form_decode(id)?, form_decode(secret)?);
    (!id.is_empty() && !secret.is_empty()).then_some((id, secret))
}

fn form_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// Credentials encoded the RFC 6749 §2.3.1 way (form-urlencoded, then base64) come back
/// unchanged, whatever characters they hold; `%20` for a space works as well as `+`.
fn check_basic_round_trip(params: &Params) {
    let id = params.get("client_id").unwrap_or("app");
    let secret = params
        .get("client_secret")
        .or(params.get("client_assertion"))
        .unwrap_or("s3cret: &=+%");
    let empty = Params::default();
    for space in ["+", "%20"] {
        let encode = |s: &str| {
            form_urlencoded::byte_serialize(s.as_bytes())
                .collect::<String>()
                .replace('+', space)
        };
        let header = format!(
            "Basic {}",
            STANDARD.encode(format!("{}:{}", encode(id), encode(secret)))
        );
        assert_eq!(
            presented(Some(&header), &empty),
            Ok(Presented::SecretBasic {
                client_id: id.to_owned(),
                secret: secret.to_owned()
            }),
            "{header}"
        );
    }
}

const CLIENT_ID: &str = "app";
const BASE: &str = "https://fhir.example.org/r4";
const ISSUER: &str = "https://ward.example.org";

fn check_authorize(params: &Params) {
    let redirect_uris = [
        "https://app.example.com/cb?from=ward".to_owned(),
        "http://127.0.0.1/cb".to_owned(),
    ];
    let client = Registration {
        client_id: CLIENT_ID,
        enabled: true,
        kind: ClientKind::Public,
        grant_types: &[GrantType::AuthorizationCode, GrantType::RefreshToken],
        redirect_uris: &redirect_uris,
        launch_modes: &[LaunchMode::Ehr, LaunchMode::Standalone],
    };
    let bases = [BASE.to_owned()];
    assert!(matches!(
        validate(params, None, &bases),
        Err(Rejection::Page(_))
    ));
    let result = validate(params, Some(client), &bases);
    assert_eq!(
        result,
        validate(params, Some(client), &bases),
        "deterministic"
    );
    let presented_uri = params.get("redirect_uri");
    let trusted = params.get("client_id") == Some(CLIENT_ID)
        && presented_uri.is_some_and(|p| {
            redirect_uris
                .iter()
                .any(|r| redirect_uri::matches(r, p, true))
        });
    let state = params.get("state");
    match result {
        Ok(request) => {
            assert!(trusted);
            assert_eq!(request.client_id, CLIENT_ID);
            assert_eq!(Some(request.redirect_uri.as_str()), presented_uri);
            assert_eq!(params.get("response_type"), Some("code"));
            assert!(params.get("response_mode").is_none_or(|m| m == "query"));
            assert_eq!(params.get("code_challenge_method"), Some("S256"));
            assert!(pkce::valid_challenge(&request.code_challenge));
            assert_eq!(
                params.get("code_challenge"),
                Some(request.code_challenge.as_str())
            );
            assert!(!params.contains("request") && !params.contains("request_uri"));
            let (scopes, errors) = ScopeSet::parse(&request.scope);
            assert!(errors.is_empty() && !scopes.is_empty(), "{}", request.scope);
            assert_eq!(scopes.to_string(), request.scope, "the scope is normalised");
            assert_eq!(request.aud, BASE);
            for name in ["aud", "resource"] {
                assert!(params.get(name).is_none_or(|v| v == BASE));
            }
            assert_eq!(request.state.as_deref(), state);
            assert!(state.is_none_or(|s| s.len() <= MAX_STATE_BYTES));
            assert_eq!(request.launch.is_some(), scopes.has(IdentityScope::Launch));
            assert!(request.launch.as_deref().is_none_or(valid_launch_value));
            assert!(request
                .nonce
                .as_ref()
                .is_none_or(|n| n.len() <= MAX_NONCE_BYTES));
            assert!(request
                .login_hint
                .as_ref()
                .is_none_or(|h| h.len() <= MAX_LOGIN_HINT_BYTES));
            assert!(request
                .max_age
                .is_none_or(|a| (0..=MAX_MAX_AGE).contains(&a)));
            let prompt = request.prompt;
            assert!(!(prompt.none && (prompt.login || prompt.consent)));
            let code = "c0de";
            let mut pairs = vec![("code", code)];
            if let Some(state) = &request.state {
                pairs.push(("state", state));
            }
            pairs.push(("iss", ISSUER));
            check_appended(
                &request.redirect_uri,
                &redirect_with(&request.redirect_uri, &pairs),
                &pairs,
            );
        }
        Err(Rejection::Page(text)) => {
            assert!(!trusted, "a trusted redirect URI gets the error: {text}");
        }
        Err(Rejection::Redirect {
            redirect_uri,
            error,
            state: sent_state,
        }) => {
            assert!(trusted);
            assert_eq!(Some(redirect_uri.as_str()), presented_uri);
            assert_eq!(
                sent_state.as_deref(),
                state.filter(|s| s.len() <= MAX_STATE_BYTES)
            );
            assert!(
                [
                    "invalid_request",
                    "invalid_scope",
                    "unsupported_response_type",
                    "unauthorized_client",
                    "request_not_supported",
                    "request_uri_not_supported",
                ]
                .contains(&error.code),
                "{error}"
            );
            assert_safe_description(&error);
            let location = error_redirect(&redirect_uri, &error, sent_state.as_deref(), ISSUER);
            let mut pairs = vec![
                ("error", error.code),
                ("error_description", error.description.as_str()),
            ];
            if let Some(state) = &sent_state {
                pairs.push(("state", state));
            }
            pairs.push(("iss", ISSUER));
            check_appended(&redirect_uri, &location, &pairs);
        }
    }
}

/// `location` is `base` with `pairs` appended to its query, which keeps its own parameters.
fn check_appended(base: &str, location: &str, pairs: &[(&str, &str)]) {
    let query = |text: &str| -> Vec<(String, String)> {
        url::Url::parse(text)
            .unwrap_or_else(|e| panic!("{text}: {e}"))
            .query_pairs()
            .into_owned()
            .collect()
    };
    let mut expected = query(base);
    expected.extend(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    assert_eq!(query(location), expected, "{location}");
    let (mut before, mut after) = (
        url::Url::parse(base).unwrap(),
        url::Url::parse(location).unwrap(),
    );
    before.set_query(None);
    after.set_query(None);
    assert_eq!(before, after, "only the query changes");
}
