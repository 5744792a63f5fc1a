//! Signing keys (DESIGN.md §5): an ES256 key signs access tokens (RFC 9068), an RS256 key
//! signs ID tokens (the OpenID Connect default every relying party supports).
//!
//! Keys are generated once per installation under a database lock, stored with the private
//! JWK sealed under the master key, and published at `/jwks`. Rotation publishes the next key
//! at once but lets it sign only after the JWKS cache lifetime has passed, so every verifier has
//! it before the first token it signs; a superseded key stays published until the longest-lived
//! token it could have signed has expired. [`schedule`] is that rule as a pure function.

mod ring;
mod schedule;

pub use ring::{KeyRing, Signer};
pub use schedule::{schedule, KeyMeta, KeyState, KeyStatus};

use josekit::jwk::alg::ec::EcCurve;
use josekit::jwk::{Jwk, KeyPair};
use josekit::jws::{ES256, RS256};

use crate::audit::{self, AuditContext, AuditEvent, KeyCreationReason};
use crate::clock::Clock;
use crate::crypto::random_token;
use crate::crypto::seal::{Aad, SealError, Sealer};
use crate::store::signing_keys::{self, SigningKeyRow};
use crate::store::{
    lock_for_transaction, write_transaction, AdvisoryLock, DbConnection, StoreError,
};

/// The algorithms Ward signs with, one key family each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeyAlg {
    /// Access tokens: cheap to sign and verify.
    Es256,
    /// ID tokens.
    Rs256,
}

