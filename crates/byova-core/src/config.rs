//! SDK configuration: endpoints, timeouts and the refresh and retry policies.

use std::time::Duration;

use crate::budget::TokenBudget;
use crate::error::{Error, Result};
use crate::policy::{CoordinationPolicy, RefreshPolicy, RetryPolicy};

/// The production Webex API base URL.
pub const DEFAULT_BASE_URL: &str = "https://webexapis.com/v1";

/// The project's environment variables (beyond the Python SDK's `WEBEX_*` credentials).
pub(crate) mod env {
    /// API base URL; the authorize and token URLs derive from it.
    pub const BASE_URL: &str = "BYOVA_BASE_URL";
    /// Storage URL: `memory:`, `file:///dir`, `sqlite:///path.db`, `postgres://…`, `mysql://…`,
    /// `redis://…`.
    pub const STORAGE: &str = "BYOVA_STORAGE";
    /// The secret `serviceApp` webhooks are registered with; deliveries must be signed with it.
    pub const WEBHOOK_SECRET: &str = "BYOVA_WEBHOOK_SECRET";
    /// Keys that seal tokens at rest: a base64 32-byte key, then optionally the previous one
    /// (comma-separated) during a rotation.
    pub const STORAGE_KEY: &str = "BYOVA_STORAGE_KEY";
    /// Token-endpoint calls a minute that every process sharing the store may make together
    /// (default 240; `0`: no budget).
    pub const MAX_TOKEN_CALLS_PER_MINUTE: &str = "BYOVA_MAX_TOKEN_CALLS_PER_MINUTE";
    /// Seconds one storage call may take (default 10).
    pub const STORAGE_TIMEOUT: &str = "BYOVA_STORAGE_TIMEOUT";
    /// Seconds during which 401s on a token renew nothing once a retry with it was refused
    /// too (default 600; `0` turns the cool-down off): see
    /// [`RefreshPolicy::rejection_cooldown`](crate::RefreshPolicy::rejection_cooldown).
    pub const REJECTION_COOLDOWN: &str = "BYOVA_REJECTION_COOLDOWN";
    /// `1` or `true`: refuse stored records whose tokens are in clear (needs
    /// [`STORAGE_KEY`]), so whoever can write the store cannot plant tokens.
    pub const STORAGE_REQUIRE_SEALED: &str = "BYOVA_STORAGE_REQUIRE_SEALED";
    /// `1` or `true`: allow an `http://` base URL on a host other than loopback (client
    /// secrets and tokens then cross the network in clear text).
    pub const ALLOW_INSECURE_HTTP: &str = "BYOVA_ALLOW_INSECURE_HTTP";
}

/// SDK configuration (the Python SDK's `BYOVAConfig`). `Default` is production Webex.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ByovaConfig {
    /// API base URL, without a trailing slash (`https://webexapis.com/v1`).
    pub base_url: String,
    /// The browser authorization endpoint.
    pub authorize_url: String,
    /// The token endpoint.
    pub token_url: String,
    /// The Webex region used in derived ids (`us`).
    pub region: String,
    /// Timeout for one HTTP request.
    pub timeout: Duration,
    /// The longest one storage call may take before it fails with a retryable
    /// [`StorageErrorKind::Unavailable`](crate::StorageErrorKind::Unavailable) (the async
    /// flavour enforces it on every call; blocking stores bound their own waits). 10 s.
    pub storage_timeout: Duration,
    /// When tokens count as expired and when they are refreshed ahead of time.
    pub refresh: RefreshPolicy,
    /// How failed requests are retried.
    pub retry: RetryPolicy,
    /// Leases, polling and cache re-validation across callers and processes.
    pub coordination: CoordinationPolicy,
    /// How many token-endpoint calls every process sharing the store may make together
    /// (240 a minute by default; `None`: no budget, only Webex's 429s slow calls down).
    pub token_budget: Option<TokenBudget>,
    /// How many `/v1/dataSources` calls every process sharing the store may make together
    /// (240 a minute by default, stored apart from the token budget; `None`: no budget).
    pub data_source_budget: Option<TokenBudget>,
    /// The data source removed from Webex when a `deauthorized` delivery removes an org (with
    /// the org's last access token; best effort: Webex may refuse it once the org withdrew the
    /// authorization, and then the data source lapses on its own). `None`: left registered.
    pub remove_data_source_on_deauthorize: Option<crate::datasource::DataSourceSpec>,
}

impl Default for ByovaConfig {
    fn default() -> Self {
        Self::derived(DEFAULT_BASE_URL.to_owned())
    }
}

