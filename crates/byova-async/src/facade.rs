//! [`Byova`]: configuration, storage, HTTP, both managers and webhook handling in one place.

use byova_core::TokenStorage;

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
/// ```
/// # #[tokio::main(flavor = "multi_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use byova_async::{Byova, OrgId, ServiceAppEventKind, WebhookSecret};
/// # let fake = byova_testkit::FakeWebex::start();
/// # let (integration, service_app) = (fake.integration_credentials(), fake.service_app_credentials());
/// let secret = WebhookSecret::new("the secret Webex signs deliveries with");
/// let byova = Byova::builder(integration, service_app)
///     .config(fake.config()) // ByovaConfig::default() is production Webex
///     .webhook_secret(secret.clone())
///     .build()?; // in-memory storage unless .storage(…) says otherwise
/// # let issued = fake.issue_integration_tokens();
/// # byova.integration().refresh(Some(&issued.refresh_token)).await?; // stands in for authorize()
///
/// // A customer admin authorized the Service App; Webex posts the serviceApp webhook.
/// let org: OrgId = "63b02f90-9cc6-43b8-aa6d-cad425ac554c".parse()?;
/// # fake.authorize_org(&org);
/// # let (raw_body, signature) = fake.service_app_delivery(ServiceAppEventKind::Authorized, &org, Some(&secret));
/// let outcome = byova.handle_service_app_webhook(&raw_body, signature.as_deref()).await?;
/// assert_eq!(outcome.org_id(), Some(&org)); // its tokens are fetched and stored
///
/// let token = byova.service_app().get_access_token(&org).await?; // cached; refreshed when due
/// # let _ = token;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Byova {
    integration: IntegrationTokenManager,
    service_app: ServiceAppTokenManager,
}

byova_core::__byova_facade!(dyn TokenStorage);

impl Byova {
    byova_core::__byova_methods!(async, dyn TokenStorage, {async}, {.await});
}
