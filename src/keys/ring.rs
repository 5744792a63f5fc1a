//! The in-memory key ring every node keeps: opened signing keys and the pre-serialised JWKS,
//! reloaded from the database every few seconds so rotations reach every node.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use josekit::jwk::Jwk;
use josekit::jws::{JwsSigner, JwsVerifier, ES256, RS256};
use serde_json::json;

use super::{private_aad, schedule, KeyAlg, KeyError, KeyMeta, KeyState, KeyTiming};
use crate::crypto::seal::Sealer;
use crate::crypto::sha256_b64;
use crate::store::signing_keys::{self, SigningKeyRow};
use crate::store::DbConnection;

/// A key that may sign now.
#[derive(Clone, Debug)]
pub struct Signer {
    pub kid: String,
    pub alg: KeyAlg,
    pub inner: Arc<dyn JwsSigner>,
}

/// The published key set, serialised once per reload; `/jwks` serves these bytes.
#[derive(Debug, Clone)]
pub struct JwksDocument {
    pub body: String,
    pub etag: String,
}

#[derive(Debug)]
struct LoadedKey {
    meta: KeyMeta,
    alg: KeyAlg,
    public: serde_json::Value,
    signer: Arc<dyn JwsSigner>,
    verifier: Arc<dyn JwsVerifier>,
}

#[derive(Debug)]
struct Snapshot {
    /// The read of the key rows it was built from (see `KeyRing::reads`).
    read: u64,
    keys: Vec<Arc<LoadedKey>>,
    jwks: Arc<JwksDocument>,
}

#[derive(Debug)]
pub struct KeyRing {
    sealer: Sealer,
    timing: KeyTiming,
    current: RwLock<Arc<Snapshot>>,
    /// Numbers each read of the key rows, in the order they began. Reloads can overlap (the
    /// periodic one, one woken by a change, a rotation made in this process): a read begun
    /// later sees at least what an earlier one saw, so the ring keeps the latest-begun read,
    /// whichever finishes last.
    reads: AtomicU64,
}

