//! Rows of `enrolment_links`: one-time links with which a new user sets their own password.

use diesel::prelude::*;

use super::schema::enrolment_links;
use super::{DbConnection, StoreError};

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = enrolment_links)]
pub struct EnrolmentLinkRow {
    pub token_hash: String,
    pub user_id: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub used_at: Option<i64>,
}

pub fn insert(conn: &mut DbConnection, row: &EnrolmentLinkRow) -> Result<(), StoreError> {
    diesel::insert_into(enrolment_links::table)
        .values(row)
        .execute(conn)?;
    Ok(())
}

/// A link that can still be used, without using it (the page that asks for the password).
pub fn find_usable(
    conn: &mut DbConnection,
    token_hash: &str,
    now: i64,
) -> Result<Option<EnrolmentLinkRow>, StoreError> {
    Ok(enrolment_links::table
        .find(token_hash)
        .filter(enrolment_links::used_at.is_null())
        .filter(enrolment_links::expires_at.gt(now))
        .select(EnrolmentLinkRow::as_select())
        .first(conn)
        .optional()?)
}

/// Uses a link: true only for the one request that uses it before it expires.
pub fn take(conn: &mut DbConnection, token_hash: &str, now: i64) -> Result<bool, StoreError> {
    Ok(diesel::update(
        enrolment_links::table
            .find(token_hash)
            .filter(enrolment_links::used_at.is_null())
            .filter(enrolment_links::expires_at.gt(now)),
    )
    .set(enrolment_links::used_at.eq(Some(now)))
    .execute(conn)?
        == 1)
}

/// A new link replaces every earlier unused one of the same user.
pub fn invalidate_of_user(
    conn: &mut DbConnection,
    user_id: &str,
    now: i64,
) -> Result<usize, StoreError> {
    Ok(diesel::update(
        enrolment_links::table
            .filter(enrolment_links::user_id.eq(user_id))
            .filter(enrolment_links::used_at.is_null()),
    )
    .set(enrolment_links::used_at.eq(Some(now)))
    .execute(conn)?)
}
