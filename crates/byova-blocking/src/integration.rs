//! [`IntegrationTokenManager`]: the provider's own Integration OAuth tokens.

use std::sync::Arc;

use byova_core::engine::IntegrationEngine;
use byova_core::{
    AccessToken, AuthorizeOptions, BlockingTokenStorage, ByovaConfig, Clock, CoarseClock,
    IntegrationCredentials, KeyStatus, OAuthTokens, RefreshToken, Result,
};

use crate::driver::Agent;
use crate::http::HttpClient;
use crate::listener::{RedirectListener, present_url};

/// Manages Integration OAuth tokens for the developer-initiated flow: authorization URL, the
/// full browser flow with a loopback redirect listener, code exchange, refresh, and a valid
/// token on demand. Cheap to clone; clones share one cache.
///
/// **Cancel safety.** Every method may be dropped at any ``: a refresh, fetch or code
/// exchange that has begun runs to its end (stored, lease released) on its own task, and the
/// next call gets its result. Dropping a call never loses a token or leaves a lease held.
///
/// ```no_run
/// # fn example() -> byova_blocking::Result<()> {
/// use std::sync::Arc;
/// use byova_blocking::*;
///
/// let (creds, _) = load_credentials_from_env()?;
/// let http = HttpClient::new(std::time::Duration::from_secs(30))?;
/// let integration = IntegrationTokenManager::new(creds, http, Arc::new(InMemoryTokenStorage::new()), None);
/// integration.authorize(AuthorizeOptions::default())?;
/// let bearer = integration.get_access_token()?;
/// # let _ = bearer;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct IntegrationTokenManager {
    pub(crate) agent: Arc<Agent>,
    engine: Arc<IntegrationEngine>,
}

impl IntegrationTokenManager {
    /// A manager for `credentials`, storing tokens in `storage`. `config: None` is production
    /// Webex.
    pub fn new(
        credentials: IntegrationCredentials,
        http: HttpClient,
        storage: Arc<dyn BlockingTokenStorage>,
        config: Option<ByovaConfig>,
    ) -> Self {
        Self::with_clock(credentials, http, storage, config, Arc::new(CoarseClock))
    }

    /// [`new`](Self::new) with an explicit clock (tests use a fake one).
    pub fn with_clock(
        credentials: IntegrationCredentials,
        http: HttpClient,
        storage: Arc<dyn BlockingTokenStorage>,
        config: Option<ByovaConfig>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self::from_parts(
            IntegrationEngine::new(credentials, config.unwrap_or_default()),
            storage,
            http,
            clock,
        )
    }

    pub(crate) fn from_parts(
        engine: Arc<IntegrationEngine>,
        storage: Arc<dyn BlockingTokenStorage>,
        http: HttpClient,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let agent = Agent { tokens: engine.tokens().clone(), storage, http, clock, integration: None };
        Self { agent: Arc::new(agent), engine }
    }

    /// The Integration's client credentials.
    pub fn credentials(&self) -> &IntegrationCredentials {
        self.engine.credentials()
    }

    /// The configuration.
    pub fn config(&self) -> &ByovaConfig {
        self.engine.config()
    }

    /// The token storage.
    pub fn storage(&self) -> &Arc<dyn BlockingTokenStorage> {
        &self.agent.storage
    }

    /// Builds the authorization URL (with `state` and PKCE S256) and returns `(url, state)`.
    /// The PKCE verifier is remembered for [`exchange_code`](Self::exchange_code).
    ///
    /// # Errors
    /// [`Error::InvalidInput`](byova_core::Error::InvalidInput) for an empty or malformed scope list.
    pub fn get_authorization_url(
        &self,
        scopes: Option<&[&str]>,
        state: Option<&str>,
    ) -> Result<(String, String)> {
        self.engine.authorization_url(scopes, state)
    }

    /// Exchanges an authorization code for tokens and stores them. Uses the PKCE verifier of
    /// the most recent [`get_authorization_url`](Self::get_authorization_url); see
    /// [`exchange_code_for_state`](Self::exchange_code_for_state) when several are open. A code
    /// exchange is never retried once Webex may have seen it (codes are single use).
    ///
    /// # Errors
    /// The token endpoint's error ([`Error::Validation`](byova_core::Error::Validation) for a
    /// bad or used code), or a storage error.
    pub fn exchange_code(&self, code: &str) -> Result<OAuthTokens> {
        self.agent.run(self.engine.exchange_code(code, None, self.agent.now()))
    }

    /// [`exchange_code`](Self::exchange_code) using the verifier issued with `state`.
    ///
    /// # Errors
    /// As [`exchange_code`](Self::exchange_code).
    pub fn exchange_code_for_state(&self, code: &str, state: &str) -> Result<OAuthTokens> {
        self.agent.run(self.engine.exchange_code(code, Some(state), self.agent.now()))
    }

    /// Refreshes the Integration's tokens now and stores them before returning. Without
    /// `refresh_token`, the stored one is used.
    ///
    /// # Errors
    /// [`Error::NotAuthorized`](byova_core::Error::NotAuthorized) when no refresh token is
    /// available; [`Error::ReauthorizationRequired`](byova_core::Error::ReauthorizationRequired)
    /// when Webex rejects it (or rejected it before: the mark is stored).
    pub fn refresh(&self, refresh_token: Option<&str>) -> Result<OAuthTokens> {
        self.agent.run(self.engine.refresh(refresh_token.map(RefreshToken::new), self.agent.now()))
    }

    /// Runs the whole flow: binds the loopback listener on the redirect URI, opens the
    /// authorization URL (state + PKCE S256), waits for the redirect, exchanges the code, and
    /// stores the tokens. Refuses to run on an async runtime's worker thread (see the crate
    /// docs).
    ///
    /// # Errors
    /// [`Error::OAuthRedirect`](byova_core::Error::OAuthRedirect) when access was denied,
    /// [`Error::OAuthRedirectTimeout`](byova_core::Error::OAuthRedirectTimeout),
    /// [`Error::Listen`](byova_core::Error::Listen) for a busy port, a configuration error for
    /// a non-loopback redirect URI or an async worker thread, or the exchange's error.
    pub fn authorize(&self, options: AuthorizeOptions) -> Result<OAuthTokens> {
        crate::listener::refuse_async_worker("authorize")?;
        let listener = RedirectListener::bind(&self.credentials().redirect_uri)?;
        let (request, credentials) = self.engine.authorization(&listener.redirect_uri(), &options)?;
        present_url(&request.url, options.open_browser, options.browser.clone());
        let code = listener.wait(request.state.clone(), options.timeout)?;
        self.agent.run(self.engine.exchange(credentials, code, request.pkce_verifier, self.agent.now()))
    }

    /// A valid Integration access token, refreshed when needed. A fresh token comes from the
    /// process-local cache without touching storage.
    ///
    /// # Errors
    /// [`Error::NotAuthorized`](byova_core::Error::NotAuthorized) before the Integration is
    /// authorized; refresh errors when the stored token cannot be used.
    pub fn get_access_token(&self) -> Result<AccessToken> {
        self.agent.integration_token()
    }

    /// The Integration's status, `None` when not authorized.
    ///
    /// # Errors
    /// A storage error.
    pub fn status(&self) -> Result<Option<KeyStatus>> {
        self.agent.run(self.engine.status())
    }
}
