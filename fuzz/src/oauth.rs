#[path = "../../src/oauth/redirect_uri.rs"]
pub mod redirect_uri;
