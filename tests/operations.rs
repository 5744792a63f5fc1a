//! Operators' tools on a real installation: `ward doctor`, `ward backup` and `ward restore`.

use serde_json::Value;

use crate::common::process::ward;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn doctor(dir: &std::path::Path, extra: &[(&str, &str)]) -> (bool, Vec<String>) {
    let out = ward(dir, &["doctor", "--json"], &env(extra));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "doctor printed no JSON: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let ids = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            assert!(f["fix"].as_str().is_some_and(|x| !x.is_empty()), "{f}");
            f["id"].as_str().unwrap().to_owned()
        })
        .collect();
    (out.status.success(), ids)
}

#[test]
fn doctor_reports_findings_with_fixes_and_fails_on_high_severity() {
    let dir = tempfile::tempdir().unwrap();
    let add = ward(dir.path(), &["user", "add", "ada", "--role", "admin"], &[]);
    assert!(
        add.status.success(),
        "{}",
        String::from_utf8_lossy(&add.stderr)
    );
    let (ok, ids) = doctor(dir.path(), &[]);
    assert!(ok, "{ids:?}");
    for expected in [
        "audit.unverified",
        "backup.none",
        "master_key.beside_database",
        "admins.passkey",
        "roles.mfa",
    ] {
        assert!(ids.iter().any(|i| i == expected), "{expected} in {ids:?}");
    }
    // Verifying the chain and taking a backup clear their findings.
    assert!(ward(dir.path(), &["audit", "verify"], &[]).status.success());
    let backup = ward(dir.path(), &["backup", "--to", "b.ward"], &[]);
    assert!(
        backup.status.success(),
        "{}",
        String::from_utf8_lossy(&backup.stderr)
    );
    let (_, ids) = doctor(dir.path(), &[]);
    assert!(
        !ids.iter()
            .any(|i| i == "audit.unverified" || i == "backup.none"),
        "{ids:?}"
    );
    // An insecure switch is a high-severity finding: exit status 1.
    let (ok, ids) = doctor(
        dir.path(),
        &[("WARD_DANGER_ALLOW_LOOPBACK_JWKS_URI", "true")],
    );
    assert!(!ok);
    assert_eq!(ids.first().map(String::as_str), Some("danger.on"));
}

#[test]
fn a_backup_is_sealed_and_restores_to_a_verifiable_database() {
    let dir = tempfile::tempdir().unwrap();
    let add = ward(
        dir.path(),
        &["user", "add", "grace.hopper", "--role", "nurse"],
        &[],
    );
    assert!(add.status.success());
    assert!(ward(dir.path(), &["audit", "verify"], &[]).status.success());
    let out = ward(
        dir.path(),
        &["backup", "--to", "nightly.ward", "--json"],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file = std::fs::read(dir.path().join("nightly.ward")).unwrap();
    assert!(file.starts_with(b"WARD-BACKUP v1"));
    let text = String::from_utf8_lossy(&file);
    assert!(!text.contains("grace.hopper") && !text.contains("SQLite format"));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("nightly.ward"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "backup readable by others: {mode:o}");
    // It never replaces the database it copies, even with --force.
    let onto_itself = ward(dir.path(), &["backup", "--to", "ward.db", "--force"], &[]);
    assert!(!onto_itself.status.success());
    assert!(String::from_utf8_lossy(&onto_itself.stderr).contains("cannot replace the database"));
    // No plaintext snapshot is left behind.
    let leftovers: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("backup-") || n.ends_with(".snapshot") || n.ends_with(".partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // A mistyped database path is an error, not an empty backup.
    let typo = ward(
        dir.path(),
        &["backup", "--to", "other.ward"],
        &env(&[("WARD_DATABASE_URL", "sqlite://wrad.db")]),
    );
    assert!(!typo.status.success());
    assert!(!dir.path().join("wrad.db").exists());
    // It does not overwrite without --force.
    assert!(!ward(dir.path(), &["backup", "--to", "nightly.ward"], &[])
        .status
        .success());

    // Restore elsewhere with the same master key: the audit chain verifies and the data is there.
    let other = tempfile::tempdir().unwrap();
    std::fs::copy(
        dir.path().join("nightly.ward"),
        other.path().join("nightly.ward"),
    )
    .unwrap();
    let without_key = ward(other.path(), &["restore", "--from", "nightly.ward"], &[]);
    assert!(!without_key.status.success());
    assert!(String::from_utf8_lossy(&without_key.stderr).contains("master key"));
    std::fs::copy(
        dir.path().join("ward.master-key"),
        other.path().join("ward.master-key"),
    )
    .unwrap();
    let restored = ward(other.path(), &["restore", "--from", "nightly.ward"], &[]);
    assert!(
        restored.status.success(),
        "{}",
        String::from_utf8_lossy(&restored.stderr)
    );
    let verify = ward(other.path(), &["audit", "verify", "--json"], &[]);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    let users = ward(other.path(), &["user", "list", "--json"], &[]);
    assert!(String::from_utf8_lossy(&users.stdout).contains("grace.hopper"));
    // Restoring over an existing database needs --force; a different key cannot open it.
    assert!(
        !ward(other.path(), &["restore", "--from", "nightly.ward"], &[])
            .status
            .success()
    );
    // A database with a live write-ahead log (Ward still running) is not restored over.
    let busy = tempfile::tempdir().unwrap();
    std::fs::copy(
        dir.path().join("nightly.ward"),
        busy.path().join("nightly.ward"),
    )
    .unwrap();
    std::fs::copy(
        dir.path().join("ward.master-key"),
        busy.path().join("ward.master-key"),
    )
    .unwrap();
    std::fs::write(busy.path().join("ward.db-wal"), b"uncheckpointed").unwrap();
    let refused = ward(busy.path(), &["restore", "--from", "nightly.ward"], &[]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("write-ahead log"));
    let third = tempfile::tempdir().unwrap();
    std::fs::copy(
        dir.path().join("nightly.ward"),
        third.path().join("nightly.ward"),
    )
    .unwrap();
    let wrong = ward(
        third.path(),
        &["restore", "--from", "nightly.ward"],
        &env(&[(
            "WARD_MASTER_KEY",
            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
        )]),
    );
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("does not open"));
}

/// The FHIR AuditEvent export of a real trail (sign-in, approval, token, introspection, admin
/// changes) parses with a FHIR model library (Python's fhir.resources, R4B models) and passes
/// the BALP checks of tests/fhir/validate_audit.py, as NDJSON and as a Bundle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fhir_audit_export_validates_with_a_fhir_model_library() {
    let python =
        std::env::var("WARD_FHIR_PYTHON").unwrap_or_else(|_| "/opt/ward-fhir/bin/python".into());
    if !std::path::Path::new(&python).exists() {
        assert!(
            !crate::common::in_ci(),
            "{python} is missing: .ci/run installs fhir.resources into /opt/ward-fhir"
        );
        eprintln!("SKIPPED: no Python with fhir.resources at {python} (set WARD_FHIR_PYTHON)");
        return;
    }
    let demo = crate::demo::Demo::start().await;
    let tokens = crate::demo::patient_token(&demo).await;
    let introspected: Value = crate::common::http_client()
        .post(format!("{}/introspect", demo.public()))
        .basic_auth("demo-ehr", Some(demo.ehr_secret()))
        .form(&[("token", tokens["access_token"].as_str().unwrap())])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(introspected["active"], true);
    let db = env(&[("WARD_DATABASE_URL", "sqlite://ward-demo.db")]);
    for (args, bundle) in [
        (vec!["audit", "export", "--format", "fhir"], false),
        (
            vec![
                "audit",
                "export",
                "--format",
                "fhir",
                "--bundle",
                "--since",
                "2020-01-01",
            ],
            true,
        ),
    ] {
        let out = ward(demo.dir.path(), &args, &db);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        for action in [
            "login.succeeded",
            "token.issued",
            "token.introspected",
            "user.created",
        ] {
            assert!(text.contains(action), "{action} missing from the export");
        }
        if !bundle {
            assert!(text.lines().count() >= 10, "{text}");
        }
        let mut child = std::process::Command::new(&python)
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fhir/validate_audit.py"
            ))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("python");
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().unwrap();
            stdin.write_all(text.as_bytes()).unwrap();
        }
        let result = child.wait_with_output().unwrap();
        assert!(
            result.status.success(),
            "FHIR validation failed:\n{}\n{}",
            String::from_utf8_lossy(&result.stdout),
            String::from_utf8_lossy(&result.stderr)
        );
    }
}

