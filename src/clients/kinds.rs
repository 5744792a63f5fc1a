//! The kinds of client, authentication methods, grant types and launch modes (SMART App Launch
//! 2.2 client types) as closed enums with their protocol spellings. Pure: the fuzz crate
//! compiles this file as it is.

use serde::{Deserialize, Serialize};

/// How a client authenticates and what it is for (SMART App Launch 2.2 client types).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientKind {
    /// A browser or native app that cannot keep a secret: PKCE, no client authentication.
    Public,
    /// A server-side app with a client secret (client-confidential-symmetric).
    ConfidentialSymmetric,
    /// An app or backend service with a key pair (client-confidential-asymmetric).
    ConfidentialAsymmetric,
    /// A FHIR API that introspects tokens meant for its FHIR base URL(s).
    ResourceServer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    None,
    ClientSecretBasic,
    ClientSecretPost,
    PrivateKeyJwt,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantType {
    AuthorizationCode,
    RefreshToken,
    ClientCredentials,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LaunchMode {
    Ehr,
    Standalone,
}

macro_rules! text_enum {
    ($ty:ty { $($variant:ident = $text:literal),+ $(,)? }) => {
        impl $ty {
            pub const ALL: &'static [$ty] = &[$(<$ty>::$variant),+];
            pub fn as_str(self) -> &'static str {
                match self { $(<$ty>::$variant => $text),+ }
            }
            pub fn parse(text: &str) -> Option<Self> {
                match text { $($text => Some(<$ty>::$variant),)+ _ => None }
            }
        }
    };
}

text_enum!(ClientKind {
    Public = "public",
    ConfidentialSymmetric = "confidential-symmetric",
    ConfidentialAsymmetric = "confidential-asymmetric",
    ResourceServer = "resource-server",
});
text_enum!(AuthMethod {
    None = "none",
    ClientSecretBasic = "client_secret_basic",
    ClientSecretPost = "client_secret_post",
    PrivateKeyJwt = "private_key_jwt",
});
text_enum!(GrantType {
    AuthorizationCode = "authorization_code",
    RefreshToken = "refresh_token",
    ClientCredentials = "client_credentials",
});
text_enum!(LaunchMode {
    Ehr = "ehr",
    Standalone = "standalone",
});
