//! Every cookie Ward sets is built here. Over HTTPS they are `__Host-` cookies (Secure, Path=/,
//! no Domain: bound to this exact origin); on plain-HTTP loopback development the prefix and
//! Secure flag are dropped (browsers refuse them there) and everything else stays.

use actix_web::cookie::{Cookie, SameSite};
use actix_web::HttpRequest;

pub const SESSION: &str = "ward_session";
pub const BROWSER: &str = "ward_browser";

pub fn name(base: &str, https: bool) -> String {
    if https {
        format!("__Host-{base}")
    } else {
        base.to_owned()
    }
}

pub fn build(base: &str, value: String, https: bool) -> Cookie<'static> {
    Cookie::build(name(base, https), value)
        .path("/")
        .http_only(true)
        .secure(https)
        .same_site(SameSite::Lax)
        .finish()
}

pub fn removal(base: &str, https: bool) -> Cookie<'static> {
    let mut cookie = build(base, String::new(), https);
    cookie.make_removal();
    cookie
}

pub fn read(req: &HttpRequest, base: &str, https: bool) -> Option<String> {
    req.cookie(&name(base, https))
        .map(|c| c.value().to_owned())
        .filter(|v| !v.is_empty() && v.len() <= 128)
}
