//! The authorization endpoint's service (SMART App Launch 2.2 §"Obtain authorization code"):
//! a validated request is stored server-side (so it survives sign-in, MFA and consent, on any
//! node), then walks through [`next_step`] until it is approved or refused.
//!
//! The request handle in the browser's URL is a 256-bit random; only its SHA-256 is stored.
//! A request completes once: approving or denying it is a compare-and-set.

use serde::{Deserialize, Serialize};

use super::authorize_request::{self, AuthorizeRequest, Registration, Rejection};
use super::error::{OAuthError, Params};
use crate::audit::{self, AuditContext, AuditEvent};
use crate::authn::login::SessionInfo;
use crate::authn::session::Stage;
use crate::authz::grant::grantable;
use crate::authz::roles::Role;
use crate::clients::{self, Client, GrantType};
use crate::clock::Clock;
use crate::crypto::{random_token, sha256_b64};
use crate::smart::launch::LaunchContext;
use crate::smart::scopes::{IdentityScope, ScopeSet};
use crate::store::grants::{self, AuthRequestRow, CodeRow, ConsentRow, FamilyRow};
use crate::store::roles::{AccountRow, RoleRow};
use crate::store::{roles, write_transaction, DbConnection, StoreError};

/// How long a person has to sign in, pick a patient and consent.
pub const REQUEST_TTL: i64 = 600;
/// Authorization codes live one minute (RFC 9700 §2.1.1 recommends short lifetimes).
pub const CODE_TTL: i64 = 60;
/// How long an EHR's launch value stays usable.
pub const LAUNCH_TTL: i64 = 300;
/// The picker offers at most this many patients per search.
pub const PICKER_LIMIT: i64 = 20;
/// At most this many distinct patients may be offered to one request.
pub const MAX_OFFERED: usize = 200;

/// The part of a stored registration the pure authorization-request checks read.
impl<'a> From<&'a Client> for Registration<'a> {
    fn from(client: &'a Client) -> Self {
        Registration {
            client_id: &client.client_id,
            enabled: client.enabled,
            kind: client.settings.kind,
            grant_types: &client.settings.grant_types,
            redirect_uris: &client.settings.redirect_uris,
            launch_modes: &client.settings.launch_modes,
        }
    }
}

/// A launch context resolved at /authorize, with the user it was created for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedLaunch {
    pub user_id: Option<String>,
    pub context: LaunchContext,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredRequest {
    request: AuthorizeRequest,
    launch: Option<ResolvedLaunch>,
    /// The browser's session when the request arrived: `prompt=login` needs a newer one.
    #[serde(default)]
    prior_session: Option<String>,
}

/// A pending authorization request.
#[derive(Debug, Clone)]
pub struct Pending {
    pub id_hash: String,
    pub request: AuthorizeRequest,
    pub launch: Option<ResolvedLaunch>,
    pub prior_session: Option<String>,
    /// The person the request is bound to (the first to reach it signed in).
    pub user_id: Option<String>,
    pub client: Client,
    pub offered: Vec<String>,
    pub patient: Option<String>,
    pub created_at: i64,
}

/// The person behind a session, with what their roles allow.
#[derive(Debug, Clone)]
pub struct Subject {
    pub user_id: String,
    pub username: String,
    pub display_name: String,
    pub fhir_user: Option<String>,
    pub ceilings: Vec<ScopeSet>,
    /// Some role of the person allows emergency access (break-glass).
    pub break_glass: bool,
}

impl Subject {
    /// The person behind an account, with what the roles they hold allow; `None` when the
    /// account is disabled.
    pub fn of(user: AccountRow, held: Vec<RoleRow>) -> Option<Self> {
        if !user.enabled {
            return None;
        }
        let roles: Vec<Role> = held.into_iter().map(Role::from).collect();
        Some(Self {
            user_id: user.id,
            username: user.username,
            display_name: user.display_name,
            fhir_user: user.fhir_user,
            ceilings: roles.iter().map(Role::ceiling).collect(),
            break_glass: roles.iter().any(|r| r.break_glass),
        })
    }

    /// Whether the person may choose among patients: some role grants `user/` access (a
    /// clinician). Someone limited to `patient/` scopes only ever sees their own record.
    pub fn may_pick_patients(&self) -> bool {
        self.ceilings.iter().any(|c| {
            c.resource_scopes()
                .any(|r| r.context == crate::smart::scopes::ScopeContext::User)
        })
    }

    /// The patient a patient user is (their `fhirUser` is `Patient/<id>`).
    pub fn own_patient(&self) -> Option<&str> {
        self.fhir_user
            .as_deref()
            .and_then(|f| f.rsplit_once("Patient/").map(|(_, id)| id))
            .filter(|id| crate::smart::launch::valid_fhir_id(id))
    }
}

pub fn request_hash(handle: &str) -> String {
    sha256_b64(handle.as_bytes())
}

