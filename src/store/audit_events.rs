//! Rows of `audit_events`: insert and read only, plus linking each into the tamper-evident
//! chain once (its three chain columns go from empty to set). Nothing in Ward deletes them.

use diesel::prelude::*;
use diesel::query_builder::{AstPass, QueryFragment, QueryId};
use diesel::query_dsl::methods::ExecuteDsl;
use diesel::serialize::ToSql;
use diesel::sql_types::{BigInt, Text};

use super::schema::{audit_chain_state, audit_events};
use super::{DbConnection, StoreError};

#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = audit_events)]
// None is bound as NULL (these columns have no defaults): the statement's SQL is the same
// for every row, so diesel caches it by type instead of rebuilding it to look it up.
#[diesel(treat_none_as_default_value = false)]
pub struct NewAuditEventRow {
    pub occurred_at: i64,
    pub action: String,
    pub outcome: String,
    pub severity: String,
    pub actor_user: Option<String>,
    pub actor_client: Option<String>,
    pub source_ip: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
    pub target_patient: Option<String>,
    pub node: String,
    pub details: String,
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = audit_events)]
pub struct AuditEventRow {
    pub id: i64,
    pub occurred_at: i64,
    pub action: String,
    pub outcome: String,
    pub severity: String,
    pub actor_user: Option<String>,
    pub actor_client: Option<String>,
    pub source_ip: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
    pub target_patient: Option<String>,
    pub node: String,
    pub details: String,
    pub chain_seq: Option<i64>,
    pub chain_hash: Option<String>,
    /// The chain key that made `chain_hash` (empty for links made before key ids were kept).
    pub chain_key_id: Option<String>,
}

pub fn insert(conn: &mut DbConnection, row: &NewAuditEventRow) -> Result<(), StoreError> {
    let insert = diesel::insert_into(audit_events::table).values(row);
    on_backend!(conn, c => insert.execute(c))?;
    Ok(())
}

/// Events in insertion order, optionally only one action.
pub fn list(
    conn: &mut DbConnection,
    action: Option<&str>,
    limit: i64,
) -> Result<Vec<AuditEventRow>, StoreError> {
    let mut query = audit_events::table
        .select(AuditEventRow::as_select())
        .order(audit_events::id)
        .limit(limit)
        .into_boxed();
    if let Some(action) = action {
        query = query.filter(audit_events::action.eq(action.to_owned()));
    }
    Ok(query.load(conn)?)
}

/// The last linked event's sequence number and hash, if any event is linked. A head without
/// a hash is corruption, not an empty chain.
pub fn chain_head(conn: &mut DbConnection) -> Result<Option<(i64, String)>, StoreError> {
    let head: Option<(Option<i64>, Option<String>)> = audit_events::table
        .filter(audit_events::chain_seq.is_not_null())
        .order(audit_events::chain_seq.desc())
        .select((audit_events::chain_seq, audit_events::chain_hash))
        .first(conn)
        .optional()?;
    match head {
        None => Ok(None),
        Some((Some(seq), Some(hash))) => Ok(Some((seq, hash))),
        Some((seq, None)) => Err(StoreError::Corrupt(format!(
            "audit event #{} has a sequence number but no chain hash",
            seq.unwrap_or_default()
        ))),
        Some((None, _)) => Ok(None),
    }
}

/// The chain hash stored at `seq`, if that event exists.
pub fn hash_at(conn: &mut DbConnection, seq: i64) -> Result<Option<String>, StoreError> {
    Ok(audit_events::table
        .filter(audit_events::chain_seq.eq(seq))
        .select(audit_events::chain_hash)
        .first::<Option<String>>(conn)
        .optional()?
        .flatten())
}

/// Events written before the chain existed (linked once, whatever their age).
fn legacy_max_id(conn: &mut DbConnection) -> Result<i64, StoreError> {
    Ok(audit_chain_state::table
        .find(1)
        .select(audit_chain_state::legacy_max_event_id)
        .first(conn)
        .optional()?
        .unwrap_or(0))
}

/// Whether any event waits to be linked: inserted since `since_ms`, or from before the chain
/// (a cheap read before the linker takes any lock, or queues work for the SQLite writer).
pub fn any_unlinked_since(conn: &mut DbConnection, since_ms: i64) -> Result<bool, StoreError> {
    let legacy = legacy_max_id(conn)?;
    let n: i64 = audit_events::table
        .filter(audit_events::chain_seq.is_null())
        .filter(
            audit_events::occurred_at
                .ge(since_ms)
                .or(audit_events::id.le(legacy)),
        )
        .count()
        .get_result(conn)?;
    Ok(n > 0)
}

