//! What a registered client is, and the rules a registration must satisfy. Pure: the service
//! module does the I/O (uniqueness, JWKS URL fetch, writes).

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use super::kinds::{AuthMethod, ClientKind, GrantType, LaunchMode};
use crate::oauth::redirect_uri;
use crate::smart::scopes::{IdentityScope, ResourceType, Scope, ScopeContext, ScopeSet};

/// Lifetimes (seconds) when a registration does not set them.
pub const DEFAULT_ACCESS_TOKEN_LIFETIME: i64 = 900;
pub const AI_TOOL_ACCESS_TOKEN_LIFETIME: i64 = 300;
pub const MAX_ACCESS_TOKEN_LIFETIME: i64 = 3600;
pub const DEFAULT_REFRESH_IDLE: i64 = 14 * 86_400;
pub const DEFAULT_REFRESH_ABSOLUTE: i64 = 90 * 86_400;
pub const MAX_REDIRECT_URIS: usize = 20;

/// A registration as submitted (CLI flags, `--from-json`, later the admin API). Everything not
/// given takes the kind's safe default. Unknown JSON fields are refused.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientSpec {
    pub client_id: Option<String>,
    pub name: String,
    pub kind: Option<String>,
    pub auth_method: Option<String>,
    pub redirect_uris: Vec<String>,
    pub fhir_bases: Vec<String>,
    pub grant_types: Option<Vec<String>>,
    pub launch_modes: Option<Vec<String>>,
    /// The client's scope ceiling, space-separated SMART scopes.
    pub scope: String,
    pub ehr_launcher: bool,
    pub ai_tool: bool,
    pub access_token_lifetime: Option<i64>,
    pub refresh_token_idle_lifetime: Option<i64>,
    pub refresh_token_absolute_lifetime: Option<i64>,
    pub logo_uri: Option<String>,
    pub contact: Option<String>,
    pub jwks: Option<Value>,
    pub jwks_uri: Option<String>,
}

/// A registration that passed every rule: what gets stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClientSettings {
    pub name: String,
    pub kind: ClientKind,
    pub auth_method: AuthMethod,
    pub redirect_uris: Vec<String>,
    pub fhir_bases: Vec<String>,
    pub grant_types: Vec<GrantType>,
    pub launch_modes: Vec<LaunchMode>,
    pub allowed_scopes: String,
    pub ehr_launcher: bool,
    pub ai_tool: bool,
    pub access_token_lifetime: i64,
    pub refresh_token_idle_lifetime: i64,
    pub refresh_token_absolute_lifetime: i64,
    pub logo_uri: Option<String>,
    pub contact: Option<String>,
    pub jwks: Option<Value>,
    pub jwks_uri: Option<String>,
}

impl ClientSettings {
    pub fn uses_secret(&self) -> bool {
        matches!(
            self.auth_method,
            AuthMethod::ClientSecretBasic | AuthMethod::ClientSecretPost
        )
    }

    pub fn scope_set(&self) -> ScopeSet {
        ScopeSet::parse(&self.allowed_scopes).0
    }

    pub fn allows_offline_access(&self) -> bool {
        self.scope_set()
            .contains(&Scope::Identity(IdentityScope::OfflineAccess))
    }

    /// The spec that reproduces these settings (for `update`, which edits and re-validates).
    pub fn to_spec(&self, client_id: &str) -> ClientSpec {
        ClientSpec {
            client_id: Some(client_id.to_owned()),
            name: self.name.clone(),
            kind: Some(self.kind.as_str().to_owned()),
            auth_method: Some(self.auth_method.as_str().to_owned()),
            redirect_uris: self.redirect_uris.clone(),
            fhir_bases: self.fhir_bases.clone(),
            grant_types: Some(
                self.grant_types
                    .iter()
                    .map(|g| g.as_str().to_owned())
                    .collect(),
            ),
            launch_modes: Some(
                self.launch_modes
                    .iter()
                    .map(|m| m.as_str().to_owned())
                    .collect(),
            ),
            scope: self.allowed_scopes.clone(),
            ehr_launcher: self.ehr_launcher,
            ai_tool: self.ai_tool,
            access_token_lifetime: Some(self.access_token_lifetime),
            refresh_token_idle_lifetime: Some(self.refresh_token_idle_lifetime),
            refresh_token_absolute_lifetime: Some(self.refresh_token_absolute_lifetime),
            logo_uri: self.logo_uri.clone(),
            contact: self.contact.clone(),
            jwks: self.jwks.clone(),
            jwks_uri: self.jwks_uri.clone(),
        }
    }
}

