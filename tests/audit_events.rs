//! Every kind of audit event, produced through Ward's real endpoints and CLI on SQLite and
//! PostgreSQL (issue 8: "a test that fills every event type by exercising the real endpoints and
//! checks exactly one event each with the right fields").
//!
//! Each step makes one request (or runs one command) and then asserts the events it appended:
//! exactly the expected ones, in order — so an action that writes no event, or two, fails here —
//! with the time, actor (user id and/or client id), source IP, user agent, the request id the
//! response carried, outcome, target patient and details. No password, client secret, code,
//! token, TOTP secret, recovery code or enrolment link used in the test appears in any audit
//! row. The actions covered must be exactly `AuditEvent::ACTIONS`, less the few listed in
//! [`COVERED_ELSEWHERE`]: a new event type fails this test until it is exercised here.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

use diesel::prelude::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use ward::audit::AuditEvent;
use ward::authn::totp::Totp;
use ward::clock::{Clock, ManualClock};
use ward::store::audit_events::AuditEventRow;

use crate::common::admin::{enrol_totp, first_admin_sign_in, unix_now, TotpEnrolment};
use crate::common::browser::{Browser, Page};
use crate::common::smart::*;
use crate::common::{Backend, Storage, TestApp, USER_AGENT};
use crate::on_both_backends;

on_both_backends!(every_event_type_is_written_once_with_its_fields);

/// Actions this test cannot produce, each with the test that asserts exactly one event of it.
const COVERED_ELSEWHERE: &[(&str, &str)] = &[
    // Needs a real browser's WebAuthn virtual authenticator to replay an old signature counter.
    (
        "webauthn.counter_regression",
        "chromium::a_person_registers_a_passkey_and_signs_in_with_it_in_chromium",
    ),
    // Emergency access needs a clinician role that allows it, a patient directory and a fresh
    // TOTP code; its own tests drive it through the picker and consent pages and assert exactly
    // one event per decision, with its fields (reason, patient, scope).
    (
        "break_glass.invoked",
        "break_glass::a_clinician_breaks_the_glass_for_one_patient",
    ),
    (
        "break_glass.refused",
        "break_glass::rejects_break_glass_without_reason_permission_human_app_second_factor_or_csrf",
    ),
];

const NEW_PASSWORD: &str = "amber walrus plays the oboe";
const WRONG_PASSWORD: &str = "definitely not the password";
const LOOPBACK: &str = "127.0.0.1";
/// The operator at the command line: the CLI records `os:$USER` as the actor.
const OPERATOR: &[(&str, &str)] = &[("USER", "auditor")];
const NDJSON: &str = r#"{"resourceType":"Patient","id":"p1","name":[{"family":"Núñez","given":["José"]}],"birthDate":"1980-04-02","gender":"male"}
{"resourceType":"Patient","id":"p2","name":[{"family":"Smith","given":["Anna"]}],"birthDate":"1975-01-30","gender":"female"}
{"resourceType":"Patient","id":"p3","name":[{"family":"Smithers","given":["Bob"]}],"birthDate":"1990-12-12"}
"#;

/// How the event's request reached Ward.
#[derive(Debug, Clone)]
enum Via {
    /// Over HTTP; with the `X-Request-Id` of the response when the step saw it.
    Http(Option<String>),
    /// The `ward` command line.
    Cli,
    /// The server itself (startup).
    System,
}

/// What one event must say.
struct Expect {
    action: &'static str,
    via: Via,
    user: Option<String>,
    client: Option<String>,
    patient: Option<String>,
    /// Members the details must have, with these values.
    details: Value,
}

impl Expect {
    fn new(action: &'static str, via: Via) -> Self {
        Self {
            action,
            via,
            user: None,
            client: None,
            patient: None,
            details: json!({}),
        }
    }
    fn user(mut self, id: &str) -> Self {
        self.user = Some(id.to_owned());
        self
    }
    fn client(mut self, id: &str) -> Self {
        self.client = Some(id.to_owned());
        self
    }
    fn patient(mut self, id: &str) -> Self {
        self.patient = Some(id.to_owned());
        self
    }
    fn details(mut self, details: Value) -> Self {
        self.details = details;
        self
    }
}

fn http(request_id: &Option<String>) -> Via {
    Via::Http(Some(
        request_id
            .clone()
            .expect("Ward answers every request with X-Request-Id"),
    ))
}

/// Reads the audit trail step by step.
struct Trail {
    db: ward::store::Db,
    clock: Arc<ManualClock>,
    last_id: i64,
    covered: BTreeSet<String>,
    request_ids: HashSet<String>,
    /// Values that must never appear in any audit row.
    secrets: Vec<String>,
    /// Short codes (TOTP): never a value in any event's details.
    codes: Vec<String>,
}

