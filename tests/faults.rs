//! Reliability under faults (issue 9), on SQLite and PostgreSQL: the database going away and
//! coming back, failures injected between the steps of protocol transactions (test-only fault
//! points, `ward::fault`), SIGKILL during refresh rotations, clock jumps, revocation racing
//! refreshes, and a burst of token requests on SQLite.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use reqwest::StatusCode;
use serde_json::{json, Value};
use ward::audit::AuditContext;
use ward::clock::ManualClock;
use ward::crypto::sha256_b64;
use ward::fault::{self, Point, Times};
use ward::store::grants;

use crate::common::admin::{unix_now, Machine};
use crate::common::browser::Browser;
use crate::common::proxy::TcpProxy;
use crate::common::smart::*;
use crate::common::{Backend, Storage, TestApp, WardProcess};
use crate::on_both_backends;

on_both_backends!(
    the_database_going_away_answers_503_and_service_resumes_by_itself,
    a_code_whose_exchange_failed_midway_is_redeemable_exactly_once,
    a_refresh_or_revocation_that_failed_midway_changes_nothing,
    a_backward_clock_jump_never_revives_an_expired_token,
    revoking_or_disabling_while_refreshes_run_leaves_no_active_token,
    every_family_keeps_one_usable_refresh_token_across_sigkills,
);

const SCOPE: &str = "openid fhirUser launch/patient offline_access patient/Observation.rs";

fn public_client(app: &TestApp) -> String {
    register(
        app,
        json!({"client_id": "growth-chart", "name": "Growth Chart", "kind": "public",
               "redirect_uris": [CALLBACK],
               "scope": "openid fhirUser launch/patient offline_access patient/*.rs"}),
    )
    .0
}

fn resource_server(app: &TestApp) -> (String, String) {
    let (id, secret) = register(
        app,
        json!({"client_id": "fhir-api", "name": "FHIR API", "kind": "resource-server",
               "fhir_bases": [FHIR]}),
    );
    (id, secret.unwrap())
}

/// An authorization code (not yet redeemed) and its PKCE verifier.
async fn fresh_code(
    app: &TestApp,
    browser: &Browser,
    client_id: &str,
    login: Option<(&str, &str)>,
) -> (String, String) {
    let (verifier, challenge) = pkce();
    let params = [
        ("response_type", "code"),
        ("client_id", client_id),
        ("redirect_uri", CALLBACK),
        ("scope", SCOPE),
        ("state", "st"),
        ("aud", FHIR),
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
    ];
    let callback = match follow(browser, &authorize_url(app, &params), login).await {
        Landing::Consent(page) => approve(browser, &page, &[]).await.callback(),
        other => other.callback(),
    };
    (callback["code"].clone(), verifier)
}

/// An answer with what the fault tests look at.
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    retry_after: Option<String>,
    content_type: String,
    body: String,
}

impl Answer {
    async fn of(response: reqwest::Response) -> Self {
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let (status, retry_after) = (response.status(), header("retry-after"));
        let content_type = header("content-type").unwrap_or_default();
        Self {
            status,
            retry_after,
            content_type,
            body: response.text().await.unwrap_or_default(),
        }
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    /// 503 `temporarily_unavailable` with `Retry-After` (a JSON endpoint).
    fn assert_unavailable(&self, what: &str) {
        assert_eq!(
            self.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{what}: {self:?}"
        );
        assert_eq!(
            self.json()["error"],
            "temporarily_unavailable",
            "{what}: {self:?}"
        );
        assert!(self.retry_after.is_some(), "{what}: no Retry-After");
    }
}

async fn post(
    app: &TestApp,
    path: &str,
    form: &[(&str, &str)],
    basic: Option<(&str, &str)>,
) -> Answer {
    let mut request = app.client.post(app.url(path)).form(form);
    if let Some((id, secret)) = basic {
        request = request.basic_auth(id, Some(secret));
    }
    Answer::of(request.send().await.expect("POST")).await
}

async fn refresh_answer(app: &TestApp, token: &str, client_id: &str) -> Answer {
    post(
        app,
        "/token",
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", token),
            ("client_id", client_id),
        ],
        None,
    )
    .await
}

async fn backend_answer(app: &TestApp, machine: &Machine) -> Answer {
    post(
        app,
        "/token",
        &[
            ("grant_type", "client_credentials"),
            ("scope", "system/Observation.rs"),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", &machine.assertion(app)),
        ],
        None,
    )
    .await
}

async fn introspect(app: &TestApp, rs: &(String, String), token: &str) -> Answer {
    post(
        app,
        "/introspect",
        &[("token", token)],
        Some((&rs.0, &rs.1)),
    )
    .await
}

