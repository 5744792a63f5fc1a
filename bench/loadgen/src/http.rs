//! A minimal HTTP/1.1 keep-alive client over hyper's low-level connection API: one TCP
//! connection per [`Conn`], reopened only when the server closes it. No pooling, redirects or
//! cookie handling behind the caller's back, so every request on the wire is one we measure.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use anyhow::{anyhow, Context, Result};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{
    HeaderValue, AUTHORIZATION, CONTENT_TYPE, COOKIE, HOST, LOCATION, RETRY_AFTER, SET_COOKIE,
};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Where to connect and what to call the server: the socket address and the `Host` header
/// taken from the base URL (Ward checks neither, but a real client sends both).
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub host: HeaderValue,
    /// The base URL without a trailing slash, e.g. `http://localhost:8080`.
    pub base: String,
}

impl Target {
    /// Resolves `base` (an `http://` URL), preferring an IPv4 address: Ward listens on
    /// 127.0.0.1 by default while `localhost` may resolve to `::1` first.
    pub async fn resolve(base: &str) -> Result<Self> {
        let url = url::Url::parse(base).with_context(|| format!("base URL {base}"))?;
        if url.scheme() != "http" {
            return Err(anyhow!("only http:// base URLs are supported (got {base})"));
        }
        let host = url.host_str().context("base URL has no host")?.to_owned();
        let port = url.port_or_known_default().unwrap_or(80);
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
            .await
            .with_context(|| format!("resolving {host}"))?
            .collect();
        let addr = addrs
            .iter()
            .find(|a| a.is_ipv4())
            .or_else(|| addrs.first())
            .copied()
            .with_context(|| format!("{host} resolves to no address"))?;
        let host_header = match url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host,
        };
        Ok(Self {
            addr,
            host: HeaderValue::from_str(&host_header)?,
            base: base.trim_end_matches('/').to_owned(),
        })
    }
}

/// A finished response with its whole body read.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub location: Option<String>,
    /// `name=value` pairs from every `Set-Cookie` header (attributes dropped).
    pub set_cookies: Vec<(String, String)>,
    /// `Retry-After` in seconds, when the server sent one.
    pub retry_after: Option<u64>,
    pub body: Bytes,
}

impl Reply {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap_or("")
    }

    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// A short, single-line description for error samples.
    pub fn summary(&self) -> String {
        let text: String = self
            .text()
            .chars()
            .take(160)
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        format!("{} {}", self.status, text)
    }
}

/// A request ready to send; build with [`Req::get`] or [`Req::post_form`].
#[derive(Debug, Clone)]
pub struct Req {
    method: Method,
    path: String,
    body: Bytes,
    content_type: Option<HeaderValue>,
    authorization: Option<HeaderValue>,
    cookie: Option<HeaderValue>,
}

impl Req {
    pub fn get(path: &str) -> Self {
        Self {
            method: Method::GET,
            path: path.to_owned(),
            body: Bytes::new(),
            content_type: None,
            authorization: None,
            cookie: None,
        }
    }

    /// A POST with an `application/x-www-form-urlencoded` body.
    pub fn post_form<K: AsRef<str>, V: AsRef<str>>(path: &str, pairs: &[(K, V)]) -> Self {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs.iter().map(|(k, v)| (k.as_ref(), v.as_ref())))
            .finish();
        Self {
            method: Method::POST,
            path: path.to_owned(),
            body: Bytes::from(body),
            content_type: Some(HeaderValue::from_static(
                "application/x-www-form-urlencoded",
            )),
            authorization: None,
            cookie: None,
        }
    }

    /// HTTP Basic client authentication (RFC 6749 §2.3.1: both parts form-urlencoded first).
    pub fn basic(mut self, id: &str, secret: &str) -> Self {
        self.authorization = Some(basic_header(id, secret));
        self
    }

    pub fn cookies(mut self, jar: &CookieJar) -> Self {
        self.cookie = jar.header();
        self
    }

    fn build(&self, host: &HeaderValue) -> Result<Request<Full<Bytes>>> {
        let mut builder = Request::builder()
            .method(self.method.clone())
            .uri(self.path.as_str())
            .header(HOST, host.clone());
        if let Some(v) = &self.content_type {
            builder = builder.header(CONTENT_TYPE, v.clone());
        }
        if let Some(v) = &self.authorization {
            builder = builder.header(AUTHORIZATION, v.clone());
        }
        if let Some(v) = &self.cookie {
            builder = builder.header(COOKIE, v.clone());
        }
        Ok(builder.body(Full::new(self.body.clone()))?)
    }
}

