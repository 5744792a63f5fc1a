//! This node's in-memory caches, and the rules that keep them coherent with the database and
//! with every other node (issue 9 "several nodes", issue 10 "introspection from a bounded
//! cache of verified tokens").
//!
//! What is cached:
//! - **verified access tokens** (by SHA-256 of the token): the introspection answer of a live
//!   token, so a resource server's repeated question costs no signature check and no database
//!   trip; plus tokens known to be dead for good (bad signature, expired, revoked);
//! - **client registrations** (by client id) with their secret hashes and parsed inline keys,
//!   so client authentication costs no database trip.
//!
//! Why a cached answer is never stale by more than about a second:
//! 1. every write that could change an answer publishes a [`Change`] in its own transaction
//!    (`store::changes`); this node applies its own changes right after commit, before it
//!    answers, and every node receives everyone's changes through the database (PostgreSQL
//!    NOTIFY, or SQLite's `changes` table) — see [`spawn_listener`];
//! 2. the cache is **trusted only on a lease**: the listener proves every [`POLL`] that it is
//!    still receiving changes (a round trip on its connection: PostgreSQL sends pending
//!    notifications before answering), and each proof extends trust to [`LEASE`] after the
//!    moment the proof started. A node whose listener loses its connection stops trusting its
//!    caches within the lease and answers from the database until it has listened again and
//!    flushed everything — it never serves what it can no longer vouch for;
//! 3. a read that raced a change cannot poison the cache: an entry is stored only if no change
//!    arrived since the read began (an epoch counter, checked under the shard lock).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::store::changes::{Change, ChangeSink};

mod listener;
pub use listener::{spawn_listener, LISTENER_NAME};

/// How often the listener proves it is connected (and, on SQLite, reads new changes).
pub const POLL: Duration = Duration::from_millis(200);
/// How long after a successful proof began the caches stay trusted.
pub const LEASE: Duration = Duration::from_millis(1000);
/// At most this many verified tokens are cached (about 1 KiB each).
pub const TOKEN_CAPACITY: usize = 16_384;
/// At most this many dead tokens are remembered.
pub const DEAD_CAPACITY: usize = 16_384;
/// At most this many client registrations are cached.
pub const CLIENT_CAPACITY: usize = 4_096;
/// No entry is used longer than this after it was read from the database, whatever the change
/// feed says: a bound for writes that do not publish (a node of a release before the change
/// feed during a rolling upgrade, or an operator's hand-written SQL).
pub const MAX_AGE: Duration = Duration::from_secs(60);

const SHARDS: usize = 16;

/// The node's caches and their trust state. One per `AppState`; the database's change sink.
pub struct Coherence {
    base: Instant,
    /// Milliseconds after `base` until which the caches may be used (0: not trusted).
    trusted_until_ms: AtomicU64,
    /// Bumped before every invalidation; see rule 3 in the module docs.
    epoch: AtomicU64,
    pub tokens: Sharded<CachedToken>,
    pub dead: Sharded<()>,
    pub clients: Sharded<Arc<CachedClient>>,
    /// Woken when the signing keys changed anywhere.
    pub keys_changed: tokio::sync::Notify,
}

impl std::fmt::Debug for Coherence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coherence")
            .field("trusted", &self.trusted())
            .field("epoch", &self.epoch())
            .finish()
    }
}

impl Default for Coherence {
    fn default() -> Self {
        Self::new()
    }
}

impl Coherence {
    /// Caches that are not trusted until a listener has proven itself.
    pub fn new() -> Self {
        Self::starting_at(Instant::now())
    }

