#[path = "../../src/patients/fhir.rs"]
pub mod fhir;
