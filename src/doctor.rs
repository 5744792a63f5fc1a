//! `ward doctor`: the technical half of a HIPAA security risk assessment. It gathers facts
//! about the configuration and the data ([`gather`]), then a pure function ([`assess`]) turns
//! them into findings by severity, each with its fix. It does not cover people, processes,
//! physical security, the network around Ward, or the FHIR server (README.md says so).

use serde::Serialize;

use crate::admin::access::ADMIN_ROLE;
use crate::config::{DatabaseTarget, Settings};
use crate::keys::KeyState;
use crate::smart::scopes::{IdentityScope, ResourceType, ScopeSet};
use crate::store::{meta, DbConnection, Page, StoreError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Low,
    Medium,
    High,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub severity: Severity,
    /// A stable id for automation (`tls.off`, `keys.old`, …).
    pub id: &'static str,
    pub what: String,
    pub fix: String,
}

/// Everything the assessment looks at, gathered once.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    pub listen_loopback: bool,
    pub tls: bool,
    pub behind_tls_proxy: bool,
    pub public_url_https: bool,
    pub sqlite: bool,
    pub cluster: bool,
    /// The master key is a file in the database's own directory.
    pub master_key_beside_database: bool,
    pub danger_switches: Vec<String>,
    /// The database was seeded by `ward serve --demo` (published passwords).
    pub demo_database: bool,
    pub rotation_days: i64,
    /// (kid, alg, age in days) of each key that signs now.
    pub active_keys: Vec<(String, String, i64)>,
    /// (role, holders) of roles that grant clinical data without requiring MFA.
    pub roles_without_mfa: Vec<(String, i64)>,
    /// Usernames of admins without a passkey (WebAuthn).
    pub admins_without_passkey: Vec<String>,
    pub admin_count: usize,
    /// (client id, problem) of AI-tool clients holding wildcards or offline access.
    pub risky_ai_clients: Vec<(String, String)>,
    /// (client id, URI) of http redirect URIs.
    pub http_redirects: Vec<(String, String)>,
    /// Clients that never got a token and are older than 90 days.
    pub unused_clients: Vec<String>,
    /// Days since `ward audit verify` last succeeded, if ever.
    pub audit_verified_days_ago: Option<i64>,
    /// Days since `ward backup` last ran, if ever (SQLite).
    pub backup_days_ago: Option<i64>,
}

