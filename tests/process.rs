//! The `ward` binary as operators run it: first start, refusals, exit codes, logs, the CLI,
//! and several nodes on one PostgreSQL database.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;

use reqwest::StatusCode;
use serde_json::Value;

use crate::common::process::ward;
use crate::common::{http_client, Backend, Storage, WardProcess};
use crate::on_both_backends;

on_both_backends!(
    migrate_applies_pending_migrations_once,
    keys_cli_lists_and_rotates
);

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test]
async fn first_start_creates_a_private_master_key_and_warns() {
    let dir = tempfile::tempdir().unwrap();
    let node = WardProcess::spawn(dir.path(), &[]).await;
    let key = dir.path().join("ward.master-key");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "master key file mode is {mode:o}");
    assert!(dir.path().join("ward.db").exists());
    let log = node.stop();
    assert!(log.contains("GENERATED A NEW MASTER KEY"), "{log}");
    assert!(
        log.contains("ward user add admin --role admin --password-stdin"),
        "{log}"
    );
    assert!(log.contains("WARD_MASTER_KEY"), "{log}");

    // The second start reuses the key file and does not warn again.
    let node = WardProcess::spawn(dir.path(), &[]).await;
    let log = node.stop();
    assert!(!log.contains("GENERATED A NEW MASTER KEY"), "{log}");
}

#[test]
fn bad_configuration_is_refused_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        (
            &["serve"],
            &[("WARD_LISTEN", "0.0.0.0:8080")],
            "server.listen",
        ),
        (&["serve", "--cluster"], &[], "server.cluster"),
        (&["serve"], &[("WARD_CLUSTER", "sometimes")], "WARD_CLUSTER"),
        (
            &["serve", "--database-url", "mysql://db/ward"],
            &[],
            "database.url",
        ),
        (
            &["serve", "--public-url", "http://ward.example.org"],
            &[],
            "server.public_url",
        ),
        (
            &["serve", "--tls-cert", "/nonexistent/cert.pem"],
            &[],
            "tls.key",
        ),
        (
            &["serve"],
            &[("WARD_MASTER_KEY", "dG9vIHNob3J0")],
            "WARD_MASTER_KEY",
        ),
        (&["migrate"], &[("WARD_LOG_LEVEL", "[[[")], "log.level"),
    ];
    for (args, vars, expected) in cases {
        let out = ward(dir.path(), args, &env(vars));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?} {vars:?}: {stderr}");
        assert!(
            stderr.contains(expected),
            "{args:?} {vars:?}: `{stderr}` should name {expected}"
        );
    }
    // Nothing was created by a refused start.
    assert!(!dir.path().join("ward.db").exists());
    assert!(!dir.path().join("ward.master-key").exists());
}

#[test]
fn usage_errors_exit_with_2() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["serve", "--no-such-flag"][..],
        &["no-such-command"][..],
        &["keys", "rotate", "--alg", "HS256"][..],
    ] {
        let out = ward(dir.path(), args, &[]);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
}

#[test]
fn postgres_without_a_master_key_is_refused() {
    let Some(storage) = Storage::new(Backend::Postgres) else {
        return;
    };
    let out = ward(
        storage.dir.path(),
        &["migrate"],
        &env(&[("WARD_DATABASE_URL", &storage.database_url)]),
    );
    assert_eq!(out.status.code(), Some(0), "migrate needs no master key");
    let out = ward(
        storage.dir.path(),
        &["keys", "list"],
        &env(&[("WARD_DATABASE_URL", &storage.database_url)]),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("WARD_MASTER_KEY"), "{stderr}");
    assert!(stderr.contains("every node"), "{stderr}");
}

async fn migrate_applies_pending_migrations_once(backend: Backend) {
    {
        let Some(storage) = Storage::new(backend) else {
            return;
        };
        let first = ward(storage.dir.path(), &["migrate", "--json"], &storage.env());
        assert_eq!(
            first.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&first.stderr)
        );
        let applied: Value = serde_json::from_slice(&first.stdout).unwrap();
        assert!(!applied["applied"].as_array().unwrap().is_empty());
        let second = ward(storage.dir.path(), &["migrate", "--json"], &storage.env());
        let applied: Value = serde_json::from_slice(&second.stdout).unwrap();
        assert_eq!(applied["applied"], serde_json::json!([]));
        let human = ward(storage.dir.path(), &["migrate"], &storage.env());
        assert!(String::from_utf8_lossy(&human.stdout).contains("up to date"));
    }
}

