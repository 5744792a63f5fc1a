//! The token endpoint's grants (RFC 6749 §4.1.3 and §6, RFC 7636, SMART App Launch 2.2).
//!
//! - `authorization_code`: single use through a compare-and-set; a second redemption (also a
//!   concurrent one) revokes the whole family issued from that code; bound to the client, the
//!   redirect URI and the PKCE verifier; one minute to live.
//! - `refresh_token`: opaque and stored hashed; rotated on every use; presenting a rotated one
//!   revokes its family. The revocation and its audit event are committed on their own, before
//!   the request is answered with an error (DESIGN.md §4). `online_access` families end with
//!   the Ward session they were granted in, and a refresh counts as activity for that session.

use serde_json::{json, Map, Value};

use super::authorize::{CodeGrant, Subject};
use super::client_auth::UnrecordedAssertion;
use super::error::{OAuthError, Params};
use super::pkce;
use super::tokens::{self, AccessClaims, IdClaims};
use crate::audit::{self, AuditContext, AuditEvent};
use crate::authn::session::{self, Liveness, Timeouts};
use crate::clients::{Client, GrantType};
use crate::clock::Clock;
use crate::crypto::{random_token, sha256_b64};
use crate::fault::{self, Point};
use crate::keys::{KeyAlg, KeyRing};
use crate::smart::launch::LaunchContext;
use crate::smart::scopes::{IdentityScope, ScopeSet};
use crate::store::grants::{self, AccessTokenRow, FamilyRow, RefreshGrant, RefreshRow, Rotation};
use crate::store::{credentials, write_transaction, DbConnection, StoreError};

/// What the grants need besides the database.
pub struct Issuer<'a> {
    pub issuer: &'a str,
    pub keys: &'a KeyRing,
    pub clock: &'a dyn Clock,
    pub session_timeouts: Timeouts,
}