pub fn assess(f: &Facts) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut add = |severity, id, what: String, fix: &str| {
        out.push(Finding {
            severity,
            id,
            what,
            fix: fix.to_owned(),
        })
    };
    if !f.listen_loopback && !f.tls && !f.behind_tls_proxy {
        add(Severity::High, "tls.off", "Ward listens beyond loopback without TLS.".into(), "Set --tls-cert/--tls-key, or put a TLS-terminating proxy in front and declare --behind-tls-proxy.");
    }
    if !f.listen_loopback && !f.public_url_https {
        add(
            Severity::High,
            "tls.public_url",
            "The public URL (issuer) is not https, yet Ward is reachable beyond loopback.".into(),
            "Set --public-url to the https:// URL clients use.",
        );
    }
    if !f.danger_switches.is_empty() {
        add(
            Severity::High,
            "danger.on",
            format!(
                "Insecure development switches are on: {}.",
                f.danger_switches.join(", ")
            ),
            "Remove every WARD_DANGER_* setting outside tests.",
        );
    }
    if f.demo_database {
        add(
            Severity::High,
            "demo.database",
            "This database was seeded by demo mode: its accounts have published passwords.".into(),
            "Never use a demo database for real data: start real use on a fresh database.",
        );
    }
    if f.sqlite && f.cluster {
        add(
            Severity::High,
            "cluster.sqlite",
            "Several nodes are configured on SQLite.".into(),
            "Use PostgreSQL for several nodes (SQLite is one process's file).",
        );
    }
    if f.master_key_beside_database {
        add(Severity::Medium, "master_key.beside_database", "The master key is a file beside the database: one stolen backup holds both.".into(), "Supply WARD_MASTER_KEY (or WARD_MASTER_KEY_FILE on another volume) from a secrets manager, and back it up apart from the database.");
    }
    for (kid, alg, age) in &f.active_keys {
        if *age > f.rotation_days {
            add(
                Severity::Medium,
                "keys.old",
                format!(
                    "The active {alg} signing key {kid} is {age} days old (policy: {} days).",
                    f.rotation_days
                ),
                "Run `ward keys rotate` (or rotate in the admin console).",
            );
        }
    }
    for (role, holders) in &f.roles_without_mfa {
        let severity = if *holders > 0 {
            Severity::Medium
        } else {
            Severity::Low
        };
        add(severity, "roles.mfa", format!("Role `{role}` grants clinical data without requiring a second factor ({holders} holder(s))."), "Require MFA for the role (`ward role update NAME --mfa-required true`) unless it is for patients reading their own record and you accept that risk.");
    }
    if f.admin_count == 0 {
        add(
            Severity::Low,
            "admins.none",
            "No user holds the admin role.".into(),
            "Create one: `ward user add NAME --role admin --password-stdin`.",
        );
    }
    if !f.admins_without_passkey.is_empty() {
        add(
            Severity::Medium,
            "admins.passkey",
            format!(
                "Admins without a phishing-resistant passkey: {}.",
                f.admins_without_passkey.join(", ")
            ),
            "Have each admin register a passkey or security key on /account.",
        );
    }
    for (client, problem) in &f.risky_ai_clients {
        add(Severity::High, "clients.ai_tool", format!("AI-tool client `{client}` {problem}."), "Narrow its scopes to named resource types and remove offline_access (`ward client update`).");
    }
    for (client, uri) in &f.http_redirects {
        add(
            Severity::Low,
            "clients.http_redirect",
            format!("Client `{client}` redirects to plain http: {uri} (loopback, native app)."),
            "Prefer https or a private-use scheme where the app supports it.",
        );
    }
    if !f.unused_clients.is_empty() {
        add(Severity::Low, "clients.unused", format!("Apps registered over 90 days ago that never received a token: {}.", f.unused_clients.join(", ")), "Disable clients nobody uses (`ward client disable ID`): least privilege includes fewer doors.");
    }
    match f.audit_verified_days_ago {
        None => add(Severity::Medium, "audit.unverified", "The audit chain has never been verified.".into(), "Run `ward audit verify` (and keep `ward audit checkpoint` output elsewhere) regularly, e.g. daily."),
        Some(days) if days > 7 => add(Severity::Medium, "audit.unverified", format!("The audit chain was last verified {days} days ago."), "Run `ward audit verify` regularly, e.g. daily."),
        Some(_) => {}
    }
    if f.sqlite {
        match f.backup_days_ago {
            None => add(
                Severity::Medium,
                "backup.none",
                "No backup of this SQLite database is on record.".into(),
                "Schedule `ward backup --to FILE` and keep copies off this machine.",
            ),
            Some(days) if days > 7 => add(
                Severity::Medium,
                "backup.old",
                format!("The last backup is {days} days old."),
                "Schedule `ward backup --to FILE` daily.",
            ),
            Some(_) => {}
        }
    } else {
        add(
            Severity::Info,
            "backup.postgres",
            "Ward cannot see PostgreSQL backups.".into(),
            "Make sure pg_dump or continuous archiving covers this database, with restores tested.",
        );
    }
    out.sort_by(|a, b| b.severity.cmp(&a.severity).then(a.id.cmp(b.id)));
    out
}

