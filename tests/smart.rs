//! SMART App Launch end to end over real HTTP on SQLite and PostgreSQL: discovery, the
//! `openidconnect` crate as relying party for public, confidential-symmetric and
//! confidential-asymmetric clients, EHR and standalone launch with the patient picker, consent
//! choices, single-use codes and refresh rotation (also under concurrency), OIDC userinfo and
//! end session.

use josekit::jwk::KeyPair;
use josekit::jws::{JwsHeader, ES384};
use josekit::jwt::JwtPayload;
use openidconnect::core::{CoreAuthenticationFlow, CoreClient, CoreProviderMetadata};
use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, IssuerUrl, Nonce, OAuth2TokenResponse,
    PkceCodeChallenge, RedirectUrl, RefreshToken, Scope, TokenResponse,
};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::browser::Browser;
use crate::common::smart::*;
use crate::common::{Backend, TestApp};
use crate::on_both_backends;

on_both_backends!(
    discovery_advertises_exactly_what_works,
    openid_connect_relying_parties_of_every_client_type,
    ehr_launch_carries_context_and_is_bound_to_app_and_user,
    standalone_launch_with_the_patient_picker,
    consent_choices_narrow_the_grant_and_deny_redirects,
    prompt_max_age_and_remembered_consent,
    authorization_codes_are_single_use_under_concurrency,
    refresh_tokens_rotate_and_reuse_revokes_the_family,
    online_access_ends_with_the_session,
    userinfo_and_end_session,
    rejects_bad_authorization_requests,
    rejects_bad_token_requests,
    rejects_replayed_and_malformed_client_assertions,
    token_cors_and_login_hint,
    patients_only_ever_get_their_own_record,
    a_pending_request_belongs_to_the_first_person_signed_in,
    refreshes_follow_todays_roles_and_offline_access_can_be_declined,
    a_refresh_for_an_account_disabled_or_gone_is_refused_and_spends_nothing,
    launch_pages_keep_a_strict_content_security_policy,
    sign_out_confirmation_goes_only_to_a_registered_uri,
);

fn public_app(app: &TestApp) -> String {
    register(
        app,
        json!({
            "client_id": "growth-chart",
            "name": "Growth Chart",
            "kind": "public",
            "redirect_uris": [CALLBACK],
            "scope": "openid fhirUser profile launch launch/patient offline_access online_access patient/*.rs user/*.rs",
        }),
    )
    .0
}

fn standard_authorize<'a>(
    client_id: &'a str,
    challenge: &'a str,
    scope: &'a str,
) -> Vec<(&'a str, &'a str)> {
    vec![
        ("response_type", "code"),
        ("client_id", client_id),
        ("redirect_uri", CALLBACK),
        ("scope", scope),
        ("state", "st-123"),
        ("aud", FHIR),
        ("code_challenge", challenge),
        ("code_challenge_method", "S256"),
    ]
}

/// Signs in `user`, approves everything, redeems the code; returns the token response.
async fn full_flow(
    app: &TestApp,
    browser: &Browser,
    client_id: &str,
    user: &str,
    scope: &str,
) -> Value {
    code_flow(app, browser, client_id, scope, Some((user, PASSWORD))).await
}

async fn discovery_advertises_exactly_what_works(backend: Backend) {
    let Some(app) = smart_app(backend).await else {
        return;
    };
    // Prepared once, with an ETag: a client that has it gets 304 and no body.
    for path in [
        "/.well-known/smart-configuration",
        "/.well-known/openid-configuration",
    ] {
        let first = app.client.get(app.url(path)).send().await.unwrap();
        let etag = first.headers()["etag"].to_str().unwrap().to_owned();
        let again = app
            .client
            .get(app.url(path))
            .header("if-none-match", &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED, "{path}");
        assert_eq!(again.headers()["etag"], etag.as_str());
        assert!(again.text().await.unwrap().is_empty());
    }
    for path in [
        "/.well-known/smart-configuration",
        "/.well-known/openid-configuration",
        "/r4/.well-known/smart-configuration",
    ] {
        let response = app
            .client
            .get(app.url(path))
            .header("accept", "text/html")
            .header("origin", "https://any.example")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert_eq!(response.headers()["content-type"], "application/json");
        assert_eq!(response.headers()["access-control-allow-origin"], "*");
        let doc: Value = response.json().await.unwrap();
        assert_eq!(doc["issuer"], app.base);
        assert_eq!(doc["token_endpoint"], app.url("/token"));
        assert_eq!(doc["code_challenge_methods_supported"], json!(["S256"]));
        assert_eq!(doc["authorization_response_iss_parameter_supported"], true);
        let text = doc.to_string();
        for banned in ["\"plain\"", "implicit", "\"password\"", "HS256"] {
            assert!(!text.contains(banned), "{banned} advertised at {path}");
        }
        assert_eq!(doc["introspection_endpoint"], app.url("/introspect"));
        assert_eq!(doc["revocation_endpoint"], app.url("/revoke"));
        assert!(doc["grant_types_supported"]
            .to_string()
            .contains("client_credentials"));
    }
    let smart: Value = app
        .get("/.well-known/smart-configuration")
        .await
        .json()
        .await
        .unwrap();
    let caps: Vec<&str> = smart["capabilities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    for cap in [
        "launch-ehr",
        "launch-standalone",
        "authorize-post",
        "client-public",
        "client-confidential-symmetric",
        "client-confidential-asymmetric",
        "sso-openid-connect",
        "context-banner",
        "context-style",
        "context-ehr-patient",
        "context-ehr-encounter",
        "context-standalone-patient",
        "permission-offline",
        "permission-online",
        "permission-patient",
        "permission-user",
        "permission-v1",
        "permission-v2",
    ] {
        assert!(caps.contains(&cap), "{cap}");
    }
    assert!(!caps.contains(&"context-standalone-encounter"));
    let algs = smart["token_endpoint_auth_signing_alg_values_supported"].to_string();
    assert!(algs.contains("RS384") && algs.contains("ES384"));
}

