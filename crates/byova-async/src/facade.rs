//! [`Byova`]: configuration, storage, HTTP, both managers and webhook handling in one place.

use std::sync::Arc;

use byova_core::{
    BulkProgress, InMemoryTokenStorage, IntegrationCredentials, KeyStatus, OrgRefresh, Result, SealedStorage,
    ServiceAppCredentials, StatusReport, StorageKeys, TokenStorage, WebhookSecret,
    engine::{Facade, Parts},
    webhook::{NewWebhook, Webhook, WebhookOutcome},
};

use crate::driver::Drive;
use crate::http::HttpClient;
use crate::integration::IntegrationTokenManager;
use crate::service_app::ServiceAppTokenManager;

/// Builds a [`Byova`]: `Byova::builder(integration, service_app)`, then `.config(…)`,
/// `.storage(…)`, `.clock(…)`, `.webhook_secret(…)` as needed, then `.build()`.
pub type ByovaBuilder = byova_core::ByovaBuilder<Byova>;

/// The whole authentication side of a BYOVA provider. Every method is cancel safe in the
/// sense of [`IntegrationTokenManager`].
///
/// ```no_run
/// # async fn example(raw_body: &[u8], signature: Option<&str>) -> byova_async::Result<()> {
/// let byova = byova_async::Byova::from_env()?;
/// byova.handle_service_app_webhook(raw_body, signature).await?;
/// let token = byova.service_app().get_access_token("63b02f90-9cc6-43b8-aa6d-cad425ac554c").await?;
/// # let _ = token;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Byova {
    integration: IntegrationTokenManager,
    service_app: ServiceAppTokenManager,
}

impl Facade for Byova {
    type Storage = dyn TokenStorage;

    fn memory_storage() -> Arc<dyn TokenStorage> {
        Arc::new(InMemoryTokenStorage::new())
    }

    fn seal(
        storage: Arc<dyn TokenStorage>,
        keys: Option<StorageKeys>,
        require_sealed: bool,
    ) -> Arc<dyn TokenStorage> {
        Arc::new(SealedStorage::new(storage, keys).requiring_sealed(require_sealed))
    }

    fn assemble(parts: Parts<dyn TokenStorage>) -> Result<Self> {
        let http = HttpClient::new(parts.integration.config().timeout)?;
        let integration = IntegrationTokenManager::from_parts(
            parts.integration,
            parts.storage.clone(),
            http.clone(),
            parts.clock,
        );
        let service_app =
            ServiceAppTokenManager::from_parts(parts.service_app, integration.clone(), http, parts.storage);
        Ok(Self { integration, service_app })
    }
}

impl Byova {
    /// Refreshes, fetches, code exchanges and removals running now (they run on their own,
    /// whoever started them): a process that is about to exit waits for this to reach zero,
    /// so no token Webex issued is dropped unsaved.
    pub fn work_in_progress(&self) -> usize {
        self.integration.agent.engine.flights_in_progress()
            + self.service_app.agent.engine.flights_in_progress()
    }

    /// A builder from both apps' credentials (production Webex, in-memory storage).
    pub fn builder(integration: IntegrationCredentials, service_app: ServiceAppCredentials) -> ByovaBuilder {
        ByovaBuilder::new(integration, service_app)
    }

    /// From the environment (the `WEBEX_*` credentials, `BYOVA_BASE_URL`,
    /// `BYOVA_WEBHOOK_SECRET`), with in-memory storage. Errors: a missing or invalid variable.
    pub fn from_env() -> Result<Self> {
        ByovaBuilder::from_env()?.build()
    }

