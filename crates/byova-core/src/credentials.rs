//! Client credentials, the Python SDK's constants, and loading both from the environment.

use crate::error::{Error, Result};
use crate::secret::ClientSecret;

/// Default OAuth scopes required for BYOVA Integration authorization.
pub const DEFAULT_INTEGRATION_SCOPES: [&str; 4] =
    ["spark:all", "spark:applications_token", "application:webhooks_write", "application:webhooks_read"];

/// The redirect URI used when `WEBEX_INTEGRATION_REDIRECT_URI` is not set.
pub const DEFAULT_REDIRECT_URI: &str = "http://127.0.0.1:8765/callback";

/// The environment variables the Python SDK `webex_byova` defines.
pub(crate) mod env {
    /// Integration client id (required).
    pub const INTEGRATION_CLIENT_ID: &str = "WEBEX_INTEGRATION_CLIENT_ID";
    /// Integration client secret (required).
    pub const INTEGRATION_CLIENT_SECRET: &str = "WEBEX_INTEGRATION_CLIENT_SECRET";
    /// Service App client id (required).
    pub const SA_CLIENT_ID: &str = "WEBEX_SA_CLIENT_ID";
    /// Service App client secret (required).
    pub const SA_CLIENT_SECRET: &str = "WEBEX_SA_CLIENT_SECRET";
    /// Integration redirect URI (optional, defaults to [`DEFAULT_REDIRECT_URI`](super::DEFAULT_REDIRECT_URI)).
    pub const INTEGRATION_REDIRECT_URI: &str = "WEBEX_INTEGRATION_REDIRECT_URI";
}

/// Integration OAuth client credentials.
#[derive(Clone, Debug)]
pub struct IntegrationCredentials {
    /// The Integration's client id.
    pub client_id: String,
    /// The Integration's client secret.
    pub client_secret: ClientSecret,
    /// The redirect URI registered on the Integration.
    pub redirect_uri: String,
}

impl IntegrationCredentials {
    /// Credentials with the default redirect URI.
    pub fn new(client_id: impl Into<String>, client_secret: impl Into<ClientSecret>) -> Self {
        Self {
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            redirect_uri: DEFAULT_REDIRECT_URI.to_owned(),
        }
    }

    /// Replaces the redirect URI.
    pub fn with_redirect_uri(mut self, redirect_uri: impl Into<String>) -> Self {
        self.redirect_uri = redirect_uri.into();
        self
    }
}

/// Service App OAuth client credentials.
#[derive(Clone, Debug)]
pub struct ServiceAppCredentials {
    /// The Service App's client id.
    pub client_id: String,
    /// The Service App's client secret.
    pub client_secret: ClientSecret,
}

impl ServiceAppCredentials {
    /// Builds Service App credentials.
    pub fn new(client_id: impl Into<String>, client_secret: impl Into<ClientSecret>) -> Self {
        Self { client_id: client_id.into(), client_secret: client_secret.into() }
    }
}

/// Loads Integration and Service App credentials from the process environment.
///
/// Required: `WEBEX_INTEGRATION_CLIENT_ID`, `WEBEX_INTEGRATION_CLIENT_SECRET`,
/// `WEBEX_SA_CLIENT_ID`, `WEBEX_SA_CLIENT_SECRET`. Optional:
/// `WEBEX_INTEGRATION_REDIRECT_URI` (defaults to [`DEFAULT_REDIRECT_URI`]).
///
/// # Errors
/// [`Error::Configuration`] naming every required variable that is unset or empty.
pub fn load_credentials_from_env() -> Result<(IntegrationCredentials, ServiceAppCredentials)> {
    credentials_from_lookup(|name| std::env::var(name).ok())
}