async fn openid_connect_relying_parties_of_every_client_type(backend: Backend) {
    let Some(app) = smart_app(backend).await else {
        return;
    };
    add_user(&app, "pat", &["patient"], Some("Patient/123"));
    let http = oidc_http();
    let metadata =
        CoreProviderMetadata::discover_async(IssuerUrl::new(app.base.clone()).unwrap(), &http)
            .await
            .expect("discovery");
    let public = public_app(&app);
    let (symmetric, secret) = register(
        &app,
        json!({
            "name": "Portal", "kind": "confidential-symmetric", "redirect_uris": [CALLBACK],
            "scope": "openid fhirUser launch/patient offline_access patient/*.rs",
        }),
    );
    let key = ES384.generate_key_pair().unwrap();
    let mut public_jwk = key.to_jwk_public_key();
    public_jwk.set_key_id("k1");
    let (asymmetric, _) = register(
        &app,
        json!({
            "name": "Analytics", "kind": "confidential-asymmetric", "redirect_uris": [CALLBACK],
            "scope": "openid fhirUser launch/patient offline_access patient/*.rs",
            "jwks": {"keys": [serde_json::to_value(&public_jwk).unwrap()]},
        }),
    );
    let cases: Vec<(String, Option<String>, bool)> = vec![
        (public, None, false),
        (symmetric, secret, false),
        (asymmetric, None, true),
    ];
    for (client_id, secret, asymmetric) in cases {
        let client = CoreClient::from_provider_metadata(
            metadata.clone(),
            ClientId::new(client_id.clone()),
            secret.clone().map(ClientSecret::new),
        )
        .set_redirect_uri(RedirectUrl::new(CALLBACK.into()).unwrap());
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let (url, csrf, nonce) = client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .add_scope(Scope::new("fhirUser".into()))
            .add_scope(Scope::new("launch/patient".into()))
            .add_scope(Scope::new("offline_access".into()))
            .add_scope(Scope::new("patient/Observation.rs".into()))
            .add_extra_param("aud", FHIR)
            .set_pkce_challenge(challenge)
            .url();
        let browser = Browser::new(&app.base);
        let consent = follow(&browser, url.as_str(), Some(("pat", PASSWORD)))
            .await
            .consent();
        assert!(
            consent.body.contains("Offline access"),
            "offline note shown"
        );
        let callback = approve(&browser, &consent, &[]).await.callback();
        assert_eq!(&callback["state"], csrf.secret());
        assert_eq!(callback["iss"], app.base);
        let mut exchange = client
            .exchange_code(AuthorizationCode::new(callback["code"].clone()))
            .unwrap()
            .set_pkce_verifier(verifier);
        if asymmetric {
            exchange = exchange
                .add_extra_param(
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                )
                .add_extra_param(
                    "client_assertion",
                    assertion(&key, "k1", &client_id, &app.url("/token")),
                );
        }
        let tokens = exchange
            .request_async(&http)
            .await
            .unwrap_or_else(|e| panic!("{client_id}: {e:?}"));
        let id_token = tokens.id_token().expect("id token");
        let claims = id_token
            .claims(&client.id_token_verifier(), &nonce)
            .expect("ID token verifies against the JWKS");
        assert_eq!(claims.issuer().as_str(), app.base);
        let scopes: Vec<String> = tokens
            .scopes()
            .unwrap()
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert!(
            scopes.contains(&"patient/Observation.rs".to_string()),
            "{scopes:?}"
        );
        let raw_id: Value = decode_payload(&id_token.to_string());
        assert_eq!(raw_id["fhirUser"], "Patient/123");
        let access: Value = decode_payload(tokens.access_token().secret());
        assert_eq!(access["aud"], FHIR);
        assert_eq!(access["patient"], "123");
        assert_eq!(access["client_id"], client_id);
        // Refresh through the RP: a new refresh token each time.
        let refresh = tokens.refresh_token().expect("offline access").clone();
        let mut refreshing = client.exchange_refresh_token(&refresh).unwrap();
        if asymmetric {
            refreshing = refreshing
                .add_extra_param(
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                )
                .add_extra_param(
                    "client_assertion",
                    assertion(&key, "k1", &client_id, &app.url("/token")),
                );
        }
        let refreshed = refreshing.request_async(&http).await.expect("refresh");
        assert_ne!(
            refreshed.refresh_token().unwrap().secret(),
            refresh.secret()
        );
        // The refreshed access token still names the user's FHIR resource and patient.
        let access = decode_payload(refreshed.access_token().secret());
        assert_eq!(access["fhirUser"], "Patient/123");
        assert_eq!(access["patient"], "123");
        let rotated = RefreshToken::new(refresh.secret().clone());
        let again = client.exchange_refresh_token(&rotated).unwrap();
        if !asymmetric {
            assert!(
                again.request_async(&http).await.is_err(),
                "a rotated refresh token is dead"
            );
        }
    }
}

fn decode_payload(jwt: &str) -> Value {
    use base64::Engine;
    let part = jwt.split('.').nth(1).expect("payload");
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .unwrap(),
    )
    .unwrap()
}

/// A client assertion signed with `key`.
fn assertion(
    key: &josekit::jwk::alg::ec::EcKeyPair,
    kid: &str,
    client_id: &str,
    aud: &str,
) -> String {
    assertion_with(key, kid, client_id, aud, &ward::crypto::random_token(16))
}

fn assertion_with(
    key: &josekit::jwk::alg::ec::EcKeyPair,
    kid: &str,
    client_id: &str,
    aud: &str,
    jti: &str,
) -> String {
    let mut header = JwsHeader::new();
    header.set_key_id(kid);
    header.set_token_type("JWT");
    let mut payload = JwtPayload::new();
    payload.set_issuer(client_id);
    payload.set_subject(client_id);
    payload.set_audience(vec![aud]);
    payload.set_jwt_id(jti);
    // Whole seconds: Ward refuses fractional NumericDates (josekit writes fractions).
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    payload.set_claim("exp", Some(json!(now + 240))).unwrap();
    payload.set_claim("iat", Some(json!(now))).unwrap();
    let signer = ES384.signer_from_jwk(&key.to_jwk_private_key()).unwrap();
    josekit::jwt::encode_with_signer(&payload, &header, &signer).unwrap()
}

async fn ehr_launch_carries_context_and_is_bound_to_app_and_user(backend: Backend) {
    let Some(app) = smart_app(backend).await else {
        return;
    };
    add_clinician_role(&app);
    add_user(&app, "drsmith", &["clinician"], Some("Practitioner/77"));
    add_user(&app, "drjones", &["clinician"], Some("Practitioner/78"));
    let app_id = public_app(&app);
    let (ehr, ehr_secret) = register(
        &app,
        json!({"client_id": "ehr", "name": "EHR", "kind": "confidential-symmetric",
               "redirect_uris": ["https://ehr.example/cb"], "scope": "openid", "ehr_launcher": true}),
    );
    let ehr_secret = ehr_secret.unwrap();
    let create = |user: &'static str| {
        let (app, ehr, secret, app_id) = (&app, ehr.clone(), ehr_secret.clone(), app_id.clone());
        async move {
            post_form(
                app,
                "/launch",
                &[
                    ("target_client_id", app_id.as_str()),
                    ("patient", "p-42"),
                    ("encounter", "enc-9"),
                    ("fhirContext", r#"[{"reference":"Appointment/5"}]"#),
                    ("intent", "reconcile-medications"),
                    ("need_patient_banner", "false"),
                    ("smart_style_url", "https://ehr.example/style.json"),
                    ("tenant", "north"),
                    ("user", user),
                ],
                Some((&ehr, &secret)),
            )
            .await
        }
    };
    let (status, launched) = create("drsmith").await;
    assert_eq!(status, StatusCode::OK, "{launched}");
    let launch = launched["launch"].as_str().unwrap().to_owned();
    assert_eq!(launched["expires_in"], 300);

    // The EHR launch resolves to the context, for the named user only.
    let (verifier, challenge) = pkce();
    let mut params = standard_authorize(&app_id, &challenge, "launch openid fhirUser patient/*.rs");
    params.push(("launch", &launch));
    let browser = Browser::new(&app.base);
    let consent = follow(
        &browser,
        &authorize_url(&app, &params),
        Some(("drsmith", PASSWORD)),
    )
    .await
    .consent();
    let callback = approve(&browser, &consent, &[]).await.callback();
    let (status, body) = redeem(&app, &callback["code"], &verifier, &app_id).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["patient"], "p-42");
    assert_eq!(body["encounter"], "enc-9");
    assert_eq!(body["fhirContext"], json!([{"reference": "Appointment/5"}]));
    assert_eq!(body["intent"], "reconcile-medications");
    assert_eq!(body["need_patient_banner"], false);
    assert_eq!(body["smart_style_url"], "https://ehr.example/style.json");
    assert_eq!(body["tenant"], "north");
    assert_eq!(body["token_type"], "Bearer");
    assert!(
        body.get("refresh_token").is_none(),
        "no offline/online access asked"
    );
    let access = decode_payload(body["access_token"].as_str().unwrap());
    assert_eq!(access["patient"], "p-42");
    assert_eq!(access["fhirUser"], "Practitioner/77");

    // The same launch value is single-use.
    let (_, challenge) = pkce();
    let mut params = standard_authorize(&app_id, &challenge, "launch openid patient/*.rs");
    params.push(("launch", &launch));
    let reused = follow(&browser, &authorize_url(&app, &params), None)
        .await
        .callback();
    assert_eq!(reused["error"], "invalid_request");
    assert_eq!(reused["state"], "st-123");

    // A launch created for drsmith fails in drjones's session.
    let (_, for_smith) = create("drsmith").await;
    let other = Browser::new(&app.base);
    let (_, challenge) = pkce();
    let mut params = standard_authorize(&app_id, &challenge, "launch openid patient/*.rs");
    let value = for_smith["launch"].as_str().unwrap().to_owned();
    params.push(("launch", &value));
    let refused = follow(
        &other,
        &authorize_url(&app, &params),
        Some(("drjones", PASSWORD)),
    )
    .await
    .callback();
    assert_eq!(refused["error"], "access_denied");
    assert_eq!(refused["iss"], app.base);

    // Only EHR clients create launches; unknown users and targets are refused.
    let (other_id, other_secret) = register(
        &app,
        json!({"name": "Not EHR", "kind": "confidential-symmetric", "redirect_uris": [CALLBACK], "scope": "openid"}),
    );
    let (status, body) = post_form(
        &app,
        "/launch",
        &[("target_client_id", &app_id)],
        Some((&other_id, other_secret.as_deref().unwrap())),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("unauthorized_client"))
    );
    let (status, body) = post_form(
        &app,
        "/launch",
        &[("target_client_id", &app_id)],
        Some(("ehr", "wrong")),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_client"))
    );
    let (status, body) = post_form(
        &app,
        "/launch",
        &[("target_client_id", &app_id), ("user", "nobody")],
        Some((&ehr, &ehr_secret)),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_request"))
    );
    let (status, body) = post_form(
        &app,
        "/launch",
        &[("target_client_id", &app_id), ("patient", "../etc")],
        Some((&ehr, &ehr_secret)),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_request"))
    );
    assert_eq!(
        count(&app, "launch_contexts"),
        2,
        "refused launches wrote nothing"
    );
}

