//! One typed `Settings`, read from `ward.toml`, then `WARD_*` environment variables, then
//! command-line flags (each later source wins), and validated before anything starts.
//!
//! The operator interface is DESIGN.md §11: every setting is listed once in [`SETTINGS`], which
//! drives the environment overlay, the flag overlay and the README's configuration reference
//! (a test keeps the README in step), so a name can never exist in one place and not another.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::Deserialize;
use url::Url;

/// A configuration problem, named by the setting it concerns so the operator knows what to fix.
#[derive(Debug, thiserror::Error)]
#[error("configuration error in `{setting}`: {problem}")]
pub struct ConfigError {
    pub setting: String,
    pub problem: String,
}

impl ConfigError {
    pub fn new(setting: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            setting: setting.into(),
            problem: problem.into(),
        }
    }
}

/// A value that must never be printed: `Debug` and `Display` show a placeholder.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub tls: TlsSettings,
    pub keys: KeySettings,
    pub tokens: TokenSettings,
    pub fhir: FhirSettings,
    pub log: LogSettings,
    pub metrics: MetricsSettings,
    pub clients: ClientSettingsConfig,
    pub login: LoginSettings,
    pub audit: AuditSettings,
    pub admin: AdminSettings,
    pub alerts: AlertSettings,
    /// Insecure switches for tests and development only; each is logged loudly at start.
    pub danger: DangerSettings,
    /// Only ever read from `WARD_MASTER_KEY`; a secret does not belong in a config file.
    #[serde(skip)]
    pub master_key: Option<Secret>,
    /// Only ever read from `WARD_MASTER_KEY_PREVIOUS` (comma-separated): master keys used
    /// before a rotation, kept to open what they sealed and to verify the audit chain they keyed.
    #[serde(skip)]
    pub master_key_previous: Vec<Secret>,
    /// Only ever read from `WARD_ALERTS_WEBHOOK_SECRET`: keys the webhook's HMAC signature.
    #[serde(skip)]
    pub alerts_webhook_secret: Option<Secret>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    pub listen: String,
    pub public_url: Option<String>,
    pub behind_tls_proxy: bool,
    pub trusted_proxies: Vec<String>,
    pub ehr_origins: Vec<String>,
    pub cluster: bool,
    pub max_body_bytes: usize,
    pub workers: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseSettings {
    pub url: String,
    pub pool_size: u32,
    pub connect_timeout_seconds: u64,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSettings {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeySettings {
    pub master_key_file: Option<PathBuf>,
    pub master_key_previous_files: Vec<PathBuf>,
    pub jwks_cache_seconds: u64,
    pub rotation_days: u64,
    pub refresh_seconds: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokenSettings {
    pub max_lifetime_seconds: u64,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FhirSettings {
    pub base: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    pub format: LogFormat,
    pub level: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSettings {
    pub open: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientSettingsConfig {
    pub secret_grace_seconds: u64,
}

impl Default for ClientSettingsConfig {
    fn default() -> Self {
        Self {
            secret_grace_seconds: 86_400,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoginSettings {
    pub idle_timeout_seconds: u64,
    pub session_lifetime_seconds: u64,
    pub free_attempts: u64,
    pub max_backoff_seconds: u64,
    pub lockout_threshold: u64,
    pub max_concurrent_hashes: u64,
    pub hash_queue_limit: u64,
}

impl Default for LoginSettings {
    fn default() -> Self {
        Self {
            idle_timeout_seconds: 900,
            session_lifetime_seconds: 43_200,
            free_attempts: 3,
            max_backoff_seconds: 900,
            lockout_threshold: 100,
            max_concurrent_hashes: 0,
            hash_queue_limit: 64,
        }
    }
}

/// Which introspections are audited (each is a disclosure to a resource server).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IntrospectionAudit {
    /// The first introspection of each token (and every one for AI-tool clients' tokens).
    #[default]
    First,
    /// Every introspection.
    All,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditSettings {
    pub introspection: IntrospectionAudit,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertSettings {
    /// HTTPS URL that receives high-severity security events (signed with HMAC-SHA-256).
    pub webhook_url: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSettings {
    /// How recent an admin's password + second factor must be for a sensitive action.
    pub reauth_seconds: u64,
    /// How long a one-time enrolment link stays usable.
    pub enrolment_link_seconds: u64,
}

impl Default for AdminSettings {
    fn default() -> Self {
        Self {
            reauth_seconds: 300,
            enrolment_link_seconds: 72 * 3600,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DangerSettings {
    pub allow_http_public_url: bool,
    pub allow_loopback_jwks_uri: bool,
    pub extra_ca_file: Option<PathBuf>,
    pub disable_login_throttle: bool,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            public_url: None,
            behind_tls_proxy: false,
            trusted_proxies: Vec::new(),
            ehr_origins: Vec::new(),
            cluster: false,
            max_body_bytes: 64 * 1024,
            workers: 0,
        }
    }
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: "sqlite://ward.db".into(),
            pool_size: 8,
            connect_timeout_seconds: 5,
        }
    }
}

impl Default for KeySettings {
    fn default() -> Self {
        Self {
            master_key_file: None,
            master_key_previous_files: Vec::new(),
            jwks_cache_seconds: 600,
            rotation_days: 90,
            refresh_seconds: 5,
        }
    }
}

impl Default for TokenSettings {
    fn default() -> Self {
        Self {
            max_lifetime_seconds: 3600,
        }
    }
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: LogFormat::Human,
            level: "info".into(),
        }
    }
}

/// How a setting's text (from the environment or a flag) becomes a TOML value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    Path,
    Bool,
    Integer,
    /// Comma-separated in the environment; a flag may be repeated.
    List,
}

/// One operator-facing setting: where it lives in `ward.toml`, its env variable and flag.
#[derive(Debug)]
pub struct SettingDoc {
    pub section: &'static str,
    pub key: &'static str,
    pub env: &'static str,
    pub flag: Option<&'static str>,
    pub kind: Kind,
    pub default: &'static str,
    pub doc: &'static str,
}

/// Every setting Ward reads. The env name is `WARD_` + the flag name (DESIGN.md §11).
pub const SETTINGS: &[SettingDoc] = &[
    SettingDoc { section: "server", key: "listen", env: "WARD_LISTEN", flag: Some("--listen"), kind: Kind::Text, default: "127.0.0.1:8080", doc: "Address and port to listen on. Plain HTTP is only allowed on a loopback address or behind a TLS-terminating proxy." },
    SettingDoc { section: "server", key: "public_url", env: "WARD_PUBLIC_URL", flag: Some("--public-url"), kind: Kind::Text, default: "http://localhost:PORT", doc: "The issuer URL clients and browsers use. Its host is the WebAuthn relying-party id, so use a name, not an IP address." },
    SettingDoc { section: "server", key: "behind_tls_proxy", env: "WARD_BEHIND_TLS_PROXY", flag: Some("--behind-tls-proxy"), kind: Kind::Bool, default: "false", doc: "Declare that a TLS-terminating proxy is in front, allowing plain HTTP on a non-loopback address." },
    SettingDoc { section: "server", key: "trusted_proxies", env: "WARD_TRUSTED_PROXIES", flag: Some("--trusted-proxy"), kind: Kind::List, default: "(none)", doc: "CIDRs of proxies whose X-Forwarded-For is believed when finding a client's IP." },
    SettingDoc { section: "server", key: "ehr_origins", env: "WARD_EHR_ORIGINS", flag: Some("--ehr-origin"), kind: Kind::List, default: "(none)", doc: "Origins (`https://ehr.example`) allowed to frame the launch pages (sign-in, patient picker, consent) for apps launched inside an EHR; every other page may not be framed." },
    SettingDoc { section: "server", key: "cluster", env: "WARD_CLUSTER", flag: Some("--cluster"), kind: Kind::Bool, default: "false", doc: "Several nodes share the database. Requires PostgreSQL." },
    SettingDoc { section: "server", key: "max_body_bytes", env: "WARD_MAX_BODY_BYTES", flag: None, kind: Kind::Integer, default: "65536", doc: "Largest request body accepted; larger requests get 413." },
    SettingDoc { section: "server", key: "workers", env: "WARD_WORKERS", flag: Some("--workers"), kind: Kind::Integer, default: "0 (one per core)", doc: "HTTP worker threads." },
    SettingDoc { section: "database", key: "url", env: "WARD_DATABASE_URL", flag: Some("--database-url"), kind: Kind::Text, default: "sqlite://ward.db", doc: "`sqlite://PATH` for the embedded database, `postgres://…` for PostgreSQL (production, several nodes)." },
    SettingDoc { section: "database", key: "pool_size", env: "WARD_DATABASE_POOL_SIZE", flag: None, kind: Kind::Integer, default: "8", doc: "Database connections per node." },
    SettingDoc { section: "database", key: "connect_timeout_seconds", env: "WARD_DATABASE_CONNECT_TIMEOUT_SECONDS", flag: None, kind: Kind::Integer, default: "5", doc: "How long a request waits for a database connection before answering 503." },
    SettingDoc { section: "tls", key: "cert", env: "WARD_TLS_CERT", flag: Some("--tls-cert"), kind: Kind::Path, default: "(off)", doc: "PEM certificate chain; with `key`, Ward serves HTTPS (TLS 1.2 and 1.3 only)." },
    SettingDoc { section: "tls", key: "key", env: "WARD_TLS_KEY", flag: Some("--tls-key"), kind: Kind::Path, default: "(off)", doc: "PEM private key for `cert`." },
    SettingDoc { section: "keys", key: "master_key_file", env: "WARD_MASTER_KEY_FILE", flag: None, kind: Kind::Path, default: "SQLite: generated beside the database; PostgreSQL: required", doc: "File holding the base64 32-byte master key that seals private keys and secrets. `WARD_MASTER_KEY` (env only) gives the key itself." },
    SettingDoc { section: "keys", key: "master_key_previous_files", env: "WARD_MASTER_KEY_PREVIOUS_FILES", flag: None, kind: Kind::List, default: "(none)", doc: "Files holding master keys used before a rotation (one base64 key each). They only open values they sealed and verify audit-chain links they made; everything new uses the current key. `WARD_MASTER_KEY_PREVIOUS` (env only) gives the keys themselves." },
    SettingDoc { section: "keys", key: "jwks_cache_seconds", env: "WARD_JWKS_CACHE_SECONDS", flag: None, kind: Kind::Integer, default: "600", doc: "JWKS `Cache-Control` max-age. A rotated key is published this long (plus one minute) before it signs." },
    SettingDoc { section: "keys", key: "rotation_days", env: "WARD_KEY_ROTATION_DAYS", flag: None, kind: Kind::Integer, default: "90", doc: "Signing-key age after which `ward keys list` flags a key as due for rotation." },
    SettingDoc { section: "keys", key: "refresh_seconds", env: "WARD_KEY_REFRESH_SECONDS", flag: None, kind: Kind::Integer, default: "5", doc: "How often each node reloads the signing keys from the database." },
    SettingDoc { section: "tokens", key: "max_lifetime_seconds", env: "WARD_TOKEN_MAX_LIFETIME_SECONDS", flag: None, kind: Kind::Integer, default: "3600", doc: "Upper bound on any signed token's lifetime; a retired signing key stays published this long." },
    SettingDoc { section: "fhir", key: "base", env: "WARD_FHIR_BASE", flag: Some("--fhir-base"), kind: Kind::List, default: "(none)", doc: "FHIR base URL(s) accepted as a token audience." },
    SettingDoc { section: "log", key: "format", env: "WARD_LOG_FORMAT", flag: None, kind: Kind::Text, default: "human", doc: "`human` or `json`." },
    SettingDoc { section: "log", key: "level", env: "WARD_LOG_LEVEL", flag: None, kind: Kind::Text, default: "info", doc: "A tracing filter such as `info` or `ward=debug,info`." },
    SettingDoc { section: "metrics", key: "open", env: "WARD_METRICS_OPEN", flag: None, kind: Kind::Bool, default: "false", doc: "Answer `/metrics` to non-loopback peers too." },
    SettingDoc { section: "clients", key: "secret_grace_seconds", env: "WARD_CLIENT_SECRET_GRACE_SECONDS", flag: None, kind: Kind::Integer, default: "86400", doc: "After `ward client rotate-secret`, how long the previous secret keeps working." },
    SettingDoc { section: "login", key: "idle_timeout_seconds", env: "WARD_LOGIN_IDLE_TIMEOUT_SECONDS", flag: None, kind: Kind::Integer, default: "900", doc: "Automatic logoff: a session unused this long ends." },
    SettingDoc { section: "login", key: "session_lifetime_seconds", env: "WARD_LOGIN_SESSION_LIFETIME_SECONDS", flag: None, kind: Kind::Integer, default: "43200", doc: "Absolute session lifetime, however active." },
    SettingDoc { section: "login", key: "free_attempts", env: "WARD_LOGIN_FREE_ATTEMPTS", flag: None, kind: Kind::Integer, default: "3", doc: "Failed attempts per (account, client IP) before back-off starts (then 1 s, 2 s, 4 s, …)." },
    SettingDoc { section: "login", key: "max_backoff_seconds", env: "WARD_LOGIN_MAX_BACKOFF_SECONDS", flag: None, kind: Kind::Integer, default: "900", doc: "Longest back-off between attempts." },
    SettingDoc { section: "login", key: "lockout_threshold", env: "WARD_LOGIN_LOCKOUT_THRESHOLD", flag: None, kind: Kind::Integer, default: "100", doc: "Consecutive failures (from anywhere) that lock an account until `ward user unlock`." },
    SettingDoc { section: "login", key: "max_concurrent_hashes", env: "WARD_LOGIN_MAX_CONCURRENT_HASHES", flag: None, kind: Kind::Integer, default: "0 (one per core)", doc: "Password hashes computed at once." },
    SettingDoc { section: "login", key: "hash_queue_limit", env: "WARD_LOGIN_HASH_QUEUE_LIMIT", flag: None, kind: Kind::Integer, default: "64", doc: "Password checks allowed to wait; beyond it logins get a quick 503." },
    SettingDoc { section: "audit", key: "introspection", env: "WARD_AUDIT_INTROSPECTION", flag: None, kind: Kind::Text, default: "first", doc: "Which introspections are audited: `first` (the first of each token; every one for AI-tool clients' tokens) or `all`." },
    SettingDoc { section: "admin", key: "reauth_seconds", env: "WARD_ADMIN_REAUTH_SECONDS", flag: None, kind: Kind::Integer, default: "300", doc: "Sensitive admin actions (creating an admin, rotating keys, revoking every token of a client) need a password and second factor at most this old; older sessions are asked to sign in again." },
    SettingDoc { section: "admin", key: "enrolment_link_seconds", env: "WARD_ADMIN_ENROLMENT_LINK_SECONDS", flag: None, kind: Kind::Integer, default: "259200", doc: "How long a one-time enrolment link (a new user sets their own password) stays usable." },
    SettingDoc { section: "alerts", key: "webhook_url", env: "WARD_ALERTS_WEBHOOK_URL", flag: None, kind: Kind::Text, default: "(none)", doc: "HTTPS URL that receives every high-severity security event (refresh-token reuse, assertion replay, passkey counter regression, lockouts, refused admin access, audit-chain failure, …) as a JSON POST signed in `X-Ward-Signature` with HMAC-SHA-256 under `WARD_ALERTS_WEBHOOK_SECRET` (env only). Retried with back-off; never delays a request. Alerts are always logged too." },
    SettingDoc { section: "danger", key: "allow_http_public_url", env: "WARD_DANGER_ALLOW_HTTP_PUBLIC_URL", flag: None, kind: Kind::Bool, default: "false", doc: "DANGER: accept an `http://` public URL on a non-loopback host (tests only)." },
    SettingDoc { section: "danger", key: "allow_loopback_jwks_uri", env: "WARD_DANGER_ALLOW_LOOPBACK_JWKS_URI", flag: None, kind: Kind::Bool, default: "false", doc: "DANGER: let client JWKS URLs point at loopback addresses (tests only)." },
    SettingDoc { section: "danger", key: "disable_login_throttle", env: "WARD_DANGER_DISABLE_LOGIN_THROTTLE", flag: None, kind: Kind::Bool, default: "false", doc: "DANGER: no back-off or lockout (benchmarks only)." },
    SettingDoc { section: "danger", key: "extra_ca_file", env: "WARD_DANGER_EXTRA_CA_FILE", flag: None, kind: Kind::Path, default: "(none)", doc: "DANGER: trust this extra PEM CA for client JWKS URLs (tests only)." },
];

/// Name a setting the way an operator meets it: `server.listen (WARD_LISTEN, --listen)`.
pub fn setting_name(section: &str, key: &str) -> String {
    match SETTINGS
        .iter()
        .find(|s| s.section == section && s.key == key)
    {
        Some(doc) => match doc.flag {
            Some(flag) => format!("{section}.{key} ({}, {flag})", doc.env),
            None => format!("{section}.{key} ({})", doc.env),
        },
        None => format!("{section}.{key}"),
    }
}

/// Where settings come from, in increasing priority after the file.
#[derive(Debug, Default, Clone)]
pub struct Sources {
    pub config_file: Option<PathBuf>,
    /// Environment variables (only `WARD_*` ones are read).
    pub env: Vec<(String, String)>,
    /// Flag overrides as (env name, value): the flag layer reuses the env parser.
    pub flags: Vec<(&'static str, String)>,
}

impl Sources {
    /// The process environment and an optional `--config` file (`WARD_CONFIG` otherwise).
    pub fn from_process(config_file: Option<PathBuf>) -> Self {
        let env: Vec<(String, String)> = std::env::vars()
            .filter(|(k, _)| k.starts_with("WARD_"))
            .collect();
        let config_file = config_file.or_else(|| {
            env.iter()
                .find(|(k, _)| k == "WARD_CONFIG")
                .map(|(_, v)| PathBuf::from(v))
        });
        Self {
            config_file,
            env,
            flags: Vec::new(),
        }
    }
}

impl Settings {
    /// Load and validate: file, then environment, then flags.
    pub fn load(sources: &Sources) -> Result<Self, ConfigError> {
        let mut table = match &sources.config_file {
            Some(path) => read_config_file(path)?,
            None => toml::Table::new(),
        };
        let mut master_key = None;
        let mut master_key_previous = Vec::new();
        let mut webhook_secret = None;
        for (name, value) in &sources.env {
            match name.as_str() {
                "WARD_CONFIG" => {}
                "WARD_MASTER_KEY" => master_key = Some(Secret::new(value.trim())),
                "WARD_MASTER_KEY_PREVIOUS" => {
                    master_key_previous = value
                        .split(',')
                        .map(str::trim)
                        .filter(|k| !k.is_empty())
                        .map(Secret::new)
                        .collect();
                }
                "WARD_ALERTS_WEBHOOK_SECRET" => webhook_secret = Some(Secret::new(value.trim())),
                _ => overlay(&mut table, name, value, false)?,
            }
        }
        for (name, value) in &sources.flags {
            overlay(&mut table, name, value, true)?;
        }
        let mut settings: Settings = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::new("configuration", e.to_string()))?;
        settings.master_key = master_key;
        settings.master_key_previous = master_key_previous;
        settings.alerts_webhook_secret = webhook_secret;
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let listen = self.listen_addr()?;
        self.public_url()?;
        let backend = self.database_target()?;
        if self.server.cluster && matches!(backend, DatabaseTarget::Sqlite(_)) {
            return Err(ConfigError::new(
                setting_name("server", "cluster"),
                "several nodes need a shared PostgreSQL database; SQLite is a single-node database file, so set a postgres:// database.url or turn cluster off",
            ));
        }
        match (&self.tls.cert, &self.tls.key) {
            (Some(_), None) => {
                return Err(ConfigError::new(
                    setting_name("tls", "key"),
                    "tls.cert is set but tls.key is missing",
                ))
            }
            (None, Some(_)) => {
                return Err(ConfigError::new(
                    setting_name("tls", "cert"),
                    "tls.key is set but tls.cert is missing",
                ))
            }
            (Some(cert), Some(key)) => {
                require_file("tls", "cert", cert)?;
                require_file("tls", "key", key)?;
            }
            (None, None) => {
                if !listen.ip().is_loopback() && !self.server.behind_tls_proxy {
                    return Err(ConfigError::new(
                        setting_name("server", "listen"),
                        format!("{listen} is not a loopback address and no TLS certificate is configured; set tls.cert and tls.key, or declare server.behind_tls_proxy when a TLS-terminating proxy is in front"),
                    ));
                }
            }
        }
        self.trusted_proxies()?;
        self.fhir_bases()?;
        self.ehr_origins()?;
        if !(1024..=16 * 1024 * 1024).contains(&self.server.max_body_bytes) {
            return Err(ConfigError::new(
                setting_name("server", "max_body_bytes"),
                "must be between 1024 and 16777216",
            ));
        }
        if !(1..=256).contains(&self.database.pool_size) {
            return Err(ConfigError::new(
                setting_name("database", "pool_size"),
                "must be between 1 and 256",
            ));
        }
        if self.database.connect_timeout_seconds == 0 {
            return Err(ConfigError::new(
                setting_name("database", "connect_timeout_seconds"),
                "must be at least 1",
            ));
        }
        if self.keys.refresh_seconds == 0 || self.keys.refresh_seconds > 60 {
            return Err(ConfigError::new(
                setting_name("keys", "refresh_seconds"),
                "must be between 1 and 60",
            ));
        }
        if self.keys.jwks_cache_seconds > 86_400 {
            return Err(ConfigError::new(
                setting_name("keys", "jwks_cache_seconds"),
                "must be at most 86400 (one day)",
            ));
        }
        if !(60..=86_400).contains(&self.tokens.max_lifetime_seconds) {
            return Err(ConfigError::new(
                setting_name("tokens", "max_lifetime_seconds"),
                "must be between 60 and 86400",
            ));
        }
        if self.server.workers > 512 {
            return Err(ConfigError::new(
                setting_name("server", "workers"),
                "must be at most 512",
            ));
        }
        if let Some(ca) = &self.danger.extra_ca_file {
            require_file("danger", "extra_ca_file", ca)?;
        }
        if let Some(url) = &self.alerts.webhook_url {
            let ok =
                url::Url::parse(url).is_ok_and(|u| u.scheme() == "https" && u.host().is_some());
            if !ok {
                return Err(ConfigError::new(
                    setting_name("alerts", "webhook_url"),
                    "must be an https:// URL",
                ));
            }
            if self
                .alerts_webhook_secret
                .as_ref()
                .is_none_or(|s| s.expose().len() < 16)
            {
                return Err(ConfigError::new(
                    "WARD_ALERTS_WEBHOOK_SECRET",
                    "must be set (at least 16 characters) when alerts.webhook_url is",
                ));
            }
        }
        if !(30..=3600).contains(&self.admin.reauth_seconds) {
            return Err(ConfigError::new(
                setting_name("admin", "reauth_seconds"),
                "must be between 30 and 3600",
            ));
        }
        if !(300..=30 * 86_400).contains(&self.admin.enrolment_link_seconds) {
            return Err(ConfigError::new(
                setting_name("admin", "enrolment_link_seconds"),
                "must be between 300 and 2592000 (30 days)",
            ));
        }
        let login = &self.login;
        if !(60..=86_400).contains(&login.idle_timeout_seconds) {
            return Err(ConfigError::new(
                setting_name("login", "idle_timeout_seconds"),
                "must be between 60 and 86400",
            ));
        }
        if !(login.idle_timeout_seconds..=7 * 86_400).contains(&login.session_lifetime_seconds) {
            return Err(ConfigError::new(
                setting_name("login", "session_lifetime_seconds"),
                "must be at least the idle timeout and at most 7 days",
            ));
        }
        if !(1..=1000).contains(&login.lockout_threshold) {
            return Err(ConfigError::new(
                setting_name("login", "lockout_threshold"),
                "must be between 1 and 1000 (NIST SP 800-63B: at most 100)",
            ));
        }
        if login.free_attempts > login.lockout_threshold {
            return Err(ConfigError::new(
                setting_name("login", "free_attempts"),
                "must not exceed login.lockout_threshold",
            ));
        }
        if !(1..=86_400).contains(&login.max_backoff_seconds) {
            return Err(ConfigError::new(
                setting_name("login", "max_backoff_seconds"),
                "must be between 1 and 86400",
            ));
        }
        if login.max_concurrent_hashes > 256 || login.hash_queue_limit > 100_000 {
            return Err(ConfigError::new(setting_name("login", "hash_queue_limit"), "login.max_concurrent_hashes must be at most 256 and login.hash_queue_limit at most 100000"));
        }
        if self.clients.secret_grace_seconds > 30 * 86_400 {
            return Err(ConfigError::new(
                setting_name("clients", "secret_grace_seconds"),
                "must be at most 2592000 (30 days)",
            ));
        }
        tracing_subscriber::EnvFilter::try_new(&self.log.level)
            .map_err(|e| ConfigError::new(setting_name("log", "level"), e.to_string()))?;
        if let Some(key) = &self.master_key {
            crate::crypto::seal::MasterKey::from_base64(key.expose())
                .map_err(|e| ConfigError::new("WARD_MASTER_KEY", e.to_string()))?;
        }
        for (i, key) in self.master_key_previous.iter().enumerate() {
            crate::crypto::seal::MasterKey::from_base64(key.expose()).map_err(|e| {
                ConfigError::new(
                    "WARD_MASTER_KEY_PREVIOUS",
                    format!("key {} of the list: {e}", i + 1),
                )
            })?;
        }
        Ok(())
    }

    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.server.listen.parse().map_err(|_| {
            ConfigError::new(
                setting_name("server", "listen"),
                format!(
                    "`{}` is not an address and port such as 127.0.0.1:8080",
                    self.server.listen
                ),
            )
        })
    }

    /// The issuer: the configured public URL, or `http://localhost:PORT` for local use.
    pub fn public_url(&self) -> Result<Url, ConfigError> {
        let name = || setting_name("server", "public_url");
        let raw = match &self.server.public_url {
            Some(raw) => raw.clone(),
            None => format!("http://localhost:{}", self.listen_addr()?.port()),
        };
        let url = Url::parse(&raw)
            .map_err(|e| ConfigError::new(name(), format!("`{raw}` is not a URL: {e}")))?;
        if url.query().is_some() || url.fragment().is_some() {
            return Err(ConfigError::new(
                name(),
                "an issuer URL has no query or fragment",
            ));
        }
        match url.scheme() {
            "https" => {}
            "http" if is_loopback_host(&url) || self.danger.allow_http_public_url => {}
            "http" => {
                return Err(ConfigError::new(
                    name(),
                    "must use https unless its host is localhost or a loopback address",
                ))
            }
            other => {
                return Err(ConfigError::new(
                    name(),
                    format!("unsupported scheme `{other}`; use https"),
                ))
            }
        }
        Ok(url)
    }

    /// The issuer without a trailing slash, exactly as it appears in tokens and discovery.
    pub fn issuer(&self) -> Result<String, ConfigError> {
        Ok(self.public_url()?.as_str().trim_end_matches('/').to_owned())
    }

    pub fn database_target(&self) -> Result<DatabaseTarget, ConfigError> {
        DatabaseTarget::parse(&self.database.url)
            .map_err(|problem| ConfigError::new(setting_name("database", "url"), problem))
    }

    pub fn trusted_proxies(&self) -> Result<Vec<IpNet>, ConfigError> {
        self.server
            .trusted_proxies
            .iter()
            .map(|raw| {
                raw.parse::<IpNet>()
                    .or_else(|_| raw.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        ConfigError::new(
                            setting_name("server", "trusted_proxies"),
                            format!("`{raw}` is not an IP address or CIDR such as 10.0.0.0/8"),
                        )
                    })
            })
            .collect()
    }

    /// EHR origins that may frame the launch pages, each `scheme://host[:port]` exactly.
    pub fn ehr_origins(&self) -> Result<Vec<String>, ConfigError> {
        self.server
            .ehr_origins
            .iter()
            .map(|raw| {
                let problem =
                    |p: String| ConfigError::new(setting_name("server", "ehr_origins"), p);
                let url =
                    Url::parse(raw).map_err(|e| problem(format!("`{raw}` is not a URL: {e}")))?;
                let origin = url.origin().ascii_serialization();
                if !matches!(url.scheme(), "https" | "http") || origin != raw.trim_end_matches('/')
                {
                    return Err(problem(format!(
                        "`{raw}` must be an origin such as https://ehr.example (no path)"
                    )));
                }
                Ok(origin)
            })
            .collect()
    }

    pub fn fhir_bases(&self) -> Result<Vec<Url>, ConfigError> {
        self.fhir
            .base
            .iter()
            .map(|raw| {
                let problem = |p: String| ConfigError::new(setting_name("fhir", "base"), p);
                let url =
                    Url::parse(raw).map_err(|e| problem(format!("`{raw}` is not a URL: {e}")))?;
                let scheme_ok = url.scheme() == "https"
                    || (url.scheme() == "http"
                        && (is_loopback_host(&url) || self.danger.allow_http_public_url));
                if !scheme_ok {
                    return Err(problem(format!(
                        "`{raw}` must use https (http only on a loopback host)"
                    )));
                }
                if url.query().is_some() || url.fragment().is_some() {
                    return Err(problem(format!(
                        "`{raw}` must not have a query or fragment"
                    )));
                }
                Ok(url)
            })
            .collect()
    }

    pub fn tls_enabled(&self) -> bool {
        self.tls.cert.is_some() && self.tls.key.is_some()
    }

    /// Whether browsers reach Ward over HTTPS (directly or through a declared proxy).
    pub fn served_over_https(&self) -> bool {
        self.tls_enabled()
            || self.server.behind_tls_proxy
            || self
                .public_url()
                .map(|u| u.scheme() == "https")
                .unwrap_or(false)
    }

    /// The insecure switches that are on, for a loud warning at start.
    pub fn danger_switches(&self) -> Vec<&'static str> {
        let mut on = Vec::new();
        if self.danger.allow_http_public_url {
            on.push("danger.allow_http_public_url");
        }
        if self.danger.allow_loopback_jwks_uri {
            on.push("danger.allow_loopback_jwks_uri");
        }
        if self.danger.extra_ca_file.is_some() {
            on.push("danger.extra_ca_file");
        }
        if self.danger.disable_login_throttle {
            on.push("danger.disable_login_throttle");
        }
        on
    }
}

/// The database a URL names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseTarget {
    Sqlite(PathBuf),
    Postgres(String),
}

impl DatabaseTarget {
    pub fn parse(url: &str) -> Result<Self, String> {
        if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err("a sqlite:// URL needs a file path, such as sqlite://ward.db".into());
            }
            if path.contains('?') {
                return Err("sqlite:// URLs take no options; Ward sets its own PRAGMAs".into());
            }
            Ok(Self::Sqlite(PathBuf::from(path)))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Url::parse(url).map_err(|e| format!("not a valid PostgreSQL URL: {e}"))?;
            Ok(Self::Postgres(url.to_owned()))
        } else {
            Err("must start with sqlite:// or postgres://".into())
        }
    }

    pub fn backend_name(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => "sqlite",
            Self::Postgres(_) => "postgres",
        }
    }
}

