//! Redirect URIs: what may be registered, and when a presented URI matches a registered one.
//!
//! RFC 9700 §2.1 and §4.1.3: exact string comparison, no wildcards, no partial matching. The one
//! exception is RFC 8252 §7.3: a native (public) app listening on a loopback IP literal gets an
//! ephemeral port from the OS, so for such registrations the port is ignored, and nothing else.
//! RFC 8252 §7.1: native apps may also use a private-use scheme in reverse-domain form.

use url::{Host, Url};

pub const MAX_REDIRECT_URI_LEN: usize = 2000;

/// Why a redirect URI cannot be registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedirectUriError {
    #[error("is not an absolute URI")]
    NotAbsolute,
    #[error("is longer than {MAX_REDIRECT_URI_LEN} characters")]
    TooLong,
    #[error("must not contain a fragment (#)")]
    Fragment,
    #[error("must not contain wildcards (*)")]
    Wildcard,
    #[error("must not contain user credentials")]
    Credentials,
    #[error("must use https (http only for public native apps on 127.0.0.1 or [::1])")]
    InsecureHttp,
    #[error("scheme `{0}` is not allowed")]
    ForbiddenScheme(String),
    #[error("private-use schemes must be reverse-domain names such as com.example.app, and are for public (native) apps only")]
    PrivateUseScheme,
    #[error("contains whitespace or control characters")]
    Whitespace,
}

/// Schemes that execute or read locally rather than navigate: never a redirect target.
const FORBIDDEN_SCHEMES: &[&str] = &[
    "javascript",
    "data",
    "vbscript",
    "file",
    "about",
    "blob",
    "filesystem",
    "ftp",
    "ws",
    "wss",
];

/// Checks one URI for registration. `native` is true for public clients, which alone may use
/// private-use schemes.
pub fn validate(uri: &str, native: bool) -> Result<Url, RedirectUriError> {
    if uri.len() > MAX_REDIRECT_URI_LEN {
        return Err(RedirectUriError::TooLong);
    }
    if uri.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(RedirectUriError::Whitespace);
    }
    if uri.contains('*') {
        return Err(RedirectUriError::Wildcard);
    }
    if uri.contains('#') {
        return Err(RedirectUriError::Fragment);
    }
    let url = Url::parse(uri).map_err(|_| RedirectUriError::NotAbsolute)?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(RedirectUriError::Credentials);
    }
    match url.scheme() {
        "https" => {
            if url.host().is_none() {
                return Err(RedirectUriError::NotAbsolute);
            }
        }
        // RFC 8252 §7.3, §8.3: plain http only for native apps on a loopback IP literal
        // (`localhost` can be re-pointed by the hosts file or DNS).
        "http" => {
            if !(native && is_loopback_ip_literal(&url)) {
                return Err(RedirectUriError::InsecureHttp);
            }
        }
        scheme if FORBIDDEN_SCHEMES.contains(&scheme) => {
            return Err(RedirectUriError::ForbiddenScheme(scheme.to_owned()));
        }
        scheme => {
            let reverse_domain = scheme.contains('.')
                && scheme.split('.').all(|label| {
                    !label.is_empty()
                        && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                });
            if !native || !reverse_domain {
                return Err(RedirectUriError::PrivateUseScheme);
            }
        }
    }
    Ok(url)
}

fn is_loopback_ip_literal(url: &Url) -> bool {
    match url.host() {
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => ip.is_loopback(),
        _ => false,
    }
}

/// Whether `presented` (from an authorization or token request) matches `registered`: byte for
/// byte, except that a public client's `http` loopback-IP registration matches any port.
pub fn matches(registered: &str, presented: &str, native: bool) -> bool {
    if registered == presented {
        return true;
    }
    if !native {
        return false;
    }
    let (Ok(reg), Ok(pres)) = (Url::parse(registered), Url::parse(presented)) else {
        return false;
    };
    // Both sides must be in the URL parser's normalised form: the parser forgives leading
    // control characters, odd case and the like, and the exception must not (found by fuzzing).
    reg.as_str() == registered
        && reg.scheme() == "http"
        && pres.scheme() == "http"
        && is_loopback_ip_literal(&reg)
        && reg.host() == pres.host()
        && reg.path() == pres.path()
        && reg.query() == pres.query()
        && pres.fragment().is_none()
        && pres.username().is_empty()
        && pres.password().is_none()
        // Url normalises; require the presented string to be the normalised form with only
        // the port changed, so no encoding trick slips through.
        && with_port(&reg, pres.port()).as_deref() == Some(presented)
}

