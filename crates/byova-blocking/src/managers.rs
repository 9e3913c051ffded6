//! The flavour's types ([`Byova`], [`IntegrationTokenManager`], [`ServiceAppTokenManager`])
//! with their methods and documentation, written once in byova-core and expanded here with
//! this flavour's storage trait and neither `async` nor `.await`; and `authorize`, around this
//! flavour's loopback listener.

use byova_core::backend::BlockingCoordinatedTokenStorage;
use byova_core::{AuthorizeOptions, OAuthTokens, Result};

use crate::driver::{Agent, Drive};
use crate::http::HttpClient;
use crate::listener::{RedirectListener, present_url};

byova_core::__flavour_types!(blocking, byova_blocking, dyn BlockingCoordinatedTokenStorage, {}, {});

impl IntegrationTokenManager {
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