const NDJSON: &str = r#"{"resourceType":"Patient","id":"p1","name":[{"use":"official","family":"Núñez","given":["José"]}],"birthDate":"1980-04-02","gender":"male","identifier":[{"system":"urn:mrn","value":"MRN1001"}],"address":[{"city":"Springfield"}]}
{"resourceType":"Patient","id":"p2","name":[{"family":"Smith","given":["Anna"]}],"birthDate":"1975-01-30","gender":"female","identifier":[{"system":"urn:mrn","value":"MRN1002"}]}
{"resourceType":"Patient","id":"p3","name":[{"family":"Smithers","given":["Bob"]}],"birthDate":"1990-12-12"}
"#;

async fn standalone_launch_with_the_patient_picker(backend: Backend) {
    let Some(app) = smart_app(backend).await else {
        return;
    };
    add_clinician_role(&app);
    add_user(&app, "drsmith", &["clinician"], Some("Practitioner/77"));
    let app_id = public_app(&app);
    // `ward patient import` loads the directory (all or nothing).
    let bad = format!("{NDJSON}{{\"resourceType\":\"Observation\",\"id\":\"o1\"}}\n");
    let (code, _, stderr) = app.storage.ward_stdin(&["patient", "import", "-"], &bad);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("line 4"), "{stderr}");
    let (code, stdout, stderr) = app
        .storage
        .ward_stdin(&["patient", "import", "-", "--json"], NDJSON);
    assert_eq!(code, 0, "{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        (report["created"].as_u64(), report["updated"].as_u64()),
        (Some(3), Some(0))
    );
    let found = app
        .storage
        .ward_json(&["patient", "search", "smith", "--json"], &[]);
    assert_eq!(found.as_array().unwrap().len(), 2);

    let (verifier, challenge) = pkce();
    let params = standard_authorize(&app_id, &challenge, "launch/patient openid patient/*.rs");
    let browser = Browser::new(&app.base);
    let picker = follow(
        &browser,
        &authorize_url(&app, &params),
        Some(("drsmith", PASSWORD)),
    )
    .await
    .picker();
    let request = picker.field("request").unwrap();
    let search = |q: &str| {
        format!(
            "/authorize/patients?request={}&q={}",
            request,
            url::form_urlencoded::byte_serialize(q.as_bytes()).collect::<String>()
        )
    };
    let by_name = browser.get(&search("jose nunez")).await;
    assert!(
        by_name.body.contains("José Núñez") && !by_name.body.contains("Smith"),
        "{}",
        by_name.body
    );
    assert!(
        !by_name.body.contains("Springfield"),
        "only picker fields are kept"
    );
    let by_date = browser.get(&search("1975-01-30")).await;
    assert!(by_date.body.contains("Anna Smith") && !by_date.body.contains("Smithers"));
    let by_mrn = browser.get(&search("MRN1002")).await;
    assert!(by_mrn.body.contains("patient-p2"));
    // p3 was never offered: refused.
    let csrf = by_mrn.csrf();
    let refused = browser
        .post(
            "/authorize/patients",
            &[("csrf", &csrf), ("request", &request), ("patient", "p3")],
        )
        .await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    // A wrong CSRF token changes nothing.
    let forged = browser
        .post(
            "/authorize/patients",
            &[("csrf", "x"), ("request", &request), ("patient", "p2")],
        )
        .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    let chosen = browser
        .post(
            "/authorize/patients",
            &[("csrf", &csrf), ("request", &request), ("patient", "p2")],
        )
        .await;
    assert_eq!(chosen.status, StatusCode::SEE_OTHER);
    let consent = follow(&browser, &app.url(&chosen.location.unwrap()), None)
        .await
        .consent();
    assert!(
        consent.body.contains("Anna Smith"),
        "patient in context shown"
    );
    let callback = approve(&browser, &consent, &[]).await.callback();
    let (status, body) = redeem(&app, &callback["code"], &verifier, &app_id).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["patient"], "p2");
    assert_eq!(body["need_patient_banner"], true);
    assert!(body.get("encounter").is_none());
}

