//! The `ward` command line (DESIGN.md §11): every subcommand reads the same settings as
//! `ward serve`, so it works against the same database. Exit codes: 0 ok, 1 failure, 2 usage.

mod audit;
mod directory;
mod patients;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use serde_json::json;

use crate::audit::AuditContext;
use crate::clock::{format_secs, SharedClock, SystemClock};
use crate::config::{Settings, Sources};
use crate::crypto::seal::Sealer;
use crate::keys::{self, KeyAlg, KeyState};
use crate::startup::{self, MasterKeySource, StartError};

#[derive(Debug, Parser)]
#[command(
    name = "ward",
    version,
    about = "Ward: a SMART on FHIR authorization server"
)]
pub struct Cli {
    /// Configuration file (ward.toml). Env: WARD_CONFIG.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// sqlite://PATH or postgres://… Env: WARD_DATABASE_URL.
    #[arg(long, global = true, value_name = "URL")]
    database_url: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server (creates the database, master key and signing keys on first start).
    Serve(ServeArgs),
    /// Apply pending database migrations.
    Migrate {
        #[arg(long)]
        json: bool,
    },
    /// Signing keys: list and rotate.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Client apps: register, list, show, update, disable, enable, rotate-secret.
    #[command(subcommand)]
    Client(Box<directory::ClientCommand>),
    /// Roles and their scope ceilings.
    #[command(subcommand)]
    Role(directory::RoleCommand),
    /// Users and their roles.
    #[command(subcommand)]
    User(directory::UserCommand),
    /// The patient directory behind the standalone-launch patient picker.
    #[command(subcommand)]
    Patient(patients::PatientCommand),
    /// The tamper-evident audit chain: verify, checkpoint.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Security self-assessment: findings by severity, each with its fix (exit 1 on high).
    Doctor {
        #[arg(long)]
        json: bool,
    },
    /// A consistent, encrypted online copy of the SQLite database.
    Backup {
        #[arg(long, value_name = "FILE")]
        to: std::path::PathBuf,
        /// Replace FILE if it exists.
        #[arg(long)]
        force: bool,
        #[arg(long)]
        json: bool,
    },
    /// Restore a `ward backup` file as the configured SQLite database (Ward must be stopped).
    Restore {
        #[arg(long, value_name = "FILE")]
        from: std::path::PathBuf,
        /// Replace an existing database file.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Address to listen on. Env: WARD_LISTEN.
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Public URL (issuer). Env: WARD_PUBLIC_URL.
    #[arg(long, value_name = "URL")]
    public_url: Option<String>,
    /// FHIR base URL accepted as token audience (repeatable). Env: WARD_FHIR_BASE.
    #[arg(long, value_name = "URL")]
    fhir_base: Vec<String>,
    /// PEM certificate chain. Env: WARD_TLS_CERT.
    #[arg(long, value_name = "FILE")]
    tls_cert: Option<String>,
    /// PEM private key. Env: WARD_TLS_KEY.
    #[arg(long, value_name = "FILE")]
    tls_key: Option<String>,
    /// Several nodes share the (PostgreSQL) database. Env: WARD_CLUSTER.
    #[arg(long)]
    cluster: bool,
    /// EHR origin allowed to frame the launch pages (repeatable). Env: WARD_EHR_ORIGINS.
    #[arg(long, value_name = "ORIGIN")]
    ehr_origin: Vec<String>,
    /// Trusted proxy CIDR (repeatable). Env: WARD_TRUSTED_PROXIES.
    #[arg(long, value_name = "CIDR")]
    trusted_proxy: Vec<String>,
    /// A TLS-terminating proxy is in front. Env: WARD_BEHIND_TLS_PROXY.
    #[arg(long)]
    behind_tls_proxy: bool,
    /// HTTP worker threads. Env: WARD_WORKERS.
    #[arg(long, value_name = "N")]
    workers: Option<usize>,
    /// Demo mode: on an empty database (loopback only), seed demo people, patients and apps,
    /// print their demo-only credentials and serve a sample SMART app and a mini-EHR.
    #[arg(long)]
    demo: bool,
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// List signing keys with their state and age.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Publish a new signing key; it signs once every cached JWKS has expired.
    Rotate {
        /// Which algorithm to rotate (repeatable); both when omitted.
        #[arg(long, value_parser = ["ES256", "RS256"])]
        alg: Vec<String>,
        /// Sign with the new key at once (suspected compromise).
        #[arg(long)]
        immediate: bool,
        #[arg(long)]
        json: bool,
    },
}

impl ServeArgs {
    fn flags(&self) -> Vec<(&'static str, String)> {
        let mut flags = Vec::new();
        let mut one = |env: &'static str, value: &Option<String>| {
            if let Some(v) = value {
                flags.push((env, v.clone()));
            }
        };
        one("WARD_LISTEN", &self.listen);
        one("WARD_PUBLIC_URL", &self.public_url);
        one("WARD_TLS_CERT", &self.tls_cert);
        one("WARD_TLS_KEY", &self.tls_key);
        one("WARD_WORKERS", &self.workers.map(|w| w.to_string()));
        if self.cluster {
            flags.push(("WARD_CLUSTER", "true".into()));
        }
        if self.behind_tls_proxy {
            flags.push(("WARD_BEHIND_TLS_PROXY", "true".into()));
        }
        flags.extend(self.fhir_base.iter().map(|v| ("WARD_FHIR_BASE", v.clone())));
        flags.extend(
            self.ehr_origin
                .iter()
                .map(|v| ("WARD_EHR_ORIGINS", v.clone())),
        );
        flags.extend(
            self.trusted_proxy
                .iter()
                .map(|v| ("WARD_TRUSTED_PROXIES", v.clone())),
        );
        flags
    }
}

