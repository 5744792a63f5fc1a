//! The tamper-evident chain over the audit trail (DESIGN.md §8).
//!
//! Events are inserted in their action's transaction, unlinked. [`link`] — run by every node
//! about ten times a second, one node at a time under a database lock — gives each unlinked event,
//! in commit order, the next sequence number and `HMAC(key, previous hash ‖ seq ‖ content)`
//! under a key derived from the master key. So no security action waits on a chain head, and
//! several nodes append without coordination. [`verify`] walks the chain and names the first
//! broken link: an edited event (hash mismatch), a deleted one (a gap), one inserted or moved
//! into the past (hash mismatch at its place). A signed [`Checkpoint`] of the head, kept
//! elsewhere, also catches a truncated tail.
//!
//! Master-key rotation: each link records the id of the chain key that made it (the id of the
//! master key the chain key derives from). New links use the current master key; `verify`
//! checks each event with the key it names, so a chain crosses a rotation unbroken as long as
//! Ward holds the previous keys (`WARD_MASTER_KEY_PREVIOUS`). An event naming a key Ward does
//! not hold is reported as such ([`Break::UnknownKey`]), not as tampering. Links made before key
//! ids were recorded name none and are checked with every key held.

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::crypto::constant_time_eq;
use crate::crypto::seal::Sealer;
use crate::store::audit_events::{self, AuditEventRow, ChainLink};
use crate::store::{write_transaction, AdvisoryLock, DbConnection, StoreError};

const PURPOSE: &str = "ward/audit-chain/v1";
/// The hash the first event links to.
pub const GENESIS: &str = "genesis";
/// Events linked per piece of work. On SQLite each piece rides in one of the group-commit
/// writer's batches (`link_pending`), so it adds about half a millisecond to that batch's
/// requests; a round links as many pieces as are waiting, one per writer batch.
pub const LINK_BATCH: i64 = 64;
/// The most pieces one round links before it lets the next tick come: about 80,000 events a
/// second at ten rounds a second, far above what one node can audit.
pub const MAX_BATCHES_PER_ROUND: usize = 128;

/// Everything an event says, in a fixed order (the stored row id included, so a deleted and
/// re-inserted event does not verify).
fn content(row: &AuditEventRow) -> String {
    // Destructured in full, so a column added later cannot silently escape the MAC.
    let AuditEventRow {
        id,
        occurred_at,
        action,
        outcome,
        severity,
        actor_user,
        actor_client,
        source_ip,
        user_agent,
        request_id,
        target_patient,
        node,
        details,
        chain_seq: _,
        chain_hash: _,
        // Not in the MAC: the hash only verifies under the key it names, so a changed key id
        // names either an unknown key (reported as such) or one that does not reproduce it.
        chain_key_id: _,
    } = row;
    json!([
        id,
        occurred_at,
        action,
        outcome,
        severity,
        actor_user,
        actor_client,
        source_ip,
        user_agent,
        request_id,
        target_patient,
        node,
        details,
    ])
    .to_string()
}

fn link_data(previous: &str, seq: i64, row: &AuditEventRow) -> String {
    format!("{previous}\n{seq}\n{}", content(row))
}

/// The chain hash of `row` at `seq` after `previous`, under the current master key.
pub fn link_hash(sealer: &Sealer, previous: &str, seq: i64, row: &AuditEventRow) -> String {
    sealer.keyed_hash(PURPOSE, link_data(previous, seq, row).as_bytes())
}

/// The chain hash of `row` at `seq` after `previous` under the key named `key_id`, if held.
pub fn link_hash_with(
    sealer: &Sealer,
    key_id: &str,
    previous: &str,
    seq: i64,
    row: &AuditEventRow,
) -> Option<String> {
    sealer.keyed_hash_with(key_id, PURPOSE, link_data(previous, seq, row).as_bytes())
}

/// What checking one link found.
#[derive(Debug, PartialEq, Eq)]
enum LinkCheck {
    /// The stored hash is right, under this key.
    Good(String),
    /// The stored hash is wrong under the key the link names (or, naming none, every key held).
    Bad,
    /// The link names a key this Ward does not hold.
    UnknownKey(String),
}

