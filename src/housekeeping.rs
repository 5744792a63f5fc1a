//! Housekeeping (DESIGN.md §4): rows that have outlived their purpose — ended or expired
//! sessions, stale back-off counters, expired WebAuthn ceremonies, abandoned TOTP enrolments,
//! expired authorization requests, launches, codes, assertion jtis, token families, expired
//! access tokens, and old rows of the change feed —
//! are deleted in bounded batches by a background task on every node (deletes are idempotent,
//! so nodes need no coordination). Audit events are never touched.

use diesel::prelude::*;

use crate::store::schema::{
    access_tokens, assertion_jtis, auth_requests, auth_throttle, authorization_codes,
    enrolment_links, launch_contexts, refresh_tokens, sessions, token_families, totp_credentials,
    webauthn_challenges,
};
use crate::store::{DbConnection, StoreError};

/// How long an ended or expired session row is kept (for investigations beside the audit
/// trail, which keeps its own record forever).
pub const SESSION_RETENTION_SECONDS: i64 = 7 * 86_400;
/// Back-off counters older than this no longer delay anyone.
pub const THROTTLE_RETENTION_SECONDS: i64 = 86_400;
/// An enrolment not confirmed within this time is abandoned.
pub const PENDING_TOTP_SECONDS: i64 = 3_600;
/// Expired codes and token families are kept this long: a code presented again within a day
/// still revokes what it issued, and investigators can see recent grants beside the audit trail.
pub const GRANT_RETENTION_SECONDS: i64 = 86_400;
/// Rows of the change feed (`store::changes`) are kept this long.
pub const CHANGE_RETENTION_SECONDS: i64 = 3_600;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    pub sessions: usize,
    pub throttle: usize,
    pub challenges: usize,
    pub pending_totp: usize,
    /// Authorization requests, launches, codes, assertion jtis and token families (with
    /// their tokens).
    pub grants: usize,
    /// Rows of the change feed every node has long read.
    pub changes: usize,
}

impl Swept {
    pub fn total(&self) -> usize {
        self.sessions
            + self.throttle
            + self.challenges
            + self.pending_totp
            + self.grants
            + self.changes
    }

    /// Whether some kind filled its batch, so more may be waiting.
    pub fn any_full(&self, batch: i64) -> bool {
        let batch = usize::try_from(batch).unwrap_or(usize::MAX);
        [
            self.sessions,
            self.throttle,
            self.challenges,
            self.pending_totp,
            self.grants,
            self.changes,
        ]
        .iter()
        .any(|n| *n >= batch)
    }
}

/// One bounded pass: at most `batch` rows of each kind. Returns what it deleted; call again
/// while it keeps finding full batches.
pub fn sweep(
    conn: &mut DbConnection,
    now: i64,
    batch: i64,
    max_backoff_seconds: i64,
) -> Result<Swept, StoreError> {
    let old_sessions: Vec<String> = sessions::table
        .select(sessions::id_hash)
        .filter(
            sessions::ended_at
                .lt(now - SESSION_RETENTION_SECONDS)
                .or(sessions::expires_at.lt(now - SESSION_RETENTION_SECONDS)),
        )
        .limit(batch)
        .load(conn)?;
    let sessions = diesel::delete(sessions::table.filter(sessions::id_hash.eq_any(&old_sessions)))
        .execute(conn)?;

    let throttle_cutoff = now - THROTTLE_RETENTION_SECONDS.max(max_backoff_seconds);
    let old_keys: Vec<String> = auth_throttle::table
        .select(auth_throttle::key_hash)
        .filter(auth_throttle::last_failure_at.lt(throttle_cutoff))
        .limit(batch)
        .load(conn)?;
    let throttle =
        diesel::delete(auth_throttle::table.filter(auth_throttle::key_hash.eq_any(&old_keys)))
            .execute(conn)?;

    let old_challenges: Vec<String> = webauthn_challenges::table
        .select(webauthn_challenges::id)
        .filter(webauthn_challenges::expires_at.le(now))
        .limit(batch)
        .load(conn)?;
    let challenges = diesel::delete(
        webauthn_challenges::table.filter(webauthn_challenges::id.eq_any(&old_challenges)),
    )
    .execute(conn)?;

    let abandoned: Vec<String> = totp_credentials::table
        .select(totp_credentials::id)
        .filter(totp_credentials::confirmed.eq(false))
        .filter(totp_credentials::created_at.lt(now - PENDING_TOTP_SECONDS))
        .limit(batch)
        .load(conn)?;
    let pending_totp =
        diesel::delete(totp_credentials::table.filter(totp_credentials::id.eq_any(&abandoned)))
            .execute(conn)?;

    let grants = sweep_grants(conn, now, batch)?;

    // The change feed by the system clock (its rows carry it): every node reads it within a
    // second, so an hour is ample; a node that somehow missed purged rows flushes its caches.
    let system_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let changes =
        crate::store::changes::purge_before(conn, system_now - CHANGE_RETENTION_SECONDS, batch)?;

    Ok(Swept {
        sessions,
        throttle,
        challenges,
        pending_totp,
        grants,
        changes,
    })
}

