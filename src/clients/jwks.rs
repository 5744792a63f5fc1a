//! Client key sets (SMART client-confidential-asymmetric): validating a JWKS document, and
//! fetching one from a client's JWKS URL safely.
//!
//! Fetching is server-side request forgery waiting to happen, so the fetcher only speaks HTTPS,
//! follows no redirects, gives up after a few seconds and a few dozen kilobytes, and refuses — at
//! name resolution, before any connection — addresses that are loopback, private, link-local or
//! otherwise not on the public internet (tests open loopback with a `DANGER_` setting).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use josekit::jwk::Jwk;
use josekit::jws::{JwsVerifier, ES256, ES384, ES512, PS256, PS384, PS512, RS256, RS384, RS512};
use serde_json::{Map, Value};

/// Signature algorithms a client key may declare (defined with the assertion checks that use it).
pub use crate::oauth::assertion_claims::ALLOWED_ALGS;
pub const MAX_KEYS: usize = 20;
pub const MAX_JWKS_BYTES: usize = 64 * 1024;
const PRIVATE_MEMBERS: &[&str] = &["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    #[error("JWKS is not valid: {0}")]
    Invalid(String),
    #[error("JWKS URL is not allowed: {0}")]
    UrlNotAllowed(String),
    #[error("JWKS URL could not be fetched: {0}")]
    Fetch(String),
    #[error("JWKS URL took too long to answer")]
    Timeout,
    #[error("JWKS URL answered more than {MAX_JWKS_BYTES} bytes")]
    TooLarge,
}

/// One usable public key of a client.
#[derive(Debug, Clone)]
pub struct ClientKey {
    pub kid: String,
    /// The algorithms this key may verify: its declared `alg`, or what its type implies.
    pub algs: Vec<&'static str>,
    pub jwk: Jwk,
    /// A verifier per entry of `algs`, built once when the key set is read (parsing a key
    /// costs as much as an RSA verification), shared by every request.
    pub verifiers: Vec<std::sync::Arc<dyn JwsVerifier>>,
}

impl ClientKey {
    /// The verifier for `alg`, when this key is registered for it.
    pub fn verifier(&self, alg: &str) -> Option<&dyn JwsVerifier> {
        let index = self.algs.iter().position(|a| *a == alg)?;
        self.verifiers.get(index).map(|v| v.as_ref())
    }
}

/// Parses and checks a JWKS document: public asymmetric keys only, unique `kid`s, allowed
/// algorithms, RSA keys of at least 2048 bits, and at least one key usable with RS384 or ES384.
pub fn validate(doc: &Value) -> Result<Vec<ClientKey>, JwksError> {
    let invalid = |m: String| JwksError::Invalid(m);
    let keys = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("expected an object with a `keys` array".into()))?;
    if keys.is_empty() || keys.len() > MAX_KEYS {
        return Err(invalid(format!("must hold between 1 and {MAX_KEYS} keys")));
    }
    let mut out: Vec<ClientKey> = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let map = key
            .as_object()
            .ok_or_else(|| invalid(format!("key {i} is not an object")))?;
        let parsed = validate_key(map).map_err(|m| invalid(format!("key {i}: {m}")))?;
        if out.iter().any(|k| k.kid == parsed.kid) {
            return Err(invalid(format!("key {i}: duplicate kid `{}`", parsed.kid)));
        }
        out.push(parsed);
    }
    if !out
        .iter()
        .any(|k| k.algs.iter().any(|a| *a == "RS384" || *a == "ES384"))
    {
        return Err(invalid(
            "no key usable with RS384 or ES384, which SMART Backend Services requires".into(),
        ));
    }
    Ok(out)
}

