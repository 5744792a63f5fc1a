//! The admin JSON API (`/admin/api/v1/…`): the console's operations, JSON in and out.
//!
//! Conventions: lists are `{items, limit, offset, next}` (`?limit=` 1–200, default 50;
//! `?offset=`); single resources carry an `ETag` (`"v<version>"`) and writes honour
//! `If-Match` (412 when stale); PUT and DELETE are idempotent; errors are RFC 9457
//! `application/problem+json`, with `errors: [{field, message}]` for invalid input, and a
//! refused write changes nothing. Fields a client may not set (ids, timestamps, versions) are
//! accepted only with their current value. The routes are listed once, in [`ROUTES`], which a
//! test checks against the OpenAPI document served at `/admin/api/v1/openapi.json`.

// Helpers here return the ready problem response as their error, to be answered at once;
// boxing it would only add noise to every handler.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::problem::{self, bad_request, from_admin, from_refused, invalid};
use super::{admit, check, etag, if_match, Admitted};
use crate::admin::access::{need_for_client, need_for_role, need_for_user, Need, ADMIN_ROLE};
use crate::admin::{self, AdminError};
use crate::app::AppState;
use crate::authn::accounts;
use crate::authz::roles::{self, RoleChanges};
use crate::authz::users::{self, NewUser};
use crate::clients::{self, ClientSpec, FieldError};
use crate::keys::{self, KeyAlg, KeyTiming};
use crate::store::audit_events::AuditQuery;
use crate::store::grants::GrantOwner;
use crate::store::{DbConnection, Page};

/// The OpenAPI 3.1 description of this API.
pub const OPENAPI: &str = include_str!("openapi.json");

macro_rules! admin_routes {
    ($( $method:ident $path:literal => $handler:path ),* $(,)?) => {
        /// Every admin API route: (method, path under `/admin/api/v1`).
        pub const ROUTES: &[(&str, &str)] = &[$((stringify!($method), $path)),*];

        pub fn routes(cfg: &mut web::ServiceConfig) {
            $( cfg.route(concat!("/admin/api/v1", $path), web::$method().to($handler)); )*
        }
    };
}

admin_routes! {
    get "/openapi.json" => openapi,
    get "/clients" => clients_list,
    post "/clients" => clients_create,
    get "/clients/{client_id}" => clients_get,
    put "/clients/{client_id}" => clients_put,
    put "/clients/{client_id}/status" => clients_status,
    post "/clients/{client_id}/secret" => clients_secret,
    get "/clients/{client_id}/grants" => clients_grants,
    delete "/clients/{client_id}/grants" => clients_revoke_grants,
    get "/users" => users_list,
    post "/users" => users_create,
    get "/users/{username}" => users_get,
    put "/users/{username}" => users_put,
    put "/users/{username}/status" => users_status,
    put "/users/{username}/roles/{role}" => users_role_add,
    delete "/users/{username}/roles/{role}" => users_role_remove,
    post "/users/{username}/unlock" => users_unlock,
    delete "/users/{username}/mfa" => users_reset_mfa,
    post "/users/{username}/enrolment-link" => users_enrolment_link,
    get "/users/{username}/sessions" => users_sessions,
    delete "/users/{username}/sessions" => users_end_sessions,
    delete "/users/{username}/sessions/{session_id}" => users_end_session,
    get "/roles" => roles_list,
    post "/roles" => roles_create,
    get "/roles/{name}" => roles_get,
    put "/roles/{name}" => roles_put,
    delete "/roles/{name}" => roles_delete,
    get "/explain" => explain,
    get "/patients" => patients_list,
    post "/patients/import" => patients_import,
    get "/patients/{id}" => patients_get,
    put "/patients/{id}" => patients_put,
    delete "/patients/{id}" => patients_delete,
    get "/keys" => keys_list,
    post "/keys/rotate" => keys_rotate,
    get "/audit" => audit_search,
    get "/disclosures" => disclosures,
}

macro_rules! admit_or_answer {
    ($req:expr, $state:expr, $need:expr) => {
        match admit(&$req, &$state, $need, true, None).await {
            Ok(a) => a,
            Err(r) => return from_refused(r),
        }
    };
}

macro_rules! try_answer {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => return e,
        }
    };
}

// --- helpers -----------------------------------------------------------------------------

fn json_response(status: StatusCode, body: &Value, version: Option<i64>) -> HttpResponse {
    let mut r = HttpResponse::build(status);
    r.content_type("application/json")
        .insert_header((header::CACHE_CONTROL, "no-store"));
    if let Some(v) = version {
        r.insert_header((header::ETAG, etag(v)));
    }
    r.body(body.to_string())
}

fn ok(body: &Value) -> HttpResponse {
    json_response(StatusCode::OK, body, None)
}

fn no_content() -> HttpResponse {
    HttpResponse::NoContent()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .finish()
}

async fn db<T, F>(state: &AppState, work: F) -> Result<T, HttpResponse>
where
    F: FnOnce(&mut DbConnection) -> Result<T, AdminError> + Send + 'static,
    T: Send + 'static,
{
    state.db.run(work).await.map_err(from_admin)
}