/// A refused grant: the error for the client, and whether a security side effect (family
/// revocation) must still be committed.
enum Refusal {
    Error(OAuthError),
    Reuse { family: String, kind: &'static str },
}

impl From<StoreError> for Refusal {
    fn from(e: StoreError) -> Self {
        Self::Error(e.into())
    }
}

impl From<OAuthError> for Refusal {
    fn from(e: OAuthError) -> Self {
        Self::Error(e)
    }
}

/// A refused token request: the error for the client, and whether the refusal's one audit
/// event is already written (a detected reuse records `token.reuse_detected`, so the endpoint
/// must not add a `token.refused` for the same request).
#[derive(Debug)]
pub struct TokenRefusal {
    pub error: OAuthError,
    pub audited: bool,
}

impl From<OAuthError> for TokenRefusal {
    fn from(error: OAuthError) -> Self {
        Self {
            error,
            audited: false,
        }
    }
}

impl From<StoreError> for TokenRefusal {
    fn from(e: StoreError) -> Self {
        OAuthError::from(e).into()
    }
}

/// `grant_type=authorization_code`.
pub fn authorization_code(
    conn: &mut DbConnection,
    iss: &Issuer<'_>,
    ctx: &AuditContext,
    client: &Client,
    params: &Params,
) -> Result<Value, TokenRefusal> {
    allowed(client, GrantType::AuthorizationCode)?;
    let code = params.require("code")?;
    let redirect_uri = params.require("redirect_uri")?;
    let verifier = params
        .get("code_verifier")
        .ok_or_else(|| OAuthError::invalid_request("code_verifier is required (PKCE)"))?;
    let now = iss.clock.now_secs();
    let code_hash = sha256_b64(code.as_bytes());
    let Some(row) = grants::find_code(conn, &code_hash)? else {
        return Err(OAuthError::invalid_grant("unknown authorization code").into());
    };
    if row.client_id != client.client_id {
        return Err(OAuthError::invalid_grant("the code was issued to another client").into());
    }
    let outcome = if row.redeemed_at.is_some() {
        Err(Refusal::Reuse {
            family: row.family_id.clone(),
            kind: "authorization_code",
        })
    } else if row.expires_at <= now {
        Err(OAuthError::invalid_grant("the authorization code has expired").into())
    } else if row.redirect_uri != redirect_uri {
        Err(OAuthError::invalid_grant("redirect_uri differs from the authorization request").into())
    } else if !pkce::verify(verifier, &row.code_challenge) {
        Err(OAuthError::invalid_grant("code_verifier does not match the code_challenge").into())
    } else {
        redeem(conn, iss, ctx, client, &row, now)
    };
    settle(conn, iss, ctx, client, outcome)
}

fn redeem(
    conn: &mut DbConnection,
    iss: &Issuer<'_>,
    ctx: &AuditContext,
    client: &Client,
    row: &grants::CodeRow,
    now: i64,
) -> Result<Value, Refusal> {
    let grant: CodeGrant = serde_json::from_str(&row.grant_details)
        .map_err(|e| OAuthError::from(StoreError::Corrupt(format!("code grant: {e}"))))?;
    let result = write_transaction(conn, |conn| {
        if !grants::redeem_code(conn, &row.code_hash, now)? {
            return Ok::<_, OAuthError>(Err(Refusal::Reuse {
                family: row.family_id.clone(),
                kind: "authorization_code",
            }));
        }
        fault::point(Point::CodeClaimed)?;
        let family = live_family(conn, &row.family_id, now)?;
        if !user_active(conn, &row.user_id)? {
            return Ok(Err(OAuthError::invalid_grant(
                "the user can no longer sign in",
            )
            .into()));
        }
        if let Some(session_id) = &family.session_id {
            if !session_alive(conn, session_id, now, iss.session_timeouts)? {
                return Ok(Err(OAuthError::invalid_grant(
                    "online access ended with the user's session",
                )
                .into()));
            }
        }
        let scopes = ScopeSet::parse(&grant.scope).0;
        let fhir_user = match &grant.fhir_user {
            Some(known) => Some(known.clone()),
            None => fhir_user_of(conn, &family)?,
        };
        let minted = Minted {
            code: Some(&grant),
            fhir_user,
        };
        let issued = issue(iss, client, &family, &scopes, minted, now)?;
        fault::point(Point::CodeTokensMinted)?;
        let event = audit::row(
            iss.clock,
            ctx,
            &AuditEvent::TokenIssued {
                client_id: client.client_id.clone(),
                grant: "authorization_code".into(),
                family: family.id.clone(),
                scope: grant.scope.clone(),
                patient: grant.context.patient.clone(),
            },
        )?;
        grants::record_issuance(conn, &issued.access, issued.refresh.as_ref(), &event)?;
        Ok(Ok(issued.body))
    });
    match result {
        Ok(inner) => inner,
        Err(e) => Err(Refusal::Error(e)),
    }
}

/// SMART Backend Services tokens live at most five minutes.
pub const BACKEND_TOKEN_MAX_LIFETIME: i64 = 300;

/// The audience of tokens for Ward's own admin API (DESIGN.md §5).
pub fn admin_api_audience(issuer: &str) -> String {
    format!("{}{}", issuer.trim_end_matches('/'), ADMIN_API_PATH)
}

/// Where the admin API lives under the issuer.
pub const ADMIN_API_PATH: &str = "/admin/api/v1";

/// `grant_type=client_credentials` (SMART Backend Services): `private_key_jwt` clients only;
/// granted = requested ∩ the client's allowed scopes (`system/` scopes); no refresh token.
///
/// The assertion's `jti` is written with the issuance (`grants::record_service_issuance`: one
/// statement on PostgreSQL), or alone before a refusal or a failure to mint, so it is consumed
/// either way and a replay is refused (`invalid_client`) whatever else is wrong.
#[allow(clippy::too_many_arguments)]
pub fn client_credentials(
    conn: &mut DbConnection,
    iss: &Issuer<'_>,
    ctx: &AuditContext,
    client: &Client,
    params: &Params,
    fhir_bases: &[String],
    assertion: Option<UnrecordedAssertion>,
) -> Result<Value, TokenRefusal> {
    let planned = backend_grant(iss, client, params, fhir_bases);
    let Some(assertion) = assertion else {
        // Only a `private_key_jwt` client presents an assertion, and `backend_grant` refuses
        // every other client.
        let refusal = planned.err().unwrap_or_else(|| {
            OAuthError::unauthorized_client("backend services authenticate with private_key_jwt")
        });
        return Err(refusal.into());
    };
    let (family, granted) = match planned {
        Ok(planned) => planned,
        Err(refusal) => return Err(spend_and_refuse(conn, iss, ctx, assertion, refusal)),
    };
    let minted = issue(
        iss,
        client,
        &family,
        &granted,
        Minted::default(),
        family.created_at,
    )
    .and_then(|issued| {
        let event = audit::row(
            iss.clock,
            ctx,
            &AuditEvent::TokenIssued {
                client_id: client.client_id.clone(),
                grant: "client_credentials".into(),
                family: family.id.clone(),
                scope: granted.to_string(),
                patient: None,
            },
        )?;
        Ok((issued, event))
    });
    let (issued, event) = match minted {
        Ok(minted) => minted,
        // No signing key, say: the assertion is still spent.
        Err(failure) => return Err(spend_and_refuse(conn, iss, ctx, assertion, failure)),
    };
    if grants::record_service_issuance(conn, &assertion.jti_row(), &family, &issued.access, &event)?
    {
        return Ok(issued.body);
    }
    Err(TokenRefusal {
        error: assertion.replayed(conn, iss.clock, ctx)?,
        audited: true,
    })
}

/// Spends the assertion's `jti` on its own and answers `refusal`; or `invalid_client` (audited)
/// when the `jti` was used before: a replay is reported as such whatever else is wrong.
fn spend_and_refuse(
    conn: &mut DbConnection,
    iss: &Issuer<'_>,
    ctx: &AuditContext,
    assertion: UnrecordedAssertion,
    refusal: OAuthError,
) -> TokenRefusal {
    match assertion.record(conn, iss.clock, ctx) {
        Ok(Ok(())) => refusal.into(),
        Ok(Err(replayed)) => TokenRefusal {
            error: replayed,
            audited: true,
        },
        Err(e) => e.into(),
    }
}

/// What a `client_credentials` request may have, as the family to issue it in: checks only,
/// nothing read or written.
fn backend_grant(
    iss: &Issuer<'_>,
    client: &Client,
    params: &Params,
    fhir_bases: &[String],
) -> Result<(FamilyRow, ScopeSet), OAuthError> {
    allowed(client, GrantType::ClientCredentials)?;
    if client.settings.auth_method != crate::clients::AuthMethod::PrivateKeyJwt {
        return Err(OAuthError::unauthorized_client(
            "backend services authenticate with private_key_jwt",
        ));
    }
    let requested = params
        .get("scope")
        .ok_or_else(|| OAuthError::invalid_scope("scope is required"))?;
    ScopeSet::parse_strict(requested).map_err(|errors| {
        OAuthError::invalid_scope(super::error::truncate(
            &errors.first().map(ToString::to_string).unwrap_or_default(),
            160,
        ))
    })?;
    // system/ resource scopes, or Ward's own admin-API scopes: identity, context and refresh
    // scopes mean nothing without a person, so they are dropped even when the client's
    // allowance lists them.
    let decision = crate::authz::grant::grantable_for_service(&client.settings, requested);
    let granted: ScopeSet = decision
        .granted
        .iter()
        .filter(|s| s.as_resource().is_some() || s.as_admin().is_some())
        .cloned()
        .collect();
    let admin = granted.admin_scopes().next().is_some();
    if admin && granted.resource_scopes().next().is_some() {
        return Err(OAuthError::invalid_scope(
            "admin API scopes and FHIR scopes are for different servers: ask for them in separate token requests",
        ));
    }
    if granted.is_empty() {
        return Err(OAuthError::invalid_scope(
            "none of the requested scopes are allowed for this client",
        ));
    }
    let admin_api = admin_api_audience(iss.issuer);
    let aud = match (params.get("aud"), params.get("resource")) {
        (Some(a), Some(r)) if a != r => {
            return Err(OAuthError::invalid_request(
                "aud and resource name different servers",
            ))
        }
        (Some(a), _) | (None, Some(a)) => a.to_owned(),
        (None, None) if admin => admin_api.clone(),
        (None, None) if fhir_bases.len() == 1 => fhir_bases[0].clone(),
        (None, None) => {
            return Err(OAuthError::invalid_request(
                "aud (the FHIR base URL) is required: Ward protects several",
            ))
        }
    };
    if admin && aud != admin_api {
        return Err(OAuthError::invalid_request(
            "a token with admin API scopes is for Ward's admin API only",
        ));
    }
    if !admin && !fhir_bases.contains(&aud) {
        return Err(OAuthError::invalid_request(
            "aud is not a FHIR server this authorization server protects",
        ));
    }
    let now = iss.clock.now_secs();
    let lifetime = client
        .settings
        .access_token_lifetime
        .clamp(1, BACKEND_TOKEN_MAX_LIFETIME);
    let family = FamilyRow {
        id: crate::store::new_row_key(),
        client_id: client.client_id.clone(),
        user_id: None,
        session_id: None,
        grant_kind: "client_credentials".into(),
        scope: granted.to_string(),
        aud,
        context: "{}".into(),
        created_at: now,
        expires_at: now + lifetime,
        revoked_at: None,
        revoked_reason: None,
    };
    Ok((family, granted))
}

/// `grant_type=refresh_token`.
pub fn refresh_token(
    conn: &mut DbConnection,
    iss: &Issuer<'_>,
    ctx: &AuditContext,
    client: &Client,
    params: &Params,
) -> Result<Value, TokenRefusal> {
    allowed(client, GrantType::RefreshToken)?;
    let presented = params.require("refresh_token")?;
    let now = iss.clock.now_secs();
    let hash = sha256_b64(presented.as_bytes());
    let Some(grant) = grants::find_refresh_grant(conn, &hash)? else {
        return Err(OAuthError::invalid_grant("unknown refresh token").into());
    };
    let (row, family) = (&grant.token, &grant.family);
    if family.client_id != client.client_id {
        return Err(
            OAuthError::invalid_grant("the refresh token was issued to another client").into(),
        );
    }
    if family.grant_kind == "client_credentials" {
        return Err(OAuthError::invalid_grant("backend-service grants are not refreshable").into());
    }
    let outcome = if row.used_at.is_some() {
        Err(Refusal::Reuse {
            family: family.id.clone(),
            kind: "refresh_token",
        })
    } else {
        rotate(conn, iss, ctx, client, grant, params, now)
    };
    settle(conn, iss, ctx, client, outcome)
}

#[allow(clippy::too_many_arguments)]
fn rotate(
    conn: &mut DbConnection,
    iss: &Issuer<'_>,
    ctx: &AuditContext,
    client: &Client,
    grant: RefreshGrant,
    params: &Params,
    now: i64,
) -> Result<Value, Refusal> {
    let RefreshGrant {
        token: row,
        family,
        user,
    } = grant;
    if family.revoked_at.is_some() {
        return Err(OAuthError::invalid_grant("the refresh token was revoked").into());
    }
    if row.expires_at <= now || family.expires_at <= now {
        return Err(OAuthError::invalid_grant("the refresh token has expired").into());
    }
    let family_scopes = ScopeSet::parse(&family.scope).0;
    let scopes = match params.get("scope") {
        None => family_scopes.clone(),
        Some(text) => {
            let asked = ScopeSet::parse_strict(text)
                .map_err(|_| OAuthError::invalid_scope("scope is malformed"))?;
            let narrower = family_scopes.covers_all(&asked)
                && asked.identity_scopes().all(|i| family_scopes.has(i));
            if !narrower {
                return Err(OAuthError::invalid_scope(
                    "a refresh may only narrow the granted scopes",
                )
                .into());
            }
            asked
        }
    };
    // Least privilege now, not at consent time: what the user's roles and the client's
    // registration allow today narrows every refresh (a demoted user loses access at once).
    let mut fhir_user = None;
    let scopes = match &family.user_id {
        Some(_) => {
            // `None` for a user who no longer exists or is disabled.
            let Some(subject) = user.and_then(|(user, held)| Subject::of(user, held)) else {
                return Err(OAuthError::invalid_grant("the user can no longer sign in").into());
            };
            let allowed_now = crate::authz::grant::grantable(
                &subject.ceilings,
                &client.settings,
                &scopes.to_string(),
            )
            .granted;
            let lost_all_data = scopes.resource_scopes().next().is_some()
                && allowed_now.resource_scopes().next().is_none();
            if allowed_now.is_empty() || lost_all_data {
                return Err(
                    OAuthError::invalid_grant("nothing of this grant is allowed any more").into(),
                );
            }
            fhir_user = subject.fhir_user;
            allowed_now
        }
        None => scopes,
    };
    if let Some(session_id) = &family.session_id {
        if !session_alive(conn, session_id, now, iss.session_timeouts)? {
            return Err(
                OAuthError::invalid_grant("online access ended with the user's session").into(),
            );
        }
    }
    let minted = Minted {
        code: None,
        fhir_user,
    };
    let issued = issue(iss, client, &family, &scopes, minted, now)?;
    let event = audit::row(
        iss.clock,
        ctx,
        &AuditEvent::TokenIssued {
            client_id: client.client_id.clone(),
            grant: "refresh_token".into(),
            family: family.id.clone(),
            scope: scopes.to_string(),
            patient: context_of(&family).patient,
        },
    )?;
    // The compare-and-set and the writes, all or none: a revocation that committed after the
    // checks above wins over this refresh, and a racing request that used the token first
    // makes this one a reuse.
    let rotation = grants::rotate_refresh(
        conn,
        &grants::RefreshRotation {
            token_hash: &row.token_hash,
            family_id: &family.id,
            session_id: family.session_id.as_deref(),
            now,
            access: &issued.access,
            refresh: issued.refresh.as_ref(),
            event: &event,
        },
    )
    .map_err(OAuthError::from)?;
    match rotation {
        Rotation::Used => Ok(issued.body),
        Rotation::UsedBefore => Err(Refusal::Reuse {
            family: family.id.clone(),
            kind: "refresh_token",
        }),
        Rotation::GrantEnded => {
            Err(OAuthError::invalid_grant("the grant was revoked or has expired").into())
        }
    }
}

/// Commits the side effects of a refusal (family revocation on reuse, audit) in their own
/// transaction and turns the outcome into the answer.
fn settle(
    conn: &mut DbConnection,
    iss: &Issuer<'_>,
    ctx: &AuditContext,
    client: &Client,
    outcome: Result<Value, Refusal>,
) -> Result<Value, TokenRefusal> {
    match outcome {
        Ok(v) => Ok(v),
        Err(Refusal::Error(e)) => Err(e.into()),
        Err(Refusal::Reuse { family, kind }) => {
            let now = iss.clock.now_secs();
            write_transaction(conn, |conn| {
                grants::revoke_family(conn, &family, &format!("{kind}_reuse"), now)?;
                audit::append(
                    conn,
                    iss.clock,
                    ctx,
                    &AuditEvent::TokenReuseDetected {
                        client_id: client.client_id.clone(),
                        family: family.clone(),
                        kind: kind.into(),
                    },
                )
            })?;
            Err(TokenRefusal {
                audited: true,
                error: OAuthError::invalid_grant(match kind {
                "authorization_code" => {
                    "the authorization code was already used; every token issued from it is revoked"
                }
                _ => "the refresh token was already used; every token of this grant is revoked",
            }),
            })
        }
    }
}

fn allowed(client: &Client, grant: GrantType) -> Result<(), OAuthError> {
    if client.settings.grant_types.contains(&grant) {
        Ok(())
    } else {
        Err(OAuthError::unauthorized_client(format!(
            "this client is not registered for {}",
            grant.as_str()
        )))
    }
}

fn live_family(conn: &mut DbConnection, id: &str, now: i64) -> Result<FamilyRow, OAuthError> {
    match grants::find_family(conn, id)? {
        Some(f) if f.revoked_at.is_none() && f.expires_at > now => Ok(f),
        _ => Err(OAuthError::invalid_grant("the grant was revoked")),
    }
}

/// Whether a user's grants still count: the account exists and is enabled. A sign-in lock
/// (too many failed guesses, which anyone knowing the username can cause) blocks signing in,
/// not the apps the person already authorized (DESIGN.md §7: no lock-out mid-shift).
pub(crate) fn user_active(conn: &mut DbConnection, user_id: &str) -> Result<bool, StoreError> {
    Ok(credentials::login_user_by_id(conn, user_id)?.is_some_and(|u| u.enabled))
}

pub(crate) fn session_alive(
    conn: &mut DbConnection,
    public_id: &str,
    now: i64,
    t: Timeouts,
) -> Result<bool, StoreError> {
    Ok(session_deadline(conn, public_id, now, t)?.is_some())
}

/// When a live session would end if nothing happened in it (idle or absolute timeout,
/// whichever comes first); `None` when it is not live now.
pub(crate) fn session_deadline(
    conn: &mut DbConnection,
    public_id: &str,
    now: i64,
    t: Timeouts,
) -> Result<Option<i64>, StoreError> {
    Ok(
        match credentials::find_session_by_public_id(conn, public_id)? {
            Some(s)
                if session::liveness(
                    s.ended_at.is_some(),
                    s.last_seen_at,
                    s.expires_at,
                    now,
                    t,
                ) == Liveness::Live =>
            {
                Some(
                    s.expires_at
                        .min(s.last_seen_at.saturating_add(t.idle_seconds)),
                )
            }
            _ => None,
        },
    )
}

fn context_of(family: &FamilyRow) -> LaunchContext {
    serde_json::from_str(&family.context).unwrap_or_default()
}

/// What the caller of `issue` already knows about the person behind the tokens.
#[derive(Default)]
struct Minted<'a> {
    /// The code redeemed (an ID token needs its sign-in details), if this is a redemption.
    code: Option<&'a CodeGrant>,
    /// The user's FHIR resource (`fhirUser`), read by the caller; shown only when granted.
    fhir_user: Option<String>,
}

