//! [`IntegrationTokenManager`]: the provider's own Integration OAuth tokens.

use std::sync::Arc;

use byova_core::engine::IntegrationEngine;
use byova_core::{
    AccessToken, AuthorizationUrl, AuthorizeOptions, ByovaConfig, Clock, IntegrationCredentials,
    Invalidation, KeyStatus, OAuthTokens, RefreshToken, Result, TokenKey, TokenStorage, engine::CoarseClock,
};

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
/// ```no_run
/// # async fn example() -> byova_async::Result<()> {
/// use std::sync::Arc;
/// use byova_async::*;
///
/// let (creds, _) = load_credentials_from_env()?;
/// let http = HttpClient::new(std::time::Duration::from_secs(30))?;
/// let integration = IntegrationTokenManager::new(creds, http, Arc::new(InMemoryTokenStorage::new()), ByovaConfig::default());
/// integration.authorize(AuthorizeOptions::default()).await?;
/// let bearer = integration.get_access_token().await?;
/// # let _ = bearer;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct IntegrationTokenManager {
    pub(crate) agent: Arc<Agent>,
    engine: Arc<IntegrationEngine>,
}

impl IntegrationTokenManager {
    /// A manager for `credentials`, storing tokens in `storage`, with `config`
    /// ([`ByovaConfig::default`] is production Webex).
    pub fn new(
        credentials: IntegrationCredentials,
        http: HttpClient,
        storage: Arc<dyn TokenStorage>,
        config: ByovaConfig,
    ) -> Self {
        Self::with_clock(credentials, http, storage, config, Arc::new(CoarseClock))
    }

    /// [`new`](Self::new) with an explicit clock (tests use a fake one).
    pub fn with_clock(
        credentials: IntegrationCredentials,
        http: HttpClient,
        storage: Arc<dyn TokenStorage>,
        config: ByovaConfig,
        clock: Arc<dyn Clock>,
    ) -> Self {
        // Never hand out a value sealed at rest as a token: without keys the wrapper refuses
        // one (build with `Byova::builder(…).storage_keys(…)` to seal).
        let storage: Arc<dyn TokenStorage> = Arc::new(byova_core::SealedStorage::new(storage, None));
        Self::from_parts(IntegrationEngine::new(credentials, config), storage, http, clock)
    }

