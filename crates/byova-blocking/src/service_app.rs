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
#[derive(Clone, Debug)]
pub struct ServiceAppTokenManager {
    pub(crate) agent: Arc<Agent>,
    pub(crate) engine: Arc<ServiceAppEngine>,
    integration: IntegrationTokenManager,
}

impl ServiceAppTokenManager {
    byova_core::__service_app_manager_methods!(blocking, dyn BlockingTokenStorage, {}, {});
}
