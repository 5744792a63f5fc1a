//! Rows behind the SMART App Launch: pending authorization requests, EHR launch contexts,
//! authorization codes, token families with their refresh and access tokens, remembered
//! consents and the client-assertion replay cache.
//!
//! Every "use once" step (a launch, a code, a refresh token, an assertion jti) is one
//! conditional UPDATE or a primary-key INSERT whose outcome says whether this request won, so
//! it can never be taken twice, also when requests race on several nodes.

use diesel::prelude::*;
use diesel::query_builder::{AstPass, QueryFragment, QueryId};
use diesel::query_dsl::methods::ExecuteDsl;
use diesel::serialize::ToSql;
use diesel::sql_types::{BigInt, Text};

use super::audit_events::NewAuditEventRow;
use super::changes::{self, Change};
use super::roles::{AccountRow, RoleRow};
use super::schema::{
    access_tokens, assertion_jtis, audit_events, auth_requests, authorization_codes, consents,
    launch_contexts, refresh_tokens, roles, token_families, user_roles, users,
};
use super::{together, DbConnection, StoreError};

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = auth_requests)]
// None is bound as NULL (these columns have no defaults): the statement's SQL is the same
// for every row, so PostgreSQL keeps it prepared too (`grants::tests`).
#[diesel(treat_none_as_default_value = false)]
pub struct AuthRequestRow {
    pub id_hash: String,
    pub client_id: String,
    pub user_id: Option<String>,
    pub request: String,
    pub offered: String,
    pub patient: Option<String>,
    pub created_at: i64,
    pub expires_at: i64,
    pub completed_at: Option<i64>,
}

pub fn insert_auth_request(
    conn: &mut DbConnection,
    row: &AuthRequestRow,
) -> Result<(), StoreError> {
    diesel::insert_into(auth_requests::table)
        .values(row)
        .execute(conn)?;
    Ok(())
}

pub fn find_auth_request(
    conn: &mut DbConnection,
    id_hash: &str,
) -> Result<Option<AuthRequestRow>, StoreError> {
    Ok(auth_requests::table
        .find(id_hash)
        .select(AuthRequestRow::as_select())
        .first(conn)
        .optional()?)
}

pub fn set_offered(
    conn: &mut DbConnection,
    id_hash: &str,
    offered: &str,
) -> Result<(), StoreError> {
    diesel::update(auth_requests::table.find(id_hash))
        .set(auth_requests::offered.eq(offered))
        .execute(conn)?;
    Ok(())
}

/// Sets the chosen patient once; false when one was already chosen.
pub fn set_patient(
    conn: &mut DbConnection,
    id_hash: &str,
    patient: &str,
) -> Result<bool, StoreError> {
    let n = diesel::update(
        auth_requests::table
            .find(id_hash)
            .filter(auth_requests::patient.is_null()),
    )
    .set(auth_requests::patient.eq(Some(patient)))
    .execute(conn)?;
    Ok(n == 1)
}

/// Binds a pending request to the first person who reaches it signed in; returns the user it
/// is bound to afterwards (`user_id`, or whoever got there first).
pub fn bind_user(
    conn: &mut DbConnection,
    id_hash: &str,
    user_id: &str,
) -> Result<Option<String>, StoreError> {
    diesel::update(
        auth_requests::table
            .find(id_hash)
            .filter(auth_requests::user_id.is_null()),
    )
    .set(auth_requests::user_id.eq(Some(user_id)))
    .execute(conn)?;
    let bound: Option<Option<String>> = auth_requests::table
        .find(id_hash)
        .select(auth_requests::user_id)
        .first(conn)
        .optional()?;
    Ok(bound.flatten())
}

/// Marks a pending request finished (approved or denied); false when it already was.
pub fn complete_auth_request(
    conn: &mut DbConnection,
    id_hash: &str,
    now: i64,
) -> Result<bool, StoreError> {
    let n = diesel::update(
        auth_requests::table
            .find(id_hash)
            .filter(auth_requests::completed_at.is_null()),
    )
    .set(auth_requests::completed_at.eq(Some(now)))
    .execute(conn)?;
    Ok(n == 1)
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = launch_contexts)]
// None is bound as NULL (these columns have no defaults): the statement's SQL is the same
// for every row, so PostgreSQL keeps it prepared too (`grants::tests`).
#[diesel(treat_none_as_default_value = false)]
pub struct LaunchRow {
    pub id_hash: String,
    pub client_id: String,
    pub created_by: String,
    pub user_id: Option<String>,
    pub context: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub used_at: Option<i64>,
}

pub fn insert_launch(conn: &mut DbConnection, row: &LaunchRow) -> Result<(), StoreError> {
    diesel::insert_into(launch_contexts::table)
        .values(row)
        .execute(conn)?;
    Ok(())
}

