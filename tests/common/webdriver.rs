//! Real headless Chromium through chromedriver's W3C WebDriver HTTP API (a few calls are all
//! the tests need, including the WebAuthn virtual-authenticator extension). Under `CI=true` a
//! missing browser fails the test; elsewhere the test is skipped with a printed reason.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

pub struct Chromium {
    driver: Child,
    http: reqwest::Client,
    base: String,
    session: String,
    _profile: tempfile::TempDir,
}

fn find_binary(candidates: &[&str]) -> Option<String> {
    candidates
        .iter()
        .find(|p| std::path::Path::new(p).exists())
        .map(|p| p.to_string())
}

impl Chromium {
    pub async fn start() -> Option<Self> {
        let driver_bin = find_binary(&["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]);
        let browser_bin = find_binary(&["/usr/bin/chromium", "/usr/lib/chromium/chromium"]);
        let (Some(driver_bin), Some(browser_bin)) = (driver_bin, browser_bin) else {
            if super::in_ci() {
                panic!("Chromium and chromedriver are required under CI=true (apt-get install chromium chromium-driver)");
            }
            eprintln!("SKIPPED: chromium/chromedriver not installed");
            return None;
        };
        let port = super::process::free_port();
        let driver = Command::new(driver_bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = http.get(format!("{base}/status")).send().await {
                if r.status().is_success() {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = tempfile::tempdir().expect("profile dir");
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": browser_bin,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--window-size=1000,1200",
                    format!("--user-data-dir={}", profile.path().display()),
                ]
            }
        }}});
        let created: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await
            .expect("new session")
            .json()
            .await
            .expect("session json");
        let session = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {created}"))
            .to_owned();
        Some(Self {
            driver,
            http,
            base,
            session,
            _profile: profile,
        })
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut request = self.http.request(method, url);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let value: Value = request
            .send()
            .await
            .expect("webdriver call")
            .json()
            .await
            .expect("webdriver json");
        if value["value"].get("error").is_some() {
            panic!("webdriver {path}: {value}");
        }
        value["value"].clone()
    }

    pub async fn goto(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await;
    }

    pub async fn url(&self) -> String {
        self.call(reqwest::Method::GET, "/url", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    pub async fn source(&self) -> String {
        self.call(reqwest::Method::GET, "/source", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Waits up to 30 s (a loaded machine) for an element matching the CSS selector.
    pub async fn find(&self, css: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let url = format!("{}/session/{}/element", self.base, self.session);
            let value: Value = self
                .http
                .post(url)
                .json(&json!({ "using": "css selector", "value": css }))
                .send()
                .await
                .expect("find")
                .json()
                .await
                .expect("find json");
            if let Some(id) = value["value"][ELEMENT].as_str() {
                return id.to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "no element {css} on {}",
                self.url().await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn type_into(&self, css: &str, text: &str) {
        let id = self.find(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{id}/value"),
            Some(json!({ "text": text })),
        )
        .await;
    }

    pub async fn click(&self, css: &str) {
        let id = self.find(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{id}/click"),
            Some(json!({})),
        )
        .await;
    }

    pub async fn value_of(&self, css: &str) -> String {
        let id = self.find(css).await;
        self.call(
            reqwest::Method::GET,
            &format!("/element/{id}/property/value"),
            None,
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_owned()
    }

    /// Waits until the page's URL path starts with `prefix`.
    pub async fn wait_for_path(&self, prefix: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let url = self.url().await;
            let path = url
                .splitn(4, '/')
                .nth(3)
                .map(|p| format!("/{p}"))
                .unwrap_or_default();
            if path.starts_with(prefix) {
                return;
            }
            if Instant::now() >= deadline {
                let source = self.source().await;
                let status = source
                    .split("id=\"passkey-status\"")
                    .nth(1)
                    .and_then(|s| s.split("</p>").next())
                    .unwrap_or("");
                panic!("still at {url}, expected {prefix}; status: {status}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Saves a PNG screenshot under `target/test-artifacts/`.
    pub async fn screenshot(&self, name: &str) {
        use base64::Engine;
        let data = self.call(reqwest::Method::GET, "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(data.as_str().unwrap_or_default())
            .expect("png");
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
        std::fs::create_dir_all(&dir).expect("artifact dir");
        std::fs::write(dir.join(format!("{name}.png")), png).expect("write screenshot");
    }

    /// A screenshot the README shows: saved like any other, and also to `docs/screenshots/`
    /// when `WARD_UPDATE_SCREENSHOTS=1` (so the committed pictures are regenerated on purpose,
    /// never as a side effect of running the tests).
    pub async fn screenshot_for_readme(&self, name: &str) {
        self.screenshot(name).await;
        if std::env::var("WARD_UPDATE_SCREENSHOTS").is_ok_and(|v| v == "1") {
            let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
            let dir = root.join("docs/screenshots");
            std::fs::create_dir_all(&dir).expect("screenshot dir");
            std::fs::copy(
                root.join(format!("target/test-artifacts/{name}.png")),
                dir.join(format!("{name}.png")),
            )
            .expect("copy screenshot");
        }
    }

    /// Adds a CTAP2 platform authenticator with resident keys and user verification
    /// (WebDriver WebAuthn extension); returns its id.
    pub async fn add_virtual_authenticator(&self) -> String {
        let value = self
            .call(
                reqwest::Method::POST,
                "/webauthn/authenticator",
                Some(json!({
                    "protocol": "ctap2", "transport": "internal", "hasResidentKey": true,
                    "hasUserVerification": true, "isUserVerified": true,
                    "isUserConsenting": true
                })),
            )
            .await;
        value.as_str().unwrap_or_default().to_owned()
    }

    pub async fn remove_virtual_authenticator(&self, authenticator: &str) {
        self.call(
            reqwest::Method::DELETE,
            &format!("/webauthn/authenticator/{authenticator}"),
            None,
        )
        .await;
    }

    /// Puts a copy of a credential (as returned by `credentials`) on an authenticator, with a
    /// chosen signature counter: a clone of the original key.
    pub async fn add_credential(&self, authenticator: &str, credential: &Value, sign_count: u32) {
        let mut copy = credential.clone();
        copy["signCount"] = json!(sign_count);
        self.call(
            reqwest::Method::POST,
            &format!("/webauthn/authenticator/{authenticator}/credential"),
            Some(copy),
        )
        .await;
    }

    pub async fn credentials(&self, authenticator: &str) -> Value {
        self.call(
            reqwest::Method::GET,
            &format!("/webauthn/authenticator/{authenticator}/credentials"),
            None,
        )
        .await
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let url = format!("{}/session/{}", self.base, self.session);
        // Best effort: ask chromedriver to close the browser, then stop chromedriver itself.
        let _ = std::thread::spawn(move || {
            let _ = std::process::Command::new("curl")
                .args(["-s", "-X", "DELETE", &url])
                .output();
        })
        .join();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
