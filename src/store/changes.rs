//! The change feed: how every node learns, within a second, that something it may hold in
//! memory has changed (DESIGN.md §4, several nodes).
//!
//! A write that can make a cached answer stale — revoking a token or a grant, ending a session,
//! disabling a user, changing a client or its secrets, adding a signing key — calls
//! [`publish`] inside its own transaction. What happens then:
//! - on **PostgreSQL** the change is a `NOTIFY ward_changes, '<change>'`, which PostgreSQL
//!   delivers to every listening node when (and only if) the transaction commits;
//! - on **SQLite** it is a row in `changes`; writers commit one at a time, so ids increase in
//!   commit order and a node reads the rows after the last id it has seen (this is how a
//!   `ward serve` learns what the `ward` CLI changed in the same file);
//! - on the node that made the change it is applied to that node's caches right after the
//!   commit, before the response goes out, so the node that revoked a token never answers from
//!   a stale cache.
//!
//! The listening side, and what a node does when it cannot listen, is in `crate::coherence`.

use std::cell::RefCell;
use std::sync::Arc;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;

use super::schema::changes;
use super::{DbConnection, StoreError};

/// The PostgreSQL notification channel.
pub const CHANNEL: &str = "ward_changes";

/// One thing that changed, named by the id that caches index it under.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Change {
    /// An access token (by `jti`) was revoked.
    Token(String),
    /// A token family (grant) was revoked.
    Family(String),
    /// A client's registration, status or secrets changed, or all its grants were revoked.
    Client(String),
    /// A user was disabled or changed, or all their grants or sessions ended.
    User(String),
    /// A session (by public id) ended.
    Session(String),
    /// The signing keys changed (a rotation): reload them.
    Keys,
}

impl Change {
    /// The wire form: `kind:id` (`keys` alone). Ids are Ward's own (UUIDs, client ids), never
    /// secrets, and never longer than a NOTIFY payload allows.
    pub fn encode(&self) -> String {
        match self {
            Self::Token(id) => format!("token:{id}"),
            Self::Family(id) => format!("family:{id}"),
            Self::Client(id) => format!("client:{id}"),
            Self::User(id) => format!("user:{id}"),
            Self::Session(id) => format!("session:{id}"),
            Self::Keys => "keys".to_owned(),
        }
    }

    /// Reads the wire form back; `None` for anything else (a newer node's change kind is
    /// treated by the listener as "flush everything", never ignored).
    pub fn decode(text: &str) -> Option<Self> {
        if text == "keys" {
            return Some(Self::Keys);
        }
        let (kind, id) = text.split_once(':')?;
        if id.is_empty() {
            return None;
        }
        let id = id.to_owned();
        Some(match kind {
            "token" => Self::Token(id),
            "family" => Self::Family(id),
            "client" => Self::Client(id),
            "user" => Self::User(id),
            "session" => Self::Session(id),
            _ => return None,
        })
    }
}

/// Where committed changes go on this node: its caches (`crate::coherence::Coherence`).
pub trait ChangeSink: Send + Sync {
    fn apply(&self, changes: &[Change]);
}

thread_local! {
    /// The sink of the `Db` whose work runs on this thread (set by `Db::run`).
    static SINK: RefCell<Option<Arc<dyn ChangeSink>>> = const { RefCell::new(None) };
    /// Changes published by the write transaction open on this thread, applied at commit.
    static PENDING: RefCell<Vec<Change>> = const { RefCell::new(Vec::new()) };
    /// Whether a write transaction is open on this thread.
    static IN_TRANSACTION: RefCell<bool> = const { RefCell::new(false) };
}

/// Records `change` in the current transaction (see the module docs).
pub fn publish(conn: &mut DbConnection, change: Change) -> Result<(), StoreError> {
    let text = change.encode();
    match conn {
        DbConnection::Postgres(pg) => {
            // A string literal, not a bind: NOTIFY takes no parameters. Ids never contain a
            // quote, but escape anyway.
            pg.batch_execute(&format!("NOTIFY {CHANNEL}, '{}'", text.replace('\'', "''")))?;
        }
        DbConnection::Sqlite(_) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            diesel::insert_into(changes::table)
                .values((changes::change.eq(&text), changes::created_at.eq(now)))
                .execute(conn)?;
        }
    }
    if IN_TRANSACTION.with(|t| *t.borrow()) {
        PENDING.with(|p| p.borrow_mut().push(change));
    } else {
        // An autocommitted write: it is already durable.
        apply_here(&[change]);
    }
    Ok(())
}

