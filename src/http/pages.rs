//! Sign-in and account pages: parse the form, call `authn::login`, render or redirect.
//! Every POST checks its CSRF token first and changes nothing when it is wrong.

use actix_web::http::header;
use actix_web::http::StatusCode;
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use askama::Template;
use serde::Deserialize;

use super::client_ip::client_ip;
use super::cookies;
use super::csrf::{self, Binding};
use super::middleware::RequestId;
use std::ops::Not;

use super::views::{
    AccountView, EnrolTotpView, LoginView, MessageView, MfaView, PasskeyView, RecoveryCodesView,
    SessionRowView,
};
use crate::app::AppState;
use crate::audit::AuditContext;
use crate::authn::login::{self, FactorOutcome, LoginError, NewSession, SessionInfo};
use crate::authn::session::{safe_return_to, Stage};
use crate::clock::format_secs;
use crate::error::AppError;

const PRODUCT: &str = "Ward";

pub(crate) fn https(state: &AppState) -> bool {
    state.settings.served_over_https()
}

/// Who is asking, for the audit trail and throttling.
pub fn audit_context(req: &HttpRequest, state: &AppState) -> AuditContext {
    // Every X-Forwarded-For line, in order: a proxy may add its own line rather than append.
    let forwarded = req
        .headers()
        .get_all("x-forwarded-for")
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(",");
    let ip = client_ip(
        req.peer_addr().map(|a| a.ip()),
        Some(forwarded.as_str()).filter(|f| !f.is_empty()),
        &state.trusted_proxies,
    );
    AuditContext {
        actor_user: None,
        actor_client: None,
        source_ip: ip.map(|i| i.to_string()),
        user_agent: req
            .headers()
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|ua| ua.chars().take(256).collect()),
        request_id: req.extensions().get::<RequestId>().map(|r| r.0.clone()),
        node: state.node.clone(),
    }
}

pub(crate) fn render(status: StatusCode, page: &impl Template) -> Result<HttpResponse, AppError> {
    let body = page
        .render()
        .map_err(|e| AppError::Internal(format!("template: {e}")))?;
    Ok(HttpResponse::build(status)
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .content_type("text/html; charset=utf-8")
        .body(body))
}

pub(crate) fn redirect(to: &str) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, to.to_owned()))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .finish()
}

pub(crate) fn message(
    status: StatusCode,
    title: &str,
    text: &str,
    link: Option<(&str, &str)>,
) -> Result<HttpResponse, AppError> {
    render(
        status,
        &MessageView {
            title: title.into(),
            message: text.into(),
            link: link.map(|(href, _)| href.to_owned()),
            link_text: link.map(|(_, t)| t.to_owned()).unwrap_or_default(),
        },
    )
}

fn forbidden_form() -> Result<HttpResponse, AppError> {
    message(
        StatusCode::FORBIDDEN,
        "This form has expired",
        "For your security the form could not be accepted. Go back, reload the page and try again.",
        Some(("/login", "Back to sign in")),
    )
}

fn busy() -> Result<HttpResponse, AppError> {
    let mut response = message(
        StatusCode::SERVICE_UNAVAILABLE,
        "Busy",
        "Ward is handling many sign-ins right now. Please try again in a moment.",
        None,
    )?;
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from_static("2"));
    Ok(response)
}

fn login_error(e: LoginError) -> Result<HttpResponse, AppError> {
    match e {
        LoginError::Busy => busy(),
        LoginError::Store(s) => Err(s.into()),
        LoginError::Refused(text) => message(
            StatusCode::BAD_REQUEST,
            "Not possible",
            &text,
            Some(("/account", "Back to your account")),
        ),
        LoginError::ReauthenticationRequired => message(
            StatusCode::FORBIDDEN,
            "Sign in again",
            "For your security, changing how you sign in needs a recent sign-in. Sign in again, then come back.",
            Some(("/login?prompt=login&return_to=%2Faccount", "Sign in again")),
        ),
    }
}