/// Takes a launch for `client_id` if it is unused and unexpired; `None` otherwise.
pub fn take_launch(
    conn: &mut DbConnection,
    id_hash: &str,
    client_id: &str,
    now: i64,
) -> Result<Option<LaunchRow>, StoreError> {
    let n = diesel::update(
        launch_contexts::table
            .find(id_hash)
            .filter(launch_contexts::client_id.eq(client_id))
            .filter(launch_contexts::used_at.is_null())
            .filter(launch_contexts::expires_at.gt(now)),
    )
    .set(launch_contexts::used_at.eq(Some(now)))
    .execute(conn)?;
    if n != 1 {
        return Ok(None);
    }
    Ok(launch_contexts::table
        .find(id_hash)
        .select(LaunchRow::as_select())
        .first(conn)
        .optional()?)
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = token_families)]
// None is bound as NULL (these columns have no defaults): the statement's SQL is the same
// for every row, so diesel caches it by type instead of rebuilding it to look it up.
#[diesel(treat_none_as_default_value = false)]
pub struct FamilyRow {
    pub id: String,
    pub client_id: String,
    pub user_id: Option<String>,
    pub session_id: Option<String>,
    pub grant_kind: String,
    pub scope: String,
    pub aud: String,
    pub context: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
    pub revoked_reason: Option<String>,
}

pub fn insert_family(conn: &mut DbConnection, row: &FamilyRow) -> Result<(), StoreError> {
    diesel::insert_into(token_families::table)
        .values(row)
        .execute(conn)?;
    Ok(())
}

pub fn find_family(conn: &mut DbConnection, id: &str) -> Result<Option<FamilyRow>, StoreError> {
    Ok(token_families::table
        .find(id)
        .select(FamilyRow::as_select())
        .first(conn)
        .optional()?)
}

/// Revokes a family (and so every token in it); false when it already was revoked.
pub fn revoke_family(
    conn: &mut DbConnection,
    id: &str,
    reason: &str,
    now: i64,
) -> Result<bool, StoreError> {
    let n = diesel::update(
        token_families::table
            .find(id)
            .filter(token_families::revoked_at.is_null()),
    )
    .set((
        token_families::revoked_at.eq(Some(now)),
        token_families::revoked_reason.eq(Some(reason)),
    ))
    .execute(conn)?;
    if n == 1 {
        changes::publish(conn, Change::Family(id.to_owned()))?;
    }
    Ok(n == 1)
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = authorization_codes)]
// None is bound as NULL (these columns have no defaults): the statement's SQL is the same
// for every row, so PostgreSQL keeps it prepared too (`grants::tests`).
#[diesel(treat_none_as_default_value = false)]
pub struct CodeRow {
    pub code_hash: String,
    pub client_id: String,
    pub user_id: String,
    pub redirect_uri: String,
    pub code_challenge: String,
    pub grant_details: String,
    pub family_id: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub redeemed_at: Option<i64>,
}

pub fn insert_code(conn: &mut DbConnection, row: &CodeRow) -> Result<(), StoreError> {
    diesel::insert_into(authorization_codes::table)
        .values(row)
        .execute(conn)?;
    Ok(())
}

pub fn find_code(conn: &mut DbConnection, code_hash: &str) -> Result<Option<CodeRow>, StoreError> {
    Ok(authorization_codes::table
        .find(code_hash)
        .select(CodeRow::as_select())
        .first(conn)
        .optional()?)
}

/// The compare-and-set that makes a code single-use: true for exactly one caller.
pub fn redeem_code(conn: &mut DbConnection, code_hash: &str, now: i64) -> Result<bool, StoreError> {
    let n = diesel::update(
        authorization_codes::table
            .find(code_hash)
            .filter(authorization_codes::redeemed_at.is_null()),
    )
    .set(authorization_codes::redeemed_at.eq(Some(now)))
    .execute(conn)?;
    Ok(n == 1)
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = refresh_tokens)]
// None is bound as NULL (these columns have no defaults): the statement's SQL is the same
// for every row, so diesel caches it by type instead of rebuilding it to look it up.
#[diesel(treat_none_as_default_value = false)]
pub struct RefreshRow {
    pub token_hash: String,
    pub family_id: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub used_at: Option<i64>,
}

pub fn insert_refresh(conn: &mut DbConnection, row: &RefreshRow) -> Result<(), StoreError> {
    diesel::insert_into(refresh_tokens::table)
        .values(row)
        .execute(conn)?;
    Ok(())
}

pub fn find_refresh(
    conn: &mut DbConnection,
    token_hash: &str,
) -> Result<Option<RefreshRow>, StoreError> {
    Ok(refresh_tokens::table
        .find(token_hash)
        .select(RefreshRow::as_select())
        .first(conn)
        .optional()?)
}

/// A refresh token with its family, in one lookup (revocation: RFC 7009).
pub fn find_refresh_with_family(
    conn: &mut DbConnection,
    token_hash: &str,
) -> Result<Option<(RefreshRow, FamilyRow)>, StoreError> {
    Ok(on_backend!(conn, c => refresh_tokens::table
        .inner_join(token_families::table)
        .filter(refresh_tokens::token_hash.eq(token_hash))
        .select((RefreshRow::as_select(), FamilyRow::as_select()))
        .first(c)
        .optional())?)
}

