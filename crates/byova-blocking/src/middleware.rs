//! [`BearerAuth`]: ureq 3 middleware that puts a byova access token on every request and, when
//! Webex answers 401, invalidates that token and sends the request once more with a fresh one.
//!
//! ```
//! use std::sync::Arc;
//! use byova_blocking::{BearerAuth, Byova, OrgId};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let fake = byova_testkit::FakeWebex::start();
//! # let builder = Byova::builder(fake.integration_credentials(), fake.service_app_credentials());
//! # let byova = Arc::new(builder.config(fake.config()).build()?);
//! let org: OrgId = "63b02f90-9cc6-43b8-aa6d-cad425ac554c".parse()?;
//! # fake.authorize_org(&org);
//! # let issued = fake.issue_integration_tokens();
//! # byova.integration().refresh(Some(&issued.refresh_token))?; // stands in for authorize()
//! # byova.service_app().fetch_token_for_org(&org)?; // stands in for the webhook
//! let base_url = byova.integration().config().base_url.clone(); // https://webexapis.com/v1
//! let webex: ureq::Agent = ureq::Agent::config_builder()
//!     .middleware(BearerAuth::org(byova, org))
//!     .build()
//!     .into();
//! let me = webex.get(format!("{base_url}/people/me")).call()?;
//! assert_eq!(me.status(), 200);
//! # Ok(())
//! # }
//! ```

use std::sync::Arc;
use std::time::Duration;

use byova_core::{AccessToken, Invalidation, OrgId, TokenKey};
use ureq::http::header::{AUTHORIZATION, HeaderValue};
use ureq::http::{Method, Request, Response, StatusCode};
use ureq::middleware::{Middleware, MiddlewareNext};
use ureq::{Body, SendBody};

use crate::Byova;

/// ureq middleware that authenticates requests to Webex's API (the configured base URL's
/// origin; requests to other hosts pass untouched) with byova's tokens: `Authorization: Bearer …`
/// from [`Byova::integration`] or one org's Service App token; on a 401 the token is
/// invalidated ([`IntegrationTokenManager::invalidate`](crate::IntegrationTokenManager::invalidate))
/// and the request sent once more with a fresh one. Many requests meeting the same revoked
/// token cause one refresh. A 401 that a fresh token does not cure costs at most one refresh:
/// further 401s on that identity are returned as they are for a cool-down
/// ([`RefreshPolicy::rejection_cooldown`](byova_core::RefreshPolicy::rejection_cooldown)), since
/// Webex caps the live tokens of a user and every refresh mints one.
///
/// ureq hands a middleware its request body as a one-shot stream and its chain as a one-shot
/// continuation, so only requests without a body (`GET`, `HEAD`, `DELETE`, `OPTIONS`) are
/// retried, and the retry goes out through this middleware's own agent (byova's configured
/// timeout, no redirects; [`with_retry_agent`](Self::with_retry_agent) to use yours, which
/// should not carry a `BearerAuth` itself), not through the rest of the chain. Any other request's 401 is returned, its token already invalidated, so
/// the caller's next attempt gets a fresh one.
#[derive(Clone)]
pub struct BearerAuth {
    byova: Arc<Byova>,
    subject: TokenKey,
    retry_agent: ureq::Agent,
}

impl std::fmt::Debug for BearerAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BearerAuth").field("subject", &self.subject).finish_non_exhaustive()
    }
}

impl BearerAuth {
    fn new(byova: Arc<Byova>, subject: TokenKey) -> Self {
        let timeout = byova.integration().config().timeout;
        let retry_agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .timeout_connect(Some(timeout.min(Duration::from_secs(10))))
            .max_redirects(0)
            .http_status_as_error(false)
            .build()
            .into();
        Self { byova, subject, retry_agent }
    }

    /// The Integration's token.
    pub fn integration(byova: Arc<Byova>) -> Self {
        Self::new(byova, TokenKey::Integration)
    }

    /// `org_id`'s Service App token.
    pub fn org(byova: Arc<Byova>, org_id: OrgId) -> Self {
        Self::new(byova, TokenKey::Org(org_id))
    }

