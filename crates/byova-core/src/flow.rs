//! What both flavours' authorization flows and facades share that is not I/O: the option
//! structs, the PKCE verifiers waiting for their code, and settings from the environment.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::{ByovaConfig, env as config_env};
use crate::credentials::{IntegrationCredentials, ServiceAppCredentials, credentials_from_lookup};
use crate::error::Result;
use crate::oauth::AuthorizationRequest;
use crate::secret::{CsrfState, PkceCodeVerifier, WebhookSecret};

/// Opens a URL for the user (a browser). Tests inject one that plays the browser.
pub type BrowserOpener = Arc<dyn Fn(&str) -> std::io::Result<()> + Send + Sync>;

/// Options for `IntegrationTokenManager::authorize`.
#[derive(Clone)]
#[non_exhaustive]
pub struct AuthorizeOptions {
    /// Scopes to request; `None` requests [`DEFAULT_INTEGRATION_SCOPES`](crate::DEFAULT_INTEGRATION_SCOPES).
    pub scopes: Option<Vec<String>>,
    /// Open the authorization URL in a browser; otherwise it is printed to stderr.
    pub open_browser: bool,
    /// How long to wait for the redirect.
    pub timeout: Duration,
    /// The `state` to use; a 128-bit random one by default.
    pub state: Option<String>,
    /// Opens the URL; defaults to the system browser.
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

    /// Requests these scopes.
    pub fn with_scopes(mut self, scopes: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.scopes = Some(scopes.into_iter().map(Into::into).collect());
        self
    }
}

/// Options for `wait_for_redirect`.
#[derive(Clone)]
#[non_exhaustive]
pub struct RedirectOptions {
    /// How long to wait for the redirect.
    pub timeout: Duration,
    /// Whether to open `authorization_url` in a browser (otherwise it is printed).
    pub open_browser: bool,
    /// The URL to open once the listener is ready.
    pub authorization_url: Option<String>,
    /// The `state` the redirect must carry. Required: byova never accepts a redirect it cannot
    /// tie to its own request.
    pub expected_state: Option<String>,
    /// Opens the URL; defaults to the system browser.
    pub browser: Option<BrowserOpener>,
}

impl Default for RedirectOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(300),
            open_browser: true,
            authorization_url: None,
            expected_state: None,
            browser: None,
        }
    }
}

impl std::fmt::Debug for RedirectOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedirectOptions")
            .field("timeout", &self.timeout)
            .field("open_browser", &self.open_browser)
            .finish_non_exhaustive()
    }
}

/// The program (and leading arguments) that opens a URL in the user's browser on this OS; the
/// URL goes last. The flavours spawn it.
pub fn system_browser_command() -> (&'static str, &'static [&'static str]) {
    if cfg!(target_os = "macos") {
        ("open", &[])
    } else if cfg!(windows) {
        ("cmd", &["/C", "start", ""])
    } else {
        ("xdg-open", &[])
    }
}

/// What to print when the URL is not (or could not be) opened in a browser.
pub fn authorization_prompt(url: &str, browser_failed: bool) -> String {
    let lead =
        if browser_failed { "Could not open a browser. Open this URL" } else { "Open this URL in a browser" };
    format!("{lead} to authorize byova:\n\n  {url}\n")
}

/// How many authorization URLs may await their code at once; the oldest is dropped beyond.
const MAX_PENDING: usize = 32;

/// PKCE verifiers of authorization URLs handed out by `get_authorization_url`, waiting for
/// their code.
#[derive(Debug, Default)]
pub struct PendingAuthorizations(Mutex<Vec<(CsrfState, PkceCodeVerifier)>>);

impl PendingAuthorizations {
    /// Builds an authorization URL (state + PKCE S256), remembers its verifier, and returns
    /// `(url, state)`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`](crate::Error::InvalidInput) for a bad scope list.
    pub fn issue(
        &self,
        config: &ByovaConfig,
        credentials: &IntegrationCredentials,
        scopes: Option<&[&str]>,
        state: Option<&str>,
    ) -> Result<(String, String)> {
        let request =
            AuthorizationRequest::new(config, credentials, scopes, state.map(CsrfState::new), true)?;
        let state = request.state.expose_secret().to_owned();
        if let Some(verifier) = request.pkce_verifier {
            let mut pending = self.0.lock().unwrap_or_else(|e| e.into_inner());
            if pending.len() >= MAX_PENDING {
                pending.remove(0);
            }
            pending.push((request.state, verifier));
        }
        Ok((request.url, state))
    }

    /// The verifier of the most recent URL.
    pub fn take_latest(&self) -> Option<PkceCodeVerifier> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).pop().map(|(_, v)| v)
    }

    /// The verifier of the URL issued with `state`.
    pub fn take_for_state(&self, state: &str) -> Option<PkceCodeVerifier> {
        let mut pending = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let pos = pending.iter().position(|(s, _)| s.ct_eq_str(state));
        pos.map(|i| pending.remove(i).1)
    }
}