/// The current session, if the cookie names a live one.
pub async fn current_session(
    req: &HttpRequest,
    state: &AppState,
) -> Result<Option<SessionInfo>, AppError> {
    let Some(cookie) = cookies::read(req, cookies::SESSION, https(state)) else {
        return Ok(None);
    };
    let (clock, policy, ctx) = (state.clock.clone(), state.login, audit_context(req, state));
    Ok(state
        .db
        .run(move |conn| login::load_session(conn, clock.as_ref(), &policy, &ctx, &cookie))
        .await?)
}

pub(crate) fn session_csrf(state: &AppState, session: &SessionInfo) -> String {
    csrf::token(&state.csrf_key, Binding::Session(&session.id_hash))
}

pub(crate) fn session_csrf_ok(state: &AppState, session: &SessionInfo, presented: &str) -> bool {
    csrf::verify(
        &state.csrf_key,
        Binding::Session(&session.id_hash),
        presented,
    )
}

fn set_session(
    response: &mut HttpResponse,
    state: &AppState,
    created: &NewSession,
) -> Result<(), AppError> {
    response
        .add_cookie(&cookies::build(
            cookies::SESSION,
            created.cookie_value.clone(),
            https(state),
        ))
        .map_err(|e| AppError::Internal(e.to_string()))
}

/// On a sign-in page of a pending authorization request, the form's redirect chain ends at the
/// app: let the page's `form-action` allow the app's origin.
async fn allow_app_redirect(
    response: &mut HttpResponse,
    state: &AppState,
    return_to: &str,
) -> Result<(), AppError> {
    if let Some(target) = super::oauth::continuation_target(state, return_to).await? {
        super::oauth::set_form_action(response, state, &target);
    }
    Ok(())
}

/// Where a session at `stage` must go next.
fn next_step(stage: Stage, return_to: &str) -> String {
    let encoded: String = url::form_urlencoded::byte_serialize(return_to.as_bytes()).collect();
    match stage {
        Stage::SecondFactor => format!("/login/mfa?return_to={encoded}"),
        Stage::Enrolment => format!("/account/mfa/totp?return_to={encoded}"),
        Stage::Active => return_to.to_owned(),
    }
}

#[derive(Debug, Deserialize)]
pub struct ReturnTo {
    return_to: Option<String>,
    /// `login`: show the sign-in form even to a signed-in session (re-authentication).
    prompt: Option<String>,
    /// OIDC `login_hint`, carried from an authorization request: prefills the username.
    login_hint: Option<String>,
}

pub async fn login_get(
    req: HttpRequest,
    state: web::Data<AppState>,
    query: web::Query<ReturnTo>,
) -> Result<HttpResponse, AppError> {
    let return_to = safe_return_to(query.return_to.as_deref());
    if query.prompt.as_deref() != Some("login") {
        if let Some(session) = current_session(&req, &state).await? {
            return Ok(redirect(&next_step(session.stage, &return_to)));
        }
    }
    let https = https(&state);
    let browser = cookies::read(&req, cookies::BROWSER, https)
        .unwrap_or_else(|| crate::crypto::random_token(32));
    let view = LoginView {
        csrf: csrf::token(&state.csrf_key, Binding::Browser(&browser)),
        return_to,
        error: None,
        username: query
            .login_hint
            .as_deref()
            .filter(|h| h.len() <= 64 && !h.chars().any(char::is_control))
            .unwrap_or_default()
            .to_owned(),
    };
    let mut response = render(StatusCode::OK, &view)?;
    allow_app_redirect(&mut response, &state, &view.return_to).await?;
    response
        .add_cookie(&cookies::build(cookies::BROWSER, browser, https))
        .map_err(|e| AppError::Internal(e.to_string()))?;
    Ok(response)
}

#[derive(Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    csrf: String,
    return_to: Option<String>,
}

