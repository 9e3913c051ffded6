//! [`IntegrationTokenManager`]: the provider's own Integration OAuth tokens.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use byova_core::refresh::{RefreshClient, RefreshMode};
use byova_core::{
    AccessToken, AuthorizationCode, AuthorizationRequest, BlockingTokenStorage, ByovaConfig, Clock,
    CoarseClock, CsrfState, Expect, IntegrationCredentials, KeyStatus, OAuthTokens, PkceCodeVerifier,
    RefreshToken, Result, Timestamp, TokenCall, TokenKey, Versioned, code_exchange_request,
    parse_token_response,
};

use crate::driver::{Env, Keys, send_with_retry};
use crate::http::HttpClient;
use crate::listener::{BrowserOpener, RedirectListener, present_url};

/// Verifiers of authorization URLs handed out by `get_authorization_url`, awaiting their code.
const MAX_PENDING: usize = 32;

/// Manages Integration OAuth tokens for the developer-initiated flow: authorization URL, the
/// full browser flow with a loopback redirect listener, code exchange, refresh, and a valid
/// token on demand. Cheap to clone; clones share one cache.
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
    inner: Arc<Inner>,
}

struct Inner {
    credentials: IntegrationCredentials,
    http: HttpClient,
    storage: Arc<dyn BlockingTokenStorage>,
    config: ByovaConfig,
    clock: Arc<dyn Clock>,
    keys: Keys,
    pending: Mutex<Vec<(CsrfState, PkceCodeVerifier, Timestamp)>>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntegrationTokenManager")
            .field("credentials", &self.credentials)
            .finish_non_exhaustive()
    }
}

/// Options for [`IntegrationTokenManager::authorize`].
#[derive(Clone)]
#[non_exhaustive]
pub struct AuthorizeOptions {
    /// Scopes to request; `None` requests [`DEFAULT_INTEGRATION_SCOPES`](byova_core::DEFAULT_INTEGRATION_SCOPES).
    pub scopes: Option<Vec<String>>,
    /// Open the authorization URL in a browser; otherwise it is printed to stderr.
    pub open_browser: bool,
    /// How long to wait for the redirect.
    pub timeout: Duration,
    /// The `state` to use; a 128-bit random one by default.
    pub state: Option<String>,
    /// Opens the URL; defaults to the system browser. Tests inject one that plays the browser.
    pub browser: Option<BrowserOpener>,
}

impl Default for AuthorizeOptions {
    fn default() -> Self {
        Self {
            scopes: None,
            open_browser: true,
            timeout: Duration::from_secs(300),
            state: None,
            browser: None,
        }
    }
}

