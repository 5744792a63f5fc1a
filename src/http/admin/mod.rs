//! The admin console (`/admin`, server-rendered pages) and the admin JSON API
//! (`/admin/api/v1/…`). Both admit a caller the same way ([`admit`]) and call the same
//! operations (`crate::admin`, the client registry, the directory), so they cannot drift.
//!
//! Who is admitted:
//! - a bearer access token Ward issued to a backend service for the admin API (API only), or
//! - a signed-in user holding the `admin` role whose session passed a second factor. Unsafe
//!   API requests from a session also carry the session's CSRF token in `X-CSRF-Token`;
//!   console forms carry it as a field.
//!
//! Every refusal of a signed-in user or a valid token is audited (`admin.access_denied`).

pub mod api;
pub mod console;
#[cfg(test)]
mod openapi_check;
pub mod problem;

use actix_web::http::{header, Method};
use actix_web::HttpRequest;

use crate::admin::access::{self, Actor, Denied, Need, ADMIN_ROLE};
use crate::app::AppState;
use crate::audit::AuditContext;
use crate::authn::session::Stage;
use crate::oauth::resource_server;
use crate::oauth::token::admin_api_audience;
use crate::smart::scopes::ScopeSet;
use crate::store::StoreError;

use super::pages::{audit_context, current_session, session_csrf_ok};

/// A caller let in, with the audit context of everything they do.
pub struct Admitted {
    pub actor: Actor,
    pub ctx: AuditContext,
    /// The session's CSRF token (console pages put it in their forms).
    pub csrf: Option<String>,
}