async fn keys_cli_lists_and_rotates(backend: Backend) {
    let Some(storage) = Storage::new(backend) else {
        return;
    };
    let mut vars = storage.env();
    vars.push(("WARD_KEY_REFRESH_SECONDS".into(), "1".into()));
    let node = WardProcess::spawn(storage.dir.path(), &vars).await;
    let client = http_client();
    let jwks_kids = || async {
        let body: Value = client
            .get(format!("{}/jwks", node.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        body["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_owned())
            .collect::<BTreeSet<_>>()
    };
    let before = jwks_kids().await;
    assert_eq!(before.len(), 2);

    let list = ward(storage.dir.path(), &["keys", "list", "--json"], &vars);
    assert_eq!(
        list.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&list.stderr)
    );
    let listed: Value = serde_json::from_slice(&list.stdout).unwrap();
    let listed = listed["keys"].as_array().unwrap();
    assert_eq!(listed.len(), 2);
    assert!(listed
        .iter()
        .all(|k| k["state"] == "active" && k["published"] == true));

    let rotate = ward(
        storage.dir.path(),
        &["keys", "rotate", "--alg", "ES256", "--json"],
        &vars,
    );
    assert_eq!(
        rotate.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&rotate.stderr)
    );
    let created: Value = serde_json::from_slice(&rotate.stdout).unwrap();
    let new_kid = created["created"][0]["kid"].as_str().unwrap().to_owned();

    // The running node publishes the new key within its refresh period.
    let mut published = false;
    for _ in 0..40 {
        if jwks_kids().await.contains(&new_kid) {
            published = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(published, "rotated key not published by the running node");
    assert!(
        before.is_subset(&jwks_kids().await),
        "old keys stay published"
    );

    let list = ward(storage.dir.path(), &["keys", "list", "--json"], &vars);
    let listed: Value = serde_json::from_slice(&list.stdout).unwrap();
    let next = listed["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == new_kid.as_str())
        .unwrap()
        .clone();
    assert_eq!(next["state"], "next");

    let human = ward(storage.dir.path(), &["keys", "list"], &vars);
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(text.contains("KID") && text.contains(&new_kid), "{text}");
    drop(node);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_carry_request_ids_and_never_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let vars = env(&[("WARD_LOG_FORMAT", "json"), ("WARD_LOG_LEVEL", "trace")]);
    let node = WardProcess::spawn(dir.path(), &vars).await;
    let client = http_client();
    let password = "Correct-Horse-Battery-Staple-7781";
    let bearer = "eyJhbGciOiJFUzI1NiJ9.SECRET-BEARER-TOKEN-5521.sig";
    let code = "AUTH-CODE-SECRET-9090";
    let form = format!("username=dr.who&password={password}&code={code}");
    for path in ["/healthz", "/token", "/jwks"] {
        client
            .post(format!(
                "{}{path}?code={code}&access_token={bearer}",
                node.base
            ))
            .header("authorization", format!("Bearer {bearer}"))
            .header("cookie", format!("__Host-ward_session={bearer}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form.clone())
            .send()
            .await
            .unwrap();
    }
    let response = client
        .get(format!("{}/healthz", node.base))
        .send()
        .await
        .unwrap();
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let log = node.stop();
    for secret in [password, bearer, "SECRET-BEARER-TOKEN", code] {
        assert!(
            !log.contains(secret),
            "log contains a secret ({secret}):\n{log}"
        );
    }
    let finished: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["message"] == "request finished")
        .collect();
    // The readiness polls of `spawn` are logged too.
    assert!(finished.len() >= 5, "{log}");
    for line in &finished {
        assert!(
            line["span"]["request_id"].as_str().is_some(),
            "no request id: {line}"
        );
    }
    assert!(finished
        .iter()
        .any(|l| l["span"]["request_id"] == request_id.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_one_postgres_database_act_as_one() {
    let Some(storage) = Storage::new(Backend::Postgres) else {
        return;
    };
    let vars = storage.env();
    // Start both at once: migrations and first-key creation race, and must happen once.
    let dir = storage.dir.path();
    let (a, b) = tokio::join!(
        WardProcess::spawn(dir, &vars),
        WardProcess::spawn(dir, &vars)
    );
    let client = http_client();
    let mut bodies = Vec::new();
    for node in [&a, &b] {
        let ready = client
            .get(format!("{}/readyz", node.base))
            .send()
            .await
            .unwrap();
        assert_eq!(ready.status(), StatusCode::OK);
        let jwks: Value = client
            .get(format!("{}/jwks", node.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        bodies.push(jwks);
    }
    assert_eq!(bodies[0], bodies[1], "both nodes publish the same JWKS");
    assert_eq!(bodies[0]["keys"].as_array().unwrap().len(), 2);

    let list = ward(dir, &["keys", "list", "--json"], &vars);
    let listed: Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(
        listed["keys"].as_array().unwrap().len(),
        2,
        "keys created exactly once"
    );
    drop((a, b));
}
