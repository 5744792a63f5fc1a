#[path = "../../src/smart/policy.rs"]
pub mod policy;
#[path = "../../src/smart/scopes.rs"]
pub mod scopes;