fn is_loopback_host(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

fn require_file(section: &str, key: &str, path: &Path) -> Result<(), ConfigError> {
    if path.is_file() {
        Ok(())
    } else {
        Err(ConfigError::new(
            setting_name(section, key),
            format!("`{}` is not a readable file", path.display()),
        ))
    }
}

fn read_config_file(path: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::new(
            "config file (WARD_CONFIG, --config)",
            format!("cannot read `{}`: {e}", path.display()),
        )
    })?;
    text.parse::<toml::Table>()
        .map_err(|e| ConfigError::new(format!("config file `{}`", path.display()), e.to_string()))
}

/// Put one env-style `name=value` into the TOML table at its section and key.
fn overlay(
    table: &mut toml::Table,
    name: &str,
    raw: &str,
    from_flag: bool,
) -> Result<(), ConfigError> {
    let Some(doc) = SETTINGS.iter().find(|s| s.env == name) else {
        return Err(ConfigError::new(
            name,
            "unknown setting; see the configuration reference in README.md",
        ));
    };
    let problem = |p: &str| {
        ConfigError::new(
            setting_name(doc.section, doc.key),
            format!("{p}, got `{raw}`"),
        )
    };
    let value = match doc.kind {
        Kind::Text | Kind::Path => toml::Value::String(raw.to_owned()),
        Kind::Bool => match raw.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => toml::Value::Boolean(true),
            "false" | "0" | "no" | "off" => toml::Value::Boolean(false),
            _ => return Err(problem("expected true or false")),
        },
        Kind::Integer => toml::Value::Integer(
            raw.trim()
                .parse::<i64>()
                .ok()
                .filter(|n| *n >= 0)
                .ok_or_else(|| problem("expected a non-negative whole number"))?,
        ),
        Kind::List => {
            let items = raw
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.to_owned()));
            let section = table
                .get(doc.section)
                .and_then(|s| s.get(doc.key))
                .and_then(|v| v.as_array())
                .cloned();
            // A repeated flag adds to the list; the environment replaces the file's list.
            match (from_flag, section) {
                (true, Some(mut existing)) => {
                    existing.extend(items);
                    toml::Value::Array(existing)
                }
                _ => toml::Value::Array(items.collect()),
            }
        }
    };
    let section = table
        .entry(doc.section)
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    match section {
        toml::Value::Table(t) => {
            t.insert(doc.key.to_owned(), value);
            Ok(())
        }
        _ => Err(ConfigError::new(
            doc.section,
            "must be a table in the config file",
        )),
    }
}

