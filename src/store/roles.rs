//! Rows of `roles`.

use diesel::prelude::*;

use super::schema::{roles, user_roles, users};
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

/// The roles `user_id` holds, by name. One join: a statement diesel prepares once and keeps,
/// where looking the names up first and then `find_many` costs two queries and an `IN (…)` list
/// whose SQL changes with the number of names, so it is prepared afresh on every call.
pub fn of_user(conn: &mut DbConnection, user_id: &str) -> Result<Vec<RoleRow>, StoreError> {
    Ok(roles::table
        .inner_join(user_roles::table)
        .filter(user_roles::user_id.eq(user_id))
        .select(RoleRow::as_select())
        .order(roles::name)
        .load(conn)?)
}

/// A person's account as grants see it: who they are and whether it is enabled. No password
/// hash or lock state: no grant decision needs them.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = users)]
pub struct AccountRow {
    pub id: String,
    pub username: String,
    pub display_name: String,
    pub fhir_user: Option<String>,
    pub enabled: bool,
}

/// An account with the roles it holds, by name: one statement (left joins, so an account
/// without roles is found too). `None` when there is no such account.
///
/// The joins are written flat (`users ⟕ user_roles ⟕ roles`), never nested: diesel puts a
/// nested join in parentheses, and SQLite cannot flatten a parenthesised join on the right of
/// a LEFT JOIN, so it would materialise every role assignment of every user per call
/// (`tests/token_writes.rs` checks the plans).
pub fn user_with_roles(
    conn: &mut DbConnection,
    user_id: &str,
) -> Result<Option<(AccountRow, Vec<RoleRow>)>, StoreError> {
    let rows: Vec<(AccountRow, Option<RoleRow>)> = on_backend!(conn, c => users::table
        .left_join(user_roles::table)
        .left_join(roles::table.on(roles::name.eq(user_roles::role_name)))
        .filter(users::id.eq(user_id))
        .select((AccountRow::as_select(), Option::<RoleRow>::as_select()))
        .order(roles::name)
        .load(c))?;
    Ok(gather(rows))
}

/// The rows of a left join to someone's roles (one per role held, or one without a role when
/// none is) as that someone with the roles held; `None` for no rows.
pub(super) fn gather<H>(rows: Vec<(H, Option<RoleRow>)>) -> Option<(H, Vec<RoleRow>)> {
    let mut rows = rows.into_iter();
    let (head, first) = rows.next()?;
    let held = first
        .into_iter()
        .chain(rows.filter_map(|(_, role)| role))
        .collect();
    Some((head, held))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{migrated_sqlite, users};

    fn role(name: &str) -> RoleRow {
        RoleRow {
            name: name.into(),
            description: String::new(),
            scope_ceiling: "user/*.rs".into(),
            mfa_required: false,
            break_glass: false,
            created_at: 0,
            updated_at: 0,
            version: 1,
            passwordless: false,
        }
    }

    fn user(id: &str) -> users::UserRow {
        users::UserRow {
            id: id.into(),
            username: id.into(),
            display_name: id.into(),
            fhir_user: None,
            enabled: true,
            created_at: 0,
            updated_at: 0,
            version: 1,
        }
    }

    #[test]
    fn a_users_roles_are_the_ones_they_hold_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        let conn = &mut migrated_sqlite(&dir);
        for name in ["test-nurse", "test-auditor", "test-physician"] {
            insert(conn, &role(name)).unwrap();
        }
        for id in ["ana", "ben", "cy"] {
            users::insert(conn, &user(id)).unwrap();
        }
        for (id, name) in [
            ("ana", "test-physician"),
            ("ana", "test-auditor"),
            ("ben", "test-nurse"),
        ] {
            assert!(users::add_role(conn, id, name).unwrap());
        }
        let names = |conn: &mut DbConnection, id: &str| -> Vec<String> {
            of_user(conn, id)
                .unwrap()
                .into_iter()
                .map(|r| r.name)
                .collect()
        };
        assert_eq!(names(conn, "ana"), ["test-auditor", "test-physician"]);
        assert_eq!(names(conn, "ben"), ["test-nurse"]);
        assert!(names(conn, "cy").is_empty());
        assert!(names(conn, "nobody").is_empty());
        // The same, with the user, in one statement.
        let with_user = |conn: &mut DbConnection, id: &str| {
            user_with_roles(conn, id).unwrap().map(|(user, held)| {
                let held: Vec<String> = held.into_iter().map(|r| r.name).collect();
                (user.id, held)
            })
        };
        for id in ["ana", "ben", "cy"] {
            assert_eq!(
                with_user(conn, id),
                Some((id.to_owned(), names(conn, id))),
                "{id}"
            );
        }
        assert_eq!(with_user(conn, "nobody"), None);
    }
}
