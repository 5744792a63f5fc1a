//! When each key signs and whether it is published: the rotation rule of DESIGN.md §5 as a
//! pure function of the key list and the time.

use serde::Serialize;

use crate::store::signing_keys::SigningKeyRow;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyMeta {
    pub kid: String,
    pub alg: String,
    pub created_at: i64,
    pub activates_at: i64,
}

impl From<&SigningKeyRow> for KeyMeta {
    fn from(row: &SigningKeyRow) -> Self {
        Self {
            kid: row.kid.clone(),
            alg: row.alg.clone(),
            created_at: row.created_at,
            activates_at: row.activates_at,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyState {
    /// Published, not yet signing: verifiers are picking it up.
    Next,
    /// The one key of its algorithm that signs now.
    Active,
    /// Superseded; still published while tokens it signed may be alive.
    Retiring,
    /// Superseded long enough ago that nothing it signed is still valid: not published.
    Retired,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyStatus {
    pub kid: String,
    pub alg: String,
    pub state: KeyState,
    pub created_at: i64,
    pub activates_at: i64,
    /// When a successor took over signing.
    pub superseded_at: Option<i64>,
    /// When it leaves the JWKS.
    pub unpublish_at: Option<i64>,
}

impl KeyStatus {
    pub fn published(&self) -> bool {
        self.state != KeyState::Retired
    }
}

/// The state of every key at `now`. Per algorithm, the active key is the one that activated
/// last (ties broken by kid, so every node agrees); earlier keys are superseded when their
/// successor activates and stay published `max_token_lifetime` longer.
pub fn schedule(keys: &[KeyMeta], now: i64, max_token_lifetime: i64) -> Vec<KeyStatus> {
    let mut sorted: Vec<&KeyMeta> = keys.iter().collect();
    sorted.sort_by(|a, b| {
        (a.alg.as_str(), a.activates_at, a.kid.as_str()).cmp(&(
            b.alg.as_str(),
            b.activates_at,
            b.kid.as_str(),
        ))
    });
    let mut out = Vec::with_capacity(sorted.len());
    for (i, key) in sorted.iter().enumerate() {
        // The next key of the same algorithm that has already activated supersedes this one.
        let successor = sorted[i + 1..]
            .iter()
            .take_while(|k| k.alg == key.alg)
            .find(|k| k.activates_at <= now)
            .map(|k| k.activates_at);
        let (state, superseded_at, unpublish_at) = if key.activates_at > now {
            (KeyState::Next, None, None)
        } else {
            match successor {
                None => (KeyState::Active, None, None),
                Some(at) => {
                    let until = at.saturating_add(max_token_lifetime);
                    let state = if now < until {
                        KeyState::Retiring
                    } else {
                        KeyState::Retired
                    };
                    (state, Some(at), Some(until))
                }
            }
        };
        out.push(KeyStatus {
            kid: key.kid.clone(),
            alg: key.alg.clone(),
            state,
            created_at: key.created_at,
            activates_at: key.activates_at,
            superseded_at,
            unpublish_at,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(kid: &str, alg: &str, activates_at: i64) -> KeyMeta {
        KeyMeta {
            kid: kid.into(),
            alg: alg.into(),
            created_at: activates_at.min(0),
            activates_at,
        }
    }

    fn state_of(statuses: &[KeyStatus], kid: &str) -> KeyState {
        statuses
            .iter()
            .find(|s| s.kid == kid)
            .map(|s| s.state)
            .expect("kid present")
    }

    #[test]
    fn a_single_key_is_active() {
        let s = schedule(&[key("a", "ES256", 0)], 10, 3600);
        assert_eq!(state_of(&s, "a"), KeyState::Active);
    }

    #[test]
    fn a_rotated_key_is_published_before_it_signs() {
        let keys = [key("old", "ES256", 0), key("new", "ES256", 1000)];
        let before = schedule(&keys, 999, 3600);
        assert_eq!(state_of(&before, "old"), KeyState::Active);
        assert_eq!(state_of(&before, "new"), KeyState::Next);
        assert!(before.iter().all(KeyStatus::published));

        let after = schedule(&keys, 1000, 3600);
        assert_eq!(state_of(&after, "new"), KeyState::Active);
        assert_eq!(state_of(&after, "old"), KeyState::Retiring);
    }

    #[test]
    fn a_superseded_key_leaves_the_jwks_once_its_tokens_expired() {
        let keys = [key("old", "ES256", 0), key("new", "ES256", 1000)];
        assert_eq!(
            state_of(&schedule(&keys, 4599, 3600), "old"),
            KeyState::Retiring
        );
        let later = schedule(&keys, 4600, 3600);
        assert_eq!(state_of(&later, "old"), KeyState::Retired);
        assert!(!later.iter().any(|s| s.kid == "old" && s.published()));
        assert_eq!(state_of(&later, "new"), KeyState::Active);
    }

    #[test]
    fn algorithms_rotate_independently() {
        let keys = [
            key("ec1", "ES256", 0),
            key("rsa1", "RS256", 0),
            key("ec2", "ES256", 100),
        ];
        let s = schedule(&keys, 200, 3600);
        assert_eq!(state_of(&s, "rsa1"), KeyState::Active);
        assert_eq!(state_of(&s, "ec2"), KeyState::Active);
        assert_eq!(state_of(&s, "ec1"), KeyState::Retiring);
    }

    #[test]
    fn exactly_one_active_key_per_algorithm_after_several_rotations() {
        let keys: Vec<KeyMeta> = (0..6)
            .map(|i| key(&format!("k{i}"), "ES256", i * 100))
            .collect();
        for now in [0, 50, 150, 450, 10_000] {
            let s = schedule(&keys, now, 120);
            assert_eq!(
                s.iter().filter(|k| k.state == KeyState::Active).count(),
                1,
                "at {now}"
            );
        }
        let s = schedule(&keys, 450, 120);
        assert_eq!(state_of(&s, "k4"), KeyState::Active);
        assert_eq!(state_of(&s, "k3"), KeyState::Retiring); // superseded at 400
        assert_eq!(state_of(&s, "k2"), KeyState::Retired); // superseded at 300, +120 < 450
        assert_eq!(state_of(&s, "k5"), KeyState::Next);
    }
}
