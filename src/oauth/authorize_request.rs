//! The authorization request (RFC 6749 §4.1.1, RFC 7636, SMART App Launch 2.2, OIDC Core
//! §3.1.2.1), checked in a fixed order. The first checks decide whether redirecting to the
//! client is safe at all (client known and enabled, redirect URI registered); a failure there
//! is shown as a page and never redirected (RFC 9700 §4.1). Every later failure is sent back to
//! the client's redirect URI with `error`, `error_description`, `state` and `iss` (RFC 9207).
//!
//! Choices where the specs leave room (the safer option each time):
//! - `redirect_uri` is always required, even when the client registered only one.
//! - `code_challenge_method` must be given and be `S256`.
//! - `aud` is required (SMART) and must equal one of the configured FHIR base URLs byte for
//!   byte; `resource` (RFC 8707) is accepted as a synonym and must agree with `aud`.
//! - `request` and `request_uri` (signed request objects) are not supported and refused.
//! - only `response_mode=query` (the default for `code`) is accepted.
//!
//! Pure: the client comes in as a [`Registration`] view, so the fuzz crate compiles this file as
//! it is.

use serde::{Deserialize, Serialize};

use super::error::{truncate, OAuthError, Params};
use super::{pkce, redirect_uri};
use crate::clients::{ClientKind, GrantType, LaunchMode};
use crate::smart::scopes::{IdentityScope, ScopeSet};

pub const MAX_STATE_BYTES: usize = 2048;
pub const MAX_NONCE_BYTES: usize = 512;
pub const MAX_LOGIN_HINT_BYTES: usize = 256;
/// An OIDC `max_age` of more than ten years is not a real bound.
pub const MAX_MAX_AGE: i64 = 10 * 365 * 86_400;

/// OIDC `prompt` values Ward honours.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prompt {
    /// Fail rather than show any page.
    pub none: bool,
    /// Authenticate again even with a live session.
    pub login: bool,
    /// Show the consent page even when consent was remembered.
    pub consent: bool,
}

/// A request that passed every check, kept server-side while the person signs in and consents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorizeRequest {
    pub client_id: String,
    pub redirect_uri: String,
    /// The requested scopes, normalised (parsed and printed).
    pub scope: String,
    pub state: Option<String>,
    pub nonce: Option<String>,
    pub code_challenge: String,
    /// The FHIR base URL the token is for.
    pub aud: String,
    /// The EHR's `launch` value (EHR launch); resolved against stored launch contexts.
    pub launch: Option<String>,
    pub prompt: Prompt,
    pub max_age: Option<i64>,
    pub login_hint: Option<String>,
}

impl AuthorizeRequest {
    pub fn scopes(&self) -> ScopeSet {
        ScopeSet::parse(&self.scope).0
    }
}

/// Why a request was refused, and how to tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// Redirecting is not safe: show this on an error page.
    Page(String),
    /// Send the error to the client.
    Redirect {
        redirect_uri: String,
        error: OAuthError,
        state: Option<String>,
    },
}

/// What the checks read of the registered client (see `authorize.rs` for the conversion).
#[derive(Debug, Clone, Copy)]
pub struct Registration<'a> {
    pub client_id: &'a str,
    pub enabled: bool,
    pub kind: ClientKind,
    pub grant_types: &'a [GrantType],
    pub redirect_uris: &'a [String],
    pub launch_modes: &'a [LaunchMode],
}

