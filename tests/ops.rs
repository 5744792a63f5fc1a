//! Operational endpoints, security headers, body limits and metrics over real HTTP.

use std::time::Duration;

use reqwest::StatusCode;

use crate::common::{Backend, TestApp};
use crate::on_both_backends;

on_both_backends!(
    healthz_and_readyz_answer,
    security_headers_on_every_response
);

async fn healthz_and_readyz_answer(backend: Backend) {
    let Some(app) = TestApp::start(backend).await else {
        return;
    };
    let health = app.get("/healthz").await;
    assert_eq!(health.status(), StatusCode::OK);
    assert_eq!(
        health.json::<serde_json::Value>().await.unwrap()["status"],
        "ok"
    );

    let ready = app.get("/readyz").await;
    assert_eq!(ready.status(), StatusCode::OK);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["status"], "ready");
    let expected = match backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    };
    assert_eq!(body["database"], expected);
}

async fn security_headers_on_every_response(backend: Backend) {
    let Some(app) = TestApp::start(backend).await else {
        return;
    };
    let oversized = app
        .client
        .post(app.url("/healthz"))
        .body(vec![b'x'; 200 * 1024])
        .send()
        .await
        .unwrap();
    let responses = vec![
        app.get("/healthz").await,
        app.get("/readyz").await,
        app.get("/jwks").await,
        app.get("/no/such/page").await,
        oversized,
    ];
    for r in responses {
        let h = r.headers();
        let csp = h
            .get("content-security-policy")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("CSP missing on {}", r.url()));
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert_eq!(h.get("x-content-type-options").unwrap(), "nosniff");
        assert_eq!(h.get("referrer-policy").unwrap(), "no-referrer");
        assert!(h.get("x-request-id").is_some());
        // Plain HTTP on loopback: HSTS would be meaningless (and is only sent behind TLS).
        assert!(h.get("strict-transport-security").is_none());
    }
}

#[tokio::test]
async fn rejects_oversized_body_with_413() {
    let Some(app) = TestApp::builder(Backend::Sqlite)
        .env("WARD_MAX_BODY_BYTES", "4096")
        .start()
        .await
    else {
        return;
    };
    let response = app
        .client
        .post(app.url("/jwks"))
        .body(vec![b'a'; 5000])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "invalid_request");

    let small = app
        .client
        .post(app.url("/jwks"))
        .body("a")
        .send()
        .await
        .unwrap();
    assert_ne!(small.status(), StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn unknown_routes_are_a_json_404_not_a_500() {
    let Some(app) = TestApp::start(Backend::Sqlite).await else {
        return;
    };
    for path in ["/nope", "/%00", "/jwks/../../etc/passwd", "/a?b=%ff%fe"] {
        let r = app.get(path).await;
        assert!(r.status().is_client_error(), "{path}: {}", r.status());
    }
    let r = app.get("/nope").await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "not_found");
    // A browser gets a page instead.
    let page = app
        .client
        .get(app.url("/nope"))
        .header("accept", "text/html,*/*")
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::NOT_FOUND);
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(page.text().await.unwrap().contains("Not found"));
}

#[tokio::test]
async fn metrics_count_requests_per_route_pattern() {
    let Some(app) = TestApp::start(Backend::Sqlite).await else {
        return;
    };
    for _ in 0..3 {
        app.get("/healthz").await;
    }
    app.get("/no-such-route/12345").await;
    let text = app.get("/metrics").await.text().await.unwrap();
    assert!(
        text.contains(r#"ward_http_requests_total{method="GET",route="/healthz",status="200"} 3"#),
        "{text}"
    );
    assert!(text.contains("ward_http_request_duration_seconds_bucket"));
    // Raw paths (which may carry ids) never become labels.
    assert!(!text.contains("12345"));

    // A request relayed by a proxy on the same host is not the operator's own host.
    let relayed = app
        .client
        .get(app.url("/metrics"))
        .header("x-forwarded-for", "203.0.113.7")
        .send()
        .await
        .unwrap();
    assert_eq!(relayed.status(), StatusCode::NOT_FOUND);
}

/// `/metrics` reports what SQLite's group-commit writer has committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_group_commits() {
    let Some(app) = TestApp::start(Backend::Sqlite).await else {
        return;
    };
    let counters = || async {
        let text = app.get("/metrics").await.text().await.unwrap();
        let read = |name: &str| -> u64 {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                .unwrap_or_else(|| panic!("{name} in {text}"))
                .parse()
                .unwrap()
        };
        (
            read("ward_sqlite_group_commit_batches_total"),
            read("ward_sqlite_group_commit_writes_total"),
        )
    };
    let before = counters().await;
    for i in 0..5 {
        app.state
            .db
            .write(move |conn| ward::store::meta::insert(conn, &format!("probe:{i}"), "x"))
            .await
            .unwrap();
    }
    let after = counters().await;
    // At least these five writes, in at least one transaction (background work may add more).
    assert!(after.1 >= before.1 + 5, "{before:?} then {after:?}");
    assert!(after.0 > before.0, "{before:?} then {after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_fails_while_postgres_is_unreachable_and_recovers() {
    let Some(app) = TestApp::start(Backend::Postgres).await else {
        return;
    };
    assert_eq!(app.get("/readyz").await.status(), StatusCode::OK);
    let pg = app.storage.pg.as_ref().expect("postgres storage");

    let browser = crate::common::browser::Browser::new(&app.base);
    let csrf = browser.get("/login").await.csrf();

    pg.cut_connections();
    let down = app.get("/readyz").await;
    assert_eq!(down.status(), StatusCode::SERVICE_UNAVAILABLE);
    // Pages answer a 503 page (not a 500, not JSON) while the database is away.
    let page = app
        .client
        .get(app.url("/account"))
        .header("accept", "text/html")
        .header("cookie", "ward_session=some-session")
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(page.headers().get("retry-after").is_some());
    assert!(page
        .text()
        .await
        .unwrap()
        .contains("Temporarily unavailable"));
    let login = browser
        .post(
            "/login",
            &[
                ("username", "pat"),
                ("password", "violet tractor sings at dawn"),
                ("csrf", &csrf),
            ],
        )
        .await;
    assert_eq!(
        login.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        login.body
    );
    // Liveness does not depend on the database.
    assert_eq!(app.get("/healthz").await.status(), StatusCode::OK);
    assert_eq!(app.get("/jwks").await.status(), StatusCode::OK);

    pg.restore_connections();
    let mut recovered = false;
    // Up to 30 s on a loaded machine.
    for _ in 0..150 {
        if app.get("/readyz").await.status() == StatusCode::OK {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        recovered,
        "readyz did not recover after the database came back"
    );
}
