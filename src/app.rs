//! The application state every handler sees, and the one `configure` shared by `main` and the
//! tests, so tests exercise exactly the production routes and middleware.

use std::sync::Arc;

use actix_web::web;

use crate::clock::SharedClock;
use crate::config::Settings;
use crate::http;
use crate::http::metrics::Metrics;
use crate::keys::KeyRing;
use crate::store::Db;

#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    pub keys: Arc<KeyRing>,
    pub clock: SharedClock,
    pub settings: Arc<Settings>,
    pub metrics: Arc<Metrics>,
    /// This process's name in audit events and logs.
    pub node: String,
}

/// Registers every route with its state and body limits. Middleware is added by the server.
pub fn configure(state: AppState) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg| {
        let limit = state.settings.server.max_body_bytes;
        cfg.app_data(web::Data::new(state))
            .app_data(web::PayloadConfig::new(limit))
            .app_data(web::FormConfig::default().limit(limit))
            .app_data(web::JsonConfig::default().limit(limit));
        http::routes(cfg);
    }
}
