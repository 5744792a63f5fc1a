//! Rows of `webauthn_credentials` and `webauthn_challenges`.

use diesel::prelude::*;

use super::schema::{webauthn_challenges, webauthn_credentials};
use super::{DbConnection, StoreError};

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = webauthn_credentials)]
pub struct PasskeyRow {
    pub id: String,
    pub user_id: String,
    pub user_handle: String,
    pub name: String,
    pub passkey: String,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
}

pub fn of_user(conn: &mut DbConnection, user_id: &str) -> Result<Vec<PasskeyRow>, StoreError> {
    Ok(webauthn_credentials::table
        .filter(webauthn_credentials::user_id.eq(user_id))
        .select(PasskeyRow::as_select())
        .order(webauthn_credentials::created_at)
        .load(conn)?)
}

pub fn by_handle(
    conn: &mut DbConnection,
    user_handle: &str,
) -> Result<Vec<PasskeyRow>, StoreError> {
    Ok(webauthn_credentials::table
        .filter(webauthn_credentials::user_handle.eq(user_handle))
        .select(PasskeyRow::as_select())
        .load(conn)?)
}

pub fn insert(conn: &mut DbConnection, row: &PasskeyRow) -> Result<(), StoreError> {
    diesel::insert_into(webauthn_credentials::table)
        .values(row)
        .execute(conn)?;
    Ok(())
}

pub fn record_use(
    conn: &mut DbConnection,
    id: &str,
    passkey: &str,
    now: i64,
) -> Result<(), StoreError> {
    diesel::update(webauthn_credentials::table.find(id))
        .set((
            webauthn_credentials::passkey.eq(passkey),
            webauthn_credentials::last_used_at.eq(Some(now)),
        ))
        .execute(conn)?;
    Ok(())
}

pub fn rename(
    conn: &mut DbConnection,
    user_id: &str,
    id: &str,
    name: &str,
) -> Result<bool, StoreError> {
    Ok(diesel::update(
        webauthn_credentials::table
            .filter(webauthn_credentials::id.eq(id))
            .filter(webauthn_credentials::user_id.eq(user_id)),
    )
    .set(webauthn_credentials::name.eq(name))
    .execute(conn)?
        == 1)
}

pub fn delete(conn: &mut DbConnection, user_id: &str, id: &str) -> Result<bool, StoreError> {
    Ok(diesel::delete(
        webauthn_credentials::table
            .filter(webauthn_credentials::id.eq(id))
            .filter(webauthn_credentials::user_id.eq(user_id)),
    )
    .execute(conn)?
        == 1)
}

pub fn delete_all_of(conn: &mut DbConnection, user_id: &str) -> Result<usize, StoreError> {
    Ok(diesel::delete(
        webauthn_credentials::table.filter(webauthn_credentials::user_id.eq(user_id)),
    )
    .execute(conn)?)
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = webauthn_challenges)]
pub struct ChallengeRow {
    pub id: String,
    pub purpose: String,
    pub user_id: Option<String>,
    pub bound_to: String,
    pub state: String,
    pub expires_at: i64,
}

pub fn insert_challenge(conn: &mut DbConnection, row: &ChallengeRow) -> Result<(), StoreError> {
    diesel::insert_into(webauthn_challenges::table)
        .values(row)
        .execute(conn)?;
    Ok(())
}

/// Takes a challenge out: only the one request whose delete removed the row gets it.
pub fn take_challenge(
    conn: &mut DbConnection,
    id: &str,
) -> Result<Option<ChallengeRow>, StoreError> {
    let row = webauthn_challenges::table
        .find(id)
        .select(ChallengeRow::as_select())
        .first(conn)
        .optional()?;
    let Some(row) = row else { return Ok(None) };
    let deleted = diesel::delete(webauthn_challenges::table.find(id)).execute(conn)?;
    Ok((deleted == 1).then_some(row))
}

pub fn exists(conn: &mut DbConnection, id: &str) -> Result<bool, StoreError> {
    Ok(webauthn_credentials::table
        .find(id)
        .count()
        .get_result::<i64>(conn)?
        > 0)
}

pub fn delete_expired_challenges(conn: &mut DbConnection, now: i64) -> Result<usize, StoreError> {
    Ok(
        diesel::delete(webauthn_challenges::table.filter(webauthn_challenges::expires_at.le(now)))
            .execute(conn)?,
    )
}