/// Everything a refresh grant decides on before it writes.
#[derive(Debug, Clone)]
pub struct RefreshGrant {
    pub token: RefreshRow,
    pub family: FamilyRow,
    /// For a person's grant, the account (`None` once it is gone) with the roles it holds
    /// now, by name.
    pub user: Option<(AccountRow, Vec<RoleRow>)>,
}

/// A refresh token with its family and the family's account with its roles, in one statement
/// (left joins: a backend grant has no account, an account may hold no role; written flat for
/// the reason `roles::user_with_roles` gives). A refresh is a hot path, and on PostgreSQL each
/// statement is a round trip.
pub fn find_refresh_grant(
    conn: &mut DbConnection,
    token_hash: &str,
) -> Result<Option<RefreshGrant>, StoreError> {
    let rows: Vec<(RefreshRow, FamilyRow, Option<AccountRow>, Option<RoleRow>)> = on_backend!(conn, c => refresh_tokens::table
            .inner_join(token_families::table)
            .left_join(users::table.on(token_families::user_id.eq(users::id.nullable())))
            .left_join(user_roles::table.on(user_roles::user_id.eq(users::id)))
            .left_join(roles::table.on(roles::name.eq(user_roles::role_name)))
            .filter(refresh_tokens::token_hash.eq(token_hash))
            .select((
                RefreshRow::as_select(),
                FamilyRow::as_select(),
                Option::<AccountRow>::as_select(),
                Option::<RoleRow>::as_select(),
            ))
            .order(roles::name)
            .load(c))?;
    let rows = rows
        .into_iter()
        .map(|(token, family, user, role)| ((token, family, user), role))
        .collect();
    Ok(
        super::roles::gather(rows).map(|((token, family, user), held)| RefreshGrant {
            token,
            family,
            user: user.map(|user| (user, held)),
        }),
    )
}

/// What became of an attempt to use a refresh token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rotation {
    /// This caller used it: the only one ever to.
    Used,
    /// It was used before (by an earlier request, or one racing this one).
    UsedBefore,
    /// Its grant was revoked or has expired.
    GrantEnded,
}

/// The compare-and-set behind rotation, in one statement: marks the token used when nobody
/// has used it and its family (`family_id`, read with it) is still live at `now`, so a
/// revocation committed since that read wins. `Rotation::Used` for exactly one caller; a
/// caller that lost reads again (rarely) to say why.
pub fn use_refresh(
    conn: &mut DbConnection,
    token_hash: &str,
    family_id: &str,
    now: i64,
) -> Result<Rotation, StoreError> {
    let attempt = UseRefresh {
        token_hash,
        family_id,
        now,
    };
    let n = on_backend!(conn, c => ExecuteDsl::execute(attempt, c))?;
    if n == 1 {
        return Ok(Rotation::Used);
    }
    why_not_used(conn, token_hash)
}

/// Why a compare-and-set on `token_hash` found nothing to use: it was used before, or its
/// grant ended.
fn why_not_used(conn: &mut DbConnection, token_hash: &str) -> Result<Rotation, StoreError> {
    let used_before = refresh_tokens::table
        .find(token_hash)
        .select(refresh_tokens::used_at)
        .first::<Option<i64>>(conn)
        .optional()?
        .flatten()
        .is_some();
    Ok(if used_before {
        Rotation::UsedBefore
    } else {
        Rotation::GrantEnded
    })
}

/// One refresh-token rotation, everything it writes: the presented token used, the session
/// of an online-access grant seen, and the response's new tokens with their audit event.
#[derive(Debug, Clone, Copy)]
pub struct RefreshRotation<'a> {
    /// The SHA-256 of the refresh token presented.
    pub token_hash: &'a str,
    /// Its family, as read with it.
    pub family_id: &'a str,
    /// `sessions.public_id` of an online-access grant: its last-seen time moves on when it is
    /// older than `SESSION_SEEN_INTERVAL`.
    pub session_id: Option<&'a str>,
    pub now: i64,
    pub access: &'a AccessTokenRow,
    pub refresh: Option<&'a RefreshRow>,
    pub event: &'a NewAuditEventRow,
}

/// How stale a session's last-seen time may get before a refresh on its grant writes it again.
pub const SESSION_SEEN_INTERVAL: i64 = 60;

