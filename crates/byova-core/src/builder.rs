//! Wiring shared by both flavours: the `Byova` builder ([`ByovaBuilder`], generic over the
//! flavour's facade) and the settings `Byova::from_env` reads ([`EnvSettings`]).

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use crate::config::{ByovaConfig, env as config_env};
use crate::credentials::{IntegrationCredentials, ServiceAppCredentials, credentials_from_lookup};
use crate::engine::{IntegrationEngine, ServiceAppEngine};
use crate::error::Result;
use crate::sealing::StorageKeys;
use crate::secret::WebhookSecret;
use crate::time::{Clock, CoarseClock};
use crate::webhook::WebhookVerification;

/// A flavour's facade (`byova_async::Byova`, `byova_blocking::Byova`), as the builder
/// assembles it.
pub trait Facade: Sized {
    /// The storage the flavour takes (`dyn CoordinatedTokenStorage` or `dyn BlockingCoordinatedTokenStorage`).
    type Storage: ?Sized + Send + Sync;

    /// In-memory storage, the default.
    fn memory_storage() -> Arc<Self::Storage>;

    /// `storage` with its tokens sealed under `keys` at rest (a
    /// [`SealedStorage`](crate::SealedStorage); with `None` it only refuses sealed records),
    /// refusing records in clear when `require_sealed`.
    fn seal(
        storage: Arc<Self::Storage>,
        keys: Option<StorageKeys>,
        require_sealed: bool,
    ) -> Arc<Self::Storage>;

    /// Assembles the facade from its engines, storage and clock.
    ///
    /// # Errors
    /// When the flavour's HTTP client cannot be built.
    fn assemble(parts: Parts<Self::Storage>) -> Result<Self>;
}

/// What [`ByovaBuilder::build`] hands a flavour.
#[non_exhaustive]
pub struct Parts<S: ?Sized> {
    /// The Integration's engine.
    pub integration: Arc<IntegrationEngine>,
    /// The Service App's engine (with the webhook gate).
    pub service_app: Arc<ServiceAppEngine>,
    /// The storage both share.
    pub storage: Arc<S>,
    /// The clock.
    pub clock: Arc<dyn Clock>,
}

/// Builds a flavour's `Byova`: `Byova::builder(integration, service_app)`, then the optional
/// settings, then [`build`](Self::build).
pub struct ByovaBuilder<F: Facade> {
    integration: IntegrationCredentials,
    service_app: ServiceAppCredentials,
    config: ByovaConfig,
    storage: Option<Arc<F::Storage>>,
    clock: Arc<dyn Clock>,
    webhook_secrets: Vec<WebhookSecret>,
    unsigned_webhooks: bool,
    storage_keys: Option<StorageKeys>,
    require_sealed: bool,
    flavour: PhantomData<fn() -> F>,
}

