//! What admins do, for the console, the JSON API and (where it applies) the CLI: one function
//! per operation, each one transaction with its audit event (actor: the admin). Who may call
//! which operation is decided first, in [`access`]; these functions do not know about HTTP.

pub mod access;

use serde::Serialize;
use serde_json::{json, Value};

use crate::audit::{self, AuditContext, AuditEvent};
use crate::authz::grant::{self, GrantDecision};
use crate::authz::users::{self, User};
use crate::authz::{roles, DirectoryError};
use crate::clients::{self, FieldError, RegistryError};
use crate::clock::Clock;
use crate::crypto::{random_token, sha256_b64};
use crate::keys::KeyError;
use crate::patients::fhir::PatientRecord;
use crate::patients::PatientSummary;
use crate::store::audit_events::{self, AuditEventRow, AuditQuery};
use crate::store::enrolment::{self, EnrolmentLinkRow};
use crate::store::grants::{self, FamilyRow, GrantOwner};
use crate::store::patients::{self as patient_rows, PatientRow};
use crate::store::{credentials, write_transaction, DbConnection, StoreError};

/// Why an admin operation did not happen. Each maps to one HTTP status and problem type.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("invalid input")]
    Invalid(Vec<FieldError>),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// The resource changed since the version the caller read (`If-Match`).
    #[error("{0}")]
    Stale(String),
    #[error("{0}")]
    Forbidden(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<RegistryError> for AdminError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::Invalid(f) => Self::Invalid(f),
            RegistryError::NotFound(id) => Self::NotFound(format!("no client `{id}`")),
            RegistryError::Conflict(m) => Self::Conflict(m),
            RegistryError::Stale(m) => Self::Stale(m),
            RegistryError::Store(s) => Self::Store(s),
        }
    }
}

impl From<DirectoryError> for AdminError {
    fn from(e: DirectoryError) -> Self {
        match e {
            DirectoryError::Invalid(f) => Self::Invalid(f),
            DirectoryError::NotFound(m) => Self::NotFound(m),
            DirectoryError::Conflict(m) => Self::Conflict(m),
            DirectoryError::Stale(m) => Self::Stale(m),
            DirectoryError::Store(s) => Self::Store(s),
        }
    }
}

impl From<KeyError> for AdminError {
    fn from(e: KeyError) -> Self {
        match e {
            KeyError::Store(s) => Self::Store(s),
            other => Self::Store(StoreError::Corrupt(other.to_string())),
        }
    }
}

impl From<diesel::result::Error> for AdminError {
    fn from(e: diesel::result::Error) -> Self {
        Self::Store(e.into())
    }
}

/// An actor's audit context: the request's, with the admin as actor.
pub fn audit_context(base: AuditContext, actor: &access::Actor) -> AuditContext {
    let (actor_user, actor_client) = actor.audit_identity();
    AuditContext {
        actor_user,
        actor_client,
        ..base
    }
}

/// How many refusals per actor per minute are recorded: a signed-in user hammering the admin
/// URLs cannot flood the audit trail (the first ones, which matter, are kept).
pub const DENIALS_RECORDED_PER_MINUTE: u32 = 30;
const DENIAL_MEMORY: usize = 10_000;

/// A per-actor, per-minute budget of recorded admin refusals (per process).
#[derive(Debug, Default)]
pub struct DenialBudget {
    windows: std::sync::Mutex<std::collections::HashMap<String, (std::time::Instant, u32)>>,
}

impl DenialBudget {
    /// Whether this refusal by `actor` is still within its minute's budget.
    pub fn allow(&self, actor: &str) -> bool {
        let minute = std::time::Duration::from_secs(60);
        let now = std::time::Instant::now();
        let Ok(mut windows) = self.windows.lock() else {
            return true;
        };
        if windows.len() >= DENIAL_MEMORY {
            windows.retain(|_, (start, _)| now.duration_since(*start) < minute);
        }
        let window = windows.entry(actor.to_owned()).or_insert((now, 0));
        if now.duration_since(window.0) >= minute {
            *window = (now, 0);
        }
        window.1 = window.1.saturating_add(1);
        window.1 <= DENIALS_RECORDED_PER_MINUTE
    }
}

/// Records a refused admin request (its own committed transaction: the refusal is the action).
pub fn record_denied(
    conn: &mut DbConnection,
    clock: &dyn Clock,
    ctx: &AuditContext,
    path: &str,
    reason: &str,
) -> Result<(), StoreError> {
    audit::record(
        conn,
        clock,
        ctx,
        &AuditEvent::AdminAccessDenied {
            path: path.chars().take(200).collect(),
            reason: reason.to_owned(),
        },
    )
}

