//! Security alerts: every high-severity audit event (refresh-token reuse, a replayed client
//! assertion, a passkey counter going backwards, an account lock, refused admin access, an
//! immediate key rotation, a broken audit chain, …) becomes a structured log line and, when
//! `alerts.webhook_url` is set, an HTTPS POST signed with HMAC-SHA-256.
//!
//! The audit trail is the queue: events are written in their action's transaction anyway, so
//! alerting never delays or fails a request. About once a second a node claims the events after
//! a shared cursor with one compare-and-set (so with several nodes each alert goes out once),
//! logs them, and hands them to a sender task that retries with back-off.

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use crate::store::audit_events::{self, AuditEventRow, AuditQuery};
use crate::store::{meta, DbConnection, StoreError};

const CURSOR: &str = "alerts.cursor";
/// How many events one claim takes at most.
pub const BATCH: i64 = 200;

/// Whether an event is an alert.
pub fn is_alert(row: &AuditEventRow) -> bool {
    row.severity == "high"
}

/// Claims the alerts written since the last claim (by any node). The first call on a database
/// starts the cursor at the newest event: history is not re-alerted.
pub fn claim(conn: &mut DbConnection) -> Result<Vec<AuditEventRow>, StoreError> {
    let Some(cursor) = meta::get(conn, CURSOR)? else {
        let newest = audit_events::search(
            conn,
            &AuditQuery {
                limit: 1,
                ..AuditQuery::default()
            },
        )?
        .first()
        .map_or(0, |r| r.id);
        // Another node may have started it first; either start is fine.
        let _ = meta::insert(conn, CURSOR, &newest.to_string());
        return Ok(Vec::new());
    };
    let after: i64 = cursor.parse().unwrap_or(0);
    let rows = audit_events::after(conn, after, BATCH)?;
    let Some(last) = rows.last().map(|r| r.id) else {
        return Ok(Vec::new());
    };
    if !meta::compare_and_set(conn, CURSOR, &cursor, &last.to_string())? {
        return Ok(Vec::new());
    }
    Ok(rows.into_iter().filter(is_alert).collect())
}

/// The webhook body for one alert.
pub fn payload(issuer: &str, event: &Value) -> String {
    json!({
        "type": "ward.security_alert",
        "issuer": issuer,
        "event": event,
    })
    .to_string()
}

/// `X-Ward-Signature: t=<unix seconds>,v1=<hex HMAC-SHA-256 of "<t>.<body>">`: the receiver
/// recomputes it with the shared secret and refuses stale timestamps (replay).
pub fn signature(secret: &[u8], timestamp: i64, body: &str) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("t={timestamp},v1={hex}")
}

/// Delays between delivery attempts (then the alert is given up, and that is logged).
pub const RETRY_DELAYS_SECONDS: [u64; 5] = [1, 2, 4, 8, 16];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_bind_the_secret_the_time_and_the_body() {
        let s = signature(b"0123456789abcdef", 1_800_000_000, "{\"a\":1}");
        assert!(s.starts_with("t=1800000000,v1="));
        assert_eq!(s.len(), "t=1800000000,v1=".len() + 64);
        assert_ne!(
            s,
            signature(b"0123456789abcdeX", 1_800_000_000, "{\"a\":1}")
        );
        assert_ne!(
            s,
            signature(b"0123456789abcdef", 1_800_000_001, "{\"a\":1}")
        );
        assert_ne!(
            s,
            signature(b"0123456789abcdef", 1_800_000_000, "{\"a\":2}")
        );
    }

    #[test]
    fn only_high_severity_events_are_alerts() {
        let row = |severity: &str| AuditEventRow {
            id: 1,
            occurred_at: 0,
            action: "x".into(),
            outcome: "failure".into(),
            severity: severity.into(),
            actor_user: None,
            actor_client: None,
            source_ip: None,
            user_agent: None,
            request_id: None,
            target_patient: None,
            node: "n".into(),
            details: "{}".into(),
            chain_seq: None,
            chain_hash: None,
            chain_key_id: None,
        };
        assert!(is_alert(&row("high")));
        assert!(!is_alert(&row("notice")));
        assert!(!is_alert(&row("info")));
    }
}
