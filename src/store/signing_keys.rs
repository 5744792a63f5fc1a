//! Rows of `signing_keys`. The private JWK is sealed; this module never sees it in clear.

use diesel::prelude::*;

use super::changes::{self, Change};
use super::schema::signing_keys;
use super::{DbConnection, StoreError};

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = signing_keys)]
pub struct SigningKeyRow {
    pub kid: String,
    pub alg: String,
    pub key_use: String,
    pub public_jwk: String,
    pub private_jwk_sealed: String,
    pub created_at: i64,
    pub activates_at: i64,
}

pub fn all(conn: &mut DbConnection) -> Result<Vec<SigningKeyRow>, StoreError> {
    Ok(signing_keys::table
        .select(SigningKeyRow::as_select())
        .order((
            signing_keys::alg,
            signing_keys::activates_at,
            signing_keys::kid,
        ))
        .load(conn)?)
}

pub fn insert(conn: &mut DbConnection, row: &SigningKeyRow) -> Result<(), StoreError> {
    diesel::insert_into(signing_keys::table)
        .values(row)
        .execute(conn)?;
    changes::publish(conn, Change::Keys)
}