// --- Users -------------------------------------------------------------------------------

/// Changes a user's display name and `fhirUser` (`None` removes it).
pub fn update_user(
    conn: &mut DbConnection,
    clock: &dyn Clock,
    ctx: &AuditContext,
    username: &str,
    display_name: &str,
    fhir_user: Option<&str>,
    expected_version: Option<i64>,
) -> Result<User, AdminError> {
    let mut errors = Vec::new();
    let display_name = display_name.trim();
    if display_name.is_empty()
        || display_name.chars().count() > 200
        || display_name.chars().any(char::is_control)
    {
        errors.push(FieldError::new(
            "display_name",
            "must be 1 to 200 characters without control characters",
        ));
    }
    let fhir_user = match fhir_user.map(str::trim).filter(|f| !f.is_empty()) {
        Some(raw) => users::validate_fhir_user(raw)
            .map_err(|e| errors.push(e))
            .ok(),
        None => None,
    };
    if !errors.is_empty() {
        return Err(AdminError::Invalid(errors));
    }
    write_transaction(conn, |conn| {
        let before = users::get_by_username(conn, username)?;
        let version = expected_version.unwrap_or(before.version);
        if version != before.version {
            return Err(AdminError::Stale(format!(
                "user `{username}` changed since version {version} (now {})",
                before.version
            )));
        }
        if !crate::store::users::update_profile(
            conn,
            &before.id,
            display_name,
            fhir_user.as_deref(),
            clock.now_secs(),
            version,
        )? {
            return Err(AdminError::Stale(format!(
                "user `{username}` changed concurrently; retry"
            )));
        }
        let after = users::get_by_username(conn, username)?;
        audit::append(
            conn,
            clock,
            ctx,
            &AuditEvent::UserUpdated {
                user_id: after.id.clone(),
                before: serde_json::to_value(&before).unwrap_or(Value::Null),
                after: serde_json::to_value(&after).unwrap_or(Value::Null),
            },
        )?;
        Ok(after)
    })
}

/// Whether the user already has a password (a link for them is then a password reset, a
/// sensitive action).
pub fn has_password(conn: &mut DbConnection, username: &str) -> Result<bool, AdminError> {
    let user = users::get_by_username(conn, username)?;
    Ok(credentials::login_user_by_id(conn, &user.id)?.is_some_and(|u| u.password_hash.is_some()))
}

/// A one-time link with which a user sets their own password. Earlier unused links of the
/// user stop working. Returns the token (shown once; only its hash is stored).
pub fn create_enrolment_link(
    conn: &mut DbConnection,
    clock: &dyn Clock,
    ctx: &AuditContext,
    username: &str,
    lifetime_seconds: i64,
) -> Result<(String, i64), AdminError> {
    let now = clock.now_secs();
    let token = random_token(32);
    let expires_at = now + lifetime_seconds;
    write_transaction(conn, |conn| {
        let user = users::get_by_username(conn, username)?;
        if !user.enabled {
            return Err(AdminError::Conflict(format!(
                "user `{username}` is disabled; enable them first"
            )));
        }
        enrolment::invalidate_of_user(conn, &user.id, now)?;
        enrolment::insert(
            conn,
            &EnrolmentLinkRow {
                token_hash: sha256_b64(token.as_bytes()),
                user_id: user.id.clone(),
                created_at: now,
                expires_at,
                used_at: None,
            },
        )?;
        audit::append(
            conn,
            clock,
            ctx,
            &AuditEvent::EnrolmentLinkCreated {
                user_id: user.id,
                expires_at,
            },
        )?;
        Ok((token, expires_at))
    })
}

/// A session as an admin sees it (never its cookie or hash).
#[derive(Debug, Clone, Serialize)]
pub struct SessionSummary {
    pub id: String,
    pub created_at: i64,
    pub last_seen_at: i64,
    pub source_ip: Option<String>,
    pub user_agent: Option<String>,
    pub second_factor: bool,
}

pub fn sessions_of(
    conn: &mut DbConnection,
    username: &str,
) -> Result<Vec<SessionSummary>, AdminError> {
    let user = users::get_by_username(conn, username)?;
    Ok(credentials::live_sessions_of(conn, &user.id)?
        .into_iter()
        .map(|s| SessionSummary {
            id: s.public_id,
            created_at: s.created_at,
            last_seen_at: s.last_seen_at,
            source_ip: s.source_ip,
            user_agent: s.user_agent,
            second_factor: s.mfa_at.is_some(),
        })
        .collect())
}

