//! What a token response writes goes in whole or not at all (`store::together`), and on
//! PostgreSQL as one statement: one round trip for a SMART Backend Services issuance, its
//! assertion `jti` included.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use diesel::connection::{Instrumentation, InstrumentationEvent};
use diesel::Connection;
use ward::audit::{self, AuditContext, AuditEvent};
use ward::store::grants::{self, AccessTokenRow, AssertionJtiRow, FamilyRow, RefreshRow, Rotation};
use ward::store::{DbConnection, StoreError};

use crate::common::smart::{add_user, audit_actions, count, register};
use crate::common::{Backend, TestApp};
use crate::on_both_backends;

on_both_backends!(
    a_backend_services_issuance_is_written_whole_and_a_replayed_jti_writes_nothing,
    an_issuance_whose_row_cannot_go_in_writes_nothing,
    a_refresh_token_is_used_once_and_never_after_its_grant_ended,
    an_issuance_that_fails_midway_in_a_group_commit_leaves_its_jti_unused,
    a_rotation_writes_everything_for_the_one_caller_it_lets_through_and_nothing_else,
    a_refresh_reads_its_token_family_user_and_roles_in_one_statement,
);

const NOW: i64 = 2_000_000_000;

fn family(client_id: &str, id: &str) -> FamilyRow {
    FamilyRow {
        id: id.into(),
        client_id: client_id.into(),
        user_id: None,
        session_id: None,
        grant_kind: "client_credentials".into(),
        scope: "system/Observation.rs".into(),
        aud: "https://fhir.example.com/r4".into(),
        context: "{}".into(),
        created_at: NOW,
        expires_at: NOW + 300,
        revoked_at: None,
        revoked_reason: None,
    }
}

fn access(client_id: &str, family_id: &str, jti: &str) -> AccessTokenRow {
    AccessTokenRow {
        jti: jti.into(),
        family_id: family_id.into(),
        client_id: client_id.into(),
        user_id: None,
        scope: "system/Observation.rs".into(),
        aud: "https://fhir.example.com/r4".into(),
        issued_at: NOW,
        expires_at: NOW + 300,
        revoked_at: None,
        introspected_at: None,
    }
}

/// An unused refresh token of `family_id`, live for an hour.
fn refresh(token_hash: &str, family_id: &str) -> RefreshRow {
    RefreshRow {
        token_hash: token_hash.into(),
        family_id: family_id.into(),
        created_at: NOW,
        expires_at: NOW + 3600,
        used_at: None,
    }
}

fn issued_event(
    app: &TestApp,
    client_id: &str,
    family_id: &str,
) -> ward::store::audit_events::NewAuditEventRow {
    audit::row(
        app.state.clock.as_ref(),
        &AuditContext::cli(),
        &AuditEvent::TokenIssued {
            client_id: client_id.into(),
            grant: "client_credentials".into(),
            family: family_id.into(),
            scope: "system/Observation.rs".into(),
            patient: None,
        },
    )
    .unwrap()
}

fn client(app: &TestApp) -> String {
    register(
        app,
        serde_json::json!({"client_id": "svc", "name": "Service", "kind": "public",
            "redirect_uris": ["https://svc.example.com/cb"], "scope": "openid"}),
    )
    .0
}

/// Counts the statements a PostgreSQL connection sends from now on.
struct Statements(Arc<AtomicUsize>);

