//! The real `ward` binary as a child process, for what only a process shows: exit codes,
//! files it creates, what it writes to its log, several nodes on one database.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

pub const WARD: &str = env!("CARGO_BIN_EXE_ward");

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Runs a `ward` subcommand to completion.
pub fn ward(dir: &Path, args: &[&str], env: &[(String, String)]) -> Output {
    Command::new(WARD)
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().cloned())
        .output()
        .expect("run ward")
}

pub struct WardProcess {
    pub child: Child,
    pub base: String,
    pub log_path: PathBuf,
}

impl WardProcess {
    /// Starts `ward serve` in `dir` on a free port and waits until it answers `/healthz`.
    pub async fn spawn(dir: &Path, env: &[(String, String)]) -> Self {
        Self::try_spawn(dir, env)
            .await
            .unwrap_or_else(|log| panic!("ward serve did not come up:\n{log}"))
    }

    pub async fn try_spawn(dir: &Path, env: &[(String, String)]) -> Result<Self, String> {
        Self::try_spawn_with(dir, &[], env).await
    }

    /// `ward serve ARGS…` (for example `--demo`); standard output goes to `ward-PORT.out`.
    pub async fn spawn_with(dir: &Path, args: &[&str], env: &[(String, String)]) -> Self {
        Self::try_spawn_with(dir, args, env)
            .await
            .unwrap_or_else(|log| panic!("ward serve did not come up:\n{log}"))
    }

    pub async fn try_spawn_with(
        dir: &Path,
        args: &[&str],
        env: &[(String, String)],
    ) -> Result<Self, String> {
        let port = free_port();
        let log_path = dir.join(format!("ward-{port}.log"));
        let log = std::fs::File::create(&log_path).expect("log file");
        let out = std::fs::File::create(dir.join(format!("ward-{port}.out"))).expect("out file");
        let child = Command::new(WARD)
            .arg("serve")
            .args(args)
            .current_dir(dir)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("WARD_LISTEN", format!("127.0.0.1:{port}"))
            .envs(env.iter().cloned())
            .stdout(out)
            .stderr(log)
            .spawn()
            .expect("spawn ward serve");
        let mut process = Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            log_path,
        };
        let client = super::http_client();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = process.child.try_wait() {
                return Err(process.log());
            }
            if let Ok(r) = client.get(format!("{}/healthz", process.base)).send().await {
                if r.status().is_success() {
                    return Ok(process);
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(process.log())
    }

    /// What the process printed on standard output.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.log_path.with_extension("out")).unwrap_or_default()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Stops the process and returns everything it logged.
    pub fn stop(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.log()
    }
}

impl Drop for WardProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
