//! JSON endpoints behind the passkey buttons (`static/webauthn.js`): each ceremony is a
//! start request (options for `navigator.credentials`) and a finish request (the browser's
//! answer). They carry the page's CSRF token in the body, like every other form.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;
use webauthn_rs::prelude::{PublicKeyCredential, RegisterPublicKeyCredential, Webauthn};

use crate::clock::Clock;
use crate::store::DbConnection;

use super::cookies;
use super::csrf::{self, Binding};
use super::pages::{audit_context, current_session, signed_in_form};
use crate::app::AppState;
use crate::authn::login::{FactorOutcome, LoginError, SessionInfo};
use crate::authn::passkeys;
use crate::authn::session::{safe_return_to, Stage};
use crate::crypto::sha256_b64;
use crate::error::AppError;

fn json_error(status: StatusCode, code: &str, description: &str) -> HttpResponse {
    HttpResponse::build(status)
        .insert_header(("cache-control", "no-store"))
        .json(json!({ "error": code, "error_description": description }))
}

fn outcome(result: Result<HttpResponse, LoginError>) -> Result<HttpResponse, AppError> {
    match result {
        Ok(r) => Ok(r),
        Err(LoginError::Refused(text)) => Ok(json_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            &text,
        )),
        Err(LoginError::Busy) => Ok(json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "busy",
        )),
        Err(LoginError::Store(e)) => Err(e.into()),
        Err(LoginError::ReauthenticationRequired) => Ok(json_error(
            StatusCode::FORBIDDEN,
            "login_required",
            "For your security, adding a passkey needs a recent sign-in. Sign out, sign in again, then add it.",
        )),
    }
}

/// Runs a ceremony's start step and answers its options as JSON.
async fn ceremony_options<F>(state: &AppState, work: F) -> Result<HttpResponse, AppError>
where
    F: FnOnce(&mut DbConnection, &Webauthn, &dyn Clock) -> Result<serde_json::Value, LoginError>
        + Send
        + 'static,
{
    let (wa, clock) = (state.webauthn.clone(), state.clock.clone());
    outcome(
        state
            .db
            .run(move |conn| work(conn, &wa, clock.as_ref()))
            .await
            .map(|options| HttpResponse::Ok().json(options)),
    )
}

fn forbidden() -> HttpResponse {
    json_error(
        StatusCode::FORBIDDEN,
        "invalid_request",
        "The page has expired; reload it and try again.",
    )
}

/// The session the request belongs to, at `stage`, with a valid CSRF token.
async fn session_at(
    req: &HttpRequest,
    state: &AppState,
    stage: Stage,
    csrf_token: &str,
) -> Result<Result<SessionInfo, HttpResponse>, AppError> {
    match current_session(req, state).await? {
        Some(s) if s.stage == stage => {
            if csrf::verify(&state.csrf_key, Binding::Session(&s.id_hash), csrf_token) {
                Ok(Ok(s))
            } else {
                Ok(Err(forbidden()))
            }
        }
        _ => Ok(Err(json_error(
            StatusCode::UNAUTHORIZED,
            "login_required",
            "Sign in again to continue.",
        ))),
    }
}

/// The anonymous browser binding for passwordless sign-in, checked against the CSRF token.
fn browser_binding(req: &HttpRequest, state: &AppState, csrf_token: &str) -> Option<String> {
    let cookie = cookies::read(req, cookies::BROWSER, state.settings.served_over_https())?;
    csrf::verify(&state.csrf_key, Binding::Browser(&cookie), csrf_token)
        .then(|| sha256_b64(cookie.as_bytes()))
}

#[derive(Deserialize)]
pub struct StartRequest {
    #[serde(default)]
    csrf: String,
}

#[derive(Deserialize)]
pub struct RegisterFinish {
    #[serde(default)]
    csrf: String,
    challenge_id: String,
    #[serde(default)]
    name: String,
    credential: RegisterPublicKeyCredential,
}

#[derive(Deserialize)]
pub struct AuthFinish {
    #[serde(default)]
    csrf: String,
    challenge_id: String,
    credential: PublicKeyCredential,
    return_to: Option<String>,
}

pub async fn register_start(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<StartRequest>,
) -> Result<HttpResponse, AppError> {
    let session = match session_at(&req, &state, Stage::Active, &body.csrf).await? {
        Ok(s) => s,
        Err(r) => return Ok(r),
    };
    ceremony_options(&state, move |conn, wa, clock| {
        passkeys::start_registration(conn, wa, clock, &session)
    })
    .await
}

pub async fn register_finish(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<RegisterFinish>,
) -> Result<HttpResponse, AppError> {
    let body = body.into_inner();
    let session = match session_at(&req, &state, Stage::Active, &body.csrf).await? {
        Ok(s) => s,
        Err(r) => return Ok(r),
    };
    let (wa, clock, ctx) = (
        state.webauthn.clone(),
        state.clock.clone(),
        audit_context(&req, &state),
    );
    outcome(
        state
            .db
            .run(move |conn| {
                passkeys::finish_registration(
                    conn,
                    &wa,
                    clock.as_ref(),
                    &ctx,
                    &session,
                    &body.challenge_id,
                    &body.name,
                    &body.credential,
                )
            })
            .await
            .map(|()| HttpResponse::Ok().json(json!({ "redirect": "/account" }))),
    )
}

