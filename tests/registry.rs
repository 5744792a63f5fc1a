//! The client registry, roles and users through the `ward` CLI, on SQLite and PostgreSQL:
//! what is accepted, what is refused with a clear error, and that a refusal writes nothing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel::prelude::*;
use josekit::jwk::KeyPair;
use josekit::jws::{ES384, RS384};
use serde_json::{json, Value};
use ward::store::schema::{audit_events, client_secrets, clients, user_roles, users};

use crate::common::https_server::{self, Reply, TestCa};
use crate::common::{Backend, Storage};
use crate::on_both_backends;

on_both_backends!(
    client_cli_registers_shows_updates_and_disables,
    rejects_bad_client_registrations_and_writes_nothing,
    client_secrets_are_shown_once_stored_hashed_and_rotate_with_grace,
    backend_services_register_keys_inline_or_by_verified_url,
    roles_have_validated_ceilings_and_protect_their_holders,
    users_get_roles_and_bad_input_writes_nothing,
    operators_manage_passwords_and_account_state_from_the_cli,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_key_sets_are_cached_as_long_as_cache_control_allows() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use ward::clients::jwks::{JwksCache, JwksFetcher};
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let jwks = backend_jwks().to_string();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let server = https_server::serve(
        &ca,
        Arc::new(move |path: &str| {
            counter.fetch_add(1, Ordering::SeqCst);
            match path {
                "/cached" => Some(Reply::JsonCached(jwks.clone(), "public, max-age=300")),
                "/no-store" => Some(Reply::JsonCached(jwks.clone(), "no-store")),
                _ => None,
            }
        }),
    )
    .await;
    let pem = std::fs::read(&ca.ca_file).unwrap();
    let cache = JwksCache::new(JwksFetcher::new(Some(&pem), true).unwrap());

    let first = cache.keys(&server.url("/cached")).await.unwrap();
    let second = cache.keys(&server.url("/cached")).await.unwrap();
    assert_eq!(first.len(), 2);
    assert!(Arc::ptr_eq(&first, &second));
    assert_eq!(hits.load(Ordering::SeqCst), 1, "served from cache");

    cache.keys(&server.url("/no-store")).await.unwrap();
    cache.keys(&server.url("/no-store")).await.unwrap();
    assert_eq!(hits.load(Ordering::SeqCst), 3, "no-store is never cached");

    // An unknown kid may force one refetch per minute, not more.
    assert!(cache
        .refetch_for_unknown_kid(&server.url("/cached"))
        .await
        .unwrap()
        .is_some());
    assert!(cache
        .refetch_for_unknown_kid(&server.url("/cached"))
        .await
        .unwrap()
        .is_none());
    assert_eq!(hits.load(Ordering::SeqCst), 4);
}

/// Row counts of everything a registry command could write.
fn counts(storage: &Storage) -> [i64; 5] {
    let db = storage.db();
    let mut conn = db.conn().unwrap();
    [
        clients::table.count().get_result(&mut *conn).unwrap(),
        client_secrets::table
            .count()
            .get_result(&mut *conn)
            .unwrap(),
        users::table.count().get_result(&mut *conn).unwrap(),
        user_roles::table.count().get_result(&mut *conn).unwrap(),
        audit_events::table.count().get_result(&mut *conn).unwrap(),
    ]
}

fn audit_actions(storage: &Storage) -> Vec<String> {
    let db = storage.db();
    let mut conn = db.conn().unwrap();
    audit_events::table
        .select(audit_events::action)
        .order(audit_events::id)
        .load(&mut *conn)
        .unwrap()
}

const APP: &[&str] = &[
    "client",
    "add",
    "--name",
    "Growth Chart",
    "--kind",
    "public",
    "--redirect-uri",
    "https://growth.example.com/callback",
    "--scope",
    "launch openid fhirUser",
    "--scope",
    "patient/Observation.rs",
];