    /// [`from_env`](Self::from_env) with the given storage.
    pub fn from_env_with_storage(storage: Arc<dyn TokenStorage>) -> Result<Self> {
        ByovaBuilder::from_env()?.storage(storage).build()
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
    /// (when secrets are set), fetches tokens on `authorized` unless the stored registration is
    /// already as new, removes them on `deauthorized` unless the org was authorized again
    /// after it. Repeated, late and reordered deliveries are answered by the store. Errors:
    /// [`WebhookSignature`](byova_core::Error::WebhookSignature),
    /// [`InvalidInput`](byova_core::Error::InvalidInput) (malformed), or the fetch's (answer
    /// 5xx so Webex retries).
    /// Cancel safety: the fetch or removal it started completes on its own.
    pub async fn handle_service_app_webhook(
        &self,
        raw_body: &[u8],
        signature_header: Option<&str>,
    ) -> Result<WebhookOutcome> {
        let sa = &self.service_app;
        sa.agent.run(sa.engine.handle_webhook(raw_body, signature_header, sa.agent.now())).await
    }

    /// Every registered webhook, following `Link` pagination.
    /// Cancel safety: it only reads.
    pub async fn list_webhooks(&self) -> Result<Vec<Webhook>> {
        self.service_app.agent.run(self.service_app.engine.list_webhooks()).await
    }

    /// Creates a webhook.
    /// Cancel safety: once sent, the webhook may exist; list to see.
    pub async fn create_webhook(&self, webhook: &NewWebhook) -> Result<Webhook> {
        self.service_app.agent.run(self.service_app.engine.create_webhook(webhook.clone())).await
    }

    /// Deletes a webhook (an unknown id counts as deleted).
    /// Cancel safety: the webhook is deleted or not; deleting again is harmless.
    pub async fn delete_webhook(&self, webhook_id: &str) -> Result<()> {
        self.service_app.agent.run(self.service_app.engine.delete_webhook(webhook_id)).await
    }

    /// Makes sure the `serviceApp` `authorized` and `deauthorized` webhooks deliver to
    /// `target_url`, signed with `secret`: creates what is missing, re-activates what Webex
    /// disabled, moves webhooks to `secret` after a rotation; returns those it changed.
    /// Cancel safety: what was changed stays; ensuring again does only the rest.
    pub async fn ensure_service_app_webhooks(
        &self,
        target_url: &str,
        secret: Option<&WebhookSecret>,
    ) -> Result<Vec<Webhook>> {
        let sa = &self.service_app;
        sa.agent.run(sa.engine.ensure_webhooks(target_url, secret, sa.agent.now())).await
    }

    /// The status of the Integration and of every registered org. Holds no secret. Records
    /// that cannot be read are left out ([`status_report`](Self::status_report) counts them).
    /// Cancel safety: it only reads.
    pub async fn status(&self) -> Result<Vec<KeyStatus>> {
        Ok(self.status_report().await?.keys)
    }

    /// [`status`](Self::status), with the keys whose records cannot be read.
    /// Cancel safety: it only reads.
    pub async fn status_report(&self) -> Result<StatusReport> {
        self.service_app.agent.run(self.service_app.engine.status_report(true)).await
    }

    /// Refreshes every registered org, at most `concurrency` at a time; one failing never stops
    /// the others (per-org failures are in the results).
    /// Cancel safety: refreshes already started complete; the rest do not start.
    pub async fn refresh_all_orgs(&self, concurrency: usize) -> Result<Vec<OrgRefresh>> {
        self.service_app.agent.run(self.service_app.engine.refresh_all(concurrency, None)).await
    }

    /// [`refresh_all_orgs`](Self::refresh_all_orgs), calling `progress` after each org.
    /// Cancel safety: as [`refresh_all_orgs`](Self::refresh_all_orgs).
    pub async fn refresh_all_orgs_with_progress(
        &self,
        concurrency: usize,
        progress: impl Fn(&BulkProgress) + Send + Sync + 'static,
    ) -> Result<Vec<OrgRefresh>> {
        let plan = self.service_app.engine.refresh_all(concurrency, Some(Arc::new(progress)));
        self.service_app.agent.run(plan).await
    }
}
