//! The FHIR request parser and policy check on arbitrary input: never panic, and a permit is
//! always backed by a granted scope.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ward_fuzz::smart::policy::{check, Decision, FhirRequest};
use ward_fuzz::smart::scopes::ScopeSet;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(4, '\n');
    let method = parts.next().unwrap_or("GET");
    let url = parts.next().unwrap_or("");
    let scopes = parts
        .next()
        .unwrap_or("patient/*.cruds user/Observation.rs");
    let body = parts
        .next()
        .and_then(|b| serde_json::from_str::<serde_json::Value>(b).ok());
    let (granted, _) = ScopeSet::parse(scopes);
    if let Ok(request) = FhirRequest::parse(method, url, body.as_ref()) {
        match check(&granted, Some("123"), &request) {
            Decision::Permit { scope } | Decision::Conditional { scope, .. } => {
                assert!(
                    granted.iter().any(|s| s.to_string() == scope),
                    "permitted by `{scope}`, which was not granted"
                );
            }
            Decision::Deny { .. } => {}
        }
    }
});