/// Ends one session of a user (by its public id) or all of them; returns how many ended.
pub fn end_sessions(
    conn: &mut DbConnection,
    clock: &dyn Clock,
    ctx: &AuditContext,
    username: &str,
    only: Option<&str>,
) -> Result<usize, AdminError> {
    let now = clock.now_secs();
    write_transaction(conn, |conn| {
        let user = users::get_by_username(conn, username)?;
        let mut ended = 0;
        for session in credentials::live_sessions_of(conn, &user.id)? {
            if only.is_some_and(|id| id != session.public_id) {
                continue;
            }
            if credentials::end_session(conn, &session.id_hash, now, "ended_by_admin")? {
                ended += 1;
                audit::append(
                    conn,
                    clock,
                    ctx,
                    &AuditEvent::SessionEnded {
                        session: session.public_id.clone(),
                        reason: "ended_by_admin".into(),
                    },
                )?;
            }
        }
        if let (Some(id), 0) = (only, ended) {
            return Err(AdminError::NotFound(format!("no live session `{id}`")));
        }
        Ok(ended)
    })
}

/// Which scopes a launch by this user through this client would get, and why (the
/// minimum-necessary explanation): requested ∩ client ∩ the user's roles, scope by scope.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    pub username: String,
    pub client_id: String,
    pub requested: String,
    pub roles: Vec<String>,
    pub granted: String,
    pub scopes: Vec<grant::Explanation>,
}

pub fn explain(
    conn: &mut DbConnection,
    username: &str,
    client_id: &str,
    requested: Option<&str>,
) -> Result<Explanation, AdminError> {
    let user = users::get_by_username(conn, username)?;
    let client = clients::get(conn, client_id)?;
    let held = crate::store::roles::find_many(conn, &user.roles)?;
    let ceilings: Vec<_> = held
        .into_iter()
        .map(|r| roles::Role::from(r).ceiling())
        .collect();
    let requested = requested
        .map(str::to_owned)
        .filter(|r| !r.trim().is_empty())
        .unwrap_or_else(|| client.settings.allowed_scopes.clone());
    let GrantDecision {
        granted,
        explanations,
    } = grant::grantable(&ceilings, &client.settings, &requested);
    Ok(Explanation {
        username: user.username,
        client_id: client.client_id,
        requested,
        roles: user.roles,
        granted: granted.to_string(),
        scopes: explanations,
    })
}

// --- Clients' grants ---------------------------------------------------------------------

/// A grant (token family) as an admin sees it.
#[derive(Debug, Clone, Serialize)]
pub struct GrantSummary {
    pub id: String,
    pub client_id: String,
    pub user_id: Option<String>,
    pub kind: String,
    pub scope: String,
    pub aud: String,
    pub patient: Option<String>,
    pub created_at: i64,
    pub expires_at: i64,
}

impl From<FamilyRow> for GrantSummary {
    fn from(f: FamilyRow) -> Self {
        let patient = serde_json::from_str::<Value>(&f.context)
            .ok()
            .and_then(|c| c.get("patient").and_then(Value::as_str).map(str::to_owned));
        Self {
            id: f.id,
            client_id: f.client_id,
            user_id: f.user_id,
            kind: f.grant_kind,
            scope: f.scope,
            aud: f.aud,
            patient,
            created_at: f.created_at,
            expires_at: f.expires_at,
        }
    }
}

pub const MAX_LISTED_GRANTS: i64 = 500;

pub fn grants_of_client(
    conn: &mut DbConnection,
    clock: &dyn Clock,
    client_id: &str,
) -> Result<Vec<GrantSummary>, AdminError> {
    clients::get(conn, client_id)?;
    Ok(
        grants::live_families_of_client(conn, client_id, clock.now_secs(), MAX_LISTED_GRANTS)?
            .into_iter()
            .map(GrantSummary::from)
            .collect(),
    )
}

/// Revokes every grant of a client or of a user at once; returns how many.
pub fn revoke_all(
    conn: &mut DbConnection,
    clock: &dyn Clock,
    ctx: &AuditContext,
    owner: GrantOwner<'_>,
    reason: &str,
) -> Result<u64, AdminError> {
    write_transaction(conn, |conn| {
        let (client_id, user_id) = match owner {
            GrantOwner::Client(id) => {
                clients::get(conn, id)?;
                (Some(id.to_owned()), None)
            }
            GrantOwner::User(id) => (None, Some(id.to_owned())),
        };
        let n = grants::revoke_all_of(conn, owner, reason, clock.now_secs())? as u64;
        audit::append(
            conn,
            clock,
            ctx,
            &AuditEvent::TokensRevokedAll {
                client_id,
                user_id,
                families: n,
                reason: reason.to_owned(),
            },
        )?;
        Ok(n)
    })
}