    fn starting_at(base: Instant) -> Self {
        Self {
            base,
            trusted_until_ms: AtomicU64::new(0),
            epoch: AtomicU64::new(0),
            tokens: Sharded::new(TOKEN_CAPACITY),
            dead: Sharded::new(DEAD_CAPACITY),
            clients: Sharded::new(CLIENT_CAPACITY),
            keys_changed: tokio::sync::Notify::new(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether cached answers may be used now (rule 2).
    pub fn trusted(&self) -> bool {
        self.now_ms() < self.trusted_until_ms.load(Ordering::SeqCst)
    }

    /// The listener proved, by a round trip that began at `began`, that it has received every
    /// change committed before then.
    pub fn extend_lease(&self, began: Instant) {
        let began_ms =
            u64::try_from(began.saturating_duration_since(self.base).as_millis()).unwrap_or(0);
        let until = began_ms.saturating_add(u64::try_from(LEASE.as_millis()).unwrap_or(1000));
        self.trusted_until_ms.fetch_max(until, Ordering::SeqCst);
    }

    /// Stops trusting the caches at once (the listener lost its connection).
    pub fn distrust(&self) {
        self.trusted_until_ms.store(0, Ordering::SeqCst);
    }

    /// The current epoch: read it before a database read whose result may be cached.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Forgets everything (after a gap in the change feed, or an unknown change).
    pub fn flush(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.tokens.clear();
        self.clients.clear();
        // A key rotation may be among what was missed.
        self.keys_changed.notify_one();
        // Dead tokens stay dead: nothing revives a bad signature or an expiry.
    }

    /// A cached verified token, if the caches are trusted.
    pub fn token(&self, hash: &[u8; 32]) -> Option<CachedToken> {
        if !self.trusted() {
            return None;
        }
        self.tokens
            .get(hash)
            .filter(|t| t.loaded_at.elapsed() < MAX_AGE)
    }

    /// Whether the token is known to be dead for good (needs no trust: it never changes back).
    pub fn is_dead(&self, hash: &[u8; 32]) -> bool {
        self.dead.get(hash).is_some()
    }

    /// Remembers a live token read at `epoch` (see rule 3).
    pub fn remember_token(&self, hash: [u8; 32], entry: CachedToken, epoch: u64) {
        if self.trusted() {
            self.tokens
                .insert_if(hash, entry, || self.epoch.load(Ordering::SeqCst) == epoch);
        }
    }

    /// Remembers a token that can never be live again.
    pub fn remember_dead(&self, hash: [u8; 32]) {
        self.tokens.remove(&hash);
        self.dead.insert_if(hash, (), || true);
    }

    /// A cached client registration, if the caches are trusted.
    pub fn client(&self, client_id: &str) -> Option<Arc<CachedClient>> {
        if !self.trusted() {
            return None;
        }
        self.clients
            .get(&client_key(client_id))
            .filter(|c| c.loaded_at.elapsed() < MAX_AGE)
    }

    /// Remembers a client registration read at `epoch`.
    pub fn remember_client(&self, client: Arc<CachedClient>, epoch: u64) {
        if self.trusted() {
            let key = client_key(&client.client.client_id);
            self.clients
                .insert_if(key, client, || self.epoch.load(Ordering::SeqCst) == epoch);
        }
    }
}

impl ChangeSink for Coherence {
    fn apply(&self, changes: &[Change]) {
        // The epoch moves first: a read that began before this change cannot store its result.
        self.epoch.fetch_add(1, Ordering::SeqCst);
        for change in changes {
            match change {
                Change::Token(jti) => self.tokens.retain(|t| t.jti != *jti),
                Change::Family(id) => self.tokens.retain(|t| t.family != *id),
                Change::Client(id) => {
                    self.tokens.retain(|t| t.client != *id);
                    self.clients.remove(&client_key(id));
                }
                Change::User(id) => self.tokens.retain(|t| t.user.as_deref() != Some(id)),
                Change::Session(id) => self.tokens.retain(|t| t.session.as_deref() != Some(id)),
                Change::Keys => {
                    self.tokens.clear();
                    // A stored permit: a reload under way when this arrives runs once more.
                    self.keys_changed.notify_one();
                }
            }
        }
    }
}

fn client_key(client_id: &str) -> [u8; 32] {
    crate::crypto::sha256(client_id.as_bytes())
}

/// A live access token's introspection answer and what it depends on.
#[derive(Debug, Clone)]
pub struct CachedToken {
    /// The serialized RFC 7662 answer.
    pub body: actix_web::web::Bytes,
    /// The token's audience: only resource servers serving it may see the answer.
    pub aud: String,
    /// The answer holds until then (Ward clock seconds): the token's expiry, or earlier when an
    /// `online_access` session would idle out first.
    pub valid_until: i64,
    pub jti: String,
    pub family: String,
    pub client: String,
    pub user: Option<String>,
    pub session: Option<String>,
    /// When the answer was read from the database (see [`MAX_AGE`]).
    pub loaded_at: Instant,
}

/// A client registration as client authentication needs it.
#[derive(Debug, Clone)]
pub struct CachedClient {
    pub client: crate::clients::Client,
    /// Secret hashes and their expiries (rotation grace).
    pub secrets: Vec<(String, Option<i64>)>,
    /// Keys from an inline JWKS, parsed once (`None`: no inline JWKS, or it failed to parse —
    /// then every request parses it and is refused with the reason).
    pub inline_keys: Option<Vec<crate::clients::jwks::ClientKey>>,
    /// When the registration was read from the database (see [`MAX_AGE`]).
    pub loaded_at: Instant,
}

/// A bounded map from 32-byte keys, split in shards so concurrent requests rarely contend.
pub struct Sharded<V> {
    shards: Vec<Mutex<HashMap<[u8; 32], V>>>,
    per_shard: usize,
}

impl<V: Clone> Sharded<V> {
    pub fn new(capacity: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
        }
    }

    fn shard(&self, key: &[u8; 32]) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], V>> {
        let index = usize::from(key[0]) % SHARDS;
        // A poisoned shard only means a panic elsewhere held it; the map itself is intact.
        self.shards[index]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn get(&self, key: &[u8; 32]) -> Option<V> {
        self.shard(key).get(key).cloned()
    }

    /// Inserts when `still_valid()` holds under the shard lock; when the shard is full an
    /// arbitrary entry makes room (entries are cheap to recompute; the bound is what matters).
    pub fn insert_if(&self, key: [u8; 32], value: V, still_valid: impl FnOnce() -> bool) {
        let mut shard = self.shard(&key);
        if !still_valid() {
            return;
        }
        if shard.len() >= self.per_shard && !shard.contains_key(&key) {
            if let Some(victim) = shard.keys().next().copied() {
                shard.remove(&victim);
            }
        }
        shard.insert(key, value);
    }

    pub fn remove(&self, key: &[u8; 32]) {
        self.shard(key).remove(key);
    }

    pub fn retain(&self, keep: impl Fn(&V) -> bool) {
        for shard in &self.shards {
            shard
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .retain(|_, v| keep(v));
        }
    }

    pub fn clear(&self) {
        for shard in &self.shards {
            shard
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clear();
        }
    }

    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                s.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .len()
            })
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(jti: &str, family: &str, client: &str, user: Option<&str>) -> CachedToken {
        CachedToken {
            body: actix_web::web::Bytes::from_static(b"{}"),
            aud: "https://fhir.example/r4".into(),
            valid_until: 100,
            jti: jti.into(),
            family: family.into(),
            client: client.into(),
            user: user.map(str::to_owned),
            session: Some(format!("session-of-{jti}")),
            loaded_at: Instant::now(),
        }
    }

