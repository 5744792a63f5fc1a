//! The service-facing half over real HTTP on SQLite and PostgreSQL: SMART Backend Services
//! (`client_credentials` with RS384 and ES384 assertions, inline JWKS and a JWKS URL), token
//! introspection by resource servers, revocation, the connected-apps page and the policy check.

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use josekit::jws::{JwsSigner, ES384, HS256, RS384};
use reqwest::StatusCode;
use serde_json::{json, Value};
use ward::clock::ManualClock;

use crate::common::browser::Browser;
use crate::common::https_server::{self, Reply, TestCa};
use crate::common::smart::*;
use crate::common::{Backend, TestApp};
use crate::on_both_backends;

on_both_backends!(
    backend_services_get_short_system_tokens,
    rejects_bad_backend_client_assertions,
    resource_servers_introspect_tokens_of_every_flow,
    rejects_bad_introspection,
    revocation_of_each_token_kind,
    people_revoke_apps_on_the_connected_apps_page,
    the_policy_check_answers_for_fhir_requests,
);

/// A JWT signed over exactly these header and payload members (no library normalisation).
fn sign_raw(header: &Value, payload: &Value, signer: Option<&dyn JwsSigner>) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(payload.to_string())
    );
    let signature = signer
        .map(|s| URL_SAFE_NO_PAD.encode(s.sign(input.as_bytes()).unwrap()))
        .unwrap_or_default();
    format!("{input}.{signature}")
}

struct Backendish {
    client_id: String,
    /// The registered public key, PEM (for the HS256-with-the-public-key attack).
    public_pem: Vec<u8>,
    signer: Box<dyn JwsSigner>,
    alg: &'static str,
    kid: &'static str,
}

impl Backendish {
    fn claims(&self, aud: &str, now: i64) -> Value {
        json!({
            "iss": self.client_id, "sub": self.client_id, "aud": aud,
            "exp": now + 240, "iat": now, "jti": ward::crypto::random_token(12),
        })
    }
    fn assertion(&self, aud: &str, now: i64) -> String {
        self.assertion_with(&json!({}), &self.claims(aud, now))
    }
    fn assertion_with(&self, header_extra: &Value, payload: &Value) -> String {
        let mut header = json!({"alg": self.alg, "kid": self.kid, "typ": "JWT"});
        for (k, v) in header_extra.as_object().unwrap() {
            header[k] = v.clone();
        }
        sign_raw(&header, payload, Some(self.signer.as_ref()))
    }
}

async fn backend_token(app: &TestApp, assertion: &str, scope: &str) -> (StatusCode, Value) {
    token(
        app,
        &[
            ("grant_type", "client_credentials"),
            ("scope", scope),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", assertion),
        ],
        None,
    )
    .await
}

/// A backend service with an inline RS384 JWKS.
fn rs384_backend(app: &TestApp) -> Backendish {
    let pair = RS384.generate_key_pair(2048).unwrap();
    let mut jwk = pair.to_jwk_public_key();
    jwk.set_key_id("rs-1");
    jwk.set_algorithm("RS384");
    let (client_id, _) = register(
        app,
        json!({"client_id": "lab-sync", "name": "Lab sync", "kind": "confidential-asymmetric",
               "scope": "system/Observation.rs system/Patient.r",
               "jwks": {"keys": [serde_json::to_value(&jwk).unwrap()]}}),
    );
    Backendish {
        client_id,
        public_pem: pair.to_pem_public_key(),
        signer: Box::new(RS384.signer_from_jwk(&pair.to_jwk_private_key()).unwrap()),
        alg: "RS384",
        kid: "rs-1",
    }
}

