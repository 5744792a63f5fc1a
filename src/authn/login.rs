//! The sign-in flow and account self-service, as functions over the store (no HTTP types).
//!
//! ```text
//!  password ──ok──► has 2nd factor? ──yes──► stage SecondFactor ──TOTP / recovery code──► Active
//!     │                   │no
//!     │                   ├── role requires MFA ──► stage Enrolment ──TOTP enrolled──► Active
//!     │                   └── otherwise ──────────────────────────────────────────────► Active
//!     └─fail──► count failure (per account+IP back-off; account lock at the threshold)
//! ```
//! Every step that changes who someone is creates a new session id (no fixation). Failures
//! all look the same from outside: unknown user, wrong password, disabled, locked and
//! throttled accounts get one message and similar timing.

use serde::Serialize;

use super::password::{Busy, PasswordHashing};
use super::session::{self, Liveness, Stage, Timeouts};
use super::throttle::{self, Purpose};
use super::{recovery, totp};
use crate::audit::{self, AuditContext, AuditEvent, LoginFailure};
use crate::authz::users::normalize_username;
use crate::clock::{Clock, SharedClock};
use crate::crypto::seal::{Aad, Sealer};
use crate::crypto::{random_token, sha256_b64};
use crate::store::credentials::{
    self as creds, LoginUserRow, RecoveryCodeRow, SessionRow, TotpRow,
};
use crate::store::{roles, write_transaction, Db, DbConnection, StoreError};

/// Limits of the sign-in flow, from `[login]`.
#[derive(Debug, Clone, Copy)]
pub struct LoginPolicy {
    pub throttle: throttle::Policy,
    pub throttle_enabled: bool,
    pub lockout_threshold: i64,
    pub timeouts: Timeouts,
}

#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// Too many password checks queued: try again shortly (503).
    #[error("busy")]
    Busy,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Refused(String),
    /// The action needs a fresh sign-in (adding or replacing a factor).
    #[error("sign in again to continue")]
    ReauthenticationRequired,
}

impl From<Busy> for LoginError {
    fn from(_: Busy) -> Self {
        Self::Busy
    }
}

impl From<diesel::result::Error> for LoginError {
    fn from(e: diesel::result::Error) -> Self {
        Self::Store(e.into())
    }
}

/// A new session: the cookie value (shown to the browser only) and where it stands.
#[derive(Debug, Clone)]
pub struct NewSession {
    pub cookie_value: String,
    pub stage: Stage,
}

/// A live session as handlers see it.
#[derive(Debug, Clone, Serialize)]
pub struct SessionInfo {
    #[serde(skip)]
    pub id_hash: String,
    pub public_id: String,
    pub user_id: String,
    pub username: String,
    pub display_name: String,
    pub stage: Stage,
    pub amr: Vec<String>,
    pub authenticated_at: i64,
    pub mfa_at: Option<i64>,
}

pub fn session_hash(cookie_value: &str) -> String {
    sha256_b64(cookie_value.as_bytes())
}

fn totp_aad(id: &str) -> Aad<'_> {
    Aad {
        table: "totp_credentials",
        column: "secret_sealed",
        row: id,
    }
}

/// Whether any of the user's roles requires MFA.
pub fn mfa_required(conn: &mut DbConnection, user_id: &str) -> Result<bool, StoreError> {
    Ok(roles::of_user(conn, user_id)?
        .iter()
        .any(|r| r.mfa_required))
}

pub fn has_second_factor(conn: &mut DbConnection, user_id: &str) -> Result<bool, StoreError> {
    Ok(creds::totp_of(conn, user_id)?.iter().any(|t| t.confirmed)
        || !crate::store::passkeys::of_user(conn, user_id)?.is_empty())
}

/// What a new session row starts with.
pub struct SessionStart<'a> {
    pub user_id: &'a str,
    pub stage: Stage,
    pub amr: &'a [&'a str],
    pub authenticated_at: i64,
    pub mfa_at: Option<i64>,
}

pub(super) fn create_session(
    conn: &mut DbConnection,
    start: SessionStart<'_>,
    now: i64,
    ctx: &AuditContext,
    policy: &LoginPolicy,
) -> Result<NewSession, StoreError> {
    let SessionStart {
        user_id,
        stage,
        amr,
        authenticated_at,
        mfa_at,
    } = start;
    let cookie_value = random_token(32);
    creds::insert_session(
        conn,
        &SessionRow {
            id_hash: session_hash(&cookie_value),
            public_id: random_token(9),
            user_id: user_id.to_owned(),
            stage: stage.as_str().to_owned(),
            amr: serde_json::to_string(amr).unwrap_or_else(|_| "[]".into()),
            created_at: now,
            last_seen_at: now,
            expires_at: now + policy.timeouts.absolute_seconds,
            authenticated_at,
            mfa_at,
            source_ip: ctx.source_ip.clone(),
            user_agent: ctx.user_agent.clone(),
            ended_at: None,
            end_reason: None,
        },
    )?;
    Ok(NewSession {
        cookie_value,
        stage,
    })
}

