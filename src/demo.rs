//! Demo mode (`ward serve --demo`): an evaluator's first five minutes. On an empty database it
//! seeds demo people, patients and clients, prints their demo-only credentials once, and turns
//! on three demo pages: a sample SMART app (`/demo/app`), a mini-EHR that launches it
//! (`/demo/ehr`) and what a FHIR server's introspection would say (`/demo/introspect`).
//!
//! Safety rails: demo mode runs on loopback only (listen address, public URL, `Host` header,
//! no TLS, proxies or cluster) on its own SQLite database; it refuses a database holding
//! anything it did not seed; and a database it seeds is marked before the first row is written,
//! so plain `ward serve` refuses it (its accounts have published passwords).

use serde_json::json;

use crate::audit::AuditContext;
use crate::authz::users::{self, NewUser};
use crate::clients::{self, ClientSpec};
use crate::clock::Clock;
use crate::store::{meta, DbConnection, Page, StoreError};

/// The sample SMART app (public, PKCE).
pub const APP_CLIENT: &str = "demo-app";
/// The mini-EHR and its FHIR server: a resource server that creates launches with
/// `POST /launch` and introspects tokens at `/introspect`.
pub const EHR_CLIENT: &str = "demo-ehr";

/// Demo people: username, display name, role, fhirUser, demo-only password.
pub const PEOPLE: [(&str, &str, &str, &str, &str); 3] = [
    (
        "dr.demo",
        "Dr. Dana Demo",
        "physician",
        "Practitioner/demo-practitioner",
        "demo clinician only: lighthouse orchard",
    ),
    (
        "pat.demo",
        "Pat Demo",
        "patient",
        "Patient/demo-pat-1",
        "demo patient only: harbour lantern",
    ),
    (
        "admin.demo",
        "Ada Demo-Admin",
        "admin",
        "Practitioner/demo-admin",
        "demo admin only: granite meadow",
    ),
];

const PATIENTS: &str = r#"{"resourceType":"Patient","id":"demo-pat-1","name":[{"family":"Demo","given":["Pat"]}],"birthDate":"1975-03-14","gender":"female","identifier":[{"system":"urn:demo:mrn","value":"MRN-1001"}]}
{"resourceType":"Patient","id":"demo-pat-2","name":[{"family":"Rivera","given":["Ana","Lucía"]}],"birthDate":"1984-06-01","gender":"female","identifier":[{"system":"urn:demo:mrn","value":"MRN-1002"}]}
{"resourceType":"Patient","id":"demo-pat-3","name":[{"family":"Okafor","given":["Chidi"]}],"birthDate":"1990-02-03","gender":"male","identifier":[{"system":"urn:demo:mrn","value":"MRN-1003"}]}
{"resourceType":"Patient","id":"demo-pat-4","name":[{"family":"Nguyen","given":["Minh"]}],"birthDate":"1962-11-20","gender":"male","identifier":[{"system":"urn:demo:mrn","value":"MRN-1004"}]}
{"resourceType":"Patient","id":"demo-pat-5","name":[{"family":"Schmidt","given":["Greta"]}],"birthDate":"2001-08-09","gender":"female","identifier":[{"system":"urn:demo:mrn","value":"MRN-1005"}]}
"#;

const META_KEY: &str = "demo";
/// The marker's value while seeding, and once seeded.
const SEEDING: &str = "seeding";
const SEEDED: &str = "seeded";

