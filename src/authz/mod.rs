//! Who may get what (DESIGN.md §6): roles and their scope ceilings, users and their roles, and
//! [`grant::grantable`], the one place that decides a grant.

pub mod grant;
pub mod roles;
pub mod users;

use crate::clients::FieldError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    #[error("invalid: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<FieldError>),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// The record changed since the version the caller read (a lost update was prevented).
    #[error("{0}")]
    Stale(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<diesel::result::Error> for DirectoryError {
    fn from(e: diesel::result::Error) -> Self {
        Self::Store(e.into())
    }
}
