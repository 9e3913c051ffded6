//! [`ServiceAppTokenManager`]: per-organization Service App tokens.

use std::sync::Arc;

use byova_core::refresh::{RefreshClient, RefreshMode};
use byova_core::{
    AccessToken, BlockingTokenStorage, KeyStatus, Result, ServiceAppCredentials, ServiceAppTokens, TokenKey,
    decode_org_id, derive_application_id_in_region, normalize_org_id,
};

use crate::driver::{Env, Keys};
use crate::http::HttpClient;
use crate::integration::IntegrationTokenManager;

/// Fetches, refreshes and stores per-organization Service App tokens. Tokens for an org are
/// obtained after a customer admin authorizes the Service App in Control Hub. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ServiceAppTokenManager {
    inner: Arc<Inner>,
}

struct Inner {
    credentials: ServiceAppCredentials,
    integration: IntegrationTokenManager,
    http: HttpClient,
    storage: Arc<dyn BlockingTokenStorage>,
    keys: Keys,
    application_id: String,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAppTokenManager")
            .field("credentials", &self.credentials)
            .field("application_id", &self.application_id)
            .finish_non_exhaustive()
    }
}

impl ServiceAppTokenManager {
    /// A manager for the Service App `credentials`, using `integration`'s bearer to fetch tokens
    /// and its configuration and clock.
    pub fn new(
        credentials: ServiceAppCredentials,
        integration: IntegrationTokenManager,
        http: HttpClient,
        storage: Arc<dyn BlockingTokenStorage>,
    ) -> Self {
        let config = integration.config();
        let application_id = derive_application_id_in_region(&config.region, &credentials.client_id);
        let keys = Keys::new(config);
        Self { inner: Arc::new(Inner { credentials, integration, http, storage, keys, application_id }) }
    }

    /// The base64url application id derived from the client id.
    pub fn application_id(&self) -> &str {
        &self.inner.application_id
    }

    /// The Service App's client credentials.
    pub fn credentials(&self) -> &ServiceAppCredentials {
        &self.inner.credentials
    }

    /// The Integration manager whose bearer fetches tokens.
    pub fn integration(&self) -> &IntegrationTokenManager {
        &self.inner.integration
    }

    fn env(&self) -> Env<'_> {
        Env {
            config: self.inner.integration.config(),
            storage: self.inner.storage.as_ref(),
            http: &self.inner.http,
            clock: self.inner.integration.clock().as_ref(),
            keys: &self.inner.keys,
            integration: Some(&self.inner.integration),
        }
    }

    fn client(&self) -> RefreshClient<'_> {
        RefreshClient::ServiceApp(&self.inner.credentials)
    }

    fn key(org_id: &str) -> Result<TokenKey> {
        Ok(TokenKey::Org(normalize_org_id(org_id)?))
    }

    /// Fetches Service App tokens for `org_id` with the Integration's bearer and stores them.
    ///
    /// # Errors
    /// [`Error::ServiceAppNotAuthorized`](byova_core::Error::ServiceAppNotAuthorized) when the
    /// org's admin has not authorized the app; the Integration's errors.
    pub fn fetch_token_for_org(&self, org_id: &str) -> Result<ServiceAppTokens> {
        self.env().force(self.client(), &Self::key(org_id)?, RefreshMode::Fetch)
    }

    /// Decodes the org id of a `serviceApp` webhook (base64 Webex id) and fetches its tokens.
    ///
    /// # Errors
    /// [`Error::InvalidInput`](byova_core::Error::InvalidInput) for an undecodable id; as
    /// [`fetch_token_for_org`](Self::fetch_token_for_org).
    pub fn fetch_token_from_webhook_org(&self, encoded_org_id: &str) -> Result<(String, ServiceAppTokens)> {
        let org = decode_org_id(encoded_org_id)?;
        let tokens = self.fetch_token_for_org(&org)?;
        Ok((org, tokens))
    }

    /// Registers an org from an existing Service App refresh token (the sandbox path): refreshes
    /// with it and stores the result.
    ///
    /// # Errors
    /// [`Error::ReauthorizationRequired`](byova_core::Error::ReauthorizationRequired) when Webex
    /// rejects the token.
    pub fn save_registration(&self, org_id: &str, refresh_token: &str) -> Result<ServiceAppTokens> {
        let mode = RefreshMode::Force(Some(byova_core::RefreshToken::new(refresh_token)));
        self.env().force(self.client(), &Self::key(org_id)?, mode)
    }

    /// Refreshes the org's tokens now; without a stored refresh token (or when Webex rejects it)
    /// fetches new ones with the Integration's bearer.
    ///
    /// # Errors
    /// As [`fetch_token_for_org`](Self::fetch_token_for_org).
    pub fn refresh_for_org(&self, org_id: &str) -> Result<ServiceAppTokens> {
        self.env().force(self.client(), &Self::key(org_id)?, RefreshMode::Force(None))
    }

    /// A valid access token for org-scoped calls, refreshed when needed.
    ///
    /// # Errors
    /// [`Error::OrgNotRegistered`](byova_core::Error::OrgNotRegistered) for an unknown org.
    pub fn get_access_token(&self, org_id: &str) -> Result<AccessToken> {
        let env = self.env();
        if let Some(token) = self.inner.keys.cache.fresh_org(org_id, env.clock.now()) {
            return Ok(token);
        }
        env.get_valid(self.client(), &Self::key(org_id)?)
    }

    /// Removes the org's tokens (deauthorization). Removing an unknown org is not an error.
    ///
    /// # Errors
    /// A storage error.
    pub fn remove_org(&self, org_id: &str) -> Result<()> {
        let key = Self::key(org_id)?;
        if let TokenKey::Org(org) = &key {
            self.inner.storage.delete_service_app_tokens(org)?;
        }
        self.inner.keys.cache.remove(&key);
        Ok(())
    }

    /// Registered org ids.
    ///
    /// # Errors
    /// A storage error.
    pub fn list_orgs(&self) -> Result<Vec<String>> {
        Ok(self.inner.storage.list_registered_orgs()?)
    }

    /// The org's status, `None` when not registered.
    ///
    /// # Errors
    /// A storage error.
    pub fn status(&self, org_id: &str) -> Result<Option<KeyStatus>> {
        self.env().status(&Self::key(org_id)?)
    }
}
