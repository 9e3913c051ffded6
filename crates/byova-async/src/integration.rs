//! [`IntegrationTokenManager`]: the provider's own Integration OAuth tokens.

use std::sync::Arc;

use byova_core::engine::IntegrationEngine;
use byova_core::{AuthorizeOptions, OAuthTokens, Result, TokenStorage};

use crate::driver::{Agent, Drive};
use crate::http::HttpClient;
use crate::listener::{RedirectListener, present_url};

/// Manages Integration OAuth tokens for the developer-initiated flow: authorization URL, the
/// full browser flow with a loopback redirect listener, code exchange, refresh, and a valid
/// token on demand. Cheap to clone; clones share one cache.
///
/// **Cancel safety.** Every method may be dropped at any `.await`: a refresh, fetch or code
/// exchange that has begun runs to its end (stored, lease released) on its own task, and the
/// next call gets its result. Dropping a call never loses a token or leaves a lease held.
///
/// ```
/// # #[tokio::main(flavor = "multi_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use byova_async::*;
/// # let fake = byova_testkit::FakeWebex::start();
/// # let (credentials, config) = (fake.integration_credentials(), fake.config());
/// let http = HttpClient::new(std::time::Duration::from_secs(30))?;
/// let storage = Arc::new(InMemoryTokenStorage::new());
/// let integration = IntegrationTokenManager::new(credentials, http, storage, config);
///
/// // `authorize` runs the whole browser flow on a loopback listener; by hand it is:
/// let authorization = integration.get_authorization_url(None, None)?; // state and PKCE inside
/// # let redirected = fake.browser_visit_async(&authorization.url).await?; // the user's browser
/// # let code = byova_testkit::wire::query_param(&redirected, "code").unwrap();
/// let tokens = integration.exchange_code_for_state(&code, &authorization.state).await?;
/// assert!(tokens.refresh_token.is_some());
///
/// let bearer = integration.get_access_token().await?; // cached; refreshed when due
/// # let _ = bearer;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct IntegrationTokenManager {
    pub(crate) agent: Arc<Agent>,
    engine: Arc<IntegrationEngine>,
}

impl IntegrationTokenManager {
    byova_core::__integration_manager_methods!(async, dyn TokenStorage, {async}, {.await});

    /// The whole browser flow: binds the loopback listener on the redirect URI, opens the
    /// authorization URL, waits for the redirect, exchanges the code and stores the tokens.
    /// Errors: [`OAuthRedirect`](byova_core::Error::OAuthRedirect) (denied),
    /// [`OAuthRedirectTimeout`](byova_core::Error::OAuthRedirectTimeout),
    /// [`Listen`](byova_core::Error::Listen) (busy port), a non-loopback URI, the exchange's.
    /// Cancel safety: dropped while waiting, the listener closes; after, the exchange completes.
    pub async fn authorize(&self, options: AuthorizeOptions) -> Result<OAuthTokens> {
        let listener = RedirectListener::bind(&self.credentials().redirect_uri).await?;
        let (request, credentials) = self.engine.authorization(&listener.redirect_uri(), &options)?;
        present_url(&request.url, options.open_browser, options.browser.clone());
        let code = listener.wait(request.state.clone(), options.timeout).await?;
        self.agent.run(self.engine.exchange(credentials, code, request.pkce_verifier, self.agent.now())).await
    }
}
