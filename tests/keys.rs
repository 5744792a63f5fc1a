//! Signing keys: generation on first start, sealing at rest, JWKS publication and rotation.

use std::collections::BTreeSet;
use std::sync::Arc;

use reqwest::StatusCode;
use serde_json::Value;
use ward::audit::AuditContext;
use ward::clock::{Clock, ManualClock};
use ward::crypto::seal::{MasterKey, Sealer};
use ward::keys::{self, KeyAlg};
use ward::store::{audit_events, signing_keys};

use crate::common::{Backend, TestApp};
use crate::on_both_backends;

on_both_backends!(
    jwks_publishes_one_public_key_per_algorithm,
    first_start_records_keys_in_the_audit_trail,
    rotation_publishes_the_next_key_before_it_signs,
);

async fn jwks(app: &TestApp) -> Value {
    let r = app.get("/jwks").await;
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

fn kids(jwks: &Value) -> BTreeSet<String> {
    jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect()
}

async fn jwks_publishes_one_public_key_per_algorithm(backend: Backend) {
    let Some(app) = TestApp::start(backend).await else {
        return;
    };
    let response = app.get("/jwks").await;
    assert_eq!(response.status(), StatusCode::OK);
    let etag = response
        .headers()
        .get("etag")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert!(response
        .headers()
        .get("cache-control")
        .unwrap()
        .to_str()
        .unwrap()
        .contains("max-age=600"));
    let body: Value = response.json().await.unwrap();
    let keys = body["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2);
    let algs: BTreeSet<&str> = keys.iter().map(|k| k["alg"].as_str().unwrap()).collect();
    assert_eq!(algs, BTreeSet::from(["ES256", "RS256"]));
    for key in keys {
        assert_eq!(key["use"], "sig");
        assert!(key["kid"].as_str().is_some_and(|k| k.len() >= 16));
        for private in ["d", "p", "q", "dp", "dq", "qi"] {
            assert!(
                key.get(private).is_none(),
                "private member {private} published"
            );
        }
    }
    let es = keys.iter().find(|k| k["alg"] == "ES256").unwrap();
    assert_eq!(es["kty"], "EC");
    assert_eq!(es["crv"], "P-256");

    let not_modified = app
        .client
        .get(app.url("/jwks"))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(not_modified.status(), StatusCode::NOT_MODIFIED);

    // Private halves are stored sealed, never in clear.
    let rows = signing_keys::all(&mut app.conn()).unwrap();
    assert_eq!(rows.len(), 2);
    for row in rows {
        assert!(row.private_jwk_sealed.starts_with("v1."));
        assert!(!row.private_jwk_sealed.contains("\"d\""));
        assert!(!row.public_jwk.contains("\"d\""));
    }
}

async fn first_start_records_keys_in_the_audit_trail(backend: Backend) {
    let Some(app) = TestApp::start(backend).await else {
        return;
    };
    let mut conn = app.conn();
    let created = audit_events::list(&mut conn, Some("key.created"), 100).unwrap();
    assert_eq!(created.len(), 2);
    for event in &created {
        let details: Value = serde_json::from_str(&event.details).unwrap();
        assert_eq!(details["reason"], "initial");
        assert_eq!(event.outcome, "success");
    }
    let started = audit_events::list(&mut conn, Some("server.started"), 100).unwrap();
    assert_eq!(started.len(), 1);
    let details: Value = serde_json::from_str(&started[0].details).unwrap();
    assert_eq!(details["tls"], false);
    assert_eq!(details["issuer"], app.base.as_str());
    drop(conn);

    // A restart on the same storage reuses the keys: same JWKS, no new key events.
    let before = kids(&jwks(&app).await);
    let storage = Arc::clone(&app.storage);
    app.stop();
    drop(app);
    let again = TestApp::builder(backend)
        .storage(storage)
        .start()
        .await
        .unwrap();
    assert_eq!(kids(&jwks(&again).await), before);
    let created = audit_events::list(&mut again.conn(), Some("key.created"), 100).unwrap();
    assert_eq!(created.len(), 2);
}

async fn rotation_publishes_the_next_key_before_it_signs(backend: Backend) {
    let start = 1_900_000_000;
    let clock = Arc::new(ManualClock::at_secs(start));
    let Some(app) = TestApp::builder(backend)
        .manual_clock(clock.clone())
        .start()
        .await
    else {
        return;
    };
    let ring = &app.state.keys;
    let old = ring.signer(KeyAlg::Es256, start).unwrap().kid;
    let old_rsa = ring.signer(KeyAlg::Rs256, start).unwrap().kid;

    // Rotate through the same service function the CLI uses.
    let master = match &app.storage.master_key {
        Some(k) => MasterKey::from_base64(k).unwrap(),
        None => MasterKey::from_base64(
            &std::fs::read_to_string(app.storage.dir.path().join("ward.master-key")).unwrap(),
        )
        .unwrap(),
    };
    let timing = ring.timing();
    let rotated = keys::rotate(
        &mut app.conn(),
        &Sealer::new(&master),
        clock.as_ref(),
        &AuditContext::cli(),
        timing,
        &[KeyAlg::Es256],
        false,
    )
    .unwrap();
    let new = rotated[0].kid.clone();

    // Published at once, not yet signing. (Polled: the node's own background reload, started
    // with it, may have read the keys before the rotation and install them after this one.)
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let published = loop {
        ring.reload(&mut app.conn(), clock.now_secs()).unwrap();
        let published = kids(&jwks(&app).await);
        if published.contains(&new) || std::time::Instant::now() > deadline {
            break published;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(published.contains(&new) && published.contains(&old));
    assert_eq!(ring.signer(KeyAlg::Es256, start).unwrap().kid, old);

    // Once every cached JWKS has expired, the new key signs; the old one is still published.
    let activation = start + timing.publish_ahead_seconds();
    assert_eq!(ring.signer(KeyAlg::Es256, activation - 1).unwrap().kid, old);
    assert_eq!(ring.signer(KeyAlg::Es256, activation).unwrap().kid, new);
    clock.set_secs(activation);
    ring.reload(&mut app.conn(), activation).unwrap();
    assert!(kids(&jwks(&app).await).contains(&old));
    // The other algorithm is untouched.
    assert_eq!(ring.signer(KeyAlg::Rs256, activation).unwrap().kid, old_rsa);

    // After the longest token lifetime, the retired key leaves the JWKS.
    let gone = activation + timing.max_token_lifetime_seconds;
    // The node also reloads on its own (woken by the rotation's change, or its period), with
    // the clock it read when it began: a reload begun before the clock moved may land after
    // ours, so wait for the published set to settle.
    clock.set_secs(gone);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let published = loop {
        ring.reload(&mut app.conn(), gone).unwrap();
        let published = kids(&jwks(&app).await);
        if !published.contains(&old) || std::time::Instant::now() > deadline {
            break published;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(!published.contains(&old));
    assert!(published.contains(&new) && published.contains(&old_rsa));

    let rotations = audit_events::list(&mut app.conn(), Some("key.created"), 100).unwrap();
    assert_eq!(rotations.len(), 3);
    let last: Value = serde_json::from_str(&rotations[2].details).unwrap();
    assert_eq!(last["reason"], "rotation");
    assert_eq!(last["kid"], new.as_str());
}

on_both_backends!(a_public_key_swapped_in_the_database_is_refused);

/// The public half of a signing key is stored in clear; a row whose public key is not its sealed
/// private key's own (someone swapped it to make Ward trust their signatures) stops the load.
async fn a_public_key_swapped_in_the_database_is_refused(backend: Backend) {
    use diesel::prelude::*;
    use josekit::jwk::KeyPair;
    use ward::store::schema::signing_keys::dsl::*;
    let Some(app) = TestApp::start(backend).await else {
        return;
    };
    let stranger = josekit::jws::ES256
        .generate_key_pair()
        .unwrap()
        .to_jwk_public_key();
    let (victim, _): (String, String) = signing_keys
        .filter(alg.eq("ES256"))
        .select((kid, public_jwk))
        .first(&mut *app.conn())
        .unwrap();
    let mut forged = serde_json::to_value(&stranger).unwrap();
    forged["kid"] = Value::String(victim.clone());
    diesel::update(signing_keys.find(&victim))
        .set(public_jwk.eq(forged.to_string()))
        .execute(&mut *app.conn())
        .unwrap();
    // A node starting (or a key ring loading) after the swap refuses it.
    let error = ward::keys::KeyRing::load(
        &mut app.conn(),
        app.state.sealer.clone(),
        app.state.keys.timing(),
        0,
    )
    .expect_err("a mismatched public key is refused");
    assert!(error.to_string().contains("does not match"), "{error}");
}
