//! Demo mode as a newcomer meets it: `ward serve --demo` seeds and prints its demo-only
//! credentials once, refuses what it must refuse, and every shell example in README.md (the
//! ```sh blocks with `curl`) succeeds against it.

use std::collections::HashMap;

use josekit::jws::ES384;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::browser::Browser;
use crate::common::process::{ward, WardProcess, WARD};
use crate::common::smart::{follow, pkce};

/// A demo-mode Ward in a fresh directory; its public URL is `http://localhost:PORT`.
pub struct Demo {
    pub dir: tempfile::TempDir,
    pub process: WardProcess,
    pub port: u16,
}

impl Demo {
    pub async fn start() -> Self {
        crate::common::install_crypto_provider();
        let dir = tempfile::tempdir().expect("temp dir");
        let process = WardProcess::spawn_with(dir.path(), &["--demo"], &[]).await;
        let port = process
            .base
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port");
        Demo { dir, process, port }
    }

    /// Ward's public URL (cookies, sign-in, /token).
    pub fn public(&self) -> String {
        format!("http://localhost:{}", self.port)
    }

    /// The sample app's own origin.
    pub fn app(&self) -> String {
        format!("http://127.0.0.1:{}/demo/app", self.port)
    }

    /// What the first start printed, as "label: value" pairs of the banner.
    pub fn banner(&self) -> String {
        self.process.stdout()
    }

