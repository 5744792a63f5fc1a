//! The admin JSON API (`/admin/api/v1/…`) over real HTTP on SQLite and PostgreSQL: who is let
//! in (admin-API tokens by scope, admin sessions with a second factor and a CSRF header, never a
//! machine for human-only actions), every operation, RFC 9457 problems, mass assignment and
//! invalid input that write nothing, and `If-Match` against lost updates.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::common::admin::*;
use crate::common::browser::Browser;
use crate::common::smart::*;
use crate::common::Backend;
use crate::on_both_backends;

on_both_backends!(
    admits_only_admins_and_machines_with_the_right_scope,
    clients_over_the_admin_api,
    users_roles_sessions_and_explain_over_the_admin_api,
    patients_keys_and_audit_over_the_admin_api,
    refuses_mass_assignment_and_invalid_input_and_writes_nothing,
    concurrent_edits_are_detected_with_if_match,
    machines_cannot_mint_admins_or_take_over_accounts,
    accounts_for_disclosures_of_a_patient,
);

const WRITE: &str = "__ward.admin.write";
const READ: &str = "__ward.admin.read";
const NEW_PASSWORD: &str = "amber walrus plays the oboe";

const NDJSON: &str = r#"{"resourceType":"Patient","id":"p1","name":[{"use":"official","family":"Núñez","given":["José"]}],"birthDate":"1980-04-02","gender":"male","identifier":[{"system":"urn:mrn","value":"MRN1001"}]}
{"resourceType":"Patient","id":"p2","name":[{"family":"Smith","given":["Anna"]}],"birthDate":"1975-01-30","gender":"female","identifier":[{"system":"urn:mrn","value":"MRN1002"}]}
{"resourceType":"Patient","id":"p3","name":[{"family":"Smithers","given":["Bob"]}],"birthDate":"1990-12-12"}
"#;

fn portal() -> Value {
    json!({"client_id": "portal", "name": "Patient Portal", "kind": "confidential-symmetric",
           "redirect_uris": [CALLBACK], "scope": "openid fhirUser launch/patient patient/Observation.rs"})
}

fn ids(reply: &Reply, key: &str) -> Vec<String> {
    reply.body["items"]
        .as_array()
        .unwrap_or_else(|| panic!("no items in {}", reply.text))
        .iter()
        .map(|i| i[key].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Whether `secret` authenticates `client_id` at the token endpoint: a known client asking for
/// a grant it may not use is `unauthorized_client` (400); bad credentials are 401.
async fn secret_works(app: &crate::common::TestApp, client_id: &str, secret: &str) -> bool {
    let (status, body) = token(
        app,
        &[("grant_type", "client_credentials"), ("scope", "openid")],
        Some((client_id, secret)),
    )
    .await;
    match status {
        StatusCode::BAD_REQUEST => true,
        StatusCode::UNAUTHORIZED => false,
        other => panic!("unexpected {other}: {body}"),
    }
}

fn version(reply: &Reply) -> i64 {
    reply.body["version"]
        .as_i64()
        .unwrap_or_else(|| panic!("no version in {}", reply.text))
}

fn etag_of(reply: &Reply) -> String {
    let etag = reply.etag.clone().expect("ETag");
    assert_eq!(etag, format!("\"v{}\"", version(reply)));
    etag
}

fn lock(app: &crate::common::TestApp, name: &str) {
    use diesel::prelude::*;
    use ward::store::schema::users::dsl::*;
    diesel::update(users.filter(username.eq(name)))
        .set(locked_at.eq(Some(app.state.clock.now_secs())))
        .execute(&mut *app.conn())
        .unwrap();
}

async fn admits_only_admins_and_machines_with_the_right_scope(backend: Backend) {
    let Some((app, clock)) = admin_app(backend, &[]).await else {
        return;
    };
    add_user(&app, "root", &["admin"], None);
    add_clinician_role(&app);
    add_user(&app, "carl", &["clinician"], None);
    let reader = Machine::register(&app, "admin-reader", READ);
    let writer = Machine::register(&app, "admin-writer", &format!("{READ} {WRITE}"));
    let lab = Machine::register(&app, "lab-sync", "system/Observation.rs");
    let new_client = json!({"name": "Sneaky", "kind": "public", "redirect_uris": [CALLBACK],
                            "scope": "launch/patient patient/Observation.rs"});
    let clients_before = rows(&app, "clients");

    // No credentials, or credentials that are not an admin-API token: 401 problems.
    let anonymous = Api::anonymous(&app);
    for path in [
        "/clients",
        "/users",
        "/roles",
        "/keys",
        "/audit",
        "/patients",
    ] {
        let r = anonymous.get(path).await;
        assert_eq!(
            r.problem(StatusCode::UNAUTHORIZED),
            "unauthenticated",
            "{path}"
        );
        assert!(
            r.www_authenticate
                .as_deref()
                .is_some_and(|w| w.starts_with("Bearer")),
            "{path}: {:?}",
            r.www_authenticate
        );
        assert_eq!(r.body["status"], 401);
    }
    anonymous
        .post("/clients", &new_client)
        .await
        .problem(StatusCode::UNAUTHORIZED);
    for garbage in ["garbage", "a.b.c", &"x".repeat(5000)] {
        Api::bearer(&app, garbage)
            .get("/clients")
            .await
            .problem(StatusCode::UNAUTHORIZED);
    }
    // A FHIR-audience token of a normal backend service is not an admin-API token.
    let fhir_token = lab.access_token(&app, "system/Observation.rs").await;
    let r = Api::bearer(&app, &fhir_token).get("/clients").await;
    assert_eq!(r.problem(StatusCode::UNAUTHORIZED), "unauthenticated");
    // A tampered admin token neither.
    let mut tampered = writer.access_token(&app, WRITE).await;
    tampered.pop();
    Api::bearer(&app, &tampered)
        .post("/clients", &new_client)
        .await
        .problem(StatusCode::UNAUTHORIZED);
    // A backend service cannot get admin scopes its registration does not hold.
    let (status, body) = reader.request_token(&app, WRITE).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_scope")),
        "{body}"
    );

    // A signed-in user without the admin role: 403, audited.
    let denied_before = audit_actions(&app, "admin.access_denied").len();
    let browser = Browser::new(&app.base);
    assert_eq!(
        browser.sign_in("carl", PASSWORD).await.status,
        StatusCode::SEE_OTHER
    );
    let carl_csrf = session_csrf(&browser).await;
    let carl = Api::session(&browser, Some(&carl_csrf));
    assert_eq!(
        carl.get("/clients").await.problem(StatusCode::FORBIDDEN),
        "forbidden"
    );
    carl.post("/clients", &new_client)
        .await
        .problem(StatusCode::FORBIDDEN);
    let denied = audit_actions(&app, "admin.access_denied");
    assert_eq!(denied.len(), denied_before + 2, "{denied:?}");
    assert_eq!(
        denied[denied_before]["path"], "/admin/api/v1/clients",
        "{denied:?}"
    );
    assert!(
        denied[denied_before]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("admin role")),
        "{denied:?}"
    );
    // An admin whose sign-in has not passed a second factor yet: 403.
    let half = Browser::new(&app.base);
    let first = half.sign_in("root", PASSWORD).await;
    assert!(first
        .location
        .as_deref()
        .is_some_and(|l| l.starts_with("/account/mfa/totp")));
    Api::session(&half, None)
        .get("/clients")
        .await
        .problem(StatusCode::FORBIDDEN);

    // `__ward.admin.read` reads but does not write.
    let read = reader.api(&app, READ).await;
    let listed = read.get("/clients").await;
    assert!(listed.ok(StatusCode::OK)["items"].is_array());
    assert_eq!(
        read.post("/clients", &new_client)
            .await
            .problem(StatusCode::FORBIDDEN),
        "forbidden"
    );
    // A writer's token asked for with only the read scope reads only.
    let write_as_read = writer.api(&app, READ).await;
    write_as_read.get("/users").await.ok(StatusCode::OK);
    write_as_read
        .post("/clients", &new_client)
        .await
        .problem(StatusCode::FORBIDDEN);
    assert_eq!(rows(&app, "clients"), clients_before, "nothing registered");

    // `__ward.admin.write` never does what only a human admin may.
    let write = writer.api(&app, WRITE).await;
    let (keys, users, user_roles) = (
        rows(&app, "signing_keys"),
        rows(&app, "users"),
        rows(&app, "user_roles"),
    );
    let denied_before = audit_actions(&app, "admin.access_denied").len();
    let refusals = [
        write.post_empty("/keys/rotate").await,
        write.post("/keys/rotate", &json!({"immediate": true})).await,
        write
            .post(
                "/users",
                &json!({"username": "mallory", "roles": ["admin"], "password": NEW_PASSWORD}),
            )
            .await,
        write
            .post(
                "/users",
                &json!({"username": "mallory", "roles": ["nurse", "admin"], "enrolment_link": true}),
            )
            .await,
        write.call(Method::PUT, "/users/root/roles/nurse", None).await,
        write.call(Method::PUT, "/users/carl/roles/admin", None).await,
        write.delete("/users/root/roles/admin").await,
        write
            .put("/users/root", &json!({"display_name": "Owned"}))
            .await,
        write
            .put("/users/root/status", &json!({"enabled": false}))
            .await,
        write.delete("/users/root/mfa").await,
        write.post_empty("/users/root/unlock").await,
        write.delete("/users/root/sessions").await,
        write.post_empty("/users/root/enrolment-link").await,
        write.delete("/roles/admin").await,
        write
            .put("/roles/admin", &json!({"description": "Anyone"}))
            .await,
    ];
    for r in &refusals {
        assert_eq!(r.problem(StatusCode::FORBIDDEN), "forbidden", "{}", r.text);
    }
    assert_eq!(
        audit_actions(&app, "admin.access_denied").len(),
        denied_before + refusals.len(),
        "every refusal of a valid token is audited"
    );
    assert_eq!(
        (
            rows(&app, "signing_keys"),
            rows(&app, "users"),
            rows(&app, "user_roles")
        ),
        (keys, users, user_roles),
        "nothing changed"
    );
    let root_view = write.get("/users/root").await;
    assert_eq!(root_view.body["roles"], json!(["admin"]));
    assert_eq!(root_view.body["display_name"], "Display root");
    assert_eq!(
        write.get("/users/carl").await.body["roles"],
        json!(["clinician"])
    );
    // What is not human-only, the same token may do.
    write
        .post(
            "/users",
            &json!({"username": "nina", "roles": ["nurse"], "password": NEW_PASSWORD}),
        )
        .await
        .ok(StatusCode::CREATED);
    write
        .call(Method::PUT, "/users/carl/roles/nurse", None)
        .await
        .ok(StatusCode::OK);

    // An admin session: reads freely; changes need the session's CSRF token in a header.
    let root = first_admin_sign_in(&app, &clock, "root").await;
    root.api_without_csrf()
        .get("/clients")
        .await
        .ok(StatusCode::OK);
    let before = rows(&app, "clients");
    let r = root.api_without_csrf().post("/clients", &new_client).await;
    assert_eq!(r.problem(StatusCode::FORBIDDEN), "csrf");
    for forged in ["forged", carl_csrf.as_str(), ""] {
        let r = Api::session(&root.browser, Some(forged))
            .post("/clients", &new_client)
            .await;
        assert_eq!(r.problem(StatusCode::FORBIDDEN), "csrf", "{forged}");
    }
    root.api_without_csrf()
        .delete("/roles/nurse")
        .await
        .problem(StatusCode::FORBIDDEN);
    assert_eq!(rows(&app, "clients"), before, "nothing registered");
    // A bearer header wins over the cookie: a garbage token with a valid session is refused.
    Api {
        bearer: Some("garbage".into()),
        ..root.api()
    }
    .get("/clients")
    .await
    .problem(StatusCode::UNAUTHORIZED);
    // With the header, and a fresh second factor, it may do what machines may not.
    root.api()
        .post("/clients", &new_client)
        .await
        .ok(StatusCode::CREATED);
    let promoted = root
        .api()
        .call(Method::PUT, "/users/carl/roles/admin", None)
        .await;
    assert!(promoted.ok(StatusCode::OK)["roles"]
        .as_array()
        .unwrap()
        .contains(&json!("admin")));
    let demoted = root.api().delete("/users/carl/roles/admin").await;
    assert!(!demoted.ok(StatusCode::OK)["roles"]
        .as_array()
        .unwrap()
        .contains(&json!("admin")));

    // Other spellings of the admin role do not get a machine past the human-only rule.
    for spelling in ["ADMIN", "Admin", "%61dmin", "admin%20"] {
        let r = write
            .call(Method::PUT, &format!("/users/carl/roles/{spelling}"), None)
            .await;
        assert!(
            matches!(r.status, StatusCode::FORBIDDEN | StatusCode::NOT_FOUND),
            "{spelling}: {}",
            r.text
        );
        let r = write
            .post(
                "/users",
                &json!({"username": "mallory2", "roles": [spelling.replace("%61", "a")]}),
            )
            .await;
        assert!(
            matches!(r.status, StatusCode::FORBIDDEN | StatusCode::NOT_FOUND),
            "{spelling}: {}",
            r.text
        );
    }
    assert_eq!(
        write.get("/users/carl").await.body["roles"],
        json!(["clinician", "nurse"])
    );
    write
        .get("/users/mallory2")
        .await
        .problem(StatusCode::NOT_FOUND);

    // A token holds only the admin scopes its registration still allows.
    let other = Machine::register(&app, "admin-other", &format!("{READ} {WRITE}"));
    let other_write = other.api(&app, &format!("{READ} {WRITE}")).await;
    other_write
        .post_empty("/clients/portal-x/secret")
        .await
        .problem(StatusCode::NOT_FOUND);
    let current = write.get("/clients/admin-other").await;
    let mut narrowed = current.body.clone();
    narrowed["allowed_scopes"] = json!(READ);
    // Changing a client that holds admin scopes is human-only, even to narrow it…
    write
        .put("/clients/admin-other", &narrowed)
        .await
        .problem(StatusCode::FORBIDDEN);
    // …so an operator narrows it here.
    {
        let mut conn = app.conn();
        let mut settings = ward::clients::get(&mut conn, "admin-other")
            .unwrap()
            .settings;
        settings.allowed_scopes = READ.into();
        ward::clients::update(
            &mut conn,
            app.state.clock.as_ref(),
            &ward::audit::AuditContext::cli(),
            "admin-other",
            settings,
            None,
        )
        .unwrap();
    }
    other_write.get("/clients").await.ok(StatusCode::OK);
    other_write
        .post("/clients", &new_client)
        .await
        .problem(StatusCode::FORBIDDEN);
    // A disabled admin client's tokens stop working; so do revoked ones.
    let read_again = reader.api(&app, READ).await;
    read_again.get("/clients").await.ok(StatusCode::OK);
    write
        .put("/clients/admin-reader/status", &json!({"enabled": false}))
        .await
        .ok(StatusCode::OK);
    read_again
        .get("/clients")
        .await
        .problem(StatusCode::UNAUTHORIZED);
    // Enabling an admin client again is human-only; an operator does it here.
    write
        .put("/clients/admin-reader/status", &json!({"enabled": true}))
        .await
        .problem(StatusCode::FORBIDDEN);
    ward::clients::set_enabled(
        &mut app.conn(),
        app.state.clock.as_ref(),
        &ward::audit::AuditContext::cli(),
        "admin-reader",
        true,
    )
    .unwrap();
    let read_again = reader.api(&app, READ).await;
    read_again.get("/clients").await.ok(StatusCode::OK);
    write
        .delete("/clients/admin-reader/grants")
        .await
        .ok(StatusCode::OK);
    read_again
        .get("/clients")
        .await
        .problem(StatusCode::UNAUTHORIZED);
}

