//! Housekeeping deletes only what has expired, in bounded batches, and never audit events.

use diesel::prelude::*;
use ward::audit::AuditContext;
use ward::authz::users::{self, NewUser};
use ward::store::credentials::{self, SessionRow, TotpRow};
use ward::store::passkeys::{self, ChallengeRow};
use ward::store::schema::{
    audit_events, auth_throttle, sessions, totp_credentials, webauthn_challenges,
};

use crate::common::{Backend, TestApp};
use crate::on_both_backends;

on_both_backends!(housekeeping_purges_expired_rows_in_bounded_batches);

const NOW: i64 = 2_000_000_000;

async fn housekeeping_purges_expired_rows_in_bounded_batches(backend: Backend) {
    let Some(app) = TestApp::start(backend).await else {
        return;
    };
    let mut conn = app.conn();
    let user = users::create(
        &mut conn,
        app.state.clock.as_ref(),
        &AuditContext::cli(),
        NewUser {
            username: "pat".into(),
            roles: vec!["patient".into()],
            ..NewUser::default()
        },
    )
    .unwrap();
    let session = |id: &str, expires_at: i64, ended_at: Option<i64>| SessionRow {
        id_hash: id.into(),
        public_id: format!("p-{id}"),
        user_id: user.id.clone(),
        stage: "active".into(),
        amr: "[]".into(),
        created_at: 0,
        last_seen_at: 0,
        expires_at,
        authenticated_at: 0,
        mfa_at: None,
        source_ip: None,
        user_agent: None,
        ended_at,
        end_reason: None,
    };
    let old = NOW - 30 * 86_400;
    for row in [
        session("old-ended", NOW + 10, Some(old)),
        session("old-expired", old, None),
        session("old-both", old, Some(old)),
        session("live", NOW + 3600, None),
        session("recently-ended", NOW + 10, Some(NOW - 60)),
    ] {
        credentials::insert_session(&mut conn, &row).unwrap();
    }
    for (key, at) in [("stale-1", old), ("stale-2", old), ("fresh", NOW - 10)] {
        credentials::count_failure(&mut conn, key, at).unwrap();
    }
    for (id, expires_at) in [("gone", NOW - 1), ("pending", NOW + 100)] {
        passkeys::insert_challenge(
            &mut conn,
            &ChallengeRow {
                id: id.into(),
                purpose: "register".into(),
                user_id: None,
                bound_to: "x".into(),
                state: "{}".into(),
                expires_at,
            },
        )
        .unwrap();
    }
    for (id, created_at, confirmed) in [
        ("abandoned", old, false),
        ("in-progress", NOW - 60, false),
        ("confirmed-long-ago", old, true),
    ] {
        credentials::insert_totp(
            &mut conn,
            &TotpRow {
                id: id.into(),
                user_id: user.id.clone(),
                secret_sealed: "v1.x.y".into(),
                confirmed,
                last_step: None,
                pending_session: None,
                created_at,
            },
        )
        .unwrap();
    }
    let audit_before: i64 = audit_events::table.count().get_result(&mut *conn).unwrap();

    // A batch of one deletes at most one row of each kind.
    let first = ward::housekeeping::sweep(&mut conn, NOW, 1, 900).unwrap();
    assert_eq!(
        (
            first.sessions,
            first.throttle,
            first.challenges,
            first.pending_totp
        ),
        (1, 1, 1, 1)
    );
    assert!(first.any_full(1));
    let mut passes = 1;
    while ward::housekeeping::sweep(&mut conn, NOW, 1, 900)
        .unwrap()
        .total()
        > 0
    {
        passes += 1;
        assert!(passes < 10);
    }

    let left_sessions: Vec<String> = sessions::table
        .select(sessions::id_hash)
        .order(sessions::id_hash)
        .load(&mut *conn)
        .unwrap();
    assert_eq!(left_sessions, ["live", "recently-ended"]);
    let left_keys: i64 = auth_throttle::table.count().get_result(&mut *conn).unwrap();
    assert_eq!(left_keys, 1);
    let left_challenges: Vec<String> = webauthn_challenges::table
        .select(webauthn_challenges::id)
        .load(&mut *conn)
        .unwrap();
    assert_eq!(left_challenges, ["pending"]);
    let mut left_totp: Vec<String> = totp_credentials::table
        .select(totp_credentials::id)
        .load(&mut *conn)
        .unwrap();
    left_totp.sort();
    assert_eq!(left_totp, ["confirmed-long-ago", "in-progress"]);
    let audit_after: i64 = audit_events::table.count().get_result(&mut *conn).unwrap();
    assert_eq!(audit_before, audit_after, "audit events are never purged");
}