impl Trail {
    fn new(storage: &Storage, clock: Arc<ManualClock>) -> Self {
        Self {
            db: storage.db(),
            clock,
            last_id: 0,
            covered: BTreeSet::new(),
            request_ids: HashSet::new(),
            secrets: vec![
                PASSWORD.to_owned(),
                NEW_PASSWORD.to_owned(),
                WRONG_PASSWORD.to_owned(),
            ],
            codes: Vec::new(),
        }
    }

    fn secret(&mut self, value: &str) {
        assert!(value.len() >= 8, "a secret worth searching for: {value}");
        self.secrets.push(value.to_owned());
    }

    fn new_rows(&mut self) -> Vec<AuditEventRow> {
        use ward::store::schema::audit_events::dsl::*;
        let rows: Vec<AuditEventRow> = audit_events
            .filter(id.gt(self.last_id))
            .order(id)
            .select(AuditEventRow::as_select())
            .load(&mut *self.db.conn().unwrap())
            .unwrap();
        if let Some(last) = rows.last() {
            self.last_id = last.id;
        }
        rows
    }

    /// The step appended exactly these actions, in this order.
    fn many(&mut self, actions: &[&str]) -> Vec<AuditEventRow> {
        let rows = self.new_rows();
        let got: Vec<&str> = rows.iter().map(|r| r.action.as_str()).collect();
        assert_eq!(got, actions, "events appended by this step: {rows:#?}");
        rows
    }

    /// The step appended nothing.
    fn none(&mut self) {
        self.many(&[]);
    }

    /// Setup done through the kit: whatever it appended is not what this test checks (the
    /// secret search at the end still reads it).
    fn skip(&mut self) {
        self.new_rows();
    }

    /// The step appended exactly one event, this one.
    fn one(&mut self, expect: Expect) -> AuditEventRow {
        let row = self.many(&[expect.action]).remove(0);
        self.check(&row, &expect);
        row
    }

    fn check(&mut self, row: &AuditEventRow, expect: &Expect) {
        let what = format!("{}: {row:#?}", expect.action);
        assert_eq!(row.action, expect.action);
        assert!(AuditEvent::ACTIONS.contains(&row.action.as_str()), "{what}");
        let failure = [
            "login.failed",
            "mfa.failed",
            "client.authentication_failed",
            "authorization.refused",
            "token.refused",
            "token.reuse_detected",
            "token.revocation_refused",
            "admin.access_denied",
            "audit.verification_failed",
        ]
        .contains(&expect.action);
        assert_eq!(
            row.outcome,
            if failure { "failure" } else { "success" },
            "{what}"
        );
        assert!(
            ["info", "notice", "high"].contains(&row.severity.as_str()),
            "{what}"
        );
        assert_eq!(row.actor_user, expect.user, "actor user of {what}");
        assert_eq!(row.actor_client, expect.client, "actor client of {what}");
        assert_eq!(
            row.target_patient, expect.patient,
            "target patient of {what}"
        );
        match &expect.via {
            Via::Http(request_id) => {
                // Epoch milliseconds (UTC) from the server's clock: the test's manual clock.
                assert_eq!(row.occurred_at, self.clock.now_millis(), "time of {what}");
                assert_eq!(row.source_ip.as_deref(), Some(LOOPBACK), "{what}");
                assert_eq!(row.user_agent.as_deref(), Some(USER_AGENT), "{what}");
                let id = row.request_id.clone().expect("request id");
                assert!(id.len() >= 12, "{what}");
                if let Some(expected) = request_id {
                    assert_eq!(&id, expected, "request id of {what}");
                }
                assert!(self.request_ids.insert(id), "one event per request: {what}");
                assert!(!row.node.starts_with("cli:"), "{what}");
            }
            Via::Cli => {
                // The command line runs on the system clock.
                assert!(
                    (row.occurred_at - unix_now() * 1000).abs() < 60_000,
                    "time of {what}"
                );
                assert!(
                    row.actor_user
                        .as_deref()
                        .is_some_and(|u| u.starts_with("os:")),
                    "{what}"
                );
                assert_eq!(
                    (&row.source_ip, &row.user_agent, &row.request_id),
                    (&None, &None, &None),
                    "{what}"
                );
                assert!(row.node.starts_with("cli:"), "{what}");
            }
            Via::System => {
                assert_eq!(row.occurred_at, self.clock.now_millis(), "time of {what}");
                assert_eq!(
                    (&row.source_ip, &row.user_agent, &row.request_id),
                    (&None, &None, &None),
                    "{what}"
                );
                assert!(
                    !row.node.starts_with("cli:") && !row.node.is_empty(),
                    "{what}"
                );
            }
        }
        let details: Value = serde_json::from_str(&row.details).expect("details are JSON");
        assert!(details.is_object(), "{what}");
        assert!(details.get("action").is_none(), "{what}");
        for (key, value) in expect.details.as_object().unwrap() {
            assert_eq!(&details[key], value, "details.{key} of {what}");
        }
        self.no_secrets_in(row);
        self.covered.insert(row.action.clone());
    }

