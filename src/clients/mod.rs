//! The client registry (SMART App Launch 2.2 client types): registrations, secrets and keys.
//! The CLI calls these functions today; the admin API and console will call the same ones.

pub mod jwks;
pub mod kinds;
pub mod model;
mod service;

pub use model::{
    AuthMethod, ClientKind, ClientSettings, ClientSpec, FieldError, GrantType, LaunchMode,
};
pub use service::{
    get, list, register, rotate_secret, secret_matches, set_enabled, update, validate_spec,
    verify_secret, Client, NewClient, RegistryError,
};