/// Rotates a refresh token: `use_refresh`'s compare-and-set and, only for the one caller it
/// lets through, the rest of `rotation`; all of it or nothing. `Rotation::Used` when written.
///
/// On PostgreSQL this is one statement (data-modifying CTEs that write only when the
/// compare-and-set took the token): one round trip and no `BEGIN`/`COMMIT`, where a
/// transaction would take four. On SQLite, where statements cost no round trip, it is a write
/// transaction of the same steps (a savepoint inside a group-committed batch).
///
/// The fault points `RefreshOldUsed` and `RefreshTokensMinted` stand between the steps on
/// SQLite; on PostgreSQL, where there are no steps to stand between, they come before the
/// statement.
pub fn rotate_refresh(
    conn: &mut DbConnection,
    rotation: &RefreshRotation<'_>,
) -> Result<Rotation, StoreError> {
    match conn {
        DbConnection::Postgres(pg) => {
            crate::fault::point(crate::fault::Point::RefreshOldUsed)?;
            crate::fault::point(crate::fault::Point::RefreshTokensMinted)?;
            let written = ExecuteDsl::execute(RotateInOneStatement::new(*rotation), pg)?;
            if written == 1 {
                Ok(Rotation::Used)
            } else {
                why_not_used(conn, rotation.token_hash)
            }
        }
        DbConnection::Sqlite(_) => super::write_transaction(conn, |conn| {
            let used = use_refresh(conn, rotation.token_hash, rotation.family_id, rotation.now)?;
            if used != Rotation::Used {
                return Ok(used);
            }
            crate::fault::point(crate::fault::Point::RefreshOldUsed)?;
            if let Some(session_id) = rotation.session_id {
                super::credentials::mark_session_seen(
                    conn,
                    session_id,
                    rotation.now,
                    SESSION_SEEN_INTERVAL,
                )?;
            }
            crate::fault::point(crate::fault::Point::RefreshTokensMinted)?;
            record_issuance(conn, rotation.access, rotation.refresh, rotation.event)?;
            Ok(Rotation::Used)
        }),
    }
}

/// `rotate_refresh` on PostgreSQL, fixed SQL prepared once per connection:
///
/// ```sql
/// WITH u AS (<use_refresh's UPDATE> RETURNING 1),
///      s AS (<mark_session_seen's UPDATE> AND EXISTS (SELECT 1 FROM u)),
///      a AS (INSERT INTO access_tokens (…) SELECT … FROM u),
///      r AS (INSERT INTO refresh_tokens (…) SELECT … FROM u WHERE <a refresh token is issued>)
/// INSERT INTO audit_events (…) SELECT … FROM u
/// ```
///
/// It inserts one audit event exactly when `u` used the token (the count it answers).
struct RotateInOneStatement<'a> {
    rotation: RefreshRotation<'a>,
    /// The compare-and-set, `use_refresh`'s own statement.
    cas: UseRefresh<'a>,
    /// The session touch, `credentials::mark_session_seen`'s own statement.
    seen: super::credentials::MarkSessionSeen<'a>,
    /// The new refresh token's columns, all NULL when there is none.
    refresh: RefreshColumns<'a>,
    has_refresh: bool,
}

/// A `RefreshRow` as nullable binds.
struct RefreshColumns<'a> {
    token_hash: Option<&'a str>,
    family_id: Option<&'a str>,
    created_at: Option<i64>,
    expires_at: Option<i64>,
    used_at: Option<i64>,
}

impl<'a> RotateInOneStatement<'a> {
    fn new(rotation: RefreshRotation<'a>) -> Self {
        let refresh = rotation.refresh;
        Self {
            rotation,
            cas: UseRefresh {
                token_hash: rotation.token_hash,
                family_id: rotation.family_id,
                now: rotation.now,
            },
            seen: super::credentials::MarkSessionSeen::new(
                rotation.session_id,
                rotation.now,
                SESSION_SEEN_INTERVAL,
            ),
            refresh: RefreshColumns {
                token_hash: refresh.map(|t| t.token_hash.as_str()),
                family_id: refresh.map(|t| t.family_id.as_str()),
                created_at: refresh.map(|t| t.created_at),
                expires_at: refresh.map(|t| t.expires_at),
                used_at: refresh.and_then(|t| t.used_at),
            },
            has_refresh: refresh.is_some(),
        }
    }
}