    fn no_secrets_in(&self, row: &AuditEventRow) {
        let text = format!("{row:?}");
        for secret in &self.secrets {
            assert!(!text.contains(secret.as_str()), "`{secret}` in {text}");
            // Also not in a JSON-escaped form.
            let escaped = serde_json::to_string(secret).unwrap();
            assert!(!row.details.contains(escaped.trim_matches('"')), "{text}");
        }
        let details: Value = serde_json::from_str(&row.details).unwrap_or(Value::Null);
        for code in &self.codes {
            assert!(!holds_value(&details, code), "code {code} in {text}");
        }
    }

    /// The end: every row ever written, including setup's, holds no secret.
    fn search_everything(&mut self) {
        self.last_id = 0;
        let rows = self.new_rows();
        assert!(rows.len() > 60);
        for row in &rows {
            self.no_secrets_in(row);
        }
    }
}

/// Whether any number in `value` is `code`, or any string holds it as a whole number (not as
/// part of a longer run of digits, such as a migration version).
fn holds_value(value: &Value, code: &str) -> bool {
    match value {
        Value::String(s) => s.match_indices(code).any(|(at, _)| {
            let before = s[..at].chars().next_back();
            let after = s[at + code.len()..].chars().next();
            !before.is_some_and(|c| c.is_ascii_digit())
                && !after.is_some_and(|c| c.is_ascii_digit())
        }),
        Value::Number(n) => n.to_string() == code,
        Value::Array(items) => items.iter().any(|v| holds_value(v, code)),
        Value::Object(map) => map.values().any(|v| holds_value(v, code)),
        _ => false,
    }
}

fn user_id(app: &TestApp, name: &str) -> String {
    use ward::store::schema::users::dsl::*;
    users
        .filter(username.eq(name))
        .select(id)
        .first(&mut *app.conn())
        .unwrap()
}

/// A form POST (optionally with HTTP Basic): (status, JSON body, request id).
async fn form(
    app: &TestApp,
    path: &str,
    fields: &[(&str, &str)],
    basic: Option<(&str, &str)>,
) -> (StatusCode, Value, Option<String>) {
    let mut request = app.client.post(app.url(path)).form(fields);
    if let Some((id, secret)) = basic {
        request = request.basic_auth(id, Some(secret));
    }
    let response = request.send().await.unwrap();
    let request_id = response
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let status = response.status();
    (
        status,
        response.json().await.unwrap_or(Value::Null),
        request_id,
    )
}

fn location(page: &Page) -> String {
    page.location
        .clone()
        .unwrap_or_else(|| panic!("expected a redirect: {} {}", page.status, page.body))
}