async fn authorize_page(app: &TestApp, client_id: &str) -> Answer {
    let (_, challenge) = pkce();
    let url = authorize_url(
        app,
        &[
            ("response_type", "code"),
            ("client_id", client_id),
            ("redirect_uri", CALLBACK),
            ("scope", SCOPE),
            ("state", "st"),
            ("aud", FHIR),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
        ],
    );
    Answer::of(
        app.client
            .get(url)
            .header("accept", "text/html")
            .send()
            .await
            .expect("GET /authorize"),
    )
    .await
}

/// How a test takes the database away: a TCP proxy in front of PostgreSQL (the shared server
/// is never touched), or the `db.connect` fault point on SQLite (root ignores file modes).
enum Outage {
    Proxy(TcpProxy),
    Fault {
        identity: String,
        armed: Mutex<Option<fault::Guard>>,
    },
}

impl Outage {
    fn cut(&self) {
        match self {
            Self::Proxy(proxy) => proxy.cut(),
            Self::Fault { identity, armed } => {
                *armed.lock().unwrap() = Some(fault::arm(Point::DbConnect, identity, Times::Always))
            }
        }
    }

    fn restore(&self) {
        match self {
            Self::Proxy(proxy) => proxy.restore(),
            Self::Fault { armed, .. } => drop(armed.lock().unwrap().take()),
        }
    }
}

async fn outage_app(backend: Backend) -> Option<(TestApp, Outage)> {
    let builder = |storage| {
        TestApp::builder(backend)
            .env("WARD_FHIR_BASE", FHIR)
            // A request waits at most a second for a connection before answering 503.
            .env("WARD_DATABASE_CONNECT_TIMEOUT_SECONDS", "1")
            .storage(storage)
    };
    match backend {
        Backend::Postgres => {
            let mut storage = Storage::new(backend)?;
            let proxy = TcpProxy::start("127.0.0.1:5432").await;
            let proxied = proxy.url_for(&storage.database_url);
            assert_ne!(
                proxied, storage.database_url,
                "the database is behind the proxy"
            );
            storage.database_url = proxied;
            let app = builder(Arc::new(storage)).start().await?;
            Some((app, Outage::Proxy(proxy)))
        }
        Backend::Sqlite => {
            let storage = Arc::new(Storage::new(backend)?);
            let app = builder(storage).start().await?;
            let identity = app.state.db.identity().to_owned();
            Some((
                app,
                Outage::Fault {
                    identity,
                    armed: Mutex::new(None),
                },
            ))
        }
    }
}

