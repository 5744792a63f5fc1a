//! The SMART App Launch endpoints: `/authorize` (GET and POST) and the pages a pending request
//! walks through (sign-in, patient picker, consent), `/token`, `/launch`, `/userinfo`, the
//! OpenID Connect end-session endpoint and the discovery documents.
//!
//! Thin: parse, call `oauth::*`, map the result. Protocol errors are RFC 6749 JSON on the
//! token-style endpoints and redirects (or pages, when redirecting is unsafe) on `/authorize`.

use std::collections::BTreeMap;

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};

use super::pages::{
    audit_context, current_session, message, redirect, render, session_csrf, session_csrf_ok,
};
use super::views::{ConsentView, LogoutConfirmView, PatientPickerView};
use crate::app::AppState;
use crate::audit::AuditEvent;
use crate::authn::login::{self, SessionInfo};
use crate::authn::session::Stage;
use crate::error::AppError;
use crate::oauth::authorize::{self, ApproveInput, Pending, Step, Subject};
use crate::oauth::authorize_request::{error_redirect, Rejection};
use crate::oauth::break_glass;
use crate::oauth::client_auth::{self, Presented};
use crate::oauth::error::{OAuthError, Params};
use crate::oauth::resource_server::{self, TokenCheck};
use crate::oauth::token::{self, Issuer};
use crate::oauth::tokens;
use crate::patients;
use crate::smart::consent::{self, Choices};
use crate::smart::launch::{self as launch_rules, LaunchContext};
use crate::smart::scopes::{IdentityScope, ScopeSet};
use crate::store::{grants, write_transaction, StoreError};

const FORM: &str = "application/x-www-form-urlencoded";

fn is_form(req: &HttpRequest) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(FORM))
}

/// A protocol endpoint's answer: the JSON body, or the RFC 6749 error.
fn respond(result: Result<Value, OAuthError>) -> HttpResponse {
    match result {
        Ok(v) => json_response(&v),
        Err(e) => e.response(),
    }
}

fn json_response(body: &Value) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::PRAGMA, "no-cache"))
        .json(body)
}

// ---------------------------------------------------------------- discovery

/// A discovery document from its prepared bytes, with `ETag` (and `304` for a match).
fn discovery_response(req: &HttpRequest, body: &str, etag: &str) -> HttpResponse {
    let fresh = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|tag| tag.trim() == etag));
    let mut response = if fresh {
        HttpResponse::NotModified()
    } else {
        HttpResponse::Ok()
    };
    response
        .insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"))
        .insert_header((header::CACHE_CONTROL, "public, max-age=300"))
        .insert_header((header::ETAG, etag.to_owned()));
    if fresh {
        response.finish()
    } else {
        response
            .content_type("application/json")
            .body(body.to_owned())
    }
}

pub async fn smart_configuration(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let docs = &state.discovery;
    discovery_response(&req, &docs.smart, &docs.smart_etag)
}

pub async fn openid_configuration(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let docs = &state.discovery;
    discovery_response(&req, &docs.openid, &docs.openid_etag)
}

/// `static/smart-style.json`: the styling hints for `smart_style_url` (SMART context-style).
pub async fn smart_style() -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"))
        .insert_header((header::CACHE_CONTROL, "public, max-age=3600"))
        .content_type("application/json")
        .body(include_str!("../../static/smart-style.json"))
}

/// CORS preflight for the endpoints browser apps call: any origin may ask; the answer to the
/// real request decides whether that origin may read it.
pub async fn preflight(req: HttpRequest) -> HttpResponse {
    let mut response = HttpResponse::NoContent();
    if let Some(origin) = req.headers().get(header::ORIGIN) {
        response
            .insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone()))
            .insert_header((header::ACCESS_CONTROL_ALLOW_METHODS, "GET, POST"))
            .insert_header((
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                "Authorization, Content-Type",
            ))
            .insert_header((header::ACCESS_CONTROL_MAX_AGE, "600"))
            .insert_header((header::VARY, "Origin"));
    }
    response.finish()
}

// ---------------------------------------------------------------- authorize

/// Lets a launch page's form redirect chain end at `target`'s origin (the app), keeping
/// everything else of the launch-page CSP.
pub(crate) fn set_form_action(response: &mut HttpResponse, state: &AppState, target: &str) {
    let origin = url::Url::parse(target)
        .ok()
        .filter(|u| matches!(u.scheme(), "https" | "http"))
        .map(|u| u.origin().ascii_serialization());
    let targets: Vec<String> = origin.into_iter().collect();
    let csp = super::middleware::launch_page_csp(&state.ehr_origins, true, &targets);
    if let Ok(value) = HeaderValue::from_str(&csp) {
        response
            .headers_mut()
            .insert(header::CONTENT_SECURITY_POLICY, value);
    }
}

/// For the sign-in pages of a pending authorization request (`return_to` is its continuation):
/// the app's redirect URI, where the sign-in form's redirect chain may end.
pub(crate) async fn continuation_target(
    state: &AppState,
    return_to: &str,
) -> Result<Option<String>, AppError> {
    let Some(query) = return_to.strip_prefix("/authorize/continue?") else {
        return Ok(None);
    };
    let Some(handle) = url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "request")
        .map(|(_, v)| v.into_owned())
    else {
        return Ok(None);
    };
    let now = state.clock.now_secs();
    Ok(state
        .db
        .run(move |conn| authorize::load(conn, &handle, now))
        .await?
        .map(|p| p.request.redirect_uri))
}

pub(super) fn bad_request_page(text: &str) -> Result<HttpResponse, AppError> {
    message(
        StatusCode::BAD_REQUEST,
        "This sign-in request cannot continue",
        text,
        None,
    )
}

pub(super) fn expired_request() -> Result<HttpResponse, AppError> {
    bad_request_page(
        "This request has expired or was already completed. Go back to the app and start again.",
    )
}

