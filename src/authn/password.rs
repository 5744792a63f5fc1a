//! Passwords (NIST SP 800-63B §5.1.1, OWASP Password Storage): 12 to 128 characters, no
//! composition rules, refused when easy to guess (zxcvbn's embedded dictionaries of common
//! passwords, names and patterns); stored as argon2id PHC strings with OWASP parameters and
//! re-hashed at login when the parameters change.
//!
//! Hashing is deliberately slow, so it runs on its own threads (one per core) behind a
//! semaphore, with a bounded queue: a flood of logins gets quick "busy" answers instead of
//! starving every other request. Own threads rather than the runtime's shared blocking pool:
//! each hash allocates argon2's 19 MiB working memory, and glibc keeps freed blocks in the arena
//! of the thread that used them, so hashes spread over dozens of pool threads left hundreds of
//! MiB resident after a sign-in storm (the 1000-sign-in flood test measures it).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::Semaphore;

pub const MIN_LENGTH: usize = 12;
pub const MAX_LENGTH: usize = 128;

/// OWASP's argon2id minimum: 19 MiB, 2 iterations, 1 lane.
pub const MEMORY_KIB: u32 = 19_456;
pub const ITERATIONS: u32 = 2;
pub const LANES: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordPolicyError {
    #[error("must be at least {MIN_LENGTH} characters")]
    TooShort,
    #[error("must be at most {MAX_LENGTH} characters")]
    TooLong,
    #[error("is too easy to guess{0}")]
    Guessable(String),
}

/// Passwords are compared in Unicode NFKC form (NIST SP 800-63B §5.1.1.2), so the same
/// password typed on different keyboards or systems is the same password.
pub fn normalize(password: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    password.nfkc().collect()
}

/// Checks a new password. `context` holds words an attacker would try first (username, name).
pub fn check_policy(password: &str, context: &[&str]) -> Result<(), PasswordPolicyError> {
    let password = normalize(password);
    let password = password.as_str();
    let length = password.chars().count();
    if length < MIN_LENGTH {
        return Err(PasswordPolicyError::TooShort);
    }
    if length > MAX_LENGTH {
        return Err(PasswordPolicyError::TooLong);
    }
    let estimate = zxcvbn::zxcvbn(password, context);
    if (estimate.score() as u8) < 3 {
        let hint = estimate
            .feedback()
            .and_then(|f| f.warning())
            .map(|w| format!(": {w}"))
            .unwrap_or_default();
        return Err(PasswordPolicyError::Guessable(hint));
    }
    Ok(())
}

