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
    // Up to 30 s: generous for a loaded machine; the period itself is a second.
    for _ in 0..300 {
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

/// Issue 8's hygiene check over a whole real flow: the password, the client secret, the code,
/// the access, refresh and ID tokens and the TOTP-free session cookie never appear in the log,
/// in any audit row, or anywhere in the database files (SQLite file and write-ahead log).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_logs_audit_rows_or_the_database_file() {
    use crate::common::browser::Browser;
    use crate::common::smart::{approve, follow, pkce};
    crate::common::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let fhir = "https://fhir.example.org/r4";
    let fhir_env = env(&[("WARD_FHIR_BASE", fhir), ("WARD_LOG_LEVEL", "debug")]);
    let password = "quartz pelican juggles seventeen";
    let role = ward(
        dir.path(),
        &[
            "role",
            "add",
            "reader",
            "--scope",
            "user/*.rs",
            "--mfa-required",
            "false",
        ],
        &fhir_env,
    );
    assert!(
        role.status.success(),
        "{}",
        String::from_utf8_lossy(&role.stderr)
    );
    let add = std::process::Command::new(crate::common::process::WARD)
        .args(["user", "add", "sam", "--role", "reader", "--password-stdin"])
        .current_dir(dir.path())
        .envs(fhir_env.iter().cloned())
        .stdin(std::process::Stdio::piped())
        .output_with_stdin(password);
    assert!(
        add.status.success(),
        "{}",
        String::from_utf8_lossy(&add.stderr)
    );
    let server = WardProcess::spawn(dir.path(), &fhir_env).await;
    let base = server.base.clone();
    let port = base.rsplit(':').next().unwrap().to_owned();
    let callback = "https://app.example.com/cb";
    let created = ward(
        dir.path(),
        &[
            "client",
            "add",
            "--client-id",
            "chart",
            "--name",
            "Chart",
            "--kind",
            "confidential-symmetric",
            "--redirect-uri",
            callback,
            "--scope",
            "openid fhirUser offline_access launch/patient user/*.rs",
            "--json",
        ],
        &fhir_env,
    );
    let created: Value = serde_json::from_slice(&created.stdout).unwrap();
    let client_secret = created["client_secret"].as_str().unwrap().to_owned();

    let browser = Browser::new(&format!("http://localhost:{port}"));
    let (verifier, challenge) = pkce();
    let query = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs([
            ("response_type", "code"),
            ("client_id", "chart"),
            ("redirect_uri", callback),
            (
                "scope",
                "openid fhirUser offline_access user/Observation.rs",
            ),
            ("state", "s"),
            ("aud", fhir),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
        ])
        .finish();
    let consent = follow(
        &browser,
        &format!("http://localhost:{port}/authorize?{query}"),
        Some(("sam", password)),
    )
    .await
    .consent();
    let code = approve(&browser, &consent, &[]).await.callback()["code"].clone();
    let session = browser.session_cookie().expect("session cookie");
    let client = crate::common::http_client();
    let tokens: Value = client
        .post(format!("{base}/token"))
        .basic_auth("chart", Some(&client_secret))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", callback),
            ("code_verifier", verifier.as_str()),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let refresh = tokens["refresh_token"].as_str().unwrap().to_owned();
    let rotated: Value = client
        .post(format!("{base}/token"))
        .basic_auth("chart", Some(&client_secret))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh.as_str()),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(rotated["access_token"].is_string(), "{rotated}");
    let log = server.stop();

    let mut secrets = vec![
        password.to_owned(),
        client_secret,
        code,
        session,
        refresh,
        tokens["access_token"].as_str().unwrap().to_owned(),
        tokens["id_token"].as_str().unwrap().to_owned(),
        rotated["access_token"].as_str().unwrap().to_owned(),
        rotated["refresh_token"].as_str().unwrap().to_owned(),
    ];
    // A JWT's signature alone must not be stored either.
    let signatures: Vec<String> = secrets
        .iter()
        .filter(|s| s.matches('.').count() == 2)
        .map(|jwt| jwt.rsplit('.').next().unwrap().to_owned())
        .collect();
    secrets.extend(signatures);
    let mut database = Vec::new();
    for name in ["ward.db", "ward.db-wal"] {
        if let Ok(bytes) = std::fs::read(dir.path().join(name)) {
            database.extend(bytes);
        }
    }
    let database = String::from_utf8_lossy(&database);
    assert!(
        database.contains("token.issued"),
        "the audit rows are in the file"
    );
    for secret in &secrets {
        assert!(!log.contains(secret.as_str()), "log holds a secret");
        assert!(
            !database.contains(secret.as_str()),
            "the database file holds a secret"
        );
    }
}

trait OutputWithStdin {
    fn output_with_stdin(&mut self, input: &str) -> std::process::Output;
}

impl OutputWithStdin for std::process::Command {
    fn output_with_stdin(&mut self, input: &str) -> std::process::Output {
        use std::io::Write;
        let mut child = self
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
        child.wait_with_output().expect("wait")
    }
}
