//! The application state every handler sees, and the one `configure` shared by `main` and the
//! tests, so tests exercise exactly the production routes and middleware.

use std::sync::Arc;

use actix_web::web;

use crate::authn::login::LoginPolicy;
use crate::authn::password::PasswordHashing;
use crate::clock::SharedClock;
use crate::config::Settings;
use crate::crypto::seal::Sealer;
use crate::http;
use crate::http::metrics::Metrics;
use crate::keys::KeyRing;
use crate::store::Db;

#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    /// This node's caches (verified tokens, client registrations) and their coherence with
    /// the database and the other nodes.
    pub coherence: Arc<crate::coherence::Coherence>,
    pub keys: Arc<KeyRing>,
    pub clock: SharedClock,
    pub settings: Arc<Settings>,
    pub metrics: Arc<Metrics>,
    /// This process's name in audit events and logs.
    pub node: String,
    /// Seals and opens TOTP seeds and other secrets at rest.
    pub sealer: Sealer,
    /// Keys CSRF tokens (derived from the master key, so every node agrees).
    pub csrf_key: Arc<[u8; 32]>,
    pub hashing: Arc<PasswordHashing>,
    pub login: LoginPolicy,
    pub trusted_proxies: Arc<Vec<ipnet::IpNet>>,
    /// The WebAuthn relying party (id: the public URL's host).
    pub webauthn: Arc<webauthn_rs::prelude::Webauthn>,
    /// The issuer URL (no trailing slash), as in tokens and discovery.
    pub issuer: Arc<str>,
    /// The FHIR base URLs accepted as a token audience, exactly as configured.
    pub fhir_bases: Arc<Vec<String>>,
    /// Origins that may frame the launch pages.
    pub ehr_origins: Arc<Vec<String>>,
    /// Client key sets fetched from JWKS URLs, cached per Cache-Control.
    pub client_keys: Arc<crate::clients::jwks::JwksCache>,
    /// Caps how many refused admin requests per actor are audited.
    pub admin_denials: Arc<crate::admin::DenialBudget>,
    /// Demo mode's pages and credentials (`ward serve --demo` only).
    pub demo: Option<Arc<crate::demo::DemoState>>,
    /// The discovery documents, serialised once.
    pub discovery: Arc<crate::smart::discovery::Documents>,
}

impl AppState {
    /// An absolute URL of one of Ward's own endpoints.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.issuer)
    }
}

/// Registers every route with its state and body limits. Middleware is added by the server.
pub fn configure(state: AppState) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg| {
        let limit = state.settings.server.max_body_bytes;
        let bases = state.fhir_bases.as_ref().clone();
        cfg.app_data(web::Data::new(state))
            .app_data(web::PayloadConfig::new(limit))
            .app_data(web::FormConfig::default().limit(limit))
            .app_data(web::JsonConfig::default().limit(limit));
        http::fhir_base_routes(cfg, &bases);
        http::routes(cfg);
    }
}
