//! Emergency access (break-glass, issue 8) over real HTTP on SQLite and PostgreSQL: a clinician
//! whose role does not cover what an app asks for invokes break-glass for one patient with a
//! reason and a fresh TOTP code; the token, its introspection and the audit trail carry the
//! marking, and the security alert goes out. Every refusal is audited once and issues nothing.

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use reqwest::StatusCode;
use serde_json::{json, Value};
use ward::audit::AuditContext;
use ward::authn::totp::Totp;
use ward::clock::{Clock, ManualClock};

use crate::common::browser::{base32_decode, value_by_id, Browser, Page};
use crate::common::https_server::{serve_recording, TestCa};
use crate::common::smart::{
    add_user, audit_actions, authorize_url, count, follow, pkce, post_form, query_of, redeem,
    register, CALLBACK, FHIR, PASSWORD,
};
use crate::common::{Backend, TestApp};
use crate::on_both_backends;

on_both_backends!(
    a_clinician_breaks_the_glass_for_one_patient,
    rejects_break_glass_without_reason_permission_human_app_second_factor_or_csrf,
    a_role_that_allows_nothing_asked_for_can_still_break_the_glass,
);

const START: i64 = 1_900_000_000;
const REASON: &str = "Unconscious patient in the ED; medication history needed now";
const BANNER: &str = "Emergency access — every action is audited and reviewed";
/// What the app asks for: more than the nurse's role allows, and one scope (MedicationRequest)
/// that the client itself may not have.
const REQUESTED: &str = "openid fhirUser launch/patient offline_access patient/Observation.rs user/Condition.rs patient/MedicationRequest.rs user/Coverage.rs";
const PATIENTS: &str = r#"{"resourceType":"Patient","id":"p1","name":[{"family":"Núñez","given":["José"]}],"birthDate":"1980-04-02"}
{"resourceType":"Patient","id":"p2","name":[{"family":"Smith","given":["Anna"]}],"birthDate":"1975-01-30"}
"#;

fn role(app: &TestApp, name: &str, break_glass: bool) {
    ward::authz::roles::create(
        &mut app.conn(),
        app.state.clock.as_ref(),
        &AuditContext::cli(),
        name,
        ward::authz::roles::RoleChanges {
            description: Some(format!("{name} (test)")),
            scope_ceiling: Some("user/Coverage.rs".into()),
            mfa_required: Some(false),
            break_glass: Some(break_glass),
            passwordless: Some(false),
            expected_version: None,
        },
    )
    .expect("role created");
}

struct Setup {
    app: TestApp,
    clock: Arc<ManualClock>,
    client: String,
    resource_server: (String, String),
    /// The nurse's TOTP secret.
    secret: Vec<u8>,
}

/// A Ward with: roles `er-nurse` (break-glass) and `clerk` (no break-glass), both limited to
/// Coverage; users `nina` (er-nurse, TOTP enrolled) and `carl` (clerk); an app allowed
/// Observation, Condition and Coverage (not MedicationRequest); a resource server; two patients.
async fn setup(backend: Backend, env: &[(&str, &str)]) -> Option<Setup> {
    let clock = Arc::new(ManualClock::at_secs(START));
    let mut builder = TestApp::builder(backend)
        .env("WARD_FHIR_BASE", FHIR)
        .manual_clock(clock.clone());
    for (k, v) in env {
        builder = builder.env(k, v);
    }
    let app = builder.start().await?;
    role(&app, "er-nurse", true);
    role(&app, "clerk", false);
    add_user(&app, "nina", &["er-nurse"], Some("Practitioner/7"));
    add_user(&app, "carl", &["clerk"], Some("Practitioner/8"));
    let (client, _) = register(
        &app,
        json!({"client_id": "chart", "name": "Chart", "kind": "public", "redirect_uris": [CALLBACK],
               "scope": "openid fhirUser launch/patient offline_access user/Observation.rs user/Condition.rs user/Coverage.rs"}),
    );
    let rs = register(
        &app,
        json!({"client_id": "fhir-api", "name": "FHIR API", "kind": "resource-server", "fhir_bases": [FHIR]}),
    );
    let resource_server = (rs.0, rs.1.expect("resource server secret"));
    let (code, _, stderr) = app
        .storage
        .ward_stdin(&["patient", "import", "-"], PATIENTS);
    assert_eq!(code, 0, "{stderr}");
    // Nina enrols TOTP (her role does not require it, she has it anyway).
    let browser = Browser::new(&app.base);
    browser.sign_in("nina", PASSWORD).await;
    let page = browser.get("/account/mfa/totp").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let secret = base32_decode(&value_by_id(&page.body, "secret").expect("key shown"));
    let done = browser
        .post(
            "/account/mfa/totp",
            &[("code", &code_now(&secret, &clock)), ("csrf", &page.csrf())],
        )
        .await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.body);
    Some(Setup {
        app,
        clock,
        client,
        resource_server,
        secret,
    })
}

