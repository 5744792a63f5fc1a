//! Errors at the HTTP boundary that are not protocol errors (the OAuth layer has its own
//! `OAuthError` with RFC 6749 codes). Internal detail is logged with the request id and never
//! sent; bad input is a 4xx, never a 500 (DESIGN.md §9).

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

use crate::keys::KeyError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The database (or another dependency) is unreachable: 503, try again.
    #[error("service temporarily unavailable")]
    Unavailable(String),
    #[error("internal error")]
    Internal(String),
    #[error("not found")]
    NotFound,
    #[error("forbidden: {0}")]
    Forbidden(String),
}

impl AppError {
    fn code(&self) -> &'static str {
        match self {
            Self::Unavailable(_) => "temporarily_unavailable",
            Self::Internal(_) => "server_error",
            Self::NotFound => "not_found",
            Self::Forbidden(_) => "access_denied",
        }
    }
}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        if e.is_unavailable() {
            Self::Unavailable(e.to_string())
        } else {
            Self::Internal(e.to_string())
        }
    }
}

impl From<KeyError> for AppError {
    fn from(e: KeyError) -> Self {
        match e {
            KeyError::Store(store) => store.into(),
            other => Self::Internal(other.to_string()),
        }
    }
}

impl ResponseError for AppError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
        }
    }

    fn error_response(&self) -> HttpResponse {
        match self {
            Self::Unavailable(detail) => tracing::warn!(%detail, "dependency unavailable"),
            Self::Internal(detail) => tracing::error!(%detail, "internal error"),
            Self::NotFound | Self::Forbidden(_) => {}
        }
        let mut response = HttpResponse::build(self.status_code());
        response.insert_header((header::CACHE_CONTROL, "no-store"));
        if matches!(self, Self::Unavailable(_)) {
            response.insert_header((header::RETRY_AFTER, "1"));
        }
        response.json(json!({ "error": self.code(), "error_description": self.to_string() }))
    }
}
