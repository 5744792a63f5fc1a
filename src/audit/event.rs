//! Every kind of audit event. Each variant names one security-relevant action; its fields are
//! the details worth recording. Adding a variant is how a new kind of event comes to exist,
//! so the README's event list and the code cannot drift (a test lists `AuditEvent::ACTIONS`).
//! A unit test below keeps `ACTIONS` in step with the enum through an exhaustive match, and the
//! integration test `audit_events` produces every action in `ACTIONS` through Ward's endpoints.

use serde::Serialize;
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Success,
    Failure,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure => "failure",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Notice,
    High,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Info => "info",
            Self::Notice => "notice",
            Self::High => "high",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyCreationReason {
    /// The first keys of a new installation.
    Initial,
    /// A scheduled rotation: published now, signs after the JWKS cache lifetime.
    Rotation,
    /// An emergency rotation: signs at once (for a suspected key compromise).
    ImmediateRotation,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action")]
pub enum AuditEvent {
    /// A node started serving, with the security-relevant parts of its configuration.
    #[serde(rename = "server.started")]
    ServerStarted {
        version: String,
        backend: String,
        listen: String,
        issuer: String,
        tls: bool,
        behind_tls_proxy: bool,
        cluster: bool,
        danger_switches: Vec<String>,
    },
    /// Schema migrations were applied.
    #[serde(rename = "database.migrated")]
    DatabaseMigrated { versions: Vec<String> },
    /// A signing key was generated and published.
    #[serde(rename = "key.created")]
    SigningKeyCreated {
        kid: String,
        alg: String,
        reason: KeyCreationReason,
        activates_at: i64,
    },
    /// A client app was registered. `after` is its public registration (never a secret).
    #[serde(rename = "client.registered")]
    ClientRegistered { client_id: String, after: Value },
    /// A client's registration changed.
    #[serde(rename = "client.updated")]
    ClientUpdated {
        client_id: String,
        before: Value,
        after: Value,
    },
    /// A client was enabled or disabled.
    #[serde(rename = "client.status_changed")]
    ClientStatusChanged { client_id: String, enabled: bool },
    /// A client's secret was replaced; the previous one works until `previous_valid_until`.
    #[serde(rename = "client.secret_rotated")]
    ClientSecretRotated {
        client_id: String,
        previous_valid_until: Option<i64>,
    },
    #[serde(rename = "role.created")]
    RoleCreated { role: String, after: Value },
    #[serde(rename = "role.updated")]
    RoleUpdated {
        role: String,
        before: Value,
        after: Value,
    },
    #[serde(rename = "role.deleted")]
    RoleDeleted { role: String, before: Value },
    #[serde(rename = "user.created")]
    UserCreated { user_id: String, after: Value },
    #[serde(rename = "user.role_added")]
    UserRoleAdded { user_id: String, role: String },
    #[serde(rename = "user.role_removed")]
    UserRoleRemoved { user_id: String, role: String },
    /// A person finished signing in; `methods` as RFC 8176 AMR values.
    #[serde(rename = "login.succeeded")]
    LoginSucceeded { methods: Vec<String> },
    /// A sign-in attempt failed. The reason is for investigators; the person only ever sees
    /// the same generic message.
    #[serde(rename = "login.failed")]
    LoginFailed { reason: LoginFailure },
    #[serde(rename = "account.locked")]
    AccountLocked { consecutive_failures: i64 },
    #[serde(rename = "account.unlocked")]
    AccountUnlocked { user_id: String },
    #[serde(rename = "user.status_changed")]
    UserStatusChanged { user_id: String, enabled: bool },
    #[serde(rename = "mfa.enrolled")]
    MfaEnrolled { method: String },
    #[serde(rename = "mfa.removed")]
    MfaRemoved { method: String },
    /// An administrator removed every second factor of a user.
    #[serde(rename = "mfa.reset")]
    MfaReset { user_id: String },
    #[serde(rename = "mfa.used")]
    MfaUsed { method: String },
    #[serde(rename = "mfa.failed")]
    MfaFailed { reason: LoginFailure },
    #[serde(rename = "session.ended")]
    SessionEnded { session: String, reason: String },
    #[serde(rename = "password.changed")]
    PasswordChanged { user_id: String, by_operator: bool },
    /// A WebAuthn signature counter did not increase: the authenticator may have been cloned.
    #[serde(rename = "webauthn.counter_regression")]
    WebauthnCounterRegression {},
    /// A client failed to authenticate at a protocol endpoint.
    #[serde(rename = "client.authentication_failed")]
    ClientAuthenticationFailed {
        client_id: Option<String>,
        endpoint: String,
        reason: String,
    },
    /// An EHR created a launch context for an app.
    #[serde(rename = "launch.created")]
    LaunchCreated {
        client_id: String,
        for_user: Option<String>,
        patient: Option<String>,
    },
    /// A person approved an app's access (on the consent page or by remembered consent).
    #[serde(rename = "authorization.granted")]
    AuthorizationGranted {
        client_id: String,
        scope: String,
        patient: Option<String>,
        remembered: bool,
    },
    /// An authorization request ended without a grant (denied, or refused by a rule).
    #[serde(rename = "authorization.refused")]
    AuthorizationRefused {
        client_id: String,
        error: String,
        reason: String,
    },
    /// Tokens were issued (`grant`: authorization_code, refresh_token, client_credentials).
    #[serde(rename = "token.issued")]
    TokenIssued {
        client_id: String,
        grant: String,
        family: String,
        scope: String,
        patient: Option<String>,
    },
    /// A token request was refused.
    #[serde(rename = "token.refused")]
    TokenRefused {
        client_id: Option<String>,
        grant: String,
        error: String,
        reason: String,
    },
    /// A used code or rotated refresh token was presented again: the family is revoked.
    #[serde(rename = "token.reuse_detected")]
    TokenReuseDetected {
        client_id: String,
        family: String,
        kind: String,
    },
    /// A resource server introspected a live token (the actor is the server): a disclosure of
    /// who and which patient, recorded per the introspection audit policy.
    #[serde(rename = "token.introspected")]
    TokenIntrospected {
        client_id: String,
        family: Option<String>,
        patient: Option<String>,
    },
    /// A resource server asked whether a token may make a FHIR request.
    #[serde(rename = "policy.checked")]
    PolicyChecked {
        client_id: String,
        family: Option<String>,
        request: String,
        decision: String,
        scope: Option<String>,
        patient: Option<String>,
    },
    /// A client asked to revoke a token that belongs to another client (possible token theft).
    #[serde(rename = "token.revocation_refused")]
    TokenRevocationRefused {
        client_id: String,
        family: String,
        reason: String,
    },
    /// A token family was revoked (by its user, an admin, the client, or a session ending).
    #[serde(rename = "token.revoked")]
    TokenRevoked {
        client_id: String,
        family: String,
        reason: String,
    },
    /// Patients were loaded into the directory behind the patient picker.
    #[serde(rename = "patient.imported")]
    PatientsImported { created: u64, updated: u64 },
    /// The patient picker showed these patients to a clinician (accounting of disclosures).
    #[serde(rename = "patient.searched")]
    PatientSearched {
        client_id: String,
        offered: Vec<String>,
    },
    /// A clinician chose the patient in context for an app.
    #[serde(rename = "patient.selected")]
    PatientSelected { client_id: String, patient: String },
    /// An admin changed a patient's directory entry.
    #[serde(rename = "patient.updated")]
    PatientUpdated {
        patient: String,
        before: Value,
        after: Value,
    },
    /// An admin removed a patient from the directory.
    #[serde(rename = "patient.removed")]
    PatientRemoved { patient: String, before: Value },
    /// Someone without admin rights (or without a fresh enough sign-in) reached for the admin
    /// console or API.
    #[serde(rename = "admin.access_denied")]
    AdminAccessDenied { path: String, reason: String },
    /// An admin changed a user's display name or fhirUser.
    #[serde(rename = "user.updated")]
    UserUpdated {
        user_id: String,
        before: Value,
        after: Value,
    },
    /// An admin created a one-time enrolment link for a user (the link itself is not recorded).
    #[serde(rename = "user.enrolment_link_created")]
    EnrolmentLinkCreated { user_id: String, expires_at: i64 },
    /// `ward audit verify` found the chain broken (the problem, as it reported it).
    #[serde(rename = "audit.verification_failed")]
    AuditVerificationFailed { verified: u64, problem: String },
    /// Emergency access (break-glass, HIPAA 164.312(a)(2)(ii)): a person whose role allows it
    /// bypassed their role ceiling for one patient, with this justification, re-authenticated
    /// with a fresh second factor; the grant (`family`) is marked `__ward.break_glass`.
    #[serde(rename = "break_glass.invoked")]
    BreakGlassInvoked {
        client_id: String,
        family: String,
        patient: String,
        reason: String,
        scope: String,
    },
    /// An emergency-access attempt was refused (`error`: the rule, `reason`: what the person saw).
    #[serde(rename = "break_glass.refused")]
    BreakGlassRefused {
        client_id: String,
        patient: Option<String>,
        error: String,
        reason: String,
    },
    /// Every grant of a client or of a user was revoked at once.
    #[serde(rename = "token.revoked_all")]
    TokensRevokedAll {
        client_id: Option<String>,
        user_id: Option<String>,
        families: u64,
        reason: String,
    },
}

/// Why a sign-in step failed (audit detail only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LoginFailure {
    UnknownUser,
    BadPassword,
    NoPassword,
    Disabled,
    Locked,
    Throttled,
    BadCode,
    ReplayedCode,
    Busy,
    PasswordlessNotAllowed,
}