fn code_now(secret: &[u8], clock: &ManualClock) -> String {
    Totp::new(secret)
        .unwrap()
        .code_at_step(clock.now_secs() / 30)
}

/// Signs in with password and, when asked, the current TOTP code (a fresh time step).
async fn sign_in(s: &Setup, username: &str) -> Browser {
    let browser = Browser::new(&s.app.base);
    let after = browser.sign_in(username, PASSWORD).await;
    assert_eq!(after.status, StatusCode::SEE_OTHER, "{}", after.body);
    if after
        .location
        .as_deref()
        .is_some_and(|l| l.starts_with("/login/mfa"))
    {
        s.clock.advance_secs(30);
        let mfa = browser.get("/login/mfa").await;
        let done = browser
            .post(
                "/login/mfa",
                &[
                    ("code", &code_now(&s.secret, &s.clock)),
                    ("csrf", &mfa.csrf()),
                ],
            )
            .await;
        assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.body);
    }
    browser
}

/// Starts an authorization request for `client`; returns (verifier, where it landed).
async fn start(s: &Setup, browser: &Browser, client: &str, scope: &str) -> (String, Page, bool) {
    let (verifier, challenge) = pkce();
    let params = [
        ("response_type", "code"),
        ("client_id", client),
        ("redirect_uri", CALLBACK),
        ("scope", scope),
        ("state", "st-9"),
        ("aud", FHIR),
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
    ];
    match follow(browser, &authorize_url(&s.app, &params), None).await {
        crate::common::smart::Landing::Picker(p) => (verifier, p, true),
        crate::common::smart::Landing::Consent(p) => (verifier, p, false),
        other => panic!("expected the picker or consent, got {other:?}"),
    }
}

/// From the picker: search, choose `patient` normally, land on the consent page.
async fn choose(browser: &Browser, picker: &Page, patient: &str) -> Page {
    let request = picker.field("request").unwrap();
    let found = browser
        .get(&format!(
            "/authorize/patients?request={request}&q=1980-04-02"
        ))
        .await;
    let chosen = browser
        .post(
            "/authorize/patients",
            &[
                ("csrf", &found.csrf()),
                ("request", &request),
                ("patient", patient),
            ],
        )
        .await;
    assert_eq!(chosen.status, StatusCode::SEE_OTHER, "{}", chosen.body);
    let consent = browser.get(chosen.location.as_deref().unwrap()).await;
    assert!(
        consent.body.contains("id=\"consent-form\""),
        "{}",
        consent.body
    );
    consent
}

