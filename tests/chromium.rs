//! Real headless Chromium against a real Ward: what a clinician actually does.

use std::sync::Arc;

use ward::audit::AuditContext;
use ward::authn::totp::Totp;
use ward::authz::users::{self, NewUser};
use ward::clock::{Clock, ManualClock};

use crate::common::browser::base32_decode;
use crate::common::webdriver::Chromium;
use crate::common::{Backend, TestApp};

const PASSWORD: &str = "violet tractor sings at dawn";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clinician_signs_in_with_password_and_totp_in_chromium() {
    let clock = Arc::new(ManualClock::at_secs(1_900_000_000));
    let Some(app) = TestApp::builder(Backend::Sqlite)
        .manual_clock(clock.clone())
        .start()
        .await
    else {
        return;
    };
    let Some(chrome) = Chromium::start().await else {
        return;
    };
    users::create(
        &mut app.conn(),
        clock.as_ref(),
        &AuditContext::cli(),
        NewUser {
            username: "dr.demo".into(),
            display_name: Some("Dr. Demo".into()),
            fhir_user: Some("Practitioner/123".into()),
            roles: vec!["physician".into()],
            password_hash: Some(ward::authn::password::hash_blocking(PASSWORD).unwrap()),
        },
    )
    .unwrap();

    chrome.goto(&app.url("/login")).await;
    chrome.screenshot("login").await;
    chrome.type_into("#username", "dr.demo").await;
    chrome.type_into("#password", PASSWORD).await;
    chrome.click("button[type=submit]").await;

    // MFA is required by the physician role: enrolment comes first.
    chrome.wait_for_path("/account/mfa/totp").await;
    chrome.screenshot("enrol-totp").await;
    let secret = base32_decode(&chrome.value_of("#secret").await);
    let totp = Totp::new(&secret).unwrap();
    chrome
        .type_into("#code", &totp.code_at_step(clock.now_secs() / 30))
        .await;
    chrome
        .click("form[action='/account/mfa/totp'] button[type=submit]")
        .await;
    let source = {
        chrome.find("ul.codes").await;
        chrome.source().await
    };
    assert!(source.contains("Save your recovery codes"));
    chrome.click("a.button").await;
    chrome.wait_for_path("/account").await;
    assert!(chrome.source().await.contains("Dr. Demo"));
    chrome.screenshot("account").await;

    // Sign out, then in again with a fresh code.
    chrome.click("header form button").await;
    chrome.wait_for_path("/login").await;
    chrome.type_into("#username", "dr.demo").await;
    chrome.type_into("#password", PASSWORD).await;
    chrome.click("button[type=submit]").await;
    chrome.wait_for_path("/login/mfa").await;
    clock.advance_secs(30);
    chrome
        .type_into("#code", &totp.code_at_step(clock.now_secs() / 30))
        .await;
    chrome
        .click("form[action='/login/mfa'] button[type=submit]")
        .await;
    chrome.wait_for_path("/account").await;
    assert!(chrome
        .source()
        .await
        .contains("Authenticator app: <strong>set up</strong>"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_registers_a_passkey_and_signs_in_with_it_in_chromium() {
    let Some(app) = TestApp::start(Backend::Sqlite).await else {
        return;
    };
    let Some(chrome) = Chromium::start().await else {
        return;
    };
    users::create(
        &mut app.conn(),
        app.state.clock.as_ref(),
        &AuditContext::cli(),
        NewUser {
            username: "pat".into(),
            display_name: Some("Pat Patient".into()),
            fhir_user: Some("Patient/123".into()),
            roles: vec!["patient".into()],
            password_hash: Some(ward::authn::password::hash_blocking(PASSWORD).unwrap()),
        },
    )
    .unwrap();
    let authenticator = chrome.add_virtual_authenticator().await;

    chrome.goto(&app.url("/login")).await;
    chrome.type_into("#username", "pat").await;
    chrome.type_into("#password", PASSWORD).await;
    chrome
        .click("form[action='/login'] button[type=submit]")
        .await;
    chrome.wait_for_path("/account").await;

    // Register a passkey from the account page.
    chrome.type_into("#passkey-name", "Test laptop").await;
    chrome.click("button[data-passkey=register]").await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !chrome.source().await.contains("value=\"Test laptop\"") {
        assert!(
            std::time::Instant::now() < deadline,
            "passkey not listed: {}",
            chrome.source().await
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    chrome.screenshot("account-passkey").await;
    assert_eq!(
        chrome
            .credentials(&authenticator)
            .await
            .as_array()
            .map(Vec::len),
        Some(1)
    );

    // Passwordless: the passkey alone signs in (it verifies the user itself).
    chrome.click("header form button").await;
    chrome.wait_for_path("/login").await;
    chrome.click("button[data-passkey=login]").await;
    chrome.wait_for_path("/account").await;
    assert!(chrome.source().await.contains("Pat Patient"));

    // As a second factor after the password.
    chrome.click("header form button").await;
    chrome.wait_for_path("/login").await;
    chrome.type_into("#username", "pat").await;
    chrome.type_into("#password", PASSWORD).await;
    chrome
        .click("form[action='/login'] button[type=submit]")
        .await;
    chrome.wait_for_path("/login/mfa").await;
    chrome.click("button[data-passkey=mfa]").await;
    chrome.wait_for_path("/account").await;

    let events =
        ward::store::audit_events::list(&mut app.conn(), Some("login.succeeded"), 10).unwrap();
    let methods: Vec<String> = events.iter().map(|e| e.details.clone()).collect();
    assert!(
        methods
            .iter()
            .any(|m| m.contains("\"hwk\"") && m.contains("\"mfa\"")),
        "passwordless: {methods:?}"
    );
    assert!(
        methods
            .iter()
            .any(|m| m.contains("\"pwd\"") && m.contains("\"hwk\"")),
        "second factor: {methods:?}"
    );
    let enrolled =
        ward::store::audit_events::list(&mut app.conn(), Some("mfa.enrolled"), 10).unwrap();
    assert!(enrolled[0].details.contains("webauthn"));

    // A cloned authenticator replays an old signature counter: refused and audited.
    let credential = chrome.credentials(&authenticator).await[0].clone();
    assert!(
        credential["signCount"].as_u64().unwrap_or(0) > 0,
        "the authenticator counts: {credential}"
    );
    chrome.remove_virtual_authenticator(&authenticator).await;
    let clone = chrome.add_virtual_authenticator().await;
    chrome.add_credential(&clone, &credential, 1).await;
    chrome.click("header form button").await;
    chrome.wait_for_path("/login").await;
    chrome.click("button[data-passkey=login]").await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !chrome.source().await.contains("cannot sign you in") {
        assert!(
            std::time::Instant::now() < deadline,
            "clone was not refused: {}",
            chrome.source().await
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(chrome.url().await.ends_with("/login"));
    let regressions =
        ward::store::audit_events::list(&mut app.conn(), Some("webauthn.counter_regression"), 10)
            .unwrap();
    assert_eq!(regressions.len(), 1);
    assert_eq!(regressions[0].severity, "high");
}

/// A tiny loopback web server standing in for a native app's redirect URI: every request gets
/// a 200 page, so the browser settles on the callback URL with its query.
fn app_callback_server() -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut buffer = [0u8; 4096];
            let _ = stream.read(&mut buffer);
            let _ = stream.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 9\r\nConnection: close\r\n\r\nApp ready",
            );
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clinician_launches_an_app_with_totp_picker_and_consent_in_chromium() {
    use crate::common::smart::{pkce, FHIR};
    let clock = Arc::new(ManualClock::at_secs(1_900_000_000));
    let Some(app) = TestApp::builder(Backend::Sqlite)
        .manual_clock(clock.clone())
        .env("WARD_FHIR_BASE", FHIR)
        .start()
        .await
    else {
        return;
    };
    let Some(chrome) = Chromium::start().await else {
        return;
    };
    users::create(
        &mut app.conn(),
        clock.as_ref(),
        &AuditContext::cli(),
        NewUser {
            username: "dr.demo".into(),
            display_name: Some("Dr. Demo".into()),
            fhir_user: Some("Practitioner/123".into()),
            roles: vec!["physician".into()],
            password_hash: Some(ward::authn::password::hash_blocking(PASSWORD).unwrap()),
        },
    )
    .unwrap();
    ward::patients::import(
        &mut app.conn(),
        clock.as_ref(),
        &AuditContext::cli(),
        std::io::Cursor::new(
            r#"{"resourceType":"Patient","id":"p7","name":[{"family":"Rivera","given":["Ana"]}],"birthDate":"1984-06-01"}"#,
        ),
    )
    .unwrap();
    let port = app_callback_server();
    let callback = format!("http://127.0.0.1:{port}/callback");
    let client_id = "chart-viewer";
    let spec: ward::clients::model::ClientSpec = serde_json::from_value(serde_json::json!({
        "client_id": client_id, "name": "Chart Viewer", "kind": "public", "redirect_uris": [callback],
        "scope": "openid fhirUser launch/patient patient/*.rs",
    }))
    .unwrap();
    ward::clients::register(
        &mut app.conn(),
        clock.as_ref(),
        &AuditContext::cli(),
        spec.client_id.clone(),
        ward::clients::model::validate(&spec).unwrap(),
    )
    .unwrap();
    let (verifier, challenge) = pkce();
    let scope = "openid fhirUser launch/patient patient/Observation.rs patient/Condition.rs patient/MedicationRequest.rs";
    let query = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs([
            ("response_type", "code"),
            ("client_id", client_id),
            ("redirect_uri", callback.as_str()),
            ("scope", scope),
            ("state", "s-1"),
            ("aud", FHIR),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
        ])
        .finish();

    // Standalone launch: sign in, enrol TOTP (the physician role requires MFA), then the picker.
    chrome.goto(&app.url(&format!("/authorize?{query}"))).await;
    chrome.wait_for_path("/login").await;
    chrome.type_into("#username", "dr.demo").await;
    chrome.type_into("#password", PASSWORD).await;
    chrome
        .click("form[action='/login'] button[type=submit]")
        .await;
    enrol_totp(&chrome, clock.now_secs()).await;
    chrome.wait_for_path("/authorize/patients").await;
    chrome.type_into("#q", "rivera").await;
    chrome.click("form[role=search] button").await;
    chrome.click("#patient-p7").await;
    chrome.screenshot("patient-picker").await;
    chrome.click("#choose-patient").await;

    // Consent: untick Condition, share only laboratory Observations.
    chrome.find("#consent-form").await;
    assert!(chrome.source().await.contains("Ana Rivera"));
    chrome.click("input[data-resource='Condition']").await;
    chrome.click("#categories-Observation summary").await;
    chrome
        .click("input[data-category='Observation:laboratory']")
        .await;
    chrome.screenshot("consent").await;
    chrome.click("#approve").await;
    chrome.wait_for_path("/callback").await;
    let landed = url::Url::parse(&chrome.url().await).unwrap();
    let params: std::collections::HashMap<String, String> =
        landed.query_pairs().into_owned().collect();
    assert_eq!(params["state"], "s-1");
    assert_eq!(params["iss"], app.base);

    let response = app
        .client
        .post(app.url("/token"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", params["code"].as_str()),
            ("redirect_uri", callback.as_str()),
            ("code_verifier", verifier.as_str()),
            ("client_id", client_id),
        ])
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["patient"], "p7", "{body}");
    let granted: Vec<&str> = body["scope"].as_str().unwrap().split(' ').collect();
    assert!(granted.contains(&"patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory"), "{granted:?}");
    assert!(
        granted.contains(&"patient/MedicationRequest.rs"),
        "{granted:?}"
    );
    assert!(
        !granted.iter().any(|s| s.starts_with("patient/Condition")),
        "{granted:?}"
    );
    assert!(!granted.contains(&"patient/Observation.rs"), "{granted:?}");
}

/// Issue 7's browser test: an admin (password + TOTP) registers a client and a user through the
/// console; the new user sets a password through the one-time enrolment link, and the new
/// client completes a standalone launch for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_registers_a_client_and_a_user_in_the_console_and_the_client_launches() {
    use crate::common::smart::{pkce, FHIR};
    let clock = Arc::new(ManualClock::at_secs(1_900_000_000));
    let Some(app) = TestApp::builder(Backend::Sqlite)
        .manual_clock(clock.clone())
        .env("WARD_FHIR_BASE", FHIR)
        .start()
        .await
    else {
        return;
    };
    let Some(chrome) = Chromium::start().await else {
        return;
    };
    users::create(
        &mut app.conn(),
        clock.as_ref(),
        &AuditContext::cli(),
        NewUser {
            username: "ada.admin".into(),
            display_name: Some("Ada Admin".into()),
            roles: vec!["admin".into()],
            password_hash: Some(ward::authn::password::hash_blocking(PASSWORD).unwrap()),
            ..NewUser::default()
        },
    )
    .unwrap();
    ward::patients::import(
        &mut app.conn(),
        clock.as_ref(),
        &AuditContext::cli(),
        std::io::Cursor::new(
            r#"{"resourceType":"Patient","id":"p9","name":[{"family":"Okafor","given":["Chidi"]}],"birthDate":"1990-02-03"}"#,
        ),
    )
    .unwrap();

    // The console sends a stranger to sign in; the admin role needs a second factor.
    chrome.goto(&app.url("/admin")).await;
    chrome.wait_for_path("/login").await;
    chrome.type_into("#username", "ada.admin").await;
    chrome.type_into("#password", PASSWORD).await;
    chrome
        .click("form[action='/login'] button[type=submit]")
        .await;
    enrol_totp(&chrome, clock.now_secs()).await;
    chrome.wait_for_path("/admin").await;
    chrome.screenshot("admin-home").await;

    // Register a public SMART app.
    let port = app_callback_server();
    let callback = format!("http://127.0.0.1:{port}/callback");
    chrome.goto(&app.url("/admin/clients")).await;
    chrome
        .type_into("#f-new-client-client_id", "console-app")
        .await;
    chrome
        .type_into("#f-new-client-name", "Console-made app")
        .await;
    chrome
        .type_into("#f-new-client-redirect_uris", &callback)
        .await;
    chrome
        .type_into(
            "#f-new-client-scope",
            "openid fhirUser launch/patient patient/*.rs",
        )
        .await;
    chrome.screenshot("admin-new-client").await;
    chrome.click("#new-client-submit").await;
    chrome.find("#created").await;
    assert!(chrome
        .source()
        .await
        .contains("Client console-app registered"));

    // A bad registration is refused with the field named, and nothing is saved.
    chrome.goto(&app.url("/admin/clients")).await;
    chrome.type_into("#f-new-client-name", "Bad app").await;
    chrome
        .type_into("#f-new-client-redirect_uris", "javascript:alert(1)")
        .await;
    chrome.click("#new-client-submit").await;
    chrome.find("#field-errors").await;
    assert!(chrome.source().await.contains("redirect_uris"));

    // Create a physician with a one-time enrolment link.
    chrome.goto(&app.url("/admin/users")).await;
    chrome.type_into("#f-new-user-username", "dr.new").await;
    chrome
        .type_into("#f-new-user-display_name", "Dr. New")
        .await;
    chrome
        .type_into("#f-new-user-fhir_user", "Practitioner/77")
        .await;
    chrome.type_into("#f-new-user-roles", "physician").await;
    chrome.click("#f-new-user-enrolment_link").await;
    chrome.click("#new-user-submit").await;
    chrome.find("#secret-value").await;
    let page = chrome.source().await;
    let link = page
        .split("id=\"secret-value\">")
        .nth(1)
        .and_then(|rest| rest.split('<').next())
        .unwrap()
        .replace("&amp;", "&");
    assert!(link.starts_with(&app.url("/enrol?token=")), "{link}");
    chrome.screenshot("admin-new-user").await;
    chrome.click("#sign-out").await;
    chrome.wait_for_path("/login").await;

    // The new user sets their password through the link (once).
    chrome.goto(&link).await;
    chrome
        .type_into("#password", "copper kettle hums softly")
        .await;
    chrome
        .type_into("#confirm", "copper kettle hums softly")
        .await;
    chrome.click("#enrol-submit").await;
    chrome.wait_for_path("/login").await;
    chrome.goto(&link).await;
    assert!(chrome.source().await.contains("This link cannot be used"));

    // The console-made client completes a standalone launch for the console-made user.
    let (verifier, challenge) = pkce();
    let query = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs([
            ("response_type", "code"),
            ("client_id", "console-app"),
            ("redirect_uri", callback.as_str()),
            (
                "scope",
                "openid fhirUser launch/patient patient/Observation.rs",
            ),
            ("state", "s-9"),
            ("aud", FHIR),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
        ])
        .finish();
    chrome.goto(&app.url(&format!("/authorize?{query}"))).await;
    chrome.wait_for_path("/login").await;
    chrome.type_into("#username", "dr.new").await;
    chrome
        .type_into("#password", "copper kettle hums softly")
        .await;
    chrome
        .click("form[action='/login'] button[type=submit]")
        .await;
    clock.advance_secs(30);
    enrol_totp(&chrome, clock.now_secs()).await;
    chrome.wait_for_path("/authorize/patients").await;
    chrome.type_into("#q", "okafor").await;
    chrome.click("form[role=search] button").await;
    chrome.click("#patient-p9").await;
    chrome.click("#choose-patient").await;
    chrome.find("#consent-form").await;
    chrome.click("#approve").await;
    chrome.wait_for_path("/callback").await;
    let landed = url::Url::parse(&chrome.url().await).unwrap();
    let params: std::collections::HashMap<String, String> =
        landed.query_pairs().into_owned().collect();
    assert_eq!(params["state"], "s-9");
    let response = app
        .client
        .post(app.url("/token"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", params["code"].as_str()),
            ("redirect_uri", callback.as_str()),
            ("code_verifier", verifier.as_str()),
            ("client_id", "console-app"),
        ])
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["patient"], "p9", "{body}");
    assert_eq!(
        body["scope"],
        "openid fhirUser launch/patient patient/Observation.rs"
    );

    // Every console change was audited with the admin as actor.
    let admin_id: String = users::get_by_username(&mut app.conn(), "ada.admin")
        .unwrap()
        .id;
    for action in [
        "client.registered",
        "user.created",
        "user.enrolment_link_created",
    ] {
        let rows = ward::store::audit_events::list(&mut app.conn(), Some(action), 100).unwrap();
        assert!(
            rows.iter()
                .any(|r| r.actor_user.as_deref() == Some(admin_id.as_str())),
            "{action}: {rows:?}"
        );
    }
}

/// Issue 11's newcomer walkthrough, as the README tells it: `ward serve --demo`, the sample
/// app's standalone launch as dr.demo (TOTP enrolment, picker, consent) ending in decoded
/// tokens and an active introspection, the mini-EHR's launch, and the admin console.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_walkthrough_works_in_chromium() {
    crate::common::install_crypto_provider();
    let Some(chrome) = Chromium::start().await else {
        return;
    };
    let demo = crate::demo::Demo::start().await;
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    };
    let wait_for_text = |needle: &'static str| {
        let chrome = &chrome;
        async move {
            for _ in 0..100 {
                if chrome.source().await.contains(needle) {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            panic!("never saw {needle:?} in:\n{}", chrome.source().await);
        }
    };

    // 1. The sample app's standalone launch.
    chrome.goto(&demo.app()).await;
    chrome.click("#standalone").await;
    chrome.wait_for_path("/login").await;
    chrome.type_into("#username", "dr.demo").await;
    chrome
        .type_into("#password", "demo clinician only: lighthouse orchard")
        .await;
    chrome.screenshot_for_readme("login").await;
    chrome
        .click("form[action='/login'] button[type=submit]")
        .await;
    enrol_totp(&chrome, now()).await;
    chrome.wait_for_path("/authorize/patients").await;
    chrome.type_into("#q", "rivera").await;
    chrome.click("form[role=search] button").await;
    chrome.click("#patient-demo-pat-2").await;
    chrome.click("#choose-patient").await;
    chrome.find("#consent-form").await;
    chrome.screenshot_for_readme("consent").await;
    chrome.click("#approve").await;
    chrome.wait_for_path("/demo/app").await;
    wait_for_text("\"active\": true").await;
    let page = chrome.source().await;
    assert!(page.contains("demo-pat-2"), "{page}");
    assert!(page.contains("Practitioner/demo-practitioner"), "{page}");
    assert!(page.contains("at+jwt"), "{page}");
    chrome.screenshot_for_readme("demo-app").await;

    // 2. The mini-EHR launches the app for another patient.
    chrome.goto(&format!("{}/demo/ehr", demo.public())).await;
    chrome.click("#launch-demo-pat-3").await;
    chrome.find("#consent-form").await;
    assert!(chrome.source().await.contains("Okafor"));
    chrome.click("#approve").await;
    chrome.wait_for_path("/demo/app").await;
    wait_for_text("\"active\": true").await;
    assert!(chrome.source().await.contains("demo-pat-3"));

    // 3. The admin console.
    chrome.goto(&format!("{}/account", demo.public())).await;
    chrome.click("header form button").await;
    chrome.wait_for_path("/login").await;
    chrome.goto(&format!("{}/admin", demo.public())).await;
    chrome.wait_for_path("/login").await;
    chrome.type_into("#username", "admin.demo").await;
    chrome
        .type_into("#password", "demo admin only: granite meadow")
        .await;
    chrome
        .click("form[action='/login'] button[type=submit]")
        .await;
    enrol_totp(&chrome, now()).await;
    chrome.wait_for_path("/admin").await;
    chrome
        .goto(&format!("{}/admin/clients", demo.public()))
        .await;
    assert!(chrome.source().await.contains("demo-app"));
    chrome.screenshot_for_readme("admin").await;
}

/// The first sign-in's TOTP enrolment: read the secret off the page, confirm a code for the time
/// `now_secs`, pass the recovery codes, and continue where the sign-in was going.
async fn enrol_totp(chrome: &Chromium, now_secs: i64) -> Totp {
    chrome.wait_for_path("/account/mfa/totp").await;
    let totp = Totp::new(&base32_decode(&chrome.value_of("#secret").await)).unwrap();
    chrome
        .type_into("#code", &totp.code_at_step(now_secs / 30))
        .await;
    chrome
        .click("form[action='/account/mfa/totp'] button[type=submit]")
        .await;
    chrome.find("ul.codes").await;
    chrome.click("a.button").await;
    totp
}
