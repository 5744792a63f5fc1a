//! The admin console: server-rendered pages over the same operations as the JSON API. Every
//! page is one generic template (`admin.html`) filled with sections (tables and forms), so
//! every page looks and behaves alike; no JavaScript. Forms carry the session's CSRF token; a
//! sensitive action with a stale second factor sends the admin to sign in again and back.

#![allow(clippy::result_large_err)] // see api.rs

use std::collections::HashMap;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use askama::Template;
use serde_json::Value;

use super::{admit, check, Admitted, Refused};
use crate::admin::access::{need_for_client, need_for_role, need_for_user, Need, ADMIN_ROLE};
use crate::admin::{self, AdminError};
use crate::app::AppState;
use crate::authn::accounts;
use crate::authz::roles::{self, RoleChanges};
use crate::authz::users;
use crate::clients::{self, ClientSpec, FieldError};
use crate::clock::format_secs;
use crate::store::grants::GrantOwner;
use crate::store::Page as Window;

use crate::http::pages::{message, redirect};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/admin", web::get().to(home))
        .route("/admin/clients", web::get().to(clients_page))
        .route("/admin/clients", web::post().to(client_create))
        .route("/admin/clients/{client_id}", web::get().to(client_page))
        .route("/admin/clients/{client_id}", web::post().to(client_edit))
        .route(
            "/admin/clients/{client_id}/status",
            web::post().to(client_status),
        )
        .route(
            "/admin/clients/{client_id}/secret",
            web::post().to(client_secret),
        )
        .route(
            "/admin/clients/{client_id}/revoke",
            web::post().to(client_revoke),
        )
        .route("/admin/users", web::get().to(users_page))
        .route("/admin/users", web::post().to(user_create))
        .route("/admin/users/{username}", web::get().to(user_page))
        .route("/admin/users/{username}", web::post().to(user_edit))
        .route(
            "/admin/users/{username}/{action}",
            web::post().to(user_action),
        )
        .route("/admin/roles", web::get().to(roles_page))
        .route("/admin/roles", web::post().to(role_create))
        .route("/admin/roles/{name}", web::get().to(role_page))
        .route("/admin/roles/{name}", web::post().to(role_edit))
        .route("/admin/explain", web::get().to(explain_page))
        .route("/admin/patients", web::get().to(patients_page))
        .route("/admin/patients/import", web::post().to(patients_import))
        .route("/admin/patients/{id}", web::get().to(patient_page))
        .route("/admin/patients/{id}", web::post().to(patient_edit))
        .route(
            "/admin/patients/{id}/remove",
            web::post().to(patient_remove),
        )
        .route("/admin/keys", web::get().to(keys_page))
        .route("/admin/keys/rotate", web::post().to(keys_rotate))
        .route("/admin/audit", web::get().to(audit_page));
}

// --- the page model ----------------------------------------------------------------------

pub struct Cell {
    pub text: String,
    pub href: Option<String>,
}

fn cell(text: impl Into<String>) -> Cell {
    Cell {
        text: text.into(),
        href: None,
    }
}

fn link(text: impl Into<String>, href: impl Into<String>) -> Cell {
    Cell {
        text: text.into(),
        href: Some(href.into()),
    }
}

pub struct TableView {
    pub id: String,
    pub headers: Vec<String>,
    pub rows: Vec<Vec<Cell>>,
    pub more: Option<String>,
}

pub enum FieldKind {
    Text,
    Password,
    Textarea,
    Checkbox,
    Hidden,
    Select(Vec<(String, String)>),
}

pub struct Field {
    pub label: String,
    pub name: String,
    pub kind: FieldKind,
    pub value: String,
    pub help: String,
}

fn field(label: &str, name: &str, kind: FieldKind, value: impl Into<String>, help: &str) -> Field {
    Field {
        label: label.into(),
        name: name.into(),
        kind,
        value: value.into(),
        help: help.into(),
    }
}

fn hidden(name: &str, value: impl Into<String>) -> Field {
    field("", name, FieldKind::Hidden, value, "")
}

pub struct FormView {
    pub id: String,
    pub action: String,
    pub method: &'static str,
    pub fields: Vec<Field>,
    pub submit: String,
    pub danger: bool,
    pub inline: bool,
}

fn form(id: &str, action: impl Into<String>, submit: &str, fields: Vec<Field>) -> FormView {
    FormView {
        id: id.into(),
        action: action.into(),
        method: "post",
        fields,
        submit: submit.into(),
        danger: false,
        inline: false,
    }
}

fn button(id: &str, action: impl Into<String>, submit: &str, danger: bool) -> Section {
    Section::Form(FormView {
        danger,
        inline: true,
        ..form(id, action, submit, vec![])
    })
}

fn search_form(action: &str, value: &str, label: &str) -> Section {
    Section::Form(FormView {
        method: "get",
        inline: true,
        ..form(
            "search",
            action,
            "Search",
            vec![field(label, "search", FieldKind::Text, value, "")],
        )
    })
}

pub enum Section {
    Heading(String),
    Text(String),
    Secret { label: String, value: String },
    Pre(String),
    Table(TableView),
    Form(FormView),
}

#[derive(Template)]
#[template(path = "admin.html")]
pub struct AdminPageView {
    pub title: String,
    pub who: String,
    pub csrf: String,
    pub nav: Vec<(&'static str, &'static str)>,
    pub active: &'static str,
    pub notice: Option<String>,
    pub error: Option<String>,
    pub errors: Vec<FieldError>,
    pub sections: Vec<Section>,
}

const NAV: &[(&str, &str)] = &[
    ("/admin/clients", "Clients"),
    ("/admin/users", "Users"),
    ("/admin/roles", "Roles"),
    ("/admin/explain", "Explain"),
    ("/admin/patients", "Patients"),
    ("/admin/keys", "Keys"),
    ("/admin/audit", "Audit"),
    ("/account", "Account"),
];

struct Screen {
    title: String,
    active: &'static str,
    notice: Option<String>,
    error: Option<String>,
    errors: Vec<FieldError>,
    sections: Vec<Section>,
}

impl Screen {
    fn new(title: impl Into<String>, active: &'static str) -> Self {
        Self {
            title: title.into(),
            active,
            notice: None,
            error: None,
            errors: Vec::new(),
            sections: Vec::new(),
        }
    }

    fn push(mut self, section: Section) -> Self {
        self.sections.push(section);
        self
    }
}

fn show(a: &Admitted, screen: Screen, status: StatusCode) -> HttpResponse {
    let view = AdminPageView {
        title: screen.title,
        who: a.actor.display(),
        csrf: a.csrf.clone().unwrap_or_default(),
        nav: NAV.to_vec(),
        active: screen.active,
        notice: screen.notice,
        error: screen.error,
        errors: screen.errors,
        sections: screen.sections,
    };
    crate::http::pages::render(status, &view)
        .unwrap_or_else(|_| HttpResponse::InternalServerError().body("template error"))
}

fn refused(r: Refused, back: &str) -> HttpResponse {
    let encoded: String = url::form_urlencoded::byte_serialize(back.as_bytes()).collect();
    let page = |status, title: &str, text: &str| {
        message(status, title, text, Some(("/account", "Your account")))
            .unwrap_or_else(|_| HttpResponse::build(status).finish())
    };
    match r {
        Refused::Unauthenticated(_) => redirect(&format!("/login?return_to={encoded}")),
        Refused::Reauthenticate => redirect(&format!("/login?prompt=login&return_to={encoded}")),
        Refused::Forbidden(reason) => page(StatusCode::FORBIDDEN, "Not allowed", &format!("The admin console is for admins: {reason}. The attempt was recorded.")),
        Refused::Csrf => page(StatusCode::FORBIDDEN, "This form has expired", "For your security the form could not be accepted. Go back, reload the page and try again."),
        Refused::Store(e) if e.is_unavailable() => page(StatusCode::SERVICE_UNAVAILABLE, "Unavailable", "The database is unavailable; try again shortly."),
        Refused::Store(e) => {
            tracing::error!(error = %e, "admin console storage error");
            page(StatusCode::INTERNAL_SERVER_ERROR, "Something went wrong", "It was logged.")
        }
    }
}

async fn enter(
    req: &HttpRequest,
    state: &AppState,
    need: Need,
    csrf: Option<&str>,
    back: &str,
) -> Result<Admitted, HttpResponse> {
    admit(req, state, need, false, csrf)
        .await
        .map_err(|r| refused(r, back))
}

async fn further(
    state: &AppState,
    a: &Admitted,
    need: Need,
    path: &str,
    back: &str,
) -> Result<(), HttpResponse> {
    check(state, &a.ctx, &a.actor, need, path)
        .await
        .map_err(|r| refused(r, back))
}