impl QueryId for RotateInOneStatement<'_> {
    type QueryId = RotateInOneStatement<'static>;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl QueryFragment<diesel::pg::Pg> for RotateInOneStatement<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, diesel::pg::Pg>) -> QueryResult<()> {
        use diesel::sql_types::{Bool, Nullable};
        let r = &self.rotation;
        out.push_sql("WITH u AS (");
        self.cas.walk_ast(out.reborrow())?;
        out.push_sql(" RETURNING 1), s AS (");
        self.seen.walk_ast(out.reborrow())?;
        out.push_sql(" AND EXISTS (SELECT 1 FROM u))");

        let a = r.access;
        out.push_sql(
            ", a AS (INSERT INTO access_tokens (jti, family_id, client_id, user_id, scope, aud, \
             issued_at, expires_at, revoked_at, introspected_at) SELECT ",
        );
        out.push_bind_param::<Text, _>(&a.jti)?;
        out.push_sql(", ");
        out.push_bind_param::<Text, _>(&a.family_id)?;
        out.push_sql(", ");
        out.push_bind_param::<Text, _>(&a.client_id)?;
        out.push_sql(", ");
        out.push_bind_param::<Nullable<Text>, _>(&a.user_id)?;
        out.push_sql(", ");
        out.push_bind_param::<Text, _>(&a.scope)?;
        out.push_sql(", ");
        out.push_bind_param::<Text, _>(&a.aud)?;
        out.push_sql(", ");
        out.push_bind_param::<BigInt, _>(&a.issued_at)?;
        out.push_sql(", ");
        out.push_bind_param::<BigInt, _>(&a.expires_at)?;
        out.push_sql(", ");
        out.push_bind_param::<Nullable<BigInt>, _>(&a.revoked_at)?;
        out.push_sql(", ");
        out.push_bind_param::<Nullable<BigInt>, _>(&a.introspected_at)?;
        out.push_sql(" FROM u)");

        // Without a new refresh token the CTE is still there (the SQL never varies) and
        // inserts nothing: its values are placeholders behind a false condition.
        out.push_sql(
            ", r AS (INSERT INTO refresh_tokens (token_hash, family_id, created_at, expires_at, \
             used_at) SELECT ",
        );
        let t = &self.refresh;
        out.push_bind_param::<Nullable<Text>, _>(&t.token_hash)?;
        out.push_sql(", ");
        out.push_bind_param::<Nullable<Text>, _>(&t.family_id)?;
        out.push_sql(", ");
        out.push_bind_param::<Nullable<BigInt>, _>(&t.created_at)?;
        out.push_sql(", ");
        out.push_bind_param::<Nullable<BigInt>, _>(&t.expires_at)?;
        out.push_sql(", ");
        out.push_bind_param::<Nullable<BigInt>, _>(&t.used_at)?;
        out.push_sql(" FROM u WHERE ");
        out.push_bind_param::<Bool, _>(&self.has_refresh)?;
        out.push_sql(")");

        let e = r.event;
        out.push_sql(
            " INSERT INTO audit_events (occurred_at, action, outcome, severity, actor_user, \
             actor_client, source_ip, user_agent, request_id, target_patient, node, details) \
             SELECT ",
        );
        out.push_bind_param::<BigInt, _>(&e.occurred_at)?;
        out.push_sql(", ");
        out.push_bind_param::<Text, _>(&e.action)?;
        out.push_sql(", ");
        out.push_bind_param::<Text, _>(&e.outcome)?;
        out.push_sql(", ");
        out.push_bind_param::<Text, _>(&e.severity)?;
        out.push_sql(", ");
        out.push_bind_param::<Nullable<Text>, _>(&e.actor_user)?;
        out.push_sql(", ");
        out.push_bind_param::<Nullable<Text>, _>(&e.actor_client)?;
        out.push_sql(", ");
        out.push_bind_param::<Nullable<Text>, _>(&e.source_ip)?;
        out.push_sql(", ");
        out.push_bind_param::<Nullable<Text>, _>(&e.user_agent)?;
        out.push_sql(", ");
        out.push_bind_param::<Nullable<Text>, _>(&e.request_id)?;
        out.push_sql(", ");
        out.push_bind_param::<Nullable<Text>, _>(&e.target_patient)?;
        out.push_sql(", ");
        out.push_bind_param::<Text, _>(&e.node)?;
        out.push_sql(", ");
        out.push_bind_param::<Text, _>(&e.details)?;
        out.push_sql(" FROM u");
        Ok(())
    }
}

/// `use_refresh`'s UPDATE as fixed SQL: diesel prepares every UPDATE it builds afresh on each
/// run (a changeset's SQL may vary with its values); this one is prepared once per connection.
#[derive(Debug, Clone, Copy)]
struct UseRefresh<'a> {
    token_hash: &'a str,
    family_id: &'a str,
    now: i64,
}

impl QueryId for UseRefresh<'_> {
    type QueryId = UseRefresh<'static>;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl<DB> QueryFragment<DB> for UseRefresh<'_>
where
    DB: diesel::backend::Backend,
    i64: ToSql<BigInt, DB>,
    str: ToSql<Text, DB>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        out.push_sql("UPDATE refresh_tokens SET used_at = ");
        out.push_bind_param::<BigInt, _>(&self.now)?;
        out.push_sql(" WHERE token_hash = ");
        out.push_bind_param::<Text, _>(self.token_hash)?;
        out.push_sql(" AND used_at IS NULL AND family_id = ");
        out.push_bind_param::<Text, _>(self.family_id)?;
        out.push_sql(" AND EXISTS (SELECT 1 FROM token_families WHERE id = ");
        out.push_bind_param::<Text, _>(self.family_id)?;
        out.push_sql(" AND revoked_at IS NULL AND expires_at > ");
        out.push_bind_param::<BigInt, _>(&self.now)?;
        out.push_sql(")");
        Ok(())
    }
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = access_tokens)]
// None is bound as NULL (these columns have no defaults): the statement's SQL is the same
// for every row, so diesel caches it by type instead of rebuilding it to look it up.
#[diesel(treat_none_as_default_value = false)]
pub struct AccessTokenRow {
    pub jti: String,
    pub family_id: String,
    pub client_id: String,
    pub user_id: Option<String>,
    pub scope: String,
    pub aud: String,
    pub issued_at: i64,
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
    pub introspected_at: Option<i64>,
}

pub fn insert_access_token(
    conn: &mut DbConnection,
    row: &AccessTokenRow,
) -> Result<(), StoreError> {
    diesel::insert_into(access_tokens::table)
        .values(row)
        .execute(conn)?;
    Ok(())
}

/// An access token with its family, when the token exists.
pub fn find_access_token(
    conn: &mut DbConnection,
    jti: &str,
) -> Result<Option<(AccessTokenRow, FamilyRow)>, StoreError> {
    Ok(access_tokens::table
        .inner_join(token_families::table)
        .filter(access_tokens::jti.eq(jti))
        .select((AccessTokenRow::as_select(), FamilyRow::as_select()))
        .first(conn)
        .optional()?)
}

