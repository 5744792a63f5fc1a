//! Binding and running the HTTP server: rustls with TLS 1.2 and 1.3 only when a certificate is
//! configured (DESIGN.md §10), plain HTTP otherwise (config validation has already refused
//! plain HTTP on a non-loopback address without a declared TLS proxy).

use std::fs::File;
use std::io::BufReader;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use actix_web::middleware::from_fn;
use actix_web::{App, HttpServer};

use crate::app::{configure, AppState};
use crate::http::middleware::observe;
use crate::startup::StartError;

pub struct RunningServer {
    pub server: actix_web::dev::Server,
    pub addrs: Vec<SocketAddr>,
}

/// Binds the configured address and starts serving. Call inside an actix system.
pub fn start(state: AppState) -> Result<RunningServer, StartError> {
    let listen = state.settings.listen_addr()?;
    let listener = std::net::TcpListener::bind(listen)
        .map_err(|e| StartError::Server(format!("cannot listen on {listen}: {e}")))?;
    start_on(state, listener)
}

/// Serves on an already-bound listener (tests bind port 0 first to learn the issuer URL) and
/// starts the background key-ring refresh. Call inside an actix system.
pub fn start_on(
    state: AppState,
    listener: std::net::TcpListener,
) -> Result<RunningServer, StartError> {
    let settings = Arc::clone(&state.settings);
    let listen = listener
        .local_addr()
        .map_err(|e| StartError::Server(e.to_string()))?;
    let app_state = state.clone();
    let mut http = HttpServer::new(move || {
        App::new()
            .wrap(from_fn(observe))
            .configure(configure(app_state.clone()))
    })
    .shutdown_timeout(5);
    if settings.server.workers > 0 {
        http = http.workers(settings.server.workers);
    }
    let http = match (&settings.tls.cert, &settings.tls.key) {
        (Some(cert), Some(key)) => http
            .listen_rustls_0_23(listener, tls_config(cert, key)?)
            .map_err(|e| StartError::Server(format!("cannot listen on {listen}: {e}")))?,
        _ => http
            .listen(listener)
            .map_err(|e| StartError::Server(format!("cannot listen on {listen}: {e}")))?,
    };
    let addrs = http.addrs();
    crate::coherence::spawn_listener(&state);
    spawn_key_refresh(state.clone());
    spawn_audit_linker(state.clone());
    spawn_alerts(state.clone());
    spawn_wal_checkpointer(state.clone());
    spawn_housekeeping(state);
    Ok(RunningServer {
        server: http.run(),
        addrs,
    })
}

/// Every node reloads the signing keys on a short period, so a rotation made anywhere (CLI or
/// another node) is published and used everywhere well before it may sign.
fn spawn_key_refresh(state: AppState) {
    let period = Duration::from_secs(state.settings.keys.refresh_seconds);
    actix_web::rt::spawn(async move {
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // A rotation anywhere arrives as a change (within a second); the period is the
            // fallback and also activates keys whose time has come.
            tokio::select! {
                _ = ticker.tick() => {}
                () = state.coherence.keys_changed.notified() => {}
            }
            let keys = Arc::clone(&state.keys);
            let now = state.clock.now_secs();
            let result = state.db.run(move |conn| keys.reload(conn, now)).await;
            if let Err(e) = result {
                tracing::warn!(error = %e, "signing key reload failed; keeping the keys already loaded");
            }
        }
    });
}

/// Links new audit events into the tamper-evident chain about ten times a second (on PostgreSQL
/// one node at a time; the others skip the round). Frequent rounds keep each one small: on SQLite
/// the linking shares the group-commit writer with the token endpoint (`chain::link_pending`).
/// The node remembers the head it saw: a chain rewritten underneath is reported and not extended.
fn spawn_audit_linker(state: AppState) {
    actix_web::rt::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_millis(100));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_seen: Option<crate::audit::chain::Head> = None;
        loop {
            ticker.tick().await;
            let now_ms = state.clock.now_millis();
            let result =
                crate::audit::chain::link_pending(&state.db, &state.sealer, now_ms, &mut last_seen)
                    .await;
            match result {
                Ok(_) => {}
                Err(crate::store::StoreError::Corrupt(problem)) => {
                    tracing::error!(%problem, "AUDIT CHAIN: not linking");
                    ticker = tokio::time::interval(Duration::from_secs(60));
                }
                Err(e) => tracing::warn!(error = %e, "linking the audit chain failed; will retry"),
            }
        }
    });
}

/// Raises security alerts (see `audit::alerts`): about once a second, claims the new
/// high-severity events, logs each as an alert line and queues it for the webhook.
fn spawn_alerts(state: AppState) {
    let sender = match (
        state.settings.alerts.webhook_url.clone(),
        state.settings.alerts_webhook_secret.clone(),
    ) {
        (Some(url), Some(secret)) => match webhook_client(&state) {
            Ok(client) => {
                let (tx, rx) = tokio::sync::mpsc::channel::<String>(1000);
                spawn_webhook_sender(client, url, secret, Arc::clone(&state.clock), rx);
                Some(tx)
            }
            Err(e) => {
                tracing::error!(error = %e, "alert webhook disabled: cannot build its HTTPS client");
                None
            }
        },
        _ => None,
    };
    actix_web::rt::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let claimed = state.db.run(crate::audit::alerts::claim).await;
            let rows = match claimed {
                Ok(rows) => rows,
                Err(e) => {
                    tracing::warn!(error = %e, "reading security alerts failed; will retry");
                    continue;
                }
            };
            for row in rows {
                tracing::warn!(
                    target: "ward::alert",
                    event_id = row.id,
                    action = %row.action,
                    outcome = %row.outcome,
                    actor_user = row.actor_user.as_deref().unwrap_or("-"),
                    actor_client = row.actor_client.as_deref().unwrap_or("-"),
                    patient = row.target_patient.as_deref().unwrap_or("-"),
                    source_ip = row.source_ip.as_deref().unwrap_or("-"),
                    "SECURITY ALERT"
                );
                if let Some(tx) = &sender {
                    let body = crate::audit::alerts::payload(
                        &state.issuer,
                        &crate::admin::event_view(&row),
                    );
                    if tx.try_send(body).is_err() {
                        tracing::error!(
                            event_id = row.id,
                            "alert webhook queue full: this alert is only logged"
                        );
                    }
                }
            }
        }
    });
}