fn with_port(url: &Url, port: Option<u16>) -> Option<String> {
    let mut copy = url.clone();
    copy.set_port(port).ok()?;
    Some(copy.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_what_rfc_8252_and_9700_allow() {
        for (uri, native) in [
            ("https://app.example.com/callback", false),
            ("https://app.example.com/cb?tenant=1", false),
            ("http://127.0.0.1/callback", true),
            ("http://127.0.0.1:51004/callback", true),
            ("http://[::1]:8000/cb", true),
            ("com.example.app:/oauth2redirect", true),
        ] {
            assert!(validate(uri, native).is_ok(), "{uri}");
        }
    }

    #[test]
    fn rejects_dangerous_or_loose_uris() {
        use RedirectUriError::*;
        let cases = [
            (
                "javascript:alert(1)",
                true,
                ForbiddenScheme("javascript".into()),
            ),
            ("data:text/html,hi", true, ForbiddenScheme("data".into())),
            ("file:///etc/passwd", true, ForbiddenScheme("file".into())),
            ("https://*.example.com/cb", false, Wildcard),
            ("https://app.example.com/*", false, Wildcard),
            ("*", false, Wildcard),
            ("https://app.example.com/cb#frag", false, Fragment),
            ("http://app.example.com/cb", false, InsecureHttp),
            ("http://192.168.1.10/cb", true, InsecureHttp),
            ("http://localhost:3000/cb", true, InsecureHttp),
            ("http://127.0.0.1:3000/cb", false, InsecureHttp),
            ("/relative/path", false, NotAbsolute),
            ("https://user:pass@app.example.com/cb", false, Credentials),
            ("myapp:/cb", true, PrivateUseScheme),
            ("com.example.app:/cb", false, PrivateUseScheme),
            ("https://app.example.com/c b", false, Whitespace),
            ("https://app.example.com/\ncb", false, Whitespace),
        ];
        for (uri, native, expected) in cases {
            assert_eq!(validate(uri, native), Err(expected), "{uri}");
        }
        assert_eq!(
            validate(&format!("https://a.example/{}", "x".repeat(2000)), false),
            Err(TooLong)
        );
    }

    #[test]
    fn matching_is_exact() {
        let reg = "https://app.example.com/callback";
        assert!(matches(reg, reg, false));
        for presented in [
            "https://app.example.com/callback/",
            "https://app.example.com/callback?x=1",
            "https://app.example.com/Callback",
            "https://APP.example.com/callback",
            "https://app.example.com:443/callback",
            "https://app.example.com/callback#x",
            "https://app.example.com.evil.com/callback",
            "https://app.example.com/callback/../callback",
            "https://app.example.com/%63allback",
        ] {
            assert!(!matches(reg, presented, false), "{presented}");
            assert!(!matches(reg, presented, true), "{presented}");
        }
    }

    #[test]
    fn loopback_ip_registrations_of_native_apps_match_any_port_only() {
        let reg = "http://127.0.0.1/callback";
        assert!(matches(reg, "http://127.0.0.1:51004/callback", true));
        assert!(matches(reg, "http://127.0.0.1:8080/callback", true));
        // Only the port may differ, and only for public (native) clients.
        assert!(!matches(reg, "http://127.0.0.1:51004/callback", false));
        assert!(!matches(reg, "http://127.0.0.1:51004/other", true));
        assert!(!matches(reg, "http://127.0.0.1:51004/callback?x=1", true));
        assert!(!matches(reg, "http://127.0.0.2:51004/callback", true));
        assert!(!matches(reg, "http://localhost:51004/callback", true));
        assert!(!matches(reg, "https://127.0.0.1:51004/callback", true));
        assert!(!matches(reg, "http://127.0.0.1:51004/%63allback", true));
        assert!(!matches(reg, "http://u@127.0.0.1:51004/callback", true));
        // `localhost` registrations are exact (RFC 8252 §8.3 recommends IP literals).
        assert!(!matches(
            "http://localhost/cb",
            "http://localhost:9/cb",
            true
        ));
        assert!(matches("http://[::1]/cb", "http://[::1]:9000/cb", true));
        // Regression (fuzzing): a registered value the parser would "clean up" gets no exception.
        assert!(!matches(
            "\u{1}\u{0}\u{3}http://127.0.0.1/callback",
            "http://127.0.0.1:51004/callback",
            true
        ));
        assert!(!matches(
            "HTTP://127.0.0.1/callback",
            "http://127.0.0.1:51004/callback",
            true
        ));
    }
}