fn argon2() -> Argon2<'static> {
    // Constant, valid parameters; `Params::new` only fails for out-of-range values.
    let params = Params::new(MEMORY_KIB, ITERATIONS, LANES, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Hashes on the calling thread: for the CLI and tests. Servers use [`PasswordHashing`].
pub fn hash_blocking(password: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    argon2()
        .hash_password(normalize(password).as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Result of checking a password against a stored hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    pub ok: bool,
    /// The hash used older parameters: store a fresh one now that the password is known.
    pub needs_rehash: bool,
}

fn verify_blocking(stored: &str, password: &str) -> Verified {
    let Ok(parsed) = PasswordHash::new(stored) else {
        return Verified {
            ok: false,
            needs_rehash: false,
        };
    };
    let ok = argon2()
        .verify_password(normalize(password).as_bytes(), &parsed)
        .is_ok();
    let current = Params::try_from(&parsed).ok().is_some_and(|p| {
        p.m_cost() == MEMORY_KIB && p.t_cost() == ITERATIONS && p.p_cost() == LANES
    }) && parsed.algorithm.as_str() == "argon2id";
    Verified {
        ok,
        needs_rehash: ok && !current,
    }
}

/// Too many hashes are queued: answer 503 quickly instead of waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many password checks in progress")]
pub struct Busy;

type Job = Box<dyn FnOnce() + Send>;

/// The bounded pool every password check in the server goes through.
#[derive(Debug)]
pub struct PasswordHashing {
    permits: Arc<Semaphore>,
    /// To the hashing threads; they end when this is dropped.
    jobs: std::sync::mpsc::Sender<Job>,
    waiting: AtomicUsize,
    queue_limit: usize,
    /// A real hash of a random password: unknown users are checked against it, so their
    /// answers take as long as a wrong password.
    dummy_hash: String,
    /// Recent duration of one verification (ms, moving average): throttled attempts wait this
    /// long without hashing, so their timing matches.
    typical_ms: AtomicU64,
}

impl PasswordHashing {
    pub fn new(concurrency: usize, queue_limit: usize) -> Self {
        let dummy = crate::crypto::random_token(24);
        let concurrency = concurrency.max(1);
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        let queue = Arc::new(std::sync::Mutex::new(queue));
        for i in 0..concurrency {
            let queue = Arc::clone(&queue);
            let spawned = std::thread::Builder::new()
                .name(format!("ward-argon2-{i}"))
                .spawn(move || {
                    yield_to_requests();
                    loop {
                        let next = queue
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .recv();
                        let Ok(job) = next else { break };
                        // A panicking hash answers that request (its sender drops) and no other.
                        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "could not start a password-hashing thread");
            }
        }
        Self {
            permits: Arc::new(Semaphore::new(concurrency)),
            jobs,
            waiting: AtomicUsize::new(0),
            queue_limit,
            dummy_hash: hash_blocking(&dummy).unwrap_or_default(),
            typical_ms: AtomicU64::new(50),
        }
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Busy> {
        /// Counts one waiting check until dropped: also when the request goes away while it
        /// waits, so the count cannot creep up to the limit and refuse every sign-in.
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let waiting = Waiting(&self.waiting);
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= self.queue_limit {
            return Err(Busy);
        }
        let permit = Arc::clone(&self.permits).acquire_owned().await;
        drop(waiting);
        let permit = permit.map_err(|_| Busy)?;
        let started = Instant::now();
        let (done, result) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Box::new(move || {
                let value = work();
                drop(permit);
                let _ = done.send(value);
            }))
            .map_err(|_| Busy)?;
        let result = result.await.map_err(|_| Busy)?;
        let ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let previous = self.typical_ms.load(Ordering::Relaxed);
        self.typical_ms
            .store((previous * 7 + ms) / 8, Ordering::Relaxed);
        Ok(result)
    }

    /// Verifies against `stored`, or against the dummy hash when there is no user or password.
    pub async fn verify(&self, stored: Option<String>, password: String) -> Result<Verified, Busy> {
        let (hash, real) = match stored {
            Some(h) => (h, true),
            None => (self.dummy_hash.clone(), false),
        };
        let verified = self.run(move || verify_blocking(&hash, &password)).await?;
        Ok(if real {
            verified
        } else {
            Verified {
                ok: false,
                needs_rehash: false,
            }
        })
    }

    pub async fn hash(&self, password: String) -> Result<String, Busy> {
        self.run(move || hash_blocking(&password))
            .await?
            .map_err(|_| Busy)
    }

    pub fn typical_duration(&self) -> Duration {
        Duration::from_millis(self.typical_ms.load(Ordering::Relaxed))
    }
}

/// Password hashing runs at a lower scheduling priority (nice 10) than the threads that answer
/// requests: under a sign-in flood the CPU goes first to `/introspect` and the token endpoint,
/// and hashing takes what is left. Linux only; elsewhere a no-op.
fn yield_to_requests() {
    #[cfg(target_os = "linux")]
    // SAFETY: plain system calls on the calling thread's own id; no memory is shared.
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 10);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_is_length_and_guessability_not_composition() {
        assert_eq!(
            check_policy("short", &[]),
            Err(PasswordPolicyError::TooShort)
        );
        assert_eq!(
            check_policy(&"x".repeat(129), &[]),
            Err(PasswordPolicyError::TooLong)
        );
        for weak in [
            "password1234",
            "123456789012",
            "qwertyuiopasdf",
            "aaaaaaaaaaaa",
            "iloveyou1234!",
        ] {
            assert!(
                matches!(
                    check_policy(weak, &[]),
                    Err(PasswordPolicyError::Guessable(_))
                ),
                "{weak}"
            );
        }
        assert!(matches!(
            check_policy("drwho-drwho-drwho", &["drwho"]),
            Err(PasswordPolicyError::Guessable(_))
        ));
        // No composition rules: a long lowercase passphrase is fine.
        assert_eq!(check_policy("correct horse battery staple", &[]), Ok(()));
        assert_eq!(check_policy("violet tractor sings at dawn", &[]), Ok(()));
    }

    #[test]
    fn hashes_are_argon2id_with_owasp_parameters_and_verify() {
        let hash = hash_blocking("violet tractor sings at dawn").unwrap();
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        assert_eq!(
            verify_blocking(&hash, "violet tractor sings at dawn"),
            Verified {
                ok: true,
                needs_rehash: false
            }
        );
        assert!(!verify_blocking(&hash, "violet tractor sings at dusk").ok);
        assert!(!verify_blocking("not a hash", "x").ok);
    }

    #[test]
    fn passwords_compare_in_nfkc_form() {
        // "ﬁ" (U+FB01 ligature) and full-width digits normalise to plain "fi" and ASCII digits.
        let hash = hash_blocking("ﬁne violet tractor ２０２６").unwrap();
        assert!(verify_blocking(&hash, "fine violet tractor 2026").ok);
    }

    #[test]
    fn weaker_parameters_ask_for_a_rehash() {
        let weak = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(8192, 1, 1, None).unwrap(),
        );
        let salt = SaltString::generate(&mut rand::rngs::OsRng);
        let hash = weak
            .hash_password(b"violet tractor sings at dawn", &salt)
            .unwrap()
            .to_string();
        assert_eq!(
            verify_blocking(&hash, "violet tractor sings at dawn"),
            Verified {
                ok: true,
                needs_rehash: true
            }
        );
    }

    #[tokio::test]
    async fn a_check_abandoned_while_waiting_frees_its_place_in_the_queue() {
        // One hashing thread, one waiting place.
        let pool = Arc::new(PasswordHashing::new(1, 1));
        let busy = {
            let pool = Arc::clone(&pool);
            tokio::spawn(async move { pool.hash("violet tractor sings at dawn".into()).await })
        };
        tokio::time::sleep(Duration::from_millis(2)).await;
        // Abandon waiters again and again (a client that disconnects while queued)…
        for _ in 0..5 {
            let _ = tokio::time::timeout(
                Duration::from_millis(1),
                pool.hash("violet tractor sings at dawn".into()),
            )
            .await;
        }
        assert!(busy.await.unwrap().is_ok());
        // …and the queue still admits a check: none of them kept its place.
        assert!(pool
            .hash("violet tractor sings at dawn".into())
            .await
            .is_ok());
    }

    #[tokio::test]
    async fn a_full_queue_answers_busy_at_once() {
        let pool = PasswordHashing::new(1, 0);
        assert_eq!(pool.hash("x".into()).await, Err(Busy));
        let pool = PasswordHashing::new(1, 4);
        let hash = pool
            .hash("violet tractor sings at dawn".into())
            .await
            .unwrap();
        assert!(
            pool.verify(Some(hash), "violet tractor sings at dawn".into())
                .await
                .unwrap()
                .ok
        );
        assert!(!pool.verify(None, "anything".into()).await.unwrap().ok);
    }
}
