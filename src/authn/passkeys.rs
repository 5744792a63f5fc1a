//! WebAuthn passkeys and security keys (webauthn-rs): register from the account page, use as
//! the second factor, or — where every role of the user allows it — sign in with a passkey
//! alone (user verification required, so the passkey is itself two factors).
//!
//! Ceremony state lives in the database between the two requests (any node can finish what
//! another started), bound to the session or browser that started it, single use, five
//! minutes. A signature counter that does not increase (when non-zero) is refused and audited
//! as a possible cloned authenticator; synced passkeys report 0 and are not regressions.

use serde_json::Value;
use url::Url;
use uuid::Uuid;
use webauthn_rs::prelude::{
    DiscoverableAuthentication, DiscoverableKey, Passkey, PasskeyAuthentication,
    PasskeyRegistration, PublicKeyCredential, RegisterPublicKeyCredential, Webauthn,
    WebauthnBuilder, WebauthnError,
};

use super::login::{
    self, FactorOutcome, LoginError, LoginPolicy, NewSession, SessionInfo, SessionStart,
};
use super::session::Stage;
use crate::audit::{self, AuditContext, AuditEvent, LoginFailure};
use crate::clock::Clock;
use crate::crypto::{random_token, sha256_b64};
use crate::store::passkeys::{self as rows, ChallengeRow, PasskeyRow};
use crate::store::{credentials as creds, roles, write_transaction, DbConnection, StoreError};

const CHALLENGE_SECONDS: i64 = 300;
const MAX_NAME: usize = 64;

/// The relying party: its id is the public URL's host (browsers refuse IP addresses).
pub fn relying_party(public_url: &Url) -> Result<Webauthn, String> {
    let host = public_url.host_str().ok_or("the public URL has no host")?;
    WebauthnBuilder::new(host, public_url)
        .and_then(|b| b.rp_name("Ward").build())
        .map_err(|e| format!("WebAuthn relying party for {public_url}: {e}"))
}

/// The WebAuthn user handle: stable per user, and not the database id itself.
pub fn user_handle(user_id: &str) -> Uuid {
    const NAMESPACE: Uuid = Uuid::from_u128(0x8f0c_2a4e_5b1d_4c3a_9e7f_1a2b_3c4d_5e6f);
    Uuid::new_v5(&NAMESPACE, user_id.as_bytes())
}

fn corrupt(what: &str) -> LoginError {
    LoginError::Store(StoreError::Corrupt(what.to_owned()))
}

fn refused(what: &str) -> LoginError {
    LoginError::Refused(what.to_owned())
}

fn passkeys_of(
    conn: &mut DbConnection,
    user_id: &str,
) -> Result<Vec<(PasskeyRow, Passkey)>, LoginError> {
    rows::of_user(conn, user_id)?
        .into_iter()
        .map(|row| {
            let passkey: Passkey =
                serde_json::from_str(&row.passkey).map_err(|_| corrupt("stored passkey"))?;
            Ok((row, passkey))
        })
        .collect()
}

fn store_challenge<S: serde::Serialize>(
    conn: &mut DbConnection,
    clock: &dyn Clock,
    purpose: &str,
    user_id: Option<&str>,
    bound_to: &str,
    state: &S,
) -> Result<String, LoginError> {
    // Expired ceremonies are swept here, so unauthenticated starts cannot pile rows up.
    rows::delete_expired_challenges(conn, clock.now_secs())?;
    let id = random_token(16);
    let state = serde_json::to_string(state).map_err(|_| corrupt("ceremony state"))?;
    rows::insert_challenge(
        conn,
        &ChallengeRow {
            id: id.clone(),
            purpose: purpose.to_owned(),
            user_id: user_id.map(str::to_owned),
            bound_to: bound_to.to_owned(),
            state,
            expires_at: clock.now_secs() + CHALLENGE_SECONDS,
        },
    )?;
    Ok(id)
}

fn take_challenge<S: serde::de::DeserializeOwned>(
    conn: &mut DbConnection,
    clock: &dyn Clock,
    id: &str,
    purpose: &str,
    bound_to: &str,
) -> Result<S, LoginError> {
    let row = rows::take_challenge(conn, id)?
        .ok_or_else(|| refused("This passkey request has expired. Try again."))?;
    if row.purpose != purpose || row.bound_to != bound_to || row.expires_at <= clock.now_secs() {
        return Err(refused("This passkey request has expired. Try again."));
    }
    serde_json::from_str(&row.state).map_err(|_| corrupt("ceremony state"))
}

