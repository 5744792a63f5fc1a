//! Emergency access ("break-glass", HIPAA 45 CFR 164.312(a)(2)(ii) emergency access procedure).
//!
//! A person holding a role with `break_glass` may, from the consent page (for the patient in
//! context) or the patient picker (for a patient the picker showed), bypass their role ceiling
//! for that one patient:
//!
//! ```text
//!  consent / picker ──"Emergency access"──► form (CSRF, patient, reason, fresh TOTP code)
//!     ──► decide (pure): role allows it? client may receive it? reason? patient? anything to grant?
//!     ──► one transaction: TOTP re-authentication (sign-in's back-off and single-use rules)
//!            ├─ accepted: request completed, family `break_glass`, code, `break_glass.invoked`
//!            └─ refused:  failure counted, `break_glass.refused`
//! ```
//!
//! What it grants is [`authorize::break_glass_candidate`]: requested ∩ the client's allowance
//! (never wider), as `patient/` scopes for that patient, no refresh token, an access token of at
//! most [`authorize::BREAK_GLASS_TOKEN_LIFETIME`], the `__ward.break_glass` marking in the scope
//! and a `break_glass: true` claim (token, token response, introspection), no remembered
//! consent. AI-tool clients never receive it; backend services have no user to break the glass.
//! Every decision appends exactly one event (`break_glass.invoked` or `break_glass.refused`,
//! both high severity, so both raise a security alert).

use super::authorize::{self, Approval, ApproveInput, Pending, Subject};
use crate::audit::{self, AuditContext, AuditEvent, LoginFailure};
use crate::authn::login::{self, LoginError, LoginPolicy, Reauthentication, SessionInfo};
use crate::clients::{Client, GrantType};
use crate::clock::Clock;
use crate::crypto::seal::Sealer;
use crate::smart::scopes::ScopeSet;
use crate::store::{write_transaction, DbConnection, StoreError};

/// The justification: at least this many characters once trimmed …
pub const REASON_MIN_CHARS: usize = 10;
/// … and at most this many.
pub const REASON_MAX_CHARS: usize = 500;

/// Why an emergency access was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// None of the person's roles allows break-glass.
    NotPermitted,
    /// The client may never receive emergency access (an AI tool).
    ClientExcluded,
    /// No usable justification (missing, too short or long, control characters).
    BadReason,
    /// The patient is not the one in context, or was not shown by the picker.
    BadPatient,
    /// The client is allowed none of the requested data scopes.
    NothingToGrant,
    /// The fresh second factor failed (wrong, replayed or throttled).
    SecondFactor(LoginFailure),
    /// The form's CSRF token did not match the session.
    Csrf,
    /// The second factor held, but the request had been completed meanwhile (another tab).
    RequestCompleted,
}

impl Refusal {
    /// The rule that refused, for the audit trail (`error`).
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::NotPermitted => "not_permitted",
            Refusal::ClientExcluded => "client_excluded",
            Refusal::BadReason => "reason_required",
            Refusal::BadPatient => "patient_not_in_context",
            Refusal::NothingToGrant => "nothing_to_grant",
            Refusal::SecondFactor(LoginFailure::Throttled) => "second_factor_throttled",
            Refusal::SecondFactor(LoginFailure::ReplayedCode) => "second_factor_replayed",
            Refusal::SecondFactor(_) => "second_factor_failed",
            Refusal::Csrf => "csrf",
            Refusal::RequestCompleted => "request_completed",
        }
    }

    /// What the person is told (safe to show).
    pub fn message(&self) -> String {
        match self {
            Refusal::NotPermitted => "None of your roles allows emergency access.".into(),
            Refusal::ClientExcluded => "Emergency access is never granted to this kind of app.".into(),
            Refusal::BadReason => format!(
                "Give the reason for emergency access: {REASON_MIN_CHARS} to {REASON_MAX_CHARS} characters of plain text."
            ),
            Refusal::BadPatient => {
                "Emergency access is for the patient in context, or one the patient search showed.".into()
            }
            Refusal::NothingToGrant => {
                "This app is not allowed any of the health records it asked for, even in an emergency.".into()
            }
            Refusal::SecondFactor(_) => {
                "That authenticator code did not work. Wait for a new code and try again.".into()
            }
            Refusal::Csrf => "For your security the form could not be accepted. Reload the page and try again.".into(),
            Refusal::RequestCompleted => "This request was already completed.".into(),
        }
    }
}

