//! Minting and reading Ward's own JWTs (DESIGN.md §5).
//!
//! Access tokens: RFC 9068 (`typ: at+jwt`), ES256, with `iss sub aud client_id scope jti iat
//! exp` and the SMART context (`patient`, `encounter`, `fhirUser`). ID tokens: OpenID Connect
//! Core §2, RS256. Every access token is also recorded by `jti`, so reading one back checks the
//! signature here and revocation in the database.

use josekit::jws::{self, JwsHeader};
use serde::{Deserialize, Serialize};

use crate::keys::{KeyAlg, KeyError, KeyRing, Signer};

pub const ACCESS_TOKEN_TYPE: &str = "at+jwt";
/// ID tokens live as long as the access token issued with them, at most this.
pub const ID_TOKEN_LIFETIME: i64 = 300;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub client_id: String,
    pub scope: String,
    pub jti: String,
    pub iat: i64,
    pub exp: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patient: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encounter: Option<String>,
    #[serde(rename = "fhirUser", skip_serializing_if = "Option::is_none")]
    pub fhir_user: Option<String>,
    /// Emergency access (break-glass): the user's role ceiling was bypassed for this patient.
    /// Present (`true`) only then; the scope carries `__ward.break_glass` too.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub break_glass: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdClaims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub azp: String,
    pub iat: i64,
    pub exp: i64,
    pub auth_time: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub amr: Vec<String>,
    #[serde(rename = "fhirUser", skip_serializing_if = "Option::is_none")]
    pub fhir_user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preferred_username: Option<String>,
}

fn sign<T: Serialize>(signer: &Signer, typ: &str, claims: &T) -> Result<String, KeyError> {
    let mut header = JwsHeader::new();
    header.set_token_type(typ);
    header.set_key_id(&signer.kid);
    let payload = serde_json::to_vec(claims)
        .map_err(|e| KeyError::Crypto(format!("claims do not serialise: {e}")))?;
    Ok(jws::serialize_compact(
        &payload,
        &header,
        signer.inner.as_ref(),
    )?)
}

/// Signs an access token (the caller picks the ES256 signer).
pub fn mint_access(signer: &Signer, claims: &AccessClaims) -> Result<String, KeyError> {
    sign(signer, ACCESS_TOKEN_TYPE, claims)
}

/// Signs an ID token (the caller picks the RS256 signer).
pub fn mint_id(signer: &Signer, claims: &IdClaims) -> Result<String, KeyError> {
    sign(signer, "JWT", claims)
}

/// Why a presented access token is not one Ward can accept (never shown in detail to callers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadError {
    Malformed,
    UnknownKey,
    BadSignature,
    WrongType,
    WrongIssuer,
    Expired,
}

pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Verifies one of Ward's access tokens: size, our key by `kid`, the key's algorithm only,
/// `typ`, signature, issuer and expiry. Revocation is the caller's database check.
pub fn read_access(
    ring: &KeyRing,
    token: &str,
    issuer: &str,
    now: i64,
) -> Result<AccessClaims, ReadError> {
    if token.len() > MAX_TOKEN_BYTES || token.split('.').count() != 3 {
        return Err(ReadError::Malformed);
    }
    let header = josekit::jwt::decode_header(token).map_err(|_| ReadError::Malformed)?;
    let kid = header
        .claim("kid")
        .and_then(|v| v.as_str())
        .ok_or(ReadError::Malformed)?;
    let alg = header
        .claim("alg")
        .and_then(|v| v.as_str())
        .ok_or(ReadError::Malformed)?;
    let typ = header.claim("typ").and_then(|v| v.as_str());
    let (key_alg, verifier) = ring.verifier(kid).ok_or(ReadError::UnknownKey)?;
    if key_alg != KeyAlg::Es256 || alg != key_alg.as_str() {
        return Err(ReadError::BadSignature);
    }
    if typ != Some(ACCESS_TOKEN_TYPE) {
        return Err(ReadError::WrongType);
    }
    let (payload, _) =
        jws::deserialize_compact(token, verifier.as_ref()).map_err(|_| ReadError::BadSignature)?;
    let claims: AccessClaims =
        serde_json::from_slice(&payload).map_err(|_| ReadError::Malformed)?;
    if claims.iss != issuer {
        return Err(ReadError::WrongIssuer);
    }
    // `now` comes from `AppState::clock`, the one clock of every expiry decision; it never runs
    // backwards, so a system clock set back does not revive an expired token (clock.rs).
    if claims.exp <= now {
        return Err(ReadError::Expired);
    }
    Ok(claims)
}

/// Reads an `id_token_hint` (OpenID Connect RP-Initiated Logout): one of Ward's ID tokens,
/// signature and issuer checked; an expired one is still a valid hint.
pub fn read_id_hint(ring: &KeyRing, token: &str, issuer: &str) -> Option<IdClaims> {
    if token.len() > MAX_TOKEN_BYTES {
        return None;
    }
    let header = josekit::jwt::decode_header(token).ok()?;
    let kid = header.claim("kid")?.as_str()?;
    let alg = header.claim("alg")?.as_str()?;
    let (key_alg, verifier) = ring.verifier(kid)?;
    if key_alg != KeyAlg::Rs256 || alg != key_alg.as_str() {
        return None;
    }
    let (payload, _) = jws::deserialize_compact(token, verifier.as_ref()).ok()?;
    let claims: IdClaims = serde_json::from_slice(&payload).ok()?;
    (claims.iss == issuer).then_some(claims)
}