/// Unlinked events that occurred since `since_ms` (or predate the chain), oldest insert first.
pub fn unlinked_since(
    conn: &mut DbConnection,
    since_ms: i64,
    limit: i64,
) -> Result<Vec<AuditEventRow>, StoreError> {
    let legacy = legacy_max_id(conn)?;
    Ok(audit_events::table
        .filter(audit_events::chain_seq.is_null())
        .filter(
            audit_events::occurred_at
                .ge(since_ms)
                .or(audit_events::id.le(legacy)),
        )
        .order(audit_events::id)
        .limit(limit)
        .select(AuditEventRow::as_select())
        .load(conn)?)
}

/// One event's place in the chain, as `link_all` writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainLink {
    pub id: i64,
    pub seq: i64,
    pub hash: String,
}

/// Links a batch of events (each only ever from empty to set), naming the chain key that made
/// their hashes; answers how many were linked, which is fewer than `links` only when someone
/// else linked one of them first.
///
/// On PostgreSQL the batch is one statement (the events' ids, places and hashes as three
/// arrays): one round trip and one plan for the whole batch instead of one per event. SQLite
/// runs in-process, where a statement costs no round trip: there it is one prepared UPDATE per
/// event.
pub fn link_all(
    conn: &mut DbConnection,
    links: &[ChainLink],
    key_id: &str,
) -> Result<usize, StoreError> {
    match conn {
        DbConnection::Postgres(c) => {
            let (ids, (seqs, hashes)): (Vec<i64>, (Vec<i64>, Vec<&str>)) = links
                .iter()
                .map(|l| (l.id, (l.seq, l.hash.as_str())))
                .unzip();
            let batch = LinkBatch {
                ids: &ids,
                seqs: &seqs,
                hashes: &hashes,
                key_id,
            };
            Ok(ExecuteDsl::execute(batch, c)?)
        }
        DbConnection::Sqlite(c) => {
            let mut linked = 0;
            for l in links {
                let link = Link {
                    id: l.id,
                    seq: l.seq,
                    hash: &l.hash,
                    key_id,
                };
                linked += ExecuteDsl::execute(link, c)?;
            }
            Ok(linked)
        }
    }
}

/// `link_all`'s UPDATE on PostgreSQL, fixed SQL prepared once per connection.
#[derive(Debug, Clone, Copy)]
struct LinkBatch<'a> {
    ids: &'a [i64],
    seqs: &'a [i64],
    hashes: &'a [&'a str],
    key_id: &'a str,
}

impl QueryId for LinkBatch<'_> {
    type QueryId = LinkBatch<'static>;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl QueryFragment<diesel::pg::Pg> for LinkBatch<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, diesel::pg::Pg>) -> QueryResult<()> {
        use diesel::sql_types::Array;
        out.push_sql(
            "UPDATE audit_events AS e SET chain_seq = v.seq, chain_hash = v.hash, chain_key_id = ",
        );
        out.push_bind_param::<Text, _>(self.key_id)?;
        out.push_sql(" FROM unnest(");
        out.push_bind_param::<Array<BigInt>, _>(self.ids)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<BigInt>, _>(self.seqs)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<Text>, _>(self.hashes)?;
        out.push_sql(") AS v(id, seq, hash) WHERE e.id = v.id AND e.chain_seq IS NULL");
        Ok(())
    }
}

/// `link_all`'s UPDATE of one event on SQLite, fixed SQL prepared once per connection (diesel
/// prepares every UPDATE it builds afresh).
#[derive(Debug, Clone, Copy)]
struct Link<'a> {
    id: i64,
    seq: i64,
    hash: &'a str,
    key_id: &'a str,
}

impl QueryId for Link<'_> {
    type QueryId = Link<'static>;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl<DB> QueryFragment<DB> for Link<'_>
where
    DB: diesel::backend::Backend,
    i64: ToSql<BigInt, DB>,
    str: ToSql<Text, DB>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        out.push_sql("UPDATE audit_events SET chain_seq = ");
        out.push_bind_param::<BigInt, _>(&self.seq)?;
        out.push_sql(", chain_hash = ");
        out.push_bind_param::<Text, _>(self.hash)?;
        out.push_sql(", chain_key_id = ");
        out.push_bind_param::<Text, _>(self.key_id)?;
        out.push_sql(" WHERE id = ");
        out.push_bind_param::<BigInt, _>(&self.id)?;
        out.push_sql(" AND chain_seq IS NULL");
        Ok(())
    }
}

