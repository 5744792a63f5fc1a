//! Roles: a name, a description, a SMART scope ceiling (what any user holding the role may be
//! granted at most), whether MFA is required and whether break-glass is allowed.

use serde::Serialize;
use serde_json::Value;

use super::DirectoryError;
use crate::audit::{self, AuditContext, AuditEvent};
use crate::clients::FieldError;
use crate::clock::Clock;
use crate::smart::scopes::{ScopeContext, ScopeSet};
use crate::store::roles::{self as rows, RoleRow};
use crate::store::{users, write_transaction, DbConnection};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Role {
    pub name: String,
    pub description: String,
    pub scope_ceiling: String,
    pub mfa_required: bool,
    pub break_glass: bool,
    /// Holders may sign in with a passkey alone (it verifies the user itself).
    pub passwordless: bool,
    pub version: i64,
}

impl Role {
    pub fn ceiling(&self) -> ScopeSet {
        ScopeSet::parse(&self.scope_ceiling).0
    }

    fn view(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

impl From<RoleRow> for Role {
    fn from(r: RoleRow) -> Self {
        Self {
            name: r.name,
            description: r.description,
            scope_ceiling: r.scope_ceiling,
            mfa_required: r.mfa_required,
            break_glass: r.break_glass,
            passwordless: r.passwordless,
            version: r.version,
        }
    }
}

/// What may change about a role; `None` keeps the current value.
#[derive(Debug, Clone, Default)]
pub struct RoleChanges {
    pub description: Option<String>,
    pub scope_ceiling: Option<String>,
    pub mfa_required: Option<bool>,
    pub break_glass: Option<bool>,
    pub passwordless: Option<bool>,
    /// Refuse the change unless the role is still at this version (lost-update guard).
    pub expected_version: Option<i64>,
}

pub fn valid_role_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

/// A role ceiling holds only `patient/` and `user/` resource scopes: identity and context scopes
/// are for clients and consent to decide, and `system/` scopes belong to backend services.
pub fn parse_ceiling(text: &str) -> Result<ScopeSet, Vec<FieldError>> {
    let set = ScopeSet::parse_strict(text).map_err(|errors| {
        errors
            .iter()
            .map(|e| FieldError::new("scope_ceiling", e.to_string()))
            .collect::<Vec<_>>()
    })?;
    let mut errors = Vec::new();
    if let Some(identity) = set.identity_scopes().next() {
        errors.push(FieldError::new(
            "scope_ceiling",
            format!("`{identity}` is decided by client settings and consent, not by roles"),
        ));
    }
    if set.is_break_glass() {
        errors.push(FieldError::new(
            "scope_ceiling",
            "`__ward.break_glass` is not a ceiling: allow emergency access with the role's break_glass setting",
        ));
    }
    for scope in set.resource_scopes() {
        if scope.context == ScopeContext::System {
            errors.push(FieldError::new(
                "scope_ceiling",
                format!("`{scope}`: system/ scopes belong to backend services, not to people"),
            ));
        }
    }
    if errors.is_empty() {
        Ok(set)
    } else {
        Err(errors)
    }
}

fn check_description(text: &str) -> Result<(), DirectoryError> {
    if text.chars().count() > 500 || text.chars().any(char::is_control) {
        return Err(DirectoryError::Invalid(vec![FieldError::new(
            "description",
            "must be at most 500 characters without control characters",
        )]));
    }
    Ok(())
}

pub fn create(
    conn: &mut DbConnection,
    clock: &dyn Clock,
    ctx: &AuditContext,
    name: &str,
    changes: RoleChanges,
) -> Result<Role, DirectoryError> {
    if !valid_role_name(name) {
        return Err(DirectoryError::Invalid(vec![FieldError::new(
            "name",
            "must be 1 to 64 lowercase letters, digits, `-` or `_`, starting with a letter",
        )]));
    }
    let description = changes.description.unwrap_or_default();
    check_description(&description)?;
    let ceiling = parse_ceiling(changes.scope_ceiling.as_deref().unwrap_or(""))
        .map_err(DirectoryError::Invalid)?;
    let now = clock.now_secs();
    let row = RoleRow {
        name: name.to_owned(),
        description,
        scope_ceiling: ceiling.to_string(),
        mfa_required: changes.mfa_required.unwrap_or(true),
        break_glass: changes.break_glass.unwrap_or(false),
        created_at: now,
        updated_at: now,
        version: 1,
        passwordless: changes.passwordless.unwrap_or(true),
    };
    write_transaction(conn, |conn| {
        if rows::find(conn, name)?.is_some() {
            return Err(DirectoryError::Conflict(format!(
                "role `{name}` already exists"
            )));
        }
        rows::insert(conn, &row)?;
        let role = Role::from(row.clone());
        audit::append(
            conn,
            clock,
            ctx,
            &AuditEvent::RoleCreated {
                role: name.to_owned(),
                after: role.view(),
            },
        )?;
        Ok(role)
    })
}

pub fn get(conn: &mut DbConnection, name: &str) -> Result<Role, DirectoryError> {
    rows::find(conn, name)?
        .map(Role::from)
        .ok_or_else(|| DirectoryError::NotFound(format!("no role `{name}`")))
}

pub fn list(conn: &mut DbConnection) -> Result<Vec<Role>, DirectoryError> {
    Ok(rows::list(conn)?.into_iter().map(Role::from).collect())
}

pub fn update(
    conn: &mut DbConnection,
    clock: &dyn Clock,
    ctx: &AuditContext,
    name: &str,
    changes: RoleChanges,
) -> Result<Role, DirectoryError> {
    if let Some(d) = &changes.description {
        check_description(d)?;
    }
    let ceiling = match &changes.scope_ceiling {
        Some(text) => Some(
            parse_ceiling(text)
                .map_err(DirectoryError::Invalid)?
                .to_string(),
        ),
        None => None,
    };
    write_transaction(conn, |conn| {
        let current = rows::find(conn, name)?
            .ok_or_else(|| DirectoryError::NotFound(format!("no role `{name}`")))?;
        let before = Role::from(current.clone());
        if let Some(v) = changes.expected_version {
            if v != current.version {
                return Err(DirectoryError::Stale(format!(
                    "role `{name}` changed since version {v} (now {})",
                    current.version
                )));
            }
        }
        let row = RoleRow {
            description: changes
                .description
                .clone()
                .unwrap_or(current.description.clone()),
            scope_ceiling: ceiling.clone().unwrap_or(current.scope_ceiling.clone()),
            mfa_required: changes.mfa_required.unwrap_or(current.mfa_required),
            break_glass: changes.break_glass.unwrap_or(current.break_glass),
            passwordless: changes.passwordless.unwrap_or(current.passwordless),
            updated_at: clock.now_secs(),
            version: current.version + 1,
            ..current.clone()
        };
        if !rows::update_if_version(conn, &row, current.version)? {
            return Err(DirectoryError::Stale(format!(
                "role `{name}` changed concurrently; retry"
            )));
        }
        let after = Role::from(row);
        audit::append(
            conn,
            clock,
            ctx,
            &AuditEvent::RoleUpdated {
                role: name.to_owned(),
                before: before.view(),
                after: after.view(),
            },
        )?;
        Ok(after)
    })
}

/// Deletes a role nobody holds. A held role is refused, so a deletion never silently changes
/// what people can do; remove it from its users first.
pub fn delete(
    conn: &mut DbConnection,
    clock: &dyn Clock,
    ctx: &AuditContext,
    name: &str,
) -> Result<(), DirectoryError> {
    if name == crate::admin::access::ADMIN_ROLE {
        return Err(DirectoryError::Conflict(
            "the admin role cannot be deleted: it is what opens the admin console".into(),
        ));
    }
    write_transaction(conn, |conn| {
        let before = get(conn, name)?;
        let holders = users::count_with_role(conn, name)?;
        if holders > 0 {
            return Err(DirectoryError::Conflict(format!(
                "role `{name}` is held by {holders} user(s); remove it from them first"
            )));
        }
        rows::delete(conn, name)?;
        audit::append(
            conn,
            clock,
            ctx,
            &AuditEvent::RoleDeleted {
                role: name.to_owned(),
                before: before.view(),
            },
        )?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_role_ceilings_parse() {
        for ceiling in [
            "",
            "user/*.cruds",
            "user/*.rs user/Observation.cu user/MedicationAdministration.cu user/DocumentReference.c",
            "user/Patient.r user/Coverage.rs user/Claim.rs user/ExplanationOfBenefit.rs user/Account.rs",
            "user/Patient.crus user/Coverage.rs user/Appointment.cruds user/Schedule.rs user/Slot.rs",
            "patient/*.rs",
        ] {
            assert!(parse_ceiling(ceiling).is_ok(), "{ceiling}");
        }
    }

    #[test]
    fn rejects_ceilings_that_are_not_resource_scopes_for_people() {
        for bad in [
            "openid",
            "offline_access user/*.rs",
            "system/*.rs",
            "user/Observation.xyz",
            "user/*.read?category=x",
        ] {
            assert!(parse_ceiling(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn role_names_are_simple() {
        assert!(valid_role_name("front-desk"));
        assert!(valid_role_name("er_physician2"));
        for bad in ["", "Admin", "2fa", "a b", "x/y", &"a".repeat(65)] {
            assert!(!valid_role_name(bad), "{bad}");
        }
    }
}
