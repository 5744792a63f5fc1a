//! The admin JSON API test kit: a backend service that signs `private_key_jwt` assertions and
//! gets admin-API tokens, a caller that speaks JSON to `/admin/api/v1/…` with a bearer token or
//! a signed-in admin's session (plus `X-CSRF-Token`), an admin signed in with TOTP, and row
//! counts for "nothing was written" assertions.

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use josekit::jws::{JwsSigner, ES384};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use ward::authn::totp::Totp;
use ward::clock::{Clock, ManualClock};

use super::browser::{base32_decode, value_by_id, Browser};
use super::smart::{register, token, FHIR, PASSWORD};
use super::{Backend, TestApp};

/// Where the admin API lives.
pub const API: &str = "/admin/api/v1";

pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_secs() as i64
}

/// A Ward with a FHIR base and a manual clock (starting now), plus `env`.
pub async fn admin_app(
    backend: Backend,
    env: &[(&str, &str)],
) -> Option<(TestApp, Arc<ManualClock>)> {
    let clock = Arc::new(ManualClock::at_secs(unix_now()));
    let mut builder = TestApp::builder(backend)
        .env("WARD_FHIR_BASE", FHIR)
        .manual_clock(clock.clone());
    for (k, v) in env {
        builder = builder.env(k, v);
    }
    Some((builder.start().await?, clock))
}

/// A JWT signed over exactly these header and payload members (integer `exp`/`iat`).
pub fn sign_raw(header: &Value, payload: &Value, signer: &dyn JwsSigner) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(payload.to_string())
    );
    let signature = URL_SAFE_NO_PAD.encode(signer.sign(input.as_bytes()).expect("sign"));
    format!("{input}.{signature}")
}

/// A confidential-asymmetric backend service with an inline ES384 JWKS.
pub struct Machine {
    pub client_id: String,
    signer: Box<dyn JwsSigner>,
}

impl Machine {
    /// Registers the service (through Ward's registry, not the API) with `scope` as its allowance.
    pub fn register(app: &TestApp, client_id: &str, scope: &str) -> Self {
        let pair = ES384.generate_key_pair().expect("key pair");
        let mut jwk = pair.to_jwk_public_key();
        jwk.set_key_id("es-1");
        jwk.set_algorithm("ES384");
        let (client_id, _) = register(
            app,
            json!({"client_id": client_id, "name": format!("Service {client_id}"),
                   "kind": "confidential-asymmetric", "scope": scope,
                   "jwks": {"keys": [serde_json::to_value(&jwk).expect("jwk")]}}),
        );
        Self {
            client_id,
            signer: Box::new(
                ES384
                    .signer_from_jwk(&pair.to_jwk_private_key())
                    .expect("signer"),
            ),
        }
    }

    /// A fresh client assertion for Ward's token endpoint, at the app's clock.
    pub fn assertion(&self, app: &TestApp) -> String {
        let now = app.state.clock.now_secs();
        sign_raw(
            &json!({"alg": "ES384", "kid": "es-1", "typ": "JWT"}),
            &json!({
                "iss": self.client_id, "sub": self.client_id, "aud": app.url("/token"),
                "exp": now + 240, "iat": now, "jti": ward::crypto::random_token(12),
            }),
            self.signer.as_ref(),
        )
    }

    /// `client_credentials` for `scope`: (status, token response).
    pub async fn request_token(&self, app: &TestApp, scope: &str) -> (StatusCode, Value) {
        token(
            app,
            &[
                ("grant_type", "client_credentials"),
                ("scope", scope),
                (
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                ),
                ("client_assertion", &self.assertion(app)),
            ],
            None,
        )
        .await
    }

    /// An access token for `scope` (which must be granted).
    pub async fn access_token(&self, app: &TestApp, scope: &str) -> String {
        let (status, body) = self.request_token(app, scope).await;
        assert_eq!(status, StatusCode::OK, "token for {scope}: {body}");
        body["access_token"]
            .as_str()
            .expect("access_token")
            .to_owned()
    }

    /// An admin API caller holding a fresh token for `scope`.
    pub async fn api(&self, app: &TestApp, scope: &str) -> Api {
        Api::bearer(app, &self.access_token(app, scope).await)
    }
}

/// One admin API answer.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub content_type: String,
    pub etag: Option<String>,
    pub location: Option<String>,
    pub www_authenticate: Option<String>,
    /// Ward's `X-Request-Id` for this response (what its audit events record).
    pub request_id: Option<String>,
    pub text: String,
    /// The body as JSON (`Null` when empty or not JSON).
    pub body: Value,
}

impl Reply {
    /// Asserts an RFC 9457 problem with this status; returns its type's last segment.
    pub fn problem(&self, status: StatusCode) -> String {
        assert_eq!(self.status, status, "{}", self.text);
        assert!(
            self.content_type.starts_with("application/problem+json"),
            "content type {} for {}",
            self.content_type,
            self.text
        );
        assert_eq!(self.body["status"], status.as_u16(), "{}", self.text);
        assert!(self.body["title"].is_string(), "{}", self.text);
        let kind = self.body["type"].as_str().expect("problem type");
        kind.rsplit('/').next().unwrap_or_default().to_owned()
    }

