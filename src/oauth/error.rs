//! RFC 6749 protocol errors (DESIGN.md §9): a JSON body with `error` and `error_description`,
//! `Cache-Control: no-store`, and 401 with `WWW-Authenticate` for `invalid_client`.

use actix_web::http::{header, StatusCode};
use actix_web::HttpResponse;
use serde_json::json;

use crate::error::AppError;
use crate::store::StoreError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthError {
    pub code: &'static str,
    pub description: String,
}

macro_rules! codes {
    ($($name:ident = $code:literal),+ $(,)?) => {
        impl OAuthError {
            $(pub fn $name(description: impl Into<String>) -> Self {
                Self { code: $code, description: description.into() }
            })+
        }
    };
}

codes!(
    invalid_request = "invalid_request",
    invalid_client = "invalid_client",
    invalid_grant = "invalid_grant",
    invalid_scope = "invalid_scope",
    unauthorized_client = "unauthorized_client",
    unsupported_grant_type = "unsupported_grant_type",
    unsupported_response_type = "unsupported_response_type",
    access_denied = "access_denied",
    invalid_token = "invalid_token",
    insufficient_scope = "insufficient_scope",
    login_required = "login_required",
    consent_required = "consent_required",
    interaction_required = "interaction_required",
    server_error = "server_error",
    temporarily_unavailable = "temporarily_unavailable",
);

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

impl std::fmt::Display for OAuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.description)
    }
}

impl std::error::Error for OAuthError {}

impl actix_web::ResponseError for OAuthError {
    fn status_code(&self) -> StatusCode {
        self.status()
    }
    fn error_response(&self) -> HttpResponse {
        self.response()
    }
}

/// Parameters of a protocol request: each name at most once (RFC 6749 §3.1, §3.2), and an empty
/// value counts as absent (§3.1: "Parameters sent without a value MUST be treated as if they
/// were omitted").
#[derive(Debug, Clone, Default)]
pub struct Params(Vec<(String, String)>);

pub const MAX_PARAMS: usize = 64;

impl Params {
    /// From `application/x-www-form-urlencoded` bytes (query string or body). Rejects repeated
    /// names, too many parameters and bytes that are not UTF-8 after decoding.
    pub fn parse(encoded: &[u8]) -> Result<Self, OAuthError> {
        if std::str::from_utf8(encoded).is_err() {
            return Err(OAuthError::invalid_request("parameters are not UTF-8"));
        }
        let mut pairs: Vec<(String, String)> = Vec::new();
        for (name, value) in url::form_urlencoded::parse(encoded) {
            if name.contains('\u{FFFD}') || value.contains('\u{FFFD}') {
                return Err(OAuthError::invalid_request(
                    "parameters are not valid percent-encoded UTF-8",
                ));
            }
            if pairs.iter().any(|(n, _)| *n == name) {
                return Err(OAuthError::invalid_request(format!(
                    "parameter `{}` is repeated",
                    truncate(&name, 40)
                )));
            }
            if pairs.len() == MAX_PARAMS {
                return Err(OAuthError::invalid_request("too many parameters"));
            }
            pairs.push((name.into_owned(), value.into_owned()));
        }
        Ok(Self(pairs))
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, v)| n == name && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }

    /// A required parameter.
    pub fn require(&self, name: &str) -> Result<&str, OAuthError> {
        self.get(name)
            .ok_or_else(|| OAuthError::invalid_request(format!("`{name}` is required")))
    }

    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }
}

/// At most `max` characters of attacker-chosen text, for error descriptions.
pub fn truncate(text: &str, max: usize) -> String {
    text.chars().filter(|c| !c.is_control()).take(max).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_single_valued_and_empty_means_absent() {
        let p = Params::parse(b"a=1&b=&c=x%20y").unwrap();
        assert_eq!(p.get("a"), Some("1"));
        assert_eq!(p.get("b"), None);
        assert_eq!(p.get("c"), Some("x y"));
        assert_eq!(
            Params::parse(b"a=1&a=2").unwrap_err().code,
            "invalid_request"
        );
        assert!(Params::parse(b"a=%FF").is_err());
        assert!(Params::parse(&[b'a', b'=', 0xFF]).is_err());
        let many: String = (0..=MAX_PARAMS).map(|i| format!("p{i}=1&")).collect();
        assert!(Params::parse(many.as_bytes()).is_err());
    }

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