impl<F: Facade> fmt::Debug for ByovaBuilder<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ByovaBuilder")
            .field("integration", &self.integration)
            .field("service_app", &self.service_app)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<F: Facade> ByovaBuilder<F> {
    /// A builder from both apps' credentials: production Webex, in-memory storage.
    pub fn new(integration: IntegrationCredentials, service_app: ServiceAppCredentials) -> Self {
        Self {
            integration,
            service_app,
            config: ByovaConfig::default(),
            storage: None,
            clock: Arc::new(CoarseClock),
            webhook_secrets: Vec::new(),
            unsigned_webhooks: false,
            storage_keys: None,
            require_sealed: false,
            flavour: PhantomData,
        }
    }

    /// A builder from the environment ([`EnvSettings::from_env`]).
    ///
    /// # Errors
    /// [`Error::Configuration`](crate::Error::Configuration) naming a missing or invalid
    /// variable.
    pub fn from_env() -> Result<Self> {
        let env = EnvSettings::from_env()?;
        let mut builder = Self::new(env.integration, env.service_app).config(env.config);
        builder.webhook_secrets = env.webhook_secrets;
        builder.storage_keys = env.storage_keys;
        builder.require_sealed = env.require_sealed;
        Ok(builder)
    }

    /// The configuration (production Webex by default).
    pub fn config(mut self, config: ByovaConfig) -> Self {
        self.config = config;
        self
    }

    /// The token storage (in memory by default).
    pub fn storage(mut self, storage: Arc<F::Storage>) -> Self {
        self.storage = Some(storage);
        self
    }

    /// The clock (a coarse system clock by default; tests inject a fake one).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The secret webhooks are registered with: deliveries without a valid
    /// `X-Spark-Signature` under it are rejected.
    pub fn webhook_secret(mut self, secret: WebhookSecret) -> Self {
        self.webhook_secrets = vec![secret];
        self
    }

    /// Secret rotation: deliveries signed with any of `secrets` are accepted; the first is the
    /// current one (`ensure_service_app_webhooks` moves webhooks to it), the others are being
    /// retired.
    pub fn webhook_secrets(mut self, secrets: Vec<WebhookSecret>) -> Self {
        self.webhook_secrets = secrets;
        self
    }

    /// Takes `serviceApp` deliveries without a signature (and lets
    /// `ensure_service_app_webhooks` create webhooks without a secret) when no secret is set.
    ///
    /// **Unsafe on any port others can reach:** anyone who reaches the webhook receiver can
    /// then register orgs or remove every one of them. Without a secret and without this,
    /// every delivery is refused (a left-out setting never turns verification off).
    pub fn allow_unsigned_webhooks(mut self) -> Self {
        self.unsigned_webhooks = true;
        self
    }

    /// Seal access and refresh tokens at rest under `keys` (see [`StorageKeys`]): whoever
    /// can read the store cannot use them.
    pub fn storage_keys(mut self, keys: StorageKeys) -> Self {
        self.storage_keys = Some(keys);
        self
    }

    /// Refuse stored records whose tokens are in clear (a typed
    /// [`Sealing`](crate::StorageErrorKind::Sealing) error), and seal pending authorizations
    /// too: whoever can write the store cannot plant tokens. Needs
    /// [`storage_keys`](Self::storage_keys).
    pub fn require_sealed_storage(mut self) -> Self {
        self.require_sealed = true;
        self
    }

    /// Builds it.
    ///
    /// # Errors
    /// [`Error::Configuration`](crate::Error::Configuration) when the HTTP client cannot be
    /// built, or sealed storage is required without a storage key.
    pub fn build(self) -> Result<F> {
        if self.require_sealed && self.storage_keys.is_none() {
            return Err(crate::Error::Configuration(
                "sealed storage is required (BYOVA_STORAGE_REQUIRE_SEALED) but no storage key is set (BYOVA_STORAGE_KEY)"
                    .into(),
            ));
        }
        let integration = IntegrationEngine::new(self.integration, self.config.clone());
        let webhooks = match (self.webhook_secrets.is_empty(), self.unsigned_webhooks) {
            (true, true) => WebhookVerification::UnsignedAllowed,
            _ => WebhookVerification::signed(self.webhook_secrets),
        };
        let service_app = ServiceAppEngine::new(self.service_app, self.config, webhooks);
        let storage =
            F::seal(self.storage.unwrap_or_else(F::memory_storage), self.storage_keys, self.require_sealed);
        F::assemble(Parts { integration, service_app, storage, clock: self.clock })
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
    /// From `BYOVA_WEBHOOK_SECRET`: the current secret, then (comma-separated) the ones being
    /// retired.
    pub webhook_secrets: Vec<WebhookSecret>,
    /// From `BYOVA_STORAGE_KEY`: the keys tokens are sealed with at rest.
    pub storage_keys: Option<StorageKeys>,
    /// From `BYOVA_STORAGE_REQUIRE_SEALED`: records in clear are refused.
    pub require_sealed: bool,
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
        let webhook_secrets = match lookup(config_env::WEBHOOK_SECRET) {
            None => Vec::new(),
            Some(all) => parse_webhook_secrets(&all, config_env::WEBHOOK_SECRET)?,
        };
        let storage_keys = lookup(config_env::STORAGE_KEY)
            .filter(|k| !k.trim().is_empty())
            .map(|k| StorageKeys::parse(&k))
            .transpose()?;
        let require_sealed = match lookup(config_env::STORAGE_REQUIRE_SEALED).as_deref().map(str::trim) {
            None | Some("" | "0" | "false") => false,
            Some("1" | "true") => true,
            Some(_) => {
                return Err(crate::Error::Configuration(format!(
                    "{} is 1 or 0 (true or false)",
                    config_env::STORAGE_REQUIRE_SEALED
                )));
            }
        };
        Ok(Self { integration, service_app, config, webhook_secrets, storage_keys, require_sealed })
    }
}

/// Webhook secrets from text: comma- or newline-separated, the current one first (during a
/// rotation, `new,old`); blanks between separators are ignored.
pub fn webhook_secrets(text: &str) -> Vec<WebhookSecret> {
    text.split([',', '\n']).map(str::trim).filter(|s| !s.is_empty()).map(WebhookSecret::new).collect()
}

/// [`webhook_secrets`] from a setting that was given: a list that holds no secret at all (an
/// empty value, `,`, a file of separators) is a configuration error naming `source`, never
/// "no verification".
///
/// # Errors
/// [`Error::Configuration`](crate::Error::Configuration) for a list without a secret.
pub fn parse_webhook_secrets(text: &str, source: &str) -> Result<Vec<WebhookSecret>> {
    let secrets = webhook_secrets(text);
    if secrets.is_empty() {
        return Err(crate::Error::Configuration(format!(
            "{source} holds no webhook secret (it is empty or only separators); set the secret the webhooks \
             were created with, or leave it unset"
        )));
    }
    Ok(secrets)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(s.webhook_secrets.len() == 1 && s.webhook_secrets[0].ct_eq_str("hook"));
        let rotating =
            |n: &str| if n == "BYOVA_WEBHOOK_SECRET" { Some("new, old".to_owned()) } else { lookup(n) };
        let s = EnvSettings::from_lookup(rotating).unwrap();
        assert!(s.webhook_secrets[0].ct_eq_str("new") && s.webhook_secrets[1].ct_eq_str("old"));
        assert_eq!(s.service_app.client_id, "C2");
        for blank in ["", ",", " , \n,", "\n"] {
            let set = |n: &str| if n == "BYOVA_WEBHOOK_SECRET" { Some(blank.to_owned()) } else { lookup(n) };
            let err = EnvSettings::from_lookup(set).unwrap_err();
            assert!(
                err.to_string().contains("BYOVA_WEBHOOK_SECRET holds no webhook secret"),
                "{blank:?}: {err}"
            );
        }
    }
}