async fn backend_services_get_short_system_tokens(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let es = ES384.generate_key_pair().unwrap();
    let mut es_jwk = es.to_jwk_public_key();
    es_jwk.set_key_id("es-1");
    let jwks = json!({"keys": [serde_json::to_value(&es_jwk).unwrap()]}).to_string();
    let server = https_server::serve(
        &ca,
        Arc::new(move |path: &str| {
            (path == "/jwks").then(|| Reply::JsonCached(jwks.clone(), "max-age=600"))
        }),
    )
    .await;
    let Some(app) = TestApp::builder(backend)
        .env("WARD_FHIR_BASE", FHIR)
        .env("WARD_DANGER_ALLOW_LOOPBACK_JWKS_URI", "true")
        .env("WARD_DANGER_EXTRA_CA_FILE", ca.ca_file.to_str().unwrap())
        .start()
        .await
    else {
        return;
    };
    let token_url = app.url("/token");
    let rs = rs384_backend(&app);
    let (es_id, _) = register(
        &app,
        json!({"name": "Billing export", "kind": "confidential-asymmetric",
               "scope": "system/Claim.rs system/Coverage.rs", "jwks_uri": server.url("/jwks")}),
    );
    let es = Backendish {
        client_id: es_id,
        public_pem: Vec::new(),
        signer: Box::new(ES384.signer_from_jwk(&es.to_jwk_private_key()).unwrap()),
        alg: "ES384",
        kid: "es-1",
    };
    let now = unix_now();
    let (status, body) = backend_token(
        &app,
        &rs.assertion(&token_url, now),
        "system/Observation.rs system/Condition.rs",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["scope"], "system/Observation.rs",
        "narrowed to the allowance"
    );
    assert!(body["expires_in"].as_i64().unwrap() <= 300);
    assert!(body.get("refresh_token").is_none() && body.get("id_token").is_none());
    let claims = decode_payload(body["access_token"].as_str().unwrap());
    assert_eq!(
        (claims["sub"].as_str(), claims["aud"].as_str()),
        (Some("lab-sync"), Some(FHIR))
    );
    // The issuer URL is an accepted audience too; the JWKS URL client works the same.
    let (status, body) =
        backend_token(&app, &es.assertion(&app.base, now), "system/Claim.rs").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["scope"], "system/Claim.rs");
    // Outside the allowance, or user/ scopes: invalid_scope, nothing issued.
    let before = count(&app, "access_tokens");
    for scope in [
        "system/Claim.rs",
        "user/Observation.rs",
        "patient/*.rs",
        "launch",
    ] {
        let (status, body) = backend_token(&app, &rs.assertion(&token_url, now), scope).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_scope")),
            "{scope}: {body}"
        );
    }
    let (status, body) = backend_token(
        &app,
        &rs.assertion(&token_url, now),
        "system/Observation.rs",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(count(&app, "access_tokens"), before + 1);
    assert!(audit_actions(&app, "token.issued")
        .iter()
        .any(|e| e["grant"] == "client_credentials"));
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn decode_payload(jwt: &str) -> Value {
    let part = jwt.split('.').nth(1).expect("payload");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

async fn rejects_bad_backend_client_assertions(backend: Backend) {
    let Some(app) = smart_app(backend).await else {
        return;
    };
    let rs = rs384_backend(&app);
    let token_url = app.url("/token");
    let now = unix_now();
    let good = rs.claims(&token_url, now);
    let with = |k: &str, v: Value| {
        let mut c = good.clone();
        c[k] = v;
        c["jti"] = json!(ward::crypto::random_token(12));
        c
    };
    // The HS256-with-the-public-key attack: the registered public key as an HMAC secret.
    let hs = HS256.signer_from_bytes(&rs.public_pem).unwrap();
    let es = ES384
        .signer_from_jwk(&ES384.generate_key_pair().unwrap().to_jwk_private_key())
        .unwrap();
    let cases: Vec<(&str, String)> = vec![
        (
            "rejects_alg_none",
            sign_raw(
                &json!({"alg": "none", "kid": "rs-1"}),
                &with("jti", json!("n1")),
                None,
            ),
        ),
        (
            "rejects_hs256_keyed_with_the_public_key",
            sign_raw(
                &json!({"alg": "HS256", "kid": "rs-1"}),
                &with("jti", json!("h1")),
                Some(&hs),
            ),
        ),
        (
            "rejects_wrong_alg_for_the_key",
            sign_raw(
                &json!({"alg": "ES384", "kid": "rs-1"}),
                &with("jti", json!("e1")),
                Some(&es),
            ),
        ),
        (
            "rejects_unknown_kid",
            rs.assertion_with(&json!({"kid": "other"}), &with("jti", json!("k1"))),
        ),
        (
            "rejects_jku_not_the_registered_url",
            rs.assertion_with(
                &json!({"jku": "https://evil.example/jwks"}),
                &with("jti", json!("j1")),
            ),
        ),
        (
            "rejects_iss_not_sub",
            rs.assertion_with(&json!({}), &with("sub", json!("someone-else"))),
        ),
        (
            "rejects_wrong_aud",
            rs.assertion_with(
                &json!({}),
                &with("aud", json!("https://elsewhere.example/token")),
            ),
        ),
        (
            "rejects_aud_with_an_extra_member",
            rs.assertion_with(
                &json!({}),
                &with("aud", json!([token_url, "https://x.example"])),
            ),
        ),
        (
            "rejects_exp_too_far",
            rs.assertion_with(&json!({}), &with("exp", json!(now + 3600))),
        ),
        (
            "rejects_exp_past",
            rs.assertion_with(&json!({}), &with("exp", json!(now - 10))),
        ),
        (
            "rejects_nbf_in_the_future",
            rs.assertion_with(&json!({}), &with("nbf", json!(now + 120))),
        ),
        (
            "rejects_numeric_claims_as_strings",
            rs.assertion_with(&json!({}), &with("exp", json!((now + 60).to_string()))),
        ),
        ("rejects_missing_jti", {
            let mut c = good.clone();
            c.as_object_mut().unwrap().remove("jti");
            rs.assertion_with(&json!({}), &c)
        }),
        ("rejects_garbage", "not.a.jwt".into()),
    ];
    let before = count(&app, "access_tokens");
    for (reason, assertion) in &cases {
        let (status, body) = backend_token(&app, assertion, "system/Observation.rs").await;
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::UNAUTHORIZED, Some("invalid_client")),
            "{reason}: {body}"
        );
    }
    assert_eq!(count(&app, "access_tokens"), before, "nothing issued");
    assert!(audit_actions(&app, "client.authentication_failed").len() >= cases.len());
    // A replayed jti: once fine, then refused — also when twenty arrive at once. Each replay
    // is audited once, as a failed client authentication without an actor (the client did not
    // authenticate), and nothing else is written for it.
    let audited = |app: &TestApp| {
        let failed = ward::store::audit_events::list(
            &mut app.conn(),
            Some("client.authentication_failed"),
            1000,
        )
        .unwrap();
        (
            failed.len(),
            failed.iter().filter(|e| e.actor_client.is_some()).count(),
            audit_actions(app, "token.issued").len(),
            audit_actions(app, "token.refused").len(),
            count(app, "access_tokens"),
        )
    };
    let once = rs.assertion(&token_url, now);
    assert_eq!(
        backend_token(&app, &once, "system/Observation.rs").await.0,
        StatusCode::OK
    );
    let before_replays = audited(&app);
    let (status, body) = backend_token(&app, &once, "system/Observation.rs").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_client")),
        "rejects_replayed_jti"
    );
    let (failed, with_actor, issued, refused, tokens) = before_replays;
    assert_eq!(
        audited(&app),
        (failed + 1, with_actor, issued, refused, tokens),
        "a replay is one authentication failure and nothing else"
    );
    let burst = rs.assertion(&token_url, now);
    let results = futures_util::future::join_all(
        (0..20).map(|_| backend_token(&app, &burst, "system/Observation.rs")),
    )
    .await;
    assert_eq!(
        results.iter().filter(|(s, _)| *s == StatusCode::OK).count(),
        1,
        "rejects_replayed_jti_concurrently"
    );
    assert_eq!(
        audited(&app),
        (failed + 20, with_actor, issued + 1, refused, tokens + 1),
        "nineteen concurrent replays: nineteen authentication failures, one token"
    );
    // A refused grant still consumes its assertion: the same jti cannot come back with other
    // parameters (recorded on its own before the refusal is answered).
    let refused_once = rs.assertion(&token_url, now);
    let (status, body) = backend_token(&app, &refused_once, "system/Encounter.rs").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_scope")),
        "{body}"
    );
    let (status, body) = backend_token(&app, &refused_once, "system/Observation.rs").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_client")),
        "rejects_jti_of_a_refused_grant: {body}"
    );
    // A public or secret client cannot use client_credentials.
    let (id, secret) = register(
        &app,
        json!({"name": "Portal", "kind": "confidential-symmetric", "redirect_uris": [CALLBACK], "scope": "openid"}),
    );
    let (status, body) = token(
        &app,
        &[
            ("grant_type", "client_credentials"),
            ("scope", "system/Observation.rs"),
        ],
        Some((&id, secret.as_deref().unwrap())),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("unauthorized_client"))
    );
}