    /// The fields named in `errors[]`.
    pub fn error_fields(&self) -> Vec<String> {
        self.body["errors"]
            .as_array()
            .map(|errors| {
                errors
                    .iter()
                    .filter_map(|e| e["field"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Asserts a 400 invalid-input problem naming `field`.
    pub fn invalid(&self, field: &str) {
        assert_eq!(self.problem(StatusCode::BAD_REQUEST), "invalid-input");
        assert!(
            self.error_fields().iter().any(|f| f == field),
            "expected an error for `{field}` in {}",
            self.text
        );
        assert!(
            self.body["errors"]
                .as_array()
                .is_some_and(|e| e.iter().all(|e| e["message"].is_string())),
            "{}",
            self.text
        );
    }

    /// Asserts a 2xx JSON answer with this status.
    pub fn ok(&self, status: StatusCode) -> &Value {
        assert_eq!(self.status, status, "{}", self.text);
        if status != StatusCode::NO_CONTENT {
            assert!(
                self.content_type.starts_with("application/json"),
                "{}",
                self.content_type
            );
        }
        &self.body
    }
}

/// A caller of the admin API: anonymous, with a bearer token, or with a browser's session.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
    pub bearer: Option<String>,
    pub csrf: Option<String>,
}

impl Api {
    pub fn anonymous(app: &TestApp) -> Self {
        Self {
            base: app.base.clone(),
            http: app.client.clone(),
            bearer: None,
            csrf: None,
        }
    }

    pub fn bearer(app: &TestApp, token: &str) -> Self {
        Self {
            bearer: Some(token.to_owned()),
            ..Self::anonymous(app)
        }
    }

    /// The browser's session cookie, and `csrf` (when given) as `X-CSRF-Token`.
    pub fn session(browser: &Browser, csrf: Option<&str>) -> Self {
        Self {
            base: browser.base.clone(),
            http: browser.client.clone(),
            bearer: None,
            csrf: csrf.map(str::to_owned),
        }
    }

    /// A request to `path` under the API, with this caller's credentials.
    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let mut request = self
            .http
            .request(method, format!("{}{API}{path}", self.base));
        if let Some(token) = &self.bearer {
            request = request.bearer_auth(token);
        }
        if let Some(csrf) = &self.csrf {
            request = request.header("x-csrf-token", csrf);
        }
        request
    }

    pub async fn send(request: reqwest::RequestBuilder) -> Reply {
        let response = request.send().await.expect("admin API request");
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let (status, content_type) = (
            response.status(),
            header("content-type").unwrap_or_default(),
        );
        let (etag, location, www_authenticate, request_id) = (
            header("etag"),
            header("location"),
            header("www-authenticate"),
            header("x-request-id"),
        );
        let text = response.text().await.unwrap_or_default();
        Reply {
            status,
            content_type,
            etag,
            location,
            www_authenticate,
            request_id,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
            text,
        }
    }

    pub async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Reply {
        let mut request = self.request(method, path);
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        Self::send(request).await
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.call(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Reply {
        self.call(Method::POST, path, Some(body)).await
    }

    /// A POST without a body.
    pub async fn post_empty(&self, path: &str) -> Reply {
        self.call(Method::POST, path, None).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Reply {
        self.call(Method::PUT, path, Some(body)).await
    }

    pub async fn put_if_match(&self, path: &str, body: &Value, etag: &str) -> Reply {
        self.send_if_match(Method::PUT, path, body, etag).await
    }

    /// Any method with a JSON body and `If-Match`.
    pub async fn send_if_match(
        &self,
        method: Method,
        path: &str,
        body: &Value,
        etag: &str,
    ) -> Reply {
        Self::send(
            self.request(method, path)
                .header("content-type", "application/json")
                .header("if-match", etag)
                .body(body.to_string()),
        )
        .await
    }

    /// A request with a raw body (malformed JSON, NDJSON).
    pub async fn raw(&self, method: Method, path: &str, content_type: &str, body: &str) -> Reply {
        Self::send(
            self.request(method, path)
                .header("content-type", content_type)
                .body(body.to_owned()),
        )
        .await
    }

    pub async fn delete(&self, path: &str) -> Reply {
        self.call(Method::DELETE, path, None).await
    }
}

/// A signed-in admin: the browser (session cookie), its TOTP secret and its CSRF token.
pub struct AdminSession {
    pub browser: Browser,
    pub secret: Vec<u8>,
    pub csrf: String,
}

impl AdminSession {
    /// The session as an API caller, with `X-CSRF-Token`.
    pub fn api(&self) -> Api {
        Api::session(&self.browser, Some(&self.csrf))
    }

    /// The session as an API caller that does not send its CSRF token.
    pub fn api_without_csrf(&self) -> Api {
        Api::session(&self.browser, None)
    }
}

/// The CSRF token of the browser's session, from the `/account` page's forms.
pub async fn session_csrf(browser: &Browser) -> String {
    let account = browser.get("/account").await;
    assert_eq!(account.status, StatusCode::OK, "{}", account.body);
    account.csrf()
}

/// What enrolling a TOTP factor through the account page gave.
pub struct TotpEnrolment {
    pub secret: Vec<u8>,
    /// The code that confirmed the enrolment (its time step is now spent).
    pub code: String,
    /// The ten recovery codes, shown once.
    pub recovery: Vec<String>,
    /// The page that showed them.
    pub page: crate::common::browser::Page,
}

/// Enrols TOTP for a signed-in (or enrolment-stage) browser through `/account/mfa/totp`.
pub async fn enrol_totp(browser: &Browser, clock: &ManualClock) -> TotpEnrolment {
    let page = browser.get("/account/mfa/totp").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("<svg"), "QR code rendered inline");
    let secret = base32_decode(&value_by_id(&page.body, "secret").expect("key shown"));
    let code = Totp::new(&secret)
        .expect("totp")
        .code_at_step(clock.now_secs() / 30);
    let done = browser
        .post(
            "/account/mfa/totp",
            &[("code", &code), ("csrf", &page.csrf())],
        )
        .await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.body);
    let recovery: Vec<String> = done
        .body
        .split("<li>")
        .skip(1)
        .filter_map(|s| s.split("</li>").next())
        .map(str::to_owned)
        .collect();
    assert_eq!(recovery.len(), 10, "ten recovery codes shown once");
    TotpEnrolment {
        secret,
        code,
        recovery,
        page: done,
    }
}

/// Signs `username` (who holds `admin`, which requires MFA, and has no factor yet) in with
/// the password and enrols TOTP: the session has just passed its second factor.
pub async fn first_admin_sign_in(
    app: &TestApp,
    clock: &ManualClock,
    username: &str,
) -> AdminSession {
    let browser = Browser::new(&app.base);
    let first = browser.sign_in(username, PASSWORD).await;
    assert_eq!(first.status, StatusCode::SEE_OTHER, "{}", first.body);
    assert!(
        first
            .location
            .as_deref()
            .is_some_and(|l| l.starts_with("/account/mfa/totp")),
        "{:?}",
        first.location
    );
    let secret = enrol_totp(&browser, clock).await.secret;
    let csrf = session_csrf(&browser).await;
    AdminSession {
        browser,
        secret,
        csrf,
    }
}

/// A new sign-in of an enrolled admin with password and a TOTP code (of a later step than
/// any used before).
pub async fn admin_sign_in(
    app: &TestApp,
    clock: &ManualClock,
    username: &str,
    secret: &[u8],
) -> AdminSession {
    clock.advance_secs(30);
    let browser = Browser::new(&app.base);
    let first = browser.sign_in(username, PASSWORD).await;
    assert!(
        first
            .location
            .as_deref()
            .is_some_and(|l| l.starts_with("/login/mfa")),
        "{:?}: {}",
        first.location,
        first.body
    );
    let mfa = browser.get("/login/mfa").await;
    let code = Totp::new(secret)
        .expect("totp")
        .code_at_step(clock.now_secs() / 30);
    let done = browser
        .post("/login/mfa", &[("code", &code), ("csrf", &mfa.csrf())])
        .await;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.body);
    let csrf = session_csrf(&browser).await;
    AdminSession {
        browser,
        secret: secret.to_vec(),
        csrf,
    }
}

/// Counts rows of a table, for "nothing was written" assertions.
pub fn rows(app: &TestApp, table: &str) -> i64 {
    use diesel::prelude::*;
    use ward::store::schema::*;
    let conn = &mut *app.conn();
    match table {
        "clients" => clients::table.count().get_result(conn),
        "client_secrets" => client_secrets::table.count().get_result(conn),
        "audit_events" => audit_events::table.count().get_result(conn),
        "users" => users::table.count().get_result(conn),
        "user_roles" => user_roles::table.count().get_result(conn),
        "roles" => roles::table.count().get_result(conn),
        "patients" => patients::table.count().get_result(conn),
        "enrolment_links" => enrolment_links::table.count().get_result(conn),
        "signing_keys" => signing_keys::table.count().get_result(conn),
        other => panic!("unknown table {other}"),
    }
    .expect("count")
}

/// Live (unrevoked) token families of a user.
pub fn live_families_of_user(app: &TestApp, username: &str) -> i64 {
    use diesel::prelude::*;
    use ward::store::schema::{token_families, users};
    let conn = &mut *app.conn();
    let user_id: String = users::table
        .filter(users::username.eq(username))
        .select(users::id)
        .first(conn)
        .expect("user");
    token_families::table
        .filter(token_families::user_id.eq(user_id))
        .filter(token_families::revoked_at.is_null())
        .count()
        .get_result(conn)
        .expect("count")
}
