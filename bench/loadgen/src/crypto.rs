//! Keys and client assertions (RFC 7523, as SMART Backend Services profiles them), plus two
//! in-process bounds the report compares Ward against: ES384 verifications per second and
//! argon2id hashes per second on one core.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use josekit::jwk::Jwk;
use josekit::jws::{JwsSigner, JwsVerifier, ES384, RS384};
use rand::RngCore;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// The form value announcing a JWT client assertion.
pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// `exp` is set this far ahead of signing: the most SMART (and Ward) accept.
pub const ASSERTION_LIFETIME_SECONDS: i64 = 300;

/// The supported assertion algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
#[clap(rename_all = "UPPER")]
pub enum Alg {
    Rs384,
    Es384,
}

impl Alg {
    pub fn name(self) -> &'static str {
        match self {
            Alg::Rs384 => "RS384",
            Alg::Es384 => "ES384",
        }
    }
}

/// `n` random bytes as base64url (jti, PKCE verifiers, state).
pub fn random_token(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    rand::thread_rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// PKCE (RFC 7636): a verifier and its S256 challenge.
pub fn pkce() -> (String, String) {
    let verifier = random_token(32);
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Writes `rs384.private.json`, `es384.private.json` (private JWKs with `kid` and `alg`) and
/// `jwks.json` (both public keys: what `ward client add --jwks` registers) into `dir`.
pub fn keygen(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let rs = RS384.generate_key_pair(2048)?;
    let es = ES384.generate_key_pair()?;
    let mut public = Vec::new();
    for (alg, kid, mut private, mut public_jwk, file) in [
        (
            "RS384",
            "bench-rs384",
            rs.to_jwk_private_key(),
            rs.to_jwk_public_key(),
            "rs384.private.json",
        ),
        (
            "ES384",
            "bench-es384",
            es.to_jwk_private_key(),
            es.to_jwk_public_key(),
            "es384.private.json",
        ),
    ] {
        for jwk in [&mut private, &mut public_jwk] {
            jwk.set_key_id(kid);
            jwk.set_algorithm(alg);
        }
        write_private(&dir.join(file), &private.to_string())?;
        public.push(serde_json::to_value(&public_jwk)?);
    }
    std::fs::write(dir.join("jwks.json"), json!({ "keys": public }).to_string())?;
    Ok(())
}

fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(text.as_bytes())?;
    Ok(())
}

/// Signs client assertions for one client with one private key.
pub struct AssertionSigner {
    signer: Box<dyn JwsSigner>,
    alg: Alg,
    kid: String,
    client_id: String,
    audience: String,
}

impl AssertionSigner {
    /// Loads a private JWK file; its `kid` goes into every header. `audience` is Ward's token
    /// endpoint URL.
    pub fn from_file(path: &Path, alg: Alg, client_id: &str, audience: &str) -> Result<Self> {
        let text =
            std::fs::read(path).with_context(|| format!("reading key {}", path.display()))?;
        let jwk =
            Jwk::from_bytes(&text).with_context(|| format!("{} is not a JWK", path.display()))?;
        let kid = jwk
            .key_id()
            .ok_or_else(|| anyhow!("{} has no kid", path.display()))?
            .to_owned();
        let signer: Box<dyn JwsSigner> = match alg {
            Alg::Rs384 => Box::new(RS384.signer_from_jwk(&jwk)?),
            Alg::Es384 => Box::new(ES384.signer_from_jwk(&jwk)?),
        };
        Ok(Self {
            signer,
            alg,
            kid,
            client_id: client_id.to_owned(),
            audience: audience.to_owned(),
        })
    }

    /// A fresh assertion: `iss` = `sub` = client id, `aud` the token endpoint, a random `jti`,
    /// and `iat`/`exp` as integers (Ward refuses fractional NumericDates, which josekit's
    /// `set_expires_at` writes, so the JWT is assembled here rather than by josekit's builder).
    pub fn sign(&self) -> Result<String> {
        let now = unix_now();
        let header = json!({ "alg": self.alg.name(), "kid": self.kid, "typ": "JWT" });
        let payload = json!({
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": self.audience,
            "jti": random_token(16),
            "iat": now,
            "exp": now + ASSERTION_LIFETIME_SECONDS,
        });
        sign_compact(self.signer.as_ref(), &header, &payload)
    }
}

fn sign_compact(signer: &dyn JwsSigner, header: &Value, payload: &Value) -> Result<String> {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(payload.to_string())
    );
    let signature = signer.sign(input.as_bytes())?;
    Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature)))
}