/// Takes a challenge out in its own committed step: whatever happens next, it cannot be
/// presented again.
fn consume_challenge<S: serde::de::DeserializeOwned>(
    conn: &mut DbConnection,
    clock: &dyn Clock,
    id: &str,
    purpose: &str,
    bound_to: &str,
) -> Result<S, LoginError> {
    write_transaction(conn, |conn| {
        take_challenge(conn, clock, id, purpose, bound_to)
    })
}

fn options_json<T: serde::Serialize>(challenge_id: String, options: &T) -> Value {
    serde_json::json!({ "challenge_id": challenge_id, "options": options })
}

/// Starts adding a passkey for a signed-in user.
pub fn start_registration(
    conn: &mut DbConnection,
    wa: &Webauthn,
    clock: &dyn Clock,
    session: &SessionInfo,
) -> Result<Value, LoginError> {
    require_recent_authentication(conn, clock, session)?;
    let existing = passkeys_of(conn, &session.user_id)?;
    let exclude = existing
        .iter()
        .map(|(_, p)| p.cred_id().clone())
        .collect::<Vec<_>>();
    let (mut options, state) = wa
        .start_passkey_registration(
            user_handle(&session.user_id),
            &session.username,
            &session.display_name,
            Some(exclude),
        )
        .map_err(|e| refused(&format!("Cannot start passkey registration: {e}")))?;
    // Ask for a discoverable credential, so the passkey can also sign in without a username
    // (webauthn-rs asks for none by default). Verification does not depend on it.
    if let Some(selection) = options.public_key.authenticator_selection.as_mut() {
        selection.resident_key = Some(webauthn_rs_proto::ResidentKeyRequirement::Required);
        selection.require_resident_key = true;
    }
    let id = write_transaction(conn, |conn| {
        store_challenge(
            conn,
            clock,
            "register",
            Some(&session.user_id),
            &session.id_hash,
            &state,
        )
    })?;
    Ok(options_json(id, &options))
}

pub fn clean_name(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_NAME)
        .collect();
    let cleaned = cleaned.trim();
    if cleaned.is_empty() {
        "Passkey".to_owned()
    } else {
        cleaned.to_owned()
    }
}

#[allow(clippy::too_many_arguments)]
pub fn finish_registration(
    conn: &mut DbConnection,
    wa: &Webauthn,
    clock: &dyn Clock,
    ctx: &AuditContext,
    session: &SessionInfo,
    challenge_id: &str,
    name: &str,
    credential: &RegisterPublicKeyCredential,
) -> Result<(), LoginError> {
    let ctx = AuditContext {
        actor_user: Some(session.user_id.clone()),
        ..ctx.clone()
    };
    require_recent_authentication(conn, clock, session)?;
    let state: PasskeyRegistration =
        consume_challenge(conn, clock, challenge_id, "register", &session.id_hash)?;
    let passkey = wa
        .finish_passkey_registration(credential, &state)
        .map_err(|e| refused(&format!("The passkey could not be registered: {e}")))?;
    let id = sha256_b64(passkey.cred_id().as_ref());
    write_transaction(conn, |conn| {
        if rows::exists(conn, &id)? {
            return Err(refused("This passkey is already registered."));
        }
        rows::insert(
            conn,
            &PasskeyRow {
                id,
                user_id: session.user_id.clone(),
                user_handle: user_handle(&session.user_id).to_string(),
                name: clean_name(name),
                passkey: serde_json::to_string(&passkey).map_err(|_| corrupt("passkey"))?,
                created_at: clock.now_secs(),
                last_used_at: None,
            },
        )?;
        audit::append(
            conn,
            clock,
            &ctx,
            &AuditEvent::MfaEnrolled {
                method: "webauthn".into(),
            },
        )?;
        // A new way in: every other session of the user ends.
        creds::end_sessions_of(
            conn,
            &session.user_id,
            Some(&session.id_hash),
            clock.now_secs(),
            "factor_changed",
        )?;
        Ok(())
    })
}

/// Adding an authenticator needs a recent sign-in (see `login::recently_authenticated`).
fn require_recent_authentication(
    conn: &mut DbConnection,
    clock: &dyn Clock,
    session: &SessionInfo,
) -> Result<(), LoginError> {
    if login::recently_authenticated(conn, session, clock.now_secs())? {
        Ok(())
    } else {
        Err(LoginError::ReauthenticationRequired)
    }
}