fn check_link(
    sealer: &Sealer,
    previous: &str,
    seq: i64,
    row: &AuditEventRow,
    stored: &str,
) -> LinkCheck {
    let candidates = match &row.chain_key_id {
        Some(key_id) if !sealer.holds(key_id) => {
            return LinkCheck::UnknownKey(key_id.clone());
        }
        Some(key_id) => vec![key_id.clone()],
        // Linked before key ids were recorded (or by an older binary during an upgrade).
        None => sealer.key_ids(),
    };
    for key_id in candidates {
        let expected = link_hash_with(sealer, &key_id, previous, seq, row);
        if expected.is_some_and(|e| constant_time_eq(e.as_bytes(), stored.as_bytes())) {
            return LinkCheck::Good(key_id);
        }
    }
    LinkCheck::Bad
}

/// Events older than this are never linked: a row that appears unlinked in the past was not
/// written by Ward's request path (which inserts in the action's transaction, linked within a
/// second), so `verify` reports it instead of blessing it.
pub const LINK_WINDOW_MS: i64 = 10 * 60 * 1000;

/// Links the events inserted so far (one batch); returns the head afterwards. `last_seen` is the
/// head this node saw last: if the chain no longer reaches it with the same hash, the chain was
/// rewritten underneath and nothing is linked (an error, so the operator hears of it).
/// On PostgreSQL a node that finds the chain lock taken skips this round.
pub fn link(
    conn: &mut DbConnection,
    sealer: &Sealer,
    now_ms: i64,
    last_seen: Option<&Head>,
) -> Result<Linked, StoreError> {
    if !audit_events::any_unlinked_since(conn, now_ms - LINK_WINDOW_MS)? {
        // Nothing to link, but the head is still checked: a tail cut or rewritten on a quiet
        // node is reported now, not only when the next event comes.
        let head = audit_events::chain_head(conn)?;
        still_reaches(conn, last_seen, head.as_ref())?;
        let head = head.map(|(seq, hash)| Head { seq, hash });
        return Ok(Linked { head, count: 0 });
    }
    write_transaction(conn, |conn| {
        if !lock_chain(conn)? {
            return Ok(Linked {
                head: last_seen.cloned(),
                count: 0,
            });
        }
        let head = audit_events::chain_head(conn)?;
        still_reaches(conn, last_seen, head.as_ref())?;
        let (mut seq, mut previous) = head.unwrap_or((0, GENESIS.to_owned()));
        let rows = audit_events::unlinked_since(conn, now_ms - LINK_WINDOW_MS, LINK_BATCH)?;
        let links: Vec<ChainLink> = rows
            .iter()
            .map(|row| {
                seq += 1;
                let hash = link_hash(sealer, &previous, seq, row);
                previous.clone_from(&hash);
                ChainLink {
                    id: row.id,
                    seq,
                    hash,
                }
            })
            .collect();
        if audit_events::link_all(conn, &links, sealer.key_id())? != links.len() {
            // The chain lock is held: an event linked meanwhile was linked outside Ward.
            return Err(StoreError::Corrupt(format!(
                "an audit event among {}..={} was linked by someone else",
                rows.first().map_or(0, |r| r.id),
                rows.last().map_or(0, |r| r.id),
            )));
        }
        Ok(Linked {
            head: (seq > 0).then_some(Head {
                seq,
                hash: previous,
            }),
            count: rows.len(),
        })
    })
}

/// `Corrupt` unless the chain (whose head is `head`) still holds `last_seen`, the head this node
/// saw last, with the same hash: a chain only ever grows.
fn still_reaches(
    conn: &mut DbConnection,
    last_seen: Option<&Head>,
    head: Option<&(i64, String)>,
) -> Result<(), StoreError> {
    let Some(seen) = last_seen else {
        return Ok(());
    };
    let still_there = audit_events::hash_at(conn, seen.seq)?;
    let intact = still_there.is_some_and(|h| constant_time_eq(h.as_bytes(), seen.hash.as_bytes()))
        && head.is_some_and(|(seq, _)| *seq >= seen.seq);
    if intact {
        return Ok(());
    }
    Err(StoreError::Corrupt(format!(
        "the audit chain was rewritten: event #{} is not what this node linked; not linking until `ward audit verify` is run",
        seen.seq
    )))
}

