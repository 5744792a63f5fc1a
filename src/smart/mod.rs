//! SMART on FHIR rules with no I/O: the scope algebra (parse, normalise v1↔v2, cover,
//! intersect) and the policy check that answers "may this token do this FHIR request?".

pub mod consent;
pub mod discovery;
pub mod launch;
pub mod policy;
pub mod scopes;
