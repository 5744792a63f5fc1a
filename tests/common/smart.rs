//! The SMART App Launch test kit: a Ward with a FHIR base configured, clients and users
//! registered through Ward's own services, a cookie-jar browser that follows Ward's redirects
//! and signs in when asked, PKCE values, token requests, and an `openidconnect` HTTP adapter.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use reqwest::StatusCode;
use serde_json::Value;
use sha2::{Digest, Sha256};
use ward::audit::AuditContext;
use ward::authz::users::{self, NewUser};
use ward::clients::{self, model::ClientSpec};

use super::browser::{Browser, Page};
use super::{Backend, TestApp};

pub const FHIR: &str = "https://fhir.example.org/r4";
pub const CALLBACK: &str = "https://app.example.com/callback";
pub const PASSWORD: &str = "violet tractor sings at dawn";

pub async fn smart_app(backend: Backend) -> Option<TestApp> {
    TestApp::builder(backend)
        .env("WARD_FHIR_BASE", FHIR)
        .start()
        .await
}

/// Registers a client from a JSON registration; returns (client_id, secret).
pub fn register(app: &TestApp, spec: Value) -> (String, Option<String>) {
    let spec: ClientSpec = serde_json::from_value(spec).expect("client spec");
    let settings = clients::model::validate(&spec).expect("valid registration");
    let created = clients::register(
        &mut app.conn(),
        app.state.clock.as_ref(),
        &AuditContext::cli(),
        spec.client_id.clone(),
        settings,
    )
    .expect("registered");
    (created.client.client_id, created.secret)
}

pub fn add_user(app: &TestApp, username: &str, roles: &[&str], fhir_user: Option<&str>) {
    users::create(
        &mut app.conn(),
        app.state.clock.as_ref(),
        &AuditContext::cli(),
        NewUser {
            username: username.into(),
            display_name: Some(format!("Display {username}")),
            fhir_user: fhir_user.map(str::to_owned),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            password_hash: Some(ward::authn::password::hash_blocking(PASSWORD).unwrap()),
        },
    )
    .expect("user created");
}

/// A role like `physician` but without required MFA, so flows need only a password.
/// Sets `role`'s scope ceiling in the database, as an admin at the CLI would.
pub fn set_role_ceiling(app: &TestApp, role: &str, ceiling: &str) {
    ward::authz::roles::update(
        &mut app.conn(),
        app.state.clock.as_ref(),
        &AuditContext::cli(),
        role,
        ward::authz::roles::RoleChanges {
            scope_ceiling: Some(ceiling.into()),
            ..Default::default()
        },
    )
    .unwrap();
}

pub fn add_clinician_role(app: &TestApp) {
    ward::authz::roles::create(
        &mut app.conn(),
        app.state.clock.as_ref(),
        &AuditContext::cli(),
        "clinician",
        ward::authz::roles::RoleChanges {
            description: Some("Test clinician without MFA".into()),
            scope_ceiling: Some("user/*.cruds".into()),
            mfa_required: Some(false),
            break_glass: Some(false),
            passwordless: Some(false),
            expected_version: None,
        },
    )
    .expect("role created");
}

/// (verifier, S256 challenge).
pub fn pkce() -> (String, String) {
    let verifier = ward::crypto::random_token(32);
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

/// Where following Ward's redirects ended.
#[derive(Debug)]
pub enum Landing {
    /// The consent page.
    Consent(Page),
    /// The patient picker.
    Picker(Page),
    /// A redirect to the app: the query parameters of its callback.
    Callback(HashMap<String, String>),
    /// Any other page (errors).
    Other(Page),
}

impl std::fmt::Debug for Page {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {:?}\n{}", self.status, self.location, self.body)
    }
}

impl Landing {
    pub fn callback(self) -> HashMap<String, String> {
        match self {
            Landing::Callback(q) => q,
            other => panic!("expected a redirect to the app, got {other:?}"),
        }
    }
    pub fn consent(self) -> Page {
        match self {
            Landing::Consent(p) => p,
            other => panic!("expected the consent page, got {other:?}"),
        }
    }
    pub fn picker(self) -> Page {
        match self {
            Landing::Picker(p) => p,
            other => panic!("expected the patient picker, got {other:?}"),
        }
    }
    pub fn other(self) -> Page {
        match self {
            Landing::Other(p) => p,
            other => panic!("expected an error page, got {other:?}"),
        }
    }
}