async fn the_database_going_away_answers_503_and_service_resumes_by_itself(backend: Backend) {
    let Some((app, outage)) = outage_app(backend).await else {
        return;
    };
    add_user(&app, "pat", &["patient"], Some("Patient/123"));
    let client_id = public_client(&app);
    let rs = resource_server(&app);
    let machine = Machine::register(&app, "lab-sync", "system/Observation.rs");
    let browser = Browser::new(&app.base);
    let tokens = code_flow(&app, &browser, &client_id, SCOPE, Some(("pat", PASSWORD))).await;
    let refresh_token = tokens["refresh_token"].as_str().unwrap().to_owned();
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    assert_eq!(app.get("/readyz").await.status(), StatusCode::OK);

    outage.cut();
    let started = Instant::now();
    refresh_answer(&app, &refresh_token, &client_id)
        .await
        .assert_unavailable("refresh");
    backend_answer(&app, &machine)
        .await
        .assert_unavailable("client_credentials");
    introspect(&app, &rs, &access)
        .await
        .assert_unavailable("introspect");
    let page = authorize_page(&app, &client_id).await;
    assert_eq!(page.status, StatusCode::SERVICE_UNAVAILABLE, "{page:?}");
    assert!(page.content_type.starts_with("text/html"), "{page:?}");
    assert!(page.retry_after.is_some());
    assert!(page.body.contains("Temporarily unavailable"), "{page:?}");
    assert_eq!(
        app.get("/readyz").await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    // Nothing panicked: the process still serves what needs no database.
    assert_eq!(app.get("/healthz").await.status(), StatusCode::OK);
    assert_eq!(app.get("/jwks").await.status(), StatusCode::OK);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "answers during the outage are bounded in time: {:?}",
        started.elapsed()
    );
    if let Outage::Proxy(proxy) = &outage {
        assert!(proxy.refused() > 0, "Ward really tried to reconnect");
    }

    outage.restore();
    let mut ready = false;
    // Up to 30 s on a loaded machine.
    for _ in 0..300 {
        if app.get("/readyz").await.status() == StatusCode::OK {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "readyz recovers without a restart");
    // The very same requests now succeed: nothing was half-done while the database was away.
    let refreshed = refresh_answer(&app, &refresh_token, &client_id).await;
    assert_eq!(refreshed.status, StatusCode::OK, "{refreshed:?}");
    let service = backend_answer(&app, &machine).await;
    assert_eq!(service.status, StatusCode::OK, "{service:?}");
    let info = introspect(&app, &rs, &access).await;
    assert_eq!(info.json()["active"], true, "{info:?}");
    let page = authorize_page(&app, &client_id).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{page:?}");
}

/// Failures after the code is claimed, and after the tokens are minted: the tokens and their
/// audit event are then written in one step (`store::together`), whose own all-or-nothing is
/// tested in `token_writes`.
async fn a_code_whose_exchange_failed_midway_is_redeemable_exactly_once(backend: Backend) {
    let Some(app) = smart_app(backend).await else {
        return;
    };
    add_user(&app, "pat", &["patient"], Some("Patient/123"));
    let client_id = public_client(&app);
    let browser = Browser::new(&app.base);
    let (code, verifier) = fresh_code(&app, &browser, &client_id, Some(("pat", PASSWORD))).await;
    let code_hash = sha256_b64(code.as_bytes());
    let snapshot = |app: &TestApp| {
        (
            count(app, "access_tokens"),
            count(app, "refresh_tokens"),
            audit_actions(app, "token.issued").len(),
            audit_actions(app, "token.reuse_detected").len(),
            count(app, "token_families"),
        )
    };
    let before = snapshot(&app);
    for point in [Point::CodeClaimed, Point::CodeTokensMinted] {
        let armed = fault::arm(point, app.state.db.identity(), Times::First(1));
        let (status, body) = redeem(&app, &code, &verifier, &client_id).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Some("temporarily_unavailable")
            ),
            "{}: {body}",
            point.name()
        );
        assert_eq!(armed.fired(), 1, "{} was reached", point.name());
        // Rolled back whole: the code is unclaimed, no token, no audit row, family intact.
        assert_eq!(snapshot(&app), before, "{}", point.name());
        let row = grants::find_code(&mut app.conn(), &code_hash)
            .unwrap()
            .unwrap();
        assert_eq!(row.redeemed_at, None, "{}", point.name());
        let family = grants::find_family(&mut app.conn(), &row.family_id)
            .unwrap()
            .unwrap();
        assert_eq!(family.revoked_at, None);
    }
    let (status, body) = redeem(&app, &code, &verifier, &client_id).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, again) = redeem(&app, &code, &verifier, &client_id).await;
    assert_eq!(
        (status, again["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );
    let after = snapshot(&app);
    assert_eq!(
        (after.0, after.1, after.2, after.4),
        (before.0 + 1, before.1 + 1, before.2 + 1, before.4)
    );
}

/// Failures after the old refresh token is used, and after the new tokens are minted (written
/// next with their audit event in one step, tested in `token_writes`). On PostgreSQL the
/// rotation is one statement, and both points come before it.
async fn a_refresh_or_revocation_that_failed_midway_changes_nothing(backend: Backend) {
    let Some(app) = smart_app(backend).await else {
        return;
    };
    add_user(&app, "pat", &["patient"], Some("Patient/123"));
    let client_id = public_client(&app);
    let browser = Browser::new(&app.base);
    let tokens = code_flow(&app, &browser, &client_id, SCOPE, Some(("pat", PASSWORD))).await;
    let r1 = tokens["refresh_token"].as_str().unwrap().to_owned();
    let snapshot = |app: &TestApp| {
        (
            count(app, "access_tokens"),
            count(app, "refresh_tokens"),
            audit_actions(app, "token.issued").len(),
            audit_actions(app, "token.revoked").len(),
        )
    };
    let before = snapshot(&app);
    for point in [Point::RefreshOldUsed, Point::RefreshTokensMinted] {
        let armed = fault::arm(point, app.state.db.identity(), Times::First(1));
        refresh_answer(&app, &r1, &client_id)
            .await
            .assert_unavailable(point.name());
        assert_eq!(armed.fired(), 1, "{} was reached", point.name());
        assert_eq!(snapshot(&app), before, "{}", point.name());
        let row = grants::find_refresh(&mut app.conn(), &sha256_b64(r1.as_bytes()))
            .unwrap()
            .unwrap();
        assert_eq!(
            row.used_at,
            None,
            "{}: the old token is still usable",
            point.name()
        );
    }
    // The old token still works, once.
    let (status, rotated) = refresh(&app, &r1, &client_id).await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let r2 = rotated["refresh_token"].as_str().unwrap().to_owned();
    assert_eq!(count(&app, "refresh_tokens"), before.1 + 1);

    // A revocation that fails before its audit record revokes nothing.
    let revoke = |token: String| {
        let (app, client_id) = (&app, client_id.clone());
        async move {
            post(
                app,
                "/revoke",
                &[("token", token.as_str()), ("client_id", client_id.as_str())],
                None,
            )
            .await
        }
    };
    let armed = fault::arm(
        Point::RevokeBeforeAudit,
        app.state.db.identity(),
        Times::First(1),
    );
    revoke(r2.clone()).await.assert_unavailable("revoke");
    assert_eq!(armed.fired(), 1);
    assert!(audit_actions(&app, "token.revoked").is_empty());
    let (status, rotated) = refresh(&app, &r2, &client_id).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the grant was not revoked: {rotated}"
    );
    let r3 = rotated["refresh_token"].as_str().unwrap().to_owned();
    // Without the fault, the same revocation works and is audited once.
    assert_eq!(revoke(r3.clone()).await.status, StatusCode::OK);
    assert_eq!(audit_actions(&app, "token.revoked").len(), 1);
    let (status, _) = refresh(&app, &r3, &client_id).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

async fn a_backward_clock_jump_never_revives_an_expired_token(backend: Backend) {
    let start = unix_now();
    let clock = Arc::new(ManualClock::at_secs(start));
    let Some(app) = TestApp::builder(backend)
        .env("WARD_FHIR_BASE", FHIR)
        .manual_clock(clock.clone())
        .start()
        .await
    else {
        return;
    };
    add_user(&app, "pat", &["patient"], Some("Patient/123"));
    let client_id = public_client(&app);
    let rs = resource_server(&app);
    let browser = Browser::new(&app.base);
    let tokens = code_flow(&app, &browser, &client_id, SCOPE, Some(("pat", PASSWORD))).await;
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    let refresh_token = tokens["refresh_token"].as_str().unwrap().to_owned();
    let (code, verifier) = fresh_code(&app, &browser, &client_id, None).await;
    assert_eq!(introspect(&app, &rs, &access).await.json()["active"], true);

    // Far past every lifetime (access token, code, refresh token, grant, session)…
    clock.advance_secs(400 * 24 * 3600);
    assert_eq!(
        introspect(&app, &rs, &access).await.json(),
        json!({"active": false})
    );
    // …then the system clock is set back to where it was.
    clock.set_secs(start);
    assert_eq!(
        introspect(&app, &rs, &access).await.json(),
        json!({"active": false}),
        "an expired access token stays inactive"
    );
    let (status, body) = redeem(&app, &code, &verifier, &client_id).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant")),
        "an expired code stays expired: {body}"
    );
    let (status, body) = refresh(&app, &refresh_token, &client_id).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant")),
        "an expired refresh token stays expired: {body}"
    );
    let account = browser.get("/account").await;
    assert!(
        account
            .location
            .as_deref()
            .is_some_and(|l| l.starts_with("/login")),
        "an expired session stays expired: {account:?}"
    );
    // Every expiry decision read the one clock: it still says the highest time it has seen.
    assert!(app.state.clock.now_secs() >= start + 400 * 24 * 3600);
    // So this node stamps times far ahead of its system clock: it takes itself out of the
    // load balancer until restarted.
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status(), reqwest::StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        ready.json::<serde_json::Value>().await.unwrap()["status"],
        "clock"
    );
}

