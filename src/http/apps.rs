//! `/account/apps`: the SMART `management_endpoint`, where a signed-in person sees the apps
//! they authorized and revokes them.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;

use super::pages::{
    audit_context, redirect, render, require_session, session_csrf, signed_in_form,
};
use super::views::{AccountAppsView, AppRowView};
use crate::app::AppState;
use crate::clock::format_secs;
use crate::error::AppError;
use crate::oauth::apps;

#[derive(Debug, Deserialize)]
pub struct Notice {
    revoked: Option<String>,
}

pub async fn apps_get(
    req: HttpRequest,
    state: web::Data<AppState>,
    query: web::Query<Notice>,
) -> Result<HttpResponse, AppError> {
    let session = match require_session(&req, &state, false).await? {
        Ok(s) => s,
        Err(response) => return Ok(response),
    };
    let (user_id, now) = (session.user_id.clone(), state.clock.now_secs());
    let connected = state
        .db
        .run(move |conn| apps::connected(conn, &user_id, now).map_err(AppError::from))
        .await?;
    let notice = query
        .revoked
        .as_ref()
        .map(|_| "The app's access was revoked.".to_owned());
    render(
        StatusCode::OK,
        &AccountAppsView {
            csrf: session_csrf(&state, &session),
            apps: connected
                .into_iter()
                .map(|a| AppRowView {
                    client_id: a.client_id,
                    name: a.name,
                    scopes: a.scopes,
                    since: format_secs(a.since),
                    offline: a.offline,
                    remembered: a.remembered,
                    break_glass: a.break_glass,
                })
                .collect(),
            notice,
        },
    )
}

#[derive(Debug, Deserialize)]
pub struct RevokeForm {
    csrf: String,
    client_id: String,
}

pub async fn revoke_post(
    req: HttpRequest,
    state: web::Data<AppState>,
    form: web::Form<RevokeForm>,
) -> Result<HttpResponse, AppError> {
    let session = match signed_in_form(&req, &state, &form.csrf).await? {
        Ok(s) => s,
        Err(response) => return Ok(response),
    };
    let (clock, mut ctx) = (state.clock.clone(), audit_context(&req, &state));
    ctx.actor_user = Some(session.user_id.clone());
    let (user_id, client_id) = (session.user_id.clone(), form.client_id.clone());
    state
        .db
        .run(move |conn| {
            apps::revoke_app(conn, clock.as_ref(), &ctx, &user_id, &client_id)
                .map_err(AppError::from)
        })
        .await?;
    Ok(redirect("/account/apps?revoked=1"))
}
