//! What resource servers (EHR/FHIR APIs) ask Ward about tokens: introspection (RFC 7662,
//! SMART App Launch 2.2 "Token Introspection") and the policy check, plus the one function that
//! decides whether an access token is live — shared with `/userinfo` and revocation.
//!
//! A token is live when its signature is Ward's, it has not expired, and the database says it
//! and its family are not revoked, its user can still sign in and (for `online_access`) its
//! session is alive. Every answer reads the database, so a revocation is visible at once on the
//! node that made it and on every other node sharing the database — no cache to go stale.

use serde_json::{json, Map, Value};

use super::tokens::{self, AccessClaims};
use crate::authn::session::Timeouts;
use crate::keys::KeyRing;
use crate::smart::launch::LaunchContext;
use crate::store::grants::{self, AccessTokenRow, FamilyRow};
use crate::store::{DbConnection, StoreError};

/// An access token that is live right now.
#[derive(Debug, Clone)]
pub struct LiveToken {
    pub claims: AccessClaims,
    pub row: AccessTokenRow,
    pub family: FamilyRow,
    pub context: LaunchContext,
    /// The token's client is an AI tool (every introspection of its tokens is audited).
    pub ai_tool: bool,
}

/// Reads an access token back and checks it against the database (see the module docs).
/// `audiences`, when given, are the only `aud` values the caller may learn about: any other
/// token is answered as inactive before the database is touched, so timing does not tell a
/// resource server whether someone else's token is live.
pub fn live_access_token(
    conn: &mut DbConnection,
    ring: &KeyRing,
    issuer: &str,
    token: &str,
    now: i64,
    timeouts: Timeouts,
    audiences: Option<&[String]>,
) -> Result<Option<LiveToken>, StoreError> {
    let Ok(claims) = tokens::read_access(ring, token, issuer, now) else {
        return Ok(None);
    };
    if audiences.is_some_and(|a| !a.contains(&claims.aud)) {
        return Ok(None);
    }
    let Some((row, family)) = grants::find_access_token(conn, &claims.jti)? else {
        return Ok(None);
    };
    if row.revoked_at.is_some() || family.revoked_at.is_some() || row.expires_at <= now {
        return Ok(None);
    }
    // A disabled client's tokens die with it (an incident response must not wait for expiry).
    let Some(client) = crate::store::clients::find(conn, &row.client_id)?.filter(|c| c.enabled)
    else {
        return Ok(None);
    };
    if let Some(user_id) = &row.user_id {
        if !super::token::user_active(conn, user_id)? {
            return Ok(None);
        }
    }
    if let Some(session_id) = &family.session_id {
        if !super::token::session_alive(conn, session_id, now, timeouts)? {
            return Ok(None);
        }
    }
    // The signed claims are authoritative for patient and encounter; the stored context adds
    // what a JWT does not carry (fhirContext, banner, style, intent, tenant).
    let mut context: LaunchContext = serde_json::from_str(&family.context)
        .map_err(|e| StoreError::Corrupt(format!("launch context of grant {}: {e}", family.id)))?;
    context.patient = claims.patient.clone();
    context.encounter = claims.encounter.clone();
    Ok(Some(LiveToken {
        claims,
        row,
        family,
        context,
        ai_tool: client.ai_tool,
    }))
}

/// The RFC 7662 answer for a live token: the standard members, every launch-context member
/// the token response carried, and `fhirUser`.
pub fn introspection(token: &LiveToken) -> Value {
    let c = &token.claims;
    let mut body = Map::new();
    body.insert("active".into(), json!(true));
    body.insert("scope".into(), json!(c.scope));
    body.insert("client_id".into(), json!(c.client_id));
    body.insert("sub".into(), json!(c.sub));
    body.insert("iss".into(), json!(c.iss));
    body.insert("aud".into(), json!(c.aud));
    body.insert("exp".into(), json!(c.exp));
    body.insert("iat".into(), json!(c.iat));
    body.insert("token_type".into(), json!("Bearer"));
    for (k, v) in token.context.members() {
        body.insert(k, v);
    }
    if let Some(f) = &c.fhir_user {
        body.insert("fhirUser".into(), json!(f));
    }
    if c.break_glass {
        // Emergency access: the FHIR server labels its own audit of this token's requests.
        body.insert("break_glass".into(), json!(true));
    }
    Value::Object(body)
}

/// What an unknown, expired, revoked or foreign token gets: this and nothing else.
pub fn inactive() -> Value {
    json!({ "active": false })
}