/// Parses the process arguments and runs the command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ward: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> Result<(), StartError> {
    let mut sources = Sources::from_process(cli.config.clone());
    if let Some(url) = &cli.database_url {
        sources.flags.push(("WARD_DATABASE_URL", url.clone()));
    }
    if let Command::Serve(args) = &cli.command {
        sources.flags.extend(args.flags());
    }
    let settings = Settings::load(&sources)?;
    let clock: SharedClock = Arc::new(SystemClock);
    match cli.command {
        Command::Serve(args) => serve(settings, clock, args.demo),
        Command::Migrate { json } => migrate(&settings, &clock, json),
        Command::Keys(KeysCommand::List { json }) => keys_list(&settings, &clock, json),
        Command::Keys(KeysCommand::Rotate {
            alg,
            immediate,
            json,
        }) => keys_rotate(&settings, &clock, &alg, immediate, json),
        Command::Client(command) => directory::client(&settings, &clock, *command),
        Command::Role(command) => directory::role(&settings, &clock, command),
        Command::User(command) => directory::user(&settings, &clock, command),
        Command::Patient(command) => patients::patient(&settings, &clock, command),
        Command::Audit(command) => audit::audit(&settings, &clock, command),
        Command::Doctor { json } => doctor(&settings, &clock, json),
        Command::Backup { to, force, json } => {
            crate::backup::require_existing_database(&settings)?;
            let (db, sealer) = key_store(&settings, &clock)?;
            let size = crate::backup::backup(&settings, &db, &sealer, clock.as_ref(), &to, force)?;
            if json {
                print_json(
                    &serde_json::json!({ "backup": to.display().to_string(), "database_bytes": size }),
                );
            } else {
                println!(
                    "Backed up {size} bytes to {} (sealed with the master key; keep the key's own backup apart).",
                    to.display()
                );
            }
            Ok(())
        }
        Command::Restore { from, force } => {
            let target = crate::backup::restore(&settings, &from, force)?;
            println!(
                "Restored {}. Check it with `ward audit verify` before starting Ward.",
                target.display()
            );
            Ok(())
        }
    }
}

