//! A scripted browser over real HTTP: a cookie jar, no automatic redirects, and helpers to read
//! the CSRF token and other fields out of Ward's pages. (The real-Chromium tests live in
//! `tests/chromium.rs`.)

use std::sync::Arc;

use reqwest::StatusCode;

pub struct Browser {
    pub client: reqwest::Client,
    pub jar: Arc<reqwest::cookie::Jar>,
    pub base: String,
}

pub struct Page {
    pub status: StatusCode,
    pub location: Option<String>,
    pub body: String,
    pub set_cookies: Vec<String>,
    /// Ward's `X-Request-Id` for this response (what its audit events record).
    pub request_id: Option<String>,
}

impl Page {
    /// The value of the first hidden or text input called `name`.
    pub fn field(&self, name: &str) -> Option<String> {
        field(&self.body, name)
    }

    pub fn csrf(&self) -> String {
        self.field("csrf")
            .unwrap_or_else(|| panic!("no csrf field in:\n{}", self.body))
    }
}

pub fn field(html: &str, name: &str) -> Option<String> {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker)? + marker.len();
    let end = html[start..].find('"')? + start;
    Some(html[start..end].to_owned())
}

/// The value of an element with `id="…"` that carries `value="…"` (e.g. the TOTP key).
pub fn value_by_id(html: &str, id: &str) -> Option<String> {
    let start = html.find(&format!("id=\"{id}\""))?;
    let rest = &html[start..];
    let marker = "value=\"";
    let v = rest.find(marker)? + marker.len();
    let end = rest[v..].find('"')? + v;
    Some(rest[v..end].to_owned())
}

impl Browser {
    pub fn new(base: &str) -> Self {
        super::install_crypto_provider();
        let jar = Arc::new(reqwest::cookie::Jar::default());
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(super::USER_AGENT)
            .cookie_provider(jar.clone())
            .build()
            .expect("client");
        Self {
            client,
            jar,
            base: base.to_owned(),
        }
    }

    async fn page(response: reqwest::Response) -> Page {
        let status = response.status();
        let location = response
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let set_cookies = response
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_owned))
            .collect();
        let request_id = response
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Page {
            status,
            location,
            body: response.text().await.unwrap_or_default(),
            set_cookies,
            request_id,
        }
    }

    pub async fn get(&self, path: &str) -> Page {
        Self::page(
            self.client
                .get(format!("{}{path}", self.base))
                .send()
                .await
                .expect("GET"),
        )
        .await
    }

    pub async fn post(&self, path: &str, form: &[(&str, &str)]) -> Page {
        Self::page(
            self.client
                .post(format!("{}{path}", self.base))
                .form(form)
                .send()
                .await
                .expect("POST"),
        )
        .await
    }

    /// The session cookie currently held, if any.
    pub fn session_cookie(&self) -> Option<String> {
        use reqwest::cookie::CookieStore;
        let url = self.base.parse().ok()?;
        let header = self.jar.cookies(&url)?;
        header
            .to_str()
            .ok()?
            .split(';')
            .map(str::trim)
            .find_map(|c| c.strip_prefix("ward_session=").map(str::to_owned))
    }

    /// GET /login, then POST the credentials with the page's CSRF token.
    pub async fn sign_in(&self, username: &str, password: &str) -> Page {
        let page = self.get("/login").await;
        self.post(
            "/login",
            &[
                ("username", username),
                ("password", password),
                ("csrf", &page.csrf()),
            ],
        )
        .await
    }
}

/// RFC 4648 base32 (no padding) to bytes, for computing TOTP codes from the enrolment page.
pub fn base32_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = Vec::new();
    let (mut buffer, mut bits) = (0u32, 0);
    for c in text.chars() {
        let value = ALPHABET.find(c).expect("base32 character") as u32;
        buffer = (buffer << 5) | value;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
        }
    }
    out
}
