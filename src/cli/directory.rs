//! `ward client`, `ward role` and `ward user`: the offline path for bootstrap and automation.
//! They call the same service functions the admin API will, inside the same transactions, with
//! the same audit events (actor: the operating-system user).

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use crate::audit::AuditContext;
use crate::authn::accounts;
use crate::authz::roles::{self, Role, RoleChanges};
use crate::authz::users::{self, NewUser, User};
use crate::authz::DirectoryError;
use crate::clients::{self, Client, ClientSpec, RegistryError};
use crate::clock::SharedClock;
use crate::config::Settings;
use crate::startup::{self, StartError};
use crate::store::Db;

#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Register a client app (prints its client_id and, once, its secret).
    Add {
        #[command(flatten)]
        fields: ClientFields,
        /// Take the whole registration from a JSON file (flags given as well override it).
        #[arg(long, value_name = "FILE")]
        from_json: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// List clients, optionally matching a search term in id or name.
    List {
        #[arg(long)]
        search: Option<String>,
        #[arg(long)]
        json: bool,
    },
    Show {
        client_id: String,
        #[arg(long)]
        json: bool,
    },
    /// Change a registration. List flags replace the stored list.
    Update {
        #[arg(value_name = "CLIENT_ID")]
        id: String,
        #[command(flatten)]
        fields: ClientFields,
        #[arg(long, value_name = "FILE")]
        from_json: Option<PathBuf>,
        /// Refuse the update unless the stored version is still this (lost-update guard).
        #[arg(long, value_name = "N")]
        if_version: Option<i64>,
        #[arg(long)]
        json: bool,
    },
    Disable {
        client_id: String,
        #[arg(long)]
        json: bool,
    },
    Enable {
        client_id: String,
        #[arg(long)]
        json: bool,
    },
    /// Issue a new secret; the old one keeps working for clients.secret_grace_seconds.
    RotateSecret {
        client_id: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args, Default)]
pub struct ClientFields {
    #[arg(long)]
    client_id: Option<String>,
    #[arg(long)]
    name: Option<String>,
    /// public | confidential-symmetric | confidential-asymmetric | resource-server
    #[arg(long)]
    kind: Option<String>,
    /// none | client_secret_basic | client_secret_post | private_key_jwt
    #[arg(long)]
    auth_method: Option<String>,
    #[arg(long = "redirect-uri", value_name = "URI")]
    redirect_uris: Vec<String>,
    /// The client's scope ceiling (repeatable; each may hold several space-separated scopes).
    #[arg(long = "scope", value_name = "SCOPES")]
    scopes: Vec<String>,
    #[arg(long = "fhir-base", value_name = "URL")]
    fhir_bases: Vec<String>,
    #[arg(long = "grant-type", value_name = "GRANT")]
    grant_types: Vec<String>,
    #[arg(long = "launch-mode", value_name = "ehr|standalone")]
    launch_modes: Vec<String>,
    /// May create EHR launches (POST /launch).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    ehr_launcher: Option<bool>,
    /// An AI tool: stricter defaults, every introspection audited.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    ai_tool: Option<bool>,
    #[arg(long, value_name = "SECONDS")]
    access_token_lifetime: Option<i64>,
    #[arg(long, value_name = "SECONDS")]
    refresh_token_idle_lifetime: Option<i64>,
    #[arg(long, value_name = "SECONDS")]
    refresh_token_absolute_lifetime: Option<i64>,
    #[arg(long, value_name = "URL")]
    logo_uri: Option<String>,
    #[arg(long)]
    contact: Option<String>,
    /// Inline JWKS (public keys) from a file.
    #[arg(long, value_name = "FILE", conflicts_with = "jwks_uri")]
    jwks: Option<PathBuf>,
    #[arg(long, value_name = "URL")]
    jwks_uri: Option<String>,
}