/// [`load_credentials_from_env`] with the variable lookup supplied by the caller, so the logic
/// runs without touching the process environment.
///
/// ```
/// use byova_core::credentials_from_lookup;
/// let vars = [
///     ("WEBEX_INTEGRATION_CLIENT_ID", "C123"),
///     ("WEBEX_INTEGRATION_CLIENT_SECRET", "s1"),
///     ("WEBEX_SA_CLIENT_ID", "C456"),
///     ("WEBEX_SA_CLIENT_SECRET", "s2"),
/// ];
/// let lookup = |name: &str| vars.iter().find(|(n, _)| *n == name).map(|(_, v)| v.to_string());
/// let (integration, service_app) = credentials_from_lookup(lookup)?;
/// assert_eq!(integration.redirect_uri, "http://127.0.0.1:8765/callback");
/// assert_eq!(service_app.client_id, "C456");
/// # Ok::<(), byova_core::Error>(())
/// ```
pub fn credentials_from_lookup(
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<(IntegrationCredentials, ServiceAppCredentials)> {
    let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
    let required = [
        env::INTEGRATION_CLIENT_ID,
        env::INTEGRATION_CLIENT_SECRET,
        env::SA_CLIENT_ID,
        env::SA_CLIENT_SECRET,
    ];
    let values: Vec<Option<String>> = required.iter().map(|n| get(n)).collect();
    let missing: Vec<&str> =
        required.iter().zip(&values).filter(|(_, v)| v.is_none()).map(|(n, _)| *n).collect();
    if !missing.is_empty() {
        let verb = if missing.len() == 1 { "is" } else { "are" };
        return Err(Error::Configuration(format!(
            "{} {verb} not set; export the Integration and Service App credentials from the Webex developer portal",
            missing.join(", ")
        )));
    }
    let mut values = values.into_iter().flatten();
    let mut next = || values.next().unwrap_or_default();
    let (int_id, int_secret, sa_id, sa_secret) = (next(), next(), next(), next());
    let redirect_uri = get(env::INTEGRATION_REDIRECT_URI).unwrap_or_else(|| DEFAULT_REDIRECT_URI.to_owned());
    Ok((
        IntegrationCredentials::new(int_id, int_secret).with_redirect_uri(redirect_uri),
        ServiceAppCredentials::new(sa_id, sa_secret),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| vars.iter().find(|(n, _)| *n == name).map(|(_, v)| (*v).to_owned())
    }

    #[test]
    fn a_missing_variable_is_named() {
        let vars = [
            (env::INTEGRATION_CLIENT_ID, "C1"),
            (env::INTEGRATION_CLIENT_SECRET, "s"),
            (env::SA_CLIENT_SECRET, "s"),
        ];
        let err = credentials_from_lookup(lookup(&vars)).unwrap_err();
        assert!(err.to_string().contains("WEBEX_SA_CLIENT_ID is not set"), "{err}");
    }

    #[test]
    fn every_missing_or_empty_variable_is_named() {
        let vars = [(env::INTEGRATION_CLIENT_ID, "  ")];
        let msg = credentials_from_lookup(lookup(&vars)).unwrap_err().to_string();
        for name in [
            env::INTEGRATION_CLIENT_ID,
            env::INTEGRATION_CLIENT_SECRET,
            env::SA_CLIENT_ID,
            env::SA_CLIENT_SECRET,
        ] {
            assert!(msg.contains(name), "{msg}");
        }
    }

    #[test]
    fn redirect_uri_is_optional_and_overridable() {
        let mut vars = vec![
            (env::INTEGRATION_CLIENT_ID, "C1"),
            (env::INTEGRATION_CLIENT_SECRET, "SECRET-CANARY"),
            (env::SA_CLIENT_ID, "C2"),
            (env::SA_CLIENT_SECRET, "s2"),
        ];
        let (i, s) = credentials_from_lookup(lookup(&vars)).unwrap();
        assert_eq!(i.redirect_uri, DEFAULT_REDIRECT_URI);
        assert_eq!(i.client_secret.expose_secret(), "SECRET-CANARY");
        assert_eq!(s.client_id, "C2");
        vars.push((env::INTEGRATION_REDIRECT_URI, "http://127.0.0.1:9999/cb"));
        let (i, _) = credentials_from_lookup(lookup(&vars)).unwrap();
        assert_eq!(i.redirect_uri, "http://127.0.0.1:9999/cb");
    }

    #[test]
    fn credentials_debug_pins_redaction() {
        let i = IntegrationCredentials::new("C1", "SECRET-CANARY");
        assert_eq!(
            format!("{i:?}"),
            "IntegrationCredentials { client_id: \"C1\", client_secret: ClientSecret([redacted]), redirect_uri: \"http://127.0.0.1:8765/callback\" }"
        );
        let s = ServiceAppCredentials::new("C2", "SECRET-CANARY");
        assert_eq!(
            format!("{s:?}"),
            "ServiceAppCredentials { client_id: \"C2\", client_secret: ClientSecret([redacted]) }"
        );
    }
}
