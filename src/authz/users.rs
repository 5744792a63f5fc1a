//! User records and their roles. Passwords, factors and sessions arrive with the login issue
//! and attach to these records.

use serde::Serialize;
use serde_json::Value;

use super::DirectoryError;
use crate::audit::{self, AuditContext, AuditEvent};
use crate::clients::FieldError;
use crate::clock::Clock;
use crate::crypto::random_token;
use crate::store::users::{self as rows, UserRow};
use crate::store::{roles, write_transaction, DbConnection};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct User {
    pub id: String,
    pub username: String,
    pub display_name: String,
    pub fhir_user: Option<String>,
    pub enabled: bool,
    pub roles: Vec<String>,
    pub version: i64,
}

impl User {
    fn view(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

#[derive(Debug, Clone, Default)]
pub struct NewUser {
    pub username: String,
    pub display_name: Option<String>,
    pub fhir_user: Option<String>,
    pub roles: Vec<String>,
    /// An argon2id hash, set in the same transaction as the user.
    pub password_hash: Option<String>,
}

/// Usernames compare case-insensitively, so they are stored lowercase.
pub fn normalize_username(raw: &str) -> Result<String, FieldError> {
    let name = raw.trim().to_ascii_lowercase();
    let ok = (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
    if ok {
        Ok(name)
    } else {
        Err(FieldError::new(
            "username",
            "must be 1 to 64 letters, digits, `.`, `_`, `-` or `@`",
        ))
    }
}

const FHIR_USER_TYPES: &[&str] = &["Patient", "Practitioner", "RelatedPerson", "Person"];

fn valid_fhir_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
}

/// `fhirUser` is a relative (`Practitioner/123`) or absolute URL of a Patient, Practitioner,
/// RelatedPerson or Person (SMART App Launch 2.2; certification tools reject other types).
pub fn validate_fhir_user(raw: &str) -> Result<String, FieldError> {
    let bad = || {
        FieldError::new(
            "fhir_user",
            "must be Patient/<id>, Practitioner/<id>, RelatedPerson/<id> or Person/<id>, relative or as an absolute https URL",
        )
    };
    let path = if raw.starts_with("https://") || raw.starts_with("http://") {
        let url = url::Url::parse(raw).map_err(|_| bad())?;
        if url.query().is_some() || url.fragment().is_some() {
            return Err(bad());
        }
        url.path().to_owned()
    } else {
        raw.to_owned()
    };
    let mut parts = path.trim_end_matches('/').rsplit('/');
    let (Some(id), Some(kind)) = (parts.next(), parts.next()) else {
        return Err(bad());
    };
    if !FHIR_USER_TYPES.contains(&kind) || !valid_fhir_id(id) {
        return Err(bad());
    }
    if !raw.contains("://") && raw != format!("{kind}/{id}") {
        return Err(bad());
    }
    Ok(raw.to_owned())
}

fn from_row(conn: &mut DbConnection, row: UserRow) -> Result<User, DirectoryError> {
    let roles = rows::roles_of(conn, &row.id)?;
    Ok(User {
        id: row.id,
        username: row.username,
        display_name: row.display_name,
        fhir_user: row.fhir_user,
        enabled: row.enabled,
        roles,
        version: row.version,
    })
}

pub fn create(
    conn: &mut DbConnection,
    clock: &dyn Clock,
    ctx: &AuditContext,
    new: NewUser,
) -> Result<User, DirectoryError> {
    let mut errors = Vec::new();
    let username = normalize_username(&new.username)
        .map_err(|e| errors.push(e))
        .ok();
    let fhir_user = match &new.fhir_user {
        Some(raw) => validate_fhir_user(raw).map_err(|e| errors.push(e)).ok(),
        None => None,
    };
    let display_name = new
        .display_name
        .clone()
        .unwrap_or_else(|| new.username.trim().to_owned());
    if display_name.trim().is_empty()
        || display_name.chars().count() > 200
        || display_name.chars().any(char::is_control)
    {
        errors.push(FieldError::new(
            "display_name",
            "must be 1 to 200 characters without control characters",
        ));
    }
    let (Some(username), true) = (username, errors.is_empty()) else {
        return Err(DirectoryError::Invalid(errors));
    };
    let now = clock.now_secs();
    write_transaction(conn, |conn| {
        if rows::find_by_username(conn, &username)?.is_some() {
            return Err(DirectoryError::Conflict(format!(
                "user `{username}` already exists"
            )));
        }
        let row = UserRow {
            id: random_token(16),
            username: username.clone(),
            display_name: display_name.trim().to_owned(),
            fhir_user: fhir_user.clone(),
            enabled: true,
            created_at: now,
            updated_at: now,
            version: 1,
        };
        rows::insert(conn, &row)?;
        if let Some(hash) = &new.password_hash {
            crate::store::credentials::set_password(conn, &row.id, hash, now)?;
        }
        for role in &new.roles {
            if roles::find(conn, role)?.is_none() {
                return Err(DirectoryError::NotFound(format!("no role `{role}`")));
            }
            rows::add_role(conn, &row.id, role)?;
        }
        let user = from_row(conn, row)?;
        audit::append(
            conn,
            clock,
            ctx,
            &AuditEvent::UserCreated {
                user_id: user.id.clone(),
                after: user.view(),
            },
        )?;
        Ok(user)
    })
}

pub fn get_by_username(conn: &mut DbConnection, username: &str) -> Result<User, DirectoryError> {
    let name = normalize_username(username).map_err(|e| DirectoryError::Invalid(vec![e]))?;
    let row = rows::find_by_username(conn, &name)?
        .ok_or_else(|| DirectoryError::NotFound(format!("no user `{name}`")))?;
    from_row(conn, row)
}

pub fn list(
    conn: &mut DbConnection,
    search: Option<&str>,
    page: crate::store::Page,
) -> Result<Vec<User>, DirectoryError> {
    rows::list(conn, search, page)?
        .into_iter()
        .map(|row| from_row(conn, row))
        .collect()
}

/// Adds or removes one role; returns the user afterwards. A no-op writes nothing.
pub fn change_role(
    conn: &mut DbConnection,
    clock: &dyn Clock,
    ctx: &AuditContext,
    username: &str,
    role: &str,
    add: bool,
) -> Result<User, DirectoryError> {
    write_transaction(conn, |conn| {
        let user = get_by_username(conn, username)?;
        if roles::find(conn, role)?.is_none() {
            return Err(DirectoryError::NotFound(format!("no role `{role}`")));
        }
        let changed = if add {
            rows::add_role(conn, &user.id, role)?
        } else {
            rows::remove_role(conn, &user.id, role)?
        };
        if changed {
            rows::touch(conn, &user.id, clock.now_secs())?;
            if add && role == crate::admin::access::ADMIN_ROLE {
                // A new admin starts clean: enrolment links made before the promotion (by
                // anyone) stop working, and their sessions end, so admin access begins with
                // a fresh sign-in they completed themselves.
                let now = clock.now_secs();
                crate::store::enrolment::invalidate_of_user(conn, &user.id, now)?;
                crate::store::credentials::end_sessions_of(
                    conn,
                    &user.id,
                    None,
                    now,
                    "promoted_to_admin",
                )?;
            }
            let event = if add {
                AuditEvent::UserRoleAdded {
                    user_id: user.id.clone(),
                    role: role.to_owned(),
                }
            } else {
                AuditEvent::UserRoleRemoved {
                    user_id: user.id.clone(),
                    role: role.to_owned(),
                }
            };
            audit::append(conn, clock, ctx, &event)?;
        }
        get_by_username(conn, username)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_normalise_to_lowercase() {
        assert_eq!(
            normalize_username(" Dr.Who ").ok().as_deref(),
            Some("dr.who")
        );
        for bad in ["", "a b", "x/y", "<script>", &"a".repeat(65)] {
            assert!(normalize_username(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn fhir_user_must_name_a_person_resource() {
        for ok in [
            "Practitioner/123",
            "Patient/abc-1",
            "RelatedPerson/9",
            "Person/p.1",
            "https://fhir.example.com/r4/Practitioner/123",
        ] {
            assert!(validate_fhir_user(ok).is_ok(), "{ok}");
        }
        for bad in [
            "Observation/1",
            "Practitioner/",
            "Practitioner",
            "practitioner/1",
            "x/Practitioner/1",
            "Practitioner/1?x=y",
            "https://fhir.example.com/r4/Practitioner/1#frag",
            "Practitioner/a b",
            "javascript:alert(1)",
        ] {
            assert!(validate_fhir_user(bad).is_err(), "{bad}");
        }
    }
}