/// Validates and stores a request; returns the handle for the browser's next URL.
pub fn begin(
    conn: &mut DbConnection,
    clock: &dyn Clock,
    ctx: &AuditContext,
    params: &Params,
    fhir_bases: &[String],
    prior_session: Option<String>,
) -> Result<Result<String, Rejection>, StoreError> {
    let client = match params.get("client_id") {
        Some(id) => match clients::get(conn, id) {
            Ok(c) => Some(c),
            Err(clients::RegistryError::Store(e)) => return Err(e),
            Err(_) => None,
        },
        None => None,
    };
    let request = match authorize_request::validate(
        params,
        client.as_ref().map(Registration::from),
        fhir_bases,
    ) {
        Ok(r) => r,
        Err(rejection) => {
            if let (Some(client), Rejection::Redirect { error, .. }) = (&client, &rejection) {
                refuse_audit(conn, clock, ctx, &client.client_id, error)?;
            }
            return Ok(Err(rejection));
        }
    };
    let now = clock.now_secs();
    let handle = random_token(32);
    let stored = write_transaction(conn, |conn| {
        let launch = match &request.launch {
            Some(value) => {
                match grants::take_launch(
                    conn,
                    &sha256_b64(value.as_bytes()),
                    &request.client_id,
                    now,
                )? {
                    Some(row) => Some(ResolvedLaunch {
                        user_id: row.user_id,
                        context: serde_json::from_str(&row.context)
                            .map_err(|e| StoreError::Corrupt(format!("launch context: {e}")))?,
                    }),
                    None => return Ok(None),
                }
            }
            None => None,
        };
        let body = serde_json::to_string(&StoredRequest {
            request: request.clone(),
            launch,
            prior_session: prior_session.clone(),
        })
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        grants::insert_auth_request(
            conn,
            &AuthRequestRow {
                id_hash: request_hash(&handle),
                client_id: request.client_id.clone(),
                user_id: None,
                request: body,
                offered: "[]".into(),
                patient: None,
                created_at: now,
                expires_at: now + REQUEST_TTL,
                completed_at: None,
            },
        )?;
        Ok::<_, StoreError>(Some(()))
    })?;
    if stored.is_none() {
        let error = OAuthError::invalid_request(
            "launch is unknown, expired, already used or meant for another app",
        );
        refuse_audit(conn, clock, ctx, &request.client_id, &error)?;
        return Ok(Err(Rejection::Redirect {
            redirect_uri: request.redirect_uri.clone(),
            error,
            state: request.state.clone(),
        }));
    }
    Ok(Ok(handle))
}

fn refuse_audit(
    conn: &mut DbConnection,
    clock: &dyn Clock,
    ctx: &AuditContext,
    client_id: &str,
    error: &OAuthError,
) -> Result<(), StoreError> {
    audit::record(
        conn,
        clock,
        ctx,
        &AuditEvent::AuthorizationRefused {
            client_id: client_id.to_owned(),
            error: error.code.to_owned(),
            reason: error.description.clone(),
        },
    )
}

/// The pending request behind a handle, unless unknown, expired or already completed.
pub fn load(
    conn: &mut DbConnection,
    handle: &str,
    now: i64,
) -> Result<Option<Pending>, StoreError> {
    let Some(row) = grants::find_auth_request(conn, &request_hash(handle))? else {
        return Ok(None);
    };
    if row.completed_at.is_some() || row.expires_at <= now {
        return Ok(None);
    }
    let stored: StoredRequest = serde_json::from_str(&row.request)
        .map_err(|e| StoreError::Corrupt(format!("auth request: {e}")))?;
    let client = match clients::get(conn, &row.client_id) {
        Ok(c) if c.enabled => c,
        Ok(_) | Err(clients::RegistryError::NotFound(_)) => return Ok(None),
        Err(clients::RegistryError::Store(e)) => return Err(e),
        Err(other) => return Err(StoreError::Corrupt(other.to_string())),
    };
    Ok(Some(Pending {
        id_hash: row.id_hash,
        request: stored.request,
        launch: stored.launch,
        prior_session: stored.prior_session,
        user_id: row.user_id,
        client,
        offered: serde_json::from_str(&row.offered).unwrap_or_default(),
        patient: row.patient,
        created_at: row.created_at,
    }))
}

/// The signed-in person with the scope ceilings of their roles.
pub fn subject(conn: &mut DbConnection, user_id: &str) -> Result<Option<Subject>, StoreError> {
    Ok(roles::user_with_roles(conn, user_id)?.and_then(|(user, held)| Subject::of(user, held)))
}

/// What happens next for a pending request.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Send the browser to sign in (`again`: even though a session exists).
    SignIn {
        again: bool,
    },
    /// End the request with this error at the client.
    Fail(OAuthError),
    PickPatient,
    /// Show the consent page for these candidate scopes.
    Consent {
        candidate: ScopeSet,
        patient: Option<String>,
    },
    /// Consent was remembered and covers everything: approve without a page.
    Approve {
        candidate: ScopeSet,
        patient: Option<String>,
    },
}