/// Linked events with `chain_seq > after`, in chain order.
pub fn chain_after(
    conn: &mut DbConnection,
    after: i64,
    limit: i64,
) -> Result<Vec<AuditEventRow>, StoreError> {
    Ok(audit_events::table
        .filter(audit_events::chain_seq.gt(after))
        .order(audit_events::chain_seq)
        .limit(limit)
        .select(AuditEventRow::as_select())
        .load(conn)?)
}

pub fn count_unlinked_before(
    conn: &mut DbConnection,
    occurred_before_ms: i64,
) -> Result<i64, StoreError> {
    Ok(audit_events::table
        .filter(audit_events::chain_seq.is_null())
        .filter(audit_events::occurred_at.lt(occurred_before_ms))
        .count()
        .get_result(conn)?)
}

/// What an admin searches the audit trail for. Every filter is optional; results are newest
/// first, `before_id` continues a previous page.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// An exact action (`token.issued`) or a family of actions ending in `.` (`token.`).
    pub action: Option<String>,
    /// A user or client id, as actor.
    pub actor: Option<String>,
    pub patient: Option<String>,
    pub outcome: Option<String>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    pub before_id: Option<i64>,
    pub limit: i64,
}

pub fn search(conn: &mut DbConnection, q: &AuditQuery) -> Result<Vec<AuditEventRow>, StoreError> {
    let mut query = audit_events::table
        .select(AuditEventRow::as_select())
        .order(audit_events::id.desc())
        .limit(q.limit)
        .into_boxed();
    if let Some(action) = &q.action {
        query = if action.ends_with('.') {
            query.filter(
                audit_events::action
                    .like(format!("{}%", super::clients::escape_like(action)))
                    .escape('\\'),
            )
        } else {
            query.filter(audit_events::action.eq(action.clone()))
        };
    }
    if let Some(actor) = &q.actor {
        query = query.filter(
            audit_events::actor_user
                .eq(actor.clone())
                .or(audit_events::actor_client.eq(actor.clone())),
        );
    }
    if let Some(patient) = &q.patient {
        query = query.filter(audit_events::target_patient.eq(patient.clone()));
    }
    if let Some(outcome) = &q.outcome {
        query = query.filter(audit_events::outcome.eq(outcome.clone()));
    }
    if let Some(since) = q.since_ms {
        query = query.filter(audit_events::occurred_at.ge(since));
    }
    if let Some(until) = q.until_ms {
        query = query.filter(audit_events::occurred_at.lt(until));
    }
    if let Some(before) = q.before_id {
        query = query.filter(audit_events::id.lt(before));
    }
    Ok(query.load(conn)?)
}

/// Every event matching `q` (its `limit` and `before_id` ignored), oldest first, read in pages.
pub fn all_matching(
    conn: &mut DbConnection,
    q: &AuditQuery,
) -> Result<Vec<AuditEventRow>, StoreError> {
    const PAGE: i64 = 1000;
    let mut rows = Vec::new();
    let mut before = None;
    loop {
        let page = search(
            conn,
            &AuditQuery {
                before_id: before,
                limit: PAGE,
                ..q.clone()
            },
        )?;
        let done = (page.len() as i64) < PAGE;
        before = page.last().map(|r| r.id);
        rows.extend(page);
        if done {
            break;
        }
    }
    rows.reverse();
    Ok(rows)
}

/// Events with an id above `after`, oldest first (at most `limit`).
pub fn after(
    conn: &mut DbConnection,
    after: i64,
    limit: i64,
) -> Result<Vec<AuditEventRow>, StoreError> {
    Ok(audit_events::table
        .filter(audit_events::id.gt(after))
        .order(audit_events::id)
        .limit(limit)
        .select(AuditEventRow::as_select())
        .load(conn)?)
}

#[cfg(test)]
mod tests {
    use diesel::pg::Pg;

    use super::*;

    /// The batch UPDATE is fixed SQL: PostgreSQL keeps it prepared whatever the batch's size.
    #[test]
    fn a_batch_of_links_is_one_prepared_statement_on_postgresql() {
        let (ids, seqs, hashes) = ([7, 8], [1, 2], ["a", "b"]);
        let batch = LinkBatch {
            ids: &ids,
            seqs: &seqs,
            hashes: &hashes,
            key_id: "k",
        };
        assert!(batch.is_safe_to_cache_prepared(&Pg).unwrap());
        assert_eq!(
            diesel::debug_query::<Pg, _>(&batch).to_string(),
            "UPDATE audit_events AS e SET chain_seq = v.seq, chain_hash = v.hash, \
             chain_key_id = $1 FROM unnest($2, $3, $4) AS v(id, seq, hash) \
             WHERE e.id = v.id AND e.chain_seq IS NULL \
             -- binds: [\"k\", [7, 8], [1, 2], [\"a\", \"b\"]]"
        );
    }
}
