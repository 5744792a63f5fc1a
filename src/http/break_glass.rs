//! `/authorize/break-glass`: the emergency-access form of a pending authorization request
//! (GET shows it, POST invokes). Thin: the rules are `oauth::break_glass`.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;

use super::oauth::{
    bad_request_page, continue_url, expired_request, load_flow, refuse, step_of, Flow,
};
use super::pages::{audit_context, message, redirect, render, session_csrf, session_csrf_ok};
use super::views::{BreakGlassDoneView, BreakGlassView};
use crate::app::AppState;
use crate::authn::session::Stage;
use crate::error::AppError;
use crate::oauth::authorize::{self, Step};
use crate::oauth::break_glass::{self, Invocation, Origin, Refusal};
use crate::patients;

#[derive(Debug, Deserialize)]
pub struct BreakGlassQuery {
    request: String,
    patient: Option<String>,
}

/// The patient the form is for, and where the person stands: the patient in context on the
/// consent page, or a patient the picker showed.
enum Place {
    Consent(Option<String>),
    Picker(Vec<String>),
    /// Not (or no longer) at the consent page or the picker: carry on with the request.
    Elsewhere(Step),
}

fn place(flow: &Flow, now: i64) -> Place {
    match step_of(flow, now) {
        Step::Consent { patient, .. } | Step::Approve { patient, .. } => Place::Consent(patient),
        Step::PickPatient => Place::Picker(flow.pending.offered.clone()),
        other => Place::Elsewhere(other),
    }
}

fn origin(place: &Place) -> Origin<'_> {
    match place {
        Place::Consent(patient) => Origin::Consent {
            patient: patient.as_deref(),
        },
        Place::Picker(offered) => Origin::Picker { offered },
        Place::Elsewhere(_) => Origin::Consent { patient: None },
    }
}

async fn form_page(
    state: &AppState,
    flow: &Flow,
    handle: &str,
    patient_id: &str,
    error: Option<(StatusCode, String)>,
) -> Result<HttpResponse, AppError> {
    let (Some(session), Some(subject)) = (&flow.session, &flow.subject) else {
        return expired_request();
    };
    let lookup = patient_id.to_owned();
    let patient = state
        .db
        .run(move |conn| patients::get(conn, &lookup))
        .await?;
    let scopes = authorize::break_glass_candidate(&flow.pending).to_string();
    let (status, error) = match error {
        Some((status, text)) => (status, Some(text)),
        None => (StatusCode::OK, None),
    };
    render(
        status,
        &BreakGlassView {
            csrf: session_csrf(state, session),
            request: handle.to_owned(),
            app_name: flow.pending.client.settings.name.clone(),
            user_name: subject.display_name.clone(),
            patient,
            patient_id: patient_id.to_owned(),
            scopes,
            error,
            minutes: authorize::BREAK_GLASS_TOKEN_LIFETIME
                .min(flow.pending.client.settings.access_token_lifetime)
                / 60,
            min_chars: break_glass::REASON_MIN_CHARS,
            max_chars: break_glass::REASON_MAX_CHARS,
        },
    )
}

fn not_offered() -> Result<HttpResponse, AppError> {
    message(
        StatusCode::FORBIDDEN,
        "Emergency access is not available",
        "Emergency access is not available to you for this app and patient. Go back to the app and start again.",
        None,
    )
}

/// `GET /authorize/break-glass?request=…[&patient=…]`: the form (no decision is made here).
pub async fn break_glass_get(
    req: HttpRequest,
    state: web::Data<AppState>,
    query: web::Query<BreakGlassQuery>,
) -> Result<HttpResponse, AppError> {
    let Some(flow) = load_flow(&req, &state, &query.request).await? else {
        return expired_request();
    };
    let place = place(&flow, state.clock.now_secs());
    let patient = match &place {
        Place::Elsewhere(_) => return Ok(redirect(&continue_url(&query.request))),
        Place::Consent(p) => p.clone(),
        Place::Picker(offered) => query.patient.clone().filter(|p| offered.contains(p)),
    };
    let offered = flow
        .subject
        .as_ref()
        .is_some_and(|s| break_glass::offered(s, &flow.pending.client));
    let Some(patient) = patient.filter(|_| offered) else {
        return not_offered();
    };
    form_page(&state, &flow, &query.request, &patient, None).await
}

#[derive(Debug, Deserialize)]
pub struct BreakGlassForm {
    #[serde(default)]
    csrf: String,
    request: String,
    #[serde(default)]
    patient: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    code: String,
}

fn status_of(refusal: &Refusal) -> StatusCode {
    match refusal {
        Refusal::NotPermitted | Refusal::ClientExcluded | Refusal::Csrf => StatusCode::FORBIDDEN,
        Refusal::SecondFactor(_) => StatusCode::UNAUTHORIZED,
        Refusal::BadReason | Refusal::BadPatient | Refusal::NothingToGrant => {
            StatusCode::BAD_REQUEST
        }
        Refusal::RequestCompleted => StatusCode::CONFLICT,
    }
}

