//! The one middleware around every request: a request id, a tracing span, the body-size gate,
//! security headers (DESIGN.md §10) and metrics.
//!
//! Logs name the route pattern, never the raw path or query (a query can carry a code or
//! token), and never headers or bodies.

use std::time::Instant;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{web, Error, HttpMessage, HttpResponse};
use serde_json::json;
use tracing::Instrument;

use crate::app::AppState;
use crate::crypto::random_token;

/// The request id, available to handlers through request extensions.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

pub async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, Error> {
    let started = Instant::now();
    let request_id = random_token(12);
    req.extensions_mut().insert(RequestId(request_id.clone()));
    let state = req.app_data::<web::Data<AppState>>().cloned();
    let method = req.method().to_string();
    let span = tracing::info_span!("request", request_id = %request_id, method = %method);

    let limit = state
        .as_ref()
        .map(|s| s.settings.server.max_body_bytes)
        .unwrap_or(64 * 1024);
    let response = if declared_length(&req).is_some_and(|len| len > limit) {
        // Refuse before reading a byte; extractors also enforce the limit on chunked bodies.
        let response = HttpResponse::PayloadTooLarge()
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .json(json!({
                "error": "invalid_request",
                "error_description": format!("request body larger than {limit} bytes")
            }));
        req.into_response(response).map_into_right_body()
    } else if let Some(demo) = state.as_ref().and_then(|s| s.demo.as_ref()).filter(|d| {
        !d.host_allowed(
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or_default(),
        )
    }) {
        // Demo mode's passwords are published: answer only loopback names (a page that
        // rebinds its own domain to 127.0.0.1 gets nothing).
        let response = HttpResponse::Forbidden()
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .content_type("text/plain; charset=utf-8")
            .body(format!(
                "Ward's demo mode answers only {}.",
                demo.hosts.join(", ")
            ));
        req.into_response(response).map_into_right_body()
    } else {
        next.call(req)
            .instrument(span.clone())
            .await?
            .map_into_left_body()
    };

    let mut response = as_page_for_browsers(response);
    let path = response.request().path().to_owned();
    let launch_page = ["/login", "/authorize", "/logout/oidc"]
        .iter()
        .any(|p| path == *p || path.starts_with(&format!("{p}/")));
    if launch_page
        && !response
            .headers()
            .contains_key(header::CONTENT_SECURITY_POLICY)
    {
        let origins = state
            .as_ref()
            .map(|s| s.ehr_origins.as_slice())
            .unwrap_or(&[]);
        if let Ok(csp) = HeaderValue::from_str(&launch_page_csp(
            origins,
            path.starts_with("/authorize"),
            &[],
        )) {
            response
                .headers_mut()
                .insert(header::CONTENT_SECURITY_POLICY, csp);
        }
    }
    let https = state
        .as_ref()
        .is_some_and(|s| s.settings.served_over_https());
    add_security_headers(response.headers_mut(), https);
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response
            .headers_mut()
            .insert(HeaderName::from_static("x-request-id"), value);
    }

    let route = response
        .request()
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_owned());
    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    if let Some(state) = &state {
        state
            .metrics
            .observe(&method, &route, status, elapsed.as_secs_f64());
    }
    span.in_scope(|| {
        tracing::info!(
            route = %route,
            status,
            latency_ms = elapsed.as_secs_f64() * 1000.0,
            "request finished"
        )
    });
    Ok(response)
}

/// A browser asking for a page gets an error *page* (the same status, and `Retry-After` kept),
/// not the JSON body API clients get: one place for every handler's errors.
fn as_page_for_browsers<B: MessageBody + 'static>(
    response: ServiceResponse<EitherBody<B>>,
) -> ServiceResponse<EitherBody<B>> {
    let status = response.status();
    let wants_html = response
        .request()
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"));
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json"));
    if !wants_html
        || !is_json
        || !(status.is_server_error() || status == actix_web::http::StatusCode::NOT_FOUND)
    {
        return response;
    }
    let (title, text) = match status.as_u16() {
        404 => ("Not found", "There is no page at this address."),
        503 => (
            "Temporarily unavailable",
            "Ward cannot reach its database right now. Please try again in a moment.",
        ),
        _ => (
            "Something went wrong",
            "Ward could not complete this request. The problem has been logged; please try again.",
        ),
    };
    let page = super::views::MessageView {
        title: title.into(),
        message: text.into(),
        link: None,
        link_text: String::new(),
    };
    let Ok(body) = askama::Template::render(&page) else {
        return response;
    };
    let retry_after = response.headers().get(header::RETRY_AFTER).cloned();
    let (request, _) = response.into_parts();
    let mut html = HttpResponse::build(status);
    html.insert_header((header::CACHE_CONTROL, "no-store"))
        .content_type("text/html; charset=utf-8");
    if let Some(value) = retry_after {
        html.insert_header((header::RETRY_AFTER, value));
    }
    ServiceResponse::new(request, html.body(body)).map_into_right_body()
}

fn declared_length(req: &ServiceRequest) -> Option<usize> {
    req.headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok())
}

pub const DEFAULT_CSP: &str = "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'; object-src 'none'";

/// The CSP of a launch page (sign-in, picker, consent): framable by the configured EHR origins
/// only (`'none'` when there are none); `img-src` opened to https for pages that show an app's
/// logo; `form-action` is `'self'` plus `form_targets`, the origin a form's redirect chain may
/// end at (the app's redirect URI), because browsers apply `form-action` to redirects too.
pub fn launch_page_csp(ehr_origins: &[String], img_https: bool, form_targets: &[String]) -> String {
    let ancestors = if ehr_origins.is_empty() {
        "'none'".to_owned()
    } else {
        ehr_origins.join(" ")
    };
    let img = if img_https {
        "; img-src 'self' https:"
    } else {
        ""
    };
    let mut form_action = "'self'".to_owned();
    for target in form_targets {
        form_action.push(' ');
        form_action.push_str(target);
    }
    format!(
        "default-src 'self'{img}; frame-ancestors {ancestors}; base-uri 'none'; object-src 'none'; form-action {form_action}"
    )
}

/// Headers every response carries. Pages that EHRs may frame relax `frame-ancestors` on their
/// own response; everything else may not be framed at all.
pub fn add_security_headers(headers: &mut header::HeaderMap, https: bool) {
    let set = |headers: &mut header::HeaderMap, name: HeaderName, value: &'static str| {
        if !headers.contains_key(&name) {
            headers.insert(name, HeaderValue::from_static(value));
        }
    };
    set(headers, header::CONTENT_SECURITY_POLICY, DEFAULT_CSP);
    // Only a launch page with configured EHR origins may be framed at all.
    let unframable = headers
        .get(header::CONTENT_SECURITY_POLICY)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|csp| csp.contains("frame-ancestors 'none'"));
    if unframable {
        set(headers, header::X_FRAME_OPTIONS, "DENY");
    }
    set(headers, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(headers, header::REFERRER_POLICY, "no-referrer");
    set(
        headers,
        HeaderName::from_static("cross-origin-opener-policy"),
        "same-origin",
    );
    if https {
        set(
            headers,
            header::STRICT_TRANSPORT_SECURITY,
            "max-age=31536000; includeSubDomains",
        );
    }
}