on_both_backends!(housekeeping_purges_expired_grants_and_keeps_live_ones);

async fn housekeeping_purges_expired_grants_and_keeps_live_ones(backend: Backend) {
    use ward::store::grants::{self, *};
    use ward::store::schema::{
        access_tokens, assertion_jtis, auth_requests, authorization_codes, launch_contexts,
        refresh_tokens, token_families,
    };
    let Some(app) = TestApp::start(backend).await else {
        return;
    };
    let (client_id, _) = crate::common::smart::register(
        &app,
        serde_json::json!({"client_id": "app", "name": "App", "kind": "public",
            "redirect_uris": ["https://app.example.com/cb"], "scope": "openid"}),
    );
    let mut conn = app.conn();
    let day = 86_400;
    for (id, expires_at) in [("req-old", NOW - 1), ("req-live", NOW + 100)] {
        grants::insert_auth_request(
            &mut conn,
            &AuthRequestRow {
                id_hash: id.into(),
                client_id: client_id.clone(),
                user_id: None,
                request: "{}".into(),
                offered: "[]".into(),
                patient: None,
                created_at: NOW - 600,
                expires_at,
                completed_at: None,
            },
        )
        .unwrap();
        grants::insert_launch(
            &mut conn,
            &LaunchRow {
                id_hash: id.into(),
                client_id: client_id.clone(),
                created_by: "ehr".into(),
                user_id: None,
                context: "{}".into(),
                created_at: NOW - 300,
                expires_at,
                used_at: None,
            },
        )
        .unwrap();
        grants::record_assertion_jti(
            &mut conn,
            &grants::AssertionJtiRow {
                client_id: "ehr".into(),
                jti: id.into(),
                expires_at,
            },
        )
        .unwrap();
    }
    for (id, expires_at) in [("fam-old", NOW - 2 * day), ("fam-live", NOW + day)] {
        grants::insert_family(
            &mut conn,
            &FamilyRow {
                id: id.into(),
                client_id: client_id.clone(),
                user_id: None,
                session_id: None,
                grant_kind: "authorization_code".into(),
                scope: "openid".into(),
                aud: "a".into(),
                context: "{}".into(),
                created_at: NOW - 3 * day,
                expires_at,
                revoked_at: None,
                revoked_reason: None,
            },
        )
        .unwrap();
        grants::insert_code(
            &mut conn,
            &CodeRow {
                code_hash: id.into(),
                client_id: client_id.clone(),
                user_id: "u".into(),
                redirect_uri: "r".into(),
                code_challenge: "c".into(),
                grant_details: "{}".into(),
                family_id: id.into(),
                created_at: expires_at - 60,
                expires_at,
                redeemed_at: None,
            },
        )
        .unwrap();
        grants::insert_refresh(
            &mut conn,
            &RefreshRow {
                token_hash: id.into(),
                family_id: id.into(),
                created_at: NOW - 3 * day,
                expires_at,
                used_at: None,
            },
        )
        .unwrap();
        grants::insert_access_token(
            &mut conn,
            &AccessTokenRow {
                jti: id.into(),
                family_id: id.into(),
                client_id: client_id.clone(),
                user_id: None,
                scope: "openid".into(),
                aud: "a".into(),
                issued_at: expires_at - 300,
                expires_at,
                revoked_at: None,
                introspected_at: None,
            },
        )
        .unwrap();
    }
    while ward::housekeeping::sweep(&mut conn, NOW, 1, 900)
        .unwrap()
        .total()
        > 0
    {}
    let requests: Vec<String> = auth_requests::table
        .select(auth_requests::id_hash)
        .load(&mut *conn)
        .unwrap();
    assert_eq!(requests, ["req-live"]);
    let launches: Vec<String> = launch_contexts::table
        .select(launch_contexts::id_hash)
        .load(&mut *conn)
        .unwrap();
    assert_eq!(launches, ["req-live"]);
    let jtis: Vec<String> = assertion_jtis::table
        .select(assertion_jtis::jti)
        .load(&mut *conn)
        .unwrap();
    assert_eq!(jtis, ["req-live"]);
    let codes: Vec<String> = authorization_codes::table
        .select(authorization_codes::code_hash)
        .load(&mut *conn)
        .unwrap();
    assert_eq!(codes, ["fam-live"]);
    let families: Vec<String> = token_families::table
        .select(token_families::id)
        .load(&mut *conn)
        .unwrap();
    assert_eq!(families, ["fam-live"]);
    let refresh: Vec<String> = refresh_tokens::table
        .select(refresh_tokens::token_hash)
        .load(&mut *conn)
        .unwrap();
    assert_eq!(refresh, ["fam-live"]);
    let access: Vec<String> = access_tokens::table
        .select(access_tokens::jti)
        .load(&mut *conn)
        .unwrap();
    assert_eq!(access, ["fam-live"]);
}