fn validate_key(map: &Map<String, Value>) -> Result<ClientKey, String> {
    for member in PRIVATE_MEMBERS {
        if map.contains_key(*member) {
            return Err(format!(
                "contains private member `{member}`: register only the public key"
            ));
        }
    }
    let text = |name: &str| map.get(name).and_then(Value::as_str);
    let kid = text("kid")
        .filter(|k| !k.is_empty() && k.len() <= 200)
        .ok_or("needs a `kid` (1 to 200 characters)")?
        .to_owned();
    if let Some(key_use) = text("use") {
        if key_use != "sig" {
            return Err(format!(
                "`use` is `{key_use}`; client keys are for signatures (`sig`)"
            ));
        }
    }
    let kty = text("kty").ok_or("needs `kty`")?;
    let implied: Vec<&'static str> = match (kty, text("crv")) {
        ("RSA", _) => vec!["RS384", "RS256", "RS512", "PS256", "PS384", "PS512"],
        ("EC", Some("P-256")) => vec!["ES256"],
        ("EC", Some("P-384")) => vec!["ES384"],
        ("EC", Some("P-521")) => vec!["ES512"],
        ("EC", _) => return Err("EC keys need `crv` P-256, P-384 or P-521".into()),
        (other, _) => {
            return Err(format!(
                "`kty` {other} is not allowed; client keys are RSA or EC public keys"
            ))
        }
    };
    let algs = match text("alg") {
        Some(alg) => {
            let known = ALLOWED_ALGS.iter().find(|a| **a == alg).ok_or_else(|| {
                format!(
                    "`alg` {alg} is not allowed (allowed: {})",
                    ALLOWED_ALGS.join(", ")
                )
            })?;
            if !implied.contains(known) {
                return Err(format!(
                    "`alg` {alg} does not fit a {kty} key of this curve"
                ));
            }
            vec![*known]
        }
        None => implied,
    };
    let jwk = Jwk::from_map(map.clone()).map_err(|e| format!("not a JWK: {e}"))?;
    if kty == "RSA" {
        let decode = |name: &str| {
            use base64::Engine;
            text(name).and_then(|v| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(v)
                    .ok()
            })
        };
        let bits = decode("n").map(|n| significant_bits(&n)).unwrap_or(0);
        if bits < 2048 {
            return Err(format!(
                "RSA key of {bits} bits; at least 2048 are required"
            ));
        }
        let exponent = decode("e").unwrap_or_default();
        let odd = exponent.last().is_some_and(|b| b & 1 == 1);
        if !odd || significant_bits(&exponent) < 17 {
            return Err("RSA public exponent must be odd and at least 65537".into());
        }
    }
    // Building a verifier proves the key material is well-formed for each algorithm.
    let verifiers = algs
        .iter()
        .map(|alg| build_verifier(alg, &jwk).map_err(|e| format!("unusable for {alg}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ClientKey {
        kid,
        algs,
        jwk,
        verifiers,
    })
}

/// Bit length of a big-endian unsigned integer.
fn significant_bits(bytes: &[u8]) -> usize {
    let trimmed: Vec<u8> = bytes.iter().copied().skip_while(|b| *b == 0).collect();
    match trimmed.first() {
        Some(first) => (trimmed.len() - 1) * 8 + (8 - first.leading_zeros() as usize),
        None => 0,
    }
}

fn build_verifier(alg: &str, jwk: &Jwk) -> Result<std::sync::Arc<dyn JwsVerifier>, String> {
    fn shared(v: impl JwsVerifier + 'static) -> std::sync::Arc<dyn JwsVerifier> {
        std::sync::Arc::new(v)
    }
    let built = match alg {
        "RS256" => RS256.verifier_from_jwk(jwk).map(shared),
        "RS384" => RS384.verifier_from_jwk(jwk).map(shared),
        "RS512" => RS512.verifier_from_jwk(jwk).map(shared),
        "PS256" => PS256.verifier_from_jwk(jwk).map(shared),
        "PS384" => PS384.verifier_from_jwk(jwk).map(shared),
        "PS512" => PS512.verifier_from_jwk(jwk).map(shared),
        "ES256" => ES256.verifier_from_jwk(jwk).map(shared),
        "ES384" => ES384.verifier_from_jwk(jwk).map(shared),
        "ES512" => ES512.verifier_from_jwk(jwk).map(shared),
        other => return Err(format!("algorithm {other} is not supported")),
    };
    built.map_err(|e| e.to_string())
}

