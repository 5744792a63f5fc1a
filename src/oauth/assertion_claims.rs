//! Client assertion JWTs (RFC 7523 `private_key_jwt`, SMART App Launch 2.2): everything before
//! and after the signature check. Reading the compact JWS, its header (`alg` allow-list, `kid`,
//! `jku`, no `crit`) and its claims (`iss` = `sub` = client_id, `aud`, `exp` at most five minutes
//! ahead, integer NumericDates, `jti`). Pure: no josekit, no database, no network, so the fuzz
//! crate compiles this file as it is; `assertion.rs` adds key selection and the signature.
//!
//! Every error's message is fit for a 401 `invalid_client` `error_description`: it holds only
//! the characters RFC 6749 §5.2 allows there and never echoes more than a short, sanitised piece
//! of the presented token.

use base64::Engine;
use serde::de::{Deserialize, Deserializer, Error as _, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Signature algorithms a client key may declare and a client assertion may use. SMART requires
/// RS384 and ES384; the others are asymmetric too and may be used by clients that declare them.
/// Never `none` or HS*.
pub const ALLOWED_ALGS: &[&str] = &[
    "RS384", "ES384", "RS256", "ES256", "RS512", "ES512", "PS256", "PS384", "PS512",
];
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
pub const MAX_ECHO_CHARS: usize = 64;

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
    /// Holds the header's `alg`, which is then one of [`ALLOWED_ALGS`].
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
/// anything not in [`ALLOWED_ALGS`]. Nothing here is verified yet.
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

/// The checks around the signature, in order: the header must be `jwt`'s own; `jku`, if any,
/// must be the registered JWKS URL; then `check_signature` is given the signing input and the
/// decoded signature (it picks the key by `kid` and verifies); then the claims are checked (RFC
/// 7523 §3, SMART App Launch 2.2). Nothing in the payload is read before the signature verifies.
pub fn verify_with(
    jwt: &str,
    header: &AssertionHeader,
    expect: &Expectations<'_>,
    check_signature: impl FnOnce(&[u8], &[u8]) -> Result<(), AssertionError>,
) -> Result<VerifiedAssertion, AssertionError> {
    if peek_header(jwt)? != *header {
        return Err(AssertionError::HeaderMismatch);
    }
    check_jku(header.jku.as_deref(), expect.registered_jku)?;
    let parts = split(jwt)?;
    let signature = decode_part(parts.signature)?;
    check_signature(parts.signing_input.as_bytes(), &signature)?;
    let payload = parse_object(&decode_part(parts.payload)?, JsonPart::Payload)?;
    check_claims(&payload, expect)
}

/// The three parts of a compact JWS, and the bytes its signature covers.
pub struct Parts<'a> {
    pub header: &'a str,
    pub payload: &'a str,
    pub signature: &'a str,
    pub signing_input: &'a str,
}

/// Size cap, then compact serialization (RFC 7515 §7.1): exactly three non-empty parts. Five
/// parts is a JWE (RFC 7516 §7.1), which Ward does not accept as a client assertion.
pub fn split(jwt: &str) -> Result<Parts<'_>, AssertionError> {
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
pub fn decode_part(part: &str) -> Result<Vec<u8>, AssertionError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| AssertionError::NotBase64Url)
}

/// Parses a JSON object, refusing duplicate member names at any depth. RFC 7515 §4 and RFC 7519
/// §4 let a parser either reject duplicates or keep the last; serde_json silently keeps the last,
/// so two `iss` members could mean different things to different readers: Ward rejects them.
pub fn parse_object(bytes: &[u8], part: JsonPart) -> Result<Map<String, Value>, AssertionError> {
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
pub fn check_jku(presented: Option<&str>, registered: Option<&str>) -> Result<(), AssertionError> {
    match (presented, registered) {
        (None, _) => Ok(()),
        (Some(_), None) => Err(AssertionError::JkuWithoutRegisteredUrl),
        (Some(jku), Some(url)) if jku == url => Ok(()),
        (Some(_), Some(_)) => Err(AssertionError::JkuMismatch),
    }
}

/// The claim checks of RFC 7523 §3 with SMART App Launch 2.2's limits, on the verified payload.
pub fn check_claims(
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
pub fn echo(input: &str) -> String {
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
