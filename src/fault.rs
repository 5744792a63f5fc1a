//! Test-only fault points (issue 9, "Faults"): named places between the steps of a protocol
//! transaction where a test can make the store fail, to prove the step rolls back whole.
//!
//! A point is `fault::point(Point::CodeClaimed)?` in the code. In a build without the
//! `fault-injection` feature (and outside `cfg(test)`) it is an inline `Ok(())`: release builds
//! contain no registry, no lookup and no way to arm anything.
//!
//! With the feature, a test arms a point for one database (`arm(point, db.identity(), times)`):
//! `Db::run` marks the blocking thread that runs database work with its database's identity, and
//! a point fires only on work for that database. Tests run in parallel in one binary, each on its
//! own SQLite file or PostgreSQL database, so an armed point never trips another test. A firing
//! point answers `StoreError::Unavailable`, as a dropped connection would (→ 503).

/// Every fault point, in one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    /// `Db::run`, before any work: the database cannot be reached.
    DbConnect,
    /// Code redemption: the code's compare-and-set committed in the transaction.
    CodeClaimed,
    /// Code redemption: the code claimed and the tokens minted, before they are written with
    /// their audit event.
    CodeTokensMinted,
    /// Refresh rotation: the presented refresh token marked used, the new one not yet inserted.
    /// (On PostgreSQL the rotation is one statement: this point comes before it.)
    RefreshOldUsed,
    /// Refresh rotation: the old token marked used and the new tokens minted, before they are
    /// written with their audit event. (On PostgreSQL: before the rotation's one statement.)
    RefreshTokensMinted,
    /// Revocation: the family (or access token) revoked, before the audit append.
    RevokeBeforeAudit,
}

// Names exist only where points can fire: a release build keeps nothing but the (zero-sized)
// enum, whose values vanish with the inlined no-op `point`.
#[cfg(any(test, feature = "fault-injection"))]
impl Point {
    pub const ALL: [Point; 6] = [
        Point::DbConnect,
        Point::CodeClaimed,
        Point::CodeTokensMinted,
        Point::RefreshOldUsed,
        Point::RefreshTokensMinted,
        Point::RevokeBeforeAudit,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Point::DbConnect => "db.connect",
            Point::CodeClaimed => "token.after_code_claimed",
            Point::CodeTokensMinted => "token.after_code_tokens_minted",
            Point::RefreshOldUsed => "token.after_refresh_old_used",
            Point::RefreshTokensMinted => "token.after_refresh_tokens_minted",
            Point::RevokeBeforeAudit => "revoke.before_audit",
        }
    }
}

#[cfg(not(any(test, feature = "fault-injection")))]
mod imp {
    use super::Point;
    use crate::store::StoreError;

    /// Compiled out: nothing can fire.
    #[inline(always)]
    pub fn point(_point: Point) -> Result<(), StoreError> {
        Ok(())
    }

    /// Compiled out: runs `work` as is.
    #[inline(always)]
    pub fn scoped<T>(_identity: &str, work: impl FnOnce() -> T) -> T {
        work()
    }
}

#[cfg(any(test, feature = "fault-injection"))]
mod imp {
    use std::cell::RefCell;
    use std::sync::Mutex;

    use super::Point;
    use crate::store::StoreError;

    fn injected(point: Point) -> StoreError {
        StoreError::Unavailable(format!("fault injected at {}", point.name()))
    }

    /// How often an armed point fires.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Times {
        /// The first `n` times it is reached, then it is spent.
        First(u32),
        /// Every time, until the guard is dropped.
        Always,
    }

    struct Entry {
        id: u64,
        point: Point,
        identity: String,
        remaining: Option<u32>,
        fired: u32,
    }

    static ARMED: Mutex<Vec<Entry>> = Mutex::new(Vec::new());
    static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

    thread_local! {
        static CURRENT: RefCell<Option<String>> = const { RefCell::new(None) };
    }

    fn registry() -> std::sync::MutexGuard<'static, Vec<Entry>> {
        ARMED
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Disarms its point when dropped; says how often it fired.
    #[derive(Debug)]
    #[must_use = "the point is disarmed when the guard is dropped"]
    pub struct Guard {
        id: u64,
    }

    impl Guard {
        pub fn fired(&self) -> u32 {
            registry()
                .iter()
                .find(|a| a.id == self.id)
                .map_or(0, |a| a.fired)
        }
    }

    impl Drop for Guard {
        fn drop(&mut self) {
            registry().retain(|a| a.id != self.id);
        }
    }

    /// Arms `point` for work on the database `identity` (`Db::identity`).
    pub fn arm(point: Point, identity: &str, times: Times) -> Guard {
        let id = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        registry().push(Entry {
            id,
            point,
            identity: identity.to_owned(),
            remaining: match times {
                Times::First(n) => Some(n),
                Times::Always => None,
            },
            fired: 0,
        });
        Guard { id }
    }

    /// Fails when `point` is armed for the database this thread is working on.
    pub fn point(point: Point) -> Result<(), StoreError> {
        let Some(identity) = CURRENT.with(|c| c.borrow().clone()) else {
            return Ok(());
        };
        let mut armed = registry();
        let hit = armed.iter_mut().find(|a| {
            a.point == point && a.identity == identity && a.remaining.is_none_or(|n| n > 0)
        });
        match hit {
            Some(a) => {
                a.fired += 1;
                if let Some(n) = a.remaining.as_mut() {
                    *n -= 1;
                }
                Err(injected(point))
            }
            None => Ok(()),
        }
    }

    /// Runs `work` as work on the database `identity`.
    pub fn scoped<T>(identity: &str, work: impl FnOnce() -> T) -> T {
        struct Reset(Option<String>);
        impl Drop for Reset {
            fn drop(&mut self) {
                let previous = self.0.take();
                CURRENT.with(|c| *c.borrow_mut() = previous);
            }
        }
        let previous = CURRENT.with(|c| c.borrow_mut().replace(identity.to_owned()));
        let _reset = Reset(previous);
        work()
    }
}

pub use imp::*;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_point_fires_only_for_its_database_and_only_as_often_as_armed() {
        let guard = arm(Point::CodeClaimed, "db-a", Times::First(1));
        // Outside any database work: nothing fires.
        assert!(point(Point::CodeClaimed).is_ok());
        // Another database, another point: nothing fires.
        assert!(scoped("db-b", || point(Point::CodeClaimed)).is_ok());
        assert!(scoped("db-a", || point(Point::RefreshOldUsed)).is_ok());
        let err = scoped("db-a", || point(Point::CodeClaimed)).unwrap_err();
        assert!(err.is_unavailable());
        assert!(err.to_string().contains("token.after_code_claimed"));
        // Spent after one firing.
        assert!(scoped("db-a", || point(Point::CodeClaimed)).is_ok());
        assert_eq!(guard.fired(), 1);
        drop(guard);

        let always = arm(Point::DbConnect, "db-c", Times::Always);
        for _ in 0..3 {
            assert!(scoped("db-c", || point(Point::DbConnect)).is_err());
        }
        assert_eq!(always.fired(), 3);
        drop(always);
        assert!(scoped("db-c", || point(Point::DbConnect)).is_ok());
    }

    #[test]
    fn point_names_are_unique() {
        let mut names: Vec<&str> = Point::ALL.iter().map(|p| p.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Point::ALL.len());
    }
}
