//! Rows of `clients` and `client_secrets`.

use diesel::prelude::*;

use super::changes::{self, Change};
use super::schema::{client_secrets, clients};
use super::{DbConnection, StoreError};

#[derive(Debug, Clone, Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = clients, treat_none_as_null = true)]
pub struct ClientRow {
    pub client_id: String,
    pub name: String,
    pub kind: String,
    pub auth_method: String,
    pub redirect_uris: String,
    pub fhir_bases: String,
    pub grant_types: String,
    pub launch_modes: String,
    pub allowed_scopes: String,
    pub ehr_launcher: bool,
    pub ai_tool: bool,
    pub access_token_lifetime: i64,
    pub refresh_token_idle_lifetime: i64,
    pub refresh_token_absolute_lifetime: i64,
    pub logo_uri: Option<String>,
    pub contact: Option<String>,
    pub jwks: Option<String>,
    pub jwks_uri: Option<String>,
    pub enabled: bool,
    pub created_at: i64,
    pub updated_at: i64,
    pub version: i64,
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = client_secrets)]
pub struct ClientSecretRow {
    pub id: String,
    pub client_id: String,
    pub secret_hash: String,
    pub created_at: i64,
    pub expires_at: Option<i64>,
}

pub fn find(conn: &mut DbConnection, client_id: &str) -> Result<Option<ClientRow>, StoreError> {
    Ok(clients::table
        .find(client_id)
        .select(ClientRow::as_select())
        .first(conn)
        .optional()?)
}

pub fn list(
    conn: &mut DbConnection,
    search: Option<&str>,
    page: super::Page,
) -> Result<Vec<ClientRow>, StoreError> {
    let mut query = clients::table
        .select(ClientRow::as_select())
        .order(clients::client_id)
        .into_boxed();
    if let Some(term) = search.filter(|t| !t.is_empty()) {
        let pattern = format!("%{}%", escape_like(&term.to_lowercase()));
        query = query.filter(
            super::lower(clients::client_id)
                .like(pattern.clone())
                .escape('\\')
                .or(super::lower(clients::name).like(pattern).escape('\\')),
        );
    }
    Ok(query.limit(page.limit).offset(page.offset).load(conn)?)
}

/// `%` and `_` in a search term are literal characters, not wildcards.
pub fn escape_like(term: &str) -> String {
    term.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

pub fn insert(conn: &mut DbConnection, row: &ClientRow) -> Result<(), StoreError> {
    diesel::insert_into(clients::table)
        .values(row)
        .execute(conn)?;
    Ok(())
}

/// Writes `row` if the stored version is still `expected_version`; returns whether it did.
pub fn update_if_version(
    conn: &mut DbConnection,
    row: &ClientRow,
    expected_version: i64,
) -> Result<bool, StoreError> {
    let updated = diesel::update(
        clients::table
            .filter(clients::client_id.eq(&row.client_id))
            .filter(clients::version.eq(expected_version)),
    )
    .set(row)
    .execute(conn)?;
    if updated == 1 {
        changes::publish(conn, Change::Client(row.client_id.clone()))?;
    }
    Ok(updated == 1)
}

pub fn secrets(
    conn: &mut DbConnection,
    client_id: &str,
) -> Result<Vec<ClientSecretRow>, StoreError> {
    Ok(client_secrets::table
        .filter(client_secrets::client_id.eq(client_id))
        .select(ClientSecretRow::as_select())
        .order(client_secrets::created_at)
        .load(conn)?)
}

pub fn insert_secret(conn: &mut DbConnection, row: &ClientSecretRow) -> Result<(), StoreError> {
    diesel::insert_into(client_secrets::table)
        .values(row)
        .execute(conn)?;
    changes::publish(conn, Change::Client(row.client_id.clone()))
}

/// Gives every still-unexpiring secret of a client an expiry (the rotation grace period).
pub fn expire_current_secrets(
    conn: &mut DbConnection,
    client_id: &str,
    at: i64,
) -> Result<usize, StoreError> {
    let n = diesel::update(
        client_secrets::table
            .filter(client_secrets::client_id.eq(client_id))
            .filter(client_secrets::expires_at.is_null()),
    )
    .set(client_secrets::expires_at.eq(Some(at)))
    .execute(conn)?;
    secrets_changed(conn, client_id, n)
}

fn secrets_changed(
    conn: &mut DbConnection,
    client_id: &str,
    n: usize,
) -> Result<usize, StoreError> {
    if n > 0 {
        changes::publish(conn, Change::Client(client_id.to_owned()))?;
    }
    Ok(n)
}

/// Removes secrets whose grace period has passed.
pub fn delete_expired_secrets(
    conn: &mut DbConnection,
    client_id: &str,
    now: i64,
) -> Result<usize, StoreError> {
    let n = diesel::delete(
        client_secrets::table
            .filter(client_secrets::client_id.eq(client_id))
            .filter(client_secrets::expires_at.le(now)),
    )
    .execute(conn)?;
    secrets_changed(conn, client_id, n)
}

/// Removes every secret of a client (it no longer authenticates with one).
pub fn delete_all_secrets(conn: &mut DbConnection, client_id: &str) -> Result<usize, StoreError> {
    let n = diesel::delete(client_secrets::table.filter(client_secrets::client_id.eq(client_id)))
        .execute(conn)?;
    secrets_changed(conn, client_id, n)
}