fn audit_as(ctx: &AuditContext, user_id: Option<&str>) -> AuditContext {
    AuditContext {
        actor_user: user_id.map(str::to_owned),
        ..ctx.clone()
    }
}

/// Checks username and password. `Ok(None)` is the one generic refusal.
pub async fn sign_in_with_password(
    db: &Db,
    hashing: &PasswordHashing,
    clock: &SharedClock,
    policy: LoginPolicy,
    ctx: &AuditContext,
    username: &str,
    password: String,
) -> Result<Option<NewSession>, LoginError> {
    let account =
        normalize_username(username).unwrap_or_else(|_| username.trim().to_ascii_lowercase());
    let ip = ctx.source_ip.clone().unwrap_or_default();
    let key = throttle::key(Purpose::Password, &account, &ip);
    let now = clock.now_secs();
    let (user, throttle_row) = {
        let (account, key) = (account.clone(), key.clone());
        db.run(move |conn| {
            Ok::<_, LoginError>((
                creds::login_user_by_name(conn, &account)?,
                creds::throttle(conn, &key)?,
            ))
        })
        .await?
    };
    let throttled = policy.throttle_enabled
        && throttle_row.is_some_and(|t| {
            policy
                .throttle
                .retry_after(t.failures, t.last_failure_at, now)
                .is_some()
        });
    if throttled {
        // Same answer, similar time, no hashing: guessing gains nothing while backed off.
        tokio::time::sleep(hashing.typical_duration()).await;
        record_password_failure(
            db,
            clock.clone(),
            policy,
            ctx,
            user.as_ref(),
            &key,
            LoginFailure::Throttled,
            false,
        )
        .await?;
        return Ok(None);
    }
    let (reason, stored) = match &user {
        None => (Some(LoginFailure::UnknownUser), None),
        Some(u) if !u.enabled => (Some(LoginFailure::Disabled), None),
        Some(u) if u.locked_at.is_some() => (Some(LoginFailure::Locked), None),
        Some(u) if u.password_hash.is_none() => (Some(LoginFailure::NoPassword), None),
        Some(u) => (None, u.password_hash.clone()),
    };
    let verified = match hashing.verify(stored, password.clone()).await {
        Ok(v) => v,
        Err(Busy) => {
            let ctx = audit_as(ctx, user.as_ref().map(|u| u.id.as_str()));
            let clock = clock.clone();
            // Group-committed with the other writes waiting (on SQLite): in a flood, thousands
            // of shed sign-ins a second each committing alone took a sixth of the CPU, which
            // the sign-ins that do get hashed need.
            db.write(move |conn| {
                write_transaction(conn, |conn| {
                    audit_failure(conn, clock.as_ref(), &ctx, LoginFailure::Busy)
                })
            })
            .await
            // The answer is 503 either way; a database too busy to record it is worth a line.
            .unwrap_or_else(|e| tracing::warn!(error = %e, "shed sign-in not audited"));
            return Err(LoginError::Busy);
        }
    };
    let (Some(user), None, true) = (user.clone(), reason, verified.ok) else {
        let reason = reason.unwrap_or(LoginFailure::BadPassword);
        record_password_failure(
            db,
            clock.clone(),
            policy,
            ctx,
            user.as_ref(),
            &key,
            reason,
            true,
        )
        .await?;
        return Ok(None);
    };
    let rehash = if verified.needs_rehash {
        hashing.hash(password).await.ok()
    } else {
        None
    };
    let ctx = audit_as(ctx, Some(&user.id));
    let clock = clock.clone();
    let created = db
        .run(move |conn| {
            write_transaction(conn, |conn| {
                creds::clear_failures(conn, &key)?;
                creds::reset_failed_logins(conn, &user.id)?;
                if let Some(hash) = &rehash {
                    creds::set_password(conn, &user.id, hash, now)?;
                }
                let stage = session::stage_after_password(
                    has_second_factor(conn, &user.id)?,
                    mfa_required(conn, &user.id)?,
                );
                let created = create_session(
                    conn,
                    SessionStart {
                        user_id: &user.id,
                        stage,
                        amr: &["pwd"],
                        authenticated_at: now,
                        mfa_at: None,
                    },
                    now,
                    &ctx,
                    &policy,
                )?;
                if stage == Stage::Active {
                    audit::append(
                        conn,
                        clock.as_ref(),
                        &ctx,
                        &AuditEvent::LoginSucceeded {
                            methods: vec!["pwd".into()],
                        },
                    )?;
                }
                Ok::<_, LoginError>(created)
            })
        })
        .await?;
    Ok(Some(created))
}