// --- Patients ----------------------------------------------------------------------------

fn patient_row(
    record: &PatientRecord,
    created_at: i64,
    now: i64,
) -> Result<PatientRow, StoreError> {
    Ok(PatientRow {
        id: record.id.clone(),
        family: record.family.clone(),
        given: record.given.clone(),
        birth_date: record.birth_date.clone(),
        gender: record.gender.clone(),
        identifiers: serde_json::to_string(&record.identifiers)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?,
        search_name: record.search_name(),
        search_identifiers: record.search_identifiers(),
        created_at,
        updated_at: now,
    })
}

/// Replaces a directory entry from a FHIR Patient resource (the same parser as the import).
/// `create` allows a new entry (PUT creates); otherwise the patient must exist.
pub fn put_patient(
    conn: &mut DbConnection,
    clock: &dyn Clock,
    ctx: &AuditContext,
    id: &str,
    resource: &str,
) -> Result<(PatientSummary, bool), AdminError> {
    let record = crate::patients::fhir::parse_line(resource)
        .map_err(|e| AdminError::Invalid(vec![FieldError::new("resource", e.to_string())]))?;
    if record.id != id {
        return Err(AdminError::Invalid(vec![FieldError::new(
            "id",
            format!("the resource's id `{}` is not `{id}`", record.id),
        )]));
    }
    let now = clock.now_secs();
    write_transaction(conn, |conn| {
        let before = patient_rows::find(conn, id)?;
        let created_at = before.as_ref().map_or(now, |b| b.created_at);
        let row = patient_row(&record, created_at, now)?;
        patient_rows::upsert(conn, &row)?;
        let after = PatientSummary::from(row);
        let event = AuditEvent::PatientUpdated {
            patient: id.to_owned(),
            before: before
                .as_ref()
                .map_or(Value::Null, |b| json!(PatientSummary::from(b.clone()))),
            after: json!(after),
        };
        audit::append(conn, clock, ctx, &event)?;
        Ok((after, before.is_none()))
    })
}

/// Removes a patient from the directory; `false` when it was not there (DELETE is idempotent).
pub fn remove_patient(
    conn: &mut DbConnection,
    clock: &dyn Clock,
    ctx: &AuditContext,
    id: &str,
) -> Result<bool, AdminError> {
    write_transaction(conn, |conn| {
        let Some(before) = patient_rows::find(conn, id)? else {
            return Ok(false);
        };
        patient_rows::delete(conn, id)?;
        audit::append(
            conn,
            clock,
            ctx,
            &AuditEvent::PatientRemoved {
                patient: id.to_owned(),
                before: json!(PatientSummary::from(before)),
            },
        )?;
        Ok(true)
    })
}

// --- Audit -------------------------------------------------------------------------------

/// An audit event as the admin views show it.
pub fn event_view(row: &AuditEventRow) -> Value {
    json!({
        "id": row.id,
        "occurred_at": crate::clock::format_millis(row.occurred_at),
        "action": row.action,
        "outcome": row.outcome,
        "severity": row.severity,
        "actor_user": row.actor_user,
        "actor_client": row.actor_client,
        "source_ip": row.source_ip,
        "user_agent": row.user_agent,
        "request_id": row.request_id,
        "patient": row.target_patient,
        "node": row.node,
        "details": serde_json::from_str::<Value>(&row.details).unwrap_or(Value::Null),
        "chain_seq": row.chain_seq,
    })
}

pub const MAX_AUDIT_PAGE: i64 = 200;

pub fn search_audit(
    conn: &mut DbConnection,
    query: &AuditQuery,
) -> Result<Vec<AuditEventRow>, AdminError> {
    let query = AuditQuery {
        limit: query.limit.clamp(1, MAX_AUDIT_PAGE),
        ..query.clone()
    };
    Ok(audit_events::search(conn, &query)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_actor_has_its_own_budget_of_recorded_refusals() {
        let budget = DenialBudget::default();
        for _ in 0..DENIALS_RECORDED_PER_MINUTE {
            assert!(budget.allow("mallory"));
        }
        assert!(!budget.allow("mallory"));
        assert!(budget.allow("carl"));
    }
}