/// The scopes this person may grant this app for this request (DESIGN.md §6), before consent.
pub fn candidate(pending: &Pending, subject: &Subject) -> ScopeSet {
    let mut granted = grantable(
        &subject.ceilings,
        &pending.client.settings,
        &pending.request.scope,
    )
    .granted;
    // Refresh tokens only for clients registered for the refresh_token grant.
    if !pending
        .client
        .settings
        .grant_types
        .contains(&GrantType::RefreshToken)
    {
        granted = without_refresh(&granted);
    }
    granted
}

/// What emergency access (break-glass) would grant for this request: requested ∩ the client's
/// allowance, bound to one patient, not cut by the person's role ceilings, never refreshable,
/// marked `__ward.break_glass` (see [`crate::authz::grant::grantable_in_emergency`]).
pub fn break_glass_candidate(pending: &Pending) -> ScopeSet {
    crate::authz::grant::grantable_in_emergency(&pending.client.settings, &pending.request.scope)
        .granted
}

/// The scopes without `offline_access` and `online_access`: no refresh token will come of them.
pub fn without_refresh(scopes: &ScopeSet) -> ScopeSet {
    scopes
        .iter()
        .filter(|s| {
            !matches!(
                s,
                crate::smart::scopes::Scope::Identity(
                    IdentityScope::OfflineAccess | IdentityScope::OnlineAccess
                )
            )
        })
        .cloned()
        .collect()
}

/// The patient in context: the EHR's, or the patient user's own record, or the one picked (by
/// someone allowed to pick).
pub fn patient_in_context(pending: &Pending, subject: &Subject) -> Option<String> {
    if let Some(p) = pending
        .launch
        .as_ref()
        .and_then(|l| l.context.patient.clone())
    {
        return Some(p);
    }
    if let Some(own) = subject.own_patient() {
        return Some(own.to_owned());
    }
    pending
        .patient
        .clone()
        .filter(|_| subject.may_pick_patients())
}

/// When the person last proved who they are (the second factor, or else the password).
pub fn auth_time(session: &SessionInfo) -> i64 {
    session.mfa_at.map_or(session.authenticated_at, |m| {
        m.max(session.authenticated_at)
    })
}

/// Whether approving a candidate would grant anything: clinical data, or the person's identity.
pub fn grants_something(candidate: &ScopeSet) -> bool {
    candidate.resource_scopes().next().is_some()
        || candidate.iter().any(|s| {
            matches!(
                s,
                crate::smart::scopes::Scope::Identity(
                    IdentityScope::OpenId | IdentityScope::FhirUser
                )
            )
        })
}

/// Whether a scope set needs a patient in context: `launch/patient`, or any `patient/` scope.
pub fn needs_patient(scopes: &ScopeSet) -> bool {
    scopes.has(IdentityScope::LaunchPatient)
        || scopes
            .resource_scopes()
            .any(|r| r.context == crate::smart::scopes::ScopeContext::Patient)
}

/// The next step (pure): OIDC `prompt` and `max_age`, the launch's user binding, the patient
/// picker, then consent (remembered or on the page).
pub fn next_step(
    pending: &Pending,
    session: Option<&SessionInfo>,
    subject: Option<&Subject>,
    remembered: Option<&str>,
    now: i64,
) -> Step {
    let request = &pending.request;
    let signed_in = match (session, subject) {
        (Some(s), Some(subject)) if s.stage == Stage::Active && s.user_id == subject.user_id => {
            Some((s, subject))
        }
        _ => None,
    };
    let fresh_enough = |s: &SessionInfo| {
        (!request.prompt.login
            || (s.authenticated_at >= pending.created_at
                && pending.prior_session.as_deref() != Some(s.public_id.as_str())))
            && request.max_age.is_none_or(|max| now - auth_time(s) <= max)
    };
    let (session, subject) = match signed_in {
        Some((s, subject)) if fresh_enough(s) => (s, subject),
        other => {
            if request.prompt.none {
                return Step::Fail(OAuthError::login_required("the user must sign in"));
            }
            return Step::SignIn {
                again: other.is_some(),
            };
        }
    };
    if pending
        .user_id
        .as_deref()
        .is_some_and(|bound| bound != session.user_id)
    {
        return Step::Fail(OAuthError::access_denied(
            "this request was started by another person",
        ));
    }
    if let Some(bound) = pending.launch.as_ref().and_then(|l| l.user_id.as_deref()) {
        if bound != session.user_id {
            return Step::Fail(OAuthError::access_denied(
                "this launch was created for a different user",
            ));
        }
    }
    let candidate = candidate(pending, subject);
    // Nothing grantable under the person's roles: refused — unless they may break the glass
    // for this app, which then goes on to the picker and consent page that offer it.
    let emergency_only = !grants_something(&candidate)
        && crate::oauth::break_glass::offered(subject, &pending.client)
        && break_glass_candidate(pending)
            .resource_scopes()
            .next()
            .is_some();
    if !grants_something(&candidate) && !emergency_only {
        return Step::Fail(OAuthError::invalid_scope(
            "none of the requested scopes may be granted to this user and app",
        ));
    }
    let launch_patient = pending
        .launch
        .as_ref()
        .and_then(|l| l.context.patient.as_deref());
    if let (Some(launched), false) = (launch_patient, subject.may_pick_patients()) {
        if subject.own_patient() != Some(launched) {
            return Step::Fail(OAuthError::access_denied(
                "the launch's patient is not this person's own record",
            ));
        }
    }
    let patient = patient_in_context(pending, subject);
    // A patient-context request without a patient from the EHR or the user's own record goes
    // through the picker (also in an EHR launch whose context has no patient) — for clinicians.
    if (needs_patient(&candidate) || emergency_only) && patient.is_none() {
        if !subject.may_pick_patients() {
            return Step::Fail(OAuthError::access_denied(
                "no patient record is linked to this account",
            ));
        }
        if request.prompt.none {
            return Step::Fail(OAuthError::interaction_required(
                "a patient must be selected",
            ));
        }
        return Step::PickPatient;
    }
    let covered = remembered.is_some_and(|scope| {
        let remembered = ScopeSet::parse(scope).0;
        remembered.covers_all(&candidate) && candidate.identity_scopes().all(|i| remembered.has(i))
    });
    if covered && !request.prompt.consent && !emergency_only {
        return Step::Approve { candidate, patient };
    }
    if request.prompt.none {
        return Step::Fail(OAuthError::consent_required(
            "the user must approve this app",
        ));
    }
    Step::Consent { candidate, patient }
}

