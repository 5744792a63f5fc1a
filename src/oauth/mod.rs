//! OAuth 2.0 protocol rules. The endpoints themselves arrive with the SMART App Launch issue;
//! what lives here now are the pure rules the client registry already needs.

pub mod redirect_uri;
