//! Rows of `audit_events`: insert and read only. Nothing in Ward updates or deletes them.

use diesel::prelude::*;

use super::schema::audit_events;
use super::{DbConnection, StoreError};

#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = audit_events)]
pub struct NewAuditEventRow {
    pub occurred_at: i64,
    pub action: String,
    pub outcome: String,
    pub severity: String,
    pub actor_user: Option<String>,
    pub actor_client: Option<String>,
    pub source_ip: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
    pub target_patient: Option<String>,
    pub node: String,
    pub details: String,
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = audit_events)]
pub struct AuditEventRow {
    pub id: i64,
    pub occurred_at: i64,
    pub action: String,
    pub outcome: String,
    pub severity: String,
    pub actor_user: Option<String>,
    pub actor_client: Option<String>,
    pub source_ip: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
    pub target_patient: Option<String>,
    pub node: String,
    pub details: String,
}

pub fn insert(conn: &mut DbConnection, row: &NewAuditEventRow) -> Result<(), StoreError> {
    diesel::insert_into(audit_events::table)
        .values(row)
        .execute(conn)?;
    Ok(())
}

/// Events in insertion order, optionally only one action.
pub fn list(
    conn: &mut DbConnection,
    action: Option<&str>,
    limit: i64,
) -> Result<Vec<AuditEventRow>, StoreError> {
    let mut query = audit_events::table
        .select(AuditEventRow::as_select())
        .order(audit_events::id)
        .limit(limit)
        .into_boxed();
    if let Some(action) = action {
        query = query.filter(audit_events::action.eq(action.to_owned()));
    }
    Ok(query.load(conn)?)
}