pub async fn login_post(
    req: HttpRequest,
    state: web::Data<AppState>,
    form: web::Form<LoginForm>,
) -> Result<HttpResponse, AppError> {
    let form = form.into_inner();
    let https = https(&state);
    let Some(browser) = cookies::read(&req, cookies::BROWSER, https) else {
        return forbidden_form();
    };
    if !csrf::verify(&state.csrf_key, Binding::Browser(&browser), &form.csrf) {
        return forbidden_form();
    }
    let return_to = safe_return_to(form.return_to.as_deref());
    let ctx = audit_context(&req, &state);
    let outcome = login::sign_in_with_password(
        &state.db,
        &state.hashing,
        &state.clock,
        state.login,
        &ctx,
        &form.username,
        form.password,
    )
    .await;
    match outcome {
        Ok(Some(created)) => {
            // Signing in over an existing session replaces it.
            if let Some(previous) = current_session(&req, &state).await? {
                let (clock, ctx) = (state.clock.clone(), audit_context(&req, &state));
                state
                    .db
                    .run(move |conn| {
                        login::end(conn, clock.as_ref(), &ctx, &previous, "replaced")
                            .map_err(AppError::from)
                    })
                    .await?;
            }
            let mut response = redirect(&next_step(created.stage, &return_to));
            set_session(&mut response, &state, &created)?;
            Ok(response)
        }
        Ok(None) => {
            let mut response = render(
                StatusCode::UNAUTHORIZED,
                &LoginView {
                    csrf: form.csrf,
                    return_to: return_to.clone(),
                    username: String::new(),
                    error: Some(
                        "That username and password did not match. Check them and try again."
                            .into(),
                    ),
                },
            )?;
            allow_app_redirect(&mut response, &state, &return_to).await?;
            Ok(response)
        }
        Err(e) => login_error(e),
    }
}

pub async fn mfa_get(
    req: HttpRequest,
    state: web::Data<AppState>,
    query: web::Query<ReturnTo>,
) -> Result<HttpResponse, AppError> {
    let return_to = safe_return_to(query.return_to.as_deref());
    match current_session(&req, &state).await? {
        Some(s) if s.stage == Stage::SecondFactor => {
            mfa_page(&state, &s, return_to, None, StatusCode::OK).await
        }
        Some(s) => Ok(redirect(&next_step(s.stage, &return_to))),
        None => Ok(redirect("/login")),
    }
}

async fn mfa_page(
    state: &AppState,
    session: &SessionInfo,
    return_to: String,
    error: Option<String>,
    status: StatusCode,
) -> Result<HttpResponse, AppError> {
    let user_id = session.user_id.clone();
    let has_passkey = state
        .db
        .run(move |conn| crate::store::passkeys::of_user(conn, &user_id).map_err(AppError::from))
        .await?
        .is_empty()
        .not();
    let mut response = render(
        status,
        &MfaView {
            csrf: session_csrf(state, session),
            return_to: return_to.clone(),
            error,
            has_passkey,
        },
    )?;
    allow_app_redirect(&mut response, state, &return_to).await?;
    Ok(response)
}

#[derive(Deserialize)]
pub struct CodeForm {
    #[serde(default)]
    code: String,
    #[serde(default)]
    csrf: String,
    return_to: Option<String>,
}

