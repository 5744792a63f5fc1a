//! Rows of `users` and `user_roles`.

use diesel::prelude::*;

use super::schema::{user_roles, users};
use super::{DbConnection, StoreError};

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = users)]
pub struct UserRow {
    pub id: String,
    pub username: String,
    pub display_name: String,
    pub fhir_user: Option<String>,
    pub enabled: bool,
    pub created_at: i64,
    pub updated_at: i64,
    pub version: i64,
}

pub fn find_by_username(
    conn: &mut DbConnection,
    username: &str,
) -> Result<Option<UserRow>, StoreError> {
    Ok(users::table
        .filter(users::username.eq(username))
        .select(UserRow::as_select())
        .first(conn)
        .optional()?)
}

pub fn list(
    conn: &mut DbConnection,
    search: Option<&str>,
    page: super::Page,
) -> Result<Vec<UserRow>, StoreError> {
    let mut query = users::table
        .select(UserRow::as_select())
        .order(users::username)
        .into_boxed();
    if let Some(term) = search.filter(|t| !t.is_empty()) {
        let pattern = format!("%{}%", super::clients::escape_like(&term.to_lowercase()));
        query = query.filter(
            users::username
                .like(pattern.clone())
                .escape('\\')
                .or(super::lower(users::display_name).like(pattern).escape('\\')),
        );
    }
    Ok(query.limit(page.limit).offset(page.offset).load(conn)?)
}

pub fn insert(conn: &mut DbConnection, row: &UserRow) -> Result<(), StoreError> {
    diesel::insert_into(users::table)
        .values(row)
        .execute(conn)?;
    Ok(())
}

pub fn touch(conn: &mut DbConnection, user_id: &str, now: i64) -> Result<(), StoreError> {
    diesel::update(users::table.find(user_id))
        .set((
            users::updated_at.eq(now),
            users::version.eq(users::version + 1),
        ))
        .execute(conn)?;
    Ok(())
}

pub fn roles_of(conn: &mut DbConnection, user_id: &str) -> Result<Vec<String>, StoreError> {
    Ok(user_roles::table
        .filter(user_roles::user_id.eq(user_id))
        .select(user_roles::role_name)
        .order(user_roles::role_name)
        .load(conn)?)
}

pub fn add_role(conn: &mut DbConnection, user_id: &str, role: &str) -> Result<bool, StoreError> {
    let exists = user_roles::table
        .filter(user_roles::user_id.eq(user_id))
        .filter(user_roles::role_name.eq(role))
        .count()
        .get_result::<i64>(conn)?
        > 0;
    if exists {
        return Ok(false);
    }
    diesel::insert_into(user_roles::table)
        .values((
            user_roles::user_id.eq(user_id),
            user_roles::role_name.eq(role),
        ))
        .execute(conn)?;
    Ok(true)
}

pub fn remove_role(conn: &mut DbConnection, user_id: &str, role: &str) -> Result<bool, StoreError> {
    Ok(diesel::delete(
        user_roles::table
            .filter(user_roles::user_id.eq(user_id))
            .filter(user_roles::role_name.eq(role)),
    )
    .execute(conn)?
        == 1)
}

pub fn count_with_role(conn: &mut DbConnection, role: &str) -> Result<i64, StoreError> {
    Ok(user_roles::table
        .filter(user_roles::role_name.eq(role))
        .count()
        .get_result(conn)?)
}

/// Changes a user's display name and `fhirUser` if the row is still at `version`; false when
/// someone else changed it first.
pub fn update_profile(
    conn: &mut DbConnection,
    user_id: &str,
    display_name: &str,
    fhir_user: Option<&str>,
    now: i64,
    version: i64,
) -> Result<bool, StoreError> {
    Ok(diesel::update(
        users::table
            .find(user_id)
            .filter(users::version.eq(version)),
    )
    .set((
        users::display_name.eq(display_name),
        users::fhir_user.eq(fhir_user),
        users::updated_at.eq(now),
        users::version.eq(version + 1),
    ))
    .execute(conn)?
        == 1)
}

pub fn find_by_id(conn: &mut DbConnection, user_id: &str) -> Result<Option<UserRow>, StoreError> {
    Ok(users::table
        .find(user_id)
        .select(UserRow::as_select())
        .first(conn)
        .optional()?)
}
