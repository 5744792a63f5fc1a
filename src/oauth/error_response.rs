//! How an [`OAuthError`] leaves Ward (RFC 6749 §5.2, RFC 6750 §3): a JSON body with `error` and
//! `error_description`, `Cache-Control: no-store`, and 401 with `WWW-Authenticate` for
//! `invalid_client`; and how internal errors become protocol errors. Kept apart from
//! `error.rs` so that the parameter parsing there stays free of actix and the store.

use actix_web::http::{header, StatusCode};
use actix_web::HttpResponse;
use serde_json::json;

use super::error::OAuthError;
use crate::error::AppError;
use crate::store::StoreError;

impl OAuthError {
    pub fn status(&self) -> StatusCode {
        match self.code {
            "invalid_client" | "invalid_token" => StatusCode::UNAUTHORIZED,
            "insufficient_scope" => StatusCode::FORBIDDEN,
            "server_error" => StatusCode::INTERNAL_SERVER_ERROR,
            "temporarily_unavailable" => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// The JSON error response of a token-style endpoint.
    pub fn response(&self) -> HttpResponse {
        let mut builder = HttpResponse::build(self.status());
        builder
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .insert_header((header::PRAGMA, "no-cache"));
        match self.code {
            "invalid_client" => {
                builder.insert_header((header::WWW_AUTHENTICATE, "Basic realm=\"ward\""));
            }
            "invalid_token" | "insufficient_scope" => {
                builder.insert_header((
                    header::WWW_AUTHENTICATE,
                    format!("Bearer error=\"{}\"", self.code),
                ));
            }
            "temporarily_unavailable" => {
                builder.insert_header((header::RETRY_AFTER, "1"));
            }
            _ => {}
        }
        builder.json(json!({ "error": self.code, "error_description": self.description }))
    }
}

impl From<StoreError> for OAuthError {
    fn from(e: StoreError) -> Self {
        AppError::from(e).into()
    }
}

impl From<AppError> for OAuthError {
    fn from(e: AppError) -> Self {
        match e {
            AppError::Unavailable(detail) => {
                tracing::warn!(%detail, "dependency unavailable");
                Self::temporarily_unavailable("try again shortly")
            }
            AppError::Internal(detail) => {
                tracing::error!(%detail, "internal error");
                Self::server_error("internal error")
            }
            AppError::NotFound => Self::invalid_request("not found"),
            AppError::Forbidden(text) => Self::access_denied(text),
        }
    }
}

impl From<crate::keys::KeyError> for OAuthError {
    fn from(e: crate::keys::KeyError) -> Self {
        AppError::from(e).into()
    }
}

impl actix_web::ResponseError for OAuthError {
    fn status_code(&self) -> StatusCode {
        self.status()
    }
    fn error_response(&self) -> HttpResponse {
        self.response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_client_is_401_with_a_challenge() {
        let r = OAuthError::invalid_client("x").response();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert!(r.headers().contains_key(header::WWW_AUTHENTICATE));
        assert_eq!(r.headers().get(header::CACHE_CONTROL).unwrap(), "no-store");
        assert_eq!(
            OAuthError::invalid_grant("x").status(),
            StatusCode::BAD_REQUEST
        );
    }
}