/// The tokens of one response and the rows that record them (the caller writes those with
/// the response's audit event: `grants::record_issuance`, or `grants::rotate_refresh` with the
/// refresh token's compare-and-set).
struct Issued {
    body: Value,
    access: AccessTokenRow,
    refresh: Option<RefreshRow>,
}

/// Mints the tokens of one response: an access token always, a refresh token when the family
/// is refreshable, an ID token on code redemption when `openid` was granted.
fn issue(
    iss: &Issuer<'_>,
    client: &Client,
    family: &FamilyRow,
    scopes: &ScopeSet,
    minted: Minted<'_>,
    now: i64,
) -> Result<Issued, OAuthError> {
    let code = minted.code;
    let settings = &client.settings;
    let context = context_of(family);
    let break_glass = scopes.is_break_glass();
    // Emergency access: a short fixed lifetime, never longer than the client's own.
    let ceiling = if break_glass {
        super::authorize::BREAK_GLASS_TOKEN_LIFETIME.min(settings.access_token_lifetime)
    } else {
        settings.access_token_lifetime
    };
    let lifetime = ceiling.min(family.expires_at - now).max(1);
    let fhir_user = minted
        .fhir_user
        .filter(|_| scopes.has(IdentityScope::FhirUser));
    let jti = crate::store::new_row_key();
    let subject = family
        .user_id
        .clone()
        .unwrap_or_else(|| client.client_id.clone());
    let claims = AccessClaims {
        iss: iss.issuer.to_owned(),
        sub: subject.clone(),
        aud: family.aud.clone(),
        client_id: client.client_id.clone(),
        scope: scopes.to_string(),
        jti: jti.clone(),
        iat: now,
        exp: now + lifetime,
        patient: context.patient.clone(),
        encounter: context.encounter.clone(),
        fhir_user: fhir_user.clone(),
        break_glass,
    };
    let signer = iss.keys.signer(KeyAlg::Es256, now)?;
    let access_token = tokens::mint_access(&signer, &claims)?;
    let access = AccessTokenRow {
        jti,
        family_id: family.id.clone(),
        client_id: client.client_id.clone(),
        user_id: family.user_id.clone(),
        scope: scopes.to_string(),
        aud: family.aud.clone(),
        issued_at: now,
        expires_at: now + lifetime,
        revoked_at: None,
        introspected_at: None,
    };
    let mut body = Map::new();
    body.insert("access_token".into(), json!(access_token));
    body.insert("token_type".into(), json!("Bearer"));
    body.insert("expires_in".into(), json!(lifetime));
    body.insert("scope".into(), json!(scopes.to_string()));
    if break_glass {
        body.insert("break_glass".into(), json!(true));
    }
    let family_scopes = ScopeSet::parse(&family.scope).0;
    // Backend services never get refresh tokens (RFC 6749 §4.4.3, SMART Backend Services).
    let refreshable = family.grant_kind != "client_credentials"
        && !break_glass
        && (family_scopes.has(IdentityScope::OfflineAccess)
            || family_scopes.has(IdentityScope::OnlineAccess));
    let mut refresh = None;
    if refreshable && settings.grant_types.contains(&GrantType::RefreshToken) {
        let token = random_token(32);
        refresh = Some(RefreshRow {
            token_hash: sha256_b64(token.as_bytes()),
            family_id: family.id.clone(),
            created_at: now,
            expires_at: (now + settings.refresh_token_idle_lifetime).min(family.expires_at),
            used_at: None,
        });
        body.insert("refresh_token".into(), json!(token));
    }
    if let Some(code) = code.filter(|_| scopes.has(IdentityScope::OpenId)) {
        let profile = scopes.has(IdentityScope::Profile);
        let id = IdClaims {
            iss: iss.issuer.to_owned(),
            sub: subject,
            aud: client.client_id.clone(),
            azp: client.client_id.clone(),
            iat: now,
            exp: now + tokens::ID_TOKEN_LIFETIME.min(lifetime).max(60),
            auth_time: code.auth_time,
            nonce: code.nonce.clone(),
            amr: code.amr.clone(),
            fhir_user,
            name: profile.then(|| code.name.clone()),
            preferred_username: profile.then(|| code.username.clone()),
        };
        let signer = iss.keys.signer(KeyAlg::Rs256, now)?;
        body.insert("id_token".into(), json!(tokens::mint_id(&signer, &id)?));
    }
    for (k, v) in context.members() {
        body.insert(k, v);
    }
    Ok(Issued {
        body: Value::Object(body),
        access,
        refresh,
    })
}

fn fhir_user_of(conn: &mut DbConnection, family: &FamilyRow) -> Result<Option<String>, StoreError> {
    match &family.user_id {
        Some(id) => Ok(credentials::login_user_by_id(conn, id)?.and_then(|u| u.fhir_user)),
        None => Ok(None),
    }
}
