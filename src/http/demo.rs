//! Demo mode's pages (`ward serve --demo` only; 404 otherwise): the sample SMART app, what a
//! FHIR server's introspection says about its token, and the mini-EHR that launches it.
//!
//! The sample app is served from the listen address's own origin (`http://127.0.0.1:PORT`),
//! while Ward's pages live at its public URL (`http://localhost:PORT`): two origins, as a real
//! third-party app and its authorization server would be. It talks to Ward only through
//! discovery, `/authorize` and `/token` (CORS), like any app. The mini-EHR creates launches
//! through `POST /launch` over HTTP, as the demo EHR client.

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use askama::Template;
use serde::Deserialize;
use serde_json::{json, Value};

use super::pages::{current_session, message, redirect, render, session_csrf, session_csrf_ok};
use crate::app::AppState;
use crate::authn::session::Stage;
use crate::demo::{self, DemoState};
use crate::error::AppError;
use crate::patients::PatientSummary;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/demo/app", web::get().to(app_get))
        .route("/demo/introspect", web::post().to(introspect_post))
        .route("/demo/ehr", web::get().to(ehr_get))
        .route("/demo/ehr/launch", web::post().to(ehr_launch_post))
        .route("/static/demo-app.js", web::get().to(script_get));
}

fn demo_of(state: &AppState) -> Result<&DemoState, AppError> {
    state.demo.as_deref().ok_or(AppError::NotFound)
}

#[derive(Template)]
#[template(path = "demo_app.html")]
struct DemoAppView {
    fhir_base: String,
    client_id: String,
    redirect_uri: String,
    ehr_url: String,
}

pub async fn app_get(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let demo = demo_of(&state)?;
    // The app lives on its own origin; opened under Ward's name it would lose its PKCE state
    // on the way back, so send the browser to the right place.
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    if !demo.app_origin.ends_with(&format!("//{host}")) {
        let target = match req.query_string() {
            "" => demo.app_url(),
            q => format!("{}?{q}", demo.app_url()),
        };
        return Ok(redirect(&target));
    }
    let mut response = render(
        StatusCode::OK,
        &DemoAppView {
            fhir_base: demo.fhir_base.clone(),
            client_id: demo::APP_CLIENT.into(),
            redirect_uri: demo.app_url(),
            ehr_url: state.url("/demo/ehr"),
        },
    )?;
    // The app's script may call Ward's public origin (discovery, /token): nothing else.
    let csp = format!(
        "default-src 'self'; connect-src 'self' {}; frame-ancestors 'none'; base-uri 'none'; object-src 'none'; form-action 'self'",
        origin_of(&state.issuer)
    );
    if let Ok(value) = header::HeaderValue::from_str(&csp) {
        response
            .headers_mut()
            .insert(header::CONTENT_SECURITY_POLICY, value);
    }
    Ok(response)
}

fn origin_of(url: &str) -> String {
    url::Url::parse(url)
        .map(|u| u.origin().ascii_serialization())
        .unwrap_or_default()
}

pub async fn script_get(state: web::Data<AppState>) -> Result<HttpResponse, AppError> {
    demo_of(&state)?;
    Ok(HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(include_str!("../../static/demo-app.js")))
}

#[derive(Deserialize)]
pub struct IntrospectBody {
    token: String,
}

/// What the demo FHIR server would learn: a real `POST /introspect` as the demo EHR's client.
pub async fn introspect_post(
    state: web::Data<AppState>,
    body: web::Json<IntrospectBody>,
) -> Result<HttpResponse, AppError> {
    let demo = demo_of(&state)?;
    let answer = http_client()?
        .post(state.url("/introspect"))
        .basic_auth(demo::EHR_CLIENT, Some(&demo.ehr_secret))
        .form(&[("token", body.token.as_str())])
        .send()
        .await
        .map_err(|e| AppError::Unavailable(e.to_string()))?
        .json::<Value>()
        .await
        .map_err(|e| AppError::Unavailable(e.to_string()))?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(answer))
}

/// The client the demo pages use to call Ward's own endpoints over HTTP, as an EHR or a FHIR
/// server would (built once; rustls on ring, like every other TLS in Ward).
fn http_client() -> Result<reqwest::Client, AppError> {
    static CLIENT: std::sync::OnceLock<Result<reqwest::Client, String>> =
        std::sync::OnceLock::new();
    CLIENT
        .get_or_init(|| {
            #[allow(deprecated)]
            let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
            let roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            let tls = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots)
                .with_no_client_auth();
            reqwest::Client::builder()
                .use_preconfigured_tls(tls)
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(std::time::Duration::from_secs(5))
                .build()
                .map_err(|e| e.to_string())
        })
        .clone()
        .map_err(AppError::Internal)
}

