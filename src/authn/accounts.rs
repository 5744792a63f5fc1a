//! Operator actions on accounts (the CLI and the admin console and API): set a password, disable
//! or enable, unlock, reset second factors. Each is one transaction with its audit event, and
//! each that reduces trust ends the user's sessions at once.

use super::password;
use crate::audit::{self, AuditContext, AuditEvent};
use crate::authz::users::{get_by_username, User};
use crate::authz::DirectoryError;
use crate::clients::FieldError;
use crate::clock::Clock;
use crate::store::credentials as creds;
use crate::store::{write_transaction, DbConnection};

/// Sets a password after the policy check (hashing on this thread: for the CLI).
pub fn set_password(
    conn: &mut DbConnection,
    clock: &dyn Clock,
    ctx: &AuditContext,
    username: &str,
    new: &str,
) -> Result<User, DirectoryError> {
    let user = get_by_username(conn, username)?;
    password::check_policy(new, &[&user.username, &user.display_name])
        .map_err(|e| DirectoryError::Invalid(vec![FieldError::new("password", e.to_string())]))?;
    let hash = password::hash_blocking(new)
        .map_err(|e| DirectoryError::Conflict(format!("hashing failed: {e}")))?;
    let now = clock.now_secs();
    write_transaction(conn, |conn| {
        creds::set_password(conn, &user.id, &hash, now)?;
        creds::end_sessions_of(conn, &user.id, None, now, "password_reset")?;
        audit::append(
            conn,
            clock,
            ctx,
            &AuditEvent::PasswordChanged {
                user_id: user.id.clone(),
                by_operator: true,
            },
        )?;
        Ok::<_, DirectoryError>(())
    })?;
    get_by_username(conn, username)
}

/// Disabling ends every session and revokes every grant of the user at once.
pub fn set_enabled(
    conn: &mut DbConnection,
    clock: &dyn Clock,
    ctx: &AuditContext,
    username: &str,
    enabled: bool,
) -> Result<User, DirectoryError> {
    let user = get_by_username(conn, username)?;
    let now = clock.now_secs();
    write_transaction(conn, |conn| {
        if creds::set_enabled(conn, &user.id, enabled, now)? {
            if !enabled {
                // Every session and every grant ends at once: a disabled person's apps stop
                // too (introspection also checks the user, this makes it durable).
                creds::end_sessions_of(conn, &user.id, None, now, "user_disabled")?;
                crate::store::enrolment::invalidate_of_user(conn, &user.id, now)?;
                crate::store::grants::revoke_all_of(
                    conn,
                    crate::store::grants::GrantOwner::User(&user.id),
                    "user_disabled",
                    now,
                )?;
            }
            audit::append(
                conn,
                clock,
                ctx,
                &AuditEvent::UserStatusChanged {
                    user_id: user.id.clone(),
                    enabled,
                },
            )?;
        }
        Ok::<_, DirectoryError>(())
    })?;
    get_by_username(conn, username)
}

/// Lifts a lock and clears the failure counter; returns whether it was locked.
pub fn unlock(
    conn: &mut DbConnection,
    clock: &dyn Clock,
    ctx: &AuditContext,
    username: &str,
) -> Result<bool, DirectoryError> {
    let user = get_by_username(conn, username)?;
    write_transaction(conn, |conn| {
        let was_locked = creds::unlock(conn, &user.id)?;
        if was_locked {
            audit::append(
                conn,
                clock,
                ctx,
                &AuditEvent::AccountUnlocked {
                    user_id: user.id.clone(),
                },
            )?;
        }
        Ok(was_locked)
    })
}

/// Removes every second factor and recovery code and ends every session; the user enrols
/// again at next sign-in when a role requires MFA.
pub fn reset_mfa(
    conn: &mut DbConnection,
    clock: &dyn Clock,
    ctx: &AuditContext,
    username: &str,
) -> Result<User, DirectoryError> {
    let user = get_by_username(conn, username)?;
    let now = clock.now_secs();
    write_transaction(conn, |conn| {
        creds::delete_totp(conn, &user.id)?;
        creds::delete_recovery_codes(conn, &user.id)?;
        crate::store::passkeys::delete_all_of(conn, &user.id)?;
        creds::end_sessions_of(conn, &user.id, None, now, "mfa_reset")?;
        crate::store::enrolment::invalidate_of_user(conn, &user.id, now)?;
        audit::append(
            conn,
            clock,
            ctx,
            &AuditEvent::MfaReset {
                user_id: user.id.clone(),
            },
        )?;
        Ok::<_, DirectoryError>(())
    })?;
    Ok(user)
}