impl std::fmt::Debug for AuthorizeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthorizeOptions")
            .field("scopes", &self.scopes)
            .field("open_browser", &self.open_browser)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl AuthorizeOptions {
    /// Plays the browser with `opener` instead of launching one.
    pub fn with_browser(
        mut self,
        opener: impl Fn(&str) -> std::io::Result<()> + Send + Sync + 'static,
    ) -> Self {
        self.browser = Some(Arc::new(opener));
        self.open_browser = true;
        self
    }

    /// Waits at most `timeout` for the redirect.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Prints the URL instead of opening a browser.
    pub fn without_browser(mut self) -> Self {
        self.open_browser = false;
        self
    }
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
        let config = config.unwrap_or_default();
        let keys = Keys::new(&config);
        Self {
            inner: Arc::new(Inner {
                credentials,
                http,
                storage,
                config,
                clock,
                keys,
                pending: Mutex::default(),
            }),
        }
    }

    /// The Integration's client credentials.
    pub fn credentials(&self) -> &IntegrationCredentials {
        &self.inner.credentials
    }

    /// The configuration.
    pub fn config(&self) -> &ByovaConfig {
        &self.inner.config
    }

    /// The token storage.
    pub fn storage(&self) -> &Arc<dyn BlockingTokenStorage> {
        &self.inner.storage
    }

    pub(crate) fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.clock
    }

    fn env(&self) -> Env<'_> {
        Env {
            config: &self.inner.config,
            storage: self.inner.storage.as_ref(),
            http: &self.inner.http,
            clock: self.inner.clock.as_ref(),
            keys: &self.inner.keys,
            integration: None,
        }
    }

    fn client(&self) -> RefreshClient<'_> {
        RefreshClient::Integration(&self.inner.credentials)
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
        let request = AuthorizationRequest::new(
            &self.inner.config,
            &self.inner.credentials,
            scopes,
            state.map(CsrfState::new),
            true,
        )?;
        let state = request.state.expose_secret().to_owned();
        if let Some(verifier) = request.pkce_verifier {
            let mut pending = self.inner.pending.lock().unwrap_or_else(|e| e.into_inner());
            if pending.len() >= MAX_PENDING {
                pending.remove(0);
            }
            pending.push((request.state, verifier, self.inner.clock.now()));
        }
        Ok((request.url, state))
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
        let verifier = self.inner.pending.lock().unwrap_or_else(|e| e.into_inner()).pop().map(|(_, v, _)| v);
        self.exchange(&self.inner.credentials, &AuthorizationCode::new(code), verifier.as_ref())
    }

    /// [`exchange_code`](Self::exchange_code) using the verifier issued with `state`.
    ///
    /// # Errors
    /// As [`exchange_code`](Self::exchange_code).
    pub fn exchange_code_for_state(&self, code: &str, state: &str) -> Result<OAuthTokens> {
        let verifier = {
            let mut pending = self.inner.pending.lock().unwrap_or_else(|e| e.into_inner());
            let pos = pending.iter().position(|(s, _, _)| s.ct_eq_str(state));
            pos.map(|i| pending.remove(i).1)
        };
        self.exchange(&self.inner.credentials, &AuthorizationCode::new(code), verifier.as_ref())
    }

    fn exchange(
        &self,
        credentials: &IntegrationCredentials,
        code: &AuthorizationCode,
        verifier: Option<&PkceCodeVerifier>,
    ) -> Result<OAuthTokens> {
        let request = code_exchange_request(&self.inner.config, credentials, code, verifier);
        let sent_at = self.inner.clock.now();
        let tokens = send_with_retry(&self.inner.http, &self.inner.config, &request, |r| {
            parse_token_response(r, sent_at, &TokenCall::CodeExchange)
        })?;
        let version = self.inner.storage.store(&TokenKey::Integration, &tokens, Expect::Any)?;
        tracing::info!("Integration authorized; tokens stored");
        self.inner.keys.cache.put_new(
            &TokenKey::Integration,
            Versioned { value: tokens.clone(), version },
            self.inner.clock.now(),
        );
        Ok(tokens)
    }

    /// Refreshes the Integration's tokens now and stores them before returning. Without
    /// `refresh_token`, the stored one is used.
    ///
    /// # Errors
    /// [`Error::NotAuthorized`](byova_core::Error::NotAuthorized) when no refresh token is
    /// available; [`Error::ReauthorizationRequired`](byova_core::Error::ReauthorizationRequired)
    /// when Webex rejects it.
    pub fn refresh(&self, refresh_token: Option<&str>) -> Result<OAuthTokens> {
        let mode = RefreshMode::Force(refresh_token.map(RefreshToken::new));
        self.env().force(self.client(), &TokenKey::Integration, mode)
    }

    /// Runs the whole flow: binds the loopback listener on the redirect URI, opens the
    /// authorization URL (state + PKCE S256), waits for the redirect, exchanges the code, and
    /// stores the tokens.
    ///
    /// # Errors
    /// [`Error::OAuthRedirect`](byova_core::Error::OAuthRedirect) when access was denied,
    /// [`Error::OAuthRedirectTimeout`](byova_core::Error::OAuthRedirectTimeout), a
    /// configuration error for a non-loopback redirect URI or a busy port, or the exchange's
    /// error.
    pub fn authorize(&self, options: AuthorizeOptions) -> Result<OAuthTokens> {
        crate::listener::refuse_async_worker("authorize")?;
        let listener = RedirectListener::bind(&self.inner.credentials.redirect_uri)?;
        let credentials = self.inner.credentials.clone().with_redirect_uri(listener.redirect_uri());
        let scopes: Option<Vec<&str>> =
            options.scopes.as_ref().map(|s| s.iter().map(String::as_str).collect());
        let request = AuthorizationRequest::new(
            &self.inner.config,
            &credentials,
            scopes.as_deref(),
            options.state.as_deref().map(CsrfState::new),
            true,
        )?;
        present_url(&request.url, options.open_browser, options.browser.clone());
        let code = listener.wait(request.state.clone(), options.timeout)?;
        self.exchange(&credentials, &code, request.pkce_verifier.as_ref())
    }

    /// A valid Integration access token, refreshed when needed. A fresh token comes from the
    /// process-local cache without touching storage.
    ///
    /// # Errors
    /// [`Error::NotAuthorized`](byova_core::Error::NotAuthorized) before the Integration is
    /// authorized; refresh errors when the stored token cannot be used.
    pub fn get_access_token(&self) -> Result<AccessToken> {
        if let Some(token) = self.inner.keys.cache.fresh_integration(self.inner.clock.now()) {
            return Ok(token);
        }
        self.env().get_valid(self.client(), &TokenKey::Integration)
    }

    /// The Integration's status, `None` when not authorized.
    ///
    /// # Errors
    /// A storage error.
    pub fn status(&self) -> Result<Option<KeyStatus>> {
        self.env().status(&TokenKey::Integration)
    }
}
