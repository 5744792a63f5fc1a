//! The HTTP edge: every URL Ward answers is listed in [`routes`]. Handlers are thin: extract,
//! call a service, map the result.

pub mod admin;
mod apps;
mod break_glass;
pub mod client_ip;
pub mod cookies;
pub mod csrf;
mod demo;
mod enrol;
pub mod metrics;
pub mod middleware;
pub(crate) mod oauth;
mod ops;
pub mod pages;
mod passkey_pages;
pub mod views;

use actix_web::web;

/// SMART discovery under each configured FHIR base path (`{fhir_base}/.well-known/
/// smart-configuration`), for FHIR servers that forward that path to Ward (DESIGN.md §10).
pub fn fhir_base_routes(cfg: &mut web::ServiceConfig, fhir_bases: &[String]) {
    for base in fhir_bases {
        let Ok(url) = url::Url::parse(base) else {
            continue;
        };
        let path = url.path().trim_end_matches('/');
        if !path.is_empty() {
            cfg.route(
                &format!("{path}/.well-known/smart-configuration"),
                web::get().to(oauth::smart_configuration),
            );
        }
    }
}

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
        .route(
            "/.well-known/smart-configuration",
            web::get().to(oauth::smart_configuration),
        )
        .route(
            "/.well-known/openid-configuration",
            web::get().to(oauth::openid_configuration),
        )
        .route(
            "/static/smart-style.json",
            web::get().to(oauth::smart_style),
        )
        .route("/authorize", web::get().to(oauth::authorize))
        .route("/authorize", web::post().to(oauth::authorize))
        .route("/authorize/continue", web::get().to(oauth::continue_get))
        .route("/authorize/patients", web::get().to(oauth::patients_get))
        .route(
            "/authorize/break-glass",
            web::get().to(break_glass::break_glass_get),
        )
        .route(
            "/authorize/break-glass",
            web::post().to(break_glass::break_glass_post),
        )
        .route("/authorize/patients", web::post().to(oauth::patients_post))
        .route("/authorize/consent", web::post().to(oauth::consent_post))
        .route("/token", web::post().to(oauth::token))
        .route(
            "/token",
            web::method(actix_web::http::Method::OPTIONS).to(oauth::preflight),
        )
        .route("/launch", web::post().to(oauth::launch))
        .route("/userinfo", web::get().to(oauth::userinfo))
        .route("/userinfo", web::post().to(oauth::userinfo))
        .route(
            "/userinfo",
            web::method(actix_web::http::Method::OPTIONS).to(oauth::preflight),
        )
        .route("/logout/oidc", web::get().to(oauth::end_session))
        .route("/logout/oidc", web::post().to(oauth::end_session))
        .route(
            "/logout/confirm",
            web::post().to(oauth::end_session_confirm),
        )
        .route("/introspect", web::post().to(oauth::introspect))
        .route("/revoke", web::post().to(oauth::revoke))
        .route(
            "/revoke",
            web::method(actix_web::http::Method::OPTIONS).to(oauth::preflight),
        )
        .route("/policy/check", web::post().to(oauth::policy_check))
        .route("/account/apps", web::get().to(apps::apps_get))
        .route("/account/apps/revoke", web::post().to(apps::revoke_post))
        .route("/enrol", web::get().to(enrol::enrol_get))
        .route("/enrol", web::post().to(enrol::enrol_post))
        .configure(demo::routes)
        .configure(admin::api::routes)
        .configure(admin::console::routes)
        .default_service(web::to(ops::not_found));
}