async fn clients_over_the_admin_api(backend: Backend) {
    let Some((app, _clock)) = admin_app(backend, &[]).await else {
        return;
    };
    let writer = Machine::register(&app, "admin-writer", WRITE);
    let api = writer.api(&app, WRITE).await;

    // Create: 201, Location, ETag, the secret shown once.
    let created = api.post("/clients", &portal()).await;
    let body = created.ok(StatusCode::CREATED).clone();
    assert_eq!(
        created.location.as_deref(),
        Some("/admin/api/v1/clients/portal")
    );
    assert_eq!(created.etag.as_deref(), Some("\"v1\""));
    let secret = body["client_secret"]
        .as_str()
        .expect("secret shown at creation")
        .to_owned();
    assert!(secret.len() >= 32);
    assert_eq!(body["client_id"], "portal");
    assert_eq!(body["kind"], "confidential-symmetric");
    assert_eq!(body["auth_method"], "client_secret_basic");
    assert_eq!(
        body["allowed_scopes"],
        "openid fhirUser launch/patient patient/Observation.rs"
    );
    assert_eq!(
        (body["enabled"].as_bool(), body["version"].as_i64()),
        (Some(true), Some(1))
    );
    assert!(secret_works(&app, "portal", &secret).await);
    let location = created.location.unwrap();
    let got = api
        .get(location.strip_prefix(API).expect("under the API"))
        .await;
    assert_eq!(got.etag.as_deref(), Some("\"v1\""));
    let mut without_secret = body.clone();
    without_secret
        .as_object_mut()
        .unwrap()
        .remove("client_secret");
    assert_eq!(got.ok(StatusCode::OK), &without_secret);
    assert!(!got.text.contains(&secret), "the secret is shown once");
    assert!(!api.get("/clients").await.text.contains(&secret));
    assert_eq!(
        api.get("/clients/nope")
            .await
            .problem(StatusCode::NOT_FOUND),
        "not-found"
    );
    // Same id twice: 409.
    assert_eq!(
        api.post("/clients", &portal())
            .await
            .problem(StatusCode::CONFLICT),
        "conflict"
    );
    let registered = audit_actions(&app, "client.registered");
    assert_eq!(registered.len(), 2, "admin-writer and portal");

    // List: search, limit/offset, `next`.
    for i in 1..=5 {
        let r = api
            .post(
                "/clients",
                &json!({"client_id": format!("chart-{i}"), "name": format!("Growth Chart {i}"),
                        "kind": "public", "redirect_uris": [CALLBACK],
                        "scope": "launch/patient patient/Observation.rs"}),
            )
            .await;
        assert!(r.ok(StatusCode::CREATED).get("client_secret").is_none());
    }
    let page = api.get("/clients?search=Growth&limit=2").await;
    page.ok(StatusCode::OK);
    assert_eq!(ids(&page, "client_id"), ["chart-1", "chart-2"]);
    assert_eq!(
        (page.body["limit"].as_i64(), page.body["offset"].as_i64()),
        (Some(2), Some(0))
    );
    assert_eq!(
        page.body["next"],
        "/admin/api/v1/clients?limit=2&offset=2&search=Growth"
    );
    let page = api
        .get(
            page.body["next"]
                .as_str()
                .unwrap()
                .strip_prefix(API)
                .unwrap(),
        )
        .await;
    assert_eq!(ids(&page, "client_id"), ["chart-3", "chart-4"]);
    let page = api
        .get(
            page.body["next"]
                .as_str()
                .unwrap()
                .strip_prefix(API)
                .unwrap(),
        )
        .await;
    assert_eq!(ids(&page, "client_id"), ["chart-5"]);
    assert_eq!(page.body["next"], Value::Null);
    assert_eq!(
        ids(&api.get("/clients?search=chart-3").await, "client_id"),
        ["chart-3"]
    );
    assert!(ids(&api.get("/clients?search=%25").await, "client_id").is_empty());
    let all = api.get("/clients").await;
    assert_eq!(
        ids(&all, "client_id"),
        [
            "admin-writer",
            "chart-1",
            "chart-2",
            "chart-3",
            "chart-4",
            "chart-5",
            "portal"
        ]
    );
    assert_eq!(
        (all.body["limit"].as_i64(), all.body["next"].clone()),
        (Some(50), Value::Null)
    );

    // PUT: a GET body, edited, sent back with If-Match.
    let current = api.get("/clients/portal").await;
    let etag = etag_of(&current);
    let mut edited = current.body.clone();
    edited["name"] = json!("Patient Portal (renamed)");
    edited["redirect_uris"] = json!([CALLBACK, "https://app.example.com/other"]);
    let put = api.put_if_match("/clients/portal", &edited, &etag).await;
    assert_eq!(put.ok(StatusCode::OK)["name"], "Patient Portal (renamed)");
    assert_eq!(put.etag.as_deref(), Some("\"v2\""));
    assert_eq!(put.body["redirect_uris"].as_array().unwrap().len(), 2);
    let again = api.get("/clients/portal").await;
    assert_eq!(again.etag.as_deref(), Some("\"v2\""));
    assert_eq!(again.body["name"], "Patient Portal (renamed)");
    assert_eq!(again.body["created_at"], current.body["created_at"]);
    assert!(
        secret_works(&app, "portal", &secret).await,
        "edits keep the secret"
    );
    assert_eq!(audit_actions(&app, "client.updated").len(), 1);
    // An unknown client cannot be PUT.
    api.put("/clients/nope", &edited)
        .await
        .problem(StatusCode::NOT_FOUND);

    // Status: disable, enable.
    let off = api
        .put("/clients/portal/status", &json!({"enabled": false}))
        .await;
    assert_eq!(off.ok(StatusCode::OK)["enabled"], false);
    assert_eq!(api.get("/clients/portal").await.body["enabled"], false);
    assert!(
        !secret_works(&app, "portal", &secret).await,
        "a disabled client is refused"
    );
    let on = api
        .put("/clients/portal/status", &json!({"enabled": true}))
        .await;
    assert_eq!(on.ok(StatusCode::OK)["enabled"], true);
    api.put("/clients/portal/status", &json!({"enabled": "no"}))
        .await
        .problem(StatusCode::BAD_REQUEST);
    api.put("/clients/portal/status", &json!({}))
        .await
        .problem(StatusCode::BAD_REQUEST);
    api.put("/clients/nope/status", &json!({"enabled": false}))
        .await
        .problem(StatusCode::NOT_FOUND);

    // Rotate the secret: the new one is shown once and works.
    let rotated = api.post_empty("/clients/portal/secret").await;
    let new_secret = rotated.ok(StatusCode::OK)["client_secret"]
        .as_str()
        .expect("new secret")
        .to_owned();
    assert_ne!(new_secret, secret);
    assert!(rotated.body["previous_secret_valid_seconds"].is_i64());
    assert!(secret_works(&app, "portal", &new_secret).await);
    assert!(!api.get("/clients/portal").await.text.contains(&new_secret));
    assert_eq!(audit_actions(&app, "client.secret_rotated").len(), 1);

    // Grants: a backend service's live grant is listed, then revoked by a write token.
    let lab = Machine::register(&app, "lab-sync", "system/Observation.rs");
    lab.access_token(&app, "system/Observation.rs").await;
    let grants = api.get("/clients/lab-sync/grants").await;
    let items = grants.ok(StatusCode::OK)["items"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(items.len(), 1, "{}", grants.text);
    assert_eq!(items[0]["kind"], "client_credentials");
    assert_eq!(items[0]["scope"], "system/Observation.rs");
    assert_eq!(items[0]["aud"], FHIR);
    assert_eq!(items[0]["client_id"], "lab-sync");
    let own = api.get("/clients/admin-writer/grants").await;
    assert_eq!(own.ok(StatusCode::OK)["items"][0]["aud"], app.url(API));
    api.get("/clients/nope/grants")
        .await
        .problem(StatusCode::NOT_FOUND);
    let revoked = api.delete("/clients/lab-sync/grants").await;
    assert_eq!(revoked.ok(StatusCode::OK), &json!({"revoked": 1}));
    assert_eq!(
        api.get("/clients/lab-sync/grants").await.body["items"],
        json!([])
    );
    assert_eq!(
        api.delete("/clients/lab-sync/grants").await.body,
        json!({"revoked": 0}),
        "DELETE is idempotent"
    );
    api.delete("/clients/nope/grants")
        .await
        .problem(StatusCode::NOT_FOUND);
    let all_revoked = audit_actions(&app, "token.revoked_all");
    assert_eq!(all_revoked.len(), 2);
    assert_eq!(all_revoked[0]["client_id"], "lab-sync");
    // Every change above was made by, and audited as, the admin-writer service.
    let audit = api.get("/audit?action=client.&limit=200").await;
    let changes: Vec<Value> = audit.ok(StatusCode::OK)["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            [
                "client.registered",
                "client.updated",
                "client.status_changed",
                "client.secret_rotated",
            ]
            .contains(&e["action"].as_str().unwrap_or_default())
                && e["details"]["client_id"] != "admin-writer"
                && e["details"]["client_id"] != "lab-sync"
        })
        .cloned()
        .collect();
    assert_eq!(changes.len(), 6 + 1 + 2 + 1, "{changes:?}");
    assert!(
        changes.iter().all(|e| e["actor_client"] == "admin-writer"),
        "{changes:?}"
    );

    // Search finds the same clients on both backends, whatever the case of the term.
    let lower = ids(&api.get("/clients?search=growth").await, "client_id");
    let upper = ids(&api.get("/clients?search=GROWTH").await, "client_id");
    // Regression: SQL LIKE is case-sensitive on PostgreSQL and not on SQLite; the searches
    // compare lower(…) so `growth` finds "Growth Chart 1".."5" on both.
    assert_eq!(
        (lower.len(), upper.len()),
        (5, 5),
        "{backend:?}: search=growth → {lower:?}, search=GROWTH → {upper:?}"
    );
}