impl KeyRing {
    pub fn load(
        conn: &mut DbConnection,
        sealer: Sealer,
        timing: KeyTiming,
        now: i64,
    ) -> Result<Self, KeyError> {
        let ring = Self {
            sealer,
            timing,
            current: RwLock::new(Arc::new(Snapshot {
                read: 0,
                keys: Vec::new(),
                jwks: Arc::new(JwksDocument {
                    body: String::new(),
                    etag: String::new(),
                }),
            })),
            reads: AtomicU64::new(0),
        };
        ring.reload(conn, now)?;
        Ok(ring)
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        match self.current.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Reads the key rows again; only keys not already open are unsealed. A reload that began
    /// before another one already installed is dropped.
    pub fn reload(&self, conn: &mut DbConnection, now: i64) -> Result<(), KeyError> {
        let read = self.begin_read();
        let rows = signing_keys::all(conn)?;
        self.install(read, rows, now)
    }

    fn begin_read(&self) -> u64 {
        self.reads.fetch_add(1, Ordering::SeqCst) + 1
    }

    fn install(&self, read: u64, rows: Vec<SigningKeyRow>, now: i64) -> Result<(), KeyError> {
        let previous = self.snapshot();
        let known: HashMap<&str, &Arc<LoadedKey>> = previous
            .keys
            .iter()
            .map(|k| (k.meta.kid.as_str(), k))
            .collect();
        let mut keys = Vec::with_capacity(rows.len());
        for row in &rows {
            match known.get(row.kid.as_str()) {
                Some(loaded) => keys.push(Arc::clone(loaded)),
                None => keys.push(Arc::new(self.open(row)?)),
            }
        }
        let jwks = Arc::new(self.publish(&keys, now));
        let next = Arc::new(Snapshot { read, keys, jwks });
        let mut guard = self.current.write().unwrap_or_else(|e| e.into_inner());
        if guard.read < read {
            *guard = next;
        }
        Ok(())
    }

    fn open(&self, row: &SigningKeyRow) -> Result<LoadedKey, KeyError> {
        let alg = KeyAlg::parse(&row.alg)
            .ok_or_else(|| KeyError::Crypto(format!("unknown key algorithm {}", row.alg)))?;
        let private = self
            .sealer
            .open(private_aad(&row.kid), &row.private_jwk_sealed)?;
        let jwk = Jwk::from_bytes(&private)?;
        let signer: Arc<dyn JwsSigner> = match alg {
            KeyAlg::Es256 => Arc::new(ES256.signer_from_jwk(&jwk)?),
            KeyAlg::Rs256 => Arc::new(RS256.signer_from_jwk(&jwk)?),
        };
        let public: serde_json::Value = serde_json::from_str(&row.public_jwk)
            .map_err(|e| KeyError::Crypto(format!("public JWK of {}: {e}", row.kid)))?;
        // The public half is stored in clear; it must be the sealed private key's own public
        // half, or an edited row could make Ward trust a stranger's signatures.
        let derived = match alg {
            KeyAlg::Es256 => josekit::jwk::alg::ec::EcKeyPair::from_jwk(&jwk)?.to_jwk_public_key(),
            KeyAlg::Rs256 => {
                josekit::jwk::alg::rsa::RsaKeyPair::from_jwk(&jwk)?.to_jwk_public_key()
            }
        };
        for member in ["kty", "crv", "x", "y", "n", "e"] {
            let stored = public.get(member).and_then(|v| v.as_str());
            let own = derived.parameter(member).and_then(|v| v.as_str());
            let own = if member == "kty" {
                Some(derived.key_type())
            } else {
                own
            };
            if stored != own {
                return Err(KeyError::Crypto(format!(
                    "public JWK of {} does not match its sealed private key",
                    row.kid
                )));
            }
        }
        let public_jwk = Jwk::from_bytes(row.public_jwk.as_bytes())?;
        let verifier: Arc<dyn JwsVerifier> = match alg {
            KeyAlg::Es256 => Arc::new(ES256.verifier_from_jwk(&public_jwk)?),
            KeyAlg::Rs256 => Arc::new(RS256.verifier_from_jwk(&public_jwk)?),
        };
        Ok(LoadedKey {
            meta: KeyMeta::from(row),
            alg,
            public,
            signer,
            verifier,
        })
    }

    fn publish(&self, keys: &[Arc<LoadedKey>], now: i64) -> JwksDocument {
        let metas: Vec<KeyMeta> = keys.iter().map(|k| k.meta.clone()).collect();
        let statuses = schedule(&metas, now, self.timing.max_token_lifetime_seconds);
        let published: Vec<&serde_json::Value> = keys
            .iter()
            .filter(|k| {
                statuses
                    .iter()
                    .any(|s| s.kid == k.meta.kid && s.published())
            })
            .map(|k| &k.public)
            .collect();
        let body = json!({ "keys": published }).to_string();
        let etag = format!("\"{}\"", sha256_b64(body.as_bytes()));
        JwksDocument { body, etag }
    }

    /// The key that signs for `alg` at `now` (decided on each call, so activation is on time
    /// even between reloads).
    pub fn signer(&self, alg: KeyAlg, now: i64) -> Result<Signer, KeyError> {
        let snapshot = self.snapshot();
        let metas: Vec<KeyMeta> = snapshot.keys.iter().map(|k| k.meta.clone()).collect();
        let active = schedule(&metas, now, self.timing.max_token_lifetime_seconds)
            .into_iter()
            .find(|s| s.state == KeyState::Active && s.alg == alg.as_str())
            .ok_or(KeyError::NoActiveKey(alg.as_str()))?;
        snapshot
            .keys
            .iter()
            .find(|k| k.meta.kid == active.kid && k.alg == alg)
            .map(|k| Signer {
                kid: k.meta.kid.clone(),
                alg,
                inner: Arc::clone(&k.signer),
            })
            .ok_or(KeyError::NoActiveKey(alg.as_str()))
    }

    /// The verifier of one of Ward's own keys (any state: a token outlives its key's
    /// activity), for tokens Ward issued and now reads back.
    pub fn verifier(&self, kid: &str) -> Option<(KeyAlg, Arc<dyn JwsVerifier>)> {
        self.snapshot()
            .keys
            .iter()
            .find(|k| k.meta.kid == kid)
            .map(|k| (k.alg, Arc::clone(&k.verifier)))
    }

    pub fn jwks(&self) -> Arc<JwksDocument> {
        Arc::clone(&self.snapshot().jwks)
    }

    pub fn timing(&self) -> KeyTiming {
        self.timing
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::AuditContext;
    use crate::clock::{Clock, ManualClock};
    use crate::config::DatabaseTarget;
    use crate::crypto::seal::MasterKey;
    use crate::store::{migrate, Db};

    /// Two reloads overlap and the one that began first finishes last: the ring keeps what the
    /// later one read (a rotation it saw), not the older rows.
    #[test]
    fn a_reload_that_began_earlier_never_replaces_a_later_one() {
        let dir = tempfile::tempdir().unwrap();
        let target = DatabaseTarget::Sqlite(dir.path().join("ward.db"));
        let db = Db::open(&target, 2, std::time::Duration::from_secs(5)).unwrap();
        let mut conn = db.conn().unwrap();
        migrate::run_pending(&mut conn).unwrap();
        let sealer = Sealer::new(&MasterKey::generate());
        let clock = ManualClock::at_secs(1_800_000_000);
        let ctx = AuditContext::cli();
        crate::keys::ensure_initial_keys(&mut conn, &sealer, &clock, &ctx).unwrap();
        let timing = KeyTiming {
            jwks_cache_seconds: 300,
            max_token_lifetime_seconds: 3600,
        };
        let now = clock.now_secs();
        let ring = KeyRing::load(&mut conn, sealer.clone(), timing, now).unwrap();

        let earlier = ring.begin_read();
        let before_rotation = signing_keys::all(&mut conn).unwrap();
        clock.set_secs(now + 10);
        let now = clock.now_secs();
        let rotated = crate::keys::rotate(
            &mut conn,
            &sealer,
            &clock,
            &ctx,
            timing,
            &[KeyAlg::Es256],
            true,
        )
        .unwrap();
        ring.reload(&mut conn, now).unwrap();
        let new = rotated[0].kid.clone();
        assert_eq!(ring.signer(KeyAlg::Es256, now).unwrap().kid, new);

        ring.install(earlier, before_rotation, now).unwrap();
        assert_eq!(ring.signer(KeyAlg::Es256, now).unwrap().kid, new);
        assert!(ring.jwks().body.contains(&new));
    }
}
