//! Registry operations: each is one transaction that writes the change and its audit event
//! together. Secrets are generated here (256 bits), returned once, and stored only as SHA-256.

use serde_json::{json, Value};

use super::jwks::{JwksError, JwksFetcher};
use super::model::{
    self, ClientKind, ClientSettings, ClientSpec, FieldError, GrantType, LaunchMode,
};
use crate::audit::{self, AuditContext, AuditEvent};
use crate::clock::Clock;
use crate::crypto::{constant_time_eq, random_token, sha256_b64};
use crate::store::clients::{self as rows, ClientRow, ClientSecretRow};
use crate::store::{write_transaction, DbConnection, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("invalid registration: {}", join(.0))]
    Invalid(Vec<FieldError>),
    #[error("no client `{0}`")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// The registration changed since the version the caller read.
    #[error("{0}")]
    Stale(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn join(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl From<diesel::result::Error> for RegistryError {
    fn from(e: diesel::result::Error) -> Self {
        Self::Store(e.into())
    }
}

/// A registered client as the rest of Ward sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Client {
    pub client_id: String,
    pub settings: ClientSettings,
    pub enabled: bool,
    pub created_at: i64,
    pub updated_at: i64,
    pub version: i64,
}

impl Client {
    /// The registration without any secret: for CLI output, the admin API and audit snapshots.
    pub fn public_view(&self) -> Value {
        let mut view = serde_json::to_value(&self.settings).unwrap_or(Value::Null);
        if let Value::Object(map) = &mut view {
            map.insert("client_id".into(), json!(self.client_id));
            map.insert("enabled".into(), json!(self.enabled));
            map.insert("created_at".into(), json!(self.created_at));
            map.insert("updated_at".into(), json!(self.updated_at));
            map.insert("version".into(), json!(self.version));
        }
        view
    }
}

/// A new registration's id, and its secret when it has one: shown once, never stored.
#[derive(Debug)]
pub struct NewClient {
    pub client: Client,
    pub secret: Option<String>,
}

fn to_json_list<T: Copy>(items: &[T], text: fn(T) -> &'static str) -> String {
    Value::from(items.iter().map(|i| text(*i)).collect::<Vec<_>>()).to_string()
}

fn from_json_list<T>(raw: &str, parse: fn(&str) -> Option<T>) -> Result<Vec<T>, StoreError> {
    let texts: Vec<String> = serde_json::from_str(raw)
        .map_err(|e| StoreError::Corrupt(format!("client list column: {e}")))?;
    texts
        .iter()
        .map(|t| parse(t).ok_or_else(|| StoreError::Corrupt(format!("unknown value `{t}`"))))
        .collect()
}

fn strings_from_json(raw: &str) -> Result<Vec<String>, StoreError> {
    serde_json::from_str(raw).map_err(|e| StoreError::Corrupt(format!("client list column: {e}")))
}

fn to_row(
    client_id: &str,
    s: &ClientSettings,
    enabled: bool,
    created_at: i64,
    updated_at: i64,
    version: i64,
) -> ClientRow {
    ClientRow {
        client_id: client_id.to_owned(),
        name: s.name.clone(),
        kind: s.kind.as_str().to_owned(),
        auth_method: s.auth_method.as_str().to_owned(),
        redirect_uris: Value::from(s.redirect_uris.clone()).to_string(),
        fhir_bases: Value::from(s.fhir_bases.clone()).to_string(),
        grant_types: to_json_list(&s.grant_types, GrantType::as_str),
        launch_modes: to_json_list(&s.launch_modes, LaunchMode::as_str),
        allowed_scopes: s.allowed_scopes.clone(),
        ehr_launcher: s.ehr_launcher,
        ai_tool: s.ai_tool,
        access_token_lifetime: s.access_token_lifetime,
        refresh_token_idle_lifetime: s.refresh_token_idle_lifetime,
        refresh_token_absolute_lifetime: s.refresh_token_absolute_lifetime,
        logo_uri: s.logo_uri.clone(),
        contact: s.contact.clone(),
        jwks: s.jwks.as_ref().map(Value::to_string),
        jwks_uri: s.jwks_uri.clone(),
        enabled,
        created_at,
        updated_at,
        version,
    }
}

fn from_row(row: ClientRow) -> Result<Client, StoreError> {
    let corrupt = |what: &str| StoreError::Corrupt(format!("client {}: {what}", row.client_id));
    let settings = ClientSettings {
        name: row.name.clone(),
        kind: ClientKind::parse(&row.kind).ok_or_else(|| corrupt("kind"))?,
        auth_method: model::AuthMethod::parse(&row.auth_method)
            .ok_or_else(|| corrupt("auth_method"))?,
        redirect_uris: strings_from_json(&row.redirect_uris)?,
        fhir_bases: strings_from_json(&row.fhir_bases)?,
        grant_types: from_json_list(&row.grant_types, GrantType::parse)?,
        launch_modes: from_json_list(&row.launch_modes, LaunchMode::parse)?,
        allowed_scopes: row.allowed_scopes.clone(),
        ehr_launcher: row.ehr_launcher,
        ai_tool: row.ai_tool,
        access_token_lifetime: row.access_token_lifetime,
        refresh_token_idle_lifetime: row.refresh_token_idle_lifetime,
        refresh_token_absolute_lifetime: row.refresh_token_absolute_lifetime,
        logo_uri: row.logo_uri.clone(),
        contact: row.contact.clone(),
        jwks: match &row.jwks {
            Some(text) => Some(serde_json::from_str(text).map_err(|_| corrupt("jwks"))?),
            None => None,
        },
        jwks_uri: row.jwks_uri.clone(),
    };
    Ok(Client {
        client_id: row.client_id,
        settings,
        enabled: row.enabled,
        created_at: row.created_at,
        updated_at: row.updated_at,
        version: row.version,
    })
}

/// Validates a submitted registration, fetching and checking its JWKS URL when it has one, so
/// a registration that would fail at first use is refused now.
pub async fn validate_spec(
    spec: &ClientSpec,
    fetcher: &JwksFetcher,
) -> Result<ClientSettings, RegistryError> {
    let settings = model::validate(spec).map_err(RegistryError::Invalid)?;
    if let Some(uri) = &settings.jwks_uri {
        fetcher.fetch(uri).await.map_err(|e: JwksError| {
            RegistryError::Invalid(vec![FieldError::new("jwks_uri", e.to_string())])
        })?;
    }
    Ok(settings)
}

fn new_secret_row(client_id: &str, now: i64) -> (String, ClientSecretRow) {
    let secret = random_token(32);
    let row = ClientSecretRow {
        id: random_token(12),
        client_id: client_id.to_owned(),
        secret_hash: sha256_b64(secret.as_bytes()),
        created_at: now,
        expires_at: None,
    };
    (secret, row)
}

pub fn register(
    conn: &mut DbConnection,
    clock: &dyn Clock,
    ctx: &AuditContext,
    client_id: Option<String>,
    settings: ClientSettings,
) -> Result<NewClient, RegistryError> {
    let now = clock.now_secs();
    let client_id = client_id.unwrap_or_else(|| random_token(16));
    if !model::valid_client_id(&client_id) {
        return Err(RegistryError::Invalid(vec![FieldError::new(
            "client_id",
            "is not a valid client id",
        )]));
    }
    write_transaction(conn, |conn| {
        if rows::find(conn, &client_id)?.is_some() {
            return Err(RegistryError::Conflict(format!(
                "client_id `{client_id}` is already registered"
            )));
        }
        let row = to_row(&client_id, &settings, true, now, now, 1);
        rows::insert(conn, &row)?;
        let secret = if settings.uses_secret() {
            let (secret, secret_row) = new_secret_row(&client_id, now);
            rows::insert_secret(conn, &secret_row)?;
            Some(secret)
        } else {
            None
        };
        let client = from_row(row)?;
        audit::append(
            conn,
            clock,
            ctx,
            &AuditEvent::ClientRegistered {
                client_id: client_id.clone(),
                after: client.public_view(),
            },
        )?;
        Ok(NewClient { client, secret })
    })
}

pub fn get(conn: &mut DbConnection, client_id: &str) -> Result<Client, RegistryError> {
    let row = rows::find(conn, client_id)?
        .ok_or_else(|| RegistryError::NotFound(client_id.to_owned()))?;
    Ok(from_row(row)?)
}

pub fn list(
    conn: &mut DbConnection,
    search: Option<&str>,
    page: crate::store::Page,
) -> Result<Vec<Client>, RegistryError> {
    Ok(rows::list(conn, search, page)?
        .into_iter()
        .map(from_row)
        .collect::<Result<_, _>>()?)
}

/// Replaces a client's settings (already validated). `expected_version` guards against lost
/// updates; the client id, kind and creation time never change.
pub fn update(
    conn: &mut DbConnection,
    clock: &dyn Clock,
    ctx: &AuditContext,
    client_id: &str,
    settings: ClientSettings,
    expected_version: Option<i64>,
) -> Result<Client, RegistryError> {
    write_transaction(conn, |conn| {
        let before = get(conn, client_id)?;
        if let Some(v) = expected_version {
            if v != before.version {
                return Err(RegistryError::Stale(format!(
                    "client `{client_id}` changed since version {v} (now {})",
                    before.version
                )));
            }
        }
        if settings.kind != before.settings.kind {
            return Err(RegistryError::Invalid(vec![FieldError::new(
                "kind",
                "cannot change; register a new client instead",
            )]));
        }
        let row = to_row(
            client_id,
            &settings,
            before.enabled,
            before.created_at,
            clock.now_secs(),
            before.version + 1,
        );
        if !rows::update_if_version(conn, &row, before.version)? {
            return Err(RegistryError::Stale(format!(
                "client `{client_id}` changed concurrently; retry"
            )));
        }
        // A client that now authenticates with a secret and had none gets one later via
        // rotate-secret; one that no longer uses a secret keeps none valid.
        if !settings.uses_secret() {
            rows::delete_all_secrets(conn, client_id)?;
        }
        let after = from_row(row)?;
        audit::append(
            conn,
            clock,
            ctx,
            &AuditEvent::ClientUpdated {
                client_id: client_id.to_owned(),
                before: before.public_view(),
                after: after.public_view(),
            },
        )?;
        Ok(after)
    })
}

pub fn set_enabled(
    conn: &mut DbConnection,
    clock: &dyn Clock,
    ctx: &AuditContext,
    client_id: &str,
    enabled: bool,
) -> Result<Client, RegistryError> {
    write_transaction(conn, |conn| {
        let before = get(conn, client_id)?;
        if before.enabled == enabled {
            return Ok(before);
        }
        let row = to_row(
            client_id,
            &before.settings,
            enabled,
            before.created_at,
            clock.now_secs(),
            before.version + 1,
        );
        if !rows::update_if_version(conn, &row, before.version)? {
            return Err(RegistryError::Conflict(format!(
                "client `{client_id}` changed concurrently; retry"
            )));
        }
        audit::append(
            conn,
            clock,
            ctx,
            &AuditEvent::ClientStatusChanged {
                client_id: client_id.to_owned(),
                enabled,
            },
        )?;
        Ok(from_row(row)?)
    })
}

/// The longest a rotated-out secret keeps working.
pub const MAX_SECRET_GRACE_SECONDS: i64 = 30 * 86_400;

/// Issues a new secret; the current one stays valid for `grace_seconds` so deployments can
/// switch without downtime. Returns the new secret (shown once).
pub fn rotate_secret(
    conn: &mut DbConnection,
    clock: &dyn Clock,
    ctx: &AuditContext,
    client_id: &str,
    grace_seconds: i64,
) -> Result<String, RegistryError> {
    let now = clock.now_secs();
    if !(0..=MAX_SECRET_GRACE_SECONDS).contains(&grace_seconds) {
        return Err(RegistryError::Invalid(vec![FieldError::new(
            "grace_seconds",
            format!("must be between 0 and {MAX_SECRET_GRACE_SECONDS}"),
        )]));
    }
    write_transaction(conn, |conn| {
        let client = get(conn, client_id)?;
        if !client.settings.uses_secret() {
            return Err(RegistryError::Invalid(vec![FieldError::new(
                "auth_method",
                format!(
                    "client `{client_id}` authenticates with {} and has no secret",
                    client.settings.auth_method.as_str()
                ),
            )]));
        }
        rows::delete_expired_secrets(conn, client_id, now)?;
        let valid_until = now.saturating_add(grace_seconds.max(0));
        let had_current = rows::expire_current_secrets(conn, client_id, valid_until)? > 0;
        let (secret, row) = new_secret_row(client_id, now);
        rows::insert_secret(conn, &row)?;
        audit::append(
            conn,
            clock,
            ctx,
            &AuditEvent::ClientSecretRotated {
                client_id: client_id.to_owned(),
                previous_valid_until: had_current.then_some(valid_until),
            },
        )?;
        Ok(secret)
    })
}

/// Whether `presented` is a currently valid secret of an enabled client that authenticates
/// with secrets. Every stored hash is compared in constant time, so timing reveals neither
/// which secret matched nor how much.
pub fn verify_secret(
    conn: &mut DbConnection,
    client_id: &str,
    presented: &str,
    now: i64,
) -> Result<bool, StoreError> {
    let usable = match rows::find(conn, client_id)? {
        Some(row) => {
            row.enabled
                && model::AuthMethod::parse(&row.auth_method).is_some_and(|m| {
                    matches!(
                        m,
                        model::AuthMethod::ClientSecretBasic | model::AuthMethod::ClientSecretPost
                    )
                })
        }
        None => false,
    };
    let secrets = rows::secrets(conn, client_id)?;
    let matched = secret_matches(
        secrets
            .iter()
            .map(|r| (r.secret_hash.as_str(), r.expires_at)),
        presented,
        now,
    );
    Ok(matched && usable)
}

/// Whether `presented` is one of the stored secrets (hash, expiry) still valid at `now`. Every
/// hash is compared in constant time, so timing reveals neither which matched nor how much.
pub fn secret_matches<'a>(
    stored: impl IntoIterator<Item = (&'a str, Option<i64>)>,
    presented: &str,
    now: i64,
) -> bool {
    let presented_hash = sha256_b64(presented.as_bytes());
    let mut matched = false;
    for (hash, expires_at) in stored {
        let live = expires_at.is_none_or(|at| now < at);
        let equal = constant_time_eq(hash.as_bytes(), presented_hash.as_bytes());
        matched |= live & equal;
    }
    matched
}