async fn consent_choices_narrow_the_grant_and_deny_redirects(backend: Backend) {
    let Some(app) = smart_app(backend).await else {
        return;
    };
    add_user(&app, "pat", &["patient"], Some("Patient/123"));
    let app_id = public_app(&app);
    let browser = Browser::new(&app.base);
    let (verifier, challenge) = pkce();
    let scope = "openid launch/patient patient/Observation.rs patient/Condition.rs patient/MedicationRequest.rs patient/AllergyIntolerance.rs";
    let consent = follow(
        &browser,
        &authorize_url(&app, &standard_authorize(&app_id, &challenge, scope)),
        Some(("pat", PASSWORD)),
    )
    .await
    .consent();
    assert!(consent.body.contains("Growth Chart"));
    // Untick AllergyIntolerance; restrict Observation to laboratory.
    let mut body = consent_form(
        &consent,
        "approve",
        &[("category.Observation", "laboratory")],
        false,
    );
    for t in ["Observation", "Condition", "MedicationRequest"] {
        body.push_str(&format!("&include={t}"));
    }
    let callback = submit_consent(&browser, &body).await.callback();
    let (status, tokens) = redeem(&app, &callback["code"], &verifier, &app_id).await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    let granted: Vec<&str> = tokens["scope"].as_str().unwrap().split(' ').collect();
    assert!(granted.contains(&"patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory"), "{granted:?}");
    assert!(
        granted.contains(&"patient/Condition.rs")
            && granted.contains(&"patient/MedicationRequest.rs"),
        "{granted:?}"
    );
    assert!(
        !granted.iter().any(|s| s.contains("AllergyIntolerance")),
        "{granted:?}"
    );
    assert!(!granted.contains(&"patient/Observation.rs"), "{granted:?}");
    let granted_audit = audit_actions(&app, "authorization.granted");
    assert_eq!(granted_audit.len(), 1);
    assert_eq!(granted_audit[0]["patient"], "123");

    // Deny: access_denied at the app with state and iss; nothing issued.
    let before = count(&app, "authorization_codes");
    let (_, challenge) = pkce();
    let consent = follow(
        &browser,
        &authorize_url(&app, &standard_authorize(&app_id, &challenge, scope)),
        None,
    )
    .await
    .consent();
    let denied = deny(&browser, &consent).await.callback();
    assert_eq!(denied["error"], "access_denied");
    assert_eq!(denied["state"], "st-123");
    assert_eq!(denied["iss"], app.base);
    assert_eq!(count(&app, "authorization_codes"), before);
    // A completed request cannot be approved afterwards.
    let late = submit_consent(&browser, &consent_form(&consent, "approve", &[], true))
        .await
        .other();
    assert_eq!(late.status, StatusCode::BAD_REQUEST);
    // A forged consent (wrong CSRF) is refused and writes nothing.
    let (_, challenge) = pkce();
    let consent = follow(
        &browser,
        &authorize_url(&app, &standard_authorize(&app_id, &challenge, scope)),
        None,
    )
    .await
    .consent();
    let forged = consent_form(&consent, "approve", &[], true).replace("csrf=", "csrf=x");
    assert_eq!(
        submit_consent(&browser, &forged).await.other().status,
        StatusCode::FORBIDDEN
    );
    // An unknown category is refused.
    let bad = consent_form(
        &consent,
        "approve",
        &[("category.Observation", "astrology")],
        true,
    );
    assert_eq!(
        submit_consent(&browser, &bad).await.other().status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(count(&app, "authorization_codes"), before);
}

async fn prompt_max_age_and_remembered_consent(backend: Backend) {
    let Some(app) = smart_app(backend).await else {
        return;
    };
    add_user(&app, "pat", &["patient"], Some("Patient/123"));
    let app_id = public_app(&app);
    let scope = "openid launch/patient patient/Observation.rs";
    let browser = Browser::new(&app.base);
    // prompt=none without a session: login_required at the app.
    let (_, challenge) = pkce();
    let mut params = standard_authorize(&app_id, &challenge, scope);
    params.push(("prompt", "none"));
    let none = follow(&browser, &authorize_url(&app, &params), None)
        .await
        .callback();
    assert_eq!(none["error"], "login_required");
    // Signed in, no remembered consent: consent_required.
    let consent = follow(
        &browser,
        &authorize_url(&app, &standard_authorize(&app_id, &challenge, scope)),
        Some(("pat", PASSWORD)),
    )
    .await
    .consent();
    let none = follow(&browser, &authorize_url(&app, &params), None)
        .await
        .callback();
    assert_eq!(none["error"], "consent_required");
    // Approve with "remember": the next request skips the page, also with prompt=none.
    approve(&browser, &consent, &[("remember", "yes")])
        .await
        .callback();
    assert_eq!(count(&app, "consents"), 1);
    let again = follow(
        &browser,
        &authorize_url(&app, &standard_authorize(&app_id, &challenge, scope)),
        None,
    )
    .await
    .callback();
    assert!(again.contains_key("code"), "{again:?}");
    let silent = follow(&browser, &authorize_url(&app, &params), None)
        .await
        .callback();
    assert!(silent.contains_key("code"), "{silent:?}");
    // A wider request than remembered shows the page again; so does prompt=consent.
    let wider = follow(
        &browser,
        &authorize_url(
            &app,
            &standard_authorize(&app_id, &challenge, "openid launch/patient patient/*.rs"),
        ),
        None,
    )
    .await;
    wider.consent();
    let mut forced = standard_authorize(&app_id, &challenge, scope);
    forced.push(("prompt", "consent"));
    follow(&browser, &authorize_url(&app, &forced), None)
        .await
        .consent();
    // prompt=login asks for the password again, even with a session.
    let mut relogin = standard_authorize(&app_id, &challenge, scope);
    relogin.push(("prompt", "login"));
    let page = browser
        .get(
            authorize_url(&app, &relogin)
                .strip_prefix(&app.base)
                .unwrap(),
        )
        .await;
    let next = browser.get(&page.location.unwrap()).await;
    assert!(
        next.location
            .as_deref()
            .unwrap_or_default()
            .starts_with("/login"),
        "{:?}",
        next.location
    );
    assert!(next.location.unwrap().contains("prompt=login"));
    // max_age=0 also forces a fresh sign-in.
    let mut aged = standard_authorize(&app_id, &challenge, scope);
    aged.push(("max_age", "0"));
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let page = browser
        .get(authorize_url(&app, &aged).strip_prefix(&app.base).unwrap())
        .await;
    let next = browser.get(&page.location.unwrap()).await;
    assert!(next.location.unwrap().starts_with("/login"));
}

async fn authorization_codes_are_single_use_under_concurrency(backend: Backend) {
    let Some(app) = smart_app(backend).await else {
        return;
    };
    add_user(&app, "pat", &["patient"], Some("Patient/123"));
    let app_id = public_app(&app);
    let browser = Browser::new(&app.base);
    let (verifier, challenge) = pkce();
    let scope = "openid launch/patient offline_access patient/Observation.rs";
    let consent = follow(
        &browser,
        &authorize_url(&app, &standard_authorize(&app_id, &challenge, scope)),
        Some(("pat", PASSWORD)),
    )
    .await
    .consent();
    let code = approve(&browser, &consent, &[]).await.callback()["code"].clone();
    let attempts = (0..20).map(|_| redeem(&app, &code, &verifier, &app_id));
    let results = futures_util::future::join_all(attempts).await;
    let winners: Vec<&Value> = results
        .iter()
        .filter(|(s, _)| *s == StatusCode::OK)
        .map(|(_, b)| b)
        .collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    for (status, body) in results.iter().filter(|(s, _)| *s != StatusCode::OK) {
        assert_eq!(
            (*status, body["error"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_grant"))
        );
    }
    // The second redemption revoked every token from that code: the refresh token is dead.
    let refresh_token = winners[0]["refresh_token"].as_str().unwrap();
    let (status, body) = refresh(&app, refresh_token, &app_id).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );
    let reuse = audit_actions(&app, "token.reuse_detected");
    assert!(!reuse.is_empty() && reuse[0]["kind"] == "authorization_code");
}

async fn refresh_tokens_rotate_and_reuse_revokes_the_family(backend: Backend) {
    let Some(app) = smart_app(backend).await else {
        return;
    };
    add_user(&app, "pat", &["patient"], Some("Patient/123"));
    let app_id = public_app(&app);
    let browser = Browser::new(&app.base);
    let first = full_flow(
        &app,
        &browser,
        &app_id,
        "pat",
        "openid launch/patient offline_access patient/Observation.rs patient/Condition.rs",
    )
    .await;
    let r1 = first["refresh_token"].as_str().unwrap().to_owned();
    let refresh = |t: String, extra: Option<(&'static str, &'static str)>| {
        let (app, app_id) = (&app, app_id.clone());
        async move {
            let mut form = vec![
                ("grant_type", "refresh_token".to_owned()),
                ("refresh_token", t),
                ("client_id", app_id),
            ];
            if let Some((k, v)) = extra {
                form.push((k, v.to_owned()));
            }
            let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
            token(app, &form, None).await
        }
    };
    // Narrowing is allowed; widening is not (and changes nothing).
    let (status, body) = refresh(
        r1.clone(),
        Some(("scope", "patient/Observation.rs patient/Patient.rs")),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_scope"))
    );
    let (status, narrowed) = refresh(r1.clone(), Some(("scope", "patient/Observation.rs"))).await;
    assert_eq!(status, StatusCode::OK, "{narrowed}");
    assert_eq!(narrowed["scope"], "patient/Observation.rs");
    assert_eq!(narrowed["patient"], "123", "context survives refresh");
    let r2 = narrowed["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(r1, r2);
    // Twenty concurrent uses of r2: one wins; the others are reuse and revoke the family.
    let results = futures_util::future::join_all((0..20).map(|_| refresh(r2.clone(), None))).await;
    let ok: Vec<&Value> = results
        .iter()
        .filter(|(s, _)| *s == StatusCode::OK)
        .map(|(_, b)| b)
        .collect();
    assert_eq!(ok.len(), 1, "{results:?}");
    let r3 = ok[0]["refresh_token"].as_str().unwrap().to_owned();
    let (status, _) = refresh(r3, None).await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "family revoked by the reuse"
    );
    // The side effects of the rejected requests were committed.
    assert!(audit_actions(&app, "token.reuse_detected")
        .iter()
        .any(|e| e["kind"] == "refresh_token"));
    let revoked: i64 = {
        use diesel::prelude::*;
        use ward::store::schema::token_families::dsl::*;
        token_families
            .filter(revoked_at.is_not_null())
            .count()
            .get_result(&mut *app.conn())
            .unwrap()
    };
    assert_eq!(revoked, 1);
    // Replaying the very first token (also rotated) is refused too.
    let (status, body) = refresh(r1, None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );
}

async fn online_access_ends_with_the_session(backend: Backend) {
    let Some(app) = smart_app(backend).await else {
        return;
    };
    add_user(&app, "pat", &["patient"], Some("Patient/123"));
    let app_id = public_app(&app);
    let browser = Browser::new(&app.base);
    let first = full_flow(
        &app,
        &browser,
        &app_id,
        "pat",
        "openid launch/patient online_access patient/Observation.rs",
    )
    .await;
    let r1 = first["refresh_token"]
        .as_str()
        .expect("online access refresh token")
        .to_owned();
    let (status, body) = refresh(&app, &r1, &app_id).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let r2 = body["refresh_token"].as_str().unwrap().to_owned();
    // Signing out of Ward ends online access.
    let account = browser.get("/account").await;
    let out = browser.post("/logout", &[("csrf", &account.csrf())]).await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    let (status, body) = refresh(&app, &r2, &app_id).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );
}

async fn userinfo_and_end_session(backend: Backend) {
    let Some(app) = smart_app(backend).await else {
        return;
    };
    add_user(&app, "pat", &["patient"], Some("Patient/123"));
    let app_id = public_app(&app);
    let browser = Browser::new(&app.base);
    let tokens = full_flow(
        &app,
        &browser,
        &app_id,
        "pat",
        "openid fhirUser profile launch/patient patient/Observation.rs",
    )
    .await;
    let access = tokens["access_token"].as_str().unwrap();
    for method in [reqwest::Method::GET, reqwest::Method::POST] {
        let info: Value = app
            .client
            .request(method, app.url("/userinfo"))
            .bearer_auth(access)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(info["fhirUser"], "Patient/123");
        assert_eq!(info["preferred_username"], "pat");
        assert_eq!(info["sub"], decode_payload(access)["sub"]);
    }
    for bad in ["", "garbage", &format!("{access}x")] {
        let response = app
            .client
            .get(app.url("/userinfo"))
            .bearer_auth(bad)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{bad}");
        assert!(response.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("invalid_token"));
    }
    // A token without openid may not read userinfo.
    let plain = full_flow(
        &app,
        &browser,
        &app_id,
        "pat",
        "launch/patient patient/Observation.rs",
    )
    .await;
    let response = app
        .client
        .get(app.url("/userinfo"))
        .bearer_auth(plain["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    // End session: an unregistered post_logout_redirect_uri is refused.
    let id_token = tokens["id_token"].as_str().unwrap();
    let evil = browser
        .get(&format!(
            "/logout/oidc?id_token_hint={id_token}&post_logout_redirect_uri=https://evil.example/"
        ))
        .await;
    assert_eq!(evil.status, StatusCode::BAD_REQUEST);
    // Without a hint the person confirms.
    let confirm = browser.get("/logout/oidc").await;
    assert!(confirm.body.contains("Sign out of Ward?"));
    // With the hint the session ends at once and the browser goes back to the app.
    let done = browser
        .get(&format!(
            "/logout/oidc?id_token_hint={id_token}&post_logout_redirect_uri={}&state=bye",
            url::form_urlencoded::byte_serialize(CALLBACK.as_bytes()).collect::<String>()
        ))
        .await;
    assert_eq!(done.status, StatusCode::SEE_OTHER);
    assert_eq!(
        done.location.as_deref(),
        Some(&*format!("{CALLBACK}?state=bye"))
    );
    let account = browser.get("/account").await;
    assert_eq!(account.status, StatusCode::SEE_OTHER, "signed out");
}

async fn rejects_bad_authorization_requests(backend: Backend) {
    let Some(app) = smart_app(backend).await else {
        return;
    };
    let app_id = public_app(&app);
    let (_, challenge) = pkce();
    let good = standard_authorize(&app_id, &challenge, "openid patient/*.rs");
    let with = |name: &'static str, value: Option<&'static str>| {
        let mut p: Vec<(&str, &str)> = good.iter().filter(|(k, _)| *k != name).cloned().collect();
        if let Some(v) = value {
            p.push((name, v));
        }
        p
    };
    let browser = Browser::new(&app.base);
    let before = count(&app, "auth_requests");
    // Unsafe to redirect: an error page, never a redirect.
    for (reason, params) in [
        ("rejects_unknown_client", with("client_id", Some("nope"))),
        ("rejects_missing_client", with("client_id", None)),
        ("rejects_missing_redirect_uri", with("redirect_uri", None)),
        (
            "rejects_unregistered_redirect_uri",
            with("redirect_uri", Some("https://app.example.com/other")),
        ),
        (
            "rejects_redirect_uri_prefix_match",
            with("redirect_uri", Some("https://app.example.com/callback/x")),
        ),
    ] {
        let page = browser
            .get(
                authorize_url(&app, &params)
                    .strip_prefix(&app.base)
                    .unwrap(),
            )
            .await;
        assert_eq!(page.status, StatusCode::BAD_REQUEST, "{reason}");
        assert!(page.location.is_none(), "{reason}");
    }
    let duplicated = format!("{}&state=again", authorize_url(&app, &good));
    let page = browser
        .get(duplicated.strip_prefix(&app.base).unwrap())
        .await;
    assert_eq!(
        (page.status, page.location.is_none()),
        (StatusCode::BAD_REQUEST, true),
        "rejects_duplicate_parameters"
    );
    // After the redirect check: the error goes to the app with state and iss.
    for (reason, params, code) in [
        (
            "rejects_implicit_flow",
            with("response_type", Some("token")),
            "unsupported_response_type",
        ),
        (
            "rejects_plain_pkce",
            with("code_challenge_method", Some("plain")),
            "invalid_request",
        ),
        (
            "rejects_missing_pkce",
            with("code_challenge", None),
            "invalid_request",
        ),
        (
            "rejects_unknown_aud",
            with("aud", Some("https://other.example/fhir")),
            "invalid_request",
        ),
        ("rejects_missing_aud", with("aud", None), "invalid_request"),
        (
            "rejects_malformed_scope",
            with("scope", Some("patient/Observation.xyz")),
            "invalid_scope",
        ),
        (
            "rejects_launch_scope_without_launch",
            with("scope", Some("launch openid")),
            "invalid_request",
        ),
        (
            "rejects_unknown_launch",
            {
                let mut p = with("scope", Some("launch openid"));
                p.push(("launch", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"));
                p
            },
            "invalid_request",
        ),
        (
            "rejects_request_objects",
            {
                let mut p = good.clone();
                p.push(("request", "eyJhbGciOiJub25lIn0.."));
                p
            },
            "request_not_supported",
        ),
    ] {
        let page = browser
            .get(
                authorize_url(&app, &params)
                    .strip_prefix(&app.base)
                    .unwrap(),
            )
            .await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{reason}");
        let q = query_of(page.location.as_deref().unwrap());
        assert_eq!(q["error"], code, "{reason}");
        assert_eq!(q["state"], "st-123", "{reason}");
        assert_eq!(q["iss"], app.base, "{reason}");
        assert!(page.location.unwrap().starts_with(CALLBACK), "{reason}");
    }
    assert_eq!(
        count(&app, "auth_requests"),
        before,
        "refused requests stored nothing"
    );
    // POST /authorize works the same (authorize-post), and must be form-encoded.
    let response = app
        .client
        .post(app.url("/authorize"))
        .form(&good)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert!(response.headers()["location"]
        .to_str()
        .unwrap()
        .starts_with("/authorize/continue"));
    let response = app
        .client
        .post(app.url("/authorize"))
        .json(&json!({"client_id": app_id}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    // Hostile handles on the continuation pages are plain 400s.
    for path in [
        "/authorize/continue?request=nope",
        "/authorize/continue",
        "/authorize/patients?request=%FF",
    ] {
        let page = browser.get(path).await;
        assert_eq!(page.status, StatusCode::BAD_REQUEST, "{path}");
    }
}

/// (test name, form, Basic credentials, expected status, expected `error`).
type TokenCase<'a> = (
    &'a str,
    Vec<(&'a str, &'a str)>,
    Option<(&'a str, &'a str)>,
    StatusCode,
    &'a str,
);

async fn rejects_bad_token_requests(backend: Backend) {
    let Some(app) = smart_app(backend).await else {
        return;
    };
    add_user(&app, "pat", &["patient"], Some("Patient/123"));
    let app_id = public_app(&app);
    let (secret_client, secret) = register(
        &app,
        json!({"name": "Portal", "kind": "confidential-symmetric", "redirect_uris": [CALLBACK],
               "scope": "openid launch/patient patient/*.rs"}),
    );
    let secret = secret.unwrap();
    let browser = Browser::new(&app.base);
    let scope = "openid launch/patient patient/Observation.rs";
    // A live code for the public app.
    let (verifier, challenge) = pkce();
    let consent = follow(
        &browser,
        &authorize_url(&app, &standard_authorize(&app_id, &challenge, scope)),
        Some(("pat", PASSWORD)),
    )
    .await
    .consent();
    let code = approve(&browser, &consent, &[]).await.callback()["code"].clone();
    let issued = count(&app, "access_tokens");
    let other_verifier = pkce().0;
    let cases: Vec<TokenCase> = vec![
        (
            "rejects_wrong_pkce_verifier",
            vec![
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", CALLBACK),
                ("code_verifier", &other_verifier),
                ("client_id", &app_id),
            ],
            None,
            StatusCode::BAD_REQUEST,
            "invalid_grant",
        ),
        (
            "rejects_missing_pkce_verifier",
            vec![
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", CALLBACK),
                ("client_id", &app_id),
            ],
            None,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "rejects_wrong_redirect_uri",
            vec![
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", "https://app.example.com/other"),
                ("code_verifier", &verifier),
                ("client_id", &app_id),
            ],
            None,
            StatusCode::BAD_REQUEST,
            "invalid_grant",
        ),
        (
            "rejects_code_of_another_client",
            vec![
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", CALLBACK),
                ("code_verifier", &verifier),
            ],
            Some((&secret_client, &secret)),
            StatusCode::BAD_REQUEST,
            "invalid_grant",
        ),
        (
            "rejects_unknown_code",
            vec![
                ("grant_type", "authorization_code"),
                ("code", "nope"),
                ("redirect_uri", CALLBACK),
                ("code_verifier", &verifier),
                ("client_id", &app_id),
            ],
            None,
            StatusCode::BAD_REQUEST,
            "invalid_grant",
        ),
        (
            "rejects_wrong_client_secret",
            vec![
                ("grant_type", "authorization_code"),
                ("code", "x"),
                ("redirect_uri", CALLBACK),
                ("code_verifier", &verifier),
            ],
            Some((&secret_client, "wrong")),
            StatusCode::UNAUTHORIZED,
            "invalid_client",
        ),
        (
            "rejects_unregistered_auth_method",
            vec![
                ("grant_type", "authorization_code"),
                ("code", "x"),
                ("redirect_uri", CALLBACK),
                ("code_verifier", &verifier),
                ("client_id", &secret_client),
            ],
            None,
            StatusCode::UNAUTHORIZED,
            "invalid_client",
        ),
        (
            "rejects_unknown_client",
            vec![
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", CALLBACK),
                ("code_verifier", &verifier),
                ("client_id", "nope"),
            ],
            None,
            StatusCode::UNAUTHORIZED,
            "invalid_client",
        ),
        (
            "rejects_missing_client",
            vec![
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", CALLBACK),
                ("code_verifier", &verifier),
            ],
            None,
            StatusCode::UNAUTHORIZED,
            "invalid_client",
        ),
        (
            "rejects_two_auth_methods",
            vec![
                ("grant_type", "authorization_code"),
                ("code", "x"),
                ("client_id", &secret_client),
                ("client_secret", &secret),
            ],
            Some((&secret_client, &secret)),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "rejects_password_grant",
            vec![
                ("grant_type", "password"),
                ("username", "pat"),
                ("password", PASSWORD),
                ("client_id", &app_id),
            ],
            None,
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
        ),
        (
            "rejects_client_credentials_for_an_app",
            vec![("grant_type", "client_credentials"), ("client_id", &app_id)],
            None,
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
        ),
        (
            "rejects_missing_grant_type",
            vec![("client_id", &app_id)],
            None,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "rejects_unknown_refresh_token",
            vec![
                ("grant_type", "refresh_token"),
                ("refresh_token", "nope"),
                ("client_id", &app_id),
            ],
            None,
            StatusCode::BAD_REQUEST,
            "invalid_grant",
        ),
    ];
    for (reason, form, basic, status, error) in &cases {
        let (got, body) = token(&app, form, *basic).await;
        assert_eq!(
            (got, body["error"].as_str()),
            (*status, Some(*error)),
            "{reason}: {body}"
        );
        assert!(body["error_description"].is_string(), "{reason}");
    }
    // Duplicate parameters and non-form bodies.
    let response = app
        .client
        .post(app.url("/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "grant_type=authorization_code&code={code}&code=x&client_id={app_id}"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::BAD_REQUEST,
        "rejects_duplicate_parameters"
    );
    let response = app
        .client
        .post(app.url("/token"))
        .json(&json!({"grant_type": "authorization_code"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::BAD_REQUEST,
        "rejects_json_bodies"
    );
    let response = app
        .client
        .post(app.url("/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(vec![b'a'; 70_000])
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::PAYLOAD_TOO_LARGE,
        "rejects_oversized_bodies"
    );
    assert_eq!(count(&app, "access_tokens"), issued, "nothing was issued");
    // Every refusal is audited once: as token.refused, or as client.authentication_failed.
    let refusals = audit_actions(&app, "token.refused").len()
        + audit_actions(&app, "client.authentication_failed").len();
    assert!(refusals >= cases.len(), "{refusals}");
    assert!(!audit_actions(&app, "client.authentication_failed").is_empty());
    // The code survived every refused attempt and still works once.
    let (status, body) = redeem(&app, &code, &verifier, &app_id).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // An expired code (60 s) is refused.
    let (verifier, challenge) = pkce();
    let consent = follow(
        &browser,
        &authorize_url(&app, &standard_authorize(&app_id, &challenge, scope)),
        None,
    )
    .await
    .consent();
    let code = approve(&browser, &consent, &[]).await.callback()["code"].clone();
    {
        use diesel::prelude::*;
        use ward::store::schema::authorization_codes::dsl::*;
        diesel::update(authorization_codes)
            .set(expires_at.eq(expires_at - 61))
            .execute(&mut *app.conn())
            .unwrap();
    }
    let (status, body) = redeem(&app, &code, &verifier, &app_id).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant")),
        "rejects_expired_code"
    );
}

async fn rejects_replayed_and_malformed_client_assertions(backend: Backend) {
    let Some(app) = smart_app(backend).await else {
        return;
    };
    let key = ES384.generate_key_pair().unwrap();
    let mut public_jwk = key.to_jwk_public_key();
    public_jwk.set_key_id("k1");
    let (ehr, _) = register(
        &app,
        json!({"client_id": "ehr-jwt", "name": "EHR", "kind": "confidential-asymmetric", "redirect_uris": ["https://ehr.example/cb"],
               "scope": "openid", "ehr_launcher": true, "jwks": {"keys": [serde_json::to_value(&public_jwk).unwrap()]}}),
    );
    let app_id = public_app(&app);
    let launch_with = |jwt: String| {
        let (app, app_id) = (&app, app_id.clone());
        async move {
            post_form(
                app,
                "/launch",
                &[
                    ("target_client_id", app_id.as_str()),
                    (
                        "client_assertion_type",
                        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                    ),
                    ("client_assertion", jwt.as_str()),
                ],
                None,
            )
            .await
        }
    };
    let good = assertion(&key, "k1", &ehr, &app.url("/launch"));
    let (status, body) = launch_with(good.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = launch_with(good).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_client")),
        "rejects_replayed_jti"
    );
    // The same fresh assertion sent twenty times at once: exactly one is accepted.
    let fresh = assertion(&key, "k1", &ehr, &app.url("/launch"));
    let results = futures_util::future::join_all((0..20).map(|_| launch_with(fresh.clone()))).await;
    assert_eq!(
        results.iter().filter(|(s, _)| *s == StatusCode::OK).count(),
        1,
        "{results:?}"
    );
    let other = ES384.generate_key_pair().unwrap();
    for (reason, jwt) in [
        (
            "rejects_wrong_aud",
            assertion(&key, "k1", &ehr, "https://elsewhere.example/token"),
        ),
        (
            "rejects_unknown_kid",
            assertion(&key, "k2", &ehr, &app.url("/launch")),
        ),
        (
            "rejects_wrong_key",
            assertion(&other, "k1", &ehr, &app.url("/launch")),
        ),
        (
            "rejects_iss_of_another_client",
            assertion(&key, "k1", &app_id, &app.url("/launch")),
        ),
        ("rejects_garbage", "a.b.c".to_owned()),
    ] {
        let (status, body) = launch_with(jwt).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::UNAUTHORIZED, Some("invalid_client")),
            "{reason}: {body}"
        );
    }
    assert_eq!(count(&app, "launch_contexts"), 2);
    let failures = audit_actions(&app, "client.authentication_failed");
    assert!(failures.len() >= 5 + 19, "{}", failures.len());
}

async fn token_cors_and_login_hint(backend: Backend) {
    let Some(app) = smart_app(backend).await else {
        return;
    };
    add_user(&app, "pat", &["patient"], Some("Patient/123"));
    let app_id = public_app(&app);
    let browser = Browser::new(&app.base);
    // login_hint prefills the sign-in form.
    let (verifier, challenge) = pkce();
    let mut params = standard_authorize(
        &app_id,
        &challenge,
        "openid launch/patient patient/Observation.rs",
    );
    params.push(("login_hint", "pat"));
    let first = browser
        .get(
            authorize_url(&app, &params)
                .strip_prefix(&app.base)
                .unwrap(),
        )
        .await;
    let to_login = browser.get(&first.location.unwrap()).await;
    let login = browser.get(&to_login.location.unwrap()).await;
    assert!(login.body.contains("value=\"pat\""), "{}", login.body);
    let consent = follow(
        &browser,
        &authorize_url(&app, &params),
        Some(("pat", PASSWORD)),
    )
    .await
    .consent();
    let code = approve(&browser, &consent, &[]).await.callback()["code"].clone();
    // The token response may be read by the app's own origin only.
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", CALLBACK),
        ("code_verifier", verifier.as_str()),
        ("client_id", app_id.as_str()),
    ];
    let response = app
        .client
        .post(app.url("/token"))
        .header("origin", "https://app.example.com")
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert_eq!(response.headers()["pragma"], "no-cache");
    let response = app
        .client
        .post(app.url("/token"))
        .header("origin", "https://evil.example")
        .form(&form)
        .send()
        .await
        .unwrap();
    assert!(response
        .headers()
        .get("access-control-allow-origin")
        .is_none());
}

async fn patients_only_ever_get_their_own_record(backend: Backend) {
    let Some(app) = smart_app(backend).await else {
        return;
    };
    add_user(&app, "nolink", &["patient"], None);
    add_user(&app, "pat", &["patient"], Some("Patient/123"));
    let app_id = public_app(&app);
    // A patient user without a linked record gets no picker.
    let (_, challenge) = pkce();
    let browser = Browser::new(&app.base);
    let refused = follow(
        &browser,
        &authorize_url(
            &app,
            &standard_authorize(&app_id, &challenge, "launch/patient patient/*.rs"),
        ),
        Some(("nolink", PASSWORD)),
    )
    .await
    .callback();
    assert_eq!(refused["error"], "access_denied");
    // An EHR launch naming someone else's record is refused for a patient user.
    let (ehr, secret) = register(
        &app,
        json!({"name": "EHR", "kind": "confidential-symmetric",
        "redirect_uris": ["https://ehr.example/cb"], "scope": "openid", "ehr_launcher": true}),
    );
    let (status, launched) = post_form(
        &app,
        "/launch",
        &[("target_client_id", &app_id), ("patient", "999")],
        Some((&ehr, secret.as_deref().unwrap())),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let value = launched["launch"].as_str().unwrap().to_owned();
    let mut params = standard_authorize(&app_id, &challenge, "launch openid patient/*.rs");
    params.push(("launch", &value));
    let browser = Browser::new(&app.base);
    let refused = follow(
        &browser,
        &authorize_url(&app, &params),
        Some(("pat", PASSWORD)),
    )
    .await
    .callback();
    assert_eq!(refused["error"], "access_denied");
    assert_eq!(count(&app, "authorization_codes"), 0);
}

async fn a_pending_request_belongs_to_the_first_person_signed_in(backend: Backend) {
    let Some(app) = smart_app(backend).await else {
        return;
    };
    add_clinician_role(&app);
    add_user(&app, "drsmith", &["clinician"], None);
    add_user(&app, "drjones", &["clinician"], None);
    let app_id = public_app(&app);
    let (_, challenge) = pkce();
    let a = Browser::new(&app.base);
    let consent = follow(
        &a,
        &authorize_url(
            &app,
            &standard_authorize(&app_id, &challenge, "openid user/Observation.rs"),
        ),
        Some(("drsmith", PASSWORD)),
    )
    .await
    .consent();
    let handle = consent.field("request").unwrap();
    // Someone else, signed in elsewhere, opens the same request: refused, and it is over.
    let b = Browser::new(&app.base);
    b.sign_in("drjones", PASSWORD).await;
    let taken = follow(
        &b,
        &app.url(&format!("/authorize/continue?request={handle}")),
        None,
    )
    .await
    .callback();
    assert_eq!(taken["error"], "access_denied");
    assert_eq!(
        submit_consent(&a, &consent_form(&consent, "approve", &[], true))
            .await
            .other()
            .status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(count(&app, "authorization_codes"), 0);
}

async fn refreshes_follow_todays_roles_and_offline_access_can_be_declined(backend: Backend) {
    let Some(app) = smart_app(backend).await else {
        return;
    };
    add_user(&app, "pat", &["patient"], Some("Patient/123"));
    let app_id = public_app(&app);
    let browser = Browser::new(&app.base);
    let scope = "openid launch/patient offline_access patient/Observation.rs patient/Condition.rs";
    let tokens = full_flow(&app, &browser, &app_id, "pat", scope).await;
    // The patient role now allows Conditions only: the next refresh drops Observations.
    crate::common::smart::set_role_ceiling(&app, "patient", "patient/Condition.rs");
    let (status, refreshed) =
        refresh(&app, tokens["refresh_token"].as_str().unwrap(), &app_id).await;
    assert_eq!(status, StatusCode::OK, "{refreshed}");
    let granted = refreshed["scope"].as_str().unwrap();
    assert!(
        granted.contains("patient/Condition.rs") && !granted.contains("Observation"),
        "{granted}"
    );
    // Nothing left at all: the refresh is refused.
    crate::common::smart::set_role_ceiling(&app, "patient", "patient/Coverage.rs");
    let (status, body) = token(
        &app,
        &[
            ("grant_type", "refresh_token"),
            (
                "refresh_token",
                refreshed["refresh_token"].as_str().unwrap(),
            ),
            ("client_id", &app_id),
        ],
        None,
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant")),
        "{body}"
    );
    // Unticking offline access on the consent page means no refresh token.
    crate::common::smart::set_role_ceiling(&app, "patient", "patient/*.rs");
    let (verifier, challenge) = pkce();
    let consent = follow(
        &browser,
        &authorize_url(&app, &standard_authorize(&app_id, &challenge, scope)),
        None,
    )
    .await
    .consent();
    assert!(consent.body.contains("name=\"offline\""));
    let callback = submit_consent(
        &browser,
        &consent_form(
            &consent,
            "approve",
            &[("include", "Observation"), ("include", "Condition")],
            false,
        ),
    )
    .await
    .callback();
    let (status, body) = redeem(&app, &callback["code"], &verifier, &app_id).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.get("refresh_token").is_none(), "{body}");
    assert!(!body["scope"].as_str().unwrap().contains("offline_access"));
    // A consent whose patient differs from the one shown is refused.
    let (_, challenge) = pkce();
    let consent = follow(
        &browser,
        &authorize_url(&app, &standard_authorize(&app_id, &challenge, scope)),
        None,
    )
    .await
    .consent();
    let tampered =
        consent_form(&consent, "approve", &[], true).replace("patient=123", "patient=999");
    assert_eq!(
        submit_consent(&browser, &tampered).await.other().status,
        StatusCode::BAD_REQUEST
    );
}

/// Whether the person behind a grant may still use it is read at every refresh, also when
/// the account changed underneath Ward's own admin paths (which revoke the grants too): a
/// disabled account refreshes nothing, and the refused refresh leaves its token unused; an
/// account that is gone refreshes nothing either.
async fn a_refresh_for_an_account_disabled_or_gone_is_refused_and_spends_nothing(backend: Backend) {
    use diesel::connection::SimpleConnection;
    let Some(app) = smart_app(backend).await else {
        return;
    };
    add_user(&app, "pat", &["patient"], Some("Patient/123"));
    let app_id = public_app(&app);
    let browser = Browser::new(&app.base);
    let scope = "openid launch/patient offline_access patient/Observation.rs";
    let tokens = full_flow(&app, &browser, &app_id, "pat", scope).await;
    let presented = tokens["refresh_token"].as_str().unwrap();
    let sql = |statement: &str| app.conn().batch_execute(statement).unwrap();
    let refused = |body: &Value| {
        body["error"] == "invalid_grant"
            && body["error_description"]
                .as_str()
                .is_some_and(|d| d.contains("can no longer sign in"))
    };

    sql("UPDATE users SET enabled = FALSE WHERE username = 'pat'");
    let (status, body) = refresh(&app, presented, &app_id).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(refused(&body), "{body}");
    // Nothing was spent: enabled again, the same refresh token still works once.
    sql("UPDATE users SET enabled = TRUE WHERE username = 'pat'");
    let (status, body) = refresh(&app, presented, &app_id).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    sql("DELETE FROM users WHERE username = 'pat'");
    let (status, gone) = refresh(&app, body["refresh_token"].as_str().unwrap(), &app_id).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{gone}");
    assert!(refused(&gone), "{gone}");
}

async fn launch_pages_keep_a_strict_content_security_policy(backend: Backend) {
    let Some(app) = smart_app(backend).await else {
        return;
    };
    add_user(&app, "pat", &["patient"], Some("Patient/123"));
    let app_id = public_app(&app);
    let headers = |r: &reqwest::Response| {
        (
            r.headers()
                .get("content-security-policy")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default(),
            r.headers()
                .get("x-frame-options")
                .map(|v| v.to_str().unwrap().to_owned()),
        )
    };
    // Without EHR origins nothing may frame the sign-in page, and forms post to Ward only.
    let login = app.client.get(app.url("/login")).send().await.unwrap();
    let (csp, xfo) = headers(&login);
    assert!(
        csp.contains("frame-ancestors 'none'") && csp.contains("form-action 'self'"),
        "{csp}"
    );
    assert_eq!(xfo.as_deref(), Some("DENY"));
    // The consent page lets its form's redirect end at the app, and nowhere else.
    let (_, challenge) = pkce();
    let browser = Browser::new(&app.base);
    let consent = follow(
        &browser,
        &authorize_url(
            &app,
            &standard_authorize(&app_id, &challenge, "openid launch/patient patient/*.rs"),
        ),
        Some(("pat", PASSWORD)),
    )
    .await
    .consent();
    let page = browser
        .client
        .get(app.url(&format!(
            "/authorize/continue?request={}",
            consent.field("request").unwrap()
        )))
        .send()
        .await
        .unwrap();
    let (csp, _) = headers(&page);
    assert!(
        csp.contains("form-action 'self' https://app.example.com;")
            || csp.ends_with("form-action 'self' https://app.example.com"),
        "{csp}"
    );
    // With EHR origins, the launch pages (and only they) may be framed by them.
    let framed = TestApp::builder(backend)
        .storage(app.storage.clone())
        .env("WARD_FHIR_BASE", FHIR)
        .env("WARD_EHR_ORIGINS", "https://ehr.example")
        .start()
        .await
        .unwrap();
    let login = framed
        .client
        .get(framed.url("/login"))
        .send()
        .await
        .unwrap();
    let (csp, xfo) = headers(&login);
    assert!(csp.contains("frame-ancestors https://ehr.example"), "{csp}");
    assert!(xfo.is_none());
    let account = framed
        .client
        .get(framed.url("/healthz"))
        .send()
        .await
        .unwrap();
    let (csp, xfo) = headers(&account);
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(xfo.as_deref(), Some("DENY"));
}

async fn sign_out_confirmation_goes_only_to_a_registered_uri(backend: Backend) {
    let Some(app) = smart_app(backend).await else {
        return;
    };
    add_user(&app, "pat", &["patient"], Some("Patient/123"));
    let app_id = public_app(&app);
    let browser = Browser::new(&app.base);
    browser.sign_in("pat", PASSWORD).await;
    let encoded: String = url::form_urlencoded::byte_serialize(CALLBACK.as_bytes()).collect();
    let confirm = browser
        .get(&format!(
            "/logout/oidc?client_id={app_id}&post_logout_redirect_uri={encoded}&state=s1"
        ))
        .await;
    assert_eq!(confirm.status, StatusCode::OK);
    let csrf = confirm.csrf();
    // A tampered destination is refused and the session lives on.
    let tampered = browser
        .post(
            "/logout/confirm",
            &[
                ("csrf", &csrf),
                ("client_id", &app_id),
                ("uri", "https://evil.example/"),
                ("state", "s1"),
            ],
        )
        .await;
    assert_eq!(tampered.status, StatusCode::BAD_REQUEST);
    assert_eq!(browser.get("/account").await.status, StatusCode::OK);
    let done = browser
        .post(
            "/logout/confirm",
            &[
                ("csrf", &csrf),
                ("client_id", &app_id),
                ("uri", CALLBACK),
                ("state", "s1"),
            ],
        )
        .await;
    assert_eq!(done.status, StatusCode::SEE_OTHER);
    assert_eq!(
        done.location.as_deref(),
        Some(&*format!("{CALLBACK}?state=s1"))
    );
    assert_eq!(browser.get("/account").await.status, StatusCode::SEE_OTHER);
}
