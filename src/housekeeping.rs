//! Housekeeping (DESIGN.md §4): rows that have outlived their purpose — ended or expired
//! sessions, stale back-off counters, expired WebAuthn ceremonies, abandoned TOTP enrolments —
//! are deleted in bounded batches by a background task on every node (deletes are idempotent,
//! so nodes need no coordination). Audit events are never touched.

use diesel::prelude::*;

use crate::store::schema::{auth_throttle, sessions, totp_credentials, webauthn_challenges};
use crate::store::{DbConnection, StoreError};

/// How long an ended or expired session row is kept (for investigations beside the audit
/// trail, which keeps its own record forever).
pub const SESSION_RETENTION_SECONDS: i64 = 7 * 86_400;
/// Back-off counters older than this no longer delay anyone.
pub const THROTTLE_RETENTION_SECONDS: i64 = 86_400;
/// An enrolment not confirmed within this time is abandoned.
pub const PENDING_TOTP_SECONDS: i64 = 3_600;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    pub sessions: usize,
    pub throttle: usize,
    pub challenges: usize,
    pub pending_totp: usize,
}

impl Swept {
    pub fn total(&self) -> usize {
        self.sessions + self.throttle + self.challenges + self.pending_totp
    }

    /// Whether some kind filled its batch, so more may be waiting.
    pub fn any_full(&self, batch: i64) -> bool {
        let batch = usize::try_from(batch).unwrap_or(usize::MAX);
        [
            self.sessions,
            self.throttle,
            self.challenges,
            self.pending_totp,
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

    Ok(Swept {
        sessions,
        throttle,
        challenges,
        pending_totp,
    })
}