fn decode_payload(jwt: &str) -> Value {
    let part = jwt.split('.').nth(1).expect("payload");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

fn refused(app: &TestApp) -> Vec<Value> {
    audit_actions(app, "break_glass.refused")
}

async fn a_clinician_breaks_the_glass_for_one_patient(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let (hook, received) = serve_recording(&ca, 0).await;
    let Some(s) = setup(
        backend,
        &[
            ("WARD_ALERTS_WEBHOOK_URL", &hook.url("/hook")),
            ("WARD_ALERTS_WEBHOOK_SECRET", "webhook-secret-0123456789"),
            ("WARD_DANGER_EXTRA_CA_FILE", ca.ca_file.to_str().unwrap()),
        ],
    )
    .await
    else {
        return;
    };
    let app = &s.app;
    app.alert_cursor_started().await;
    let browser = sign_in(&s, "nina").await;
    let (verifier, picker, at_picker) = start(&s, &browser, &s.client, REQUESTED).await;
    assert!(at_picker, "launch/patient sends a clinician to the picker");
    let request = picker.field("request").unwrap();
    // The picker offers emergency access next to each patient it shows.
    let found = browser
        .get(&format!("/authorize/patients?request={request}&q=smith"))
        .await;
    assert!(
        found.body.contains("id=\"break-glass-p2\""),
        "{}",
        found.body
    );
    let form = browser
        .get(&format!(
            "/authorize/break-glass?request={request}&patient=p2"
        ))
        .await;
    assert_eq!(form.status, StatusCode::OK, "{}", form.body);
    assert!(form.body.contains(BANNER), "{}", form.body);
    assert!(form.body.contains("Anna Smith") || form.body.contains("Smith"));
    // A patient the picker never showed cannot be named.
    let unshown = browser
        .get(&format!(
            "/authorize/break-glass?request={request}&patient=p1"
        ))
        .await;
    assert_eq!(unshown.status, StatusCode::FORBIDDEN);

    s.clock.advance_secs(30);
    let done = browser
        .post(
            "/authorize/break-glass",
            &[
                ("csrf", &form.csrf()),
                ("request", &request),
                ("patient", "p2"),
                ("reason", &format!("  {REASON}  ")),
                ("code", &code_now(&s.secret, &s.clock)),
            ],
        )
        .await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.body);
    assert!(done.body.contains(BANNER), "the page after it too");
    let link = done
        .body
        .split("href=\"")
        .find(|p| p.starts_with(CALLBACK))
        .and_then(|p| p.split('"').next())
        .expect("a link on to the app")
        .replace("&#38;", "&")
        .replace("&amp;", "&");
    let callback = query_of(&link);
    assert_eq!(
        callback.get("state").map(String::as_str),
        Some("st-9"),
        "{link}"
    );

    let (status, tokens) = redeem(app, &callback["code"], &verifier, &s.client).await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    let scope: Vec<&str> = tokens["scope"].as_str().unwrap().split(' ').collect();
    for wanted in [
        "openid",
        "fhirUser",
        "launch/patient",
        "patient/Observation.rs",
        "patient/Condition.rs",
        "patient/Coverage.rs",
        "__ward.break_glass",
    ] {
        assert!(scope.contains(&wanted), "{wanted} in {scope:?}");
    }
    for absent in [
        "patient/MedicationRequest.rs",
        "offline_access",
        "user/Condition.rs",
        "user/Coverage.rs",
    ] {
        assert!(!scope.contains(&absent), "{absent} in {scope:?}");
    }
    assert_eq!(tokens["patient"], "p2");
    assert_eq!(tokens["break_glass"], true);
    assert_eq!(tokens["expires_in"], 900, "the short fixed lifetime");
    assert!(tokens.get("refresh_token").is_none(), "{tokens}");
    let claims = decode_payload(tokens["access_token"].as_str().unwrap());
    assert_eq!(claims["break_glass"], true);
    assert_eq!(claims["patient"], "p2");
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        900
    );

    let (rs, rs_secret) = &s.resource_server;
    let (status, intro) = post_form(
        app,
        "/introspect",
        &[("token", tokens["access_token"].as_str().unwrap())],
        Some((rs, rs_secret)),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(intro["active"], true);
    assert_eq!(intro["break_glass"], true, "{intro}");
    assert_eq!(intro["patient"], "p2");
    assert!(intro["scope"]
        .as_str()
        .unwrap()
        .split(' ')
        .any(|s| s == "__ward.break_glass"));

    let invoked = audit_actions(app, "break_glass.invoked");
    assert_eq!(invoked.len(), 1, "{invoked:?}");
    assert_eq!(invoked[0]["reason"], REASON, "trimmed, verbatim");
    assert_eq!(invoked[0]["patient"], "p2");
    assert_eq!(invoked[0]["client_id"], "chart");
    assert!(invoked[0]["scope"]
        .as_str()
        .unwrap()
        .contains("__ward.break_glass"));
    assert!(refused(app).is_empty());
    assert!(
        audit_actions(app, "authorization.granted").is_empty(),
        "one event for the decision"
    );
    let row = ward::store::audit_events::list(&mut app.conn(), Some("break_glass.invoked"), 1)
        .unwrap()
        .remove(0);
    assert_eq!(row.severity, "high");
    assert_eq!(row.target_patient.as_deref(), Some("p2"));
    assert!(ward::audit::alerts::is_alert(&row));
    assert_eq!(count(app, "consents"), 0, "never remembered");
    validate_fhir(&row, &app.state.issuer);

    // The person's connected apps and the admin's grants view show it as break-glass.
    let apps = browser.get("/account/apps").await;
    assert!(
        apps.body.contains("id=\"break-glass-chart\""),
        "{}",
        apps.body
    );
    let grants =
        ward::admin::grants_of_client(&mut app.conn(), app.state.clock.as_ref(), "chart").unwrap();
    assert_eq!(grants.len(), 1);
    assert_eq!(grants[0].kind, "break_glass");

    // The security alert goes out through the alert sink (the webhook).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let delivered = received.lock().unwrap().iter().any(|d| {
            serde_json::from_str::<Value>(&d.body)
                .is_ok_and(|b| b["event"]["action"] == "break_glass.invoked")
        });
        if delivered {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no alert delivered");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

async fn a_role_that_allows_nothing_asked_for_can_still_break_the_glass(backend: Backend) {
    let Some(s) = setup(backend, &[]).await else {
        return;
    };
    let scope = "launch/patient patient/Observation.rs";
    // Without break-glass: refused at once, as ever.
    let carl = sign_in(&s, "carl").await;
    let (_, challenge) = pkce();
    let params = [
        ("response_type", "code"),
        ("client_id", s.client.as_str()),
        ("redirect_uri", CALLBACK),
        ("scope", scope),
        ("aud", FHIR),
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
    ];
    let landed = follow(&carl, &authorize_url(&s.app, &params), None)
        .await
        .callback();
    assert_eq!(landed["error"], "invalid_scope");
    // The nurse reaches the picker and the consent page, which offers only emergency access.
    let nina = sign_in(&s, "nina").await;
    let (verifier, picker, at_picker) = start(&s, &nina, &s.client, scope).await;
    assert!(at_picker);
    let consent = choose(&nina, &picker, "p1").await;
    assert!(
        consent.body.contains("id=\"nothing-grantable\""),
        "{}",
        consent.body
    );
    assert!(consent.body.contains("id=\"break-glass-link\""));
    let request = consent.field("request").unwrap();
    let form = nina
        .get(&format!("/authorize/break-glass?request={request}"))
        .await;
    s.clock.advance_secs(30);
    let done = invoke(
        &nina,
        &[
            ("csrf", &form.csrf()),
            ("request", &request),
            ("patient", "p1"),
            ("reason", REASON),
            ("code", &code_now(&s.secret, &s.clock)),
        ],
    )
    .await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.body);
    let link = done
        .body
        .split("href=\"")
        .find(|p| p.starts_with(CALLBACK))
        .and_then(|p| p.split('"').next())
        .unwrap()
        .replace("&#38;", "&")
        .replace("&amp;", "&");
    let (status, tokens) = redeem(&s.app, &query_of(&link)["code"], &verifier, &s.client).await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    assert_eq!(
        tokens["scope"],
        "launch/patient patient/Observation.rs __ward.break_glass"
    );
    assert_eq!(tokens["patient"], "p1");
    // Allowing on that page grants nothing: the request ends as it always did.
    let (_, picker, _) = start(&s, &nina, &s.client, scope).await;
    let consent = choose(&nina, &picker, "p1").await;
    let landed = crate::common::smart::approve(&nina, &consent, &[])
        .await
        .callback();
    assert_eq!(landed["error"], "invalid_scope");
    assert_eq!(count(&s.app, "authorization_codes"), 1);
}