/// Reads the facts from settings and the database.
pub fn gather(
    conn: &mut DbConnection,
    settings: &Settings,
    timing: crate::keys::KeyTiming,
    clock: &dyn crate::clock::Clock,
) -> Result<Facts, StoreError> {
    let now = clock.now_secs();
    let days = |at: i64| (now - at).max(0) / 86_400;
    let listen_loopback = settings.listen_addr().is_ok_and(|a| a.ip().is_loopback());
    let target = settings.database_target().ok();
    let sqlite_path = match &target {
        Some(DatabaseTarget::Sqlite(p)) => Some(p.clone()),
        _ => None,
    };
    let directory = |p: &std::path::Path| {
        p.parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."))
            .canonicalize()
            .ok()
    };
    let master_key_beside_database = match (&sqlite_path, &settings.keys.master_key_file) {
        (Some(db), Some(key)) => directory(db).is_some() && directory(db) == directory(key),
        (Some(db), None) if settings.master_key.is_none() => {
            crate::startup::default_key_path(db).exists()
        }
        _ => false,
    };
    let keys = crate::keys::list(conn, clock, timing).map_err(|e| match e {
        crate::keys::KeyError::Store(s) => s,
        other => StoreError::Corrupt(other.to_string()),
    })?;
    let active_keys = keys
        .iter()
        .filter(|k| k.state == KeyState::Active)
        .map(|k| (k.kid.clone(), k.alg.clone(), days(k.created_at)))
        .collect();
    let mut roles_without_mfa = Vec::new();
    for role in crate::store::roles::list(conn)? {
        if !role.mfa_required && !role.scope_ceiling.trim().is_empty() {
            let holders = crate::store::users::count_with_role(conn, &role.name)?;
            roles_without_mfa.push((role.name, holders));
        }
    }
    let mut admins_without_passkey = Vec::new();
    let mut admin_count = 0;
    for user in crate::store::users::list(conn, None, Page::ALL)? {
        if !user.enabled {
            continue;
        }
        if crate::store::users::roles_of(conn, &user.id)?
            .iter()
            .any(|r| r == ADMIN_ROLE)
        {
            admin_count += 1;
            if crate::store::passkeys::of_user(conn, &user.id)?.is_empty() {
                admins_without_passkey.push(user.username);
            }
        }
    }
    let mut risky_ai_clients = Vec::new();
    let mut http_redirects = Vec::new();
    let mut unused_clients = Vec::new();
    for client in crate::store::clients::list(conn, None, Page::ALL)? {
        if !client.enabled {
            continue;
        }
        let scopes = ScopeSet::parse(&client.allowed_scopes).0;
        if client.ai_tool {
            if scopes
                .resource_scopes()
                .any(|s| s.resource == ResourceType::Any)
            {
                risky_ai_clients.push((
                    client.client_id.clone(),
                    "holds wildcard resource scopes".into(),
                ));
            }
            if scopes.has(IdentityScope::OfflineAccess) {
                risky_ai_clients.push((client.client_id.clone(), "holds offline_access".into()));
            }
        }
        let uris: Vec<String> = serde_json::from_str(&client.redirect_uris).unwrap_or_default();
        for uri in uris.into_iter().filter(|u| u.starts_with("http://")) {
            http_redirects.push((client.client_id.clone(), uri));
        }
        // Resource servers (FHIR APIs) never receive tokens; they are judged elsewhere.
        if client.kind != "resource-server"
            && days(client.created_at) > 90
            && !crate::store::grants::client_ever_granted(conn, &client.client_id)?
        {
            unused_clients.push(client.client_id);
        }
    }
    let mut since = |key: &str| -> Result<Option<i64>, StoreError> {
        Ok(meta::get(conn, key)?
            .and_then(|v| v.parse::<i64>().ok())
            .map(days))
    };
    let audit_verified_days_ago = since(meta::AUDIT_VERIFIED_AT)?;
    let backup_days_ago = since(meta::BACKUP_AT)?;
    Ok(Facts {
        listen_loopback,
        tls: settings.tls.cert.is_some() && settings.tls.key.is_some(),
        behind_tls_proxy: settings.server.behind_tls_proxy,
        public_url_https: settings
            .issuer()
            .map(|i| i.starts_with("https://"))
            .unwrap_or(false),
        sqlite: sqlite_path.is_some(),
        cluster: settings.server.cluster,
        master_key_beside_database,
        demo_database: crate::demo::is_demo_database(conn)?,
        danger_switches: settings
            .danger_switches()
            .into_iter()
            .map(str::to_owned)
            .collect(),
        rotation_days: i64::try_from(settings.keys.rotation_days).unwrap_or(90),
        active_keys,
        roles_without_mfa,
        admins_without_passkey,
        admin_count,
        risky_ai_clients,
        http_redirects,
        unused_clients,
        audit_verified_days_ago,
        backup_days_ago,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy() -> Facts {
        Facts {
            listen_loopback: false,
            tls: true,
            public_url_https: true,
            rotation_days: 90,
            active_keys: vec![("k".into(), "ES256".into(), 10)],
            admin_count: 1,
            audit_verified_days_ago: Some(1),
            backup_days_ago: Some(1),
            sqlite: true,
            ..Facts::default()
        }
    }

    fn ids(findings: &[Finding]) -> Vec<&'static str> {
        findings.iter().map(|f| f.id).collect()
    }

    #[test]
    fn a_healthy_installation_has_no_findings() {
        assert!(assess(&healthy()).is_empty(), "{:?}", assess(&healthy()));
    }

    #[test]
    fn each_risk_becomes_a_finding_with_its_severity_and_fix() {
        type Change = Box<dyn Fn(&mut Facts)>;
        let cases: Vec<(Change, &str, Severity)> = vec![
            (Box::new(|f| f.tls = false), "tls.off", Severity::High),
            (
                Box::new(|f| f.public_url_https = false),
                "tls.public_url",
                Severity::High,
            ),
            (
                Box::new(|f| f.danger_switches = vec!["danger.x".into()]),
                "danger.on",
                Severity::High,
            ),
            (
                Box::new(|f| f.cluster = true),
                "cluster.sqlite",
                Severity::High,
            ),
            (
                Box::new(|f| f.demo_database = true),
                "demo.database",
                Severity::High,
            ),
            (
                Box::new(|f| f.master_key_beside_database = true),
                "master_key.beside_database",
                Severity::Medium,
            ),
            (
                Box::new(|f| f.active_keys[0].2 = 91),
                "keys.old",
                Severity::Medium,
            ),
            (
                Box::new(|f| f.roles_without_mfa = vec![("kiosk".into(), 3)]),
                "roles.mfa",
                Severity::Medium,
            ),
            (
                Box::new(|f| f.admins_without_passkey = vec!["ada".into()]),
                "admins.passkey",
                Severity::Medium,
            ),
            (
                Box::new(|f| {
                    f.risky_ai_clients = vec![("bot".into(), "holds offline_access".into())]
                }),
                "clients.ai_tool",
                Severity::High,
            ),
            (
                Box::new(|f| f.http_redirects = vec![("cli".into(), "http://127.0.0.1/cb".into())]),
                "clients.http_redirect",
                Severity::Low,
            ),
            (
                Box::new(|f| f.unused_clients = vec!["old".into()]),
                "clients.unused",
                Severity::Low,
            ),
            (
                Box::new(|f| f.audit_verified_days_ago = None),
                "audit.unverified",
                Severity::Medium,
            ),
            (
                Box::new(|f| f.audit_verified_days_ago = Some(30)),
                "audit.unverified",
                Severity::Medium,
            ),
            (
                Box::new(|f| f.backup_days_ago = None),
                "backup.none",
                Severity::Medium,
            ),
            (
                Box::new(|f| f.backup_days_ago = Some(9)),
                "backup.old",
                Severity::Medium,
            ),
        ];
        for (change, id, severity) in cases {
            let mut facts = healthy();
            change(&mut facts);
            let findings = assess(&facts);
            assert_eq!(ids(&findings), vec![id]);
            assert_eq!(findings[0].severity, severity, "{id}");
            assert!(!findings[0].fix.is_empty());
        }
    }

    #[test]
    fn findings_come_most_severe_first() {
        let mut facts = healthy();
        facts.unused_clients = vec!["old".into()];
        facts.tls = false;
        facts.admins_without_passkey = vec!["ada".into()];
        let severities: Vec<Severity> = assess(&facts).iter().map(|f| f.severity).collect();
        assert_eq!(
            severities,
            vec![Severity::High, Severity::Medium, Severity::Low]
        );
    }
}
