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

/// When `ward audit verify` last found the chain intact (Unix seconds).
pub const AUDIT_VERIFIED_AT: &str = "audit.verified_at";
/// When `ward backup` last wrote a backup (Unix seconds).
pub const BACKUP_AT: &str = "backup.at";

/// Sets a key's value, creating it when absent.
pub fn set(conn: &mut DbConnection, key: &str, value: &str) -> Result<(), StoreError> {
    let updated = diesel::update(ward_meta::table.find(key))
        .set(ward_meta::value.eq(value))
        .execute(conn)?;
    if updated == 0 {
        insert(conn, key, value)?;
    }
    Ok(())
}

/// Sets `key` to `new` only if it still holds `old`; true when this call changed it.
pub fn compare_and_set(
    conn: &mut DbConnection,
    key: &str,
    old: &str,
    new: &str,
) -> Result<bool, StoreError> {
    Ok(
        diesel::update(ward_meta::table.find(key).filter(ward_meta::value.eq(old)))
            .set(ward_meta::value.eq(new))
            .execute(conn)?
            == 1,
    )
}
