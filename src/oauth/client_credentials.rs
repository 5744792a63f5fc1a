//! How a request presents client credentials (RFC 6749 §2.3, RFC 7523 §2.2): the HTTP Basic
//! header (`client_secret_basic`, §2.3.1), `client_id`/`client_secret` in the form
//! (`client_secret_post`), a JWT `client_assertion` (`private_key_jwt`), or a bare `client_id`
//! (public clients). A request uses exactly one method. Pure (no actix, no database): the fuzz
//! crate compiles this file as it is; `client_auth.rs` checks what is presented.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use super::assertion_claims::CLIENT_ASSERTION_TYPE;
use super::error::{OAuthError, Params};

/// How the request tried to authenticate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presented {
    /// A public client naming itself.
    None {
        client_id: String,
    },
    SecretBasic {
        client_id: String,
        secret: String,
    },
    SecretPost {
        client_id: String,
        secret: String,
    },
    Assertion {
        client_id: Option<String>,
        assertion: String,
    },
}

impl Presented {
    pub fn client_id(&self) -> Option<&str> {
        match self {
            Self::None { client_id }
            | Self::SecretBasic { client_id, .. }
            | Self::SecretPost { client_id, .. } => Some(client_id),
            Self::Assertion { client_id, .. } => client_id.as_deref(),
        }
    }
}

/// Reads the credentials from the `Authorization` header and the form. Using two methods at
/// once is refused (RFC 6749 §2.3).
pub fn presented(authorization: Option<&str>, params: &Params) -> Result<Presented, OAuthError> {
    let basic = authorization.map(parse_basic).transpose()?;
    let form_secret = params.get("client_secret");
    let assertion = params.get("client_assertion");
    let form_id = params.get("client_id").map(str::to_owned);
    let methods = [basic.is_some(), form_secret.is_some(), assertion.is_some()]
        .iter()
        .filter(|m| **m)
        .count();
    if methods > 1 {
        return Err(OAuthError::invalid_request(
            "use exactly one client authentication method",
        ));
    }
    if let Some((client_id, secret)) = basic {
        if form_id.as_ref().is_some_and(|f| *f != client_id) {
            return Err(OAuthError::invalid_request(
                "client_id differs from the authenticated client",
            ));
        }
        return Ok(Presented::SecretBasic { client_id, secret });
    }
    if let Some(secret) = form_secret {
        let client_id =
            form_id.ok_or_else(|| OAuthError::invalid_request("client_secret needs client_id"))?;
        return Ok(Presented::SecretPost {
            client_id,
            secret: secret.to_owned(),
        });
    }
    if let Some(assertion) = assertion {
        if params.get("client_assertion_type") != Some(CLIENT_ASSERTION_TYPE) {
            return Err(OAuthError::invalid_request(format!(
                "client_assertion_type must be {CLIENT_ASSERTION_TYPE}"
            )));
        }
        return Ok(Presented::Assertion {
            client_id: form_id,
            assertion: assertion.to_owned(),
        });
    }
    match form_id {
        Some(client_id) => Ok(Presented::None { client_id }),
        None => Err(OAuthError::invalid_client(
            "client authentication is required",
        )),
    }
}

/// RFC 6749 §2.3.1: `Basic base64(urlencode(id) ":" urlencode(secret))`.
fn parse_basic(header: &str) -> Result<(String, String), OAuthError> {
    let bad = || OAuthError::invalid_client("malformed Basic credentials");
    let (scheme, value) = header.split_once(' ').ok_or_else(bad)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(bad());
    }
    let decoded = STANDARD.decode(value.trim()).map_err(|_| bad())?;
    let text = String::from_utf8(decoded).map_err(|_| bad())?;
    let (id, secret) = text.split_once(':').ok_or_else(bad)?;
    let (id, secret) = (
        form_decode(id).ok_or_else(bad)?,
        form_decode(secret).ok_or_else(bad)?,
    );
    if id.is_empty() || secret.is_empty() {
        return Err(bad());
    }
    Ok((id, secret))
}

/// One side of the Basic credentials, `application/x-www-form-urlencoded` (RFC 6749 Appendix B):
/// `+` is a space and `%XX` a byte; every other character is itself, `&` and `=` included (they
/// separate nothing inside the header); a `%` without two hex digits stays a `%`, as in the
/// form body. None when the decoded bytes are not UTF-8 (they are never guessed at).
fn form_decode(encoded: &str) -> Option<String> {
    percent_encoding::percent_decode_str(&encoded.replace('+', " "))
        .decode_utf8()
        .ok()
        .map(|text| text.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(text: &str) -> Params {
        Params::parse(text.as_bytes()).unwrap()
    }

    #[test]
    fn one_method_per_request() {
        let basic = format!("Basic {}", STANDARD.encode("app:s%3Acret"));
        assert_eq!(
            presented(Some(&basic), &params("grant_type=x")).unwrap(),
            Presented::SecretBasic {
                client_id: "app".into(),
                secret: "s:cret".into()
            }
        );
        assert!(presented(Some(&basic), &params("client_secret=x&client_id=app")).is_err());
        assert!(presented(Some(&basic), &params("client_id=other")).is_err());
        assert_eq!(
            presented(None, &params("client_id=app")).unwrap(),
            Presented::None {
                client_id: "app".into()
            }
        );
        assert_eq!(
            presented(None, &params("client_assertion=x.y.z"))
                .unwrap_err()
                .code,
            "invalid_request"
        );
        assert_eq!(
            presented(None, &params("grant_type=x")).unwrap_err().code,
            "invalid_client"
        );
        for bad in ["Bearer abc", "Basic !!!", "Basic YWJj"] {
            assert_eq!(
                presented(Some(bad), &params("")).unwrap_err().code,
                "invalid_client"
            );
        }
    }

    /// Found by the `form_params` fuzz target: the Basic decoder cut a client_id at a raw `&`
    /// (`a&x=1` became `a`) and turned bytes that are not UTF-8 into U+FFFD instead of refusing.
    #[test]
    fn basic_credentials_decode_per_rfc_6749_2_3_1() {
        let basic = |raw: &str| format!("Basic {}", STANDARD.encode(raw));
        let decoded = |raw: &str| presented(Some(&basic(raw)), &params(""));
        assert_eq!(
            decoded("a&x=1:s=e&t").unwrap(),
            Presented::SecretBasic {
                client_id: "a&x=1".into(),
                secret: "s=e&t".into()
            }
        );
        assert_eq!(
            decoded("my+app:p%C3%A4ss%2Bw%20d%zz%").unwrap(),
            Presented::SecretBasic {
                client_id: "my app".into(),
                secret: "päss+w d%zz%".into()
            }
        );
        for bad in ["app:%FF%FE", "%C3%28:secret", "app:%ED%A0%80"] {
            assert_eq!(decoded(bad).unwrap_err().code, "invalid_client", "{bad}");
        }
    }
}
