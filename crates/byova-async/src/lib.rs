//! # byova-async
//!
//! The async flavour of byova, on tokio and reqwest (rustls): Integration OAuth and per-org
//! Service App tokens for a Webex BYOVA provider.
//!
//! - [`IntegrationTokenManager`]: authorization URL, the browser flow with a loopback redirect
//!   listener ([`RedirectListener`], [`wait_for_redirect`]), code exchange with PKCE, refresh,
//!   and [`get_access_token`](IntegrationTokenManager::get_access_token).
//! - [`ServiceAppTokenManager`]: per-org tokens fetched with the Integration's bearer,
//!   refreshed, registered, removed.
//! - [`Byova`]: everything wired together, with webhook handling, webhook registration, status
//!   and bulk refresh.
//!
//! Every OAuth decision is byova-core's (re-exported here); this crate moves bytes, waits, and
//! coordinates callers: a process-local cache answers fresh tokens, one caller per key
//! refreshes while the others wait, and storage leases and versioned writes coordinate
//! processes.
//!
//! ```
//! # #[tokio::main(flavor = "multi_thread")]
//! # async fn main() -> byova_async::Result<()> {
//! use byova_async::*;
//! # let fake = byova_testkit::FakeWebex::start();
//! # let (integration_creds, service_app_creds) = (fake.integration_credentials(), fake.service_app_credentials());
//! # let config = fake.config();
//! # let issued = fake.issue_integration_tokens();
//! // An org id as a webhook, a request or a configuration gives it: parsed once.
//! let org: OrgId = "63b02f90-9cc6-43b8-aa6d-cad425ac554c".parse()?;
//!
//! let byova = Byova::builder(integration_creds, service_app_creds)
//!     .config(config) // ByovaConfig::default() is production Webex
//!     .build()?; // in-memory storage unless .storage(...) says otherwise
//! # byova.integration().refresh(Some(&issued.refresh_token)).await?; // stands in for authorize()
//! let bearer = byova.integration().get_access_token().await?;
//! # fake.authorize_org(&org);
//! byova.service_app().fetch_token_for_org(&org).await?;
//! let org_token = byova.service_app().get_access_token(&org).await?;
//! # let _ = (bearer, org_token);
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod driver;
mod http;
pub mod jws;
mod listener;
mod managers;
#[cfg(feature = "middleware")]
mod middleware;

pub use http::HttpClient;
pub use listener::{RedirectListener, wait_for_redirect};
pub use managers::{Byova, ByovaBuilder, IntegrationTokenManager, ServiceAppTokenManager};
#[cfg(feature = "middleware")]
pub use middleware::BearerAuth;

/// byova-core, for everything not re-exported below (plans, policies, request builders).
pub use byova_core as core;
pub use byova_core::{
    AccessToken, ApiFailure, AuthorizationUrl, AuthorizeOptions, BulkProgress, ByovaConfig, Clock,
    DEFAULT_INTEGRATION_SCOPES, DEFAULT_REDIRECT_URI, Error, InMemoryTokenStorage, IntegrationCredentials,
    Invalidation, KeyStatus, OAuthTokens, OrgId, OrgRefresh, RedirectOptions, RefreshToken, Result,
    ServiceAppCredentials, ServiceAppTokens, SignatureError, StatusReport, StorageError, StorageErrorKind,
    StorageKeys, SystemClock, Timestamp, TokenKey, TokenState, TokenStorage, TokenSubject, WebhookSecret,
    async_trait,
    backend::{CoordinatedTokenStorage, Expect, Lease, SingleProcess, Versioned},
    engine::CoarseClock,
    ids::{decode_org_id, derive_application_id},
    load_credentials_from_env,
    webhook::{NewWebhook, ServiceAppEventKind, Webhook, WebhookOutcome},
};