/// Publishes several changes.
pub fn publish_all(
    conn: &mut DbConnection,
    changes: impl IntoIterator<Item = Change>,
) -> Result<(), StoreError> {
    for change in changes {
        publish(conn, change)?;
    }
    Ok(())
}

fn apply_here(changes: &[Change]) {
    if changes.is_empty() {
        return;
    }
    SINK.with(|s| {
        if let Some(sink) = s.borrow().as_ref() {
            sink.apply(changes);
        }
    });
}

/// Held by `write_transaction` while its transaction is open on this thread. Dropped without
/// [`OpenTransaction::ended`] (the work panicked), it forgets what was published.
pub(super) struct OpenTransaction(());

/// Called by `write_transaction`: a transaction began on this thread.
pub(super) fn transaction_began() -> OpenTransaction {
    IN_TRANSACTION.with(|t| *t.borrow_mut() = true);
    PENDING.with(|p| p.borrow_mut().clear());
    OpenTransaction(())
}

impl OpenTransaction {
    /// The transaction ended: applies what committed, drops the rest.
    pub(super) fn ended(self, committed: bool) {
        let pending = PENDING.with(|p| std::mem::take(&mut *p.borrow_mut()));
        drop(self);
        if committed {
            apply_here(&pending);
        }
    }
}

/// A savepoint inside an open transaction: what it publishes is kept for the outer commit when
/// it is released, and dropped when it is rolled back.
pub(super) struct Savepoint(usize);

pub(super) fn savepoint_began() -> Savepoint {
    Savepoint(PENDING.with(|p| p.borrow().len()))
}

impl Savepoint {
    pub(super) fn ended(self, released: bool) {
        if !released {
            PENDING.with(|p| p.borrow_mut().truncate(self.0));
        }
    }
}

impl Drop for OpenTransaction {
    fn drop(&mut self) {
        IN_TRANSACTION.with(|t| *t.borrow_mut() = false);
        PENDING.with(|p| p.borrow_mut().clear());
    }
}

/// Runs `work` with `sink` as this thread's sink (`Db::run`'s blocking thread).
pub(super) fn with_sink<T>(sink: Option<Arc<dyn ChangeSink>>, work: impl FnOnce() -> T) -> T {
    super::with_thread_local(&SINK, sink, work)
}

#[derive(QueryableByName)]
struct Sequence {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    seq: i64,
}

/// SQLite: the last change id ever assigned (0 when none), even if purged since
/// (AUTOINCREMENT's `sqlite_sequence`).
pub fn latest_id(conn: &mut DbConnection) -> Result<i64, StoreError> {
    let rows: Vec<Sequence> =
        diesel::sql_query("SELECT seq FROM sqlite_sequence WHERE name = 'changes'").load(conn)?;
    Ok(rows.first().map_or(0, |r| r.seq))
}

/// SQLite: the changes with ids in `after+1 ..= upto`, oldest first (at most `limit`).
pub fn since(
    conn: &mut DbConnection,
    after: i64,
    upto: i64,
    limit: i64,
) -> Result<Vec<(i64, String)>, StoreError> {
    Ok(changes::table
        .filter(changes::id.gt(after))
        .filter(changes::id.le(upto))
        .order(changes::id)
        .select((changes::id, changes::change))
        .limit(limit)
        .load(conn)?)
}

/// Housekeeping: changes older than `before` have been seen by every live node.
pub fn purge_before(conn: &mut DbConnection, before: i64, batch: i64) -> Result<usize, StoreError> {
    let old: Vec<i64> = changes::table
        .filter(changes::created_at.lt(before))
        .select(changes::id)
        .order(changes::id)
        .limit(batch)
        .load(conn)?;
    Ok(diesel::delete(changes::table.filter(changes::id.eq_any(&old))).execute(conn)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_round_trip_through_their_wire_form() {
        for change in [
            Change::Token("a-jti".into()),
            Change::Family("f".into()),
            Change::Client("app:1".into()),
            Change::User("u".into()),
            Change::Session("s".into()),
            Change::Keys,
        ] {
            assert_eq!(Change::decode(&change.encode()), Some(change));
        }
        for unknown in ["", "keys:x", "token:", "role:x", "nothing"] {
            assert_eq!(Change::decode(unknown), None, "{unknown}");
        }
    }
}
