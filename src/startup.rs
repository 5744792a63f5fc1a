//! Everything between "settings are valid" and "ready to serve": open the database, migrate,
//! resolve the master key, create signing keys on first start, load the key ring, and record
//! the start in the audit trail. The CLI uses the same steps, so `ward keys list` sees exactly
//! what `ward serve` would.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::app::AppState;
use crate::audit::{self, AuditContext, AuditEvent};
use crate::clock::{MonotonicClock, SharedClock};
use crate::config::{DatabaseTarget, Settings};
use crate::crypto::seal::{MasterKey, Sealer};
use crate::http::metrics::Metrics;
use crate::keys::{self, KeyError, KeyRing, KeyTiming};
use crate::store::{migrate, signing_keys, write_transaction, Db, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("{0}")]
    MasterKey(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error("{0}")]
    Server(String),
    /// Input that breaks a rule: one line per field.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<crate::clients::FieldError>),
}

/// What the operator should be told about the master key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MasterKeySource {
    Environment,
    File(PathBuf),
    /// Generated now, on SQLite, beside the database: warn that production should supply one.
    Generated(PathBuf),
}

pub fn open_db(settings: &Settings) -> Result<Db, StartError> {
    Ok(Db::open(
        &settings.database_target()?,
        settings.database.pool_size,
        Duration::from_secs(settings.database.connect_timeout_seconds),
    )?)
}

/// Applies pending migrations and records them in the audit trail.
pub fn migrate(
    db: &Db,
    clock: &SharedClock,
    ctx: &AuditContext,
) -> Result<Vec<String>, StartError> {
    let mut conn = db.conn()?;
    let applied = migrate::run_pending(&mut conn)?;
    if !applied.is_empty() {
        write_transaction(&mut conn, |conn| {
            audit::append(
                conn,
                clock.as_ref(),
                ctx,
                &AuditEvent::DatabaseMigrated {
                    versions: applied.clone(),
                },
            )
        })?;
    }
    Ok(applied)
}

/// The master key from `WARD_MASTER_KEY`, `keys.master_key_file`, or (SQLite only, on a
/// database that has nothing sealed yet) a new file beside the database with mode 0600.
pub fn resolve_master_key(
    settings: &Settings,
    db: &Db,
) -> Result<(MasterKey, MasterKeySource), StartError> {
    let bad = |what: String| StartError::MasterKey(what);
    match (&settings.master_key, &settings.keys.master_key_file) {
        (Some(_), Some(_)) => Err(bad(
            "both WARD_MASTER_KEY and keys.master_key_file (WARD_MASTER_KEY_FILE) are set; set exactly one".into(),
        )),
        (Some(secret), None) => MasterKey::from_base64(secret.expose())
            .map(|k| (k, MasterKeySource::Environment))
            .map_err(|e| bad(format!("WARD_MASTER_KEY: {e}"))),
        (None, Some(path)) => read_key_file(path).map(|k| (k, MasterKeySource::File(path.clone()))),
        (None, None) => match settings.database_target()? {
            DatabaseTarget::Postgres(_) => Err(bad(
                "PostgreSQL needs the master key supplied (WARD_MASTER_KEY or WARD_MASTER_KEY_FILE): every node must hold the same key, so Ward will not generate one".into(),
            )),
            DatabaseTarget::Sqlite(db_path) => {
                let path = default_key_path(&db_path);
                if path.exists() {
                    return read_key_file(&path).map(|k| (k, MasterKeySource::File(path)));
                }
                let mut conn = db.conn()?;
                if !signing_keys::all(&mut conn)?.is_empty() {
                    return Err(bad(format!(
                        "the database already holds sealed keys but the master key file {} is missing; restore it or set WARD_MASTER_KEY",
                        path.display()
                    )));
                }
                let key = MasterKey::generate();
                write_new_key_file(&path, &key)?;
                Ok((key, MasterKeySource::Generated(path)))
            }
        },
    }
}