/// Runs one refresh chain per token response concurrently; once every chain has rotated once,
/// `action` runs while they keep rotating, and every refresh sent once it has committed must be
/// refused. Returns every access token the chains obtained and every chain's last refresh token
/// (the one that was refused).
async fn refresh_storm(
    app: &TestApp,
    client_id: &str,
    starts: Vec<Value>,
    action: impl FnOnce(&mut ward::store::DbConnection) + Send + 'static,
) -> (Vec<String>, Vec<String>) {
    let barrier = Arc::new(tokio::sync::Barrier::new(starts.len() + 1));
    // Set once the action has committed: every refresh sent after that must be refused.
    let acted = Arc::new(AtomicBool::new(false));
    let chains = starts.into_iter().map(|start| {
        let (barrier, acted) = (barrier.clone(), acted.clone());
        async move {
            let mut accesses = vec![start["access_token"].as_str().unwrap().to_owned()];
            let mut current = start["refresh_token"].as_str().unwrap().to_owned();
            for round in 0.. {
                let after_action = acted.load(Ordering::SeqCst);
                let (status, body) = refresh(app, &current, client_id).await;
                assert!(
                    !(after_action && status == StatusCode::OK),
                    "a refresh sent after the action committed was honoured (scope {})",
                    body["scope"]
                );
                if status != StatusCode::OK {
                    assert_eq!(
                        (status, body["error"].as_str()),
                        (StatusCode::BAD_REQUEST, Some("invalid_grant")),
                        "{body}"
                    );
                    assert!(round > 0, "refused before the action ran: {body}");
                    return (accesses, current);
                }
                accesses.push(body["access_token"].as_str().unwrap().to_owned());
                current = body["refresh_token"].as_str().unwrap().to_owned();
                if round == 0 {
                    barrier.wait().await;
                }
            }
            unreachable!("the loop ends only by returning")
        }
    });
    let acting = async {
        barrier.wait().await;
        // The way an administrator's request runs in Ward: a pooled connection, Ward's own
        // queue for it and for SQLite's write lock. A bare connection of the pool would compete
        // outside both and could starve (seen once in CI under load).
        app.state
            .db
            .run(move |conn| {
                action(conn);
                Ok::<_, ward::store::StoreError>(())
            })
            .await
            .unwrap();
        acted.store(true, Ordering::SeqCst);
    };
    let (results, ()) = futures_util::join!(futures_util::future::join_all(chains), acting);
    let mut accesses = Vec::new();
    let mut last = Vec::new();
    for (a, r) in results {
        accesses.extend(a);
        last.push(r);
    }
    (accesses, last)
}