/// Runs every check in order. `client` is the registration named by `client_id`, if any;
/// `fhir_bases` are the configured audiences.
pub fn validate(
    params: &Params,
    client: Option<Registration<'_>>,
    fhir_bases: &[String],
) -> Result<AuthorizeRequest, Rejection> {
    let page = |text: &str| Rejection::Page(text.to_owned());
    // 1. Who is asking, and where the answer may go.
    let Some(client_id) = params.get("client_id") else {
        return Err(page(
            "The request names no application (client_id is missing).",
        ));
    };
    let client = match client {
        Some(c) if c.client_id == client_id && c.enabled => c,
        _ => {
            return Err(page(
                "The application is not registered with Ward, or is disabled.",
            ))
        }
    };
    if !client.grant_types.contains(&GrantType::AuthorizationCode)
        || client.kind == ClientKind::ResourceServer
    {
        return Err(page(
            "This application does not sign people in through Ward.",
        ));
    }
    let Some(presented_uri) = params.get("redirect_uri") else {
        return Err(page("The request has no redirect_uri."));
    };
    let native = client.kind == ClientKind::Public;
    if !client
        .redirect_uris
        .iter()
        .any(|registered| redirect_uri::matches(registered, presented_uri, native))
    {
        return Err(page(
            "The redirect_uri is not one registered for this application.",
        ));
    }
    // 2. From here on, errors go back to the (now trusted) redirect URI.
    let state = params.get("state").map(str::to_owned);
    let fail = |error: OAuthError| Rejection::Redirect {
        redirect_uri: presented_uri.to_owned(),
        error,
        state: state.clone().filter(|s| s.len() <= MAX_STATE_BYTES),
    };
    if state.as_ref().is_some_and(|s| s.len() > MAX_STATE_BYTES) {
        return Err(fail(OAuthError::invalid_request(format!(
            "state is longer than {MAX_STATE_BYTES} bytes"
        ))));
    }
    if params.contains("request") {
        return Err(fail(OAuthError {
            code: "request_not_supported",
            description: "request objects are not supported".into(),
        }));
    }
    if params.contains("request_uri") {
        return Err(fail(OAuthError {
            code: "request_uri_not_supported",
            description: "request_uri is not supported".into(),
        }));
    }
    match params.get("response_type") {
        None => {
            return Err(fail(OAuthError::invalid_request(
                "response_type is required",
            )))
        }
        Some("code") => {}
        Some(_) => {
            return Err(fail(OAuthError::unsupported_response_type(
                "only the authorization code flow (response_type=code) is supported",
            )))
        }
    }
    if params.get("response_mode").is_some_and(|m| m != "query") {
        return Err(fail(OAuthError::invalid_request(
            "only response_mode=query is supported",
        )));
    }
    match params.get("code_challenge_method") {
        Some("S256") => {}
        Some("plain") => {
            return Err(fail(OAuthError::invalid_request(
                "code_challenge_method plain is not allowed; use S256",
            )))
        }
        _ => {
            return Err(fail(OAuthError::invalid_request(
                "PKCE is required: code_challenge_method=S256 and a code_challenge",
            )))
        }
    }
    let code_challenge = match params.get("code_challenge") {
        Some(c) if pkce::valid_challenge(c) => c.to_owned(),
        Some(_) => {
            return Err(fail(OAuthError::invalid_request(
                "code_challenge is not a base64url SHA-256 value",
            )))
        }
        None => {
            return Err(fail(OAuthError::invalid_request(
                "code_challenge is required",
            )))
        }
    };
    let Some(scope_text) = params.get("scope") else {
        return Err(fail(OAuthError::invalid_scope("scope is required")));
    };
    let scopes = ScopeSet::parse_strict(scope_text).map_err(|errors| {
        let first = errors.first().map(ToString::to_string).unwrap_or_default();
        fail(OAuthError::invalid_scope(truncate(&first, 160)))
    })?;
    if scopes.is_empty() {
        return Err(fail(OAuthError::invalid_scope("scope is empty")));
    }
    let aud = match (params.get("aud"), params.get("resource")) {
        (Some(a), Some(r)) if a != r => {
            return Err(fail(OAuthError::invalid_request(
                "aud and resource name different servers",
            )))
        }
        (Some(a), _) | (None, Some(a)) => a,
        (None, None) => {
            return Err(fail(OAuthError::invalid_request(
                "aud (the FHIR base URL) is required",
            )))
        }
    };
    if !fhir_bases.iter().any(|base| base == aud) {
        return Err(fail(OAuthError::invalid_request(
            "aud is not a FHIR server this authorization server protects",
        )));
    }
    let launch = params.get("launch").map(str::to_owned);
    let ehr_launch = scopes.has(IdentityScope::Launch);
    match (&launch, ehr_launch) {
        (Some(_), false) => {
            return Err(fail(OAuthError::invalid_scope(
                "an EHR launch must request the `launch` scope",
            )))
        }
        (None, true) => {
            return Err(fail(OAuthError::invalid_request(
                "the `launch` scope needs the `launch` parameter from the EHR",
            )))
        }
        (Some(value), true) if !valid_launch_value(value) => {
            return Err(fail(OAuthError::invalid_request("launch is malformed")))
        }
        _ => {}
    }
    let mode = if ehr_launch {
        LaunchMode::Ehr
    } else {
        LaunchMode::Standalone
    };
    if !client.launch_modes.contains(&mode) {
        return Err(fail(OAuthError::unauthorized_client(format!(
            "this application is not registered for {} launch",
            mode.as_str()
        ))));
    }
    let nonce = params.get("nonce").map(str::to_owned);
    if nonce.as_ref().is_some_and(|n| n.len() > MAX_NONCE_BYTES) {
        return Err(fail(OAuthError::invalid_request("nonce is too long")));
    }
    let prompt = parse_prompt(params.get("prompt")).map_err(&fail)?;
    let max_age = match params.get("max_age") {
        None => None,
        Some(text) => match text.parse::<i64>() {
            Ok(n) if (0..=MAX_MAX_AGE).contains(&n) && !text.starts_with('+') => Some(n),
            _ => {
                return Err(fail(OAuthError::invalid_request(
                    "max_age must be a non-negative number of seconds",
                )))
            }
        },
    };
    let login_hint = params.get("login_hint").map(str::to_owned);
    if login_hint
        .as_ref()
        .is_some_and(|h| h.len() > MAX_LOGIN_HINT_BYTES)
    {
        return Err(fail(OAuthError::invalid_request("login_hint is too long")));
    }
    Ok(AuthorizeRequest {
        client_id: client.client_id.to_owned(),
        redirect_uri: presented_uri.to_owned(),
        scope: scopes.to_string(),
        state,
        nonce,
        code_challenge,
        aud: aud.to_owned(),
        launch,
        prompt,
        max_age,
        login_hint,
    })
}