/// The master keys used before a rotation, from `WARD_MASTER_KEY_PREVIOUS` and
/// `keys.master_key_previous_files`: they only open what they sealed and verify the audit-chain
/// links they made.
pub fn previous_master_keys(settings: &Settings) -> Result<Vec<MasterKey>, StartError> {
    let mut keys = Vec::new();
    for (i, secret) in settings.master_key_previous.iter().enumerate() {
        keys.push(MasterKey::from_base64(secret.expose()).map_err(|e| {
            StartError::MasterKey(format!("WARD_MASTER_KEY_PREVIOUS, key {}: {e}", i + 1))
        })?);
    }
    for path in &settings.keys.master_key_previous_files {
        keys.push(read_key_file(path)?);
    }
    Ok(keys)
}

/// The sealer over the current master key (see [`resolve_master_key`]) and the previous ones.
pub fn resolve_sealer(
    settings: &Settings,
    db: &Db,
) -> Result<(Sealer, MasterKeySource), StartError> {
    let (master, source) = resolve_master_key(settings, db)?;
    let previous = previous_master_keys(settings)?;
    Ok((Sealer::with_previous(&master, &previous), source))
}

/// `ward.db` → `ward.master-key`, in the same directory.
pub fn default_key_path(db_path: &Path) -> PathBuf {
    let stem = db_path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "ward".into());
    db_path.with_file_name(format!("{stem}.master-key"))
}

pub(crate) fn read_key_file(path: &Path) -> Result<MasterKey, StartError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        StartError::MasterKey(format!(
            "cannot read master key file {}: {e}",
            path.display()
        ))
    })?;
    MasterKey::from_base64(&text)
        .map_err(|e| StartError::MasterKey(format!("master key file {}: {e}", path.display())))
}

