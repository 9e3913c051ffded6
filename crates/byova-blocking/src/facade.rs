//! [`Byova`]: configuration, storage, HTTP, both managers and webhook handling in one place.

use byova_core::BlockingTokenStorage;

use crate::driver::Drive;
use crate::http::HttpClient;
use crate::integration::IntegrationTokenManager;
use crate::service_app::ServiceAppTokenManager;

/// Builds a [`Byova`]: `Byova::builder(integration, service_app)`, then `.config(…)`,
/// `.storage(…)`, `.clock(…)`, `.webhook_secret(…)` as needed, then `.build()`.
pub type ByovaBuilder = byova_core::ByovaBuilder<Byova>;

/// The whole authentication side of a BYOVA provider.
///
/// ```no_run
/// # fn example(raw_body: &[u8], signature: Option<&str>) -> byova_blocking::Result<()> {
/// let byova = byova_blocking::Byova::from_env()?;
/// byova.handle_service_app_webhook(raw_body, signature)?;
/// // An org id from a request or a configuration: parsed (and normalized) once.
/// let org: byova_blocking::OrgId = "63b02f90-9cc6-43b8-aa6d-cad425ac554c".parse()?;
/// let token = byova.service_app().get_access_token(&org)?;
/// # let _ = token;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Byova {
    integration: IntegrationTokenManager,
    service_app: ServiceAppTokenManager,
}

byova_core::__byova_facade!(dyn BlockingTokenStorage);

impl Byova {
    byova_core::__byova_methods!(blocking, dyn BlockingTokenStorage, {}, {});
}
