//! [`Byova`]: configuration, storage, HTTP, both managers and webhook handling in one place.

use std::sync::{Arc, Mutex};

use byova_core::{
    Admission, BlockingTokenStorage, ByovaConfig, Clock, CoarseClock, EnvSettings, Error,
    InMemoryTokenStorage, IntegrationCredentials, KeyStatus, NewWebhook, Result, ServiceAppCredentials,
    ServiceAppEventKind, ServiceAppTokens, Webhook, WebhookGate, WebhookOutcome, WebhookSecret,
    create_webhook_request, delete_webhook_request, list_webhooks_request, missing_webhooks,
    next_page_request, parse_webhook, parse_webhook_deletion, parse_webhook_page,
};

use crate::driver::send_with_retry;
use crate::http::HttpClient;
use crate::integration::IntegrationTokenManager;
use crate::service_app::ServiceAppTokenManager;

/// The result of refreshing one org in [`Byova::refresh_all_orgs`].
#[derive(Debug)]
#[non_exhaustive]
pub struct OrgRefresh {
    /// The org.
    pub org_id: String,
    /// Its new tokens, or why it failed.
    pub result: Result<ServiceAppTokens>,
}

/// The whole authentication side of a BYOVA provider.
///
/// ```no_run
/// # fn example(raw_body: &[u8], signature: Option<&str>) -> byova_blocking::Result<()> {
/// let byova = byova_blocking::Byova::from_env()?;
/// byova.handle_service_app_webhook(raw_body, signature)?;
/// let token = byova.service_app().get_access_token("63b02f90-9cc6-43b8-aa6d-cad425ac554c")?;
/// # let _ = token;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Byova {
    integration: IntegrationTokenManager,
    service_app: ServiceAppTokenManager,
    http: HttpClient,
    gate: WebhookGate,
}

/// Builds a [`Byova`].
pub struct ByovaBuilder {
    integration: IntegrationCredentials,
    service_app: ServiceAppCredentials,
    config: ByovaConfig,
    storage: Option<Arc<dyn BlockingTokenStorage>>,
    clock: Arc<dyn Clock>,
    webhook_secret: Option<WebhookSecret>,
}

impl std::fmt::Debug for ByovaBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ByovaBuilder")
            .field("integration", &self.integration)
            .field("service_app", &self.service_app)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl ByovaBuilder {
    /// The configuration (production Webex by default).
    pub fn config(mut self, config: ByovaConfig) -> Self {
        self.config = config;
        self
    }

    /// The token storage (in memory by default).
    pub fn storage(mut self, storage: Arc<dyn BlockingTokenStorage>) -> Self {
        self.storage = Some(storage);
        self
    }

    /// The clock (the system clock by default).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The secret webhooks are registered with: deliveries without a valid
    /// `X-Spark-Signature` under it are rejected.
    pub fn webhook_secret(mut self, secret: WebhookSecret) -> Self {
        self.webhook_secret = Some(secret);
        self
    }

    /// Builds it.
    ///
    /// # Errors
    /// [`Error::Configuration`] when the HTTP client cannot be built.
    pub fn build(self) -> Result<Byova> {
        let http = HttpClient::new(self.config.timeout)?;
        let storage = self.storage.unwrap_or_else(|| Arc::new(InMemoryTokenStorage::new()));
        let integration = IntegrationTokenManager::with_clock(
            self.integration,
            http.clone(),
            storage.clone(),
            Some(self.config),
            self.clock,
        );
        let service_app =
            ServiceAppTokenManager::new(self.service_app, integration.clone(), http.clone(), storage);
        let gate = WebhookGate::new(service_app.application_id(), self.webhook_secret);
        Ok(Byova { integration, service_app, http, gate })
    }
}

impl Byova {
    /// A builder from both apps' credentials.
    pub fn builder(integration: IntegrationCredentials, service_app: ServiceAppCredentials) -> ByovaBuilder {
        ByovaBuilder {
            integration,
            service_app,
            config: ByovaConfig::default(),
            storage: None,
            clock: Arc::new(CoarseClock),
            webhook_secret: None,
        }
    }

    /// From the environment: the seed's `WEBEX_*` credentials, `BYOVA_BASE_URL` and
    /// `BYOVA_WEBHOOK_SECRET`, with in-memory storage (see
    /// [`from_env_with_storage`](Self::from_env_with_storage)).
    ///
    /// # Errors
    /// [`Error::Configuration`] naming a missing or invalid variable.
    pub fn from_env() -> Result<Self> {
        Self::from_env_with_storage(Arc::new(InMemoryTokenStorage::new()))
    }

    /// [`from_env`](Self::from_env) with the given storage.
    ///
    /// # Errors
    /// As [`from_env`](Self::from_env).
    pub fn from_env_with_storage(storage: Arc<dyn BlockingTokenStorage>) -> Result<Self> {
        let env = EnvSettings::from_env()?;
        let mut builder = Self::builder(env.integration, env.service_app).config(env.config).storage(storage);
        if let Some(secret) = env.webhook_secret {
            builder = builder.webhook_secret(secret);
        }
        builder.build()
    }

    /// The Integration manager.
    pub fn integration(&self) -> &IntegrationTokenManager {
        &self.integration
    }

    /// The Service App manager.
    pub fn service_app(&self) -> &ServiceAppTokenManager {
        &self.service_app
    }