/// Whether an address is on the public internet: not loopback, private, link-local, CGNAT,
/// benchmarking, documentation, reserved, multicast, and, for IPv6, only global unicast
/// (`2000::/3`) outside the special ranges, with embedded IPv4 addresses (mapped, compatible,
/// NAT64, 6to4) judged as the IPv4 address they carry.
pub fn is_public_address(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || (a == 192 && b == 0 && c == 0)
                || (a == 192 && b == 88 && c == 99)
                || (a == 198 && (b == 18 || b == 19))
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            let segments = v6.segments();
            let embedded = |hi: u16, lo: u16| {
                let [a, b] = hi.to_be_bytes();
                let [c, d] = lo.to_be_bytes();
                IpAddr::V4(std::net::Ipv4Addr::new(a, b, c, d))
            };
            // ::ffff:a.b.c.d (mapped) and ::a.b.c.d (compatible, deprecated).
            if segments[..5] == [0, 0, 0, 0, 0] && (segments[5] == 0xffff || segments[5] == 0) {
                return is_public_address(embedded(segments[6], segments[7]));
            }
            // NAT64 well-known prefix 64:ff9b::/96 carries an IPv4 destination.
            if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                return is_public_address(embedded(segments[6], segments[7]));
            }
            // 6to4 2002::/16 carries an IPv4 address in bits 16..48.
            if segments[0] == 0x2002 {
                return is_public_address(embedded(segments[1], segments[2]));
            }
            let global_unicast = (segments[0] & 0xe000) == 0x2000;
            // Teredo, ORCHID, benchmarking (2001::/23) and documentation (2001:db8::/32), and
            // local-use NAT64 (64:ff9b:1::/48).
            let special = (segments[0] == 0x2001
                && (segments[1] < 0x0200 || segments[1] == 0x0db8))
                || (segments[0] == 0x0064 && segments[1] == 0xff9b); // local-use NAT64 64:ff9b:1::/48
            global_unicast && !special
        }
    }
}

/// Which destinations a fetch may reach.
#[derive(Debug, Clone, Copy)]
struct AddressPolicy {
    allow_loopback: bool,
}

impl AddressPolicy {
    fn allows(self, ip: IpAddr) -> bool {
        is_public_address(ip) || (self.allow_loopback && ip.is_loopback())
    }
}

/// Resolves names, then keeps only allowed addresses, so a connection to a forbidden address
/// is never attempted (also when DNS points a public-looking name at 127.0.0.1).
struct GuardedResolver(AddressPolicy);

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.0;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = resolved
                .into_iter()
                .filter(|a| policy.allows(a.ip()))
                .collect();
            if allowed.is_empty() {
                return Err(format!(
                    "{host} resolves only to loopback, private or non-public addresses"
                )
                .into());
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Fetches client JWKS documents under the rules above.
#[derive(Clone)]
pub struct JwksFetcher {
    client: reqwest::Client,
    policy: AddressPolicy,
}

impl std::fmt::Debug for JwksFetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksFetcher").finish_non_exhaustive()
    }
}

/// A fetched, validated key set and how long it may be cached.
#[derive(Debug, Clone)]
pub struct FetchedJwks {
    pub document: Value,
    pub keys: Vec<ClientKey>,
    pub max_age: Option<Duration>,
}

