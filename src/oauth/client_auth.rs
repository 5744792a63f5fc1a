//! Client authentication, one implementation for every endpoint that authenticates clients
//! (token, launch, and later introspection and revocation): RFC 6749 §2.3 (`none` for public
//! clients, `client_secret_basic`, `client_secret_post`) and RFC 7523 `private_key_jwt` per SMART
//! client-confidential-asymmetric.
//!
//! Rules: a request uses exactly one method; the method must be the one the client registered;
//! every failure is `invalid_client` (401) with a short reason, and is audited. A replayed
//! assertion `jti` is refused; the jti is recorded outside the action's own transaction, so it
//! stays consumed even when the request fails later (DESIGN.md §4). The token endpoint records
//! it in the same group-committed piece of work as the issuance ([`authenticate_deferring_jti`]),
//! before the issuance's transaction: one commit per request instead of two. A
//! `client_credentials` grant writes it together with the issuance's own rows instead (one
//! statement on PostgreSQL), and alone before any refusal.

use super::assertion::{self, Expectations};
pub use super::client_credentials::{presented, Presented};
use super::error::OAuthError;
use crate::app::AppState;
use crate::audit::{self, AuditContext, AuditEvent};
use crate::clients::jwks::{self, ClientKey};
use std::sync::Arc;

use crate::clients::{self, AuthMethod, Client};
use crate::coherence::CachedClient;
use crate::store::{grants, write_transaction, StoreError};

impl Presented {
    fn method(&self) -> AuthMethod {
        match self {
            Self::None { .. } => AuthMethod::None,
            Self::SecretBasic { .. } => AuthMethod::ClientSecretBasic,
            Self::SecretPost { .. } => AuthMethod::ClientSecretPost,
            Self::Assertion { .. } => AuthMethod::PrivateKeyJwt,
        }
    }
}

/// Authenticates the client; `endpoint` names the endpoint for the audit trail and
/// `audiences` are the assertion `aud` values accepted there.
pub async fn authenticate(
    state: &AppState,
    ctx: &AuditContext,
    presented: Presented,
    endpoint: &str,
    audiences: &[String],
) -> Result<Client, OAuthError> {
    let (client, assertion) =
        authenticate_deferring_jti(state, ctx, presented, endpoint, audiences).await?;
    if let Some(assertion) = assertion {
        let (clock, ctx) = (state.clock.clone(), ctx.clone());
        state
            .db
            .write(move |conn| assertion.record(conn, clock.as_ref(), &ctx))
            .await??;
    }
    Ok(client)
}

/// A verified client assertion whose `jti` is still to be recorded: the caller must call
/// [`UnrecordedAssertion::record`] before it acts for the client, in a piece of database work
/// of its own choosing, outside the action's transaction; or write [`UnrecordedAssertion::jti_row`]
/// in the same statement as the action, all or nothing, and answer a replay found there with
/// [`UnrecordedAssertion::replayed`].
#[must_use = "an assertion is not authenticated until its jti is recorded"]
#[derive(Debug)]
pub struct UnrecordedAssertion {
    client_id: String,
    endpoint: String,
    jti: String,
    exp: i64,
}

impl UnrecordedAssertion {
    /// Records the `jti`; a replay is refused (`invalid_client`) and audited here. The outer
    /// `Err` is the database failing.
    pub fn record(
        self,
        conn: &mut crate::store::DbConnection,
        clock: &dyn crate::clock::Clock,
        ctx: &AuditContext,
    ) -> Result<Result<(), OAuthError>, StoreError> {
        if grants::record_assertion_jti(conn, &self.jti_row())? {
            return Ok(Ok(()));
        }
        Ok(Err(self.replayed(conn, clock, ctx)?))
    }

    /// The `jti`'s row, for an action that writes it together with its own rows
    /// (`grants::record_service_issuance`); when that finds a replay, answer it with
    /// [`UnrecordedAssertion::replayed`].
    pub fn jti_row(&self) -> grants::AssertionJtiRow {
        grants::AssertionJtiRow {
            client_id: self.client_id.clone(),
            jti: self.jti.clone(),
            expires_at: self.exp,
        }
    }

    /// Audits a replayed `jti` (in its own transaction) and answers the refusal
    /// (`invalid_client`). The event names the client; the failed authentication has no actor.
    pub fn replayed(
        self,
        conn: &mut crate::store::DbConnection,
        clock: &dyn crate::clock::Clock,
        ctx: &AuditContext,
    ) -> Result<OAuthError, StoreError> {
        let reason = "this client assertion (jti) was already used".to_owned();
        let ctx = AuditContext {
            actor_client: None,
            ..ctx.clone()
        };
        audit::record(
            conn,
            clock,
            &ctx,
            &AuditEvent::ClientAuthenticationFailed {
                client_id: Some(self.client_id),
                endpoint: self.endpoint,
                reason: reason.clone(),
            },
        )?;
        Ok(OAuthError::invalid_client(reason))
    }
}

