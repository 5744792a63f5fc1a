//! Launch context (SMART App Launch 2.2, "Scopes and Launch Context"): what an EHR hands an app
//! at launch, and what the token response and introspection report back. Pure: validation of
//! what an EHR may send to `POST /launch`, and the members a token response carries.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::smart::scopes::{IdentityScope, ScopeSet};

pub const MAX_FHIR_CONTEXT_ITEMS: usize = 20;
pub const MAX_TEXT: usize = 256;

/// Context members, named as in the token response.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchContext {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patient: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encounter: Option<String>,
    #[serde(rename = "fhirContext", skip_serializing_if = "Option::is_none")]
    pub fhir_context: Option<Vec<Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub intent: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub need_patient_banner: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub smart_style_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

impl LaunchContext {
    /// The members as a JSON object, to merge into a token or introspection response.
    pub fn members(&self) -> Map<String, Value> {
        match serde_json::to_value(self) {
            Ok(Value::Object(map)) => map,
            _ => Map::new(),
        }
    }

    /// What the token may carry given the granted scopes: `patient` only with a patient
    /// context scope (`launch`, `launch/patient`) or a `patient/` scope that needs it,
    /// `encounter` only with `launch` or `launch/encounter`. Display hints and the EHR's
    /// fhirContext stay.
    pub fn limited_to(&self, granted: &ScopeSet) -> LaunchContext {
        let ehr = granted.has(IdentityScope::Launch);
        let patient_scopes = granted
            .resource_scopes()
            .any(|r| r.context == crate::smart::scopes::ScopeContext::Patient);
        let mut out = self.clone();
        if !(ehr || granted.has(IdentityScope::LaunchPatient) || patient_scopes) {
            out.patient = None;
        }
        if !(ehr || granted.has(IdentityScope::LaunchEncounter)) {
            out.encounter = None;
        }
        out
    }
}

/// A FHIR logical id (FHIR R4 `id`: 1–64 of `A-Za-z0-9-.`).
pub fn valid_fhir_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

fn plain(field: &str, text: &str) -> Result<(), String> {
    if text.is_empty() || text.len() > MAX_TEXT || text.chars().any(char::is_control) {
        return Err(format!(
            "{field} must be 1 to {MAX_TEXT} printable characters"
        ));
    }
    Ok(())
}

/// Checks a context an EHR sent. `fhirContext` items are objects with a `reference`,
/// `canonical` or `identifier` (SMART 2.2), at most twenty.
pub fn validate(ctx: &LaunchContext) -> Result<(), String> {
    if let Some(p) = &ctx.patient {
        if !valid_fhir_id(p) {
            return Err("patient must be a FHIR Patient id".into());
        }
    }
    if let Some(e) = &ctx.encounter {
        if !valid_fhir_id(e) {
            return Err("encounter must be a FHIR Encounter id".into());
        }
    }
    if let Some(items) = &ctx.fhir_context {
        if items.len() > MAX_FHIR_CONTEXT_ITEMS {
            return Err(format!(
                "fhirContext holds at most {MAX_FHIR_CONTEXT_ITEMS} items"
            ));
        }
        for item in items {
            let Some(obj) = item.as_object() else {
                return Err("fhirContext items must be objects".into());
            };
            let has_target = ["reference", "canonical", "identifier"]
                .iter()
                .any(|k| obj.contains_key(*k));
            if !has_target {
                return Err(
                    "each fhirContext item needs a reference, canonical or identifier".into(),
                );
            }
            for key in ["reference", "canonical", "type", "role"] {
                if let Some(v) = obj.get(key) {
                    match v.as_str() {
                        Some(text) => plain(&format!("fhirContext {key}"), text)?,
                        None => return Err(format!("fhirContext {key} must be a string")),
                    }
                }
            }
        }
    }
    if let Some(i) = &ctx.intent {
        plain("intent", i)?;
    }
    if let Some(t) = &ctx.tenant {
        plain("tenant", t)?;
    }
    if let Some(u) = &ctx.smart_style_url {
        match url::Url::parse(u) {
            Ok(url) if url.scheme() == "https" || url.scheme() == "http" => {}
            _ => return Err("smart_style_url must be an http(s) URL".into()),
        }
        plain("smart_style_url", u)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn context_members_are_named_as_in_the_token_response() {
        let ctx = LaunchContext {
            patient: Some("123".into()),
            fhir_context: Some(vec![json!({"reference": "Appointment/9"})]),
            need_patient_banner: Some(false),
            ..LaunchContext::default()
        };
        let m = ctx.members();
        assert_eq!(m["patient"], "123");
        assert_eq!(m["fhirContext"][0]["reference"], "Appointment/9");
        assert_eq!(m["need_patient_banner"], false);
        assert!(!m.contains_key("encounter"));
    }

    #[test]
    fn patient_and_encounter_need_their_scopes() {
        let ctx = LaunchContext {
            patient: Some("p".into()),
            encounter: Some("e".into()),
            ..LaunchContext::default()
        };
        let none = ctx.limited_to(&ScopeSet::parse("openid").0);
        assert_eq!((none.patient, none.encounter), (None, None));
        let p = ctx.limited_to(&ScopeSet::parse("launch/patient").0);
        assert_eq!((p.patient.as_deref(), p.encounter), (Some("p"), None));
        let data = ctx.limited_to(&ScopeSet::parse("patient/Observation.rs").0);
        assert_eq!(
            data.patient.as_deref(),
            Some("p"),
            "patient/ scopes need their patient"
        );
        let ehr = ctx.limited_to(&ScopeSet::parse("launch").0);
        assert_eq!(ehr.encounter.as_deref(), Some("e"));
    }

    #[test]
    fn rejects_malformed_ehr_context() {
        let bad = [
            LaunchContext {
                patient: Some("../x".into()),
                ..Default::default()
            },
            LaunchContext {
                encounter: Some("a".repeat(65)),
                ..Default::default()
            },
            LaunchContext {
                fhir_context: Some(vec![json!("Appointment/1")]),
                ..Default::default()
            },
            LaunchContext {
                fhir_context: Some(vec![json!({"type": "x"})]),
                ..Default::default()
            },
            LaunchContext {
                fhir_context: Some(vec![json!({"reference": 5})]),
                ..Default::default()
            },
            LaunchContext {
                fhir_context: Some(vec![json!({"reference": "A/1"}); 21]),
                ..Default::default()
            },
            LaunchContext {
                intent: Some("a\nb".into()),
                ..Default::default()
            },
            LaunchContext {
                smart_style_url: Some("javascript:alert(1)".into()),
                ..Default::default()
            },
        ];
        for ctx in bad {
            assert!(validate(&ctx).is_err(), "{ctx:?}");
        }
        assert!(validate(&LaunchContext {
            patient: Some("123".into()),
            encounter: Some("e-1".into()),
            fhir_context: Some(vec![
                json!({"reference": "Appointment/9", "role": "launch"})
            ]),
            intent: Some("reconcile-medications".into()),
            smart_style_url: Some("https://ehr.example/style.json".into()),
            tenant: Some("hospital-a".into()),
            need_patient_banner: Some(false),
        })
        .is_ok());
    }
}
