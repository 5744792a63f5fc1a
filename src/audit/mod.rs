//! The audit trail's core (DESIGN.md §8): a typed [`AuditEvent`] for every security decision,
//! appended inside the caller's database transaction, so an action and its audit record commit
//! together or not at all (fail closed).
//!
//! Events carry identifiers and outcomes, never a password, secret, code or token value: the
//! enum has no field that could hold one. The tamper-evident hash chain, export and queries are
//! layered on `append` later without changing its call sites.

pub mod alerts;
pub mod chain;
pub mod disclosures;
mod event;
pub mod fhir;

pub use event::{AuditEvent, KeyCreationReason, LoginFailure, Outcome, Severity};

use serde_json::Value;

use crate::clock::Clock;
use crate::store::audit_events::{self, NewAuditEventRow};
use crate::store::{DbConnection, StoreError};

/// Who did it and from where; everything an event needs besides what happened.
#[derive(Debug, Clone, Default)]
pub struct AuditContext {
    pub actor_user: Option<String>,
    pub actor_client: Option<String>,
    pub source_ip: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
    /// Which Ward process wrote it: `hostname:pid`, or `cli:…` for the command line.
    pub node: String,
}

impl AuditContext {
    /// Events raised by a server node itself (startup, housekeeping, key generation).
    pub fn system(node: &str) -> Self {
        Self {
            node: node.to_owned(),
            ..Self::default()
        }
    }

    /// Events raised by an operator at the `ward` command line.
    pub fn cli() -> Self {
        let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
        Self {
            actor_user: Some(format!("os:{user}")),
            node: format!("cli:{}", node_name()),
            ..Self::default()
        }
    }
}

/// A name for this process, distinct between nodes and restarts.
pub fn node_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!("{host}:{}", std::process::id())
}

/// Append one event in the caller's transaction. If this fails, the caller's action fails.
pub fn append(
    conn: &mut DbConnection,
    clock: &dyn Clock,
    ctx: &AuditContext,
    event: &AuditEvent,
) -> Result<(), StoreError> {
    audit_events::insert(conn, &row(clock, ctx, event)?)
}

/// The row `append` would insert, for a caller that writes it together with its action's own
/// rows (`store::together`).
pub fn row(
    clock: &dyn Clock,
    ctx: &AuditContext,
    event: &AuditEvent,
) -> Result<NewAuditEventRow, StoreError> {
    let details = serde_json::to_value(event)
        .map_err(|e| StoreError::Corrupt(format!("audit event does not serialise: {e}")))?;
    let details = strip_tag(details);
    Ok(NewAuditEventRow {
        occurred_at: clock.now_millis(),
        action: event.action().to_owned(),
        outcome: event.outcome().as_str().to_owned(),
        severity: event.severity().as_str().to_owned(),
        actor_user: ctx.actor_user.clone(),
        actor_client: ctx.actor_client.clone(),
        source_ip: ctx.source_ip.clone(),
        user_agent: ctx.user_agent.clone(),
        request_id: ctx.request_id.clone(),
        target_patient: event.target_patient().map(str::to_owned),
        node: ctx.node.clone(),
        details: details.to_string(),
    })
}

/// Records an event that is itself the action (a refusal, a denial): its own committed
/// transaction, so it survives whatever the caller does next.
pub fn record(
    conn: &mut DbConnection,
    clock: &dyn Clock,
    ctx: &AuditContext,
    event: &AuditEvent,
) -> Result<(), StoreError> {
    crate::store::write_transaction(conn, |conn| append(conn, clock, ctx, event))
}

/// The action is its own column; the details keep only the event's fields.
fn strip_tag(mut value: Value) -> Value {
    if let Value::Object(map) = &mut value {
        map.remove("action");
    }
    value
}
