//! Rows of `roles`.

use diesel::prelude::*;

use super::schema::roles;
use super::{DbConnection, StoreError};

#[derive(Debug, Clone, Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = roles)]
pub struct RoleRow {
    pub name: String,
    pub description: String,
    pub scope_ceiling: String,
    pub mfa_required: bool,
    pub break_glass: bool,
    pub created_at: i64,
    pub updated_at: i64,
    pub version: i64,
    pub passwordless: bool,
}

pub fn find(conn: &mut DbConnection, name: &str) -> Result<Option<RoleRow>, StoreError> {
    Ok(roles::table
        .find(name)
        .select(RoleRow::as_select())
        .first(conn)
        .optional()?)
}

pub fn list(conn: &mut DbConnection) -> Result<Vec<RoleRow>, StoreError> {
    Ok(roles::table
        .select(RoleRow::as_select())
        .order(roles::name)
        .load(conn)?)
}

pub fn find_many(conn: &mut DbConnection, names: &[String]) -> Result<Vec<RoleRow>, StoreError> {
    Ok(roles::table
        .filter(roles::name.eq_any(names))
        .select(RoleRow::as_select())
        .order(roles::name)
        .load(conn)?)
}

pub fn insert(conn: &mut DbConnection, row: &RoleRow) -> Result<(), StoreError> {
    diesel::insert_into(roles::table)
        .values(row)
        .execute(conn)?;
    Ok(())
}

pub fn update_if_version(
    conn: &mut DbConnection,
    row: &RoleRow,
    expected_version: i64,
) -> Result<bool, StoreError> {
    Ok(diesel::update(
        roles::table
            .filter(roles::name.eq(&row.name))
            .filter(roles::version.eq(expected_version)),
    )
    .set(row)
    .execute(conn)?
        == 1)
}

pub fn delete(conn: &mut DbConnection, name: &str) -> Result<bool, StoreError> {
    Ok(diesel::delete(roles::table.find(name)).execute(conn)? == 1)
}