fn serve(mut settings: Settings, clock: SharedClock, demo: bool) -> Result<(), StartError> {
    crate::telemetry::init(&settings);
    let demo_origin = if demo {
        let origin = crate::demo::app_origin(&settings.server.listen).map_err(demo_error)?;
        // The demo keeps to its own file unless told otherwise, so it never mixes with (or is
        // mistaken for) a real installation's `ward.db`.
        if settings.database.url == crate::config::DatabaseSettings::default().url {
            settings.database.url = crate::demo::DEFAULT_DATABASE.into();
        }
        crate::demo::check_local(&settings).map_err(demo_error)?;
        let base = crate::demo::fhir_base(&settings.issuer()?);
        if !settings.fhir.base.contains(&base) {
            settings.fhir.base.push(base);
        }
        Some(origin)
    } else {
        None
    };
    for switch in settings.danger_switches() {
        tracing::warn!(
            setting = switch,
            "DANGER: an insecure development switch is on; never use it in production"
        );
    }
    let prepared = startup::prepare(settings, clock)?;
    if !prepared.migrations.is_empty() {
        tracing::info!(versions = ?prepared.migrations, "database migrated");
    }
    if let MasterKeySource::Generated(path) = &prepared.master_key_source {
        tracing::warn!(
            path = %path.display(),
            "GENERATED A NEW MASTER KEY (mode 0600). It seals every private key and secret in the database: back it up with the database. In production supply WARD_MASTER_KEY (or WARD_MASTER_KEY_FILE) from a secrets manager instead of a file beside the database."
        );
    }
    for kid in &prepared.created_keys {
        tracing::info!(kid = %kid, "created signing key");
    }
    let mut state = prepared.state;
    let issuer = state.settings.issuer()?;
    let mut conn = state.db.conn()?;
    if let Some(origin) = demo_origin {
        let port = state.settings.listen_addr()?.port();
        let (demo, seeded) =
            crate::demo::open(&mut conn, state.clock.as_ref(), &issuer, &origin, port)
                .map_err(demo_error)?;
        if seeded {
            tracing::info!("seeded the demo database");
        }
        println!("{}", crate::demo::banner(&issuer, &demo));
        state.demo = Some(Arc::new(demo));
    } else {
        if crate::demo::is_demo_database(&mut conn)? {
            return Err(demo_error(crate::demo::DemoError::DemoDatabase));
        }
        if prepared.no_users {
            tracing::warn!(
                "No users yet. Create the first admin (you will be asked to enrol a second factor at first sign-in):\n\n    ward user add admin --role admin --password-stdin\n"
            );
        }
    }
    drop(conn);
    actix_web::rt::System::new().block_on(async move {
        let issuer = state.settings.issuer()?;
        let running = crate::server::start(state)?;
        for addr in &running.addrs {
            tracing::info!(%addr, %issuer, "Ward is listening");
        }
        running
            .server
            .await
            .map_err(|e| StartError::Server(e.to_string()))
    })
}

fn demo_error(e: crate::demo::DemoError) -> StartError {
    match e {
        crate::demo::DemoError::Store(s) => StartError::Store(s),
        other => StartError::Server(other.to_string()),
    }
}

fn doctor(settings: &Settings, clock: &SharedClock, json: bool) -> Result<(), StartError> {
    crate::backup::require_existing_database(settings)?;
    let (db, _) = key_store(settings, clock)?;
    let facts = crate::doctor::gather(
        &mut *db.conn()?,
        settings,
        startup::key_timing(settings),
        clock.as_ref(),
    )?;
    let findings = crate::doctor::assess(&facts);
    if json {
        print_json(&serde_json::json!({ "findings": findings }));
    } else if findings.is_empty() {
        println!("No findings.");
    } else {
        for f in &findings {
            let severity = format!("{:?}", f.severity).to_uppercase();
            println!(
                "{severity:<7} {:<28} {}\n        fix: {}",
                f.id, f.what, f.fix
            );
        }
    }
    if findings
        .iter()
        .any(|f| f.severity == crate::doctor::Severity::High)
    {
        return Err(StartError::Server(
            "high-severity findings (see above)".into(),
        ));
    }
    Ok(())
}

fn print_json(value: &serde_json::Value) {
    println!("{value}");
}