pub fn query_of(url: &str) -> HashMap<String, String> {
    url::Url::parse(url)
        .expect("absolute URL")
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// The authorization URL for `params` (absolute).
pub fn authorize_url(app: &TestApp, params: &[(&str, &str)]) -> String {
    let query = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params)
        .finish();
    app.url(&format!("/authorize?{query}"))
}

/// Follows redirects from `start` (a Ward URL), signing in with `login` when sent to the
/// sign-in page, until the consent page, the picker, another page, or the app's callback.
pub async fn follow(browser: &Browser, start: &str, login: Option<(&str, &str)>) -> Landing {
    let mut next = start.to_owned();
    for _ in 0..12 {
        let path = next.strip_prefix(&browser.base).unwrap_or(&next).to_owned();
        if !path.starts_with('/') {
            return Landing::Callback(query_of(&next));
        }
        let page = browser.get(&path).await;
        if page.status == StatusCode::SEE_OTHER || page.status == StatusCode::FOUND {
            let location = page.location.clone().expect("redirect location");
            if location.starts_with("/login") {
                if let Some((user, password)) = login {
                    let form = browser.get(&location).await;
                    assert_eq!(form.status, StatusCode::OK, "{}", form.body);
                    let return_to = form.field("return_to").unwrap_or_default();
                    let return_to = return_to.replace("&amp;", "&");
                    let done = browser
                        .post(
                            "/login",
                            &[
                                ("username", user),
                                ("password", password),
                                ("csrf", &form.csrf()),
                                ("return_to", &return_to),
                            ],
                        )
                        .await;
                    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.body);
                    next = done.location.expect("after sign-in");
                    continue;
                }
                return Landing::Other(page);
            }
            next = location;
            continue;
        }
        if page.body.contains("id=\"consent-form\"") {
            return Landing::Consent(page);
        }
        if page.body.contains("Choose a patient") {
            return Landing::Picker(page);
        }
        return Landing::Other(page);
    }
    panic!("too many redirects from {start}");
}

/// Submits the consent page with its defaults plus `extra` fields (approve).
pub async fn approve(browser: &Browser, consent: &Page, extra: &[(&str, &str)]) -> Landing {
    let body = consent_form(consent, "approve", extra, true);
    submit_consent(browser, &body).await
}

pub async fn deny(browser: &Browser, consent: &Page) -> Landing {
    let body = consent_form(consent, "deny", &[], true);
    submit_consent(browser, &body).await
}

