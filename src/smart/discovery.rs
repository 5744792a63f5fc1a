//! Discovery documents: `/.well-known/smart-configuration` (SMART App Launch 2.2 §"SMART on FHIR
//! Well-Known URI") and `/.well-known/openid-configuration` (OpenID Connect Discovery 1.0).
//!
//! They advertise exactly what works, nothing ahead of it: no `plain` PKCE, no implicit or
//! password grant, no `none` or HS* algorithms.

use serde_json::{json, Value};

use crate::clients::jwks::ALLOWED_ALGS;

/// SMART capabilities Ward implements.
pub const CAPABILITIES: &[&str] = &[
    "launch-ehr",
    "launch-standalone",
    "authorize-post",
    "client-public",
    "client-confidential-symmetric",
    "client-confidential-asymmetric",
    "sso-openid-connect",
    "context-banner",
    "context-style",
    "context-ehr-patient",
    "context-ehr-encounter",
    "context-standalone-patient",
    "permission-offline",
    "permission-online",
    "permission-patient",
    "permission-user",
    "permission-v1",
    "permission-v2",
];

/// Identity, context and example clinical scopes.
pub const SCOPES_SUPPORTED: &[&str] = &[
    "openid",
    "fhirUser",
    "profile",
    "launch",
    "launch/patient",
    "launch/encounter",
    "offline_access",
    "online_access",
    "patient/*.rs",
    "patient/*.cruds",
    "user/*.rs",
    "user/*.cruds",
    "patient/*.read",
    "user/*.read",
];

const AUTH_METHODS: &[&str] = &[
    "client_secret_basic",
    "client_secret_post",
    "private_key_jwt",
];

fn endpoints(issuer: &str) -> Value {
    json!({
        "issuer": issuer,
        "jwks_uri": format!("{issuer}/jwks"),
        "authorization_endpoint": format!("{issuer}/authorize"),
        "token_endpoint": format!("{issuer}/token"),
        "userinfo_endpoint": format!("{issuer}/userinfo"),
        "end_session_endpoint": format!("{issuer}/logout/oidc"),
        "introspection_endpoint": format!("{issuer}/introspect"),
        "revocation_endpoint": format!("{issuer}/revoke"),
    })
}

fn merge(mut base: Value, extra: Value) -> Value {
    if let (Value::Object(b), Value::Object(e)) = (&mut base, extra) {
        b.extend(e);
    }
    base
}

/// `/.well-known/smart-configuration`.
pub fn smart_configuration(issuer: &str) -> Value {
    merge(
        endpoints(issuer),
        json!({
            "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
            "response_types_supported": ["code"],
            "code_challenge_methods_supported": ["S256"],
            "management_endpoint": format!("{issuer}/account/apps"),
            "introspection_endpoint_auth_methods_supported": AUTH_METHODS,
            "revocation_endpoint_auth_methods_supported": AUTH_METHODS,
            "token_endpoint_auth_methods_supported": AUTH_METHODS,
            "token_endpoint_auth_signing_alg_values_supported": ALLOWED_ALGS,
            "scopes_supported": SCOPES_SUPPORTED,
            "capabilities": CAPABILITIES,
            "authorization_response_iss_parameter_supported": true,
        }),
    )
}

/// `/.well-known/openid-configuration`.
pub fn openid_configuration(issuer: &str) -> Value {
    merge(
        endpoints(issuer),
        json!({
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": AUTH_METHODS,
            "token_endpoint_auth_signing_alg_values_supported": ALLOWED_ALGS,
            "scopes_supported": SCOPES_SUPPORTED,
            "claims_supported": ["iss", "sub", "aud", "exp", "iat", "auth_time", "nonce", "amr", "azp", "fhirUser", "name", "preferred_username"],
            "prompt_values_supported": ["none", "login", "consent"],
            "request_parameter_supported": false,
            "request_uri_parameter_supported": false,
            "claims_parameter_supported": false,
            "authorization_response_iss_parameter_supported": true,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_unsafe_is_advertised() {
        for doc in [
            smart_configuration("https://w.example"),
            openid_configuration("https://w.example"),
        ] {
            let text = doc.to_string();
            for banned in [
                "\"plain\"",
                "implicit",
                "\"password\"",
                "HS256",
                "HS384",
                "HS512",
            ] {
                assert!(!text.contains(banned), "{banned} in {text}");
            }
            for list in [
                "token_endpoint_auth_methods_supported",
                "token_endpoint_auth_signing_alg_values_supported",
                "id_token_signing_alg_values_supported",
            ] {
                assert!(!doc[list].to_string().contains("\"none\""), "{list}");
            }
            assert_eq!(doc["code_challenge_methods_supported"], json!(["S256"]));
            let algs = doc["token_endpoint_auth_signing_alg_values_supported"].to_string();
            assert!(algs.contains("RS384") && algs.contains("ES384"));
        }
    }
}

/// Both discovery documents, serialised once at start (they depend only on the issuer), with
/// their ETags: answering discovery is a copy of prepared bytes.
#[derive(Debug, Clone)]
pub struct Documents {
    pub smart: String,
    pub smart_etag: String,
    pub openid: String,
    pub openid_etag: String,
}

impl Documents {
    pub fn new(issuer: &str) -> Self {
        let tagged = |doc: Value| {
            let body = doc.to_string();
            let etag = format!("\"{}\"", &crate::crypto::sha256_b64(body.as_bytes())[..22]);
            (body, etag)
        };
        let (smart, smart_etag) = tagged(smart_configuration(issuer));
        let (openid, openid_etag) = tagged(openid_configuration(issuer));
        Self {
            smart,
            smart_etag,
            openid,
            openid_etag,
        }
    }
}