/// Security alerts (issue 8): a high-severity event reaches the webhook as a signed JSON POST,
/// retried after the receiver's first refusal, and ordinary events do not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn high_severity_events_reach_the_alert_webhook_signed_and_retried() {
    use crate::common::https_server::{serve_recording, TestCa};
    crate::common::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let (hook, received) = serve_recording(&ca, 1).await;
    let secret = "webhook-secret-0123456789";
    let Some(app) = crate::common::TestApp::builder(crate::common::Backend::Sqlite)
        .env("WARD_ALERTS_WEBHOOK_URL", &hook.url("/hook"))
        .env("WARD_ALERTS_WEBHOOK_SECRET", secret)
        .env("WARD_DANGER_EXTRA_CA_FILE", ca.ca_file.to_str().unwrap())
        .start()
        .await
    else {
        return;
    };
    crate::common::smart::add_clinician_role(&app);
    crate::common::smart::add_user(&app, "carl", &["clinician"], None);
    // Once the alert cursor has started, sign in (ordinary) and reach for the admin API (alert).
    app.alert_cursor_started().await;
    let browser = crate::common::browser::Browser::new(&app.base);
    browser
        .sign_in("carl", crate::common::smart::PASSWORD)
        .await;
    assert_eq!(
        browser.get("/admin/api/v1/clients").await.status,
        reqwest::StatusCode::FORBIDDEN
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while received.lock().unwrap().len() < 2 {
        assert!(std::time::Instant::now() < deadline, "no retried delivery");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let deliveries = received.lock().unwrap().clone();
    // The first attempt was refused (503) and the same alert came again.
    assert_eq!(deliveries[0].body, deliveries[1].body);
    for d in &deliveries {
        let body: Value = serde_json::from_str(&d.body).unwrap();
        assert_eq!(body["type"], "ward.security_alert");
        assert_eq!(body["event"]["action"], "admin.access_denied", "{body}");
        let header = d.header("x-ward-signature").expect("signed");
        let t: i64 = header
            .strip_prefix("t=")
            .and_then(|r| r.split(',').next())
            .and_then(|t| t.parse().ok())
            .unwrap();
        assert_eq!(
            header,
            ward::audit::alerts::signature(secret.as_bytes(), t, &d.body)
        );
        assert!(d.head.starts_with("POST /hook "), "{}", d.head);
    }
}
