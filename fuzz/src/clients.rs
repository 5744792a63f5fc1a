#[path = "../../src/clients/kinds.rs"]
pub mod kinds;
pub use kinds::{AuthMethod, ClientKind, GrantType, LaunchMode};
