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
