//! RFC 6749 protocol errors and request parameters (DESIGN.md §9). This module is pure (no
//! actix, no database): the fuzz crate compiles it as it is. How an error becomes an HTTP
//! response (a JSON body with `error` and `error_description`, `Cache-Control: no-store`, 401
//! with `WWW-Authenticate` for `invalid_client`) is in `error_response.rs`.

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

impl std::fmt::Display for OAuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.description)
    }
}

impl std::error::Error for OAuthError {}

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

    /// Every parameter as received, empty values included, in request order.
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
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
}