    /// Handles one `serviceApp` webhook delivery: verifies `X-Spark-Signature` over the raw body
    /// when a webhook secret is configured, fetches and stores tokens on `authorized`, removes
    /// them on `deauthorized`. A repeated delivery does nothing.
    ///
    /// # Errors
    /// [`Error::WebhookSignature`] for a missing or wrong signature, [`Error::InvalidInput`] for
    /// a malformed delivery, or the fetch's error (answer the delivery with a 5xx so Webex
    /// retries it).
    pub fn handle_service_app_webhook(
        &self,
        raw_body: &[u8],
        signature_header: Option<&str>,
    ) -> Result<WebhookOutcome> {
        let event = match self.gate.admit(raw_body, signature_header)? {
            Admission::Act(event) => event,
            Admission::Done(outcome) => return Ok(outcome),
        };
        let done = match event.kind {
            ServiceAppEventKind::Authorized => self.service_app.fetch_token_for_org(&event.org_id).map(drop),
            ServiceAppEventKind::Deauthorized => self.service_app.remove_org(&event.org_id),
        };
        match done {
            Ok(()) => {
                let outcome = WebhookGate::outcome(&event);
                tracing::info!(org = %event.org_id, event = event.kind.as_str(), ?outcome, "serviceApp webhook handled");
                Ok(outcome)
            }
            Err(error) => {
                self.gate.failed(&event);
                Err(error)
            }
        }
    }

    /// Every registered webhook, following `Link` pagination.
    ///
    /// # Errors
    /// The Integration's or the API's error.
    pub fn list_webhooks(&self) -> Result<Vec<Webhook>> {
        let token = self.integration.get_access_token()?;
        let config = self.integration.config();
        let mut request = list_webhooks_request(config, &token, 100);
        let mut all = Vec::new();
        for _ in 0..10_000 {
            let page = send_with_retry(&self.http, config, &request, parse_webhook_page)?;
            all.extend(page.items);
            match page.next {
                Some(next) => request = next_page_request(config, &token, &next)?,
                None => return Ok(all),
            }
        }
        Err(Error::InvalidResponse {
            what: "the webhook list did not end after 10000 pages".into(),
            status: 200,
        })
    }

    /// Creates a webhook.
    ///
    /// # Errors
    /// The Integration's or the API's error.
    pub fn create_webhook(&self, webhook: &NewWebhook) -> Result<Webhook> {
        let token = self.integration.get_access_token()?;
        let config = self.integration.config();
        send_with_retry(&self.http, config, &create_webhook_request(config, &token, webhook), parse_webhook)
    }

    /// Deletes a webhook (an unknown id counts as deleted).
    ///
    /// # Errors
    /// The Integration's or the API's error.
    pub fn delete_webhook(&self, webhook_id: &str) -> Result<()> {
        let token = self.integration.get_access_token()?;
        let config = self.integration.config();
        send_with_retry(
            &self.http,
            config,
            &delete_webhook_request(config, &token, webhook_id),
            parse_webhook_deletion,
        )
    }

    /// Makes sure the `serviceApp` `authorized` and `deauthorized` webhooks for this Service App
    /// deliver to `target_url`, creating only what is missing. Returns the created ones.
    ///
    /// # Errors
    /// The Integration's or the API's error.
    pub fn ensure_service_app_webhooks(
        &self,
        target_url: &str,
        secret: Option<&WebhookSecret>,
    ) -> Result<Vec<Webhook>> {
        let wanted = NewWebhook::service_app_pair(self.service_app.application_id(), target_url, secret);
        let existing = self.list_webhooks()?;
        let mut created = Vec::new();
        for webhook in missing_webhooks(&wanted, &existing) {
            created.push(self.create_webhook(webhook)?);
        }
        Ok(created)
    }

    /// The status of the Integration and of every registered org. Holds no secret.
    ///
    /// # Errors
    /// A storage error.
    pub fn status(&self) -> Result<Vec<KeyStatus>> {
        let mut all: Vec<KeyStatus> = self.integration.status()?.into_iter().collect();
        for org in self.service_app.list_orgs()? {
            all.extend(self.service_app.status(&org)?);
        }
        Ok(all)
    }

    /// Refreshes every registered org, at most `concurrency` at a time; each refresh honours
    /// `Retry-After` and backs off on its own. One org failing never stops the others.
    ///
    /// # Errors
    /// A storage error listing the orgs; per-org failures are in the results.
    pub fn refresh_all_orgs(&self, concurrency: usize) -> Result<Vec<OrgRefresh>> {
        let orgs = self.service_app.list_orgs()?;
        let queue = Mutex::new(orgs.into_iter());
        let results = Mutex::new(Vec::new());
        std::thread::scope(|scope| {
            for _ in 0..concurrency.max(1) {
                scope.spawn(|| {
                    loop {
                        let next = queue.lock().unwrap_or_else(|e| e.into_inner()).next();
                        let Some(org_id) = next else { break };
                        let result = self.service_app.refresh_for_org(&org_id);
                        results.lock().unwrap_or_else(|e| e.into_inner()).push(OrgRefresh { org_id, result });
                    }
                });
            }
        });
        let mut results = results.into_inner().unwrap_or_else(|e| e.into_inner());
        results.sort_by(|a, b| a.org_id.cmp(&b.org_id));
        Ok(results)
    }
}
