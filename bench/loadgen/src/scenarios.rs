//! The workers behind each scenario: what one connection sends and what counts as success.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::browser::{self, App, User};
use crate::crypto::{AssertionSigner, ASSERTION_TYPE};
use crate::driver::{Outcome, Worker};
use crate::http::{Conn, CookieJar, Reply, Req};

fn transport(e: anyhow::Error) -> Outcome {
    Outcome::Error(format!("transport: {e:#}"))
}

fn expect(reply: &Reply, ok: bool) -> Outcome {
    if ok {
        Outcome::Ok
    } else {
        Outcome::Error(reply.summary())
    }
}

/// A fixed GET (`/healthz`, discovery, `/jwks`): any 2xx is a success.
pub struct Get {
    pub req: Req,
}

impl Worker for Get {
    async fn op(&mut self, conn: &mut Conn) -> Outcome {
        match conn.send(&self.req).await {
            Ok(reply) => expect(&reply, reply.is_success()),
            Err(e) => transport(e),
        }
    }
}

/// A pool of ready `/token` requests, each with its own assertion, signed before the run.
pub struct AssertionPool {
    requests: RefCell<Vec<(Instant, Req)>>,
    signer: AssertionSigner,
    scope: String,
    /// Set once a request had to be signed during the run (the pool was too small).
    pub exhausted: Cell<bool>,
}

/// Assertions older than this are dropped from the pool: their `exp` (five minutes after
/// signing) would soon pass.
const POOL_MAX_AGE: Duration = Duration::from_secs(270);

impl AssertionPool {
    pub fn fill(signer: AssertionSigner, scope: &str, size: usize) -> anyhow::Result<Self> {
        let pool = Self {
            requests: RefCell::new(Vec::with_capacity(size)),
            signer,
            scope: scope.to_owned(),
            exhausted: Cell::new(false),
        };
        for _ in 0..size {
            let req = pool.request()?;
            pool.requests.borrow_mut().push((Instant::now(), req));
        }
        Ok(pool)
    }

    /// A `client_credentials` token request with a freshly signed assertion.
    pub fn request(&self) -> anyhow::Result<Req> {
        let assertion = self.signer.sign()?;
        Ok(Req::post_form(
            "/token",
            &[
                ("grant_type", "client_credentials"),
                ("scope", self.scope.as_str()),
                ("client_assertion_type", ASSERTION_TYPE),
                ("client_assertion", assertion.as_str()),
            ],
        ))
    }

    fn take(&self) -> anyhow::Result<Req> {
        let mut requests = self.requests.borrow_mut();
        while let Some((signed_at, req)) = requests.pop() {
            if signed_at.elapsed() < POOL_MAX_AGE {
                return Ok(req);
            }
        }
        drop(requests);
        self.exhausted.set(true);
        self.request()
    }
}

/// SMART Backend Services: one `client_credentials` request per operation, each with an
/// assertion never used before (Ward refuses a replayed `jti`).
pub struct ClientCredentials {
    pub pool: Rc<AssertionPool>,
    pub next: Option<Req>,
}

impl Worker for ClientCredentials {
    async fn prepare(&mut self, _conn: &mut Conn) {
        if self.next.is_none() {
            self.next = self.pool.take().ok();
        }
    }

    async fn op(&mut self, conn: &mut Conn) -> Outcome {
        let Some(req) = self.next.take() else {
            return Outcome::Error("could not sign an assertion".into());
        };
        match conn.send(&req).await {
            Ok(reply) => expect(
                &reply,
                reply.status == 200 && reply.text().contains("\"access_token\""),
            ),
            Err(e) => transport(e),
        }
    }
}

/// `refresh_token` grants with client_secret_basic; the connection owns one grant family and
/// always presents the newest refresh token (Ward rotates it at every use).
pub struct Refresh {
    pub app: Rc<App>,
    pub user: Rc<User>,
    pub token: Option<String>,
    pub last_error: Option<String>,
}

impl Worker for Refresh {
    async fn prepare(&mut self, conn: &mut Conn) {
        // After a failure the family may be revoked: start a new one (untimed).
        if self.token.is_none() {
            match browser::launch(conn, &self.app, &self.user).await {
                Ok(body) => self.token = body["refresh_token"].as_str().map(str::to_owned),
                Err(e) => self.last_error = Some(format!("re-launch failed: {e:#}")),
            }
        }
    }

    async fn op(&mut self, conn: &mut Conn) -> Outcome {
        let Some(token) = self.token.take() else {
            return Outcome::Error(
                self.last_error
                    .take()
                    .unwrap_or_else(|| "no refresh token".into()),
            );
        };
        let req = Req::post_form(
            "/token",
            &[("grant_type", "refresh_token"), ("refresh_token", &token)],
        )
        .basic(&self.app.client_id, &self.app.secret);
        match conn.send(&req).await {
            Ok(reply) if reply.status == 200 => {
                self.token = reply
                    .json()
                    .and_then(|body| body["refresh_token"].as_str().map(str::to_owned));
                expect(&reply, self.token.is_some())
            }
            Ok(reply) => Outcome::Error(reply.summary()),
            Err(e) => transport(e),
        }
    }
}

/// Token introspection by a resource server: a 200 whose `active` is what the scenario expects.
pub struct Introspect {
    pub req: Req,
    pub expect_active: bool,
}

impl Worker for Introspect {
    async fn op(&mut self, conn: &mut Conn) -> Outcome {
        let wanted = if self.expect_active {
            "\"active\":true"
        } else {
            "\"active\":false"
        };
        match conn.send(&self.req).await {
            Ok(reply) => expect(&reply, reply.status == 200 && reply.text().contains(wanted)),
            Err(e) => transport(e),
        }
    }
}

/// A sign-in by a new browser: `GET /login` (CSRF token, browser cookie), then the password
/// `POST /login`. A 303 onwards is a success; 429 or 503 is load shedding, after which the
/// person waits as `Retry-After` asks (at most 10 s) unless `honor_retry_after` is off (a
/// flood that retries at once).
pub struct Login {
    pub user: Rc<User>,
    pub honor_retry_after: bool,
    pub pause: Option<Duration>,
}

impl Worker for Login {
    async fn prepare(&mut self, _conn: &mut Conn) {
        if let Some(pause) = self.pause.take() {
            tokio::time::sleep(pause).await;
        }
    }

    async fn op(&mut self, conn: &mut Conn) -> Outcome {
        let mut jar = CookieJar::default();
        match browser::sign_in(conn, &mut jar, "/login", &self.user).await {
            Ok(reply) if reply.status == 303 => Outcome::Ok,
            Ok(reply) if reply.status == 429 || reply.status == 503 => {
                if self.honor_retry_after {
                    let seconds = reply.retry_after.unwrap_or(1).min(10);
                    self.pause = Some(Duration::from_secs(seconds));
                }
                Outcome::Shed
            }
            Ok(reply) => Outcome::Error(reply.summary()),
            Err(e) => transport(e),
        }
    }
}