/// What an approval produced: the code to send to the client.
#[derive(Debug, Clone)]
pub struct Approval {
    pub redirect: String,
}

/// What a code carries into the token endpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CodeGrant {
    pub scope: String,
    pub aud: String,
    pub nonce: Option<String>,
    pub context: LaunchContext,
    pub fhir_user: Option<String>,
    pub auth_time: i64,
    pub amr: Vec<String>,
    pub name: String,
    pub username: String,
}

pub struct ApproveInput<'a> {
    pub pending: &'a Pending,
    pub session: &'a SessionInfo,
    pub subject: &'a Subject,
    pub granted: ScopeSet,
    pub patient: Option<String>,
    pub remember: bool,
    pub remembered_before: bool,
    pub issuer: &'a str,
}

/// Approves: completes the request (once), creates the token family and the code, remembers
/// consent if asked, audits; returns the redirect with `code`, `state` and `iss`.
pub fn approve(
    conn: &mut DbConnection,
    clock: &dyn Clock,
    ctx: &AuditContext,
    input: ApproveInput<'_>,
) -> Result<Option<Approval>, StoreError> {
    let prepared = prepare_grant(clock.now_secs(), &input, false)?;
    let done = write_transaction(conn, |conn| {
        if !write_grant(conn, &prepared)? {
            return Ok::<_, StoreError>(false);
        }
        audit::append(
            conn,
            clock,
            ctx,
            &AuditEvent::AuthorizationGranted {
                client_id: input.pending.client.client_id.clone(),
                scope: input.granted.to_string(),
                patient: prepared.patient.clone(),
                remembered: input.remembered_before,
            },
        )?;
        Ok(true)
    })?;
    Ok(done.then(|| prepared.approval(input.pending, input.issuer)))
}

/// Emergency access: how long its access token lives (a constant, never a setting), at most.
pub const BREAK_GLASS_TOKEN_LIFETIME: i64 = 900;

/// A grant ready to be written: the rows of the family and the code, and the code itself.
pub(crate) struct PreparedGrant {
    code: String,
    pub(crate) family: FamilyRow,
    code_row: CodeRow,
    consent: Option<ConsentRow>,
    id_hash: String,
    pub(crate) patient: Option<String>,
}

impl PreparedGrant {
    pub(crate) fn approval(&self, pending: &Pending, issuer: &str) -> Approval {
        let mut pairs = vec![("code", self.code.as_str())];
        if let Some(state) = &pending.request.state {
            pairs.push(("state", state));
        }
        pairs.push(("iss", issuer));
        Approval {
            redirect: authorize_request::redirect_with(&pending.request.redirect_uri, &pairs),
        }
    }
}

