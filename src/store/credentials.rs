//! Rows behind login: password hashes and lock state on `users`, TOTP credentials, recovery
//! codes, sessions and the failed-attempt counters.
//!
//! Every "use once" update is a single conditional UPDATE whose affected-row count says whether
//! this request won: a TOTP step, a recovery code or a lock can never be taken twice, also when
//! requests race on several nodes.

use diesel::prelude::*;

use super::changes::{self, Change};
use super::schema::{auth_throttle, recovery_codes, sessions, totp_credentials, users};
use super::{DbConnection, StoreError};

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = users)]
pub struct LoginUserRow {
    pub id: String,
    pub username: String,
    pub display_name: String,
    pub fhir_user: Option<String>,
    pub enabled: bool,
    pub password_hash: Option<String>,
    pub failed_logins: i64,
    pub locked_at: Option<i64>,
}

pub fn login_user_by_name(
    conn: &mut DbConnection,
    username: &str,
) -> Result<Option<LoginUserRow>, StoreError> {
    Ok(users::table
        .filter(users::username.eq(username))
        .select(LoginUserRow::as_select())
        .first(conn)
        .optional()?)
}

pub fn login_user_by_id(
    conn: &mut DbConnection,
    id: &str,
) -> Result<Option<LoginUserRow>, StoreError> {
    Ok(users::table
        .find(id)
        .select(LoginUserRow::as_select())
        .first(conn)
        .optional()?)
}

pub fn set_password(
    conn: &mut DbConnection,
    user_id: &str,
    hash: &str,
    now: i64,
) -> Result<(), StoreError> {
    diesel::update(users::table.find(user_id))
        .set((
            users::password_hash.eq(Some(hash)),
            users::password_changed_at.eq(Some(now)),
            users::updated_at.eq(now),
            users::version.eq(users::version + 1),
        ))
        .execute(conn)?;
    Ok(())
}

/// Counts one more consecutive failure; returns the new count (atomic under concurrency).
pub fn count_failed_login(conn: &mut DbConnection, user_id: &str) -> Result<i64, StoreError> {
    diesel::update(users::table.find(user_id))
        .set(users::failed_logins.eq(users::failed_logins + 1))
        .execute(conn)?;
    Ok(users::table
        .find(user_id)
        .select(users::failed_logins)
        .first(conn)?)
}

pub fn reset_failed_logins(conn: &mut DbConnection, user_id: &str) -> Result<(), StoreError> {
    diesel::update(
        users::table
            .find(user_id)
            .filter(users::failed_logins.ne(0)),
    )
    .set(users::failed_logins.eq(0))
    .execute(conn)?;
    Ok(())
}

/// Locks the account unless already locked; true when this call locked it.
pub fn lock(conn: &mut DbConnection, user_id: &str, now: i64) -> Result<bool, StoreError> {
    Ok(diesel::update(
        users::table
            .find(user_id)
            .filter(users::locked_at.is_null()),
    )
    .set(users::locked_at.eq(Some(now)))
    .execute(conn)?
        == 1)
}

/// Unlocks and clears the failure counter; true when the account was locked.
pub fn unlock(conn: &mut DbConnection, user_id: &str) -> Result<bool, StoreError> {
    let was_locked = diesel::update(
        users::table
            .find(user_id)
            .filter(users::locked_at.is_not_null()),
    )
    .set((users::locked_at.eq(None::<i64>), users::failed_logins.eq(0)))
    .execute(conn)?
        == 1;
    reset_failed_logins(conn, user_id)?;
    Ok(was_locked)
}

pub fn set_enabled(
    conn: &mut DbConnection,
    user_id: &str,
    enabled: bool,
    now: i64,
) -> Result<bool, StoreError> {
    let changed = diesel::update(
        users::table
            .find(user_id)
            .filter(users::enabled.ne(enabled)),
    )
    .set((
        users::enabled.eq(enabled),
        users::updated_at.eq(now),
        users::version.eq(users::version + 1),
    ))
    .execute(conn)?
        == 1;
    if changed {
        changes::publish(conn, Change::User(user_id.to_owned()))?;
    }
    Ok(changed)
}