    pub fn ehr_secret(&self) -> String {
        self.banner()
            .split("secret: ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .expect("the banner prints the demo EHR secret")
            .to_owned()
    }
}

/// A token for the sample app, the way the README's reader gets one: pat.demo signs in,
/// approves, and the app redeems the code (public client, PKCE).
pub async fn patient_token(demo: &Demo) -> Value {
    let browser = Browser::new(&demo.public());
    let (verifier, challenge) = pkce();
    let fhir = format!("{}/demo/fhir", demo.public());
    let query = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs([
            ("response_type", "code"),
            ("client_id", "demo-app"),
            ("redirect_uri", demo.app().as_str()),
            ("scope", "launch/patient openid fhirUser patient/*.rs"),
            ("state", "readme"),
            ("aud", fhir.as_str()),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
        ])
        .finish();
    let start = format!("{}/authorize?{query}", demo.public());
    let consent = follow(
        &browser,
        &start,
        Some(("pat.demo", "demo patient only: harbour lantern")),
    )
    .await
    .consent();
    let callback = crate::common::smart::approve(&browser, &consent, &[])
        .await
        .callback();
    assert_eq!(callback["state"], "readme");
    let response = browser
        .client
        .post(format!("{}/token", demo.public()))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", callback["code"].as_str()),
            ("redirect_uri", demo.app().as_str()),
            ("client_id", "demo-app"),
            ("code_verifier", verifier.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

/// The README's ```sh blocks that call `curl`, in order.
fn readme_curl_blocks() -> Vec<String> {
    let readme = include_str!("../README.md");
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in readme.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```sh") => current = Some(String::new()),
            (Some(block), "```") => {
                if block.contains("curl ") {
                    blocks.push(block.clone());
                }
                current = None;
            }
            (Some(block), text) => {
                block.push_str(text);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

/// A backend service holding `__ward.admin.read`, registered with the README's command, and
/// an admin-API token for it.
async fn admin_robot_token(demo: &Demo) -> String {
    let pair = ES384.generate_key_pair().unwrap();
    let mut public = pair.to_jwk_public_key();
    public.set_key_id("robot-1");
    public.set_algorithm("ES384");
    std::fs::write(
        demo.dir.path().join("ops-robot-jwks.json"),
        json!({"keys": [serde_json::to_value(&public).unwrap()]}).to_string(),
    )
    .unwrap();
    let out = ward(
        demo.dir.path(),
        &[
            "client",
            "add",
            "--client-id",
            "ops-robot",
            "--name",
            "Ops automation",
            "--kind",
            "confidential-asymmetric",
            "--scope",
            "__ward.admin.read",
            "--jwks",
            "ops-robot-jwks.json",
        ],
        &[(
            "WARD_DATABASE_URL".to_owned(),
            "sqlite://ward-demo.db".to_owned(),
        )],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let token_url = format!("{}/token", demo.public());
    let mut header = josekit::jws::JwsHeader::new();
    header.set_token_type("JWT");
    header.set_key_id("robot-1");
    let mut claims = josekit::jwt::JwtPayload::new();
    for (k, v) in [
        ("iss", json!("ops-robot")),
        ("sub", json!("ops-robot")),
        ("aud", json!(token_url)),
        ("jti", json!(ward::crypto::random_token(16))),
        ("exp", json!(now + 120)),
        ("iat", json!(now)),
    ] {
        claims.set_claim(k, Some(v)).unwrap();
    }
    let signer = ES384.signer_from_jwk(&pair.to_jwk_private_key()).unwrap();
    let assertion = josekit::jwt::encode_with_signer(&claims, &header, &signer).unwrap();
    let response: Value = crate::common::http_client()
        .post(&token_url)
        .form(&[
            ("grant_type", "client_credentials"),
            ("scope", "__ward.admin.read"),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", assertion.as_str()),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    response["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("{response}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_curl_example_in_the_readme_works_against_demo_mode() {
    let demo = Demo::start().await;
    let banner = demo.banner();
    assert!(banner.contains("WARD DEMO MODE"), "{banner}");
    assert!(banner.contains("dr.demo"), "{banner}");
    let tokens = patient_token(&demo).await;
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    let robot = admin_robot_token(&demo).await;
    let env: HashMap<&str, String> = HashMap::from([
        ("ACCESS_TOKEN", access),
        ("DEMO_EHR_SECRET", demo.ehr_secret()),
        ("TOKEN", robot),
    ]);
    let blocks = readme_curl_blocks();
    assert!(blocks.len() >= 3, "README lost its curl examples");
    for block in blocks {
        let script = block.replace("localhost:8080", &format!("localhost:{}", demo.port));
        let output = std::process::Command::new("bash")
            .arg("-euo")
            .arg("pipefail")
            .arg("-c")
            .arg(&script)
            .current_dir(demo.dir.path())
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env(
                "PATH",
                format!(
                    "{}:{}",
                    std::path::Path::new(WARD).parent().unwrap().display(),
                    std::env::var("PATH").unwrap_or_default()
                ),
            )
            .output()
            .expect("bash");
        assert!(
            output.status.success(),
            "README example failed:\n{script}\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let stdout = String::from_utf8_lossy(&output.stdout);
        if script.contains("token=not-a-token") {
            assert!(stdout.contains("\"active\":false"), "{stdout}");
        } else if script.contains("/introspect") {
            assert!(stdout.contains("\"active\":true"), "{stdout}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_mode_refuses_what_it_must() {
    let demo = Demo::start().await;
    let dir = demo.dir.path().to_owned();
    let first_secret = demo.ehr_secret();
    // Only loopback names are answered (a page rebinding its own domain gets nothing).
    let rebound = crate::common::http_client()
        .get(format!("{}/login", demo.process.base))
        .header("host", "attacker.example")
        .send()
        .await
        .unwrap();
    assert_eq!(rebound.status(), StatusCode::FORBIDDEN);
    // The mini-EHR is for clinicians: the patient user is turned away.
    let patient = Browser::new(&demo.public());
    patient
        .sign_in("pat.demo", "demo patient only: harbour lantern")
        .await;
    assert_eq!(patient.get("/demo/ehr").await.status, StatusCode::FORBIDDEN);
    demo.process.stop();
    // A restart keeps the demo, prints the banner again with a fresh EHR secret, and the old
    // one stops working.
    let again = WardProcess::spawn_with(&dir, &["--demo"], &[]).await;
    let banner = again.stdout();
    assert!(banner.contains("password:"), "{banner}");
    let second_secret = banner
        .split("secret: ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .to_owned();
    assert_ne!(first_secret, second_secret);
    let public = again.base.replace("127.0.0.1", "localhost");
    for (secret, status) in [(&first_secret, 401), (&second_secret, 200)] {
        let r = crate::common::http_client()
            .post(format!("{public}/introspect"))
            .basic_auth("demo-ehr", Some(secret))
            .form(&[("token", "x")])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), status);
    }
    drop(again);
    // Plain `ward serve` refuses the demo database: its passwords are published.
    let refused = WardProcess::try_spawn(
        &dir,
        &[(
            "WARD_DATABASE_URL".to_owned(),
            "sqlite://ward-demo.db".to_owned(),
        )],
    )
    .await
    .err()
    .expect("refused");
    assert!(
        refused.contains("seeded by `ward serve --demo`"),
        "{refused}"
    );

    // Demo mode refuses a database with real data, and a non-loopback address.
    let real = tempfile::tempdir().unwrap();
    let add = std::process::Command::new(WARD)
        .args(["user", "add", "someone", "--role", "nurse"])
        .env("WARD_DATABASE_URL", "sqlite://ward-demo.db")
        .current_dir(real.path())
        .output()
        .unwrap();
    assert!(
        add.status.success(),
        "{}",
        String::from_utf8_lossy(&add.stderr)
    );
    let refused = WardProcess::try_spawn_with(real.path(), &["--demo"], &[])
        .await
        .err()
        .expect("refused");
    assert!(refused.contains("needs an empty database"), "{refused}");
    let empty = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(WARD)
        .args([
            "serve",
            "--demo",
            "--listen",
            "0.0.0.0:0",
            "--behind-tls-proxy",
        ])
        .current_dir(empty.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("loopback only"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Without --demo the demo pages do not exist.
    let plain = tempfile::tempdir().unwrap();
    let server = WardProcess::spawn(plain.path(), &[]).await;
    let r = crate::common::http_client()
        .get(format!("{}/demo/app", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}