/// One problem with one field, worded for the person who filled it in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: &str, message: impl Into<String>) -> Self {
        Self {
            field: field.to_owned(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Whether a client id is well-formed: URL- and log-safe, 3 to 64 characters.
pub fn valid_client_id(id: &str) -> bool {
    (3..=64).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~'))
}

fn plain_text(field: &str, value: &str, max: usize, errors: &mut Vec<FieldError>) {
    if value.trim().is_empty() {
        errors.push(FieldError::new(field, "must not be empty"));
    } else if value.chars().count() > max {
        errors.push(FieldError::new(
            field,
            format!("must be at most {max} characters"),
        ));
    } else if value.chars().any(char::is_control) {
        errors.push(FieldError::new(
            field,
            "must not contain control characters",
        ));
    }
}

fn https_url(field: &str, value: &str, allow_loopback_http: bool, errors: &mut Vec<FieldError>) {
    match url::Url::parse(value) {
        Ok(url) => {
            let loopback = matches!(url.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"));
            let ok = url.scheme() == "https"
                || (allow_loopback_http && url.scheme() == "http" && loopback);
            if !ok {
                errors.push(FieldError::new(
                    field,
                    format!("`{value}` must be an https URL"),
                ));
            } else if url.fragment().is_some()
                || !url.username().is_empty()
                || url.password().is_some()
            {
                errors.push(FieldError::new(
                    field,
                    format!("`{value}` must not have a fragment or credentials"),
                ));
            }
        }
        Err(e) => errors.push(FieldError::new(
            field,
            format!("`{value}` is not a URL: {e}"),
        )),
    }
}

fn parse_list<T: Copy + PartialEq>(
    field: &str,
    values: &[String],
    parse: fn(&str) -> Option<T>,
    explain: &dyn Fn(&str) -> String,
    errors: &mut Vec<FieldError>,
) -> Vec<T> {
    let mut out = Vec::new();
    for v in values {
        match parse(v) {
            Some(t) if !out.contains(&t) => out.push(t),
            Some(_) => errors.push(FieldError::new(field, format!("`{v}` is listed twice"))),
            None => errors.push(FieldError::new(field, explain(v))),
        }
    }
    out
}

/// Applies every registration rule; returns all problems at once, not just the first.
pub fn validate(spec: &ClientSpec) -> Result<ClientSettings, Vec<FieldError>> {
    let mut errors = Vec::new();
    plain_text("name", &spec.name, 200, &mut errors);
    if let Some(id) = &spec.client_id {
        if !valid_client_id(id) {
            errors.push(FieldError::new(
                "client_id",
                "must be 3 to 64 characters of letters, digits, `-`, `_`, `.` or `~`",
            ));
        }
    }
    let kind = match spec.kind.as_deref().map(|k| (k, ClientKind::parse(k))) {
        Some((_, Some(kind))) => kind,
        Some((other, None)) => {
            errors.push(FieldError::new("kind", format!(
                "`{other}` is not a client kind (public, confidential-symmetric, confidential-asymmetric, resource-server)"
            )));
            return Err(errors);
        }
        None => {
            errors.push(FieldError::new("kind", "is required"));
            return Err(errors);
        }
    };

    let auth_method = match spec.auth_method.as_deref() {
        None => match kind {
            ClientKind::Public => AuthMethod::None,
            ClientKind::ConfidentialSymmetric => AuthMethod::ClientSecretBasic,
            ClientKind::ConfidentialAsymmetric => AuthMethod::PrivateKeyJwt,
            ClientKind::ResourceServer if spec.jwks.is_some() || spec.jwks_uri.is_some() => {
                AuthMethod::PrivateKeyJwt
            }
            ClientKind::ResourceServer => AuthMethod::ClientSecretBasic,
        },
        Some(text) => match AuthMethod::parse(text) {
            Some(method) => method,
            None => {
                errors.push(FieldError::new("auth_method", format!("`{text}` is not supported (none, client_secret_basic, client_secret_post, private_key_jwt)")));
                AuthMethod::None
            }
        },
    };
    let allowed_methods: &[AuthMethod] = match kind {
        ClientKind::Public => &[AuthMethod::None],
        ClientKind::ConfidentialSymmetric => {
            &[AuthMethod::ClientSecretBasic, AuthMethod::ClientSecretPost]
        }
        ClientKind::ConfidentialAsymmetric => &[AuthMethod::PrivateKeyJwt],
        ClientKind::ResourceServer => &[
            AuthMethod::ClientSecretBasic,
            AuthMethod::ClientSecretPost,
            AuthMethod::PrivateKeyJwt,
        ],
    };
    if !allowed_methods.contains(&auth_method) {
        errors.push(FieldError::new(
            "auth_method",
            format!(
                "`{}` does not fit a {} client",
                auth_method.as_str(),
                kind.as_str()
            ),
        ));
    }

    // Key material: exactly one of jwks / jwks_uri for private_key_jwt, none otherwise.
    match (
        auth_method == AuthMethod::PrivateKeyJwt,
        &spec.jwks,
        &spec.jwks_uri,
    ) {
        (true, None, None) => errors.push(FieldError::new(
            "jwks",
            "private_key_jwt needs a JWKS (inline) or a JWKS URL",
        )),
        (true, Some(_), Some(_)) => errors.push(FieldError::new(
            "jwks_uri",
            "give either an inline JWKS or a JWKS URL, not both",
        )),
        (true, Some(doc), None) => {
            if let Err(e) = super::jwks::validate(doc) {
                errors.push(FieldError::new("jwks", e.to_string()));
            }
        }
        (true, None, Some(uri)) => https_url("jwks_uri", uri, false, &mut errors),
        (false, None, None) => {}
        (false, _, _) => errors.push(FieldError::new(
            "jwks",
            "only private_key_jwt clients register keys",
        )),
    }

    let grant_types = match &spec.grant_types {
        Some(list) => parse_list(
            "grant_types",
            list,
            GrantType::parse,
            &|v| {
                match v {
            "implicit" | "password" => format!("`{v}` is not supported: OAuth 2.0 Security BCP (RFC 9700) forbids it"),
            other => format!("`{other}` is not a supported grant type (authorization_code, refresh_token, client_credentials)"),
        }
            },
            &mut errors,
        ),
        None => match kind {
            ClientKind::Public | ClientKind::ConfidentialSymmetric => {
                vec![GrantType::AuthorizationCode, GrantType::RefreshToken]
            }
            ClientKind::ConfidentialAsymmetric if spec.redirect_uris.is_empty() => {
                vec![GrantType::ClientCredentials]
            }
            ClientKind::ConfidentialAsymmetric => {
                vec![GrantType::AuthorizationCode, GrantType::RefreshToken]
            }
            ClientKind::ResourceServer => vec![],
        },
    };
    let code_flow = grant_types.contains(&GrantType::AuthorizationCode);
    let backend = grant_types.contains(&GrantType::ClientCredentials);
    if grant_types.contains(&GrantType::RefreshToken) && !code_flow {
        errors.push(FieldError::new(
            "grant_types",
            "refresh_token needs authorization_code",
        ));
    }
    if backend && kind != ClientKind::ConfidentialAsymmetric {
        errors.push(FieldError::new("grant_types", "client_credentials is only for confidential-asymmetric clients (SMART Backend Services uses private_key_jwt)"));
    }
    if kind == ClientKind::ResourceServer && !grant_types.is_empty() {
        errors.push(FieldError::new(
            "grant_types",
            "a resource server obtains no tokens",
        ));
    }

    // Redirect URIs: required for the code flow, forbidden without it.
    let native = kind == ClientKind::Public;
    if code_flow && spec.redirect_uris.is_empty() {
        errors.push(FieldError::new(
            "redirect_uris",
            "at least one is required for authorization_code",
        ));
    }
    if !code_flow && !spec.redirect_uris.is_empty() {
        errors.push(FieldError::new(
            "redirect_uris",
            "only clients using authorization_code have redirect URIs",
        ));
    }
    if spec.redirect_uris.len() > MAX_REDIRECT_URIS {
        errors.push(FieldError::new(
            "redirect_uris",
            format!("at most {MAX_REDIRECT_URIS}"),
        ));
    }
    let mut redirect_uris: Vec<String> = Vec::new();
    for uri in &spec.redirect_uris {
        match redirect_uri::validate(uri, native) {
            Ok(_) if redirect_uris.contains(uri) => errors.push(FieldError::new(
                "redirect_uris",
                format!("`{uri}` is listed twice"),
            )),
            Ok(_) => redirect_uris.push(uri.clone()),
            Err(e) => errors.push(FieldError::new("redirect_uris", format!("`{uri}` {e}"))),
        }
    }

    // FHIR bases: what a resource server serves.
    if kind == ClientKind::ResourceServer && spec.fhir_bases.is_empty() {
        errors.push(FieldError::new(
            "fhir_bases",
            "a resource server needs the FHIR base URL(s) it serves",
        ));
    }
    if kind != ClientKind::ResourceServer && !spec.fhir_bases.is_empty() {
        errors.push(FieldError::new(
            "fhir_bases",
            "only resource servers list FHIR base URLs",
        ));
    }
    for base in &spec.fhir_bases {
        https_url("fhir_bases", base, true, &mut errors);
    }

    let launch_modes = match &spec.launch_modes {
        Some(list) if !code_flow && !list.is_empty() => {
            errors.push(FieldError::new(
                "launch_modes",
                "only clients using authorization_code are launched",
            ));
            vec![]
        }
        Some(list) => parse_list(
            "launch_modes",
            list,
            LaunchMode::parse,
            &|v| format!("`{v}` is not a launch mode (ehr, standalone)"),
            &mut errors,
        ),
        None if code_flow => vec![LaunchMode::Ehr, LaunchMode::Standalone],
        None => vec![],
    };

    if spec.ehr_launcher && kind == ClientKind::Public {
        errors.push(FieldError::new(
            "ehr_launcher",
            "creating EHR launches needs an authenticated (confidential or resource-server) client",
        ));
    }

    // The scope ceiling.
    let scopes = match ScopeSet::parse_strict(&spec.scope) {
        Ok(set) => set,
        Err(problems) => {
            for p in problems {
                errors.push(FieldError::new("scope", p.to_string()));
            }
            ScopeSet::new()
        }
    };
    for scope in scopes.resource_scopes() {
        match scope.context {
            ScopeContext::System if !backend => errors.push(FieldError::new(
                "scope",
                format!("`{scope}`: system/ scopes need the client_credentials grant"),
            )),
            ScopeContext::Patient | ScopeContext::User if !code_flow => {
                errors.push(FieldError::new(
                    "scope",
                    format!("`{scope}`: patient/ and user/ scopes need authorization_code"),
                ))
            }
            _ => {}
        }
        if spec.ai_tool && scope.resource == ResourceType::Any {
            errors.push(FieldError::new("scope", format!("`{scope}`: AI-tool clients may not hold wildcard resource scopes; name each resource type")));
        }
    }
    if scopes.is_break_glass() {
        errors.push(FieldError::new(
            "scope",
            "`__ward.break_glass` marks emergency-access tokens; Ward sets it, no client may be registered for it",
        ));
    }
    if scopes.admin_scopes().next().is_some() {
        if !backend {
            errors.push(FieldError::new(
                "scope",
                "admin API scopes need the client_credentials grant (a confidential-asymmetric client)",
            ));
        }
        if spec.ai_tool {
            errors.push(FieldError::new(
                "scope",
                "AI-tool clients may not hold admin API scopes",
            ));
        }
    }
    let offline = scopes.contains(&Scope::Identity(IdentityScope::OfflineAccess));
    if offline && spec.ai_tool {
        errors.push(FieldError::new(
            "scope",
            "AI-tool clients may not hold offline_access",
        ));
    }
    if scopes.identity_scopes().next().is_some() && !code_flow {
        errors.push(FieldError::new(
            "scope",
            "identity and launch scopes need authorization_code",
        ));
    }
    if kind == ClientKind::ResourceServer && !scopes.is_empty() {
        errors.push(FieldError::new(
            "scope",
            "a resource server is granted no scopes",
        ));
    }

    // Lifetimes.
    let default_access = if spec.ai_tool {
        AI_TOOL_ACCESS_TOKEN_LIFETIME
    } else {
        DEFAULT_ACCESS_TOKEN_LIFETIME
    };
    let access_max = if spec.ai_tool {
        AI_TOOL_ACCESS_TOKEN_LIFETIME
    } else if backend {
        300
    } else {
        MAX_ACCESS_TOKEN_LIFETIME
    };
    let access_token_lifetime = spec
        .access_token_lifetime
        .unwrap_or(default_access.min(access_max));
    if !(60..=access_max).contains(&access_token_lifetime) {
        errors.push(FieldError::new(
            "access_token_lifetime",
            format!("must be between 60 and {access_max} seconds for this client"),
        ));
    }
    let refresh_token_idle_lifetime = spec
        .refresh_token_idle_lifetime
        .unwrap_or(DEFAULT_REFRESH_IDLE);
    let refresh_token_absolute_lifetime = spec
        .refresh_token_absolute_lifetime
        .unwrap_or(DEFAULT_REFRESH_ABSOLUTE);
    if !(300..=365 * 86_400).contains(&refresh_token_absolute_lifetime) {
        errors.push(FieldError::new(
            "refresh_token_absolute_lifetime",
            "must be between 300 seconds and 365 days",
        ));
    }
    if !(300..=refresh_token_absolute_lifetime.max(300)).contains(&refresh_token_idle_lifetime) {
        errors.push(FieldError::new(
            "refresh_token_idle_lifetime",
            "must be between 300 seconds and the absolute lifetime",
        ));
    }

    if let Some(logo) = &spec.logo_uri {
        https_url("logo_uri", logo, false, &mut errors);
    }
    if let Some(contact) = &spec.contact {
        plain_text("contact", contact, 200, &mut errors);
    }

    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(ClientSettings {
        name: spec.name.trim().to_owned(),
        kind,
        auth_method,
        redirect_uris,
        fhir_bases: spec.fhir_bases.clone(),
        grant_types,
        launch_modes,
        allowed_scopes: scopes.to_string(),
        ehr_launcher: spec.ehr_launcher,
        ai_tool: spec.ai_tool,
        access_token_lifetime,
        refresh_token_idle_lifetime,
        refresh_token_absolute_lifetime,
        logo_uri: spec.logo_uri.clone(),
        contact: spec.contact.clone(),
        jwks: spec.jwks.clone(),
        jwks_uri: spec.jwks_uri.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: &str) -> ClientSpec {
        ClientSpec {
            name: "Growth Chart".into(),
            kind: Some(kind.into()),
            redirect_uris: vec!["https://app.example.com/callback".into()],
            scope: "launch openid fhirUser patient/Observation.rs".into(),
            ..ClientSpec::default()
        }
    }

    fn errors_of(spec: &ClientSpec) -> Vec<String> {
        validate(spec)
            .err()
            .unwrap_or_default()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn a_public_app_gets_safe_defaults() {
        let s = validate(&spec("public")).unwrap();
        assert_eq!(s.auth_method, AuthMethod::None);
        assert_eq!(
            s.grant_types,
            vec![GrantType::AuthorizationCode, GrantType::RefreshToken]
        );
        assert_eq!(
            s.launch_modes,
            vec![LaunchMode::Ehr, LaunchMode::Standalone]
        );
        assert_eq!(s.access_token_lifetime, DEFAULT_ACCESS_TOKEN_LIFETIME);
        assert!(!s.allows_offline_access());
        assert!(!s.uses_secret());
    }

    #[test]
    fn a_backend_service_needs_keys_and_system_scopes() {
        let mut s = spec("confidential-asymmetric");
        s.redirect_uris.clear();
        s.scope = "system/Observation.rs".into();
        assert!(errors_of(&s).iter().any(|e| e.contains("JWKS")));
        s.jwks_uri = Some("https://keys.example.com/jwks.json".into());
        let ok = validate(&s).unwrap();
        assert_eq!(ok.grant_types, vec![GrantType::ClientCredentials]);
        assert_eq!(ok.auth_method, AuthMethod::PrivateKeyJwt);
        assert!(ok.access_token_lifetime <= 300);
    }

    #[test]
    fn only_backend_services_hold_admin_api_scopes() {
        let mut s = spec("public");
        s.scope = "launch __ward.admin.read".into();
        assert!(errors_of(&s)
            .iter()
            .any(|e| e.contains("admin API scopes need the client_credentials grant")));
        let mut s = spec("confidential-asymmetric");
        s.redirect_uris.clear();
        s.jwks_uri = Some("https://keys.example.com/jwks.json".into());
        s.scope = "__ward.admin.write".into();
        assert!(validate(&s)
            .unwrap()
            .scope_set()
            .admin_scopes()
            .next()
            .is_some());
        s.ai_tool = true;
        assert!(errors_of(&s)
            .iter()
            .any(|e| e.contains("AI-tool clients may not hold admin API scopes")));
    }

    #[test]
    fn no_client_is_registered_for_the_break_glass_marking() {
        let mut s = spec("public");
        s.scope = "openid patient/*.rs __ward.break_glass".into();
        assert!(errors_of(&s)
            .iter()
            .any(|e| e.contains("no client may be registered for it")));
    }

    #[test]
    fn a_resource_server_lists_fhir_bases_and_gets_no_scopes() {
        let mut s = spec("resource-server");
        s.redirect_uris.clear();
        s.scope.clear();
        assert!(errors_of(&s).iter().any(|e| e.contains("fhir_bases")));
        s.fhir_bases = vec!["https://fhir.example.com/r4".into()];
        let ok = validate(&s).unwrap();
        assert!(ok.uses_secret());
        assert!(ok.grant_types.is_empty());
    }

    #[test]
    fn rejects_each_broken_rule() {
        type Mutation = Box<dyn Fn(&mut ClientSpec)>;
        let cases: Vec<(&str, Mutation, &str)> = vec![
            ("empty name", Box::new(|s| s.name = " ".into()), "name"),
            (
                "unknown kind",
                Box::new(|s| s.kind = Some("robot".into())),
                "kind",
            ),
            (
                "bad client id",
                Box::new(|s| s.client_id = Some("a b".into())),
                "client_id",
            ),
            (
                "implicit grant",
                Box::new(|s| s.grant_types = Some(vec!["implicit".into()])),
                "RFC 9700",
            ),
            (
                "password grant",
                Box::new(|s| s.grant_types = Some(vec!["password".into()])),
                "RFC 9700",
            ),
            (
                "refresh without code",
                Box::new(|s| {
                    s.grant_types = Some(vec!["refresh_token".into()]);
                    s.redirect_uris.clear();
                }),
                "refresh_token needs",
            ),
            (
                "public client_credentials",
                Box::new(|s| {
                    s.grant_types = Some(vec![
                        "authorization_code".into(),
                        "client_credentials".into(),
                    ])
                }),
                "client_credentials is only",
            ),
            (
                "no redirect",
                Box::new(|s| s.redirect_uris.clear()),
                "redirect_uris",
            ),
            (
                "http redirect",
                Box::new(|s| s.redirect_uris = vec!["http://app.example.com/cb".into()]),
                "https",
            ),
            (
                "javascript redirect",
                Box::new(|s| s.redirect_uris = vec!["javascript:alert(1)".into()]),
                "javascript",
            ),
            (
                "wildcard redirect",
                Box::new(|s| s.redirect_uris = vec!["https://*.example.com/cb".into()]),
                "wildcard",
            ),
            (
                "fragment redirect",
                Box::new(|s| s.redirect_uris = vec!["https://a.example.com/cb#x".into()]),
                "fragment",
            ),
            (
                "duplicate redirect",
                Box::new(|s| {
                    s.redirect_uris
                        .push("https://app.example.com/callback".into())
                }),
                "twice",
            ),
            (
                "malformed scope",
                Box::new(|s| s.scope = "patient/Observation.rx".into()),
                "patient/Observation.rx",
            ),
            (
                "system scope in code flow",
                Box::new(|s| s.scope = "system/*.rs".into()),
                "client_credentials",
            ),
            (
                "secret method on public",
                Box::new(|s| s.auth_method = Some("client_secret_basic".into())),
                "does not fit",
            ),
            (
                "jwks on public",
                Box::new(|s| s.jwks_uri = Some("https://k.example.com/j".into())),
                "only private_key_jwt",
            ),
            (
                "lifetime too long",
                Box::new(|s| s.access_token_lifetime = Some(86_400)),
                "access_token_lifetime",
            ),
            (
                "lifetime too short",
                Box::new(|s| s.access_token_lifetime = Some(5)),
                "access_token_lifetime",
            ),
            (
                "ehr launcher public",
                Box::new(|s| s.ehr_launcher = true),
                "ehr_launcher",
            ),
            (
                "bad launch mode",
                Box::new(|s| s.launch_modes = Some(vec!["sideways".into()])),
                "launch mode",
            ),
            (
                "fhir base on app",
                Box::new(|s| s.fhir_bases = vec!["https://f.example.com".into()]),
                "fhir_bases",
            ),
            (
                "http logo",
                Box::new(|s| s.logo_uri = Some("http://logo.example.com/x.png".into())),
                "logo_uri",
            ),
            (
                "ai wildcard",
                Box::new(|s| {
                    s.ai_tool = true;
                    s.scope = "patient/*.rs".into();
                }),
                "AI-tool",
            ),
            (
                "ai offline",
                Box::new(|s| {
                    s.ai_tool = true;
                    s.scope = "offline_access patient/Observation.rs".into();
                }),
                "offline_access",
            ),
            (
                "ai long token",
                Box::new(|s| {
                    s.ai_tool = true;
                    s.access_token_lifetime = Some(900);
                }),
                "access_token_lifetime",
            ),
        ];
        for (name, mutate, expected) in cases {
            let mut s = spec("public");
            mutate(&mut s);
            let errors = errors_of(&s);
            assert!(
                errors.iter().any(|e| e.contains(expected)),
                "{name}: {errors:?} should mention {expected}"
            );
        }
    }

    #[test]
    fn ai_tools_get_stricter_defaults() {
        let mut s = spec("public");
        s.ai_tool = true;
        let ok = validate(&s).unwrap();
        assert_eq!(ok.access_token_lifetime, AI_TOOL_ACCESS_TOKEN_LIFETIME);
    }

    #[test]
    fn settings_round_trip_through_spec() {
        let ok = validate(&spec("confidential-symmetric")).unwrap();
        assert_eq!(validate(&ok.to_spec("abc")).unwrap(), ok);
    }
}
