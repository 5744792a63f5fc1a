//! Who may do what in the admin console and API: a pure decision, unit-tested, made before any
//! admin operation runs.
//!
//! - A **human** admin is a signed-in user holding the `admin` role whose session passed a
//!   second factor. Sensitive actions also need that proof to be recent (`admin.reauth_seconds`);
//!   an older session is sent to sign in again.
//! - A **machine** is a backend service with a Ward-issued `client_credentials` token for the
//!   admin API, holding `__ward.admin.read` or `__ward.admin.write`. It may never do what only a
//!   human may: create or change admins, change the admin role, rotate signing keys.

use crate::smart::scopes::AdminScope;

/// The one role that opens the admin console and API.
pub const ADMIN_ROLE: &str = "admin";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    Human {
        user_id: String,
        username: String,
        /// When the session last passed its second factor.
        mfa_at: i64,
    },
    Machine {
        client_id: String,
        scopes: Vec<AdminScope>,
    },
}

impl Actor {
    /// The actor's name in audit events.
    pub fn audit_identity(&self) -> (Option<String>, Option<String>) {
        match self {
            Actor::Human { user_id, .. } => (Some(user_id.clone()), None),
            Actor::Machine { client_id, .. } => (None, Some(client_id.clone())),
        }
    }

    pub fn display(&self) -> String {
        match self {
            Actor::Human { username, .. } => username.clone(),
            Actor::Machine { client_id, .. } => format!("client {client_id}"),
        }
    }
}

/// What an operation needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Need {
    /// Looking: any admin, `__ward.admin.read` or `.write`.
    Read,
    /// Changing: a human admin or `__ward.admin.write`.
    Write,
    /// Changing with wide effect (revoking every token of a client): a human admin with a
    /// recent second factor, or `__ward.admin.write`.
    Sensitive,
    /// Creating or changing admins, changing the admin role, rotating keys: a human admin
    /// with a recent second factor only.
    HumanOnly,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// Never allowed for this actor; the reason is safe to show.
    Forbidden(&'static str),
    /// A human admin whose second factor is too old: sign in again, then retry.
    Reauthenticate,
}

pub fn authorize(actor: &Actor, need: Need, now: i64, reauth_seconds: i64) -> Result<(), Denied> {
    match actor {
        Actor::Human { mfa_at, .. } => {
            let fresh = now.saturating_sub(*mfa_at) <= reauth_seconds;
            if need >= Need::Sensitive && !fresh {
                return Err(Denied::Reauthenticate);
            }
            Ok(())
        }
        Actor::Machine { scopes, .. } => {
            let write = scopes.contains(&AdminScope::Write);
            let read = write || scopes.contains(&AdminScope::Read);
            match need {
                Need::Read if read => Ok(()),
                Need::Read => Err(Denied::Forbidden("the token holds no admin API scope")),
                Need::Write | Need::Sensitive if write => Ok(()),
                Need::Write | Need::Sensitive => Err(Denied::Forbidden(
                    "changes need the __ward.admin.write scope",
                )),
                Need::HumanOnly => Err(Denied::Forbidden(
                    "only a human admin with a fresh second factor may create or change admins, change the admin role or rotate signing keys",
                )),
            }
        }
    }
}

/// What changing a user needs: any change to an admin's account is a human-only action, so a
/// machine credential can never take over (or lock out) an admin.
pub fn need_for_user(roles: &[String], base: Need) -> Need {
    if roles.iter().any(|r| r == ADMIN_ROLE) {
        Need::HumanOnly
    } else {
        base
    }
}

/// Whether a client's scope string holds admin-API scopes: such a client is a machine admin.
pub fn admin_client(scope: &str) -> bool {
    crate::smart::scopes::ScopeSet::parse(scope)
        .0
        .admin_scopes()
        .next()
        .is_some()
}

/// What changing a client needs: registering, changing, enabling or re-keying a client that
/// holds (or would hold) admin-API scopes is creating or changing an admin, so human-only.
pub fn need_for_client(
    scopes_before: Option<&str>,
    scopes_after: Option<&str>,
    base: Need,
) -> Need {
    if scopes_before.is_some_and(admin_client) || scopes_after.is_some_and(admin_client) {
        Need::HumanOnly
    } else {
        base
    }
}

/// What giving or taking a role needs.
pub fn need_for_role(role: &str, base: Need) -> Need {
    if role == ADMIN_ROLE {
        Need::HumanOnly
    } else {
        base
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn human(mfa_at: i64) -> Actor {
        Actor::Human {
            user_id: "u".into(),
            username: "ada".into(),
            mfa_at,
        }
    }

    fn machine(scopes: &[AdminScope]) -> Actor {
        Actor::Machine {
            client_id: "svc".into(),
            scopes: scopes.to_vec(),
        }
    }

    #[test]
    fn a_human_admin_reads_and_writes_and_reauthenticates_for_sensitive_actions() {
        let now = 10_000;
        let stale = human(now - 301);
        let fresh = human(now - 300);
        for need in [Need::Read, Need::Write] {
            assert_eq!(authorize(&stale, need, now, 300), Ok(()));
        }
        for need in [Need::Sensitive, Need::HumanOnly] {
            assert_eq!(
                authorize(&stale, need, now, 300),
                Err(Denied::Reauthenticate)
            );
            assert_eq!(authorize(&fresh, need, now, 300), Ok(()));
        }
    }

    #[test]
    fn machines_are_limited_by_scope_and_never_act_as_humans() {
        let now = 0;
        let read = machine(&[AdminScope::Read]);
        let write = machine(&[AdminScope::Write]);
        let none = machine(&[]);
        assert_eq!(authorize(&read, Need::Read, now, 300), Ok(()));
        assert!(matches!(
            authorize(&read, Need::Write, now, 300),
            Err(Denied::Forbidden(_))
        ));
        assert!(matches!(
            authorize(&none, Need::Read, now, 300),
            Err(Denied::Forbidden(_))
        ));
        for need in [Need::Read, Need::Write, Need::Sensitive] {
            assert_eq!(authorize(&write, need, now, 300), Ok(()));
        }
        assert!(matches!(
            authorize(&write, Need::HumanOnly, now, 300),
            Err(Denied::Forbidden(_))
        ));
    }

    #[test]
    fn clients_with_admin_scopes_are_admins() {
        assert_eq!(
            need_for_client(
                Some("system/Patient.rs"),
                Some("__ward.admin.read"),
                Need::Write
            ),
            Need::HumanOnly
        );
        assert_eq!(
            need_for_client(Some("__ward.admin.write"), None, Need::Write),
            Need::HumanOnly
        );
        assert_eq!(
            need_for_client(Some("system/Patient.rs"), Some("system/*.rs"), Need::Write),
            Need::Write
        );
    }

    #[test]
    fn admins_accounts_and_the_admin_role_are_human_only() {
        assert_eq!(
            need_for_user(&["physician".into(), "admin".into()], Need::Write),
            Need::HumanOnly
        );
        assert_eq!(need_for_user(&["nurse".into()], Need::Write), Need::Write);
        assert_eq!(need_for_role("admin", Need::Write), Need::HumanOnly);
        assert_eq!(need_for_role("nurse", Need::Write), Need::Write);
    }
}
