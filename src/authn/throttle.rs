//! Back-off for guessing (NIST SP 800-63B §5.2.2): failures are counted per (purpose, account,
//! client IP), and after a few free attempts each further one must wait exponentially longer.
//! Keying by IP too means an attacker guessing a clinician's password from one address cannot
//! slow that clinician down at the nurses' station; the hard account lock is separate and comes
//! only at a high threshold of consecutive failures from anywhere.

use crate::crypto::sha256_b64;

/// What is being guessed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Password,
    SecondFactor,
}

/// The counter key: hashed, so the table holds no usernames or addresses.
pub fn key(purpose: Purpose, account: &str, ip: &str) -> String {
    let tag = match purpose {
        Purpose::Password => "password",
        Purpose::SecondFactor => "mfa",
    };
    sha256_b64(format!("{tag}\u{0}{account}\u{0}{ip}").as_bytes())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Failures allowed before any delay.
    pub free_attempts: i64,
    pub max_delay_seconds: i64,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            free_attempts: 3,
            max_delay_seconds: 900,
        }
    }
}

impl Policy {
    /// The wait after `failures` consecutive failures: 0 for the free attempts, then 1 s, 2 s,
    /// 4 s, … up to the maximum.
    pub fn delay_after(&self, failures: i64) -> i64 {
        let over = failures - self.free_attempts;
        if over < 0 {
            return 0;
        }
        let doubled = 1i64
            .checked_shl(u32::try_from(over.min(30)).unwrap_or(30))
            .unwrap_or(i64::MAX);
        doubled.min(self.max_delay_seconds)
    }

    /// Seconds to wait before the next attempt is even checked, if any.
    pub fn retry_after(&self, failures: i64, last_failure_at: i64, now: i64) -> Option<i64> {
        let until = last_failure_at.saturating_add(self.delay_after(failures));
        (now < until).then_some(until - now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_exponentially_after_the_free_attempts() {
        let p = Policy::default();
        let delays: Vec<i64> = (0..8).map(|f| p.delay_after(f)).collect();
        assert_eq!(delays, vec![0, 0, 0, 1, 2, 4, 8, 16]);
        assert_eq!(p.delay_after(40), 900);
        assert_eq!(p.delay_after(i64::MAX), 900);
    }

    #[test]
    fn retry_after_counts_from_the_last_failure() {
        let p = Policy::default();
        assert_eq!(p.retry_after(2, 100, 100), None);
        assert_eq!(p.retry_after(5, 100, 101), Some(3));
        assert_eq!(p.retry_after(5, 100, 104), None);
    }

    #[test]
    fn keys_separate_purpose_account_and_address() {
        let a = key(Purpose::Password, "dr.who", "10.0.0.1");
        assert_ne!(a, key(Purpose::SecondFactor, "dr.who", "10.0.0.1"));
        assert_ne!(a, key(Purpose::Password, "dr.who", "10.0.0.2"));
        assert_ne!(a, key(Purpose::Password, "dr.whom", "10.0.0.1"));
        assert!(!a.contains("dr.who"));
    }
}