/// The event's FHIR export (purposeOfEvent ETREAT/BTG) parses with a FHIR model library and
/// passes the BALP checks of tests/fhir/validate_audit.py (skipped only outside CI without it).
fn validate_fhir(row: &ward::store::audit_events::AuditEventRow, issuer: &str) {
    let observer = ward::audit::fhir::Observer {
        issuer,
        node_hint: None,
    };
    let event = ward::audit::fhir::to_audit_event(row, &observer);
    assert_eq!(event["purposeOfEvent"][0]["coding"][0]["code"], "ETREAT");
    assert_eq!(event["purposeOfEvent"][1]["coding"][0]["code"], "BTG");
    let python =
        std::env::var("WARD_FHIR_PYTHON").unwrap_or_else(|_| "/opt/ward-fhir/bin/python".into());
    if !std::path::Path::new(&python).exists() {
        assert!(!crate::common::in_ci(), "{python} is missing");
        return;
    }
    let mut child = std::process::Command::new(&python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fhir/validate_audit.py"
        ))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(
                ward::audit::fhir::to_ndjson(std::slice::from_ref(row), &observer).as_bytes(),
            )
            .unwrap();
    }
    let result = child.wait_with_output().unwrap();
    assert!(
        result.status.success(),
        "FHIR validation failed:\n{}\n{}",
        String::from_utf8_lossy(&result.stdout),
        String::from_utf8_lossy(&result.stderr)
    );
}

