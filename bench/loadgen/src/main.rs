//! `loadgen`: HTTP/1.1 keep-alive load against Ward, one JSON result line per scenario.
//!
//! Each scenario opens `--connections` connections, warms up for `--warmup` seconds, then
//! measures for `--seconds`: successful responses per second (`rps`), their p50 and p99
//! latency, and every unexpected answer as an error. Requests that need secrets or signatures
//! (client assertions, refresh tokens from a real sign-in and consent) are prepared before the
//! window, so the load generator's own crypto is not what gets measured. `bench/run` builds
//! Ward, seeds it through the `ward` CLI and calls every scenario; see its header.

mod browser;
mod crypto;
mod driver;
mod http;
mod report;
mod scenarios;

use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use serde_json::{json, Map, Value};

use crate::crypto::{Alg, AssertionSigner};
use crate::driver::{ms, round, CpuMeter, Group, Stats, Window};
use crate::http::{Conn, Req, Target};

#[derive(Debug, Parser)]
#[command(
    name = "loadgen",
    about = "HTTP/1.1 keep-alive load generator for Ward"
)]
struct Cli {
    #[command(flatten)]
    load: Load,
    #[command(subcommand)]
    command: Command,
}

/// Settings shared by every load scenario.
#[derive(Debug, Args)]
struct Load {
    /// Ward's public URL (its issuer); requests go to the address it resolves to (IPv4 first).
    #[arg(long, global = true, default_value = "http://localhost:8080")]
    base: String,
    /// Keep-alive connections.
    #[arg(long, global = true, default_value_t = 32)]
    connections: usize,
    /// Length of the measurement window.
    #[arg(long, global = true, default_value_t = 10.0)]
    seconds: f64,
    /// Load before the window starts, not counted.
    #[arg(long, global = true, default_value_t = 1.0)]
    warmup: f64,
    /// Ward's process id: adds its CPU use over the window (`server_cpu`) to the result line.
    #[arg(long, global = true)]
    server_pid: Option<u32>,
    /// A label copied into the result line as `tag` (bench/run uses the backend name).
    #[arg(long, global = true)]
    tag: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// A fixed GET, e.g. /healthz, /.well-known/smart-configuration, /jwks.
    Get { path: String },
    /// SMART Backend Services: client_credentials with a fresh signed assertion per request.
    ClientCredentials {
        #[command(flatten)]
        backend: Backend,
        /// Assertions signed before the run (default: enough for a typical rate over the
        /// warm-up and window); when they run out, requests are signed inline and the result
        /// line says `pool_exhausted`.
        #[arg(long)]
        pool: Option<usize>,
    },
    /// refresh_token grants (client_secret_basic); each connection rotates its own family,
    /// obtained by a real sign-in, consent and code exchange.
    Refresh {
        #[command(flatten)]
        app: AppArgs,
        #[command(flatten)]
        user: UserArgs,
    },
    /// Token introspection by a resource server (client_secret_basic).
    Introspect {
        #[command(flatten)]
        server: ResourceServer,
        /// The token to introspect (expected active).
        #[arg(long)]
        token: Option<String>,
        /// Introspect a forged token instead (expected `{"active":false}`): `--token` with a
        /// corrupted signature, or a random string when no token is given.
        #[arg(long)]
        invalid: bool,
    },
    /// A storm of password sign-ins (GET + POST /login). 429 and 503 count as shed, not as
    /// errors. Optionally probes introspection latency at the same time.
    LoginStorm {
        #[command(flatten)]
        user: UserArgs,
        /// A live token to introspect during the storm (needs --probe-client-id/-secret).
        #[arg(long)]
        probe_introspect_token: Option<String>,
        #[arg(long)]
        probe_client_id: Option<String>,
        #[arg(long)]
        probe_secret: Option<String>,
        /// Probe introspections per second (one connection; 0 = back to back).
        #[arg(long, default_value_t = 200.0)]
        probe_rate: f64,
        /// Retry a shed sign-in at once instead of waiting as `Retry-After` asks (a flood;
        /// the scenario is then called `login-flood`).
        #[arg(long)]
        ignore_retry_after: bool,
    },
    /// ES384 signature verifications per second with josekit on this core (no server).
    P384VerifyBound,
    /// Ward's argon2id password hashes per second on this core (no server).
    Argon2Bound,
    /// Writes rs384.private.json, es384.private.json and jwks.json (public) into a directory.
    Keygen {
        #[arg(long)]
        out_dir: PathBuf,
    },
    /// Prints one access token from a client_credentials grant (for introspection runs).
    Token {
        #[command(flatten)]
        backend: Backend,
    },
    /// Waits until a GET of PATH answers 200 (e.g. /readyz); fails after --timeout seconds.
    Wait {
        #[arg(default_value = "/readyz")]
        path: String,
        #[arg(long, default_value_t = 30.0)]
        timeout: f64,
    },
    /// Renders BENCHMARKS.md from a file of result lines.
    Report {
        /// The result lines (JSON, one per line).
        #[arg(long)]
        results: PathBuf,
        /// A `LABEL=VALUE` row of the machine table (repeatable).
        #[arg(long = "meta", value_name = "LABEL=VALUE")]
        meta: Vec<String>,
        /// Where to write the report.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, Args)]
struct Backend {
    #[arg(long, value_enum)]
    alg: Alg,
    #[arg(long)]
    client_id: String,
    /// The private JWK (JSON, with `kid`), as written by `loadgen keygen`.
    #[arg(long)]
    key: PathBuf,
    #[arg(long, default_value = "system/Observation.rs")]
    scope: String,
}

#[derive(Debug, Args)]
struct AppArgs {
    #[arg(long)]
    client_id: String,
    #[arg(long)]
    secret: String,
    /// A redirect URI registered for the app.
    #[arg(long, default_value = "https://127.0.0.1:9/callback")]
    redirect_uri: String,
    #[arg(long, default_value = "offline_access user/Observation.rs")]
    scope: String,
    /// The FHIR base URL Ward protects (the authorization request's `aud`).
    #[arg(long)]
    aud: String,
}

#[derive(Debug, Args)]
struct UserArgs {
    #[arg(long)]
    username: String,
    #[arg(long)]
    password: String,
}

#[derive(Debug, Args)]
struct ResourceServer {
    #[arg(long)]
    client_id: String,
    #[arg(long)]
    secret: String,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    // One thread: bench/run pins the load generator to one core.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    let line = local.block_on(&runtime, run(cli))?;
    if let Some(line) = line {
        println!("{line}");
    }
    Ok(())
}

async fn run(cli: Cli) -> Result<Option<Value>> {
    let load = &cli.load;
    let mut line = match cli.command {
        Command::Keygen { out_dir } => {
            crypto::keygen(&out_dir)?;
            return Ok(None);
        }
        Command::Report { results, meta, out } => {
            let results = report::Results::read(&results)?;
            let meta: Vec<(String, String)> = meta
                .iter()
                .map(|m| match m.split_once('=') {
                    Some((k, v)) => (k.to_owned(), v.to_owned()),
                    None => (m.clone(), String::new()),
                })
                .collect();
            std::fs::write(&out, report::render(&results, &meta))
                .with_context(|| format!("writing {}", out.display()))?;
            return Ok(None);
        }
        Command::Wait { path, timeout } => {
            wait_ready(&load.base, &path, timeout).await?;
            return Ok(None);
        }
        Command::P384VerifyBound => crypto::p384_verify_bound(load.seconds)?,
        Command::Argon2Bound => crypto::argon2_bound(load.seconds)?,
        Command::Token { backend } => {
            let target = Target::resolve(&load.base).await?;
            println!("{}", one_token(&target, &backend).await?);
            return Ok(None);
        }
        Command::Get { path } => get(load, &path).await?,
        Command::ClientCredentials { backend, pool } => {
            client_credentials(load, &backend, pool).await?
        }
        Command::Refresh { app, user } => refresh(load, app, user).await?,
        Command::Introspect {
            server,
            token,
            invalid,
        } => introspect(load, &server, token, invalid).await?,
        Command::LoginStorm {
            user,
            probe_introspect_token,
            probe_client_id,
            probe_secret,
            probe_rate,
            ignore_retry_after,
        } => {
            let probe = match (probe_introspect_token, probe_client_id, probe_secret) {
                (Some(t), Some(id), Some(secret)) => Some((t, id, secret)),
                (None, _, _) => None,
                _ => bail!("--probe-introspect-token needs --probe-client-id and --probe-secret"),
            };
            login_storm(load, user, probe, probe_rate, !ignore_retry_after).await?
        }
    };
    if let (Some(tag), Some(map)) = (&load.tag, line.as_object_mut()) {
        map.insert("tag".into(), json!(tag));
    }
    Ok(Some(line))
}

async fn wait_ready(base: &str, path: &str, timeout: f64) -> Result<()> {
    let target = Target::resolve(base).await?;
    let deadline = std::time::Instant::now() + Duration::from_secs_f64(timeout);
    loop {
        let last = match Conn::new(&target).send(&Req::get(path)).await {
            Ok(reply) if reply.status == 200 => return Ok(()),
            Ok(reply) => reply.summary(),
            Err(e) => format!("{e:#}"),
        };
        if std::time::Instant::now() >= deadline {
            bail!("{base}{path} not ready after {timeout} s: {last}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs one group of workers over a fresh window and returns its result line.
async fn measure<W: driver::Worker + 'static>(
    load: &Load,
    target: &Target,
    scenario: &str,
    workers: Vec<W>,
) -> (Map<String, Value>, Stats) {
    let window = Window::new(load.warmup, load.seconds);
    let cpu = CpuMeter::start(window, load.server_pid);
    let connections = workers.len();
    let stats = Group::spawn(target, window, workers, None).finish().await;
    let mut line = stats.summary(scenario, connections, &window);
    cpu.finish(&mut line).await;
    (line, stats)
}

async fn get(load: &Load, path: &str) -> Result<Value> {
    let target = Target::resolve(&load.base).await?;
    let workers = (0..load.connections)
        .map(|_| scenarios::Get {
            req: Req::get(path),
        })
        .collect();
    let (line, _) = measure(load, &target, &format!("get:{path}"), workers).await;
    Ok(Value::Object(line))
}

fn signer(target: &Target, backend: &Backend) -> Result<AssertionSigner> {
    AssertionSigner::from_file(
        &backend.key,
        backend.alg,
        &backend.client_id,
        &format!("{}/token", target.base),
    )
}

async fn client_credentials(load: &Load, backend: &Backend, pool: Option<usize>) -> Result<Value> {
    let target = Target::resolve(&load.base).await?;
    // A generous guess at what one Ward worker issues per second, so the pool lasts the run.
    let per_second = match backend.alg {
        Alg::Rs384 => 8000.0,
        Alg::Es384 => 2000.0,
    };
    let size = pool.unwrap_or(((load.seconds + load.warmup) * per_second) as usize);
    let pool = Rc::new(scenarios::AssertionPool::fill(
        signer(&target, backend)?,
        &backend.scope,
        size,
    )?);
    let workers = (0..load.connections)
        .map(|_| scenarios::ClientCredentials {
            pool: pool.clone(),
            next: None,
        })
        .collect();
    let scenario = format!("client-credentials:{}", backend.alg.name());
    let (mut line, _) = measure(load, &target, &scenario, workers).await;
    line.insert("pool".into(), json!(size));
    if pool.exhausted.get() {
        line.insert("pool_exhausted".into(), json!(true));
    }
    Ok(Value::Object(line))
}

async fn one_token(target: &Target, backend: &Backend) -> Result<String> {
    let pool = scenarios::AssertionPool::fill(signer(target, backend)?, &backend.scope, 0)?;
    let reply = Conn::new(target).send(&pool.request()?).await?;
    if reply.status != 200 {
        bail!("client_credentials refused: {}", reply.summary());
    }
    reply
        .json()
        .and_then(|b| b["access_token"].as_str().map(str::to_owned))
        .context("no access_token in the token response")
}

async fn refresh(load: &Load, app: AppArgs, user: UserArgs) -> Result<Value> {
    let target = Target::resolve(&load.base).await?;
    let app = Rc::new(browser::App {
        client_id: app.client_id,
        secret: app.secret,
        redirect_uri: app.redirect_uri,
        scope: app.scope,
        aud: app.aud,
    });
    let user = Rc::new(browser::User {
        username: user.username,
        password: user.password,
    });
    // One grant family per connection, each from its own sign-in and consent, before the run.
    let mut setup = Conn::new(&target);
    let mut workers = Vec::with_capacity(load.connections);
    for _ in 0..load.connections {
        let body = browser::launch(&mut setup, &app, &user).await?;
        let token = body["refresh_token"]
            .as_str()
            .context("no refresh_token: did the app ask for offline_access?")?;
        workers.push(scenarios::Refresh {
            app: app.clone(),
            user: user.clone(),
            token: Some(token.to_owned()),
            last_error: None,
        });
    }
    let (line, _) = measure(load, &target, "refresh", workers).await;
    Ok(Value::Object(line))
}

/// A token that fails verification: the given one with a signature byte changed (a forgery),
/// or random text when there is none.
fn forged(token: Option<&str>) -> String {
    let Some((input, signature)) = token.and_then(|t| t.rsplit_once('.')) else {
        return format!("bench-invalid-{}", crypto::random_token(32));
    };
    let mut chars: Vec<char> = signature.chars().collect();
    let middle = chars.len() / 2;
    if let Some(c) = chars.get_mut(middle) {
        *c = if *c == 'A' { 'B' } else { 'A' };
    }
    format!("{input}.{}", chars.into_iter().collect::<String>())
}

async fn introspect(
    load: &Load,
    server: &ResourceServer,
    token: Option<String>,
    invalid: bool,
) -> Result<Value> {
    let target = Target::resolve(&load.base).await?;
    let token = match (token, invalid) {
        (t, true) => forged(t.as_deref()),
        (Some(t), false) => t,
        (None, false) => bail!("--token is required unless --invalid"),
    };
    let req = Req::post_form("/introspect", &[("token", token.as_str())])
        .basic(&server.client_id, &server.secret);
    let workers = (0..load.connections)
        .map(|_| scenarios::Introspect {
            req: req.clone(),
            expect_active: !invalid,
        })
        .collect();
    let scenario = if invalid {
        "introspect:invalid"
    } else {
        "introspect:valid"
    };
    let (line, _) = measure(load, &target, scenario, workers).await;
    Ok(Value::Object(line))
}

async fn login_storm(
    load: &Load,
    user: UserArgs,
    probe: Option<(String, String, String)>,
    probe_rate: f64,
    honor_retry_after: bool,
) -> Result<Value> {
    let target = Target::resolve(&load.base).await?;
    let user = Rc::new(browser::User {
        username: user.username,
        password: user.password,
    });
    let window = Window::new(load.warmup, load.seconds);
    let cpu = CpuMeter::start(window, load.server_pid);
    let probe_group = probe.map(|(token, id, secret)| {
        let req = Req::post_form("/introspect", &[("token", token.as_str())]).basic(&id, &secret);
        let interval = (probe_rate > 0.0).then(|| Duration::from_secs_f64(1.0 / probe_rate));
        Group::spawn(
            &target,
            window,
            vec![scenarios::Introspect {
                req,
                expect_active: true,
            }],
            interval,
        )
    });
    let workers = (0..load.connections)
        .map(|_| scenarios::Login {
            user: user.clone(),
            honor_retry_after,
            pause: None,
        })
        .collect();
    let stats = Group::spawn(&target, window, workers, None).finish().await;
    let scenario = if honor_retry_after {
        "login-storm"
    } else {
        "login-flood"
    };
    let mut line = stats.summary(scenario, load.connections, &window);
    line.insert("shed".into(), json!(stats.shed.len()));
    line.insert("shed_p50_ms".into(), ms(&stats.shed, 50.0));
    line.insert("shed_p99_ms".into(), ms(&stats.shed, 99.0));
    if let Some(group) = probe_group {
        let probe = group.finish().await;
        line.insert(
            "probe_rps".into(),
            json!(round(probe.ok.len() as f64 / window.seconds(), 1)),
        );
        line.insert("probe_p50_ms".into(), ms(&probe.ok, 50.0));
        line.insert("probe_p99_ms".into(), ms(&probe.ok, 99.0));
        line.insert("probe_errors".into(), json!(probe.errors));
        if !probe.error_samples.is_empty() {
            line.insert("probe_error_samples".into(), json!(probe.error_samples));
        }
    }
    cpu.finish(&mut line).await;
    Ok(Value::Object(line))
}