fn migrate(settings: &Settings, clock: &SharedClock, json: bool) -> Result<(), StartError> {
    let db = startup::open_db(settings)?;
    let applied = startup::migrate(&db, clock, &AuditContext::cli())?;
    if json {
        print_json(&json!({ "applied": applied }));
    } else if applied.is_empty() {
        println!("Database is up to date; no pending migrations.");
    } else {
        for version in &applied {
            println!("Applied migration {version}");
        }
    }
    Ok(())
}

/// The database with its schema current, the sealer, and the first keys present.
pub(super) fn key_store(
    settings: &Settings,
    clock: &SharedClock,
) -> Result<(crate::store::Db, Sealer), StartError> {
    let ctx = AuditContext::cli();
    let db = startup::open_db(settings)?;
    startup::migrate(&db, clock, &ctx)?;
    let (sealer, _) = startup::resolve_sealer(settings, &db)?;
    keys::ensure_initial_keys(&mut *db.conn()?, &sealer, clock.as_ref(), &ctx)?;
    Ok((db, sealer))
}

fn keys_list(settings: &Settings, clock: &SharedClock, json: bool) -> Result<(), StartError> {
    let (db, _) = key_store(settings, clock)?;
    let timing = startup::key_timing(settings);
    let statuses = keys::list(&mut *db.conn()?, clock.as_ref(), timing)?;
    let now = clock.now_secs();
    let rotation_due_after = i64::try_from(settings.keys.rotation_days)
        .unwrap_or(90)
        .saturating_mul(86_400);
    if json {
        let rows: Vec<_> = statuses
            .iter()
            .map(|s| {
                json!({
                    "kid": s.kid, "alg": s.alg, "state": s.state, "published": s.published(),
                    "created_at": s.created_at, "activates_at": s.activates_at,
                    "superseded_at": s.superseded_at, "unpublish_at": s.unpublish_at,
                    "age_days": (now - s.created_at) / 86_400,
                    "rotation_due": s.state == KeyState::Active && now - s.created_at > rotation_due_after,
                })
            })
            .collect();
        print_json(&json!({ "keys": rows }));
        return Ok(());
    }
    println!(
        "{:<24} {:<6} {:<9} {:<21} {:<21} {:>8}",
        "KID", "ALG", "STATE", "CREATED", "SIGNS FROM", "AGE (d)"
    );
    for s in &statuses {
        let due = if s.state == KeyState::Active && now - s.created_at > rotation_due_after {
            "  rotation due"
        } else {
            ""
        };
        println!(
            "{:<24} {:<6} {:<9} {:<21} {:<21} {:>8}{due}",
            s.kid,
            s.alg,
            format!("{:?}", s.state).to_lowercase(),
            format_secs(s.created_at),
            format_secs(s.activates_at),
            (now - s.created_at) / 86_400,
        );
    }
    Ok(())
}

fn keys_rotate(
    settings: &Settings,
    clock: &SharedClock,
    algs: &[String],
    immediate: bool,
    json: bool,
) -> Result<(), StartError> {
    let (db, sealer) = key_store(settings, clock)?;
    let algs: Vec<KeyAlg> = if algs.is_empty() {
        KeyAlg::ALL.to_vec()
    } else {
        algs.iter().filter_map(|a| KeyAlg::parse(a)).collect()
    };
    let rows = keys::rotate(
        &mut *db.conn()?,
        &sealer,
        clock.as_ref(),
        &AuditContext::cli(),
        startup::key_timing(settings),
        &algs,
        immediate,
    )?;
    if json {
        let out: Vec<_> = rows
            .iter()
            .map(|r| json!({ "kid": r.kid, "alg": r.alg, "activates_at": r.activates_at }))
            .collect();
        print_json(&json!({ "created": out }));
        return Ok(());
    }
    for row in &rows {
        println!(
            "Published {} key {}; it signs from {}. Running nodes load it within {} s.",
            row.alg,
            row.kid,
            format_secs(row.activates_at),
            settings.keys.refresh_seconds
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