fn write_new_key_file(path: &Path, key: &MasterKey) -> Result<(), StartError> {
    let fail = |e: std::io::Error| {
        StartError::MasterKey(format!(
            "cannot create master key file {}: {e}",
            path.display()
        ))
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(fail)?;
    file.write_all(format!("{}\n", key.to_base64()).as_bytes())
        .map_err(fail)?;
    file.sync_all().map_err(fail)
}

pub fn key_timing(settings: &Settings) -> KeyTiming {
    KeyTiming {
        jwks_cache_seconds: i64::try_from(settings.keys.jwks_cache_seconds).unwrap_or(600),
        max_token_lifetime_seconds: i64::try_from(settings.tokens.max_lifetime_seconds)
            .unwrap_or(3600),
    }
}

/// Everything `ward serve` needs, prepared; the server binds and runs it.
pub struct Prepared {
    pub state: AppState,
    pub master_key_source: MasterKeySource,
    pub created_keys: Vec<String>,
    pub migrations: Vec<String>,
    /// Nobody can sign in yet: `serve` says how to create the first admin.
    pub no_users: bool,
}

pub fn login_policy(settings: &Settings) -> crate::authn::login::LoginPolicy {
    let l = &settings.login;
    let secs = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    crate::authn::login::LoginPolicy {
        throttle: crate::authn::throttle::Policy {
            free_attempts: secs(l.free_attempts),
            max_delay_seconds: secs(l.max_backoff_seconds),
        },
        throttle_enabled: !settings.danger.disable_login_throttle,
        lockout_threshold: secs(l.lockout_threshold),
        timeouts: crate::authn::session::Timeouts {
            idle_seconds: secs(l.idle_timeout_seconds),
            absolute_seconds: secs(l.session_lifetime_seconds),
        },
    }
}

fn password_hashing(settings: &Settings) -> crate::authn::password::PasswordHashing {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let concurrency = match settings.login.max_concurrent_hashes {
        0 => cores,
        n => usize::try_from(n).unwrap_or(cores),
    };
    crate::authn::password::PasswordHashing::new(
        concurrency,
        usize::try_from(settings.login.hash_queue_limit).unwrap_or(64),
    )
}

pub fn prepare(settings: Settings, clock: SharedClock) -> Result<Prepared, StartError> {
    // Expiry decisions read this one clock, and it never runs backwards (clock.rs).
    let clock: SharedClock = Arc::new(MonotonicClock::new(clock));
    let node = audit::node_name();
    let ctx = AuditContext::system(&node);
    let db = open_db(&settings)?;
    let migrations = migrate(&db, &clock, &ctx)?;
    let (master, master_key_source) = resolve_master_key(&settings, &db)?;
    let sealer = Sealer::with_previous(&master, &previous_master_keys(&settings)?);
    let timing = key_timing(&settings);
    let mut conn = db.conn()?;
    let created_keys = keys::ensure_initial_keys(&mut conn, &sealer, clock.as_ref(), &ctx)?;
    let ring = KeyRing::load(&mut conn, sealer.clone(), timing, clock.now_secs())?;
    let no_users = crate::store::users::list(
        &mut conn,
        None,
        crate::store::Page {
            limit: 1,
            offset: 0,
        },
    )?
    .is_empty();
    write_transaction(&mut conn, |conn| {
        audit::append(
            conn,
            clock.as_ref(),
            &ctx,
            &AuditEvent::ServerStarted {
                version: env!("CARGO_PKG_VERSION").into(),
                backend: db.backend().name().into(),
                listen: settings.server.listen.clone(),
                issuer: settings.issuer().unwrap_or_default(),
                tls: settings.tls_enabled(),
                behind_tls_proxy: settings.server.behind_tls_proxy,
                cluster: settings.server.cluster,
                danger_switches: settings
                    .danger_switches()
                    .into_iter()
                    .map(str::to_owned)
                    .collect(),
            },
        )
    })?;
    drop(conn);
    let metrics = Metrics::new().map_err(|e| StartError::Server(e.to_string()))?;
    let trusted_proxies = settings.trusted_proxies()?;
    let webauthn = crate::authn::passkeys::relying_party(&settings.public_url()?)
        .map_err(StartError::Server)?;
    let settings_issuer = settings.issuer()?;
    settings.fhir_bases()?;
    let fhir_bases = settings.fhir.base.clone();
    let client_key_fetcher = jwks_fetcher(&settings)?;
    let ehr_origins = settings.ehr_origins()?;
    let coherence = Arc::new(crate::coherence::Coherence::new());
    db.attach(coherence.clone());
    Ok(Prepared {
        state: AppState {
            db,
            coherence,
            keys: Arc::new(ring),
            clock,
            hashing: Arc::new(password_hashing(&settings)),
            login: login_policy(&settings),
            settings: Arc::new(settings),
            metrics: Arc::new(metrics),
            node,
            sealer,
            csrf_key: Arc::new(master.derive("ward/csrf/v1")),
            trusted_proxies: Arc::new(trusted_proxies),
            webauthn: Arc::new(webauthn),
            issuer: Arc::from(settings_issuer.as_str()),
            fhir_bases: Arc::new(fhir_bases),
            ehr_origins: Arc::new(ehr_origins),
            client_keys: Arc::new(crate::clients::jwks::JwksCache::new(client_key_fetcher)),
            admin_denials: Arc::default(),
            demo: None,
            discovery: Arc::new(crate::smart::discovery::Documents::new(&settings_issuer)),
        },
        master_key_source,
        created_keys,
        migrations,
        no_users,
    })
}

/// The fetcher for client JWKS URLs, with the `DANGER_` test switches applied.
pub fn jwks_fetcher(settings: &Settings) -> Result<crate::clients::jwks::JwksFetcher, StartError> {
    let extra_ca = match &settings.danger.extra_ca_file {
        Some(path) => Some(std::fs::read(path).map_err(|e| {
            StartError::Server(format!("danger.extra_ca_file {}: {e}", path.display()))
        })?),
        None => None,
    };
    crate::clients::jwks::JwksFetcher::new(
        extra_ca.as_deref(),
        settings.danger.allow_loopback_jwks_uri,
    )
    .map_err(|e| StartError::Server(e.to_string()))
}