async fn client_cli_registers_shows_updates_and_disables(backend: Backend) {
    let Some(storage) = Storage::new(backend) else {
        return;
    };
    let mut args = APP.to_vec();
    args.extend(["--client-id", "growth-chart", "--json"]);
    let created = storage.ward_json(&args, &[]);
    assert_eq!(created["client_id"], "growth-chart");
    assert_eq!(
        created["client_secret"],
        Value::Null,
        "public clients have no secret"
    );
    assert_eq!(created["client"]["auth_method"], "none");
    assert_eq!(
        created["client"]["grant_types"],
        json!(["authorization_code", "refresh_token"])
    );

    let shown = storage.ward_json(&["client", "show", "growth-chart", "--json"], &[]);
    assert_eq!(
        shown["allowed_scopes"],
        "openid fhirUser launch patient/Observation.rs"
    );
    assert_eq!(shown["version"], 1);

    let listed = storage.ward_json(&["client", "list", "--search", "Growth", "--json"], &[]);
    assert_eq!(listed.as_array().unwrap().len(), 1);
    let none = storage.ward_json(&["client", "list", "--search", "%", "--json"], &[]);
    assert_eq!(
        none.as_array().unwrap().len(),
        0,
        "LIKE wildcards are literal"
    );

    let updated = storage.ward_json(
        &[
            "client",
            "update",
            "growth-chart",
            "--name",
            "Growth Chart 2",
            "--scope",
            "patient/Observation.rs patient/Condition.rs",
            "--if-version",
            "1",
            "--json",
        ],
        &[],
    );
    assert_eq!(updated["name"], "Growth Chart 2");
    assert_eq!(updated["version"], 2);
    assert_eq!(
        updated["redirect_uris"],
        json!(["https://growth.example.com/callback"])
    );

    // A stale version is a conflict and changes nothing.
    let before = counts(&storage);
    let (code, _, stderr) = storage.ward(
        &[
            "client",
            "update",
            "growth-chart",
            "--name",
            "Stale",
            "--if-version",
            "1",
        ],
        &[],
    );
    assert_eq!(code, 1);
    assert!(stderr.contains("changed since version 1"), "{stderr}");
    assert_eq!(counts(&storage), before);
    // The client id cannot be changed by an update.
    let (code, _, stderr) = storage.ward(
        &["client", "update", "growth-chart", "--client-id", "other"],
        &[],
    );
    assert_eq!(code, 1);
    assert!(stderr.contains("client_id: cannot change"), "{stderr}");

    let disabled = storage.ward_json(&["client", "disable", "growth-chart", "--json"], &[]);
    assert_eq!(disabled["enabled"], false);
    let enabled = storage.ward_json(&["client", "enable", "growth-chart", "--json"], &[]);
    assert_eq!(enabled["enabled"], true);

    let actions = audit_actions(&storage);
    for expected in [
        "client.registered",
        "client.updated",
        "client.status_changed",
    ] {
        assert!(
            actions.iter().any(|a| a == expected),
            "{expected} missing from {actions:?}"
        );
    }
    assert_eq!(
        actions
            .iter()
            .filter(|a| *a == "client.status_changed")
            .count(),
        2
    );

    let (code, _, stderr) = storage.ward(&["client", "show", "nope"], &[]);
    assert_eq!(code, 1);
    assert!(stderr.contains("no client `nope`"), "{stderr}");
}

