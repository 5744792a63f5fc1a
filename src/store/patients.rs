//! Rows of `patients`: the directory behind the standalone patient picker.

use diesel::prelude::*;

use super::clients::escape_like;
use super::schema::patients;
use super::{DbConnection, StoreError};

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = patients)]
pub struct PatientRow {
    pub id: String,
    pub family: String,
    pub given: String,
    pub birth_date: Option<String>,
    pub gender: Option<String>,
    pub identifiers: String,
    pub search_name: String,
    pub search_identifiers: String,
    pub created_at: i64,
    pub updated_at: i64,
}

/// Inserts or replaces a patient; true when it was new.
pub fn upsert(conn: &mut DbConnection, row: &PatientRow) -> Result<bool, StoreError> {
    let updated = diesel::update(patients::table.find(&row.id))
        .set((
            patients::family.eq(&row.family),
            patients::given.eq(&row.given),
            patients::birth_date.eq(&row.birth_date),
            patients::gender.eq(&row.gender),
            patients::identifiers.eq(&row.identifiers),
            patients::search_name.eq(&row.search_name),
            patients::search_identifiers.eq(&row.search_identifiers),
            patients::updated_at.eq(row.updated_at),
        ))
        .execute(conn)?;
    if updated == 1 {
        return Ok(false);
    }
    diesel::insert_into(patients::table)
        .values(row)
        .execute(conn)?;
    Ok(true)
}

pub fn find(conn: &mut DbConnection, id: &str) -> Result<Option<PatientRow>, StoreError> {
    Ok(patients::table
        .find(id)
        .select(PatientRow::as_select())
        .first(conn)
        .optional()?)
}

pub fn count(conn: &mut DbConnection) -> Result<i64, StoreError> {
    Ok(patients::table.count().get_result(conn)?)
}

/// Every word must occur in the normalised name.
pub fn by_name(
    conn: &mut DbConnection,
    words: &[String],
    limit: i64,
) -> Result<Vec<PatientRow>, StoreError> {
    let mut query = patients::table.select(PatientRow::as_select()).into_boxed();
    for word in words {
        query = query.filter(
            patients::search_name
                .like(format!("%{}%", escape_like(word)))
                .escape('\\'),
        );
    }
    Ok(query
        .order((patients::family, patients::given, patients::id))
        .limit(limit)
        .load(conn)?)
}

pub fn by_birth_date(
    conn: &mut DbConnection,
    date: &str,
    limit: i64,
) -> Result<Vec<PatientRow>, StoreError> {
    Ok(patients::table
        .filter(patients::birth_date.eq(date))
        .select(PatientRow::as_select())
        .order((patients::family, patients::given, patients::id))
        .limit(limit)
        .load(conn)?)
}

pub fn by_identifier(
    conn: &mut DbConnection,
    value: &str,
    limit: i64,
) -> Result<Vec<PatientRow>, StoreError> {
    Ok(patients::table
        .filter(
            patients::search_identifiers
                .like(format!("%|{}|%", escape_like(value)))
                .escape('\\'),
        )
        .select(PatientRow::as_select())
        .order((patients::family, patients::given, patients::id))
        .limit(limit)
        .load(conn)?)
}

/// Removes a patient from the directory; true when it was there.
pub fn delete(conn: &mut DbConnection, id: &str) -> Result<bool, StoreError> {
    Ok(diesel::delete(patients::table.find(id)).execute(conn)? == 1)
}

/// A page of the directory in id order.
pub fn page(
    conn: &mut DbConnection,
    limit: i64,
    offset: i64,
) -> Result<Vec<PatientRow>, StoreError> {
    Ok(patients::table
        .select(PatientRow::as_select())
        .order(patients::id)
        .limit(limit)
        .offset(offset)
        .load(conn)?)
}