fn sweep_grants(conn: &mut DbConnection, now: i64, batch: i64) -> Result<usize, StoreError> {
    let mut deleted = 0;
    let requests: Vec<String> = auth_requests::table
        .select(auth_requests::id_hash)
        .filter(auth_requests::expires_at.le(now))
        .limit(batch)
        .load(conn)?;
    deleted +=
        diesel::delete(auth_requests::table.filter(auth_requests::id_hash.eq_any(&requests)))
            .execute(conn)?;
    let launches: Vec<String> = launch_contexts::table
        .select(launch_contexts::id_hash)
        .filter(launch_contexts::expires_at.le(now))
        .limit(batch)
        .load(conn)?;
    deleted +=
        diesel::delete(launch_contexts::table.filter(launch_contexts::id_hash.eq_any(&launches)))
            .execute(conn)?;
    let codes: Vec<String> = authorization_codes::table
        .select(authorization_codes::code_hash)
        .filter(authorization_codes::expires_at.lt(now - GRANT_RETENTION_SECONDS))
        .limit(batch)
        .load(conn)?;
    deleted += diesel::delete(
        authorization_codes::table.filter(authorization_codes::code_hash.eq_any(&codes)),
    )
    .execute(conn)?;
    let jtis: Vec<(String, String)> = assertion_jtis::table
        .select((assertion_jtis::client_id, assertion_jtis::jti))
        .filter(assertion_jtis::expires_at.le(now))
        .limit(batch)
        .load(conn)?;
    for (client_id, jti) in &jtis {
        deleted += diesel::delete(assertion_jtis::table.find((client_id, jti))).execute(conn)?;
    }
    let links: Vec<String> = enrolment_links::table
        .select(enrolment_links::token_hash)
        .filter(enrolment_links::expires_at.lt(now - GRANT_RETENTION_SECONDS))
        .limit(batch)
        .load(conn)?;
    deleted +=
        diesel::delete(enrolment_links::table.filter(enrolment_links::token_hash.eq_any(&links)))
            .execute(conn)?;
    // Inside a long-lived family, access tokens that expired are kept a day, then go: a family
    // refreshed every few minutes for months must not keep every access token it ever had.
    // Rotated refresh tokens (a hash and two times each) stay for the family's life: presenting
    // one, however late, is reuse and revokes the family (RFC 9700 §4.14.2).
    let expired_access: Vec<String> = access_tokens::table
        .select(access_tokens::jti)
        .filter(access_tokens::expires_at.lt(now - GRANT_RETENTION_SECONDS))
        .limit(batch)
        .load(conn)?;
    deleted +=
        diesel::delete(access_tokens::table.filter(access_tokens::jti.eq_any(&expired_access)))
            .execute(conn)?;
    // A family's tokens never outlive it, so an expired family goes with its tokens.
    let families: Vec<String> = token_families::table
        .select(token_families::id)
        .filter(token_families::expires_at.lt(now - GRANT_RETENTION_SECONDS))
        .limit(batch)
        .load(conn)?;
    deleted +=
        diesel::delete(access_tokens::table.filter(access_tokens::family_id.eq_any(&families)))
            .execute(conn)?;
    deleted +=
        diesel::delete(refresh_tokens::table.filter(refresh_tokens::family_id.eq_any(&families)))
            .execute(conn)?;
    deleted += diesel::delete(token_families::table.filter(token_families::id.eq_any(&families)))
        .execute(conn)?;
    Ok(deleted)
}