impl Instrumentation for Statements {
    fn on_connection_event(&mut self, event: InstrumentationEvent<'_>) {
        if matches!(event, InstrumentationEvent::StartQuery { .. }) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

fn count_statements(conn: &mut DbConnection) -> Option<Arc<AtomicUsize>> {
    match conn {
        DbConnection::Postgres(pg) => {
            let seen = Arc::new(AtomicUsize::new(0));
            pg.set_instrumentation(Statements(Arc::clone(&seen)));
            Some(seen)
        }
        DbConnection::Sqlite(_) => None,
    }
}

fn rows(app: &TestApp) -> (i64, i64, i64, usize) {
    (
        count(app, "assertion_jtis"),
        count(app, "token_families"),
        count(app, "access_tokens"),
        audit_actions(app, "token.issued").len(),
    )
}

/// Access tokens, refresh tokens and `token.issued` events.
fn token_rows(app: &TestApp) -> (i64, i64, usize) {
    (
        count(app, "access_tokens"),
        count(app, "refresh_tokens"),
        audit_actions(app, "token.issued").len(),
    )
}

async fn a_backend_services_issuance_is_written_whole_and_a_replayed_jti_writes_nothing(
    backend: Backend,
) {
    let Some(app) = TestApp::start(backend).await else {
        return;
    };
    let client_id = client(&app);
    let jti = AssertionJtiRow {
        client_id: client_id.clone(),
        jti: "assertion-1".into(),
        expires_at: NOW + 60,
    };
    let before = rows(&app);
    let mut conn = app.conn();
    let statements = count_statements(&mut conn);
    let fresh = grants::record_service_issuance(
        &mut conn,
        &jti,
        &family(&client_id, "fam-1"),
        &access(&client_id, "fam-1", "tok-1"),
        &issued_event(&app, &client_id, "fam-1"),
    )
    .unwrap();
    assert!(fresh);
    if let Some(statements) = &statements {
        // The jti, the family, the token and the audit event: one statement, no BEGIN/COMMIT.
        assert_eq!(statements.load(Ordering::SeqCst), 1, "statements sent");
    }
    let after = rows(&app);
    assert_eq!(
        after,
        (before.0 + 1, before.1 + 1, before.2 + 1, before.3 + 1)
    );
    let stored = grants::find_access_token(&mut conn, "tok-1").unwrap();
    assert!(stored.is_some(), "the token and its family are readable");

    // The same jti again (a replayed assertion): refused, and nothing of it is written.
    let replayed = grants::record_service_issuance(
        &mut conn,
        &jti,
        &family(&client_id, "fam-2"),
        &access(&client_id, "fam-2", "tok-2"),
        &issued_event(&app, &client_id, "fam-2"),
    )
    .unwrap();
    assert!(!replayed);
    assert_eq!(rows(&app), after);
    assert!(grants::find_family(&mut conn, "fam-2").unwrap().is_none());

    // The connection is still good for the next request (PostgreSQL aborted only the
    // statement; no transaction was left open).
    let next = AssertionJtiRow {
        jti: "assertion-2".into(),
        ..jti
    };
    assert!(grants::record_service_issuance(
        &mut conn,
        &next,
        &family(&client_id, "fam-3"),
        &access(&client_id, "fam-3", "tok-3"),
        &issued_event(&app, &client_id, "fam-3"),
    )
    .unwrap());
    assert_eq!(rows(&app).2, after.2 + 1);
}

async fn an_issuance_whose_row_cannot_go_in_writes_nothing(backend: Backend) {
    let Some(app) = TestApp::start(backend).await else {
        return;
    };
    let client_id = client(&app);
    let mut conn = app.conn();
    grants::insert_family(&mut conn, &family(&client_id, "fam-1")).unwrap();
    let refresh = refresh("refresh-1", "fam-1");
    grants::record_issuance(
        &mut conn,
        &access(&client_id, "fam-1", "tok-1"),
        Some(&refresh),
        &issued_event(&app, &client_id, "fam-1"),
    )
    .unwrap();
    let before = token_rows(&app);
    // The refresh token's key is taken: the access token before it and the audit event after
    // it must not stay either.
    let taken = grants::record_issuance(
        &mut conn,
        &access(&client_id, "fam-1", "tok-2"),
        Some(&refresh),
        &issued_event(&app, &client_id, "fam-1"),
    );
    assert!(matches!(taken, Err(StoreError::Query(_))), "{taken:?}");
    // A token of a family that does not exist (a foreign key): nothing either.
    let orphan = grants::record_issuance(
        &mut conn,
        &access(&client_id, "no-such-family", "tok-3"),
        None,
        &issued_event(&app, &client_id, "no-such-family"),
    );
    assert!(matches!(orphan, Err(StoreError::Query(_))), "{orphan:?}");
    assert_eq!(token_rows(&app), before);
    for jti in ["tok-2", "tok-3"] {
        assert!(
            grants::find_access_token(&mut conn, jti).unwrap().is_none(),
            "{jti}"
        );
    }
    // Inside a transaction the caller's rollback undoes a failed set.
    let in_transaction = ward::store::write_transaction(&mut conn, |conn| {
        grants::record_issuance(
            conn,
            &access(&client_id, "fam-1", "tok-4"),
            Some(&refresh),
            &issued_event(&app, &client_id, "fam-1"),
        )
    });
    assert!(in_transaction.is_err());
    assert!(grants::find_access_token(&mut conn, "tok-4")
        .unwrap()
        .is_none());
}

/// `use_refresh` is the rotation's compare-and-set: one winner, and a grant revoked (or
/// expired) after the refresh token was read wins over it, leaving the token unused.
async fn a_refresh_token_is_used_once_and_never_after_its_grant_ended(backend: Backend) {
    let Some(app) = TestApp::start(backend).await else {
        return;
    };
    let client_id = client(&app);
    let mut conn = app.conn();
    for id in ["fam-live", "fam-revoked", "fam-expired"] {
        grants::insert_family(&mut conn, &family(&client_id, id)).unwrap();
        grants::insert_refresh(&mut conn, &refresh(id, id)).unwrap();
    }
    let now = NOW + 10;
    assert_eq!(
        grants::use_refresh(&mut conn, "fam-live", "fam-live", now).unwrap(),
        Rotation::Used
    );
    assert_eq!(
        grants::use_refresh(&mut conn, "fam-live", "fam-live", now).unwrap(),
        Rotation::UsedBefore
    );
    assert!(grants::revoke_family(&mut conn, "fam-revoked", "test", now).unwrap());
    assert_eq!(
        grants::use_refresh(&mut conn, "fam-revoked", "fam-revoked", now).unwrap(),
        Rotation::GrantEnded
    );
    // The family lives until NOW + 300.
    assert_eq!(
        grants::use_refresh(&mut conn, "fam-expired", "fam-expired", NOW + 300).unwrap(),
        Rotation::GrantEnded
    );
    // A token presented with another family's id is not that family's to use.
    assert_eq!(
        grants::use_refresh(&mut conn, "fam-expired", "fam-live", now).unwrap(),
        Rotation::GrantEnded
    );
    for id in ["fam-revoked", "fam-expired"] {
        let row = grants::find_refresh(&mut conn, id).unwrap().unwrap();
        assert_eq!(row.used_at, None, "{id} was marked used");
    }
}

/// Through `Db::write`, where on SQLite the issuance is one piece of a group-committed batch:
/// a row that cannot go in after the jti did must take the jti with it (the batch commits
/// what a piece wrote outside its own transactions).
async fn an_issuance_that_fails_midway_in_a_group_commit_leaves_its_jti_unused(backend: Backend) {
    let Some(app) = TestApp::start(backend).await else {
        return;
    };
    let client_id = client(&app);
    grants::insert_family(&mut app.conn(), &family(&client_id, "fam-taken")).unwrap();
    let jti = AssertionJtiRow {
        client_id: client_id.clone(),
        jti: "assertion-1".into(),
        expires_at: NOW + 60,
    };
    let before = rows(&app);
    let attempt = |family_id: &'static str, token: &'static str| {
        let (jti, client_id) = (jti.clone(), client_id.clone());
        let event = issued_event(&app, &client_id, family_id);
        app.state.db.write(move |conn| {
            grants::record_service_issuance(
                conn,
                &jti,
                &family(&client_id, family_id),
                &access(&client_id, family_id, token),
                &event,
            )
        })
    };
    // The family's key is taken: the jti before it must not stay.
    let collided = attempt("fam-taken", "tok-1").await;
    assert!(
        matches!(collided, Err(StoreError::Corrupt(_))),
        "{collided:?}"
    );
    assert_eq!(rows(&app), before);
    // So the assertion is still unused, and good once.
    assert!(attempt("fam-1", "tok-1").await.unwrap());
    assert!(!attempt("fam-2", "tok-2").await.unwrap());
    assert_eq!(rows(&app).0, before.0 + 1);
}

/// `rotate_refresh`: on PostgreSQL one statement. The caller that uses the token writes the new
/// tokens, the audit event and the session's last-seen time; a reuse, an ended grant or a row
/// that cannot go in writes nothing and leaves the presented token as it was.
async fn a_rotation_writes_everything_for_the_one_caller_it_lets_through_and_nothing_else(
    backend: Backend,
) {
    use ward::store::credentials::{self, SessionRow};
    use ward::store::grants::RefreshRotation;
    let Some(app) = TestApp::start(backend).await else {
        return;
    };
    let client_id = client(&app);
    crate::common::smart::add_user(&app, "rotating", &[], None);
    let mut conn = app.conn();
    let user = ward::store::users::find_by_username(&mut conn, "rotating")
        .unwrap()
        .unwrap();
    let session = |public_id: &str, last_seen_at: i64| SessionRow {
        id_hash: format!("hash-{public_id}"),
        public_id: public_id.into(),
        user_id: user.id.clone(),
        stage: "done".into(),
        amr: "pwd".into(),
        created_at: NOW - 600,
        last_seen_at,
        expires_at: NOW + 3600,
        authenticated_at: NOW - 600,
        mfa_at: None,
        source_ip: None,
        user_agent: None,
        ended_at: None,
        end_reason: None,
    };
    // Seen 10 minutes ago, and 30 seconds ago: only the first is stale enough to write.
    credentials::insert_session(&mut conn, &session("stale", NOW - 600)).unwrap();
    credentials::insert_session(&mut conn, &session("fresh", NOW - 30)).unwrap();
    let last_seen = |conn: &mut DbConnection, public_id: &str| {
        credentials::find_session_by_public_id(conn, public_id)
            .unwrap()
            .unwrap()
            .last_seen_at
    };
    for id in ["fam-a", "fam-b"] {
        grants::insert_family(&mut conn, &family(&client_id, id)).unwrap();
    }
    grants::insert_refresh(&mut conn, &refresh("r1", "fam-a")).unwrap();
    grants::insert_refresh(&mut conn, &refresh("b1", "fam-b")).unwrap();
    // Every nullable column given a value of its own, so a column written from the wrong
    // bind shows.
    let event = ward::store::audit_events::NewAuditEventRow {
        actor_user: Some(user.id.clone()),
        actor_client: Some(client_id.clone()),
        source_ip: Some("198.51.100.7".into()),
        user_agent: Some("agent/1".into()),
        request_id: Some("request-1".into()),
        target_patient: Some("Patient/9".into()),
        ..issued_event(&app, &client_id, "fam-a")
    };
    let rotation = |presented: &'static str,
                    family_id: &'static str,
                    session_id: Option<&'static str>,
                    access: &'static AccessTokenRow,
                    next: Option<&'static RefreshRow>| RefreshRotation {
        token_hash: presented,
        family_id,
        session_id,
        now: NOW,
        access,
        refresh: next,
        event: &event,
    };
    let leak = |row: AccessTokenRow| &*Box::leak(Box::new(row));
    let leak_refresh = |row: RefreshRow| &*Box::leak(Box::new(row));
    let (a1, r2) = (
        leak(AccessTokenRow {
            user_id: Some(user.id.clone()),
            introspected_at: Some(NOW + 1),
            ..access(&client_id, "fam-a", "a1")
        }),
        leak_refresh(refresh("r2", "fam-a")),
    );
    // A rotation of `presented` issuing the access token `jti` and, if named, the refresh
    // token `next` in `family_id`.
    let attempt = |conn: &mut DbConnection,
                   presented: &'static str,
                   family_id: &'static str,
                   session_id: Option<&'static str>,
                   jti: &str,
                   next: Option<&str>| {
        let access = leak(access(&client_id, family_id, jti));
        let next = next.map(|hash| leak_refresh(refresh(hash, family_id)));
        grants::rotate_refresh(
            conn,
            &rotation(presented, family_id, session_id, access, next),
        )
    };

    let before = token_rows(&app);
    let statements = count_statements(&mut conn);
    let used = grants::rotate_refresh(
        &mut conn,
        &rotation("r1", "fam-a", Some("stale"), a1, Some(r2)),
    );
    assert_eq!(used.unwrap(), Rotation::Used);
    if let Some(statements) = &statements {
        assert_eq!(statements.load(Ordering::SeqCst), 1, "statements sent");
    }
    let after = token_rows(&app);
    assert_eq!(after, (before.0 + 1, before.1 + 1, before.2 + 1));
    assert_eq!(
        grants::find_refresh(&mut conn, "r1")
            .unwrap()
            .unwrap()
            .used_at,
        Some(NOW)
    );
    // Each column holds what was given for it.
    let stored_access = grants::find_access_token(&mut conn, "a1")
        .unwrap()
        .unwrap()
        .0;
    assert_eq!(format!("{stored_access:?}"), format!("{a1:?}"));
    let stored_refresh = grants::find_refresh(&mut conn, "r2").unwrap().unwrap();
    assert_eq!(format!("{stored_refresh:?}"), format!("{r2:?}"));
    let stored_event = ward::store::audit_events::list(&mut conn, Some("token.issued"), 1000)
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(
        (
            stored_event.occurred_at,
            &stored_event.outcome,
            &stored_event.severity,
            &stored_event.actor_user,
            &stored_event.actor_client,
            &stored_event.source_ip,
            &stored_event.user_agent,
            &stored_event.request_id,
            &stored_event.target_patient,
            &stored_event.node,
            &stored_event.details,
        ),
        (
            event.occurred_at,
            &event.outcome,
            &event.severity,
            &event.actor_user,
            &event.actor_client,
            &event.source_ip,
            &event.user_agent,
            &event.request_id,
            &event.target_patient,
            &event.node,
            &event.details,
        )
    );
    assert_eq!(last_seen(&mut conn, "stale"), NOW);

    // A session seen within the minute is not written again.
    let used = attempt(&mut conn, "r2", "fam-a", Some("fresh"), "a2", Some("r3"));
    assert_eq!(used.unwrap(), Rotation::Used);
    assert_eq!(last_seen(&mut conn, "fresh"), NOW - 30);
    let after = token_rows(&app);

    // r1 again (a reuse): nothing written, not even the session.
    credentials::insert_session(&mut conn, &session("reused", NOW - 600)).unwrap();
    let reused = attempt(&mut conn, "r1", "fam-a", Some("reused"), "a3", Some("r4"));
    assert_eq!(reused.unwrap(), Rotation::UsedBefore);
    assert_eq!(token_rows(&app), after);
    assert_eq!(last_seen(&mut conn, "reused"), NOW - 600);

    // A grant revoked after the token was read: nothing written, the token left unused.
    assert!(grants::revoke_family(&mut conn, "fam-b", "test", NOW).unwrap());
    let ended = attempt(&mut conn, "b1", "fam-b", None, "b-a1", Some("b2"));
    assert_eq!(ended.unwrap(), Rotation::GrantEnded);
    assert_eq!(token_rows(&app), after);
    assert_eq!(
        grants::find_refresh(&mut conn, "b1")
            .unwrap()
            .unwrap()
            .used_at,
        None
    );

    // A row that cannot go in (the access token's key is taken): the token stays unused and
    // nothing of the rotation is kept.
    let failed = attempt(&mut conn, "r3", "fam-a", Some("reused"), "a1", Some("r5"));
    assert!(matches!(failed, Err(StoreError::Query(_))), "{failed:?}");
    assert_eq!(token_rows(&app), after);
    assert_eq!(
        grants::find_refresh(&mut conn, "r3")
            .unwrap()
            .unwrap()
            .used_at,
        None
    );
    assert_eq!(last_seen(&mut conn, "reused"), NOW - 600);

    // No new refresh token (none to issue): the access token and the event only.
    let used = attempt(&mut conn, "r3", "fam-a", None, "a4", None);
    assert_eq!(used.unwrap(), Rotation::Used);
    assert_eq!(token_rows(&app), (after.0 + 1, after.1, after.2 + 1));
}

/// Records the SQL `conn` sends from now on (without its binds).
struct Sent(Arc<std::sync::Mutex<Vec<String>>>);

impl Instrumentation for Sent {
    fn on_connection_event(&mut self, event: InstrumentationEvent<'_>) {
        if let InstrumentationEvent::StartQuery { query, .. } = event {
            let text = query.to_string();
            let sql = text.split(" -- binds:").next().unwrap_or_default();
            self.0.lock().unwrap().push(sql.to_owned());
        }
    }
}

/// What SQLite plans for `sql` (one `?` bound to a placeholder value): each step's detail.
fn sqlite_plan(conn: &mut DbConnection, sql: &str) -> Vec<String> {
    #[derive(diesel::QueryableByName)]
    struct Step {
        #[diesel(sql_type = diesel::sql_types::Text)]
        detail: String,
    }
    let steps: Vec<Step> = diesel::RunQueryDsl::load(
        diesel::sql_query(format!("EXPLAIN QUERY PLAN {sql}"))
            .bind::<diesel::sql_types::Text, _>("x"),
        conn,
    )
    .unwrap();
    steps.into_iter().map(|s| s.detail).collect()
}

/// On SQLite: what `read` sends is looked up by key through indexes, with no table scanned and
/// nothing materialised (whose cost would grow with every user and role assignment).
fn assert_looked_up_by_key(conn: &mut DbConnection, read: impl FnOnce(&mut DbConnection)) {
    let DbConnection::Sqlite(sqlite) = conn else {
        return;
    };
    let sent = Arc::new(std::sync::Mutex::new(Vec::new()));
    sqlite.set_instrumentation(Sent(Arc::clone(&sent)));
    read(conn);
    let statements = sent.lock().unwrap().clone();
    assert_eq!(statements.len(), 1, "{statements:?}");
    let plan = sqlite_plan(conn, &statements[0]);
    assert!(
        plan.iter()
            .all(|step| step.starts_with("SEARCH ") || step.starts_with("USE TEMP B-TREE")),
        "{plan:?} for {}",
        statements[0]
    );
}

/// Everything a refresh decides on before it writes comes from one statement (on PostgreSQL,
/// one round trip): the token, its family and, for a person's grant, the account with every
/// role it holds, by name; a user without roles, an account that is gone and a backend
/// grant each come back as such.
async fn a_refresh_reads_its_token_family_user_and_roles_in_one_statement(backend: Backend) {
    let Some(app) = TestApp::start(backend).await else {
        return;
    };
    let client_id = client(&app);
    add_user(
        &app,
        "nora",
        &["physician", "nurse"],
        Some("Practitioner/7"),
    );
    add_user(&app, "ivan", &[], None);
    let mut conn = app.conn();
    let mut id_of = |name: &str| {
        ward::store::credentials::login_user_by_name(&mut conn, name)
            .unwrap()
            .unwrap()
            .id
    };
    let (nora, ivan) = (id_of("nora"), id_of("ivan"));
    let families = [
        ("fam-nora", Some(nora.clone())),
        ("fam-ivan", Some(ivan.clone())),
        ("fam-gone", Some("no-such-user".to_owned())),
        ("fam-svc", None),
    ];
    for (id, user_id) in &families {
        let person = FamilyRow {
            user_id: user_id.clone(),
            grant_kind: "authorization_code".into(),
            ..family(&client_id, id)
        };
        grants::insert_family(&mut conn, &person).unwrap();
        grants::insert_refresh(&mut conn, &refresh(&format!("hash-{id}"), id)).unwrap();
    }
    let statements = count_statements(&mut conn);
    let grant = grants::find_refresh_grant(&mut conn, "hash-fam-nora")
        .unwrap()
        .unwrap();
    if let Some(seen) = &statements {
        assert_eq!(seen.load(Ordering::SeqCst), 1, "statements sent");
    }
    if let DbConnection::Postgres(pg) = &mut *conn {
        // Prepared once and kept (diesel names it), not parsed and planned per refresh.
        #[derive(diesel::QueryableByName)]
        struct Prepared {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let kept: Prepared = diesel::RunQueryDsl::get_result(
            diesel::sql_query(
                "SELECT count(*) AS n FROM pg_prepared_statements WHERE name LIKE '__diesel%' \
                 AND statement LIKE '%\"refresh_tokens\"%\"user_roles\"%'",
            ),
            pg,
        )
        .unwrap();
        assert_eq!(kept.n, 1);
    }
    assert_eq!(grant.token.token_hash, "hash-fam-nora");
    assert_eq!(grant.token.family_id, "fam-nora");
    assert_eq!(grant.token.expires_at, NOW + 3600);
    assert_eq!(grant.family.id, "fam-nora");
    assert_eq!(grant.family.user_id.as_deref(), Some(nora.as_str()));
    let (user, held) = grant.user.expect("nora's account");
    assert_eq!(
        (user.id.as_str(), user.username.as_str(), user.enabled),
        (nora.as_str(), "nora", true)
    );
    assert_eq!(user.fhir_user.as_deref(), Some("Practitioner/7"));
    let names: Vec<&str> = held.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["nurse", "physician"]);
    assert!(held[1].scope_ceiling.contains("user/*.cruds"));

    let grant = grants::find_refresh_grant(&mut conn, "hash-fam-ivan")
        .unwrap()
        .unwrap();
    let (user, held) = grant.user.expect("ivan's account");
    assert_eq!((user.id, held.len()), (ivan, 0));
    for gone in ["hash-fam-gone", "hash-fam-svc"] {
        let grant = grants::find_refresh_grant(&mut conn, gone)
            .unwrap()
            .unwrap();
        assert_eq!(grant.token.token_hash, gone);
        assert!(grant.user.is_none(), "{gone}");
    }
    assert!(grants::find_refresh_grant(&mut conn, "hash-unknown")
        .unwrap()
        .is_none());
    // Looked up by key, as is the account with its roles that /authorize reads.
    assert_looked_up_by_key(&mut conn, |c| {
        grants::find_refresh_grant(c, "hash-fam-nora").unwrap();
    });
    assert_looked_up_by_key(&mut conn, |c| {
        ward::store::roles::user_with_roles(c, &nora).unwrap();
    });
}