/// What one `link` did: the head afterwards and how many events it linked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Linked {
    pub head: Option<Head>,
    pub count: usize,
}

/// One round of the linker: links batch after batch until one comes back short, so the chain
/// keeps up with any rate of events instead of one batch per round. `last_seen` is updated as
/// `link` describes; answers how many events were linked.
///
/// Each batch is a piece of write work (`Db::write`): on SQLite it runs on the group-commit
/// writer, inside the next batch of token issuances, as a savepoint of that transaction. Linking
/// from a thread of its own made the writer wait: a round of a few thousand events held the
/// write lock for about 1.3 ms per 200 events, one transaction after another, and the kernel
/// ran the linker's freshly woken threads ahead of the busy writer, so every half second the
/// token endpoint stood still for 10–17 ms (its p99). On PostgreSQL `write` is `run`: each batch
/// is its own transaction under the chain's advisory lock. A round with nothing to link only
/// reads (`run`), on either backend.
pub async fn link_pending(
    db: &crate::store::Db,
    sealer: &Sealer,
    now_ms: i64,
    last_seen: &mut Option<Head>,
) -> Result<usize, StoreError> {
    let mut total = 0;
    for _ in 0..MAX_BATCHES_PER_ROUND {
        let (sealer, seen) = (sealer.clone(), last_seen.clone());
        // Nothing waiting (a quiet node, ten times a second): `link` only reads, so it needs
        // no place in the writer's queue, nor SQLite's write lock.
        let waiting = db
            .run(move |conn| audit_events::any_unlinked_since(conn, now_ms - LINK_WINDOW_MS))
            .await?;
        let work = move |conn: &mut DbConnection| link(conn, &sealer, now_ms, seen.as_ref());
        let linked = if waiting {
            db.write(work).await?
        } else {
            db.run(work).await?
        };
        total += linked.count;
        if linked.head.is_some() {
            *last_seen = linked.head;
        }
        if linked.count < LINK_BATCH as usize {
            break;
        }
    }
    Ok(total)
}

/// Takes the chain lock for this transaction: PostgreSQL's advisory lock (without waiting, at
/// READ COMMITTED so the head read after it is current), SQLite's write lock (already held).
fn lock_chain(conn: &mut DbConnection) -> Result<bool, StoreError> {
    use diesel::connection::SimpleConnection;
    use diesel::RunQueryDsl;
    match conn {
        DbConnection::Sqlite(_) => Ok(true),
        DbConnection::Postgres(pg) => {
            pg.batch_execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")?;
            #[derive(diesel::QueryableByName)]
            struct Locked {
                #[diesel(sql_type = diesel::sql_types::Bool)]
                locked: bool,
            }
            let got: Locked = diesel::sql_query(format!(
                "SELECT pg_try_advisory_xact_lock({}) AS locked",
                AdvisoryLock::AuditChain as i64
            ))
            .get_result(pg)?;
            Ok(got.locked)
        }
    }
}

/// The first problem `verify` found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum Break {
    /// The event at `seq` does not hash to its stored value: it, or the order, was changed.
    Altered { seq: i64, event_id: i64 },
    /// `expected` is missing: an event was deleted (or its link removed).
    Missing { expected: i64 },
    /// The chain ends before the checkpoint's head: events were removed from the end.
    Truncated { checkpoint_seq: i64, last_seq: i64 },
    /// The event at the checkpoint's position is not the one the checkpoint signed.
    CheckpointMismatch { seq: i64 },
    /// Events older than the link window are not in the chain: written outside Ward's request
    /// path, or the linker is stopped.
    Unlinked { count: i64 },
    /// The event at `seq` was linked under a chain key this Ward does not hold (a master key
    /// rotated away without keeping the old one as a previous key), so it cannot be checked.
    UnknownKey {
        seq: i64,
        event_id: i64,
        key_id: String,
    },
    /// The event at `seq` is linked under a key (or under no recorded key) after the chain had
    /// moved on to another key. Chain keys only move forward, with master-key rotations, so
    /// this is a link rewritten with an old (perhaps leaked) key.
    KeyOutOfOrder {
        seq: i64,
        event_id: i64,
        key_id: String,
    },
}

