//! Session rules (DESIGN.md §7, HIPAA automatic logoff): a session is a server-side row behind
//! a random cookie, with an idle timeout and an absolute lifetime; it moves through stages as
//! the person proves more.

use serde::{Deserialize, Serialize};

/// How far a sign-in has got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Password accepted; a second factor is still owed.
    SecondFactor,
    /// Password accepted; MFA is required and no factor exists yet: only enrolment is open.
    Enrolment,
    /// Fully signed in.
    Active,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SecondFactor => "second_factor",
            Self::Enrolment => "enrolment",
            Self::Active => "active",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::SecondFactor, Self::Enrolment, Self::Active]
            .into_iter()
            .find(|s| s.as_str() == text)
    }
}

/// The stage right after a correct password.
pub fn stage_after_password(has_second_factor: bool, mfa_required: bool) -> Stage {
    match (has_second_factor, mfa_required) {
        (true, _) => Stage::SecondFactor,
        (false, true) => Stage::Enrolment,
        (false, false) => Stage::Active,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub idle_seconds: i64,
    pub absolute_seconds: i64,
}

/// Whether a stored session still counts at `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    Live,
    Ended,
    IdleExpired,
    AbsoluteExpired,
}

impl Liveness {
    pub fn end_reason(self) -> Option<&'static str> {
        match self {
            Self::IdleExpired => Some("idle_timeout"),
            Self::AbsoluteExpired => Some("absolute_lifetime"),
            _ => None,
        }
    }
}

pub fn liveness(
    ended: bool,
    last_seen_at: i64,
    expires_at: i64,
    now: i64,
    t: Timeouts,
) -> Liveness {
    if ended {
        Liveness::Ended
    } else if now >= expires_at {
        Liveness::AbsoluteExpired
    } else if now - last_seen_at >= t.idle_seconds {
        Liveness::IdleExpired
    } else {
        Liveness::Live
    }
}

/// Where to go after signing in: only a local path, never another origin (`//evil`, `/\evil`).
pub fn safe_return_to(raw: Option<&str>) -> String {
    match raw {
        Some(path)
            if path.starts_with('/')
                && !path.starts_with("//")
                && !path.starts_with("/\\")
                && !path.chars().any(|c| c.is_control() || c == '\\')
                && path.len() <= 2000 =>
        {
            path.to_owned()
        }
        _ => "/account".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timeouts = Timeouts {
        idle_seconds: 900,
        absolute_seconds: 43_200,
    };

    #[test]
    fn the_login_state_machine() {
        assert_eq!(stage_after_password(true, true), Stage::SecondFactor);
        assert_eq!(stage_after_password(true, false), Stage::SecondFactor);
        assert_eq!(stage_after_password(false, true), Stage::Enrolment);
        assert_eq!(stage_after_password(false, false), Stage::Active);
        for s in [Stage::SecondFactor, Stage::Enrolment, Stage::Active] {
            assert_eq!(Stage::parse(s.as_str()), Some(s));
        }
    }

    #[test]
    fn idle_and_absolute_timeouts() {
        assert_eq!(liveness(false, 1000, 50_000, 1899, T), Liveness::Live);
        assert_eq!(
            liveness(false, 1000, 50_000, 1900, T),
            Liveness::IdleExpired
        );
        assert_eq!(
            liveness(false, 49_999, 50_000, 50_000, T),
            Liveness::AbsoluteExpired
        );
        assert_eq!(liveness(true, 1000, 50_000, 1001, T), Liveness::Ended);
    }

    #[test]
    fn return_to_stays_on_this_origin() {
        assert_eq!(safe_return_to(Some("/authorize?x=1")), "/authorize?x=1");
        for bad in [
            "//evil.example",
            "/\\evil.example",
            "https://evil.example",
            "javascript:x",
            "",
            "/a\nb",
        ] {
            assert_eq!(safe_return_to(Some(bad)), "/account", "{bad}");
        }
        assert_eq!(safe_return_to(None), "/account");
    }
}
