//! RFC 9457 problem details for the admin API: `application/problem+json` with `type`,
//! `title`, `status`, `detail` and, for invalid input, `errors: [{field, message}]`.

use actix_web::http::{header, StatusCode};
use actix_web::HttpResponse;
use serde_json::json;

use super::Refused;
use crate::admin::AdminError;
use crate::clients::FieldError;

const TYPE_BASE: &str = "https://ward.invalid/problems/";

pub fn problem(
    status: StatusCode,
    kind: &str,
    detail: &str,
    errors: &[FieldError],
) -> HttpResponse {
    let mut body = json!({
        "type": format!("{TYPE_BASE}{kind}"),
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": detail,
    });
    if !errors.is_empty() {
        body["errors"] = json!(errors);
    }
    let mut response = HttpResponse::build(status);
    response
        .content_type("application/problem+json")
        .insert_header((header::CACHE_CONTROL, "no-store"));
    if status == StatusCode::UNAUTHORIZED {
        response.insert_header((
            header::WWW_AUTHENTICATE,
            "Bearer realm=\"ward-admin\", error=\"invalid_token\"",
        ));
    }
    response.body(body.to_string())
}

pub fn invalid(errors: Vec<FieldError>) -> HttpResponse {
    problem(
        StatusCode::BAD_REQUEST,
        "invalid-input",
        "The request has invalid fields; nothing was changed.",
        &errors,
    )
}

pub fn bad_request(detail: &str) -> HttpResponse {
    problem(StatusCode::BAD_REQUEST, "bad-request", detail, &[])
}

pub fn from_admin(e: AdminError) -> HttpResponse {
    match e {
        AdminError::Invalid(errors) => invalid(errors),
        AdminError::NotFound(m) => problem(StatusCode::NOT_FOUND, "not-found", &m, &[]),
        AdminError::Conflict(m) => problem(StatusCode::CONFLICT, "conflict", &m, &[]),
        AdminError::Stale(m) => problem(StatusCode::PRECONDITION_FAILED, "stale", &m, &[]),
        AdminError::Forbidden(m) => problem(StatusCode::FORBIDDEN, "forbidden", &m, &[]),
        AdminError::Store(s) if s.is_unavailable() => {
            let mut r = problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "The database is unavailable; try again shortly.",
                &[],
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("2"));
            r
        }
        AdminError::Store(s) => {
            tracing::error!(error = %s, "admin API storage error");
            problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Something went wrong; it was logged.",
                &[],
            )
        }
    }
}

pub fn from_refused(r: Refused) -> HttpResponse {
    match r {
        Refused::Unauthenticated(m) => problem(StatusCode::UNAUTHORIZED, "unauthenticated", m, &[]),
        Refused::Forbidden(m) => problem(StatusCode::FORBIDDEN, "forbidden", &m, &[]),
        Refused::Reauthenticate => problem(
            StatusCode::FORBIDDEN,
            "reauthentication-required",
            "This action needs a recent sign-in with your second factor: sign in again, then retry.",
            &[],
        ),
        Refused::Csrf => problem(
            StatusCode::FORBIDDEN,
            "csrf",
            "Changes made with a session need the X-CSRF-Token header.",
            &[],
        ),
        Refused::Store(s) => from_admin(AdminError::Store(s)),
    }
}
