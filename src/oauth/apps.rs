//! The connected-apps page's service (SMART `management_endpoint`): which apps a person has
//! authorized, and revoking them. A revocation ends every grant of that app for that person
//! (and its remembered consent) at once; introspection reads the database, so it takes effect
//! immediately everywhere.

use std::collections::BTreeMap;

use crate::audit::{self, AuditContext, AuditEvent};
use crate::clients;
use crate::clock::Clock;
use crate::smart::scopes::{IdentityScope, ScopeSet};
use crate::store::grants;
use crate::store::{write_transaction, DbConnection, StoreError};

/// One authorized app, as the person sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectedApp {
    pub client_id: String,
    pub name: String,
    /// Every scope in force across the app's live grants.
    pub scopes: Vec<String>,
    /// When the person first authorized it (of the live grants).
    pub since: i64,
    pub offline: bool,
    /// Consent is remembered for the next launch.
    pub remembered: bool,
    /// A live grant is emergency access (break-glass).
    pub break_glass: bool,
}

/// The person's live grants and remembered consents, one entry per app.
pub fn connected(
    conn: &mut DbConnection,
    user_id: &str,
    now: i64,
) -> Result<Vec<ConnectedApp>, StoreError> {
    let mut apps: BTreeMap<String, ConnectedApp> = BTreeMap::new();
    for family in grants::live_families_of_user(conn, user_id, now)? {
        let scopes = ScopeSet::parse(&family.scope).0;
        let entry = apps
            .entry(family.client_id.clone())
            .or_insert_with(|| ConnectedApp {
                client_id: family.client_id.clone(),
                name: family.client_id.clone(),
                scopes: Vec::new(),
                since: family.created_at,
                offline: false,
                remembered: false,
                break_glass: false,
            });
        entry.since = entry.since.min(family.created_at);
        entry.offline |= scopes.has(IdentityScope::OfflineAccess);
        entry.break_glass |= family.grant_kind == super::authorize::BREAK_GLASS_GRANT;
        for s in scopes.iter().map(ToString::to_string) {
            if !entry.scopes.contains(&s) {
                entry.scopes.push(s);
            }
        }
    }
    for consent in grants::consents_of_user(conn, user_id)? {
        let entry = apps
            .entry(consent.client_id.clone())
            .or_insert_with(|| ConnectedApp {
                client_id: consent.client_id.clone(),
                name: consent.client_id.clone(),
                scopes: ScopeSet::parse(&consent.scope)
                    .0
                    .iter()
                    .map(ToString::to_string)
                    .collect(),
                since: consent.created_at,
                offline: false,
                remembered: false,
                break_glass: false,
            });
        entry.remembered = true;
    }
    for app in apps.values_mut() {
        if let Ok(client) = clients::get(conn, &app.client_id) {
            app.name = client.settings.name;
        }
    }
    Ok(apps.into_values().collect())
}

/// Revokes every grant of `client_id` for the person and forgets the remembered consent;
/// returns how many grants ended.
pub fn revoke_app(
    conn: &mut DbConnection,
    clock: &dyn Clock,
    ctx: &AuditContext,
    user_id: &str,
    client_id: &str,
) -> Result<usize, StoreError> {
    let now = clock.now_secs();
    write_transaction(conn, |conn| {
        let revoked = grants::revoke_families_of(conn, user_id, client_id, "revoked_by_user", now)?;
        let forgot = grants::forget_consent(conn, user_id, client_id)?;
        for family in &revoked {
            audit::append(
                conn,
                clock,
                ctx,
                &AuditEvent::TokenRevoked {
                    client_id: client_id.to_owned(),
                    family: family.clone(),
                    reason: "revoked_by_user".into(),
                },
            )?;
        }
        if forgot && revoked.is_empty() {
            audit::append(
                conn,
                clock,
                ctx,
                &AuditEvent::TokenRevoked {
                    client_id: client_id.to_owned(),
                    family: String::new(),
                    reason: "remembered_consent_forgotten".into(),
                },
            )?;
        }
        Ok(revoked.len())
    })
}