pub async fn mfa_post(
    req: HttpRequest,
    state: web::Data<AppState>,
    form: web::Form<CodeForm>,
) -> Result<HttpResponse, AppError> {
    let Some(session) = current_session(&req, &state).await? else {
        return Ok(redirect("/login"));
    };
    if !session_csrf_ok(&state, &session, &form.csrf) {
        return forbidden_form();
    }
    let return_to = safe_return_to(form.return_to.as_deref());
    if session.stage != Stage::SecondFactor {
        return Ok(redirect(&next_step(session.stage, &return_to)));
    }
    let (clock, sealer, policy, ctx) = (
        state.clock.clone(),
        state.sealer.clone(),
        state.login,
        audit_context(&req, &state),
    );
    let code = form.code.chars().take(32).collect::<String>();
    let current = session.clone();
    let outcome = state
        .db
        .run(move |conn| {
            login::verify_second_factor(
                conn,
                clock.as_ref(),
                &sealer,
                &policy,
                &ctx,
                &current,
                &code,
            )
        })
        .await;
    match outcome {
        Ok(FactorOutcome::Accepted(created)) => {
            let mut response = redirect(&return_to);
            set_session(&mut response, &state, &created)?;
            Ok(response)
        }
        Ok(FactorOutcome::Refused) => {
            mfa_page(
                &state,
                &session,
                return_to,
                Some("That code did not work. Wait for a new code and try again.".into()),
                StatusCode::UNAUTHORIZED,
            )
            .await
        }
        Err(e) => login_error(e),
    }
}

/// Pages for a signed-in person: an active session, or one in enrolment for the TOTP pages.
pub(crate) async fn require_session(
    req: &HttpRequest,
    state: &AppState,
    allow_enrolment: bool,
) -> Result<Result<SessionInfo, HttpResponse>, AppError> {
    let here = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/account".into());
    match current_session(req, state).await? {
        Some(s) if s.stage == Stage::Active || (allow_enrolment && s.stage == Stage::Enrolment) => {
            Ok(Ok(s))
        }
        Some(s) => Ok(Err(redirect(&next_step(
            s.stage,
            &safe_return_to(Some(&here)),
        )))),
        None => {
            let encoded: String =
                url::form_urlencoded::byte_serialize(safe_return_to(Some(&here)).as_bytes())
                    .collect();
            Ok(Err(redirect(&format!("/login?return_to={encoded}"))))
        }
    }
}

/// A signed-in person's form post: the active session, provided the CSRF token matches
/// (otherwise the 403 page, and nothing changes).
pub(crate) async fn signed_in_form(
    req: &HttpRequest,
    state: &AppState,
    csrf_token: &str,
) -> Result<Result<SessionInfo, HttpResponse>, AppError> {
    Ok(match require_session(req, state, false).await? {
        Ok(s) if session_csrf_ok(state, &s, csrf_token) => Ok(s),
        Ok(_) => Err(forbidden_form()?),
        Err(response) => Err(response),
    })
}

pub async fn totp_get(
    req: HttpRequest,
    state: web::Data<AppState>,
    query: web::Query<ReturnTo>,
) -> Result<HttpResponse, AppError> {
    let session = match require_session(&req, &state, true).await? {
        Ok(s) => s,
        Err(response) => return Ok(response),
    };
    let return_to = safe_return_to(query.return_to.as_deref());
    if session.stage == Stage::Active {
        let (current, now) = (session.clone(), state.clock.now_secs());
        let recent = state
            .db
            .run(move |conn| {
                login::recently_authenticated(conn, &current, now).map_err(AppError::from)
            })
            .await?;
        if !recent {
            return login_error(LoginError::ReauthenticationRequired);
        }
    }
    enrol_page(&state, session, return_to, None, StatusCode::OK).await
}

async fn enrol_page(
    state: &AppState,
    session: SessionInfo,
    return_to: String,
    error: Option<String>,
    status: StatusCode,
) -> Result<HttpResponse, AppError> {
    let (clock, sealer) = (state.clock.clone(), state.sealer.clone());
    let current = session.clone();
    let enrolment = state
        .db
        .run(move |conn| {
            login::start_totp_enrolment(conn, clock.as_ref(), &sealer, PRODUCT, &current)
        })
        .await;
    let enrolment = match enrolment {
        Ok(e) => e,
        Err(e) => return login_error(e),
    };
    render(
        status,
        &EnrolTotpView {
            csrf: session_csrf(state, &session),
            return_to,
            qr_svg: enrolment.qr_svg,
            secret: enrolment.secret_base32,
            required: session.stage == Stage::Enrolment,
            error,
        },
    )
}