async fn rejects_bad_client_registrations_and_writes_nothing(backend: Backend) {
    let Some(storage) = Storage::new(backend) else {
        return;
    };
    let mut first = APP.to_vec();
    first.extend(["--client-id", "taken"]);
    assert_eq!(storage.ward(&first, &[]).0, 0);

    let with = |extra: &[&'static str]| {
        let mut args = APP.to_vec();
        args.extend_from_slice(extra);
        args
    };
    let replace = |flag: &'static str, value: &'static str| -> Vec<&'static str> {
        let mut args: Vec<&str> = Vec::new();
        let mut skip = false;
        for (i, a) in APP.iter().enumerate() {
            if skip {
                skip = false;
                continue;
            }
            if *a == flag && i + 1 < APP.len() {
                skip = true;
                continue;
            }
            args.push(a);
        }
        args.extend([flag, value]);
        args
    };
    let cases: Vec<(&str, Vec<&str>, &str)> = vec![
        (
            "duplicate client id",
            with(&["--client-id", "taken"]),
            "already registered",
        ),
        (
            "http redirect",
            replace("--redirect-uri", "http://growth.example.com/cb"),
            "must use https",
        ),
        (
            "javascript redirect",
            replace("--redirect-uri", "javascript:alert(1)"),
            "javascript",
        ),
        (
            "wildcard redirect",
            replace("--redirect-uri", "https://*.example.com/cb"),
            "wildcards",
        ),
        ("star redirect", replace("--redirect-uri", "*"), "wildcards"),
        (
            "fragment redirect",
            replace("--redirect-uri", "https://growth.example.com/cb#x"),
            "fragment",
        ),
        (
            "implicit grant",
            with(&["--grant-type", "implicit"]),
            "RFC 9700",
        ),
        (
            "password grant",
            with(&["--grant-type", "password"]),
            "RFC 9700",
        ),
        (
            "malformed scope",
            with(&["--scope", "patient/Observation.xyz"]),
            "patient/Observation.xyz",
        ),
        (
            "v1 granular scope",
            with(&["--scope", "patient/Observation.read?category=x"]),
            "patient/Observation.read?category=x",
        ),
        (
            "system scope for an app",
            with(&["--scope", "system/*.rs"]),
            "client_credentials",
        ),
        (
            "unknown kind",
            replace("--kind", "robot"),
            "not a client kind",
        ),
        (
            "bad client id",
            with(&["--client-id", "no spaces allowed"]),
            "client_id",
        ),
        (
            "jwks for public",
            with(&["--jwks-uri", "https://keys.example.com/jwks"]),
            "only private_key_jwt",
        ),
    ];
    let before = counts(&storage);
    for (name, args, expected) in cases {
        let (code, _, stderr) = storage.ward(&args, &[]);
        assert_eq!(code, 1, "{name}: {stderr}");
        assert!(
            stderr.contains(expected),
            "{name}: `{stderr}` should mention {expected}"
        );
        assert_eq!(counts(&storage), before, "{name} wrote something");
    }
    // Unknown fields in a JSON registration are refused too (no mass assignment).
    let file = storage.dir.path().join("client.json");
    std::fs::write(&file, r#"{"name": "X", "kind": "public", "redirect_uris": ["https://x.example.com/cb"], "created_at": 0}"#).unwrap();
    let (code, _, stderr) = storage.ward(
        &["client", "add", "--from-json", file.to_str().unwrap()],
        &[],
    );
    assert_eq!(code, 1);
    assert!(stderr.contains("created_at"), "{stderr}");
    assert_eq!(counts(&storage), before);
}

