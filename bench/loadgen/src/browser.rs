//! A scripted browser for Ward's real pages: sign in (CSRF token and browser cookie from
//! `GET /login`), and a whole standalone SMART launch — `/authorize` with PKCE S256, sign-in,
//! the consent page, the redirect back with a code, and the code exchange — to get the refresh
//! tokens the refresh scenario rotates. Mirrors `tests/common/smart.rs`.

use anyhow::{anyhow, bail, Context, Result};

use crate::crypto::{pkce, random_token};
use crate::http::{Conn, CookieJar, Reply, Req};

/// A person who can sign in with a password alone (a role without required MFA).
#[derive(Debug, Clone)]
pub struct User {
    pub username: String,
    pub password: String,
}

/// A confidential-symmetric app (client_secret_basic) registered for a standalone launch.
#[derive(Debug, Clone)]
pub struct App {
    pub client_id: String,
    pub secret: String,
    pub redirect_uri: String,
    pub scope: String,
    /// The FHIR base URL Ward protects (`aud` of the authorization request).
    pub aud: String,
}

/// The value of the first `<input name="NAME" value="…">` in a page, HTML entities decoded.
pub fn field(html: &str, name: &str) -> Option<String> {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker)? + marker.len();
    let end = html[start..].find('"')? + start;
    Some(unescape(&html[start..end]))
}

/// Every value of inputs called `name` (the consent page's `include` checkboxes).
fn all_fields(html: &str, name: &str) -> Vec<String> {
    let marker = format!("name=\"{name}\" value=\"");
    html.split(marker.as_str())
        .skip(1)
        .filter_map(|piece| piece.split('"').next())
        .map(unescape)
        .collect()
}

/// Decodes the entities askama's HTML escaping produces.
fn unescape(text: &str) -> String {
    text.replace("&quot;", "\"")
        .replace("&#x27;", "'")
        .replace("&#39;", "'")
        .replace("&#x2F;", "/")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

async fn get(conn: &mut Conn, jar: &mut CookieJar, path: &str) -> Result<Reply> {
    let reply = conn.send(&Req::get(path).cookies(jar)).await?;
    jar.absorb(&reply);
    Ok(reply)
}

async fn post(
    conn: &mut Conn,
    jar: &mut CookieJar,
    path: &str,
    form: &[(&str, &str)],
) -> Result<Reply> {
    let reply = conn.send(&Req::post_form(path, form).cookies(jar)).await?;
    jar.absorb(&reply);
    Ok(reply)
}

/// The sign-in page, then the password form: returns the answer to the POST (a 303 to the
/// next step on success) and the latency-relevant parts stay with the caller. `login_path` is
/// the sign-in URL Ward redirected to (it carries `return_to`), or plain `/login`.
pub async fn sign_in(
    conn: &mut Conn,
    jar: &mut CookieJar,
    login_path: &str,
    user: &User,
) -> Result<Reply> {
    let page = get(conn, jar, login_path).await?;
    if page.status != 200 {
        return Ok(page);
    }
    let csrf = field(page.text(), "csrf").context("no csrf field on the sign-in page")?;
    let return_to = field(page.text(), "return_to").unwrap_or_default();
    let mut form = vec![
        ("username", user.username.as_str()),
        ("password", user.password.as_str()),
        ("csrf", csrf.as_str()),
    ];
    if !return_to.is_empty() {
        form.push(("return_to", return_to.as_str()));
    }
    post(conn, jar, "/login", &form).await
}

/// Approves everything on the consent page (every resource type, offline access).
async fn approve(conn: &mut Conn, jar: &mut CookieJar, page: &Reply) -> Result<Reply> {
    let html = page.text();
    let csrf = field(html, "csrf").context("no csrf on the consent page")?;
    let request = field(html, "request").context("no request on the consent page")?;
    let patient = field(html, "patient").unwrap_or_default();
    let includes = all_fields(html, "include");
    let mut form = vec![
        ("csrf", csrf.as_str()),
        ("request", request.as_str()),
        ("decision", "approve"),
        ("patient", patient.as_str()),
    ];
    form.extend(includes.iter().map(|v| ("include", v.as_str())));
    if html.contains("name=\"offline\"") {
        form.push(("offline", "yes"));
    }
    post(conn, jar, "/authorize/consent", &form).await
}

/// A whole standalone launch for `app` as `user`; returns the token response (with a
/// `refresh_token` when the app asked for `offline_access`). Each call starts a new grant
/// family, with its own browser (cookie jar) and PKCE pair.
pub async fn launch(conn: &mut Conn, app: &App, user: &User) -> Result<serde_json::Value> {
    let base = conn.target().base.clone();
    let (verifier, challenge) = pkce();
    let state = random_token(12);
    let query = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs([
            ("response_type", "code"),
            ("client_id", app.client_id.as_str()),
            ("redirect_uri", app.redirect_uri.as_str()),
            ("scope", app.scope.as_str()),
            ("state", state.as_str()),
            ("aud", app.aud.as_str()),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
        ])
        .finish();
    let mut jar = CookieJar::default();
    let mut next = format!("/authorize?{query}");
    let mut callback = None;
    for _ in 0..12 {
        if next.starts_with(&app.redirect_uri) {
            callback = Some(next);
            break;
        }
        let path = next.strip_prefix(&base).unwrap_or(&next).to_owned();
        if !path.starts_with('/') {
            bail!("launch was sent somewhere unexpected: {next}");
        }
        let reply = get(conn, &mut jar, &path).await?;
        let answer = match reply.status {
            302 | 303 => {
                let location = reply
                    .location
                    .clone()
                    .context("redirect without Location")?;
                if location.starts_with("/login") {
                    sign_in(conn, &mut jar, &location, user).await?
                } else {
                    next = location;
                    continue;
                }
            }
            200 if reply.text().contains("id=\"consent-form\"") => {
                approve(conn, &mut jar, &reply).await?
            }
            _ => bail!("launch stopped at {path}: {}", reply.summary()),
        };
        if answer.status != 303 {
            bail!("launch step refused: {}", answer.summary());
        }
        next = answer.location.context("redirect without Location")?;
    }
    let callback = callback.ok_or_else(|| anyhow!("launch did not come back to the app"))?;
    let params: std::collections::HashMap<String, String> = url::Url::parse(&callback)?
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    if params.get("state") != Some(&state) {
        bail!("callback state mismatch: {callback}");
    }
    let code = params
        .get("code")
        .with_context(|| format!("no code in callback {callback}"))?;
    let reply = conn
        .send(
            &Req::post_form(
                "/token",
                &[
                    ("grant_type", "authorization_code"),
                    ("code", code.as_str()),
                    ("redirect_uri", app.redirect_uri.as_str()),
                    ("code_verifier", verifier.as_str()),
                ],
            )
            .basic(&app.client_id, &app.secret),
        )
        .await?;
    if reply.status != 200 {
        bail!("code exchange refused: {}", reply.summary());
    }
    reply.json().context("token response is not JSON")
}