/// [`authenticate`], but a client assertion's `jti` is handed back to be recorded by the caller
/// (see [`UnrecordedAssertion`]).
pub async fn authenticate_deferring_jti(
    state: &AppState,
    ctx: &AuditContext,
    presented: Presented,
    endpoint: &str,
    audiences: &[String],
) -> Result<(Client, Option<UnrecordedAssertion>), OAuthError> {
    let claimed = presented
        .client_id()
        .map(str::to_owned)
        .or_else(|| match &presented {
            Presented::Assertion { assertion, .. } => assertion::peek_issuer(assertion),
            _ => None,
        });
    match check(state, &presented, claimed.as_deref(), audiences).await {
        Ok((client, jti)) => {
            let assertion = jti.map(|(jti, exp)| UnrecordedAssertion {
                client_id: client.client_id.clone(),
                endpoint: endpoint.to_owned(),
                jti,
                exp,
            });
            Ok((client, assertion))
        }
        Err(Failure::Refused(reason)) => {
            let (state2, ctx2, endpoint2) = (state.clone(), ctx.clone(), endpoint.to_owned());
            let claimed2 = claimed.clone();
            let why = reason.clone();
            state
                .db
                .write(move |conn| {
                    write_transaction(conn, |conn| {
                        audit::append(
                            conn,
                            state2.clock.as_ref(),
                            &ctx2,
                            &AuditEvent::ClientAuthenticationFailed {
                                client_id: claimed2.map(|c| super::error::truncate(&c, 64)),
                                endpoint: endpoint2,
                                reason: why,
                            },
                        )
                    })
                })
                .await?;
            Err(OAuthError::invalid_client(reason))
        }
        Err(Failure::Store(e)) => Err(e.into()),
    }
}