impl AuditEvent {
    /// Every action name, for documentation and tests.
    pub const ACTIONS: &'static [&'static str] = &[
        "server.started",
        "database.migrated",
        "key.created",
        "client.registered",
        "client.updated",
        "client.status_changed",
        "client.secret_rotated",
        "role.created",
        "role.updated",
        "role.deleted",
        "user.created",
        "user.role_added",
        "user.role_removed",
        "login.succeeded",
        "login.failed",
        "account.locked",
        "account.unlocked",
        "user.status_changed",
        "mfa.enrolled",
        "mfa.removed",
        "mfa.reset",
        "mfa.used",
        "mfa.failed",
        "session.ended",
        "password.changed",
        "webauthn.counter_regression",
        "client.authentication_failed",
        "launch.created",
        "authorization.granted",
        "authorization.refused",
        "token.issued",
        "token.refused",
        "token.reuse_detected",
        "token.revoked",
        "token.introspected",
        "policy.checked",
        "token.revocation_refused",
        "patient.imported",
        "patient.searched",
        "patient.selected",
        "patient.updated",
        "patient.removed",
        "admin.access_denied",
        "user.updated",
        "user.enrolment_link_created",
        "token.revoked_all",
        "audit.verification_failed",
        "break_glass.invoked",
        "break_glass.refused",
    ];

    pub fn action(&self) -> &'static str {
        match self {
            Self::ServerStarted { .. } => "server.started",
            Self::DatabaseMigrated { .. } => "database.migrated",
            Self::SigningKeyCreated { .. } => "key.created",
            Self::ClientRegistered { .. } => "client.registered",
            Self::ClientUpdated { .. } => "client.updated",
            Self::ClientStatusChanged { .. } => "client.status_changed",
            Self::ClientSecretRotated { .. } => "client.secret_rotated",
            Self::RoleCreated { .. } => "role.created",
            Self::RoleUpdated { .. } => "role.updated",
            Self::RoleDeleted { .. } => "role.deleted",
            Self::UserCreated { .. } => "user.created",
            Self::UserRoleAdded { .. } => "user.role_added",
            Self::UserRoleRemoved { .. } => "user.role_removed",
            Self::LoginSucceeded { .. } => "login.succeeded",
            Self::LoginFailed { .. } => "login.failed",
            Self::AccountLocked { .. } => "account.locked",
            Self::AccountUnlocked { .. } => "account.unlocked",
            Self::UserStatusChanged { .. } => "user.status_changed",
            Self::MfaEnrolled { .. } => "mfa.enrolled",
            Self::MfaRemoved { .. } => "mfa.removed",
            Self::MfaReset { .. } => "mfa.reset",
            Self::MfaUsed { .. } => "mfa.used",
            Self::MfaFailed { .. } => "mfa.failed",
            Self::SessionEnded { .. } => "session.ended",
            Self::PasswordChanged { .. } => "password.changed",
            Self::WebauthnCounterRegression { .. } => "webauthn.counter_regression",
            Self::ClientAuthenticationFailed { .. } => "client.authentication_failed",
            Self::LaunchCreated { .. } => "launch.created",
            Self::AuthorizationGranted { .. } => "authorization.granted",
            Self::AuthorizationRefused { .. } => "authorization.refused",
            Self::TokenIssued { .. } => "token.issued",
            Self::TokenRefused { .. } => "token.refused",
            Self::TokenReuseDetected { .. } => "token.reuse_detected",
            Self::TokenRevoked { .. } => "token.revoked",
            Self::TokenIntrospected { .. } => "token.introspected",
            Self::PolicyChecked { .. } => "policy.checked",
            Self::TokenRevocationRefused { .. } => "token.revocation_refused",
            Self::PatientsImported { .. } => "patient.imported",
            Self::PatientSearched { .. } => "patient.searched",
            Self::PatientSelected { .. } => "patient.selected",
            Self::PatientUpdated { .. } => "patient.updated",
            Self::PatientRemoved { .. } => "patient.removed",
            Self::AdminAccessDenied { .. } => "admin.access_denied",
            Self::UserUpdated { .. } => "user.updated",
            Self::EnrolmentLinkCreated { .. } => "user.enrolment_link_created",
            Self::TokensRevokedAll { .. } => "token.revoked_all",
            Self::AuditVerificationFailed { .. } => "audit.verification_failed",
            Self::BreakGlassInvoked { .. } => "break_glass.invoked",
            Self::BreakGlassRefused { .. } => "break_glass.refused",
        }
    }

    pub fn outcome(&self) -> Outcome {
        match self {
            Self::LoginFailed { .. }
            | Self::MfaFailed { .. }
            | Self::WebauthnCounterRegression { .. }
            | Self::ClientAuthenticationFailed { .. }
            | Self::AuthorizationRefused { .. }
            | Self::TokenRefused { .. }
            | Self::TokenReuseDetected { .. }
            | Self::TokenRevocationRefused { .. }
            | Self::AdminAccessDenied { .. }
            | Self::BreakGlassRefused { .. }
            | Self::AuditVerificationFailed { .. } => Outcome::Failure,
            _ => Outcome::Success,
        }
    }

    pub fn severity(&self) -> Severity {
        match self {
            Self::ServerStarted {
                danger_switches, ..
            } if !danger_switches.is_empty() => Severity::High,
            Self::ServerStarted { .. } | Self::DatabaseMigrated { .. } => Severity::Info,
            Self::SigningKeyCreated {
                reason: KeyCreationReason::ImmediateRotation,
                ..
            } => Severity::High,
            Self::AccountLocked { .. }
            | Self::MfaReset { .. }
            | Self::WebauthnCounterRegression { .. }
            | Self::TokenReuseDetected { .. }
            | Self::TokenRevocationRefused { .. }
            | Self::AdminAccessDenied { .. }
            | Self::TokensRevokedAll { .. }
            | Self::BreakGlassInvoked { .. }
            | Self::BreakGlassRefused { .. }
            | Self::AuditVerificationFailed { .. } => Severity::High,
            // A replayed client assertion: someone holds a copy of a signed credential.
            Self::ClientAuthenticationFailed { reason, .. }
                if reason.contains("was already used") =>
            {
                Severity::High
            }
            Self::LoginSucceeded { .. } | Self::MfaUsed { .. } | Self::SessionEnded { .. } => {
                Severity::Info
            }
            _ => Severity::Notice,
        }
    }

    /// The patient a disclosure concerns, for the accounting of disclosures.
    pub fn target_patient(&self) -> Option<&str> {
        match self {
            Self::LaunchCreated { patient, .. }
            | Self::AuthorizationGranted { patient, .. }
            | Self::TokenIssued { patient, .. }
            | Self::TokenIntrospected { patient, .. }
            | Self::PolicyChecked { patient, .. }
            | Self::BreakGlassRefused { patient, .. } => patient.as_deref(),
            Self::PatientSelected { patient, .. }
            | Self::PatientUpdated { patient, .. }
            | Self::PatientRemoved { patient, .. }
            | Self::BreakGlassInvoked { patient, .. } => Some(patient),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn action_names_match_the_serialised_tag() {
        let samples = [
            AuditEvent::ServerStarted {
                version: "0".into(),
                backend: "sqlite".into(),
                listen: "127.0.0.1:1".into(),
                issuer: "http://localhost:1".into(),
                tls: false,
                behind_tls_proxy: false,
                cluster: false,
                danger_switches: vec![],
            },
            AuditEvent::DatabaseMigrated { versions: vec![] },
            AuditEvent::SigningKeyCreated {
                kid: "k".into(),
                alg: "ES256".into(),
                reason: KeyCreationReason::Initial,
                activates_at: 0,
            },
            AuditEvent::ClientRegistered {
                client_id: "c".into(),
                after: Value::Null,
            },
            AuditEvent::ClientUpdated {
                client_id: "c".into(),
                before: Value::Null,
                after: Value::Null,
            },
            AuditEvent::ClientStatusChanged {
                client_id: "c".into(),
                enabled: false,
            },
            AuditEvent::ClientSecretRotated {
                client_id: "c".into(),
                previous_valid_until: None,
            },
            AuditEvent::RoleCreated {
                role: "r".into(),
                after: Value::Null,
            },
            AuditEvent::RoleUpdated {
                role: "r".into(),
                before: Value::Null,
                after: Value::Null,
            },
            AuditEvent::RoleDeleted {
                role: "r".into(),
                before: Value::Null,
            },
            AuditEvent::UserCreated {
                user_id: "u".into(),
                after: Value::Null,
            },
            AuditEvent::UserRoleAdded {
                user_id: "u".into(),
                role: "r".into(),
            },
            AuditEvent::UserRoleRemoved {
                user_id: "u".into(),
                role: "r".into(),
            },
            AuditEvent::LoginSucceeded { methods: vec![] },
            AuditEvent::LoginFailed {
                reason: LoginFailure::BadPassword,
            },
            AuditEvent::AccountLocked {
                consecutive_failures: 100,
            },
            AuditEvent::AccountUnlocked {
                user_id: "u".into(),
            },
            AuditEvent::UserStatusChanged {
                user_id: "u".into(),
                enabled: false,
            },
            AuditEvent::MfaEnrolled {
                method: "totp".into(),
            },
            AuditEvent::MfaRemoved {
                method: "totp".into(),
            },
            AuditEvent::MfaReset {
                user_id: "u".into(),
            },
            AuditEvent::MfaUsed {
                method: "totp".into(),
            },
            AuditEvent::MfaFailed {
                reason: LoginFailure::BadCode,
            },
            AuditEvent::SessionEnded {
                session: "s".into(),
                reason: "logout".into(),
            },
            AuditEvent::PasswordChanged {
                user_id: "u".into(),
                by_operator: false,
            },
            AuditEvent::WebauthnCounterRegression {},
            AuditEvent::ClientAuthenticationFailed {
                client_id: None,
                endpoint: "token".into(),
                reason: "r".into(),
            },
            AuditEvent::LaunchCreated {
                client_id: "c".into(),
                for_user: None,
                patient: None,
            },
            AuditEvent::AuthorizationGranted {
                client_id: "c".into(),
                scope: "openid".into(),
                patient: None,
                remembered: false,
            },
            AuditEvent::AuthorizationRefused {
                client_id: "c".into(),
                error: "access_denied".into(),
                reason: "r".into(),
            },
            AuditEvent::TokenIssued {
                client_id: "c".into(),
                grant: "authorization_code".into(),
                family: "f".into(),
                scope: "openid".into(),
                patient: None,
            },
            AuditEvent::TokenRefused {
                client_id: None,
                grant: "authorization_code".into(),
                error: "invalid_grant".into(),
                reason: "r".into(),
            },
            AuditEvent::TokenReuseDetected {
                client_id: "c".into(),
                family: "f".into(),
                kind: "refresh_token".into(),
            },
            AuditEvent::TokenRevoked {
                client_id: "c".into(),
                family: "f".into(),
                reason: "r".into(),
            },
            AuditEvent::TokenIntrospected {
                client_id: "c".into(),
                family: None,
                patient: None,
            },
            AuditEvent::PolicyChecked {
                client_id: "c".into(),
                family: None,
                request: "GET Observation".into(),
                decision: "permit".into(),
                scope: None,
                patient: None,
            },
            AuditEvent::TokenRevocationRefused {
                client_id: "c".into(),
                family: "f".into(),
                reason: "r".into(),
            },
            AuditEvent::PatientsImported {
                created: 1,
                updated: 0,
            },
            AuditEvent::PatientSearched {
                client_id: "c".into(),
                offered: vec![],
            },
            AuditEvent::PatientSelected {
                client_id: "c".into(),
                patient: "p".into(),
            },
            AuditEvent::PatientUpdated {
                patient: "p".into(),
                before: Value::Null,
                after: Value::Null,
            },
            AuditEvent::PatientRemoved {
                patient: "p".into(),
                before: Value::Null,
            },
            AuditEvent::AdminAccessDenied {
                path: "/admin".into(),
                reason: "r".into(),
            },
            AuditEvent::UserUpdated {
                user_id: "u".into(),
                before: Value::Null,
                after: Value::Null,
            },
            AuditEvent::EnrolmentLinkCreated {
                user_id: "u".into(),
                expires_at: 0,
            },
            AuditEvent::TokensRevokedAll {
                client_id: Some("c".into()),
                user_id: None,
                families: 1,
                reason: "r".into(),
            },
            AuditEvent::AuditVerificationFailed {
                verified: 3,
                problem: "p".into(),
            },
            AuditEvent::BreakGlassInvoked {
                client_id: "c".into(),
                family: "f".into(),
                patient: "p".into(),
                reason: "unconscious patient in the emergency room".into(),
                scope: "patient/*.rs __ward.break_glass".into(),
            },
            AuditEvent::BreakGlassRefused {
                client_id: "c".into(),
                patient: None,
                error: "not_permitted".into(),
                reason: "r".into(),
            },
        ];
        assert_eq!(samples.len(), AuditEvent::ACTIONS.len());
        for event in &samples[samples.len() - 2..] {
            assert_eq!(event.severity(), Severity::High, "break-glass is alerted");
        }
        for (event, name) in samples.iter().zip(AuditEvent::ACTIONS) {
            let json = serde_json::to_value(event).expect("serialises");
            assert_eq!(json["action"], *name);
            assert_eq!(event.action(), *name);
        }
        // One sample of every variant: `variant_index` is an exhaustive match, so a new
        // variant does not compile until it has an index here, and then this fails until it
        // has a sample above and its name in `ACTIONS` (which the integration test
        // `audit_events` requires to be produced through Ward's endpoints).
        let mut indices: Vec<usize> = samples.iter().map(variant_index).collect();
        indices.sort_unstable();
        assert_eq!(indices, (0..VARIANTS).collect::<Vec<_>>());
        let mut names: Vec<&str> = AuditEvent::ACTIONS.to_vec();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), VARIANTS, "action names are distinct");
    }

    const VARIANTS: usize = 49;

    /// Each variant's position; exhaustive on purpose (no `_` arm).
    fn variant_index(event: &AuditEvent) -> usize {
        use AuditEvent as E;
        match event {
            E::ServerStarted { .. } => 0,
            E::DatabaseMigrated { .. } => 1,
            E::SigningKeyCreated { .. } => 2,
            E::ClientRegistered { .. } => 3,
            E::ClientUpdated { .. } => 4,
            E::ClientStatusChanged { .. } => 5,
            E::ClientSecretRotated { .. } => 6,
            E::RoleCreated { .. } => 7,
            E::RoleUpdated { .. } => 8,
            E::RoleDeleted { .. } => 9,
            E::UserCreated { .. } => 10,
            E::UserRoleAdded { .. } => 11,
            E::UserRoleRemoved { .. } => 12,
            E::LoginSucceeded { .. } => 13,
            E::LoginFailed { .. } => 14,
            E::AccountLocked { .. } => 15,
            E::AccountUnlocked { .. } => 16,
            E::UserStatusChanged { .. } => 17,
            E::MfaEnrolled { .. } => 18,
            E::MfaRemoved { .. } => 19,
            E::MfaReset { .. } => 20,
            E::MfaUsed { .. } => 21,
            E::MfaFailed { .. } => 22,
            E::SessionEnded { .. } => 23,
            E::PasswordChanged { .. } => 24,
            E::WebauthnCounterRegression { .. } => 25,
            E::ClientAuthenticationFailed { .. } => 26,
            E::LaunchCreated { .. } => 27,
            E::AuthorizationGranted { .. } => 28,
            E::AuthorizationRefused { .. } => 29,
            E::TokenIssued { .. } => 30,
            E::TokenRefused { .. } => 31,
            E::TokenReuseDetected { .. } => 32,
            E::TokenRevoked { .. } => 33,
            E::TokenIntrospected { .. } => 34,
            E::PolicyChecked { .. } => 35,
            E::TokenRevocationRefused { .. } => 36,
            E::PatientsImported { .. } => 37,
            E::PatientSearched { .. } => 38,
            E::PatientSelected { .. } => 39,
            E::PatientUpdated { .. } => 40,
            E::PatientRemoved { .. } => 41,
            E::AdminAccessDenied { .. } => 42,
            E::UserUpdated { .. } => 43,
            E::EnrolmentLinkCreated { .. } => 44,
            E::TokensRevokedAll { .. } => 45,
            E::AuditVerificationFailed { .. } => 46,
            E::BreakGlassInvoked { .. } => 47,
            E::BreakGlassRefused { .. } => 48,
        }
    }
}
