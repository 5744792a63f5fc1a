//! Signing people in (DESIGN.md §7): passwords, TOTP, recovery codes, sessions and back-off.
//! Pure rules live in the small modules; `login` runs them against the store.

pub mod accounts;
pub mod enrolment;
pub mod login;
pub mod passkeys;
pub mod password;
pub mod recovery;
pub mod session;
pub mod throttle;
pub mod totp;