/// Whether the consent page or the picker shows the emergency-access action to this person for
/// this client.
pub fn offered(subject: &Subject, client: &Client) -> bool {
    subject.break_glass
        && !client.settings.ai_tool
        && client
            .settings
            .grant_types
            .contains(&GrantType::AuthorizationCode)
}

/// The justification, trimmed; refused when empty, shorter than [`REASON_MIN_CHARS`], longer
/// than [`REASON_MAX_CHARS`] or holding control characters (it goes into the audit trail and
/// alerts verbatim).
pub fn reason(text: &str) -> Result<String, Refusal> {
    let trimmed = text.trim();
    let chars = trimmed.chars().count();
    if !(REASON_MIN_CHARS..=REASON_MAX_CHARS).contains(&chars)
        || trimmed
            .chars()
            .any(|c| c.is_control() || is_invisible_format(c))
    {
        return Err(Refusal::BadReason);
    }
    Ok(trimmed.to_owned())
}

/// Invisible formatting characters (bidi overrides and isolates, zero-width characters, the
/// byte-order mark) that would make a reason read differently in a report than it was written.
fn is_invisible_format(c: char) -> bool {
    matches!(c,
        '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
}

/// Where the person stands in the request: which patients emergency access may name.
#[derive(Debug, Clone, Copy)]
pub enum Origin<'a> {
    /// On the consent page: the patient in context only.
    Consent { patient: Option<&'a str> },
    /// On the picker: a patient the picker showed (and audited) for this request.
    Picker { offered: &'a [String] },
}

/// An emergency access that passed every rule but the fresh second factor.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub granted: ScopeSet,
    pub patient: String,
    pub reason: String,
}

/// The rule (pure), in order: the role allows it, the client may receive it, a justification,
/// the patient, and something to grant.
pub fn decide(
    pending: &Pending,
    subject: &Subject,
    origin: Origin<'_>,
    patient: &str,
    reason_text: &str,
) -> Result<Decision, Refusal> {
    if !subject.break_glass {
        return Err(Refusal::NotPermitted);
    }
    if !offered(subject, &pending.client) {
        return Err(Refusal::ClientExcluded);
    }
    let reason = reason(reason_text)?;
    if !patient_allowed(origin, patient) {
        return Err(Refusal::BadPatient);
    }
    let granted = authorize::break_glass_candidate(pending);
    if granted.resource_scopes().next().is_none() {
        return Err(Refusal::NothingToGrant);
    }
    Ok(Decision {
        granted,
        patient: patient.to_owned(),
        reason,
    })
}

/// Whether emergency access may name `patient` here: the patient in context on the consent
/// page, or one the picker showed for this request. Only such a patient is recorded as the
/// target of a refusal (a posted id must not land in someone's accounting of disclosures).
pub fn patient_allowed(origin: Origin<'_>, patient: &str) -> bool {
    let shown = match origin {
        Origin::Consent {
            patient: in_context,
        } => in_context == Some(patient),
        Origin::Picker { offered } => offered.iter().any(|o| o == patient),
    };
    shown && crate::smart::launch::valid_fhir_id(patient)
}

/// Records a refusal as the decision's one event, in its own committed transaction.
pub fn refuse(
    conn: &mut DbConnection,
    clock: &dyn Clock,
    ctx: &AuditContext,
    client_id: &str,
    patient: Option<&str>,
    refusal: &Refusal,
) -> Result<(), StoreError> {
    audit::record(
        conn,
        clock,
        ctx,
        &refusal_event(client_id, patient, refusal),
    )
}

fn refusal_event(client_id: &str, patient: Option<&str>, refusal: &Refusal) -> AuditEvent {
    AuditEvent::BreakGlassRefused {
        client_id: client_id.to_owned(),
        patient: patient
            .filter(|p| crate::smart::launch::valid_fhir_id(p))
            .map(str::to_owned),
        error: refusal.code().to_owned(),
        reason: refusal.message(),
    }
}

/// What [`invoke`] needs besides the database.
pub struct Invocation<'a> {
    pub pending: &'a Pending,
    pub session: &'a SessionInfo,
    pub subject: &'a Subject,
    pub decision: Decision,
    pub code: &'a str,
    pub issuer: &'a str,
}