impl ByovaConfig {
    /// A configuration for another API base (a fake server, FedRAMP), deriving
    /// `{base}/authorize` and `{base}/access_token`.
    ///
    /// ```
    /// let config = byova_core::ByovaConfig::with_base_url("http://127.0.0.1:8080/v1/")?;
    /// assert_eq!(config.token_url, "http://127.0.0.1:8080/v1/access_token");
    /// # Ok::<(), byova_core::Error>(())
    /// ```
    ///
    /// `http://` is accepted for loopback hosts only (a local fake or proxy); see
    /// [`with_insecure_base_url`](Self::with_insecure_base_url).
    ///
    /// # Errors
    /// [`Error::Configuration`] when the URL is not `https://` with a host, or `http://` with a
    /// loopback host.
    pub fn with_base_url(base_url: &str) -> Result<Self> {
        Self::checked(base_url, false)
    }

    /// [`with_base_url`](Self::with_base_url) that also accepts `http://` to any host: client
    /// secrets, codes and tokens then cross the network in clear text. For a test network
    /// only.
    ///
    /// # Errors
    /// [`Error::Configuration`] when the URL is not `http://` or `https://` with a host.
    pub fn with_insecure_base_url(base_url: &str) -> Result<Self> {
        Self::checked(base_url, true)
    }

    fn checked(base_url: &str, allow_insecure_http: bool) -> Result<Self> {
        let trimmed = base_url.trim().trim_end_matches('/');
        let (rest, plain) = match (trimmed.strip_prefix("https://"), trimmed.strip_prefix("http://")) {
            (Some(rest), _) => (rest, false),
            (None, Some(rest)) => (rest, true),
            (None, None) => {
                return Err(Error::Configuration(format!(
                    "base URL {trimmed:?} must start with https:// or http://"
                )));
            }
        };
        let authority = rest.split('/').next().unwrap_or_default();
        if rest.is_empty()
            || rest.starts_with('/')
            || trimmed.contains(['?', '#', ' '])
            || authority.contains('@')
        {
            return Err(Error::Configuration(format!(
                "base URL {trimmed:?} needs a host, and no user, query string or fragment"
            )));
        }
        if plain && !allow_insecure_http && !is_loopback_authority(rest.split('/').next().unwrap_or_default())
        {
            return Err(Error::Configuration(format!(
                "base URL {trimmed:?} is plain http:// to a host that is not loopback: secrets and tokens \
                 would cross the network in clear text (use https://, or allow it explicitly with \
                 {} / --allow-insecure-http)",
                env::ALLOW_INSECURE_HTTP
            )));
        }
        Ok(Self::derived(trimmed.to_owned()))
    }

    fn derived(base_url: String) -> Self {
        Self {
            authorize_url: format!("{base_url}/authorize"),
            token_url: format!("{base_url}/access_token"),
            base_url,
            region: "us".to_owned(),
            timeout: Duration::from_secs(30),
            storage_timeout: Duration::from_secs(10),
            refresh: RefreshPolicy::default(),
            retry: RetryPolicy::default(),
            coordination: CoordinationPolicy::default(),
            token_budget: Some(TokenBudget::default()),
            data_source_budget: Some(TokenBudget::default()),
            remove_data_source_on_deauthorize: None,
        }
    }