/// Builds the rows of an approval. `emergency` (break-glass): the family is kind `break_glass`,
/// lives only as long as its one short-lived access token, and consent is never remembered.
pub(crate) fn prepare_grant(
    now: i64,
    input: &ApproveInput<'_>,
    emergency: bool,
) -> Result<PreparedGrant, StoreError> {
    let pending = input.pending;
    let settings = &pending.client.settings;
    let granted = &input.granted;
    let mut context = pending
        .launch
        .as_ref()
        .map(|l| l.context.clone())
        .unwrap_or_default();
    if context.patient.is_none() {
        context.patient = input.patient.clone();
        if context.patient.is_some() {
            // Standalone launch: no EHR around the app to show who the patient is.
            context.need_patient_banner = Some(true);
        }
    }
    let context = context.limited_to(granted);
    let online =
        granted.has(IdentityScope::OnlineAccess) && !granted.has(IdentityScope::OfflineAccess);
    let refreshable =
        granted.has(IdentityScope::OnlineAccess) || granted.has(IdentityScope::OfflineAccess);
    let family_expires = if emergency {
        now + CODE_TTL + BREAK_GLASS_TOKEN_LIFETIME.min(settings.access_token_lifetime)
    } else if refreshable {
        now + settings.refresh_token_absolute_lifetime
    } else {
        now + CODE_TTL + settings.access_token_lifetime
    };
    let code = random_token(32);
    let family_id = crate::store::new_row_key();
    let grant = CodeGrant {
        scope: granted.to_string(),
        aud: pending.request.aud.clone(),
        nonce: pending.request.nonce.clone(),
        context: context.clone(),
        fhir_user: input.subject.fhir_user.clone(),
        auth_time: auth_time(input.session),
        amr: input.session.amr.clone(),
        name: input.subject.display_name.clone(),
        username: input.subject.username.clone(),
    };
    let grant_json =
        serde_json::to_string(&grant).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let context_json =
        serde_json::to_string(&context).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Ok(PreparedGrant {
        family: FamilyRow {
            id: family_id.clone(),
            client_id: pending.client.client_id.clone(),
            user_id: Some(input.subject.user_id.clone()),
            session_id: (online && !emergency).then(|| input.session.public_id.clone()),
            grant_kind: if emergency {
                BREAK_GLASS_GRANT.into()
            } else {
                "authorization_code".into()
            },
            scope: granted.to_string(),
            aud: pending.request.aud.clone(),
            context: context_json,
            created_at: now,
            expires_at: family_expires,
            revoked_at: None,
            revoked_reason: None,
        },
        code_row: CodeRow {
            code_hash: sha256_b64(code.as_bytes()),
            client_id: pending.client.client_id.clone(),
            user_id: input.subject.user_id.clone(),
            redirect_uri: pending.request.redirect_uri.clone(),
            code_challenge: pending.request.code_challenge.clone(),
            grant_details: grant_json,
            family_id,
            created_at: now,
            expires_at: now + CODE_TTL,
            redeemed_at: None,
        },
        consent: (input.remember && !emergency).then(|| ConsentRow {
            user_id: input.subject.user_id.clone(),
            client_id: pending.client.client_id.clone(),
            scope: granted.to_string(),
            aud: pending.request.aud.clone(),
            created_at: now,
            updated_at: now,
        }),
        id_hash: pending.id_hash.clone(),
        patient: context.patient,
        code,
    })
}

/// The `grant_kind` of an emergency-access family.
pub const BREAK_GLASS_GRANT: &str = "break_glass";

/// Writes a prepared grant inside the caller's transaction: completes the request (false when
/// it was already completed, and then nothing is written), the family, the code, the consent.
pub(crate) fn write_grant(
    conn: &mut DbConnection,
    prepared: &PreparedGrant,
) -> Result<bool, StoreError> {
    let now = prepared.family.created_at;
    if !grants::complete_auth_request(conn, &prepared.id_hash, now)? {
        return Ok(false);
    }
    grants::insert_family(conn, &prepared.family)?;
    grants::insert_code(conn, &prepared.code_row)?;
    if let Some(consent) = &prepared.consent {
        grants::remember_consent(conn, consent)?;
    }
    Ok(true)
}

/// Ends a pending request with an error at the client (denied, or refused by a rule).
pub fn refuse(
    conn: &mut DbConnection,
    clock: &dyn Clock,
    ctx: &AuditContext,
    pending: &Pending,
    error: &OAuthError,
    issuer: &str,
) -> Result<String, StoreError> {
    let now = clock.now_secs();
    write_transaction(conn, |conn| {
        grants::complete_auth_request(conn, &pending.id_hash, now)?;
        audit::append(
            conn,
            clock,
            ctx,
            &AuditEvent::AuthorizationRefused {
                client_id: pending.client.client_id.clone(),
                error: error.code.to_owned(),
                reason: error.description.clone(),
            },
        )
    })?;
    Ok(authorize_request::error_redirect(
        &pending.request.redirect_uri,
        error,
        pending.request.state.as_deref(),
        issuer,
    ))
}

/// Records patients the picker showed, so only those can be chosen, and audits the disclosure.
pub fn offer(
    conn: &mut DbConnection,
    clock: &dyn Clock,
    ctx: &AuditContext,
    pending: &Pending,
    ids: &[String],
) -> Result<(), StoreError> {
    let mut offered = pending.offered.clone();
    for id in ids {
        if !offered.contains(id) && offered.len() < MAX_OFFERED {
            offered.push(id.clone());
        }
    }
    let json = serde_json::to_string(&offered).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    write_transaction(conn, |conn| {
        grants::set_offered(conn, &pending.id_hash, &json)?;
        audit::append(
            conn,
            clock,
            ctx,
            &AuditEvent::PatientSearched {
                client_id: pending.client.client_id.clone(),
                offered: ids.to_vec(),
            },
        )
    })
}

