//! The tamper-evident chain over the audit trail (DESIGN.md §8).
//!
//! Events are inserted in their action's transaction, unlinked. [`link`] — run by every node
//! about twice a second, one node at a time under a database lock — gives each unlinked event,
//! in commit order, the next sequence number and `HMAC(key, previous hash ‖ seq ‖ content)`
//! under a key derived from the master key. So no security action waits on a chain head, and
//! several nodes append without coordination. [`verify`] walks the chain and names the first
//! broken link: an edited event (hash mismatch), a deleted one (a gap), one inserted or moved
//! into the past (hash mismatch at its place). A signed [`Checkpoint`] of the head, kept
//! elsewhere, also catches a truncated tail.

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::crypto::constant_time_eq;
use crate::crypto::seal::Sealer;
use crate::store::audit_events::{self, AuditEventRow};
use crate::store::{write_transaction, AdvisoryLock, DbConnection, StoreError};

const PURPOSE: &str = "ward/audit-chain/v1";
/// The hash the first event links to.
pub const GENESIS: &str = "genesis";
pub const LINK_BATCH: i64 = 500;

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

/// The chain hash of `row` at `seq` after `previous`.
pub fn link_hash(sealer: &Sealer, previous: &str, seq: i64, row: &AuditEventRow) -> String {
    let data = format!("{previous}\n{seq}\n{}", content(row));
    sealer.keyed_hash(PURPOSE, data.as_bytes())
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
) -> Result<Option<Head>, StoreError> {
    if !audit_events::any_unlinked_since(conn, now_ms - LINK_WINDOW_MS)? {
        return audit_events::chain_head(conn).map(|h| h.map(|(seq, hash)| Head { seq, hash }));
    }
    write_transaction(conn, |conn| {
        if !lock_chain(conn)? {
            return Ok(last_seen.cloned());
        }
        let head = audit_events::chain_head(conn)?;
        if let Some(seen) = last_seen {
            let still_there = audit_events::hash_at(conn, seen.seq)?;
            let intact = still_there
                .is_some_and(|h| constant_time_eq(h.as_bytes(), seen.hash.as_bytes()))
                && head.as_ref().is_some_and(|(seq, _)| *seq >= seen.seq);
            if !intact {
                return Err(StoreError::Corrupt(format!(
                    "the audit chain was rewritten: event #{} is not what this node linked; not linking until `ward audit verify` is run",
                    seen.seq
                )));
            }
        }
        let (mut seq, mut previous) = head.unwrap_or((0, GENESIS.to_owned()));
        let rows = audit_events::unlinked_since(conn, now_ms - LINK_WINDOW_MS, LINK_BATCH)?;
        for row in &rows {
            seq += 1;
            let hash = link_hash(sealer, &previous, seq, row);
            if !audit_events::link(conn, row.id, seq, &hash)? {
                return Err(StoreError::Corrupt(format!(
                    "audit event {} was linked by someone else",
                    row.id
                )));
            }
            previous = hash;
        }
        Ok((seq > 0).then_some(Head {
            seq,
            hash: previous,
        }))
    })
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
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Linked events checked.
    pub verified: i64,
    pub head: Option<Head>,
    pub first_break: Option<Break>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    pub seq: i64,
    pub hash: String,
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
            let expected = link_hash(sealer, &previous, row_seq, &row);
            if !constant_time_eq(expected.as_bytes(), stored.as_bytes()) {
                first_break = Some(Break::Altered {
                    seq: row_seq,
                    event_id: row.id,
                });
                break 'walk;
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