pub async fn totp_post(
    req: HttpRequest,
    state: web::Data<AppState>,
    form: web::Form<CodeForm>,
) -> Result<HttpResponse, AppError> {
    let session = match require_session(&req, &state, true).await? {
        Ok(s) => s,
        Err(response) => return Ok(response),
    };
    if !session_csrf_ok(&state, &session, &form.csrf) {
        return forbidden_form();
    }
    let return_to = safe_return_to(form.return_to.as_deref());
    let (clock, sealer, policy, ctx) = (
        state.clock.clone(),
        state.sealer.clone(),
        state.login,
        audit_context(&req, &state),
    );
    let (current, code) = (
        session.clone(),
        form.code.chars().take(32).collect::<String>(),
    );
    let done = state
        .db
        .run(move |conn| {
            login::confirm_totp_enrolment(
                conn,
                clock.as_ref(),
                &policy,
                &ctx,
                &sealer,
                &current,
                &code,
            )
        })
        .await;
    match done {
        Ok(Some(done)) => {
            let mut response = render(
                StatusCode::OK,
                &RecoveryCodesView {
                    codes: done.recovery_codes,
                    return_to,
                },
            )?;
            if let Some(created) = &done.session {
                set_session(&mut response, &state, created)?;
            }
            Ok(response)
        }
        Ok(None) => enrol_page(
            &state,
            session,
            return_to,
            Some(
                "That code did not match. Check the time on your phone and try the newest code."
                    .into(),
            ),
            StatusCode::UNAUTHORIZED,
        )
        .await,
        Err(e) => login_error(e),
    }
}

async fn account_page(
    state: &AppState,
    session: &SessionInfo,
    notice: Option<String>,
    error: Option<String>,
    status: StatusCode,
) -> Result<HttpResponse, AppError> {
    let current = session.clone();
    let overview = state
        .db
        .run(move |conn| login::account_overview(conn, &current))
        .await?;
    render(
        status,
        &AccountView {
            csrf: session_csrf(state, session),
            username: session.username.clone(),
            display_name: session.display_name.clone(),
            totp_enrolled: overview.totp_enrolled,
            recovery_codes_left: overview.recovery_codes_left,
            mfa_required: overview.mfa_required,
            passkeys: overview
                .passkeys
                .into_iter()
                .map(|p| PasskeyView {
                    id: p.id,
                    name: p.name,
                    created: format_secs(p.created_at),
                    last_used: p.last_used_at.map(format_secs),
                })
                .collect(),
            sessions: overview
                .sessions
                .into_iter()
                .map(|s| SessionRowView {
                    public_id: s.public_id,
                    created: format_secs(s.created_at),
                    last_seen: format_secs(s.last_seen_at),
                    from: s.source_ip.unwrap_or_else(|| "unknown".into()),
                    current: s.current,
                })
                .collect(),
            notice,
            error,
        },
    )
}

pub async fn account_get(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    match require_session(&req, &state, false).await? {
        Ok(session) => account_page(&state, &session, None, None, StatusCode::OK).await,
        Err(response) => Ok(response),
    }
}

#[derive(Deserialize)]
pub struct PasswordForm {
    #[serde(default)]
    current: String,
    #[serde(default)]
    new: String,
    #[serde(default)]
    confirm: String,
    #[serde(default)]
    csrf: String,
}