/// Demo mode's database when none is configured.
pub const DEFAULT_DATABASE: &str = "sqlite://ward-demo.db";

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("demo mode listens on loopback only (got `{0}`); it publishes its passwords")]
    NotLoopback(String),
    #[error("demo mode needs an empty database, and this one holds data it did not seed; point --database-url at a new file (for example sqlite://ward-demo.db)")]
    NotEmpty,
    #[error("an earlier demo start was interrupted while seeding; delete the demo database (ward-demo.db and its -wal/-shm files) and start again")]
    Interrupted,
    #[error("demo mode runs on its own loopback SQLite database only: {0}")]
    NotLocal(String),
    #[error("this database was seeded by `ward serve --demo`, whose accounts have published passwords; start it with --demo, or use a fresh database for real use")]
    DemoDatabase,
    #[error("seeding the demo failed: {0} (delete the demo database and start again)")]
    Seed(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What the demo pages need at run time.
#[derive(Debug, Clone)]
pub struct DemoState {
    pub fhir_base: String,
    /// Where the sample app lives: the listen address's own origin, a different origin from
    /// Ward's public URL, as a third-party app would be.
    pub app_origin: String,
    /// The demo EHR's client secret (launches and introspection), issued afresh at each start.
    pub ehr_secret: String,
    /// The only `Host` values demo mode answers (DNS-rebinding protection).
    pub hosts: Vec<String>,
}

impl DemoState {
    pub fn app_url(&self) -> String {
        format!("{}/demo/app", self.app_origin)
    }

    /// Whether a request's `Host` is one of the loopback names demo mode answers.
    pub fn host_allowed(&self, host: &str) -> bool {
        self.hosts.iter().any(|h| h.eq_ignore_ascii_case(host))
    }
}

/// The loopback host names (with port) demo mode answers.
pub fn loopback_hosts(port: u16) -> Vec<String> {
    vec![
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
    ]
}

/// Demo mode is for one person on one machine: loopback public URL, no TLS or proxies, one
/// node on SQLite. Anything else could publish its well-known passwords.
pub fn check_local(settings: &crate::config::Settings) -> Result<(), DemoError> {
    let issuer = settings
        .issuer()
        .map_err(|e| DemoError::NotLocal(e.to_string()))?;
    let host = url::Url::parse(&issuer)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
        .unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let loopback_host = host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    let problem = if !loopback_host {
        Some("the public URL must be a loopback URL such as http://localhost:8080")
    } else if settings.tls.cert.is_some() || settings.server.behind_tls_proxy {
        Some("no TLS or TLS proxy (it would be reachable from elsewhere)")
    } else if !settings.server.trusted_proxies.is_empty() {
        Some("no trusted proxies")
    } else if settings.server.cluster {
        Some("one node only")
    } else if !matches!(
        settings.database_target(),
        Ok(crate::config::DatabaseTarget::Sqlite(_))
    ) {
        Some("SQLite only")
    } else {
        None
    };
    match problem {
        Some(p) => Err(DemoError::NotLocal(p.into())),
        None => Ok(()),
    }
}

/// The demo's FHIR base: under Ward itself, so discovery works without a FHIR server.
pub fn fhir_base(issuer: &str) -> String {
    format!("{}/demo/fhir", issuer.trim_end_matches('/'))
}

/// The sample app's origin from the listen address (loopback only).
pub fn app_origin(listen: &str) -> Result<String, DemoError> {
    let refuse = || DemoError::NotLoopback(listen.to_owned());
    let (host, port) = listen.rsplit_once(':').ok_or_else(refuse)?;
    let port: u16 = port.parse().map_err(|_| refuse())?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.eq_ignore_ascii_case("localhost") {
        return Ok(format!("http://127.0.0.1:{port}"));
    }
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) if ip.is_loopback() && ip.is_ipv4() => Ok(format!("http://{ip}:{port}")),
        Ok(ip) if ip.is_loopback() => Ok(format!("http://[{ip}]:{port}")),
        _ => Err(refuse()),
    }
}

/// Whether this database was seeded by demo mode.
pub fn is_demo_database(conn: &mut DbConnection) -> Result<bool, StoreError> {
    Ok(meta::get(conn, META_KEY)?.is_some())
}

/// Opens the demo (seeding it on an empty database) and issues the demo EHR a fresh secret
/// (so the banner can show it at every start). The marker is written before anything else, so
/// even an interrupted seeding leaves a database plain `ward serve` refuses.
pub fn open(
    conn: &mut DbConnection,
    clock: &dyn Clock,
    issuer: &str,
    app_origin: &str,
    port: u16,
) -> Result<(DemoState, bool), DemoError> {
    let seeded = match meta::get(conn, META_KEY)? {
        Some(value) if value == SEEDED => false,
        Some(_) => return Err(DemoError::Interrupted),
        None => {
            let one = Page {
                limit: 1,
                offset: 0,
            };
            if !crate::store::users::list(conn, None, one)?.is_empty()
                || !crate::store::clients::list(conn, None, one)?.is_empty()
                || crate::store::patients::count(conn)? > 0
            {
                return Err(DemoError::NotEmpty);
            }
            meta::insert(conn, META_KEY, SEEDING)?;
            seed(conn, clock, issuer, app_origin)?;
            meta::set(conn, META_KEY, SEEDED)?;
            true
        }
    };
    let ctx = AuditContext {
        actor_user: Some("demo".into()),
        ..AuditContext::cli()
    };
    let ehr_secret = clients::rotate_secret(conn, clock, &ctx, EHR_CLIENT, 0)
        .map_err(|e| DemoError::Seed(e.to_string()))?;
    Ok((
        DemoState {
            fhir_base: fhir_base(issuer),
            app_origin: app_origin.to_owned(),
            ehr_secret,
            hosts: loopback_hosts(port),
        },
        seeded,
    ))
}