/// ES384 verifications per second on this thread for a typical Backend Services assertion:
/// the ceiling for ES384 `client_credentials` on one core. Reports both the raw verification
/// and verification with the key parsed each time (an upper and a lower bound for a server
/// that does or does not cache its verifiers).
pub fn p384_verify_bound(seconds: f64) -> Result<Value> {
    let pair = ES384.generate_key_pair()?;
    let signer = ES384.signer_from_jwk(&pair.to_jwk_private_key())?;
    let public = pair.to_jwk_public_key();
    let now = unix_now();
    let header = json!({ "alg": "ES384", "kid": "bench-es384", "typ": "JWT" });
    let payload = json!({
        "iss": "bench-backend", "sub": "bench-backend", "aud": "http://localhost:8080/token",
        "jti": random_token(16), "iat": now, "exp": now + ASSERTION_LIFETIME_SECONDS,
    });
    let jwt = sign_compact(&signer, &header, &payload)?;
    let (input, sig) = jwt.rsplit_once('.').context("compact JWT")?;
    let signature = URL_SAFE_NO_PAD.decode(sig)?;
    let verifier = ES384.verifier_from_jwk(&public)?;

    let budget = Duration::from_secs_f64(seconds.max(0.2) / 2.0);
    let raw = rate(budget, || {
        verifier
            .verify(input.as_bytes(), &signature)
            .map_err(anyhow::Error::from)
    })?;
    let with_key = rate(budget, || {
        ES384
            .verifier_from_jwk(&public)?
            .verify(input.as_bytes(), &signature)
            .map_err(anyhow::Error::from)
    })?;
    Ok(json!({
        "scenario": "p384-verify-bound",
        "verifies_per_sec": crate::driver::round(raw, 1),
        "us_per_verify": crate::driver::round(1e6 / raw, 1),
        "verifies_per_sec_with_key_parse": crate::driver::round(with_key, 1),
        "seconds": crate::driver::round(seconds, 2),
    }))
}

/// Ward's password hash (argon2id, m = 19456 KiB, t = 2, p = 1) per second on this thread:
/// the ceiling for sign-ins per pinned core.
pub fn argon2_bound(seconds: f64) -> Result<Value> {
    use argon2::{Algorithm, Argon2, Params, Version};
    let params = Params::new(19_456, 2, 1, Some(32)).map_err(|e| anyhow!("{e}"))?;
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
    let salt = random_token(16);
    let mut out = [0u8; 32];
    let per_sec = rate(Duration::from_secs_f64(seconds.max(0.2)), || {
        argon
            .hash_password_into(b"violet tractor sings at dawn", salt.as_bytes(), &mut out)
            .map_err(|e| anyhow!("{e}"))
    })?;
    Ok(json!({
        "scenario": "argon2-bound",
        "hashes_per_sec": crate::driver::round(per_sec, 1),
        "ms_per_hash": crate::driver::round(1000.0 / per_sec, 2),
        "seconds": crate::driver::round(seconds, 2),
    }))
}

/// Runs `f` repeatedly for about `budget` (at least three times); returns calls per second.
fn rate(budget: Duration, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    let start = Instant::now();
    let mut n = 0u64;
    while n < 3 || start.elapsed() < budget {
        f()?;
        n += 1;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}
