//! Every kind of audit event. Each variant names one security-relevant action; its fields are
//! the details worth recording. Adding a variant is how a new kind of event comes to exist,
//! so the README's event list and the code cannot drift (a test lists `AuditEvent::ACTIONS`).

use serde::Serialize;

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
}

impl AuditEvent {
    /// Every action name, for documentation and tests.
    pub const ACTIONS: &'static [&'static str] =
        &["server.started", "database.migrated", "key.created"];

    pub fn action(&self) -> &'static str {
        match self {
            Self::ServerStarted { .. } => "server.started",
            Self::DatabaseMigrated { .. } => "database.migrated",
            Self::SigningKeyCreated { .. } => "key.created",
        }
    }

    pub fn outcome(&self) -> Outcome {
        match self {
            Self::ServerStarted { .. }
            | Self::DatabaseMigrated { .. }
            | Self::SigningKeyCreated { .. } => Outcome::Success,
        }
    }

    pub fn severity(&self) -> Severity {
        match self {
            Self::ServerStarted {
                danger_switches, ..
            } if !danger_switches.is_empty() => Severity::High,
            Self::ServerStarted { .. } | Self::DatabaseMigrated { .. } => Severity::Info,
            Self::SigningKeyCreated { reason, .. } => match reason {
                KeyCreationReason::ImmediateRotation => Severity::High,
                _ => Severity::Notice,
            },
        }
    }

    /// The patient a disclosure concerns, for the accounting of disclosures.
    pub fn target_patient(&self) -> Option<&str> {
        None
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
        ];
        assert_eq!(samples.len(), AuditEvent::ACTIONS.len());
        for (event, name) in samples.iter().zip(AuditEvent::ACTIONS) {
            let json = serde_json::to_value(event).expect("serialises");
            assert_eq!(json["action"], *name);
            assert_eq!(event.action(), *name);
        }
    }
}
