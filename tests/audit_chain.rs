//! The tamper-evident audit chain on SQLite and PostgreSQL: every event is linked within about
//! a second, also when two nodes write at once; `ward audit verify` names the first broken link
//! after an edit, a deletion or a swap made directly in the database, and a signed checkpoint
//! catches a truncated tail.

use std::time::{Duration, Instant};

use diesel::prelude::*;
use ward::store::schema::audit_events::dsl::*;

use crate::common::smart::FHIR;
use crate::common::{Backend, TestApp};
use crate::on_both_backends;

on_both_backends!(
    verify_names_the_first_broken_link,
    two_nodes_append_at_once_and_the_chain_holds
);

/// Waits until the nodes' linkers have linked every event.
async fn all_linked(app: &TestApp) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let unlinked: i64 = audit_events
            .filter(chain_seq.is_null())
            .count()
            .get_result(&mut *app.conn())
            .unwrap();
        if unlinked == 0 {
            return audit_events.count().get_result(&mut *app.conn()).unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "{unlinked} events still unlinked"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Some events: refused token requests are audited and cheap.
async fn make_events(app: &TestApp, n: usize) {
    let requests = (0..n).map(|_| {
        app.client
            .post(app.url("/token"))
            .form(&[("grant_type", "password")])
            .send()
    });
    for r in futures_util::future::join_all(requests).await {
        assert_eq!(r.unwrap().status(), reqwest::StatusCode::BAD_REQUEST);
    }
}

async fn chained_app(backend: Backend) -> Option<(TestApp, i64)> {
    let app = TestApp::builder(backend)
        .env("WARD_FHIR_BASE", FHIR)
        .start()
        .await?;
    make_events(&app, 8).await;
    let total = all_linked(&app).await;
    Some((app, total))
}

fn verify(app: &TestApp, extra: &[&str]) -> (i32, String) {
    let mut args = vec!["audit", "verify", "--json"];
    args.extend_from_slice(extra);
    let (code, stdout, stderr) = app.storage.ward(&args, &[]);
    assert!(code == 0 || code == 1, "{stderr}");
    (code, stdout)
}

fn seq_row(app: &TestApp, seq: i64) -> (i64, String) {
    audit_events
        .filter(chain_seq.eq(seq))
        .select((id, details))
        .first(&mut *app.conn())
        .unwrap()
}

async fn verify_names_the_first_broken_link(backend: Backend) {
    // Intact, and a checkpoint of the head.
    let Some((app, total)) = chained_app(backend).await else {
        return;
    };
    assert!(total >= 9);
    let (code, report) = verify(&app, &[]);
    assert_eq!(code, 0, "{report}");
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert_eq!(report["verified"], total);
    let checkpoint = app
        .storage
        .ward_json(&["audit", "checkpoint", "--json"], &[]);
    assert_eq!(checkpoint["seq"], total);
    let file = app.storage.dir.path().join("checkpoint.jws");
    std::fs::write(&file, checkpoint["checkpoint"].as_str().unwrap()).unwrap();
    let file = file.to_str().unwrap().to_owned();
    assert_eq!(verify(&app, &["--checkpoint", &file]).0, 0);

    // An edited event.
    let (row, original) = seq_row(&app, 3);
    diesel::update(audit_events.find(row))
        .set(details.eq("{\"forged\":true}"))
        .execute(&mut *app.conn())
        .unwrap();
    let (code, report) = verify(&app, &[]);
    assert_eq!(code, 1);
    assert!(
        report.contains("\"altered\"") && report.contains("\"seq\":3"),
        "{report}"
    );
    diesel::update(audit_events.find(row))
        .set(details.eq(&original))
        .execute(&mut *app.conn())
        .unwrap();
    assert_eq!(verify(&app, &[]).0, 0, "restored");

    // Two events swapped.
    let (a, a_details) = seq_row(&app, 4);
    let (b, b_details) = seq_row(&app, 5);
    diesel::update(audit_events.find(a))
        .set(details.eq(&b_details))
        .execute(&mut *app.conn())
        .unwrap();
    diesel::update(audit_events.find(b))
        .set(details.eq(&a_details))
        .execute(&mut *app.conn())
        .unwrap();
    let (code, report) = verify(&app, &[]);
    assert_eq!(code, 1);
    assert!(report.contains("\"seq\":4"), "{report}");
    diesel::update(audit_events.find(a))
        .set(details.eq(&a_details))
        .execute(&mut *app.conn())
        .unwrap();
    diesel::update(audit_events.find(b))
        .set(details.eq(&b_details))
        .execute(&mut *app.conn())
        .unwrap();

    // The tail removed: only the checkpoint notices. The chain may have grown since the
    // checkpoint (each failed verify above is itself an audited event), so everything from
    // the checkpoint's last two events on goes, once the server (and its linker) has stopped.
    app.stop();
    let deadline = Instant::now() + Duration::from_secs(10);
    while reqwest::get(app.url("/healthz")).await.is_ok() {
        assert!(Instant::now() < deadline, "the server stops");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    diesel::delete(audit_events.filter(chain_seq.ge(total - 1)))
        .execute(&mut *app.conn())
        .unwrap();
    assert_eq!(verify(&app, &[]).0, 0, "a shorter chain is still a chain");
    let (code, report) = verify(&app, &["--checkpoint", &file]);
    assert_eq!(code, 1);
    assert!(report.contains("\"truncated\""), "{report}");

    // An event deleted from the middle.
    let (row, _) = seq_row(&app, 2);
    diesel::delete(audit_events.find(row))
        .execute(&mut *app.conn())
        .unwrap();
    let (code, report) = verify(&app, &[]);
    assert_eq!(code, 1);
    assert!(
        report.contains("\"missing\"") && report.contains("\"expected\":2"),
        "{report}"
    );

    // Events unlinked and back-dated (a rewrite attempt) are never linked again: verify says so.
    diesel::update(audit_events)
        .set((
            chain_seq.eq(None::<i64>),
            chain_hash.eq(None::<String>),
            occurred_at.eq(occurred_at - 3_600_000),
        ))
        .execute(&mut *app.conn())
        .unwrap();
    let (code, report) = verify(&app, &[]);
    assert_eq!(code, 1);
    assert!(report.contains("\"unlinked\""), "{report}");

    // A checkpoint not signed by Ward is refused.
    std::fs::write(&file, "eyJhbGciOiJub25lIn0.e30.").unwrap();
    let (code, _, stderr) = app
        .storage
        .ward(&["audit", "verify", "--checkpoint", &file], &[]);
    assert_eq!(code, 1);
    assert!(stderr.contains("checkpoint"), "{stderr}");
}

async fn two_nodes_append_at_once_and_the_chain_holds(backend: Backend) {
    let Some(first) = TestApp::builder(backend)
        .env("WARD_FHIR_BASE", FHIR)
        .start()
        .await
    else {
        return;
    };
    let second = TestApp::builder(backend)
        .storage(first.storage.clone())
        .env("WARD_FHIR_BASE", FHIR)
        .env("WARD_PUBLIC_URL", &first.base)
        .start()
        .await
        .unwrap();
    for _ in 0..3 {
        futures_util::future::join(make_events(&first, 25), make_events(&second, 25)).await;
    }
    let total = all_linked(&first).await;
    assert!(total >= 150);
    let seqs: Vec<i64> = audit_events
        .select(chain_seq.assume_not_null())
        .order(chain_seq)
        .load(&mut *first.conn())
        .unwrap();
    assert_eq!(seqs, (1..=total).collect::<Vec<_>>(), "one gapless chain");
    let (code, report) = verify(&first, &[]);
    assert_eq!(code, 0, "{report}");
}

on_both_backends!(events_from_before_the_chain_are_linked_once);

/// An upgrade: events written before the chain existed (marked by the migration) are linked
/// whatever their age; a back-dated stranger is not.
async fn events_from_before_the_chain_are_linked_once(backend: Backend) {
    use ward::store::schema::audit_chain_state;
    let Some(storage) = crate::common::Storage::new(backend) else {
        return;
    };
    let storage = std::sync::Arc::new(storage);
    // Old events, as a previous release left them: unlinked and hours old.
    let (code, _, stderr) = storage.ward(&["migrate"], &[]);
    assert_eq!(code, 0, "{stderr}");
    let db = storage.db();
    let mut conn = db.conn().unwrap();
    let max_id: i64 = audit_events
        .select(diesel::dsl::max(id))
        .first::<Option<i64>>(&mut *conn)
        .unwrap()
        .unwrap();
    diesel::update(audit_events)
        .set(occurred_at.eq(occurred_at - 7_200_000))
        .execute(&mut *conn)
        .unwrap();
    diesel::update(audit_chain_state::table)
        .set(audit_chain_state::legacy_max_event_id.eq(max_id))
        .execute(&mut *conn)
        .unwrap();
    let app = TestApp::builder(backend)
        .storage(storage.clone())
        .env("WARD_FHIR_BASE", FHIR)
        .start()
        .await
        .unwrap();
    let total = all_linked(&app).await;
    assert!(total > max_id);
    assert_eq!(verify(&app, &[]).0, 0);
}

on_both_backends!(verify_crosses_a_master_key_rotation);

fn key_id_of(master: &str) -> String {
    let key = ward::crypto::seal::MasterKey::from_base64(master).unwrap();
    ward::crypto::seal::Sealer::new(&key).key_id().to_owned()
}

/// Events linked under master key A; a restart with B current and A previous; more events:
/// Ward starts, signs with its (A-sealed) keys, opens an A-sealed TOTP seed, `verify` passes across the boundary and
/// names both chain keys. Without A, `verify` names the first event it cannot check.
async fn verify_crosses_a_master_key_rotation(backend: Backend) {
    use crate::common::admin::{admin_sign_in, first_admin_sign_in, unix_now};
    let clock = std::sync::Arc::new(ward::clock::ManualClock::at_secs(unix_now()));
    let Some(first) = TestApp::builder(backend)
        .env("WARD_FHIR_BASE", FHIR)
        .manual_clock(clock.clone())
        .start()
        .await
    else {
        return;
    };
    // A TOTP seed sealed under A.
    crate::common::smart::add_user(&first, "root", &["admin"], None);
    let totp = first_admin_sign_in(&first, &clock, "root").await.secret;
    let storage = first.storage.clone();
    let key_a = match &storage.master_key {
        Some(k) => k.clone(),
        None => std::fs::read_to_string(storage.dir.path().join("ward.master-key"))
            .unwrap()
            .trim()
            .to_owned(),
    };
    make_events(&first, 5).await;
    let before = all_linked(&first).await;
    let jwks_before = first.get("/jwks").await.text().await.unwrap();
    first.stop();
    drop(first);

    let key_b = ward::crypto::seal::MasterKey::generate().to_base64();
    let rotated = [
        ("WARD_MASTER_KEY", key_b.as_str()),
        ("WARD_MASTER_KEY_PREVIOUS", key_a.as_str()),
    ];
    let second = TestApp::builder(backend)
        .storage(storage.clone())
        .env("WARD_FHIR_BASE", FHIR)
        .env(rotated[0].0, rotated[0].1)
        .env(rotated[1].0, rotated[1].1)
        .manual_clock(clock.clone())
        .start()
        .await
        .unwrap();
    // The TOTP seed sealed under A still opens: the admin signs in with a code.
    admin_sign_in(&second, &clock, "root", &totp).await;
    // The signing keys sealed under A still open, and still sign.
    let jwks_after = second.get("/jwks").await.text().await.unwrap();
    assert_eq!(jwks_before, jwks_after);
    let machine = crate::common::admin::Machine::register(&second, "lab", "system/Observation.rs");
    machine.access_token(&second, "system/Observation.rs").await;
    make_events(&second, 5).await;
    let total = all_linked(&second).await;
    assert!(total > before + 5);
    second.stop();

    let (ka, kb) = (key_id_of(&key_a), key_id_of(&key_b));
    let key_ids: Vec<Option<String>> = audit_events
        .select(chain_key_id)
        .order(chain_seq)
        .load(&mut *second.conn())
        .unwrap();
    assert!(key_ids[..before as usize]
        .iter()
        .all(|k| k.as_deref() == Some(ka.as_str())));
    assert_eq!(key_ids.last().unwrap().as_deref(), Some(kb.as_str()));

    let (code, stdout, stderr) = storage.ward(&["audit", "verify", "--json"], &rotated);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["verified"], total);
    let keys = report["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2, "{report}");
    assert_eq!(keys[0]["key_id"], ka.as_str());
    assert_eq!(keys[0]["first_seq"], 1);
    assert_eq!(keys[1]["key_id"], kb.as_str());
    assert_eq!(keys[1]["last_seq"], total);
    assert_eq!(
        keys[0]["events"].as_i64().unwrap() + keys[1]["events"].as_i64().unwrap(),
        total
    );
    let (code, stdout, _) = storage.ward(&["audit", "verify"], &rotated);
    assert_eq!(code, 0);
    assert!(stdout.contains(&ka) && stdout.contains(&kb), "{stdout}");

    // Without A: the first event is named, with the key it lacks; not called tampered.
    let only_b = [("WARD_MASTER_KEY", key_b.as_str())];
    let (code, stdout, stderr) = storage.ward(&["audit", "verify", "--json"], &only_b);
    assert_eq!(code, 1, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["first_break"]["problem"], "unknown_key", "{report}");
    assert_eq!(report["first_break"]["seq"], 1);
    assert_eq!(report["first_break"]["key_id"], ka.as_str());
    assert_eq!(report["verified"], 0);
    let (code, stdout, _) = storage.ward(&["audit", "verify"], &only_b);
    assert_eq!(code, 1);
    assert!(
        stdout.contains("event #1") && stdout.contains(&ka) && stdout.contains("does not hold"),
        "{stdout}"
    );
}

on_both_backends!(one_linker_round_links_a_backlog_of_many_batches);

/// A node that audits faster than one batch per round still links everything: a round takes
/// batch after batch until it is caught up (each batch its own transaction on PostgreSQL, its
/// own savepoint in one of the group-commit writer's transactions on SQLite).
async fn one_linker_round_links_a_backlog_of_many_batches(backend: Backend) {
    use ward::audit::chain::{link_pending, LINK_BATCH};
    use ward::audit::{AuditContext, AuditEvent};
    use ward::clock::{Clock, SystemClock};
    use ward::crypto::seal::{MasterKey, Sealer};
    let Some(storage) = crate::common::Storage::new(backend) else {
        return;
    };
    let (code, _, stderr) = storage.ward(&["migrate"], &[]);
    assert_eq!(code, 0, "{stderr}");
    let db = storage.db();
    let backlog = 3 * LINK_BATCH + 7;
    ward::store::write_transaction(&mut db.conn().unwrap(), |conn| {
        for _ in 0..backlog {
            ward::audit::append(
                conn,
                &SystemClock,
                &AuditContext::default(),
                &AuditEvent::TokenRefused {
                    client_id: None,
                    grant: "password".into(),
                    error: "unsupported_grant_type".into(),
                    reason: "a backlog".into(),
                },
            )?;
        }
        Ok::<_, ward::store::StoreError>(())
    })
    .unwrap();
    let total: i64 = audit_events
        .count()
        .get_result(&mut *db.conn().unwrap())
        .unwrap();
    assert!(total >= backlog);
    let sealer = Sealer::new(&MasterKey::generate());
    let mut head = None;
    let linked = link_pending(&db, &sealer, SystemClock.now_millis(), &mut head)
        .await
        .unwrap();
    assert_eq!(i64::try_from(linked).unwrap(), total);
    assert_eq!(head.as_ref().map(|h| h.seq), Some(total));
    let unlinked: i64 = audit_events
        .filter(chain_seq.is_null())
        .count()
        .get_result(&mut *db.conn().unwrap())
        .unwrap();
    assert_eq!(unlinked, 0);
    // Caught up: the next round links nothing and keeps the head.
    let again = link_pending(&db, &sealer, SystemClock.now_millis(), &mut head)
        .await
        .unwrap();
    assert_eq!(again, 0);
    assert_eq!(head.as_ref().map(|h| h.seq), Some(total));
    // Every link holds, also where one batch meets the next.
    let now_ms = SystemClock.now_millis();
    let report = ward::audit::chain::verify(&mut db.conn().unwrap(), &sealer, None, now_ms);
    assert_eq!(report.unwrap().first_break, None);
    // A tail cut while nothing waits to be linked is noticed at the next round, not only once
    // the next event comes.
    diesel::delete(audit_events.filter(chain_seq.eq(total)))
        .execute(&mut db.conn().unwrap())
        .unwrap();
    let cut = link_pending(&db, &sealer, SystemClock.now_millis(), &mut head).await;
    assert!(
        matches!(cut, Err(ward::store::StoreError::Corrupt(_))),
        "{cut:?}"
    );
}

on_both_backends!(a_batch_of_links_sets_each_event_once);

/// `link_all` (one statement per batch on PostgreSQL, one per event on SQLite) writes each
/// event's own place and hash, and never overwrites a link: its count tells the linker when
/// an event of the batch was linked already.
async fn a_batch_of_links_sets_each_event_once(backend: Backend) {
    use ward::store::audit_events::{link_all, ChainLink};
    let Some(storage) = crate::common::Storage::new(backend) else {
        return;
    };
    let (code, _, stderr) = storage.ward(&["migrate"], &[]);
    assert_eq!(code, 0, "{stderr}");
    let db = storage.db();
    let mut conn = db.conn().unwrap();
    for _ in 0..3 {
        ward::audit::append(
            &mut conn,
            &ward::clock::SystemClock,
            &ward::audit::AuditContext::default(),
            &ward::audit::AuditEvent::TokenRefused {
                client_id: None,
                grant: "password".into(),
                error: "unsupported_grant_type".into(),
                reason: "linked in a batch".into(),
            },
        )
        .unwrap();
    }
    let ids: Vec<i64> = audit_events
        .filter(chain_seq.is_null())
        .order(id)
        .select(id)
        .load(&mut *conn)
        .unwrap();
    assert!(ids.len() >= 3, "{ids:?}");
    let ids = &ids[ids.len() - 3..];
    let links: Vec<ChainLink> = ids
        .iter()
        .zip(1000..)
        .map(|(&event, seq)| ChainLink {
            id: event,
            seq,
            hash: format!("hash-of-{event}"),
        })
        .collect();
    assert_eq!(link_all(&mut conn, &links[1..2], "first-key").unwrap(), 1);
    assert_eq!(link_all(&mut conn, &links, "second-key").unwrap(), 2);
    assert_eq!(link_all(&mut conn, &links, "third-key").unwrap(), 0);
    for (i, link) in links.iter().enumerate() {
        let stored: (Option<i64>, Option<String>, Option<String>) = audit_events
            .find(link.id)
            .select((chain_seq, chain_hash, chain_key_id))
            .first(&mut *conn)
            .unwrap();
        let key = if i == 1 { "first-key" } else { "second-key" };
        assert_eq!(
            stored,
            (
                Some(link.seq),
                Some(link.hash.clone()),
                Some(key.to_owned())
            ),
            "event {}",
            link.id
        );
    }
    assert_eq!(link_all(&mut conn, &[], "any").unwrap(), 0);
}