pub async fn password_post(
    req: HttpRequest,
    state: web::Data<AppState>,
    form: web::Form<PasswordForm>,
) -> Result<HttpResponse, AppError> {
    let form = form.into_inner();
    let session = match signed_in_form(&req, &state, &form.csrf).await? {
        Ok(s) => s,
        Err(response) => return Ok(response),
    };
    if form.new != form.confirm {
        return account_page(
            &state,
            &session,
            None,
            Some("The two new passwords are different.".into()),
            StatusCode::BAD_REQUEST,
        )
        .await;
    }
    let ctx = audit_context(&req, &state);
    match login::change_password(
        &state.db,
        &state.hashing,
        &state.clock,
        &state.login,
        &ctx,
        &session,
        form.current,
        form.new,
    )
    .await
    {
        Ok(()) => {
            account_page(
                &state,
                &session,
                Some("Password changed. Your other sessions were signed out.".into()),
                None,
                StatusCode::OK,
            )
            .await
        }
        Err(LoginError::Refused(text)) => {
            account_page(&state, &session, None, Some(text), StatusCode::BAD_REQUEST).await
        }
        Err(e) => login_error(e),
    }
}

#[derive(Deserialize)]
pub struct EndSessionForm {
    #[serde(default)]
    session: String,
    #[serde(default)]
    csrf: String,
}

pub async fn end_session_post(
    req: HttpRequest,
    state: web::Data<AppState>,
    form: web::Form<EndSessionForm>,
) -> Result<HttpResponse, AppError> {
    let session = match signed_in_form(&req, &state, &form.csrf).await? {
        Ok(s) => s,
        Err(response) => return Ok(response),
    };
    let (clock, ctx, current, target) = (
        state.clock.clone(),
        audit_context(&req, &state),
        session.clone(),
        form.session.clone(),
    );
    state
        .db
        .run(move |conn| login::end_own_session(conn, clock.as_ref(), &ctx, &current, &target))
        .await?;
    Ok(redirect("/account"))
}

#[derive(Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

pub async fn totp_remove_post(
    req: HttpRequest,
    state: web::Data<AppState>,
    form: web::Form<CsrfForm>,
) -> Result<HttpResponse, AppError> {
    let session = match signed_in_form(&req, &state, &form.csrf).await? {
        Ok(s) => s,
        Err(response) => return Ok(response),
    };
    let (clock, ctx, current) = (
        state.clock.clone(),
        audit_context(&req, &state),
        session.clone(),
    );
    match state
        .db
        .run(move |conn| login::remove_totp(conn, clock.as_ref(), &ctx, &current))
        .await
    {
        Ok(()) => Ok(redirect("/account")),
        Err(LoginError::Refused(text)) => {
            account_page(&state, &session, None, Some(text), StatusCode::BAD_REQUEST).await
        }
        Err(e) => login_error(e),
    }
}

pub async fn logout_post(
    req: HttpRequest,
    state: web::Data<AppState>,
    form: web::Form<CsrfForm>,
) -> Result<HttpResponse, AppError> {
    let https = https(&state);
    if let Some(session) = current_session(&req, &state).await? {
        if !session_csrf_ok(&state, &session, &form.csrf) {
            return forbidden_form();
        }
        let (clock, ctx) = (state.clock.clone(), audit_context(&req, &state));
        state
            .db
            .run(move |conn| {
                login::end(conn, clock.as_ref(), &ctx, &session, "logout").map_err(AppError::from)
            })
            .await?;
    }
    let mut response = redirect("/login");
    response
        .add_cookie(&cookies::removal(cookies::SESSION, https))
        .map_err(|e| AppError::Internal(e.to_string()))?;
    Ok(response)
}

pub async fn script_get() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "public, max-age=3600"))
        .body(include_str!("../../static/webauthn.js"))
}

pub async fn stylesheet_get() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/css; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "public, max-age=3600"))
        .body(include_str!("../../static/ward.css"))
}

impl From<LoginError> for AppError {
    fn from(e: LoginError) -> Self {
        match e {
            LoginError::Store(s) => s.into(),
            LoginError::Busy => AppError::Unavailable("password hashing busy".into()),
            LoginError::Refused(t) => AppError::Internal(t),
            LoginError::ReauthenticationRequired => AppError::Forbidden("sign in again".into()),
        }
    }
}
