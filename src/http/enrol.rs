//! `/enrol`: where a new user follows a one-time enrolment link and sets their password. The
//! token travels in the query (never logged: logs name the route pattern only) and back in
//! the form; the form is bound to the browser like the sign-in form (CSRF).

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use askama::Template;
use serde::Deserialize;

use super::cookies;
use super::csrf::{self, Binding};
use super::pages::{audit_context, https, message, redirect, render};
use crate::app::AppState;
use crate::authn::enrolment;
use crate::authn::login::LoginError;
use crate::error::AppError;

#[derive(Template)]
#[template(path = "enrol.html")]
pub struct EnrolView {
    pub csrf: String,
    pub token: String,
    pub username: String,
    pub display_name: String,
    pub error: Option<String>,
}

fn unusable() -> Result<HttpResponse, AppError> {
    message(
        StatusCode::NOT_FOUND,
        "This link cannot be used",
        "Enrolment links work once and expire. Ask your administrator for a new one.",
        Some(("/login", "Sign in")),
    )
}

#[derive(Deserialize)]
pub struct EnrolQuery {
    #[serde(default)]
    token: String,
}

async fn page(
    req: &HttpRequest,
    state: &AppState,
    token: String,
    error: Option<String>,
) -> Result<HttpResponse, AppError> {
    let now = state.clock.now_secs();
    let t = token.clone();
    let Some(user) = state
        .db
        .run(move |conn| enrolment::holder(conn, &t, now))
        .await?
    else {
        return unusable();
    };
    let https = https(state);
    let browser = cookies::read(req, cookies::BROWSER, https)
        .unwrap_or_else(|| crate::crypto::random_token(32));
    let status = if error.is_some() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    let mut response = render(
        status,
        &EnrolView {
            csrf: csrf::token(&state.csrf_key, Binding::Browser(&browser)),
            token,
            username: user.username,
            display_name: user.display_name,
            error,
        },
    )?;
    response
        .add_cookie(&cookies::build(cookies::BROWSER, browser, https))
        .map_err(|e| AppError::Internal(e.to_string()))?;
    Ok(response)
}

pub async fn enrol_get(
    req: HttpRequest,
    state: web::Data<AppState>,
    query: web::Query<EnrolQuery>,
) -> Result<HttpResponse, AppError> {
    let token = query.into_inner().token;
    if token.is_empty() || token.len() > 128 {
        return unusable();
    }
    page(&req, &state, token, None).await
}

#[derive(Deserialize)]
pub struct EnrolForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    token: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    confirm: String,
}

pub async fn enrol_post(
    req: HttpRequest,
    state: web::Data<AppState>,
    form: web::Form<EnrolForm>,
) -> Result<HttpResponse, AppError> {
    let form = form.into_inner();
    let browser = cookies::read(&req, cookies::BROWSER, https(&state));
    if !browser.is_some_and(|b| csrf::verify(&state.csrf_key, Binding::Browser(&b), &form.csrf)) {
        return message(
            StatusCode::FORBIDDEN,
            "This form has expired",
            "For your security the form could not be accepted. Open the link again.",
            None,
        );
    }
    if form.token.is_empty() || form.token.len() > 128 {
        return unusable();
    }
    if form.password != form.confirm {
        return page(
            &req,
            &state,
            form.token,
            Some("The two passwords differ.".into()),
        )
        .await;
    }
    let ctx = audit_context(&req, &state);
    match enrolment::complete(
        &state.db,
        &state.hashing,
        &state.clock,
        &ctx,
        form.token.clone(),
        form.password,
    )
    .await
    {
        Ok(true) => Ok(redirect("/login?enrolled=1")),
        Ok(false) => unusable(),
        Err(LoginError::Refused(text)) => page(&req, &state, form.token, Some(text)).await,
        Err(LoginError::Busy) => message(
            StatusCode::SERVICE_UNAVAILABLE,
            "Busy",
            "Please try again in a moment.",
            None,
        ),
        Err(LoginError::Store(e)) => Err(e.into()),
        Err(LoginError::ReauthenticationRequired) => unusable(),
    }
}