async fn client_secrets_are_shown_once_stored_hashed_and_rotate_with_grace(backend: Backend) {
    let Some(storage) = Storage::new(backend) else {
        return;
    };
    let created = storage.ward_json(
        &[
            "client",
            "add",
            "--name",
            "Billing",
            "--kind",
            "confidential-symmetric",
            "--redirect-uri",
            "https://billing.example.com/cb",
            "--scope",
            "user/Claim.rs",
            "--json",
        ],
        &[],
    );
    let id = created["client_id"].as_str().unwrap().to_owned();
    let first = created["client_secret"].as_str().unwrap().to_owned();
    assert!(first.len() >= 43, "256-bit secret");
    assert_eq!(created["client"]["auth_method"], "client_secret_basic");

    let db = storage.db();
    let mut conn = db.conn().unwrap();
    let stored: Vec<String> = client_secrets::table
        .select(client_secrets::secret_hash)
        .load(&mut *conn)
        .unwrap();
    assert_eq!(stored.len(), 1);
    assert!(!stored[0].contains(&first), "secret stored in clear");
    let audit: Vec<String> = audit_events::table
        .select(audit_events::details)
        .load(&mut *conn)
        .unwrap();
    assert!(
        audit.iter().all(|d| !d.contains(&first)),
        "secret in audit trail"
    );
    // `show` never prints it again.
    let (_, shown, _) = storage.ward(&["client", "show", &id, "--json"], &[]);
    assert!(!shown.contains(&first));

    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    };
    assert!(ward::clients::verify_secret(&mut conn, &id, &first, now()).unwrap());
    assert!(!ward::clients::verify_secret(&mut conn, &id, "wrong", now()).unwrap());
    assert!(
        !ward::clients::verify_secret(&mut conn, &id, &first[..first.len() - 1], now()).unwrap()
    );

    let rotated = storage.ward_json(
        &["client", "rotate-secret", &id, "--json"],
        &[("WARD_CLIENT_SECRET_GRACE_SECONDS", "600")],
    );
    let second = rotated["client_secret"].as_str().unwrap().to_owned();
    assert_ne!(first, second);
    // During the grace period both work; after it, only the new one.
    assert!(ward::clients::verify_secret(&mut conn, &id, &first, now()).unwrap());
    assert!(ward::clients::verify_secret(&mut conn, &id, &second, now()).unwrap());
    assert!(!ward::clients::verify_secret(&mut conn, &id, &first, now() + 601).unwrap());
    assert!(ward::clients::verify_secret(&mut conn, &id, &second, now() + 601).unwrap());
    assert!(audit_actions(&storage)
        .iter()
        .any(|a| a == "client.secret_rotated"));

    // A disabled client's secret does not authenticate it.
    storage.ward_json(&["client", "disable", &id, "--json"], &[]);
    assert!(!ward::clients::verify_secret(&mut conn, &id, &second, now()).unwrap());
    storage.ward_json(&["client", "enable", &id, "--json"], &[]);
    assert!(ward::clients::verify_secret(&mut conn, &id, &second, now()).unwrap());
    // A grace period beyond 30 days is refused.
    let (code, _, stderr) = storage.ward(
        &["client", "rotate-secret", &id],
        &[("WARD_CLIENT_SECRET_GRACE_SECONDS", "99999999")],
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("secret_grace_seconds"), "{stderr}");

    // A public client has no secret to rotate.
    storage.ward(&[APP, &["--client-id", "pub"]].concat(), &[]);
    let (code, _, stderr) = storage.ward(&["client", "rotate-secret", "pub"], &[]);
    assert_eq!(code, 1);
    assert!(stderr.contains("has no secret"), "{stderr}");
}

fn backend_jwks() -> Value {
    let mut es = ES384.generate_key_pair().unwrap().to_jwk_public_key();
    es.set_key_id("es384-1");
    es.set_algorithm("ES384");
    let mut rs = RS384.generate_key_pair(2048).unwrap().to_jwk_public_key();
    rs.set_key_id("rs384-1");
    rs.set_algorithm("RS384");
    json!({ "keys": [serde_json::to_value(es.as_ref()).unwrap(), serde_json::to_value(rs.as_ref()).unwrap()] })
}