#[derive(Template)]
#[template(path = "demo_ehr.html")]
struct EhrView {
    csrf: String,
    user: String,
    ehr_client: String,
    patients: Vec<PatientSummary>,
}

/// Whether the user's roles let them work with other people's records (a `user/` ceiling), as
/// an EHR's clinical users do; patients and admins have no business in the mini-EHR.
async fn clinical_user(state: &AppState, user_id: &str) -> Result<bool, AppError> {
    let user_id = user_id.to_owned();
    Ok(state
        .db
        .run(move |conn| {
            let roles = crate::store::users::roles_of(conn, &user_id)?;
            Ok::<_, crate::store::StoreError>(
                crate::store::roles::find_many(conn, &roles)?
                    .iter()
                    .any(|r| {
                        r.scope_ceiling
                            .split_whitespace()
                            .any(|s| s.starts_with("user/"))
                    }),
            )
        })
        .await?)
}

/// The signed-in clinician, or the answer for anyone else (sign in first; not for patients or
/// admins).
async fn clinician_session(
    req: &HttpRequest,
    state: &AppState,
) -> Result<Result<crate::authn::login::SessionInfo, HttpResponse>, AppError> {
    let session = match current_session(req, state).await? {
        Some(s) if s.stage == Stage::Active => s,
        _ => return Ok(Err(redirect("/login?return_to=%2Fdemo%2Fehr"))),
    };
    if !clinical_user(state, &session.user_id).await? {
        return Ok(Err(message(
            StatusCode::FORBIDDEN,
            "For clinicians",
            "The mini-EHR is for clinical users (a role with user/ scopes), such as dr.demo.",
            Some(("/account", "Your account")),
        )?));
    }
    Ok(Ok(session))
}

pub async fn ehr_get(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let demo = demo_of(&state)?;
    let session = match clinician_session(&req, &state).await? {
        Ok(s) => s,
        Err(answer) => return Ok(answer),
    };
    let patients = state
        .db
        .run(|conn| crate::store::patients::page(conn, 50, 0))
        .await?
        .into_iter()
        .map(PatientSummary::from)
        .collect();
    let mut response = render(
        StatusCode::OK,
        &EhrView {
            csrf: session_csrf(&state, &session),
            user: session.display_name.clone(),
            ehr_client: demo::EHR_CLIENT.into(),
            patients,
        },
    )?;
    // The launch form's redirect ends at the sample app's origin.
    let csp = format!(
        "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'; form-action 'self' {}",
        demo.app_origin
    );
    if let Ok(value) = header::HeaderValue::from_str(&csp) {
        response
            .headers_mut()
            .insert(header::CONTENT_SECURITY_POLICY, value);
    }
    Ok(response)
}

#[derive(Deserialize)]
pub struct LaunchForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    patient: String,
}

pub async fn ehr_launch_post(
    req: HttpRequest,
    state: web::Data<AppState>,
    form: web::Form<LaunchForm>,
) -> Result<HttpResponse, AppError> {
    let demo = demo_of(&state)?;
    let session = match clinician_session(&req, &state).await? {
        Ok(s) => s,
        Err(answer) => return Ok(answer),
    };
    if !session_csrf_ok(&state, &session, &form.csrf) {
        return message(
            StatusCode::FORBIDDEN,
            "This form has expired",
            "Reload the mini-EHR and try again.",
            Some(("/demo/ehr", "Mini-EHR")),
        );
    }
    // The EHR's own call: POST /launch as the demo EHR client, over HTTP like any EHR.
    let response = http_client()?
        .post(state.url("/launch"))
        .basic_auth(demo::EHR_CLIENT, Some(&demo.ehr_secret))
        .form(&[
            ("target_client_id", demo::APP_CLIENT),
            ("patient", form.patient.as_str()),
            ("user", session.username.as_str()),
        ])
        .send()
        .await
        .map_err(|e| AppError::Unavailable(e.to_string()))?;
    let status = response.status();
    let body: Value = response
        .json()
        .await
        .map_err(|e| AppError::Unavailable(e.to_string()))?;
    let Some(launch) = body["launch"].as_str().filter(|_| status.is_success()) else {
        return message(
            StatusCode::BAD_REQUEST,
            "Launch refused",
            &format!("Ward refused the launch: {}", json!(body)),
            Some(("/demo/ehr", "Mini-EHR")),
        );
    };
    let query = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("iss", &demo.fhir_base)
        .append_pair("launch", launch)
        .finish();
    Ok(redirect(&format!("{}?{query}", demo.app_url())))
}