// --- TOTP ---------------------------------------------------------------------------------

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = totp_credentials)]
pub struct TotpRow {
    pub id: String,
    pub user_id: String,
    pub secret_sealed: String,
    pub confirmed: bool,
    pub last_step: Option<i64>,
    pub pending_session: Option<String>,
    pub created_at: i64,
}

pub fn totp_of(conn: &mut DbConnection, user_id: &str) -> Result<Vec<TotpRow>, StoreError> {
    Ok(totp_credentials::table
        .filter(totp_credentials::user_id.eq(user_id))
        .select(TotpRow::as_select())
        .order(totp_credentials::created_at)
        .load(conn)?)
}

pub fn insert_totp(conn: &mut DbConnection, row: &TotpRow) -> Result<(), StoreError> {
    diesel::insert_into(totp_credentials::table)
        .values(row)
        .execute(conn)?;
    Ok(())
}

pub fn delete_unconfirmed_totp(
    conn: &mut DbConnection,
    user_id: &str,
) -> Result<usize, StoreError> {
    Ok(diesel::delete(
        totp_credentials::table
            .filter(totp_credentials::user_id.eq(user_id))
            .filter(totp_credentials::confirmed.eq(false)),
    )
    .execute(conn)?)
}

pub fn delete_totp(conn: &mut DbConnection, user_id: &str) -> Result<usize, StoreError> {
    Ok(
        diesel::delete(totp_credentials::table.filter(totp_credentials::user_id.eq(user_id)))
            .execute(conn)?,
    )
}

pub fn delete_totp_except(
    conn: &mut DbConnection,
    user_id: &str,
    keep_id: &str,
) -> Result<usize, StoreError> {
    Ok(diesel::delete(
        totp_credentials::table
            .filter(totp_credentials::user_id.eq(user_id))
            .filter(totp_credentials::id.ne(keep_id)),
    )
    .execute(conn)?)
}

/// Records `step` as used if it is later than the last used step; false means a replay (or a
/// concurrent request used it first).
pub fn claim_totp_step(
    conn: &mut DbConnection,
    credential_id: &str,
    step: i64,
    confirm: bool,
) -> Result<bool, StoreError> {
    let target = totp_credentials::table
        .filter(totp_credentials::id.eq(credential_id))
        .filter(
            totp_credentials::last_step
                .is_null()
                .or(totp_credentials::last_step.lt(step)),
        );
    let changed = if confirm {
        diesel::update(target)
            .set((
                totp_credentials::last_step.eq(Some(step)),
                totp_credentials::confirmed.eq(true),
            ))
            .execute(conn)?
    } else {
        diesel::update(target)
            .set(totp_credentials::last_step.eq(Some(step)))
            .execute(conn)?
    };
    Ok(changed == 1)
}

// --- Recovery codes -----------------------------------------------------------------------

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = recovery_codes)]
pub struct RecoveryCodeRow {
    pub id: String,
    pub user_id: String,
    pub code_hash: String,
    pub used_at: Option<i64>,
    pub created_at: i64,
}

pub fn replace_recovery_codes(
    conn: &mut DbConnection,
    user_id: &str,
    rows: &[RecoveryCodeRow],
) -> Result<(), StoreError> {
    diesel::delete(recovery_codes::table.filter(recovery_codes::user_id.eq(user_id)))
        .execute(conn)?;
    // One statement per row: the multi-backend connection has no batch insert.
    for row in rows {
        diesel::insert_into(recovery_codes::table)
            .values(row)
            .execute(conn)?;
    }
    Ok(())
}

pub fn delete_recovery_codes(conn: &mut DbConnection, user_id: &str) -> Result<usize, StoreError> {
    Ok(
        diesel::delete(recovery_codes::table.filter(recovery_codes::user_id.eq(user_id)))
            .execute(conn)?,
    )
}

pub fn unused_recovery_codes(conn: &mut DbConnection, user_id: &str) -> Result<i64, StoreError> {
    Ok(recovery_codes::table
        .filter(recovery_codes::user_id.eq(user_id))
        .filter(recovery_codes::used_at.is_null())
        .count()
        .get_result(conn)?)
}

/// Spends a recovery code; true only for the one request that spent it.
pub fn spend_recovery_code(
    conn: &mut DbConnection,
    user_id: &str,
    code_hash: &str,
    now: i64,
) -> Result<bool, StoreError> {
    Ok(diesel::update(
        recovery_codes::table
            .filter(recovery_codes::user_id.eq(user_id))
            .filter(recovery_codes::code_hash.eq(code_hash))
            .filter(recovery_codes::used_at.is_null()),
    )
    .set(recovery_codes::used_at.eq(Some(now)))
    .execute(conn)?
        == 1)
}