/// The form body: every `include` box ticked unless `keep_includes` is false, plus extras.
pub fn consent_form(
    consent: &Page,
    decision: &str,
    extra: &[(&str, &str)],
    keep_includes: bool,
) -> String {
    let mut pairs: Vec<(String, String)> = vec![
        ("csrf".into(), consent.csrf()),
        (
            "request".into(),
            consent.field("request").expect("request field"),
        ),
        ("decision".into(), decision.into()),
    ];
    pairs.push((
        "patient".into(),
        consent.field("patient").unwrap_or_default(),
    ));
    if keep_includes {
        for piece in consent.body.split("name=\"include\" value=\"").skip(1) {
            let value = piece.split('"').next().unwrap_or_default();
            pairs.push(("include".into(), value.to_owned()));
        }
        if consent.body.contains("name=\"offline\"") {
            pairs.push(("offline".into(), "yes".into()));
        }
    }
    pairs.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

pub async fn submit_consent(browser: &Browser, body: &str) -> Landing {
    let response = browser
        .client
        .post(format!("{}/authorize/consent", browser.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body.to_owned())
        .send()
        .await
        .expect("consent POST");
    let status = response.status();
    let location = response
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let request_id = response
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let text = response.text().await.unwrap_or_default();
    match location {
        Some(l) if status == StatusCode::SEE_OTHER => follow(browser, &l, None).await,
        _ => Landing::Other(Page {
            status,
            location: None,
            body: text,
            set_cookies: Vec::new(),
            request_id,
        }),
    }
}

/// POSTs a form to the token endpoint, optionally with HTTP Basic credentials.
pub async fn token(
    app: &TestApp,
    form: &[(&str, &str)],
    basic: Option<(&str, &str)>,
) -> (StatusCode, Value) {
    post_form(app, "/token", form, basic).await
}

pub async fn post_form(
    app: &TestApp,
    path: &str,
    form: &[(&str, &str)],
    basic: Option<(&str, &str)>,
) -> (StatusCode, Value) {
    let mut request = app.client.post(app.url(path)).form(form);
    if let Some((id, secret)) = basic {
        request = request.basic_auth(id, Some(secret));
    }
    let response = request.send().await.expect("POST");
    let status = response.status();
    if status.is_success() {
        assert_eq!(response.headers()["cache-control"], "no-store");
    }
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

/// Counts rows of a table, for "nothing was issued or written" assertions.
pub fn count(app: &TestApp, table: &str) -> i64 {
    use diesel::prelude::*;
    use ward::store::schema::*;
    let conn = &mut *app.conn();
    match table {
        "access_tokens" => access_tokens::table.count().get_result(conn),
        "refresh_tokens" => refresh_tokens::table.count().get_result(conn),
        "authorization_codes" => authorization_codes::table.count().get_result(conn),
        "token_families" => token_families::table.count().get_result(conn),
        "auth_requests" => auth_requests::table.count().get_result(conn),
        "launch_contexts" => launch_contexts::table.count().get_result(conn),
        "consents" => consents::table.count().get_result(conn),
        "assertion_jtis" => assertion_jtis::table.count().get_result(conn),
        other => panic!("unknown table {other}"),
    }
    .expect("count")
}

pub fn audit_actions(app: &TestApp, action: &str) -> Vec<Value> {
    ward::store::audit_events::list(&mut app.conn(), Some(action), 1000)
        .unwrap()
        .iter()
        .map(|e| serde_json::from_str(&e.details).unwrap())
        .collect()
}

#[derive(Debug)]
pub struct OidcHttpError(pub String);

impl std::fmt::Display for OidcHttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for OidcHttpError {}

type OidcFuture =
    Pin<Box<dyn Future<Output = Result<openidconnect::HttpResponse, OidcHttpError>> + Send>>;

/// The `openidconnect` crate's HTTP client, over the same reqwest Ward's tests use.
pub fn oidc_http() -> impl Fn(openidconnect::HttpRequest) -> OidcFuture {
    let client = super::http_client();
    move |request: openidconnect::HttpRequest| {
        let client = client.clone();
        Box::pin(async move {
            let err = |e: &dyn std::fmt::Display| OidcHttpError(e.to_string());
            let method = reqwest::Method::from_bytes(request.method().as_str().as_bytes())
                .map_err(|e| err(&e))?;
            let mut builder = client.request(method, request.uri().to_string());
            for (name, value) in request.headers() {
                builder = builder.header(name.as_str(), value.as_bytes());
            }
            let response = builder
                .body(request.body().clone())
                .send()
                .await
                .map_err(|e| err(&e))?;
            let mut out =
                openidconnect::http::Response::builder().status(response.status().as_u16());
            for (name, value) in response.headers() {
                out = out.header(name.as_str(), value.as_bytes());
            }
            let body = response.bytes().await.map_err(|e| err(&e))?.to_vec();
            out.body(body).map_err(|e| err(&e))
        }) as OidcFuture
    }
}

/// Redeems a code for a public client: (status, token response).
pub async fn redeem(
    app: &TestApp,
    code: &str,
    verifier: &str,
    client_id: &str,
) -> (StatusCode, Value) {
    token(
        app,
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", CALLBACK),
            ("code_verifier", verifier),
            ("client_id", client_id),
        ],
        None,
    )
    .await
}

/// A whole standalone launch for a public client: authorize (signing in with `login` when
/// asked), approve everything on the consent page (or use remembered consent), redeem the code;
/// returns the token response.
pub async fn code_flow(
    app: &TestApp,
    browser: &Browser,
    client_id: &str,
    scope: &str,
    login: Option<(&str, &str)>,
) -> Value {
    let (verifier, challenge) = pkce();
    let params = [
        ("response_type", "code"),
        ("client_id", client_id),
        ("redirect_uri", CALLBACK),
        ("scope", scope),
        ("state", "st-123"),
        ("aud", FHIR),
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
    ];
    let callback = match follow(browser, &authorize_url(app, &params), login).await {
        Landing::Consent(page) => approve(browser, &page, &[]).await.callback(),
        other => other.callback(),
    };
    assert_eq!(callback["state"], "st-123");
    assert_eq!(callback["iss"], app.base);
    let (status, body) = redeem(app, &callback["code"], &verifier, client_id).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// Refreshes a public client's token: (status, token response).
pub async fn refresh(app: &TestApp, refresh_token: &str, client_id: &str) -> (StatusCode, Value) {
    token(
        app,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
            ("client_id", client_id),
        ],
        None,
    )
    .await
}