/// One chain key's stretch of the chain, as `verify` found it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyUse {
    pub key_id: String,
    pub events: i64,
    pub first_seq: i64,
    pub last_seq: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Linked events checked.
    pub verified: i64,
    pub head: Option<Head>,
    pub first_break: Option<Break>,
    /// The chain keys that made the verified links, in chain order (one entry per stretch).
    pub keys: Vec<KeyUse>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    pub seq: i64,
    pub hash: String,
}

/// Chain keys only move forward: a link may use the key of the current stretch or a new one,
/// never a key whose stretch has ended; and a link without a recorded key id (made before ids
/// were recorded) may only come before every link that names one. `Err`: the key out of order.
fn key_order(
    keys: &[KeyUse],
    key_id: &str,
    unnamed: bool,
    named_before: bool,
) -> Result<(), String> {
    if unnamed && named_before {
        return Err(format!("(none recorded; checks under {key_id})"));
    }
    let current = keys.last().map(|k| k.key_id.as_str());
    if current != Some(key_id) && keys.iter().any(|k| k.key_id == key_id) {
        return Err(key_id.to_owned());
    }
    Ok(())
}

/// Walks the whole chain from the first event; with a checkpoint, also requires that the
/// chain still reaches it with the same hash.
pub fn verify(
    conn: &mut DbConnection,
    sealer: &Sealer,
    checkpoint: Option<&Head>,
    now_ms: i64,
) -> Result<Report, StoreError> {
    let (mut seq, mut previous) = (0_i64, GENESIS.to_owned());
    let mut first_break = None;
    let mut keys: Vec<KeyUse> = Vec::new();
    let mut named_before = false;
    // A checkpoint of the empty chain is the genesis hash.
    let mut at_checkpoint: Option<String> = checkpoint
        .filter(|c| c.seq == 0)
        .map(|_| GENESIS.to_owned());
    'walk: loop {
        let rows = audit_events::chain_after(conn, seq, 1000)?;
        if rows.is_empty() {
            break;
        }
        for row in rows {
            let Some(row_seq) = row.chain_seq else {
                continue;
            };
            let Some(stored) = row.chain_hash.clone() else {
                first_break = Some(Break::Altered {
                    seq: row_seq,
                    event_id: row.id,
                });
                break 'walk;
            };
            if row_seq != seq + 1 {
                first_break = Some(Break::Missing { expected: seq + 1 });
                break 'walk;
            }
            match check_link(sealer, &previous, row_seq, &row, &stored) {
                LinkCheck::Good(key_id) => {
                    let unnamed = row.chain_key_id.is_none();
                    if let Err(out_of_order) = key_order(&keys, &key_id, unnamed, named_before) {
                        first_break = Some(Break::KeyOutOfOrder {
                            seq: row_seq,
                            event_id: row.id,
                            key_id: out_of_order,
                        });
                        break 'walk;
                    }
                    named_before |= !unnamed;
                    match keys.last_mut() {
                        Some(last) if last.key_id == key_id => {
                            last.events += 1;
                            last.last_seq = row_seq;
                        }
                        _ => keys.push(KeyUse {
                            key_id,
                            events: 1,
                            first_seq: row_seq,
                            last_seq: row_seq,
                        }),
                    }
                }
                LinkCheck::Bad => {
                    first_break = Some(Break::Altered {
                        seq: row_seq,
                        event_id: row.id,
                    });
                    break 'walk;
                }
                LinkCheck::UnknownKey(key_id) => {
                    first_break = Some(Break::UnknownKey {
                        seq: row_seq,
                        event_id: row.id,
                        key_id,
                    });
                    break 'walk;
                }
            }
            seq = row_seq;
            previous = stored;
            if checkpoint.is_some_and(|c| c.seq == seq) {
                at_checkpoint = Some(previous.clone());
            }
        }
    }
    if first_break.is_none() {
        let stale = audit_events::count_unlinked_before(conn, now_ms - LINK_WINDOW_MS)?;
        if stale > 0 {
            first_break = Some(Break::Unlinked { count: stale });
        }
    }
    if first_break.is_none() {
        if let Some(c) = checkpoint {
            first_break = match &at_checkpoint {
                None => Some(Break::Truncated {
                    checkpoint_seq: c.seq,
                    last_seq: seq,
                }),
                Some(hash) if !constant_time_eq(hash.as_bytes(), c.hash.as_bytes()) => {
                    Some(Break::CheckpointMismatch { seq: c.seq })
                }
                Some(_) => None,
            };
        }
    }
    Ok(Report {
        verified: seq,
        head: (seq > 0).then_some(Head {
            seq,
            hash: previous,
        }),
        first_break,
        keys,
    })
}

