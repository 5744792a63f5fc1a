//! OAuth 2.0 protocol rules. The endpoints themselves arrive with the SMART App Launch issue;
//! what lives here now are the pure rules the client registry already needs.

pub mod apps;
pub mod assertion;
pub mod assertion_claims;
pub mod authorize;
pub mod authorize_request;
pub mod break_glass;
pub mod client_auth;
pub mod client_credentials;
pub mod error;
pub mod error_response;
pub mod pkce;
pub mod redirect_uri;
pub mod resource_server;
pub mod token;
pub mod tokens;
