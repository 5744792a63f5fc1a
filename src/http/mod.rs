//! The HTTP edge: every URL Ward answers is listed in [`routes`]. Handlers are thin: extract,
//! call a service, map the result.

pub mod client_ip;
pub mod cookies;
pub mod csrf;
pub mod metrics;
pub mod middleware;
mod ops;
pub mod pages;
mod passkey_pages;
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
        .route(
            "/account/passkeys/register/start",
            web::post().to(passkey_pages::register_start),
        )
        .route(
            "/account/passkeys/register/finish",
            web::post().to(passkey_pages::register_finish),
        )
        .route(
            "/account/passkeys/rename",
            web::post().to(passkey_pages::rename_post),
        )
        .route(
            "/account/passkeys/remove",
            web::post().to(passkey_pages::remove_post),
        )
        .route(
            "/login/passkey/mfa/start",
            web::post().to(passkey_pages::second_factor_start),
        )
        .route(
            "/login/passkey/mfa/finish",
            web::post().to(passkey_pages::second_factor_finish),
        )
        .route(
            "/login/passkey/start",
            web::post().to(passkey_pages::passwordless_start),
        )
        .route(
            "/login/passkey/finish",
            web::post().to(passkey_pages::passwordless_finish),
        )
        .route("/static/webauthn.js", web::get().to(pages::script_get))
        .default_service(web::to(ops::not_found));
}