pub async fn second_factor_start(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<StartRequest>,
) -> Result<HttpResponse, AppError> {
    let session = match session_at(&req, &state, Stage::SecondFactor, &body.csrf).await? {
        Ok(s) => s,
        Err(r) => return Ok(r),
    };
    ceremony_options(&state, move |conn, wa, clock| {
        passkeys::start_second_factor(conn, wa, clock, &session)
    })
    .await
}

pub async fn second_factor_finish(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<AuthFinish>,
) -> Result<HttpResponse, AppError> {
    let body = body.into_inner();
    let session = match session_at(&req, &state, Stage::SecondFactor, &body.csrf).await? {
        Ok(s) => s,
        Err(r) => return Ok(r),
    };
    let return_to = safe_return_to(body.return_to.as_deref());
    let (wa, clock, policy, ctx) = (
        state.webauthn.clone(),
        state.clock.clone(),
        state.login,
        audit_context(&req, &state),
    );
    let result = state
        .db
        .run(move |conn| {
            passkeys::finish_second_factor(
                conn,
                &wa,
                clock.as_ref(),
                &policy,
                &ctx,
                &session,
                &body.challenge_id,
                &body.credential,
            )
        })
        .await;
    match result {
        Ok(FactorOutcome::Accepted(created)) => {
            signed_in(&state, &created.cookie_value, &return_to)
        }
        Ok(FactorOutcome::Refused) => Ok(json_error(
            StatusCode::UNAUTHORIZED,
            "access_denied",
            "That passkey could not be verified.",
        )),
        Err(e) => outcome(Err(e)),
    }
}

fn signed_in(
    state: &AppState,
    cookie_value: &str,
    return_to: &str,
) -> Result<HttpResponse, AppError> {
    let mut response = HttpResponse::Ok()
        .insert_header(("cache-control", "no-store"))
        .json(json!({ "redirect": return_to }));
    response
        .add_cookie(&cookies::build(
            cookies::SESSION,
            cookie_value.to_owned(),
            state.settings.served_over_https(),
        ))
        .map_err(|e| AppError::Internal(e.to_string()))?;
    Ok(response)
}

pub async fn passwordless_start(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<StartRequest>,
) -> Result<HttpResponse, AppError> {
    let Some(browser) = browser_binding(&req, &state, &body.csrf) else {
        return Ok(forbidden());
    };
    ceremony_options(&state, move |conn, wa, clock| {
        passkeys::start_passwordless(conn, wa, clock, &browser)
    })
    .await
}

pub async fn passwordless_finish(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<AuthFinish>,
) -> Result<HttpResponse, AppError> {
    let body = body.into_inner();
    let Some(browser) = browser_binding(&req, &state, &body.csrf) else {
        return Ok(forbidden());
    };
    let return_to = safe_return_to(body.return_to.as_deref());
    let (wa, clock, policy, ctx) = (
        state.webauthn.clone(),
        state.clock.clone(),
        state.login,
        audit_context(&req, &state),
    );
    let result = state
        .db
        .run(move |conn| {
            passkeys::finish_passwordless(
                conn,
                &wa,
                clock.as_ref(),
                &policy,
                &ctx,
                &browser,
                &body.challenge_id,
                &body.credential,
            )
        })
        .await;
    match result {
        Ok(Some(created)) => signed_in(&state, &created.cookie_value, &return_to),
        Ok(None) => Ok(json_error(
            StatusCode::UNAUTHORIZED,
            "access_denied",
            "That passkey cannot sign you in. Use your username and password.",
        )),
        Err(e) => outcome(Err(e)),
    }
}

#[derive(Deserialize)]
pub struct PasskeyForm {
    #[serde(default)]
    id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    csrf: String,
}

fn back_to_account() -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header(("location", "/account"))
        .finish()
}

pub async fn rename_post(
    req: HttpRequest,
    state: web::Data<AppState>,
    form: web::Form<PasskeyForm>,
) -> Result<HttpResponse, AppError> {
    let form = form.into_inner();
    let session = match signed_in_form(&req, &state, &form.csrf).await? {
        Ok(s) => s,
        Err(response) => return Ok(response),
    };
    state
        .db
        .run(move |conn| {
            passkeys::rename(conn, &session, &form.id, &form.name).map_err(AppError::from)
        })
        .await?;
    Ok(back_to_account())
}

pub async fn remove_post(
    req: HttpRequest,
    state: web::Data<AppState>,
    form: web::Form<PasskeyForm>,
) -> Result<HttpResponse, AppError> {
    let form = form.into_inner();
    let session = match signed_in_form(&req, &state, &form.csrf).await? {
        Ok(s) => s,
        Err(response) => return Ok(response),
    };
    let (clock, ctx) = (state.clock.clone(), audit_context(&req, &state));
    match state
        .db
        .run(move |conn| passkeys::remove(conn, clock.as_ref(), &ctx, &session, &form.id))
        .await
    {
        Ok(()) => Ok(back_to_account()),
        Err(LoginError::Refused(text)) => Ok(json_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            &text,
        )),
        Err(e) => outcome(Err(e)),
    }
}