impl ClientFields {
    fn apply(self, spec: &mut ClientSpec) -> Result<(), StartError> {
        let set_list = |target: &mut Vec<String>, values: Vec<String>| {
            if !values.is_empty() {
                *target = values;
            }
        };
        if let Some(v) = self.client_id {
            spec.client_id = Some(v);
        }
        if let Some(v) = self.name {
            spec.name = v;
        }
        if let Some(v) = self.kind {
            spec.kind = Some(v);
        }
        if let Some(v) = self.auth_method {
            spec.auth_method = Some(v);
        }
        set_list(&mut spec.redirect_uris, self.redirect_uris);
        set_list(&mut spec.fhir_bases, self.fhir_bases);
        if !self.grant_types.is_empty() {
            spec.grant_types = Some(self.grant_types);
        }
        if !self.launch_modes.is_empty() {
            spec.launch_modes = Some(self.launch_modes);
        }
        if !self.scopes.is_empty() {
            spec.scope = self.scopes.join(" ");
        }
        if let Some(v) = self.ehr_launcher {
            spec.ehr_launcher = v;
        }
        if let Some(v) = self.ai_tool {
            spec.ai_tool = v;
        }
        if self.access_token_lifetime.is_some() {
            spec.access_token_lifetime = self.access_token_lifetime;
        }
        if self.refresh_token_idle_lifetime.is_some() {
            spec.refresh_token_idle_lifetime = self.refresh_token_idle_lifetime;
        }
        if self.refresh_token_absolute_lifetime.is_some() {
            spec.refresh_token_absolute_lifetime = self.refresh_token_absolute_lifetime;
        }
        if self.logo_uri.is_some() {
            spec.logo_uri = self.logo_uri;
        }
        if self.contact.is_some() {
            spec.contact = self.contact;
        }
        if let Some(path) = self.jwks {
            spec.jwks = Some(read_json(&path)?);
            spec.jwks_uri = None;
        }
        if let Some(uri) = self.jwks_uri {
            spec.jwks_uri = Some(uri);
            spec.jwks = None;
        }
        Ok(())
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> Result<T, StartError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| StartError::Server(format!("cannot read {}: {e}", path.display())))?;
    serde_json::from_str(&text)
        .map_err(|e| StartError::Server(format!("{} is not valid: {e}", path.display())))
}

