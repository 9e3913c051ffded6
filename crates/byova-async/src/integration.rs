//! [`IntegrationTokenManager`]: the provider's own Integration OAuth tokens.

use std::sync::Arc;

use byova_core::refresh::{RefreshClient, RefreshMode};
use byova_core::{
    AccessToken, AuthorizationCode, AuthorizationRequest, AuthorizeOptions, ByovaConfig, Clock, CoarseClock,
    CsrfState, Expect, IntegrationCredentials, KeyStatus, OAuthTokens, PendingAuthorizations,
    PkceCodeVerifier, RefreshToken, Result, TokenCall, TokenKey, TokenStorage, Versioned,
    code_exchange_request, parse_token_response,
};

use crate::driver::{Env, Keys, send_with_retry};
use crate::http::HttpClient;
use crate::listener::{RedirectListener, present_url};

/// Manages Integration OAuth tokens for the developer-initiated flow: authorization URL, the
/// full browser flow with a loopback redirect listener, code exchange, refresh, and a valid
/// token on demand. Cheap to clone; clones share one cache.
///
/// ```no_run
/// # async fn example() -> byova_async::Result<()> {
/// use std::sync::Arc;
/// use byova_async::*;
///
/// let (creds, _) = load_credentials_from_env()?;
/// let http = HttpClient::new(std::time::Duration::from_secs(30))?;
/// let integration = IntegrationTokenManager::new(creds, http, Arc::new(InMemoryTokenStorage::new()), None);
/// integration.authorize(AuthorizeOptions::default()).await?;
/// let bearer = integration.get_access_token().await?;
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
    storage: Arc<dyn TokenStorage>,
    config: ByovaConfig,
    clock: Arc<dyn Clock>,
    keys: Keys,
    pending: PendingAuthorizations,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntegrationTokenManager")
            .field("credentials", &self.credentials)
            .finish_non_exhaustive()
    }
}

impl IntegrationTokenManager {
    /// A manager for `credentials`, storing tokens in `storage`. `config: None` is production
    /// Webex.
    pub fn new(
        credentials: IntegrationCredentials,
        http: HttpClient,
        storage: Arc<dyn TokenStorage>,
        config: Option<ByovaConfig>,
    ) -> Self {
        Self::with_clock(credentials, http, storage, config, Arc::new(CoarseClock))
    }

    /// [`new`](Self::new) with an explicit clock (tests use a fake one).
    pub fn with_clock(
        credentials: IntegrationCredentials,
        http: HttpClient,
        storage: Arc<dyn TokenStorage>,
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
                pending: PendingAuthorizations::default(),
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
    pub fn storage(&self) -> &Arc<dyn TokenStorage> {
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
        self.inner.pending.issue(&self.inner.config, &self.inner.credentials, scopes, state)
    }

    /// Exchanges an authorization code for tokens and stores them. Uses the PKCE verifier of
    /// the most recent [`get_authorization_url`](Self::get_authorization_url); see
    /// [`exchange_code_for_state`](Self::exchange_code_for_state) when several are open. A code
    /// exchange is never retried once Webex may have seen it (codes are single use).
    ///
    /// # Errors
    /// The token endpoint's error ([`Error::Validation`](byova_core::Error::Validation) for a
    /// bad or used code), or a storage error.
    pub async fn exchange_code(&self, code: &str) -> Result<OAuthTokens> {
        let verifier = self.inner.pending.take_latest();
        self.exchange(&self.inner.credentials, &AuthorizationCode::new(code), verifier.as_ref()).await
    }

    /// [`exchange_code`](Self::exchange_code) using the verifier issued with `state`.
    ///
    /// # Errors
    /// As [`exchange_code`](Self::exchange_code).
    pub async fn exchange_code_for_state(&self, code: &str, state: &str) -> Result<OAuthTokens> {
        let verifier = self.inner.pending.take_for_state(state);
        self.exchange(&self.inner.credentials, &AuthorizationCode::new(code), verifier.as_ref()).await
    }

    async fn exchange(
        &self,
        credentials: &IntegrationCredentials,
        code: &AuthorizationCode,
        verifier: Option<&PkceCodeVerifier>,
    ) -> Result<OAuthTokens> {
        let request = code_exchange_request(&self.inner.config, credentials, code, verifier);
        let sent_at = self.inner.clock.now();
        let tokens = send_with_retry(&self.inner.http, &self.inner.config, &request, |r| {
            parse_token_response(r, sent_at, &TokenCall::CodeExchange)
        })
        .await?;
        let version = self.inner.storage.store(&TokenKey::Integration, &tokens, Expect::Any).await?;
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
    pub async fn refresh(&self, refresh_token: Option<&str>) -> Result<OAuthTokens> {
        let mode = RefreshMode::Force(refresh_token.map(RefreshToken::new));
        self.env().force(self.client(), &TokenKey::Integration, mode).await
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
    pub async fn authorize(&self, options: AuthorizeOptions) -> Result<OAuthTokens> {
        let listener = RedirectListener::bind(&self.inner.credentials.redirect_uri).await?;
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
        present_url(&request.url, options.open_browser, options.browser.clone()).await;
        let code = listener.wait(request.state.clone(), options.timeout).await?;
        self.exchange(&credentials, &code, request.pkce_verifier.as_ref()).await
    }

    /// A valid Integration access token, refreshed when needed. A fresh token comes from the
    /// process-local cache without touching storage.
    ///
    /// # Errors
    /// [`Error::NotAuthorized`](byova_core::Error::NotAuthorized) before the Integration is
    /// authorized; refresh errors when the stored token cannot be used.
    pub async fn get_access_token(&self) -> Result<AccessToken> {
        if let Some(token) = self.inner.keys.cache.fresh_integration(self.inner.clock.now()) {
            return Ok(token);
        }
        self.env().get_valid(self.client(), &TokenKey::Integration).await
    }

    /// The Integration's status, `None` when not authorized.
    ///
    /// # Errors
    /// A storage error.
    pub async fn status(&self) -> Result<Option<KeyStatus>> {
        self.env().status(&TokenKey::Integration).await
    }
}