/// Launch values Ward hands out are 43-character base64url strings.
pub fn valid_launch_value(value: &str) -> bool {
    value.len() == 43
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn parse_prompt(raw: Option<&str>) -> Result<Prompt, OAuthError> {
    let mut prompt = Prompt::default();
    let Some(raw) = raw else {
        return Ok(prompt);
    };
    for value in raw.split(' ').filter(|v| !v.is_empty()) {
        match value {
            "none" => prompt.none = true,
            "login" => prompt.login = true,
            "consent" => prompt.consent = true,
            other => {
                return Err(OAuthError::invalid_request(format!(
                    "prompt `{}` is not supported (none, login, consent)",
                    truncate(other, 20)
                )))
            }
        }
    }
    if prompt.none && (prompt.login || prompt.consent) {
        return Err(OAuthError::invalid_request(
            "prompt=none cannot be combined with other values",
        ));
    }
    Ok(prompt)
}

/// The redirect URI with response parameters added to its query (keeping any it had).
pub fn redirect_with(redirect_uri: &str, pairs: &[(&str, &str)]) -> String {
    match url::Url::parse(redirect_uri) {
        Ok(mut url) => {
            {
                let mut query = url.query_pairs_mut();
                for (k, v) in pairs {
                    query.append_pair(k, v);
                }
            }
            url.to_string()
        }
        // Registered URIs are validated URLs; this only guards against a bug.
        Err(_) => redirect_uri.to_owned(),
    }
}

/// Where an error goes: the client's redirect URI with `error`, `error_description`, `state`
/// and `iss`.
pub fn error_redirect(
    redirect_uri: &str,
    error: &OAuthError,
    state: Option<&str>,
    issuer: &str,
) -> String {
    let mut pairs = vec![
        ("error", error.code),
        ("error_description", error.description.as_str()),
    ];
    if let Some(state) = state {
        pairs.push(("state", state));
    }
    pairs.push(("iss", issuer));
    redirect_with(redirect_uri, &pairs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clients::model::{validate as validate_client, ClientSpec};
    use crate::clients::Client;

    const BASE: &str = "https://fhir.example.org/r4";
    const CB: &str = "https://app.example.com/cb";
    const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

    fn client() -> Client {
        Client {
            client_id: "app".into(),
            settings: validate_client(&ClientSpec {
                name: "App".into(),
                kind: Some("public".into()),
                redirect_uris: vec![CB.into()],
                scope: "launch launch/patient openid fhirUser patient/*.rs".into(),
                ..ClientSpec::default()
            })
            .unwrap(),
            enabled: true,
            created_at: 0,
            updated_at: 0,
            version: 1,
        }
    }

    fn good() -> Vec<(&'static str, String)> {
        vec![
            ("client_id", "app".into()),
            ("redirect_uri", CB.into()),
            ("response_type", "code".into()),
            ("code_challenge_method", "S256".into()),
            ("code_challenge", CHALLENGE.into()),
            (
                "scope",
                "launch/patient openid patient/Observation.rs".into(),
            ),
            ("aud", BASE.into()),
            ("state", "xyz".into()),
        ]
    }

    fn run(
        pairs: &[(&str, String)],
        client: Option<&Client>,
    ) -> Result<AuthorizeRequest, Rejection> {
        let encoded = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs.iter().map(|(k, v)| (*k, v.as_str())))
            .finish();
        let params = Params::parse(encoded.as_bytes()).unwrap();
        validate(&params, client.map(Registration::from), &[BASE.to_owned()])
    }

    fn with(name: &'static str, value: Option<&str>) -> Vec<(&'static str, String)> {
        let mut pairs: Vec<_> = good().into_iter().filter(|(k, _)| *k != name).collect();
        if let Some(v) = value {
            pairs.push((name, v.to_owned()));
        }
        pairs
    }

    fn redirected(result: Result<AuthorizeRequest, Rejection>) -> (String, Option<String>) {
        match result {
            Err(Rejection::Redirect { error, state, .. }) => (error.code.to_owned(), state),
            other => panic!("expected a redirect, got {other:?}"),
        }
    }

    #[test]
    fn a_good_request_passes() {
        let c = client();
        let r = run(&good(), Some(&c)).unwrap();
        assert_eq!(r.aud, BASE);
        assert_eq!(r.state.as_deref(), Some("xyz"));
        assert!(r.scope.contains("patient/Observation.rs"));
        assert!(r.launch.is_none());
    }

    #[test]
    fn unsafe_to_redirect_failures_are_pages() {
        let c = client();
        let mut disabled = client();
        disabled.enabled = false;
        for (pairs, client) in [
            (with("client_id", None), Some(&c)),
            (good(), None),
            (good(), Some(&disabled)),
            (with("redirect_uri", None), Some(&c)),
            (
                with("redirect_uri", Some("https://app.example.com/cb2")),
                Some(&c),
            ),
            (
                with("redirect_uri", Some("https://app.example.com/cb?x=1")),
                Some(&c),
            ),
            (
                with("redirect_uri", Some("https://evil.example/cb")),
                Some(&c),
            ),
        ] {
            assert!(
                matches!(run(&pairs, client), Err(Rejection::Page(_))),
                "{pairs:?}"
            );
        }
    }

    #[test]
    fn later_failures_redirect_with_the_right_code_and_state() {
        let c = client();
        let cases: Vec<(Vec<(&str, String)>, &str)> = vec![
            (
                with("response_type", Some("token")),
                "unsupported_response_type",
            ),
            (with("response_type", None), "invalid_request"),
            (
                with("code_challenge_method", Some("plain")),
                "invalid_request",
            ),
            (with("code_challenge_method", None), "invalid_request"),
            (with("code_challenge", None), "invalid_request"),
            (with("code_challenge", Some("short")), "invalid_request"),
            (with("scope", None), "invalid_scope"),
            (
                with("scope", Some("patient/Observation.xyz")),
                "invalid_scope",
            ),
            (with("aud", None), "invalid_request"),
            (
                with("aud", Some("https://other.example/fhir")),
                "invalid_request",
            ),
            (
                with("aud", Some("https://fhir.example.org/r4/")),
                "invalid_request",
            ),
            (with("prompt", Some("none login")), "invalid_request"),
            (with("prompt", Some("select_account")), "invalid_request"),
            (with("max_age", Some("-1")), "invalid_request"),
            (with("max_age", Some("ten")), "invalid_request"),
            (with("response_mode", Some("fragment")), "invalid_request"),
            (with("request", Some("eyJ")), "request_not_supported"),
            (
                with("request_uri", Some("https://x")),
                "request_uri_not_supported",
            ),
            (with("launch", Some(&"a".repeat(43))), "invalid_scope"),
            (
                with("scope", Some("launch openid patient/*.rs")),
                "invalid_request",
            ),
        ];
        for (pairs, code) in cases {
            let (got, state) = redirected(run(&pairs, Some(&c)));
            assert_eq!(got, code, "{pairs:?}");
            assert_eq!(state.as_deref(), Some("xyz"));
        }
    }

    #[test]
    fn resource_is_a_synonym_of_aud_and_must_agree() {
        let c = client();
        let mut pairs = with("aud", None);
        pairs.push(("resource", BASE.into()));
        assert_eq!(run(&pairs, Some(&c)).unwrap().aud, BASE);
        let mut pairs = good();
        pairs.push(("resource", "https://other.example/fhir".into()));
        assert_eq!(redirected(run(&pairs, Some(&c))).0, "invalid_request");
    }

    #[test]
    fn an_ehr_launch_needs_scope_and_value() {
        let c = client();
        let mut pairs = with("scope", Some("launch openid patient/*.rs"));
        pairs.push(("launch", "b".repeat(43)));
        assert_eq!(run(&pairs, Some(&c)).unwrap().launch, Some("b".repeat(43)));
        let mut pairs = with("scope", Some("launch openid patient/*.rs"));
        pairs.push(("launch", "bad value".into()));
        assert_eq!(redirected(run(&pairs, Some(&c))).0, "invalid_request");
    }

    #[test]
    fn error_redirects_keep_the_query_and_add_iss() {
        let url = error_redirect(
            "https://app.example.com/cb?x=1",
            &OAuthError::access_denied("no"),
            Some("s t"),
            "https://ward.example",
        );
        assert_eq!(
            url,
            "https://app.example.com/cb?x=1&error=access_denied&error_description=no&state=s+t&iss=https%3A%2F%2Fward.example"
        );
    }
}