/// HTTPS only, no redirects, no proxy, bounded time; trusts the public roots (and the DANGER
/// test CA when one is configured).
fn webhook_client(state: &AppState) -> Result<reqwest::Client, String> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = &state.settings.danger.extra_ca_file {
        let pem = std::fs::read(path).map_err(|e| e.to_string())?;
        for cert in rustls_pemfile::certs(&mut &pem[..]) {
            roots
                .add(cert.map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
        }
    }
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .https_only(true)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(5))
        .user_agent(concat!("Ward/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| e.to_string())
}

/// Delivers queued alerts one by one, retrying each with back-off before giving up (logged).
fn spawn_webhook_sender(
    client: reqwest::Client,
    url: String,
    secret: crate::config::Secret,
    clock: crate::clock::SharedClock,
    mut queue: tokio::sync::mpsc::Receiver<String>,
) {
    actix_web::rt::spawn(async move {
        while let Some(body) = queue.recv().await {
            let mut delivered = false;
            for (attempt, delay) in std::iter::once(0)
                .chain(crate::audit::alerts::RETRY_DELAYS_SECONDS)
                .enumerate()
            {
                tokio::time::sleep(Duration::from_secs(delay)).await;
                let signature = crate::audit::alerts::signature(
                    secret.expose().as_bytes(),
                    clock.now_secs(),
                    &body,
                );
                let sent = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .header("x-ward-signature", signature)
                    .body(body.clone())
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status().is_success() => {
                        delivered = true;
                        break;
                    }
                    Ok(r) => tracing::warn!(
                        attempt,
                        status = r.status().as_u16(),
                        "alert webhook refused; will retry"
                    ),
                    Err(e) => {
                        tracing::warn!(attempt, error = %e, "alert webhook unreachable; will retry")
                    }
                }
            }
            if !delivered {
                tracing::error!("alert webhook: giving up on one alert after retries (it stays in the log and the audit trail)");
            }
        }
    });
}

/// SQLite: checkpoints the write-ahead log about once a second (see `store::checkpoint_wal`).
fn spawn_wal_checkpointer(state: AppState) {
    if state.db.backend() != crate::store::Backend::Sqlite {
        return;
    }
    actix_web::rt::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            match state.db.run(crate::store::checkpoint_wal).await {
                Ok(Some(left)) if !left.complete() => tracing::debug!(
                    frames = left.frames,
                    copied = left.copied,
                    busy = left.busy,
                    "WAL checkpoint incomplete (a reader holds an older snapshot, or another checkpoint ran); will retry"
                ),
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "WAL checkpoint skipped; will retry"),
            }
        }
    });
}

/// Deletes expired rows in bounded batches every minute, off the request path. Each tick stops
/// after a few batches so a large backlog is worked off gradually instead of in one long burst.
fn spawn_housekeeping(state: AppState) {
    const BATCH: i64 = 500;
    const MAX_BATCHES_PER_TICK: usize = 10;
    actix_web::rt::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_secs(60));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let max_backoff =
                i64::try_from(state.settings.login.max_backoff_seconds).unwrap_or(900);
            for _ in 0..MAX_BATCHES_PER_TICK {
                let now = state.clock.now_secs();
                let result = state
                    .db
                    .run(move |conn| crate::housekeeping::sweep(conn, now, BATCH, max_backoff))
                    .await;
                match result {
                    Ok(swept) if swept.total() > 0 => {
                        tracing::debug!(?swept, "housekeeping removed expired rows");
                        if !swept.any_full(BATCH) {
                            break;
                        }
                    }
                    Ok(_) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "housekeeping failed; will retry");
                        break;
                    }
                }
            }
        }
    });
}

/// A rustls server configuration offering TLS 1.2 and 1.3 only.
pub fn tls_config(cert: &Path, key: &Path) -> Result<rustls::ServerConfig, StartError> {
    let fail = |what: String| StartError::Server(what);
    let mut cert_reader = BufReader::new(
        File::open(cert).map_err(|e| fail(format!("tls.cert {}: {e}", cert.display())))?,
    );
    let certs = rustls_pemfile::certs(&mut cert_reader)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(format!("tls.cert {}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(fail(format!(
            "tls.cert {}: no PEM certificate found",
            cert.display()
        )));
    }
    let mut key_reader = BufReader::new(
        File::open(key).map_err(|e| fail(format!("tls.key {}: {e}", key.display())))?,
    );
    let private_key = rustls_pemfile::private_key(&mut key_reader)
        .map_err(|e| fail(format!("tls.key {}: {e}", key.display())))?
        .ok_or_else(|| {
            fail(format!(
                "tls.key {}: no PEM private key found",
                key.display()
            ))
        })?;
    // ring rather than aws-lc-rs keeps the build free of a C toolchain dependency beyond cc;
    // the cost is no post-quantum hybrid key exchange (a TLS-terminating proxy can add it).
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| fail(format!("TLS setup: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, private_key)
        .map_err(|e| fail(format!("tls.cert/tls.key do not form a usable pair: {e}")))
}