/// `Authorization: Basic …` for a client id and secret.
pub fn basic_header(id: &str, secret: &str) -> HeaderValue {
    let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let raw = format!("{}:{}", enc(id), enc(secret));
    HeaderValue::from_str(&format!("Basic {}", STANDARD.encode(raw)))
        .unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// One keep-alive connection. Must be used inside a `tokio::task::LocalSet` (the connection
/// driver is spawned as a local task).
pub struct Conn {
    target: Target,
    sender: Option<SendRequest<Full<Bytes>>>,
    /// How many times a TCP connection was opened (1 in a healthy keep-alive run).
    pub connects: u64,
}

impl Conn {
    pub fn new(target: &Target) -> Self {
        Self {
            target: target.clone(),
            sender: None,
            connects: 0,
        }
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    async fn connect(&mut self) -> Result<&mut SendRequest<Full<Bytes>>> {
        let stream = TcpStream::connect(self.target.addr)
            .await
            .with_context(|| format!("connecting to {}", self.target.addr))?;
        stream.set_nodelay(true)?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::task::spawn_local(async move {
            // Ends when either side closes; errors surface on the next send.
            let _ = connection.await;
        });
        self.connects += 1;
        Ok(self.sender.insert(sender))
    }

    /// Sends `req` and reads the whole response. A connection the server closed is reopened
    /// once before giving up.
    pub async fn send(&mut self, req: &Req) -> Result<Reply> {
        let request = req.build(&self.target.host)?;
        let usable = match self.sender.as_mut() {
            Some(s) if !s.is_closed() => s.ready().await.is_ok(),
            _ => false,
        };
        let sender = if usable {
            self.sender.as_mut().context("no connection")?
        } else {
            let fresh = self.connect().await?;
            fresh.ready().await?;
            fresh
        };
        let response = match sender.send_request(request).await {
            Ok(r) => r,
            Err(e) => {
                self.sender = None;
                return Err(e.into());
            }
        };
        let status = response.status().as_u16();
        let location = response
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok());
        let set_cookies = response
            .headers()
            .get_all(SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(|v| {
                let pair = v.split(';').next()?;
                let (name, value) = pair.split_once('=')?;
                Some((name.trim().to_owned(), value.trim().to_owned()))
            })
            .collect();
        let body = match response.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                self.sender = None;
                return Err(e.into());
            }
        };
        Ok(Reply {
            status,
            location,
            set_cookies,
            retry_after,
            body,
        })
    }
}

/// Cookies of one simulated browser (one host, so no domain or path matching).
#[derive(Debug, Default, Clone)]
pub struct CookieJar {
    cookies: BTreeMap<String, String>,
}

impl CookieJar {
    /// Takes the response's cookies; an empty value deletes the cookie.
    pub fn absorb(&mut self, reply: &Reply) {
        for (name, value) in &reply.set_cookies {
            if value.is_empty() {
                self.cookies.remove(name);
            } else {
                self.cookies.insert(name.clone(), value.clone());
            }
        }
    }

    fn header(&self) -> Option<HeaderValue> {
        if self.cookies.is_empty() {
            return None;
        }
        let joined = self
            .cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        HeaderValue::from_str(&joined).ok()
    }
}