/// A resource server for the FHIR base, and one for another base.
fn resource_servers(app: &TestApp) -> ((String, String), (String, String)) {
    let (rs, secret) = register(
        app,
        json!({"client_id": "fhir-api", "name": "FHIR API", "kind": "resource-server", "fhir_bases": [FHIR]}),
    );
    let (other, other_secret) = register(
        app,
        json!({"client_id": "other-api", "name": "Other API", "kind": "resource-server", "fhir_bases": ["https://other.example/fhir"]}),
    );
    ((rs, secret.unwrap()), (other, other_secret.unwrap()))
}

async fn introspect(app: &TestApp, basic: (&str, &str), token: &str) -> (StatusCode, Value) {
    post_form(app, "/introspect", &[("token", token)], Some(basic)).await
}

fn user_flow_app(app: &TestApp) -> String {
    register(
        app,
        json!({"client_id": "growth-chart", "name": "Growth Chart", "kind": "public", "redirect_uris": [CALLBACK],
               "scope": "openid fhirUser profile launch launch/patient offline_access patient/*.rs"}),
    )
    .0
}

async fn resource_servers_introspect_tokens_of_every_flow(backend: Backend) {
    let clock = Arc::new(ManualClock::at_secs(unix_now()));
    let Some(app) = TestApp::builder(backend)
        .env("WARD_FHIR_BASE", FHIR)
        .manual_clock(clock.clone())
        .start()
        .await
    else {
        return;
    };
    let ((rs, rs_secret), (other, other_secret)) = resource_servers(&app);
    add_user(&app, "pat", &["patient"], Some("Patient/123"));
    let app_id = user_flow_app(&app);
    let browser = Browser::new(&app.base);
    let code = code_flow(
        &app,
        &browser,
        &app_id,
        "openid fhirUser launch/patient offline_access patient/Observation.rs",
        Some(("pat", PASSWORD)),
    )
    .await;
    let (status, refreshed) = refresh(&app, code["refresh_token"].as_str().unwrap(), &app_id).await;
    assert_eq!(status, StatusCode::OK);
    let backend_client = rs384_backend(&app);
    let (status, service) = backend_token(
        &app,
        &backend_client.assertion(&app.url("/token"), clock_now(&clock)),
        "system/Observation.rs",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{service}");
    let id_claims = decode_payload(code["id_token"].as_str().unwrap());
    for (flow, response) in [
        ("authorization_code", &code),
        ("refresh_token", &refreshed),
        ("client_credentials", &service),
    ] {
        let access = response["access_token"].as_str().unwrap();
        let (status, info) = introspect(&app, (&rs, &rs_secret), access).await;
        assert_eq!(status, StatusCode::OK, "{flow}");
        assert_eq!(info["active"], true, "{flow}: {info}");
        assert_eq!(info["scope"], response["scope"], "{flow}");
        assert_eq!(info["token_type"], "Bearer");
        assert_eq!(info["aud"], FHIR);
        assert_eq!(info["iss"], app.base);
        let jwt = decode_payload(access);
        for k in ["client_id", "sub", "exp", "iat"] {
            assert_eq!(info[k], jwt[k], "{flow}: {k}");
        }
        for k in [
            "patient",
            "need_patient_banner",
            "encounter",
            "fhirContext",
            "intent",
            "tenant",
            "smart_style_url",
        ] {
            assert_eq!(info.get(k), response.get(k), "{flow}: {k}");
        }
        if flow != "client_credentials" {
            assert_eq!(info["fhirUser"], id_claims["fhirUser"]);
        }
        // Another resource server learns nothing about a token not meant for it.
        let (status, info) = introspect(&app, (&other, &other_secret), access).await;
        assert_eq!(
            (status, info),
            (StatusCode::OK, json!({"active": false})),
            "{flow}"
        );
    }
    assert!(audit_actions(&app, "token.introspected")
        .iter()
        .any(|e| e["patient"] == "123"));
    // Expired: inactive.
    clock.advance_secs(3600);
    let (_, info) = introspect(
        &app,
        (&rs, &rs_secret),
        service["access_token"].as_str().unwrap(),
    )
    .await;
    assert_eq!(info, json!({"active": false}));
}

fn clock_now(clock: &ManualClock) -> i64 {
    use ward::clock::Clock;
    clock.now_secs()
}

async fn rejects_bad_introspection(backend: Backend) {
    let Some(app) = smart_app(backend).await else {
        return;
    };
    let ((rs, rs_secret), _) = resource_servers(&app);
    add_user(&app, "pat", &["patient"], Some("Patient/123"));
    let app_id = user_flow_app(&app);
    let browser = Browser::new(&app.base);
    let tokens = code_flow(
        &app,
        &browser,
        &app_id,
        "openid launch/patient offline_access patient/Observation.rs",
        Some(("pat", PASSWORD)),
    )
    .await;
    let access = tokens["access_token"].as_str().unwrap();
    // Who may ask.
    let (status, body) = post_form(&app, "/introspect", &[("token", access)], None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_client")),
        "rejects_unauthenticated"
    );
    let (status, _) = introspect(&app, (&rs, "wrong"), access).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "rejects_wrong_secret");
    let (portal, portal_secret) = register(
        &app,
        json!({"name": "Portal", "kind": "confidential-symmetric", "redirect_uris": [CALLBACK], "scope": "openid"}),
    );
    let (status, _) = introspect(&app, (&portal, portal_secret.as_deref().unwrap()), access).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "rejects_a_client_that_is_not_a_resource_server"
    );
    let (status, body) = post_form(&app, "/introspect", &[], Some((&rs, &rs_secret))).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_request")),
        "rejects_missing_token"
    );
    // What is inactive: refresh tokens, garbage, tampered and revoked tokens.
    let mut tampered = access.to_owned();
    tampered.pop();
    for (reason, t) in [
        (
            "rejects_refresh_tokens",
            tokens["refresh_token"].as_str().unwrap().to_owned(),
        ),
        ("rejects_garbage", "garbage".to_owned()),
        ("rejects_tampered_tokens", tampered),
        ("rejects_huge_tokens", "a".repeat(20_000)),
    ] {
        let (status, info) = introspect(&app, (&rs, &rs_secret), &t).await;
        assert_eq!(
            (status, info),
            (StatusCode::OK, json!({"active": false})),
            "{reason}"
        );
    }
    let (status, _) = post_form(
        &app,
        "/revoke",
        &[
            ("token", tokens["refresh_token"].as_str().unwrap()),
            ("client_id", &app_id),
        ],
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (_, info) = introspect(&app, (&rs, &rs_secret), access).await;
    assert_eq!(info, json!({"active": false}), "rejects_revoked_tokens");
}