pub fn count_access_tokens_of_family(
    conn: &mut DbConnection,
    family_id: &str,
) -> Result<i64, StoreError> {
    Ok(access_tokens::table
        .filter(access_tokens::family_id.eq(family_id))
        .count()
        .get_result(conn)?)
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = consents)]
pub struct ConsentRow {
    pub user_id: String,
    pub client_id: String,
    pub scope: String,
    pub aud: String,
    pub created_at: i64,
    pub updated_at: i64,
}

pub fn find_consent(
    conn: &mut DbConnection,
    user_id: &str,
    client_id: &str,
) -> Result<Option<ConsentRow>, StoreError> {
    Ok(consents::table
        .find((user_id, client_id))
        .select(ConsentRow::as_select())
        .first(conn)
        .optional()?)
}

/// Replaces the remembered consent of a user for a client.
/// Replaces the remembered consent of a user for a client (one upsert, so two approvals racing
/// on PostgreSQL cannot collide on the key).
pub fn remember_consent(conn: &mut DbConnection, row: &ConsentRow) -> Result<(), StoreError> {
    use diesel::sql_types::{BigInt, Text};
    const UPSERT: &str =
        "INSERT INTO consents (user_id, client_id, scope, aud, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (user_id, client_id) DO UPDATE \
         SET scope = excluded.scope, aud = excluded.aud, updated_at = excluded.updated_at";
    let query = diesel::sql_query(UPSERT)
        .bind::<Text, _>(&row.user_id)
        .bind::<Text, _>(&row.client_id)
        .bind::<Text, _>(&row.scope)
        .bind::<Text, _>(&row.aud)
        .bind::<BigInt, _>(row.created_at)
        .bind::<BigInt, _>(row.updated_at);
    match conn {
        DbConnection::Sqlite(c) => query.execute(c)?,
        DbConnection::Postgres(c) => query.execute(c)?,
    };
    Ok(())
}

pub fn forget_consent(
    conn: &mut DbConnection,
    user_id: &str,
    client_id: &str,
) -> Result<bool, StoreError> {
    Ok(diesel::delete(consents::table.find((user_id, client_id))).execute(conn)? == 1)
}

/// A client assertion's `jti`, kept until the assertion expires (RFC 7523 §3 replay check).
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = assertion_jtis)]
// None is bound as NULL (these columns have no defaults): the statement's SQL is the same
// for every row, so PostgreSQL keeps it prepared too (`grants::tests`).
#[diesel(treat_none_as_default_value = false)]
pub struct AssertionJtiRow {
    pub client_id: String,
    pub jti: String,
    pub expires_at: i64,
}

