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
    spawn_key_refresh(state.clone());
    spawn_audit_linker(state.clone());
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
            ticker.tick().await;
            let keys = Arc::clone(&state.keys);
            let now = state.clock.now_secs();
            let result = state.db.run(move |conn| keys.reload(conn, now)).await;
            if let Err(e) = result {
                tracing::warn!(error = %e, "signing key reload failed; keeping the keys already loaded");
            }
        }
    });
}

/// Links new audit events into the tamper-evident chain about twice a second (on PostgreSQL one
/// node at a time; the others skip the round). The node remembers the head it saw: a chain
/// rewritten underneath is reported and not extended.
fn spawn_audit_linker(state: AppState) {
    actix_web::rt::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_millis(500));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_seen: Option<crate::audit::chain::Head> = None;
        loop {
            ticker.tick().await;
            let (sealer, seen, now_ms) = (
                state.sealer.clone(),
                last_seen.clone(),
                state.clock.now_millis(),
            );
            let result = state
                .db
                .run(move |conn| crate::audit::chain::link(conn, &sealer, now_ms, seen.as_ref()))
                .await;
            match result {
                Ok(head) => last_seen = head.or(last_seen),
                Err(crate::store::StoreError::Corrupt(problem)) => {
                    tracing::error!(%problem, "AUDIT CHAIN: not linking");
                    ticker = tokio::time::interval(Duration::from_secs(60));
                }
                Err(e) => tracing::warn!(error = %e, "linking the audit chain failed; will retry"),
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