fn body_object(bytes: &[u8]) -> Result<Map<String, Value>, HttpResponse> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(bad_request("the body must be a JSON object")),
        Err(e) => Err(bad_request(&format!("the body is not valid JSON: {e}"))),
    }
}

fn from_object<T: DeserializeOwned>(map: Map<String, Value>) -> Result<T, HttpResponse> {
    serde_json::from_value(Value::Object(map)).map_err(|e| {
        let text = e.to_string();
        let field = text
            .split('`')
            .nth(1)
            .filter(|_| text.starts_with("unknown field"))
            .unwrap_or("body")
            .to_owned();
        invalid(vec![FieldError::new(&field, text)])
    })
}

/// Read-only fields may appear in a write only with their current value (so a GET → edit →
/// PUT round trip works, and nothing can be mass-assigned).
fn strip_read_only(
    map: &mut Map<String, Value>,
    current: &Value,
    fields: &[&str],
) -> Result<(), HttpResponse> {
    let mut errors = Vec::new();
    for field in fields {
        if let Some(value) = map.remove(*field) {
            if current.get(*field) != Some(&value) {
                if *field == "version" {
                    return Err(problem::problem(
                        StatusCode::PRECONDITION_FAILED,
                        "stale",
                        "the resource changed since this version",
                        &[],
                    ));
                }
                errors.push(FieldError::new(field, "is read-only"));
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(invalid(errors))
    }
}

fn query_map(req: &HttpRequest) -> HashMap<String, String> {
    url::form_urlencoded::parse(req.query_string().as_bytes())
        .into_owned()
        .collect()
}

fn int_param(q: &HashMap<String, String>, name: &str) -> Result<Option<i64>, HttpResponse> {
    match q.get(name) {
        None => Ok(None),
        Some(v) => v
            .parse::<i64>()
            .map(Some)
            .map_err(|_| invalid(vec![FieldError::new(name, "must be an integer")])),
    }
}

pub const DEFAULT_LIMIT: i64 = 50;
/// Patient searches page within their first results only.
pub const MAX_SEARCH_OFFSET: i64 = 1000;
pub const MAX_LIMIT: i64 = 200;

fn page(q: &HashMap<String, String>) -> Result<Page, HttpResponse> {
    let limit = int_param(q, "limit")?.unwrap_or(DEFAULT_LIMIT);
    let offset = int_param(q, "offset")?.unwrap_or(0);
    let mut errors = Vec::new();
    if !(1..=MAX_LIMIT).contains(&limit) {
        errors.push(FieldError::new(
            "limit",
            format!("must be 1 to {MAX_LIMIT}"),
        ));
    }
    if !(0..=1_000_000).contains(&offset) {
        errors.push(FieldError::new("offset", "must be 0 to 1000000"));
    }
    if errors.is_empty() {
        Ok(Page { limit, offset })
    } else {
        Err(invalid(errors))
    }
}

fn listing(req: &HttpRequest, items: Vec<Value>, page: Page) -> HttpResponse {
    let next = (items.len() as i64 == page.limit).then(|| {
        let mut q = query_map(req);
        q.insert("offset".into(), (page.offset + page.limit).to_string());
        q.insert("limit".into(), page.limit.to_string());
        let mut keys: Vec<_> = q.into_iter().collect();
        keys.sort();
        let query: String = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(keys)
            .finish();
        format!("{}?{query}", req.path())
    });
    ok(&json!({
        "items": items,
        "limit": page.limit,
        "offset": page.offset,
        "next": next,
    }))
}

fn path_param(req: &HttpRequest, name: &str) -> String {
    req.match_info().get(name).unwrap_or_default().to_owned()
}

/// Refuses a write whose `If-Match` names another version.
fn check_version(expected: Option<i64>, current: i64, what: &str) -> Result<(), AdminError> {
    match expected {
        Some(v) if v != current => Err(AdminError::Stale(format!(
            "`{what}` changed since version {v} (now {current})"
        ))),
        _ => Ok(()),
    }
}

fn stale_header(req: &HttpRequest) -> Result<Option<i64>, HttpResponse> {
    if_match(req).map_err(|super::BadIfMatch| {
        bad_request("If-Match must be an ETag this API issued, such as \"v3\"")
    })
}

// --- OpenAPI -----------------------------------------------------------------------------

pub async fn openapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .insert_header((header::CACHE_CONTROL, "public, max-age=300"))
        .body(OPENAPI)
}

// --- Clients -----------------------------------------------------------------------------

pub async fn clients_list(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    admit_or_answer!(req, state, Need::Read);
    let q = query_map(&req);
    let page = try_answer!(page(&q));
    let search = q.get("search").cloned();
    let list = try_answer!(
        db(&state, move |conn| Ok(clients::list(
            conn,
            search.as_deref(),
            page
        )?))
        .await
    );
    listing(
        &req,
        list.iter().map(clients::Client::public_view).collect(),
        page,
    )
}

/// A registration body: the client view's fields, `allowed_scopes` also spelled `scope`.
fn client_spec(mut map: Map<String, Value>) -> Result<ClientSpec, HttpResponse> {
    if let Some(scopes) = map.remove("allowed_scopes") {
        if map.contains_key("scope") {
            return Err(invalid(vec![FieldError::new(
                "allowed_scopes",
                "give either scope or allowed_scopes",
            )]));
        }
        map.insert("scope".into(), scopes);
    }
    from_object(map)
}

pub async fn clients_create(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> HttpResponse {
    let a = admit_or_answer!(req, state, Need::Write);
    let map = try_answer!(body_object(&body));
    let mut spec = try_answer!(client_spec(map));
    let need = need_for_client(None, Some(&spec.scope), Need::Write);
    if let Err(r) = check(&state, &a.ctx, &a.actor, need, req.path()).await {
        return from_refused(r);
    }
    let client_id = spec.client_id.take();
    let settings = match clients::validate_spec(&spec, state.client_keys.fetcher()).await {
        Ok(s) => s,
        Err(e) => return from_admin(e.into()),
    };
    let (clock, ctx) = (state.clock.clone(), a.ctx);
    let created = try_answer!(
        db(&state, move |conn| Ok(clients::register(
            conn,
            clock.as_ref(),
            &ctx,
            client_id,
            settings
        )?))
        .await
    );
    let mut view = created.client.public_view();
    if let Some(secret) = created.secret {
        view["client_secret"] = json!(secret);
    }
    let mut r = json_response(StatusCode::CREATED, &view, Some(created.client.version));
    r.headers_mut().insert(
        header::LOCATION,
        header::HeaderValue::from_str(&format!(
            "/admin/api/v1/clients/{}",
            created.client.client_id
        ))
        .unwrap_or(header::HeaderValue::from_static("/admin/api/v1/clients")),
    );
    r
}

/// Admits a change to an existing client: human-only when it holds admin-API scopes.
async fn admit_for_client(
    req: &HttpRequest,
    state: &AppState,
    base: Need,
) -> Result<(Admitted, clients::Client), HttpResponse> {
    let a = admit(req, state, base, true, None)
        .await
        .map_err(from_refused)?;
    let id = path_param(req, "client_id");
    let client = db(state, move |conn| Ok(clients::get(conn, &id)?)).await?;
    let need = need_for_client(Some(&client.settings.allowed_scopes), None, base);
    check(state, &a.ctx, &a.actor, need, req.path())
        .await
        .map_err(from_refused)?;
    Ok((a, client))
}

pub async fn clients_get(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    admit_or_answer!(req, state, Need::Read);
    let id = path_param(&req, "client_id");
    let client = try_answer!(db(&state, move |conn| Ok(clients::get(conn, &id)?)).await);
    json_response(StatusCode::OK, &client.public_view(), Some(client.version))
}

pub async fn clients_put(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> HttpResponse {
    let a = admit_or_answer!(req, state, Need::Write);
    let id = path_param(&req, "client_id");
    let expected = try_answer!(stale_header(&req));
    let mut map = try_answer!(body_object(&body));
    let current = {
        let id = id.clone();
        try_answer!(db(&state, move |conn| Ok(clients::get(conn, &id)?)).await)
    };
    try_answer!(strip_read_only(
        &mut map,
        &current.public_view(),
        &[
            "client_id",
            "created_at",
            "updated_at",
            "version",
            "enabled"
        ],
    ));
    let mut spec = try_answer!(client_spec(map));
    spec.client_id = None;
    let need = need_for_client(
        Some(&current.settings.allowed_scopes),
        Some(&spec.scope),
        Need::Write,
    );
    if let Err(r) = check(&state, &a.ctx, &a.actor, need, req.path()).await {
        return from_refused(r);
    }
    let settings = match clients::validate_spec(&spec, state.client_keys.fetcher()).await {
        Ok(s) => s,
        Err(e) => return from_admin(e.into()),
    };
    let expected = expected.or(Some(current.version));
    let (clock, ctx) = (state.clock.clone(), a.ctx);
    let client = try_answer!(
        db(&state, move |conn| Ok(clients::update(
            conn,
            clock.as_ref(),
            &ctx,
            &id,
            settings,
            expected
        )?))
        .await
    );
    json_response(StatusCode::OK, &client.public_view(), Some(client.version))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusBody {
    enabled: bool,
}

pub async fn clients_status(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> HttpResponse {
    let a = admit_or_answer!(req, state, Need::Write);
    let id = path_param(&req, "client_id");
    let expected = try_answer!(stale_header(&req));
    let StatusBody { enabled } = try_answer!(from_object(try_answer!(body_object(&body))));
    if enabled {
        // Disabling only takes power away (incident response may be automated); enabling an
        // admin client gives it back, which is human-only.
        let id = id.clone();
        let current = try_answer!(db(&state, move |conn| Ok(clients::get(conn, &id)?)).await);
        let need = need_for_client(Some(&current.settings.allowed_scopes), None, Need::Write);
        if let Err(r) = check(&state, &a.ctx, &a.actor, need, req.path()).await {
            return from_refused(r);
        }
    }
    let (clock, ctx) = (state.clock.clone(), a.ctx);
    let client = try_answer!(
        db(&state, move |conn| {
            check_version(expected, clients::get(conn, &id)?.version, &id)?;
            Ok(clients::set_enabled(
                conn,
                clock.as_ref(),
                &ctx,
                &id,
                enabled,
            )?)
        })
        .await
    );
    json_response(StatusCode::OK, &client.public_view(), Some(client.version))
}

pub async fn clients_secret(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let (a, _) = try_answer!(admit_for_client(&req, &state, Need::Write).await);
    let id = path_param(&req, "client_id");
    let grace = i64::try_from(state.settings.clients.secret_grace_seconds).unwrap_or(0);
    let (clock, ctx) = (state.clock.clone(), a.ctx);
    let secret = try_answer!(
        db(&state, move |conn| Ok(clients::rotate_secret(
            conn,
            clock.as_ref(),
            &ctx,
            &id,
            grace
        )?))
        .await
    );
    ok(&json!({ "client_secret": secret, "previous_secret_valid_seconds": grace }))
}

pub async fn clients_grants(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    admit_or_answer!(req, state, Need::Read);
    let id = path_param(&req, "client_id");
    let clock = state.clock.clone();
    let grants = try_answer!(
        db(&state, move |conn| admin::grants_of_client(
            conn,
            clock.as_ref(),
            &id
        ))
        .await
    );
    ok(&json!({ "items": grants }))
}

pub async fn clients_revoke_grants(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let a = admit_or_answer!(req, state, Need::Sensitive);
    let id = path_param(&req, "client_id");
    let (clock, ctx) = (state.clock.clone(), a.ctx);
    let n = try_answer!(
        db(&state, move |conn| admin::revoke_all(
            conn,
            clock.as_ref(),
            &ctx,
            GrantOwner::Client(&id),
            "revoked_by_admin"
        ))
        .await
    );
    ok(&json!({ "revoked": n }))
}

// --- Users -------------------------------------------------------------------------------

fn user_view(u: &users::User) -> Value {
    serde_json::to_value(u).unwrap_or(Value::Null)
}

async fn load_user(state: &AppState, username: &str) -> Result<users::User, HttpResponse> {
    let name = username.to_owned();
    db(state, move |conn| Ok(users::get_by_username(conn, &name)?)).await
}

/// Admits for a change to `username`'s account: human-only when the target is an admin.
async fn admit_for_user(
    req: &HttpRequest,
    state: &AppState,
    base: Need,
) -> Result<(Admitted, users::User), HttpResponse> {
    let a = admit(req, state, base, true, None)
        .await
        .map_err(from_refused)?;
    let user = load_user(state, &path_param(req, "username")).await?;
    check(
        state,
        &a.ctx,
        &a.actor,
        need_for_user(&user.roles, base),
        req.path(),
    )
    .await
    .map_err(from_refused)?;
    Ok((a, user))
}

pub async fn users_list(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    admit_or_answer!(req, state, Need::Read);
    let q = query_map(&req);
    let page = try_answer!(page(&q));
    let search = q.get("search").cloned();
    let list = try_answer!(
        db(&state, move |conn| Ok(users::list(
            conn,
            search.as_deref(),
            page
        )?))
        .await
    );
    listing(&req, list.iter().map(user_view).collect(), page)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewUserBody {
    pub username: String,
    pub display_name: Option<String>,
    pub fhir_user: Option<String>,
    #[serde(default)]
    pub roles: Vec<String>,
    /// An initial password (the user should change it), or…
    pub password: Option<String>,
    /// …a one-time link with which the user sets their own.
    #[serde(default)]
    pub enrolment_link: bool,
}

pub async fn users_create(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> HttpResponse {
    let a = admit_or_answer!(req, state, Need::Write);
    let body: NewUserBody = try_answer!(from_object(try_answer!(body_object(&body))));
    if body.roles.iter().any(|r| r == ADMIN_ROLE) {
        if let Err(r) = check(&state, &a.ctx, &a.actor, Need::HumanOnly, req.path()).await {
            return from_refused(r);
        }
    }
    let created = try_answer!(create_user(&state, &a, body).await);
    json_response(StatusCode::CREATED, &created.0, Some(created.1))
}

/// Creates a user (shared with the console); returns the view (with the enrolment link when
/// one was asked for) and the version.
pub(super) async fn create_user(
    state: &AppState,
    a: &Admitted,
    body: NewUserBody,
) -> Result<(Value, i64), HttpResponse> {
    if body.password.is_some() && body.enrolment_link {
        return Err(invalid(vec![FieldError::new(
            "password",
            "give an initial password or ask for an enrolment link, not both",
        )]));
    }
    let password_hash = match body.password {
        Some(p) => {
            if let Err(e) = crate::authn::password::check_policy(
                &p,
                &[&body.username, body.display_name.as_deref().unwrap_or("")],
            ) {
                return Err(invalid(vec![FieldError::new("password", e.to_string())]));
            }
            match state.hashing.hash(p).await {
                Ok(h) => Some(h),
                Err(_) => {
                    return Err(problem::problem(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "busy",
                        "too many password operations at once; retry shortly",
                        &[],
                    ))
                }
            }
        }
        None => None,
    };
    let new = NewUser {
        username: body.username,
        display_name: body.display_name,
        fhir_user: body.fhir_user.filter(|f| !f.trim().is_empty()),
        roles: body.roles,
        password_hash,
    };
    let (clock, ctx) = (state.clock.clone(), a.ctx.clone());
    let link_seconds = i64::try_from(state.settings.admin.enrolment_link_seconds).unwrap_or(3600);
    let want_link = body.enrolment_link;
    let (user, link) = db(state, move |conn| {
        let user = users::create(conn, clock.as_ref(), &ctx, new)?;
        let link = if want_link {
            Some(admin::create_enrolment_link(
                conn,
                clock.as_ref(),
                &ctx,
                &user.username,
                link_seconds,
            )?)
        } else {
            None
        };
        Ok((user, link))
    })
    .await?;
    let mut view = user_view(&user);
    if let Some((token, expires_at)) = link {
        view["enrolment_link"] = json!(enrolment_url(state, &token));
        view["enrolment_link_expires_at"] = json!(expires_at);
    }
    Ok((view, user.version))
}

pub fn enrolment_url(state: &AppState, token: &str) -> String {
    state.url(&format!("/enrol?token={token}"))
}

pub async fn users_get(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    admit_or_answer!(req, state, Need::Read);
    let user = try_answer!(load_user(&state, &path_param(&req, "username")).await);
    json_response(StatusCode::OK, &user_view(&user), Some(user.version))
}

pub async fn users_put(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> HttpResponse {
    let (a, user) = try_answer!(admit_for_user(&req, &state, Need::Write).await);
    let expected = try_answer!(stale_header(&req));
    let mut map = try_answer!(body_object(&body));
    try_answer!(strip_read_only(
        &mut map,
        &user_view(&user),
        &["id", "username", "roles", "enabled", "version"],
    ));
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Profile {
        display_name: String,
        fhir_user: Option<String>,
    }
    let profile: Profile = try_answer!(from_object(map));
    let (clock, ctx) = (state.clock.clone(), a.ctx);
    let expected = expected.or(Some(user.version));
    let updated = try_answer!(
        db(&state, move |conn| admin::update_user(
            conn,
            clock.as_ref(),
            &ctx,
            &user.username,
            &profile.display_name,
            profile.fhir_user.as_deref(),
            expected
        ))
        .await
    );
    json_response(StatusCode::OK, &user_view(&updated), Some(updated.version))
}

pub async fn users_status(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> HttpResponse {
    let (a, user) = try_answer!(admit_for_user(&req, &state, Need::Write).await);
    let expected = try_answer!(stale_header(&req));
    let StatusBody { enabled } = try_answer!(from_object(try_answer!(body_object(&body))));
    if let Err(e) = check_version(expected, user.version, &user.username) {
        return from_admin(e);
    }
    let (clock, ctx) = (state.clock.clone(), a.ctx);
    let updated = try_answer!(
        db(&state, move |conn| Ok(accounts::set_enabled(
            conn,
            clock.as_ref(),
            &ctx,
            &user.username,
            enabled
        )?))
        .await
    );
    json_response(StatusCode::OK, &user_view(&updated), Some(updated.version))
}

async fn change_role(req: HttpRequest, state: web::Data<AppState>, add: bool) -> HttpResponse {
    let role = path_param(&req, "role");
    let (a, user) =
        try_answer!(admit_for_user(&req, &state, need_for_role(&role, Need::Write)).await);
    if let Err(r) = check(
        &state,
        &a.ctx,
        &a.actor,
        need_for_role(&role, Need::Write),
        req.path(),
    )
    .await
    {
        return from_refused(r);
    }
    let (clock, ctx) = (state.clock.clone(), a.ctx);
    let updated = try_answer!(
        db(&state, move |conn| Ok(users::change_role(
            conn,
            clock.as_ref(),
            &ctx,
            &user.username,
            &role,
            add
        )?))
        .await
    );
    json_response(StatusCode::OK, &user_view(&updated), Some(updated.version))
}

pub async fn users_role_add(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    change_role(req, state, true).await
}

pub async fn users_role_remove(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    change_role(req, state, false).await
}

pub async fn users_unlock(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let (a, user) = try_answer!(admit_for_user(&req, &state, Need::Write).await);
    let (clock, ctx) = (state.clock.clone(), a.ctx);
    let was_locked = try_answer!(
        db(&state, move |conn| Ok(accounts::unlock(
            conn,
            clock.as_ref(),
            &ctx,
            &user.username
        )?))
        .await
    );
    ok(&json!({ "was_locked": was_locked }))
}

pub async fn users_reset_mfa(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let (a, user) = try_answer!(admit_for_user(&req, &state, Need::Write).await);
    let (clock, ctx) = (state.clock.clone(), a.ctx);
    try_answer!(
        db(&state, move |conn| Ok(accounts::reset_mfa(
            conn,
            clock.as_ref(),
            &ctx,
            &user.username
        )?))
        .await
    );
    no_content()
}

pub async fn users_enrolment_link(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let (a, user) = try_answer!(admit_for_user(&req, &state, Need::Write).await);
    // For someone who already has a password, a link is a password reset: sensitive.
    let name = user.username.clone();
    if try_answer!(db(&state, move |conn| admin::has_password(conn, &name)).await) {
        let need = need_for_user(&user.roles, Need::HumanOnly);
        if let Err(r) = check(&state, &a.ctx, &a.actor, need, req.path()).await {
            return from_refused(r);
        }
    }
    let (clock, ctx) = (state.clock.clone(), a.ctx);
    let seconds = i64::try_from(state.settings.admin.enrolment_link_seconds).unwrap_or(3600);
    let (token, expires_at) = try_answer!(
        db(&state, move |conn| admin::create_enrolment_link(
            conn,
            clock.as_ref(),
            &ctx,
            &user.username,
            seconds
        ))
        .await
    );
    json_response(
        StatusCode::CREATED,
        &json!({ "enrolment_link": enrolment_url(&state, &token), "expires_at": expires_at }),
        None,
    )
}

pub async fn users_sessions(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    admit_or_answer!(req, state, Need::Read);
    let name = path_param(&req, "username");
    let sessions = try_answer!(db(&state, move |conn| admin::sessions_of(conn, &name)).await);
    ok(&json!({ "items": sessions }))
}

async fn end_sessions(
    req: HttpRequest,
    state: web::Data<AppState>,
    only: Option<String>,
) -> HttpResponse {
    let (a, user) = try_answer!(admit_for_user(&req, &state, Need::Write).await);
    let (clock, ctx) = (state.clock.clone(), a.ctx);
    let n = try_answer!(
        db(&state, move |conn| admin::end_sessions(
            conn,
            clock.as_ref(),
            &ctx,
            &user.username,
            only.as_deref()
        ))
        .await
    );
    ok(&json!({ "ended": n }))
}

pub async fn users_end_sessions(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    end_sessions(req, state, None).await
}

pub async fn users_end_session(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let id = path_param(&req, "session_id");
    end_sessions(req, state, Some(id)).await
}

// --- Roles -------------------------------------------------------------------------------

fn role_view(r: &roles::Role) -> Value {
    serde_json::to_value(r).unwrap_or(Value::Null)
}

pub async fn roles_list(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    admit_or_answer!(req, state, Need::Read);
    let list = try_answer!(db(&state, move |conn| Ok(roles::list(conn)?)).await);
    ok(&json!({ "items": list.iter().map(role_view).collect::<Vec<_>>() }))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RoleBody {
    name: Option<String>,
    description: Option<String>,
    scope_ceiling: Option<String>,
    mfa_required: Option<bool>,
    break_glass: Option<bool>,
    passwordless: Option<bool>,
}

pub async fn roles_create(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> HttpResponse {
    let a = admit_or_answer!(req, state, Need::Write);
    let body: RoleBody = try_answer!(from_object(try_answer!(body_object(&body))));
    let Some(name) = body.name.clone() else {
        return invalid(vec![FieldError::new("name", "is required")]);
    };
    let (clock, ctx) = (state.clock.clone(), a.ctx);
    let role = try_answer!(
        db(&state, move |conn| Ok(roles::create(
            conn,
            clock.as_ref(),
            &ctx,
            &name,
            RoleChanges {
                description: body.description,
                scope_ceiling: body.scope_ceiling,
                mfa_required: Some(body.mfa_required.unwrap_or(true)),
                break_glass: body.break_glass,
                passwordless: body.passwordless,
                expected_version: None,
            }
        )?))
        .await
    );
    json_response(StatusCode::CREATED, &role_view(&role), Some(role.version))
}

pub async fn roles_get(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    admit_or_answer!(req, state, Need::Read);
    let name = path_param(&req, "name");
    let role = try_answer!(db(&state, move |conn| Ok(roles::get(conn, &name)?)).await);
    json_response(StatusCode::OK, &role_view(&role), Some(role.version))
}

pub async fn roles_put(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> HttpResponse {
    let name = path_param(&req, "name");
    let a = admit_or_answer!(req, state, need_for_role(&name, Need::Write));
    let expected = try_answer!(stale_header(&req));
    let mut map = try_answer!(body_object(&body));
    let current = {
        let name = name.clone();
        try_answer!(db(&state, move |conn| Ok(roles::get(conn, &name)?)).await)
    };
    try_answer!(strip_read_only(
        &mut map,
        &role_view(&current),
        &["name", "version"],
    ));
    let body: RoleBody = try_answer!(from_object(map));
    let (clock, ctx) = (state.clock.clone(), a.ctx);
    let role = try_answer!(
        db(&state, move |conn| Ok(roles::update(
            conn,
            clock.as_ref(),
            &ctx,
            &name,
            RoleChanges {
                description: body.description,
                scope_ceiling: body.scope_ceiling,
                mfa_required: body.mfa_required,
                break_glass: body.break_glass,
                passwordless: body.passwordless,
                expected_version: expected.or(Some(current.version)),
            }
        )?))
        .await
    );
    json_response(StatusCode::OK, &role_view(&role), Some(role.version))
}

pub async fn roles_delete(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let name = path_param(&req, "name");
    let a = admit_or_answer!(req, state, need_for_role(&name, Need::Write));
    let expected = try_answer!(stale_header(&req));
    let (clock, ctx) = (state.clock.clone(), a.ctx);
    try_answer!(
        db(&state, move |conn| {
            if let Ok(current) = roles::get(conn, &name) {
                check_version(expected, current.version, &name)?;
            }
            match roles::delete(conn, clock.as_ref(), &ctx, &name) {
                Ok(()) | Err(crate::authz::DirectoryError::NotFound(_)) => Ok(()),
                Err(e) => Err(e.into()),
            }
        })
        .await
    );
    no_content()
}

pub async fn explain(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    admit_or_answer!(req, state, Need::Read);
    let q = query_map(&req);
    let (Some(user), Some(client)) = (q.get("user").cloned(), q.get("client").cloned()) else {
        return invalid(vec![FieldError::new(
            "user",
            "explain needs ?user=USERNAME&client=CLIENT_ID (and optionally &scope=…)",
        )]);
    };
    let scope = q.get("scope").cloned();
    let e = try_answer!(
        db(&state, move |conn| admin::explain(
            conn,
            &user,
            &client,
            scope.as_deref()
        ))
        .await
    );
    ok(&json!(e))
}

// --- Patients ----------------------------------------------------------------------------

pub async fn patients_list(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    admit_or_answer!(req, state, Need::Read);
    let q = query_map(&req);
    let page = try_answer!(page(&q));
    let search = q.get("search").cloned().filter(|s| !s.trim().is_empty());
    let list = try_answer!(
        db(&state, move |conn| Ok(match &search {
            // The picker's search has no offset: fetch up to the window's end and skip.
            Some(s) if page.offset <= MAX_SEARCH_OFFSET => {
                crate::patients::search(conn, s, page.limit + page.offset)?
                    .into_iter()
                    .skip(usize::try_from(page.offset).unwrap_or(0))
                    .collect()
            }
            Some(_) => Vec::new(),
            None => crate::store::patients::page(conn, page.limit, page.offset)?
                .into_iter()
                .map(crate::patients::PatientSummary::from)
                .collect(),
        }))
        .await
    );
    listing(&req, list.iter().map(|p| json!(p)).collect(), page)
}

pub async fn patients_import(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> HttpResponse {
    let a = admit_or_answer!(req, state, Need::Write);
    let (clock, ctx) = (state.clock.clone(), a.ctx);
    let report = try_answer!(
        db(&state, move |conn| Ok(crate::patients::import(
            conn,
            clock.as_ref(),
            &ctx,
            std::io::Cursor::new(body.to_vec())
        )?))
        .await
    );
    if report.errors.is_empty() {
        ok(&json!(report))
    } else {
        invalid(
            report
                .errors
                .iter()
                .map(|e| FieldError::new("body", e.clone()))
                .collect(),
        )
    }
}

pub async fn patients_get(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    admit_or_answer!(req, state, Need::Read);
    let id = path_param(&req, "id");
    let found = {
        let id = id.clone();
        try_answer!(db(&state, move |conn| Ok(crate::patients::get(conn, &id)?)).await)
    };
    match found {
        Some(p) => ok(&json!(p)),
        None => from_admin(AdminError::NotFound(format!("no patient `{id}`"))),
    }
}

pub async fn patients_put(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> HttpResponse {
    let a = admit_or_answer!(req, state, Need::Write);
    let id = path_param(&req, "id");
    let Ok(text) = String::from_utf8(body.to_vec()) else {
        return bad_request("the body must be UTF-8 JSON");
    };
    let (clock, ctx) = (state.clock.clone(), a.ctx);
    let (patient, created) = try_answer!(
        db(&state, move |conn| admin::put_patient(
            conn,
            clock.as_ref(),
            &ctx,
            &id,
            text.trim()
        ))
        .await
    );
    json_response(
        if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        &json!(patient),
        None,
    )
}

pub async fn patients_delete(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let a = admit_or_answer!(req, state, Need::Write);
    let id = path_param(&req, "id");
    let (clock, ctx) = (state.clock.clone(), a.ctx);
    try_answer!(
        db(&state, move |conn| admin::remove_patient(
            conn,
            clock.as_ref(),
            &ctx,
            &id
        ))
        .await
    );
    no_content()
}

// --- Keys and audit ----------------------------------------------------------------------

pub fn key_timing(state: &AppState) -> KeyTiming {
    KeyTiming {
        jwks_cache_seconds: i64::try_from(state.settings.keys.jwks_cache_seconds).unwrap_or(600),
        max_token_lifetime_seconds: i64::try_from(state.settings.tokens.max_lifetime_seconds)
            .unwrap_or(3600),
    }
}

pub async fn keys_list(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    admit_or_answer!(req, state, Need::Read);
    let (clock, timing) = (state.clock.clone(), key_timing(&state));
    let now = state.clock.now_secs();
    let list = try_answer!(
        db(&state, move |conn| Ok(keys::list(
            conn,
            clock.as_ref(),
            timing
        )?))
        .await
    );
    ok(&json!({ "items": list.iter().map(|k| key_view(k, now)).collect::<Vec<_>>() }))
}

pub fn key_view(k: &keys::KeyStatus, now: i64) -> Value {
    json!({
        "kid": k.kid,
        "alg": k.alg,
        "state": format!("{:?}", k.state).to_lowercase(),
        "created_at": k.created_at,
        "age_days": (now - k.created_at) / 86_400,
        "activates_at": k.activates_at,
        "superseded_at": k.superseded_at,
        "unpublish_at": k.unpublish_at,
    })
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RotateBody {
    #[serde(default)]
    immediate: bool,
}

pub async fn keys_rotate(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> HttpResponse {
    let a = admit_or_answer!(req, state, Need::HumanOnly);
    let RotateBody { immediate } = if body.is_empty() {
        RotateBody::default()
    } else {
        try_answer!(from_object(try_answer!(body_object(&body))))
    };
    let rows = try_answer!(rotate_keys(&state, a.ctx, immediate).await);
    ok(&json!({ "created": rows }))
}

/// Rotates both signing keys (shared with the console); returns the new kids.
pub async fn rotate_keys(
    state: &AppState,
    ctx: crate::audit::AuditContext,
    immediate: bool,
) -> Result<Vec<String>, HttpResponse> {
    let (clock, sealer, timing) = (state.clock.clone(), state.sealer.clone(), key_timing(state));
    let rows = db(state, move |conn| {
        Ok(keys::rotate(
            conn,
            &sealer,
            clock.as_ref(),
            &ctx,
            timing,
            &KeyAlg::ALL,
            immediate,
        )?)
    })
    .await?;
    Ok(rows.into_iter().map(|r| r.kid).collect())
}

fn time_param(q: &HashMap<String, String>, name: &str) -> Result<Option<i64>, HttpResponse> {
    match q.get(name) {
        None => Ok(None),
        Some(text) => crate::clock::parse_time_millis(text)
            .map(Some)
            .ok_or_else(|| {
                invalid(vec![FieldError::new(
                    name,
                    "must be an RFC 3339 time or a YYYY-MM-DD date (UTC)",
                )])
            }),
    }
}

/// The audit search's query, from request parameters (shared with the console).
pub fn audit_query(q: &HashMap<String, String>, limit: i64) -> Result<AuditQuery, HttpResponse> {
    let text = |k: &str| {
        q.get(k)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    Ok(AuditQuery {
        action: text("action"),
        actor: text("actor"),
        patient: text("patient"),
        outcome: text("outcome"),
        since_ms: time_param(q, "since")?,
        until_ms: time_param(q, "until")?,
        before_id: int_param(q, "before")?,
        limit,
    })
}

pub async fn audit_search(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    admit_or_answer!(req, state, Need::Read);
    let q = query_map(&req);
    let limit = try_answer!(int_param(&q, "limit")).unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return invalid(vec![FieldError::new(
            "limit",
            format!("must be 1 to {MAX_LIMIT}"),
        )]);
    }
    let query = try_answer!(audit_query(&q, limit));
    let format = q.get("_format").cloned().unwrap_or_else(|| "json".into());
    if !matches!(format.as_str(), "json" | "fhir" | "ndjson") {
        return invalid(vec![FieldError::new(
            "_format",
            "use json, fhir (a Bundle) or ndjson",
        )]);
    }
    let rows = try_answer!(db(&state, move |conn| admin::search_audit(conn, &query)).await);
    if format != "json" {
        // FHIR R4 AuditEvent resources (IHE BALP codes), oldest first.
        let mut oldest_first = rows.clone();
        oldest_first.reverse();
        let observer = crate::audit::fhir::Observer {
            issuer: &state.issuer,
            node_hint: Some(&state.node),
        };
        return if format == "fhir" {
            HttpResponse::Ok()
                .content_type("application/fhir+json")
                .insert_header((header::CACHE_CONTROL, "no-store"))
                .body(crate::audit::fhir::to_bundle(&oldest_first, &observer).to_string())
        } else {
            HttpResponse::Ok()
                .content_type("application/fhir+ndjson")
                .insert_header((header::CACHE_CONTROL, "no-store"))
                .body(crate::audit::fhir::to_ndjson(&oldest_first, &observer))
        };
    }
    let next = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|r| r.id))
        .flatten();
    ok(&json!({
        "items": rows.iter().map(admin::event_view).collect::<Vec<_>>(),
        "next_before": next,
    }))
}

/// Accounting of disclosures for one patient: JSON (default) or `_format=csv`.
pub async fn disclosures(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    admit_or_answer!(req, state, Need::Read);
    let q = query_map(&req);
    let Some(patient) = q.get("patient").cloned().filter(|p| !p.trim().is_empty()) else {
        return invalid(vec![FieldError::new(
            "patient",
            "is required: Patient/123 or 123",
        )]);
    };
    let since = try_answer!(time_param(&q, "since"));
    let until = try_answer!(time_param(&q, "until"));
    let format = q.get("_format").cloned().unwrap_or_else(|| "json".into());
    if !matches!(format.as_str(), "json" | "csv") {
        return invalid(vec![FieldError::new("_format", "use json or csv")]);
    }
    let p = patient.clone();
    let items = try_answer!(
        db(&state, move |conn| {
            let rows = crate::audit::disclosures::events(conn, &p, since, until)?;
            Ok(crate::audit::disclosures::disclosures(conn, &rows)?)
        })
        .await
    );
    if format == "csv" {
        return HttpResponse::Ok()
            .content_type("text/csv; charset=utf-8")
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .body(crate::audit::disclosures::to_csv(&items));
    }
    ok(&json!({
        "patient": format!("Patient/{}", crate::audit::disclosures::patient_id(&patient)),
        "disclosures": items,
        "limits": crate::audit::disclosures::LIMITS,
    }))
}
