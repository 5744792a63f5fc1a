//! One-time enrolment links: an admin creates a user without choosing their password and hands
//! them a link; the user opens it once, before it expires, and sets their own password. Only
//! the SHA-256 of the link's 256-bit token is stored; using it is one conditional UPDATE, so
//! it works once even when two browsers race. Second factors are enrolled at the first sign-in
//! as the user's roles require.

use super::login::LoginError;
use super::password;
use crate::audit::{self, AuditContext, AuditEvent};
use crate::authz::users::User;
use crate::clock::SharedClock;
use crate::crypto::sha256_b64;
use crate::store::StoreError;
use crate::store::{credentials as creds, enrolment, users, write_transaction, Db, DbConnection};

/// The user a still-usable link belongs to.
pub fn holder(conn: &mut DbConnection, token: &str, now: i64) -> Result<Option<User>, StoreError> {
    let Some(link) = enrolment::find_usable(conn, &sha256_b64(token.as_bytes()), now)? else {
        return Ok(None);
    };
    let Some(row) = users::find_by_id(conn, &link.user_id)?.filter(|u| u.enabled) else {
        return Ok(None);
    };
    Ok(Some(User {
        roles: users::roles_of(conn, &row.id)?,
        id: row.id,
        username: row.username,
        display_name: row.display_name,
        fhir_user: row.fhir_user,
        enabled: row.enabled,
        version: row.version,
    }))
}

/// Sets the password through a link. `Ok(false)` when the link is unknown, used or expired;
/// `Refused` when the password breaks the policy (the link stays usable).
pub async fn complete(
    db: &Db,
    hashing: &password::PasswordHashing,
    clock: &SharedClock,
    ctx: &AuditContext,
    token: String,
    new_password: String,
) -> Result<bool, LoginError> {
    let now = clock.now_secs();
    let token_hash = sha256_b64(token.as_bytes());
    let user = {
        let token = token.clone();
        db.run(move |conn| holder(conn, &token, now)).await?
    };
    let Some(user) = user else {
        return Ok(false);
    };
    password::check_policy(&new_password, &[&user.username, &user.display_name])
        .map_err(|e| LoginError::Refused(format!("The password {e}.")))?;
    let hash = hashing.hash(new_password).await?;
    let ctx = AuditContext {
        actor_user: Some(user.id.clone()),
        ..ctx.clone()
    };
    let clock = clock.clone();
    db.run(move |conn| {
        write_transaction(conn, |conn| {
            let still_enabled = users::find_by_id(conn, &user.id)?.is_some_and(|u| u.enabled);
            if !still_enabled || !enrolment::take(conn, &token_hash, now)? {
                return Ok(false);
            }
            creds::set_password(conn, &user.id, &hash, now)?;
            creds::end_sessions_of(conn, &user.id, None, now, "password_changed")?;
            audit::append(
                conn,
                clock.as_ref(),
                &ctx,
                &AuditEvent::PasswordChanged {
                    user_id: user.id.clone(),
                    by_operator: false,
                },
            )?;
            Ok::<_, LoginError>(true)
        })
    })
    .await
}
