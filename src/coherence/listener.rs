//! The listener: receives every node's committed changes and keeps the lease (see the parent
//! module's rule 2). One per node, on its own database connection, outside the pool.
//!
//! - PostgreSQL: `LISTEN ward_changes`; every [`POLL`] a `SELECT 1` round trip, after which
//!   every notification committed before the round trip began has arrived (PostgreSQL sends
//!   pending notifications before it answers), so the lease can be extended from that moment.
//! - SQLite: every [`POLL`] the rows of `changes` after the last id seen. Ids are assigned in
//!   commit order and without gaps (a rolled-back insert returns its id), so a gap means rows
//!   were purged unseen, and the caches are flushed.
//!
//! A failed round trip withdraws trust at once; the listener reconnects with back-off and,
//! once listening again, flushes the caches before trusting them (it may have missed changes).

use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::pg::PgConnection;
use diesel::RunQueryDsl;

use super::{Coherence, POLL};
use crate::app::AppState;
use crate::config::DatabaseTarget;
use crate::store::changes::{self, Change, ChangeSink, CHANNEL};
use crate::store::{ConnectionManager, DbConnection, StoreError};

/// At most this many SQLite change rows are read per round.
const BATCH: i64 = 10_000;
/// The longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What one round learned.
#[derive(Debug, PartialEq, Eq)]
enum Round {
    /// These changes (possibly none) arrived, and nothing was missed.
    Changes(Vec<Change>),
    /// Something may have been missed (a new connection, a gap, an unknown change): flush.
    Flush,
}

enum Connection {
    Postgres(PgConnection),
    Sqlite { conn: DbConnection, last_id: i64 },
}