#[derive(Debug, Subcommand)]
pub enum RoleCommand {
    /// Create a role with a scope ceiling.
    Add {
        name: String,
        #[arg(long)]
        description: Option<String>,
        #[arg(long = "scope", value_name = "SCOPES")]
        scopes: Vec<String>,
        #[arg(long, value_name = "BOOL", default_value = "true", action = clap::ArgAction::Set)]
        mfa_required: bool,
        #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
        break_glass: Option<bool>,
        #[arg(long)]
        json: bool,
    },
    List {
        #[arg(long)]
        json: bool,
    },
    Show {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Replace a role's scope ceiling.
    SetScopes {
        name: String,
        #[arg(long = "scope", value_name = "SCOPES")]
        scopes: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Change description, MFA requirement or break-glass permission.
    Update {
        name: String,
        #[arg(long)]
        description: Option<String>,
        #[arg(long, value_name = "BOOL")]
        mfa_required: Option<bool>,
        #[arg(long, value_name = "BOOL")]
        break_glass: Option<bool>,
        /// Allow signing in with a passkey alone.
        #[arg(long, value_name = "BOOL")]
        passwordless: Option<bool>,
        #[arg(long)]
        json: bool,
    },
    /// Delete a role that no user holds.
    Delete {
        name: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user.
    Add {
        username: String,
        #[arg(long = "role", value_name = "ROLE")]
        roles: Vec<String>,
        #[arg(long)]
        display_name: Option<String>,
        /// Practitioner/123, Patient/456, … (the user's FHIR resource).
        #[arg(long, value_name = "REFERENCE")]
        fhir_user: Option<String>,
        /// Read an initial password from standard input (never from the command line).
        #[arg(long)]
        password_stdin: bool,
        #[arg(long)]
        json: bool,
    },
    /// Set a user's password from standard input; ends their sessions.
    SetPassword {
        username: String,
        #[arg(long, required = true)]
        password_stdin: bool,
        #[arg(long)]
        json: bool,
    },
    /// Disable a user: every session ends at once.
    Disable {
        username: String,
        #[arg(long)]
        json: bool,
    },
    Enable {
        username: String,
        #[arg(long)]
        json: bool,
    },
    /// Lift a lock caused by too many failed sign-ins.
    Unlock {
        username: String,
        #[arg(long)]
        json: bool,
    },
    /// Remove every second factor (the user enrols again at next sign-in).
    ResetMfa {
        username: String,
        #[arg(long)]
        json: bool,
    },
    /// Change a user's display name or fhirUser (an empty --fhir-user removes it).
    Update {
        username: String,
        #[arg(long)]
        display_name: Option<String>,
        #[arg(long, value_name = "Practitioner/123")]
        fhir_user: Option<String>,
        /// Refuse the update unless the stored version is still this (lost-update guard).
        #[arg(long, value_name = "N")]
        if_version: Option<i64>,
        #[arg(long)]
        json: bool,
    },
    /// Print a one-time link with which the user sets their own password (earlier links stop
    /// working; it expires after admin.enrolment_link_seconds).
    EnrolmentLink {
        username: String,
        #[arg(long)]
        json: bool,
    },
    List {
        #[arg(long)]
        search: Option<String>,
        #[arg(long)]
        json: bool,
    },
    Show {
        username: String,
        #[arg(long)]
        json: bool,
    },
    AddRole {
        username: String,
        role: String,
        #[arg(long)]
        json: bool,
    },
    RemoveRole {
        username: String,
        role: String,
        #[arg(long)]
        json: bool,
    },
}

fn admin_error(e: crate::admin::AdminError) -> StartError {
    match e {
        crate::admin::AdminError::Invalid(errors) => StartError::Invalid(errors),
        other => StartError::Server(other.to_string()),
    }
}

impl From<RegistryError> for StartError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::Invalid(errors) => StartError::Invalid(errors),
            other => StartError::Server(other.to_string()),
        }
    }
}

impl From<DirectoryError> for StartError {
    fn from(e: DirectoryError) -> Self {
        match e {
            DirectoryError::Invalid(errors) => StartError::Invalid(errors),
            other => StartError::Server(other.to_string()),
        }
    }
}

fn migrated_db(settings: &Settings, clock: &SharedClock) -> Result<Db, StartError> {
    let db = startup::open_db(settings)?;
    startup::migrate(&db, clock, &AuditContext::cli())?;
    Ok(db)
}

fn block_on<F: std::future::Future>(future: F) -> Result<F::Output, StartError> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| StartError::Server(e.to_string()))?
        .block_on(future))
}