impl JwksFetcher {
    /// `extra_ca_pem` and `allow_loopback` come from `DANGER_` settings (tests only).
    pub fn new(extra_ca_pem: Option<&[u8]>, allow_loopback: bool) -> Result<Self, JwksError> {
        let mut roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        if let Some(pem) = extra_ca_pem {
            for cert in rustls_pemfile::certs(&mut &pem[..]) {
                let cert = cert.map_err(|e| JwksError::Fetch(format!("extra CA: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| JwksError::Fetch(format!("extra CA: {e}")))?;
            }
        }
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| JwksError::Fetch(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let policy = AddressPolicy { allow_loopback };
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .https_only(true)
            .redirect(reqwest::redirect::Policy::none())
            // A proxy would resolve names itself, around the guarded resolver.
            .no_proxy()
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(5))
            .dns_resolver(Arc::new(GuardedResolver(policy)))
            .user_agent(concat!("Ward/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| JwksError::Fetch(e.to_string()))?;
        Ok(Self { client, policy })
    }

    /// Checks a JWKS URL's form and, for IP-literal hosts, its address (names are checked at
    /// resolution).
    pub fn check_url(&self, raw: &str) -> Result<url::Url, JwksError> {
        let url = url::Url::parse(raw)
            .map_err(|e| JwksError::UrlNotAllowed(format!("`{raw}` is not a URL: {e}")))?;
        if url.scheme() != "https" {
            return Err(JwksError::UrlNotAllowed("must use https".into()));
        }
        if !url.username().is_empty() || url.password().is_some() || url.fragment().is_some() {
            return Err(JwksError::UrlNotAllowed(
                "must not carry credentials or a fragment".into(),
            ));
        }
        let literal = match url.host() {
            Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
            Some(url::Host::Domain(_)) => None,
            None => return Err(JwksError::UrlNotAllowed("has no host".into())),
        };
        if let Some(ip) = literal {
            if !self.policy.allows(ip) {
                return Err(JwksError::UrlNotAllowed(format!(
                    "{ip} is a loopback, private or non-public address"
                )));
            }
        }
        Ok(url)
    }

    pub async fn fetch(&self, raw: &str) -> Result<FetchedJwks, JwksError> {
        let url = self.check_url(raw)?;
        let mut response = self
            .client
            .get(url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(classify)?;
        if !response.status().is_success() {
            return Err(JwksError::Fetch(format!(
                "HTTP status {}",
                response.status()
            )));
        }
        if response
            .content_length()
            .is_some_and(|len| len > MAX_JWKS_BYTES as u64)
        {
            return Err(JwksError::TooLarge);
        }
        let max_age = response
            .headers()
            .get(reqwest::header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .map(cache_lifetime);
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(classify)? {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(JwksError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        let document: Value = serde_json::from_slice(&body)
            .map_err(|e| JwksError::Invalid(format!("not JSON: {e}")))?;
        let keys = validate(&document)?;
        Ok(FetchedJwks {
            document,
            keys,
            max_age: max_age.flatten(),
        })
    }
}

/// Client key sets by URL, cached no longer than the response's `Cache-Control` allows (and
/// at most a day); a response that forbids caching is fetched again each time. When a client
/// signs with a `kid` the cached set lacks, one refetch is allowed per URL per minute, so a
/// stream of bogus `kid`s cannot turn Ward into a request amplifier.
pub struct JwksCache {
    fetcher: JwksFetcher,
    entries: std::sync::Mutex<std::collections::HashMap<String, CacheEntry>>,
}

struct CacheEntry {
    keys: Arc<Vec<ClientKey>>,
    expires: Option<std::time::Instant>,
    last_refetch: Option<std::time::Instant>,
}

const UNKNOWN_KID_REFETCH_INTERVAL: Duration = Duration::from_secs(60);

impl JwksCache {
    /// The fetcher behind the cache (the admin API validates new registrations with it).
    pub fn fetcher(&self) -> &JwksFetcher {
        &self.fetcher
    }
    pub fn new(fetcher: JwksFetcher) -> Self {
        Self {
            fetcher,
            entries: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, CacheEntry>> {
        match self.entries.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn fresh(&self, url: &str) -> Option<Arc<Vec<ClientKey>>> {
        let now = std::time::Instant::now();
        self.lock()
            .get(url)
            .filter(|e| e.expires.is_some_and(|at| now < at))
            .map(|e| Arc::clone(&e.keys))
    }

    async fn fetch_and_store(
        &self,
        url: &str,
        refetch: bool,
    ) -> Result<Arc<Vec<ClientKey>>, JwksError> {
        let fetched = self.fetcher.fetch(url).await?;
        let keys = Arc::new(fetched.keys);
        let now = std::time::Instant::now();
        let mut entries = self.lock();
        let last_refetch = if refetch {
            Some(now)
        } else {
            entries.get(url).and_then(|e| e.last_refetch)
        };
        entries.insert(
            url.to_owned(),
            CacheEntry {
                keys: Arc::clone(&keys),
                expires: fetched.max_age.map(|age| now + age),
                last_refetch,
            },
        );
        Ok(keys)
    }

    /// The key set behind `url`, from cache while it is fresh.
    pub async fn keys(&self, url: &str) -> Result<Arc<Vec<ClientKey>>, JwksError> {
        match self.fresh(url) {
            Some(keys) => Ok(keys),
            None => self.fetch_and_store(url, false).await,
        }
    }

    /// Refetches because a presented `kid` is unknown, unless a refetch for this URL happened
    /// within the last minute (then `None`: the `kid` stays unknown).
    pub async fn refetch_for_unknown_kid(
        &self,
        url: &str,
    ) -> Result<Option<Arc<Vec<ClientKey>>>, JwksError> {
        let now = std::time::Instant::now();
        let recently = self
            .lock()
            .get(url)
            .and_then(|e| e.last_refetch)
            .is_some_and(|at| now.duration_since(at) < UNKNOWN_KID_REFETCH_INTERVAL);
        if recently {
            return Ok(None);
        }
        self.fetch_and_store(url, true).await.map(Some)
    }
}

fn classify(e: reqwest::Error) -> JwksError {
    if e.is_timeout() {
        return JwksError::Timeout;
    }
    // The resolver's refusal is the most useful part of the chain; keep the whole chain.
    let mut message = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(inner) = source {
        message = format!("{message}: {inner}");
        source = inner.source();
    }
    if message.contains("non-public addresses") {
        JwksError::UrlNotAllowed(message)
    } else {
        JwksError::Fetch(message)
    }
}

/// Bounds on how long a fetched key set is cached, whatever the server says: long enough to
/// spare the client's server, short enough that a revoked key stops working within a day.
pub const MIN_CACHE: Duration = Duration::from_secs(300);
pub const MAX_CACHE: Duration = Duration::from_secs(86_400);

/// The cache lifetime a `Cache-Control` header allows (`None`: do not cache), clamped to at
/// most [`MAX_CACHE`].
fn cache_lifetime(header: &str) -> Option<Duration> {
    raw_cache_lifetime(header).map(|d| d.min(MAX_CACHE))
}

fn raw_cache_lifetime(header: &str) -> Option<Duration> {
    let mut max_age = None;
    for directive in header.split(',').map(str::trim) {
        let lower = directive.to_ascii_lowercase();
        if lower == "no-store" || lower == "no-cache" {
            return None;
        }
        if let Some(secs) = lower.strip_prefix("max-age=") {
            max_age = secs
                .trim_matches('"')
                .parse::<u64>()
                .ok()
                .map(Duration::from_secs);
        }
    }
    max_age
}

#[cfg(test)]
mod tests {
    use super::*;
    use josekit::jwk::KeyPair;
    use serde_json::json;

    fn public_jwk(pair_jwk: Jwk, kid: &str, alg: Option<&str>) -> Value {
        let mut jwk = pair_jwk;
        jwk.set_key_id(kid);
        if let Some(alg) = alg {
            jwk.set_algorithm(alg);
        }
        serde_json::to_value(jwk.as_ref()).unwrap()
    }

    fn es384(kid: &str) -> Value {
        public_jwk(
            ES384.generate_key_pair().unwrap().to_jwk_public_key(),
            kid,
            Some("ES384"),
        )
    }

    fn rsa(kid: &str, bits: u32) -> Value {
        // openssl directly: josekit refuses to generate keys below 2048 bits.
        use base64::Engine;
        let b64 = |b: Vec<u8>| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let key = openssl::rsa::Rsa::generate(bits).unwrap();
        json!({ "kty": "RSA", "kid": kid, "n": b64(key.n().to_vec()), "e": b64(key.e().to_vec()) })
    }

    fn with_exponent(mut key: Value, e: &[u8]) -> Value {
        use base64::Engine;
        key["e"] = json!(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(e));
        key
    }

    #[test]
    fn accepts_public_rs384_and_es384_keys() {
        let keys = validate(&json!({ "keys": [es384("a"), rsa("b", 2048)] })).unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].algs, vec!["ES384"]);
        assert!(keys[1].algs.contains(&"RS384"));
    }

    #[test]
    fn rejects_bad_key_sets() {
        let private = {
            let pair = ES384.generate_key_pair().unwrap();
            public_jwk(pair.to_jwk_private_key(), "p", Some("ES384"))
        };
        let es256_only = public_jwk(
            ES256.generate_key_pair().unwrap().to_jwk_public_key(),
            "e",
            Some("ES256"),
        );
        let mut mismatched = es384("m");
        mismatched["alg"] = json!("RS384");
        let mut hs = es384("h");
        hs["alg"] = json!("HS256");
        let mut no_kid = es384("x");
        no_kid.as_object_mut().unwrap().remove("kid");
        let cases = [
            (json!([]), "expected an object"),
            (json!({ "keys": [] }), "between 1 and"),
            (json!({ "keys": [private] }), "private member `d`"),
            (json!({ "keys": [es384("a"), es384("a")] }), "duplicate kid"),
            (json!({ "keys": [es256_only] }), "RS384 or ES384"),
            (json!({ "keys": [mismatched] }), "does not fit"),
            (json!({ "keys": [hs] }), "not allowed"),
            (json!({ "keys": [no_kid] }), "kid"),
            (
                json!({ "keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "s"}] }),
                "private member `k`",
            ),
            (
                json!({ "keys": [{"kty": "oct", "kid": "s"}] }),
                "not allowed",
            ),
            (json!({ "keys": [rsa("small", 1024)] }), "at least 2048"),
            (json!({ "keys": [rsa("odd", 2041)] }), "at least 2048"),
            (
                json!({ "keys": [with_exponent(rsa("e3", 2048), &[3])] }),
                "exponent",
            ),
            (
                json!({ "keys": [with_exponent(rsa("even", 2048), &[1, 0, 0])] }),
                "exponent",
            ),
            (
                json!({ "keys": [{"kty": "EC", "crv": "P-384", "kid": "z", "x": "AA", "y": "AA"}] }),
                "unusable",
            ),
        ];
        for (doc, expected) in cases {
            let err = validate(&doc).unwrap_err().to_string();
            assert!(err.contains(expected), "`{err}` should mention {expected}");
        }
    }

    #[test]
    fn public_address_classification() {
        for ip in [
            "127.0.0.1",
            "127.0.0.2",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "224.0.0.1",
        ] {
            assert!(!is_public_address(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "93.184.216.34",
            "8.8.8.8",
            "2606:4700::1111",
            "64:ff9b::808:808",
            "2002:808:808::1",
            "::ffff:8.8.8.8",
        ] {
            assert!(is_public_address(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn url_checks_refuse_before_any_connection() {
        let fetcher = JwksFetcher::new(None, false).unwrap();
        for url in [
            "http://keys.example.com/jwks",
            "https://127.0.0.1/jwks",
            "https://[::1]/jwks",
            "https://10.0.0.8/jwks",
            "https://169.254.169.254/latest",
            "https://u:p@keys.example.com/",
            "ftp://keys.example.com/",
        ] {
            assert!(
                matches!(fetcher.check_url(url), Err(JwksError::UrlNotAllowed(_))),
                "{url}"
            );
        }
        assert!(fetcher
            .check_url("https://keys.example.com/jwks.json")
            .is_ok());
        let loopback_ok = JwksFetcher::new(None, true).unwrap();
        assert!(loopback_ok.check_url("https://127.0.0.1:8443/jwks").is_ok());
        assert!(loopback_ok.check_url("https://10.0.0.8/jwks").is_err());
    }

    #[test]
    fn cache_control_bounds_the_cache() {
        assert_eq!(
            cache_lifetime("public, max-age=300"),
            Some(Duration::from_secs(300))
        );
        assert_eq!(cache_lifetime("no-store"), None);
        assert_eq!(cache_lifetime("max-age=60, no-cache"), None);
        assert_eq!(cache_lifetime("public"), None);
        assert_eq!(cache_lifetime("max-age=315360000"), Some(MAX_CACHE));
    }
}