async fn revoking_or_disabling_while_refreshes_run_leaves_no_active_token(backend: Backend) {
    let Some(app) = smart_app(backend).await else {
        return;
    };
    let client_id = public_client(&app);
    let rs = resource_server(&app);
    for (username, patient, disable) in
        [("pat", "Patient/123", false), ("sam", "Patient/456", true)]
    {
        add_user(&app, username, &["patient"], Some(patient));
        let browser = Browser::new(&app.base);
        let mut starts = Vec::new();
        for i in 0..20 {
            let login = (i == 0).then_some((username, PASSWORD));
            starts.push(code_flow(&app, &browser, &client_id, SCOPE, login).await);
        }
        let (clock, name) = (app.state.clock.clone(), username.to_owned());
        let action = move |conn: &mut ward::store::DbConnection| {
            if disable {
                ward::authn::accounts::set_enabled(
                    conn,
                    clock.as_ref(),
                    &AuditContext::cli(),
                    &name,
                    false,
                )
                .unwrap();
            } else {
                let user = ward::authz::users::get_by_username(conn, &name).unwrap();
                ward::admin::revoke_all(
                    conn,
                    clock.as_ref(),
                    &AuditContext::cli(),
                    grants::GrantOwner::User(&user.id),
                    "incident",
                )
                .unwrap();
            }
        };
        let (accesses, last) = refresh_storm(&app, &client_id, starts, action).await;
        assert!(accesses.len() >= 40, "{} tokens", accesses.len());
        for access in &accesses {
            let info = introspect(&app, &rs, access).await;
            assert_eq!(
                info.json(),
                json!({"active": false}),
                "{username}: {info:?}"
            );
        }
        for token in &last {
            let (status, body) = refresh(&app, token, &client_id).await;
            assert_eq!(
                (status, body["error"].as_str()),
                (StatusCode::BAD_REQUEST, Some("invalid_grant")),
                "{username}"
            );
        }
        // No family of this user is left in force.
        assert_eq!(
            crate::common::admin::live_families_of_user(&app, username),
            0
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_answers_200_concurrent_token_requests_without_locking_errors() {
    let Some(app) = smart_app(Backend::Sqlite).await else {
        return;
    };
    let machine = Machine::register(&app, "lab-sync", "system/Observation.rs");
    let before = count(&app, "token_families");
    let started = Instant::now();
    let answers =
        futures_util::future::join_all((0..200).map(|_| backend_answer(&app, &machine))).await;
    let elapsed = started.elapsed();
    let mut tally: HashMap<StatusCode, usize> = HashMap::new();
    for answer in &answers {
        *tally.entry(answer.status).or_default() += 1;
        assert!(
            !answer.body.contains("locked"),
            "a locking error reached the client: {answer:?}"
        );
        match answer.status {
            StatusCode::OK => {}
            StatusCode::SERVICE_UNAVAILABLE => answer.assert_unavailable("overload"),
            _ => panic!("neither 200 nor a clean 503: {answer:?}"),
        }
    }
    let ok = tally.get(&StatusCode::OK).copied().unwrap_or(0);
    eprintln!("200 concurrent client_credentials on SQLite in {elapsed:?}: {tally:?}");
    assert!(ok > 0, "{tally:?}");
    // Every success was written whole, and nothing else was.
    assert_eq!(count(&app, "token_families"), before + ok as i64);
    assert_eq!(audit_actions(&app, "token.issued").len(), ok);
}

/// One token family as the rotating client sees it.
///
/// When an answer is lost after its rotation committed, the client holds a spent token and
/// the family's one usable token is a successor it never saw: the chain stops (it is checked at
/// the end like every other) and a new family takes its place.
struct Chain {
    current: String,
    previous: Option<String>,
    /// The last request got no answer (the process died): did it commit?
    unanswered: bool,
    /// Its last rotation committed but the answer was lost: the successor exists, unknown.
    lost: bool,
}

const CHAINS: usize = 6;
const ROTATIONS: usize = 200;

async fn every_family_keeps_one_usable_refresh_token_across_sigkills(backend: Backend) {
    let Some(app) = smart_app(backend).await else {
        return;
    };
    add_user(&app, "pat", &["patient"], Some("Patient/123"));
    let client_id = public_client(&app);
    let browser = Browser::new(&app.base);
    // The in-process app shares the database and grants new families when chains are lost.
    browser.sign_in("pat", PASSWORD).await;
    let mut chains: Vec<Chain> = Vec::new();
    let storage = app.storage.clone();
    let db = storage.db();
    let mut env = storage.env();
    env.push(("WARD_FHIR_BASE".into(), FHIR.into()));
    let client = crate::common::http_client();
    let started = Instant::now();
    let (mut rotations, mut kills, mut unanswered, mut lost) = (0usize, 0usize, 0usize, 0usize);
    while rotations < ROTATIONS {
        while chains.iter().filter(|c| !c.lost).count() < CHAINS {
            let tokens = code_flow(&app, &browser, &client_id, SCOPE, None).await;
            chains.push(Chain {
                current: tokens["refresh_token"].as_str().unwrap().to_owned(),
                previous: None,
                unanswered: false,
                lost: false,
            });
        }
        let mut node = WardProcess::spawn(storage.dir.path(), &env).await;
        let base = node.base.clone();
        let dying = Arc::new(AtomicBool::new(false));
        let progress = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let runs = chains.iter_mut().filter(|c| !c.lost).map(|chain| {
            let (client, base, client_id, dying, progress) = (
                &client,
                base.clone(),
                client_id.clone(),
                dying.clone(),
                progress.clone(),
            );
            async move {
                let mut done = 0usize;
                loop {
                    let sent = client
                        .post(format!("{base}/token"))
                        .form(&[
                            ("grant_type", "refresh_token"),
                            ("refresh_token", chain.current.as_str()),
                            ("client_id", client_id.as_str()),
                        ])
                        .send()
                        .await;
                    let answered = match sent {
                        Ok(r) => {
                            let status = r.status();
                            r.json::<Value>().await.ok().map(|body| (status, body))
                        }
                        Err(_) => None,
                    };
                    match answered {
                        Some((StatusCode::OK, body)) => {
                            let next = body["refresh_token"].as_str().unwrap().to_owned();
                            chain.previous = Some(std::mem::replace(&mut chain.current, next));
                            done += 1;
                            progress.fetch_add(1, Ordering::SeqCst);
                        }
                        Some((status, body)) => {
                            panic!("a rotation was refused ({status}): {body}")
                        }
                        None => {
                            assert!(dying.load(Ordering::SeqCst), "no answer while alive");
                            chain.unanswered = true;
                            return done;
                        }
                    }
                }
            }
        });
        let killer = async {
            // A random number of rotations into the phase (so every phase makes progress on a
            // slow machine too), then a random moment within the requests in flight.
            let (after, pause) = {
                let mut rng = rand::thread_rng();
                (rng.gen_range(5..40), rng.gen_range(0..15))
            };
            while progress.load(Ordering::SeqCst) < after {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            tokio::time::sleep(Duration::from_millis(pause)).await;
            dying.store(true, Ordering::SeqCst);
            // `Child::kill` is SIGKILL on Unix.
            node.child.kill().unwrap();
            node.child.wait().unwrap();
        };
        let (done, ()) = futures_util::join!(futures_util::future::join_all(runs), killer);
        rotations += done.iter().sum::<usize>();
        kills += 1;
        // A rotation whose answer was lost either committed (the presented token is used)
        // or did not (it is still the usable one, and the client goes on with it). On
        // PostgreSQL a COMMIT the dead node had sent may still be in flight: wait until the
        // server has finished with the dead node's sessions before looking.
        settle_dead_sessions(&db).await;
        for chain in chains.iter_mut().filter(|c| c.unanswered) {
            chain.unanswered = false;
            unanswered += 1;
            let row = grants::find_refresh(
                &mut db.conn().unwrap(),
                &sha256_b64(chain.current.as_bytes()),
            )
            .unwrap()
            .unwrap();
            if row.used_at.is_some() {
                chain.lost = true;
                lost += 1;
            }
        }
        // Generous: a debug build on a loaded two-core machine restarts Ward several times.
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "{rotations} rotations, {kills} kills"
        );
    }
    eprintln!(
        "{backend:?}: {rotations} rotations over {} families, {kills} SIGKILLs, {unanswered} answers lost \
         ({lost} after the commit) in {:?}",
        chains.len(),
        started.elapsed()
    );
    assert!(kills >= 3, "the process was killed during the rotations");

    let node = WardProcess::spawn(storage.dir.path(), &env).await;
    let base = node.base.clone();
    let try_refresh = |token: String| {
        let (client, base, client_id) = (&client, base.clone(), client_id.clone());
        async move {
            let r = client
                .post(format!("{base}/token"))
                .form(&[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", token.as_str()),
                    ("client_id", client_id.as_str()),
                ])
                .send()
                .await
                .unwrap();
            (r.status(), r.json::<Value>().await.unwrap())
        }
    };
    for chain in &chains {
        let mut conn = db.conn().unwrap();
        let held = grants::find_refresh(&mut conn, &sha256_b64(chain.current.as_bytes()))
            .unwrap()
            .unwrap();
        let family = grants::find_family(&mut conn, &held.family_id)
            .unwrap()
            .unwrap();
        assert_eq!(family.revoked_at, None, "no family was revoked");
        let usable = unused_refresh_tokens(&mut conn, &family.id);
        drop(conn);
        assert_eq!(
            usable.len(),
            1,
            "exactly one usable refresh token per family"
        );
        if chain.lost {
            // The successor committed; the one the client holds is spent.
            assert_ne!(usable[0], held.token_hash);
            let (status, _) = try_refresh(chain.current.clone()).await;
            assert_eq!(status, StatusCode::BAD_REQUEST);
        } else {
            // The one the client last received is the usable one: it works…
            assert_eq!(usable[0], held.token_hash);
            let (status, body) = try_refresh(chain.current.clone()).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            // …and its predecessor does not.
            if let Some(previous) = &chain.previous {
                let (status, body) = try_refresh(previous.clone()).await;
                assert_eq!(
                    (status, body["error"].as_str()),
                    (StatusCode::BAD_REQUEST, Some("invalid_grant"))
                );
            }
        }
    }
}

/// Waits until no other session of this PostgreSQL database is inside a transaction or running
/// a statement (the killed node's backends have finished); nothing to wait for on SQLite.
async fn settle_dead_sessions(db: &ward::store::Db) {
    use diesel::prelude::*;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let busy: i64 = match &mut *db.conn().unwrap() {
            ward::store::DbConnection::Postgres(pg) => {
                diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(
                    "(SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                 AND pid <> pg_backend_pid() AND state <> 'idle')",
                ))
                .get_result(pg)
                .unwrap()
            }
            ward::store::DbConnection::Sqlite(_) => 0,
        };
        if busy == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "the dead node's sessions linger");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn unused_refresh_tokens(conn: &mut ward::store::DbConnection, family: &str) -> Vec<String> {
    use diesel::prelude::*;
    use ward::store::schema::refresh_tokens::dsl::*;
    refresh_tokens
        .filter(family_id.eq(family))
        .filter(used_at.is_null())
        .select(token_hash)
        .load(conn)
        .unwrap()
}

// ---------------------------------------------------------------- hostile JWKS URLs

/// A loopback listener that only counts the connections it is offered (it never answers).
struct Tripwire {
    port: u16,
    connections: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::AbortHandle,
}

impl Tripwire {
    /// `None` when the address cannot be bound here (no IPv6 loopback).
    async fn bind(ip: &str) -> Option<Self> {
        let listener = tokio::net::TcpListener::bind((ip, 0)).await.ok()?;
        let port = listener.local_addr().ok()?.port();
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = connections.clone();
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                drop(socket);
            }
        })
        .abort_handle();
        Some(Self {
            port,
            connections,
            task,
        })
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for Tripwire {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Without the DANGER switch, a JWKS URL whose name resolves to loopback, or whose literal host
/// is 127.0.0.2 or [::1], is refused before any connection is attempted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jwks_guard_refuses_loopback_before_any_connection() {
    use ward::clients::jwks::{JwksError, JwksFetcher};
    crate::common::install_crypto_provider();
    let fetcher = JwksFetcher::new(None, false).unwrap();
    let wire = Tripwire::bind("127.0.0.1").await.unwrap();
    let err = fetcher
        .fetch(&format!("https://localhost:{}/jwks", wire.port))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("loopback"), "{err}");
    assert_eq!(
        wire.connections(),
        0,
        "refused at resolution, not after connecting"
    );
    for ip in ["127.0.0.2", "::1"] {
        let Some(wire) = Tripwire::bind(ip).await else {
            eprintln!("{ip} cannot be bound here; that case is skipped");
            continue;
        };
        let host = if ip.contains(':') {
            format!("[{ip}]")
        } else {
            ip.to_owned()
        };
        let err = fetcher
            .fetch(&format!("https://{host}:{}/jwks", wire.port))
            .await
            .unwrap_err();
        assert!(matches!(err, JwksError::UrlNotAllowed(_)), "{ip}: {err}");
        assert_eq!(wire.connections(), 0, "{ip}");
    }
}