/// The README's configuration reference, generated from [`SETTINGS`].
pub fn reference_markdown() -> String {
    let mut out = String::from(
        "| `ward.toml` | environment | flag | default | meaning |\n|---|---|---|---|---|\n",
    );
    for s in SETTINGS {
        out.push_str(&format!(
            "| `[{}] {}` | `{}` | {} | {} | {} |\n",
            s.section,
            s.key,
            s.env,
            s.flag
                .map(|f| format!("`{f}`"))
                .unwrap_or_else(|| "—".into()),
            s.default,
            s.doc
        ));
    }
    out.push_str(
        "| — | `WARD_MASTER_KEY` | — | — | The master key itself (base64, 32 bytes). Env only. |\n",
    );
    out.push_str(
        "| — | `WARD_MASTER_KEY_PREVIOUS` | — | (none) | Master keys used before a rotation (base64, comma-separated): they open what they sealed and verify the audit-chain links they made. Env only. |\n",
    );
    out.push_str("| — | `WARD_CONFIG` | `--config` | none | Path of `ward.toml`. |\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(env: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        Settings::load(&Sources {
            config_file: None,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            flags: Vec::new(),
        })
    }

    #[test]
    fn defaults_are_local_sqlite_on_loopback() {
        let s = load(&[]).expect("defaults load");
        assert_eq!(s.listen_addr().ok(), "127.0.0.1:8080".parse().ok());
        assert_eq!(s.issuer().ok().as_deref(), Some("http://localhost:8080"));
        assert_eq!(
            s.database_target().ok(),
            Some(DatabaseTarget::Sqlite("ward.db".into()))
        );
    }

    #[test]
    fn env_overrides_and_parses_types() {
        let s = load(&[
            ("WARD_LISTEN", "127.0.0.1:9999"),
            (
                "WARD_FHIR_BASE",
                "https://ehr.example/fhir, https://lab.example/r4",
            ),
            ("WARD_METRICS_OPEN", "true"),
            ("WARD_DATABASE_POOL_SIZE", "3"),
        ])
        .expect("loads");
        assert_eq!(s.server.listen, "127.0.0.1:9999");
        assert_eq!(s.fhir.base.len(), 2);
        assert!(s.metrics.open);
        assert_eq!(s.database.pool_size, 3);
        assert_eq!(s.issuer().ok().as_deref(), Some("http://localhost:9999"));
    }

    #[test]
    fn flags_win_over_env_and_repeat_lists() {
        let s = Settings::load(&Sources {
            config_file: None,
            env: vec![("WARD_LISTEN".into(), "127.0.0.1:1".into())],
            flags: vec![
                ("WARD_LISTEN", "127.0.0.1:2".into()),
                ("WARD_TRUSTED_PROXIES", "10.0.0.0/8".into()),
                ("WARD_TRUSTED_PROXIES", "192.168.1.1".into()),
            ],
        })
        .expect("loads");
        assert_eq!(s.server.listen, "127.0.0.1:2");
        assert_eq!(s.trusted_proxies().map(|v| v.len()).ok(), Some(2));
    }

    #[test]
    fn previous_master_keys_come_from_the_environment_only_and_stay_redacted() {
        let (a, b) = (
            crate::crypto::seal::MasterKey::generate().to_base64(),
            crate::crypto::seal::MasterKey::generate().to_base64(),
        );
        let s = load(&[("WARD_MASTER_KEY_PREVIOUS", &format!("{a}, {b},"))]).expect("loads");
        assert_eq!(s.master_key_previous.len(), 2);
        assert_eq!(s.master_key_previous[1].expose(), b);
        assert!(!format!("{s:?}").contains(&a));
        let s =
            load(&[("WARD_MASTER_KEY_PREVIOUS_FILES", "/keys/old-1, /keys/old-2")]).expect("loads");
        assert_eq!(s.keys.master_key_previous_files.len(), 2);
    }

    #[test]
    fn rejects_bad_values_naming_the_setting() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("WARD_CLUSTER", "maybe")], "server.cluster"),
            (&[("WARD_LISTEN", "localhost")], "server.listen"),
            (&[("WARD_LISTEN", "0.0.0.0:8080")], "server.listen"),
            (&[("WARD_DATABASE_URL", "mysql://x")], "database.url"),
            (&[("WARD_CLUSTER", "true")], "server.cluster"),
            (
                &[("WARD_PUBLIC_URL", "http://ward.example")],
                "server.public_url",
            ),
            (
                &[("WARD_PUBLIC_URL", "https://ward.example/?x=1")],
                "server.public_url",
            ),
            (
                &[("WARD_FHIR_BASE", "http://ehr.example/fhir")],
                "fhir.base",
            ),
            (
                &[("WARD_TRUSTED_PROXIES", "not-an-ip")],
                "server.trusted_proxies",
            ),
            (&[("WARD_TLS_CERT", "/nonexistent.pem")], "tls.key"),
            (&[("WARD_MAX_BODY_BYTES", "-5")], "server.max_body_bytes"),
            (&[("WARD_MAX_BODY_BYTES", "10")], "server.max_body_bytes"),
            (&[("WARD_LOG_FORMAT", "xml")], "format"),
            (&[("WARD_MASTER_KEY", "c2hvcnQ=")], "WARD_MASTER_KEY"),
            (
                &[("WARD_MASTER_KEY_PREVIOUS", "c2hvcnQ=")],
                "WARD_MASTER_KEY_PREVIOUS",
            ),
            (&[("WARD_NO_SUCH_THING", "1")], "WARD_NO_SUCH_THING"),
        ];
        for (env, expected) in cases {
            let err = load(env).expect_err("must be refused");
            assert!(
                err.to_string().contains(expected),
                "{env:?}: `{err}` should name {expected}"
            );
        }
    }

    #[test]
    fn non_loopback_listen_is_allowed_behind_a_declared_tls_proxy() {
        let s = load(&[
            ("WARD_LISTEN", "0.0.0.0:8080"),
            ("WARD_BEHIND_TLS_PROXY", "true"),
            ("WARD_PUBLIC_URL", "https://ward.example"),
        ]);
        assert!(s.is_ok(), "{s:?}");
    }

    #[test]
    fn config_file_rejects_unknown_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ward.toml");
        std::fs::write(&path, "[server]\nlisen = \"127.0.0.1:1\"\n").expect("write");
        let err = Settings::load(&Sources {
            config_file: Some(path.clone()),
            ..Sources::default()
        })
        .expect_err("typo refused");
        assert!(err.to_string().contains("lisen"), "{err}");

        std::fs::write(
            &path,
            "[server]\nlisten = \"127.0.0.1:7\"\n[fhir]\nbase = [\"https://x.example/fhir\"]\n",
        )
        .expect("write");
        let s = Settings::load(&Sources {
            config_file: Some(path),
            ..Sources::default()
        })
        .expect("loads");
        assert_eq!(s.server.listen, "127.0.0.1:7");
    }

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("hunter2-very-secret");
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn every_setting_has_an_env_name_derived_from_its_flag() {
        for s in SETTINGS {
            assert!(s.env.starts_with("WARD_"), "{}", s.env);
            if let Some(flag) = s.flag {
                let derived = format!(
                    "WARD_{}",
                    flag.trim_start_matches("--")
                        .replace('-', "_")
                        .to_uppercase()
                );
                // A repeatable flag may name its env list in the plural (--trusted-proxy).
                let plural = s.kind == Kind::List && format!("{derived}S") == s.env
                    || flag == "--trusted-proxy";
                if !plural {
                    assert_eq!(derived, s.env);
                }
            }
        }
    }

    /// The README's configuration table is generated from `SETTINGS`; run with
    /// `WARD_UPDATE_README=1` to regenerate it after changing a setting.
    #[test]
    fn readme_configuration_reference_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");
        let readme = std::fs::read_to_string(path).expect("README.md");
        let (start, end) = (
            "<!-- config-reference:start -->\n",
            "<!-- config-reference:end -->",
        );
        let (Some(a), Some(b)) = (readme.find(start), readme.find(end)) else {
            panic!("README.md lacks the config-reference markers");
        };
        let current = &readme[a + start.len()..b];
        let expected = reference_markdown();
        if current != expected {
            if std::env::var("WARD_UPDATE_README").is_ok() {
                let updated = format!("{}{}{}", &readme[..a + start.len()], expected, &readme[b..]);
                std::fs::write(path, updated).expect("write README.md");
            } else {
                panic!("README.md configuration reference is stale; rerun this test with WARD_UPDATE_README=1");
            }
        }
    }
}
