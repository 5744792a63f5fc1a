//! askama views: one struct per page, holding only what the page shows. HTML escaping is on
//! for every value; only the server-rendered QR SVG is marked safe.

use askama::Template;

#[derive(Template)]
#[template(path = "login.html")]
pub struct LoginView {
    pub csrf: String,
    pub return_to: String,
    pub error: Option<String>,
    /// Prefilled username (OIDC `login_hint`, or the one just tried).
    pub username: String,
}

#[derive(Template)]
#[template(path = "mfa.html")]
pub struct MfaView {
    pub csrf: String,
    pub return_to: String,
    pub error: Option<String>,
    pub has_passkey: bool,
}

#[derive(Template)]
#[template(path = "enrol_totp.html")]
pub struct EnrolTotpView {
    pub csrf: String,
    pub return_to: String,
    pub qr_svg: String,
    pub secret: String,
    pub required: bool,
    pub error: Option<String>,
}

#[derive(Template)]
#[template(path = "recovery_codes.html")]
pub struct RecoveryCodesView {
    pub codes: Vec<String>,
    pub return_to: String,
}

pub struct PasskeyView {
    pub id: String,
    pub name: String,
    pub created: String,
    pub last_used: Option<String>,
}

pub struct SessionRowView {
    pub public_id: String,
    pub created: String,
    pub last_seen: String,
    pub from: String,
    pub current: bool,
}

#[derive(Template)]
#[template(path = "account.html")]
pub struct AccountView {
    pub csrf: String,
    pub username: String,
    pub display_name: String,
    pub totp_enrolled: bool,
    pub recovery_codes_left: i64,
    pub mfa_required: bool,
    pub sessions: Vec<SessionRowView>,
    pub passkeys: Vec<PasskeyView>,
    pub notice: Option<String>,
    pub error: Option<String>,
}

#[derive(Template)]
#[template(path = "message.html")]
pub struct MessageView {
    pub title: String,
    pub message: String,
    pub link: Option<String>,
    pub link_text: String,
}

#[derive(Template)]
#[template(path = "consent.html")]
pub struct ConsentView {
    pub csrf: String,
    pub request: String,
    pub app_name: String,
    pub logo_uri: Option<String>,
    pub user_name: String,
    pub patient: Option<crate::patients::PatientSummary>,
    /// The patient id shown, sent back so approval is for exactly what was displayed.
    pub patient_id: String,
    pub summary: crate::smart::consent::ConsentSummary,
    /// The person may invoke emergency access (break-glass) for this app and patient.
    pub break_glass: bool,
    /// The person's roles allow nothing asked for (shown only because of break-glass).
    pub nothing_grantable: bool,
}

#[derive(Template)]
#[template(path = "patient_picker.html")]
pub struct PatientPickerView {
    pub csrf: String,
    pub request: String,
    pub app_name: String,
    pub query: String,
    pub searched: bool,
    pub results: Vec<crate::patients::PatientSummary>,
    pub error: Option<String>,
    /// The person may invoke emergency access (break-glass) for this app.
    pub break_glass: bool,
}

/// The emergency-access (break-glass) form.
#[derive(Template)]
#[template(path = "break_glass.html")]
pub struct BreakGlassView {
    pub csrf: String,
    pub request: String,
    pub app_name: String,
    pub user_name: String,
    pub patient: Option<crate::patients::PatientSummary>,
    pub patient_id: String,
    /// What emergency access would grant.
    pub scopes: String,
    pub error: Option<String>,
    pub minutes: i64,
    pub min_chars: usize,
    pub max_chars: usize,
}

/// After emergency access was granted: the banner, then on to the app.
#[derive(Template)]
#[template(path = "break_glass_done.html")]
pub struct BreakGlassDoneView {
    pub app_name: String,
    pub patient: String,
    pub redirect: String,
    pub minutes: i64,
}

#[derive(Template)]
#[template(path = "logout_confirm.html")]
pub struct LogoutConfirmView {
    pub csrf: String,
    pub client_id: String,
    pub uri: String,
    pub state: String,
    pub app_name: Option<String>,
}

pub struct AppRowView {
    pub client_id: String,
    pub name: String,
    pub scopes: Vec<String>,
    pub since: String,
    pub offline: bool,
    pub remembered: bool,
    pub break_glass: bool,
}

#[derive(Template)]
#[template(path = "account_apps.html")]
pub struct AccountAppsView {
    pub csrf: String,
    pub apps: Vec<AppRowView>,
    pub notice: Option<String>,
}