/// Chooses a patient, once; false when the id was not offered to this request or a patient
/// was already chosen.
pub fn choose_patient(
    conn: &mut DbConnection,
    clock: &dyn Clock,
    ctx: &AuditContext,
    pending: &Pending,
    id: &str,
) -> Result<bool, StoreError> {
    if !pending.offered.iter().any(|o| o == id) {
        return Ok(false);
    }
    write_transaction(conn, |conn| {
        if !grants::set_patient(conn, &pending.id_hash, id)? {
            return Ok(false);
        }
        audit::append(
            conn,
            clock,
            ctx,
            &AuditEvent::PatientSelected {
                client_id: pending.client.client_id.clone(),
                patient: id.to_owned(),
            },
        )?;
        Ok(true)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clients::model::{validate, ClientSpec};
    use crate::oauth::authorize_request::Prompt;

    const T0: i64 = 1_900_000_000;

    fn pending(scope: &str, prompt: Prompt, max_age: Option<i64>) -> Pending {
        Pending {
            id_hash: "h".into(),
            request: AuthorizeRequest {
                client_id: "app".into(),
                redirect_uri: "https://app.example.com/cb".into(),
                scope: scope.into(),
                state: None,
                nonce: None,
                code_challenge: "c".into(),
                aud: "https://fhir.example.org/r4".into(),
                launch: None,
                prompt,
                max_age,
                login_hint: None,
            },
            launch: None,
            prior_session: Some("old".into()),
            user_id: None,
            client: Client {
                client_id: "app".into(),
                settings: validate(&ClientSpec {
                    name: "App".into(),
                    kind: Some("public".into()),
                    redirect_uris: vec!["https://app.example.com/cb".into()],
                    scope: "openid fhirUser launch launch/patient offline_access patient/*.rs user/*.rs".into(),
                    ..ClientSpec::default()
                })
                .unwrap(),
                enabled: true,
                created_at: 0,
                updated_at: 0,
                version: 1,
            },
            offered: vec![],
            patient: None,
            created_at: T0,
        }
    }

    fn session(id: &str, authenticated_at: i64) -> SessionInfo {
        SessionInfo {
            id_hash: "x".into(),
            public_id: id.into(),
            user_id: "u1".into(),
            username: "dr".into(),
            display_name: "Dr".into(),
            stage: Stage::Active,
            amr: vec!["pwd".into()],
            authenticated_at,
            mfa_at: None,
        }
    }

    #[test]
    fn a_subject_is_what_an_enabled_accounts_roles_allow() {
        let account = |enabled: bool| AccountRow {
            id: "u1".into(),
            username: "nora".into(),
            display_name: "Nora".into(),
            fhir_user: Some("Practitioner/7".into()),
            enabled,
        };
        let role = |name: &str, ceiling: &str, break_glass: bool| RoleRow {
            name: name.into(),
            description: String::new(),
            scope_ceiling: ceiling.into(),
            mfa_required: true,
            break_glass,
            created_at: T0,
            updated_at: T0,
            version: 1,
            passwordless: false,
        };
        let roles = vec![
            role("billing", "user/Coverage.rs", false),
            role("physician", "user/*.cruds", true),
        ];
        let s = Subject::of(account(true), roles.clone()).expect("enabled");
        assert_eq!(
            (
                s.user_id.as_str(),
                s.username.as_str(),
                s.display_name.as_str()
            ),
            ("u1", "nora", "Nora")
        );
        assert_eq!(s.fhir_user.as_deref(), Some("Practitioner/7"));
        let ceilings: Vec<String> = s.ceilings.iter().map(ScopeSet::to_string).collect();
        assert_eq!(ceilings, ["user/Coverage.rs", "user/*.cruds"]);
        assert!(s.break_glass);
        let no_roles = Subject::of(account(true), Vec::new()).expect("enabled");
        assert!(no_roles.ceilings.is_empty() && !no_roles.break_glass);
        assert!(Subject::of(account(false), roles).is_none());
    }

    fn subject(fhir_user: Option<&str>, ceiling: &str) -> Subject {
        Subject {
            user_id: "u1".into(),
            username: "dr".into(),
            display_name: "Dr".into(),
            fhir_user: fhir_user.map(str::to_owned),
            ceilings: vec![ScopeSet::parse(ceiling).0],
            break_glass: false,
        }
    }

    #[test]
    fn sign_in_first_and_prompt_none_fails_instead() {
        let p = pending("openid patient/*.rs", Prompt::default(), None);
        assert_eq!(
            next_step(&p, None, None, None, T0),
            Step::SignIn { again: false }
        );
        let none = pending(
            "openid",
            Prompt {
                none: true,
                ..Prompt::default()
            },
            None,
        );
        assert!(
            matches!(next_step(&none, None, None, None, T0), Step::Fail(e) if e.code == "login_required")
        );
    }

    #[test]
    fn prompt_login_needs_a_new_session_and_max_age_a_recent_one() {
        let s = subject(None, "user/*.rs");
        let login = pending(
            "openid user/*.rs",
            Prompt {
                login: true,
                ..Prompt::default()
            },
            None,
        );
        let old = session("old", T0);
        assert_eq!(
            next_step(&login, Some(&old), Some(&s), None, T0),
            Step::SignIn { again: true }
        );
        let fresh = session("new", T0);
        assert!(matches!(
            next_step(&login, Some(&fresh), Some(&s), None, T0),
            Step::Consent { .. }
        ));
        let aged = pending("openid user/*.rs", Prompt::default(), Some(60));
        let earlier = session("new", T0 - 61);
        assert_eq!(
            next_step(&aged, Some(&earlier), Some(&s), None, T0),
            Step::SignIn { again: true }
        );
    }

    #[test]
    fn a_launch_for_another_user_is_refused() {
        let mut p = pending("launch openid patient/*.rs", Prompt::default(), None);
        p.launch = Some(ResolvedLaunch {
            user_id: Some("someone-else".into()),
            context: LaunchContext::default(),
        });
        let s = subject(None, "user/*.rs");
        assert!(matches!(
            next_step(&p, Some(&session("new", T0)), Some(&s), None, T0),
            Step::Fail(e) if e.code == "access_denied"
        ));
    }

    #[test]
    fn patient_context_comes_from_the_patient_user_or_the_picker() {
        let p = pending("launch/patient patient/*.rs", Prompt::default(), None);
        let patient = subject(Some("Patient/123"), "patient/*.rs");
        match next_step(&p, Some(&session("s", T0)), Some(&patient), None, T0) {
            Step::Consent { patient, .. } => assert_eq!(patient.as_deref(), Some("123")),
            other => panic!("{other:?}"),
        }
        let clinician = subject(Some("Practitioner/9"), "user/*.rs");
        assert_eq!(
            next_step(&p, Some(&session("s", T0)), Some(&clinician), None, T0),
            Step::PickPatient
        );
        let mut picked = p.clone();
        picked.patient = Some("p2".into());
        assert!(matches!(
            next_step(&picked, Some(&session("s", T0)), Some(&clinician), None, T0),
            Step::Consent { .. }
        ));
    }

    #[test]
    fn remembered_consent_approves_only_what_it_covers() {
        let p = pending("openid patient/Observation.rs", Prompt::default(), None);
        let s = subject(Some("Patient/1"), "patient/*.rs");
        let live = session("s", T0);
        assert!(matches!(
            next_step(&p, Some(&live), Some(&s), Some("openid patient/*.rs"), T0),
            Step::Approve { .. }
        ));
        assert!(
            matches!(
                next_step(&p, Some(&live), Some(&s), Some("patient/*.rs"), T0),
                Step::Consent { .. }
            ),
            "openid was not remembered"
        );
        let forced = pending(
            "openid patient/Observation.rs",
            Prompt {
                consent: true,
                ..Prompt::default()
            },
            None,
        );
        assert!(matches!(
            next_step(
                &forced,
                Some(&live),
                Some(&s),
                Some("openid patient/*.rs"),
                T0
            ),
            Step::Consent { .. }
        ));
        let none = pending(
            "openid patient/Observation.rs",
            Prompt {
                none: true,
                ..Prompt::default()
            },
            None,
        );
        assert!(
            matches!(next_step(&none, Some(&live), Some(&s), None, T0), Step::Fail(e) if e.code == "consent_required")
        );
    }

    #[test]
    fn nothing_grantable_is_invalid_scope() {
        let p = pending("patient/Observation.rs", Prompt::default(), None);
        let s = subject(None, "user/Coverage.rs");
        assert!(matches!(
            next_step(&p, Some(&session("s", T0)), Some(&s), None, T0),
            Step::Fail(e) if e.code == "invalid_scope"
        ));
    }

    #[test]
    fn break_glass_grants_the_clients_allowance_for_one_patient_past_the_role_ceiling() {
        // The client allows `openid fhirUser launch launch/patient offline_access patient/*.rs
        // user/*.rs`; the person's role covers only Coverage.
        let p = pending(
            "openid fhirUser launch/patient offline_access user/Observation.rs patient/Condition.rs",
            Prompt::default(),
            None,
        );
        let normal = candidate(&p, &subject(None, "user/Coverage.rs"));
        assert_eq!(normal.resource_scopes().count(), 0);
        let emergency = break_glass_candidate(&p);
        let text = emergency.to_string();
        for wanted in [
            "openid",
            "fhirUser",
            "launch/patient",
            "patient/Observation.rs",
            "patient/Condition.rs",
            "__ward.break_glass",
        ] {
            assert!(text.split(' ').any(|s| s == wanted), "{wanted} in {text}");
        }
        assert!(emergency.is_break_glass());
        assert!(
            !emergency.has(IdentityScope::OfflineAccess),
            "never a refresh token"
        );
        assert!(
            emergency
                .resource_scopes()
                .all(|r| r.context == crate::smart::scopes::ScopeContext::Patient),
            "bound to the one patient: {text}"
        );
    }

    #[test]
    fn break_glass_never_widens_the_clients_allowance() {
        let mut p = pending(
            "openid patient/Observation.rs patient/Condition.rs system/Patient.rs __ward.break_glass __ward.admin.read",
            Prompt::default(),
            None,
        );
        p.client.settings = validate(&ClientSpec {
            name: "Narrow".into(),
            kind: Some("public".into()),
            redirect_uris: vec!["https://app.example.com/cb".into()],
            scope: "openid patient/Observation.r".into(),
            ..ClientSpec::default()
        })
        .unwrap();
        let emergency = break_glass_candidate(&p);
        assert_eq!(
            emergency.to_string(),
            ScopeSet::parse("openid patient/Observation.r __ward.break_glass")
                .0
                .to_string()
        );
        let allowance = p.client.settings.scope_set();
        assert!(allowance.covers_all(&emergency));
    }

    #[test]
    fn the_marking_cannot_be_requested_through_the_normal_rule() {
        let p = pending(
            "openid patient/*.rs __ward.break_glass",
            Prompt::default(),
            None,
        );
        let normal = candidate(&p, &subject(Some("Patient/1"), "patient/*.rs"));
        assert!(!normal.is_break_glass());
        assert!(normal.resource_scopes().next().is_some());
    }

    #[test]
    fn break_glass_needs_the_role_a_human_app_a_reason_and_the_patient_in_context() {
        use crate::oauth::break_glass::{decide, Origin, Refusal};
        let p = pending(
            "openid launch/patient patient/Observation.rs",
            Prompt::default(),
            None,
        );
        let mut allowed = subject(Some("Practitioner/9"), "user/Coverage.rs");
        allowed.break_glass = true;
        let plain = subject(Some("Practitioner/9"), "user/Coverage.rs");
        let consent = Origin::Consent {
            patient: Some("p1"),
        };
        let why = "cardiac arrest, chart needed now";
        let ok = decide(&p, &allowed, consent, "p1", why).unwrap();
        assert_eq!(ok.patient, "p1");
        assert_eq!(ok.reason, why);
        assert!(ok.granted.is_break_glass());
        assert_eq!(
            decide(&p, &plain, consent, "p1", why),
            Err(Refusal::NotPermitted)
        );
        assert_eq!(
            decide(&p, &allowed, consent, "p1", "  "),
            Err(Refusal::BadReason)
        );
        assert_eq!(
            decide(&p, &allowed, consent, "p2", why),
            Err(Refusal::BadPatient),
            "only the patient in context"
        );
        let offered = vec!["p3".to_owned()];
        let picker = Origin::Picker { offered: &offered };
        assert!(decide(&p, &allowed, picker, "p3", why).is_ok());
        assert_eq!(
            decide(&p, &allowed, picker, "p4", why),
            Err(Refusal::BadPatient),
            "only a patient the picker showed"
        );
        let mut ai = p.clone();
        ai.client.settings.ai_tool = true;
        assert_eq!(
            decide(&ai, &allowed, consent, "p1", why),
            Err(Refusal::ClientExcluded)
        );
        let identity_only = pending("openid fhirUser", Prompt::default(), None);
        assert_eq!(
            decide(&identity_only, &allowed, consent, "p1", why),
            Err(Refusal::NothingToGrant)
        );
    }

    #[test]
    fn nothing_grantable_still_reaches_the_picker_for_someone_who_may_break_the_glass() {
        let p = pending(
            "launch/patient patient/Observation.rs",
            Prompt::default(),
            None,
        );
        let mut nurse = subject(Some("Practitioner/9"), "user/Coverage.rs");
        let live = session("s", T0);
        assert!(matches!(
            next_step(&p, Some(&live), Some(&nurse), None, T0),
            Step::Fail(e) if e.code == "invalid_scope"
        ));
        nurse.break_glass = true;
        assert_eq!(
            next_step(&p, Some(&live), Some(&nurse), None, T0),
            Step::PickPatient
        );
        let mut picked = p.clone();
        picked.patient = Some("p1".into());
        match next_step(&picked, Some(&live), Some(&nurse), None, T0) {
            Step::Consent { candidate, patient } => {
                assert!(
                    !grants_something(&candidate),
                    "nothing but by breaking the glass"
                );
                assert_eq!(patient.as_deref(), Some("p1"));
            }
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(
                next_step(
                    &picked,
                    Some(&live),
                    Some(&nurse),
                    Some("launch/patient"),
                    T0
                ),
                Step::Consent { .. }
            ),
            "a remembered consent never approves an empty grant"
        );
        let mut ai = p.clone();
        ai.client.settings.ai_tool = true;
        assert!(matches!(
            next_step(&ai, Some(&live), Some(&nurse), None, T0),
            Step::Fail(e) if e.code == "invalid_scope"
        ));
    }
}