fn print_client(client: &Client, json: bool) {
    if json {
        println!("{}", client.public_view());
        return;
    }
    let s = &client.settings;
    println!("client_id:     {}", client.client_id);
    println!("name:          {}", s.name);
    println!(
        "kind:          {} ({})",
        s.kind.as_str(),
        s.auth_method.as_str()
    );
    println!("enabled:       {}", client.enabled);
    println!(
        "grant types:   {}",
        s.grant_types
            .iter()
            .map(|g| g.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!("scopes:        {}", s.allowed_scopes);
    for uri in &s.redirect_uris {
        println!("redirect URI:  {uri}");
    }
    for base in &s.fhir_bases {
        println!("FHIR base:     {base}");
    }
    if let Some(uri) = &s.jwks_uri {
        println!("JWKS URL:      {uri}");
    }
    if s.jwks.is_some() {
        println!("JWKS:          inline");
    }
    println!("token life:    {} s", s.access_token_lifetime);
    if s.ai_tool {
        println!("AI tool:       yes (stricter defaults; every introspection audited)");
    }
    if s.ehr_launcher {
        println!("EHR launcher:  yes");
    }
    println!("version:       {}", client.version);
}

pub fn client(
    settings: &Settings,
    clock: &SharedClock,
    command: ClientCommand,
) -> Result<(), StartError> {
    let db = migrated_db(settings, clock)?;
    let ctx = AuditContext::cli();
    let mut conn = db.conn()?;
    match command {
        ClientCommand::Add {
            fields,
            from_json,
            json,
        } => {
            let mut spec: ClientSpec = match &from_json {
                Some(path) => read_json(path)?,
                None => ClientSpec::default(),
            };
            fields.apply(&mut spec)?;
            let fetcher = startup::jwks_fetcher(settings)?;
            let validated = block_on(clients::validate_spec(&spec, &fetcher))??;
            let created = clients::register(
                &mut conn,
                clock.as_ref(),
                &ctx,
                spec.client_id.clone(),
                validated,
            )?;
            if json {
                println!(
                    "{}",
                    json!({
                        "client_id": created.client.client_id,
                        "client_secret": created.secret,
                        "client": created.client.public_view(),
                    })
                );
            } else {
                println!("Registered client {}", created.client.client_id);
                if let Some(secret) = &created.secret {
                    println!("client_secret: {secret}");
                    println!("This secret is shown once. Ward keeps only its hash.");
                }
            }
        }
        ClientCommand::List { search, json } => {
            let list = clients::list(&mut conn, search.as_deref(), crate::store::Page::ALL)?;
            if json {
                println!(
                    "{}",
                    Value::from(list.iter().map(Client::public_view).collect::<Vec<_>>())
                );
            } else {
                println!(
                    "{:<24} {:<24} {:<24} {:<8}",
                    "CLIENT_ID", "NAME", "KIND", "ENABLED"
                );
                for c in list {
                    println!(
                        "{:<24} {:<24} {:<24} {:<8}",
                        c.client_id,
                        c.settings.name,
                        c.settings.kind.as_str(),
                        c.enabled
                    );
                }
            }
        }
        ClientCommand::Show { client_id, json } => {
            print_client(&clients::get(&mut conn, &client_id)?, json)
        }
        ClientCommand::Update {
            id: client_id,
            fields,
            from_json,
            if_version,
            json,
        } => {
            let current = clients::get(&mut conn, &client_id)?;
            let mut spec = match &from_json {
                Some(path) => read_json(path)?,
                None => current.settings.to_spec(&client_id),
            };
            if fields
                .client_id
                .as_deref()
                .is_some_and(|id| id != client_id)
                || spec.client_id.as_deref().is_some_and(|id| id != client_id)
            {
                return Err(StartError::Invalid(vec![clients::FieldError::new(
                    "client_id",
                    "cannot change",
                )]));
            }
            fields.apply(&mut spec)?;
            let fetcher = startup::jwks_fetcher(settings)?;
            let validated = block_on(clients::validate_spec(&spec, &fetcher))??;
            let updated = clients::update(
                &mut conn,
                clock.as_ref(),
                &ctx,
                &client_id,
                validated,
                if_version,
            )?;
            print_client(&updated, json);
        }
        ClientCommand::Disable { client_id, json } => print_client(
            &clients::set_enabled(&mut conn, clock.as_ref(), &ctx, &client_id, false)?,
            json,
        ),
        ClientCommand::Enable { client_id, json } => print_client(
            &clients::set_enabled(&mut conn, clock.as_ref(), &ctx, &client_id, true)?,
            json,
        ),
        ClientCommand::RotateSecret { client_id, json } => {
            let grace = i64::try_from(settings.clients.secret_grace_seconds).unwrap_or(86_400);
            let secret =
                clients::rotate_secret(&mut conn, clock.as_ref(), &ctx, &client_id, grace)?;
            if json {
                println!(
                    "{}",
                    json!({ "client_id": client_id, "client_secret": secret, "previous_valid_for_seconds": grace })
                );
            } else {
                println!("client_secret: {secret}");
                println!("Shown once. The previous secret keeps working for {grace} s.");
            }
        }
    }
    Ok(())
}

fn print_role(role: &Role, json: bool) {
    if json {
        println!("{}", serde_json::to_value(role).unwrap_or(Value::Null));
    } else {
        println!(
            "{:<12} mfa_required={} break_glass={}  {}",
            role.name, role.mfa_required, role.break_glass, role.description
        );
        println!(
            "             ceiling: {}",
            if role.scope_ceiling.is_empty() {
                "(none)"
            } else {
                &role.scope_ceiling
            }
        );
    }
}

pub fn role(
    settings: &Settings,
    clock: &SharedClock,
    command: RoleCommand,
) -> Result<(), StartError> {
    let db = migrated_db(settings, clock)?;
    let ctx = AuditContext::cli();
    let mut conn = db.conn()?;
    let clock = clock.as_ref();
    match command {
        RoleCommand::Add {
            name,
            description,
            scopes,
            mfa_required,
            break_glass,
            json,
        } => {
            let role = roles::create(
                &mut conn,
                clock,
                &ctx,
                &name,
                RoleChanges {
                    description,
                    scope_ceiling: Some(scopes.join(" ")),
                    mfa_required: Some(mfa_required),
                    break_glass,
                    passwordless: None,
                    expected_version: None,
                },
            )?;
            print_role(&role, json);
        }
        RoleCommand::List { json } => {
            let list = roles::list(&mut conn)?;
            if json {
                println!("{}", serde_json::to_value(&list).unwrap_or(Value::Null));
            } else {
                list.iter().for_each(|r| print_role(r, false));
            }
        }
        RoleCommand::Show { name, json } => print_role(&roles::get(&mut conn, &name)?, json),
        RoleCommand::SetScopes { name, scopes, json } => {
            let role = roles::update(
                &mut conn,
                clock,
                &ctx,
                &name,
                RoleChanges {
                    scope_ceiling: Some(scopes.join(" ")),
                    ..RoleChanges::default()
                },
            )?;
            print_role(&role, json);
        }
        RoleCommand::Update {
            name,
            description,
            mfa_required,
            break_glass,
            passwordless,
            json,
        } => {
            let role = roles::update(
                &mut conn,
                clock,
                &ctx,
                &name,
                RoleChanges {
                    description,
                    scope_ceiling: None,
                    mfa_required,
                    break_glass,
                    passwordless,
                    expected_version: None,
                },
            )?;
            print_role(&role, json);
        }
        RoleCommand::Delete { name, json } => {
            roles::delete(&mut conn, clock, &ctx, &name)?;
            if json {
                println!("{}", json!({ "deleted": name }));
            } else {
                println!("Deleted role {name}");
            }
        }
    }
    Ok(())
}

/// One line from standard input, without its line ending. Passwords never come from argv,
/// where other local users could read them.
fn read_password() -> Result<String, StartError> {
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).map_err(|e| {
        StartError::Server(format!("cannot read the password from standard input: {e}"))
    })?;
    Ok(line.trim_end_matches(['\n', '\r']).to_owned())
}

fn print_user(user: &User, json: bool) {
    if json {
        println!("{}", serde_json::to_value(user).unwrap_or(Value::Null));
    } else {
        println!(
            "{:<24} {:<28} {:<28} enabled={} roles={}",
            user.username,
            user.display_name,
            user.fhir_user.as_deref().unwrap_or("-"),
            user.enabled,
            user.roles.join(",")
        );
    }
}

pub fn user(
    settings: &Settings,
    clock: &SharedClock,
    command: UserCommand,
) -> Result<(), StartError> {
    let db = migrated_db(settings, clock)?;
    let ctx = AuditContext::cli();
    let mut conn = db.conn()?;
    let clock = clock.as_ref();
    match command {
        UserCommand::Add {
            username,
            roles,
            display_name,
            fhir_user,
            password_stdin,
            json,
        } => {
            let password_hash = if password_stdin {
                let password = read_password()?;
                crate::authn::password::check_policy(&password, &[&username]).map_err(|e| {
                    StartError::Invalid(vec![crate::clients::FieldError::new(
                        "password",
                        e.to_string(),
                    )])
                })?;
                Some(crate::authn::password::hash_blocking(&password).map_err(StartError::Server)?)
            } else {
                None
            };
            let user = users::create(
                &mut conn,
                clock,
                &ctx,
                NewUser {
                    username,
                    display_name,
                    fhir_user,
                    roles,
                    password_hash,
                },
            )?;
            print_user(&user, json);
        }
        UserCommand::List { search, json } => {
            let list = users::list(&mut conn, search.as_deref(), crate::store::Page::ALL)?;
            if json {
                println!("{}", serde_json::to_value(&list).unwrap_or(Value::Null));
            } else {
                list.iter().for_each(|u| print_user(u, false));
            }
        }
        UserCommand::Show { username, json } => {
            print_user(&users::get_by_username(&mut conn, &username)?, json)
        }
        UserCommand::AddRole {
            username,
            role,
            json,
        } => print_user(
            &users::change_role(&mut conn, clock, &ctx, &username, &role, true)?,
            json,
        ),
        UserCommand::RemoveRole {
            username,
            role,
            json,
        } => print_user(
            &users::change_role(&mut conn, clock, &ctx, &username, &role, false)?,
            json,
        ),
        UserCommand::SetPassword { username, json, .. } => {
            let password = read_password()?;
            print_user(
                &accounts::set_password(&mut conn, clock, &ctx, &username, &password)?,
                json,
            );
        }
        UserCommand::Disable { username, json } => print_user(
            &accounts::set_enabled(&mut conn, clock, &ctx, &username, false)?,
            json,
        ),
        UserCommand::Enable { username, json } => print_user(
            &accounts::set_enabled(&mut conn, clock, &ctx, &username, true)?,
            json,
        ),
        UserCommand::Unlock { username, json } => {
            let was_locked = accounts::unlock(&mut conn, clock, &ctx, &username)?;
            if json {
                println!(
                    "{}",
                    json!({ "username": username, "was_locked": was_locked })
                );
            } else if was_locked {
                println!("Unlocked {username}.");
            } else {
                println!("{username} was not locked.");
            }
        }
        UserCommand::ResetMfa { username, json } => print_user(
            &accounts::reset_mfa(&mut conn, clock, &ctx, &username)?,
            json,
        ),
        UserCommand::Update {
            username,
            display_name,
            fhir_user,
            if_version,
            json,
        } => {
            let current = users::get_by_username(&mut conn, &username)?;
            let display = display_name.unwrap_or(current.display_name);
            let fhir = fhir_user.or(current.fhir_user);
            let user = crate::admin::update_user(
                &mut conn,
                clock,
                &ctx,
                &username,
                &display,
                fhir.as_deref(),
                if_version,
            )
            .map_err(admin_error)?;
            print_user(&user, json);
        }
        UserCommand::EnrolmentLink { username, json } => {
            let issuer = settings
                .issuer()
                .map_err(|e| StartError::Server(e.to_string()))?;
            let seconds = i64::try_from(settings.admin.enrolment_link_seconds).unwrap_or(3600);
            let (token, expires_at) =
                crate::admin::create_enrolment_link(&mut conn, clock, &ctx, &username, seconds)
                    .map_err(admin_error)?;
            let link = format!("{issuer}/enrol?token={token}");
            if json {
                println!(
                    "{}",
                    json!({ "enrolment_link": link, "expires_at": expires_at })
                );
            } else {
                println!(
                    "One-time enrolment link for {username} (expires {}):\n{link}",
                    crate::clock::format_secs(expires_at)
                );
            }
        }
    }
    Ok(())
}