/// `GET /authorize` (query) and `POST /authorize` (form body).
pub async fn authorize(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse, AppError> {
    let raw: &[u8] = if req.method() == actix_web::http::Method::POST {
        if !is_form(&req) {
            return bad_request_page("The authorization request must be form-encoded.");
        }
        &body
    } else {
        req.query_string().as_bytes()
    };
    let params = match Params::parse(raw) {
        Ok(p) => p,
        Err(e) => return bad_request_page(&format!("The request is malformed: {}", e.description)),
    };
    let prior_session = current_session(&req, &state).await?.map(|s| s.public_id);
    let (clock, ctx, bases) = (
        state.clock.clone(),
        audit_context(&req, &state),
        state.fhir_bases.clone(),
    );
    let outcome = state
        .db
        .run(move |conn| {
            authorize::begin(conn, clock.as_ref(), &ctx, &params, &bases, prior_session)
        })
        .await?;
    match outcome {
        Ok(handle) => Ok(redirect(&continue_url(&handle))),
        Err(Rejection::Page(text)) => bad_request_page(&text),
        Err(Rejection::Redirect {
            redirect_uri,
            error,
            state: st,
        }) => Ok(redirect(&error_redirect(
            &redirect_uri,
            &error,
            st.as_deref(),
            &state.issuer,
        ))),
    }
}

pub(super) fn encode(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

pub(super) fn continue_url(handle: &str) -> String {
    format!("/authorize/continue?request={}", encode(handle))
}

#[derive(Debug, Deserialize)]
pub struct RequestQuery {
    request: String,
    q: Option<String>,
}

/// Everything a page of a pending request needs.
pub(super) struct Flow {
    pub(super) pending: Pending,
    pub(super) session: Option<SessionInfo>,
    pub(super) subject: Option<Subject>,
    remembered: Option<String>,
}

pub(super) async fn load_flow(
    req: &HttpRequest,
    state: &AppState,
    handle: &str,
) -> Result<Option<Flow>, AppError> {
    let session = current_session(req, state).await?;
    let (handle, now) = (handle.to_owned(), state.clock.now_secs());
    let user = session.as_ref().map(|s| s.user_id.clone());
    let signed_in = session
        .as_ref()
        .filter(|s| s.stage == Stage::Active)
        .map(|s| s.user_id.clone());
    let loaded = state
        .db
        .run(move |conn| {
            let Some(mut pending) = authorize::load(conn, &handle, now)? else {
                return Ok::<_, StoreError>(None);
            };
            // The first person to reach the request signed in owns it; nobody else may
            // continue it (a shared workstation, a leaked link).
            if let Some(user_id) = &signed_in {
                pending.user_id = grants::bind_user(conn, &pending.id_hash, user_id)?;
            }
            let subject = match &user {
                Some(u) => authorize::subject(conn, u)?,
                None => None,
            };
            let remembered = match &user {
                Some(u) => grants::find_consent(conn, u, &pending.client.client_id)?
                    .filter(|c| c.aud == pending.request.aud)
                    .map(|c| c.scope),
                None => None,
            };
            Ok(Some((pending, subject, remembered)))
        })
        .await?;
    Ok(loaded.map(|(pending, subject, remembered)| Flow {
        pending,
        session,
        subject,
        remembered,
    }))
}

pub(super) fn step_of(flow: &Flow, now: i64) -> Step {
    authorize::next_step(
        &flow.pending,
        flow.session.as_ref(),
        flow.subject.as_ref(),
        flow.remembered.as_deref(),
        now,
    )
}

/// `GET /authorize/continue`: sends the browser wherever the request must go next.
pub async fn continue_get(
    req: HttpRequest,
    state: web::Data<AppState>,
    query: web::Query<RequestQuery>,
) -> Result<HttpResponse, AppError> {
    let Some(flow) = load_flow(&req, &state, &query.request).await? else {
        return expired_request();
    };
    let handle = query.request.clone();
    match step_of(&flow, state.clock.now_secs()) {
        Step::SignIn { again } => {
            let back = encode(&continue_url(&handle));
            let prompt = if again { "&prompt=login" } else { "" };
            let hint = flow
                .pending
                .request
                .login_hint
                .as_deref()
                .map(|h| format!("&login_hint={}", encode(h)))
                .unwrap_or_default();
            Ok(redirect(&format!("/login?return_to={back}{prompt}{hint}")))
        }
        Step::Fail(error) => {
            let user = flow.session.as_ref().map(|s| s.user_id.clone());
            refuse(&req, &state, flow.pending, user, error).await
        }
        Step::PickPatient => Ok(redirect(&format!(
            "/authorize/patients?request={}",
            encode(&handle)
        ))),
        Step::Consent { candidate, patient } => {
            consent_page(&state, &flow, &handle, &candidate, patient).await
        }
        Step::Approve { candidate, patient } => {
            approve(&req, &state, &flow, candidate, patient, false, true).await
        }
    }
}

/// Ends an authorization request without a grant. The actor is the app's request and, when
/// someone is signed in (who denied it, or whom a rule refused), that person.
pub(super) async fn refuse(
    req: &HttpRequest,
    state: &AppState,
    pending: Pending,
    user: Option<String>,
    error: OAuthError,
) -> Result<HttpResponse, AppError> {
    let (clock, mut ctx, issuer) = (
        state.clock.clone(),
        audit_context(req, state),
        state.issuer.clone(),
    );
    ctx.actor_user = user;
    ctx.actor_client = Some(pending.client.client_id.clone());
    let to = state
        .db
        .run(move |conn| authorize::refuse(conn, clock.as_ref(), &ctx, &pending, &error, &issuer))
        .await?;
    Ok(redirect(&to))
}

async fn approve(
    req: &HttpRequest,
    state: &AppState,
    flow: &Flow,
    granted: ScopeSet,
    patient: Option<String>,
    remember: bool,
    remembered_before: bool,
) -> Result<HttpResponse, AppError> {
    let (Some(session), Some(subject)) = (flow.session.clone(), flow.subject.clone()) else {
        return expired_request();
    };
    let (clock, mut ctx, issuer) = (
        state.clock.clone(),
        audit_context(req, state),
        state.issuer.clone(),
    );
    ctx.actor_user = Some(session.user_id.clone());
    ctx.actor_client = Some(flow.pending.client.client_id.clone());
    let pending = flow.pending.clone();
    let approval = state
        .db
        .run(move |conn| {
            authorize::approve(
                conn,
                clock.as_ref(),
                &ctx,
                ApproveInput {
                    pending: &pending,
                    session: &session,
                    subject: &subject,
                    granted,
                    patient,
                    remember,
                    remembered_before,
                    issuer: &issuer,
                },
            )
        })
        .await?;
    match approval {
        Some(a) => Ok(redirect(&a.redirect)),
        None => expired_request(),
    }
}

async fn consent_page(
    state: &AppState,
    flow: &Flow,
    handle: &str,
    candidate: &ScopeSet,
    patient: Option<String>,
) -> Result<HttpResponse, AppError> {
    let (Some(session), Some(subject)) = (&flow.session, &flow.subject) else {
        return expired_request();
    };
    let patient = match patient {
        Some(id) => {
            let lookup = id.clone();
            let found = state
                .db
                .run(move |conn| patients::get(conn, &lookup))
                .await?;
            Some(found.unwrap_or(patients::PatientSummary {
                name: format!("Patient {id}"),
                id,
                birth_date: None,
                gender: None,
                identifiers: Vec::new(),
            }))
        }
        None => None,
    };
    let settings = &flow.pending.client.settings;
    // Emergency access is for one patient: offered on the consent page when one is in context.
    let offer_break_glass =
        patient.is_some() && break_glass::offered(subject, &flow.pending.client);
    let mut response = render(
        StatusCode::OK,
        &ConsentView {
            csrf: session_csrf(state, session),
            request: handle.to_owned(),
            app_name: settings.name.clone(),
            logo_uri: settings.logo_uri.clone(),
            user_name: subject.display_name.clone(),
            patient_id: patient.as_ref().map(|p| p.id.clone()).unwrap_or_default(),
            patient,
            summary: consent::summarize(candidate),
            break_glass: offer_break_glass,
            nothing_grantable: !authorize::grants_something(candidate),
        },
    )?;
    set_form_action(&mut response, state, &flow.pending.request.redirect_uri);
    Ok(response)
}

/// `POST /authorize/consent`: approve (with the person's choices) or deny.
pub async fn consent_post(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse, AppError> {
    if !is_form(&req) {
        return bad_request_page("The consent form must be form-encoded.");
    }
    let Ok(form) = ConsentForm::parse(&body) else {
        return bad_request_page("The consent form is malformed.");
    };
    let Some(flow) = load_flow(&req, &state, &form.request).await? else {
        return expired_request();
    };
    let csrf_ok = flow
        .session
        .as_ref()
        .is_some_and(|s| session_csrf_ok(&state, s, &form.csrf));
    if !csrf_ok {
        return message(
            StatusCode::FORBIDDEN,
            "This form has expired",
            "For your security the form could not be accepted. Go back to the app and start again.",
            None,
        );
    }
    let (candidate, patient) = match step_of(&flow, state.clock.now_secs()) {
        Step::Consent { candidate, patient } | Step::Approve { candidate, patient } => {
            (candidate, patient)
        }
        _ => return Ok(redirect(&continue_url(&form.request))),
    };
    if patient.as_deref().unwrap_or_default() != form.patient {
        return bad_request_page(
            "The patient in context changed after this page was shown. Go back to the app and start again.",
        );
    }
    match form.decision.as_str() {
        "deny" => {
            let user = flow.session.as_ref().map(|s| s.user_id.clone());
            refuse(
                &req,
                &state,
                flow.pending,
                user,
                OAuthError::access_denied("the user denied the request"),
            )
            .await
        }
        "approve" => {
            let summary = consent::summarize(&candidate);
            let deselected = summary
                .groups
                .iter()
                .map(|g| g.resource_type.clone())
                .filter(|t| !form.include.contains(t))
                .collect();
            let choices = Choices {
                deselected,
                categories: form.categories.clone(),
            };
            let mut granted = match consent::apply(&candidate, &choices) {
                Ok(g) => g,
                Err(e) => return bad_request_page(&e.to_string()),
            };
            if !form.offline {
                granted = authorize::without_refresh(&granted);
            }
            // Shown only so the person could break the glass: ordinary approval grants nothing.
            if !authorize::grants_something(&candidate) {
                let user = flow.session.as_ref().map(|s| s.user_id.clone());
                return refuse(
                    &req,
                    &state,
                    flow.pending,
                    user,
                    OAuthError::invalid_scope(
                        "none of the requested scopes may be granted to this user and app",
                    ),
                )
                .await;
            }
            approve(&req, &state, &flow, granted, patient, form.remember, false).await
        }
        _ => bad_request_page("Choose Allow or Deny."),
    }
}

/// The consent form: repeated `include` and `category.<Type>` fields, so parsed by hand.
#[derive(Debug, Default)]
struct ConsentForm {
    csrf: String,
    request: String,
    decision: String,
    include: Vec<String>,
    categories: BTreeMap<String, Vec<String>>,
    remember: bool,
    /// The offline/online access box.
    offline: bool,
    /// The patient the page showed.
    patient: String,
}

impl ConsentForm {
    fn parse(body: &[u8]) -> Result<Self, ()> {
        std::str::from_utf8(body).map_err(|_| ())?;
        let mut form = ConsentForm::default();
        let mut count = 0;
        for (k, v) in url::form_urlencoded::parse(body) {
            count += 1;
            if count > 500 || v.len() > 512 {
                return Err(());
            }
            match k.as_ref() {
                "csrf" => form.csrf = v.into_owned(),
                "request" => form.request = v.into_owned(),
                "decision" => form.decision = v.into_owned(),
                "remember" => form.remember = v == "yes",
                "offline" => form.offline = v == "yes",
                "patient" => form.patient = v.into_owned(),
                "include" => form.include.push(v.into_owned()),
                other => match other.strip_prefix("category.") {
                    Some(resource) => form
                        .categories
                        .entry(resource.to_owned())
                        .or_default()
                        .push(v.into_owned()),
                    None => return Err(()),
                },
            }
        }
        if form.request.is_empty() || form.csrf.is_empty() {
            return Err(());
        }
        Ok(form)
    }
}

/// `GET /authorize/patients`: the patient picker (search, then choose).
pub async fn patients_get(
    req: HttpRequest,
    state: web::Data<AppState>,
    query: web::Query<RequestQuery>,
) -> Result<HttpResponse, AppError> {
    let Some(flow) = load_flow(&req, &state, &query.request).await? else {
        return expired_request();
    };
    if step_of(&flow, state.clock.now_secs()) != Step::PickPatient {
        return Ok(redirect(&continue_url(&query.request)));
    }
    let Some(session) = flow.session.clone() else {
        return Ok(redirect(&continue_url(&query.request)));
    };
    let text = query.q.clone().unwrap_or_default();
    let searched = !text.trim().is_empty();
    let (results, error) = if searched {
        let (pending, q) = (flow.pending.clone(), text.clone());
        let (clock, mut ctx) = (state.clock.clone(), audit_context(&req, &state));
        // The person searches for the app's request: both are the actor (as on consent).
        ctx.actor_user = Some(session.user_id.clone());
        ctx.actor_client = Some(pending.client.client_id.clone());
        let results = state
            .db
            .run(move |conn| {
                let found = patients::search(conn, &q, authorize::PICKER_LIMIT)?;
                let ids: Vec<String> = found.iter().map(|p| p.id.clone()).collect();
                if !ids.is_empty() {
                    authorize::offer(conn, clock.as_ref(), &ctx, &pending, &ids)?;
                }
                Ok::<_, StoreError>(found)
            })
            .await?;
        let error = patients::fhir::parse_query(&text).is_none().then(|| {
            "Type at least two letters of a name, a birth date as YYYY-MM-DD, or an identifier."
                .to_owned()
        });
        (results, error)
    } else {
        (Vec::new(), None)
    };
    let mut response = render(
        StatusCode::OK,
        &PatientPickerView {
            csrf: session_csrf(&state, &session),
            request: query.request.clone(),
            app_name: flow.pending.client.settings.name.clone(),
            query: text,
            searched,
            results,
            error,
            break_glass: flow
                .subject
                .as_ref()
                .is_some_and(|s| break_glass::offered(s, &flow.pending.client)),
        },
    )?;
    set_form_action(&mut response, &state, &flow.pending.request.redirect_uri);
    Ok(response)
}

#[derive(Debug, Deserialize)]
pub struct PatientChoice {
    csrf: String,
    request: String,
    patient: String,
}

/// `POST /authorize/patients`: choose one of the offered patients.
pub async fn patients_post(
    req: HttpRequest,
    state: web::Data<AppState>,
    form: web::Form<PatientChoice>,
) -> Result<HttpResponse, AppError> {
    let Some(flow) = load_flow(&req, &state, &form.request).await? else {
        return expired_request();
    };
    let csrf_ok = flow
        .session
        .as_ref()
        .is_some_and(|s| session_csrf_ok(&state, s, &form.csrf));
    if !csrf_ok {
        return message(
            StatusCode::FORBIDDEN,
            "This form has expired",
            "For your security the form could not be accepted. Go back to the app and start again.",
            None,
        );
    }
    if step_of(&flow, state.clock.now_secs()) != Step::PickPatient {
        return Ok(redirect(&continue_url(&form.request)));
    }
    let (pending, id) = (flow.pending.clone(), form.patient.clone());
    let (clock, mut ctx) = (state.clock.clone(), audit_context(&req, &state));
    ctx.actor_user = flow.session.as_ref().map(|s| s.user_id.clone());
    ctx.actor_client = Some(pending.client.client_id.clone());
    let chosen = state
        .db
        .run(move |conn| authorize::choose_patient(conn, clock.as_ref(), &ctx, &pending, &id))
        .await?;
    if !chosen {
        return bad_request_page(
            "That patient was not offered, or a patient was already chosen. Go back to the app and start again.",
        );
    }
    Ok(redirect(&continue_url(&form.request)))
}

// ---------------------------------------------------------------- token

fn authorization_header(req: &HttpRequest) -> Option<&str> {
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
}

/// The CORS header for the authenticated client: only origins of its redirect URIs.
fn allow_origin(req: &HttpRequest, client: Option<&crate::clients::Client>) -> Option<HeaderValue> {
    let origin = req.headers().get(header::ORIGIN)?.to_str().ok()?;
    let client = client?;
    let allowed =
        client.settings.redirect_uris.iter().any(|uri| {
            url::Url::parse(uri).is_ok_and(|u| u.origin().ascii_serialization() == origin)
        });
    allowed
        .then(|| HeaderValue::from_str(origin).ok())
        .flatten()
}

fn with_cors(mut response: HttpResponse, origin: Option<HeaderValue>) -> HttpResponse {
    if let Some(origin) = origin {
        response
            .headers_mut()
            .insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        response
            .headers_mut()
            .insert(header::VARY, HeaderValue::from_static("Origin"));
    }
    response
}

/// `POST /token`.
pub async fn token(req: HttpRequest, state: web::Data<AppState>, body: web::Bytes) -> HttpResponse {
    let ctx = audit_context(&req, &state);
    let mut client_for_cors = None;
    let result = token_inner(&req, &state, &body, &ctx, &mut client_for_cors).await;
    let origin = allow_origin(&req, client_for_cors.as_ref());
    match result {
        Ok(body) => with_cors(json_response(&body), origin),
        Err(TokenFailure {
            error,
            grant,
            audited,
        }) => {
            if !audited && error.code != "temporarily_unavailable" && error.code != "server_error" {
                let (clock, mut ctx, e) = (state.clock.clone(), ctx, error.clone());
                ctx.actor_client = client_for_cors.as_ref().map(|c| c.client_id.clone());
                let client_id = ctx.actor_client.clone();
                let _ = state
                    .db
                    .write(move |conn| {
                        write_transaction(conn, |conn| {
                            crate::audit::append(
                                conn,
                                clock.as_ref(),
                                &ctx,
                                &AuditEvent::TokenRefused {
                                    client_id,
                                    grant,
                                    error: e.code.to_owned(),
                                    reason: e.description.clone(),
                                },
                            )
                        })
                    })
                    .await
                    .map_err(
                        |e: StoreError| tracing::warn!(error = %e, "token refusal not audited"),
                    );
            }
            with_cors(error.response(), origin)
        }
    }
}

/// A refused token request: the error, the grant it was for, and whether it is audited already.
struct TokenFailure {
    error: OAuthError,
    grant: String,
    audited: bool,
}

async fn token_inner(
    req: &HttpRequest,
    state: &AppState,
    body: &[u8],
    ctx: &crate::audit::AuditContext,
    client_out: &mut Option<crate::clients::Client>,
) -> Result<Value, TokenFailure> {
    let unknown = |e: OAuthError| TokenFailure {
        error: e,
        grant: "unknown".to_owned(),
        audited: false,
    };
    if !is_form(req) {
        return Err(unknown(OAuthError::invalid_request(
            "the token request must be application/x-www-form-urlencoded",
        )));
    }
    let params = Params::parse(body).map_err(unknown)?;
    let grant = params.require("grant_type").map_err(unknown)?.to_owned();
    let grant_label = crate::oauth::error::truncate(&grant, 40);
    let fail = |e: OAuthError| TokenFailure {
        error: e,
        grant: grant_label.clone(),
        audited: false,
    };
    if !matches!(
        grant.as_str(),
        "authorization_code" | "refresh_token" | "client_credentials"
    ) {
        return Err(fail(OAuthError::unsupported_grant_type(
            "supported grant types: authorization_code, refresh_token, client_credentials",
        )));
    }
    let presented = client_auth::presented(authorization_header(req), &params).map_err(&fail)?;
    let audiences = vec![state.url("/token"), state.issuer.to_string()];
    // A failed authentication is audited by client_auth itself.
    let (client, assertion) =
        client_auth::authenticate_deferring_jti(state, ctx, presented, "token", &audiences)
            .await
            .map_err(|e| TokenFailure {
                audited: e.code == "invalid_client",
                ..fail(e)
            })?;
    *client_out = Some(client.clone());
    let (keys, clock, issuer, policy, mut ctx, bases) = (
        state.keys.clone(),
        state.clock.clone(),
        state.issuer.clone(),
        state.login,
        ctx.clone(),
        state.fhir_bases.clone(),
    );
    ctx.actor_client = Some(client.client_id.clone());
    state
        .db
        .write(move |conn| {
            let iss = Issuer {
                issuer: &issuer,
                keys: &keys,
                clock: clock.as_ref(),
                session_timeouts: policy.timeouts,
            };
            if grant == "client_credentials" {
                // The assertion's jti goes in with the issuance's own rows.
                return token::client_credentials(
                    conn, &iss, &ctx, &client, &params, &bases, assertion,
                );
            }
            // The assertion's jti first, outside the issuance's transaction: it stays consumed
            // whatever happens to the grant (a replay is refused and audited as
            // `invalid_client`).
            if let Some(assertion) = assertion {
                assertion
                    .record(conn, clock.as_ref(), &ctx)?
                    .map_err(|error| token::TokenRefusal {
                        error,
                        audited: true,
                    })?;
            }
            match grant.as_str() {
                "authorization_code" => {
                    token::authorization_code(conn, &iss, &ctx, &client, &params)
                }
                _ => token::refresh_token(conn, &iss, &ctx, &client, &params),
            }
        })
        .await
        .map_err(|r: token::TokenRefusal| TokenFailure {
            audited: r.audited,
            ..fail(r.error)
        })
}

// ---------------------------------------------------------------- launch

/// `POST /launch`: an EHR client creates a launch context for an app; answers the opaque,
/// single-use `launch` value.
pub async fn launch(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> HttpResponse {
    respond(launch_inner(&req, &state, &body).await)
}

async fn launch_inner(
    req: &HttpRequest,
    state: &AppState,
    body: &[u8],
) -> Result<Value, OAuthError> {
    if !is_form(req) {
        return Err(OAuthError::invalid_request(
            "the launch request must be application/x-www-form-urlencoded",
        ));
    }
    let params = Params::parse(body)?;
    let ctx = audit_context(req, state);
    let presented = client_auth::presented(authorization_header(req), &params)?;
    if matches!(presented, Presented::None { .. }) {
        return Err(OAuthError::invalid_client("the EHR must authenticate"));
    }
    let audiences = assertion_audiences(state, "launch");
    let ehr = client_auth::authenticate(state, &ctx, presented, "launch", &audiences).await?;
    if !ehr.settings.ehr_launcher {
        return Err(OAuthError::unauthorized_client(
            "this client may not create EHR launches",
        ));
    }
    let target = params.require("target_client_id")?.to_owned();
    let need_banner = match params.get("need_patient_banner") {
        None => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(_) => {
            return Err(OAuthError::invalid_request(
                "need_patient_banner must be true or false",
            ))
        }
    };
    let fhir_context = match params.get("fhirContext") {
        None => None,
        Some(text) => match serde_json::from_str::<Value>(text) {
            Ok(Value::Array(items)) => Some(items),
            _ => {
                return Err(OAuthError::invalid_request(
                    "fhirContext must be a JSON array",
                ))
            }
        },
    };
    let context = LaunchContext {
        patient: params.get("patient").map(str::to_owned),
        encounter: params.get("encounter").map(str::to_owned),
        fhir_context,
        intent: params.get("intent").map(str::to_owned),
        need_patient_banner: need_banner,
        smart_style_url: params.get("smart_style_url").map(str::to_owned),
        tenant: params.get("tenant").map(str::to_owned),
    };
    launch_rules::validate(&context).map_err(OAuthError::invalid_request)?;
    let username = params.get("user").map(str::to_owned);
    let value = crate::crypto::random_token(32);
    let (clock, mut ctx, hash, ehr_id) = (
        state.clock.clone(),
        ctx,
        crate::crypto::sha256_b64(value.as_bytes()),
        ehr.client_id.clone(),
    );
    ctx.actor_client = Some(ehr_id.clone());
    state
        .db
        .run(move |conn| {
            let app = match crate::clients::get(conn, &target) {
                Ok(c) if c.enabled => c,
                Ok(_) | Err(crate::clients::RegistryError::NotFound(_)) => {
                    return Err(OAuthError::invalid_request(
                        "target_client_id is not an enabled app",
                    ))
                }
                Err(crate::clients::RegistryError::Store(e)) => return Err(e.into()),
                Err(other) => return Err(StoreError::Corrupt(other.to_string()).into()),
            };
            if !app
                .settings
                .launch_modes
                .contains(&crate::clients::LaunchMode::Ehr)
            {
                return Err(OAuthError::invalid_request(
                    "the target app is not registered for EHR launch",
                ));
            }
            let user_id = match &username {
                Some(name) => {
                    let normalized = crate::authz::users::normalize_username(name)
                        .map_err(|_| OAuthError::invalid_request("user is not a valid username"))?;
                    match crate::store::credentials::login_user_by_name(conn, &normalized)? {
                        Some(u) => Some(u.id),
                        None => {
                            return Err(OAuthError::invalid_request("user is not known to Ward"))
                        }
                    }
                }
                None => None,
            };
            let now = clock.now_secs();
            let context_json =
                serde_json::to_string(&context).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            write_transaction(conn, |conn| {
                grants::insert_launch(
                    conn,
                    &grants::LaunchRow {
                        id_hash: hash.clone(),
                        client_id: app.client_id.clone(),
                        created_by: ehr_id.clone(),
                        user_id: user_id.clone(),
                        context: context_json.clone(),
                        created_at: now,
                        expires_at: now + authorize::LAUNCH_TTL,
                        used_at: None,
                    },
                )?;
                crate::audit::append(
                    conn,
                    clock.as_ref(),
                    &ctx,
                    &AuditEvent::LaunchCreated {
                        client_id: app.client_id.clone(),
                        for_user: user_id.clone(),
                        patient: context.patient.clone(),
                    },
                )
            })?;
            Ok(json!({ "launch": value, "expires_in": authorize::LAUNCH_TTL }))
        })
        .await
}

// ---------------------------------------------------------------- userinfo

/// The audiences a resource server may learn about: its FHIR bases, never Ward's own admin API
/// (a registration naming it must not let a resource server read admin tokens).
fn resource_audiences(state: &AppState, bases: &[String]) -> Vec<String> {
    let admin = crate::oauth::token::admin_api_audience(&state.issuer);
    bases.iter().filter(|b| **b != admin).cloned().collect()
}

pub(crate) fn bearer(req: &HttpRequest) -> Option<&str> {
    let value = authorization_header(req)?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// `GET|POST /userinfo` (OpenID Connect Core §5.3) with a bearer access token issued with
/// `openid`.
pub async fn userinfo(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let origin = req.headers().get(header::ORIGIN).cloned();
    let mut response = respond(userinfo_inner(&req, &state).await);
    if let Some(origin) = origin {
        // Bearer-token endpoint: no cookies involved, any origin may read its own answer.
        response
            .headers_mut()
            .insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        response
            .headers_mut()
            .insert(header::VARY, HeaderValue::from_static("Origin"));
    }
    response
}

async fn userinfo_inner(req: &HttpRequest, state: &AppState) -> Result<Value, OAuthError> {
    let Some(token) = bearer(req).map(str::to_owned) else {
        return Err(OAuthError::invalid_token(
            "a bearer access token is required",
        ));
    };
    let (keys, issuer, now, timeouts) = (
        state.keys.clone(),
        state.issuer.clone(),
        state.clock.now_secs(),
        state.login.timeouts,
    );
    let found = state
        .db
        .run(move |conn| {
            let Some(live) = resource_server::live_access_token(
                conn, &keys, &issuer, &token, now, timeouts, None,
            )?
            else {
                return Ok::<_, StoreError>(None);
            };
            let user = match &live.row.user_id {
                Some(id) => crate::store::credentials::login_user_by_id(conn, id)?,
                None => None,
            };
            Ok(Some((live, user)))
        })
        .await?;
    let Some((live, user)) = found else {
        return Err(OAuthError::invalid_token("the access token is not valid"));
    };
    let scopes = ScopeSet::parse(&live.claims.scope).0;
    if !scopes.has(IdentityScope::OpenId) {
        return Err(OAuthError::insufficient_scope(
            "the token was not issued with openid",
        ));
    }
    let Some(user) = user else {
        return Err(OAuthError::invalid_token("the access token is not valid"));
    };
    let mut body = json!({ "sub": user.id });
    if scopes.has(IdentityScope::FhirUser) {
        if let Some(f) = &user.fhir_user {
            body["fhirUser"] = json!(f);
        }
    }
    if scopes.has(IdentityScope::Profile) {
        body["name"] = json!(user.display_name);
        body["preferred_username"] = json!(user.username);
    }
    Ok(body)
}

// ---------------------------------------------------------------- end session

/// `GET|POST /logout/oidc` (OpenID Connect RP-Initiated Logout 1.0). With a valid
/// `id_token_hint` for the signed-in user the session ends at once; without one, the person
/// confirms. `post_logout_redirect_uri` must be one of the client's registered redirect URIs.
pub async fn end_session(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse, AppError> {
    let raw: &[u8] = if req.method() == actix_web::http::Method::POST {
        &body
    } else {
        req.query_string().as_bytes()
    };
    let Ok(params) = Params::parse(raw) else {
        return bad_request_page("The sign-out request is malformed.");
    };
    let hint = params
        .get("id_token_hint")
        .and_then(|t| tokens::read_id_hint(&state.keys, t, &state.issuer));
    let client_id = params
        .get("client_id")
        .map(str::to_owned)
        .or_else(|| hint.as_ref().map(|h| h.aud.clone()));
    if let (Some(h), Some(c)) = (&hint, params.get("client_id")) {
        if h.aud != c {
            return bad_request_page("client_id does not match the id_token_hint.");
        }
    }
    let client = match &client_id {
        Some(id) => {
            let id = id.clone();
            state
                .db
                .run(move |conn| match crate::clients::get(conn, &id) {
                    Ok(c) if c.enabled => Ok(Some(c)),
                    Ok(_) => Ok(None),
                    Err(crate::clients::RegistryError::Store(e)) => Err(AppError::from(e)),
                    Err(_) => Ok(None),
                })
                .await?
        }
        None => None,
    };
    let uri = params.get("post_logout_redirect_uri").map(str::to_owned);
    let logout_state = params.get("state").map(str::to_owned);
    let Some(target) = logout_target(client.as_ref(), uri.as_deref(), logout_state.as_deref())
    else {
        return bad_request_page(
            "post_logout_redirect_uri is not registered for this application.",
        );
    };
    let session = current_session(&req, &state).await?;
    let Some(session) = session else {
        return Ok(redirect(&target));
    };
    let hinted_user = hint.as_ref().is_some_and(|h| h.sub == session.user_id);
    if hinted_user {
        return end_and_redirect(&req, &state, session, &target).await;
    }
    let mut response = render(
        StatusCode::OK,
        &LogoutConfirmView {
            csrf: session_csrf(&state, &session),
            client_id: client
                .as_ref()
                .map(|c| c.client_id.clone())
                .unwrap_or_default(),
            uri: uri.unwrap_or_default(),
            state: logout_state.unwrap_or_default(),
            app_name: client.map(|c| c.settings.name),
        },
    )?;
    set_form_action(&mut response, &state, &target);
    Ok(response)
}

/// Where to send the browser after signing out: `/login`, or the app's
/// `post_logout_redirect_uri` when it is one of the (enabled) client's registered redirect URIs.
fn logout_target(
    client: Option<&crate::clients::Client>,
    uri: Option<&str>,
    logout_state: Option<&str>,
) -> Option<String> {
    let Some(uri) = uri else {
        return Some("/login".to_owned());
    };
    let registered = client.is_some_and(|c| c.settings.redirect_uris.iter().any(|r| r == uri));
    if !registered {
        return None;
    }
    Some(match logout_state {
        Some(s) => crate::oauth::authorize_request::redirect_with(uri, &[("state", s)]),
        None => uri.to_owned(),
    })
}

async fn end_and_redirect(
    req: &HttpRequest,
    state: &AppState,
    session: SessionInfo,
    target: &str,
) -> Result<HttpResponse, AppError> {
    let (clock, ctx) = (state.clock.clone(), audit_context(req, state));
    state
        .db
        .run(move |conn| login::end(conn, clock.as_ref(), &ctx, &session, "logout"))
        .await?;
    let mut response = redirect(target);
    response
        .add_cookie(&super::cookies::removal(
            super::cookies::SESSION,
            super::pages::https(state),
        ))
        .map_err(|e| AppError::Internal(e.to_string()))?;
    Ok(response)
}

#[derive(Debug, Deserialize)]
pub struct LogoutConfirm {
    csrf: String,
    #[serde(default)]
    client_id: String,
    #[serde(default)]
    uri: String,
    #[serde(default)]
    state: String,
}

/// `POST /logout/confirm`: the confirmation of an end-session request without a hint. The
/// destination is checked again against that client's registration.
pub async fn end_session_confirm(
    req: HttpRequest,
    state: web::Data<AppState>,
    form: web::Form<LogoutConfirm>,
) -> Result<HttpResponse, AppError> {
    let Some(session) = current_session(&req, &state).await? else {
        return Ok(redirect("/login"));
    };
    if !session_csrf_ok(&state, &session, &form.csrf) || session.stage != Stage::Active {
        return message(
            StatusCode::FORBIDDEN,
            "This form has expired",
            "For your security the form could not be accepted.",
            None,
        );
    }
    let client = if form.client_id.is_empty() {
        None
    } else {
        let id = form.client_id.clone();
        state
            .db
            .run(move |conn| match crate::clients::get(conn, &id) {
                Ok(c) if c.enabled => Ok(Some(c)),
                Ok(_) => Ok(None),
                Err(crate::clients::RegistryError::Store(e)) => Err(AppError::from(e)),
                Err(_) => Ok(None),
            })
            .await?
    };
    let uri = Some(form.uri.as_str()).filter(|u| !u.is_empty());
    let logout_state = Some(form.state.as_str()).filter(|s| !s.is_empty());
    let Some(target) = logout_target(client.as_ref(), uri, logout_state) else {
        return bad_request_page("The sign-out destination is not registered.");
    };
    end_and_redirect(&req, &state, session, &target).await
}

// ---------------------------------------------------------------- resource servers

/// The assertion audiences an endpoint accepts: its own URL, the token endpoint (what SMART
/// client libraries put in `aud`) and the issuer. The per-client jti cache stops cross-endpoint
/// replay.
fn assertion_audiences(state: &AppState, endpoint: &str) -> Vec<String> {
    vec![
        state.url(&format!("/{endpoint}")),
        state.url("/token"),
        state.issuer.to_string(),
    ]
}

async fn audit_refusal(
    state: &AppState,
    ctx: &crate::audit::AuditContext,
    event: AuditEvent,
) -> Result<(), OAuthError> {
    let (clock, ctx) = (state.clock.clone(), ctx.clone());
    state
        .db
        .run(move |conn| {
            write_transaction(conn, |conn| {
                crate::audit::append(conn, clock.as_ref(), &ctx, &event)
            })
        })
        .await?;
    Ok(())
}

/// Authenticates the caller of a resource-server endpoint; only resource-server clients may
/// introspect or ask the policy check. Refusals are audited.
async fn resource_server_caller(
    req: &HttpRequest,
    state: &AppState,
    params: &Params,
    endpoint: &str,
) -> Result<crate::clients::Client, OAuthError> {
    let ctx = audit_context(req, state);
    let refuse = |client_id: Option<String>, reason: &str| AuditEvent::ClientAuthenticationFailed {
        client_id,
        endpoint: endpoint.to_owned(),
        reason: reason.to_owned(),
    };
    let presented = client_auth::presented(authorization_header(req), params)?;
    if matches!(presented, Presented::None { .. }) {
        audit_refusal(
            state,
            &ctx,
            refuse(
                presented.client_id().map(str::to_owned),
                "no client authentication",
            ),
        )
        .await?;
        return Err(OAuthError::invalid_client(
            "resource servers must authenticate",
        ));
    }
    let audiences = assertion_audiences(state, endpoint);
    let caller = client_auth::authenticate(state, &ctx, presented, endpoint, &audiences).await?;
    if caller.settings.kind != crate::clients::ClientKind::ResourceServer {
        audit_refusal(
            state,
            &ctx,
            refuse(
                Some(caller.client_id.clone()),
                "not a resource-server client",
            ),
        )
        .await?;
        return Err(OAuthError::invalid_client(
            "only resource-server clients may use this endpoint",
        ));
    }
    Ok(caller)
}

fn form_params(req: &HttpRequest, body: &[u8], what: &str) -> Result<Params, OAuthError> {
    if !is_form(req) {
        return Err(OAuthError::invalid_request(format!(
            "the {what} request must be application/x-www-form-urlencoded"
        )));
    }
    Params::parse(body)
}

/// What a resource server learns about a token, decided and audited in one transaction.
enum Answer {
    Live(Box<resource_server::LiveToken>),
    /// One of Ward's tokens, but not live for this caller (revoked, expired, other audience).
    Inactive {
        client_id: String,
        family: Option<String>,
    },
    /// Not a token Ward signed.
    Unknown,
}

/// Reads a token for a resource server and appends `audit(answer)` in the same transaction, so
/// the answer and its record commit together. Garbage is answered without a write.
async fn answer_for(
    state: &AppState,
    caller: &crate::clients::Client,
    token: &str,
    audit: impl Fn(&Answer) -> Option<AuditEvent> + Send + 'static,
    ctx: crate::audit::AuditContext,
) -> Result<Answer, OAuthError> {
    let now = state.clock.now_secs();
    let (keys, issuer, timeouts, bases, clock, token) = (
        state.keys.clone(),
        state.issuer.clone(),
        state.login.timeouts,
        resource_audiences(state, &caller.settings.fhir_bases),
        state.clock.clone(),
        token.to_owned(),
    );
    Ok(state
        .db
        .run(move |conn| {
            // Signature first, on this blocking thread: a token that is not even Ward's gets no
            // database work and no audit row.
            let claims = match tokens::read_access(&keys, &token, &issuer, now) {
                Ok(c) => c,
                // Expired but signed by Ward: read again as of the beginning of time for the
                // claims (the signature was checked either way).
                Err(tokens::ReadError::Expired) => {
                    match tokens::read_access(&keys, &token, &issuer, i64::MIN) {
                        Ok(c) => c,
                        Err(_) => return Ok(Answer::Unknown),
                    }
                }
                Err(_) => return Ok(Answer::Unknown),
            };
            write_transaction(conn, |conn| {
                let live = resource_server::live_access_token(
                    conn,
                    &keys,
                    &issuer,
                    &token,
                    now,
                    timeouts,
                    Some(&bases),
                )?;
                let answer = match live {
                    Some(l) => Answer::Live(Box::new(l)),
                    None => {
                        // Only the caller's own audience reveals the family.
                        let family = if bases.contains(&claims.aud) {
                            grants::find_access_token(conn, &claims.jti)?.map(|(_, f)| f.id)
                        } else {
                            None
                        };
                        Answer::Inactive {
                            client_id: claims.client_id.clone(),
                            family,
                        }
                    }
                };
                if let Some(event) = audit(&answer) {
                    crate::audit::append(conn, clock.as_ref(), &ctx, &event)?;
                }
                Ok::<_, StoreError>(answer)
            })
        })
        .await?)
}

/// `POST /introspect` (RFC 7662).
pub async fn introspect(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> HttpResponse {
    match introspect_inner(&req, &state, &body).await {
        Ok(answer) => HttpResponse::Ok()
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .insert_header((header::PRAGMA, "no-cache"))
            .content_type("application/json")
            .body(answer),
        Err(e) => e.response(),
    }
}

/// The serialized answer: from this node's cache of verified tokens when it holds the token
/// and may be trusted (`crate::coherence`), otherwise from the database.
async fn introspect_inner(
    req: &HttpRequest,
    state: &AppState,
    body: &[u8],
) -> Result<web::Bytes, OAuthError> {
    let params = form_params(req, body, "introspection")?;
    let caller = resource_server_caller(req, state, &params, "introspect").await?;
    let token = params.require("token")?.to_owned();
    let bases = resource_audiences(state, &caller.settings.fhir_bases);
    let audit_all = state.settings.audit.introspection == crate::config::IntrospectionAudit::All;
    let hash = crate::crypto::sha256(token.as_bytes());
    let inactive = || web::Bytes::from_static(br#"{"active":false}"#);
    if state.coherence.is_dead(&hash) {
        return Ok(inactive());
    }
    // With the `all` policy every introspection is a recorded disclosure: no shortcut.
    if !audit_all {
        if let Some(cached) = state.coherence.token(&hash) {
            // Another audience's token goes the long way (signature check, no database), so
            // timing does not tell a resource server whether someone else's token is cached.
            if state.clock.now_secs() < cached.valid_until && bases.contains(&cached.aud) {
                return Ok(cached.body);
            }
        }
    }
    let (keys, issuer, now, timeouts) = (
        state.keys.clone(),
        state.issuer.clone(),
        state.clock.now_secs(),
        state.login.timeouts,
    );
    let (clock, mut ctx) = (state.clock.clone(), audit_context(req, state));
    ctx.actor_client = Some(caller.client_id.clone());
    // Read before the database: a change that commits meanwhile keeps the answer uncached.
    let epoch = state.coherence.epoch();
    let check = state
        .db
        .run(move |conn| {
            let check = resource_server::check_access_token(
                conn,
                &keys,
                &issuer,
                &token,
                now,
                timeouts,
                Some(&bases),
            )?;
            let TokenCheck::Live(live) = check else {
                return Ok::<_, StoreError>((check, false));
            };
            // The audit policy (DESIGN.md §8): the first introspection of each token is a
            // disclosure worth a record; AI tools' tokens (and everything, with `all`) every
            // time. Later introspections are reads only.
            let every_time = audit_all || live.ai_tool;
            if !every_time && live.row.introspected_at.is_some() {
                return Ok((TokenCheck::Live(live), true));
            }
            write_transaction(conn, |conn| {
                // Decide again inside the transaction: the answer and its record commit together.
                let check = resource_server::check_access_token(
                    conn,
                    &keys,
                    &issuer,
                    &token,
                    now,
                    timeouts,
                    Some(&bases),
                )?;
                let TokenCheck::Live(live) = check else {
                    return Ok((check, false));
                };
                let first = grants::mark_introspected(conn, &live.row.jti, now)?;
                if every_time || first {
                    crate::audit::append(
                        conn,
                        clock.as_ref(),
                        &ctx,
                        &AuditEvent::TokenIntrospected {
                            client_id: live.claims.client_id.clone(),
                            family: Some(live.family.id.clone()),
                            patient: live.context.patient.clone(),
                        },
                    )?;
                }
                Ok((TokenCheck::Live(live), !every_time))
            })
        })
        .await?;
    Ok(match check {
        (TokenCheck::Live(live), cacheable) => {
            let answer = web::Bytes::from(
                serde_json::to_vec(&resource_server::introspection(&live))
                    .map_err(|e| OAuthError::server_error(e.to_string()))?,
            );
            if cacheable {
                state
                    .coherence
                    .remember_token(hash, cached_token(&live, answer.clone()), epoch);
            }
            answer
        }
        (TokenCheck::Dead, _) => {
            state.coherence.remember_dead(hash);
            inactive()
        }
        (TokenCheck::Inactive, _) => inactive(),
    })
}

/// What the cache keeps of a live token: its answer and everything that could end it.
fn cached_token(
    live: &resource_server::LiveToken,
    body: web::Bytes,
) -> crate::coherence::CachedToken {
    crate::coherence::CachedToken {
        body,
        aud: live.claims.aud.clone(),
        valid_until: live.valid_until,
        jti: live.row.jti.clone(),
        family: live.family.id.clone(),
        client: live.row.client_id.clone(),
        user: live.row.user_id.clone(),
        session: live.family.session_id.clone(),
        loaded_at: std::time::Instant::now(),
    }
}

/// `POST /revoke` (RFC 7009): a refresh token revokes its family (and so its access tokens);
/// an access token revokes itself. Unknown tokens and other clients' tokens change nothing and
/// get the same 200, so the endpoint cannot be used to test tokens (an attempt on another
/// client's token is audited: it suggests a stolen token).
pub async fn revoke(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> HttpResponse {
    let mut client = None;
    let result = revoke_inner(&req, &state, &body, &mut client).await;
    let origin = allow_origin(&req, client.as_ref());
    match result {
        Ok(()) => with_cors(
            HttpResponse::Ok()
                .insert_header((header::CACHE_CONTROL, "no-store"))
                .finish(),
            origin,
        ),
        Err(e) => with_cors(e.response(), origin),
    }
}

async fn revoke_inner(
    req: &HttpRequest,
    state: &AppState,
    body: &[u8],
    client_out: &mut Option<crate::clients::Client>,
) -> Result<(), OAuthError> {
    let params = form_params(req, body, "revocation")?;
    let presented = client_auth::presented(authorization_header(req), &params)?;
    let audiences = assertion_audiences(state, "revoke");
    let mut ctx = audit_context(req, state);
    let client = client_auth::authenticate(state, &ctx, presented, "revoke", &audiences).await?;
    *client_out = Some(client.clone());
    ctx.actor_client = Some(client.client_id.clone());
    let token = params.require("token")?.to_owned();
    let (keys, issuer, clock) = (
        state.keys.clone(),
        state.issuer.clone(),
        state.clock.clone(),
    );
    state
        .db
        .run(move |conn| {
            let now = clock.now_secs();
            let audit = |conn: &mut crate::store::DbConnection, event: AuditEvent| {
                crate::audit::append(conn, clock.as_ref(), &ctx, &event)
            };
            let (family, revoke_access) = if token.split('.').count() == 3 {
                // An access token: ours (signature checked; an expired one needs no revoking).
                let Ok(claims) = tokens::read_access(&keys, &token, &issuer, now) else {
                    return Ok(());
                };
                let Some((row, family)) = grants::find_access_token(conn, &claims.jti)? else {
                    return Ok(());
                };
                (family, Some(row.jti))
            } else {
                let hash = crate::crypto::sha256_b64(token.as_bytes());
                let Some((_, family)) = grants::find_refresh_with_family(conn, &hash)? else {
                    return Ok(());
                };
                (family, None)
            };
            write_transaction(conn, |conn| {
                if family.client_id != client.client_id {
                    return audit(
                        conn,
                        AuditEvent::TokenRevocationRefused {
                            client_id: client.client_id.clone(),
                            family: family.id.clone(),
                            reason: "the token belongs to another client".into(),
                        },
                    );
                }
                let (changed, reason) = match &revoke_access {
                    Some(jti) => (
                        grants::revoke_access_token(conn, jti, now)?,
                        "access_token_revoked_by_client",
                    ),
                    None => (
                        grants::revoke_family(conn, &family.id, "revoked_by_client", now)?,
                        "revoked_by_client",
                    ),
                };
                if changed {
                    crate::fault::point(crate::fault::Point::RevokeBeforeAudit)?;
                    audit(
                        conn,
                        AuditEvent::TokenRevoked {
                            client_id: client.client_id.clone(),
                            family: family.id.clone(),
                            reason: reason.into(),
                        },
                    )?;
                }
                Ok::<_, StoreError>(())
            })
        })
        .await?;
    Ok(())
}

/// `POST /policy/check`: may this token do this FHIR request? Form fields `token`, `method`,
/// `url` (relative to the FHIR base) and, for writes, `resource` (the JSON body). Every
/// decision is audited with the request's method and resource type.
pub async fn policy_check(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> HttpResponse {
    respond(policy_inner(&req, &state, &body).await)
}

async fn policy_inner(
    req: &HttpRequest,
    state: &AppState,
    body: &[u8],
) -> Result<Value, OAuthError> {
    use crate::smart::policy::{check, Decision, FhirRequest};
    let params = form_params(req, body, "policy check")?;
    let caller = resource_server_caller(req, state, &params, "policy/check").await?;
    let token = params.require("token")?;
    let method = params.require("method")?;
    let url = params.require("url")?;
    let resource = match params.get("resource") {
        None => None,
        Some(text) => Some(
            serde_json::from_str::<Value>(text)
                .map_err(|_| OAuthError::invalid_request("resource is not JSON"))?,
        ),
    };
    let request = FhirRequest::parse(method, url, resource.as_ref()).map_err(|e| {
        OAuthError::invalid_request(crate::oauth::error::truncate(&e.to_string(), 200))
    })?;
    let label = format!(
        "{} {}",
        method.to_ascii_uppercase(),
        request.resource_type()
    );
    let decide = move |answer: &Answer| -> Decision {
        match answer {
            Answer::Live(live) => {
                let granted = ScopeSet::parse(&live.claims.scope).0;
                check(&granted, live.context.patient.as_deref(), &request)
            }
            _ => Decision::Deny {
                reason: "the token is not active for this server".into(),
            },
        }
    };
    let decide_for_audit = decide.clone();
    let mut ctx = audit_context(req, state);
    ctx.actor_client = Some(caller.client_id.clone());
    let answer = answer_for(
        state,
        &caller,
        token,
        move |answer| {
            let decision = decide_for_audit(answer).to_json();
            let (client_id, family, patient) = match answer {
                Answer::Live(l) => (
                    l.claims.client_id.clone(),
                    Some(l.family.id.clone()),
                    l.context.patient.clone(),
                ),
                Answer::Inactive { client_id, family } => (client_id.clone(), family.clone(), None),
                Answer::Unknown => (String::new(), None, None),
            };
            Some(AuditEvent::PolicyChecked {
                client_id,
                family,
                request: label.clone(),
                decision: decision["decision"].as_str().unwrap_or_default().to_owned(),
                scope: decision["scope"].as_str().map(str::to_owned),
                patient,
            })
        },
        ctx,
    )
    .await?;
    Ok(decide(&answer).to_json())
}
