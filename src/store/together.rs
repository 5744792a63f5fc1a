//! Several INSERTs written as one: all of the rows or none.
//!
//! On PostgreSQL they go to the server as one statement of data-modifying CTEs
//! (`WITH w0 AS (INSERT …), w1 AS (INSERT …) INSERT …`): one round trip instead of one per row,
//! and atomic by itself, so outside a transaction it needs no `BEGIN` and `COMMIT` either (two
//! more round trips). Foreign keys are checked at the end of the statement, so a row may
//! reference one inserted earlier in the same set (a token and its new family). The statement
//! stays prepared on the connection (parsed and planned once) when every part's SQL is the same
//! for every row: rows whose `None` is bound as NULL (`treat_none_as_default_value = false`),
//! never written as `DEFAULT`. A part that may write `DEFAULT` makes diesel send the whole
//! statement unnamed, parsed and planned on every run.
//!
//! SQLite has no data-modifying CTEs, and no round trips to save: there the rows go in one
//! after another inside a write transaction of their own, a savepoint when one is open already
//! (a group-committed batch, whose other pieces must not see this set half written, or the
//! caller's transaction).

use diesel::pg::Pg;
use diesel::query_builder::{AstPass, QueryFragment, QueryId};
use diesel::query_dsl::methods::ExecuteDsl;
use diesel::result::Error;
use diesel::sqlite::SqliteConnection;
use diesel::{PgConnection, QueryResult};

use super::{write_transaction, DbConnection, StoreError};

/// Inserts every part of `parts` (a tuple of diesel `insert_into(…).values(…)` statements, in
/// the order a foreign key needs them), all or none. A row that cannot go in (a unique key
/// taken, say) fails the set with diesel's own error (`StoreError::Query`) and nothing of it
/// written.
pub fn insert<S: InsertSet>(conn: &mut DbConnection, parts: S) -> Result<(), StoreError> {
    match conn {
        DbConnection::Postgres(_) => written(conn, parts),
        DbConnection::Sqlite(_) => write_transaction(conn, |conn| written(conn, parts)),
    }
}

fn written<S: InsertSet>(conn: &mut DbConnection, parts: S) -> Result<(), StoreError> {
    match conn {
        DbConnection::Postgres(pg) => Ok(parts.on_postgres(pg)?),
        DbConnection::Sqlite(lite) => Ok(parts.on_sqlite(lite)?),
    }
}

/// A tuple of INSERT statements that can be written together (see the module docs).
pub trait InsertSet {
    fn on_postgres(self, conn: &mut PgConnection) -> Result<(), Error>;
    fn on_sqlite(self, conn: &mut SqliteConnection) -> Result<(), Error>;
}

/// The parts as one PostgreSQL statement.
pub struct Together<T>(T);

/// `WITH w0 AS (first), w1 AS (second), … last`.
fn walk_together<'b>(
    parts: &[&'b dyn QueryFragment<Pg>],
    mut out: AstPass<'_, 'b, Pg>,
) -> QueryResult<()> {
    let Some((&last, leading)) = parts.split_last() else {
        return Ok(());
    };
    for (i, &part) in leading.iter().enumerate() {
        out.push_sql(if i == 0 { "WITH " } else { ", " });
        out.push_sql(&format!("w{i} AS ("));
        part.walk_ast(out.reborrow())?;
        out.push_sql(")");
    }
    if !leading.is_empty() {
        out.push_sql(" ");
    }
    last.walk_ast(out.reborrow())
}