/// Records an assertion's jti; false when the client used it before (a replay). The primary
/// key makes this atomic across concurrent requests and nodes.
pub fn record_assertion_jti(
    conn: &mut DbConnection,
    row: &AssertionJtiRow,
) -> Result<bool, StoreError> {
    let inserted = diesel::insert_into(assertion_jtis::table)
        .values(row)
        .execute(conn);
    match inserted {
        Ok(_) => Ok(true),
        Err(diesel::result::Error::DatabaseError(
            diesel::result::DatabaseErrorKind::UniqueViolation,
            _,
        )) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Whether the client used this assertion `jti` before.
fn assertion_jti_recorded(
    conn: &mut DbConnection,
    row: &AssertionJtiRow,
) -> Result<bool, StoreError> {
    let found = assertion_jtis::table
        .find((&row.client_id, &row.jti))
        .select(assertion_jtis::expires_at)
        .first::<i64>(conn)
        .optional()?;
    Ok(found.is_some())
}

/// Writes what one token response issued, all or none (`together`: one statement on
/// PostgreSQL): its access token, its refresh token if any, and its audit event.
pub fn record_issuance(
    conn: &mut DbConnection,
    access: &AccessTokenRow,
    refresh: Option<&RefreshRow>,
    event: &NewAuditEventRow,
) -> Result<(), StoreError> {
    let access = diesel::insert_into(access_tokens::table).values(access);
    let event = diesel::insert_into(audit_events::table).values(event);
    match refresh {
        Some(refresh) => {
            let refresh = diesel::insert_into(refresh_tokens::table).values(refresh);
            together::insert(conn, (access, refresh, event))
        }
        None => together::insert(conn, (access, event)),
    }
}

/// Writes a SMART Backend Services issuance, all or none (`together`: one statement and one
/// round trip on PostgreSQL): the client assertion's `jti`, the grant's family, its access
/// token and the audit event. False, with nothing written, when the client used that `jti`
/// before (a replay, also one racing on another node).
pub fn record_service_issuance(
    conn: &mut DbConnection,
    jti: &AssertionJtiRow,
    family: &FamilyRow,
    access: &AccessTokenRow,
    event: &NewAuditEventRow,
) -> Result<bool, StoreError> {
    let parts = (
        diesel::insert_into(assertion_jtis::table).values(jti),
        diesel::insert_into(token_families::table).values(family),
        diesel::insert_into(access_tokens::table).values(access),
        diesel::insert_into(audit_events::table).values(event),
    );
    // On PostgreSQL a failed statement aborts the transaction around it, and telling a replay
    // from another failure takes a read afterwards: inside a transaction the set gets a
    // savepoint of its own (the token endpoint calls this outside one: a single round trip).
    let in_transaction = matches!(conn, DbConnection::Postgres(_))
        && matches!(super::writer::depth(conn), Ok(Some(_)));
    let written = if in_transaction {
        super::write_transaction(conn, |conn| together::insert(conn, parts))
    } else {
        together::insert(conn, parts)
    };
    match written {
        Ok(()) => Ok(true),
        // Family and token keys are fresh randoms: a taken key here is the jti, which the
        // (rare) second look confirms rather than assumes.
        Err(StoreError::Query(diesel::result::Error::DatabaseError(
            diesel::result::DatabaseErrorKind::UniqueViolation,
            info,
        ))) => {
            if assertion_jti_recorded(conn, jti)? {
                Ok(false)
            } else {
                Err(StoreError::Corrupt(format!(
                    "an issuance collided on a key: {}",
                    info.message()
                )))
            }
        }
        Err(e) => Err(e),
    }
}

/// Revokes one access token; false when it already was.
pub fn revoke_access_token(
    conn: &mut DbConnection,
    jti: &str,
    now: i64,
) -> Result<bool, StoreError> {
    let n = diesel::update(
        access_tokens::table
            .find(jti)
            .filter(access_tokens::revoked_at.is_null()),
    )
    .set(access_tokens::revoked_at.eq(Some(now)))
    .execute(conn)?;
    if n == 1 {
        changes::publish(conn, Change::Token(jti.to_owned()))?;
    }
    Ok(n == 1)
}

/// The user's grants still in force (not revoked, not expired), newest first.
pub fn live_families_of_user(
    conn: &mut DbConnection,
    user_id: &str,
    now: i64,
) -> Result<Vec<FamilyRow>, StoreError> {
    Ok(token_families::table
        .filter(token_families::user_id.eq(user_id))
        .filter(token_families::revoked_at.is_null())
        .filter(token_families::expires_at.gt(now))
        .select(FamilyRow::as_select())
        .order(token_families::created_at.desc())
        .load(conn)?)
}

/// Revokes every live grant of a user to a client; returns the revoked family ids.
pub fn revoke_families_of(
    conn: &mut DbConnection,
    user_id: &str,
    client_id: &str,
    reason: &str,
    now: i64,
) -> Result<Vec<String>, StoreError> {
    let ids: Vec<String> = token_families::table
        .filter(token_families::user_id.eq(user_id))
        .filter(token_families::client_id.eq(client_id))
        .filter(token_families::revoked_at.is_null())
        .select(token_families::id)
        .load(conn)?;
    for id in &ids {
        revoke_family(conn, id, reason, now)?;
    }
    Ok(ids)
}

pub fn consents_of_user(
    conn: &mut DbConnection,
    user_id: &str,
) -> Result<Vec<ConsentRow>, StoreError> {
    Ok(consents::table
        .filter(consents::user_id.eq(user_id))
        .select(ConsentRow::as_select())
        .load(conn)?)
}

/// Marks a token introspected; true for the first introspection only.
pub fn mark_introspected(conn: &mut DbConnection, jti: &str, now: i64) -> Result<bool, StoreError> {
    let n = diesel::update(
        access_tokens::table
            .find(jti)
            .filter(access_tokens::introspected_at.is_null()),
    )
    .set(access_tokens::introspected_at.eq(Some(now)))
    .execute(conn)?;
    Ok(n == 1)
}

/// A client's grants still in force, newest first (at most `limit`).
pub fn live_families_of_client(
    conn: &mut DbConnection,
    client_id: &str,
    now: i64,
    limit: i64,
) -> Result<Vec<FamilyRow>, StoreError> {
    Ok(token_families::table
        .filter(token_families::client_id.eq(client_id))
        .filter(token_families::revoked_at.is_null())
        .filter(token_families::expires_at.gt(now))
        .select(FamilyRow::as_select())
        .order(token_families::created_at.desc())
        .limit(limit)
        .load(conn)?)
}

/// Whose grants an admin revokes in bulk.
#[derive(Debug, Clone, Copy)]
pub enum GrantOwner<'a> {
    Client(&'a str),
    User(&'a str),
}

/// Revokes every unrevoked grant of a client or a user in one statement; returns how many.
pub fn revoke_all_of(
    conn: &mut DbConnection,
    owner: GrantOwner<'_>,
    reason: &str,
    now: i64,
) -> Result<usize, StoreError> {
    let mut query = diesel::update(token_families::table)
        .filter(token_families::revoked_at.is_null())
        .into_boxed();
    query = match owner {
        GrantOwner::Client(id) => query.filter(token_families::client_id.eq(id.to_owned())),
        GrantOwner::User(id) => query.filter(token_families::user_id.eq(id.to_owned())),
    };
    let n = query
        .set((
            token_families::revoked_at.eq(Some(now)),
            token_families::revoked_reason.eq(Some(reason)),
        ))
        .execute(conn)?;
    if n > 0 {
        changes::publish(
            conn,
            match owner {
                GrantOwner::Client(id) => Change::Client(id.to_owned()),
                GrantOwner::User(id) => Change::User(id.to_owned()),
            },
        )?;
    }
    Ok(n)
}

/// Whether a client ever received a grant (revoked or expired ones count).
pub fn client_ever_granted(conn: &mut DbConnection, client_id: &str) -> Result<bool, StoreError> {
    Ok(token_families::table
        .filter(token_families::client_id.eq(client_id))
        .select(token_families::id)
        .first::<String>(conn)
        .optional()?
        .is_some())
}

#[cfg(test)]
mod tests {
    use diesel::pg::Pg;

    use super::*;
    use crate::store::credentials::SessionRow;

    fn prepared<T: QueryFragment<Pg>>(statement: T) -> bool {
        statement.is_safe_to_cache_prepared(&Pg).unwrap()
    }

    /// The token endpoint's writes are one statement each on PostgreSQL; they are prepared once
    /// per connection only when their SQL is the same for every row (no `DEFAULT` for a `None`,
    /// nothing that marks itself unsafe to cache).
    /// The service issuance was parsed and planned on every request until its `jti` row got
    /// `treat_none_as_default_value = false`.
    #[test]
    fn the_token_and_sign_in_inserts_stay_prepared_on_postgresql() {
        let s = || "x".to_owned();
        let jti = AssertionJtiRow {
            client_id: s(),
            jti: s(),
            expires_at: 1,
        };
        let family = FamilyRow {
            id: s(),
            client_id: s(),
            user_id: None,
            session_id: None,
            grant_kind: s(),
            scope: s(),
            aud: s(),
            context: s(),
            created_at: 1,
            expires_at: 2,
            revoked_at: None,
            revoked_reason: None,
        };
        let access = AccessTokenRow {
            jti: s(),
            family_id: s(),
            client_id: s(),
            user_id: None,
            scope: s(),
            aud: s(),
            issued_at: 1,
            expires_at: 2,
            revoked_at: None,
            introspected_at: None,
        };
        let refresh = RefreshRow {
            token_hash: s(),
            family_id: s(),
            created_at: 1,
            expires_at: 2,
            used_at: None,
        };
        let event = NewAuditEventRow {
            occurred_at: 1,
            action: s(),
            outcome: s(),
            severity: s(),
            actor_user: None,
            actor_client: None,
            source_ip: None,
            user_agent: None,
            request_id: None,
            target_patient: None,
            node: s(),
            details: s(),
        };
        assert!(together::stays_prepared_on_postgres((
            diesel::insert_into(assertion_jtis::table).values(&jti),
            diesel::insert_into(token_families::table).values(&family),
            diesel::insert_into(access_tokens::table).values(&access),
            diesel::insert_into(audit_events::table).values(&event),
        )));
        assert!(together::stays_prepared_on_postgres((
            diesel::insert_into(access_tokens::table).values(&access),
            diesel::insert_into(refresh_tokens::table).values(&refresh),
            diesel::insert_into(audit_events::table).values(&event),
        )));
        assert!(prepared(
            diesel::insert_into(assertion_jtis::table).values(&jti)
        ));
        // The hand-written statements: fixed SQL, so nothing in them may vary either.
        assert!(prepared(RotateInOneStatement::new(RefreshRotation {
            token_hash: "h",
            family_id: "f",
            session_id: None,
            now: 1,
            access: &access,
            refresh: Some(&refresh),
            event: &event,
        })));

        let request = AuthRequestRow {
            id_hash: s(),
            client_id: s(),
            user_id: None,
            request: s(),
            offered: s(),
            patient: None,
            created_at: 1,
            expires_at: 2,
            completed_at: None,
        };
        assert!(prepared(
            diesel::insert_into(auth_requests::table).values(&request)
        ));
        let launch = LaunchRow {
            id_hash: s(),
            client_id: s(),
            created_by: s(),
            user_id: None,
            context: s(),
            created_at: 1,
            expires_at: 2,
            used_at: None,
        };
        assert!(prepared(
            diesel::insert_into(launch_contexts::table).values(&launch)
        ));
        let code = CodeRow {
            code_hash: s(),
            client_id: s(),
            user_id: s(),
            redirect_uri: s(),
            code_challenge: s(),
            grant_details: s(),
            family_id: s(),
            created_at: 1,
            expires_at: 2,
            redeemed_at: None,
        };
        assert!(prepared(
            diesel::insert_into(authorization_codes::table).values(&code)
        ));
        let session = SessionRow {
            id_hash: s(),
            public_id: s(),
            user_id: s(),
            stage: s(),
            amr: s(),
            created_at: 1,
            last_seen_at: 1,
            expires_at: 2,
            authenticated_at: 1,
            mfa_at: None,
            source_ip: None,
            user_agent: None,
            ended_at: None,
            end_reason: None,
        };
        assert!(prepared(
            diesel::insert_into(crate::store::schema::sessions::table).values(&session)
        ));
    }
}