async fn backend_services_register_keys_inline_or_by_verified_url(backend: Backend) {
    let Some(storage) = Storage::new(backend) else {
        return;
    };
    let jwks = backend_jwks();
    let jwks_file = storage.dir.path().join("jwks.json");
    std::fs::write(&jwks_file, jwks.to_string()).unwrap();
    let base = [
        "client",
        "add",
        "--name",
        "Lab export",
        "--kind",
        "confidential-asymmetric",
        "--scope",
        "system/Observation.rs system/Patient.r",
    ];

    let inline = storage.ward_json(
        &[
            &base[..],
            &["--jwks", jwks_file.to_str().unwrap(), "--json"],
        ]
        .concat(),
        &[],
    );
    assert_eq!(
        inline["client"]["grant_types"],
        json!(["client_credentials"])
    );
    assert_eq!(inline["client"]["auth_method"], "private_key_jwt");
    assert!(inline["client"]["access_token_lifetime"].as_i64().unwrap() <= 300);

    // A JWKS file holding a private key is refused.
    let mut private = ES384.generate_key_pair().unwrap().to_jwk_private_key();
    private.set_key_id("p");
    std::fs::write(
        &jwks_file,
        json!({ "keys": [serde_json::to_value(private.as_ref()).unwrap()] }).to_string(),
    )
    .unwrap();
    let before = counts(&storage);
    let (code, _, stderr) = storage.ward(
        &[&base[..], &["--jwks", jwks_file.to_str().unwrap()]].concat(),
        &[],
    );
    assert_eq!(code, 1);
    assert!(stderr.contains("private member"), "{stderr}");
    assert_eq!(counts(&storage), before);

    // JWKS URLs, served by a real HTTPS server on loopback with a test CA.
    let ca = TestCa::new(storage.dir.path());
    let good = jwks.to_string();
    let server = https_server::serve(
        &ca,
        Arc::new(move |path: &str| match path {
            "/good" => Some(Reply::Json(good.clone())),
            "/slow" => Some(Reply::Slow(Duration::from_secs(20), "{}".into())),
            "/huge" => Some(Reply::Huge(4 * 1024 * 1024)),
            "/invalid" => Some(Reply::Json("this is not json".into())),
            "/empty" => Some(Reply::Json(r#"{"keys": []}"#.into())),
            "/redirect" => Some(Reply::Redirect("https://localhost/good".into())),
            _ => None,
        }),
    )
    .await;
    let danger = [
        ("WARD_DANGER_ALLOW_LOOPBACK_JWKS_URI", "true"),
        ("WARD_DANGER_EXTRA_CA_FILE", ca.ca_file.to_str().unwrap()),
    ];
    let by_url = storage.ward_json(
        &[&base[..], &["--jwks-uri", &server.url("/good"), "--json"]].concat(),
        &danger,
    );
    assert_eq!(by_url["client"]["jwks_uri"], server.url("/good"));

    let before = counts(&storage);
    let cases = [
        ("/slow", "took too long"),
        ("/huge", "more than"),
        ("/invalid", "not JSON"),
        ("/empty", "between 1 and"),
        ("/redirect", "302"),
        ("/missing", "404"),
    ];
    for (path, expected) in cases {
        let started = Instant::now();
        let (code, _, stderr) = storage.ward(
            &[&base[..], &["--jwks-uri", &server.url(path)]].concat(),
            &danger,
        );
        assert_eq!(code, 1, "{path}: {stderr}");
        assert!(
            stderr.contains(expected),
            "{path}: `{stderr}` should mention {expected}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{path} was not bounded in time"
        );
        assert_eq!(counts(&storage), before, "{path} wrote something");
    }
    // Without the DANGER switch, loopback is refused before any connection is made.
    let (code, _, stderr) = storage.ward(
        &[&base[..], &["--jwks-uri", &server.url("/good")]].concat(),
        &[("WARD_DANGER_EXTRA_CA_FILE", ca.ca_file.to_str().unwrap())],
    );
    assert_eq!(code, 1);
    assert!(stderr.contains("loopback"), "{stderr}");
    let (code, _, stderr) = storage.ward(
        &[&base[..], &["--jwks-uri", "https://127.0.0.2/jwks"]].concat(),
        &[],
    );
    assert_eq!(code, 1);
    assert!(stderr.contains("not allowed"), "{stderr}");
    assert_eq!(counts(&storage), before);
}

async fn roles_have_validated_ceilings_and_protect_their_holders(backend: Backend) {
    let Some(storage) = Storage::new(backend) else {
        return;
    };
    let roles = storage.ward_json(&["role", "list", "--json"], &[]);
    let names: Vec<&str> = roles
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "admin",
            "billing",
            "front-desk",
            "nurse",
            "patient",
            "physician"
        ]
    );
    let physician = roles
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "physician")
        .unwrap();
    assert_eq!(physician["scope_ceiling"], "user/*.cruds");
    assert_eq!(physician["mfa_required"], true);

    let created = storage.ward_json(
        &["role", "add", "lab-tech", "--description", "Lab results", "--scope", "user/Observation.cruds?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory user/Patient.r", "--json"],
        &[],
    );
    assert_eq!(created["mfa_required"], true);
    let relaxed = storage.ward_json(
        &[
            "role",
            "add",
            "kiosk",
            "--scope",
            "user/Patient.r",
            "--mfa-required",
            "false",
            "--json",
        ],
        &[],
    );
    assert_eq!(relaxed["mfa_required"], false, "{relaxed}");
    let before = counts(&storage);
    for (args, expected) in [
        (
            vec!["role", "add", "bad", "--scope", "user/Observation.zz"],
            "user/Observation.zz",
        ),
        (
            vec!["role", "add", "svc", "--scope", "system/*.rs"],
            "backend services",
        ),
        (
            vec!["role", "add", "ident", "--scope", "openid"],
            "client settings",
        ),
        (vec!["role", "add", "Upper"], "lowercase"),
        (vec!["role", "add", "lab-tech"], "already exists"),
        (
            vec!["role", "set-scopes", "lab-tech", "--scope", "patient/*.xyz"],
            "patient/*.xyz",
        ),
        (
            vec!["role", "set-scopes", "nobody", "--scope", "patient/*.rs"],
            "no role",
        ),
    ] {
        let (code, _, stderr) = storage.ward(&args, &[]);
        assert_eq!(code, 1, "{args:?}");
        assert!(
            stderr.contains(expected),
            "{args:?}: `{stderr}` should mention {expected}"
        );
        assert_eq!(counts(&storage), before, "{args:?} wrote something");
    }
    let updated = storage.ward_json(
        &[
            "role",
            "set-scopes",
            "lab-tech",
            "--scope",
            "user/Observation.rs",
            "--json",
        ],
        &[],
    );
    assert_eq!(updated["scope_ceiling"], "user/Observation.rs");
    assert_eq!(updated["version"], 2);
    let toggled = storage.ward_json(
        &[
            "role",
            "update",
            "lab-tech",
            "--mfa-required",
            "false",
            "--break-glass",
            "true",
            "--json",
        ],
        &[],
    );
    assert_eq!(
        (
            toggled["mfa_required"].clone(),
            toggled["break_glass"].clone()
        ),
        (json!(false), json!(true))
    );

    storage.ward_json(
        &["user", "add", "tech1", "--role", "lab-tech", "--json"],
        &[],
    );
    let (code, _, stderr) = storage.ward(&["role", "delete", "lab-tech"], &[]);
    assert_eq!(code, 1);
    assert!(stderr.contains("held by 1 user"), "{stderr}");
    storage.ward_json(&["user", "remove-role", "tech1", "lab-tech", "--json"], &[]);
    storage.ward_json(&["role", "delete", "lab-tech", "--json"], &[]);
    let actions = audit_actions(&storage);
    for expected in [
        "role.created",
        "role.updated",
        "role.deleted",
        "user.role_removed",
    ] {
        assert!(actions.iter().any(|a| a == expected), "{expected} missing");
    }
}