/// Starts a passkey check for a session that owes its second factor.
pub fn start_second_factor(
    conn: &mut DbConnection,
    wa: &Webauthn,
    clock: &dyn Clock,
    session: &SessionInfo,
) -> Result<Value, LoginError> {
    let passkeys: Vec<Passkey> = passkeys_of(conn, &session.user_id)?
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    if passkeys.is_empty() {
        return Err(refused("No passkey is registered for this account."));
    }
    let (options, state) = wa
        .start_passkey_authentication(&passkeys)
        .map_err(|e| refused(&format!("Cannot start passkey sign-in: {e}")))?;
    let id = write_transaction(conn, |conn| {
        store_challenge(
            conn,
            clock,
            "second_factor",
            Some(&session.user_id),
            &session.id_hash,
            &state,
        )
    })?;
    Ok(options_json(id, &options))
}

/// Records a verified use (new counter) or audits why it failed.
fn settle(
    conn: &mut DbConnection,
    clock: &dyn Clock,
    ctx: &AuditContext,
    stored: &[(PasskeyRow, Passkey)],
    result: Result<webauthn_rs::prelude::AuthenticationResult, WebauthnError>,
) -> Result<bool, LoginError> {
    match result {
        Ok(result) => {
            let Some((row, passkey)) = stored.iter().find(|(_, p)| p.cred_id() == result.cred_id())
            else {
                return Ok(false);
            };
            let mut passkey = passkey.clone();
            passkey.update_credential(&result);
            let text = serde_json::to_string(&passkey).map_err(|_| corrupt("passkey"))?;
            rows::record_use(conn, &row.id, &text, clock.now_secs())?;
            Ok(true)
        }
        Err(WebauthnError::CredentialPossibleCompromise) => {
            audit::append(conn, clock, ctx, &AuditEvent::WebauthnCounterRegression {})?;
            Ok(false)
        }
        Err(_) => Ok(false),
    }
}

#[allow(clippy::too_many_arguments)]
pub fn finish_second_factor(
    conn: &mut DbConnection,
    wa: &Webauthn,
    clock: &dyn Clock,
    policy: &LoginPolicy,
    ctx: &AuditContext,
    session: &SessionInfo,
    challenge_id: &str,
    credential: &PublicKeyCredential,
) -> Result<FactorOutcome, LoginError> {
    let ctx = AuditContext {
        actor_user: Some(session.user_id.clone()),
        ..ctx.clone()
    };
    let keys = login::second_factor_keys(&session.user_id, ctx.source_ip.as_deref());
    let state: PasskeyAuthentication =
        consume_challenge(conn, clock, challenge_id, "second_factor", &session.id_hash)?;
    write_transaction(conn, |conn| {
        if login::backed_off(conn, policy, &keys, clock.now_secs())? {
            audit::append(
                conn,
                clock,
                &ctx,
                &AuditEvent::MfaFailed {
                    reason: LoginFailure::Throttled,
                },
            )?;
            return Ok(FactorOutcome::Refused);
        }
        let stored = passkeys_of(conn, &session.user_id)?;
        let ok = settle(
            conn,
            clock,
            &ctx,
            &stored,
            wa.finish_passkey_authentication(credential, &state),
        )?;
        if !ok {
            login::count_factor_failure(conn, clock, policy, &ctx, &session.user_id, &keys)?;
            audit::append(
                conn,
                clock,
                &ctx,
                &AuditEvent::MfaFailed {
                    reason: LoginFailure::BadCode,
                },
            )?;
            return Ok(FactorOutcome::Refused);
        }
        let Some(created) = login::promote(conn, clock, policy, &ctx, session, "hwk")? else {
            return Err(refused("This sign-in has ended. Start again."));
        };
        audit::append(
            conn,
            clock,
            &ctx,
            &AuditEvent::MfaUsed {
                method: "webauthn".into(),
            },
        )?;
        Ok(FactorOutcome::Accepted(created))
    })
}

/// Starts a passwordless sign-in; `browser` is the hash of the anonymous browser cookie.
pub fn start_passwordless(
    conn: &mut DbConnection,
    wa: &Webauthn,
    clock: &dyn Clock,
    browser: &str,
) -> Result<Value, LoginError> {
    let (options, state) = wa
        .start_discoverable_authentication()
        .map_err(|e| refused(&format!("Cannot start passkey sign-in: {e}")))?;
    let id = write_transaction(conn, |conn| {
        store_challenge(conn, clock, "passwordless", None, browser, &state)
    })?;
    Ok(options_json(id, &options))
}