    /// Sends retries through `agent` (build it with `http_status_as_error(false)` to get the
    /// retried response rather than an error for its status).
    #[must_use]
    pub fn with_retry_agent(mut self, agent: ureq::Agent) -> Self {
        self.retry_agent = agent;
        self
    }

    fn token(&self) -> byova_core::Result<AccessToken> {
        match &self.subject {
            TokenKey::Integration => self.byova.integration().get_access_token(),
            TokenKey::Org(org) => self.byova.service_app().get_access_token(org),
        }
    }

    fn invalidate(&self, rejected: &AccessToken) -> byova_core::Result<Invalidation> {
        match &self.subject {
            TokenKey::Integration => self.byova.integration().invalidate(rejected),
            TokenKey::Org(org) => self.byova.service_app().invalidate(org, rejected),
        }
    }

    fn rejected_again(&self, renewed: &AccessToken) -> byova_core::Result<Invalidation> {
        match &self.subject {
            TokenKey::Integration => self.byova.integration().rejected_again(renewed),
            TokenKey::Org(org) => self.byova.service_app().rejected_again(org, renewed),
        }
    }

    fn bearer(&self) -> Result<(HeaderValue, AccessToken), ureq::Error> {
        let token = self.token().map_err(|e| ureq::Error::Io(std::io::Error::other(e)))?;
        let mut value = HeaderValue::from_str(&format!("Bearer {}", token.expose_secret()))
            .map_err(|e| ureq::Error::Io(std::io::Error::other(e)))?;
        value.set_sensitive(true);
        Ok((value, token))
    }
}

impl Middleware for BearerAuth {
    fn handle(
        &self,
        mut request: Request<SendBody<'_>>,
        next: MiddlewareNext<'_>,
    ) -> Result<Response<Body>, ureq::Error> {
        // Tokens go to Webex's API origin only, never to another host a shared agent calls.
        if !self.byova.integration().config().is_api_origin(&request.uri().to_string()) {
            return next.handle(request);
        }
        let (value, sent) = self.bearer()?;
        request.headers_mut().insert(AUTHORIZATION, value);
        let bodiless =
            matches!(*request.method(), Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS);
        let again = bodiless.then(|| {
            let mut copy = Request::builder().method(request.method().clone()).uri(request.uri().clone());
            for (name, value) in request.headers() {
                if name != AUTHORIZATION {
                    copy = copy.header(name, value);
                }
            }
            copy
        });
        let answered = next.handle(request);
        let unauthorized = match &answered {
            Ok(response) => response.status() == StatusCode::UNAUTHORIZED,
            Err(ureq::Error::StatusCode(401)) => true,
            Err(_) => false,
        };
        if !unauthorized {
            return answered;
        }
        match self.invalidate(&sent) {
            Ok(Invalidation::Renew) => {}
            // A 401 a fresh token did not cure: the caller's, without another refresh.
            Ok(_) => return answered,
            Err(e) => {
                tracing::warn!(error = %e, "Webex answered 401 but the token could not be invalidated");
                return answered;
            }
        }
        let Some(again) = again else {
            tracing::debug!("401 on a request with a body: not retried; the token is invalidated");
            return answered;
        };
        tracing::info!("Webex answered 401: invalidated the token; retrying once");
        let (value, renewed) = self.bearer()?;
        let retry = again.header(AUTHORIZATION, value).body(()).map_err(ureq::Error::from)?;
        let response = self.retry_agent.run(retry)?;
        let status = response.status();
        if status == StatusCode::UNAUTHORIZED {
            // Rejected with a fresh token too: not about the token. 401s on it renew nothing
            // for the cool-down.
            let _ = self.rejected_again(&renewed);
        }
        // Answer as the caller's agent would: statuses as errors when it turns them into errors.
        if matches!(answered, Err(ureq::Error::StatusCode(_)))
            && (status.is_client_error() || status.is_server_error())
        {
            return Err(ureq::Error::StatusCode(status.as_u16()));
        }
        Ok(response)
    }
}
