//! The test kit: `TestApp` (an in-process Ward on a free port, on SQLite or on a fresh
//! PostgreSQL database), `WardProcess` (the real `ward` binary as a child process) and
//! `PgDatabase` (a database created per test and dropped after).
#![allow(dead_code)]

pub mod admin;
pub mod browser;
pub mod https_server;
pub mod pg;
pub mod process;
pub mod proxy;
pub mod smart;
pub mod webdriver;

use std::net::TcpListener;
use std::sync::{Arc, Once};

use tempfile::TempDir;
use ward::app::AppState;
use ward::clock::{ManualClock, SharedClock, SystemClock};
use ward::config::{Settings, Sources};
use ward::crypto::seal::MasterKey;

pub use pg::PgDatabase;
pub use process::WardProcess;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Generates `mod <name> { sqlite, postgres }` tests that call `<name>(Backend)`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::common::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name($crate::common::Backend::Postgres).await
            }
        }
    )+};
}

/// rustls needs one process-wide crypto provider for reqwest's client.
pub fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        #[allow(deprecated)]
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Every test client announces itself, so audit events can be checked for the user agent.
pub const USER_AGENT: &str = "ward-test-kit/1";

pub fn http_client() -> reqwest::Client {
    install_crypto_provider();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(USER_AGENT)
        .build()
        .expect("http client")
}

/// Where a test's Ward keeps its data: a temp dir (SQLite) or a fresh PostgreSQL database.
pub struct Storage {
    pub dir: TempDir,
    pub database_url: String,
    pub pg: Option<PgDatabase>,
    /// Supplied for PostgreSQL (required there); SQLite generates its own file.
    pub master_key: Option<String>,
}

impl Storage {
    /// `None` when PostgreSQL is absent outside CI (the test is skipped with a printed reason).
    pub fn new(backend: Backend) -> Option<Self> {
        let dir = tempfile::tempdir().expect("tempdir");
        match backend {
            Backend::Sqlite => Some(Self {
                database_url: format!("sqlite://{}", dir.path().join("ward.db").display()),
                dir,
                pg: None,
                master_key: None,
            }),
            Backend::Postgres => {
                let pg = PgDatabase::create()?;
                Some(Self {
                    database_url: pg.url.clone(),
                    dir,
                    pg: Some(pg),
                    master_key: Some(MasterKey::generate().to_base64()),
                })
            }
        }
    }

    /// A direct connection pool to this storage, for assertions on what was (not) written.
    pub fn db(&self) -> ward::store::Db {
        let target = ward::config::DatabaseTarget::parse(&self.database_url).expect("url");
        ward::store::Db::open(&target, 2, std::time::Duration::from_secs(5)).expect("db")
    }

    /// Runs a `ward` subcommand against this storage: (exit code, stdout, stderr).
    pub fn ward(&self, args: &[&str], extra_env: &[(&str, &str)]) -> (i32, String, String) {
        let mut env = self.env();
        env.extend(
            extra_env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        let out = process::ward(self.dir.path(), args, &env);
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Runs a `ward` subcommand with `stdin` piped in: (exit code, stdout, stderr).
    pub fn ward_stdin(&self, args: &[&str], stdin: &str) -> (i32, String, String) {
        use std::io::Write;
        let mut child = std::process::Command::new(process::WARD)
            .args(args)
            .current_dir(self.dir.path())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.env())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn ward");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin.as_bytes())
            .expect("write stdin");
        let out = child.wait_with_output().expect("ward output");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Like `ward`, but the command must succeed; returns stdout parsed as JSON.
    pub fn ward_json(&self, args: &[&str], extra_env: &[(&str, &str)]) -> serde_json::Value {
        let (code, stdout, stderr) = self.ward(args, extra_env);
        assert_eq!(code, 0, "ward {args:?} failed: {stderr}");
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("ward {args:?}: {e}: {stdout}"))
    }

    /// The env-style settings pointing at this storage.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env = vec![("WARD_DATABASE_URL".to_string(), self.database_url.clone())];
        if let Some(key) = &self.master_key {
            env.push(("WARD_MASTER_KEY".into(), key.clone()));
        }
        env
    }
}

pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub state: AppState,
    pub storage: Arc<Storage>,
    pub manual_clock: Option<Arc<ManualClock>>,
    handle: actix_web::dev::ServerHandle,
}

pub struct TestAppBuilder {
    backend: Backend,
    env: Vec<(String, String)>,
    clock: Option<Arc<ManualClock>>,
    storage: Option<Arc<Storage>>,
}

impl TestApp {
    pub fn builder(backend: Backend) -> TestAppBuilder {
        TestAppBuilder {
            backend,
            env: Vec::new(),
            clock: None,
            storage: None,
        }
    }

    pub async fn start(backend: Backend) -> Option<Self> {
        Self::builder(backend).start().await
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request")
    }

    /// A synchronous connection to the same database, for assertions on stored state.
    pub fn conn(&self) -> r2d2::PooledConnection<ward::store::ConnectionManager> {
        self.state.db.conn().expect("db connection")
    }

    /// Waits until the alert sink has started its cursor: it starts at the newest event (history
    /// is not re-alerted), so an event written before that would never be sent.
    pub async fn alert_cursor_started(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while ward::store::meta::get(&mut self.conn(), "alerts.cursor")
            .unwrap()
            .is_none()
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the alert cursor never started"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    pub fn stop(&self) {
        // The stop command is sent when called; completion is not awaited.
        drop(self.handle.stop(false));
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.stop();
    }
}

impl TestAppBuilder {
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.into(), value.into()));
        self
    }

    pub fn manual_clock(mut self, clock: Arc<ManualClock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Reuse another app's storage (a restart, or a second node).
    pub fn storage(mut self, storage: Arc<Storage>) -> Self {
        self.storage = Some(storage);
        self
    }

    pub async fn start(self) -> Option<TestApp> {
        let storage = match self.storage {
            Some(s) => s,
            None => Arc::new(Storage::new(self.backend)?),
        };
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let tls = self.env.iter().any(|(k, _)| k == "WARD_TLS_CERT");
        let scheme = if tls { "https" } else { "http" };
        let mut env = storage.env();
        env.push(("WARD_LISTEN".into(), format!("127.0.0.1:{port}")));
        env.push((
            "WARD_PUBLIC_URL".into(),
            format!("{scheme}://localhost:{port}"),
        ));
        env.extend(self.env);
        let settings = Settings::load(&Sources {
            config_file: None,
            env,
            flags: Vec::new(),
        })
        .expect("test settings are valid");
        let clock: SharedClock = match &self.clock {
            Some(c) => c.clone(),
            None => Arc::new(SystemClock),
        };
        let prepared = tokio::task::spawn_blocking(move || ward::startup::prepare(settings, clock))
            .await
            .expect("join")
            .expect("Ward prepares");
        let state = prepared.state.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let server_state = state.clone();
        std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                match ward::server::start_on(server_state, listener) {
                    Ok(running) => {
                        let _ = tx.send(Ok(running.server.handle()));
                        let _ = running.server.await;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                    }
                }
            })
        });
        let handle = rx.recv().expect("server thread").expect("server starts");
        Some(TestApp {
            base: format!("{scheme}://localhost:{port}"),
            client: http_client(),
            state,
            storage,
            manual_clock: self.clock,
            handle,
        })
    }
}

/// True when running under CI, where missing services are failures, not skips.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}
