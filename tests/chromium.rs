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
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
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
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
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