    fn key(n: u8) -> [u8; 32] {
        crate::crypto::sha256(&[n])
    }

    fn trusted() -> Coherence {
        let c = Coherence::new();
        c.extend_lease(Instant::now());
        c
    }

    #[test]
    fn nothing_is_served_before_the_listener_proves_itself() {
        let c = Coherence::new();
        let epoch = c.epoch();
        c.remember_token(key(1), token("a", "f", "app", None), epoch);
        assert!(c.token(&key(1)).is_none());
        c.extend_lease(Instant::now());
        c.remember_token(key(1), token("a", "f", "app", None), c.epoch());
        assert!(c.token(&key(1)).is_some());
    }

    #[test]
    fn trust_ends_when_the_lease_runs_out_or_is_withdrawn() {
        let now = Instant::now();
        let base = now
            .checked_sub(Duration::from_secs(10))
            .expect("the monotonic clock has run for 10 s");
        let c = Coherence::starting_at(base);
        c.extend_lease(now);
        c.remember_token(key(1), token("a", "f", "app", None), c.epoch());
        c.distrust();
        assert!(
            c.token(&key(1)).is_none(),
            "a distrusted cache serves nothing"
        );
        // A proof that began more than a lease ago does not restore trust.
        let long_ago = now - (LEASE + Duration::from_millis(50));
        c.extend_lease(long_ago);
        assert!(!c.trusted());
        c.extend_lease(Instant::now());
        assert!(c.trusted());
    }

