//! Client assertion JWTs: RFC 7523 `private_key_jwt` client authentication, as profiled by HL7
//! SMART App Launch 2.2 ("client-confidential-asymmetric", and Backend Services).
//!
//! Pure apart from CPU work: no database, no network. The caller
//! 1. reads the unverified header with [`peek_header`] (and, when the form has no `client_id`,
//!    the unverified issuer with [`peek_issuer`]) to find the client and its key set;
//! 2. calls [`verify`]; when the error [`AssertionError::is_unknown_kid`], it refetches the
//!    client's registered JWKS URL once and calls [`verify`] again;
//! 3. records the returned `jti` (per client, until `exp`) in its replay cache and rejects a `jti`
//!    already seen for that client (SMART App Launch 2.2 requires this replay check).
//!
//! Every error's message is fit for a 401 `invalid_client` `error_description`: it holds only
//! the characters RFC 6749 §5.2 allows there and never echoes more than a short, sanitised piece
//! of the presented token.

use base64::Engine;
use josekit::jwk::Jwk;
use josekit::jws::{JwsVerifier, ES256, ES384, ES512, PS256, PS384, PS512, RS256, RS384, RS512};
use serde::de::{Deserialize, Deserializer, Error as _, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::clients::jwks::{ClientKey, ALLOWED_ALGS};

/// The `client_assertion_type` form value that announces a JWT client assertion (RFC 7523 §2.2).
pub const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Longest assertion read at all, in bytes; anything longer is refused before decoding.
pub const MAX_ASSERTION_BYTES: usize = 8 * 1024;
/// How far ahead of now `exp` may be (SMART: "no more than five minutes in the future").
pub const MAX_LIFETIME_SECONDS: i64 = 300;
/// Tolerance for clocks running ahead: how far in the future `nbf` and `iat` may be.
pub const CLOCK_SKEW_SECONDS: i64 = 30;
/// Longest accepted `jti`, in characters.
pub const MAX_JTI_CHARS: usize = 255;
/// Longest piece of attacker input an error message repeats, in characters.
const MAX_ECHO_CHARS: usize = 64;

/// Which JSON part of the token an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonPart {
    Header,
    Payload,
}

impl std::fmt::Display for JsonPart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            JsonPart::Header => "header",
            JsonPart::Payload => "payload",
        })
    }
}

/// Why a client assertion was refused. Messages go to the client as `error_description`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssertionError {
    #[error("client assertion is longer than {MAX_ASSERTION_BYTES} bytes")]
    TooLarge,
    #[error("client assertion is encrypted (JWE); a signed JWT (JWS) is required")]
    Encrypted,
    #[error("client assertion must be three non-empty parts separated by dots")]
    Malformed,
    #[error("client assertion part is not base64url without padding")]
    NotBase64Url,
    #[error("client assertion {0} is not a JSON object")]
    NotJsonObject(JsonPart),
    #[error("client assertion {0} repeats a member name")]
    DuplicateMember(JsonPart),
    #[error("client assertion header uses crit, and no extension is supported")]
    CriticalHeader,
    #[error("client assertion header needs a string alg")]
    MissingAlg,
    #[error("client assertion alg none is not allowed; sign with RS384 or ES384")]
    AlgNone,
    #[error("client assertion alg is symmetric (HS*); sign with RS384 or ES384")]
    SymmetricAlg,
    /// Holds the presented `alg`, sanitised and cut to a few dozen characters.
    #[error("client assertion alg `{0}` is not allowed; sign with RS384 or ES384")]
    AlgNotAllowed(String),
    #[error("client assertion header needs a non-empty string kid")]
    MissingKid,
    #[error("client assertion header jku must be a string")]
    InvalidJku,
    #[error("client assertion header does not belong to this assertion")]
    HeaderMismatch,
    #[error("client assertion jku is not the JWKS URL registered for this client")]
    JkuMismatch,
    #[error("client assertion has a jku, but this client registered its keys inline")]
    JkuWithoutRegisteredUrl,
    #[error("no registered key of this client has the assertion's kid")]
    UnknownKid,
    #[error("more than one registered key of this client has the assertion's kid")]
    AmbiguousKid,
    /// Holds the header's `alg`, which is then one of `jwks::ALLOWED_ALGS`.
    #[error("the key with the assertion's kid is not registered for alg {0}")]
    AlgNotAllowedForKey(String),
    #[error("the key with the assertion's kid cannot verify alg {0}")]
    KeyUnusable(String),
    #[error("client assertion signature does not verify")]
    BadSignature,
    #[error("client assertion needs a string iss claim")]
    MissingIssuer,
    #[error("client assertion needs a string sub claim")]
    MissingSubject,
    #[error("client assertion iss and sub must be equal")]
    IssuerNotSubject,
    #[error("client assertion iss and sub must be the client_id")]
    WrongClient,
    #[error("client assertion needs an aud claim")]
    MissingAudience,
    #[error("client assertion aud is not this server's token endpoint (or issuer)")]
    WrongAudience,
    #[error("client assertion numeric claims must be integers ({0} is not)")]
    NonIntegerNumericDate(&'static str),
    #[error("client assertion needs an exp claim")]
    MissingExpiry,
    #[error("client assertion has expired")]
    Expired,
    #[error("client assertion exp is more than {MAX_LIFETIME_SECONDS} seconds ahead")]
    ExpiryTooFarAhead,
    #[error("client assertion is not valid yet (nbf is in the future)")]
    NotYetValid,
    #[error("client assertion iat is in the future")]
    IssuedInFuture,
    #[error("client assertion needs a jti claim")]
    MissingJti,
    #[error("client assertion jti must be a string of 1 to {MAX_JTI_CHARS} characters without control characters")]
    InvalidJti,
}

impl AssertionError {
    /// True when no key has the assertion's `kid`: the caller may refetch the client's JWKS URL
    /// once (SMART: clients rotate keys by publishing the new one first) and verify again.
    pub fn is_unknown_kid(&self) -> bool {
        matches!(self, AssertionError::UnknownKid)
    }
}

/// Unverified header fields, read before choosing a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssertionHeader {
    pub alg: String,
    pub kid: String,
    pub jku: Option<String>,
}

/// What the assertion must say for the client and endpoint at hand.
#[derive(Debug, Clone, Copy)]
pub struct Expectations<'a> {
    pub client_id: &'a str,
    /// The accepted `aud` values: Ward's token endpoint URL and its issuer URL (and, for other
    /// endpoints, that endpoint's URL). Compared byte for byte.
    pub audiences: &'a [String],
    /// The client's registered JWKS URL, if it registered one (None for inline JWKS).
    pub registered_jku: Option<&'a str>,
    /// The current time, in seconds since the Unix epoch.
    pub now: i64,
}

/// A verified assertion: what the caller needs for its replay cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedAssertion {
    pub jti: String,
    pub exp: i64,
}

/// Reads the header only: size cap, three base64url parts, a JSON object without duplicate
/// members, `alg` and `kid` strings, `jku` an optional string. Rejects `alg` none, any HS*, and
/// anything not in `jwks::ALLOWED_ALGS`. Nothing here is verified yet.
pub fn peek_header(jwt: &str) -> Result<AssertionHeader, AssertionError> {
    let parts = split(jwt)?;
    let header_bytes = decode_part(parts.header)?;
    decode_part(parts.payload)?;
    decode_part(parts.signature)?;
    let header = parse_object(&header_bytes, JsonPart::Header)?;
    reject_critical(&header)?;
    let alg = header_alg(&header)?;
    let kid = header_kid(&header)?;
    let jku = header_jku(&header)?;
    Ok(AssertionHeader { alg, kid, jku })
}