/// Everything `Byova::from_env` reads.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct EnvSettings {
    /// From `WEBEX_INTEGRATION_*`.
    pub integration: IntegrationCredentials,
    /// From `WEBEX_SA_*`.
    pub service_app: ServiceAppCredentials,
    /// From `BYOVA_BASE_URL`.
    pub config: ByovaConfig,
    /// From `BYOVA_WEBHOOK_SECRET`.
    pub webhook_secret: Option<WebhookSecret>,
}

impl EnvSettings {
    /// Reads the process environment.
    ///
    /// # Errors
    /// [`Error::Configuration`](crate::Error::Configuration) naming a missing or invalid variable.
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads variables through `lookup`.
    ///
    /// # Errors
    /// As [`from_env`](Self::from_env).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let (integration, service_app) = credentials_from_lookup(&lookup)?;
        let config = ByovaConfig::from_lookup(&lookup)?;
        let webhook_secret =
            lookup(config_env::WEBHOOK_SECRET).filter(|s| !s.is_empty()).map(WebhookSecret::new);
        Ok(Self { integration, service_app, config, webhook_secret })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_verifiers_are_taken_by_state_or_latest() {
        let config = ByovaConfig::default();
        let creds = IntegrationCredentials::new("C", "s");
        let pending = PendingAuthorizations::default();
        let (url_a, a) = pending.issue(&config, &creds, None, Some("A")).unwrap();
        let (_, b) = pending.issue(&config, &creds, None, None).unwrap();
        assert!(url_a.contains("state=A") && url_a.contains("code_challenge="));
        let va = pending.take_for_state(&a).unwrap();
        assert!(url_a.contains(&va.s256_challenge()));
        assert!(pending.take_for_state(&a).is_none(), "single use");
        assert!(pending.take_latest().is_some());
        assert!(pending.take_for_state(&b).is_none());
        for i in 0..40 {
            pending.issue(&config, &creds, None, Some(&format!("s{i}"))).unwrap();
        }
        assert!(pending.take_for_state("s0").is_none(), "the oldest are dropped beyond 32");
        assert!(pending.take_for_state("s39").is_some());
    }

    #[test]
    fn env_settings_read_every_variable() {
        let vars = [
            ("WEBEX_INTEGRATION_CLIENT_ID", "C1"),
            ("WEBEX_INTEGRATION_CLIENT_SECRET", "s1"),
            ("WEBEX_SA_CLIENT_ID", "C2"),
            ("WEBEX_SA_CLIENT_SECRET", "s2"),
            ("BYOVA_BASE_URL", "http://127.0.0.1:1/v1"),
            ("BYOVA_WEBHOOK_SECRET", "hook"),
        ];
        let lookup = |n: &str| vars.iter().find(|(k, _)| *k == n).map(|(_, v)| (*v).to_owned());
        let s = EnvSettings::from_lookup(lookup).unwrap();
        assert_eq!(s.config.token_url, "http://127.0.0.1:1/v1/access_token");
        assert!(s.webhook_secret.unwrap().ct_eq_str("hook"));
        assert_eq!(s.service_app.client_id, "C2");
    }
}