on_both_backends!(the_token_tables_stop_growing_under_steady_load);

/// Four simulated days of an app refreshing every ten minutes (each refresh rotates: a new
/// refresh token and a new access token) with housekeeping running every hour: after the first
/// day (the retention of expired tokens) the access-token table stops growing. Rotated refresh
/// tokens stay while their family lives, so a late replay is still caught as reuse.
async fn the_token_tables_stop_growing_under_steady_load(backend: Backend) {
    use std::sync::Arc;
    use ward::clock::{Clock, ManualClock};
    use ward::store::schema::{access_tokens, refresh_tokens, token_families};

    use crate::common::browser::Browser;
    use crate::common::smart::{add_user, code_flow, refresh, register, CALLBACK, FHIR, PASSWORD};

    let start = crate::common::admin::unix_now();
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
    let (app_id, _) = register(
        &app,
        serde_json::json!({"client_id": "chart", "name": "Chart", "kind": "public",
            "redirect_uris": [CALLBACK],
            "scope": "openid launch/patient offline_access patient/*.rs"}),
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
    let mut refresh_token = tokens["refresh_token"].as_str().unwrap().to_owned();
    let rows = |app: &TestApp| -> (i64, i64, i64) {
        let mut conn = app.conn();
        (
            access_tokens::table.count().get_result(&mut *conn).unwrap(),
            refresh_tokens::table
                .count()
                .get_result(&mut *conn)
                .unwrap(),
            token_families::table
                .count()
                .get_result(&mut *conn)
                .unwrap(),
        )
    };
    let mut daily = Vec::new();
    for hour in 1..=4 * 24 {
        for _ in 0..6 {
            clock.advance_secs(600);
            let (status, body) = refresh(&app, &refresh_token, &app_id).await;
            assert_eq!(status, reqwest::StatusCode::OK, "{body}");
            refresh_token = body["refresh_token"].as_str().unwrap().to_owned();
        }
        let now = clock.now_secs();
        let mut conn = app.conn();
        while ward::housekeeping::sweep(&mut conn, now, 500, 900)
            .unwrap()
            .any_full(500)
        {}
        if hour % 24 == 0 {
            daily.push(rows(&app));
        }
    }
    // 144 rotations a day; a day's worth of access tokens (plus their lifetime) is kept.
    let (day2, day3, day4) = (daily[1], daily[2], daily[3]);
    assert!(
        day2.0 > 100,
        "access tokens were issued and kept a day: {daily:?}"
    );
    assert_eq!(
        day3.0, day2.0,
        "no growth after the retention period: {daily:?}"
    );
    assert_eq!(
        day4.0, day3.0,
        "no growth after the retention period: {daily:?}"
    );
    assert_eq!(
        day4.1,
        4 * 144 + 1,
        "every rotated refresh token is kept for reuse detection"
    );
    assert_eq!(day4.2, 1, "one family throughout");
    // And the app still works.
    let (status, _) = refresh(&app, &refresh_token, &app_id).await;
    assert_eq!(status, reqwest::StatusCode::OK);
}

/// A server checkpoints SQLite's write-ahead log in the background (about once a second), so
/// no commit on the request path pays for it: what the server commits reaches the database file
/// itself within seconds. Read here with `immutable=1`, which ignores the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_commits_reach_the_database_file_within_seconds() {
    use diesel::prelude::*;
    use ward::store::schema::audit_events;

    let Some(app) = TestApp::start(Backend::Sqlite).await else {
        return;
    };
    let path = app
        .storage
        .database_url
        .strip_prefix("sqlite://")
        .expect("a SQLite URL")
        .to_owned();
    // A refused client authentication: one audit event, committed by the server.
    let refused = app
        .client
        .post(app.url("/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "nobody"),
            ("client_secret", "wrong"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), reqwest::StatusCode::UNAUTHORIZED);
    let in_file = || {
        let mut file_only =
            diesel::SqliteConnection::establish(&format!("file:{path}?immutable=1")).unwrap();
        audit_events::table
            .filter(audit_events::action.eq("client.authentication_failed"))
            .count()
            .get_result::<i64>(&mut file_only)
            // Before the first checkpoint even the schema is only in the log.
            .unwrap_or(0)
    };
    let mut seen = 0;
    // Up to 30 s for the once-a-second checkpoint on a loaded machine.
    for _ in 0..300 {
        seen = in_file();
        if seen > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(seen, 1, "the event never left the write-ahead log");
}