/// Reads the unverified `iss` claim, for finding the client when the form has no `client_id`
/// (RFC 7523 §3: the client is named by `iss`/`sub`). None when unreadable. Use it only to look
/// the client up: [`verify`] then checks `iss` against that client's id under its signature.
pub fn peek_issuer(jwt: &str) -> Option<String> {
    let parts = split(jwt).ok()?;
    let payload = parse_object(&decode_part(parts.payload).ok()?, JsonPart::Payload).ok()?;
    match payload.get("iss") {
        Some(Value::String(iss)) if !iss.is_empty() => Some(iss.clone()),
        _ => None,
    }
}

/// Verifies a client assertion: the header must be `jwt`'s own; `jku`, if any, must be the
/// registered JWKS URL; exactly one key must have the `kid`; that key must allow the `alg`;
/// the signature must verify; then the claims are checked (RFC 7523 §3, SMART App Launch 2.2).
pub fn verify(
    jwt: &str,
    header: &AssertionHeader,
    keys: &[ClientKey],
    expect: &Expectations<'_>,
) -> Result<VerifiedAssertion, AssertionError> {
    if peek_header(jwt)? != *header {
        return Err(AssertionError::HeaderMismatch);
    }
    check_jku(header.jku.as_deref(), expect.registered_jku)?;
    let key = select_key(keys, &header.kid)?;
    let verifier = verifier_for(key, &header.alg)?;
    let parts = split(jwt)?;
    let signature = decode_part(parts.signature)?;
    verifier
        .verify(parts.signing_input.as_bytes(), &signature)
        .map_err(|_| AssertionError::BadSignature)?;
    let payload = parse_object(&decode_part(parts.payload)?, JsonPart::Payload)?;
    check_claims(&payload, expect)
}

/// The three parts of a compact JWS, and the bytes its signature covers.
struct Parts<'a> {
    header: &'a str,
    payload: &'a str,
    signature: &'a str,
    signing_input: &'a str,
}

/// Size cap, then compact serialization (RFC 7515 §7.1): exactly three non-empty parts. Five
/// parts is a JWE (RFC 7516 §7.1), which Ward does not accept as a client assertion.
fn split(jwt: &str) -> Result<Parts<'_>, AssertionError> {
    if jwt.len() > MAX_ASSERTION_BYTES {
        return Err(AssertionError::TooLarge);
    }
    let pieces: Vec<&str> = jwt.splitn(6, '.').collect();
    match pieces.as_slice() {
        [header, payload, signature]
            if !header.is_empty() && !payload.is_empty() && !signature.is_empty() =>
        {
            Ok(Parts {
                header,
                payload,
                signature,
                signing_input: &jwt[..header.len() + 1 + payload.len()],
            })
        }
        [_, _, _, _, _] => Err(AssertionError::Encrypted),
        _ => Err(AssertionError::Malformed),
    }
}

/// base64url without padding, canonical only (RFC 7515 §2, §7.1).
fn decode_part(part: &str) -> Result<Vec<u8>, AssertionError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| AssertionError::NotBase64Url)
}

/// Parses a JSON object, refusing duplicate member names at any depth. RFC 7515 §4 and RFC 7519
/// §4 let a parser either reject duplicates or keep the last; serde_json silently keeps the last,
/// so two `iss` members could mean different things to different readers: Ward rejects them.
fn parse_object(bytes: &[u8], part: JsonPart) -> Result<Map<String, Value>, AssertionError> {
    match serde_json::from_slice::<StrictValue>(bytes) {
        Ok(StrictValue(Value::Object(map))) => Ok(map),
        // The visitor accepts every JSON type, so its only data error is a duplicate member.
        Err(e) if e.classify() == serde_json::error::Category::Data => {
            Err(AssertionError::DuplicateMember(part))
        }
        Ok(_) | Err(_) => Err(AssertionError::NotJsonObject(part)),
    }
}

/// A JSON value whose objects have unique member names.
struct StrictValue(Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(StrictValue(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let mut map = Map::new();
        while let Some(name) = access.next_key::<String>()? {
            if map.contains_key(&name) {
                return Err(A::Error::custom("duplicate member name"));
            }
            let StrictValue(value) = access.next_value()?;
            map.insert(name, value);
        }
        Ok(Value::Object(map))
    }
}

/// RFC 7515 §4.1.11: a recipient must reject a JWS whose `crit` lists an extension it does not
/// understand. Ward understands none (in particular not RFC 7797 unencoded payloads).
fn reject_critical(header: &Map<String, Value>) -> Result<(), AssertionError> {
    if header.contains_key("crit") {
        return Err(AssertionError::CriticalHeader);
    }
    Ok(())
}

/// `alg` (RFC 7515 §4.1.1) must be an asymmetric algorithm Ward accepts: never `none` or HS*
/// (RFC 8725 §3.1, §3.2; SMART requires RS384 or ES384 support and allows no symmetric keys).
fn header_alg(header: &Map<String, Value>) -> Result<String, AssertionError> {
    let Some(Value::String(alg)) = header.get("alg") else {
        return Err(AssertionError::MissingAlg);
    };
    if alg.eq_ignore_ascii_case("none") {
        return Err(AssertionError::AlgNone);
    }
    if alg.get(..2).is_some_and(|p| p.eq_ignore_ascii_case("HS")) {
        return Err(AssertionError::SymmetricAlg);
    }
    if !ALLOWED_ALGS.contains(&alg.as_str()) {
        return Err(AssertionError::AlgNotAllowed(echo(alg)));
    }
    Ok(alg.clone())
}

/// `kid` (RFC 7515 §4.1.4) is required by SMART App Launch 2.2 to pick the key.
fn header_kid(header: &Map<String, Value>) -> Result<String, AssertionError> {
    match header.get("kid") {
        Some(Value::String(kid)) if !kid.is_empty() => Ok(kid.clone()),
        _ => Err(AssertionError::MissingKid),
    }
}

/// `jku` (RFC 7515 §4.1.2) is optional; when present it must be a string (compared later).
fn header_jku(header: &Map<String, Value>) -> Result<Option<String>, AssertionError> {
    match header.get("jku") {
        None => Ok(None),
        Some(Value::String(jku)) => Ok(Some(jku.clone())),
        Some(_) => Err(AssertionError::InvalidJku),
    }
}

/// SMART App Launch 2.2: a `jku` "SHALL match the JWKS URL value that the client supplied ... at
/// client registration time" (byte for byte here). A client that registered its keys inline
/// has no such URL, so any `jku` is refused; Ward never fetches a `jku` it was not given.
fn check_jku(presented: Option<&str>, registered: Option<&str>) -> Result<(), AssertionError> {
    match (presented, registered) {
        (None, _) => Ok(()),
        (Some(_), None) => Err(AssertionError::JkuWithoutRegisteredUrl),
        (Some(jku), Some(url)) if jku == url => Ok(()),
        (Some(_), Some(_)) => Err(AssertionError::JkuMismatch),
    }
}

/// SMART App Launch 2.2: the server identifies the key by `kid`. Exactly one key must match;
/// none means the caller may refetch the key set ([`AssertionError::is_unknown_kid`]).
fn select_key<'k>(keys: &'k [ClientKey], kid: &str) -> Result<&'k ClientKey, AssertionError> {
    let mut matching = keys.iter().filter(|k| k.kid == kid);
    match (matching.next(), matching.next()) {
        (Some(key), None) => Ok(key),
        (None, _) => Err(AssertionError::UnknownKid),
        (Some(_), Some(_)) => Err(AssertionError::AmbiguousKid),
    }
}

