//! [`ServiceAppTokenManager`]: per-organization Service App tokens.

use std::sync::Arc;

use byova_core::BlockingTokenStorage;
use byova_core::engine::ServiceAppEngine;

use crate::driver::{Agent, Drive};
use crate::http::HttpClient;
use crate::integration::IntegrationTokenManager;

/// Fetches, refreshes and stores per-organization Service App tokens, obtained once a
/// customer admin authorizes the Service App in Control Hub. Org ids may be UUIDs or base64
/// Webex ids. Cheap to clone. Shared by threads as [`IntegrationTokenManager`] is.
///
/// Errors common to its methods: [`ServiceAppNotAuthorized`](byova_core::Error::ServiceAppNotAuthorized)
/// when the org's admin has not authorized the app, [`OrgNotRegistered`](byova_core::Error::OrgNotRegistered)
/// for an org with no tokens, the Integration's errors (its bearer fetches), storage's.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use byova_blocking::*;
/// # let fake = byova_testkit::FakeWebex::start();
/// # let (integration_credentials, config) = (fake.integration_credentials(), fake.config());
/// # let service_app_credentials = fake.service_app_credentials();
/// let http = HttpClient::new(std::time::Duration::from_secs(30))?;
/// let storage = Arc::new(InMemoryTokenStorage::new());
/// let integration = IntegrationTokenManager::new(integration_credentials, http.clone(), storage.clone(), config);
/// # let issued = fake.issue_integration_tokens();
/// # integration.refresh(Some(&issued.refresh_token))?; // stands in for authorize()
/// let service_app = ServiceAppTokenManager::new(service_app_credentials, integration, http, storage);
///
/// let org: OrgId = "63b02f90-9cc6-43b8-aa6d-cad425ac554c".parse()?;
/// # fake.authorize_org(&org); // a customer admin authorizes the Service App
/// service_app.fetch_token_for_org(&org)?; // with the Integration's bearer; stored
/// let token = service_app.get_access_token(&org)?; // cached; refreshed when due
/// assert_eq!(service_app.list_orgs()?, [org]);
/// # let _ = token;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct ServiceAppTokenManager {
    pub(crate) agent: Arc<Agent>,
    pub(crate) engine: Arc<ServiceAppEngine>,
    integration: IntegrationTokenManager,
}

impl ServiceAppTokenManager {
    byova_core::__service_app_manager_methods!(blocking, dyn BlockingTokenStorage, {}, {});
}