/// Starts this node's listener on the server's runtime.
pub fn spawn_listener(state: &AppState) {
    let target = match state.settings.database_target() {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "cache coherence listener not started; caches stay unused");
            return;
        }
    };
    let coherence = Arc::clone(&state.coherence);
    actix_web::rt::spawn(async move {
        let mut connection: Option<Connection> = None;
        let mut backoff = POLL;
        let mut failing = false;
        loop {
            let began = Instant::now();
            let target2 = target.clone();
            let joined = tokio::task::spawn_blocking(move || {
                let result = round(&mut connection, &target2);
                (connection, result)
            })
            .await;
            let result = match joined {
                Ok((back, result)) => {
                    connection = back;
                    result
                }
                Err(e) => {
                    connection = None;
                    Err(StoreError::Unavailable(format!(
                        "listener task failed: {e}"
                    )))
                }
            };
            match result {
                Ok(round) => {
                    match round {
                        Round::Changes(changes) => coherence.apply_if_any(&changes),
                        Round::Flush => coherence.flush(),
                    }
                    coherence.extend_lease(began);
                    if failing {
                        tracing::info!("cache coherence listener is back; caches in use again");
                    }
                    failing = false;
                    backoff = POLL;
                    tokio::time::sleep(POLL).await;
                }
                Err(e) => {
                    coherence.distrust();
                    connection = None;
                    if !failing {
                        tracing::warn!(error = %e, "cache coherence listener lost the database; answering from the database until it is back");
                    }
                    failing = true;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    });
}

impl Coherence {
    fn apply_if_any(&self, changes: &[Change]) {
        if !changes.is_empty() {
            self.apply(changes);
        }
    }
}

fn round(
    connection: &mut Option<Connection>,
    target: &DatabaseTarget,
) -> Result<Round, StoreError> {
    let Some(conn) = connection else {
        *connection = Some(connect(target)?);
        return Ok(Round::Flush);
    };
    match conn {
        Connection::Postgres(pg) => {
            // The round trip also proves this session still listens (a connection pooler in
            // transaction mode would answer while the LISTEN sits on another server session).
            let listening: bool = diesel::select(diesel::dsl::sql::<diesel::sql_types::Bool>(
                &format!("'{CHANNEL}' = ANY(ARRAY(SELECT pg_listening_channels()))"),
            ))
            .get_result(pg)?;
            if !listening {
                return Err(StoreError::Unavailable(
                    "the change listener's session is not listening (connect it directly to PostgreSQL, not through a transaction-mode pooler)".into(),
                ));
            }
            let mut changes = Vec::new();
            for notification in pg.notifications_iter() {
                let notification = notification?;
                match Change::decode(&notification.payload) {
                    Some(change) => changes.push(change),
                    None => return Ok(Round::Flush),
                }
            }
            Ok(Round::Changes(changes))
        }
        Connection::Sqlite { conn, last_id } => {
            // The last id assigned first: every row up to it has committed, so the rows read
            // next must be exactly `last_id+1 ..= latest`, or some were purged unseen.
            let latest = changes::latest_id(conn)?;
            if latest == *last_id {
                return Ok(Round::Changes(Vec::new()));
            }
            let rows = changes::since(conn, *last_id, latest, BATCH)?;
            let round = read_sqlite_rows(*last_id, latest, &rows);
            *last_id = latest;
            Ok(round)
        }
    }
}

/// The pure part of a SQLite round: the changes after `last_id` up to `latest`.
fn read_sqlite_rows(last_id: i64, latest: i64, rows: &[(i64, String)]) -> Round {
    let complete = i64::try_from(rows.len()).ok() == latest.checked_sub(last_id)
        && rows
            .iter()
            .enumerate()
            .all(|(i, (id, _))| i64::try_from(i).is_ok_and(|i| *id == last_id + 1 + i));
    let decoded: Option<Vec<Change>> = rows.iter().map(|(_, text)| Change::decode(text)).collect();
    match decoded {
        Some(changes) if complete => Round::Changes(changes),
        _ => Round::Flush,
    }
}

fn connect(target: &DatabaseTarget) -> Result<Connection, StoreError> {
    // A listener stuck on a dead connection must notice: libpq gives up on unacknowledged
    // data after 3 s (the lease has already lapsed by then; this is about reconnecting).
    let target = match target {
        DatabaseTarget::Postgres(url) => DatabaseTarget::Postgres(listener_url(url)),
        other => other.clone(),
    };
    let manager = ConnectionManager::new(target);
    let conn = manager
        .establish()
        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
    match conn {
        DbConnection::Postgres(mut pg) => {
            pg.batch_execute(&format!("LISTEN {CHANNEL}"))?;
            Ok(Connection::Postgres(pg))
        }
        mut sqlite @ DbConnection::Sqlite(_) => {
            let last_id = changes::latest_id(&mut sqlite)?;
            Ok(Connection::Sqlite {
                conn: sqlite,
                last_id,
            })
        }
    }
}

/// The listener's connection: named (operators see it in `pg_stat_activity`) and quick to
/// notice a dead peer.
fn listener_url(url: &str) -> String {
    let mut url = url.to_owned();
    for (name, value) in [
        ("application_name", LISTENER_NAME),
        ("tcp_user_timeout", "3000"),
    ] {
        if !url.contains(&format!("{name}=")) {
            let joiner = if url.contains('?') { '&' } else { '?' };
            url = format!("{url}{joiner}{name}={value}");
        }
    }
    url
}

/// The `application_name` of every node's listener connection.
pub const LISTENER_NAME: &str = "ward-change-listener";

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(items: &[(i64, &str)]) -> Vec<(i64, String)> {
        items.iter().map(|(i, t)| (*i, (*t).to_owned())).collect()
    }

    #[test]
    fn the_listener_names_its_connection() {
        assert_eq!(
            listener_url("postgres://h/db"),
            "postgres://h/db?application_name=ward-change-listener&tcp_user_timeout=3000"
        );
        assert_eq!(
            listener_url("postgres://h/db?sslmode=require&tcp_user_timeout=1"),
            "postgres://h/db?sslmode=require&tcp_user_timeout=1&application_name=ward-change-listener"
        );
    }

    #[test]
    fn sqlite_rounds_read_contiguous_changes_and_flush_on_a_gap_or_unknown_change() {
        assert_eq!(
            read_sqlite_rows(4, 6, &rows(&[(5, "token:a"), (6, "keys")])),
            Round::Changes(vec![Change::Token("a".into()), Change::Keys])
        );
        assert_eq!(
            read_sqlite_rows(4, 6, &rows(&[(6, "token:a")])),
            Round::Flush,
            "row 5 was purged unseen"
        );
        assert_eq!(
            read_sqlite_rows(4, 6, &rows(&[(5, "token:a")])),
            Round::Flush,
            "row 6, the newest, was purged unseen"
        );
        assert_eq!(
            read_sqlite_rows(4, 6, &[]),
            Round::Flush,
            "everything was purged unseen"
        );
        assert_eq!(
            read_sqlite_rows(4, 5, &rows(&[(5, "grant:x")])),
            Round::Flush,
            "a change kind this node does not know"
        );
    }
}
