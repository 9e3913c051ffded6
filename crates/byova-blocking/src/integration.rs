//! [`IntegrationTokenManager`]: the provider's own Integration OAuth tokens.

use std::sync::Arc;

use byova_core::engine::IntegrationEngine;
use byova_core::{AuthorizeOptions, BlockingTokenStorage, OAuthTokens, Result};

use crate::driver::{Agent, Drive};
use crate::http::HttpClient;
use crate::listener::{RedirectListener, present_url};

/// Manages Integration OAuth tokens for the developer-initiated flow: authorization URL, the
/// full browser flow with a loopback redirect listener, code exchange, refresh, and a valid
/// token on demand. Cheap to clone; clones share one cache.
///
/// **Threads.** Concurrent callers share one refresh per key and all get its outcome; a
/// thread that panics mid-refresh leaves nothing held (waiters get an error, the next run
/// releases its lease).
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use byova_blocking::*;
/// # let fake = byova_testkit::FakeWebex::start();
/// # let (credentials, config) = (fake.integration_credentials(), fake.config());
/// let http = HttpClient::new(std::time::Duration::from_secs(30))?;
/// let storage = Arc::new(InMemoryTokenStorage::new());
/// let integration = IntegrationTokenManager::new(credentials, http, storage, config);
///
/// // `authorize` runs the whole browser flow on a loopback listener; by hand it is:
/// let authorization = integration.get_authorization_url(None, None)?; // state and PKCE inside
/// # let redirected = fake.browser_visit(&authorization.url)?; // the user's browser
/// # let code = byova_testkit::wire::query_param(&redirected, "code").unwrap();
/// let tokens = integration.exchange_code_for_state(&code, &authorization.state)?;
/// assert!(tokens.refresh_token.is_some());
///
/// let bearer = integration.get_access_token()?; // cached; refreshed when due
/// # let _ = bearer;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct IntegrationTokenManager {
    pub(crate) agent: Arc<Agent>,
    engine: Arc<IntegrationEngine>,
}

impl IntegrationTokenManager {
    byova_core::__integration_manager_methods!(blocking, dyn BlockingTokenStorage, {}, {});

    /// The whole browser flow: binds the loopback listener on the redirect URI, opens the
    /// authorization URL, waits for the redirect, exchanges the code and stores the tokens.
    /// Errors: [`OAuthRedirect`](byova_core::Error::OAuthRedirect) (denied),
    /// [`OAuthRedirectTimeout`](byova_core::Error::OAuthRedirectTimeout),
    /// [`Listen`](byova_core::Error::Listen) (busy port), a non-loopback URI, an async worker
    /// thread (see the crate docs), the exchange's.
    pub fn authorize(&self, options: AuthorizeOptions) -> Result<OAuthTokens> {
        crate::listener::refuse_async_worker("authorize")?;
        let listener = RedirectListener::bind(&self.credentials().redirect_uri)?;
        let (request, credentials) = self.engine.authorization(&listener.redirect_uri(), &options)?;
        present_url(&request.url, options.open_browser, options.browser.clone());
        let code = listener.wait(request.state.clone(), options.timeout)?;
        self.agent.run(self.engine.exchange(credentials, code, request.pkce_verifier, self.agent.now()))
    }
}