/// RFC 8725 §3.1: the algorithm must be one the key is registered for, checked before a verifier
/// is built from the header's `alg`, so the header can never pick how a key is used.
fn verifier_for(key: &ClientKey, alg: &str) -> Result<Box<dyn JwsVerifier>, AssertionError> {
    let Some(alg) = key.algs.iter().copied().find(|a| *a == alg) else {
        return Err(AssertionError::AlgNotAllowedForKey(echo(alg)));
    };
    let jwk: &Jwk = &key.jwk;
    let built: Result<Box<dyn JwsVerifier>, josekit::JoseError> = match alg {
        "RS256" => RS256.verifier_from_jwk(jwk).map(|v| Box::new(v) as _),
        "RS384" => RS384.verifier_from_jwk(jwk).map(|v| Box::new(v) as _),
        "RS512" => RS512.verifier_from_jwk(jwk).map(|v| Box::new(v) as _),
        "PS256" => PS256.verifier_from_jwk(jwk).map(|v| Box::new(v) as _),
        "PS384" => PS384.verifier_from_jwk(jwk).map(|v| Box::new(v) as _),
        "PS512" => PS512.verifier_from_jwk(jwk).map(|v| Box::new(v) as _),
        "ES256" => ES256.verifier_from_jwk(jwk).map(|v| Box::new(v) as _),
        "ES384" => ES384.verifier_from_jwk(jwk).map(|v| Box::new(v) as _),
        "ES512" => ES512.verifier_from_jwk(jwk).map(|v| Box::new(v) as _),
        other => return Err(AssertionError::AlgNotAllowed(echo(other))),
    };
    built.map_err(|_| AssertionError::KeyUnusable(alg.to_owned()))
}

/// The claim checks of RFC 7523 §3 with SMART App Launch 2.2's limits, on the verified payload.
fn check_claims(
    payload: &Map<String, Value>,
    expect: &Expectations<'_>,
) -> Result<VerifiedAssertion, AssertionError> {
    check_issuer_and_subject(payload, expect.client_id)?;
    check_audience(payload.get("aud"), expect.audiences)?;
    let exp = numeric_date(payload, "exp")?.ok_or(AssertionError::MissingExpiry)?;
    let nbf = numeric_date(payload, "nbf")?;
    let iat = numeric_date(payload, "iat")?;
    check_times(exp, nbf, iat, expect.now)?;
    let jti = check_jti(payload.get("jti"))?;
    Ok(VerifiedAssertion { jti, exp })
}

/// RFC 7523 §3 items 1-2 and SMART App Launch 2.2: `iss` and `sub` are both the `client_id`.
fn check_issuer_and_subject(
    payload: &Map<String, Value>,
    client_id: &str,
) -> Result<(), AssertionError> {
    let text = |name: &str| match payload.get(name) {
        Some(Value::String(s)) if !s.is_empty() => Some(s.as_str()),
        _ => None,
    };
    let iss = text("iss").ok_or(AssertionError::MissingIssuer)?;
    let sub = text("sub").ok_or(AssertionError::MissingSubject)?;
    if iss != sub {
        return Err(AssertionError::IssuerNotSubject);
    }
    if iss != client_id {
        return Err(AssertionError::WrongClient);
    }
    Ok(())
}

/// RFC 7523 §3 item 3 and RFC 7519 §4.1.3: `aud` is one accepted string, or a non-empty array of
/// strings each of which is accepted (an array naming any other party is refused outright).
fn check_audience(aud: Option<&Value>, accepted: &[String]) -> Result<(), AssertionError> {
    let is_accepted = |v: &Value| v.as_str().is_some_and(|s| accepted.iter().any(|a| a == s));
    let ok = match aud {
        None => return Err(AssertionError::MissingAudience),
        Some(value @ Value::String(_)) => is_accepted(value),
        Some(Value::Array(items)) => !items.is_empty() && items.iter().all(is_accepted),
        Some(_) => false,
    };
    if ok {
        Ok(())
    } else {
        Err(AssertionError::WrongAudience)
    }
}

/// RFC 7519 §2 NumericDate, restricted to JSON integers: fractions, strings, booleans and null
/// are refused. Integers beyond `i64` saturate (they then fail the time checks).
fn numeric_date(
    payload: &Map<String, Value>,
    name: &'static str,
) -> Result<Option<i64>, AssertionError> {
    match payload.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => {
            Ok(Some(n.as_i64().unwrap_or(i64::MAX)))
        }
        Some(_) => Err(AssertionError::NonIntegerNumericDate(name)),
    }
}

/// RFC 7523 §3 items 4-6 and SMART App Launch 2.2: `exp` is after now and at most
/// [`MAX_LIFETIME_SECONDS`] ahead; `nbf` and `iat`, when present, are not more than
/// [`CLOCK_SKEW_SECONDS`] in the future.
fn check_times(
    exp: i64,
    nbf: Option<i64>,
    iat: Option<i64>,
    now: i64,
) -> Result<(), AssertionError> {
    if exp <= now {
        return Err(AssertionError::Expired);
    }
    if exp > now.saturating_add(MAX_LIFETIME_SECONDS) {
        return Err(AssertionError::ExpiryTooFarAhead);
    }
    let latest = now.saturating_add(CLOCK_SKEW_SECONDS);
    if nbf.is_some_and(|nbf| nbf > latest) {
        return Err(AssertionError::NotYetValid);
    }
    if iat.is_some_and(|iat| iat > latest) {
        return Err(AssertionError::IssuedInFuture);
    }
    Ok(())
}

/// RFC 7523 §3 item 7 and SMART App Launch 2.2: `jti` is required; Ward bounds it to 1 to
/// [`MAX_JTI_CHARS`] characters without control characters, since it is stored for replay checks.
fn check_jti(jti: Option<&Value>) -> Result<String, AssertionError> {
    let jti = match jti {
        None => return Err(AssertionError::MissingJti),
        Some(Value::String(jti)) => jti,
        Some(_) => return Err(AssertionError::InvalidJti),
    };
    let chars = jti.chars().count();
    if chars == 0 || chars > MAX_JTI_CHARS || jti.chars().any(char::is_control) {
        return Err(AssertionError::InvalidJti);
    }
    Ok(jti.clone())
}