// --- Sessions -----------------------------------------------------------------------------

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = sessions)]
// None is bound as NULL (these columns have no defaults): the statement's SQL is the same
// for every row, so PostgreSQL keeps it prepared too (`grants::tests`).
#[diesel(treat_none_as_default_value = false)]
pub struct SessionRow {
    pub id_hash: String,
    pub public_id: String,
    pub user_id: String,
    pub stage: String,
    pub amr: String,
    pub created_at: i64,
    pub last_seen_at: i64,
    pub expires_at: i64,
    pub authenticated_at: i64,
    pub mfa_at: Option<i64>,
    pub source_ip: Option<String>,
    pub user_agent: Option<String>,
    pub ended_at: Option<i64>,
    pub end_reason: Option<String>,
}

pub fn insert_session(conn: &mut DbConnection, row: &SessionRow) -> Result<(), StoreError> {
    diesel::insert_into(sessions::table)
        .values(row)
        .execute(conn)?;
    Ok(())
}

pub fn find_session(
    conn: &mut DbConnection,
    id_hash: &str,
) -> Result<Option<SessionRow>, StoreError> {
    Ok(sessions::table
        .find(id_hash)
        .select(SessionRow::as_select())
        .first(conn)
        .optional()?)
}

pub fn live_sessions_of(
    conn: &mut DbConnection,
    user_id: &str,
) -> Result<Vec<SessionRow>, StoreError> {
    Ok(sessions::table
        .filter(sessions::user_id.eq(user_id))
        .filter(sessions::ended_at.is_null())
        .select(SessionRow::as_select())
        .order(sessions::created_at.desc())
        .load(conn)?)
}

pub fn touch_session(conn: &mut DbConnection, id_hash: &str, now: i64) -> Result<(), StoreError> {
    diesel::update(sessions::table.find(id_hash))
        .set(sessions::last_seen_at.eq(now))
        .execute(conn)?;
    Ok(())
}

/// Moves the last-seen time of the session `public_id` to `now` when it is at least
/// `interval` seconds old (an app's refresh on an online-access grant is activity, written at
/// most once a minute).
pub fn mark_session_seen(
    conn: &mut DbConnection,
    public_id: &str,
    now: i64,
    interval: i64,
) -> Result<(), StoreError> {
    let seen = MarkSessionSeen::new(Some(public_id), now, interval);
    on_backend!(conn, c => diesel::query_dsl::methods::ExecuteDsl::execute(seen, c))?;
    Ok(())
}

/// `mark_session_seen`'s UPDATE as fixed SQL, prepared once per connection (diesel prepares
/// every UPDATE it builds afresh); the refresh rotation's one PostgreSQL statement embeds it.
/// A `public_id` of `None` matches no session.
#[derive(Debug, Clone, Copy)]
pub(super) struct MarkSessionSeen<'a> {
    public_id: Option<&'a str>,
    now: i64,
    /// Sessions last seen at or before this are marked.
    seen_before: i64,
}

impl<'a> MarkSessionSeen<'a> {
    pub(super) fn new(public_id: Option<&'a str>, now: i64, interval: i64) -> Self {
        Self {
            public_id,
            now,
            seen_before: now - interval,
        }
    }
}

impl diesel::query_builder::QueryId for MarkSessionSeen<'_> {
    type QueryId = MarkSessionSeen<'static>;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl<'a, DB> diesel::query_builder::QueryFragment<DB> for MarkSessionSeen<'a>
where
    DB: diesel::backend::Backend,
    i64: diesel::serialize::ToSql<diesel::sql_types::BigInt, DB>,
    Option<&'a str>:
        diesel::serialize::ToSql<diesel::sql_types::Nullable<diesel::sql_types::Text>, DB>,
{
    fn walk_ast<'b>(
        &'b self,
        mut out: diesel::query_builder::AstPass<'_, 'b, DB>,
    ) -> QueryResult<()> {
        use diesel::sql_types::{BigInt, Nullable, Text};
        out.push_sql("UPDATE sessions SET last_seen_at = ");
        out.push_bind_param::<BigInt, _>(&self.now)?;
        out.push_sql(" WHERE public_id = ");
        out.push_bind_param::<Nullable<Text>, _>(&self.public_id)?;
        out.push_sql(" AND last_seen_at <= ");
        out.push_bind_param::<BigInt, _>(&self.seen_before)?;
        Ok(())
    }
}