fn audit_failure(
    conn: &mut DbConnection,
    clock: &dyn Clock,
    ctx: &AuditContext,
    reason: LoginFailure,
) -> Result<(), LoginError> {
    audit::append(conn, clock, ctx, &AuditEvent::LoginFailed { reason })?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn record_password_failure(
    db: &Db,
    clock: SharedClock,
    policy: LoginPolicy,
    ctx: &AuditContext,
    user: Option<&LoginUserRow>,
    key: &str,
    reason: LoginFailure,
    counts: bool,
) -> Result<(), LoginError> {
    let now = clock.now_secs();
    let ctx = audit_as(ctx, user.map(|u| u.id.as_str()));
    let user_id = user.map(|u| u.id.clone());
    let key = key.to_owned();
    db.run(move |conn| {
        write_transaction(conn, |conn| {
            if counts && policy.throttle_enabled {
                creds::count_failure(conn, &key, now)?;
            }
            audit_failure(conn, clock.as_ref(), &ctx, reason)?;
            if let (Some(user_id), true, true) =
                (&user_id, counts, reason == LoginFailure::BadPassword)
            {
                let failures = creds::count_failed_login(conn, user_id)?;
                if policy.throttle_enabled
                    && failures >= policy.lockout_threshold
                    && creds::lock(conn, user_id, now)?
                {
                    audit::append(
                        conn,
                        clock.as_ref(),
                        &ctx,
                        &AuditEvent::AccountLocked {
                            consecutive_failures: failures,
                        },
                    )?;
                }
            }
            Ok::<_, LoginError>(())
        })
    })
    .await
}

/// Loads the session behind a cookie value, ending it (and auditing why) when it has expired
/// or its user can no longer sign in. Touches `last_seen_at` at most once a minute.
pub fn load_session(
    conn: &mut DbConnection,
    clock: &dyn Clock,
    policy: &LoginPolicy,
    ctx: &AuditContext,
    cookie_value: &str,
) -> Result<Option<SessionInfo>, StoreError> {
    let id_hash = session_hash(cookie_value);
    let Some(row) = creds::find_session(conn, &id_hash)? else {
        return Ok(None);
    };
    let now = clock.now_secs();
    let user = creds::login_user_by_id(conn, &row.user_id)?;
    let usable_user = user
        .as_ref()
        .is_some_and(|u| u.enabled && u.locked_at.is_none());
    let live = session::liveness(
        row.ended_at.is_some(),
        row.last_seen_at,
        row.expires_at,
        now,
        policy.timeouts,
    );
    if live != Liveness::Live || !usable_user {
        let reason = live.end_reason().unwrap_or("account_unavailable");
        if row.ended_at.is_none() {
            write_transaction(conn, |conn| {
                if creds::end_session(conn, &id_hash, now, reason)? {
                    audit::append(
                        conn,
                        clock,
                        &audit_as(ctx, Some(&row.user_id)),
                        &AuditEvent::SessionEnded {
                            session: row.public_id.clone(),
                            reason: reason.to_owned(),
                        },
                    )?;
                }
                Ok::<_, StoreError>(())
            })?;
        }
        return Ok(None);
    }
    let (Some(user), Some(stage)) = (user, Stage::parse(&row.stage)) else {
        return Ok(None);
    };
    if now - row.last_seen_at >= 60 {
        creds::touch_session(conn, &id_hash, now)?;
    }
    Ok(Some(SessionInfo {
        id_hash,
        public_id: row.public_id,
        user_id: user.id,
        username: user.username,
        display_name: user.display_name,
        stage,
        amr: serde_json::from_str(&row.amr).unwrap_or_default(),
        authenticated_at: row.authenticated_at,
        mfa_at: row.mfa_at,
    }))
}

/// Replaces a session with a fully signed-in one (new id), recording the second factor.
/// `None` when the session was ended meanwhile (logout, password reset, MFA reset, or a
/// concurrent promotion): it must not live on as a new one.
pub(super) fn promote(
    conn: &mut DbConnection,
    clock: &dyn Clock,
    policy: &LoginPolicy,
    ctx: &AuditContext,
    current: &SessionInfo,
    method: &str,
) -> Result<Option<NewSession>, StoreError> {
    let now = clock.now_secs();
    if !creds::end_session(conn, &current.id_hash, now, "rotated")? {
        return Ok(None);
    }
    let mut amr: Vec<&str> = current.amr.iter().map(String::as_str).collect();
    if !amr.contains(&method) {
        amr.push(method);
    }
    creds::reset_failed_logins(conn, &current.user_id)?;
    let created = create_session(
        conn,
        SessionStart {
            user_id: &current.user_id,
            stage: Stage::Active,
            amr: &amr,
            authenticated_at: current.authenticated_at,
            mfa_at: Some(now),
        },
        now,
        ctx,
        policy,
    )?;
    audit::append(
        conn,
        clock,
        ctx,
        &AuditEvent::LoginSucceeded {
            methods: amr.iter().map(|m| m.to_string()).collect(),
        },
    )?;
    Ok(Some(created))
}

/// Outcome of a second-factor attempt.
#[derive(Debug)]
pub enum FactorOutcome {
    Accepted(NewSession),
    /// Wrong, replayed or throttled: one message for all.
    Refused,
}

/// The two back-off keys for second-factor guesses: per client IP (so one attacker slows only
/// themselves), and per account from anywhere (so many addresses together still get at most
/// the account's share of guesses before the hard lock).
pub(super) fn second_factor_keys(user_id: &str, ip: Option<&str>) -> [String; 2] {
    [
        throttle::key(Purpose::SecondFactor, user_id, ip.unwrap_or("")),
        throttle::key(Purpose::SecondFactor, user_id, "*"),
    ]
}

/// Whether any of `keys` is backed off at `now`.
pub(super) fn backed_off(
    conn: &mut DbConnection,
    policy: &LoginPolicy,
    keys: &[String],
    now: i64,
) -> Result<bool, StoreError> {
    if !policy.throttle_enabled {
        return Ok(false);
    }
    for key in keys {
        if let Some(t) = creds::throttle(conn, key)? {
            if policy
                .throttle
                .retry_after(t.failures, t.last_failure_at, now)
                .is_some()
            {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// Counts a failed second-factor (or re-authentication) guess on every key and on the
/// account's consecutive-failure counter, locking the account at the threshold.
pub(super) fn count_factor_failure(
    conn: &mut DbConnection,
    clock: &dyn Clock,
    policy: &LoginPolicy,
    ctx: &AuditContext,
    user_id: &str,
    keys: &[String],
) -> Result<(), StoreError> {
    if !policy.throttle_enabled {
        return Ok(());
    }
    let now = clock.now_secs();
    for key in keys {
        creds::count_failure(conn, key, now)?;
    }
    let failures = creds::count_failed_login(conn, user_id)?;
    if failures >= policy.lockout_threshold && creds::lock(conn, user_id, now)? {
        creds::end_sessions_of(conn, user_id, None, now, "account_locked")?;
        audit::append(
            conn,
            clock,
            ctx,
            &AuditEvent::AccountLocked {
                consecutive_failures: failures,
            },
        )?;
    }
    Ok(())
}

/// Checks a TOTP or recovery code for a session waiting on its second factor. One
/// transaction: the code is spent and the session promoted together, or neither.
pub fn verify_second_factor(
    conn: &mut DbConnection,
    clock: &dyn Clock,
    sealer: &Sealer,
    policy: &LoginPolicy,
    ctx: &AuditContext,
    current: &SessionInfo,
    code: &str,
) -> Result<FactorOutcome, LoginError> {
    let ctx = audit_as(ctx, Some(&current.user_id));
    let now = clock.now_secs();
    let keys = second_factor_keys(&current.user_id, ctx.source_ip.as_deref());
    write_transaction(conn, |conn| {
        if backed_off(conn, policy, &keys, now)? {
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
        let method = if recovery::looks_like_recovery_code(code) {
            let mut spent = false;
            for hash in recovery::hashes(sealer, &current.user_id, code) {
                if creds::spend_recovery_code(conn, &current.user_id, &hash, now)? {
                    spent = true;
                    break;
                }
            }
            spent.then_some("recovery_code")
        } else {
            match check_totp(
                conn,
                sealer,
                &current.user_id,
                code,
                now,
                TotpSearch::Confirmed,
            )? {
                TotpCheck::Accepted(_) => Some("otp"),
                TotpCheck::Replayed | TotpCheck::Wrong => None,
            }
        };
        let Some(method) = method else {
            count_factor_failure(conn, clock, policy, &ctx, &current.user_id, &keys)?;
            audit::append(
                conn,
                clock,
                &ctx,
                &AuditEvent::MfaFailed {
                    reason: LoginFailure::BadCode,
                },
            )?;
            return Ok(FactorOutcome::Refused);
        };
        let Some(created) = promote(conn, clock, policy, &ctx, current, method)? else {
            return Err(LoginError::Refused(
                "This sign-in has ended. Start again.".into(),
            ));
        };
        for key in &keys {
            creds::clear_failures(conn, key)?;
        }
        audit::append(
            conn,
            clock,
            &ctx,
            &AuditEvent::MfaUsed {
                method: method.to_owned(),
            },
        )?;
        Ok(FactorOutcome::Accepted(created))
    })
}

/// Outcome of re-authenticating with a fresh TOTP code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reauthentication {
    Accepted,
    /// Wrong, replayed or throttled (the detail is for the audit trail only).
    Refused(LoginFailure),
}

/// Re-authentication with a fresh TOTP code at a sensitive moment (emergency access), inside
/// the caller's transaction, under the same rules as the sign-in's second factor: back-off per
/// (account, IP) and per account, the code's time step claimed so it can never be used again,
/// a wrong or replayed code counted as a failed guess (enough of them lock the account). No
/// audit event of its own: the caller records the decision, in the same transaction, as its
/// one event (an account lock is its own event).
pub fn reauthenticate_with_totp(
    conn: &mut DbConnection,
    clock: &dyn Clock,
    sealer: &Sealer,
    policy: &LoginPolicy,
    ctx: &AuditContext,
    user_id: &str,
    code: &str,
) -> Result<Reauthentication, LoginError> {
    let ctx = audit_as(ctx, Some(user_id));
    let now = clock.now_secs();
    let keys = second_factor_keys(user_id, ctx.source_ip.as_deref());
    if backed_off(conn, policy, &keys, now)? {
        return Ok(Reauthentication::Refused(LoginFailure::Throttled));
    }
    let failure = match check_totp(conn, sealer, user_id, code, now, TotpSearch::Confirmed)? {
        TotpCheck::Accepted(_) => {
            for key in &keys {
                creds::clear_failures(conn, key)?;
            }
            return Ok(Reauthentication::Accepted);
        }
        TotpCheck::Replayed => LoginFailure::ReplayedCode,
        TotpCheck::Wrong => LoginFailure::BadCode,
    };
    count_factor_failure(conn, clock, policy, &ctx, user_id, &keys)?;
    Ok(Reauthentication::Refused(failure))
}

enum TotpCheck {
    /// The code matched; the credential id whose step was claimed.
    Accepted(String),
    Replayed,
    Wrong,
}

/// Which TOTP credentials a code is checked against.
enum TotpSearch<'a> {
    Confirmed,
    /// The enrolment started by this session (id hash).
    PendingFor(&'a str),
}

/// Checks `code` against the user's TOTP credentials, claiming its step so it can never be
/// used again.
fn check_totp(
    conn: &mut DbConnection,
    sealer: &Sealer,
    user_id: &str,
    code: &str,
    now: i64,
    search: TotpSearch<'_>,
) -> Result<TotpCheck, LoginError> {
    let candidates = creds::totp_of(conn, user_id)?
        .into_iter()
        .filter(|t| match search {
            TotpSearch::Confirmed => t.confirmed,
            TotpSearch::PendingFor(session) => {
                !t.confirmed && t.pending_session.as_deref() == Some(session)
            }
        });
    let enrolling = matches!(search, TotpSearch::PendingFor(_));
    for row in candidates {
        let secret = sealer
            .open(totp_aad(&row.id), &row.secret_sealed)
            .ok()
            .and_then(|s| totp::decode_secret(&s))
            .ok_or_else(|| {
                LoginError::Store(StoreError::Corrupt("TOTP secret does not open".into()))
            })?;
        let Some(generator) = totp::Totp::new(&secret) else {
            continue;
        };
        // Ignore `last_step` here and let the conditional update decide, so a replay is told
        // apart from a wrong code and a race has exactly one winner.
        if let Some(step) = generator.matching_step(code, now, None) {
            return Ok(if creds::claim_totp_step(conn, &row.id, step, enrolling)? {
                TotpCheck::Accepted(row.id)
            } else {
                TotpCheck::Replayed
            });
        }
    }
    Ok(TotpCheck::Wrong)
}

/// How recent the last sign-in must be before adding or replacing a second factor: taking
/// over an unattended session must not be enough to plant a new authenticator.
pub const REAUTHENTICATION_WINDOW_SECONDS: i64 = 600;

/// Whether the session proved itself recently enough to change the account's factors: its
/// second factor (or, without one yet, its password) within the re-authentication window.
pub fn recently_authenticated(
    conn: &mut DbConnection,
    current: &SessionInfo,
    now: i64,
) -> Result<bool, StoreError> {
    let proof = if has_second_factor(conn, &current.user_id)? {
        current.mfa_at
    } else {
        Some(current.authenticated_at)
    };
    Ok(proof.is_some_and(|at| now - at <= REAUTHENTICATION_WINDOW_SECONDS))
}

/// A TOTP enrolment in progress: what the page shows.
#[derive(Debug, Clone)]
pub struct TotpEnrolment {
    pub secret_base32: String,
    pub provisioning_uri: String,
    pub qr_svg: String,
}

/// Starts (or resumes, within ten minutes and in the same session) a TOTP enrolment: an
/// unconfirmed, sealed secret that only this session may confirm.
pub fn start_totp_enrolment(
    conn: &mut DbConnection,
    clock: &dyn Clock,
    sealer: &Sealer,
    issuer: &str,
    current: &SessionInfo,
) -> Result<TotpEnrolment, LoginError> {
    let now = clock.now_secs();
    let pending = creds::totp_of(conn, &current.user_id)?
        .into_iter()
        .find(|t| {
            !t.confirmed
                && now - t.created_at < 600
                && t.pending_session.as_deref() == Some(current.id_hash.as_str())
        });
    let secret = match pending
        .and_then(|row| sealer.open(totp_aad(&row.id), &row.secret_sealed).ok())
        .and_then(|s| totp::decode_secret(&s))
    {
        Some(secret) => secret,
        None => {
            let secret = totp::generate_secret();
            let id = random_token(12);
            let sealed = sealer
                .seal(totp_aad(&id), totp::encode_secret(&secret).as_bytes())
                .map_err(|e| LoginError::Store(StoreError::Corrupt(e.to_string())))?;
            write_transaction(conn, |conn| {
                creds::delete_unconfirmed_totp(conn, &current.user_id)?;
                creds::insert_totp(
                    conn,
                    &TotpRow {
                        id,
                        user_id: current.user_id.clone(),
                        secret_sealed: sealed,
                        confirmed: false,
                        last_step: None,
                        pending_session: Some(current.id_hash.clone()),
                        created_at: now,
                    },
                )?;
                Ok::<_, LoginError>(())
            })?;
            secret
        }
    };
    let uri = totp::provisioning_uri(issuer, &current.username, &secret);
    Ok(TotpEnrolment {
        secret_base32: totp::base32(&secret),
        qr_svg: totp::qr_svg(&uri),
        provisioning_uri: uri,
    })
}

/// Result of confirming a TOTP enrolment.
#[derive(Debug)]
pub struct EnrolmentDone {
    /// Shown once; only keyed hashes are kept.
    pub recovery_codes: Vec<String>,
    /// A new session when the enrolment completed a sign-in.
    pub session: Option<NewSession>,
}

/// Confirms this session's pending TOTP secret with a valid code. The new credential replaces
/// any previous TOTP factor, ten fresh recovery codes replace the old ones, and the user's other
/// sessions end. An enrolment-stage session may only set up the *first* factor: once one
/// exists, it must sign in with it instead.
pub fn confirm_totp_enrolment(
    conn: &mut DbConnection,
    clock: &dyn Clock,
    policy: &LoginPolicy,
    ctx: &AuditContext,
    sealer: &Sealer,
    current: &SessionInfo,
    code: &str,
) -> Result<Option<EnrolmentDone>, LoginError> {
    let ctx = audit_as(ctx, Some(&current.user_id));
    let now = clock.now_secs();
    let keys = second_factor_keys(&current.user_id, ctx.source_ip.as_deref());
    write_transaction(conn, |conn| {
        if current.stage == Stage::Active && !recently_authenticated(conn, current, now)? {
            return Err(LoginError::ReauthenticationRequired);
        }
        if current.stage == Stage::Enrolment && has_second_factor(conn, &current.user_id)? {
            return Err(LoginError::Refused(
                "A second factor was set up for this account meanwhile. Sign in again and use it."
                    .into(),
            ));
        }
        if backed_off(conn, policy, &keys, now)? {
            audit::append(
                conn,
                clock,
                &ctx,
                &AuditEvent::MfaFailed {
                    reason: LoginFailure::Throttled,
                },
            )?;
            return Ok(None);
        }
        let TotpCheck::Accepted(kept) = check_totp(
            conn,
            sealer,
            &current.user_id,
            code,
            now,
            TotpSearch::PendingFor(&current.id_hash),
        )?
        else {
            count_factor_failure(conn, clock, policy, &ctx, &current.user_id, &keys)?;
            audit::append(
                conn,
                clock,
                &ctx,
                &AuditEvent::MfaFailed {
                    reason: LoginFailure::BadCode,
                },
            )?;
            return Ok(None);
        };
        creds::delete_totp_except(conn, &current.user_id, &kept)?;
        let codes: Vec<String> = (0..recovery::COUNT).map(|_| recovery::generate()).collect();
        let rows: Vec<RecoveryCodeRow> = codes
            .iter()
            .map(|c| RecoveryCodeRow {
                id: random_token(12),
                user_id: current.user_id.clone(),
                code_hash: recovery::hash(sealer, &current.user_id, c),
                used_at: None,
                created_at: now,
            })
            .collect();
        creds::replace_recovery_codes(conn, &current.user_id, &rows)?;
        audit::append(
            conn,
            clock,
            &ctx,
            &AuditEvent::MfaEnrolled {
                method: "totp".into(),
            },
        )?;
        let session = if current.stage == Stage::Enrolment {
            let Some(created) = promote(conn, clock, policy, &ctx, current, "otp")? else {
                return Err(LoginError::Refused(
                    "This sign-in has ended. Start again.".into(),
                ));
            };
            Some(created)
        } else {
            None
        };
        let keep = session
            .as_ref()
            .map(|s| session_hash(&s.cookie_value))
            .unwrap_or_else(|| current.id_hash.clone());
        creds::end_sessions_of(conn, &current.user_id, Some(&keep), now, "factor_changed")?;
        Ok(Some(EnrolmentDone {
            recovery_codes: codes,
            session,
        }))
    })
}

/// What the account page shows about a user's sign-in.
#[derive(Debug, Clone)]
pub struct AccountOverview {
    pub totp_enrolled: bool,
    pub recovery_codes_left: i64,
    pub mfa_required: bool,
    pub sessions: Vec<SessionSummary>,
    pub passkeys: Vec<super::passkeys::PasskeySummary>,
}

#[derive(Debug, Clone)]
pub struct SessionSummary {
    pub public_id: String,
    pub created_at: i64,
    pub last_seen_at: i64,
    pub source_ip: Option<String>,
    pub user_agent: Option<String>,
    pub current: bool,
}

pub fn account_overview(
    conn: &mut DbConnection,
    current: &SessionInfo,
) -> Result<AccountOverview, StoreError> {
    let sessions = creds::live_sessions_of(conn, &current.user_id)?
        .into_iter()
        .map(|s| SessionSummary {
            current: s.id_hash == current.id_hash,
            public_id: s.public_id,
            created_at: s.created_at,
            last_seen_at: s.last_seen_at,
            source_ip: s.source_ip,
            user_agent: s.user_agent,
        })
        .collect();
    Ok(AccountOverview {
        totp_enrolled: creds::totp_of(conn, &current.user_id)?
            .iter()
            .any(|t| t.confirmed),
        passkeys: super::passkeys::list(conn, &current.user_id)?,
        recovery_codes_left: creds::unused_recovery_codes(conn, &current.user_id)?,
        mfa_required: mfa_required(conn, &current.user_id)?,
        sessions,
    })
}

/// Ends one of the signed-in user's own sessions (by its public id).
pub fn end_own_session(
    conn: &mut DbConnection,
    clock: &dyn Clock,
    ctx: &AuditContext,
    current: &SessionInfo,
    public_id: &str,
) -> Result<bool, StoreError> {
    let ctx = audit_as(ctx, Some(&current.user_id));
    write_transaction(conn, |conn| {
        let target = creds::live_sessions_of(conn, &current.user_id)?
            .into_iter()
            .find(|s| s.public_id == public_id);
        let Some(target) = target else {
            return Ok(false);
        };
        let ended = creds::end_session(conn, &target.id_hash, clock.now_secs(), "ended_by_user")?;
        if ended {
            audit::append(
                conn,
                clock,
                &ctx,
                &AuditEvent::SessionEnded {
                    session: target.public_id,
                    reason: "ended_by_user".into(),
                },
            )?;
        }
        Ok(ended)
    })
}

/// Ends a session for `reason` (`logout`, or `replaced` when a new sign-in in the same browser
/// takes its place), recording it once.
pub fn end(
    conn: &mut DbConnection,
    clock: &dyn Clock,
    ctx: &AuditContext,
    session: &SessionInfo,
    reason: &str,
) -> Result<(), StoreError> {
    let ctx = audit_as(ctx, Some(&session.user_id));
    write_transaction(conn, |conn| {
        if creds::end_session(conn, &session.id_hash, clock.now_secs(), reason)? {
            audit::append(
                conn,
                clock,
                &ctx,
                &AuditEvent::SessionEnded {
                    session: session.public_id.clone(),
                    reason: reason.to_owned(),
                },
            )?;
        }
        Ok(())
    })
}

/// Removes the user's TOTP factor and recovery codes, unless a role requires MFA.
pub fn remove_totp(
    conn: &mut DbConnection,
    clock: &dyn Clock,
    ctx: &AuditContext,
    current: &SessionInfo,
) -> Result<(), LoginError> {
    let ctx = audit_as(ctx, Some(&current.user_id));
    write_transaction(conn, |conn| {
        let has_passkey = !crate::store::passkeys::of_user(conn, &current.user_id)?.is_empty();
        if mfa_required(conn, &current.user_id)? && !has_passkey {
            return Err(LoginError::Refused(
                "Your role requires a second factor; add a passkey before removing the authenticator app.".into(),
            ));
        }
        if creds::delete_totp(conn, &current.user_id)? > 0 {
            creds::delete_recovery_codes(conn, &current.user_id)?;
            audit::append(
                conn,
                clock,
                &ctx,
                &AuditEvent::MfaRemoved {
                    method: "totp".into(),
                },
            )?;
        }
        Ok(())
    })
}

/// Changes the signed-in user's password after checking the current one; every other session
/// of the user ends.
#[allow(clippy::too_many_arguments)]
pub async fn change_password(
    db: &Db,
    hashing: &PasswordHashing,
    clock: &SharedClock,
    policy: &LoginPolicy,
    ctx: &AuditContext,
    current: &SessionInfo,
    old: String,
    new: String,
) -> Result<(), LoginError> {
    let user_id = current.user_id.clone();
    let stored = db
        .run(move |conn| {
            Ok::<_, LoginError>(
                creds::login_user_by_id(conn, &user_id)?.and_then(|u| u.password_hash),
            )
        })
        .await?;
    // Guessing the current password from a taken-over session backs off and counts toward the
    // account lock like any other password guess.
    let ctx_user = audit_as(ctx, Some(&current.user_id));
    let keys = [throttle::key(
        Purpose::Password,
        &current.username,
        ctx.source_ip.as_deref().unwrap_or(""),
    )];
    let (checked_keys, now, policy_copy) = (keys.clone(), clock.now_secs(), *policy);
    if db
        .run(move |conn| backed_off(conn, &policy_copy, &checked_keys, now))
        .await?
    {
        return Err(LoginError::Refused(
            "Too many attempts. Wait a little and try again.".into(),
        ));
    }
    if !hashing.verify(stored, old).await?.ok {
        let (clock_arc, user_id, failed_keys) =
            (clock.clone(), current.user_id.clone(), keys.clone());
        db.run(move |conn| {
            write_transaction(conn, |conn| {
                count_factor_failure(
                    conn,
                    clock_arc.as_ref(),
                    &policy_copy,
                    &ctx_user,
                    &user_id,
                    &failed_keys,
                )?;
                audit::append(
                    conn,
                    clock_arc.as_ref(),
                    &ctx_user,
                    &AuditEvent::LoginFailed {
                        reason: LoginFailure::BadPassword,
                    },
                )?;
                Ok::<_, LoginError>(())
            })
        })
        .await?;
        return Err(LoginError::Refused(
            "The current password is not correct.".into(),
        ));
    }
    super::password::check_policy(&new, &[&current.username, &current.display_name])
        .map_err(|e| LoginError::Refused(format!("The new password {e}.")))?;
    let hash = hashing.hash(new).await?;
    let now = clock.now_secs();
    let ctx = audit_as(ctx, Some(&current.user_id));
    let (user_id, keep) = (current.user_id.clone(), current.id_hash.clone());
    let clock = clock.clone();
    db.run(move |conn| {
        write_transaction(conn, |conn| {
            creds::set_password(conn, &user_id, &hash, now)?;
            creds::end_sessions_of(conn, &user_id, Some(&keep), now, "password_changed")?;
            audit::append(
                conn,
                clock.as_ref(),
                &ctx,
                &AuditEvent::PasswordChanged {
                    user_id: user_id.clone(),
                    by_operator: false,
                },
            )?;
            Ok::<_, LoginError>(())
        })
    })
    .await
}