async fn every_event_type_is_written_once_with_its_fields(backend: Backend) {
    let Some(storage) = Storage::new(backend) else {
        return;
    };
    let storage = Arc::new(storage);
    let clock = Arc::new(ManualClock::at_secs(unix_now()));
    let mut trail = Trail::new(&storage, clock.clone());

    // --- Operations: migrations, startup, keys ------------------------------------------
    let (code, _, stderr) = storage.ward(&["migrate"], OPERATOR);
    assert_eq!(code, 0, "{stderr}");
    trail.one(Expect::new("database.migrated", Via::Cli).user("os:auditor"));

    let start = || {
        TestApp::builder(backend)
            .storage(storage.clone())
            .env("WARD_FHIR_BASE", FHIR)
            .env("WARD_LOGIN_LOCKOUT_THRESHOLD", "3")
            .env("WARD_LOGIN_FREE_ATTEMPTS", "3")
            .manual_clock(clock.clone())
            .start()
    };
    let app = start().await.unwrap();
    // The first start creates the two signing keys, then records itself.
    let rows = trail.many(&["key.created", "key.created", "server.started"]);
    trail.check(
        &rows[2],
        &Expect::new("server.started", Via::System).details(json!({
            "backend": match backend { Backend::Sqlite => "sqlite", Backend::Postgres => "postgres" },
            "tls": false,
            "danger_switches": [],
        })),
    );

    let (code, _, stderr) = storage.ward(&["keys", "rotate", "--alg", "ES256"], OPERATOR);
    assert_eq!(code, 0, "{stderr}");
    trail.one(
        Expect::new("key.created", Via::Cli)
            .user("os:auditor")
            .details(json!({"alg": "ES256", "reason": "rotation"})),
    );

    // --- An administrator (set up through the kit) -----------------------------------------
    add_user(&app, "root", &["admin"], None);
    let admin = first_admin_sign_in(&app, &clock, "root").await;
    trail.skip();
    let root = user_id(&app, "root");
    let api = admin.api();
    let by_admin = |action: &'static str, reply: &crate::common::admin::Reply| {
        Expect::new(action, http(&reply.request_id)).user(&root)
    };

    // --- Clients --------------------------------------------------------------------------
    let created = api
        .post(
            "/clients",
            &json!({"client_id": "portal", "name": "Patient Portal", "kind": "confidential-symmetric",
                    "redirect_uris": [CALLBACK], "scope": "openid fhirUser launch/patient patient/Observation.rs"}),
        )
        .await;
    let portal_secret = created.ok(StatusCode::CREATED)["client_secret"]
        .as_str()
        .unwrap()
        .to_owned();
    trail.secret(&portal_secret);
    trail.one(by_admin("client.registered", &created).details(json!({"client_id": "portal"})));

    let current = api.get("/clients/portal").await;
    trail.none();
    let mut edited = current.body.clone();
    edited["name"] = json!("Patient Portal (renamed)");
    let put = api
        .put_if_match("/clients/portal", &edited, current.etag.as_deref().unwrap())
        .await;
    put.ok(StatusCode::OK);
    trail.one(by_admin("client.updated", &put).details(json!({"client_id": "portal"})));

    let rotated = api.post_empty("/clients/portal/secret").await;
    let portal_secret_2 = rotated.ok(StatusCode::OK)["client_secret"]
        .as_str()
        .unwrap_or_else(|| panic!("{}", rotated.text))
        .to_owned();
    trail.secret(&portal_secret_2);
    trail.one(by_admin("client.secret_rotated", &rotated).details(json!({"client_id": "portal"})));

    let disabled = api
        .put("/clients/portal/status", &json!({"enabled": false}))
        .await;
    disabled.ok(StatusCode::OK);
    trail.one(
        by_admin("client.status_changed", &disabled)
            .details(json!({"client_id": "portal", "enabled": false})),
    );
    let enabled = api
        .put("/clients/portal/status", &json!({"enabled": true}))
        .await;
    enabled.ok(StatusCode::OK);
    trail.one(
        by_admin("client.status_changed", &enabled)
            .details(json!({"client_id": "portal", "enabled": true})),
    );

    // --- Roles and users ------------------------------------------------------------------
    let role = api
        .post(
            "/roles",
            &json!({"name": "clinician", "description": "Clinician without MFA",
                    "scope_ceiling": "user/*.cruds", "mfa_required": false}),
        )
        .await;
    role.ok(StatusCode::CREATED);
    trail.one(by_admin("role.created", &role).details(json!({"role": "clinician"})));
    let temp = api
        .post(
            "/roles",
            &json!({"name": "temp", "scope_ceiling": "user/Observation.rs"}),
        )
        .await;
    temp.ok(StatusCode::CREATED);
    trail.one(by_admin("role.created", &temp));
    let changed = api
        .put("/roles/temp", &json!({"description": "Temporary"}))
        .await;
    changed.ok(StatusCode::OK);
    trail.one(by_admin("role.updated", &changed).details(json!({"role": "temp"})));

    let dana_created = api
        .post(
            "/users",
            &json!({"username": "dana", "display_name": "Dana Doctor", "roles": ["clinician"],
                    "fhir_user": "Practitioner/7", "password": PASSWORD}),
        )
        .await;
    dana_created.ok(StatusCode::CREATED);
    let dana = user_id(&app, "dana");
    trail.one(by_admin("user.created", &dana_created).details(json!({"user_id": dana})));

    let renamed = api
        .put("/users/dana", &json!({"display_name": "Dana D. Doctor"}))
        .await;
    renamed.ok(StatusCode::OK);
    trail.one(by_admin("user.updated", &renamed).details(json!({"user_id": dana})));

    let added = api.put("/users/dana/roles/temp", &json!({})).await;
    assert!(added.status.is_success(), "{}", added.text);
    trail
        .one(by_admin("user.role_added", &added).details(json!({"user_id": dana, "role": "temp"})));
    let removed = api.delete("/users/dana/roles/temp").await;
    assert!(removed.status.is_success(), "{}", removed.text);
    trail.one(
        by_admin("user.role_removed", &removed).details(json!({"user_id": dana, "role": "temp"})),
    );
    let deleted = api.delete("/roles/temp").await;
    assert!(deleted.status.is_success(), "{}", deleted.text);
    trail.one(by_admin("role.deleted", &deleted).details(json!({"role": "temp"})));

    let link = api.post_empty("/users/dana/enrolment-link").await;
    let link_url = link.ok(StatusCode::CREATED)["enrolment_link"]
        .as_str()
        .unwrap()
        .to_owned();
    trail.secret(link_url.rsplit('=').next().unwrap());
    trail.one(by_admin("user.enrolment_link_created", &link).details(json!({"user_id": dana})));

    add_user(&app, "lou", &["clinician"], None);
    trail.skip();
    let lou = user_id(&app, "lou");
    let off = api
        .put("/users/lou/status", &json!({"enabled": false}))
        .await;
    off.ok(StatusCode::OK);
    trail.one(
        by_admin("user.status_changed", &off).details(json!({"user_id": lou, "enabled": false})),
    );
    let on = api
        .put("/users/lou/status", &json!({"enabled": true}))
        .await;
    on.ok(StatusCode::OK);
    trail.one(
        by_admin("user.status_changed", &on).details(json!({"user_id": lou, "enabled": true})),
    );

    // --- Patients -------------------------------------------------------------------------
    let imported = api
        .raw(
            Method::POST,
            "/patients/import",
            "application/x-ndjson",
            NDJSON,
        )
        .await;
    imported.ok(StatusCode::OK);
    trail.one(by_admin("patient.imported", &imported).details(json!({"created": 3, "updated": 0})));
    let updated = api
        .put(
            "/patients/p1",
            &json!({"resourceType": "Patient", "id": "p1",
                    "name": [{"family": "Núñez", "given": ["José", "María"]}],
                    "birthDate": "1980-04-02", "gender": "male"}),
        )
        .await;
    updated.ok(StatusCode::OK);
    trail.one(
        by_admin("patient.updated", &updated)
            .patient("p1")
            .details(json!({"patient": "p1"})),
    );
    let gone = api.delete("/patients/p3").await;
    assert!(gone.status.is_success(), "{}", gone.text);
    trail.one(
        by_admin("patient.removed", &gone)
            .patient("p3")
            .details(json!({"patient": "p3"})),
    );

    // --- Signing in -----------------------------------------------------------------------
    let browser = Browser::new(&app.base);
    let wrong = browser.sign_in("dana", WRONG_PASSWORD).await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    trail.one(
        Expect::new("login.failed", http(&wrong.request_id))
            .user(&dana)
            .details(json!({"reason": "bad_password"})),
    );
    let signed_in = browser.sign_in("dana", PASSWORD).await;
    assert_eq!(
        signed_in.status,
        StatusCode::SEE_OTHER,
        "{}",
        signed_in.body
    );
    trail.one(
        Expect::new("login.succeeded", http(&signed_in.request_id))
            .user(&dana)
            .details(json!({"methods": ["pwd"]})),
    );

    // Three bad passwords in a row lock lou's account; the third failure also says so.
    let lou_browser = Browser::new(&app.base);
    for _ in 0..2 {
        let page = lou_browser.sign_in("lou", WRONG_PASSWORD).await;
        trail.one(Expect::new("login.failed", http(&page.request_id)).user(&lou));
    }
    let third = lou_browser.sign_in("lou", WRONG_PASSWORD).await;
    let rows = trail.many(&["login.failed", "account.locked"]);
    assert_eq!(rows[0].request_id, third.request_id);
    trail
        .request_ids
        .remove(third.request_id.as_deref().unwrap());
    trail.check(
        &rows[1],
        &Expect::new("account.locked", http(&third.request_id))
            .user(&lou)
            .details(json!({"consecutive_failures": 3})),
    );
    let unlocked = api.post_empty("/users/lou/unlock").await;
    assert!(unlocked.status.is_success(), "{}", unlocked.text);
    trail.one(by_admin("account.unlocked", &unlocked).details(json!({"user_id": lou})));

    // Someone without admin rights reaches for the console.
    let denied = browser.get("/admin").await;
    assert!(denied.status.is_client_error(), "{}", denied.status);
    trail.one(
        Expect::new("admin.access_denied", http(&denied.request_id))
            .user(&dana)
            .details(json!({"path": "/admin"})),
    );

    // --- Own account: password, second factor, sign-out ----------------------------------
    let account = browser.get("/account").await;
    trail.none();
    let changed = browser
        .post(
            "/account/password",
            &[
                ("current", PASSWORD),
                ("new", NEW_PASSWORD),
                ("confirm", NEW_PASSWORD),
                ("csrf", &account.csrf()),
            ],
        )
        .await;
    assert!(
        changed.status.is_success() || changed.status.is_redirection(),
        "{}",
        changed.body
    );
    trail.one(
        Expect::new("password.changed", http(&changed.request_id))
            .user(&dana)
            .details(json!({"user_id": dana, "by_operator": false})),
    );

    let TotpEnrolment {
        secret,
        code: first_code,
        recovery,
        page: enrolled,
    } = enrol_totp(&browser, &clock).await;
    trail.secret(&ward::authn::totp::base32(&secret));
    trail.codes.push(first_code);
    for code in &recovery {
        trail.secret(code);
        trail.secret(&code.replace('-', ""));
    }
    trail.one(
        Expect::new("mfa.enrolled", http(&enrolled.request_id))
            .user(&dana)
            .details(json!({"method": "totp"})),
    );

    let account = browser.get("/account").await;
    let out = browser.post("/logout", &[("csrf", &account.csrf())]).await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    trail.one(
        Expect::new("session.ended", http(&out.request_id))
            .user(&dana)
            .details(json!({"reason": "logout"})),
    );

    clock.advance_secs(30);
    let browser = Browser::new(&app.base);
    let first = browser.sign_in("dana", NEW_PASSWORD).await;
    assert!(location(&first).starts_with("/login/mfa"));
    trail.none();
    let mfa = browser.get("/login/mfa").await;
    let bad = browser
        .post("/login/mfa", &[("code", "000000"), ("csrf", &mfa.csrf())])
        .await;
    assert!(bad.status.is_client_error(), "{}", bad.status);
    trail.one(
        Expect::new("mfa.failed", http(&bad.request_id))
            .user(&dana)
            .details(json!({"reason": "bad_code"})),
    );
    let mfa = browser.get("/login/mfa").await;
    let code = Totp::new(&secret)
        .unwrap()
        .code_at_step(clock.now_secs() / 30);
    trail.codes.push(code.clone());
    let good = browser
        .post("/login/mfa", &[("code", &code), ("csrf", &mfa.csrf())])
        .await;
    assert_eq!(good.status, StatusCode::SEE_OTHER, "{}", good.body);
    // Completing a sign-in with a second factor: the sign-in, and the factor's use.
    let rows = trail.many(&["login.succeeded", "mfa.used"]);
    assert_eq!(rows[0].request_id, good.request_id);
    assert_eq!(rows[0].details, r#"{"methods":["pwd","otp"]}"#);
    trail.check(
        &rows[1],
        &Expect::new("mfa.used", http(&good.request_id))
            .user(&dana)
            .details(json!({"method": "otp"})),
    );

    let account = browser.get("/account").await;
    let removed = browser
        .post("/account/mfa/totp/remove", &[("csrf", &account.csrf())])
        .await;
    assert_eq!(removed.status, StatusCode::SEE_OTHER, "{}", removed.body);
    trail.one(
        Expect::new("mfa.removed", http(&removed.request_id))
            .user(&dana)
            .details(json!({"method": "totp"})),
    );
    let TotpEnrolment {
        secret,
        code: first_code,
        recovery,
        ..
    } = enrol_totp(&browser, &clock).await;
    trail.secret(&ward::authn::totp::base32(&secret));
    trail.codes.push(first_code);
    for code in &recovery {
        trail.secret(code);
        trail.secret(&code.replace('-', ""));
    }
    trail.skip();
    let reset = api.delete("/users/dana/mfa").await;
    assert!(reset.status.is_success(), "{}", reset.text);
    trail.one(by_admin("mfa.reset", &reset).details(json!({"user_id": dana})));

    // --- SMART: apps, resource servers, an EHR ---------------------------------------------
    let (chart, _) = register(
        &app,
        json!({"client_id": "chart", "name": "Chart", "kind": "public", "redirect_uris": [CALLBACK],
               "scope": "openid fhirUser launch launch/patient offline_access patient/*.rs user/*.rs"}),
    );
    let (rs, rs_secret) = register(
        &app,
        json!({"client_id": "fhir-api", "name": "FHIR API", "kind": "resource-server", "fhir_bases": [FHIR]}),
    );
    let rs_secret = rs_secret.unwrap();
    let (ehr, ehr_secret) = register(
        &app,
        json!({"client_id": "ehr", "name": "EHR", "kind": "confidential-symmetric",
               "redirect_uris": ["https://ehr.example/cb"], "scope": "openid", "ehr_launcher": true}),
    );
    let ehr_secret = ehr_secret.unwrap();
    for s in [&rs_secret, &ehr_secret] {
        trail.secret(s);
    }
    trail.skip();

    // Standalone launch: the patient picker, then consent.
    let browser = Browser::new(&app.base);
    let signed_in = browser.sign_in("dana", NEW_PASSWORD).await;
    assert_eq!(
        signed_in.status,
        StatusCode::SEE_OTHER,
        "{}",
        signed_in.body
    );
    trail.one(Expect::new("login.succeeded", http(&signed_in.request_id)).user(&dana));
    let (verifier, challenge) = pkce();
    let scope = "openid fhirUser launch/patient offline_access patient/Observation.rs";
    let params = [
        ("response_type", "code"),
        ("client_id", chart.as_str()),
        ("redirect_uri", CALLBACK),
        ("scope", scope),
        ("state", "st-1"),
        ("aud", FHIR),
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
    ];
    let authorize = authorize_url(&app, &params);
    let picker = follow(&browser, &authorize, None).await.picker();
    trail.none();
    let request = picker.field("request").unwrap();
    let searched = browser
        .get(&format!("/authorize/patients?request={request}&q=smith"))
        .await;
    assert!(searched.body.contains("Anna Smith"), "{}", searched.body);
    let rows = trail.many(&["patient.searched"]);
    trail.check(
        &rows[0],
        &Expect::new("patient.searched", http(&searched.request_id))
            .user(&dana)
            .client(&chart)
            .details(json!({"client_id": chart, "offered": ["p2"]})),
    );
    let chosen = browser
        .post(
            "/authorize/patients",
            &[
                ("csrf", &searched.csrf()),
                ("request", &request),
                ("patient", "p2"),
            ],
        )
        .await;
    assert_eq!(chosen.status, StatusCode::SEE_OTHER, "{}", chosen.body);
    trail.one(
        Expect::new("patient.selected", http(&chosen.request_id))
            .user(&dana)
            .client(&chart)
            .patient("p2")
            .details(json!({"client_id": chart, "patient": "p2"})),
    );
    let consent = follow(&browser, &app.url(&location(&chosen)), None)
        .await
        .consent();
    trail.none();
    let callback = approve(&browser, &consent, &[]).await.callback();
    trail.secret(&callback["code"]);
    trail.one(
        Expect::new("authorization.granted", Via::Http(None))
            .user(&dana)
            .client(&chart)
            .patient("p2")
            .details(json!({"client_id": chart, "patient": "p2", "remembered": false})),
    );
    let redeem_form = [
        ("grant_type", "authorization_code"),
        ("code", callback["code"].as_str()),
        ("redirect_uri", CALLBACK),
        ("code_verifier", verifier.as_str()),
        ("client_id", chart.as_str()),
    ];
    let (status, tokens, rid) = form(&app, "/token", &redeem_form, None).await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    let refresh_1 = tokens["refresh_token"].as_str().unwrap().to_owned();
    trail.secret(&access);
    trail.secret(&refresh_1);
    trail.secret(tokens["id_token"].as_str().unwrap());
    trail.secret(&verifier);
    // The actor of a token request is the client; the grant's user is found by its family.
    let issued = trail.one(
        Expect::new("token.issued", http(&rid))
            .client(&chart)
            .patient("p2")
            .details(json!({"client_id": chart, "grant": "authorization_code", "patient": "p2"})),
    );
    let family: String = serde_json::from_str::<Value>(&issued.details).unwrap()["family"]
        .as_str()
        .unwrap()
        .to_owned();

    // The resource server introspects (first use only is recorded) and asks the policy.
    let (status, info, rid) = form(
        &app,
        "/introspect",
        &[("token", &access)],
        Some((&rs, &rs_secret)),
    )
    .await;
    assert_eq!(
        (status, &info["active"]),
        (StatusCode::OK, &json!(true)),
        "{info}"
    );
    trail.one(
        Expect::new("token.introspected", http(&rid))
            .client(&rs)
            .patient("p2")
            .details(json!({"client_id": chart, "family": family, "patient": "p2"})),
    );
    form(
        &app,
        "/introspect",
        &[("token", &access)],
        Some((&rs, &rs_secret)),
    )
    .await;
    trail.none();
    let (status, decision, rid) = form(
        &app,
        "/policy/check",
        &[
            ("token", &access),
            ("method", "GET"),
            ("url", "Observation?patient=p2"),
        ],
        Some((&rs, &rs_secret)),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{decision}");
    trail.one(
        Expect::new("policy.checked", http(&rid))
            .client(&rs)
            .patient("p2")
            .details(json!({"client_id": chart, "family": family, "decision": "permit"})),
    );

    // Refresh; another client tries to revoke the grant; the old refresh token comes back.
    let (status, refreshed, rid) = form(
        &app,
        "/token",
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &refresh_1),
            ("client_id", &chart),
        ],
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{refreshed}");
    let refresh_2 = refreshed["refresh_token"].as_str().unwrap().to_owned();
    trail.secret(&refresh_2);
    trail.secret(refreshed["access_token"].as_str().unwrap());
    trail.one(
        Expect::new("token.issued", http(&rid))
            .client(&chart)
            .patient("p2")
            .details(json!({"grant": "refresh_token", "family": family})),
    );
    let (status, _, rid) = form(
        &app,
        "/revoke",
        &[("token", &refresh_2)],
        Some(("portal", &portal_secret_2)),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    trail.one(
        Expect::new("token.revocation_refused", http(&rid))
            .client("portal")
            .details(json!({"client_id": "portal", "family": family})),
    );
    let (status, _, rid) = form(
        &app,
        "/token",
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &refresh_1),
            ("client_id", &chart),
        ],
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    trail.one(
        Expect::new("token.reuse_detected", http(&rid))
            .client(&chart)
            .details(json!({"client_id": chart, "family": family, "kind": "refresh_token"})),
    );

    // Refused token requests: a grant Ward does not offer; a wrong client secret.
    let (status, _, rid) = form(
        &app,
        "/token",
        &[
            ("grant_type", "password"),
            ("username", "dana"),
            ("password", NEW_PASSWORD),
        ],
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    trail.one(
        Expect::new("token.refused", http(&rid))
            .details(json!({"error": "unsupported_grant_type"})),
    );
    let (status, _, rid) = form(
        &app,
        "/token",
        &[("grant_type", "client_credentials")],
        Some(("portal", "not-the-portal-secret")),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    trail.one(
        Expect::new("client.authentication_failed", http(&rid))
            .details(json!({"client_id": "portal", "endpoint": "token"})),
    );

    // An EHR launch, denied on the consent page.
    let (status, launched, rid) = form(
        &app,
        "/launch",
        &[
            ("target_client_id", &chart),
            ("patient", "p1"),
            ("user", "dana"),
        ],
        Some((&ehr, &ehr_secret)),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{launched}");
    let launch = launched["launch"].as_str().unwrap().to_owned();
    trail.secret(&launch);
    trail.one(
        Expect::new("launch.created", http(&rid))
            .client(&ehr)
            .patient("p1")
            .details(json!({"client_id": chart, "patient": "p1", "for_user": dana})),
    );
    let (_, challenge) = pkce();
    let mut launch_params: Vec<(&str, &str)> = params.to_vec();
    launch_params[3] = ("scope", "launch openid patient/Observation.rs");
    launch_params[6] = ("code_challenge", &challenge);
    launch_params.push(("launch", &launch));
    let consent = follow(&browser, &authorize_url(&app, &launch_params), None)
        .await
        .consent();
    trail.none();
    let refused = deny(&browser, &consent).await.callback();
    assert_eq!(refused["error"], "access_denied");
    trail.one(
        Expect::new("authorization.refused", Via::Http(None))
            .user(&dana)
            .client(&chart)
            .details(json!({"client_id": chart, "error": "access_denied"})),
    );

    // A new grant, revoked by the app; another, revoked by an administrator.
    let tokens = code_flow(
        &app,
        &browser,
        &chart,
        "openid offline_access user/Observation.rs",
        None,
    )
    .await;
    for t in ["access_token", "refresh_token", "id_token"] {
        if let Some(v) = tokens[t].as_str() {
            trail.secret(v);
        }
    }
    trail.skip();
    let (status, _, rid) = form(
        &app,
        "/revoke",
        &[
            ("token", tokens["refresh_token"].as_str().unwrap()),
            ("client_id", &chart),
        ],
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    trail.one(
        Expect::new("token.revoked", http(&rid))
            .client(&chart)
            .details(json!({"client_id": chart})),
    );
    let tokens = code_flow(
        &app,
        &browser,
        &chart,
        "openid offline_access user/Observation.rs",
        None,
    )
    .await;
    for t in ["access_token", "refresh_token", "id_token"] {
        if let Some(v) = tokens[t].as_str() {
            trail.secret(v);
        }
    }
    trail.skip();
    let all = api.delete(&format!("/clients/{chart}/grants")).await;
    assert!(all.status.is_success(), "{}", all.text);
    trail.one(
        by_admin("token.revoked_all", &all).details(json!({"client_id": chart, "families": 1})),
    );

    // --- The audit chain: tampering found by `ward audit verify` ---------------------------
    app.stop();
    drop(app);
    wait_until_linked(&trail.db).await;
    let tampered_id = {
        use ward::store::schema::audit_events::dsl::*;
        let conn = &mut *trail.db.conn().unwrap();
        let (row_id, original): (i64, String) = audit_events
            .filter(chain_seq.eq(2))
            .select((id, details))
            .first(conn)
            .unwrap();
        diesel::update(audit_events.find(row_id))
            .set(details.eq("{\"forged\":true}"))
            .execute(conn)
            .unwrap();
        (row_id, original)
    };
    let (code, stdout, stderr) = storage.ward(&["audit", "verify"], OPERATOR);
    assert_eq!(code, 1, "{stdout}{stderr}");
    trail.one(
        Expect::new("audit.verification_failed", Via::Cli)
            .user("os:auditor")
            .details(json!({"verified": 1})),
    );
    {
        use ward::store::schema::audit_events::dsl::*;
        diesel::update(audit_events.find(tampered_id.0))
            .set(details.eq(&tampered_id.1))
            .execute(&mut *trail.db.conn().unwrap())
            .unwrap();
    }

    // --- A restart: exactly one `server.started` ------------------------------------------
    let app = start().await.unwrap();
    trail.one(Expect::new("server.started", Via::System));
    app.stop();

    // --- Every action is covered, here or by a named test ----------------------------------
    let elsewhere: BTreeSet<String> = COVERED_ELSEWHERE
        .iter()
        .map(|(a, _)| a.to_string())
        .collect();
    assert!(
        trail.covered.is_disjoint(&elsewhere),
        "listed as covered elsewhere but covered here: {:?}",
        trail.covered.intersection(&elsewhere).collect::<Vec<_>>()
    );
    let all: BTreeSet<String> = AuditEvent::ACTIONS.iter().map(|a| a.to_string()).collect();
    let covered: BTreeSet<String> = trail.covered.union(&elsewhere).cloned().collect();
    assert_eq!(
        all.difference(&covered).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "audit actions no test produces"
    );
    assert_eq!(covered, all);
    trail.search_everything();
}

/// Waits until every event is linked into the chain (a running node links within a second;
/// the last ones may need the restarted node).
async fn wait_until_linked(db: &ward::store::Db) {
    use ward::store::schema::audit_events::dsl::*;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let linked: i64 = audit_events
            .filter(chain_seq.is_not_null())
            .count()
            .get_result(&mut *db.conn().unwrap())
            .unwrap();
        if linked >= 2 {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "nothing linked");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