    #[test]
    fn each_change_drops_exactly_the_entries_that_depend_on_it() {
        let c = trusted();
        let entries = [
            (1, token("t1", "f1", "app1", Some("u1"))),
            (2, token("t2", "f2", "app1", Some("u2"))),
            (3, token("t3", "f3", "app2", Some("u1"))),
            (4, token("t4", "f4", "app2", None)),
        ];
        let fill = |c: &Coherence| {
            for (n, t) in &entries {
                c.remember_token(key(*n), t.clone(), c.epoch());
            }
        };
        let alive = |c: &Coherence| -> Vec<u8> {
            (1..=4).filter(|n| c.token(&key(*n)).is_some()).collect()
        };
        for (change, left) in [
            (Change::Token("t1".into()), vec![2, 3, 4]),
            (Change::Family("f2".into()), vec![1, 3, 4]),
            (Change::Client("app1".into()), vec![3, 4]),
            (Change::User("u1".into()), vec![2, 4]),
            (Change::Session("session-of-t4".into()), vec![1, 2, 3]),
            (Change::Keys, vec![]),
        ] {
            c.tokens.clear();
            fill(&c);
            assert_eq!(alive(&c), vec![1, 2, 3, 4]);
            c.apply(std::slice::from_ref(&change));
            assert_eq!(alive(&c), left, "{change:?}");
        }
    }

    #[test]
    fn a_read_that_raced_a_change_is_not_stored() {
        let c = trusted();
        let epoch = c.epoch();
        // The change commits while the read is under way…
        c.apply(&[Change::Family("f1".into())]);
        // …so the read's (possibly stale) answer is dropped.
        c.remember_token(key(1), token("t1", "f1", "app", None), epoch);
        assert!(c.token(&key(1)).is_none());
    }

    #[test]
    fn client_changes_drop_the_registration_and_its_tokens() {
        let c = trusted();
        let settings = crate::clients::model::validate(&crate::clients::model::ClientSpec {
            client_id: Some("app1".into()),
            name: "App".into(),
            kind: Some("public".into()),
            redirect_uris: vec!["https://app.example.com/callback".into()],
            scope: "launch openid patient/Observation.rs".into(),
            ..Default::default()
        })
        .expect("valid registration");
        let client = crate::clients::Client {
            client_id: "app1".into(),
            settings,
            enabled: true,
            created_at: 0,
            updated_at: 0,
            version: 1,
        };
        c.remember_client(
            Arc::new(CachedClient {
                client,
                secrets: vec![],
                inline_keys: None,
                loaded_at: Instant::now(),
            }),
            c.epoch(),
        );
        assert!(c.client("app1").is_some());
        c.apply(&[Change::Client("app1".into())]);
        assert!(c.client("app1").is_none());
    }

    #[test]
    fn entries_older_than_the_maximum_age_are_not_used() {
        let c = trusted();
        let mut old = token("t1", "f1", "app", None);
        old.loaded_at = Instant::now()
            .checked_sub(MAX_AGE + Duration::from_secs(1))
            .expect("the monotonic clock has run for a minute");
        c.remember_token(key(1), old, c.epoch());
        assert!(c.token(&key(1)).is_none());
    }

    #[test]
    fn dead_tokens_stay_dead_through_a_flush_and_shards_stay_bounded() {
        let c = trusted();
        c.remember_dead(key(9));
        c.flush();
        assert!(c.is_dead(&key(9)));
        let small: Sharded<()> = Sharded::new(32);
        for n in 0..=255u8 {
            small.insert_if(key(n), (), || true);
        }
        assert!(small.len() <= 32, "{}", small.len());
    }
}