async fn users_get_roles_and_bad_input_writes_nothing(backend: Backend) {
    let Some(storage) = Storage::new(backend) else {
        return;
    };
    let user = storage.ward_json(
        &[
            "user",
            "add",
            "Dr.Who",
            "--role",
            "physician",
            "--role",
            "nurse",
            "--display-name",
            "Dr. Who",
            "--fhir-user",
            "Practitioner/123",
            "--json",
        ],
        &[],
    );
    assert_eq!(user["username"], "dr.who");
    assert_eq!(user["roles"], json!(["nurse", "physician"]));
    assert_eq!(user["fhir_user"], "Practitioner/123");

    let before = counts(&storage);
    for (args, expected) in [
        (vec!["user", "add", "DR.WHO"], "already exists"),
        (vec!["user", "add", "x y"], "username"),
        (
            vec!["user", "add", "someone", "--fhir-user", "Observation/1"],
            "fhir_user",
        ),
        (
            vec![
                "user",
                "add",
                "someone",
                "--role",
                "physician",
                "--role",
                "no-such-role",
            ],
            "no role `no-such-role`",
        ),
        (
            vec!["user", "add-role", "dr.who", "no-such-role"],
            "no role",
        ),
        (vec!["user", "add-role", "nobody", "nurse"], "no user"),
    ] {
        let (code, _, stderr) = storage.ward(&args, &[]);
        assert_eq!(code, 1, "{args:?}");
        assert!(
            stderr.contains(expected),
            "{args:?}: `{stderr}` should mention {expected}"
        );
        assert_eq!(counts(&storage), before, "{args:?} wrote something");
    }
    // Adding a role the user already has is a no-op: nothing written.
    storage.ward_json(&["user", "add-role", "dr.who", "nurse", "--json"], &[]);
    assert_eq!(counts(&storage), before);
    let after = storage.ward_json(&["user", "add-role", "dr.who", "billing", "--json"], &[]);
    assert_eq!(after["roles"], json!(["billing", "nurse", "physician"]));
    let list = storage.ward_json(&["user", "list", "--search", "who", "--json"], &[]);
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert!(audit_actions(&storage).iter().any(|a| a == "user.created"));
}