/// A short, safe copy of attacker input for an error message: at most [`MAX_ECHO_CHARS`]
/// characters, each outside RFC 6749 §5.2's `error_description` set (printable ASCII but `"`
/// and `\`) replaced by `?`.
fn echo(input: &str) -> String {
    let mut out: String = input
        .chars()
        .take(MAX_ECHO_CHARS)
        .map(|c| match c {
            ' '..='~' if c != '"' && c != '\\' => c,
            _ => '?',
        })
        .collect();
    if input.chars().nth(MAX_ECHO_CHARS).is_some() {
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clients::jwks;
    use josekit::jwk::alg::ec::EcKeyPair;
    use josekit::jwk::alg::rsa::RsaKeyPair;
    use josekit::jwk::KeyPair;
    use josekit::jws::{JwsSigner, HS256};
    use proptest::prelude::*;
    use serde_json::json;
    use std::sync::LazyLock;

    const NOW: i64 = 1_700_000_000;
    const CLIENT: &str = "client-123";
    const TOKEN_URL: &str = "https://ward.example.org/token";
    const ISSUER_URL: &str = "https://ward.example.org";
    const JWKS_URL: &str = "https://app.example.com/.well-known/jwks.json";

    static RSA: LazyLock<RsaKeyPair> = LazyLock::new(|| RS384.generate_key_pair(2048).unwrap());
    static RSA_OTHER: LazyLock<RsaKeyPair> =
        LazyLock::new(|| RS384.generate_key_pair(2048).unwrap());
    static EC384: LazyLock<EcKeyPair> = LazyLock::new(|| ES384.generate_key_pair().unwrap());
    static EC384_OTHER: LazyLock<EcKeyPair> = LazyLock::new(|| ES384.generate_key_pair().unwrap());
    static EC256: LazyLock<EcKeyPair> = LazyLock::new(|| ES256.generate_key_pair().unwrap());
    static KEYS: LazyLock<Vec<ClientKey>> = LazyLock::new(|| {
        client_keys(&[
            public_jwk(&*RSA, "rsa-1", Some("RS384")),
            public_jwk(&*EC384, "ec-1", Some("ES384")),
        ])
    });

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    /// The public JWK with `kid` and `alg` (josekit sets the generating algorithm as `alg`;
    /// `None` removes it, so the key's type implies its algorithms).
    fn public_jwk(pair: &dyn KeyPair, kid: &str, alg: Option<&str>) -> Value {
        let mut jwk = serde_json::to_value(pair.to_jwk_public_key().as_ref()).unwrap();
        jwk["kid"] = json!(kid);
        match alg {
            Some(alg) => jwk["alg"] = json!(alg),
            None => drop(jwk.as_object_mut().unwrap().remove("alg")),
        }
        jwk
    }

    /// The keys exactly as Ward builds them from a registered JWKS.
    fn client_keys(jwks: &[Value]) -> Vec<ClientKey> {
        jwks::validate(&json!({ "keys": jwks })).unwrap()
    }

    fn rsa_signer(alg: &str, pair: &RsaKeyPair) -> Box<dyn JwsSigner> {
        let der = pair.to_der_private_key();
        match alg {
            "RS256" => Box::new(RS256.signer_from_der(der).unwrap()),
            "RS384" => Box::new(RS384.signer_from_der(der).unwrap()),
            "PS256" => Box::new(PS256.signer_from_der(der).unwrap()),
            other => panic!("no RSA signer for {other}"),
        }
    }

    fn rs384() -> Box<dyn JwsSigner> {
        rsa_signer("RS384", &RSA)
    }

    fn es384(pair: &EcKeyPair) -> Box<dyn JwsSigner> {
        Box::new(ES384.signer_from_der(pair.to_der_private_key()).unwrap())
    }

    fn sign_raw(header: &str, payload: &str, signer: &dyn JwsSigner) -> String {
        let input = format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()));
        let signature = signer.sign(input.as_bytes()).unwrap();
        format!("{input}.{}", b64(&signature))
    }

    fn sign(header: Value, payload: Value, signer: &dyn JwsSigner) -> String {
        sign_raw(&header.to_string(), &payload.to_string(), signer)
    }

    fn claims() -> Value {
        json!({
            "iss": CLIENT,
            "sub": CLIENT,
            "aud": TOKEN_URL,
            "exp": NOW + 120,
            "iat": NOW,
            "jti": "5c0b6a8e-5b7e-4d0e-9d5f-0c6f0e1c2a77",
        })
    }

    fn with(mut payload: Value, name: &str, value: Value) -> Value {
        payload[name] = value;
        payload
    }

    fn without(mut payload: Value, name: &str) -> Value {
        payload.as_object_mut().unwrap().remove(name);
        payload
    }

    fn rsa_token(payload: Value) -> String {
        sign(
            json!({"alg": "RS384", "kid": "rsa-1", "typ": "JWT"}),
            payload,
            &*rs384(),
        )
    }

    fn check_with(
        jwt: &str,
        keys: &[ClientKey],
        registered_jku: Option<&str>,
    ) -> Result<VerifiedAssertion, AssertionError> {
        let header = peek_header(jwt)?;
        let audiences = [TOKEN_URL.to_owned(), ISSUER_URL.to_owned()];
        let expect = Expectations {
            client_id: CLIENT,
            audiences: &audiences,
            registered_jku,
            now: NOW,
        };
        verify(jwt, &header, keys, &expect)
    }

    fn check(jwt: &str) -> Result<VerifiedAssertion, AssertionError> {
        check_with(jwt, &KEYS, None)
    }

    fn claims_error(payload: Value) -> AssertionError {
        check(&rsa_token(payload)).unwrap_err()
    }

    // ---- happy paths ----

    #[test]
    fn accepts_rs384() {
        let verified = check(&rsa_token(claims())).unwrap();
        assert_eq!(verified.jti, "5c0b6a8e-5b7e-4d0e-9d5f-0c6f0e1c2a77");
        assert_eq!(verified.exp, NOW + 120);
    }

    #[test]
    fn accepts_es384() {
        let jwt = sign(
            json!({"alg": "ES384", "kid": "ec-1"}),
            claims(),
            &*es384(&EC384),
        );
        assert_eq!(check(&jwt).unwrap().exp, NOW + 120);
    }

    #[test]
    fn accepts_rs256_when_the_key_declares_it() {
        let keys = client_keys(&[
            public_jwk(&*RSA, "rsa-256", Some("RS256")),
            public_jwk(&*EC384, "ec-1", Some("ES384")),
        ]);
        let jwt = sign(
            json!({"alg": "RS256", "kid": "rsa-256"}),
            claims(),
            &*rsa_signer("RS256", &RSA),
        );
        assert!(check_with(&jwt, &keys, None).is_ok());
    }

    #[test]
    fn accepts_any_implied_rsa_alg_when_the_key_declares_none() {
        let keys = client_keys(&[public_jwk(&*RSA, "rsa-any", None)]);
        for alg in ["RS256", "RS384", "PS256"] {
            let jwt = sign(
                json!({"alg": alg, "kid": "rsa-any"}),
                claims(),
                &*rsa_signer(alg, &RSA),
            );
            assert!(check_with(&jwt, &keys, None).is_ok(), "{alg}");
        }
    }

    #[test]
    fn accepts_es256_when_the_key_declares_it() {
        let keys = client_keys(&[
            public_jwk(&*EC384, "ec-1", Some("ES384")),
            public_jwk(&*EC256, "ec-256", Some("ES256")),
        ]);
        let signer = ES256.signer_from_der(EC256.to_der_private_key()).unwrap();
        let jwt = sign(json!({"alg": "ES256", "kid": "ec-256"}), claims(), &signer);
        assert!(check_with(&jwt, &keys, None).is_ok());
    }

    #[test]
    fn accepts_aud_as_single_element_array_and_issuer_url() {
        assert!(check(&rsa_token(with(claims(), "aud", json!([TOKEN_URL])))).is_ok());
        assert!(check(&rsa_token(with(claims(), "aud", json!(ISSUER_URL)))).is_ok());
        assert!(check(&rsa_token(with(
            claims(),
            "aud",
            json!([TOKEN_URL, ISSUER_URL])
        )))
        .is_ok());
    }

    #[test]
    fn accepts_jku_equal_to_registered_url() {
        let header = json!({"alg": "RS384", "kid": "rsa-1", "jku": JWKS_URL});
        let jwt = sign(header, claims(), &*rs384());
        assert_eq!(peek_header(&jwt).unwrap().jku.as_deref(), Some(JWKS_URL));
        assert!(check_with(&jwt, &KEYS, Some(JWKS_URL)).is_ok());
        // Without a jku, a client with a registered URL is fine too.
        assert!(check_with(&rsa_token(claims()), &KEYS, Some(JWKS_URL)).is_ok());
    }

    #[test]
    fn accepts_times_at_the_limits() {
        let edge = with(
            with(
                with(claims(), "exp", json!(NOW + MAX_LIFETIME_SECONDS)),
                "nbf",
                json!(NOW + CLOCK_SKEW_SECONDS),
            ),
            "iat",
            json!(NOW + CLOCK_SKEW_SECONDS),
        );
        assert!(check(&rsa_token(edge)).is_ok());
        let minimal = with(
            without(without(claims(), "iat"), "nbf"),
            "exp",
            json!(NOW + 1),
        );
        assert!(check(&rsa_token(minimal)).is_ok());
    }

    #[test]
    fn peek_header_reads_alg_kid_jku() {
        let jwt = sign(
            json!({"alg": "ES384", "kid": "ec-1", "jku": JWKS_URL}),
            claims(),
            &*es384(&EC384),
        );
        assert_eq!(
            peek_header(&jwt).unwrap(),
            AssertionHeader {
                alg: "ES384".into(),
                kid: "ec-1".into(),
                jku: Some(JWKS_URL.into())
            }
        );
    }

    #[test]
    fn peek_issuer_reads_unverified_iss() {
        assert_eq!(peek_issuer(&rsa_token(claims())).as_deref(), Some(CLIENT));
        assert_eq!(peek_issuer(&rsa_token(without(claims(), "iss"))), None);
        assert_eq!(
            peek_issuer(&rsa_token(with(claims(), "iss", json!(7)))),
            None
        );
        assert_eq!(peek_issuer("not a jwt"), None);
        assert_eq!(peek_issuer(&"a".repeat(MAX_ASSERTION_BYTES + 1)), None);
        let duplicated = sign_raw(
            r#"{"alg":"RS384","kid":"rsa-1"}"#,
            r#"{"iss":"a","iss":"b"}"#,
            &*rs384(),
        );
        assert_eq!(peek_issuer(&duplicated), None);
    }

    #[test]
    fn unknown_kid_is_flagged_for_refetch() {
        let jwt = sign(
            json!({"alg": "RS384", "kid": "rotated"}),
            claims(),
            &*rs384(),
        );
        let err = check(&jwt).unwrap_err();
        assert_eq!(err, AssertionError::UnknownKid);
        assert!(err.is_unknown_kid());
        assert!(!AssertionError::BadSignature.is_unknown_kid());
    }

    // ---- header ----

    #[test]
    fn rejects_alg_none() {
        let jwt = format!(
            "{}.{}.{}",
            b64(br#"{"alg":"none","kid":"rsa-1"}"#),
            b64(claims().to_string().as_bytes()),
            b64(b"x")
        );
        assert_eq!(peek_header(&jwt), Err(AssertionError::AlgNone));
        // Unsigned JWTs carry an empty signature part.
        let unsigned = format!(
            "{}.{}.",
            b64(br#"{"alg":"none","kid":"rsa-1"}"#),
            b64(claims().to_string().as_bytes())
        );
        assert_eq!(peek_header(&unsigned), Err(AssertionError::Malformed));
    }

    fn hmac_token(alg: &str) -> String {
        let secret = b"a shared secret that is long enough for any HMAC algorithm at all....";
        let signer: Box<dyn JwsSigner> = match alg {
            "HS256" => Box::new(HS256.signer_from_bytes(secret).unwrap()),
            "HS384" => Box::new(josekit::jws::HS384.signer_from_bytes(secret).unwrap()),
            _ => Box::new(josekit::jws::HS512.signer_from_bytes(secret).unwrap()),
        };
        sign(json!({"alg": alg, "kid": "rsa-1"}), claims(), &*signer)
    }

    #[test]
    fn rejects_alg_hs256() {
        assert_eq!(
            peek_header(&hmac_token("HS256")),
            Err(AssertionError::SymmetricAlg)
        );
    }

    #[test]
    fn rejects_alg_hs384() {
        assert_eq!(
            peek_header(&hmac_token("HS384")),
            Err(AssertionError::SymmetricAlg)
        );
    }

    #[test]
    fn rejects_alg_hs512() {
        assert_eq!(
            peek_header(&hmac_token("HS512")),
            Err(AssertionError::SymmetricAlg)
        );
    }

    #[test]
    fn rejects_unknown_alg() {
        for alg in ["RS1", "EdDSA", "rs384", "ES256K", ""] {
            let jwt = sign(json!({"alg": alg, "kid": "rsa-1"}), claims(), &*rs384());
            assert!(
                matches!(peek_header(&jwt), Err(AssertionError::AlgNotAllowed(_))),
                "{alg}"
            );
        }
        let jwt = sign(json!({"alg": 384, "kid": "rsa-1"}), claims(), &*rs384());
        assert_eq!(peek_header(&jwt), Err(AssertionError::MissingAlg));
        let jwt = sign(json!({"kid": "rsa-1"}), claims(), &*rs384());
        assert_eq!(peek_header(&jwt), Err(AssertionError::MissingAlg));
    }

    #[test]
    fn rejects_long_alg_without_echoing_it() {
        let alg = format!("X{}\"\\\u{7}é", "A".repeat(500));
        let jwt = sign(json!({"alg": alg, "kid": "rsa-1"}), claims(), &*rs384());
        let err = peek_header(&jwt).unwrap_err();
        let message = err.to_string();
        assert!(message.len() < 160, "{message}");
        assert!(!message.contains(&"A".repeat(MAX_ECHO_CHARS)), "{message}");
        assert_eq!(echo("a\"b\\c\u{7}é"), "a?b?c??");
    }

    #[test]
    fn rejects_missing_kid() {
        let jwt = sign(json!({"alg": "RS384"}), claims(), &*rs384());
        assert_eq!(peek_header(&jwt), Err(AssertionError::MissingKid));
        let jwt = sign(json!({"alg": "RS384", "kid": ""}), claims(), &*rs384());
        assert_eq!(peek_header(&jwt), Err(AssertionError::MissingKid));
    }

    #[test]
    fn rejects_non_string_kid() {
        for kid in [
            json!(1),
            json!(null),
            json!(["rsa-1"]),
            json!({"kid": "rsa-1"}),
            json!(true),
        ] {
            let jwt = sign(json!({"alg": "RS384", "kid": kid}), claims(), &*rs384());
            assert_eq!(peek_header(&jwt), Err(AssertionError::MissingKid));
        }
    }

    #[test]
    fn rejects_non_string_jku() {
        for jku in [json!(null), json!(1), json!([JWKS_URL])] {
            let jwt = sign(
                json!({"alg": "RS384", "kid": "rsa-1", "jku": jku}),
                claims(),
                &*rs384(),
            );
            assert_eq!(peek_header(&jwt), Err(AssertionError::InvalidJku));
        }
    }

    #[test]
    fn rejects_jku_not_registered_url() {
        for jku in [
            "https://evil.example.com/jwks.json",
            "https://app.example.com/.well-known/jwks.json/",
            "https://APP.example.com/.well-known/jwks.json",
            "https://app.example.com/.well-known/jwks.json?x",
        ] {
            let jwt = sign(
                json!({"alg": "RS384", "kid": "rsa-1", "jku": jku}),
                claims(),
                &*rs384(),
            );
            assert_eq!(
                check_with(&jwt, &KEYS, Some(JWKS_URL)),
                Err(AssertionError::JkuMismatch),
                "{jku}"
            );
        }
    }

    #[test]
    fn rejects_jku_with_inline_jwks() {
        let jwt = sign(
            json!({"alg": "RS384", "kid": "rsa-1", "jku": JWKS_URL}),
            claims(),
            &*rs384(),
        );
        assert_eq!(
            check_with(&jwt, &KEYS, None),
            Err(AssertionError::JkuWithoutRegisteredUrl)
        );
    }

    #[test]
    fn rejects_alg_not_allowed_for_key() {
        // An RS384 header naming an EC key.
        let jwt = sign(json!({"alg": "RS384", "kid": "ec-1"}), claims(), &*rs384());
        assert_eq!(
            check(&jwt),
            Err(AssertionError::AlgNotAllowedForKey("RS384".into()))
        );
        // An ES256 header naming a key declared ES384.
        let signer = ES256.signer_from_der(EC256.to_der_private_key()).unwrap();
        let jwt = sign(json!({"alg": "ES256", "kid": "ec-1"}), claims(), &signer);
        assert_eq!(
            check(&jwt),
            Err(AssertionError::AlgNotAllowedForKey("ES256".into()))
        );
        // RS256 on an RSA key declared RS384.
        let jwt = sign(
            json!({"alg": "RS256", "kid": "rsa-1"}),
            claims(),
            &*rsa_signer("RS256", &RSA),
        );
        assert_eq!(
            check(&jwt),
            Err(AssertionError::AlgNotAllowedForKey("RS256".into()))
        );
    }

    #[test]
    fn rejects_hs256_keyed_with_public_key() {
        for secret in [RSA.to_pem_public_key(), RSA.to_der_public_key()] {
            let hmac = HS256.signer_from_bytes(&secret).unwrap();
            let jwt = sign(json!({"alg": "HS256", "kid": "rsa-1"}), claims(), &hmac);
            assert_eq!(peek_header(&jwt), Err(AssertionError::SymmetricAlg));
            // Even a caller that skipped peek_header cannot get it through.
            let forged = AssertionHeader {
                alg: "HS256".into(),
                kid: "rsa-1".into(),
                jku: None,
            };
            let audiences = [TOKEN_URL.to_owned()];
            let expect = Expectations {
                client_id: CLIENT,
                audiences: &audiences,
                registered_jku: None,
                now: NOW,
            };
            assert_eq!(
                verify(&jwt, &forged, &KEYS, &expect),
                Err(AssertionError::SymmetricAlg)
            );
            // Relabelled as RS384, the HMAC is just a bad signature.
            let relabelled = sign(json!({"alg": "RS384", "kid": "rsa-1"}), claims(), &hmac);
            assert_eq!(check(&relabelled), Err(AssertionError::BadSignature));
        }
    }

    #[test]
    fn rejects_crit_header() {
        let header = json!({"alg": "RS384", "kid": "rsa-1", "b64": false, "crit": ["b64"]});
        let jwt = sign(header, claims(), &*rs384());
        assert_eq!(peek_header(&jwt), Err(AssertionError::CriticalHeader));
    }

    #[test]
    fn rejects_header_mismatch() {
        let jwt = rsa_token(claims());
        let audiences = [TOKEN_URL.to_owned()];
        let expect = Expectations {
            client_id: CLIENT,
            audiences: &audiences,
            registered_jku: None,
            now: NOW,
        };
        let other = AssertionHeader {
            alg: "ES384".into(),
            kid: "ec-1".into(),
            jku: None,
        };
        assert_eq!(
            verify(&jwt, &other, &KEYS, &expect),
            Err(AssertionError::HeaderMismatch)
        );
    }

    #[test]
    fn rejects_header_not_json_object() {
        for header in [
            "[]",
            "\"RS384\"",
            "{",
            "{\"alg\":\"RS384\",\"kid\":\"rsa-1\"} x",
            "\u{0}",
        ] {
            let jwt = sign_raw(header, &claims().to_string(), &*rs384());
            assert_eq!(
                peek_header(&jwt),
                Err(AssertionError::NotJsonObject(JsonPart::Header)),
                "{header}"
            );
        }
        let jwt = format!("{}.{}.{}", b64(&[0xff, 0xfe]), b64(b"{}"), b64(b"sig"));
        assert_eq!(
            peek_header(&jwt),
            Err(AssertionError::NotJsonObject(JsonPart::Header))
        );
    }

    #[test]
    fn rejects_duplicate_header_member() {
        let header = r#"{"alg":"HS256","kid":"rsa-1","alg":"RS384"}"#;
        let jwt = sign_raw(header, &claims().to_string(), &*rs384());
        assert_eq!(
            peek_header(&jwt),
            Err(AssertionError::DuplicateMember(JsonPart::Header))
        );
        let nested = r#"{"alg":"RS384","kid":"rsa-1","x":{"a":1,"a":2}}"#;
        let jwt = sign_raw(nested, &claims().to_string(), &*rs384());
        assert_eq!(
            peek_header(&jwt),
            Err(AssertionError::DuplicateMember(JsonPart::Header))
        );
    }

    // ---- key selection and signature ----

    #[test]
    fn rejects_ambiguous_kid() {
        let mut keys = KEYS.clone();
        keys.push(keys[0].clone());
        assert_eq!(
            check_with(&rsa_token(claims()), &keys, None),
            Err(AssertionError::AmbiguousKid)
        );
    }

    #[test]
    fn rejects_unknown_kid() {
        let jwt = sign(json!({"alg": "RS384", "kid": "nope"}), claims(), &*rs384());
        assert_eq!(check(&jwt), Err(AssertionError::UnknownKid));
        assert_eq!(
            check_with(&rsa_token(claims()), &[], None),
            Err(AssertionError::UnknownKid)
        );
    }

    #[test]
    fn rejects_bad_signature() {
        let jwt = rsa_token(claims());
        let (input, signature) = jwt.rsplit_once('.').unwrap();
        let mut bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(signature)
            .unwrap();
        bytes[10] ^= 0x01;
        assert_eq!(
            check(&format!("{input}.{}", b64(&bytes))),
            Err(AssertionError::BadSignature)
        );
        // A changed payload under the original signature.
        let tampered = rsa_token(with(claims(), "sub", json!("someone-else")));
        let (_, tampered_payload, _) = split3(&tampered);
        let (header, _, signature) = split3(&jwt);
        let spliced = format!("{header}.{tampered_payload}.{signature}");
        assert_eq!(check(&spliced), Err(AssertionError::BadSignature));
    }

    fn split3(jwt: &str) -> (&str, &str, &str) {
        let mut parts = jwt.split('.');
        (
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap(),
        )
    }

    #[test]
    fn rejects_signature_by_other_key_with_same_kid() {
        let jwt = sign(
            json!({"alg": "RS384", "kid": "rsa-1"}),
            claims(),
            &*rsa_signer("RS384", &RSA_OTHER),
        );
        assert_eq!(check(&jwt), Err(AssertionError::BadSignature));
        let jwt = sign(
            json!({"alg": "ES384", "kid": "ec-1"}),
            claims(),
            &*es384(&EC384_OTHER),
        );
        assert_eq!(check(&jwt), Err(AssertionError::BadSignature));
    }

    #[test]
    fn rejects_zero_ecdsa_signature() {
        let (header, payload) = (json!({"alg": "ES384", "kid": "ec-1"}), claims());
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(payload.to_string().as_bytes())
        );
        for signature in [vec![0u8; 96], vec![0u8; 95], vec![0xffu8; 96], vec![]] {
            let jwt = format!("{input}.{}", b64(&signature));
            assert!(check(&jwt).is_err());
        }
        assert_eq!(
            check(&format!("{input}.{}", b64(&[0u8; 96]))),
            Err(AssertionError::BadSignature)
        );
    }

    #[test]
    fn rejects_truncated_token() {
        let jwt = rsa_token(claims());
        // A signature cut short (still canonical base64url) does not verify.
        let (input, signature) = jwt.rsplit_once('.').unwrap();
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(signature)
            .unwrap();
        let short = format!("{input}.{}", b64(&bytes[..bytes.len() - 3]));
        assert_eq!(check(&short), Err(AssertionError::BadSignature));
        let two_parts = jwt.rsplit_once('.').unwrap().0;
        assert_eq!(peek_header(two_parts), Err(AssertionError::Malformed));
        assert_eq!(
            peek_header(&format!("{two_parts}.")),
            Err(AssertionError::Malformed)
        );
        assert_eq!(
            peek_header(jwt.split('.').next().unwrap()),
            Err(AssertionError::Malformed)
        );
        for cut in [1, 5, 17, jwt.len() / 2, jwt.len() - 1] {
            assert!(check(&jwt[..cut]).is_err(), "{cut}");
        }
        assert_eq!(peek_header(""), Err(AssertionError::Malformed));
    }

    #[test]
    fn rejects_extra_segments() {
        let jwt = rsa_token(claims());
        assert_eq!(
            peek_header(&format!("{jwt}.")),
            Err(AssertionError::Malformed)
        );
        assert_eq!(
            peek_header(&format!("{jwt}.abc")),
            Err(AssertionError::Malformed)
        );
        assert_eq!(
            peek_header(&format!("{jwt}.a.b.c")),
            Err(AssertionError::Malformed)
        );
        assert_eq!(
            peek_header(&format!("{jwt}..")),
            Err(AssertionError::Encrypted)
        );
    }

    #[test]
    fn rejects_non_base64url() {
        let jwt = rsa_token(claims());
        let (header, payload, signature) = split3(&jwt);
        let cases = [
            format!("{header}.{payload}.{}+", &signature[1..]),
            format!("{header}.{payload}.{}/", &signature[1..]),
            format!("{header}=.{payload}.{signature}"),
            format!("{header}.{payload}=.{signature}"),
            format!("{header}.{payload} .{signature}"),
            // 342 + 3 characters: a length no base64 encoding has.
            format!("{header}.{payload}.{signature}AAA"),
            format!("{header}.{}.{signature}", payload.replace('e', "é")),
        ];
        for case in cases {
            assert_eq!(
                peek_header(&case),
                Err(AssertionError::NotBase64Url),
                "{case}"
            );
        }
    }

    #[test]
    fn rejects_jwe() {
        let header = b64(br#"{"alg":"RSA-OAEP-256","enc":"A256GCM","kid":"rsa-1"}"#);
        let jwe = format!(
            "{header}.{}.{}.{}.{}",
            b64(&[1; 256]),
            b64(&[2; 12]),
            b64(b"ciphertext"),
            b64(&[3; 16])
        );
        assert_eq!(peek_header(&jwe), Err(AssertionError::Encrypted));
        assert_eq!(peek_issuer(&jwe), None);
    }

    #[test]
    fn rejects_oversized() {
        assert_eq!(
            peek_header(&"a".repeat(MAX_ASSERTION_BYTES + 1)),
            Err(AssertionError::TooLarge)
        );
        let big = rsa_token(with(
            claims(),
            "padding",
            json!("x".repeat(MAX_ASSERTION_BYTES)),
        ));
        assert_eq!(check(&big), Err(AssertionError::TooLarge));
        let dots = ".".repeat(MAX_ASSERTION_BYTES);
        assert_eq!(peek_header(&dots), Err(AssertionError::Malformed));
    }

    // ---- claims ----

    #[test]
    fn rejects_payload_not_json_object() {
        for payload in ["[]", "1700000000", "null", "{\"iss\":", "\"claims\""] {
            let jwt = sign_raw(r#"{"alg":"RS384","kid":"rsa-1"}"#, payload, &*rs384());
            assert_eq!(
                check(&jwt),
                Err(AssertionError::NotJsonObject(JsonPart::Payload)),
                "{payload}"
            );
        }
    }

    #[test]
    fn rejects_duplicate_payload_member() {
        let good = claims();
        let body = good.as_object().unwrap();
        let mut payload = String::from(r#"{"iss":"attacker","#);
        payload.push_str(&serde_json::to_string(body).unwrap()[1..]);
        let jwt = sign_raw(r#"{"alg":"RS384","kid":"rsa-1"}"#, &payload, &*rs384());
        assert_eq!(
            check(&jwt),
            Err(AssertionError::DuplicateMember(JsonPart::Payload))
        );
        let nested = with(claims(), "cnf", json!({}));
        let text = nested
            .to_string()
            .replace(r#""cnf":{}"#, r#""cnf":{"x":1,"x":2}"#);
        let jwt = sign_raw(r#"{"alg":"RS384","kid":"rsa-1"}"#, &text, &*rs384());
        assert_eq!(
            check(&jwt),
            Err(AssertionError::DuplicateMember(JsonPart::Payload))
        );
    }

    #[test]
    fn rejects_missing_iss() {
        assert_eq!(
            claims_error(without(claims(), "iss")),
            AssertionError::MissingIssuer
        );
        assert_eq!(
            claims_error(with(claims(), "iss", json!(123))),
            AssertionError::MissingIssuer
        );
        assert_eq!(
            claims_error(with(claims(), "iss", json!(""))),
            AssertionError::MissingIssuer
        );
    }

    #[test]
    fn rejects_missing_sub() {
        assert_eq!(
            claims_error(without(claims(), "sub")),
            AssertionError::MissingSubject
        );
        assert_eq!(
            claims_error(with(claims(), "sub", json!([CLIENT]))),
            AssertionError::MissingSubject
        );
    }

    #[test]
    fn rejects_iss_not_sub() {
        assert_eq!(
            claims_error(with(claims(), "sub", json!("other"))),
            AssertionError::IssuerNotSubject
        );
        assert_eq!(
            claims_error(with(claims(), "iss", json!("other"))),
            AssertionError::IssuerNotSubject
        );
    }

    #[test]
    fn rejects_wrong_client() {
        let other = with(
            with(claims(), "iss", json!("client-999")),
            "sub",
            json!("client-999"),
        );
        assert_eq!(claims_error(other), AssertionError::WrongClient);
    }

    #[test]
    fn rejects_missing_aud() {
        assert_eq!(
            claims_error(without(claims(), "aud")),
            AssertionError::MissingAudience
        );
    }

    #[test]
    fn rejects_wrong_aud() {
        for aud in [
            json!("https://other.example.org/token"),
            json!("https://ward.example.org/token/"),
            json!([TOKEN_URL, "https://other.example.org/token"]),
            json!(["https://other.example.org/token", TOKEN_URL]),
            json!([]),
            json!([[TOKEN_URL]]),
            json!([TOKEN_URL, 1]),
            json!(null),
            json!(1),
            json!({"aud": TOKEN_URL}),
        ] {
            assert_eq!(
                claims_error(with(claims(), "aud", aud.clone())),
                AssertionError::WrongAudience,
                "{aud}"
            );
        }
    }

    #[test]
    fn rejects_missing_exp() {
        assert_eq!(
            claims_error(without(claims(), "exp")),
            AssertionError::MissingExpiry
        );
    }

    #[test]
    fn rejects_non_integer_numeric_claims() {
        for name in ["exp", "iat", "nbf"] {
            for value in [
                json!(1_700_000_060.5),
                json!(1_700_000_060.0),
                json!("1700000060"),
                json!(true),
                json!(null),
                json!([NOW + 60]),
            ] {
                let err = claims_error(with(claims(), name, value.clone()));
                assert_eq!(
                    err,
                    AssertionError::NonIntegerNumericDate(name),
                    "{name}={value}"
                );
                assert!(err.to_string().contains("numeric claims must be integers"));
            }
        }
        // The exponent form is a float to serde_json too.
        let payload = claims()
            .to_string()
            .replace(&format!("\"exp\":{}", NOW + 120), "\"exp\":1.70000012e9");
        let jwt = sign_raw(r#"{"alg":"RS384","kid":"rsa-1"}"#, &payload, &*rs384());
        assert_eq!(
            check(&jwt),
            Err(AssertionError::NonIntegerNumericDate("exp"))
        );
    }

    #[test]
    fn rejects_expired() {
        assert_eq!(
            claims_error(with(claims(), "exp", json!(NOW))),
            AssertionError::Expired
        );
        assert_eq!(
            claims_error(with(claims(), "exp", json!(NOW - 1))),
            AssertionError::Expired
        );
        assert_eq!(
            claims_error(with(claims(), "exp", json!(i64::MIN))),
            AssertionError::Expired
        );
    }

    #[test]
    fn rejects_exp_too_far_ahead() {
        for exp in [
            json!(NOW + MAX_LIFETIME_SECONDS + 1),
            json!(i64::MAX),
            json!(u64::MAX),
        ] {
            assert_eq!(
                claims_error(with(claims(), "exp", exp)),
                AssertionError::ExpiryTooFarAhead
            );
        }
    }

    #[test]
    fn rejects_nbf_in_future() {
        let payload = with(claims(), "nbf", json!(NOW + CLOCK_SKEW_SECONDS + 1));
        assert_eq!(claims_error(payload), AssertionError::NotYetValid);
        assert_eq!(
            claims_error(with(claims(), "nbf", json!(u64::MAX))),
            AssertionError::NotYetValid
        );
    }

    #[test]
    fn rejects_iat_in_future() {
        let payload = with(claims(), "iat", json!(NOW + CLOCK_SKEW_SECONDS + 1));
        assert_eq!(claims_error(payload), AssertionError::IssuedInFuture);
    }

    #[test]
    fn rejects_missing_jti() {
        assert_eq!(
            claims_error(without(claims(), "jti")),
            AssertionError::MissingJti
        );
    }

    #[test]
    fn rejects_invalid_jti() {
        for jti in [
            json!(""),
            json!("j".repeat(MAX_JTI_CHARS + 1)),
            json!("abc\ndef"),
            json!("abc\u{0}"),
            json!("\u{85}"),
            json!(12345),
            json!(null),
            json!(["a"]),
        ] {
            assert_eq!(
                claims_error(with(claims(), "jti", jti.clone())),
                AssertionError::InvalidJti,
                "{jti}"
            );
        }
        // 255 characters, multi-byte ones included, are fine.
        let long = "é".repeat(MAX_JTI_CHARS);
        assert_eq!(
            check(&rsa_token(with(claims(), "jti", json!(long.clone()))))
                .unwrap()
                .jti,
            long
        );
    }

    // ---- messages ----

    #[test]
    fn messages_fit_error_description() {
        let all = [
            AssertionError::TooLarge,
            AssertionError::Encrypted,
            AssertionError::Malformed,
            AssertionError::NotBase64Url,
            AssertionError::NotJsonObject(JsonPart::Header),
            AssertionError::DuplicateMember(JsonPart::Payload),
            AssertionError::CriticalHeader,
            AssertionError::MissingAlg,
            AssertionError::AlgNone,
            AssertionError::SymmetricAlg,
            AssertionError::AlgNotAllowed(echo("\"\\\u{1}é")),
            AssertionError::MissingKid,
            AssertionError::InvalidJku,
            AssertionError::HeaderMismatch,
            AssertionError::JkuMismatch,
            AssertionError::JkuWithoutRegisteredUrl,
            AssertionError::UnknownKid,
            AssertionError::AmbiguousKid,
            AssertionError::AlgNotAllowedForKey("RS384".into()),
            AssertionError::KeyUnusable("ES384".into()),
            AssertionError::BadSignature,
            AssertionError::MissingIssuer,
            AssertionError::MissingSubject,
            AssertionError::IssuerNotSubject,
            AssertionError::WrongClient,
            AssertionError::MissingAudience,
            AssertionError::WrongAudience,
            AssertionError::NonIntegerNumericDate("iat"),
            AssertionError::MissingExpiry,
            AssertionError::Expired,
            AssertionError::ExpiryTooFarAhead,
            AssertionError::NotYetValid,
            AssertionError::IssuedInFuture,
            AssertionError::MissingJti,
            AssertionError::InvalidJti,
        ];
        for err in all {
            let message = err.to_string();
            // RFC 6749 §5.2: error_description is %x20-21 / %x23-5B / %x5D-7E.
            assert!(
                message
                    .chars()
                    .all(|c| (' '..='~').contains(&c) && c != '"' && c != '\\'),
                "{message}"
            );
        }
    }

    // ---- never panics ----

    fn proptest_expectations(audiences: &[String]) -> Expectations<'_> {
        Expectations {
            client_id: CLIENT,
            audiences,
            registered_jku: Some(JWKS_URL),
            now: NOW,
        }
    }

    fn run_everything(jwt: &str) {
        let audiences = [TOKEN_URL.to_owned()];
        let expect = proptest_expectations(&audiences);
        let _ = peek_issuer(jwt);
        let header = peek_header(jwt).unwrap_or(AssertionHeader {
            alg: "RS384".into(),
            kid: "rsa-1".into(),
            jku: None,
        });
        let _ = verify(jwt, &header, &KEYS, &expect);
        for kid in ["rsa-1", "ec-1"] {
            for alg in ["RS384", "ES384", "PS512"] {
                let forced = AssertionHeader {
                    alg: alg.into(),
                    kid: kid.into(),
                    jku: None,
                };
                let _ = verify(jwt, &forced, &KEYS, &expect);
            }
        }
    }

    proptest! {
        #[test]
        fn peek_header_and_verify_never_panic_on_arbitrary_strings(jwt in any::<String>()) {
            run_everything(&jwt);
        }

        #[test]
        fn never_panic_on_three_base64url_parts(
            header in prop_oneof![
                Just(r#"{"alg":"RS384","kid":"rsa-1"}"#.to_owned()),
                Just(r#"{"alg":"ES384","kid":"ec-1"}"#.to_owned()),
                "\\{\"alg\":\"[A-Z0-9]{0,6}\",\"kid\":\"[a-z0-9-]{0,6}\"(,\"jku\":.{0,8})?\\}",
                ".{0,40}",
            ],
            payload in prop::collection::vec(any::<u8>(), 0..200),
            signature in prop::collection::vec(any::<u8>(), 0..600),
        ) {
            let jwt = format!("{}.{}.{}", b64(header.as_bytes()), b64(&payload), b64(&signature));
            run_everything(&jwt);
        }

        #[test]
        fn claim_checks_never_panic(payload in "\\{(\"(iss|sub|aud|exp|nbf|iat|jti)\":(-?[0-9]{1,25}(\\.[0-9])?|\"[^\"]{0,10}\"|\\[\\]|null|true|\\[\"[a-z]{0,3}\"\\]),?){0,8}\\}") {
            let audiences = [TOKEN_URL.to_owned()];
            if let Ok(map) = parse_object(payload.as_bytes(), JsonPart::Payload) {
                let _ = check_claims(&map, &proptest_expectations(&audiences));
            }
        }
    }
}