/// Changing a client that holds or would hold admin-API scopes is human-only with a fresh
/// second factor (such a client is a machine admin).
async fn further_for_client(
    state: &AppState,
    a: &Admitted,
    id: Option<&str>,
    new_scope: Option<&str>,
    path: &str,
) -> Result<(), HttpResponse> {
    let current = match id {
        Some(id) => {
            let id = id.to_owned();
            db(state, move |conn| Ok(clients::get(conn, &id)?))
                .await
                .ok()
                .map(|c| c.settings.allowed_scopes)
        }
        None => None,
    };
    let back = id.map_or("/admin/clients".to_owned(), |i| {
        format!("/admin/clients/{i}")
    });
    let need = need_for_client(current.as_deref(), new_scope, Need::Write);
    further(state, a, need, path, &back).await
}

fn form_map(body: &[u8]) -> HashMap<String, String> {
    url::form_urlencoded::parse(body).into_owned().collect()
}

fn query_map(req: &HttpRequest) -> HashMap<String, String> {
    url::form_urlencoded::parse(req.query_string().as_bytes())
        .into_owned()
        .collect()
}

fn get(map: &HashMap<String, String>, key: &str) -> String {
    map.get(key).cloned().unwrap_or_default()
}

fn lines(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

fn words(text: &str) -> Option<Vec<String>> {
    let w: Vec<String> = text.split_whitespace().map(str::to_owned).collect();
    (!w.is_empty()).then_some(w)
}

fn param(req: &HttpRequest, name: &str) -> String {
    req.match_info().get(name).unwrap_or_default().to_owned()
}

fn encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

async fn db<T, F>(state: &AppState, work: F) -> Result<T, AdminError>
where
    F: FnOnce(&mut crate::store::DbConnection) -> Result<T, AdminError> + Send + 'static,
    T: Send + 'static,
{
    state.db.run(work).await
}

/// An operation's failure as a page: invalid input and conflicts are shown on `screen`.
fn failed(a: &Admitted, mut screen: Screen, e: AdminError) -> HttpResponse {
    let status = match &e {
        AdminError::Invalid(_) => StatusCode::BAD_REQUEST,
        AdminError::NotFound(_) => StatusCode::NOT_FOUND,
        AdminError::Conflict(_) | AdminError::Stale(_) => StatusCode::CONFLICT,
        AdminError::Forbidden(_) => StatusCode::FORBIDDEN,
        AdminError::Store(s) if s.is_unavailable() => StatusCode::SERVICE_UNAVAILABLE,
        AdminError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    match e {
        AdminError::Invalid(errors) => {
            screen.error = Some("Nothing was saved: fix the fields below.".into());
            screen.errors = errors;
        }
        AdminError::Store(s) => {
            tracing::error!(error = %s, "admin console storage error");
            screen.error = Some("Something went wrong; it was logged. Nothing was saved.".into());
        }
        other => screen.error = Some(other.to_string()),
    }
    show(a, screen, status)
}

/// Admits a console form POST: parses the form, checks the caller and the form's CSRF field;
/// gives `(admitted, fields)` or answers at once.
macro_rules! enter_form {
    ($req:expr, $state:expr, $body:expr, $need:expr, $back:expr) => {{
        let fields = form_map(&$body);
        match enter(
            &$req,
            &$state,
            $need,
            fields.get("csrf").map(String::as_str),
            $back,
        )
        .await
        {
            Ok(a) => (a, fields),
            Err(r) => return r,
        }
    }};
}

macro_rules! enter_or_answer {
    ($req:expr, $state:expr, $need:expr, $csrf:expr, $back:expr) => {
        match enter(&$req, &$state, $need, $csrf, $back).await {
            Ok(a) => a,
            Err(r) => return r,
        }
    };
}

// --- home --------------------------------------------------------------------------------

pub async fn home(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let a = enter_or_answer!(req, state, Need::Read, None, "/admin");
    let mut screen = Screen::new("Ward administration", "/admin");
    screen = screen.push(Section::Text(
        "Register client apps, manage users and roles (least privilege lives in role scope ceilings), the patient directory, signing keys and the audit trail. Every change is recorded with your name."
            .into(),
    ));
    screen = screen.push(Section::Table(TableView {
        id: "areas".into(),
        headers: vec!["Area".into(), "What it is for".into()],
        rows: vec![
            vec![
                link("Clients", "/admin/clients"),
                cell("SMART apps, backend services and resource servers allowed to use Ward"),
            ],
            vec![
                link("Users", "/admin/users"),
                cell("People who sign in; their roles decide what apps may get on their behalf"),
            ],
            vec![
                link("Roles", "/admin/roles"),
                cell("Scope ceilings, MFA and break-glass per role"),
            ],
            vec![
                link("Explain", "/admin/explain"),
                cell("Which scopes a launch would get, and why"),
            ],
            vec![
                link("Patients", "/admin/patients"),
                cell("The directory behind the patient picker"),
            ],
            vec![
                link("Keys", "/admin/keys"),
                cell("Token signing keys: age and rotation"),
            ],
            vec![
                link("Audit", "/admin/audit"),
                cell("Every security decision, searchable"),
            ],
        ],
        more: None,
    }));
    show(&a, screen, StatusCode::OK)
}

// --- clients -----------------------------------------------------------------------------

const KINDS: &[(&str, &str)] = &[
    ("public", "Public app (browser or native; PKCE, no secret)"),
    (
        "confidential-symmetric",
        "Confidential app with a client secret",
    ),
    (
        "confidential-asymmetric",
        "Confidential app or backend service with a key pair (private_key_jwt)",
    ),
    (
        "resource-server",
        "Resource server (FHIR API that introspects tokens)",
    ),
];

fn options(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(v, t)| ((*v).to_owned(), (*t).to_owned()))
        .collect()
}

/// The registration form, filled from submitted values (or a client's current settings).
fn client_form(id: &str, action: &str, values: &HashMap<String, String>, new: bool) -> FormView {
    let v = |k: &str| get(values, k);
    let mut fields = Vec::new();
    if new {
        fields.push(field(
            "Client id",
            "client_id",
            FieldKind::Text,
            v("client_id"),
            "Optional: 3 to 64 letters, digits, `.`, `_` or `-`. Left empty, Ward generates one.",
        ));
        fields.push(field(
            "Kind",
            "kind",
            FieldKind::Select(options(KINDS)),
            v("kind"),
            "Decides how the client authenticates and its safe defaults; cannot change later.",
        ));
    }
    fields.extend([
        field("Name", "name", FieldKind::Text, v("name"), "Shown to people on the consent page."),
        field("Redirect URIs", "redirect_uris", FieldKind::Textarea, v("redirect_uris"), "One per line, matched exactly. https only, except http on a loopback IP for native apps; no wildcards, fragments or credentials."),
        field("Allowed scopes", "scope", FieldKind::Textarea, v("scope"), "The most this client may ever get, space-separated SMART scopes (e.g. launch openid fhirUser patient/Observation.rs). Users' roles and consent narrow it further."),
        field("FHIR base URLs", "fhir_bases", FieldKind::Textarea, v("fhir_bases"), "Resource servers: the FHIR bases they serve (one per line)."),
        field("Grant types", "grant_types", FieldKind::Text, v("grant_types"), "Space-separated; empty for the kind's default. Implicit and password are refused (RFC 9700)."),
        field("Launch modes", "launch_modes", FieldKind::Text, v("launch_modes"), "ehr and/or standalone; empty for both."),
        field("May create EHR launches", "ehr_launcher", FieldKind::Checkbox, v("ehr_launcher"), "For the EHR's own client: may call POST /launch."),
        field("AI tool", "ai_tool", FieldKind::Checkbox, v("ai_tool"), "Stricter rules: no wildcard scopes, no offline access, 5-minute tokens, every introspection audited."),
        field("Access-token lifetime (seconds)", "access_token_lifetime", FieldKind::Text, v("access_token_lifetime"), "Empty for the default."),
        field("Logo URL", "logo_uri", FieldKind::Text, v("logo_uri"), "https; shown on the consent page."),
        field("Contact", "contact", FieldKind::Text, v("contact"), "Who to call about this client."),
        field("JWKS (inline JSON)", "jwks", FieldKind::Textarea, v("jwks"), "Public keys for private_key_jwt: RSA ≥ 2048 bits or EC, with RS384 or ES384 among them. Or give a JWKS URL instead."),
        field("JWKS URL", "jwks_uri", FieldKind::Text, v("jwks_uri"), "https URL of the client's key set; fetched and checked before saving."),
    ]);
    form(
        id,
        action,
        if new {
            "Register client"
        } else {
            "Save changes"
        },
        fields,
    )
}

fn client_values(c: &clients::Client) -> HashMap<String, String> {
    let s = &c.settings;
    let join = |v: &[String], sep: &str| v.join(sep);
    let list = |v: Value| -> String {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default()
    };
    let view = c.public_view();
    HashMap::from([
        ("name".into(), s.name.clone()),
        ("redirect_uris".into(), join(&s.redirect_uris, "\n")),
        ("scope".into(), s.allowed_scopes.clone()),
        ("fhir_bases".into(), join(&s.fhir_bases, "\n")),
        ("grant_types".into(), list(view["grant_types"].clone())),
        ("launch_modes".into(), list(view["launch_modes"].clone())),
        ("ehr_launcher".into(), s.ehr_launcher.to_string()),
        ("ai_tool".into(), s.ai_tool.to_string()),
        (
            "access_token_lifetime".into(),
            s.access_token_lifetime.to_string(),
        ),
        ("logo_uri".into(), s.logo_uri.clone().unwrap_or_default()),
        ("contact".into(), s.contact.clone().unwrap_or_default()),
        (
            "jwks".into(),
            s.jwks.as_ref().map(|j| j.to_string()).unwrap_or_default(),
        ),
        ("jwks_uri".into(), s.jwks_uri.clone().unwrap_or_default()),
    ])
}

/// A registration from the form; a broken field becomes a field error.
fn spec_from_form(f: &HashMap<String, String>) -> Result<ClientSpec, Vec<FieldError>> {
    let opt = |k: &str| Some(get(f, k).trim().to_owned()).filter(|v| !v.is_empty());
    let mut errors = Vec::new();
    let access_token_lifetime = match opt("access_token_lifetime") {
        Some(t) => t
            .parse::<i64>()
            .map_err(|_| {
                errors.push(FieldError::new(
                    "access_token_lifetime",
                    "must be a number of seconds",
                ))
            })
            .ok(),
        None => None,
    };
    let jwks = match opt("jwks") {
        Some(t) => serde_json::from_str::<Value>(&t)
            .map_err(|e| errors.push(FieldError::new("jwks", format!("is not JSON: {e}"))))
            .ok(),
        None => None,
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(ClientSpec {
        client_id: opt("client_id"),
        name: get(f, "name").trim().to_owned(),
        kind: opt("kind"),
        redirect_uris: lines(&get(f, "redirect_uris")),
        fhir_bases: lines(&get(f, "fhir_bases")),
        grant_types: words(&get(f, "grant_types")),
        launch_modes: words(&get(f, "launch_modes")),
        scope: get(f, "scope")
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" "),
        ehr_launcher: get(f, "ehr_launcher") == "true",
        ai_tool: get(f, "ai_tool") == "true",
        access_token_lifetime,
        logo_uri: opt("logo_uri"),
        contact: opt("contact"),
        jwks,
        jwks_uri: opt("jwks_uri"),
        ..ClientSpec::default()
    })
}

async fn clients_screen(state: &AppState, search: &str, offset: i64) -> Result<Screen, AdminError> {
    let term = Some(search.to_owned()).filter(|s| !s.trim().is_empty());
    let window = Window { limit: 50, offset };
    let list = db(state, move |conn| {
        Ok(clients::list(conn, term.as_deref(), window)?)
    })
    .await?;
    let more = (list.len() == 50).then(|| {
        format!(
            "/admin/clients?search={}&offset={}",
            encode(search),
            offset + 50
        )
    });
    let rows = list
        .iter()
        .map(|c| {
            vec![
                link(
                    c.client_id.clone(),
                    format!("/admin/clients/{}", c.client_id),
                ),
                cell(c.settings.name.clone()),
                cell(c.settings.kind.as_str()),
                cell(if c.enabled { "enabled" } else { "disabled" }),
            ]
        })
        .collect();
    Ok(Screen::new("Clients", "/admin/clients")
        .push(search_form("/admin/clients", search, "Client id or name"))
        .push(Section::Table(TableView {
            id: "clients".into(),
            headers: vec![
                "Client id".into(),
                "Name".into(),
                "Kind".into(),
                "Status".into(),
            ],
            rows,
            more,
        }))
        .push(Section::Heading("Register a client".into())))
}

pub async fn clients_page(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let a = enter_or_answer!(req, state, Need::Read, None, "/admin/clients");
    let q = query_map(&req);
    let offset = get(&q, "offset")
        .parse()
        .unwrap_or(0i64)
        .clamp(0, 1_000_000);
    match clients_screen(&state, &get(&q, "search"), offset).await {
        Ok(screen) => show(
            &a,
            screen.push(Section::Form(client_form(
                "new-client",
                "/admin/clients",
                &HashMap::new(),
                true,
            ))),
            StatusCode::OK,
        ),
        Err(e) => failed(&a, Screen::new("Clients", "/admin/clients"), e),
    }
}

pub async fn client_create(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> HttpResponse {
    let (a, f) = enter_form!(req, state, body, Need::Write, "/admin/clients");
    let redisplay = |e: AdminError| {
        let screen = Screen::new("Register a client", "/admin/clients").push(Section::Form(
            client_form("new-client", "/admin/clients", &f, true),
        ));
        failed(&a, screen, e)
    };
    let mut spec = match spec_from_form(&f) {
        Ok(s) => s,
        Err(errors) => return redisplay(AdminError::Invalid(errors)),
    };
    if let Err(r) = further_for_client(&state, &a, None, Some(&spec.scope), req.path()).await {
        return r;
    }
    let client_id = spec.client_id.take();
    let settings = match clients::validate_spec(&spec, state.client_keys.fetcher()).await {
        Ok(s) => s,
        Err(e) => return redisplay(e.into()),
    };
    let (clock, ctx) = (state.clock.clone(), a.ctx.clone());
    match db(&state, move |conn| {
        Ok(clients::register(
            conn,
            clock.as_ref(),
            &ctx,
            client_id,
            settings,
        )?)
    })
    .await
    {
        Ok(created) => {
            let id = created.client.client_id.clone();
            let mut screen = Screen::new(format!("Client {id} registered"), "/admin/clients");
            screen.notice = Some(format!(
                "Registered {} ({}).",
                created.client.settings.name, id
            ));
            screen = screen.push(Section::Table(TableView {
                id: "created".into(),
                headers: vec!["client_id".into()],
                rows: vec![vec![link(id.clone(), format!("/admin/clients/{id}"))]],
                more: None,
            }));
            if let Some(secret) = created.secret {
                screen = screen.push(Section::Secret {
                    label: "Client secret".into(),
                    value: secret,
                });
            }
            show(&a, screen, StatusCode::CREATED)
        }
        Err(e) => redisplay(e),
    }
}

async fn client_screen(
    state: &AppState,
    id: &str,
) -> Result<(Screen, clients::Client), AdminError> {
    let (id2, clock) = (id.to_owned(), state.clock.clone());
    let (client, grants) = db(state, move |conn| {
        let client = clients::get(conn, &id2)?;
        let grants = admin::grants_of_client(conn, clock.as_ref(), &id2)?;
        Ok((client, grants))
    })
    .await?;
    let base = format!("/admin/clients/{id}");
    let s = &client.settings;
    let mut screen = Screen::new(format!("Client {}", s.name), "/admin/clients").push(
        Section::Table(TableView {
            id: "client-summary".into(),
            headers: vec![
                "client_id".into(),
                "Kind".into(),
                "Authentication".into(),
                "Status".into(),
                "Version".into(),
            ],
            rows: vec![vec![
                cell(client.client_id.clone()),
                cell(s.kind.as_str()),
                cell(s.auth_method.as_str()),
                cell(if client.enabled {
                    "enabled"
                } else {
                    "disabled"
                }),
                cell(client.version.to_string()),
            ]],
            more: None,
        }),
    );
    screen = screen.push(if client.enabled {
        button(
            "disable",
            format!("{base}/status?enabled=false"),
            "Disable client",
            true,
        )
    } else {
        button(
            "enable",
            format!("{base}/status?enabled=true"),
            "Enable client",
            false,
        )
    });
    if s.uses_secret() {
        screen = screen.push(button(
            "rotate-secret",
            format!("{base}/secret"),
            "Rotate secret",
            false,
        ));
    }
    screen = screen
        .push(Section::Heading("Edit".into()))
        .push(Section::Form({
            let mut f = client_form("edit-client", &base, &client_values(&client), false);
            f.fields.push(hidden("version", client.version.to_string()));
            f
        }))
        .push(Section::Heading(format!(
            "Active grants ({})",
            grants.len()
        )))
        .push(Section::Table(TableView {
            id: "grants".into(),
            headers: vec![
                "Grant".into(),
                "Kind".into(),
                "User".into(),
                "Patient".into(),
                "Scopes".into(),
                "Expires".into(),
            ],
            rows: grants
                .iter()
                .map(|g| {
                    vec![
                        cell(g.id.clone()),
                        cell(g.kind.clone()),
                        cell(g.user_id.clone().unwrap_or_default()),
                        cell(g.patient.clone().unwrap_or_default()),
                        cell(g.scope.clone()),
                        cell(format_secs(g.expires_at)),
                    ]
                })
                .collect(),
            more: None,
        }))
        .push(button(
            "revoke-all",
            format!("{base}/revoke"),
            "Revoke every token of this client",
            true,
        ));
    Ok((screen, client))
}

pub async fn client_page(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let id = param(&req, "client_id");
    let back = format!("/admin/clients/{id}");
    let a = enter_or_answer!(req, state, Need::Read, None, &back);
    match client_screen(&state, &id).await {
        Ok((screen, _)) => show(&a, screen, StatusCode::OK),
        Err(e) => failed(&a, Screen::new("Client", "/admin/clients"), e),
    }
}

/// After a change: the detail page again, with a notice (or the error).
async fn client_after(
    a: &Admitted,
    state: &AppState,
    id: &str,
    outcome: Result<String, AdminError>,
    extra: Option<Section>,
) -> HttpResponse {
    let page = client_screen(state, id).await;
    match (outcome, page) {
        (Ok(notice), Ok((mut screen, _))) => {
            screen.notice = Some(notice);
            if let Some(extra) = extra {
                screen.sections.insert(0, extra);
            }
            show(a, screen, StatusCode::OK)
        }
        (Err(e), Ok((screen, _))) => failed(a, screen, e),
        (_, Err(e)) => failed(a, Screen::new("Client", "/admin/clients"), e),
    }
}

pub async fn client_edit(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> HttpResponse {
    let id = param(&req, "client_id");
    let back = format!("/admin/clients/{id}");
    let (a, f) = enter_form!(req, state, body, Need::Write, &back);
    let new_scope = get(&f, "scope");
    if let Err(r) = further_for_client(&state, &a, Some(&id), Some(&new_scope), req.path()).await {
        return r;
    }
    let outcome = async {
        let spec = spec_from_form(&f).map_err(AdminError::Invalid)?;
        let settings = clients::validate_spec(&spec, state.client_keys.fetcher()).await?;
        let expected = get(&f, "version").parse::<i64>().ok();
        let (clock, ctx, id) = (state.clock.clone(), a.ctx.clone(), id.clone());
        db(&state, move |conn| {
            Ok(clients::update(
                conn,
                clock.as_ref(),
                &ctx,
                &id,
                settings,
                expected,
            )?)
        })
        .await?;
        Ok("Saved.".to_owned())
    }
    .await;
    client_after(&a, &state, &id, outcome, None).await
}

pub async fn client_status(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> HttpResponse {
    let id = param(&req, "client_id");
    let back = format!("/admin/clients/{id}");
    let (a, _) = enter_form!(req, state, body, Need::Write, &back);
    let enabled = get(&query_map(&req), "enabled") == "true";
    // Disabling only takes power away; enabling an admin client is human-only.
    if enabled {
        if let Err(r) = further_for_client(&state, &a, Some(&id), None, req.path()).await {
            return r;
        }
    }
    let (clock, ctx, id2) = (state.clock.clone(), a.ctx.clone(), id.clone());
    let outcome = db(&state, move |conn| {
        Ok(clients::set_enabled(
            conn,
            clock.as_ref(),
            &ctx,
            &id2,
            enabled,
        )?)
    })
    .await
    .map(|_| {
        if enabled {
            "Enabled.".to_owned()
        } else {
            "Disabled: its tokens stop working at once.".to_owned()
        }
    });
    client_after(&a, &state, &id, outcome, None).await
}

pub async fn client_secret(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> HttpResponse {
    let id = param(&req, "client_id");
    let back = format!("/admin/clients/{id}");
    let (a, _) = enter_form!(req, state, body, Need::Write, &back);
    if let Err(r) = further_for_client(&state, &a, Some(&id), None, req.path()).await {
        return r;
    }
    let grace = i64::try_from(state.settings.clients.secret_grace_seconds).unwrap_or(0);
    let (clock, ctx, id2) = (state.clock.clone(), a.ctx.clone(), id.clone());
    match db(&state, move |conn| {
        Ok(clients::rotate_secret(
            conn,
            clock.as_ref(),
            &ctx,
            &id2,
            grace,
        )?)
    })
    .await
    {
        Ok(secret) => {
            let notice =
                format!("New secret issued; the previous one keeps working for {grace} seconds.");
            client_after(
                &a,
                &state,
                &id,
                Ok(notice),
                Some(Section::Secret {
                    label: "New client secret".into(),
                    value: secret,
                }),
            )
            .await
        }
        Err(e) => client_after(&a, &state, &id, Err(e), None).await,
    }
}

pub async fn client_revoke(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> HttpResponse {
    let id = param(&req, "client_id");
    let back = format!("/admin/clients/{id}");
    let (a, _) = enter_form!(req, state, body, Need::Sensitive, &back);
    let (clock, ctx, id2) = (state.clock.clone(), a.ctx.clone(), id.clone());
    let outcome = db(&state, move |conn| {
        admin::revoke_all(
            conn,
            clock.as_ref(),
            &ctx,
            GrantOwner::Client(&id2),
            "revoked_by_admin",
        )
    })
    .await
    .map(|n| format!("Revoked {n} grant(s): every token of this client stopped working."));
    client_after(&a, &state, &id, outcome, None).await
}

// --- users -------------------------------------------------------------------------------

fn user_create_form(values: &HashMap<String, String>) -> FormView {
    let v = |k: &str| get(values, k);
    form(
        "new-user",
        "/admin/users",
        "Create user",
        vec![
            field(
                "Username",
                "username",
                FieldKind::Text,
                v("username"),
                "1 to 64 letters, digits, `.`, `_`, `-` or `@`; not case-sensitive.",
            ),
            field(
                "Display name",
                "display_name",
                FieldKind::Text,
                v("display_name"),
                "How Ward addresses them.",
            ),
            field(
                "fhirUser",
                "fhir_user",
                FieldKind::Text,
                v("fhir_user"),
                "Their FHIR resource: Practitioner/123, Patient/456, … (optional).",
            ),
            field(
                "Roles",
                "roles",
                FieldKind::Text,
                v("roles"),
                "Space-separated role names; roles decide the most any app may get for them.",
            ),
            field(
                "Initial password",
                "password",
                FieldKind::Password,
                "",
                "Leave empty and tick the box below to let them choose their own.",
            ),
            field(
                "Send a one-time enrolment link instead",
                "enrolment_link",
                FieldKind::Checkbox,
                v("enrolment_link"),
                "The link is shown once; it expires and works only once.",
            ),
        ],
    )
}

pub async fn users_page(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let a = enter_or_answer!(req, state, Need::Read, None, "/admin/users");
    let q = query_map(&req);
    let search = get(&q, "search");
    let offset = get(&q, "offset")
        .parse()
        .unwrap_or(0i64)
        .clamp(0, 1_000_000);
    let term = Some(search.clone()).filter(|s| !s.trim().is_empty());
    let window = Window { limit: 50, offset };
    match db(&state, move |conn| {
        Ok(users::list(conn, term.as_deref(), window)?)
    })
    .await
    {
        Ok(list) => {
            let more = (list.len() == 50).then(|| {
                format!(
                    "/admin/users?search={}&offset={}",
                    encode(&search),
                    offset + 50
                )
            });
            let screen = Screen::new("Users", "/admin/users")
                .push(search_form("/admin/users", &search, "Username or name"))
                .push(Section::Table(TableView {
                    id: "users".into(),
                    headers: vec![
                        "Username".into(),
                        "Name".into(),
                        "Roles".into(),
                        "Status".into(),
                    ],
                    rows: list
                        .iter()
                        .map(|u| {
                            vec![
                                link(
                                    u.username.clone(),
                                    format!("/admin/users/{}", encode(&u.username)),
                                ),
                                cell(u.display_name.clone()),
                                cell(u.roles.join(" ")),
                                cell(if u.enabled { "enabled" } else { "disabled" }),
                            ]
                        })
                        .collect(),
                    more,
                }))
                .push(Section::Heading("Create a user".into()))
                .push(Section::Form(user_create_form(&HashMap::new())));
            show(&a, screen, StatusCode::OK)
        }
        Err(e) => failed(&a, Screen::new("Users", "/admin/users"), e),
    }
}

pub async fn user_create(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> HttpResponse {
    let (a, f) = enter_form!(req, state, body, Need::Write, "/admin/users");
    let roles = get(&f, "roles")
        .split_whitespace()
        .map(str::to_owned)
        .collect::<Vec<_>>();
    if roles.iter().any(|r| r == ADMIN_ROLE) {
        if let Err(r) = further(&state, &a, Need::HumanOnly, req.path(), "/admin/users").await {
            return r;
        }
    }
    let redisplay = |e: AdminError| {
        failed(
            &a,
            Screen::new("Create a user", "/admin/users").push(Section::Form(user_create_form(&f))),
            e,
        )
    };
    let password = Some(get(&f, "password")).filter(|p| !p.is_empty());
    let body = super::api::NewUserBody {
        username: get(&f, "username"),
        display_name: Some(get(&f, "display_name")).filter(|d| !d.trim().is_empty()),
        fhir_user: Some(get(&f, "fhir_user")).filter(|d| !d.trim().is_empty()),
        roles,
        password,
        enrolment_link: get(&f, "enrolment_link") == "true",
    };
    match super::api::create_user(&state, &a, body).await {
        Ok((view, _)) => {
            let username = view["username"].as_str().unwrap_or_default().to_owned();
            let mut screen = Screen::new(format!("User {username} created"), "/admin/users").push(
                Section::Table(TableView {
                    id: "created".into(),
                    headers: vec!["Username".into(), "Roles".into()],
                    rows: vec![vec![
                        link(
                            username.clone(),
                            format!("/admin/users/{}", encode(&username)),
                        ),
                        cell(
                            view["roles"]
                                .as_array()
                                .map(|r| {
                                    r.iter()
                                        .filter_map(Value::as_str)
                                        .collect::<Vec<_>>()
                                        .join(" ")
                                })
                                .unwrap_or_default(),
                        ),
                    ]],
                    more: None,
                }),
            );
            screen.notice = Some("User created.".into());
            if let Some(link) = view["enrolment_link"].as_str() {
                screen = screen.push(Section::Secret {
                    label: "One-time enrolment link".into(),
                    value: link.to_owned(),
                });
            }
            show(&a, screen, StatusCode::CREATED)
        }
        Err(response)
            if response.status() == StatusCode::BAD_REQUEST
                || response.status() == StatusCode::CONFLICT
                || response.status() == StatusCode::NOT_FOUND =>
        {
            redisplay(AdminError::Invalid(vec![FieldError::new(
                "user",
                problem_detail(response).await,
            )]))
        }
        Err(response) => response,
    }
}

/// The human-readable part of an API problem response (the console shares the API's user
/// creation, which answers problems).
async fn problem_detail(response: HttpResponse) -> String {
    let body = actix_web::body::to_bytes(response.into_body())
        .await
        .unwrap_or_default();
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mut parts = vec![v["detail"].as_str().unwrap_or("refused").to_owned()];
    if let Some(errors) = v["errors"].as_array() {
        parts.extend(errors.iter().map(|e| {
            format!(
                "{}: {}",
                e["field"].as_str().unwrap_or(""),
                e["message"].as_str().unwrap_or("")
            )
        }));
    }
    parts.join(" ")
}

async fn user_screen(state: &AppState, username: &str) -> Result<Screen, AdminError> {
    let name = username.to_owned();
    let (user, sessions, locked) = db(state, move |conn| {
        let user = users::get_by_username(conn, &name)?;
        let sessions = admin::sessions_of(conn, &name)?;
        let locked = crate::store::credentials::login_user_by_id(conn, &user.id)?
            .is_some_and(|u| u.locked_at.is_some());
        Ok((user, sessions, locked))
    })
    .await?;
    let base = format!("/admin/users/{}", encode(&user.username));
    let mut screen = Screen::new(format!("User {}", user.username), "/admin/users")
        .push(Section::Table(TableView {
            id: "user-summary".into(),
            headers: vec![
                "Username".into(),
                "Roles".into(),
                "Status".into(),
                "Locked".into(),
            ],
            rows: vec![vec![
                cell(user.username.clone()),
                cell(user.roles.join(" ")),
                cell(if user.enabled { "enabled" } else { "disabled" }),
                cell(if locked { "locked" } else { "no" }),
            ]],
            more: None,
        }))
        .push(Section::Form(form(
            "edit-user",
            base.clone(),
            "Save",
            vec![
                field(
                    "Display name",
                    "display_name",
                    FieldKind::Text,
                    user.display_name.clone(),
                    "",
                ),
                field(
                    "fhirUser",
                    "fhir_user",
                    FieldKind::Text,
                    user.fhir_user.clone().unwrap_or_default(),
                    "Practitioner/123, Patient/456, … or empty.",
                ),
                hidden("version", user.version.to_string()),
            ],
        )))
        .push(Section::Heading("Roles".into()))
        .push(Section::Form(FormView {
            inline: true,
            ..form(
                "add-role",
                format!("{base}/add-role"),
                "Add role",
                vec![field("Role", "role", FieldKind::Text, "", "")],
            )
        }));
    for role in &user.roles {
        screen = screen.push(Section::Form(FormView {
            danger: true,
            inline: true,
            ..form(
                &format!("remove-role-{role}"),
                format!("{base}/remove-role"),
                &format!("Remove {role}"),
                vec![hidden("role", role.clone())],
            )
        }));
    }
    screen = screen.push(Section::Heading("Account".into()));
    screen = screen.push(if user.enabled {
        button(
            "disable",
            format!("{base}/disable"),
            "Disable (ends sessions, revokes tokens)",
            true,
        )
    } else {
        button("enable", format!("{base}/enable"), "Enable", false)
    });
    screen = screen
        .push(button("unlock", format!("{base}/unlock"), "Unlock", false))
        .push(button(
            "reset-mfa",
            format!("{base}/reset-mfa"),
            "Reset second factors",
            true,
        ))
        .push(button(
            "enrolment-link",
            format!("{base}/enrolment-link"),
            "New enrolment link",
            false,
        ))
        .push(Section::Heading(format!("Sessions ({})", sessions.len())))
        .push(Section::Table(TableView {
            id: "sessions".into(),
            headers: vec![
                "Session".into(),
                "Started".into(),
                "Last seen".into(),
                "From".into(),
            ],
            rows: sessions
                .iter()
                .map(|s| {
                    vec![
                        cell(s.id.clone()),
                        cell(format_secs(s.created_at)),
                        cell(format_secs(s.last_seen_at)),
                        cell(s.source_ip.clone().unwrap_or_default()),
                    ]
                })
                .collect(),
            more: None,
        }));
    if !sessions.is_empty() {
        screen = screen.push(button(
            "end-sessions",
            format!("{base}/end-sessions"),
            "End every session",
            true,
        ));
    }
    Ok(screen)
}

pub async fn user_page(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let name = param(&req, "username");
    let back = format!("/admin/users/{}", encode(&name));
    let a = enter_or_answer!(req, state, Need::Read, None, &back);
    match user_screen(&state, &name).await {
        Ok(screen) => show(&a, screen, StatusCode::OK),
        Err(e) => failed(&a, Screen::new("User", "/admin/users"), e),
    }
}

async fn user_after(
    a: &Admitted,
    state: &AppState,
    name: &str,
    outcome: Result<String, AdminError>,
    extra: Option<Section>,
) -> HttpResponse {
    match (outcome, user_screen(state, name).await) {
        (Ok(notice), Ok(mut screen)) => {
            screen.notice = Some(notice);
            if let Some(extra) = extra {
                screen.sections.insert(0, extra);
            }
            show(a, screen, StatusCode::OK)
        }
        (Err(e), Ok(screen)) => failed(a, screen, e),
        (_, Err(e)) => failed(a, Screen::new("User", "/admin/users"), e),
    }
}

/// Admits a change to a user's account: human-only when the user is an admin.
async fn enter_for_user(
    req: &HttpRequest,
    state: &AppState,
    f: &HashMap<String, String>,
    need: Need,
) -> Result<(Admitted, users::User), HttpResponse> {
    let name = param(req, "username");
    let back = format!("/admin/users/{}", encode(&name));
    let a = enter(req, state, need, f.get("csrf").map(String::as_str), &back).await?;
    let user = {
        let name = name.clone();
        match db(state, move |conn| Ok(users::get_by_username(conn, &name)?)).await {
            Ok(u) => u,
            Err(e) => return Err(failed(&a, Screen::new("User", "/admin/users"), e)),
        }
    };
    further(
        state,
        &a,
        need_for_user(&user.roles, need),
        req.path(),
        &back,
    )
    .await?;
    Ok((a, user))
}

pub async fn user_edit(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> HttpResponse {
    let f = form_map(&body);
    let (a, user) = match enter_for_user(&req, &state, &f, Need::Write).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let (clock, ctx, name) = (state.clock.clone(), a.ctx.clone(), user.username.clone());
    let (display, fhir, version) = (
        get(&f, "display_name"),
        get(&f, "fhir_user"),
        get(&f, "version").parse::<i64>().ok(),
    );
    let outcome = db(&state, move |conn| {
        admin::update_user(
            conn,
            clock.as_ref(),
            &ctx,
            &name,
            &display,
            Some(fhir.as_str()),
            version,
        )
    })
    .await
    .map(|_| "Saved.".to_owned());
    user_after(&a, &state, &user.username, outcome, None).await
}

pub async fn user_action(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> HttpResponse {
    let f = form_map(&body);
    let action = param(&req, "action");
    let role = get(&f, "role").trim().to_owned();
    let need = match action.as_str() {
        "add-role" | "remove-role" => need_for_role(&role, Need::Write),
        "disable" | "enable" | "unlock" | "reset-mfa" | "enrolment-link" | "end-sessions" => {
            Need::Write
        }
        _ => {
            return message(
                StatusCode::NOT_FOUND,
                "Not found",
                "No such action.",
                Some(("/admin/users", "Users")),
            )
            .unwrap_or_else(|_| HttpResponse::NotFound().finish())
        }
    };
    let (a, user) = match enter_for_user(&req, &state, &f, need).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    if action == "enrolment-link" {
        // For someone who already has a password, a link is a password reset: sensitive.
        let name = user.username.clone();
        let back = format!("/admin/users/{}", encode(&user.username));
        match db(&state, move |conn| admin::has_password(conn, &name)).await {
            Ok(true) => {
                let need = need_for_user(&user.roles, Need::HumanOnly);
                if let Err(r) = further(&state, &a, need, req.path(), &back).await {
                    return r;
                }
            }
            Ok(false) => {}
            Err(e) => return failed(&a, Screen::new("User", "/admin/users"), e),
        }
    }
    let (clock, ctx, name) = (state.clock.clone(), a.ctx.clone(), user.username.clone());
    let link_seconds = i64::try_from(state.settings.admin.enrolment_link_seconds).unwrap_or(3600);
    let action2 = action.clone();
    let outcome = db(&state, move |conn| {
        let c = clock.as_ref();
        Ok(match action2.as_str() {
            "add-role" => {
                users::change_role(conn, c, &ctx, &name, &role, true)?;
                (format!("Role {role} added."), None)
            }
            "remove-role" => {
                users::change_role(conn, c, &ctx, &name, &role, false)?;
                (format!("Role {role} removed."), None)
            }
            "disable" => {
                accounts::set_enabled(conn, c, &ctx, &name, false)?;
                (
                    "Disabled: every session ended and every token was revoked.".to_owned(),
                    None,
                )
            }
            "enable" => {
                accounts::set_enabled(conn, c, &ctx, &name, true)?;
                ("Enabled.".to_owned(), None)
            }
            "unlock" => {
                let was = accounts::unlock(conn, c, &ctx, &name)?;
                (
                    if was {
                        "Unlocked."
                    } else {
                        "The account was not locked."
                    }
                    .to_owned(),
                    None,
                )
            }
            "reset-mfa" => {
                accounts::reset_mfa(conn, c, &ctx, &name)?;
                (
                    "Second factors removed; they enrol again at next sign-in.".to_owned(),
                    None,
                )
            }
            "enrolment-link" => {
                let (token, _) = admin::create_enrolment_link(conn, c, &ctx, &name, link_seconds)?;
                (
                    "A new enrolment link was created; earlier links stopped working.".to_owned(),
                    Some(token),
                )
            }
            _ => {
                let n = admin::end_sessions(conn, c, &ctx, &name, None)?;
                (format!("Ended {n} session(s)."), None)
            }
        })
    })
    .await;
    match outcome {
        Ok((notice, token)) => {
            let extra = token.map(|t| Section::Secret {
                label: "One-time enrolment link".into(),
                value: super::api::enrolment_url(&state, &t),
            });
            user_after(&a, &state, &user.username, Ok(notice), extra).await
        }
        Err(e) => user_after(&a, &state, &user.username, Err(e), None).await,
    }
}

// --- roles -------------------------------------------------------------------------------

fn role_form(id: &str, action: &str, values: &HashMap<String, String>, new: bool) -> FormView {
    let v = |k: &str| get(values, k);
    let mut fields = Vec::new();
    if new {
        fields.push(field(
            "Name",
            "name",
            FieldKind::Text,
            v("name"),
            "Lowercase letters, digits, `-` and `_`.",
        ));
    }
    fields.extend([
        field("Description", "description", FieldKind::Text, v("description"), ""),
        field("Scope ceiling", "scope_ceiling", FieldKind::Textarea, v("scope_ceiling"), "The most any holder may be granted: patient/ and user/ resource scopes, checked by the SMART scope parser (user/X also covers patient/X for the patient in context)."),
        field("Second factor required", "mfa_required", FieldKind::Checkbox, v("mfa_required"), "Holders must sign in with TOTP or a passkey."),
        field("Break-glass allowed", "break_glass", FieldKind::Checkbox, v("break_glass"), "Holders may invoke emergency access (audited, high severity)."),
        field("Passkey-only sign-in allowed", "passwordless", FieldKind::Checkbox, v("passwordless"), ""),
    ]);
    if !new {
        fields.push(hidden("version", v("version")));
    }
    form(
        id,
        action,
        if new { "Create role" } else { "Save role" },
        fields,
    )
}

fn role_values(r: &roles::Role) -> HashMap<String, String> {
    HashMap::from([
        ("description".into(), r.description.clone()),
        ("scope_ceiling".into(), r.scope_ceiling.clone()),
        ("mfa_required".into(), r.mfa_required.to_string()),
        ("break_glass".into(), r.break_glass.to_string()),
        ("passwordless".into(), r.passwordless.to_string()),
        ("version".into(), r.version.to_string()),
    ])
}

fn role_changes(f: &HashMap<String, String>, version: Option<i64>) -> RoleChanges {
    RoleChanges {
        description: Some(get(f, "description")),
        scope_ceiling: Some(
            get(f, "scope_ceiling")
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
        ),
        mfa_required: Some(get(f, "mfa_required") == "true"),
        break_glass: Some(get(f, "break_glass") == "true"),
        passwordless: Some(get(f, "passwordless") == "true"),
        expected_version: version,
    }
}

async fn roles_screen(state: &AppState) -> Result<Screen, AdminError> {
    let list = db(state, |conn| Ok(roles::list(conn)?)).await?;
    Ok(
        Screen::new("Roles", "/admin/roles").push(Section::Table(TableView {
            id: "roles".into(),
            headers: vec![
                "Role".into(),
                "Scope ceiling".into(),
                "MFA".into(),
                "Break-glass".into(),
            ],
            rows: list
                .iter()
                .map(|r| {
                    vec![
                        link(r.name.clone(), format!("/admin/roles/{}", r.name)),
                        cell(r.scope_ceiling.clone()),
                        cell(if r.mfa_required {
                            "required"
                        } else {
                            "optional"
                        }),
                        cell(if r.break_glass { "allowed" } else { "no" }),
                    ]
                })
                .collect(),
            more: None,
        })),
    )
}

pub async fn roles_page(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let a = enter_or_answer!(req, state, Need::Read, None, "/admin/roles");
    match roles_screen(&state).await {
        Ok(s) => show(
            &a,
            s.push(Section::Heading("Create a role".into()))
                .push(Section::Form(role_form(
                    "new-role",
                    "/admin/roles",
                    &HashMap::from([("mfa_required".to_owned(), "true".to_owned())]),
                    true,
                ))),
            StatusCode::OK,
        ),
        Err(e) => failed(&a, Screen::new("Roles", "/admin/roles"), e),
    }
}

pub async fn role_create(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> HttpResponse {
    let (a, f) = enter_form!(req, state, body, Need::Write, "/admin/roles");
    let (clock, ctx, name, changes) = (
        state.clock.clone(),
        a.ctx.clone(),
        get(&f, "name").trim().to_owned(),
        role_changes(&f, None),
    );
    match db(&state, move |conn| {
        Ok(roles::create(conn, clock.as_ref(), &ctx, &name, changes)?)
    })
    .await
    {
        Ok(role) => {
            let mut s = role_screen_of(&role);
            s.notice = Some(format!("Role {} created.", role.name));
            show(&a, s, StatusCode::CREATED)
        }
        Err(e) => failed(
            &a,
            Screen::new("Create a role", "/admin/roles").push(Section::Form(role_form(
                "new-role",
                "/admin/roles",
                &f,
                true,
            ))),
            e,
        ),
    }
}

fn role_screen_of(role: &roles::Role) -> Screen {
    Screen::new(format!("Role {}", role.name), "/admin/roles")
        .push(Section::Form(role_form(
            "edit-role",
            &format!("/admin/roles/{}", role.name),
            &role_values(role),
            false,
        )))
        .push(Section::Text(format!(
            "See what a launch would get: /admin/explain?user=…&client=… (role {}).",
            role.name
        )))
}

pub async fn role_page(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let name = param(&req, "name");
    let a = enter_or_answer!(
        req,
        state,
        Need::Read,
        None,
        &format!("/admin/roles/{name}")
    );
    match db(&state, move |conn| Ok(roles::get(conn, &name)?)).await {
        Ok(role) => show(&a, role_screen_of(&role), StatusCode::OK),
        Err(e) => failed(&a, Screen::new("Role", "/admin/roles"), e),
    }
}

pub async fn role_edit(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> HttpResponse {
    let name = param(&req, "name");
    let (a, f) = enter_form!(
        req,
        state,
        body,
        need_for_role(&name, Need::Write),
        &format!("/admin/roles/{name}")
    );
    let (clock, ctx, n, changes) = (
        state.clock.clone(),
        a.ctx.clone(),
        name.clone(),
        role_changes(&f, get(&f, "version").parse().ok()),
    );
    match db(&state, move |conn| {
        Ok(roles::update(conn, clock.as_ref(), &ctx, &n, changes)?)
    })
    .await
    {
        Ok(role) => {
            let mut s = role_screen_of(&role);
            s.notice = Some("Saved.".into());
            show(&a, s, StatusCode::OK)
        }
        Err(e) => {
            let mut values = f.clone();
            values.insert("version".into(), get(&f, "version"));
            failed(
                &a,
                Screen::new(format!("Role {name}"), "/admin/roles").push(Section::Form(role_form(
                    "edit-role",
                    &format!("/admin/roles/{name}"),
                    &values,
                    false,
                ))),
                e,
            )
        }
    }
}

pub async fn explain_page(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let a = enter_or_answer!(req, state, Need::Read, None, "/admin/explain");
    let q = query_map(&req);
    let (user, client, scope) = (get(&q, "user"), get(&q, "client"), get(&q, "scope"));
    let mut screen = Screen::new("Minimum necessary: what would a launch get?", "/admin/explain")
        .push(Section::Text("Granted = requested ∩ the client's allowed scopes ∩ the union of the user's role ceilings; consent can narrow it further.".into()))
        .push(Section::Form(FormView {
            method: "get",
            ..form("explain", "/admin/explain", "Explain", vec![
                field("Username", "user", FieldKind::Text, user.clone(), ""),
                field("Client id", "client", FieldKind::Text, client.clone(), ""),
                field("Requested scopes", "scope", FieldKind::Text, scope.clone(), "Empty: everything the client may ask for."),
            ])
        }));
    if !user.is_empty() && !client.is_empty() {
        match db(&state, move |conn| {
            admin::explain(conn, &user, &client, Some(scope.as_str()))
        })
        .await
        {
            Ok(e) => {
                screen = screen
                    .push(Section::Table(TableView {
                        id: "explain-summary".into(),
                        headers: vec!["Roles".into(), "Granted".into()],
                        rows: vec![vec![cell(e.roles.join(" ")), cell(e.granted.clone())]],
                        more: None,
                    }))
                    .push(Section::Table(TableView {
                        id: "explanation".into(),
                        headers: vec!["Requested".into(), "Outcome".into(), "Why".into()],
                        rows: e
                            .scopes
                            .iter()
                            .map(|x| match x {
                                crate::authz::grant::Explanation::Granted { scope } => vec![
                                    cell(scope.clone()),
                                    cell("granted"),
                                    cell("within the client's and the roles' limits"),
                                ],
                                crate::authz::grant::Explanation::Narrowed {
                                    scope,
                                    granted,
                                    reason,
                                } => vec![
                                    cell(scope.clone()),
                                    cell(format!("narrowed to {}", granted.join(" "))),
                                    cell(reason.clone()),
                                ],
                                crate::authz::grant::Explanation::Refused { scope, reason } => {
                                    vec![cell(scope.clone()), cell("refused"), cell(reason.clone())]
                                }
                            })
                            .collect(),
                        more: None,
                    }));
            }
            Err(e) => return failed(&a, screen, e),
        }
    }
    show(&a, screen, StatusCode::OK)
}

// --- patients ----------------------------------------------------------------------------

pub async fn patients_page(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let a = enter_or_answer!(req, state, Need::Read, None, "/admin/patients");
    match patients_screen(&state, &get(&query_map(&req), "search")).await {
        Ok(s) => show(&a, s, StatusCode::OK),
        Err(e) => failed(&a, Screen::new("Patients", "/admin/patients"), e),
    }
}

async fn patients_screen(state: &AppState, search: &str) -> Result<Screen, AdminError> {
    let term = search.trim().to_owned();
    let list = db(state, move |conn| {
        Ok(if term.is_empty() {
            crate::store::patients::page(conn, 50, 0)?
                .into_iter()
                .map(crate::patients::PatientSummary::from)
                .collect()
        } else {
            crate::patients::search(conn, &term, 50)?
        })
    })
    .await?;
    Ok(Screen::new("Patient directory", "/admin/patients")
        .push(search_form("/admin/patients", search, "Name, birth date or identifier"))
        .push(Section::Table(TableView {
            id: "patients".into(),
            headers: vec!["Id".into(), "Name".into(), "Birth date".into(), "Gender".into()],
            rows: list
                .iter()
                .map(|p| vec![
                    link(p.id.clone(), format!("/admin/patients/{}", p.id)),
                    cell(p.name.clone()),
                    cell(p.birth_date.clone().unwrap_or_default()),
                    cell(p.gender.clone().unwrap_or_default()),
                ])
                .collect(),
            more: None,
        }))
        .push(Section::Heading("Import".into()))
        .push(Section::Form(form("import", "/admin/patients/import", "Import", vec![field(
            "FHIR Patient resources (NDJSON)",
            "ndjson",
            FieldKind::Textarea,
            "",
            "One Patient resource per line, as a Bulk Data export writes them. Only name, birth date, gender and identifiers are kept. All or nothing.",
        )]))))
}

pub async fn patients_import(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> HttpResponse {
    let (a, f) = enter_form!(req, state, body, Need::Write, "/admin/patients");
    let (clock, ctx, text) = (state.clock.clone(), a.ctx.clone(), get(&f, "ndjson"));
    let outcome = db(&state, move |conn| {
        Ok(crate::patients::import(
            conn,
            clock.as_ref(),
            &ctx,
            std::io::Cursor::new(text.into_bytes()),
        )?)
    })
    .await;
    let screen = match patients_screen(&state, "").await {
        Ok(s) => s,
        Err(e) => return failed(&a, Screen::new("Patients", "/admin/patients"), e),
    };
    match outcome {
        Ok(report) if report.errors.is_empty() => {
            let mut s = screen;
            s.notice = Some(format!(
                "Imported: {} new, {} updated.",
                report.created, report.updated
            ));
            show(&a, s, StatusCode::OK)
        }
        Ok(report) => failed(
            &a,
            screen,
            AdminError::Invalid(
                report
                    .errors
                    .into_iter()
                    .map(|e| FieldError::new("ndjson", e))
                    .collect(),
            ),
        ),
        Err(e) => failed(&a, screen, e),
    }
}

fn patient_screen(p: &crate::patients::PatientSummary, resource: &str) -> Screen {
    Screen::new(format!("Patient {}", p.name), "/admin/patients")
        .push(Section::Table(TableView {
            id: "patient".into(),
            headers: vec![
                "Id".into(),
                "Name".into(),
                "Birth date".into(),
                "Gender".into(),
                "Identifiers".into(),
            ],
            rows: vec![vec![
                cell(p.id.clone()),
                cell(p.name.clone()),
                cell(p.birth_date.clone().unwrap_or_default()),
                cell(p.gender.clone().unwrap_or_default()),
                cell(
                    p.identifiers
                        .iter()
                        .map(|i| serde_json::to_string(i).unwrap_or_default())
                        .collect::<Vec<_>>()
                        .join(" "),
                ),
            ]],
            more: None,
        }))
        .push(Section::Heading("Edit".into()))
        .push(Section::Form(form(
            "edit-patient",
            format!("/admin/patients/{}", p.id),
            "Save",
            vec![field(
                "FHIR Patient resource",
                "resource",
                FieldKind::Textarea,
                resource,
                "The whole resource; the same rules as an import apply.",
            )],
        )))
        .push(button(
            "remove-patient",
            format!("/admin/patients/{}/remove", p.id),
            "Remove from the directory",
            true,
        ))
}

fn patient_resource(p: &crate::patients::PatientSummary) -> String {
    let (family, given) = p
        .name
        .split_once(", ")
        .map_or((p.name.clone(), String::new()), |(f, g)| {
            (f.to_owned(), g.to_owned())
        });
    let mut r = serde_json::json!({
        "resourceType": "Patient",
        "id": p.id,
        "name": [{ "family": family, "given": given.split_whitespace().collect::<Vec<_>>() }],
        "identifier": p.identifiers,
    });
    if let Some(b) = &p.birth_date {
        r["birthDate"] = serde_json::json!(b);
    }
    if let Some(g) = &p.gender {
        r["gender"] = serde_json::json!(g);
    }
    r.to_string()
}

pub async fn patient_page(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let id = param(&req, "id");
    let a = enter_or_answer!(
        req,
        state,
        Need::Read,
        None,
        &format!("/admin/patients/{id}")
    );
    let id2 = id.clone();
    match db(&state, move |conn| Ok(crate::patients::get(conn, &id2)?)).await {
        Ok(Some(p)) => show(
            &a,
            patient_screen(&p, &patient_resource(&p)),
            StatusCode::OK,
        ),
        Ok(None) => failed(
            &a,
            Screen::new("Patient", "/admin/patients"),
            AdminError::NotFound(format!("no patient `{id}`")),
        ),
        Err(e) => failed(&a, Screen::new("Patient", "/admin/patients"), e),
    }
}

pub async fn patient_edit(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> HttpResponse {
    let id = param(&req, "id");
    let (a, f) = enter_form!(
        req,
        state,
        body,
        Need::Write,
        &format!("/admin/patients/{id}")
    );
    let (clock, ctx, id2, resource) = (
        state.clock.clone(),
        a.ctx.clone(),
        id.clone(),
        get(&f, "resource"),
    );
    let text = resource.clone();
    match db(&state, move |conn| {
        admin::put_patient(conn, clock.as_ref(), &ctx, &id2, text.trim())
    })
    .await
    {
        Ok((p, _)) => {
            let mut s = patient_screen(&p, &patient_resource(&p));
            s.notice = Some("Saved.".into());
            show(&a, s, StatusCode::OK)
        }
        Err(e) => failed(
            &a,
            Screen::new(format!("Patient {id}"), "/admin/patients").push(Section::Form(form(
                "edit-patient",
                format!("/admin/patients/{id}"),
                "Save",
                vec![field(
                    "FHIR Patient resource",
                    "resource",
                    FieldKind::Textarea,
                    resource,
                    "",
                )],
            ))),
            e,
        ),
    }
}

pub async fn patient_remove(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> HttpResponse {
    let id = param(&req, "id");
    let (a, _) = enter_form!(
        req,
        state,
        body,
        Need::Write,
        &format!("/admin/patients/{id}")
    );
    let (clock, ctx, id2) = (state.clock.clone(), a.ctx.clone(), id.clone());
    let outcome = db(&state, move |conn| {
        admin::remove_patient(conn, clock.as_ref(), &ctx, &id2)
    })
    .await;
    match (outcome, patients_screen(&state, "").await) {
        (Ok(_), Ok(mut s)) => {
            s.notice = Some(format!("Patient {id} removed from the directory."));
            show(&a, s, StatusCode::OK)
        }
        (Err(e), _) | (_, Err(e)) => failed(&a, Screen::new("Patients", "/admin/patients"), e),
    }
}

// --- keys and audit ----------------------------------------------------------------------

async fn keys_screen(state: &AppState) -> Result<Screen, AdminError> {
    let (clock, timing, now) = (
        state.clock.clone(),
        super::api::key_timing(state),
        state.clock.now_secs(),
    );
    let rotation_days = i64::try_from(state.settings.keys.rotation_days).unwrap_or(90);
    let list = db(state, move |conn| {
        Ok(crate::keys::list(conn, clock.as_ref(), timing)?)
    })
    .await?;
    Ok(Screen::new("Signing keys", "/admin/keys")
        .push(Section::Text(format!("Keys older than {rotation_days} days are due for rotation. A rotated key is published at once and signs after the JWKS cache lifetime; the old one stays published until its tokens expire.")))
        .push(Section::Table(TableView {
            id: "keys".into(),
            headers: vec!["kid".into(), "Algorithm".into(), "State".into(), "Created".into(), "Age (days)".into()],
            rows: list
                .iter()
                .map(|k| vec![
                    cell(k.kid.clone()),
                    cell(k.alg.clone()),
                    cell(format!("{:?}", k.state).to_lowercase()),
                    cell(format_secs(k.created_at)),
                    cell(((now - k.created_at) / 86_400).to_string()),
                ])
                .collect(),
            more: None,
        }))
        .push(Section::Form(form("rotate-keys", "/admin/keys/rotate", "Rotate signing keys", vec![field(
            "Immediately (suspected compromise)",
            "immediate",
            FieldKind::Checkbox,
            "",
            "The new keys sign at once; verifiers with a cached key set refetch it.",
        )]))))
}

pub async fn keys_page(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let a = enter_or_answer!(req, state, Need::Read, None, "/admin/keys");
    match keys_screen(&state).await {
        Ok(s) => show(&a, s, StatusCode::OK),
        Err(e) => failed(&a, Screen::new("Keys", "/admin/keys"), e),
    }
}

pub async fn keys_rotate(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> HttpResponse {
    let (a, f) = enter_form!(req, state, body, Need::HumanOnly, "/admin/keys");
    let immediate = get(&f, "immediate") == "true";
    let created = super::api::rotate_keys(&state, a.ctx.clone(), immediate).await;
    match (created, keys_screen(&state).await) {
        (Ok(kids), Ok(mut s)) => {
            s.notice = Some(format!("New keys published: {}.", kids.join(", ")));
            show(&a, s, StatusCode::OK)
        }
        (Err(response), _) => response,
        (_, Err(e)) => failed(&a, Screen::new("Keys", "/admin/keys"), e),
    }
}

pub async fn audit_page(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let a = enter_or_answer!(req, state, Need::Read, None, "/admin/audit");
    let q = query_map(&req);
    let mut screen = Screen::new("Audit trail", "/admin/audit").push(Section::Form(FormView {
        method: "get",
        inline: true,
        ..form(
            "audit-search",
            "/admin/audit",
            "Search",
            vec![
                field(
                    "Action (e.g. token. or login.failed)",
                    "action",
                    FieldKind::Text,
                    get(&q, "action"),
                    "",
                ),
                field(
                    "Actor (user or client id)",
                    "actor",
                    FieldKind::Text,
                    get(&q, "actor"),
                    "",
                ),
                field(
                    "Patient id",
                    "patient",
                    FieldKind::Text,
                    get(&q, "patient"),
                    "",
                ),
                field(
                    "Since (YYYY-MM-DD)",
                    "since",
                    FieldKind::Text,
                    get(&q, "since"),
                    "",
                ),
                field(
                    "Until (YYYY-MM-DD)",
                    "until",
                    FieldKind::Text,
                    get(&q, "until"),
                    "",
                ),
            ],
        )
    }));
    const PAGE: i64 = 50;
    let query = match super::api::audit_query(&q, PAGE) {
        Ok(query) => query,
        Err(_) => {
            return failed(
                &a,
                screen,
                AdminError::Invalid(vec![FieldError::new(
                    "since",
                    "dates are YYYY-MM-DD or RFC 3339",
                )]),
            )
        }
    };
    match db(&state, move |conn| admin::search_audit(conn, &query)).await {
        Ok(rows) => {
            let more = (rows.len() as i64 == PAGE).then(|| {
                let mut q2 = q.clone();
                q2.insert(
                    "before".into(),
                    rows.last().map(|r| r.id).unwrap_or_default().to_string(),
                );
                let query: String = url::form_urlencoded::Serializer::new(String::new())
                    .extend_pairs(q2.iter())
                    .finish();
                format!("/admin/audit?{query}")
            });
            screen = screen.push(Section::Table(TableView {
                id: "audit".into(),
                headers: vec![
                    "#".into(),
                    "Time (UTC)".into(),
                    "Action".into(),
                    "Outcome".into(),
                    "Actor".into(),
                    "Patient".into(),
                    "Details".into(),
                ],
                rows: rows
                    .iter()
                    .map(|r| {
                        vec![
                            cell(r.id.to_string()),
                            cell(crate::clock::format_millis(r.occurred_at)),
                            cell(r.action.clone()),
                            cell(r.outcome.clone()),
                            cell(
                                r.actor_user
                                    .clone()
                                    .or(r.actor_client.clone())
                                    .unwrap_or_default(),
                            ),
                            cell(r.target_patient.clone().unwrap_or_default()),
                            cell(r.details.chars().take(300).collect::<String>()),
                        ]
                    })
                    .collect(),
                more,
            }));
            show(&a, screen, StatusCode::OK)
        }
        Err(e) => failed(&a, screen, e),
    }
}