async fn revocation_of_each_token_kind(backend: Backend) {
    let Some(app) = smart_app(backend).await else {
        return;
    };
    let ((rs, rs_secret), _) = resource_servers(&app);
    add_user(&app, "pat", &["patient"], Some("Patient/123"));
    let app_id = user_flow_app(&app);
    let (other_app, _) = register(
        &app,
        json!({"name": "Other", "kind": "public", "redirect_uris": [CALLBACK], "scope": "openid launch/patient offline_access patient/*.rs"}),
    );
    let browser = Browser::new(&app.base);
    let scope = "openid launch/patient offline_access patient/Observation.rs";
    let first = code_flow(&app, &browser, &app_id, scope, Some(("pat", PASSWORD))).await;
    let active = |t: String| {
        let (app, rs, rs_secret) = (&app, rs.clone(), rs_secret.clone());
        async move { introspect(app, (&rs, &rs_secret), &t).await.1["active"] == true }
    };
    let revoke = |t: String, client: String| {
        let app = &app;
        async move {
            post_form(
                app,
                "/revoke",
                &[("token", &t), ("client_id", &client)],
                None,
            )
            .await
            .0
        }
    };
    // Another client's token: 200, nothing revoked.
    assert_eq!(
        revoke(
            first["access_token"].as_str().unwrap().into(),
            other_app.clone()
        )
        .await,
        StatusCode::OK
    );
    assert_eq!(
        revoke(
            first["refresh_token"].as_str().unwrap().into(),
            other_app.clone()
        )
        .await,
        StatusCode::OK
    );
    assert!(active(first["access_token"].as_str().unwrap().into()).await);
    // Unknown token: 200.
    assert_eq!(revoke("nope".into(), app_id.clone()).await, StatusCode::OK);
    // An access token: that token only; the refresh token still works.
    assert_eq!(
        revoke(
            first["access_token"].as_str().unwrap().into(),
            app_id.clone()
        )
        .await,
        StatusCode::OK
    );
    assert!(!active(first["access_token"].as_str().unwrap().into()).await);
    let (status, second) = refresh(&app, first["refresh_token"].as_str().unwrap(), &app_id).await;
    assert_eq!(status, StatusCode::OK, "{second}");
    assert!(active(second["access_token"].as_str().unwrap().into()).await);
    // A refresh token: its whole family, access tokens included.
    assert_eq!(
        revoke(
            second["refresh_token"].as_str().unwrap().into(),
            app_id.clone()
        )
        .await,
        StatusCode::OK
    );
    assert!(!active(second["access_token"].as_str().unwrap().into()).await);
    let (status, _) = refresh(&app, second["refresh_token"].as_str().unwrap(), &app_id).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(audit_actions(&app, "token.revoked").len(), 2);
    // A backend service revokes its own access token.
    let backend_client = rs384_backend(&app);
    let (_, service) = backend_token(
        &app,
        &backend_client.assertion(&app.url("/token"), unix_now()),
        "system/Observation.rs",
    )
    .await;
    let (status, _) = post_form(
        &app,
        "/revoke",
        &[
            ("token", service["access_token"].as_str().unwrap()),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            (
                "client_assertion",
                &backend_client.assertion(&app.url("/revoke"), unix_now()),
            ),
        ],
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(!active(service["access_token"].as_str().unwrap().into()).await);
    // Revocation needs client authentication.
    let (status, _) = post_form(&app, "/revoke", &[("token", "x")], None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

async fn people_revoke_apps_on_the_connected_apps_page(backend: Backend) {
    let Some(app) = smart_app(backend).await else {
        return;
    };
    let ((rs, rs_secret), _) = resource_servers(&app);
    add_user(&app, "pat", &["patient"], Some("Patient/123"));
    let app_id = user_flow_app(&app);
    let browser = Browser::new(&app.base);
    let tokens = code_flow(
        &app,
        &browser,
        &app_id,
        "openid launch/patient offline_access patient/Observation.rs",
        Some(("pat", PASSWORD)),
    )
    .await;
    let page = browser.get("/account/apps").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.body.contains("Growth Chart") && page.body.contains("Offline access"),
        "{}",
        page.body
    );
    assert!(page.body.contains("patient/Observation.rs"));
    // A forged form changes nothing.
    let forged = browser
        .post(
            "/account/apps/revoke",
            &[("csrf", "x"), ("client_id", &app_id)],
        )
        .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    assert_eq!(
        introspect(
            &app,
            (&rs, &rs_secret),
            tokens["access_token"].as_str().unwrap()
        )
        .await
        .1["active"],
        true
    );
    let done = browser
        .post(
            "/account/apps/revoke",
            &[("csrf", &page.csrf()), ("client_id", &app_id)],
        )
        .await;
    assert_eq!(done.status, StatusCode::SEE_OTHER);
    // At once: introspection says inactive, refresh is refused, the page is empty.
    assert_eq!(
        introspect(
            &app,
            (&rs, &rs_secret),
            tokens["access_token"].as_str().unwrap()
        )
        .await
        .1,
        json!({"active": false})
    );
    let (status, _) = refresh(&app, tokens["refresh_token"].as_str().unwrap(), &app_id).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(browser
        .get("/account/apps")
        .await
        .body
        .contains("No app has access"));
    assert!(audit_actions(&app, "token.revoked")
        .iter()
        .any(|e| e["reason"] == "revoked_by_user"));
    // Signed out: the page asks to sign in.
    let anonymous = Browser::new(&app.base);
    let page = anonymous.get("/account/apps").await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
}

async fn the_policy_check_answers_for_fhir_requests(backend: Backend) {
    let Some(app) = smart_app(backend).await else {
        return;
    };
    let ((rs, rs_secret), (other, other_secret)) = resource_servers(&app);
    add_user(&app, "pat", &["patient"], Some("Patient/123"));
    let app_id = user_flow_app(&app);
    let browser = Browser::new(&app.base);
    let tokens = code_flow(
        &app,
        &browser,
        &app_id,
        "openid launch/patient patient/Observation.rs patient/Condition.rs",
        Some(("pat", PASSWORD)),
    )
    .await;
    let access = tokens["access_token"].as_str().unwrap();
    let ask = |method: &'static str, url: &'static str, resource: Option<Value>| {
        let (app, rs, rs_secret, access) = (&app, rs.clone(), rs_secret.clone(), access.to_owned());
        async move {
            let resource = resource.map(|r| r.to_string());
            let mut form = vec![("token", access.as_str()), ("method", method), ("url", url)];
            if let Some(r) = &resource {
                form.push(("resource", r.as_str()));
            }
            post_form(app, "/policy/check", &form, Some((&rs, &rs_secret))).await
        }
    };
    for (method, url, resource, expected) in [
        ("GET", "Observation?patient=123", None, "permit"),
        (
            "GET",
            "Observation?patient=Patient/123&category=laboratory",
            None,
            "permit",
        ),
        ("GET", "Observation?patient=999", None, "deny"),
        ("GET", "Condition?patient=123", None, "permit"),
        ("GET", "Patient/123/Condition", None, "deny"),
        ("GET", "MedicationRequest?patient=123", None, "deny"),
        (
            "POST",
            "Observation",
            Some(
                json!({"resourceType": "Observation", "status": "final", "subject": {"reference": "Patient/123"}}),
            ),
            "deny",
        ),
        ("DELETE", "Observation/1", None, "deny"),
    ] {
        let (status, decision) = ask(method, url, resource).await;
        assert_eq!(status, StatusCode::OK, "{method} {url}: {decision}");
        assert_eq!(decision["decision"], expected, "{method} {url}: {decision}");
    }
    let (status, decision) = ask("GET", "Observation/1", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(decision["decision"], "conditional", "{decision}");
    assert!(
        decision["must_verify"].to_string().contains("123"),
        "{decision}"
    );
    // Malformed requests are 400 invalid_request; another server's view is a deny.
    let (status, body) = ask("GET", "https://evil.example/Observation", None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_request"))
    );
    let (status, body) = ask("BREW", "Observation", None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_request"))
    );
    let (status, decision) = post_form(
        &app,
        "/policy/check",
        &[
            ("token", access),
            ("method", "GET"),
            ("url", "Observation?patient=123"),
        ],
        Some((&other, &other_secret)),
    )
    .await;
    assert_eq!(
        (status, decision["decision"].as_str()),
        (StatusCode::OK, Some("deny"))
    );
    let (status, _) = post_form(
        &app,
        "/policy/check",
        &[("token", access), ("method", "GET"), ("url", "Observation")],
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

on_both_backends!(changes_on_one_node_reach_every_node_within_a_second);

/// Polls `check` every 20 ms until it holds; panics when a check that began a second or more
/// after the first still saw the old state (the promise of the change feed: DESIGN.md §4,
/// README "Several nodes"). Judged by when each check began, not when it returned: a check
/// begun in time may answer late on a loaded machine, and what it saw still counts.
async fn within_a_second<F, Fut>(what: &str, mut check: F) -> std::time::Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = std::time::Instant::now();
    loop {
        let began = started.elapsed();
        if check().await {
            return began;
        }
        assert!(
            began < std::time::Duration::from_secs(1),
            "{what}: not seen by the other node within a second"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Two nodes on one database, each answering repeated introspections from its cache of
/// verified tokens and authenticating clients from its cache of registrations: a revocation,
/// a sign-out, a user or client disabled, a secret rotated or a signing key rotated through one
/// node (or the CLI) changes what the other node answers within a second.
async fn changes_on_one_node_reach_every_node_within_a_second(backend: Backend) {
    let Some(first) = smart_app(backend).await else {
        return;
    };
    // Nodes of one deployment share one public URL (the issuer).
    let second = TestApp::builder(backend)
        .storage(first.storage.clone())
        .env("WARD_FHIR_BASE", FHIR)
        .env("WARD_PUBLIC_URL", &first.base)
        .start()
        .await
        .expect("second node");
    let ((rs, rs_secret), (other_rs, other_secret)) = resource_servers(&first);
    add_user(&first, "pat", &["patient"], Some("Patient/123"));
    add_user(&first, "pat2", &["patient"], Some("Patient/456"));
    let app_id = user_flow_app(&first);
    let active = |node: &TestApp, token: &str| {
        let (node, token) = (node.base.clone(), token.to_owned());
        let (rs, rs_secret) = (rs.clone(), rs_secret.clone());
        async move {
            let response = reqwest::Client::new()
                .post(format!("{node}/introspect"))
                .basic_auth(&rs, Some(&rs_secret))
                .form(&[("token", token.as_str())])
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            response.json::<Value>().await.unwrap()["active"] == true
        }
    };
    let online_app = register(
        &first,
        json!({"client_id": "session-app", "name": "Session App", "kind": "public", "redirect_uris": [CALLBACK],
               "scope": "openid launch/patient online_access patient/*.rs"}),
    )
    .0;
    let flow_with = |app_id: String, user: &'static str, scope: &'static str| {
        let first = &first;
        async move {
            let browser = Browser::new(&first.base);
            let tokens = code_flow(first, &browser, &app_id, scope, Some((user, PASSWORD))).await;
            (browser, tokens)
        }
    };
    let warm = |node: &TestApp, token: &str| {
        let (node_state, token) = (node.state.clone(), token.to_owned());
        let active = active(node, &token);
        async move {
            // Twice: the first answer may come from the database, the second from the cache.
            assert!(active.await, "live before the change");
            assert!(
                node_state.coherence.trusted(),
                "the node's listener vouches for its caches"
            );
        }
    };

    // 1. A revocation through the first node (RFC 7009).
    let (_, tokens) = flow_with(
        app_id.clone(),
        "pat",
        "openid launch/patient offline_access patient/Observation.rs",
    )
    .await;
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    warm(&second, &access).await;
    assert!(
        active(&second, &access).await,
        "issued on one node, active on the other"
    );
    let hash = ward::crypto::sha256(access.as_bytes());
    assert!(
        second.state.coherence.token(&hash).is_some(),
        "answered from the cache"
    );
    let (status, _) = post_form(
        &first,
        "/revoke",
        &[
            ("token", tokens["refresh_token"].as_str().unwrap()),
            ("client_id", &app_id),
        ],
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    // The node that made the change knows before it answers.
    assert!(!active(&first, &access).await);
    within_a_second("a revocation", || async { !active(&second, &access).await }).await;

    // 2. Signing out ends an online_access grant everywhere.
    let (browser, tokens) = flow_with(
        online_app.clone(),
        "pat",
        "openid launch/patient online_access patient/Observation.rs",
    )
    .await;
    assert!(
        tokens["refresh_token"].is_string(),
        "an online_access grant"
    );
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    warm(&second, &access).await;
    let account = browser.get("/account").await;
    let out = browser.post("/logout", &[("csrf", &account.csrf())]).await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    assert!(
        !active(&first, &access).await,
        "the node that ended the session knows"
    );
    within_a_second("a sign-out", || async { !active(&second, &access).await }).await;

    // 3. A user disabled with the CLI (another process) ends their tokens on both nodes.
    let (_, tokens) = flow_with(
        app_id.clone(),
        "pat2",
        "openid launch/patient patient/Observation.rs",
    )
    .await;
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    warm(&second, &access).await;
    warm(&first, &access).await;
    let (code, _, err) = first.storage.ward(&["user", "disable", "pat2"], &[]);
    assert_eq!(code, 0, "{err}");
    within_a_second("a user disabled", || async {
        !active(&second, &access).await
    })
    .await;
    within_a_second("a user disabled", || async {
        !active(&first, &access).await
    })
    .await;

    // 4. A client secret rotated through the CLI: the new one works on the other node at once
    //    (the registration cache learns of it), and a disabled client is refused everywhere.
    let other_active = |node: &TestApp, secret: String| {
        let (node, other_rs) = (node.base.clone(), other_rs.clone());
        async move {
            reqwest::Client::new()
                .post(format!("{node}/introspect"))
                .basic_auth(&other_rs, Some(&secret))
                .form(&[("token", "x")])
                .send()
                .await
                .unwrap()
                .status()
                == StatusCode::OK
        }
    };
    assert!(other_active(&second, other_secret.clone()).await);
    assert!(
        other_active(&second, other_secret.clone()).await,
        "cached registration"
    );
    let rotated = first
        .storage
        .ward_json(&["client", "rotate-secret", &other_rs, "--json"], &[]);
    let new_secret = rotated["client_secret"]
        .as_str()
        .expect("new secret")
        .to_owned();
    within_a_second("a new client secret", || {
        other_active(&second, new_secret.clone())
    })
    .await;
    let disabled = first
        .storage
        .ward_json(&["client", "disable", &other_rs, "--json"], &[]);
    assert_eq!(disabled["enabled"], false);
    within_a_second("a client disabled", || async {
        !other_active(&second, new_secret.clone()).await
    })
    .await;

    // 5. A role changed on one node (here through the first node's database) applies to the
    //    next refresh on the other at once: roles are read on every grant, never cached.
    let (_, tokens) = flow_with(
        app_id.clone(),
        "pat",
        "openid launch/patient offline_access patient/Observation.rs patient/Condition.rs",
    )
    .await;
    crate::common::smart::set_role_ceiling(&first, "patient", "patient/Condition.rs");
    let (status, refreshed) =
        refresh(&second, tokens["refresh_token"].as_str().unwrap(), &app_id).await;
    assert_eq!(status, StatusCode::OK, "{refreshed}");
    let granted = refreshed["scope"].as_str().unwrap();
    assert!(
        granted.contains("patient/Condition.rs") && !granted.contains("Observation"),
        "the other node follows today's role: {granted}"
    );

    // 6. A signing key rotated on one node is published by the other within a second.
    let kids = |node: &TestApp| {
        let url = node.url("/jwks");
        async move {
            let jwks: Value = reqwest::get(url).await.unwrap().json().await.unwrap();
            jwks["keys"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| k["kid"].as_str().unwrap().to_owned())
                .collect::<std::collections::BTreeSet<_>>()
        }
    };
    let before = kids(&second).await;
    let (code, _, err) = first
        .storage
        .ward(&["keys", "rotate", "--alg", "ES256"], &[]);
    assert_eq!(code, 0, "{err}");
    within_a_second("a new signing key", || async {
        kids(&second).await.len() > before.len()
    })
    .await;
}

/// A node whose change listener keeps losing its connection must stop trusting its caches
/// and answer from the database: a revocation made meanwhile through the other node is seen
/// at once, though its notification never arrived. Once it listens again it trusts its
/// (flushed) caches again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_cannot_listen_answers_from_the_database() {
    let Some(first) = smart_app(Backend::Postgres).await else {
        return;
    };
    let second = TestApp::builder(Backend::Postgres)
        .storage(first.storage.clone())
        .env("WARD_FHIR_BASE", FHIR)
        .env("WARD_PUBLIC_URL", &first.base)
        .start()
        .await
        .expect("second node");
    let ((rs, rs_secret), _) = resource_servers(&first);
    add_user(&first, "pat", &["patient"], Some("Patient/123"));
    let app_id = user_flow_app(&first);
    let browser = Browser::new(&first.base);
    let tokens = code_flow(
        &first,
        &browser,
        &app_id,
        "openid launch/patient offline_access patient/Observation.rs",
        Some(("pat", PASSWORD)),
    )
    .await;
    let access = tokens["access_token"].as_str().unwrap();
    for _ in 0..2 {
        assert_eq!(
            introspect(&second, (&rs, &rs_secret), access).await.1["active"],
            true
        );
    }
    let hash = ward::crypto::sha256(access.as_bytes());
    assert!(
        second.state.coherence.token(&hash).is_some(),
        "cached on the second node"
    );

    // Keep killing every listener connection of this database.
    let name = first.storage.pg.as_ref().expect("postgres").name.clone();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let killer = {
        let (stop, name) = (stop.clone(), name.clone());
        std::thread::spawn(move || {
            use diesel::connection::SimpleConnection;
            let mut admin = crate::common::pg::admin().expect("admin connection");
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                admin
                    .batch_execute(&format!(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                         WHERE datname = '{name}' AND application_name = '{}'",
                        ward::coherence::LISTENER_NAME
                    ))
                    .expect("terminate listeners");
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        })
    };
    within_a_second("distrust", || async { !second.state.coherence.trusted() }).await;
    let (status, _) = post_form(
        &first,
        "/revoke",
        &[
            ("token", tokens["refresh_token"].as_str().unwrap()),
            ("client_id", &app_id),
        ],
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    // No waiting for a notification (none can arrive): the second node, distrusting its caches
    // while its listener is down, checks the database. (Between kills the listener gets back
    // in for a moment, flushing the cache and trusting it until its next round fails; so look
    // for distrust again right before asking, rather than assuming it lasted.)
    within_a_second("distrust", || async { !second.state.coherence.trusted() }).await;
    assert!(second.state.coherence.token(&hash).is_none());
    assert_eq!(
        introspect(&second, (&rs, &rs_secret), access).await.1,
        json!({"active": false})
    );
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    killer.join().unwrap();
    // Listening again (after its back-off), it trusts its caches again; the revoked token
    // stays inactive.
    let started = std::time::Instant::now();
    while !second.state.coherence.trusted() {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "listener is back"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        introspect(&second, (&rs, &rs_secret), access).await.1,
        json!({"active": false})
    );
}

on_both_backends!(
    backend_grants_never_carry_identity_scopes_or_refresh_tokens,
    disabled_clients_lose_their_tokens_and_locked_users_keep_theirs,
    resource_server_questions_are_audited,
);

async fn backend_grants_never_carry_identity_scopes_or_refresh_tokens(backend: Backend) {
    let Some(app) = smart_app(backend).await else {
        return;
    };
    let pair = ES384.generate_key_pair().unwrap();
    let mut jwk = pair.to_jwk_public_key();
    jwk.set_key_id("m-1");
    // A client registered for both a user flow and client_credentials, with identity scopes.
    let (client_id, _) = register(
        &app,
        json!({"name": "Mixed", "kind": "confidential-asymmetric", "redirect_uris": [CALLBACK],
               "grant_types": ["authorization_code", "refresh_token", "client_credentials"],
               "scope": "system/Observation.rs offline_access openid fhirUser launch/patient",
               "jwks": {"keys": [serde_json::to_value(&jwk).unwrap()]}}),
    );
    let mixed = Backendish {
        client_id,
        public_pem: Vec::new(),
        signer: Box::new(ES384.signer_from_jwk(&pair.to_jwk_private_key()).unwrap()),
        alg: "ES384",
        kid: "m-1",
    };
    let (status, body) = backend_token(
        &app,
        &mixed.assertion(&app.url("/token"), unix_now()),
        "system/Observation.rs offline_access openid",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["scope"], "system/Observation.rs");
    assert!(
        body.get("refresh_token").is_none() && body.get("id_token").is_none(),
        "{body}"
    );
    let (status, body) = backend_token(
        &app,
        &mixed.assertion(&app.url("/token"), unix_now()),
        "offline_access openid",
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_scope"))
    );
}

async fn disabled_clients_lose_their_tokens_and_locked_users_keep_theirs(backend: Backend) {
    let Some(app) = smart_app(backend).await else {
        return;
    };
    let ((rs, rs_secret), _) = resource_servers(&app);
    add_user(&app, "pat", &["patient"], Some("Patient/123"));
    let app_id = user_flow_app(&app);
    let browser = Browser::new(&app.base);
    let tokens = code_flow(
        &app,
        &browser,
        &app_id,
        "openid launch/patient offline_access patient/Observation.rs",
        Some(("pat", PASSWORD)),
    )
    .await;
    let access = tokens["access_token"].as_str().unwrap();
    // Someone guessing the username can lock sign-in, but not the apps already authorized.
    {
        use diesel::prelude::*;
        use ward::store::schema::users::dsl::*;
        diesel::update(users.filter(username.eq("pat")))
            .set(locked_at.eq(Some(unix_now())))
            .execute(&mut *app.conn())
            .unwrap();
    }
    assert_eq!(
        introspect(&app, (&rs, &rs_secret), access).await.1["active"],
        true
    );
    let (status, refreshed) =
        refresh(&app, tokens["refresh_token"].as_str().unwrap(), &app_id).await;
    assert_eq!(status, StatusCode::OK, "{refreshed}");
    // Disabling the app ends its tokens at once.
    ward::clients::set_enabled(
        &mut app.conn(),
        app.state.clock.as_ref(),
        &ward::audit::AuditContext::cli(),
        &app_id,
        false,
    )
    .unwrap();
    assert_eq!(
        introspect(
            &app,
            (&rs, &rs_secret),
            refreshed["access_token"].as_str().unwrap()
        )
        .await
        .1,
        json!({"active": false})
    );
    let response = app
        .client
        .get(app.url("/userinfo"))
        .bearer_auth(refreshed["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

async fn resource_server_questions_are_audited(backend: Backend) {
    let Some(app) = smart_app(backend).await else {
        return;
    };
    let ((rs, rs_secret), (other, other_secret)) = resource_servers(&app);
    add_user(&app, "pat", &["patient"], Some("Patient/123"));
    let app_id = user_flow_app(&app);
    let (other_app, _) = register(
        &app,
        json!({"name": "Other", "kind": "public", "redirect_uris": [CALLBACK], "scope": "openid"}),
    );
    let browser = Browser::new(&app.base);
    let tokens = code_flow(
        &app,
        &browser,
        &app_id,
        "openid launch/patient offline_access patient/Observation.rs",
        Some(("pat", PASSWORD)),
    )
    .await;
    let access = tokens["access_token"].as_str().unwrap();
    // The `first` policy: one record for the first introspection of a token; repeats,
    // foreign-audience questions and garbage are reads only.
    for _ in 0..3 {
        introspect(&app, (&rs, &rs_secret), access).await;
    }
    introspect(&app, (&other, &other_secret), access).await;
    introspect(&app, (&rs, &rs_secret), "garbage").await;
    let introspections = audit_actions(&app, "token.introspected");
    assert_eq!(introspections.len(), 1, "{introspections:?}");
    assert_eq!(
        (
            introspections[0]["client_id"].as_str(),
            introspections[0]["patient"].as_str()
        ),
        (Some(app_id.as_str()), Some("123"))
    );
    post_form(
        &app,
        "/policy/check",
        &[
            ("token", access),
            ("method", "GET"),
            ("url", "Observation?patient=123"),
        ],
        Some((&rs, &rs_secret)),
    )
    .await;
    let checks = audit_actions(&app, "policy.checked");
    assert_eq!(checks.len(), 1);
    assert_eq!(
        (
            checks[0]["decision"].as_str(),
            checks[0]["request"].as_str()
        ),
        (Some("permit"), Some("GET Observation"))
    );
    // A client revoking someone else's token is refused quietly and audited.
    let (status, _) = post_form(
        &app,
        "/revoke",
        &[
            ("token", tokens["refresh_token"].as_str().unwrap()),
            ("client_id", &other_app),
        ],
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(audit_actions(&app, "token.revocation_refused").len(), 1);
    // Browser apps may read the revocation answer from their own origin.
    let response = app
        .client
        .post(app.url("/revoke"))
        .header("origin", "https://app.example.com")
        .form(&[("token", "nope"), ("client_id", app_id.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    // A non-resource-server caller is refused and audited.
    let (status, _) = post_form(
        &app,
        "/introspect",
        &[("token", access), ("client_id", &app_id)],
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(audit_actions(&app, "client.authentication_failed")
        .iter()
        .any(|e| e["endpoint"] == "introspect"));
}

on_both_backends!(ai_tools_and_the_all_policy_audit_every_introspection);

async fn ai_tools_and_the_all_policy_audit_every_introspection(backend: Backend) {
    // An AI tool's tokens: every introspection is recorded under the default policy.
    let Some(app) = smart_app(backend).await else {
        return;
    };
    let ((rs, rs_secret), _) = resource_servers(&app);
    add_user(&app, "pat", &["patient"], Some("Patient/123"));
    let (ai, _) = register(
        &app,
        json!({"name": "Scribe AI", "kind": "public", "redirect_uris": [CALLBACK], "ai_tool": true,
               "scope": "openid launch/patient patient/Observation.rs"}),
    );
    let browser = Browser::new(&app.base);
    let tokens = code_flow(
        &app,
        &browser,
        &ai,
        "openid launch/patient patient/Observation.rs",
        Some(("pat", PASSWORD)),
    )
    .await;
    for _ in 0..3 {
        introspect(
            &app,
            (&rs, &rs_secret),
            tokens["access_token"].as_str().unwrap(),
        )
        .await;
    }
    assert_eq!(audit_actions(&app, "token.introspected").len(), 3);
    drop(app);
    // `audit.introspection = all`: every introspection of every token.
    let Some(app) = TestApp::builder(backend)
        .env("WARD_FHIR_BASE", FHIR)
        .env("WARD_AUDIT_INTROSPECTION", "all")
        .start()
        .await
    else {
        return;
    };
    let ((rs, rs_secret), _) = resource_servers(&app);
    add_user(&app, "pat", &["patient"], Some("Patient/123"));
    let app_id = user_flow_app(&app);
    let browser = Browser::new(&app.base);
    let tokens = code_flow(
        &app,
        &browser,
        &app_id,
        "openid launch/patient patient/Observation.rs",
        Some(("pat", PASSWORD)),
    )
    .await;
    for _ in 0..2 {
        introspect(
            &app,
            (&rs, &rs_secret),
            tokens["access_token"].as_str().unwrap(),
        )
        .await;
    }
    assert_eq!(audit_actions(&app, "token.introspected").len(), 2);
}

on_both_backends!(a_whole_launch_alternates_between_two_nodes);

/// Two nodes on one database behind a (simulated) load balancer: every request of a launch goes
/// to the other node than the one before, and the flow works end to end.
async fn a_whole_launch_alternates_between_two_nodes(backend: Backend) {
    let Some(first) = smart_app(backend).await else {
        return;
    };
    let second = TestApp::builder(backend)
        .storage(first.storage.clone())
        .env("WARD_FHIR_BASE", FHIR)
        .env("WARD_PUBLIC_URL", &first.base)
        .start()
        .await
        .unwrap();
    let ((rs, rs_secret), _) = resource_servers(&first);
    add_user(&first, "pat", &["patient"], Some("Patient/123"));
    let app_id = user_flow_app(&first);
    // One browser (one cookie jar: cookies ignore the port), two nodes.
    let a = Browser::new(&first.base);
    let b = Browser {
        client: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .cookie_provider(a.jar.clone())
            .build()
            .unwrap(),
        jar: a.jar.clone(),
        base: second.base.clone(),
    };
    let (verifier, challenge) = pkce();
    let params = [
        ("response_type", "code"),
        ("client_id", app_id.as_str()),
        ("redirect_uri", CALLBACK),
        (
            "scope",
            "openid launch/patient offline_access patient/Observation.rs",
        ),
        ("state", "s1"),
        ("aud", FHIR),
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
    ];
    let query = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params)
        .finish();
    let step1 = a.get(&format!("/authorize?{query}")).await;
    let step2 = b.get(step1.location.as_deref().unwrap()).await;
    let login_path = step2.location.clone().unwrap();
    assert!(login_path.starts_with("/login"), "{login_path}");
    let login = a.get(&login_path).await;
    let signed_in = b
        .post(
            "/login",
            &[
                ("username", "pat"),
                ("password", PASSWORD),
                ("csrf", &login.csrf()),
                (
                    "return_to",
                    &login.field("return_to").unwrap().replace("&amp;", "&"),
                ),
            ],
        )
        .await;
    assert_eq!(
        signed_in.status,
        StatusCode::SEE_OTHER,
        "{}",
        signed_in.body
    );
    let consent = a.get(signed_in.location.as_deref().unwrap()).await;
    assert!(consent.body.contains("consent-form"), "{}", consent.body);
    let callback = submit_consent(&b, &consent_form(&consent, "approve", &[], true))
        .await
        .callback();
    assert_eq!(callback["state"], "s1");
    let (status, tokens) = redeem(&first, &callback["code"], &verifier, &app_id).await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    let (status, refreshed) =
        refresh(&second, tokens["refresh_token"].as_str().unwrap(), &app_id).await;
    assert_eq!(status, StatusCode::OK, "{refreshed}");
    assert_eq!(
        introspect(
            &first,
            (&rs, &rs_secret),
            refreshed["access_token"].as_str().unwrap()
        )
        .await
        .1["active"],
        true
    );
    // The rotated refresh token is dead on either node.
    let (status, _) = refresh(&first, tokens["refresh_token"].as_str().unwrap(), &app_id).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}