const CHECKPOINT_TYPE: &str = "ward-audit-checkpoint+jwt";

/// A signed statement of the chain's head (a JWS by Ward's ES256 key), for operators to keep
/// outside the database: `ward audit verify --checkpoint` then also catches a truncated tail.
pub fn sign_checkpoint(
    signer: &crate::keys::Signer,
    head: &Head,
    issuer: &str,
    now: i64,
) -> Result<String, crate::keys::KeyError> {
    let mut header = josekit::jws::JwsHeader::new();
    header.set_token_type(CHECKPOINT_TYPE);
    header.set_key_id(&signer.kid);
    let payload = json!({ "iss": issuer, "iat": now, "seq": head.seq, "hash": head.hash });
    Ok(josekit::jws::serialize_compact(
        payload.to_string().as_bytes(),
        &header,
        signer.inner.as_ref(),
    )?)
}

/// The head a checkpoint states, if it is one Ward signed (with any key it still holds).
pub fn read_checkpoint(ring: &crate::keys::KeyRing, jws: &str) -> Option<Head> {
    let header = josekit::jwt::decode_header(jws.trim()).ok()?;
    let kid = header.claim("kid")?.as_str()?;
    if header.claim("typ")?.as_str()? != CHECKPOINT_TYPE {
        return None;
    }
    let (alg, verifier) = ring.verifier(kid)?;
    if header.claim("alg")?.as_str()? != alg.as_str() {
        return None;
    }
    let (payload, _) = josekit::jws::deserialize_compact(jws.trim(), verifier.as_ref()).ok()?;
    let value: serde_json::Value = serde_json::from_slice(&payload).ok()?;
    Some(Head {
        seq: value.get("seq")?.as_i64()?,
        hash: value.get("hash")?.as_str()?.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::seal::MasterKey;

    fn row(id: i64, key_id: Option<&str>) -> AuditEventRow {
        AuditEventRow {
            id,
            occurred_at: 1_000 + id,
            action: "token.refused".into(),
            outcome: "failure".into(),
            severity: "notice".into(),
            actor_user: None,
            actor_client: Some("app".into()),
            source_ip: Some("127.0.0.1".into()),
            user_agent: None,
            request_id: Some(format!("req-{id}")),
            target_patient: None,
            node: "n:1".into(),
            details: "{}".into(),
            chain_seq: Some(id),
            chain_hash: None,
            chain_key_id: key_id.map(str::to_owned),
        }
    }

    /// Links rows 1..=n as `sealer` would, naming its key (or none, as before key ids).
    fn linked(
        sealer: &Sealer,
        from: i64,
        n: i64,
        previous: &str,
        name_key: bool,
    ) -> Vec<AuditEventRow> {
        let mut previous = previous.to_owned();
        (from..from + n)
            .map(|id| {
                let mut r = row(id, name_key.then_some(sealer.key_id()));
                let hash = link_hash(sealer, &previous, id, &r);
                r.chain_hash = Some(hash.clone());
                previous = hash;
                r
            })
            .collect()
    }

    fn check_all(sealer: &Sealer, rows: &[AuditEventRow]) -> Vec<LinkCheck> {
        let mut previous = GENESIS.to_owned();
        rows.iter()
            .map(|r| {
                let stored = r.chain_hash.clone().unwrap_or_default();
                let found = check_link(sealer, &previous, r.chain_seq.unwrap_or(0), r, &stored);
                previous = stored;
                found
            })
            .collect()
    }

    #[test]
    fn a_chain_crosses_a_master_key_rotation_when_the_old_key_is_kept() {
        let (a, b) = (MasterKey::generate(), MasterKey::generate());
        let under_a = Sealer::new(&a);
        let under_b = Sealer::with_previous(&b, std::slice::from_ref(&a));
        let mut rows = linked(&under_a, 1, 3, GENESIS, true);
        let last = rows[2].chain_hash.clone().unwrap_or_default();
        rows.extend(linked(&under_b, 4, 2, &last, true));
        let (ka, kb) = (under_a.key_id().to_owned(), under_b.key_id().to_owned());
        assert_ne!(ka, kb);
        assert_eq!(
            check_all(&under_b, &rows),
            vec![
                LinkCheck::Good(ka.clone()),
                LinkCheck::Good(ka.clone()),
                LinkCheck::Good(ka.clone()),
                LinkCheck::Good(kb.clone()),
                LinkCheck::Good(kb.clone()),
            ]
        );
        // Without the old key: its links are named as unknown, not as tampered.
        let only_b = Sealer::new(&b);
        assert_eq!(
            check_all(&only_b, &rows)[0],
            LinkCheck::UnknownKey(ka.clone())
        );
        assert_eq!(check_all(&only_b, &rows)[3], LinkCheck::Good(kb.clone()));
        // An edit is still an edit under either key.
        let mut edited = rows.clone();
        edited[1].details = "{\"forged\":true}".into();
        edited[4].details = "{\"forged\":true}".into();
        let found = check_all(&under_b, &edited);
        assert_eq!((&found[1], &found[4]), (&LinkCheck::Bad, &LinkCheck::Bad));
        // A key id switched to the other held key does not reproduce the hash.
        let mut renamed = rows.clone();
        renamed[0].chain_key_id = Some(kb.clone());
        assert_eq!(check_all(&under_b, &renamed)[0], LinkCheck::Bad);
    }

    #[test]
    fn links_made_before_key_ids_were_recorded_are_checked_with_every_key_held() {
        let (a, b) = (MasterKey::generate(), MasterKey::generate());
        let under_a = Sealer::new(&a);
        let rows = linked(&under_a, 1, 2, GENESIS, false);
        let ka = under_a.key_id().to_owned();
        let rotated = Sealer::with_previous(&b, &[a]);
        assert_eq!(
            check_all(&rotated, &rows),
            vec![LinkCheck::Good(ka.clone()), LinkCheck::Good(ka)]
        );
        assert_eq!(check_all(&Sealer::new(&b), &rows)[0], LinkCheck::Bad);
    }

    #[test]
    fn chain_keys_only_move_forward() {
        // Walks (key, recorded?) links through `key_order` as `verify` does.
        let walk = |links: &[(&str, bool)]| -> Result<(), String> {
            let (mut keys, mut named_before): (Vec<KeyUse>, bool) = (Vec::new(), false);
            for (seq, (key, named)) in (1..).zip(links) {
                key_order(&keys, key, !named, named_before)?;
                named_before |= named;
                match keys.last_mut() {
                    Some(last) if last.key_id == *key => last.last_seq = seq,
                    _ => keys.push(KeyUse {
                        key_id: (*key).to_owned(),
                        events: 1,
                        first_seq: seq,
                        last_seq: seq,
                    }),
                }
            }
            Ok(())
        };
        assert!(walk(&[
            ("A", false),
            ("A", true),
            ("A", true),
            ("B", true),
            ("B", true)
        ])
        .is_ok());
        assert_eq!(
            walk(&[("A", true), ("B", true), ("A", true)]),
            Err("A".into()),
            "a leaked old key cannot rewrite links after a rotation"
        );
        assert!(
            walk(&[("A", true), ("B", true), ("A", false)]).is_err(),
            "nor by dropping the key id"
        );
        assert!(walk(&[("A", true), ("A", false)]).is_err());
    }
}
