//! Rows of `ward_meta`: facts about this installation, one value per key.

use diesel::prelude::*;

use super::schema::ward_meta;
use super::{DbConnection, StoreError};

pub fn get(conn: &mut DbConnection, key: &str) -> Result<Option<String>, StoreError> {
    Ok(ward_meta::table
        .find(key)
        .select(ward_meta::value)
        .first(conn)
        .optional()?)
}

pub fn insert(conn: &mut DbConnection, key: &str, value: &str) -> Result<(), StoreError> {
    diesel::insert_into(ward_meta::table)
        .values((ward_meta::key.eq(key), ward_meta::value.eq(value)))
        .execute(conn)?;
    Ok(())
}