/// `POST /authorize/break-glass`: invoke emergency access. Every decision here appends exactly
/// one audit event (`break_glass.invoked` or `break_glass.refused`).
pub async fn break_glass_post(
    req: HttpRequest,
    state: web::Data<AppState>,
    form: web::Form<BreakGlassForm>,
) -> Result<HttpResponse, AppError> {
    let form = form.into_inner();
    let Some(flow) = load_flow(&req, &state, &form.request).await? else {
        return expired_request();
    };
    let Some(session) = flow.session.clone().filter(|s| s.stage == Stage::Active) else {
        return Ok(redirect(&continue_url(&form.request)));
    };
    let client_id = flow.pending.client.client_id.clone();
    let mut ctx = audit_context(&req, &state);
    ctx.actor_user = Some(session.user_id.clone());
    ctx.actor_client = Some(client_id.clone());
    // `patient`: only one this request may name (see `break_glass::patient_allowed`).
    let record = |refusal: Refusal, patient: Option<String>| {
        let (state, ctx, client_id) = (state.clone(), ctx.clone(), client_id.clone());
        async move {
            let (clock, r) = (state.clock.clone(), refusal.clone());
            state
                .db
                .run(move |conn| {
                    break_glass::refuse(
                        conn,
                        clock.as_ref(),
                        &ctx,
                        &client_id,
                        patient.as_deref(),
                        &r,
                    )
                })
                .await?;
            Ok::<_, AppError>(refusal)
        }
    };
    if !session_csrf_ok(&state, &session, &form.csrf) {
        let refusal = record(Refusal::Csrf, None).await?;
        return message(
            status_of(&refusal),
            "This form has expired",
            &refusal.message(),
            None,
        );
    }
    let place = place(&flow, state.clock.now_secs());
    match &place {
        Place::Elsewhere(Step::Fail(error)) => {
            return refuse(
                &req,
                &state,
                flow.pending.clone(),
                Some(session.user_id.clone()),
                error.clone(),
            )
            .await
        }
        Place::Elsewhere(_) => return Ok(redirect(&continue_url(&form.request))),
        Place::Consent(_) | Place::Picker(_) => {}
    }
    let Some(subject) = flow.subject.clone() else {
        return expired_request();
    };
    let decision = match break_glass::decide(
        &flow.pending,
        &subject,
        origin(&place),
        &form.patient,
        &form.reason,
    ) {
        Ok(d) => d,
        Err(refusal) => {
            let patient = break_glass::patient_allowed(origin(&place), &form.patient)
                .then(|| form.patient.clone());
            let refusal = record(refusal, patient).await?;
            return refused_page(&state, &flow, &form, &refusal).await;
        }
    };
    let (clock, sealer, policy, issuer) = (
        state.clock.clone(),
        state.sealer.clone(),
        state.login,
        state.issuer.clone(),
    );
    let code: String = form.code.trim().chars().take(32).collect();
    let (pending, patient) = (flow.pending.clone(), decision.patient.clone());
    let outcome = state
        .db
        .run(move |conn| {
            break_glass::invoke(
                conn,
                clock.as_ref(),
                &sealer,
                &policy,
                &ctx,
                Invocation {
                    pending: &pending,
                    session: &session,
                    subject: &subject,
                    decision,
                    code: &code,
                    issuer: &issuer,
                },
            )
        })
        .await;
    match outcome {
        Ok(Ok(Some(approval))) => render(
            StatusCode::OK,
            &BreakGlassDoneView {
                app_name: flow.pending.client.settings.name.clone(),
                patient,
                redirect: approval.redirect,
                minutes: authorize::BREAK_GLASS_TOKEN_LIFETIME
                    .min(flow.pending.client.settings.access_token_lifetime)
                    / 60,
            },
        ),
        Ok(Ok(None)) => expired_request(),
        Ok(Err(refusal)) => refused_page(&state, &flow, &form, &refusal).await,
        Err(e) => Err(AppError::from(e)),
    }
}

async fn refused_page(
    state: &AppState,
    flow: &Flow,
    form: &BreakGlassForm,
    refusal: &Refusal,
) -> Result<HttpResponse, AppError> {
    match refusal {
        // The person may correct these on the form.
        Refusal::BadReason | Refusal::SecondFactor(_) => {
            form_page(
                state,
                flow,
                &form.request,
                &form.patient,
                Some((status_of(refusal), refusal.message())),
            )
            .await
        }
        Refusal::BadPatient | Refusal::NothingToGrant | Refusal::RequestCompleted => {
            bad_request_page(&refusal.message())
        }
        Refusal::NotPermitted | Refusal::ClientExcluded | Refusal::Csrf => message(
            status_of(refusal),
            "Emergency access refused",
            &refusal.message(),
            None,
        ),
    }
}