/// Why a caller was not let in.
#[derive(Debug)]
pub enum Refused {
    /// No credentials, or credentials that are not valid: 401 (API) or the sign-in page.
    Unauthenticated(&'static str),
    /// A known caller without the right: 403.
    Forbidden(String),
    /// A human admin whose second factor is too old for this action.
    Reauthenticate,
    /// A session form or API request without its CSRF token.
    Csrf,
    Store(StoreError),
}

impl From<crate::error::AppError> for Refused {
    fn from(e: crate::error::AppError) -> Self {
        match e {
            crate::error::AppError::Unavailable(m) => Self::Store(StoreError::Unavailable(m)),
            other => Self::Store(StoreError::Corrupt(other.to_string())),
        }
    }
}

impl From<StoreError> for Refused {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

fn unsafe_method(req: &HttpRequest) -> bool {
    !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Lets a caller in for `need`, or says why not (auditing refusals of known callers).
/// `csrf_field` is the CSRF token a console form sent; API requests send `X-CSRF-Token`.
pub async fn admit(
    req: &HttpRequest,
    state: &AppState,
    need: Need,
    api: bool,
    csrf_field: Option<&str>,
) -> Result<Admitted, Refused> {
    let base = audit_context(req, state);
    let (actor, csrf) = match (api, super::oauth::bearer(req)) {
        (true, Some(token)) => (machine(state, token.to_owned()).await?, None),
        (false, Some(_)) | (_, None) => {
            let Some(session) = current_session(req, state).await? else {
                return Err(Refused::Unauthenticated("sign in as an admin"));
            };
            let user_id = session.user_id.clone();
            let roles = state
                .db
                .run(move |conn| crate::store::users::roles_of(conn, &user_id))
                .await?;
            if session.stage != Stage::Active {
                // Half signed in: not yet anyone to hold to account (nor to let flood the trail).
                return Err(Refused::Forbidden("the sign-in is not complete".into()));
            }
            let refusal = if !roles.iter().any(|r| r == ADMIN_ROLE) {
                Some("the user does not hold the admin role")
            } else if session.mfa_at.is_none() {
                Some("the admin console needs a sign-in with a second factor")
            } else {
                None
            };
            if let Some(reason) = refusal {
                let ctx = AuditContext {
                    actor_user: Some(session.user_id.clone()),
                    ..base
                };
                deny(state, ctx, req.path(), reason).await?;
                return Err(Refused::Forbidden(reason.into()));
            }
            let token = super::pages::session_csrf(state, &session);
            let presented = if api {
                req.headers()
                    .get("x-csrf-token")
                    .and_then(|v| v.to_str().ok())
            } else {
                csrf_field
            };
            if unsafe_method(req) && !presented.is_some_and(|p| session_csrf_ok(state, &session, p))
            {
                let ctx = AuditContext {
                    actor_user: Some(session.user_id.clone()),
                    ..base
                };
                deny(state, ctx, req.path(), "missing or wrong CSRF token").await?;
                return Err(Refused::Csrf);
            }
            (
                Actor::Human {
                    user_id: session.user_id.clone(),
                    username: session.username.clone(),
                    mfa_at: session.mfa_at.unwrap_or_default(),
                },
                Some(token),
            )
        }
    };
    let ctx = crate::admin::audit_context(base, &actor);
    check(state, &ctx, &actor, need, req.path()).await?;
    Ok(Admitted { actor, ctx, csrf })
}

/// Checks an admitted actor against a further need (one that depends on the data, such as
/// "the target user is an admin").
pub async fn check(
    state: &AppState,
    ctx: &AuditContext,
    actor: &Actor,
    need: Need,
    path: &str,
) -> Result<(), Refused> {
    let reauth = i64::try_from(state.settings.admin.reauth_seconds).unwrap_or(300);
    match access::authorize(actor, need, state.clock.now_secs(), reauth) {
        Ok(()) => Ok(()),
        Err(Denied::Reauthenticate) => Err(Refused::Reauthenticate),
        Err(Denied::Forbidden(reason)) => {
            deny(state, ctx.clone(), path, reason).await?;
            Err(Refused::Forbidden(reason.into()))
        }
    }
}

async fn deny(
    state: &AppState,
    ctx: AuditContext,
    path: &str,
    reason: &str,
) -> Result<(), StoreError> {
    let actor = ctx
        .actor_user
        .as_deref()
        .or(ctx.actor_client.as_deref())
        .unwrap_or_default();
    if !state.admin_denials.allow(actor) {
        return Ok(());
    }
    let (clock, path, reason) = (state.clock.clone(), path.to_owned(), reason.to_owned());
    state
        .db
        .run(move |conn| crate::admin::record_denied(conn, clock.as_ref(), &ctx, &path, &reason))
        .await
}

/// A backend service's admin-API token: live, for the admin API, from `client_credentials`,
/// and only the admin scopes its registration still allows.
async fn machine(state: &AppState, token: String) -> Result<Actor, Refused> {
    let (keys, issuer, now, timeouts) = (
        state.keys.clone(),
        state.issuer.clone(),
        state.clock.now_secs(),
        state.login.timeouts,
    );
    let audience = vec![admin_api_audience(&issuer)];
    let found = state
        .db
        .run(move |conn| {
            let Some(live) = resource_server::live_access_token(
                conn,
                &keys,
                &issuer,
                &token,
                now,
                timeouts,
                Some(&audience),
            )?
            else {
                return Ok::<_, StoreError>(None);
            };
            let Some(client) = crate::store::clients::find(conn, &live.row.client_id)? else {
                return Ok(None);
            };
            Ok(Some((live, ScopeSet::parse(&client.allowed_scopes).0)))
        })
        .await?;
    let Some((live, allowed)) = found else {
        return Err(Refused::Unauthenticated("the access token is not valid"));
    };
    if live.family.grant_kind != "client_credentials" {
        return Err(Refused::Unauthenticated("the access token is not valid"));
    }
    let scopes = ScopeSet::parse(&live.claims.scope)
        .0
        .admin_scopes()
        .filter(|s| allowed.admin_scopes().any(|a| a == *s))
        .collect();
    Ok(Actor::Machine {
        client_id: live.row.client_id,
        scopes,
    })
}

/// An `If-Match` header this API could not have issued.
#[derive(Debug)]
pub struct BadIfMatch;

/// `If-Match: "v3"` → `Some(3)`; absent or `*` → `None`.
pub fn if_match(req: &HttpRequest) -> Result<Option<i64>, BadIfMatch> {
    let Some(value) = req.headers().get(header::IF_MATCH) else {
        return Ok(None);
    };
    let text = value.to_str().map_err(|_| BadIfMatch)?.trim();
    if text == "*" {
        return Ok(None);
    }
    // If-Match compares strongly (RFC 9110 §13.1.1): a weak tag never matches.
    let inner = text
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .and_then(|t| t.strip_prefix('v'))
        .ok_or(BadIfMatch)?;
    inner.parse::<i64>().map(Some).map_err(|_| BadIfMatch)
}

pub fn etag(version: i64) -> String {
    format!("\"v{version}\"")
}
