//! Time comes in from outside (STYLE.md habit 3), so expiry and replay tests are exact.
//!
//! **One clock for every expiry decision.** A running Ward decides whether an access token,
//! refresh token, authorization code, launch, pending request, session or assertion has expired
//! by comparing a stored or signed time with `AppState::clock`, and with nothing else (never
//! `SystemTime` directly). That clock is a [`MonotonicClock`]: it never answers an earlier
//! time than it answered before, so when the system clock is set backwards (an NTP step, an
//! operator's mistake, a VM restored from a snapshot) a token that was already expired stays
//! expired — time stands still until the system clock catches up, which fails closed. The
//! guard lives in the process: a restart trusts the system clock again, which is also how an
//! operator recovers from a clock that had jumped far forward. Such a node would stamp tokens
//! ahead of true time until restarted, so once it runs more than [`MAX_LEAD_MILLIS`] ahead its
//! `/readyz` fails (a load balancer takes it out) and it logs why.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Milliseconds since the Unix epoch.
    fn now_millis(&self) -> i64;

    /// Seconds since the Unix epoch: the unit of JWT time claims.
    fn now_secs(&self) -> i64 {
        self.now_millis().div_euclid(1000)
    }

    /// How far this clock runs ahead of the time source beneath it (ms; 0 for plain clocks).
    fn lead_millis(&self) -> i64 {
        0
    }
}

/// A lead beyond this means the system clock jumped back after running ahead: `/readyz`
/// fails and the log says so, because the node keeps issuing tokens stamped ahead of true
/// time until it is restarted (see the module docs).
pub const MAX_LEAD_MILLIS: i64 = 5 * 60 * 1000;

pub type SharedClock = Arc<dyn Clock>;

#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_millis(&self) -> i64 {
        match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
            Err(_) => 0,
        }
    }
}

/// Never runs backwards: the highest time it has answered, or the inner clock's, whichever is
/// later (see the module docs).
#[derive(Debug)]
pub struct MonotonicClock {
    inner: SharedClock,
    highest: AtomicI64,
}

impl MonotonicClock {
    pub fn new(inner: SharedClock) -> Self {
        Self {
            inner,
            highest: AtomicI64::new(i64::MIN),
        }
    }
}

impl Clock for MonotonicClock {
    fn now_millis(&self) -> i64 {
        let now = self.inner.now_millis();
        let before = self.highest.fetch_max(now, Ordering::SeqCst);
        before.max(now)
    }

    fn lead_millis(&self) -> i64 {
        let now = self.inner.now_millis();
        self.highest
            .load(Ordering::SeqCst)
            .saturating_sub(now)
            .max(0)
    }
}

/// A clock tests set and advance by hand.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn at_secs(secs: i64) -> Self {
        Self(AtomicI64::new(secs * 1000))
    }
    pub fn advance_secs(&self, secs: i64) {
        self.0.fetch_add(secs * 1000, Ordering::SeqCst);
    }
    pub fn set_secs(&self, secs: i64) {
        self.0.store(secs * 1000, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_millis(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// RFC 3339 in UTC for people reading CLI output.
pub fn format_secs(secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| secs.to_string())
}

/// RFC 3339 in UTC with milliseconds (audit event times).
pub fn format_millis(millis: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(millis) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| millis.to_string())
}

/// An RFC 3339 time or a `YYYY-MM-DD` date (midnight UTC) as Unix milliseconds.
pub fn parse_time_millis(text: &str) -> Option<i64> {
    let text = text.trim();
    if let Ok(t) = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
    {
        return i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok();
    }
    time::Date::parse(
        text,
        &time::macros::format_description!("[year]-[month]-[day]"),
    )
    .ok()
    .map(|d| d.midnight().assume_utc().unix_timestamp() * 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_monotonic_clock_never_answers_an_earlier_time() {
        let manual = Arc::new(ManualClock::at_secs(1_000));
        let clock = MonotonicClock::new(manual.clone());
        assert_eq!(clock.now_secs(), 1_000);
        manual.advance_secs(10);
        assert_eq!(clock.now_secs(), 1_010);
        // The system clock is set back an hour: time stands still…
        manual.advance_secs(-3_600);
        assert_eq!(clock.now_secs(), 1_010);
        manual.advance_secs(3_595);
        assert_eq!(clock.now_secs(), 1_010);
        // …until the system clock passes the highest time seen.
        manual.advance_secs(10);
        assert_eq!(clock.now_secs(), 1_015);
    }

    #[test]
    fn the_monotonic_clock_says_how_far_it_runs_ahead() {
        let manual = Arc::new(ManualClock::at_secs(1_000));
        let clock = MonotonicClock::new(manual.clone());
        assert_eq!((clock.now_secs(), clock.lead_millis()), (1_000, 0));
        manual.advance_secs(-600);
        assert_eq!(clock.lead_millis(), 600_000);
        assert!(clock.lead_millis() > MAX_LEAD_MILLIS);
        manual.advance_secs(600);
        assert_eq!(clock.lead_millis(), 0);
        assert_eq!(SystemClock.lead_millis(), 0);
    }
}