async fn users_roles_sessions_and_explain_over_the_admin_api(backend: Backend) {
    let Some((app, clock)) = admin_app(backend, &[]).await else {
        return;
    };
    add_user(&app, "root", &["admin"], None);
    add_user(&app, "pat", &["patient"], Some("Patient/123"));
    let writer = Machine::register(&app, "admin-writer", WRITE);
    let api = writer.api(&app, WRITE).await;

    // Create with an initial password.
    let created = api
        .post(
            "/users",
            &json!({"username": "nina", "display_name": "Nina Nurse", "roles": ["nurse"],
                    "password": NEW_PASSWORD}),
        )
        .await;
    let nina = created.ok(StatusCode::CREATED).clone();
    assert_eq!(nina["username"], "nina");
    assert_eq!(nina["display_name"], "Nina Nurse");
    assert_eq!(nina["roles"], json!(["nurse"]));
    assert_eq!(nina["enabled"], true);
    etag_of(&created);
    assert!(!created.text.contains(NEW_PASSWORD) && !created.text.contains("argon2"));
    let signed_in = Browser::new(&app.base).sign_in("nina", NEW_PASSWORD).await;
    assert!(
        signed_in
            .location
            .as_deref()
            .is_some_and(|l| l.starts_with("/account/mfa/totp")),
        "the password works (then the nurse role asks for a second factor)"
    );
    let users_before = rows(&app, "users");
    for (body, field) in [
        (json!({"username": "weak", "password": "short"}), "password"),
        (
            json!({"username": "both", "password": NEW_PASSWORD, "enrolment_link": true}),
            "password",
        ),
        (json!({"username": "bad name!"}), "username"),
        (
            json!({"username": "docx", "fhir_user": "Observation/1"}),
            "fhir_user",
        ),
    ] {
        api.post("/users", &body).await.invalid(field);
    }
    api.post(
        "/users",
        &json!({"username": "ghost", "roles": ["no-such-role"]}),
    )
    .await
    .problem(StatusCode::NOT_FOUND);
    api.post("/users", &json!({"username": "nina"}))
        .await
        .problem(StatusCode::CONFLICT);
    assert_eq!(rows(&app, "users"), users_before, "refusals wrote nothing");

    // Create with an enrolment link.
    let now = app.state.clock.now_secs();
    let eve = api
        .post(
            "/users",
            &json!({"username": "eve", "display_name": "Eve Entry", "roles": ["front-desk"],
                    "enrolment_link": true}),
        )
        .await;
    let eve_body = eve.ok(StatusCode::CREATED).clone();
    let link = eve_body["enrolment_link"]
        .as_str()
        .expect("enrolment link")
        .to_owned();
    let prefix = app.url("/enrol?token=");
    assert!(link.starts_with(&prefix), "{link}");
    let link_token = link.strip_prefix(&prefix).unwrap().to_owned();
    assert!(link_token.len() >= 40, "{link_token}");
    assert_eq!(eve_body["enrolment_link_expires_at"], now + 259_200);
    assert_eq!(rows(&app, "enrolment_links"), 1);
    assert_eq!(audit_actions(&app, "user.enrolment_link_created").len(), 1);
    // A new link replaces the old one.
    let relinked = api.post_empty("/users/eve/enrolment-link").await;
    let new_link = relinked.ok(StatusCode::CREATED)["enrolment_link"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(new_link.starts_with(&prefix) && new_link != link);
    api.post_empty("/users/nobody/enrolment-link")
        .await
        .problem(StatusCode::NOT_FOUND);
    // Following the link: the replaced one is dead; the new one sets a password, once.
    let enrol = Browser::new(&app.base);
    let old = enrol.get(link.strip_prefix(&app.base).unwrap()).await;
    assert_eq!(
        old.status,
        StatusCode::NOT_FOUND,
        "the replaced link: {}",
        old.body
    );
    let path = new_link.strip_prefix(&app.base).unwrap().to_owned();
    let page = enrol.get(&path).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("eve"), "{}", page.body);
    let new_token = path.strip_prefix("/enrol?token=").unwrap();
    let done = enrol
        .post(
            "/enrol",
            &[
                ("token", new_token),
                ("csrf", &page.csrf()),
                ("password", NEW_PASSWORD),
                ("confirm", NEW_PASSWORD),
            ],
        )
        .await;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.body);
    assert!(
        done.location
            .as_deref()
            .is_some_and(|l| l.starts_with("/login")),
        "{:?}",
        done.location
    );
    assert_eq!(
        Browser::new(&app.base)
            .sign_in("eve", NEW_PASSWORD)
            .await
            .status,
        StatusCode::SEE_OTHER,
        "the password set through the link works"
    );
    let used = enrol.get(&path).await;
    assert_eq!(used.status, StatusCode::NOT_FOUND, "a link works once");

    // Get and list.
    let got = api.get("/users/nina").await;
    assert_eq!(got.ok(StatusCode::OK)["username"], "nina");
    let nina_etag = etag_of(&got);
    assert_eq!(
        ids(&api.get("/users?search=nin").await, "username"),
        ["nina"]
    );
    let page = api.get("/users?limit=2").await;
    assert_eq!(ids(&page, "username"), ["eve", "nina"]);
    assert_eq!(page.body["next"], "/admin/api/v1/users?limit=2&offset=2");
    api.get("/users/nobody")
        .await
        .problem(StatusCode::NOT_FOUND);

    // PUT the profile: the GET body edited, with If-Match.
    let mut edited = got.body.clone();
    edited["display_name"] = json!("Nina N.");
    edited["fhir_user"] = json!("Practitioner/77");
    let put = api.put_if_match("/users/nina", &edited, &nina_etag).await;
    assert_eq!(put.ok(StatusCode::OK)["display_name"], "Nina N.");
    assert_eq!(put.body["fhir_user"], "Practitioner/77");
    assert_eq!(version(&put), version(&got) + 1);
    let minimal = api
        .put("/users/nina", &json!({"display_name": "Nina Nurse"}))
        .await;
    assert_eq!(minimal.ok(StatusCode::OK)["fhir_user"], Value::Null);
    api.put("/users/nina", &json!({"display_name": " "}))
        .await
        .invalid("display_name");
    assert_eq!(audit_actions(&app, "user.updated").len(), 2);

    // Roles: giving or taking one twice is the same as once.
    let once = api
        .call(Method::PUT, "/users/nina/roles/billing", None)
        .await;
    assert_eq!(
        once.ok(StatusCode::OK)["roles"],
        json!(["billing", "nurse"])
    );
    let twice = api
        .call(Method::PUT, "/users/nina/roles/billing", None)
        .await;
    assert_eq!((twice.status, &twice.body), (StatusCode::OK, &once.body));
    let removed = api.delete("/users/nina/roles/billing").await;
    assert_eq!(removed.ok(StatusCode::OK)["roles"], json!(["nurse"]));
    let removed_again = api.delete("/users/nina/roles/billing").await;
    assert_eq!(
        (removed_again.status, &removed_again.body),
        (StatusCode::OK, &removed.body)
    );
    assert_eq!(audit_actions(&app, "user.role_added").len(), 1);
    assert_eq!(audit_actions(&app, "user.role_removed").len(), 1);
    api.call(Method::PUT, "/users/nina/roles/no-such-role", None)
        .await
        .problem(StatusCode::NOT_FOUND);
    api.call(Method::PUT, "/users/nobody/roles/nurse", None)
        .await
        .problem(StatusCode::NOT_FOUND);

    // Unlock.
    lock(&app, "nina");
    let unlocked = api.post_empty("/users/nina/unlock").await;
    assert_eq!(unlocked.ok(StatusCode::OK), &json!({"was_locked": true}));
    let again = api.post_empty("/users/nina/unlock").await;
    assert_eq!(again.ok(StatusCode::OK), &json!({"was_locked": false}));

    // Reset second factors: 204, no body.
    let reset = api.delete("/users/nina/mfa").await;
    assert_eq!(
        (reset.status, reset.text.as_str()),
        (StatusCode::NO_CONTENT, "")
    );
    assert_eq!(audit_actions(&app, "mfa.reset").len(), 1);
    api.delete("/users/nobody/mfa")
        .await
        .problem(StatusCode::NOT_FOUND);

    // Sessions: pat signs in and authorizes an app (a live grant).
    let (app_id, _) = register(
        &app,
        json!({"client_id": "growth-chart", "name": "Growth Chart", "kind": "public",
               "redirect_uris": [CALLBACK],
               "scope": "openid fhirUser launch/patient offline_access patient/*.rs"}),
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
    let sessions = api.get("/users/pat/sessions").await;
    let items = sessions.ok(StatusCode::OK)["items"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(items.len(), 1, "{}", sessions.text);
    assert_eq!(items[0]["second_factor"], false);
    let session_id = items[0]["id"].as_str().unwrap().to_owned();
    assert!(
        browser
            .session_cookie()
            .is_some_and(|c| !c.contains(&session_id) && !sessions.text.contains(&c)),
        "neither the cookie nor its id is shown"
    );
    let grants = api.get("/clients/growth-chart/grants").await;
    assert_eq!(grants.ok(StatusCode::OK)["items"][0]["patient"], "123");
    // Explain what a launch would get.
    let explained = api.get("/explain?user=pat&client=growth-chart").await;
    let e = explained.ok(StatusCode::OK);
    assert_eq!(
        (e["username"].as_str(), e["client_id"].as_str()),
        (Some("pat"), Some("growth-chart"))
    );
    assert_eq!(e["roles"], json!(["patient"]));
    assert!(
        e["granted"].as_str().unwrap().contains("patient/*.rs"),
        "{e}"
    );
    assert!(e["scopes"].is_array());
    let narrowed = api
        .get("/explain?user=pat&client=growth-chart&scope=patient%2FObservation.rs%20user%2FObservation.rs")
        .await;
    assert_eq!(
        narrowed.ok(StatusCode::OK)["granted"],
        "patient/Observation.rs"
    );
    api.get("/explain?user=pat").await.invalid("user");
    api.get("/explain?user=nobody&client=growth-chart")
        .await
        .problem(StatusCode::NOT_FOUND);
    api.get("/explain?user=pat&client=nope")
        .await
        .problem(StatusCode::NOT_FOUND);
    // End one session, then all.
    let ended = api
        .delete(&format!("/users/pat/sessions/{session_id}"))
        .await;
    assert_eq!(ended.ok(StatusCode::OK), &json!({"ended": 1}));
    assert_eq!(
        browser.get("/account").await.status,
        StatusCode::SEE_OTHER,
        "signed out"
    );
    api.delete(&format!("/users/pat/sessions/{session_id}"))
        .await
        .problem(StatusCode::NOT_FOUND);
    assert_eq!(
        api.delete("/users/pat/sessions").await.body,
        json!({"ended": 0})
    );
    for _ in 0..2 {
        let b = Browser::new(&app.base);
        assert_eq!(
            b.sign_in("pat", PASSWORD).await.status,
            StatusCode::SEE_OTHER
        );
    }
    assert_eq!(
        api.get("/users/pat/sessions").await.body["items"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        api.delete("/users/pat/sessions").await.body,
        json!({"ended": 2})
    );
    assert_eq!(
        api.get("/users/pat/sessions").await.body["items"],
        json!([])
    );

    // Disabling a user revokes their live grants.
    assert_eq!(live_families_of_user(&app, "pat"), 1);
    let off = api
        .put("/users/pat/status", &json!({"enabled": false}))
        .await;
    assert_eq!(off.ok(StatusCode::OK)["enabled"], false);
    assert_eq!(live_families_of_user(&app, "pat"), 0);
    let (status, body) = refresh(&app, tokens["refresh_token"].as_str().unwrap(), &app_id).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(
        api.get("/clients/growth-chart/grants").await.body["items"],
        json!([])
    );
    assert_eq!(
        Browser::new(&app.base)
            .sign_in("pat", PASSWORD)
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    let on = api
        .put("/users/pat/status", &json!({"enabled": true}))
        .await;
    assert_eq!(on.ok(StatusCode::OK)["enabled"], true);
    assert_eq!(
        Browser::new(&app.base)
            .sign_in("pat", PASSWORD)
            .await
            .status,
        StatusCode::SEE_OTHER
    );

    // Roles: create, get, PUT, delete (twice).
    let role = api
        .post(
            "/roles",
            &json!({"name": "researcher", "description": "Reads observations for studies",
                    "scope_ceiling": "user/Observation.rs", "mfa_required": true}),
        )
        .await;
    let r = role.ok(StatusCode::CREATED).clone();
    assert_eq!(role.etag.as_deref(), Some("\"v1\""));
    assert_eq!(
        (
            r["name"].as_str(),
            r["scope_ceiling"].as_str(),
            r["mfa_required"].as_bool()
        ),
        (Some("researcher"), Some("user/Observation.rs"), Some(true))
    );
    let got = api.get("/roles/researcher").await;
    assert_eq!(got.ok(StatusCode::OK), &r);
    assert_eq!(got.etag.as_deref(), Some("\"v1\""));
    let names = ids(&api.get("/roles").await, "name");
    assert!(names.contains(&"researcher".to_owned()) && names.contains(&"admin".to_owned()));
    let mut edited = got.body.clone();
    edited["description"] = json!("Reads observations and conditions");
    edited["scope_ceiling"] = json!("user/Observation.rs user/Condition.rs");
    let put = api
        .put_if_match("/roles/researcher", &edited, "\"v1\"")
        .await;
    assert_eq!(
        put.ok(StatusCode::OK)["scope_ceiling"],
        "user/Condition.rs user/Observation.rs"
    );
    assert_eq!(put.etag.as_deref(), Some("\"v2\""));
    api.put(
        "/roles/researcher",
        &json!({"scope_ceiling": "user/Observation.xyz"}),
    )
    .await
    .problem(StatusCode::BAD_REQUEST);
    api.put("/roles/researcher", &json!({"name": "other"}))
        .await
        .invalid("name");
    api.post("/roles", &json!({"name": "researcher"}))
        .await
        .problem(StatusCode::CONFLICT);
    api.post("/roles", &json!({"description": "no name"}))
        .await
        .invalid("name");
    api.post("/roles", &json!({"name": "Bad Name"}))
        .await
        .invalid("name");
    for _ in 0..2 {
        let deleted = api.delete("/roles/researcher").await;
        assert_eq!(
            (deleted.status, deleted.text.as_str()),
            (StatusCode::NO_CONTENT, "")
        );
    }
    api.get("/roles/researcher")
        .await
        .problem(StatusCode::NOT_FOUND);
    assert_eq!(audit_actions(&app, "role.deleted").len(), 1);
    // A role someone holds cannot be deleted.
    api.delete("/roles/nurse")
        .await
        .problem(StatusCode::CONFLICT);

    // A human admin with a fresh second factor may create and change admins; the admin role
    // itself cannot be deleted.
    let root = first_admin_sign_in(&app, &clock, "root").await;
    let ada = root
        .api()
        .post(
            "/users",
            &json!({"username": "ada", "display_name": "Ada Admin", "roles": ["admin"],
                    "enrolment_link": true}),
        )
        .await;
    assert_eq!(ada.ok(StatusCode::CREATED)["roles"], json!(["admin"]));
    let deleted = root.api().delete("/roles/admin").await;
    assert_eq!(deleted.problem(StatusCode::CONFLICT), "conflict");
    root.api().get("/roles/admin").await.ok(StatusCode::OK);
    root.api()
        .call(Method::PUT, "/users/ada/roles/nurse", None)
        .await
        .ok(StatusCode::OK);
    let renamed = root
        .api()
        .put("/users/ada", &json!({"display_name": "Ada L."}))
        .await;
    assert_eq!(renamed.ok(StatusCode::OK)["display_name"], "Ada L.");
    // …and a machine may not touch that admin.
    api.put("/users/ada", &json!({"display_name": "Owned"}))
        .await
        .problem(StatusCode::FORBIDDEN);
    api.delete("/users/ada/roles/nurse")
        .await
        .problem(StatusCode::FORBIDDEN);
    // An admin's sessions are listed (read) but not ended by a machine.
    let root_sessions = api.get("/users/root/sessions").await;
    assert_eq!(
        root_sessions.ok(StatusCode::OK)["items"][0]["second_factor"],
        true
    );
}

async fn patients_keys_and_audit_over_the_admin_api(backend: Backend) {
    let Some((app, clock)) = admin_app(backend, &[("WARD_ADMIN_REAUTH_SECONDS", "30")]).await
    else {
        return;
    };
    add_user(&app, "root", &["admin"], None);
    let writer = Machine::register(&app, "admin-writer", WRITE);
    let api = writer.api(&app, WRITE).await;

    // Import NDJSON (all or nothing).
    let bad = format!("{NDJSON}{{\"resourceType\":\"Observation\",\"id\":\"o1\"}}\n");
    let refused = api
        .raw(
            Method::POST,
            "/patients/import",
            "application/x-ndjson",
            &bad,
        )
        .await;
    refused.invalid("body");
    assert!(refused.text.contains("line 4"), "{}", refused.text);
    assert_eq!(rows(&app, "patients"), 0, "a bad file changes nothing");
    let imported = api
        .raw(
            Method::POST,
            "/patients/import",
            "application/x-ndjson",
            NDJSON,
        )
        .await;
    assert_eq!(
        imported.ok(StatusCode::OK),
        &json!({"created": 3, "updated": 0, "errors": []})
    );
    let again = api
        .raw(
            Method::POST,
            "/patients/import",
            "application/x-ndjson",
            NDJSON,
        )
        .await;
    assert_eq!(
        again.ok(StatusCode::OK),
        &json!({"created": 0, "updated": 3, "errors": []})
    );
    assert_eq!(rows(&app, "patients"), 3);

    // List, search, get.
    let page = api.get("/patients?limit=2").await;
    assert_eq!(ids(&page, "id"), ["p1", "p2"]);
    assert_eq!(page.body["next"], "/admin/api/v1/patients?limit=2&offset=2");
    let page = api.get("/patients?limit=2&offset=2").await;
    assert_eq!(
        (ids(&page, "id"), page.body["next"].clone()),
        (vec!["p3".to_owned()], Value::Null)
    );
    let found = ids(&api.get("/patients?search=Smith").await, "id");
    assert!(
        found.contains(&"p2".to_owned()) && !found.contains(&"p1".to_owned()),
        "{found:?}"
    );
    assert_eq!(
        ids(&api.get("/patients?search=1975-01-30").await, "id"),
        ["p2"]
    );
    assert_eq!(
        ids(&api.get("/patients?search=MRN1001").await, "id"),
        ["p1"]
    );
    let p1 = api.get("/patients/p1").await;
    let p1 = p1.ok(StatusCode::OK);
    assert_eq!(
        (p1["id"].as_str(), p1["birth_date"].as_str()),
        (Some("p1"), Some("1980-04-02"))
    );
    assert_eq!(p1["name"], "José Núñez");
    assert_eq!(p1["gender"], "male");
    api.get("/patients/nope")
        .await
        .problem(StatusCode::NOT_FOUND);

    // PUT replaces (or creates) an entry from a FHIR Patient.
    let edited = json!({"resourceType": "Patient", "id": "p2",
                        "name": [{"family": "Smith-Jones", "given": ["Anna"]}],
                        "birthDate": "1975-01-30", "gender": "female"});
    let put = api.put("/patients/p2", &edited).await;
    assert_eq!(put.ok(StatusCode::OK)["name"], "Anna Smith-Jones");
    assert_eq!(
        api.get("/patients/p2").await.body["name"],
        "Anna Smith-Jones"
    );
    let new = api
        .put(
            "/patients/p9",
            &json!({"resourceType": "Patient", "id": "p9", "name": [{"family": "New", "given": ["Nora"]}]}),
        )
        .await;
    assert_eq!(new.ok(StatusCode::CREATED)["id"], "p9");
    assert_eq!(rows(&app, "patients"), 4);
    api.put(
        "/patients/p2",
        &json!({"resourceType": "Patient", "id": "p5", "name": [{"family": "Other"}]}),
    )
    .await
    .invalid("id");
    api.put(
        "/patients/p2",
        &json!({"resourceType": "Observation", "id": "p2"}),
    )
    .await
    .invalid("resource");
    assert_eq!(
        api.get("/patients/p2").await.body["name"],
        "Anna Smith-Jones"
    );

    // DELETE is idempotent.
    for _ in 0..2 {
        let deleted = api.delete("/patients/p3").await;
        assert_eq!(
            (deleted.status, deleted.text.as_str()),
            (StatusCode::NO_CONTENT, "")
        );
    }
    api.get("/patients/p3").await.problem(StatusCode::NOT_FOUND);
    assert_eq!(rows(&app, "patients"), 3);
    assert_eq!(audit_actions(&app, "patient.removed").len(), 1);

    // Keys: listed; rotated by a human admin with a fresh second factor only.
    let keys = api.get("/keys").await;
    let listed = keys.ok(StatusCode::OK)["items"].as_array().unwrap().clone();
    assert!(listed.len() >= 2, "{}", keys.text);
    for k in &listed {
        assert!(
            k["kid"].is_string() && k["alg"].is_string() && k["state"].is_string(),
            "{k}"
        );
    }
    assert!(!keys.text.contains("private") && !keys.text.contains("\"d\""));
    let key_rows = rows(&app, "signing_keys");
    let root = first_admin_sign_in(&app, &clock, "root").await;
    let rotated = root.api().post_empty("/keys/rotate").await;
    let created: Vec<String> = rotated.ok(StatusCode::OK)["created"]
        .as_array()
        .expect("created kids")
        .iter()
        .map(|k| k.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(created.len(), 2, "{}", rotated.text);
    assert_eq!(rows(&app, "signing_keys"), key_rows + 2);
    let now_listed = ids(&api.get("/keys").await, "kid");
    assert!(
        created.iter().all(|k| now_listed.contains(k)),
        "{now_listed:?}"
    );
    root.api()
        .post("/keys/rotate", &json!({"immediate": "soon"}))
        .await
        .problem(StatusCode::BAD_REQUEST);
    root.api()
        .post("/keys/rotate", &json!({"everything": true}))
        .await
        .invalid("everything");

    // The same session, 31 s later (reauth window 30 s): sensitive and human-only actions need
    // a new sign-in; ordinary changes do not.
    let lab = Machine::register(&app, "lab-sync", "system/Observation.rs");
    lab.access_token(&app, "system/Observation.rs").await;
    clock.advance_secs(31);
    let key_rows = rows(&app, "signing_keys");
    let stale = root.api().post_empty("/keys/rotate").await;
    assert_eq!(
        stale.problem(StatusCode::FORBIDDEN),
        "reauthentication-required"
    );
    let stale = root.api().delete("/clients/lab-sync/grants").await;
    assert_eq!(
        stale.problem(StatusCode::FORBIDDEN),
        "reauthentication-required"
    );
    let stale = root
        .api()
        .post("/users", &json!({"username": "ada", "roles": ["admin"]}))
        .await;
    assert_eq!(
        stale.problem(StatusCode::FORBIDDEN),
        "reauthentication-required"
    );
    assert_eq!(rows(&app, "signing_keys"), key_rows);
    assert_eq!(
        api.get("/clients/lab-sync/grants").await.body["items"]
            .as_array()
            .unwrap()
            .len(),
        1,
        "the grant is still live"
    );
    root.api()
        .post("/roles", &json!({"name": "auditor", "scope_ceiling": ""}))
        .await
        .ok(StatusCode::CREATED);
    root.api().get("/keys").await.ok(StatusCode::OK);
    // Signed in again with the second factor: fresh.
    let fresh = admin_sign_in(&app, &clock, "root", &root.secret).await;
    let rotated = fresh
        .api()
        .post("/keys/rotate", &json!({"immediate": false}))
        .await;
    assert_eq!(
        rotated.ok(StatusCode::OK)["created"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let revoked = fresh.api().delete("/clients/lab-sync/grants").await;
    assert_eq!(revoked.ok(StatusCode::OK), &json!({"revoked": 1}));
    let root_id = api.get("/users/root").await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // Audit search: by action (exact or family), by actor, paged with `before`.
    let removed = api.get("/audit?action=patient.removed").await;
    let items = removed.ok(StatusCode::OK)["items"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(items.len(), 1, "{}", removed.text);
    assert_eq!(items[0]["action"], "patient.removed");
    assert_eq!(items[0]["actor_client"], "admin-writer");
    assert_eq!(items[0]["patient"], "p3");
    let family = api.get("/audit?action=patient.&limit=200").await;
    let family = family.body["items"].as_array().unwrap().clone();
    assert!(family.len() >= 4, "{family:?}");
    assert!(family
        .iter()
        .all(|e| e["action"].as_str().unwrap().starts_with("patient.")));
    let by_machine = api.get("/audit?actor=admin-writer&limit=200").await;
    let by_machine = by_machine.body["items"].as_array().unwrap().clone();
    assert!(by_machine.len() >= 5);
    assert!(by_machine
        .iter()
        .all(|e| e["actor_client"] == "admin-writer"));
    let by_root = api
        .get(&format!("/audit?actor={root_id}&action=key.created"))
        .await;
    let by_root = by_root.body["items"].as_array().unwrap().clone();
    assert_eq!(by_root.len(), 4, "two rotations of two keys");
    assert!(by_root.iter().all(|e| e["actor_user"] == root_id.as_str()));
    // Paging: every event once, newest first.
    let total = rows(&app, "audit_events");
    let first = api.get("/audit?limit=3").await;
    let first_ids: Vec<i64> = first.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_i64().unwrap())
        .collect();
    assert_eq!(first_ids.len(), 3);
    assert_eq!(first.body["next_before"], first_ids[2]);
    let mut seen: Vec<i64> = Vec::new();
    let mut next = String::from("/audit?limit=7");
    loop {
        let page = api.get(&next).await;
        seen.extend(
            page.ok(StatusCode::OK)["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["id"].as_i64().unwrap()),
        );
        match page.body["next_before"].as_i64() {
            Some(before) => next = format!("/audit?limit=7&before={before}"),
            None => break,
        }
    }
    assert_eq!(seen.len() as i64, total, "every event once");
    assert!(seen.windows(2).all(|w| w[0] > w[1]), "newest first");
    assert_eq!(&seen[..3], &first_ids[..]);
    let since = api.get("/audit?since=2000-01-01&limit=1").await;
    assert_eq!(
        since.ok(StatusCode::OK)["items"].as_array().unwrap().len(),
        1
    );
    let until = api.get("/audit?until=2000-01-01").await;
    assert_eq!(until.ok(StatusCode::OK)["items"], json!([]));
    api.get("/audit?since=yesterday").await.invalid("since");
    api.get("/audit?before=x").await.invalid("before");
    api.get("/audit?limit=0").await.invalid("limit");
    api.get("/audit?limit=201").await.invalid("limit");

    // Paging a patient search with `next`: each page moves on.
    let first = api.get("/patients?search=Smith&limit=1").await;
    let first_ids = ids(&first, "id");
    assert_eq!(first_ids.len(), 1, "{}", first.text);
    let next = first.body["next"].as_str().expect("a next page").to_owned();
    assert!(next.contains("offset=1"), "{next}");
    let second = api.get(next.strip_prefix(API).unwrap()).await;
    let second_ids = ids(&second, "id");
    // Regression: following `next` of a patient search must move on (the offset once was
    // dropped and a client paging by `next` never ended).
    assert_ne!(
        second_ids, first_ids,
        "the second page of a patient search repeats the first"
    );
}

async fn refuses_mass_assignment_and_invalid_input_and_writes_nothing(backend: Backend) {
    let Some((app, _clock)) = admin_app(backend, &[]).await else {
        return;
    };
    let writer = Machine::register(&app, "admin-writer", WRITE);
    let api = writer.api(&app, WRITE).await;
    api.post("/clients", &portal())
        .await
        .ok(StatusCode::CREATED);
    api.post(
        "/users",
        &json!({"username": "nina", "roles": ["nurse"], "password": NEW_PASSWORD}),
    )
    .await
    .ok(StatusCode::CREATED);
    let snapshot = || {
        [
            "clients",
            "client_secrets",
            "audit_events",
            "users",
            "user_roles",
            "roles",
            "patients",
        ]
        .map(|t| rows(&app, t))
    };
    let before = snapshot();

    // Mass assignment on a client: read-only fields only with their current value.
    let current = api.get("/clients/portal").await;
    let etag = etag_of(&current);
    for (field, value) in [
        ("client_id", json!("someone-else")),
        ("created_at", json!(0)),
        ("updated_at", json!(1)),
        ("enabled", json!(false)),
    ] {
        let mut body = current.body.clone();
        body[field] = value;
        api.put_if_match("/clients/portal", &body, &etag)
            .await
            .invalid(field);
        api.put("/clients/portal", &body).await.invalid(field);
    }
    let mut two = current.body.clone();
    two["client_id"] = json!("x-other");
    two["created_at"] = json!(1);
    let r = api.put("/clients/portal", &two).await;
    r.invalid("client_id");
    r.invalid("created_at");
    for (field, value) in [
        ("is_admin", json!(true)),
        ("client_secret", json!("chosen-by-me")),
        ("secret_hash", json!("x")),
    ] {
        let mut body = current.body.clone();
        body[field] = value.clone();
        api.put_if_match("/clients/portal", &body, &etag)
            .await
            .invalid(field);
        let mut new = portal();
        new["client_id"] = json!("portal-2");
        new[field] = value;
        api.post("/clients", &new).await.invalid(field);
    }
    // Changing the kind is refused too.
    let mut kind = current.body.clone();
    kind["kind"] = json!("public");
    kind["auth_method"] = json!("none");
    api.put("/clients/portal", &kind)
        .await
        .problem(StatusCode::BAD_REQUEST);
    let after = api.get("/clients/portal").await;
    assert_eq!(
        after.etag.as_deref(),
        Some(etag.as_str()),
        "version unchanged"
    );
    assert_eq!(after.body, current.body, "nothing changed");

    // Mass assignment on a user.
    let user = api.get("/users/nina").await;
    let user_etag = etag_of(&user);
    for (field, value) in [
        ("roles", json!(["nurse", "admin"])),
        ("roles", json!([])),
        ("username", json!("root")),
        ("id", json!("someone")),
        ("enabled", json!(false)),
        ("password", json!(NEW_PASSWORD)),
        ("locked", json!(false)),
    ] {
        let mut body = user.body.clone();
        body[field] = value;
        api.put_if_match("/users/nina", &body, &user_etag)
            .await
            .invalid(field);
    }
    let after = api.get("/users/nina").await;
    assert_eq!(after.etag.as_deref(), Some(user_etag.as_str()));
    assert_eq!(after.body, user.body);
    // Unknown fields elsewhere.
    api.post("/users", &json!({"username": "x1", "is_admin": true}))
        .await
        .invalid("is_admin");
    api.put(
        "/clients/portal/status",
        &json!({"enabled": true, "version": 9}),
    )
    .await
    .invalid("version");
    api.post("/roles", &json!({"name": "r1", "holders": ["nina"]}))
        .await
        .invalid("holders");
    assert_eq!(snapshot(), before, "mass assignment wrote nothing");

    // Invalid registrations: field-level errors, nothing written.
    let base = json!({"name": "Bad App", "kind": "confidential-symmetric",
                      "redirect_uris": [CALLBACK], "scope": "openid"});
    let with = |changes: Value| {
        let mut b = base.clone();
        for (k, v) in changes.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    let cases = [
        (
            with(json!({"redirect_uris": ["javascript:alert(1)"]})),
            "redirect_uris",
        ),
        (
            with(json!({"redirect_uris": ["https://*.example.com/cb"]})),
            "redirect_uris",
        ),
        (
            with(json!({"redirect_uris": ["https://app.example.com/cb#frag"]})),
            "redirect_uris",
        ),
        (
            with(json!({"redirect_uris": ["http://app.example.com/cb"]})),
            "redirect_uris",
        ),
        (
            with(json!({"kind": "public", "redirect_uris": ["http://app.example.com/cb"]})),
            "redirect_uris",
        ),
        (
            with(json!({"redirect_uris": [CALLBACK, CALLBACK]})),
            "redirect_uris",
        ),
        (with(json!({"grant_types": ["implicit"]})), "grant_types"),
        (with(json!({"grant_types": ["password"]})), "grant_types"),
        (with(json!({"scope": "patient/Observation.xyz"})), "scope"),
        (with(json!({"scope": "user/*.read?"})), "scope"),
        (with(json!({"kind": "superuser"})), "kind"),
        (with(json!({"name": "  "})), "name"),
        (with(json!({"client_id": "a b"})), "client_id"),
        (with(json!({"access_token_lifetime": "long"})), "body"),
        (
            with(json!({"redirect_uris": "https://app.example.com/cb"})),
            "body",
        ),
    ];
    for (body, field) in &cases {
        let r = api.post("/clients", body).await;
        r.invalid(field);
        assert_eq!(
            r.body["type"],
            "https://ward.invalid/problems/invalid-input"
        );
    }
    // The same rules on PUT.
    let mut bad_put = current.body.clone();
    bad_put["redirect_uris"] = json!(["javascript:alert(1)"]);
    api.put_if_match("/clients/portal", &bad_put, &etag)
        .await
        .invalid("redirect_uris");
    bad_put["redirect_uris"] = json!([CALLBACK]);
    bad_put["allowed_scopes"] = json!("user/*.read?");
    api.put_if_match("/clients/portal", &bad_put, &etag)
        .await
        .invalid("scope");

    // Bodies that are not a JSON object.
    for text in [
        "{\"name\": ",
        "not json",
        "",
        "[]",
        "\"portal\"",
        "42",
        "null",
    ] {
        for (method, path) in [
            (Method::POST, "/clients"),
            (Method::PUT, "/clients/portal"),
            (Method::POST, "/users"),
            (Method::PUT, "/users/nina"),
            (Method::PUT, "/clients/portal/status"),
            (Method::POST, "/roles"),
        ] {
            let r = api
                .raw(method.clone(), path, "application/json", text)
                .await;
            r.problem(StatusCode::BAD_REQUEST);
            assert!(r.body["detail"].is_string(), "{}", r.text);
        }
    }

    // Bad paging parameters.
    for path in ["/clients", "/users", "/patients"] {
        for (query, field) in [
            ("limit=0", "limit"),
            ("limit=1000", "limit"),
            ("limit=201", "limit"),
            ("limit=x", "limit"),
            ("limit=-1", "limit"),
            ("offset=-1", "offset"),
            ("offset=y", "offset"),
        ] {
            api.get(&format!("{path}?{query}")).await.invalid(field);
        }
        api.get(&format!("{path}?limit=200"))
            .await
            .ok(StatusCode::OK);
        api.get(&format!("{path}?limit=1")).await.ok(StatusCode::OK);
    }
    assert_eq!(snapshot(), before, "invalid input wrote nothing");
}

async fn concurrent_edits_are_detected_with_if_match(backend: Backend) {
    let Some((app, _clock)) = admin_app(backend, &[]).await else {
        return;
    };
    let writer = Machine::register(&app, "admin-writer", WRITE);
    let api = writer.api(&app, WRITE).await;
    api.post("/clients", &portal())
        .await
        .ok(StatusCode::CREATED);

    // Two PUTs with the same If-Match at once: exactly one wins, several rounds.
    let mut updates = 0;
    for round in 0..4 {
        let current = api.get("/clients/portal").await;
        let etag = etag_of(&current);
        let (mut a, mut b) = (current.body.clone(), current.body.clone());
        a["name"] = json!(format!("Portal A{round}"));
        b["name"] = json!(format!("Portal B{round}"));
        let (ra, rb) = tokio::join!(
            api.put_if_match("/clients/portal", &a, &etag),
            api.put_if_match("/clients/portal", &b, &etag)
        );
        let (winner, loser, name) = match (ra.status, rb.status) {
            (StatusCode::OK, _) => (ra, rb, a["name"].clone()),
            (_, StatusCode::OK) => (rb, ra, b["name"].clone()),
            _ => panic!("neither PUT won: {} / {}", ra.text, rb.text),
        };
        assert_eq!(
            loser.problem(StatusCode::PRECONDITION_FAILED),
            "stale",
            "round {round}"
        );
        assert_eq!(version(&winner), version(&current) + 1);
        updates += 1;
        let now = api.get("/clients/portal").await;
        assert_eq!(now.body["name"], name, "the winner's edit, not a mix");
        assert_eq!(version(&now), version(&current) + 1);
    }
    assert_eq!(audit_actions(&app, "client.updated").len(), updates);

    // An old If-Match: 412, nothing changed.
    let current = api.get("/clients/portal").await;
    let mut edit = current.body.clone();
    edit["name"] = json!("Too late");
    for old in ["\"v1\"", "\"v2\""] {
        let r = api.put_if_match("/clients/portal", &edit, old).await;
        assert_eq!(r.problem(StatusCode::PRECONDITION_FAILED), "stale", "{old}");
    }
    // A version in the body that is not the current one is stale too.
    let mut old_body = edit.clone();
    old_body["version"] = json!(1);
    api.put("/clients/portal", &old_body)
        .await
        .problem(StatusCode::PRECONDITION_FAILED);
    // A malformed If-Match: 400.
    // A weak tag never matches (If-Match compares strongly), nor does an unbalanced one.
    for malformed in [
        "garbage", "\"abc\"", "\"v\"", "12", "\"vx1\"", "W/\"v3\"", "\"v3",
    ] {
        let r = api.put_if_match("/clients/portal", &edit, malformed).await;
        assert_eq!(
            r.problem(StatusCode::BAD_REQUEST),
            "bad-request",
            "{malformed}"
        );
    }
    let unchanged = api.get("/clients/portal").await;
    assert_eq!(unchanged.body, current.body, "nothing changed");
    // `*` and the current ETag both work.
    let star = api.put_if_match("/clients/portal", &edit, "*").await;
    assert_eq!(star.ok(StatusCode::OK)["name"], "Too late");

    // The same for users and roles.
    api.post(
        "/users",
        &json!({"username": "nina", "roles": ["nurse"], "password": NEW_PASSWORD}),
    )
    .await
    .ok(StatusCode::CREATED);
    let user = api.get("/users/nina").await;
    let etag = etag_of(&user);
    let (a, b) = (
        json!({"display_name": "Nina A"}),
        json!({"display_name": "Nina B"}),
    );
    let (ra, rb) = tokio::join!(
        api.put_if_match("/users/nina", &a, &etag),
        api.put_if_match("/users/nina", &b, &etag)
    );
    let mut statuses = [ra.status.as_u16(), rb.status.as_u16()];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 412], "{} / {}", ra.text, rb.text);
    api.put_if_match("/users/nina", &json!({"display_name": "Nina C"}), &etag)
        .await
        .problem(StatusCode::PRECONDITION_FAILED);
    api.put_if_match("/users/nina", &json!({"display_name": "Nina C"}), "nope")
        .await
        .problem(StatusCode::BAD_REQUEST);
    let role = api
        .post(
            "/roles",
            &json!({"name": "researcher", "scope_ceiling": "user/Observation.rs"}),
        )
        .await;
    let etag = etag_of(&role);
    let (a, b) = (json!({"description": "A"}), json!({"description": "B"}));
    let (ra, rb) = tokio::join!(
        api.put_if_match("/roles/researcher", &a, &etag),
        api.put_if_match("/roles/researcher", &b, &etag)
    );
    let mut statuses = [ra.status.as_u16(), rb.status.as_u16()];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 412], "{} / {}", ra.text, rb.text);
    api.put_if_match("/roles/researcher", &json!({"description": "C"}), &etag)
        .await
        .problem(StatusCode::PRECONDITION_FAILED);

    // Other writes to a resource with an ETag honour If-Match too ("writes honour If-Match
    // (412 when stale)"; RFC 9110 §13.1.1).
    let stale_client = api
        .send_if_match(
            Method::PUT,
            "/clients/portal/status",
            &json!({"enabled": false}),
            "\"v1\"",
        )
        .await;
    let stale_user = api
        .send_if_match(
            Method::PUT,
            "/users/nina/status",
            &json!({"enabled": false}),
            "\"v1\"",
        )
        .await;
    let stale_role = Api::send(
        api.request(Method::DELETE, "/roles/researcher")
            .header("if-match", "\"v1\""),
    )
    .await;
    let statuses = [stale_client.status, stale_user.status, stale_role.status];
    // Regression: status writes and role deletion honour If-Match too: a stale one is 412
    // with nothing changed.
    assert_eq!(
        statuses,
        [StatusCode::PRECONDITION_FAILED; 3],
        "{} / {} / {}",
        stale_client.text,
        stale_user.text,
        stale_role.text
    );
}

/// The security review's findings, as regressions: a machine admin cannot create or change
/// clients that hold admin-API scopes (they are machine admins), cannot reset the password of
/// someone who has one, and a promotion to admin voids enrolment links made before it; a
/// resource server naming the admin API as a FHIR base still cannot read admin tokens.
async fn machines_cannot_mint_admins_or_take_over_accounts(backend: Backend) {
    let Some((app, clock)) = admin_app(backend, &[]).await else {
        return;
    };
    add_user(&app, "root", &["admin"], None);
    add_clinician_role(&app);
    add_user(&app, "carl", &["clinician"], None);
    let writer = Machine::register(&app, "admin-writer", &format!("{READ} {WRITE}"));
    let reader = Machine::register(&app, "admin-reader", READ);
    let api = writer.api(&app, WRITE).await;
    let clients_before = rows(&app, "clients");

    // Registering a client with admin scopes, or giving them to one, is human-only.
    let jwks = json!({"keys": [{"kty": "EC", "crv": "P-384", "kid": "k", "alg": "ES384",
        "x": "iN5d3NbRN3pD8R4Y3DpwhEnI33cQ5w1UZPYmi7Tm1DglHQsRH97zIWyFaHiDgXvj",
        "y": "Vn-YBNcANn-1JbAjoFV2ntP_YU5VUrNsSb2Ff2jf-VhhZ1GWWMo3cDSP6AqzOoBT"}]});
    let minted = api
        .post(
            "/clients",
            &json!({"client_id": "mint", "name": "Mint", "kind": "confidential-asymmetric",
                                  "scope": WRITE, "jwks": jwks}),
        )
        .await;
    assert_eq!(
        minted.problem(StatusCode::FORBIDDEN),
        "forbidden",
        "{}",
        minted.text
    );
    assert_eq!(rows(&app, "clients"), clients_before);
    let current = api.get("/clients/admin-reader").await;
    let mut upgraded = current.body.clone();
    upgraded["allowed_scopes"] = json!(format!("{READ} {WRITE}"));
    let r = api.put("/clients/admin-reader", &upgraded).await;
    assert_eq!(r.problem(StatusCode::FORBIDDEN), "forbidden", "{}", r.text);
    // Disabling takes power away and is allowed; enabling it again is not.
    api.put("/clients/admin-reader/status", &json!({"enabled": false}))
        .await
        .ok(StatusCode::OK);
    let r = api
        .put("/clients/admin-reader/status", &json!({"enabled": true}))
        .await;
    assert_eq!(r.problem(StatusCode::FORBIDDEN), "forbidden", "{}", r.text);
    ward::clients::set_enabled(
        &mut app.conn(),
        app.state.clock.as_ref(),
        &ward::audit::AuditContext::cli(),
        "admin-reader",
        true,
    )
    .unwrap();
    assert_eq!(
        api.get("/clients/admin-reader").await.body["allowed_scopes"],
        current.body["allowed_scopes"]
    );
    // The reader is untouched and still works.
    assert_eq!(
        reader.api(&app, READ).await.get("/clients").await.status,
        StatusCode::OK
    );

    // A link for someone who already has a password is a reset: not for machines.
    let r = api.post_empty("/users/carl/enrolment-link").await;
    assert_eq!(r.problem(StatusCode::FORBIDDEN), "forbidden", "{}", r.text);
    // For a new user without one it is what enrolment is for.
    let created = api
        .post(
            "/users",
            &json!({"username": "nina", "roles": ["clinician"], "enrolment_link": true}),
        )
        .await;
    let link = created.ok(StatusCode::CREATED)["enrolment_link"]
        .as_str()
        .unwrap()
        .to_owned();
    let token = link.split("token=").nth(1).unwrap().to_owned();

    // A human admin promotes nina: the machine-made link stops working.
    let root = first_admin_sign_in(&app, &clock, "root").await;
    root.api()
        .put("/users/nina/roles/admin", &json!({}))
        .await
        .ok(StatusCode::OK);
    let page = root.browser.get(&format!("/enrol?token={token}")).await;
    assert_eq!(page.status, StatusCode::NOT_FOUND, "{}", page.body);
    // Console forms need the session's CSRF token: without it nothing is written.
    let clients = rows(&app, "clients");
    let form = [
        ("name", "Forged"),
        ("kind", "public"),
        ("redirect_uris", CALLBACK),
        ("scope", "launch/patient patient/*.rs"),
    ];
    let forged = root.browser.post("/admin/clients", &form).await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN, "{}", forged.body);
    assert_eq!(rows(&app, "clients"), clients);
    let mut with_token = form.to_vec();
    with_token.push(("csrf", root.csrf.as_str()));
    let made = root.browser.post("/admin/clients", &with_token).await;
    assert_eq!(made.status, StatusCode::CREATED, "{}", made.body);
    assert_eq!(rows(&app, "clients"), clients + 1);

    // A resource server that names the admin API as its FHIR base learns nothing of admin tokens.
    let (rs, secret) = register(
        &app,
        json!({"client_id": "sneaky-rs", "name": "RS", "kind": "resource-server",
               "fhir_bases": [FHIR, format!("{}/admin/api/v1", app.base)]}),
    );
    let admin_token = writer.access_token(&app, WRITE).await;
    let answer: Value = app
        .client
        .post(app.url("/introspect"))
        .basic_auth(&rs, secret.as_deref())
        .form(&[("token", admin_token.as_str())])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer, json!({"active": false}));
}

/// Accounting of disclosures (issue 8): a patient's approval, token and introspection show up,
/// oldest first, over the API (JSON and CSV) and at the command line, with Ward's limits stated.
async fn accounts_for_disclosures_of_a_patient(backend: Backend) {
    let Some((app, _clock)) = admin_app(backend, &[]).await else {
        return;
    };
    ward::patients::import(
        &mut app.conn(),
        app.state.clock.as_ref(),
        &ward::audit::AuditContext::cli(),
        std::io::Cursor::new(NDJSON),
    )
    .unwrap();
    add_user(&app, "pam", &["patient"], Some("Patient/p1"));
    let (app_id, _) = register(
        &app,
        json!({"client_id": "diary", "name": "Diary", "kind": "public",
               "redirect_uris": [CALLBACK], "scope": "launch/patient patient/*.rs"}),
    );
    let (rs, rs_secret) = register(
        &app,
        json!({"client_id": "fhir-api", "name": "FHIR", "kind": "resource-server",
               "fhir_bases": [FHIR]}),
    );
    let browser = Browser::new(&app.base);
    let tokens = code_flow(
        &app,
        &browser,
        &app_id,
        "launch/patient patient/Observation.rs",
        Some(("pam", PASSWORD)),
    )
    .await;
    assert_eq!(tokens["patient"], "p1", "{tokens}");
    let (status, answer) = post_form(
        &app,
        "/introspect",
        &[("token", tokens["access_token"].as_str().unwrap())],
        Some((&rs, rs_secret.as_deref().unwrap())),
    )
    .await;
    assert_eq!(
        (status, answer["active"].as_bool()),
        (StatusCode::OK, Some(true))
    );

    let api = Machine::register(&app, "auditor", READ)
        .api(&app, READ)
        .await;
    let report = api.get("/disclosures?patient=Patient/p1").await;
    let body = report.ok(StatusCode::OK);
    let actions: Vec<&str> = body["disclosures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["action"].as_str().unwrap())
        .collect();
    for expected in [
        "authorization.granted",
        "token.issued",
        "token.introspected",
    ] {
        assert!(actions.contains(&expected), "{expected} in {actions:?}");
    }
    let first = &body["disclosures"][0];
    assert_eq!(
        first["action"], "authorization.granted",
        "oldest first: {body}"
    );
    assert_eq!(first["app"], "diary");
    assert_eq!(first["user"], "pam");
    assert!(body["limits"]
        .as_str()
        .unwrap()
        .contains("FHIR server's own audit log"));
    // Another patient has none; a missing patient is a field error.
    let none = api.get("/disclosures?patient=p2").await;
    assert_eq!(none.ok(StatusCode::OK)["disclosures"], json!([]));
    api.get("/disclosures").await.invalid("patient");
    api.get("/disclosures?patient=p1&since=yesterday")
        .await
        .invalid("since");
    let csv = api
        .request(Method::GET, "/disclosures?patient=p1&_format=csv")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        csv.starts_with("time,action,description,app,user,scope,event_id"),
        "{csv}"
    );
    assert!(csv.contains("token.introspected,"), "{csv}");
    // The same at the command line.
    let out = app
        .storage
        .ward(&["audit", "disclosures", "--patient", "Patient/p1"], &[]);
    assert_eq!(out.0, 0, "{}", out.2);
    assert!(
        out.1.contains("Accounting of disclosures for Patient/p1"),
        "{}",
        out.1
    );
    assert!(out
        .1
        .contains("An app received a token for this patient's data"));
}
