//! The HTTP edge: every URL Ward answers is listed in [`routes`]. Handlers are thin: extract,
//! call a service, map the result.

pub mod client_ip;
pub mod cookies;
pub mod csrf;
pub mod metrics;
pub mod middleware;
mod ops;
pub mod pages;
pub mod views;

use actix_web::web;

/// All of Ward's URLs, in one place.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(ops::healthz_get))
        .route("/readyz", web::get().to(ops::readyz_get))
        .route("/metrics", web::get().to(ops::metrics_get))
        .route("/jwks", web::get().to(ops::jwks_get))
        .route("/static/ward.css", web::get().to(pages::stylesheet_get))
        .route("/login", web::get().to(pages::login_get))
        .route("/login", web::post().to(pages::login_post))
        .route("/login/mfa", web::get().to(pages::mfa_get))
        .route("/login/mfa", web::post().to(pages::mfa_post))
        .route("/logout", web::post().to(pages::logout_post))
        .route("/account", web::get().to(pages::account_get))
        .route("/account/password", web::post().to(pages::password_post))
        .route(
            "/account/sessions/end",
            web::post().to(pages::end_session_post),
        )
        .route("/account/mfa/totp", web::get().to(pages::totp_get))
        .route("/account/mfa/totp", web::post().to(pages::totp_post))
        .route(
            "/account/mfa/totp/remove",
            web::post().to(pages::totp_remove_post),
        )
        .default_service(web::to(ops::not_found));
}