impl KeyAlg {
    pub const ALL: [KeyAlg; 2] = [KeyAlg::Es256, KeyAlg::Rs256];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Es256 => "ES256",
            Self::Rs256 => "RS256",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|a| a.as_str().eq_ignore_ascii_case(name))
    }

    pub fn purpose(self) -> &'static str {
        match self {
            Self::Es256 => "access tokens",
            Self::Rs256 => "ID tokens",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot open a sealed signing key: {0}")]
    Seal(#[from] SealError),
    #[error("key material problem: {0}")]
    Crypto(String),
    #[error("no {0} signing key is active")]
    NoActiveKey(&'static str),
}

impl From<josekit::JoseError> for KeyError {
    fn from(e: josekit::JoseError) -> Self {
        Self::Crypto(e.to_string())
    }
}

/// Durations that decide when keys sign and when they stop being published.
#[derive(Debug, Clone, Copy)]
pub struct KeyTiming {
    pub jwks_cache_seconds: i64,
    pub max_token_lifetime_seconds: i64,
}

impl KeyTiming {
    /// How long a rotated key waits before signing: every cached JWKS has expired by then,
    /// with a minute of margin for clock skew between nodes and verifiers.
    pub fn publish_ahead_seconds(&self) -> i64 {
        self.jwks_cache_seconds + 60
    }
}

fn private_aad(kid: &str) -> Aad<'_> {
    Aad {
        table: "signing_keys",
        column: "private_jwk_sealed",
        row: kid,
    }
}

/// A freshly generated key pair as a row ready to insert (private half sealed).
fn generate(
    alg: KeyAlg,
    sealer: &Sealer,
    now: i64,
    activates_at: i64,
) -> Result<SigningKeyRow, KeyError> {
    let kid = random_token(16);
    let (mut private, mut public): (Jwk, Jwk) = match alg {
        KeyAlg::Es256 => {
            let pair = ES256.generate_key_pair()?;
            (pair.to_jwk_private_key(), pair.to_jwk_public_key())
        }
        KeyAlg::Rs256 => {
            let pair = RS256.generate_key_pair(2048)?;
            (pair.to_jwk_private_key(), pair.to_jwk_public_key())
        }
    };
    for jwk in [&mut private, &mut public] {
        jwk.set_key_id(&kid);
        jwk.set_algorithm(alg.as_str());
        jwk.set_key_use("sig");
    }
    if alg == KeyAlg::Es256 {
        debug_assert_eq!(public.curve(), Some(EcCurve::P256.name()));
    }
    let sealed = sealer.seal(private_aad(&kid), private.to_string().as_bytes())?;
    Ok(SigningKeyRow {
        kid,
        alg: alg.as_str().to_owned(),
        key_use: "sig".to_owned(),
        public_jwk: public.to_string(),
        private_jwk_sealed: sealed,
        created_at: now,
        activates_at,
    })
}

/// Creates the first key of each algorithm that has none, exactly once however many nodes
/// start together (PostgreSQL advisory lock; SQLite's immediate write lock). Returns the kids
/// created.
pub fn ensure_initial_keys(
    conn: &mut DbConnection,
    sealer: &Sealer,
    clock: &dyn Clock,
    ctx: &AuditContext,
) -> Result<Vec<String>, KeyError> {
    // Key generation (RSA especially) is slow; do it before taking the lock, and throw the
    // pair away if another node won the race.
    let existing = signing_keys::all(conn)?;
    let missing: Vec<KeyAlg> = KeyAlg::ALL
        .into_iter()
        .filter(|alg| !existing.iter().any(|r| r.alg == alg.as_str()))
        .collect();
    if missing.is_empty() {
        return Ok(Vec::new());
    }
    let now = clock.now_secs();
    let candidates = missing
        .iter()
        .map(|alg| generate(*alg, sealer, now, now))
        .collect::<Result<Vec<_>, _>>()?;
    write_transaction(conn, |conn| {
        lock_for_transaction(conn, AdvisoryLock::SigningKeys)?;
        let existing = signing_keys::all(conn)?;
        let mut created = Vec::new();
        for row in candidates {
            if existing.iter().any(|r| r.alg == row.alg) {
                continue;
            }
            signing_keys::insert(conn, &row)?;
            audit::append(
                conn,
                clock,
                ctx,
                &AuditEvent::SigningKeyCreated {
                    kid: row.kid.clone(),
                    alg: row.alg.clone(),
                    reason: KeyCreationReason::Initial,
                    activates_at: row.activates_at,
                },
            )?;
            created.push(row.kid);
        }
        Ok(created)
    })
}

/// Publishes a new key for each of `algs`. It signs after the JWKS cache lifetime, or at once
/// when `immediate` (a suspected compromise, accepting that verifiers with a cached JWKS will
/// refetch on the unknown `kid`).
pub fn rotate(
    conn: &mut DbConnection,
    sealer: &Sealer,
    clock: &dyn Clock,
    ctx: &AuditContext,
    timing: KeyTiming,
    algs: &[KeyAlg],
    immediate: bool,
) -> Result<Vec<SigningKeyRow>, KeyError> {
    let now = clock.now_secs();
    let activates_at = if immediate {
        now
    } else {
        now + timing.publish_ahead_seconds()
    };
    let rows = algs
        .iter()
        .map(|alg| generate(*alg, sealer, now, activates_at))
        .collect::<Result<Vec<_>, _>>()?;
    write_transaction(conn, |conn| {
        lock_for_transaction(conn, AdvisoryLock::SigningKeys)?;
        for row in &rows {
            signing_keys::insert(conn, row)?;
            audit::append(
                conn,
                clock,
                ctx,
                &AuditEvent::SigningKeyCreated {
                    kid: row.kid.clone(),
                    alg: row.alg.clone(),
                    reason: if immediate {
                        KeyCreationReason::ImmediateRotation
                    } else {
                        KeyCreationReason::Rotation
                    },
                    activates_at: row.activates_at,
                },
            )?;
        }
        Ok::<_, KeyError>(())
    })?;
    Ok(rows)
}

/// Every key with its state now, for `ward keys list`.
pub fn list(
    conn: &mut DbConnection,
    clock: &dyn Clock,
    timing: KeyTiming,
) -> Result<Vec<KeyStatus>, KeyError> {
    let rows = signing_keys::all(conn)?;
    let metas: Vec<KeyMeta> = rows.iter().map(KeyMeta::from).collect();
    Ok(schedule(
        &metas,
        clock.now_secs(),
        timing.max_token_lifetime_seconds,
    ))
}