enum Failure {
    Refused(String),
    Store(StoreError),
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

/// The client, and a verified assertion's `(jti, exp)`.
async fn check(
    state: &AppState,
    presented: &Presented,
    claimed: Option<&str>,
    audiences: &[String],
) -> Result<(Client, Option<(String, i64)>), Failure> {
    let refuse = |r: &str| Failure::Refused(r.to_owned());
    let Some(client_id) = claimed.map(str::to_owned) else {
        return Err(refuse("the client is not identified"));
    };
    let Some(registration) = registration(state, &client_id)
        .await?
        .filter(|r| r.client.enabled)
    else {
        return Err(refuse("unknown or disabled client"));
    };
    let secret_ok = match presented {
        Presented::SecretBasic { secret, .. } | Presented::SecretPost { secret, .. } => {
            clients::secret_matches(
                registration.secrets.iter().map(|(h, e)| (h.as_str(), *e)),
                secret,
                state.clock.now_secs(),
            )
        }
        _ => false,
    };
    let client = registration.client.clone();
    if presented.method() != client.settings.auth_method {
        return Err(Failure::Refused(format!(
            "this client must authenticate with {}",
            client.settings.auth_method.as_str()
        )));
    }
    match presented {
        Presented::None { .. } => Ok((client, None)),
        Presented::SecretBasic { .. } | Presented::SecretPost { .. } if secret_ok => {
            Ok((client, None))
        }
        Presented::SecretBasic { .. } | Presented::SecretPost { .. } => {
            Err(refuse("client secret is wrong or expired"))
        }
        Presented::Assertion { assertion, .. } => {
            let seen = verify_assertion(state, &registration, assertion, audiences).await?;
            Ok((client, Some(seen)))
        }
    }
}

/// The client's registration with its secret hashes and parsed inline keys: from this node's
/// cache when it may be trusted (`crate::coherence`), otherwise in one database trip.
async fn registration(
    state: &AppState,
    client_id: &str,
) -> Result<Option<Arc<CachedClient>>, StoreError> {
    if let Some(hit) = state.coherence.client(client_id) {
        return Ok(Some(hit));
    }
    let epoch = state.coherence.epoch();
    let lookup = client_id.to_owned();
    let loaded = state
        .db
        .run(move |conn| {
            let client = match clients::get(conn, &lookup) {
                Ok(c) => c,
                Err(clients::RegistryError::NotFound(_)) => return Ok(None),
                Err(clients::RegistryError::Store(e)) => return Err(e),
                Err(other) => return Err(StoreError::Corrupt(other.to_string())),
            };
            let secrets = crate::store::clients::secrets(conn, &lookup)?
                .into_iter()
                .map(|r| (r.secret_hash, r.expires_at))
                .collect();
            let inline_keys = client
                .settings
                .jwks
                .as_ref()
                .and_then(|doc| jwks::validate(doc).ok());
            Ok(Some(Arc::new(CachedClient {
                client,
                secrets,
                inline_keys,
                loaded_at: std::time::Instant::now(),
            })))
        })
        .await?;
    if let Some(registration) = &loaded {
        state
            .coherence
            .remember_client(Arc::clone(registration), epoch);
    }
    Ok(loaded)
}

/// Verifies the assertion; answers its `(jti, exp)`, still to be recorded.
async fn verify_assertion(
    state: &AppState,
    registration: &CachedClient,
    jwt: &str,
    audiences: &[String],
) -> Result<(String, i64), Failure> {
    let client = &registration.client;
    let refuse = |e: assertion::AssertionError| Failure::Refused(e.to_string());
    let header = assertion::peek_header(jwt).map_err(refuse)?;
    let now = state.clock.now_secs();
    let expect = Expectations {
        client_id: &client.client_id,
        audiences,
        registered_jku: client.settings.jwks_uri.as_deref(),
        now,
    };
    let keys = client_keys(state, registration).await?;
    let verified = match verify_off_executor(jwt, &header, keys, &expect).await? {
        Err(e) if e.is_unknown_kid() => match &client.settings.jwks_uri {
            Some(url) => match state.client_keys.refetch_for_unknown_kid(url).await {
                Ok(Some(fresh)) => {
                    verify_off_executor(jwt, &header, fresh.as_ref().clone(), &expect).await?
                }
                Ok(None) => Err(e),
                Err(fetch) => return Err(Failure::Refused(fetch.to_string())),
            },
            None => Err(e),
        },
        other => other,
    }
    .map_err(refuse)?;
    Ok((verified.jti, verified.exp))
}

/// Verifications running at once: one per core this process may use. More would only
/// time-slice: a P-384 verification interrupted by thirty others loses its caches and costs
/// half as much again.
static VERIFY_SLOTS: std::sync::LazyLock<tokio::sync::Semaphore> = std::sync::LazyLock::new(|| {
    tokio::sync::Semaphore::new(std::thread::available_parallelism().map_or(1, |n| n.get()))
});

/// Signature verification costs tens (RSA) to hundreds (P-384) of microseconds: it runs on a
/// blocking thread, not the async executor, at most one per core at a time (`VERIFY_SLOTS`).
async fn verify_off_executor(
    jwt: &str,
    header: &assertion::AssertionHeader,
    keys: Vec<ClientKey>,
    expect: &Expectations<'_>,
) -> Result<Result<assertion::VerifiedAssertion, assertion::AssertionError>, Failure> {
    let (jwt, header, client_id, audiences, jku, now) = (
        jwt.to_owned(),
        header.clone(),
        expect.client_id.to_owned(),
        expect.audiences.to_vec(),
        expect.registered_jku.map(str::to_owned),
        expect.now,
    );
    let slot = VERIFY_SLOTS.acquire().await.map_err(|e| {
        Failure::Store(StoreError::Unavailable(format!(
            "verification slots closed: {e}"
        )))
    })?;
    tokio::task::spawn_blocking(move || {
        // Held until the verification ends, even if the request went away meanwhile.
        let _slot = slot;
        let expect = Expectations {
            client_id: &client_id,
            audiences: &audiences,
            registered_jku: jku.as_deref(),
            now,
        };
        assertion::verify(&jwt, &header, &keys, &expect)
    })
    .await
    .map_err(|e| {
        Failure::Store(StoreError::Unavailable(format!(
            "verification task failed: {e}"
        )))
    })
}

async fn client_keys(
    state: &AppState,
    registration: &CachedClient,
) -> Result<Vec<ClientKey>, Failure> {
    let client = &registration.client;
    if let Some(keys) = &registration.inline_keys {
        return Ok(keys.clone());
    }
    if let Some(doc) = &client.settings.jwks {
        return jwks::validate(doc).map_err(|e| Failure::Refused(e.to_string()));
    }
    match &client.settings.jwks_uri {
        Some(url) => state
            .client_keys
            .keys(url)
            .await
            .map(|keys| keys.as_ref().clone())
            .map_err(|e| Failure::Refused(e.to_string())),
        None => Err(Failure::Refused("the client has no registered keys".into())),
    }
}
