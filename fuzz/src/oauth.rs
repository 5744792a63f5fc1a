#[path = "../../src/oauth/assertion_claims.rs"]
pub mod assertion_claims;
#[path = "../../src/oauth/client_credentials.rs"]
pub mod client_credentials;
#[path = "../../src/oauth/error.rs"]
pub mod error;
#[path = "../../src/oauth/redirect_uri.rs"]
pub mod redirect_uri;
