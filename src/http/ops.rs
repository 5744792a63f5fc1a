//! Operational endpoints: liveness, readiness, metrics and the published signing keys.

use std::time::Duration;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use diesel::connection::SimpleConnection;
use serde_json::json;

use crate::app::AppState;
use crate::error::AppError;
use crate::http::metrics::metrics_allowed;
use crate::store::StoreError;

/// The process is up and answering. Never touches the database.
pub async fn healthz_get() -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(json!({ "status": "ok" }))
}

/// The node can serve: its database answers. 503 otherwise, so a load balancer routes away.
pub async fn readyz_get(state: web::Data<AppState>) -> HttpResponse {
    let probe = state
        .db
        .run(|conn| conn.batch_execute("SELECT 1").map_err(StoreError::from));
    let ready = matches!(
        tokio::time::timeout(Duration::from_secs(3), probe).await,
        Ok(Ok(()))
    );
    let lead = state.clock.lead_millis();
    let clock_ok = lead <= crate::clock::MAX_LEAD_MILLIS;
    if !clock_ok {
        tracing::error!(
            lead_seconds = lead / 1000,
            "the system clock went back after running ahead: this node still stamps times ahead of it; restart it"
        );
    }
    let (mut response, status) = if !clock_ok {
        (HttpResponse::ServiceUnavailable(), "clock")
    } else if ready {
        (HttpResponse::Ok(), "ready")
    } else {
        (HttpResponse::ServiceUnavailable(), "unavailable")
    };
    response
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(json!({ "status": status, "database": state.db.backend().name() }))
}

pub async fn metrics_get(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let forwarded = req.headers().contains_key("x-forwarded-for")
        || req.headers().contains_key(header::FORWARDED);
    let peer = req.peer_addr().map(|a| a.ip());
    if !metrics_allowed(peer, forwarded, state.settings.metrics.open) {
        return Err(AppError::NotFound);
    }
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.metrics.render(state.db.group_commits())))
}

/// The published signing keys, pre-serialised at each key-ring reload, with an ETag.
pub async fn jwks_get(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let jwks = state.keys.jwks();
    let cache = format!("public, max-age={}", state.keys.timing().jwks_cache_seconds);
    let matches = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|tag| tag.trim() == jwks.etag));
    if matches {
        return HttpResponse::NotModified()
            .insert_header((header::ETAG, jwks.etag.clone()))
            .insert_header((header::CACHE_CONTROL, cache))
            .finish();
    }
    HttpResponse::Ok()
        .insert_header((header::ETAG, jwks.etag.clone()))
        .insert_header((header::CACHE_CONTROL, cache))
        .insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"))
        .content_type("application/json")
        .body(jwks.body.clone())
}

pub async fn not_found() -> Result<HttpResponse, AppError> {
    Err(AppError::NotFound)
}