/// Slow, huge and redirecting key sets, met at the token endpoint: each request is refused
/// within the fetcher's bounds (`invalid_client`), a redirect (here to 127.0.0.2 and [::1]) is
/// never followed, and other requests keep being answered at once meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_jwks_urls_are_bounded_and_do_not_hold_up_other_requests() {
    use crate::common::https_server::{self, Reply, TestCa};
    use josekit::jws::ES384;
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let wire4 = Tripwire::bind("127.0.0.2").await.unwrap();
    let wire6 = Tripwire::bind("::1").await;
    let (to4, to6) = (
        format!("https://127.0.0.2:{}/jwks", wire4.port),
        wire6
            .as_ref()
            .map(|w| format!("https://[::1]:{}/jwks", w.port)),
    );
    let server = https_server::serve(
        &ca,
        Arc::new(move |path: &str| match path {
            "/slow" => Some(Reply::Slow(Duration::from_secs(30), "{}".into())),
            "/huge" => Some(Reply::Huge(64 * 1024 * 1024)),
            "/to-127.0.0.2" => Some(Reply::Redirect(to4.clone())),
            "/to-ipv6-loopback" => to6.clone().map(Reply::Redirect),
            _ => None,
        }),
    )
    .await;
    let Some(app) = TestApp::builder(Backend::Sqlite)
        .env("WARD_FHIR_BASE", FHIR)
        .env("WARD_DANGER_ALLOW_LOOPBACK_JWKS_URI", "true")
        .env("WARD_DANGER_EXTRA_CA_FILE", ca.ca_file.to_str().unwrap())
        .start()
        .await
    else {
        return;
    };
    let healthy = Machine::register(&app, "lab-sync", "system/Observation.rs");
    let pair = ES384.generate_key_pair().unwrap();
    let signer = ES384.signer_from_jwk(&pair.to_jwk_private_key()).unwrap();
    let hostile = |path: &str| {
        let (client_id, _) = register(
            &app,
            json!({"name": format!("Hostile {path}"), "kind": "confidential-asymmetric",
                   "scope": "system/Observation.rs", "jwks_uri": server.url(path)}),
        );
        let now = app.state.clock.now_secs();
        let assertion = crate::common::admin::sign_raw(
            &json!({"alg": "ES384", "kid": "k", "typ": "JWT"}),
            &json!({"iss": client_id, "sub": client_id, "aud": app.url("/token"),
                    "exp": now + 240, "iat": now, "jti": ward::crypto::random_token(12)}),
            &signer,
        );
        (path.to_owned(), assertion)
    };
    let token_with = |assertion: String| {
        let app = &app;
        async move {
            let started = Instant::now();
            let answer = post(
                app,
                "/token",
                &[
                    ("grant_type", "client_credentials"),
                    ("scope", "system/Observation.rs"),
                    (
                        "client_assertion_type",
                        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                    ),
                    ("client_assertion", &assertion),
                ],
                None,
            )
            .await;
            (answer, started.elapsed())
        }
    };
    let mut cases = vec![hostile("/slow"), hostile("/huge"), hostile("/to-127.0.0.2")];
    if wire6.is_some() {
        cases.push(hostile("/to-ipv6-loopback"));
    }
    let hostile_requests = futures_util::future::join_all(
        cases
            .into_iter()
            .map(|(path, assertion)| async { (path, token_with(assertion).await) }),
    );
    let meanwhile = async {
        // While the hostile fetches are in flight, everything else answers at once.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut slowest = Duration::ZERO;
        for _ in 0..10 {
            let started = Instant::now();
            assert_eq!(app.get("/healthz").await.status(), StatusCode::OK);
            let answer = backend_answer(&app, &healthy).await;
            assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
            slowest = slowest.max(started.elapsed());
        }
        slowest
    };
    let (results, slowest) = futures_util::join!(hostile_requests, meanwhile);
    for (path, (answer, took)) in &results {
        assert_eq!(
            answer.status,
            StatusCode::UNAUTHORIZED,
            "{path}: {answer:?}"
        );
        assert_eq!(answer.json()["error"], "invalid_client", "{path}");
        // Bounded by the 5 s fetch timeout, far below the 30 s the slow server takes.
        assert!(took < &Duration::from_secs(20), "{path} took {took:?}");
    }
    // Below the 5 s fetch timeout: nothing waited on a hostile fetch.
    assert!(
        slowest < Duration::from_secs(4),
        "other requests were held up: {slowest:?}"
    );
    assert_eq!(
        wire4.connections(),
        0,
        "the redirect to 127.0.0.2 was followed"
    );
    if let Some(wire6) = &wire6 {
        assert_eq!(wire6.connections(), 0, "the redirect to [::1] was followed");
    }
    eprintln!(
        "hostile JWKS answers: {:?}; slowest other request {slowest:?}",
        results
            .iter()
            .map(|(p, (a, t))| (p.as_str(), a.status.as_u16(), *t))
            .collect::<Vec<_>>()
    );
}
