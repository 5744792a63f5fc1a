//! The HTTP edge: every URL Ward answers is listed in [`routes`]. Handlers are thin: extract,
//! call a service, map the result.

pub mod metrics;
pub mod middleware;
mod ops;

use actix_web::web;

/// All of Ward's URLs, in one place.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(ops::healthz_get))
        .route("/readyz", web::get().to(ops::readyz_get))
        .route("/metrics", web::get().to(ops::metrics_get))
        .route("/jwks", web::get().to(ops::jwks_get))
        .default_service(web::to(ops::not_found));
}
