//! [`ServiceAppTokenManager`]: per-organization Service App tokens.

use std::sync::Arc;

use byova_core::engine::ServiceAppEngine;
use byova_core::{
    AccessToken, Invalidation, KeyStatus, RefreshToken, Result, ServiceAppCredentials, ServiceAppTokens,
    TokenStorage,
};

use crate::driver::{Agent, Drive};
use crate::http::HttpClient;
use crate::integration::IntegrationTokenManager;

/// Fetches, refreshes and stores per-organization Service App tokens, obtained once a
/// customer admin authorizes the Service App in Control Hub. Org ids may be UUIDs or base64
/// Webex ids. Cheap to clone. Cancel safe as [`IntegrationTokenManager`] is.
///
/// Errors common to its methods: [`ServiceAppNotAuthorized`](byova_core::Error::ServiceAppNotAuthorized)
/// when the org's admin has not authorized the app, [`OrgNotRegistered`](byova_core::Error::OrgNotRegistered)
/// for an org with no tokens, the Integration's errors (its bearer fetches), storage's.
#[derive(Clone, Debug)]
pub struct ServiceAppTokenManager {
    pub(crate) agent: Arc<Agent>,
    pub(crate) engine: Arc<ServiceAppEngine>,
    integration: IntegrationTokenManager,
}

impl ServiceAppTokenManager {
    /// A manager for the Service App `credentials`, using `integration`'s bearer, configuration
    /// and clock.
    pub fn new(
        credentials: ServiceAppCredentials,
        integration: IntegrationTokenManager,
        http: HttpClient,
        storage: Arc<dyn TokenStorage>,
    ) -> Self {
        let engine = ServiceAppEngine::new(credentials, integration.config().clone(), Default::default());
        let storage: Arc<dyn TokenStorage> = Arc::new(byova_core::SealedStorage::new(storage, None));
        Self::from_parts(engine, integration, http, storage)
    }

    pub(crate) fn from_parts(
        engine: Arc<ServiceAppEngine>,
        integration: IntegrationTokenManager,
        http: HttpClient,
        storage: Arc<dyn TokenStorage>,
    ) -> Self {
        let (tokens, clock) = (engine.token_engine().clone(), integration.agent.clock.clone());
        let agent =
            Agent { engine: tokens, storage, http, clock, integration: Some(integration.agent.clone()) };
        Self { agent: Arc::new(agent), engine, integration }
    }

    /// The base64url application id derived from the client id.
    pub fn application_id(&self) -> &str {
        self.engine.application_id()
    }

    /// The Service App's client credentials.
    pub fn credentials(&self) -> &ServiceAppCredentials {
        self.engine.credentials()
    }

    /// The Integration manager whose bearer fetches tokens.
    pub fn integration(&self) -> &IntegrationTokenManager {
        &self.integration
    }

    /// Fetches tokens for `org_id` with the Integration's bearer and stores them.
    /// Cancel safety: once started, the fetch completes and stores the tokens on its own.
    pub async fn fetch_token_for_org(&self, org_id: &str) -> Result<ServiceAppTokens> {
        self.agent.run(self.engine.fetch(org_id, self.agent.now())).await
    }

    /// Decodes a `serviceApp` webhook's org id (a base64 Webex id) and fetches its tokens.
    /// Cancel safety: as [`fetch_token_for_org`](Self::fetch_token_for_org).
    pub async fn fetch_token_from_webhook_org(
        &self,
        encoded_org_id: &str,
    ) -> Result<(String, ServiceAppTokens)> {
        self.agent.run(self.engine.fetch_from_webhook_org(encoded_org_id, self.agent.now())).await
    }

    /// Registers an org from an existing refresh token (the sandbox path): refreshes with it
    /// and stores the result.
    /// Cancel safety: once started, the refresh completes and stores the tokens on its own.
    pub async fn save_registration(&self, org_id: &str, refresh_token: &str) -> Result<ServiceAppTokens> {
        let token = RefreshToken::new(refresh_token);
        self.agent.run(self.engine.save_registration(org_id, token, self.agent.now())).await
    }

    /// Refreshes now; without a usable refresh token (or when Webex rejects it) fetches new
    /// ones with the Integration's bearer.
    /// Cancel safety: once started, the refresh or fetch completes and stores on its own.
    pub async fn refresh_for_org(&self, org_id: &str) -> Result<ServiceAppTokens> {
        self.agent.run(self.engine.refresh_for_org(org_id, self.agent.now())).await
    }

    /// A valid access token for org-scoped calls: cached when fresh, else refreshed. After
    /// Webex rejected the org's refresh token it is served until it expires, then
    /// [`ReauthorizationRequired`](byova_core::Error::ReauthorizationRequired).
    /// Cancel safety: a refresh it started completes on its own; the next call gets its result.
    pub async fn get_access_token(&self, org_id: &str) -> Result<AccessToken> {
        let now = self.agent.now();
        if let Some(token) = self.engine.fresh_org(org_id, now) {
            return Ok(token);
        }
        self.agent.run(self.engine.access_token(org_id, now)).await
    }

    /// Removes the org's tokens (deauthorization); an unknown org is not an error.
    /// Cancel safety: the delete either happened or did not.
    pub async fn remove_org(&self, org_id: &str) -> Result<()> {
        self.agent.run(self.engine.remove_org(org_id, self.agent.now())).await
    }

    /// Registered org ids.
    /// Cancel safety: it only reads.
    pub async fn list_orgs(&self) -> Result<Vec<String>> {
        self.agent.run(self.engine.list_orgs()).await
    }

    /// The org's status, `None` when not registered.
    /// Cancel safety: it only reads.
    pub async fn status(&self, org_id: &str) -> Result<Option<KeyStatus>> {
        self.agent.run(self.engine.status(org_id)).await
    }

    /// Stops serving `rejected` for `org_id`, a token Webex answered 401 to: as
    /// [`IntegrationTokenManager::invalidate`](crate::IntegrationTokenManager::invalidate).
    /// Cancel safety: the record is marked in one versioned write, or not at all.
    pub async fn invalidate(&self, org_id: &str, rejected: &AccessToken) -> Result<Invalidation> {
        self.agent.run(self.engine.invalidate(org_id, rejected, self.agent.now())).await
    }

    /// Webex rejected `renewed` too, the token a request for `org_id` was retried with: as
    /// [`IntegrationTokenManager::rejected_again`](crate::IntegrationTokenManager::rejected_again).
    pub async fn rejected_again(&self, org_id: &str, renewed: &AccessToken) -> Result<Invalidation> {
        self.agent.run(self.engine.rejected_again(org_id, renewed, self.agent.now())).await
    }
}