/// Checks the fresh TOTP code and, if it holds, grants — one transaction, so the request is
/// completed, the family and code written and `break_glass.invoked` appended together; a
/// failed code commits only its failure count and `break_glass.refused`. `Ok(Ok(None))`: the
/// request was completed meanwhile (nothing granted; the code step is spent and the refusal
/// recorded).
pub fn invoke(
    conn: &mut DbConnection,
    clock: &dyn Clock,
    sealer: &Sealer,
    policy: &LoginPolicy,
    ctx: &AuditContext,
    input: Invocation<'_>,
) -> Result<Result<Option<Approval>, Refusal>, LoginError> {
    let pending = input.pending;
    let client_id = pending.client.client_id.clone();
    let approve = ApproveInput {
        pending,
        session: input.session,
        subject: input.subject,
        granted: input.decision.granted.clone(),
        patient: Some(input.decision.patient.clone()),
        remember: false,
        remembered_before: false,
        issuer: input.issuer,
    };
    let prepared = authorize::prepare_grant(clock.now_secs(), &approve, true)?;
    write_transaction(conn, |conn| {
        let check = login::reauthenticate_with_totp(
            conn,
            clock,
            sealer,
            policy,
            ctx,
            &input.subject.user_id,
            input.code,
        )?;
        if let Reauthentication::Refused(failure) = check {
            let refusal = Refusal::SecondFactor(failure);
            audit::append(
                conn,
                clock,
                ctx,
                &refusal_event(&client_id, Some(&input.decision.patient), &refusal),
            )?;
            return Ok(Err(refusal));
        }
        if !authorize::write_grant(conn, &prepared)? {
            // Still one event for the decision: the code was spent, nothing was granted.
            audit::append(
                conn,
                clock,
                ctx,
                &refusal_event(
                    &client_id,
                    Some(&input.decision.patient),
                    &Refusal::RequestCompleted,
                ),
            )?;
            return Ok(Ok(None));
        }
        audit::append(
            conn,
            clock,
            ctx,
            &AuditEvent::BreakGlassInvoked {
                client_id: client_id.clone(),
                family: prepared.family.id.clone(),
                patient: input.decision.patient.clone(),
                reason: input.decision.reason.clone(),
                scope: input.decision.granted.to_string(),
            },
        )?;
        Ok(Ok(Some(prepared.approval(pending, input.issuer))))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reason_is_trimmed_bounded_and_plain_text() {
        assert_eq!(
            reason("  unconscious in the ER, no ID  "),
            Ok("unconscious in the ER, no ID".into())
        );
        for bad in [
            "",
            "   ",
            "too short",
            "line one\nline two is long",
            "bell\u{7} character here",
            "reason \u{202E}desrever\u{202C} text",
            "zero\u{200B}width joiner here",
        ] {
            assert_eq!(reason(bad), Err(Refusal::BadReason), "{bad:?}");
        }
        assert!(reason(&"x".repeat(REASON_MAX_CHARS)).is_ok());
        assert_eq!(
            reason(&"x".repeat(REASON_MAX_CHARS + 1)),
            Err(Refusal::BadReason)
        );
        assert!(
            reason(&"é".repeat(REASON_MIN_CHARS)).is_ok(),
            "characters, not bytes"
        );
    }

    #[test]
    fn refusal_codes_are_distinct() {
        let all = [
            Refusal::NotPermitted,
            Refusal::ClientExcluded,
            Refusal::BadReason,
            Refusal::BadPatient,
            Refusal::NothingToGrant,
            Refusal::SecondFactor(LoginFailure::BadCode),
            Refusal::SecondFactor(LoginFailure::ReplayedCode),
            Refusal::SecondFactor(LoginFailure::Throttled),
            Refusal::Csrf,
        ];
        let mut codes: Vec<&str> = all.iter().map(Refusal::code).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), all.len());
    }
}