    /// Builds the configuration from `BYOVA_BASE_URL` via `lookup` (production when unset).
    ///
    /// # Errors
    /// [`Error::Configuration`] when the variable holds an unusable URL.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let insecure = lookup(env::ALLOW_INSECURE_HTTP)
            .is_some_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes"));
        let mut config = match lookup(env::BASE_URL).filter(|v| !v.trim().is_empty()) {
            Some(url) => Self::checked(&url, insecure)
                .map_err(|e| Error::Configuration(format!("{}: {e}", env::BASE_URL)))?,
            None => Self::default(),
        };
        if let Some(secs) = lookup(env::STORAGE_TIMEOUT).filter(|v| !v.trim().is_empty()) {
            let secs: f64 = secs
                .trim()
                .parse()
                .ok()
                .filter(|s: &f64| s.is_finite() && *s > 0.0 && *s <= 3600.0)
                .ok_or_else(|| {
                    Error::Configuration(format!(
                        "{}={secs:?} is not a number of seconds (0-3600)",
                        env::STORAGE_TIMEOUT
                    ))
                })?;
            config.storage_timeout = Duration::from_secs_f64(secs);
        }
        if let Some(secs) = lookup(env::REJECTION_COOLDOWN).filter(|v| !v.trim().is_empty()) {
            let secs: u64 = secs.trim().parse().map_err(|_| {
                Error::Configuration(format!(
                    "{}={secs:?} is not a whole number of seconds (0: no cool-down)",
                    env::REJECTION_COOLDOWN
                ))
            })?;
            config.refresh.rejection_cooldown = Duration::from_secs(secs);
        }
        if let Some(calls) = lookup(env::MAX_TOKEN_CALLS_PER_MINUTE).filter(|v| !v.trim().is_empty()) {
            let calls: u32 = calls.trim().parse().map_err(|_| {
                Error::Configuration(format!(
                    "{}={calls:?} is not a whole number of calls a minute (0: no budget)",
                    env::MAX_TOKEN_CALLS_PER_MINUTE
                ))
            })?;
            config.token_budget = (calls > 0).then(|| TokenBudget::per_minute(calls));
        }
        Ok(config)
    }

    /// Whether `url` is on the API's origin (the scheme, host and port of `base_url`): where
    /// bearer tokens may be sent, and nowhere else.
    ///
    /// ```
    /// let config = byova_core::ByovaConfig::default();
    /// assert!(config.is_api_origin("https://webexapis.com/v1/people/me"));
    /// assert!(config.is_api_origin("https://WEBEXAPIS.com:443/v1/rooms?max=1"));
    /// assert!(!config.is_api_origin("https://webexapis.com.example.net/v1"));
    /// assert!(!config.is_api_origin("http://webexapis.com/v1"));
    /// ```
    pub fn is_api_origin(&self, url: &str) -> bool {
        fn origin(url: &str) -> Option<(String, String)> {
            let (scheme, rest) = url.split_once("://")?;
            let authority = rest.split(['/', '?', '#']).next()?.rsplit('@').next()?;
            let scheme = scheme.to_ascii_lowercase();
            let mut authority = authority.to_ascii_lowercase();
            let default_port = match scheme.as_str() {
                "https" => ":443",
                "http" => ":80",
                _ => "",
            };
            if !default_port.is_empty() && authority.ends_with(default_port) {
                authority.truncate(authority.len() - default_port.len());
            }
            Some((scheme, authority))
        }
        origin(&self.base_url).is_some_and(|api| origin(url) == Some(api))
    }

    /// `{base_url}/{path}`.
    pub fn api_url(&self, path: &str) -> String {
        format!("{}/{}", self.base_url, path.trim_start_matches('/'))
    }
}

/// Whether `host[:port]` names this machine: `localhost`, `127.0.0.0/8` or `[::1]`.
pub(crate) fn is_loopback_authority(authority: &str) -> bool {
    if authority.contains('@') {
        // `localhost:1@elsewhere.example`: the host is what follows the `@`; such user info
        // has no business in these URLs.
        return false;
    }
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_production_webex() {
        let c = ByovaConfig::default();
        assert_eq!(c.base_url, "https://webexapis.com/v1");
        assert_eq!(c.authorize_url, "https://webexapis.com/v1/authorize");
        assert_eq!(c.token_url, "https://webexapis.com/v1/access_token");
        assert_eq!(c.region, "us");
    }

    #[test]
    fn bad_base_urls_are_typed_errors() {
        for bad in ["", "ftp://x", "https://", "http:///v1", "webexapis.com", "https://x/v1?a=b"] {
            assert!(matches!(ByovaConfig::with_base_url(bad), Err(Error::Configuration(_))), "{bad}");
        }
    }

    #[test]
    fn lookup_names_the_variable_on_error() {
        let err = ByovaConfig::from_lookup(|_| Some("nope".into())).unwrap_err();
        assert!(err.to_string().contains("BYOVA_BASE_URL"));
        let c = ByovaConfig::from_lookup(|_| None).unwrap();
        assert_eq!(c.base_url, DEFAULT_BASE_URL);
    }

    #[test]
    fn plain_http_only_for_loopback_unless_allowed() {
        for ok in
            ["http://127.0.0.1:8080/v1", "http://localhost/v1", "http://[::1]:9/v1", "http://127.9.9.9/v1"]
        {
            assert!(ByovaConfig::with_base_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://webexapis.com/v1",
            "http://10.0.0.1/v1",
            "http://localhost.evil.test/v1",
            "http://[::2]/v1",
        ] {
            let e = ByovaConfig::with_base_url(bad).unwrap_err().to_string();
            assert!(e.contains("clear text") && e.contains("--allow-insecure-http"), "{bad}: {e}");
            assert!(ByovaConfig::with_insecure_base_url(bad).is_ok(), "{bad}");
        }
        let lookup = |allow: Option<&'static str>| {
            move |name: &str| match name {
                env::BASE_URL => Some("http://10.1.2.3/v1".to_owned()),
                env::ALLOW_INSECURE_HTTP => allow.map(str::to_owned),
                _ => None,
            }
        };
        assert!(ByovaConfig::from_lookup(lookup(None)).is_err());
        assert!(ByovaConfig::from_lookup(lookup(Some("0"))).is_err());
        assert_eq!(ByovaConfig::from_lookup(lookup(Some("1"))).unwrap().base_url, "http://10.1.2.3/v1");
    }
}