async fn operators_manage_passwords_and_account_state_from_the_cli(backend: Backend) {
    let Some(storage) = Storage::new(backend) else {
        return;
    };
    storage.ward_json(&["migrate", "--json"], &[]);
    let before = counts(&storage);
    // Weak passwords are refused before anything is written; passwords never come from argv.
    let (code, _, stderr) = storage.ward_stdin(
        &[
            "user",
            "add",
            "admin",
            "--role",
            "admin",
            "--password-stdin",
        ],
        "password1234\n",
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("password: is too easy to guess"),
        "{stderr}"
    );
    assert_eq!(counts(&storage), before);
    let (code, _, stderr) = storage.ward_stdin(
        &[
            "user",
            "add",
            "admin",
            "--role",
            "admin",
            "--password-stdin",
        ],
        "short\n",
    );
    assert_eq!(code, 1);
    assert!(stderr.contains("at least 12"), "{stderr}");

    let (code, out, stderr) = storage.ward_stdin(
        &[
            "user",
            "add",
            "admin",
            "--role",
            "admin",
            "--password-stdin",
            "--json",
        ],
        "violet tractor sings at dawn\n",
    );
    assert_eq!(code, 0, "{stderr}");
    let admin: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(admin["roles"], json!(["admin"]));
    let db = storage.db();
    let stored = ward::store::credentials::login_user_by_name(&mut db.conn().unwrap(), "admin")
        .unwrap()
        .unwrap();
    assert!(stored
        .password_hash
        .unwrap()
        .starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));

    let (code, _, stderr) = storage.ward_stdin(
        &["user", "set-password", "admin", "--password-stdin"],
        "amber walrus plays the oboe\n",
    );
    assert_eq!(code, 0, "{stderr}");
    let unlocked = storage.ward_json(&["user", "unlock", "admin", "--json"], &[]);
    assert_eq!(unlocked["was_locked"], false);
    let disabled = storage.ward_json(&["user", "disable", "admin", "--json"], &[]);
    assert_eq!(disabled["enabled"], false);
    let enabled = storage.ward_json(&["user", "enable", "admin", "--json"], &[]);
    assert_eq!(enabled["enabled"], true);
    storage.ward_json(&["user", "reset-mfa", "admin", "--json"], &[]);
    let actions = audit_actions(&storage);
    for expected in ["password.changed", "user.status_changed", "mfa.reset"] {
        assert!(
            actions.iter().any(|a| a == expected),
            "{expected} missing from {actions:?}"
        );
    }
    let audit: Vec<String> = audit_events::table
        .select(audit_events::details)
        .load(&mut *db.conn().unwrap())
        .unwrap();
    assert!(
        audit
            .iter()
            .all(|d| !d.contains("violet") && !d.contains("walrus")),
        "no password in the audit trail"
    );
}