/// Ends a live session; true when this call ended it.
pub fn end_session(
    conn: &mut DbConnection,
    id_hash: &str,
    now: i64,
    reason: &str,
) -> Result<bool, StoreError> {
    let ended = diesel::update(
        sessions::table
            .find(id_hash)
            .filter(sessions::ended_at.is_null()),
    )
    .set((
        sessions::ended_at.eq(Some(now)),
        sessions::end_reason.eq(Some(reason)),
    ))
    .execute(conn)?
        == 1;
    if ended {
        // Only a fully signed-in session can hold grants (online_access) that caches know of;
        // the sign-in steps before it end theirs without troubling every node's caches.
        let (public_id, stage): (String, String) = sessions::table
            .find(id_hash)
            .select((sessions::public_id, sessions::stage))
            .first(conn)?;
        if stage == crate::authn::session::Stage::Active.as_str() {
            changes::publish(conn, Change::Session(public_id))?;
        }
    }
    Ok(ended)
}

/// Ends every live session of a user (optionally keeping one); returns how many.
pub fn end_sessions_of(
    conn: &mut DbConnection,
    user_id: &str,
    keep: Option<&str>,
    now: i64,
    reason: &str,
) -> Result<usize, StoreError> {
    let mut query = diesel::update(sessions::table)
        .filter(sessions::user_id.eq(user_id))
        .filter(sessions::ended_at.is_null())
        .into_boxed();
    if let Some(keep) = keep {
        query = query.filter(sessions::id_hash.ne(keep.to_owned()));
    }
    let n = query
        .set((
            sessions::ended_at.eq(Some(now)),
            sessions::end_reason.eq(Some(reason)),
        ))
        .execute(conn)?;
    if n > 0 {
        changes::publish(conn, Change::User(user_id.to_owned()))?;
    }
    Ok(n)
}

// --- Failed-attempt counters --------------------------------------------------------------

#[derive(Debug, Clone, Copy, Queryable, Selectable)]
#[diesel(table_name = auth_throttle)]
pub struct ThrottleRow {
    pub failures: i64,
    pub last_failure_at: i64,
}

pub fn throttle(
    conn: &mut DbConnection,
    key_hash: &str,
) -> Result<Option<ThrottleRow>, StoreError> {
    Ok(auth_throttle::table
        .find(key_hash)
        .select(ThrottleRow::as_select())
        .first(conn)
        .optional()?)
}

/// Counts a failure atomically (one upsert), so concurrent failures all count. The same SQL
/// runs on both backends; the multi-backend query builder has no ON CONFLICT, so it is bound on
/// the inner connection.
pub fn count_failure(conn: &mut DbConnection, key_hash: &str, now: i64) -> Result<(), StoreError> {
    use diesel::sql_types::{BigInt, Text};
    const UPSERT: &str = "INSERT INTO auth_throttle (key_hash, failures, last_failure_at) \
         VALUES ($1, 1, $2) ON CONFLICT (key_hash) DO UPDATE \
         SET failures = auth_throttle.failures + 1, last_failure_at = excluded.last_failure_at";
    let query = diesel::sql_query(UPSERT)
        .bind::<Text, _>(key_hash)
        .bind::<BigInt, _>(now);
    match conn {
        DbConnection::Sqlite(c) => query.execute(c)?,
        DbConnection::Postgres(c) => query.execute(c)?,
    };
    Ok(())
}

pub fn clear_failures(conn: &mut DbConnection, key_hash: &str) -> Result<(), StoreError> {
    diesel::delete(auth_throttle::table.find(key_hash)).execute(conn)?;
    Ok(())
}

pub fn find_session_by_public_id(
    conn: &mut DbConnection,
    public_id: &str,
) -> Result<Option<SessionRow>, StoreError> {
    Ok(sessions::table
        .filter(sessions::public_id.eq(public_id))
        .select(SessionRow::as_select())
        .first(conn)
        .optional()?)
}