fn seed(
    conn: &mut DbConnection,
    clock: &dyn Clock,
    issuer: &str,
    app_origin: &str,
) -> Result<(), DemoError> {
    let ctx = AuditContext {
        actor_user: Some("demo-seed".into()),
        ..AuditContext::cli()
    };
    let fail = |e: &dyn std::fmt::Display| DemoError::Seed(e.to_string());
    // Every registration is checked before anything is written.
    let specs = [
        json!({
            "client_id": APP_CLIENT, "name": "Ward sample SMART app", "kind": "public",
            "redirect_uris": [format!("{app_origin}/demo/app")],
            "scope": "openid fhirUser launch launch/patient patient/*.rs user/*.rs",
            "contact": "Demo only",
        }),
        json!({
            "client_id": EHR_CLIENT, "name": "Ward demo mini-EHR and FHIR server",
            "kind": "resource-server", "fhir_bases": [fhir_base(issuer)], "ehr_launcher": true,
        }),
    ];
    let mut checked = Vec::new();
    for spec in specs {
        let spec: ClientSpec = serde_json::from_value(spec).map_err(|e| fail(&e))?;
        let settings = clients::model::validate(&spec).map_err(|e| {
            DemoError::Seed(
                e.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        })?;
        checked.push((spec.client_id, settings));
    }
    for (client_id, settings) in checked {
        clients::register(conn, clock, &ctx, client_id, settings).map_err(|e| fail(&e))?;
    }
    for (username, display, role, fhir_user, password) in PEOPLE {
        let hash = crate::authn::password::hash_blocking(password).map_err(|e| fail(&e))?;
        users::create(
            conn,
            clock,
            &ctx,
            NewUser {
                username: username.into(),
                display_name: Some(display.into()),
                fhir_user: Some(fhir_user.into()),
                roles: vec![role.into()],
                password_hash: Some(hash),
            },
        )
        .map_err(|e| fail(&e))?;
    }
    let report = crate::patients::import(conn, clock, &ctx, std::io::Cursor::new(PATIENTS))
        .map_err(|e| fail(&e))?;
    if !report.errors.is_empty() {
        return Err(DemoError::Seed(report.errors.join("; ")));
    }
    Ok(())
}

/// The block printed at every demo start (the passwords are published anyway; the EHR's
/// secret is new each time).
pub fn banner(issuer: &str, state: &DemoState) -> String {
    let mut lines = vec![
        "================ WARD DEMO MODE — demo-only credentials, never for real data ================".to_owned(),
        format!("  Sample SMART app:   {}", state.app_url()),
        format!("  Mini-EHR:           {issuer}/demo/ehr"),
        format!("  Admin console:      {issuer}/admin"),
        format!("  FHIR base (aud):    {}", state.fhir_base),
        String::new(),
    ];
    for (username, _, role, _, password) in PEOPLE {
        lines.push(format!("  {role:<10} {username:<11} password: {password}"));
    }
    lines
        .push("  (the physician and the admin enrol an authenticator app at first sign-in)".into());
    lines.push(String::new());
    lines.push(format!(
        "  Mini-EHR / FHIR server client (POST /launch, /introspect): {EHR_CLIENT}  secret: {}",
        state.ehr_secret
    ));
    lines.push("=============================================================================================".into());
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sample_app_lives_on_a_loopback_origin_of_its_own() {
        assert_eq!(
            app_origin("127.0.0.1:8080").unwrap(),
            "http://127.0.0.1:8080"
        );
        assert_eq!(
            app_origin("localhost:9000").unwrap(),
            "http://127.0.0.1:9000"
        );
        assert_eq!(app_origin("[::1]:8080").unwrap(), "http://[::1]:8080");
        for public in [
            "0.0.0.0:8080",
            "10.1.2.3:8080",
            "[::]:8080",
            "example.com:80",
            "8080",
        ] {
            assert!(app_origin(public).is_err(), "{public}");
        }
    }

    #[test]
    fn demo_passwords_pass_the_password_policy() {
        for (username, display, _, _, password) in PEOPLE {
            assert!(
                crate::authn::password::check_policy(password, &[username, display]).is_ok(),
                "{username}"
            );
        }
    }
}