/// Finishes a passwordless sign-in: `None` is the one generic refusal.
#[allow(clippy::too_many_arguments)]
pub fn finish_passwordless(
    conn: &mut DbConnection,
    wa: &Webauthn,
    clock: &dyn Clock,
    policy: &LoginPolicy,
    ctx: &AuditContext,
    browser: &str,
    challenge_id: &str,
    credential: &PublicKeyCredential,
) -> Result<Option<NewSession>, LoginError> {
    let state: DiscoverableAuthentication =
        consume_challenge(conn, clock, challenge_id, "passwordless", browser)?;
    write_transaction(conn, |conn| {
        let handle = wa
            .identify_discoverable_authentication(credential)
            .ok()
            .map(|(uuid, _)| uuid.to_string());
        let owner = match &handle {
            Some(h) => rows::by_handle(conn, h)?.first().map(|r| r.user_id.clone()),
            None => None,
        };
        let Some(user_id) = owner else {
            audit::append(
                conn,
                clock,
                ctx,
                &AuditEvent::LoginFailed {
                    reason: LoginFailure::UnknownUser,
                },
            )?;
            return Ok(None);
        };
        let ctx = AuditContext {
            actor_user: Some(user_id.clone()),
            ..ctx.clone()
        };
        let stored = passkeys_of(conn, &user_id)?;
        let keys: Vec<DiscoverableKey> = stored
            .iter()
            .map(|(_, p)| DiscoverableKey::from(p))
            .collect();
        let ok = settle(
            conn,
            clock,
            &ctx,
            &stored,
            wa.finish_discoverable_authentication(credential, state, &keys),
        )?;
        let user = creds::login_user_by_id(conn, &user_id)?;
        let held = roles::of_user(conn, &user_id)?;
        let allowed = held.iter().all(|r| r.passwordless) && !held.is_empty();
        let reason = match &user {
            _ if !ok => Some(LoginFailure::BadCode),
            Some(u) if !u.enabled => Some(LoginFailure::Disabled),
            Some(u) if u.locked_at.is_some() => Some(LoginFailure::Locked),
            None => Some(LoginFailure::UnknownUser),
            _ if !allowed => Some(LoginFailure::PasswordlessNotAllowed),
            _ => None,
        };
        if let Some(reason) = reason {
            audit::append(conn, clock, &ctx, &AuditEvent::LoginFailed { reason })?;
            return Ok(None);
        }
        let now = clock.now_secs();
        let amr = ["hwk", "mfa"];
        let created = login::create_session(
            conn,
            SessionStart {
                user_id: &user_id,
                stage: Stage::Active,
                amr: &amr,
                authenticated_at: now,
                mfa_at: Some(now),
            },
            now,
            &ctx,
            policy,
        )?;
        audit::append(
            conn,
            clock,
            &ctx,
            &AuditEvent::LoginSucceeded {
                methods: amr.iter().map(|m| m.to_string()).collect(),
            },
        )?;
        Ok(Some(created))
    })
}

/// A registered passkey as the account page lists it.
#[derive(Debug, Clone)]
pub struct PasskeySummary {
    pub id: String,
    pub name: String,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
}

pub fn list(conn: &mut DbConnection, user_id: &str) -> Result<Vec<PasskeySummary>, StoreError> {
    Ok(rows::of_user(conn, user_id)?
        .into_iter()
        .map(|r| PasskeySummary {
            id: r.id,
            name: r.name,
            created_at: r.created_at,
            last_used_at: r.last_used_at,
        })
        .collect())
}

pub fn rename(
    conn: &mut DbConnection,
    session: &SessionInfo,
    id: &str,
    name: &str,
) -> Result<bool, StoreError> {
    rows::rename(conn, &session.user_id, id, &clean_name(name))
}

/// Removes a passkey, unless it is the last second factor of a user whose role requires one.
pub fn remove(
    conn: &mut DbConnection,
    clock: &dyn Clock,
    ctx: &AuditContext,
    session: &SessionInfo,
    id: &str,
) -> Result<(), LoginError> {
    let ctx = AuditContext {
        actor_user: Some(session.user_id.clone()),
        ..ctx.clone()
    };
    write_transaction(conn, |conn| {
        if !rows::delete(conn, &session.user_id, id)? {
            return Ok(());
        }
        if login::mfa_required(conn, &session.user_id)?
            && !login::has_second_factor(conn, &session.user_id)?
        {
            return Err(refused(
                "Your role requires a second factor; add another one before removing this passkey.",
            ));
        }
        audit::append(
            conn,
            clock,
            &ctx,
            &AuditEvent::MfaRemoved {
                method: "webauthn".into(),
            },
        )?;
        Ok(())
    })
}