    pub(crate) fn from_parts(
        engine: Arc<IntegrationEngine>,
        storage: Arc<dyn TokenStorage>,
        http: HttpClient,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let agent = Agent { engine: engine.token_engine().clone(), storage, http, clock, integration: None };
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
    pub fn storage(&self) -> &Arc<dyn TokenStorage> {
        &self.agent.storage
    }

    /// The authorization URL (with `state` and PKCE S256) and its `state`. The verifier is kept
    /// for [`exchange_code`](Self::exchange_code) in this process and written to the storage
    /// for ten minutes, so [`exchange_code_for_state`](Self::exchange_code_for_state) works in
    /// any process sharing it (on the async flavour the write runs in the background and a
    /// failure is logged). Errors: an empty or malformed scope list.
    pub fn get_authorization_url(
        &self,
        scopes: Option<&[&str]>,
        state: Option<&str>,
    ) -> Result<AuthorizationUrl> {
        let (issued, save) = self.engine.authorization_url(scopes, state, self.agent.now())?;
        self.agent.start(save);
        Ok(issued)
    }

    /// [`get_authorization_url`](Self::get_authorization_url) that returns once the pending
    /// authorization is in the storage, so another process can exchange its code at once.
    /// Errors: a bad scope list, or the storage's.
    /// Cancel safety: dropped before it returns, the URL may or may not be usable elsewhere.
    pub async fn start_authorization(
        &self,
        scopes: Option<&[&str]>,
        state: Option<&str>,
    ) -> Result<AuthorizationUrl> {
        let (issued, save) = self.engine.authorization_url_stored(scopes, state, self.agent.now())?;
        self.agent.run(save).await?;
        Ok(issued)
    }

    /// Exchanges an authorization code (with the verifier of the latest authorization URL) and
    /// stores the tokens; never retried once Webex may have seen the code. Errors: the token
    /// endpoint's ([`Validation`](byova_core::Error::Validation) for a used code) or storage's.
    /// Cancel safety: once started, the exchange completes and stores the tokens on its own.
    pub async fn exchange_code(&self, code: &str) -> Result<OAuthTokens> {
        self.agent.run(self.engine.exchange_code(code, None, self.agent.now())).await
    }

    /// [`exchange_code`](Self::exchange_code) with the verifier issued with `state`, by this
    /// process or by any process sharing the storage (a web app's callback on another
    /// replica). Errors: [`UnknownAuthorizationState`](byova_core::Error::UnknownAuthorizationState)
    /// for a state not issued, already used, or older than ten minutes.
    /// Cancel safety: as [`exchange_code`](Self::exchange_code).
    pub async fn exchange_code_for_state(&self, code: &str, state: &str) -> Result<OAuthTokens> {
        self.agent.run(self.engine.exchange_code(code, Some(state), self.agent.now())).await
    }

    /// Refreshes now (with `refresh_token`, or the stored one) and stores the result before
    /// returning. Errors: [`NotAuthorized`](byova_core::Error::NotAuthorized) without a refresh
    /// token, [`ReauthorizationRequired`](byova_core::Error::ReauthorizationRequired) when
    /// Webex rejects it or rejected it before (the mark is stored).
    /// Cancel safety: once started, the refresh completes and stores the tokens on its own.
    pub async fn refresh(&self, refresh_token: Option<&str>) -> Result<OAuthTokens> {
        self.agent.run(self.engine.refresh(refresh_token.map(RefreshToken::new), self.agent.now())).await
    }

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

    /// A valid Integration access token: from the process-local cache when fresh (no storage
    /// trip), else refreshed. Errors: [`NotAuthorized`](byova_core::Error::NotAuthorized)
    /// before authorization; the refresh's when the stored token cannot be used.
    /// Cancel safety: a refresh it started completes on its own; the next call gets its result.
    pub async fn get_access_token(&self) -> Result<AccessToken> {
        let now = self.agent.now();
        if let Some(token) = self.agent.engine.fresh_integration(now) {
            return Ok(token);
        }
        self.agent.run(self.agent.engine.access_token(TokenKey::Integration, now)).await
    }

    /// The Integration's status, `None` when not authorized. Errors: storage's.
    /// Cancel safety: it only reads.
    pub async fn status(&self) -> Result<Option<KeyStatus>> {
        self.agent.run(self.engine.status()).await
    }

    /// Stops serving `rejected`, a token Webex answered 401 to (revoked early, or replaced by a
    /// re-authorization elsewhere): the next [`get_access_token`](Self::get_access_token)
    /// refreshes, unless a newer token than `rejected` is already stored, which it then
    /// serves. Any number of callers invalidating the same token cost one refresh, in this
    /// process and in every process sharing the store (they stop serving it once their cache
    /// revalidates, 30 s at most by default). Errors: storage's.
    /// Cancel safety: the record is marked in one versioned write, or not at all.
    ///
    /// A token that was itself obtained because Webex rejected the one before it, and is
    /// rejected again within [`RefreshPolicy::rejection_cooldown`](byova_core::RefreshPolicy::rejection_cooldown)
    /// (10 minutes, doubling with each repetition), is not renewed: the answer is
    /// [`Invalidation::NotAboutTheToken`](byova_core::Invalidation::NotAboutTheToken), and the
    /// 401 belongs to the caller (a missing scope, say). Webex caps the live tokens of a user;
    /// every refresh mints one.
    pub async fn invalidate(&self, rejected: &AccessToken) -> Result<Invalidation> {
        self.agent.run(self.engine.invalidate(rejected, self.agent.now())).await
    }

    /// Webex rejected `renewed` too: the token a request was retried with after a 401 and
    /// [`invalidate`](Self::invalidate). That 401 is not about the token (a missing scope, a
    /// resource the Integration may not see): for the cool-down
    /// ([`RefreshPolicy::rejection_cooldown`](byova_core::RefreshPolicy::rejection_cooldown),
    /// 10 minutes, doubling while it repeats) `invalidate` answers
    /// [`Invalidation::NotAboutTheToken`](byova_core::Invalidation::NotAboutTheToken) for it and
    /// renews nothing, here and in every process sharing the store. `BearerAuth` calls it for
    /// you. Errors: storage's.
    pub async fn rejected_again(&self, renewed: &AccessToken) -> Result<Invalidation> {
        self.agent.run(self.engine.rejected_again(renewed, self.agent.now())).await
    }
}
