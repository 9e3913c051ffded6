//! [`BearerAuth`]: reqwest-middleware that puts a byova access token on every request and, when
//! Webex answers 401, invalidates that token and retries the request once with a fresh one.
//!
//! ```
//! use std::sync::Arc;
//! use byova_async::{BearerAuth, Byova, OrgId};
//!
//! # #[tokio::main(flavor = "multi_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let fake = byova_testkit::FakeWebex::start();
//! # let builder = Byova::builder(fake.integration_credentials(), fake.service_app_credentials());
//! # let byova = Arc::new(builder.config(fake.config()).build()?);
//! let org: OrgId = "63b02f90-9cc6-43b8-aa6d-cad425ac554c".parse()?;
//! # fake.authorize_org(&org);
//! # let issued = fake.issue_integration_tokens();
//! # byova.integration().refresh(Some(&issued.refresh_token)).await?; // stands in for authorize()
//! # byova.service_app().fetch_token_for_org(&org).await?; // stands in for the webhook
//! let webex = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
//!     .with(BearerAuth::org(byova.clone(), org))
//!     .build();
//! let base_url = &byova.integration().config().base_url; // https://webexapis.com/v1
//! let me = webex.get(format!("{base_url}/people/me")).send().await?;
//! assert_eq!(me.status(), 200);
//! # Ok(())
//! # }
//! ```

use std::sync::Arc;

use http::Extensions;
use reqwest::header::{AUTHORIZATION, HeaderValue};
use reqwest::{Request, Response, StatusCode};
use reqwest_middleware::{Middleware, Next};

use crate::Byova;
use byova_core::{AccessToken, Invalidation, OrgId, TokenKey};

/// reqwest-middleware that authenticates requests to Webex's API (the configured base URL's
/// origin; requests to other hosts pass untouched) with byova's tokens: `Authorization:
/// Bearer …` from [`Byova::integration`] or one org's Service App token; on a 401 the token
/// is invalidated ([`IntegrationTokenManager::invalidate`](crate::IntegrationTokenManager::invalidate))
/// and the request sent once more with a fresh one. Many requests meeting the same revoked
/// token cause one refresh. A request whose body cannot be cloned (a stream) is not retried:
/// its 401 is returned.
///
/// Webex caps the live tokens of a user (about 750) and every refresh mints one, so a 401 that
/// a fresh token does not cure (the retry is refused too: a missing scope, a resource the
/// identity may not see) costs at most one refresh: further 401s on that identity are returned
/// as they are for a cool-down ([`RefreshPolicy::rejection_cooldown`](byova_core::RefreshPolicy::rejection_cooldown),
/// 10 minutes by default, doubling while it repeats, 80 minutes at most). Outside such a
/// cool-down a token Webex really revoked renews at once, however young.
#[derive(Clone)]
pub struct BearerAuth {
    byova: Arc<Byova>,
    subject: TokenKey,
}

impl std::fmt::Debug for BearerAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BearerAuth").field("subject", &self.subject).finish_non_exhaustive()
    }
}

impl BearerAuth {
    /// The Integration's token.
    pub fn integration(byova: Arc<Byova>) -> Self {
        Self { byova, subject: TokenKey::Integration }
    }

    /// `org_id`'s Service App token.
    pub fn org(byova: Arc<Byova>, org_id: OrgId) -> Self {
        Self { byova, subject: TokenKey::Org(org_id) }
    }

    async fn token(&self) -> byova_core::Result<AccessToken> {
        match &self.subject {
            TokenKey::Integration => self.byova.integration().get_access_token().await,
            TokenKey::Org(org) => self.byova.service_app().get_access_token(org).await,
        }
    }

    async fn invalidate(&self, rejected: &AccessToken) -> byova_core::Result<Invalidation> {
        match &self.subject {
            TokenKey::Integration => self.byova.integration().invalidate(rejected).await,
            TokenKey::Org(org) => self.byova.service_app().invalidate(org, rejected).await,
        }
    }

    async fn rejected_again(&self, renewed: &AccessToken) -> byova_core::Result<Invalidation> {
        match &self.subject {
            TokenKey::Integration => self.byova.integration().rejected_again(renewed).await,
            TokenKey::Org(org) => self.byova.service_app().rejected_again(org, renewed).await,
        }
    }

    async fn authorized(&self, mut req: Request) -> reqwest_middleware::Result<(Request, AccessToken)> {
        let token = self.token().await.map_err(reqwest_middleware::Error::middleware)?;
        let mut value = HeaderValue::from_str(&format!("Bearer {}", token.expose_secret()))
            .map_err(reqwest_middleware::Error::middleware)?;
        value.set_sensitive(true);
        req.headers_mut().insert(AUTHORIZATION, value);
        Ok((req, token))
    }
}

#[byova_core::async_trait]
impl Middleware for BearerAuth {
    async fn handle(
        &self,
        req: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        // Tokens go to Webex's API origin only, never to another host a shared client calls.
        if !self.byova.integration().config().is_api_origin(req.url().as_str()) {
            return next.run(req, extensions).await;
        }
        let retry = req.try_clone();
        let (req, sent) = self.authorized(req).await?;
        let response = next.clone().run(req, extensions).await?;
        if response.status() != StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        match self.invalidate(&sent).await {
            Ok(Invalidation::Renew) => {}
            // A 401 a fresh token did not cure: the caller's, without another refresh.
            Ok(_) => return Ok(response),
            Err(e) => {
                tracing::warn!(error = %e, "Webex answered 401 but the token could not be invalidated");
                return Ok(response);
            }
        }
        let Some(retry) = retry else {
            tracing::debug!("401 on a request whose body cannot be cloned: invalidated, not retried");
            return Ok(response);
        };
        tracing::info!("Webex answered 401: invalidated the token; retrying once");
        let (retry, renewed) = self.authorized(retry).await?;
        let response = next.run(retry, extensions).await?;
        if response.status() == StatusCode::UNAUTHORIZED {
            // Rejected with a fresh token too: not about the token. 401s on it renew nothing
            // for the cool-down.
            let _ = self.rejected_again(&renewed).await;
        }
        Ok(response)
    }
}
