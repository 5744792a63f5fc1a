//! What resource servers (EHR/FHIR APIs) ask Ward about tokens: introspection (RFC 7662,
//! SMART App Launch 2.2 "Token Introspection") and the policy check, plus the one function that
//! decides whether an access token is live — shared with `/userinfo` and revocation.
//!
//! A token is live when its signature is Ward's, it has not expired, and the database says it
//! and its family are not revoked, its user can still sign in and (for `online_access`) its
//! session is alive. `/introspect` may answer a repeated question from this node's cache of
//! verified tokens, which `crate::coherence` keeps within a second of the database on every node.

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
    /// The answer stays true until then unless something changes: the token's expiry, or
    /// earlier when its `online_access` session would time out first.
    pub valid_until: i64,
}

/// What the database says about an access token.
#[derive(Debug)]
pub enum TokenCheck {
    Live(Box<LiveToken>),
    /// Not live, and never again, for reasons anyone holding the token can see without Ward
    /// (a bad signature or format, another issuer, an expiry): safe to remember and to answer
    /// quickly for any caller.
    Dead,
    /// Not live now (unknown key, foreign audience, revoked, disabled client or user, ended
    /// session). Not remembered: a quick answer would tell another audience's resource server
    /// that this token was revoked.
    Inactive,
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
    Ok(
        match check_access_token(conn, ring, issuer, token, now, timeouts, audiences)? {
            TokenCheck::Live(live) => Some(*live),
            TokenCheck::Dead | TokenCheck::Inactive => None,
        },
    )
}

/// [`live_access_token`], saying also whether a token that is not live can ever be again.
pub fn check_access_token(
    conn: &mut DbConnection,
    ring: &KeyRing,
    issuer: &str,
    token: &str,
    now: i64,
    timeouts: Timeouts,
    audiences: Option<&[String]>,
) -> Result<TokenCheck, StoreError> {
    let claims = match tokens::read_access(ring, token, issuer, now) {
        Ok(claims) => claims,
        // A key this node has not loaded yet may still come.
        Err(tokens::ReadError::UnknownKey) => return Ok(TokenCheck::Inactive),
        Err(_) => return Ok(TokenCheck::Dead),
    };
    if audiences.is_some_and(|a| !a.contains(&claims.aud)) {
        return Ok(TokenCheck::Inactive);
    }
    let Some((row, family)) = grants::find_access_token(conn, &claims.jti)? else {
        return Ok(TokenCheck::Inactive);
    };
    if row.revoked_at.is_some() || family.revoked_at.is_some() || row.expires_at <= now {
        return Ok(TokenCheck::Inactive);
    }
    // A disabled client's tokens die with it (an incident response must not wait for expiry).
    let Some(client) = crate::store::clients::find(conn, &row.client_id)?.filter(|c| c.enabled)
    else {
        return Ok(TokenCheck::Inactive);
    };
    if let Some(user_id) = &row.user_id {
        if !super::token::user_active(conn, user_id)? {
            return Ok(TokenCheck::Inactive);
        }
    }
    let mut valid_until = row.expires_at.min(claims.exp);
    if let Some(session_id) = &family.session_id {
        match super::token::session_deadline(conn, session_id, now, timeouts)? {
            Some(deadline) => valid_until = valid_until.min(deadline),
            None => return Ok(TokenCheck::Inactive),
        }
    }
    // The signed claims are authoritative for patient and encounter; the stored context adds
    // what a JWT does not carry (fhirContext, banner, style, intent, tenant).
    let mut context: LaunchContext = serde_json::from_str(&family.context)
        .map_err(|e| StoreError::Corrupt(format!("launch context of grant {}: {e}", family.id)))?;
    context.patient = claims.patient.clone();
    context.encounter = claims.encounter.clone();
    Ok(TokenCheck::Live(Box::new(LiveToken {
        claims,
        row,
        family,
        context,
        ai_tool: client.ai_tool,
        valid_until,
    })))
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