macro_rules! insert_set {
    ($($part:ident),+) => {
        impl<$($part),+> QueryId for Together<($($part,)+)> {
            // Never cached by type: the parts' SQL may vary with their values (`DEFAULT`).
            type QueryId = ();
            const HAS_STATIC_QUERY_ID: bool = false;
        }

        impl<$($part: QueryFragment<Pg>),+> QueryFragment<Pg> for Together<($($part,)+)> {
            fn walk_ast<'b>(&'b self, out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
                #[allow(non_snake_case)]
                let ($($part,)+) = &self.0;
                walk_together(&[$($part as &dyn QueryFragment<Pg>),+], out)
            }
        }

        impl<$($part),+> InsertSet for ($($part,)+)
        where
            $($part: QueryFragment<Pg> + QueryId + ExecuteDsl<SqliteConnection>),+
        {
            fn on_postgres(self, conn: &mut PgConnection) -> Result<(), Error> {
                ExecuteDsl::<PgConnection>::execute(Together(self), conn).map(drop)
            }

            fn on_sqlite(self, conn: &mut SqliteConnection) -> Result<(), Error> {
                #[allow(non_snake_case)]
                let ($($part,)+) = self;
                $(ExecuteDsl::<SqliteConnection>::execute($part, conn)?;)+
                Ok(())
            }
        }
    };
}

insert_set!(A, B);
insert_set!(A, B, C);
insert_set!(A, B, C, D);

/// Whether PostgreSQL keeps `parts`, written together, as a prepared statement of the
/// connection (parsed and planned once) instead of parsing and planning it on every run.
#[cfg(test)]
pub(crate) fn stays_prepared_on_postgres<S>(parts: S) -> bool
where
    Together<S>: QueryFragment<Pg>,
{
    Together(parts)
        .is_safe_to_cache_prepared(&Pg)
        .expect("the statement walks")
}

#[cfg(test)]
mod tests {
    use diesel::prelude::*;

    use super::*;
    use crate::store::schema::ward_meta;
    use crate::store::{meta, migrated_sqlite};

    #[test]
    fn on_postgresql_the_parts_are_one_statement_with_their_binds_in_order() {
        let set = Together((
            diesel::insert_into(ward_meta::table)
                .values((ward_meta::key.eq("a"), ward_meta::value.eq("1"))),
            diesel::insert_into(ward_meta::table)
                .values((ward_meta::key.eq("b"), ward_meta::value.eq("2"))),
            diesel::insert_into(ward_meta::table)
                .values((ward_meta::key.eq("c"), ward_meta::value.eq("3"))),
        ));
        let sql = diesel::debug_query::<Pg, _>(&set).to_string();
        assert_eq!(
            sql,
            "WITH w0 AS (INSERT INTO \"ward_meta\" (\"key\", \"value\") VALUES ($1, $2)), \
             w1 AS (INSERT INTO \"ward_meta\" (\"key\", \"value\") VALUES ($3, $4)) \
             INSERT INTO \"ward_meta\" (\"key\", \"value\") VALUES ($5, $6) \
             -- binds: [\"a\", \"1\", \"b\", \"2\", \"c\", \"3\"]"
        );
    }

    #[test]
    fn on_sqlite_a_set_with_a_row_that_cannot_go_in_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = migrated_sqlite(&dir);
        meta::insert(&mut conn, "taken", "v").unwrap();
        let insert_row = |key: &'static str| {
            diesel::insert_into(ward_meta::table)
                .values((ward_meta::key.eq(key), ward_meta::value.eq("v")))
        };
        let refused = insert(
            &mut conn,
            (
                insert_row("first"),
                insert_row("second"),
                insert_row("taken"),
            ),
        );
        assert!(
            matches!(
                refused,
                Err(StoreError::Query(diesel::result::Error::DatabaseError(
                    diesel::result::DatabaseErrorKind::UniqueViolation,
                    _
                )))
            ),
            "{refused:?}"
        );
        for key in ["first", "second"] {
            assert_eq!(
                meta::get(&mut conn, key).unwrap(),
                None,
                "{key} was written"
            );
        }
        insert(&mut conn, (insert_row("first"), insert_row("second"))).unwrap();
        for key in ["first", "second"] {
            assert!(meta::get(&mut conn, key).unwrap().is_some(), "{key}");
        }
    }
}