/// A refusal case: its name, the form, the status and the audited `error`.
type Case<'a> = (&'a str, [(&'a str, &'a str); 5], StatusCode, &'a str);

/// Posts the break-glass form from owned fields.
async fn post_owned(browser: &Browser, pairs: Vec<(String, String)>) -> Page {
    let borrowed: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    invoke(browser, &borrowed).await
}

/// Posts the break-glass form.
async fn invoke(browser: &Browser, fields: &[(&str, &str)]) -> Page {
    browser.post("/authorize/break-glass", fields).await
}

async fn rejects_break_glass_without_reason_permission_human_app_second_factor_or_csrf(
    backend: Backend,
) {
    let Some(s) = setup(backend, &[]).await else {
        return;
    };
    let app = &s.app;
    let nothing_issued = |app: &TestApp| {
        assert_eq!(count(app, "authorization_codes"), 0);
        assert_eq!(count(app, "token_families"), 0);
        assert!(audit_actions(app, "break_glass.invoked").is_empty());
    };

    // A role without the permission: no action shown, and a forged POST is refused.
    let carl = sign_in(&s, "carl").await;
    let (_, picker, _) = start(&s, &carl, &s.client, REQUESTED).await;
    assert!(!picker.body.contains("break-glass"));
    let consent = choose(&carl, &picker, "p1").await;
    assert!(
        !consent.body.contains("break-glass-link"),
        "{}",
        consent.body
    );
    let request = consent.field("request").unwrap();
    let page = invoke(
        &carl,
        &[
            ("csrf", &consent.csrf()),
            ("request", &request),
            ("patient", "p1"),
            ("reason", REASON),
            ("code", "123456"),
        ],
    )
    .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN, "{}", page.body);
    assert_eq!(refused(app).len(), 1);
    assert_eq!(refused(app)[0]["error"], "not_permitted");
    nothing_issued(app);

    // An AI-tool client never receives it, whoever asks.
    let (ai, _) = register(
        app,
        json!({"client_id": "scribe", "name": "Scribe AI", "kind": "public", "redirect_uris": [CALLBACK], "ai_tool": true,
               "scope": "openid launch/patient patient/Observation.rs"}),
    );
    let nina = sign_in(&s, "nina").await;
    let (_, picker, _) = start(
        &s,
        &nina,
        &ai,
        "openid launch/patient patient/Observation.rs",
    )
    .await;
    assert!(!picker.body.contains("break-glass"));
    let consent = choose(&nina, &picker, "p1").await;
    assert!(!consent.body.contains("break-glass-link"));
    let page = invoke(
        &nina,
        &[
            ("csrf", &consent.csrf()),
            ("request", &consent.field("request").unwrap()),
            ("patient", "p1"),
            ("reason", REASON),
            ("code", "123456"),
        ],
    )
    .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN, "{}", page.body);
    assert_eq!(refused(app).len(), 2);
    assert_eq!(refused(app)[1]["error"], "client_excluded");
    nothing_issued(app);

    // The nurse on the consent page of the ordinary app: the action is offered.
    let (_, picker, _) = start(&s, &nina, &s.client, REQUESTED).await;
    let consent = choose(&nina, &picker, "p1").await;
    assert!(
        consent.body.contains("id=\"break-glass-link\""),
        "{}",
        consent.body
    );
    let request = consent.field("request").unwrap();
    let form = nina
        .get(&format!("/authorize/break-glass?request={request}"))
        .await;
    assert_eq!(form.status, StatusCode::OK, "{}", form.body);
    assert!(form.body.contains(BANNER));
    let csrf = form.csrf();
    s.clock.advance_secs(30);
    let fresh = code_now(&s.secret, &s.clock);
    let wrong = Totp::new(&s.secret)
        .unwrap()
        .code_at_step(s.clock.now_secs() / 30 + 200);
    let used = {
        // The code nina signed in with (the step before): replaying it is refused.
        Totp::new(&s.secret)
            .unwrap()
            .code_at_step(s.clock.now_secs() / 30 - 1)
    };
    let cases: [Case<'_>; 6] = [
        (
            "no reason",
            [
                ("csrf", &csrf),
                ("request", &request),
                ("patient", "p1"),
                ("reason", "   "),
                ("code", &fresh),
            ],
            StatusCode::BAD_REQUEST,
            "reason_required",
        ),
        (
            "a reason too short to mean anything",
            [
                ("csrf", &csrf),
                ("request", &request),
                ("patient", "p1"),
                ("reason", "urgent"),
                ("code", &fresh),
            ],
            StatusCode::BAD_REQUEST,
            "reason_required",
        ),
        (
            "another patient than the one in context",
            [
                ("csrf", &csrf),
                ("request", &request),
                ("patient", "p2"),
                ("reason", REASON),
                ("code", &fresh),
            ],
            StatusCode::BAD_REQUEST,
            "patient_not_in_context",
        ),
        (
            "missing CSRF token",
            [
                ("csrf", ""),
                ("request", &request),
                ("patient", "p1"),
                ("reason", REASON),
                ("code", &fresh),
            ],
            StatusCode::FORBIDDEN,
            "csrf",
        ),
        (
            "a wrong TOTP code",
            [
                ("csrf", &csrf),
                ("request", &request),
                ("patient", "p1"),
                ("reason", REASON),
                ("code", &wrong),
            ],
            StatusCode::UNAUTHORIZED,
            "second_factor_failed",
        ),
        (
            "a replayed TOTP code",
            [
                ("csrf", &csrf),
                ("request", &request),
                ("patient", "p1"),
                ("reason", REASON),
                ("code", &used),
            ],
            StatusCode::UNAUTHORIZED,
            "second_factor_replayed",
        ),
    ];
    for (name, fields, status, error) in &cases {
        let before = refused(app).len();
        let page = invoke(&nina, fields).await;
        assert_eq!(page.status, *status, "{name}: {}", page.body);
        let after = refused(app);
        assert_eq!(after.len(), before + 1, "{name}: exactly one event");
        assert_eq!(after[before]["error"], *error, "{name}");
        // Only a patient this request may name is recorded (a posted id must not land in
        // that patient's accounting of disclosures); a forged form names none.
        let recorded = match *name {
            "another patient than the one in context" | "missing CSRF token" => Value::Null,
            _ => Value::from("p1"),
        };
        assert_eq!(after[before]["patient"], recorded, "{name}");
        nothing_issued(app);
    }
    // The refused reason and wrong codes consumed nothing the person needs: with a fresh code
    // (the same back-off as sign-in: a third failure would have slowed it), it is granted.
    let page = invoke(
        &nina,
        &[
            ("csrf", &csrf),
            ("request", &request),
            ("patient", "p1"),
            ("reason", REASON),
            ("code", &fresh),
        ],
    )
    .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert_eq!(audit_actions(app, "break_glass.invoked").len(), 1);
    assert_eq!(count(app, "authorization_codes"), 1);
    // The same code again (single use): refused, audited, nothing more issued.
    let (_, picker, _) = start(&s, &nina, &s.client, REQUESTED).await;
    let consent = choose(&nina, &picker, "p1").await;
    let before = refused(app).len();
    let page = invoke(
        &nina,
        &[
            ("csrf", &consent.csrf()),
            ("request", &consent.field("request").unwrap()),
            ("patient", "p1"),
            ("reason", REASON),
            ("code", &fresh),
        ],
    )
    .await;
    assert_eq!(page.status, StatusCode::UNAUTHORIZED, "{}", page.body);
    assert_eq!(refused(app)[before]["error"], "second_factor_replayed");
    assert_eq!(count(app, "authorization_codes"), 1);
    // Sign-in's back-off applies: after a third failed guess even a right code waits.
    let fields = |code: &str| -> Vec<(String, String)> {
        vec![
            ("csrf".into(), consent.csrf()),
            ("request".into(), consent.field("request").unwrap()),
            ("patient".into(), "p1".into()),
            ("reason".into(), REASON.into()),
            ("code".into(), code.into()),
        ]
    };
    let post = |pairs: Vec<(String, String)>| post_owned(&nina, pairs);
    for _ in 0..2 {
        assert_eq!(post(fields(&wrong)).await.status, StatusCode::UNAUTHORIZED);
    }
    let next = Totp::new(&s.secret)
        .unwrap()
        .code_at_step(s.clock.now_secs() / 30 + 1);
    let before = refused(app).len();
    assert_eq!(post(fields(&next)).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(refused(app)[before]["error"], "second_factor_throttled");
    s.clock.advance_secs(2);
    assert_eq!(post(fields(&next)).await.status, StatusCode::OK);
    assert_eq!(audit_actions(app, "break_glass.invoked").len(), 2);
}
