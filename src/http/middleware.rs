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
    } else {
        next.call(req)
            .instrument(span.clone())
            .await?
            .map_into_left_body()
    };

    let mut response = response;
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

fn declared_length(req: &ServiceRequest) -> Option<usize> {
    req.headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok())
}

/// Headers every response carries. Pages that EHRs may frame relax `frame-ancestors` on their
/// own response; everything else may not be framed at all.
pub fn add_security_headers(headers: &mut header::HeaderMap, https: bool) {
    let set = |headers: &mut header::HeaderMap, name: HeaderName, value: &'static str| {
        if !headers.contains_key(&name) {
            headers.insert(name, HeaderValue::from_static(value));
        }
    };
    set(
        headers,
        header::CONTENT_SECURITY_POLICY,
        "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'; object-src 'none'",
    );
    set(headers, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(headers, header::REFERRER_POLICY, "no-referrer");
    set(headers, header::X_FRAME_OPTIONS, "DENY");
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
